//! The exporter process proper: what the child the master forks for
//! metrics runs until it is told to stop.

use super::collect::{Collector, Source};
use super::config::EnvConfig;
use super::server;

/// Runs the exporter (in the forked child) and returns its exit status.
pub fn run(cfg: EnvConfig, master_pid: u32, source: Source) -> i32 {
    // Die with the master even if it is SIGKILLed, rather than hold the
    // port; /health also answers 503 once the parent is gone.
    if !crate::process::die_with_master(master_pid) {
        return 0;
    }
    let mut collector = Collector::new(source);
    server::run(
        cfg.into_server_config(master_pid, log_line),
        Box::new(move || collector.collect()),
    )
}

fn log_line(line: &str) {
    crate::log_error!("{line}");
}
