//! `ferrocorn top`: a live view of a running server for the person on
//! call. It reads the exporter's `/workers` document (the exporter builds
//! it from shared memory and /proc, as a scrape: a worker never waits for
//! it) every interval and shows one row per worker: pid, kind, state,
//! requests served and per second, RSS, CPU, the oldest request in flight
//! (method, path, how long it has run), then the master's restarts by
//! reason. `--once` prints the same as a plain table.
//!
//! - `find`: the server from a pid file, a master pid or its process title,
//!   to its exporter's address;
//! - `tui`: the terminal view (ratatui on crossterm).

mod find;
mod http;
mod tui;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Deserialize;

use http::{Endpoint, TlsArgs};

const USAGE: &str = "\
usage: ferrocorn top [--pid FILE | --master PID | --metrics ADDRESS] [--once] [--interval SECONDS]

A live view of a running ferrocorn server: one row per worker with its pid,
kind, state, requests served, requests per second, resident memory, CPU and
the oldest request in flight (method, path, running time), and the master's
worker restarts by reason. Press q (or Esc, Ctrl-C) to quit.

Finding the server (by default: the only process titled \"ferrocorn: master\"):
  -p, --pid FILE         the server's pid file (its --pid)
  --master PID           the master's process id
  --metrics ADDRESS      the metrics exporter's HOST:PORT (http://HOST:PORT,
                         https://HOST:PORT); ferrocorn top reads its /workers
An HTTPS exporter (PROMETHEUS_SSL_CERTFILE):
  --cacert FILE          the CA certificate(s) that signed the exporter's
                         certificate, which must name the host (or address)
  --cert FILE --key FILE a client certificate, for an exporter that requires
                         one (PROMETHEUS_SSL_CLIENT_AUTH_REQUIRED)
Output:
  --once                 print one plain table (two samples an interval
                         apart, for the rates) and exit
  -n, --interval SECONDS between refreshes (default 1)
";

/// Where the server is, as given on the command line.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Pidfile(PathBuf),
    Master(u32),
    Metrics(String),
    Any,
}

#[derive(Debug, Clone, PartialEq)]
struct Args {
    target: Target,
    tls: TlsArgs,
    once: bool,
    interval: Duration,
}

fn parse_args(args: &[OsString]) -> Result<Option<Args>, String> {
    let mut target = Target::Any;
    let mut tls = TlsArgs::default();
    let mut once = false;
    let mut interval = Duration::from_secs(1);
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    let set = |t: Target, target: &mut Target| -> Result<(), String> {
        if *target != Target::Any {
            return Err("give only one of --pid, --master and --metrics".to_owned());
        }
        *target = t;
        Ok(())
    };
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--once" => once = true,
            "-p" | "--pid" => set(Target::Pidfile(value("--pid")?.into()), &mut target)?,
            "--master" => {
                let v = value("--master")?;
                let pid = v
                    .parse()
                    .map_err(|_| format!("--master {v:?}: not a process id"))?;
                set(Target::Master(pid), &mut target)?;
            }
            "--metrics" => set(Target::Metrics(value("--metrics")?), &mut target)?,
            "--cacert" => tls.cacert = Some(value("--cacert")?.into()),
            "--cert" => tls.cert = Some(value("--cert")?.into()),
            "--key" => tls.key = Some(value("--key")?.into()),
            "-n" | "--interval" => {
                let v = value("--interval")?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.1 && *s <= 3600.0)
                    .ok_or_else(|| {
                        format!("--interval {v:?}: a number of seconds from 0.1 to 3600")
                    })?;
                interval = Duration::from_secs_f64(secs);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(Args {
        target,
        tls,
        once,
        interval,
    }))
}

/// Runs `ferrocorn top ARGS...` and returns the exit status.
pub fn main(args: &[OsString]) -> i32 {
    let args = match parse_args(args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{USAGE}");
            return 0;
        }
        Err(e) => {
            eprintln!("Error: ferrocorn top: {e} (see ferrocorn top --help)");
            return 2;
        }
    };
    let source = match Source::find(&args.target, &args.tls) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("Error: ferrocorn top: {e}");
            return 1;
        }
    };
    if args.once {
        return match once(&source, args.interval) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => {
                eprintln!("Error: ferrocorn top: {e}");
                1
            }
        };
    }
    match tui::run(&source, args.interval) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: ferrocorn top: {e}");
            1
        }
    }
}

/// The exporter serving `/workers`, and how it was found.
pub(crate) struct Source {
    exporter: Endpoint,
    /// "found by pid file x.pid (master 1234), metrics ADDR", for the title.
    found: String,
}

impl Source {
    fn find(target: &Target, tls: &TlsArgs) -> Result<Source, String> {
        let (master, how) = match target {
            Target::Metrics(a) => {
                let exporter = Endpoint::given(a, tls)?;
                return Ok(Source {
                    found: format!("metrics {}", exporter.url()),
                    exporter,
                });
            }
            Target::Pidfile(p) => (
                find::master_from_pidfile(p)?,
                format!("pid file {}", p.display()),
            ),
            Target::Master(pid) => (find::check_master(*pid)?, "--master".to_owned()),
            Target::Any => (find::only_master()?, "process title".to_owned()),
        };
        let exporter = Endpoint::found(find::exporter_of(master)?, tls)?;
        Ok(Source {
            found: format!(
                "found by {how} (master {master}), metrics {}",
                exporter.url()
            ),
            exporter,
        })
    }

    fn fetch(&self) -> Result<Sample, String> {
        let body = self.exporter.get("/workers")?;
        let doc: Doc = serde_json::from_slice(&body).map_err(|e| {
            format!(
                "the /workers document of {} is not valid: {e}",
                self.exporter.url()
            )
        })?;
        Ok(Sample {
            at: Instant::now(),
            doc,
        })
    }
}

/// The exporter's `/workers` document (src/exporter/collect.rs).
#[derive(Debug, Clone, Deserialize)]
struct Doc {
    master_pid: u32,
    worker_kind: String,
    workers: Vec<WorkerDoc>,
    /// Reason -> count, the master's restarts.
    restarts: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Deserialize)]
struct WorkerDoc {
    pid: u32,
    age: u64,
    state: String,
    requests: u64,
    requests_in_progress: u64,
    rss_bytes: Option<u64>,
    cpu_seconds: Option<f64>,
    in_flight: Vec<RunningDoc>,
}

#[derive(Debug, Clone, Deserialize)]
struct RunningDoc {
    method: String,
    path: String,
    running_seconds: f64,
}

pub(crate) struct Sample {
    at: Instant,
    doc: Doc,
}

/// One row of the view, rates against the previous sample.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    pid: u32,
    kind: String,
    state: String,
    requests: u64,
    /// None: no previous sample of this worker.
    per_second: Option<f64>,
    rss_mb: Option<f64>,
    cpu_percent: Option<f64>,
    in_flight: String,
}

/// The rows of `now`, by worker age, with rates since `before`.
fn rows(before: Option<&Sample>, now: &Sample) -> Vec<Row> {
    let prev: HashMap<u32, &WorkerDoc> = before
        .map(|b| b.doc.workers.iter().map(|w| (w.pid, w)).collect())
        .unwrap_or_default();
    let secs = before.map_or(0.0, |b| now.at.duration_since(b.at).as_secs_f64());
    let mut workers: Vec<&WorkerDoc> = now.doc.workers.iter().collect();
    workers.sort_by_key(|w| w.age);
    workers
        .into_iter()
        .map(|w| {
            let p = prev.get(&w.pid).filter(|_| secs > 0.0);
            Row {
                pid: w.pid,
                kind: now.doc.worker_kind.clone(),
                state: w.state.clone(),
                requests: w.requests,
                per_second: p.map(|p| w.requests.saturating_sub(p.requests) as f64 / secs),
                rss_mb: w.rss_bytes.map(|b| b as f64 / (1024.0 * 1024.0)),
                cpu_percent: p.and_then(|p| {
                    let (a, b) = (p.cpu_seconds?, w.cpu_seconds?);
                    Some(((b - a).max(0.0) / secs) * 100.0)
                }),
                in_flight: in_flight_text(w),
            }
        })
        .collect()
}

/// The oldest request in flight, "GET /path 1.2s", and how many more.
fn in_flight_text(w: &WorkerDoc) -> String {
    let Some(first) = w
        .in_flight
        .iter()
        .max_by(|a, b| a.running_seconds.total_cmp(&b.running_seconds))
    else {
        return match w.requests_in_progress {
            0 => "-".to_owned(),
            n => format!("({n} in progress)"),
        };
    };
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    };
    let mut text = format!(
        "{} {} {:.1}s",
        clean(&first.method),
        clean(&first.path),
        first.running_seconds
    );
    let more = w.requests_in_progress.saturating_sub(1);
    if more > 0 {
        text.push_str(&format!(" (+{more})"));
    }
    text
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

const HEADERS: [&str; 8] = [
    "PID",
    "KIND",
    "STATE",
    "REQUESTS",
    "REQ/S",
    "RSS_MB",
    "CPU%",
    "IN_FLIGHT",
];

fn cells(r: &Row) -> [String; 8] {
    [
        r.pid.to_string(),
        r.kind.clone(),
        r.state.clone(),
        r.requests.to_string(),
        opt(r.per_second, 1),
        opt(r.rss_mb, 1),
        opt(r.cpu_percent, 1),
        r.in_flight.clone(),
    ]
}

/// "timeout=0 max_requests=2 ...": every reason the master counts.
fn restarts_text(doc: &Doc) -> String {
    doc.restarts
        .iter()
        .map(|(r, n)| format!("{r}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn title(source: &Source, doc: &Doc) -> String {
    format!(
        "ferrocorn top: master {}, {} workers ({}), {}",
        doc.master_pid,
        doc.workers.len(),
        doc.worker_kind,
        source.found
    )
}

/// `--once`: the plain table, from two samples `interval` apart.
fn once(source: &Source, interval: Duration) -> Result<String, String> {
    let first = source.fetch()?;
    std::thread::sleep(interval);
    let now = source.fetch()?;
    Ok(table(source, Some(&first), &now))
}

/// The plain table: a title line, a header, one line per worker (columns
/// separated by spaces; IN_FLIGHT, last, may hold spaces), a blank line and
/// the restarts.
fn table(source: &Source, before: Option<&Sample>, now: &Sample) -> String {
    let rows: Vec<[String; 8]> = rows(before, now).iter().map(cells).collect();
    let mut widths = HEADERS.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = title(source, &now.doc);
    out.push('\n');
    out.push_str(&line(&HEADERS.map(str::to_owned)));
    out.push('\n');
    for r in &rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out.push('\n');
    out.push_str("RESTARTS ");
    out.push_str(&restarts_text(&now.doc));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments() {
        let a = parse_args(&os(&["--pid", "x.pid", "--once", "-n", "0.5"]))
            .unwrap()
            .unwrap();
        assert_eq!(a.target, Target::Pidfile("x.pid".into()));
        assert!(a.once);
        assert_eq!(a.interval, Duration::from_millis(500));
        let a = parse_args(&os(&["--metrics=127.0.0.1:9"]))
            .unwrap()
            .unwrap();
        assert_eq!(a.target, Target::Metrics("127.0.0.1:9".into()));
        let a = parse_args(&os(&[
            "--cacert",
            "ca.pem",
            "--cert=c.pem",
            "--key",
            "k.pem",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(a.tls.cacert, Some("ca.pem".into()));
        assert_eq!(a.tls.cert, Some("c.pem".into()));
        assert_eq!(a.tls.key, Some("k.pem".into()));
        assert_eq!(parse_args(&os(&["-h"])).unwrap(), None);
        for bad in [
            &["--pid"][..],
            &["--master", "x"],
            &["--interval", "0"],
            &["--interval", "nan"],
            &["--pid", "a", "--master", "1"],
            &["--bogus"],
        ] {
            assert!(parse_args(&os(bad)).is_err(), "{bad:?}");
        }
    }

    fn doc(requests: u64, cpu: f64) -> Doc {
        serde_json::from_value(serde_json::json!({
            "master_pid": 10,
            "worker_kind": "sync",
            "version": "0",
            "workers": [
                {"pid": 12, "age": 2, "state": "idle", "requests": requests,
                 "requests_in_progress": 0, "rss_bytes": 10485760, "cpu_seconds": cpu,
                 "uptime_seconds": 1.0, "in_flight": []},
                {"pid": 11, "age": 1, "state": "busy", "requests": 5,
                 "requests_in_progress": 3, "rss_bytes": null, "cpu_seconds": null,
                 "uptime_seconds": 1.0, "in_flight": [
                    {"method": "GET", "path": "/a\nb", "running_seconds": 0.5},
                    {"method": "POST", "path": "/slow", "running_seconds": 2.25}]}
            ],
            "restarts": {"timeout": 1, "max_requests": 0}
        }))
        .unwrap()
    }

    #[test]
    fn rows_and_rates() {
        let t0 = Instant::now();
        let a = Sample {
            at: t0,
            doc: doc(10, 1.0),
        };
        let b = Sample {
            at: t0 + Duration::from_secs(2),
            doc: doc(30, 1.5),
        };
        let r = rows(Some(&a), &b);
        assert_eq!(r[0].pid, 11, "by age");
        assert_eq!(r[0].in_flight, "POST /slow 2.2s (+2)");
        assert_eq!(r[0].rss_mb, None);
        assert_eq!(r[1].per_second, Some(10.0));
        assert_eq!(r[1].cpu_percent, Some(25.0));
        assert_eq!(r[1].rss_mb, Some(10.0));
        assert_eq!(r[1].in_flight, "-");
        // No previous sample: no rates.
        assert_eq!(rows(None, &b)[1].per_second, None);
        let src = Source {
            exporter: Endpoint::given("127.0.0.1:1", &TlsArgs::default()).unwrap(),
            found: "test".into(),
        };
        let text = table(&src, Some(&a), &b);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ferrocorn top: master 10, 2 workers (sync)"));
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            HEADERS.to_vec()
        );
        let row: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(
            &row[..7],
            &["12", "sync", "idle", "30", "10.0", "10.0", "25.0"]
        );
        assert_eq!(lines[4], "");
        assert_eq!(lines[5], "RESTARTS max_requests=0 timeout=1");
        // a control character in a path is not printed
        let mut d = doc(1, 1.0);
        d.workers[1].in_flight.truncate(1);
        assert_eq!(in_flight_text(&d.workers[1]), "GET /a?b 0.5s (+2)");
    }
}
