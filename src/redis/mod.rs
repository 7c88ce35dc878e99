//! Redis: each instance's metrics in one place, for views that span hosts
//! (docs/redis.md). Nothing here is on the request path: the exporter
//! process pushes its instance's merged state ([`push`]) and the read side
//! (`ferrocorn exporter`) serves the union of the live instances ([`read`]).
//!
//! - `settings`: the REDIS_* settings and where Redis is.
//! - `codec`: the pushed document's format (one per instance: its
//!   exposition lines and a table for the sums), rendered by
//!   `exporter::pushdoc`.
//! - `link`: one connection with timeouts, reconnects and outage logging.
//! - `push`: the exporter's periodic and final push.
//! - `read`: fetching the instances and merging them into one exposition.
//! - `view`: the documents read in place (the read side's fast path;
//!   `exporter::view` copies their lines into the exposition).
//!
//! The `redis` crate is named `::redis` here, this module being `crate::redis`.

pub mod codec;
pub mod link;
pub mod push;
pub mod read;
pub mod settings;
pub mod view;

/// The key of one instance's state:
/// `{prefix}:ferrocorn:{{prefix}}:state:{host}:{instance}`. The `{prefix}` in
/// braces is a Redis Cluster hash tag: an instance's key and the index are
/// in one slot, so that a push is one pipeline to one node and the read
/// side's MGET one command (prefixes have no braces of their own).
pub fn state_key(prefix: &str, host: &str, instance: &str) -> String {
    format!("{prefix}:ferrocorn:{{{prefix}}}:state:{host}:{instance}")
}

/// The set of the state keys of every instance under `prefix` (the read
/// side's index, so that it never scans the keyspace).
pub fn index_key(prefix: &str) -> String {
    format!("{prefix}:ferrocorn:{{{prefix}}}:instances")
}

/// This machine's host name (the `host` label and part of the keys).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned())
}
