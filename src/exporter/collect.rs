//! What the exporter serves at each scrape: ferrocorn's own families, read
//! from shared memory and /proc, followed by the application's
//! prometheus_client families read from the multiprocess directory.
//!
//! Runs in the exporter process only; it never blocks a worker (all reads
//! are atomic loads) and never touches Python.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::metrics::model::{Family, Kind, Sample, SampleValue};
use crate::metrics::store::{
    add_snapshot, duration_bounds, micros, Snapshot, WorkerMetrics, METHODS, SIZE_BUCKETS,
};
use crate::shm::{monotonic_ms, Shm, State};

/// What the collector reads, fixed when the master forks the exporter.
#[derive(Clone)]
pub struct Source {
    pub shm: &'static Shm,
    /// TCP listeners (fd inherited from the master, URL as logged).
    pub tcp_listeners: Vec<(RawFd, String)>,
    /// prometheus_client's multiprocess directory.
    pub multiproc_dir: Option<PathBuf>,
    pub version: &'static str,
    pub python: String,
    /// The workers' kind (`sync`, `gthread`, ...), for `/workers`.
    pub worker_kind: &'static str,
}

/// The exporter's collector: keeps what must survive between scrapes (the
/// CPU times of the previous scrape, sysinfo's process table, the key cache
/// of the application-metrics reader, the application counters last shown).
pub struct Collector {
    src: Source,
    system: sysinfo::System,
    /// pid -> (accumulated CPU ms, when) at the previous scrape.
    cpu: HashMap<u32, (u64, Instant)>,
    app: crate::mpfiles::Collector,
    app_floor: crate::mpfiles::floor::Floor,
}

/// States as exported, in `gunicorn_workers` order.
const STATES: [(State, &str); 5] = [
    (State::Booting, "booting"),
    (State::Idle, "idle"),
    (State::Busy, "busy"),
    (State::Quitting, "quitting"),
    (State::Aborting, "aborting"),
];

/// Signals the master handles, as `gunicorn_master_signals_total` labels.
const HANDLED_SIGNALS: [i32; 10] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCHLD,
];

/// A live worker as read from its slot.
struct Worker {
    id: String,
    pid: u32,
    state: State,
    state_since_ms: u64,
    born_ms: u64,
    slot: usize,
}

/// How many workers are alive in `shm` (slots the master has not reaped).
pub fn live_workers(shm: &Shm) -> usize {
    (0..shm.len())
        .filter_map(|i| shm.slot(i))
        .filter(|s| {
            s.state() != State::Free && s.pid.load(std::sync::atomic::Ordering::Relaxed) != 0
        })
        .count()
}

/// Runs `read` (which reads live workers' metrics and the retired
/// accumulator) until no fold happened while it ran: a reaped worker is then
/// counted exactly once, in its slot or in the retired totals.
pub fn read_consistent<T>(shm: &Shm, mut read: impl FnMut() -> T) -> T {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let before = shm.master().map_or(0, |m| m.fold_epoch());
        let v = read();
        let after = shm.master().map_or(0, |m| m.fold_epoch());
        if (before == after && before % 2 == 0) || attempt >= FOLD_RETRIES {
            return v;
        }
        std::thread::yield_now();
    }
}

/// How often a scrape is re-read when the master folded a reaped worker
/// into the retired totals while it read (the fold takes microseconds).
const FOLD_RETRIES: usize = 5;

impl Collector {
    pub fn new(src: Source) -> Collector {
        Collector {
            src,
            system: sysinfo::System::new(),
            cpu: HashMap::new(),
            app: crate::mpfiles::Collector::new(),
            app_floor: Default::default(),
        }
    }

    /// Every family, ferrocorn's first, then the application's.
    pub fn collect(&mut self) -> Vec<Family> {
        let mut out = Vec::with_capacity(32);
        let workers = self.requests_families(&mut out);
        self.process_families(&workers, &mut out);
        self.state_families(&workers, &mut out);
        self.error_families(&workers, &mut out);
        self.master_families(&mut out);
        self.listener_families(&mut out);
        out.push(family(
            "ferrocorn_build_info",
            "ferrocorn build information",
            Kind::Gauge,
            vec![scalar(
                vec![
                    ("python", self.src.python.clone()),
                    ("version", self.src.version.to_owned()),
                ],
                1.0,
            )],
        ));
        if let Some(dir) = &self.src.multiproc_dir {
            let live: Vec<u32> = workers.iter().map(|w| w.pid).collect();
            let mut app = self.app.collect(dir, &|pid| live.contains(&pid));
            self.app_floor.apply(&mut app);
            out.extend(app.into_iter().map(app_family));
        }
        out
    }

    /// The live workers, as of this scrape.
    fn workers(&self) -> Vec<Worker> {
        let shm = self.src.shm;
        (0..shm.len())
            .filter_map(|i| {
                let s = shm.slot(i)?;
                let gen = s.generation.load(std::sync::atomic::Ordering::Acquire);
                let state = s.state();
                let pid = s.pid.load(std::sync::atomic::Ordering::Relaxed);
                if state == State::Free || pid == 0 {
                    return None;
                }
                let age = s.age.load(std::sync::atomic::Ordering::Relaxed);
                let w = Worker {
                    id: format!("worker_{age}_{pid}"),
                    pid,
                    state,
                    state_since_ms: s.state_since(),
                    born_ms: s.born_ms(),
                    slot: i,
                };
                // Recycled while we read: the new worker shows next scrape.
                (s.generation.load(std::sync::atomic::Ordering::Acquire) == gen).then_some(w)
            })
            .collect()
    }

    /// Request counters and histograms, per worker and server-wide. The
    /// server-wide sums add the retired accumulator; they are read between
    /// two equal fold epochs so that a worker being folded is counted once.
    fn requests_families(&self, out: &mut Vec<Family>) -> Vec<Worker> {
        let (workers, fams) = read_consistent(self.src.shm, || {
            let workers = self.workers();
            let fams = self.read_requests(&workers);
            (workers, fams)
        });
        out.extend(fams);
        workers
    }

    fn read_requests(&self, workers: &[Worker]) -> Vec<Family> {
        let shm = self.src.shm;
        let bounds = duration_bounds();
        let live: Vec<(&Worker, &WorkerMetrics)> = workers
            .iter()
            .filter_map(|w| Some((w, shm.metrics(w.slot)?)))
            .collect();
        let label = |w: &Worker| vec![("worker_id", w.id.clone())];

        let requests = live
            .iter()
            .map(|(w, m)| scalar(label(w), m.requests() as f64))
            .collect();
        let hist = |pick: fn(&WorkerMetrics) -> Snapshot| -> Vec<Sample> {
            live.iter()
                .map(|(w, m)| histogram(label(w), pick(m)))
                .collect()
        };
        let duration = hist(|m| m.duration.snapshot(duration_bounds()));
        let req_size = hist(|m| m.request_size.snapshot(&SIZE_BUCKETS));
        let resp_size = hist(|m| m.response_size.snapshot(&SIZE_BUCKETS));

        // Server-wide: retired + live, by (method, status) and by method.
        let all: Vec<&WorkerMetrics> = live.iter().map(|(_, m)| *m).chain(shm.retired()).collect();
        let mut by_status: BTreeMap<(usize, u16), u64> = BTreeMap::new();
        let mut by_method: Vec<Snapshot> = vec![(Vec::new(), 0, 0); METHODS.len()];
        let mut queue: Snapshot = (Vec::new(), 0, 0);
        for m in &all {
            add_snapshot(&mut queue, m.queue.snapshot(bounds));
            for (method, status, n) in m.requests_by_status() {
                *by_status.entry((method, status)).or_default() += n;
            }
            for (i, h) in m.method_duration.iter().enumerate() {
                add_snapshot(&mut by_method[i], h.snapshot(bounds));
            }
        }
        let requests_total = by_status
            .into_iter()
            .map(|((method, status), n)| {
                let status = if status == 0 {
                    "other".to_owned()
                } else {
                    status.to_string()
                };
                scalar(
                    vec![("method", METHODS[method].to_owned()), ("status", status)],
                    n as f64,
                )
            })
            .collect();
        let method_duration = by_method
            .into_iter()
            .enumerate()
            .filter(|(_, h)| h.1 > 0)
            .map(|(i, h)| histogram(vec![("method", METHODS[i].to_owned())], h))
            .collect();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let in_flight: u64 = live.iter().map(|(_, m)| load(&m.in_flight)).sum();
        let concurrency = live
            .iter()
            .flat_map(|(w, m)| {
                let busy = load(&m.in_flight);
                let idle = load(&m.capacity).saturating_sub(busy);
                [("busy", busy), ("idle", idle)].map(|(state, n)| {
                    scalar(
                        vec![("worker_id", w.id.clone()), ("state", state.to_owned())],
                        n as f64,
                    )
                })
            })
            .collect();
        let websockets = live
            .iter()
            .map(|(w, m)| {
                scalar(
                    vec![("worker_id", w.id.clone())],
                    load(&m.websockets) as f64,
                )
            })
            .collect();

        vec![
            family(
                "gunicorn_worker_requests",
                "Total number of requests handled by this worker",
                Kind::Counter,
                requests,
            ),
            family(
                "gunicorn_worker_request_duration_seconds",
                "Request duration in seconds",
                Kind::Histogram,
                duration,
            ),
            family(
                "gunicorn_worker_request_size_bytes",
                "Request body size in bytes",
                Kind::Histogram,
                req_size,
            ),
            family(
                "gunicorn_worker_response_size_bytes",
                "Response body size in bytes",
                Kind::Histogram,
                resp_size,
            ),
            family(
                "gunicorn_requests",
                "Requests answered by all workers, past and present, by method and status",
                Kind::Counter,
                requests_total,
            ),
            family(
                "gunicorn_request_duration_seconds",
                "Request duration in seconds, all workers past and present, by method",
                Kind::Histogram,
                method_duration,
            ),
            family(
                "gunicorn_requests_in_flight",
                "Requests being handled right now",
                Kind::Gauge,
                vec![scalar(vec![], in_flight as f64)],
            ),
            family(
                "gunicorn_request_queue_seconds",
                "Time from a request's first byte to the app call (waiting for a free thread or greenlet), all workers past and present",
                Kind::Histogram,
                vec![histogram(vec![], queue)],
            ),
            family(
                "gunicorn_worker_concurrency",
                "Requests the worker is running (busy) and could run besides (idle): threads, greenlets, or 1 for sync",
                Kind::Gauge,
                concurrency,
            ),
            family(
                "gunicorn_websocket_connections",
                "WebSocket sessions open now, per worker (asgi)",
                Kind::Gauge,
                websockets,
            ),
        ]
    }

    /// Memory, CPU and uptime of each worker, from /proc.
    fn process_families(&mut self, workers: &[Worker], out: &mut Vec<Family>) {
        let pids: Vec<sysinfo::Pid> = workers
            .iter()
            .map(|w| sysinfo::Pid::from_u32(w.pid))
            .collect();
        self.system.refresh_processes_specifics(
            sysinfo::ProcessesToUpdate::Some(&pids),
            true,
            sysinfo::ProcessRefreshKind::nothing()
                .with_memory()
                .with_cpu(),
        );
        let now = Instant::now();
        let now_ms = monotonic_ms();
        let mut memory = Vec::new();
        let mut cpu = Vec::new();
        let mut uptime = Vec::new();
        let mut seen = HashMap::with_capacity(workers.len());
        for w in workers {
            let label = || vec![("worker_id", w.id.clone())];
            let up_ms = now_ms.saturating_sub(w.born_ms);
            uptime.push(scalar(label(), up_ms as f64 / 1000.0));
            let Some(p) = self.system.process(sysinfo::Pid::from_u32(w.pid)) else {
                continue;
            };
            memory.push(scalar(label(), p.memory() as f64));
            let cpu_ms = p.accumulated_cpu_time();
            // Percent of one CPU since the previous scrape; at a worker's
            // first scrape, its average since it was forked.
            let pct = match self.cpu.get(&w.pid) {
                Some(&(prev_ms, at)) => {
                    let wall = now.duration_since(at).as_secs_f64() * 1000.0;
                    percent(cpu_ms.saturating_sub(prev_ms) as f64, wall)
                }
                None => percent(cpu_ms as f64, up_ms as f64),
            };
            cpu.push(scalar(label(), pct));
            seen.insert(w.pid, (cpu_ms, now));
        }
        self.cpu = seen;
        out.push(family(
            "gunicorn_worker_memory_bytes",
            "Memory usage of the worker process (resident set size)",
            Kind::Gauge,
            memory,
        ));
        out.push(family(
            "gunicorn_worker_cpu_percent",
            "CPU usage of the worker process, percent of one CPU since the previous scrape",
            Kind::Gauge,
            cpu,
        ));
        out.push(family(
            "gunicorn_worker_uptime_seconds",
            "Uptime of the worker process",
            Kind::Gauge,
            uptime,
        ));
    }

    fn state_families(&self, workers: &[Worker], out: &mut Vec<Family>) {
        // The slots hold monotonic times; the label wants Unix time.
        let wall_now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mono_now_ms = monotonic_ms();
        let mut states = Vec::with_capacity(workers.len());
        let mut counts = [0u64; STATES.len()];
        for w in workers {
            let Some(i) = STATES.iter().position(|(s, _)| *s == w.state) else {
                continue;
            };
            counts[i] += 1;
            let since = wall_now_ms.saturating_sub(mono_now_ms.saturating_sub(w.state_since_ms));
            states.push(scalar(
                vec![
                    ("worker_id", w.id.clone()),
                    ("state", STATES[i].1.to_owned()),
                    ("timestamp", (since / 1000).to_string()),
                ],
                1.0,
            ));
        }
        out.push(family(
            "gunicorn_worker_state",
            "Current state of the worker (1 for the current state; timestamp: when it was entered)",
            Kind::Gauge,
            states,
        ));
        out.push(family(
            "gunicorn_workers",
            "Workers by state",
            Kind::Gauge,
            STATES
                .iter()
                .zip(counts)
                .map(|((_, name), n)| scalar(vec![("state", (*name).to_owned())], n as f64))
                .collect(),
        ));
    }

    fn error_families(&self, workers: &[Worker], out: &mut Vec<Family>) {
        let mut failed = Vec::new();
        let mut handled = Vec::new();
        let mut overflowed = Vec::new();
        for w in workers {
            let Some(table) = self.src.shm.errors(w.slot) else {
                continue;
            };
            let (series, overflow) = table.read();
            let mut by_endpoint: BTreeMap<(String, String), u64> = BTreeMap::new();
            for (l, n) in &series {
                *by_endpoint
                    .entry((l.method.clone(), l.endpoint.clone()))
                    .or_default() += n;
                handled.push(scalar(
                    vec![
                        ("worker_id", w.id.clone()),
                        ("method", l.method.clone()),
                        ("endpoint", l.endpoint.clone()),
                        ("error_type", l.error_type.clone()),
                    ],
                    *n as f64,
                ));
            }
            if overflow > 0 {
                let over = || "[overflow]".to_owned();
                by_endpoint.insert((over(), over()), overflow);
                handled.push(scalar(
                    vec![
                        ("worker_id", w.id.clone()),
                        ("method", over()),
                        ("endpoint", over()),
                        ("error_type", over()),
                    ],
                    overflow as f64,
                ));
            }
            overflowed.push(scalar(vec![("worker_id", w.id.clone())], overflow as f64));
            for ((method, endpoint), n) in by_endpoint {
                failed.push(scalar(
                    vec![
                        ("worker_id", w.id.clone()),
                        ("method", method),
                        ("endpoint", endpoint),
                    ],
                    n as f64,
                ));
            }
        }
        out.push(family(
            "gunicorn_worker_failed_requests",
            "Requests in which an exception escaped the application",
            Kind::Counter,
            failed,
        ));
        out.push(family(
            "gunicorn_worker_error_handling",
            "Exceptions that escaped the application, by type",
            Kind::Counter,
            handled,
        ));
        out.push(family(
            "ferrocorn_worker_label_overflow",
            "Failed requests counted in the overflow series (label sets past the per-worker bound)",
            Kind::Counter,
            overflowed,
        ));
    }

    fn master_families(&self, out: &mut Vec<Family>) {
        let Some(m) = self.src.shm.master() else {
            return;
        };
        let mut restarts: Vec<Sample> = m
            .restarts()
            .into_iter()
            .map(|(r, n)| scalar(vec![("reason", r.to_owned())], n as f64))
            .collect();
        restarts.extend(
            m.killed_by()
                .into_iter()
                .map(|(sig, n)| scalar(vec![("reason", signal_label(sig))], n as f64)),
        );
        let handled = m.signals();
        let signals = HANDLED_SIGNALS
            .iter()
            .map(|sig| {
                let n = handled
                    .iter()
                    .find(|(s, _)| s == sig)
                    .map_or(0, |(_, n)| *n);
                scalar(vec![("signal", signal_label(*sig))], n as f64)
            })
            .collect();
        out.push(family(
            "gunicorn_master_worker_restarts",
            "Worker exits reaped by the master, by cause",
            Kind::Counter,
            restarts,
        ));
        out.push(family(
            "gunicorn_master_signals",
            "Signals handled by the master",
            Kind::Counter,
            signals,
        ));
    }

    fn listener_families(&self, out: &mut Vec<Family>) {
        let backlog = self
            .src
            .tcp_listeners
            .iter()
            .filter_map(|(fd, url)| {
                let n = crate::sock::accept_queue_len(*fd)?;
                Some(scalar(vec![("listener", url.clone())], f64::from(n)))
            })
            .collect();
        out.push(family(
            "gunicorn_listen_backlog",
            "Connections waiting in the listener's accept queue",
            Kind::Gauge,
            backlog,
        ));
    }
}

/// The `/workers` document, for `ferrocorn top`: each live worker with its
/// state, requests served, memory, CPU time and requests in flight, and the
/// master's restarts by reason. Read from shared memory and /proc like a
/// scrape (atomic loads only: it never waits for a worker); CPU is the
/// total so far, so that every reader computes its own rate.
pub fn workers_json(src: &Source, master_pid: u32) -> String {
    let shm = src.shm;
    let now_ms = monotonic_ms();
    let mut workers = Vec::new();
    for i in 0..shm.len() {
        let Some(s) = shm.slot(i) else { continue };
        let gen = s.generation.load(std::sync::atomic::Ordering::Acquire);
        let state = s.state();
        let pid = s.pid.load(std::sync::atomic::Ordering::Relaxed);
        if state == State::Free || pid == 0 {
            continue;
        }
        let (requests, in_progress) = shm.metrics(i).map_or((0, 0), |m| {
            (
                m.requests(),
                m.in_flight.load(std::sync::atomic::Ordering::Relaxed),
            )
        });
        let running: Vec<serde_json::Value> = shm
            .in_flight(i)
            .map(|f| f.read())
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                serde_json::json!({
                    "method": r.method,
                    "path": r.path,
                    "running_seconds": now_ms.saturating_sub(r.started_ms) as f64 / 1000.0,
                })
            })
            .collect();
        let state_name = STATES
            .iter()
            .find(|(st, _)| *st == state)
            .map_or("unknown", |(_, n)| n);
        let w = serde_json::json!({
            "pid": pid,
            "age": s.age.load(std::sync::atomic::Ordering::Relaxed),
            "state": state_name,
            "requests": requests,
            "requests_in_progress": in_progress,
            "rss_bytes": crate::process::rss_bytes(pid as i32),
            "cpu_seconds": crate::process::cpu_seconds(pid as i32),
            "uptime_seconds": now_ms.saturating_sub(s.born_ms()) as f64 / 1000.0,
            "in_flight": running,
        });
        // Recycled while we read: the new worker shows next time.
        if s.generation.load(std::sync::atomic::Ordering::Acquire) == gen {
            workers.push(w);
        }
    }
    let mut restarts = serde_json::Map::new();
    if let Some(m) = shm.master() {
        for (r, n) in m.restarts() {
            restarts.insert(r.to_owned(), n.into());
        }
        for (sig, n) in m.killed_by() {
            restarts.insert(signal_label(sig), n.into());
        }
    }
    serde_json::json!({
        "master_pid": master_pid,
        "worker_kind": src.worker_kind,
        "version": src.version,
        "workers": workers,
        "restarts": restarts,
    })
    .to_string()
}

fn percent(part_ms: f64, whole_ms: f64) -> f64 {
    if whole_ms > 0.0 {
        part_ms / whole_ms * 100.0
    } else {
        0.0
    }
}

/// `hup`, `kill`, ...: gunicorn's lower-case signal names.
fn signal_label(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().trim_start_matches("SIG").to_lowercase())
        .unwrap_or_else(|_| format!("sig{sig}"))
}

fn family(name: &str, help: &str, kind: Kind, samples: Vec<Sample>) -> Family {
    Family {
        name: name.to_owned(),
        help: help.to_owned(),
        kind,
        samples,
    }
}

fn labels(l: Vec<(&str, String)>) -> Vec<(String, String)> {
    l.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn scalar(l: Vec<(&str, String)>, v: f64) -> Sample {
    Sample {
        labels: labels(l),
        value: SampleValue::Scalar(v),
    }
}

fn histogram(l: Vec<(&str, String)>, (buckets, count, sum): Snapshot) -> Sample {
    Sample {
        labels: labels(l),
        value: SampleValue::Histogram {
            buckets,
            sum: micros(sum),
            count,
        },
    }
}

/// An application family (prometheus_client's samples) in the exporter's
/// model, sample lines kept as they are.
fn app_family(f: crate::mpfiles::Family) -> Family {
    let kind = f.kind;
    let base = match kind {
        Kind::Counter => f.name.strip_suffix("_total").unwrap_or(&f.name).to_owned(),
        _ => f.name.clone(),
    };
    let samples = f
        .samples
        .into_iter()
        .map(|s| Sample {
            value: SampleValue::Raw {
                suffix: s.name.strip_prefix(&base).unwrap_or("").to_owned(),
                value: s.value,
            },
            labels: s.labels,
        })
        .collect();
    Family {
        name: base,
        help: f.help,
        kind,
        samples,
    }
}
