//! ferrocorn: a Rust pre-fork application server for Python web apps, run
//! exactly like `gunicorn`. See docs/architecture.md.
//!
//! The crate is a library with two ways in (see [`entry`]): the standalone
//! binary (src/main.rs calls [`binary_main`]) and the Python extension
//! module `ferrocorn._ferrocorn` of the wheel, which maturin builds from this
//! library as a cdylib.

mod arbiter;
mod asgi;
mod config;
mod conn;
mod ctl;
mod entry;
mod exporter;
mod hooks;
mod http;
mod log;
mod metrics;
mod mpfiles;
mod process;
mod python;
mod redis;
mod shm;
mod sock;
mod tls;
mod top;
mod worker;
mod wsgi;

pub use entry::binary_main;
