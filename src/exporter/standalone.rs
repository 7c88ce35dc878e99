//! `ferrocorn exporter`: only the exporter, serving the metrics that every
//! instance under one key prefix pushed to Redis (for a sidecar or a
//! central box; no Python, no workers). Configured by the environment: the
//! PROMETHEUS_* variables for where and how to serve, the REDIS_* ones
//! (REDIS_ENABLED not needed) for where to read.

use std::collections::HashSet;
use std::ffi::OsString;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::config::config_from_vars;
use super::expose::Format;
use super::server::{self, Extras, Refresh, Render, Streamed};
use super::view::{render_found, Out, Scratch};
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
        bad: Mutex::default(),
        renders: (Mutex::new(0), Condvar::new()),
    });
    let for_refresh = state.clone();
    let refresh: Refresh = Arc::new(move || {
        let st = for_refresh.clone();
        Box::pin(async move { st.refresh().await })
    });
    let for_render = state;
    let render: Render = Box::new(move |format| ReadState::render(&for_render, format));
    server::run(
        // No master: /health is 200 while this process serves.
        cfg.into_server_config(None, log_line),
        // Unused: the read side renders its body itself.
        Box::new(Vec::new),
        Extras {
            refresh: Some(refresh),
            companion: None,
            render: Some(render),
            workers: None,
        },
    )
}

struct ReadState {
    reader: tokio::sync::Mutex<Reader>,
    cache: Mutex<Cache>,
    /// Keys whose document could not be read, so each is logged once.
    bad: Mutex<HashSet<String>>,
    /// Renderings running, and a wake-up for those waiting for a slot.
    renders: (Mutex<usize>, Condvar),
}

/// Renderings at once: each holds a body's worth of buffers while its
/// client takes the chunks; further scrapes wait for a slot.
const RENDERS_AT_ONCE: usize = 4;

/// A rendering whose client takes no chunk for this long is given up
/// (the response is cut short) and frees its slot.
const STALL: Duration = Duration::from_secs(5);

/// A rendering slot, given back when dropped.
struct Slot<'a>(&'a (Mutex<usize>, Condvar));

impl<'a> Slot<'a> {
    fn take(renders: &'a (Mutex<usize>, Condvar)) -> Slot<'a> {
        let (count, freed) = renders;
        let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
        while *n >= RENDERS_AT_ONCE {
            n = freed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
        Slot(renders)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let (count, freed) = self.0;
        let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        freed.notify_one();
    }
}

/// The last read, and buffers kept across renderings.
#[derive(Default)]
struct Cache {
    /// `None` (after a read): Redis could not be read.
    found: Option<Arc<Found>>,
    at: Option<Instant>,
    /// Buffers kept across renderings (a scrape of 200 large instances
    /// decompresses tens of megabytes: fresh pages for all of it cost more
    /// than the decompression). A rendering takes them and gives them
    /// back; one that runs beside it makes its own.
    scratch: Scratch,
    /// The chunks' buffers, likewise.
    chunks: Vec<Arc<String>>,
}

/// A chunk of a body, until hyper has sent it (the renderer keeps the
/// other reference, to take the buffer back for a later chunk).
struct Chunk(Arc<String>);

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// A body is sent on in chunks of about this size.
const CHUNK: usize = 1 << 20;

/// Chunks rendered ahead of what the connection has taken.
const CHUNKS_AHEAD: usize = 4;

/// A rendering's output: chunks handed to the response as they fill.
struct Chunker {
    len: Option<tokio::sync::oneshot::Sender<u64>>,
    tx: tokio::sync::mpsc::Sender<Bytes>,
    /// Times the wait for the client to take a chunk (`STALL`).
    timer: Option<tokio::runtime::Runtime>,
    buf: String,
    /// Every chunk made (the ones hyper has sent and dropped are reused).
    made: Vec<Arc<String>>,
    open: bool,
}

impl Chunker {
    /// An emptied buffer of a chunk that has been sent, or a new one.
    fn spare(&mut self) -> String {
        let free = self.made.iter().position(|b| Arc::strong_count(b) == 1);
        let spare = free.and_then(|i| Arc::try_unwrap(self.made.swap_remove(i)).ok());
        match spare {
            Some(mut s) => {
                s.clear();
                s
            }
            None => String::with_capacity(CHUNK * 2),
        }
    }

    fn flush(&mut self) {
        if self.buf.is_empty() || !self.open {
            return;
        }
        let next = self.spare();
        let full = Arc::new(std::mem::replace(&mut self.buf, next));
        // The chunks not sent yet are at most CHUNKS_AHEAD and hyper's;
        // beyond a few more, older ones are left to be freed when sent.
        if self.made.len() >= CHUNKS_AHEAD * 3 {
            self.made.remove(0);
        }
        self.made.push(full.clone());
        let chunk = Bytes::from_owner(Chunk(full));
        let sent = match &self.timer {
            Some(rt) => match rt
                .block_on(async { tokio::time::timeout(STALL, self.tx.send(chunk)).await })
            {
                Ok(sent) => sent.is_ok(),
                Err(_) => {
                    log_line(&format!(
                        "redis read: a client took no data for {}s; its scrape is cut short",
                        STALL.as_secs()
                    ));
                    false
                }
            },
            None => self.tx.blocking_send(chunk).is_ok(),
        };
        if !sent {
            // The connection is gone (or stalled): stop rendering.
            self.open = false;
        }
    }
}

impl Out for Chunker {
    fn start(&mut self, len: usize) {
        let sent = self.len.take().map(|tx| tx.send(len as u64));
        if sent != Some(Ok(())) {
            self.open = false;
        }
    }

    fn buf(&mut self) -> &mut String {
        &mut self.buf
    }

    fn piece_done(&mut self) -> bool {
        if self.buf.len() >= CHUNK {
            self.flush();
        }
        self.open
    }
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
    }

    /// Starts rendering the body of a scrape in `format` from the last
    /// read, on a thread of its own: the response sends the first chunks
    /// while the next are rendered (200 large instances are 90 MB).
    fn render(self: &Arc<Self>, format: Format) -> Streamed {
        let (len_tx, len) = tokio::sync::oneshot::channel();
        let (tx, chunks) = tokio::sync::mpsc::channel(CHUNKS_AHEAD);
        let st = self.clone();
        let spawned = std::thread::Builder::new()
            .name("redis-render".into())
            .spawn(move || st.render_to(format, len_tx, tx));
        if let Err(e) = spawned {
            // The Streamed's ends went with the closure: a 500.
            log_line(&format!("redis read: cannot start a rendering thread: {e}"));
        }
        Streamed { len, chunks }
    }

    fn render_to(
        &self,
        format: Format,
        len: tokio::sync::oneshot::Sender<u64>,
        tx: tokio::sync::mpsc::Sender<Bytes>,
    ) {
        let _slot = Slot::take(&self.renders);
        let (found, mut scratch, made) = {
            let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            (
                c.found.clone(),
                std::mem::take(&mut c.scratch),
                std::mem::take(&mut c.chunks),
            )
        };
        let mut out = Chunker {
            len: Some(len),
            tx,
            // Without a timer (the system would not make one), a stalled
            // client holds its slot until its connection is dropped.
            timer: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .ok(),
            buf: String::new(),
            made,
            open: true,
        };
        out.buf = out.spare();
        let done = std::panic::catch_unwind(AssertUnwindSafe(|| {
            render_found(
                found.as_deref(),
                &self.bad,
                log_line,
                format,
                &mut scratch,
                &mut out,
            );
            out.flush();
        }));
        if done.is_err() {
            // The response gets a 500, or an incomplete body.
            log_line("redis read: rendering metrics panicked");
            return;
        }
        drop(found);
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        c.scratch = scratch;
        c.chunks = std::mem::take(&mut out.made);
    }
}

fn log_line(line: &str) {
    crate::log_error!("{line}");
}
