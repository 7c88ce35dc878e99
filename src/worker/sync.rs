//! The sync worker: gunicorn's sync semantics (the app runs on the loop
//! thread, one request at a time, no thread-safety asked of it), but idle
//! keep-alive connections stay parked in a mio event loop instead of being
//! closed after every response.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::socket::{getpeername, setsockopt, sockopt, SockaddrStorage};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use signal_hook::consts::{SIGHUP, SIGTERM, SIGUSR1, SIGWINCH};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use super::WorkerListener;
use crate::allowlist::AllowList;
use crate::config::Config;
use crate::hooks::{Hooks, RequestView, ResponseView, WorkerView};
use crate::http::proxy::{
    detect_proxy, parse_proxy, ProxyDetect, ProxyInfo, ProxyMode, ProxyParsed,
};
use crate::http::{parse_request, HeaderMap, HttpError, Parsed, ParserConfig};
use crate::log::access::{AccessLog, AccessRecord};
use crate::metrics::store::{method_index, Observation, WorkerMetrics, METHODS};
use crate::netio;
use crate::shm::{ErrorLabels, ErrorTable};
use crate::shm::{ExitReason, Slot, State};
use crate::sock::ListenKind;
use crate::wsgi::{error_body, error_response, Peer, ServerAddr, Wsgi, WsgiSettings};

const SIGNAL_TOKEN: Token = Token(usize::MAX - 1);
const LISTENER_BASE: usize = usize::MAX / 2;
const READ_SIZE: usize = 16 * 1024;
/// How long a stopping worker keeps an idle connection open for a request
/// the client may already have sent (at most --keep-alive).
const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);
/// Connections accepted per listener before the loop looks at the others.
const ACCEPT_BATCH: usize = 16;

struct Conn {
    fd: OwnedFd,
    listener: usize,
    peer: Peer,
    buf: Vec<u8>,
    /// `buf[start..]` is unparsed.
    start: usize,
    deadline: Instant,
    proxy_state: ProxyState,
    proxy: Option<ProxyInfo>,
    trusted: bool,
    /// Requests served on this connection (gunicorn's req_number).
    nreq: u64,
    peer_addr: Option<SocketAddr>,
}

/// Whether a PROXY protocol header may still come first on a connection.
#[derive(Clone, Copy)]
enum ProxyState {
    Pending { allowed: bool },
    Done,
}

/// What to do with a connection after processing its input.
enum Next {
    Wait,
    Close,
}

pub struct SyncWorker {
    poll: Poll,
    signals: Signals,
    listeners: Vec<WorkerListener>,
    servers: Vec<ServerAddr>,
    conns: Slab<Conn>,
    wsgi: Wsgi,
    parser: ParserConfig,
    proxy_mode: ProxyMode,
    proxy_allow: AllowList,
    access: Option<AccessLog>,
    keepalive: Duration,
    request_timeout: Duration,
    max_conns: usize,
    accepting: bool,
    alive: bool,
    nr: u64,
    max_requests: u64,
    slot: &'static Slot,
    metrics: &'static WorkerMetrics,
    /// Failed requests by label set, and this worker's index into it.
    errors: &'static ErrorTable,
    error_index: HashMap<(String, String, String), usize>,
    /// Set when Python asked the worker to exit now (SystemExit, e.g. the
    /// timeout abort or a hook): the exit code.
    exit: Option<i32>,
    term: Arc<AtomicBool>,
    /// Set once the worker stops gracefully: the time it exits at the latest.
    draining: Option<Instant>,
    /// Listeners whose accept batch was cut short (see `accept`).
    accept_pending: Vec<usize>,
    graceful_timeout: Duration,
    hooks: Arc<Hooks>,
    /// pre_request or post_request is set: build `req` objects.
    request_hooks: bool,
    /// The worker as hooks see it (counters filled in per call).
    view: WorkerView,
}

fn setup_err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

impl SyncWorker {
    pub fn new(
        py: Python<'_>,
        cfg: &Config,
        listeners: Vec<WorkerListener>,
        app: Py<PyAny>,
        ctx: super::Context,
    ) -> Result<SyncWorker, String> {
        let super::Context {
            slot,
            metrics,
            errors,
            hooks,
            view,
            term,
        } = ctx;
        let poll = Poll::new().map_err(|e| setup_err("creating the event loop", e))?;
        let mut signals = Signals::new([SIGTERM, SIGUSR1, SIGHUP, SIGWINCH])
            .map_err(|e| setup_err("installing signal handlers", e))?;
        poll.registry()
            .register(&mut signals, SIGNAL_TOKEN, Interest::READABLE)
            .map_err(|e| setup_err("registering signals", e))?;
        for (i, l) in listeners.iter().enumerate() {
            poll.registry()
                .register(
                    &mut SourceFd(&l.fd),
                    Token(LISTENER_BASE + i),
                    Interest::READABLE,
                )
                .map_err(|e| setup_err("registering a listener", e))?;
            netio::set_nonblocking(l.fd);
        }
        let servers = listeners
            .iter()
            .map(|l| ServerAddr {
                tcp: match &l.kind {
                    ListenKind::Tcp(a) => Some((
                        PyString::new(py, &a.ip().to_string()).unbind(),
                        PyString::new(py, &a.port().to_string()).unbind(),
                    )),
                    ListenKind::Unix(_) => None,
                },
            })
            .collect();
        let (line, fields, field_size) = cfg.parser_limits();
        let header_map = match cfg.header_map().as_str() {
            "refuse" => HeaderMap::Refuse,
            "dangerous" => HeaderMap::Dangerous,
            _ => HeaderMap::Drop,
        };
        let parser = ParserConfig {
            limit_request_line: line,
            limit_request_fields: fields,
            limit_request_field_size: field_size,
            permit_obsolete_folding: cfg.bool("permit_obsolete_folding"),
            strip_header_spaces: cfg.bool("strip_header_spaces"),
            permit_unconventional_http_method: cfg.bool("permit_unconventional_http_method"),
            permit_unconventional_http_version: cfg.bool("permit_unconventional_http_version"),
            casefold_http_method: cfg.bool("casefold_http_method"),
            header_map,
            forwarder_headers: cfg.forwarder_headers(),
        };
        let proxy_mode = match cfg.proxy_protocol().as_str() {
            "v1" => ProxyMode::V1,
            "v2" => ProxyMode::V2,
            "auto" => ProxyMode::Auto,
            _ => ProxyMode::Off,
        };
        let proxy_allow = AllowList::parse(&cfg.proxy_allow_ips())
            .map_err(|e| setup_err("proxy_allow_ips", e))?;
        let forwarded_allow = AllowList::parse(&cfg.forwarded_allow_ips())
            .map_err(|e| setup_err("forwarded_allow_ips", e))?;
        let secure_scheme_headers = cfg
            .secure_scheme_headers()
            .into_iter()
            .map(|(k, v)| (k.to_ascii_uppercase(), v))
            .collect();
        let timeout = cfg.timeout();
        let io_timeout = Duration::from_secs(if timeout == 0 { 3600 } else { timeout.max(1) });
        let wsgi = Wsgi::new(
            py,
            app,
            WsgiSettings {
                workers: cfg.workers(),
                script_name: std::env::var("SCRIPT_NAME").unwrap_or_default(),
                secure_scheme_headers,
                forwarded_allow,
                io_timeout,
                multithread: false,
                sendfile: cfg.sendfile(),
            },
        )
        .map_err(|e| {
            setup_err(
                "preparing the WSGI environ",
                crate::python::format_err(py, &e),
            )
        })?;
        let access = match cfg.accesslog() {
            Some(target) => Some(AccessLog::new(&target, &cfg.access_log_format())?),
            None => None,
        };
        let max_requests = match cfg.max_requests() {
            0 => u64::MAX,
            n => {
                let jitter = cfg.max_requests_jitter();
                let extra = if jitter > 0 {
                    (std::process::id() as u64).wrapping_mul(2_654_435_761) % (jitter + 1)
                } else {
                    0
                };
                n + extra
            }
        };
        Ok(SyncWorker {
            poll,
            signals,
            listeners,
            servers,
            conns: Slab::with_capacity(64),
            wsgi,
            parser,
            proxy_mode,
            proxy_allow,
            access,
            keepalive: Duration::from_secs(cfg.keepalive()),
            request_timeout: io_timeout,
            max_conns: cfg.worker_connections().max(1),
            accepting: true,
            alive: true,
            nr: 0,
            max_requests,
            slot,
            metrics,
            errors,
            error_index: HashMap::new(),
            exit: None,
            term,
            draining: None,
            accept_pending: Vec::new(),
            graceful_timeout: Duration::from_secs(cfg.graceful_timeout()),
            request_hooks: hooks.has("pre_request") || hooks.has("post_request"),
            hooks,
            view: WorkerView {
                max_requests: if max_requests == u64::MAX {
                    0
                } else {
                    max_requests
                },
                ..view
            },
        })
    }

    /// The event loop; returns the exit code.
    pub fn run(&mut self, py: Python<'_>) -> i32 {
        let mut events = Events::with_capacity(256);
        let mut next_sweep = Instant::now() + Duration::from_secs(1);
        self.slot.set_state(State::Idle);
        loop {
            if self.term.load(Ordering::Relaxed) || !self.alive {
                self.stop_gracefully();
            }
            if let Some(limit) = self.draining {
                if self.conns.is_empty() || Instant::now() >= limit {
                    break;
                }
            }
            self.slot.set_busy(false);
            // While draining, wake often enough to close idle connections
            // at their (short) deadlines.
            let wait = if !self.accept_pending.is_empty() {
                // Listeners with connections left over from the last batch:
                // just collect ready events, then accept more.
                Duration::ZERO
            } else if self.draining.is_some() {
                Duration::from_millis(50)
            } else {
                Duration::from_secs(1)
            };
            let res = py.detach(|| self.poll.poll(&mut events, Some(wait)));
            self.slot.beat();
            if let Err(e) = res {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    crate::log_error!("event loop failed: {e}");
                    return 1;
                }
            }
            // Runs Python-level signal handlers (SIGABRT on timeout).
            if let Err(e) = py.check_signals() {
                return super::system_exit_code(py, &e).unwrap_or(1);
            }
            for ev in events.iter() {
                match ev.token() {
                    SIGNAL_TOKEN => self.handle_signals(),
                    Token(t) if t >= LISTENER_BASE => self.accept(py, t - LISTENER_BASE),
                    Token(key) => {
                        if let Next::Close = self.on_readable(py, key) {
                            self.close(py, key);
                        }
                    }
                }
                if self.exit.is_some() {
                    break;
                }
            }
            for idx in std::mem::take(&mut self.accept_pending) {
                self.accept(py, idx);
            }
            if self.exit.is_some() {
                break;
            }
            let now = Instant::now();
            if now >= next_sweep || self.draining.is_some() {
                next_sweep = now + Duration::from_secs(1);
                self.sweep(py, now);
            }
        }
        // Whatever is left (idle past the drain deadline) is closed.
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.close(py, k);
        }
        self.exit.unwrap_or(0)
    }

    fn handle_signals(&mut self) {
        for sig in self.signals.pending() {
            match sig {
                SIGTERM => self.stop_gracefully(),
                SIGUSR1 => {
                    if let Err(e) = crate::log::reopen() {
                        crate::log_error!("reopening log files: {e}");
                    }
                    if let Some(a) = &self.access {
                        if let Err(e) = a.reopen() {
                            crate::log_error!("reopening the access log: {e}");
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn accept(&mut self, py: Python<'_>, idx: usize) {
        if self.term.load(Ordering::Relaxed) {
            self.stop_gracefully();
        }
        // A worker about to exit (SystemExit: the timeout abort, a hook)
        // leaves new connections in the backlog for the next worker; one it
        // accepted now would be reset when it exits.
        if !self.alive || self.exit.is_some() {
            return;
        }
        let Some(l) = self.listeners.get(idx) else {
            return;
        };
        let lfd = l.fd;
        let is_tcp = matches!(l.kind, ListenKind::Tcp(_));
        for _ in 0..ACCEPT_BATCH {
            if self.conns.len() >= self.conn_limit() {
                self.pause_accepting();
                return;
            }
            let fd = match netio::accept(lfd) {
                Ok(Some(fd)) => fd,
                Ok(None) => return,
                Err(e) => {
                    crate::log_error!("accept() failed: {e}");
                    return;
                }
            };
            let addr = if is_tcp {
                let _ = setsockopt(&fd, sockopt::TcpNoDelay, &true);
                peer_addr(fd.as_raw_fd())
            } else {
                None
            };
            let peer = Peer {
                addr: PyString::new(py, &addr.map(|a| a.ip().to_string()).unwrap_or_default())
                    .unbind(),
                port: addr.map(|a| PyString::new(py, &a.port().to_string()).unbind()),
                ip: addr.map(|a| a.ip()),
                socket: None,
            };
            let trusted = match peer.ip {
                Some(ip) => self.wsgi.forwarded_allow().contains(ip),
                None => true, // unix sockets: the peer is local, as gunicorn
            };
            let proxy_state = match (self.proxy_mode, peer.ip) {
                (ProxyMode::Off, _) => ProxyState::Done,
                (_, Some(ip)) => ProxyState::Pending {
                    allowed: self.proxy_allow.contains(ip),
                },
                (_, None) => ProxyState::Pending { allowed: true },
            };
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            let raw = fd.as_raw_fd();
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut SourceFd(&raw), Token(key), Interest::READABLE)
            {
                crate::log_error!("registering a connection: {e}");
                continue;
            }
            entry.insert(Conn {
                fd,
                listener: idx,
                peer,
                buf: Vec::new(),
                start: 0,
                deadline: Instant::now() + self.keepalive.max(Duration::from_secs(1)),
                proxy_state,
                proxy: None,
                trusted,
                nreq: 0,
                peer_addr: addr,
            });
            // The first request usually arrives with the connection: read it now.
            if let Next::Close = self.on_readable(py, key) {
                self.close(py, key);
            }
            if !self.alive || self.exit.is_some() {
                return;
            }
        }
        // More may be queued: the listener is edge-triggered, so remember
        // it, and serve what is already accepted before accepting more
        // (otherwise a steady stream of new connections starves them).
        if !self.accept_pending.contains(&idx) {
            self.accept_pending.push(idx);
        }
    }

    /// Connections the worker may hold: --worker-connections, and no more
    /// than the requests it has left before max_requests.
    fn conn_limit(&self) -> usize {
        let left = self.max_requests.saturating_sub(self.nr);
        self.max_conns
            .min(usize::try_from(left).unwrap_or(usize::MAX))
    }

    /// Graceful exit (TERM, max_requests): accept nothing new, answer every
    /// request already on an accepted connection with `Connection: close`,
    /// give idle connections a short grace for a request already on its way,
    /// then exit; bounded by --graceful-timeout.
    fn stop_gracefully(&mut self) {
        if self.draining.is_some() {
            return;
        }
        self.alive = false;
        let now = Instant::now();
        self.draining = Some(now + self.graceful_timeout);
        self.pause_accepting();
        let grace = now + self.keepalive.min(DRAIN_IDLE_GRACE);
        for (_, c) in self.conns.iter_mut() {
            c.deadline = c.deadline.min(grace);
        }
    }

    fn pause_accepting(&mut self) {
        if !self.accepting {
            return;
        }
        self.accepting = false;
        for l in &self.listeners {
            let _ = self.poll.registry().deregister(&mut SourceFd(&l.fd));
        }
    }

    fn resume_accepting(&mut self) {
        if self.accepting || !self.alive {
            return;
        }
        self.accepting = true;
        for (i, l) in self.listeners.iter().enumerate() {
            let _ = self.poll.registry().register(
                &mut SourceFd(&l.fd),
                Token(LISTENER_BASE + i),
                Interest::READABLE,
            );
        }
    }

    fn close(&mut self, py: Python<'_>, key: usize) {
        if let Some(mut c) = self.conns.try_remove(key) {
            let raw = c.fd.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
            c.peer.close(py);
        }
        if self.conns.len() < self.conn_limit() {
            self.resume_accepting();
        }
    }

    /// Closes connections idle past --keep-alive (or stuck mid-request past --timeout).
    fn sweep(&mut self, py: Python<'_>, now: Instant) {
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(k, _)| k)
            .collect();
        for k in expired {
            self.close(py, k);
        }
    }

    /// Reads what the socket has and serves every complete request in it.
    fn on_readable(&mut self, py: Python<'_>, key: usize) -> Next {
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return Next::Close;
            };
            if conn.start > 0 && conn.start == conn.buf.len() {
                conn.buf.clear();
                conn.start = 0;
            }
            let res = netio::read_append(conn.fd.as_raw_fd(), &mut conn.buf, READ_SIZE);
            let n = *res.as_ref().unwrap_or(&0);
            match res {
                Ok(0) => return Next::Close,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Next::Wait,
                Err(_) => return Next::Close,
            }
            if let Next::Close = self.process(py, key) {
                return Next::Close;
            }
            // A short read drained the socket; edge-triggered epoll reports
            // the next arrival.
            if n < READ_SIZE {
                return Next::Wait;
            }
        }
    }

    /// Serves the complete requests buffered on a connection.
    fn process(&mut self, py: Python<'_>, key: usize) -> Next {
        loop {
            if self.term.load(Ordering::Relaxed) || !self.alive {
                self.stop_gracefully();
            }
            let open = self.conns.len();
            if self.exit.is_some() {
                return Next::Close;
            }
            let Some(conn) = self.conns.get_mut(key) else {
                return Next::Close;
            };
            let fd = conn.fd.as_raw_fd();
            if conn.start == conn.buf.len() {
                conn.deadline = Instant::now() + self.keepalive;
                return Next::Wait;
            }
            if let ProxyState::Pending { allowed } = conn.proxy_state {
                let data = &conn.buf[conn.start..];
                match detect_proxy(data, self.proxy_mode) {
                    ProxyDetect::Partial => {
                        conn.deadline = Instant::now() + self.request_timeout;
                        return Next::Wait;
                    }
                    ProxyDetect::NotProxy => {
                        conn.proxy_state = ProxyState::Done;
                        continue;
                    }
                    ProxyDetect::V1 | ProxyDetect::V2 if !allowed => {
                        let e = HttpError {
                            status: 403,
                            reason: "Forbidden",
                            detail: "Request forbidden".into(),
                        };
                        reject(fd, &conn.peer, &e);
                        return Next::Close;
                    }
                    ProxyDetect::V1 | ProxyDetect::V2 => {}
                }
                match parse_proxy(data, self.proxy_mode) {
                    Ok(ProxyParsed::NotProxy) => {
                        conn.proxy_state = ProxyState::Done;
                        continue;
                    }
                    Ok(ProxyParsed::Partial) => {
                        conn.deadline = Instant::now() + self.request_timeout;
                        return Next::Wait;
                    }
                    Ok(ProxyParsed::Complete { info, consumed }) => {
                        conn.start += consumed;
                        conn.proxy_state = ProxyState::Done;
                        conn.proxy = Some(info);
                        continue;
                    }
                    Err(e) => {
                        reject(fd, &conn.peer, &e);
                        return Next::Close;
                    }
                }
            }
            let parsed = parse_request(&conn.buf[conn.start..], &self.parser, conn.trusted);
            let (head, consumed) = match parsed {
                Ok(Parsed::Partial) => {
                    conn.deadline = Instant::now() + self.request_timeout;
                    return Next::Wait;
                }
                Err(e) => {
                    reject(fd, &conn.peer, &e);
                    return Next::Close;
                }
                Ok(Parsed::Complete { head, consumed }) => (head, consumed),
            };
            // One monotonic clock read serves the duration metric and the
            // access log (which also wants the wall-clock start).
            let t0 = Instant::now();
            let start = self.access.as_ref().map(|_| SystemTime::now());
            conn.nreq += 1;
            let hook_req = if self.request_hooks {
                let headers: Vec<(&[u8], &[u8])> =
                    head.headers.iter().map(|h| (h.name, &*h.value)).collect();
                let rv = RequestView {
                    method: &head.method,
                    uri: head.uri,
                    path: head.path,
                    query: head.query,
                    fragment: head.fragment,
                    version: head.version,
                    headers: &headers,
                    scheme: "http",
                    peer: conn.peer_addr,
                    req_number: conn.nreq,
                };
                let r = self.hooks.request(py, &rv);
                let view = live_view(&self.view, self.slot, self.alive);
                if let Err(e) = self.hooks.pre_request(py, &view, &r) {
                    // gunicorn: a 500, the connection closed, nr not counted;
                    // post_request still runs with {} and no response.
                    if let Some(code) = e.system_exit {
                        self.exit = Some(code);
                    }
                    let body = error_body("Internal Server Error", "");
                    let msg = error_response(500, "Internal Server Error", &body);
                    let _ = netio::write_all(None, fd, &msg, self.request_timeout);
                    let _ = self.hooks.post_request(py, &view, &r, None, None);
                    return Next::Close;
                }
                Some(r)
            } else {
                None
            };
            self.nr += 1;
            // max_requests: the worker never holds more connections than
            // it has requests left (see `conn_limit`), and a response closes
            // its connection when keeping it would break that; so no request
            // it accepted is dropped and it never serves more than its limit.
            let left = self.max_requests.saturating_sub(self.nr);
            let over_budget = open as u64 > left;
            if self.alive && left == 0 {
                crate::log_info!("Autorestarting worker after current request.");
                self.slot.set_exit_reason(ExitReason::MaxRequests);
                // This response says Connection: close; the drain starts
                // once it is written.
                self.alive = false;
            }
            self.slot.set_busy(true);
            self.slot
                .requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
            let must_close =
                !head.keep_alive || self.keepalive.is_zero() || !self.alive || over_budget;
            if head.expect_continue {
                let _ = netio::write_all(
                    Some(py),
                    fd,
                    b"HTTP/1.1 100 Continue\r\n\r\n",
                    self.request_timeout,
                );
            }
            let server = &self.servers[conn.listener];
            let env = match self.wsgi.environ(
                py,
                &head,
                server,
                &conn.peer,
                conn.proxy.as_ref(),
                conn.trusted,
            ) {
                Ok(env) => env,
                Err(e) => {
                    if e.reason == "Internal Server Error" {
                        crate::log_error!(
                            "Error handling request {}: {}",
                            String::from_utf8_lossy(head.uri),
                            e.message
                        );
                    } else {
                        crate::log_warning!(
                            "Invalid request from ip={}: {}",
                            peer_ip(&conn.peer),
                            e.message
                        );
                    }
                    let body = error_body(e.reason, &e.message);
                    let _ = netio::write_all(
                        None,
                        fd,
                        &error_response(e.status, e.reason, &body),
                        self.request_timeout,
                    );
                    return Next::Close;
                }
            };
            let log_info = self.access.as_ref().map(|_| RequestLog::capture(&head));
            let log_env = match &self.access {
                Some(a) if a.needs_environ() => Some(env.clone()),
                _ => None,
            };
            let hook_env = hook_req.as_ref().map(|_| env.clone());
            let version = head.version;
            let method = method_index(&head.method);
            let is_head = head.method == "HEAD";
            let body = head.body;
            drop(head);
            let raw = std::mem::take(&mut conn.buf);
            let pos = conn.start + consumed;
            conn.start = 0;
            let out = self.wsgi.serve(
                py,
                env,
                fd,
                &mut conn.peer,
                version,
                is_head,
                must_close,
                &body,
                raw,
                pos,
                (
                    self.parser.limit_request_fields,
                    self.parser.limit_request_field_size,
                ),
            );
            if let (Some(access), Some(info), Some(start)) = (&self.access, log_info, start) {
                let peer = peer_ip(&conn.peer);
                let took = t0.elapsed();
                info.log(access, &peer, &out, start, took, log_env.as_ref());
            }
            if let (Some(r), Some(env)) = (&hook_req, &hook_env) {
                let rv = ResponseView {
                    status: out.status_line.as_deref(),
                    status_code: out.status_line.as_ref().map(|_| out.status),
                    headers: &out.response_headers,
                    sent: out.sent,
                    response_length: out.response_length,
                    headers_sent: out.headers_sent,
                };
                let view = live_view(&self.view, self.slot, self.alive);
                if let Err(e) = self.hooks.post_request(py, &view, r, Some(env), Some(&rv)) {
                    if let Some(code) = e.system_exit {
                        self.exit = Some(code);
                    }
                }
            }
            let hook_close = hook_req.as_ref().is_some_and(|r| r.must_close(py));
            self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.metrics.record(&Observation {
                method,
                status: out.status,
                seconds: t0.elapsed().as_secs_f64(),
                request_bytes: out.request_body,
                response_bytes: out.sent,
            });
            if let Some(e) = &out.app_error {
                self.errors.record(
                    &mut self.error_index,
                    &ErrorLabels {
                        method: METHODS[method].to_owned(),
                        endpoint: e.endpoint.clone(),
                        error_type: e.error_type.clone(),
                    },
                );
            }
            self.slot.set_busy(false);
            if let Some(code) = out.exit {
                self.exit = Some(code);
                return Next::Close;
            }
            if !out.keep_alive || hook_close || !self.alive {
                return Next::Close;
            }
            if let Some((raw, pos)) = out.leftover {
                conn.buf = raw;
                conn.start = pos;
            }
        }
    }
}

/// The worker as a hook sees it now (counters from the shared slot).
fn live_view(base: &WorkerView, slot: &Slot, alive: bool) -> WorkerView {
    super::live_view(base, slot, alive, true)
}

/// The request fields the access log needs after the head's buffer is gone.
struct RequestLog {
    method: String,
    uri: Vec<u8>,
    path: String,
    query: String,
    version: (u8, u8),
    headers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RequestLog {
    fn capture(head: &crate::http::RequestHead<'_>) -> RequestLog {
        RequestLog {
            method: head.method.to_string(),
            uri: head.uri.to_vec(),
            path: String::from_utf8_lossy(head.path).into_owned(),
            query: String::from_utf8_lossy(head.query).into_owned(),
            version: head.version,
            headers: head
                .headers
                .iter()
                .map(|h| (h.name.to_vec(), h.value.to_vec()))
                .collect(),
        }
    }

    fn log(
        self,
        access: &AccessLog,
        peer: &str,
        out: &crate::wsgi::Outcome,
        start: SystemTime,
        took: Duration,
        environ: Option<&Bound<'_, PyDict>>,
    ) {
        // `{NAME}e` atoms: environ keys, matched case-insensitively as gunicorn.
        let lookup = |name: &str| -> Option<String> {
            environ?.iter().find_map(|(k, v)| {
                let k = k.extract::<String>().ok()?;
                if k.eq_ignore_ascii_case(name) {
                    v.str().map(|s| s.to_string()).ok()
                } else {
                    None
                }
            })
        };
        let req_headers: Vec<(&[u8], &[u8])> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        let resp_headers: Vec<(&str, &str)> = out
            .response_headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        access.log(&AccessRecord {
            remote_addr: peer,
            method: &self.method,
            raw_uri: &self.uri,
            path: &self.path,
            query: &self.query,
            version: self.version,
            status: out.status,
            response_length: Some(out.sent),
            request_headers: &req_headers,
            response_headers: &resp_headers,
            request_start: start,
            request_time: took,
            pid: std::process::id(),
            environ: environ.map(|_| &lookup as &dyn Fn(&str) -> Option<String>),
        });
    }
}

fn peer_ip(peer: &Peer) -> String {
    peer.ip.map(|i| i.to_string()).unwrap_or_default()
}

/// Answers a request the parser refused and logs it as gunicorn does.
fn reject(fd: RawFd, peer: &Peer, e: &HttpError) {
    crate::log_warning!("Invalid request from ip={}: {}", peer_ip(peer), e.detail);
    let _ = netio::write_all(None, fd, &e.response_bytes(), Duration::from_secs(5));
}

fn peer_addr(fd: RawFd) -> Option<SocketAddr> {
    let ss: SockaddrStorage = getpeername(fd).ok()?;
    if let Some(a) = ss.as_sockaddr_in() {
        return Some(SocketAddr::new(IpAddr::V4(a.ip()), a.port()));
    }
    ss.as_sockaddr_in6()
        .map(|a| SocketAddr::new(IpAddr::V6(a.ip()), a.port()))
}
