//! Metrics: what workers record in shared memory ([`store`]); the exporter
//! process that serves them comes with the metrics issue.

pub mod store;
