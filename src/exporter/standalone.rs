//! `ferrocorn exporter`: only the exporter, serving the metrics that every
//! instance under one key prefix pushed to Redis (for a sidecar or a
//! central box; no Python, no workers). Configured by the environment: the
//! PROMETHEUS_* variables for where and how to serve, the REDIS_* ones
//! (REDIS_ENABLED not needed) for where to read.

use std::collections::HashSet;
use std::ffi::OsString;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::config::config_from_vars;
use super::expose::Format;
use super::server::{self, Extras, Refresh, Render};
use super::view::render_found;
use crate::redis::read::{Found, Reader};

const USAGE: &str = "\
usage: ferrocorn exporter

Serves /metrics with the metrics that ferrocorn instances pushed to Redis
(REDIS_ENABLED=true on the instances): every live instance's series with
`host` and `instance` labels, plus counters and histograms summed across
instances (host=\"all\", instance=\"all\").

Environment:
  REDIS_URL or REDIS_HOST, REDIS_PORT, REDIS_DB, REDIS_PASSWORD
  REDIS_KEY_PREFIX (default gunicorn): the instances to serve
  PROMETHEUS_BIND_ADDRESS (default 0.0.0.0), PROMETHEUS_METRICS_PORT (default 9090)
  PROMETHEUS_SSL_CERTFILE, PROMETHEUS_SSL_KEYFILE, PROMETHEUS_SSL_CLIENT_*: HTTPS
See docs/redis.md.
";

/// Bounds the connect and each round trip of a scrape's read.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Scrapes that arrive while a read is running use its result when it is
/// this recent, rather than reading again.
const FRESH_ENOUGH: Duration = Duration::from_millis(100);

/// Runs `ferrocorn exporter ARGS...` and returns the exit status.
pub fn main(args: &[OsString]) -> i32 {
    if let Some(a) = args.first() {
        if a == "-h" || a == "--help" {
            print!("{USAGE}");
            return 0;
        }
        eprintln!(
            "Error: ferrocorn exporter takes no arguments (got {:?}); it is configured by \
             environment variables, see ferrocorn exporter --help",
            a
        );
        return 2;
    }
    let env = |k: &str| std::env::var_os(k);
    let cfg = match config_from_vars(env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e}");
            return 1;
        }
    };
    if let Some(tls) = &cfg.tls {
        if let Err(e) = super::tls::validate(tls) {
            eprintln!("Error: {e}");
            return 1;
        }
    }
    let redis = match crate::redis::settings::from_vars(env, false) {
        Ok(Some(r)) => r,
        // from_vars only answers None when REDIS_ENABLED is required.
        Ok(None) => {
            eprintln!("Error: no Redis settings");
            return 1;
        }
        Err(e) => {
            eprintln!("Error: {e}");
            return 1;
        }
    };
    let reader = match Reader::new(&redis, READ_TIMEOUT, log_line) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: {e}");
            return 1;
        }
    };
    crate::log_info!(
        "ferrocorn exporter: serving the instances under {:?} from {} on {}://{}:{}/metrics",
        redis.prefix,
        redis.target.display(),
        if cfg.tls.is_some() { "https" } else { "http" },
        cfg.bind_address,
        cfg.port
    );

    let state = Arc::new(ReadState {
        reader: tokio::sync::Mutex::new(reader),
        cache: Mutex::new(Cache::default()),
    });
    let for_refresh = state.clone();
    let refresh: Refresh = Arc::new(move || {
        let st = for_refresh.clone();
        Box::pin(async move { st.refresh().await })
    });
    let for_render = state;
    let render: Render = Box::new(move |format| for_render.render(format));
    server::run(
        // No master: /health is 200 while this process serves.
        cfg.into_server_config(None, log_line),
        // Unused: the read side renders its body itself.
        Box::new(Vec::new),
        Extras {
            refresh: Some(refresh),
            companion: None,
            render: Some(render),
        },
    )
}

struct ReadState {
    reader: tokio::sync::Mutex<Reader>,
    cache: Mutex<Cache>,
}

/// The last read and its renderings (made at the first scrape that asks
/// for each format).
#[derive(Default)]
struct Cache {
    /// `None` (after a read): Redis could not be read.
    found: Option<Arc<Found>>,
    at: Option<Instant>,
    text: Option<Bytes>,
    openmetrics: Option<Bytes>,
    /// Keys whose document could not be read, so each is logged once.
    bad: HashSet<String>,
}

impl ReadState {
    /// Reads every instance from Redis into the cache the scrape serves.
    /// When Redis fails, the scrape shows no instance (and
    /// `ferrocorn_redis_up 0`) rather than stale values.
    async fn refresh(&self) {
        let mut reader = self.reader.lock().await;
        let fresh = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .at
            .is_some_and(|t| t.elapsed() < FRESH_ENOUGH);
        if fresh {
            return;
        }
        let found = reader.fetch().await.map(Arc::new);
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        c.found = found;
        c.at = Some(Instant::now());
        c.text = None;
        c.openmetrics = None;
    }

    /// The body of a scrape in `format`, rendered from the last read.
    fn render(&self, format: Format) -> Bytes {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let done = match format {
            Format::Text004 => &c.text,
            Format::OpenMetrics100 => &c.openmetrics,
        };
        if let Some(b) = done {
            return b.clone();
        }
        let found = c.found.clone();
        let body =
            Bytes::from(render_found(found.as_deref(), &mut c.bad, log_line, format).into_bytes());
        match format {
            Format::Text004 => c.text = Some(body.clone()),
            Format::OpenMetrics100 => c.openmetrics = Some(body.clone()),
        }
        body
    }
}

fn log_line(line: &str) {
    crate::log_error!("{line}");
}
