//! Meridian's wire types, generated from `proto/meridian/v1`.

#![allow(clippy::all)]

pub mod v1 {
    tonic::include_proto!("meridian.v1");
}

pub use v1::*;

pub mod token;
pub use token::ReadToken;

/// A number drawn once per run of a process (the wall clock and the process id mixed by a
/// randomly keyed hash): tells that run from an earlier or a concurrent one, wherever a run
/// must be told apart (a catalog's identity, a worker's session).
pub fn draw_run_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// The replica table a region must hold for a view: what the central worker pushes and what
/// the coordinator tells a region to expect, from one definition.
pub fn view_schema(def: &catalog::ViewDef, view_id: u64) -> v1::ViewSchema {
    v1::ViewSchema {
        view: def.name.clone(),
        columns: def
            .outputs
            .iter()
            .map(|o| v1::ColumnSchema {
                name: o.name.clone(),
                r#type: o.ty.name().to_string(),
            })
            .collect(),
        key_indexes: def.key_outputs.iter().map(|&i| i as u32).collect(),
        view_id,
    }
}

/// The change log's running checksum: batch `seq` extends the checksum of batch `seq - 1`
/// (0 before the first) with its own sequence and changes. The central worker stamps it on
/// every batch; a replica recomputes it from the checksum it holds, so a batch that does not
/// continue the history the replica applied (a central tier restored from an older copy, or a
/// second writer) is seen instead of applied.
pub fn chain_checksum(prev: u64, batch: &v1::ChangeBatch) -> u64 {
    use prost::Message as _;
    // FNV-1a, 64 bits: stable across builds and platforms, no dependency.
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    };
    feed(&prev.to_be_bytes());
    feed(&batch.seq.to_be_bytes());
    let mut buf = Vec::with_capacity(64);
    for c in &batch.changes {
        buf.clear();
        c.encode(&mut buf).expect("a Vec grows as needed");
        feed(&(buf.len() as u64).to_be_bytes());
        feed(&buf);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::v1;

    #[test]
    fn checksum_chains_history_and_contents() {
        let change = |n: i64| v1::RowChange {
            key: vec![v1::Value {
                kind: Some(v1::value::Kind::Int(n)),
            }],
            row: None,
        };
        let b1 = v1::ChangeBatch {
            seq: 1,
            changes: vec![change(1)],
            ..Default::default()
        };
        let b1_other = v1::ChangeBatch {
            seq: 1,
            changes: vec![change(2)],
            ..Default::default()
        };
        let b2 = v1::ChangeBatch {
            seq: 2,
            changes: vec![change(1)],
            ..Default::default()
        };
        let c1 = super::chain_checksum(0, &b1);
        assert_eq!(c1, super::chain_checksum(0, &b1.clone()), "deterministic");
        assert_ne!(c1, super::chain_checksum(0, &b1_other), "contents count");
        assert_ne!(
            super::chain_checksum(c1, &b2),
            super::chain_checksum(0, &b2),
            "history counts"
        );
        assert_ne!(
            super::chain_checksum(0, &b1),
            super::chain_checksum(0, &b2),
            "seq counts"
        );
    }
}
