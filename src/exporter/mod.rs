//! The exporter process's HTTP side: `/metrics` (Prometheus text 0.0.4 or
//! OpenMetrics 1.0.0, gzip when asked) and `/health`, over HTTP or HTTPS
//! with optional client certificates.
//!
//! The master forks a dedicated exporter child that runs [`child::run`]:
//! [`server::run`] with the settings of [`config::config_from_settings`] and
//! the collector of [`collect`], which returns the
//! `crate::metrics::model::Family` list at each scrape. [`tls::validate`]
//! checks TLS files at start-up without starting anything.
//!
//! - `collect`: what a scrape reads (shared memory, /proc, the listeners,
//!   the application's `.db` files).
//! - `expose`: rendering and content negotiation, as prometheus_client does.
//! - `server`: tokio current-thread + hyper server, signals, bind retries.
//! - `tls`: rustls server configuration, mTLS.
//! - `config`: the PROMETHEUS_* settings.
//! - `child`: the exporter process's entry point (and the Redis push beside it).
//! - `standalone`: `ferrocorn exporter`, the Redis read side.
//! - `pushdoc`: the pushed document (the instance's lines, rendered).
//! - `statsd`: gunicorn's statsd metrics, sent from shared memory.
//! - `view`: the read side's exposition, copied from the documents.

pub mod child;
pub mod collect;
pub mod config;
pub mod expose;
pub mod pushdoc;
pub mod server;
pub mod standalone;
pub mod statsd;
pub mod tls;
pub mod view;
