//! The central streaming tier: one actor per materialized view.
//!
//! [`core::ViewCore`] is the sans-IO aggregation state machine; [`actor::ViewActor`] is its
//! async shell over rdkafka and RocksDB; [`ship::Shipper`] fans a view's change log out to a
//! region; [`worker`] hosts them all for one central worker process.

pub mod actor;
pub mod changes;
pub mod core;
pub mod decode;
pub mod fresh;
pub mod metrics;
pub mod progress;
pub mod ship;
pub mod sink;
pub mod store;
pub mod wire;
pub mod worker;

/// Wall-clock source, injected so that the cores never read the OS clock themselves.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}
