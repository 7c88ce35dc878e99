//! The exporter process's HTTP side: `/metrics` (Prometheus text 0.0.4 or
//! OpenMetrics 1.0.0, gzip when asked) and `/health`, over HTTP or HTTPS
//! with optional client certificates.
//!
//! The master forks a dedicated exporter child that runs [`child::run`]:
//! [`server::run`] with the settings of [`config::config_from_settings`] and
//! the collector of `crate::metrics::collect`, which returns the
//! [`model::Family`] list at each scrape. [`tls::validate`] checks TLS files
//! at start-up without starting anything.
//!
//! - `model`: the data rendered (produced by the collector).
//! - `expose`: rendering and content negotiation, as prometheus_client does.
//! - `server`: tokio current-thread + hyper server, signals, bind retries.
//! - `tls`: rustls server configuration, mTLS.
//! - `config`: the PROMETHEUS_* settings.
//! - `child`: the exporter process's entry point.

pub mod child;
pub mod config;
pub mod expose;
pub mod model;
pub mod server;
pub mod tls;
