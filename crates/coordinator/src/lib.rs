//! The coordinator: validates DDL against the catalog, persists the catalog in RocksDB, hands
//! it to central workers, and gathers the status every node and worker reports.

pub mod placement;
pub mod service;
pub mod store;
pub mod topics;

pub use service::{CoordinatorService, TopicCheck};
