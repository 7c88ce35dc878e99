//! Metrics: what workers record in shared memory ([`store`]) and what the
//! exporter process reads back at each scrape ([`collect`]), the
//! application's counters held monotonic across compactions ([`floor`]).

pub mod appdir;
pub mod collect;
pub mod floor;
pub mod store;
