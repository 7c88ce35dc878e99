//! statsd: gunicorn 27's statsd metrics (`gunicorn/instrument/statsd.py`,
//! the `gunicorn.workers` and `gunicorn.backlog` lines of its arbiter),
//! sent by the exporter process from shared memory.
//!
//! gunicorn sends one datagram per request from the worker; here the
//! workers only count (the atomic adds the Prometheus metrics already make)
//! and the exporter sends, every [`FLUSH_EVERY`] and once when it stops,
//! what changed since the last flush, several lines per datagram:
//!
//! - `gunicorn.requests:N|c|@1.0` and `gunicorn.request.status.NNN:N|c|@1.0`:
//!   the exact number of requests answered since the last flush;
//! - `gunicorn.request.duration:MS|ms|@R`: one line per histogram bucket that
//!   received requests, whose sample rate `R = 1/count` makes the receiver
//!   count exactly the requests of that bucket. The value is the bucket's
//!   midpoint (the exact mean when one bucket received everything; for the
//!   +Inf bucket, the mean of what the finite buckets leave of the sum, at
//!   least the last bound): percentiles are as fine as the buckets
//!   (`metrics_duration_buckets`), counts are exact;
//! - `gunicorn.workers:N|g` when the number of workers changed;
//! - `gunicorn.log.critical|error|warning|exception:N|c|@1.0`: error-log
//!   lines at those levels (counted whatever `--log-level` shows);
//! - `gunicorn.backlog:N|h` with `enable_backlog_metric`: connections waiting
//!   in the TCP listeners' accept queues, summed.
//!
//! Every line carries `|#tags` when `dogstatsd_tags` is set, and the prefix
//! by gunicorn's rule ([`prefix`]). Totals survive worker restarts (they
//! include the retired accumulator) and exporter restarts (what was sent is
//! kept in shared memory, [`StatsdSent`]). A datagram that cannot be sent
//! leaves its counts to the next flush; the outage is logged once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::collect::{live_workers, read_consistent, Source};
use crate::config::{Statsd, StatsdAddr};
use crate::metrics::store::{duration_bounds, MAX_DURATION_BUCKETS, STATUSES, STATUS_MIN};
use crate::redis::push::{Beat, Stop, Ticker};
use crate::shm::{Shm, StatsdSent};

/// How often the changes are sent.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// A datagram's payload at most: fits one Ethernet frame with IPv6 and
/// UDP headers (statsd's and DogStatsD's advice for UDP)…
const MAX_UDP: usize = 1432;
/// …and for a unix socket, DogStatsD's default buffer.
const MAX_UNIX: usize = 8192;

/// A send that takes longer (a full unix socket queue) counts as failed.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// While UDP sends fail, each flush first sends an empty datagram and waits
/// this long for the ICMP refusal: a refused datagram is only reported by
/// the send after it, so counts sent blind would be lost half the time.
const PROBE_WAIT: Duration = Duration::from_millis(100);

/// gunicorn's `sub(r"^(.+[^.]+)\.*$", "\g<1>.", prefix)`: trailing dots
/// become one, and one is added, unless fewer than two characters are left
/// without them (gunicorn leaves such a prefix as it is, so `a` makes
/// `agunicorn.requests`; kept for the same names).
pub fn prefix(p: &str) -> String {
    let stem = p.trim_end_matches('.');
    // `.` does not match a newline in Python's regex: such a prefix is
    // left alone there too.
    if stem.chars().count() >= 2 && !stem.contains('\n') {
        format!("{stem}.")
    } else {
        p.to_owned()
    }
}

/// Server-wide totals, as counted in shared memory or as sent.
#[derive(Debug, Clone, PartialEq)]
struct Totals {
    requests: u64,
    statuses: Vec<u64>,
    duration: Vec<u64>,
    duration_sum_micros: u64,
    log: [u64; 4],
}

impl Totals {
    fn zero() -> Totals {
        Totals {
            requests: 0,
            statuses: vec![0; STATUSES],
            duration: vec![0; MAX_DURATION_BUCKETS + 1],
            duration_sum_micros: 0,
            log: [0; 4],
        }
    }

    /// What the workers (live and retired) have counted: read between two
    /// equal fold epochs, so a worker being reaped is counted once.
    fn counted(shm: &Shm) -> Totals {
        let mut t = read_consistent(shm, || {
            let mut t = Totals::zero();
            let mut statuses = [0; STATUSES];
            let all = (0..shm.len())
                .filter_map(|i| shm.metrics(i))
                .chain(shm.retired());
            for m in all {
                m.duration.add_counts_into(&mut t.duration);
                t.duration_sum_micros += m.duration.sum_micros();
                m.add_statuses_into(&mut statuses);
            }
            t.statuses = statuses.to_vec();
            t.requests = t.duration.iter().sum();
            t
        });
        if let Some(l) = shm.log_counts() {
            for (t, c) in t.log.iter_mut().zip(&l.counts) {
                *t = c.load(Ordering::Relaxed);
            }
        }
        t
    }

    fn sent(s: &StatsdSent) -> Totals {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Totals {
            requests: load(&s.requests),
            statuses: s.statuses.iter().map(load).collect(),
            duration: s.duration.iter().map(load).collect(),
            duration_sum_micros: load(&s.duration_sum_micros),
            log: [0, 1, 2, 3].map(|i| load(&s.log[i])),
        }
    }
}

/// What a line, once sent, moves forward in [`StatsdSent`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sent {
    Requests(u64),
    Status(usize, u64),
    Duration(usize, u64),
    Log(usize, u64),
    Workers(u64),
    /// A histogram sample (backlog): nothing to remember.
    Nothing,
}

impl Sent {
    fn record(self, s: &StatsdSent) {
        let store = |a: Option<&std::sync::atomic::AtomicU64>, v| {
            if let Some(a) = a {
                a.store(v, Ordering::Relaxed);
            }
        };
        match self {
            Sent::Requests(v) => store(Some(&s.requests), v),
            Sent::Status(i, v) => store(s.statuses.get(i), v),
            Sent::Duration(i, v) => store(s.duration.get(i), v),
            Sent::Log(i, v) => store(s.log.get(i), v),
            Sent::Workers(n) => store(Some(&s.workers), n + 1),
            Sent::Nothing => {}
        }
    }
}

/// The statsd lines for the change from `sent` to `now` (without prefix and
/// tags), each with what it moves forward once delivered. `workers`: the
/// gauge to send if it changed; `backlog`: the histogram sample, if on.
fn lines(
    sent: &Totals,
    now: &Totals,
    bounds: &[f64],
    workers: Option<u64>,
    backlog: Option<u64>,
) -> Vec<(String, Sent)> {
    let mut out = Vec::new();
    let counter = |name: &str, d: u64| format!("{name}:{d}|c|@1.0");
    let requests = now.requests.saturating_sub(sent.requests);
    if requests > 0 {
        out.push((
            counter("gunicorn.requests", requests),
            Sent::Requests(now.requests),
        ));
    }
    for (i, (n, s)) in now.statuses.iter().zip(&sent.statuses).enumerate() {
        if n > s {
            let code = usize::from(STATUS_MIN) + i;
            out.push((
                counter(&format!("gunicorn.request.status.{code}"), n - s),
                Sent::Status(i, *n),
            ));
        }
    }
    let deltas: Vec<u64> = now
        .duration
        .iter()
        .zip(&sent.duration)
        .map(|(n, s)| n.saturating_sub(*s))
        .collect();
    let sum_ms = now
        .duration_sum_micros
        .saturating_sub(sent.duration_sum_micros) as f64
        / 1000.0;
    for (i, ms) in representatives(&deltas, sum_ms, bounds) {
        let n = deltas[i];
        let rate = if n > 1 {
            format!("|@{}", 1.0 / n as f64)
        } else {
            String::new()
        };
        out.push((
            format!("gunicorn.request.duration:{ms:.3}|ms{rate}"),
            Sent::Duration(i, now.duration[i]),
        ));
    }
    if let Some(n) = workers {
        out.push((format!("gunicorn.workers:{n}|g"), Sent::Workers(n)));
    }
    for (i, name) in crate::log::COUNTED.iter().enumerate() {
        let d = now.log[i].saturating_sub(sent.log[i]);
        if d > 0 {
            out.push((
                counter(&format!("gunicorn.log.{name}"), d),
                Sent::Log(i, now.log[i]),
            ));
        }
    }
    if let Some(n) = backlog {
        out.push((format!("gunicorn.backlog:{n}|h"), Sent::Nothing));
    }
    out
}

/// (bucket, milliseconds) for each bucket with requests (see the module
/// comment): buckets from `bounds.len()` on are +Inf.
fn representatives(deltas: &[u64], sum_ms: f64, bounds: &[f64]) -> Vec<(usize, f64)> {
    let used: Vec<usize> = (0..deltas.len()).filter(|&i| deltas[i] > 0).collect();
    if let [only] = used[..] {
        return vec![(only, sum_ms / deltas[only] as f64)];
    }
    let last = bounds.last().copied().unwrap_or(0.0) * 1000.0;
    let mid = |i: usize| {
        let lo = if i == 0 { 0.0 } else { bounds[i - 1] };
        (lo + bounds[i]) / 2.0 * 1000.0
    };
    let finite: f64 = used
        .iter()
        .filter(|&&i| i < bounds.len())
        .map(|&i| mid(i) * deltas[i] as f64)
        .sum();
    let inf: u64 = used
        .iter()
        .filter(|&&i| i >= bounds.len())
        .map(|&i| deltas[i])
        .sum();
    let inf_ms = if inf > 0 {
        ((sum_ms - finite) / inf as f64).max(last)
    } else {
        last
    };
    used.into_iter()
        .map(|i| (i, if i < bounds.len() { mid(i) } else { inf_ms }))
        .collect()
}

/// Groups lines into datagrams of at most `max` bytes, newline-separated:
/// index ranges into `lines` (a line longer than `max` goes alone).
fn batches(lines: &[String], max: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut len) = (0, 0);
    for (i, l) in lines.iter().enumerate() {
        let add = if i == start {
            l.len()
        } else {
            len + 1 + l.len()
        };
        if i > start && add > max {
            out.push(start..i);
            start = i;
            len = l.len();
        } else {
            len = add;
        }
    }
    if start < lines.len() {
        out.push(start..lines.len());
    }
    out
}

enum Socket {
    Udp(tokio::net::UdpSocket),
    Unix(tokio::net::UnixDatagram),
}

impl Socket {
    async fn connect(addr: &StatsdAddr) -> std::io::Result<Socket> {
        match addr {
            StatsdAddr::Unix(path) => {
                let s = tokio::net::UnixDatagram::unbound()?;
                s.connect(path)?;
                Ok(Socket::Unix(s))
            }
            StatsdAddr::Udp { host, port } => {
                let mut last = None;
                for a in tokio::net::lookup_host((host.as_str(), *port)).await? {
                    let local = if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                    let s = tokio::net::UdpSocket::bind(local).await?;
                    match s.connect(a).await {
                        Ok(()) => return Ok(Socket::Udp(s)),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no address for the host")
                }))
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> std::io::Result<()> {
        let sent = match self {
            Socket::Udp(s) => tokio::time::timeout(SEND_TIMEOUT, s.send(buf)).await,
            Socket::Unix(s) => tokio::time::timeout(SEND_TIMEOUT, s.send(buf)).await,
        };
        match sent {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the receiver takes nothing",
            )),
        }
    }
}

/// The sender: runs beside the exporter's HTTP server (or alone, with the
/// Prometheus metrics off).
pub struct Sender {
    cfg: Statsd,
    prefix: String,
    source: Source,
    sock: Option<Socket>,
    /// Sending failed and has not worked since (logged once).
    failing: bool,
}

impl Sender {
    pub fn new(cfg: Statsd, source: Source) -> Sender {
        Sender {
            prefix: prefix(&cfg.prefix),
            cfg,
            source,
            sock: None,
            failing: false,
        }
    }

    fn target(&self) -> String {
        match &self.cfg.addr {
            StatsdAddr::Unix(p) => format!("unix://{}", p.display()),
            StatsdAddr::Udp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            StatsdAddr::Udp { host, port } => format!("{host}:{port}"),
        }
    }

    /// Flushes every [`FLUSH_EVERY`] until told to stop, then once more:
    /// at a shutdown, after the workers are reaped (their last requests
    /// included; `drained` says so), at most `drain_limit` later.
    pub async fn run(
        mut self,
        stop: watch::Receiver<Option<Stop>>,
        drained: impl Fn() -> bool,
        drain_limit: Duration,
    ) {
        crate::log_info!(
            "statsd: sending to {} every {:.1}s",
            self.target(),
            FLUSH_EVERY.as_secs_f64()
        );
        let mut ticker = Ticker::new(FLUSH_EVERY, stop);
        let why = loop {
            match ticker.next().await {
                Beat::Tick => self.flush().await,
                Beat::Stop(why) => break why,
            }
        };
        why.wait_drained(drained, drain_limit).await;
        self.flush().await;
    }

    /// Sends what changed since the last flush.
    pub async fn flush(&mut self) {
        let shm = self.source.shm;
        let Some(sent_shm) = shm.statsd_sent() else {
            return;
        };
        let now = Totals::counted(shm);
        let sent = Totals::sent(sent_shm);
        let live = live_workers(shm) as u64;
        let workers = (sent_shm.workers.load(Ordering::Relaxed) != live + 1).then_some(live);
        let backlog = self.cfg.backlog.then(|| {
            self.source
                .tcp_listeners
                .iter()
                .filter_map(|(fd, _)| crate::sock::accept_queue_len(*fd))
                .map(u64::from)
                .sum()
        });
        let items = lines(&sent, &now, duration_bounds(), workers, backlog);
        // The sum moves on with the flush, whatever is delivered: it only
        // places the duration values (see `representatives`).
        sent_shm
            .duration_sum_micros
            .store(now.duration_sum_micros, Ordering::Relaxed);
        if items.is_empty() {
            return;
        }
        let tags = if self.cfg.tags.is_empty() {
            String::new()
        } else {
            format!("|#{}", self.cfg.tags)
        };
        let text: Vec<String> = items
            .iter()
            .map(|(l, _)| format!("{}{l}{tags}", self.prefix))
            .collect();
        let max = match self.cfg.addr {
            StatsdAddr::Unix(_) => MAX_UNIX,
            StatsdAddr::Udp { .. } => MAX_UDP,
        };
        let probe = self.failing && matches!(self.cfg.addr, StatsdAddr::Udp { .. });
        if probe {
            if let Err(e) = self.send(b"").await {
                return self.failed(&e);
            }
            tokio::time::sleep(PROBE_WAIT).await;
        }
        for range in batches(&text, max) {
            let datagram = text[range.clone()].join("\n");
            if let Err(e) = self.send(datagram.as_bytes()).await {
                return self.failed(&e);
            }
            for (_, s) in &items[range] {
                s.record(sent_shm);
            }
        }
        if std::mem::take(&mut self.failing) {
            crate::log_info!("statsd: sending to {} again", self.target());
            // A gauge sent while the receiver was down was lost unnoticed
            // (UDP): send it again next time.
            sent_shm.workers.store(0, Ordering::Relaxed);
        }
    }

    /// A send failed: logged once per outage; the counts not sent wait for
    /// the next flush.
    fn failed(&mut self, e: &std::io::Error) {
        if !self.failing {
            crate::log_error!(
                "statsd: cannot send to {}: {e}; the counts are kept and sent once it answers",
                self.target()
            );
            self.failing = true;
        }
    }

    async fn send(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.sock.is_none() {
            self.sock = Some(Socket::connect(&self.cfg.addr).await?);
        }
        let Some(sock) = &self.sock else {
            return Ok(());
        };
        let r = sock.send(buf).await;
        if r.as_ref()
            .is_err_and(|e| e.kind() != std::io::ErrorKind::ConnectionRefused)
        {
            // Connect again next time: the address may resolve elsewhere
            // by then, or the unix socket may have been created anew. (A
            // refused UDP datagram keeps the socket: a new one would send
            // its first datagram blind.)
            self.sock = None;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_as_gunicorn() {
        for (given, want) in [
            ("", ""),
            ("a", "a"),
            ("a.", "a."),
            ("app", "app."),
            ("app.", "app."),
            ("app...", "app."),
            ("my.app", "my.app."),
        ] {
            assert_eq!(prefix(given), want, "{given:?}");
        }
    }

    fn totals(
        requests: u64,
        statuses: &[(u16, u64)],
        buckets: &[(usize, u64)],
        sum_ms: u64,
    ) -> Totals {
        let mut t = Totals::zero();
        t.requests = requests;
        for (code, n) in statuses {
            t.statuses[usize::from(code - STATUS_MIN)] = *n;
        }
        for (i, n) in buckets {
            t.duration[*i] = *n;
        }
        t.duration_sum_micros = sum_ms * 1000;
        t
    }

    #[test]
    fn lines_are_deltas_with_exact_counts() {
        let bounds = [0.01, 0.1, 1.0];
        let sent = totals(2, &[(200, 2)], &[(0, 2)], 10);
        let now = totals(
            12,
            &[(200, 9), (404, 3)],
            &[(0, 6), (1, 4), (3, 2)],
            10 + 20 + 200 + 5000,
        );
        let mut now = now;
        now.log = [0, 2, 0, 1];
        let got = lines(&sent, &now, &bounds, Some(3), Some(0));
        let text: Vec<&str> = got.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            text,
            [
                "gunicorn.requests:10|c|@1.0",
                "gunicorn.request.status.200:7|c|@1.0",
                "gunicorn.request.status.404:3|c|@1.0",
                "gunicorn.request.duration:5.000|ms|@0.25",
                "gunicorn.request.duration:55.000|ms|@0.25",
                // 5,220 ms minus the finite buckets' 240 ms, over 2.
                "gunicorn.request.duration:2490.000|ms|@0.5",
                "gunicorn.workers:3|g",
                "gunicorn.log.error:2|c|@1.0",
                "gunicorn.log.exception:1|c|@1.0",
                "gunicorn.backlog:0|h",
            ]
        );
        // Nothing new: nothing to send.
        assert!(lines(&now, &now, &bounds, None, None).is_empty());
        // One bucket: its exact mean, and no rate for a single request.
        let one = totals(
            13,
            &[(200, 10), (404, 3)],
            &[(0, 6), (1, 5), (3, 2)],
            5230 + 42,
        );
        let got = lines(&now, &one, &bounds, None, None);
        assert_eq!(got[2].0, "gunicorn.request.duration:42.000|ms");
        assert_eq!(got[2].1, Sent::Duration(1, 5));
    }

    #[test]
    fn batches_stay_under_the_size() {
        let lines: Vec<String> = (0..100)
            .map(|i| format!("gunicorn.request.status.{i}:1|c|@1.0"))
            .collect();
        let b = batches(&lines, 200);
        assert!(b.len() > 1);
        let mut next = 0;
        for r in &b {
            assert_eq!(r.start, next);
            next = r.end;
            assert!(lines[r.clone()].join("\n").len() <= 200);
        }
        assert_eq!(next, 100);
        let long = vec!["x".repeat(300), "y".into()];
        assert_eq!(batches(&long, 200), vec![0..1, 1..2]);
        assert!(batches(&[], 200).is_empty());
    }
}
