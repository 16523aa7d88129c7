//! Library side of the `meridian` binary: the sample CDC data set and a Kafka producer for it,
//! shared by `meridian dev` and the end-to-end tests.

pub mod sample;
