//! Metrics: what workers record in shared memory ([`store`]) and what the
//! exporter process reads back at each scrape ([`collect`]).

pub mod appdir;
pub mod collect;
pub mod store;
