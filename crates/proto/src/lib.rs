//! Meridian's wire types, generated from `proto/meridian/v1`.

#![allow(clippy::all)]

pub mod v1 {
    tonic::include_proto!("meridian.v1");
}

pub use v1::*;
