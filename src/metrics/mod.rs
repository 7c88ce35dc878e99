//! Metrics: the data model every producer and the exposition share
//! ([`model`]: families, kinds, samples) and what workers record in shared
//! memory ([`store`]).
//!
//! The bottom of the module graph: it depends on no other module of the
//! crate, so `shm` (which lays these tables out in the shared region),
//! `mpfiles` (the application's families) and `exporter` (which collects and
//! renders them) can all build on it.

pub mod model;
pub mod store;
