//! The exporter process's HTTP side: `/metrics` (Prometheus text 0.0.4 or
//! OpenMetrics 1.0.0, gzip when asked) and `/health`, over HTTP or HTTPS
//! with optional client certificates.
//!
//! The master forks a dedicated exporter child that calls
//! [`server::run`] with a [`server::ServerConfig`] (from
//! [`config::config_from_env`] + [`config::EnvConfig::into_server_config`])
//! and a collect closure that returns the [`model::Family`] list at each
//! scrape. [`tls::validate`] checks TLS files at start-up without starting
//! anything.
//!
//! - `model`: the data rendered (produced by the collector).
//! - `expose`: rendering and content negotiation, as prometheus_client does.
//! - `server`: tokio current-thread + hyper server, signals, bind retries.
//! - `tls`: rustls server configuration, mTLS.
//! - `config`: PROMETHEUS_* environment variables.

// Wired into the master's exporter child in the metrics issue's next step;
// until then only its tests use it.
#![allow(dead_code)]

pub mod config;
pub mod expose;
pub mod model;
pub mod server;
pub mod tls;
