//! The exporter process proper: what the child the master forks for
//! metrics runs until it is told to stop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::collect::{live_workers, Collector, Source};
use super::config::EnvConfig;
use super::server::{self, Companion, Extras};
use super::statsd::Sender;
use crate::redis::push::{PushStats, Pusher};

/// At shutdown the last push waits for the workers to be reaped (so that
/// it carries their final counts), at most this long; the master stops
/// waiting for the exporter sooner than that anyway.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// Runs the exporter (in the forked child) and returns its exit status:
/// the Prometheus server with `cfg` (metrics on), the statsd sender with
/// `statsd` (statsd_host set), at least one of them.
pub fn run(
    cfg: Option<EnvConfig>,
    statsd: Option<crate::config::Statsd>,
    master_pid: u32,
    source: Source,
) -> i32 {
    // Die with the master even if it is SIGKILLed, rather than hold the
    // port; /health also answers 503 once the parent is gone.
    if !crate::process::die_with_master(master_pid) {
        return 0;
    }
    let shm = source.shm;
    let drained =
        move || live_workers(shm) == 0 || std::os::unix::process::parent_id() != master_pid;
    let mut companions: Vec<Companion> = Vec::new();
    if let Some(s) = statsd {
        let sender = Sender::new(s, source.clone());
        companions.push(Box::new(move |stop| {
            Box::pin(sender.run(stop, drained, DRAIN_LIMIT))
        }));
    }
    let Some(cfg) = cfg else {
        return match join(companions) {
            Some(c) => server::run_companion(log_line, c),
            None => 0,
        };
    };
    let mut stats: Option<Arc<Mutex<PushStats>>> = None;
    if let Some(redis) = cfg.redis.clone() {
        // A collector of its own: a push must not shorten the CPU window
        // (or move the application counters' floor) of the local scrapes.
        let mut push_collector = Collector::new(source.clone());
        let instance = redis
            .instance
            .clone()
            .unwrap_or_else(|| default_instance(&source, master_pid));
        match Pusher::new(
            redis,
            crate::redis::hostname(),
            instance,
            Box::new(move || push_collector.collect()),
            super::pushdoc::encode_into,
            log_line,
        ) {
            Ok(pusher) => {
                stats = Some(pusher.stats());
                companions.push(Box::new(move |stop| {
                    Box::pin(pusher.run(stop, drained, DRAIN_LIMIT))
                }));
            }
            // Checked at start (config_from_settings), so only a change of
            // the environment in between gets here: serve locally anyway.
            Err(e) => log_line(&format!("redis push: {e}; not pushing")),
        }
    }
    let workers_source = source.clone();
    let extras = Extras {
        companion: join(companions),
        workers: Some(Box::new(move || {
            super::collect::workers_json(&workers_source, master_pid)
        })),
        ..Extras::default()
    };
    let mut collector = Collector::new(source);
    server::run(
        cfg.into_server_config(Some(master_pid), log_line),
        Box::new(move || {
            let mut families = collector.collect();
            if let Some(s) = &stats {
                families.extend(s.lock().unwrap_or_else(|p| p.into_inner()).families());
            }
            families
        }),
        extras,
    )
}

/// One companion running the given ones side by side (each is told why
/// the server stops; it finishes when all have).
fn join(companions: Vec<Companion>) -> Option<Companion> {
    if companions.len() <= 1 {
        return companions.into_iter().next();
    }
    Some(Box::new(move |stop| {
        let all: Vec<_> = companions.into_iter().map(|c| c(stop.clone())).collect();
        Box::pin(async move {
            // Tasks on the exporter's runtime, so that they run side by side.
            let tasks: Vec<_> = all.into_iter().map(tokio::spawn).collect();
            for t in tasks {
                let _ = t.await;
            }
        })
    }))
}

/// The instance's name when REDIS_INSTANCE is not set: its first TCP
/// listener's address (as logged, without the scheme), else the master's
/// pid (unix sockets only: set REDIS_INSTANCE there).
fn default_instance(source: &Source, master_pid: u32) -> String {
    source
        .tcp_listeners
        .first()
        .map(|(_, url)| {
            url.split_once("://")
                .map_or(url.as_str(), |(_, a)| a)
                .to_owned()
        })
        .unwrap_or_else(|| format!("pid-{master_pid}"))
}

fn log_line(line: &str) {
    crate::log_error!("{line}");
}
