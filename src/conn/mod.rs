//! The connection layer every worker kind stands on: a mio event loop that
//! accepts, reads, parses request heads (with the PROXY protocol), holds
//! idle keep-alive connections, enforces deadlines, evicts idle connections
//! when its table is full, and runs the worker's lifecycle (graceful drain
//! on TERM, the max_requests budget). It knows nothing of Python or WSGI: a
//! complete request goes to the worker kind's [`Handler`] with a
//! [`body::Body`] that reads through the connection's
//! [`transport::Transport`].

pub mod body;
pub mod connection;
pub mod io;
pub mod listen;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod transport;

use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::eventfd::{EfdFlags, EventFd};
use signal_hook::consts::{SIGHUP, SIGTERM, SIGUSR1, SIGWINCH};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::http::allowlist::AllowList;
use crate::http::proxy::{detect_proxy, parse_proxy, ProxyDetect, ProxyMode, ProxyParsed};
use crate::http::uwsgi;
use crate::http::{HeadParser, HttpError, Parsed, ParserConfig, RequestHead};
use crate::shm::{ExitReason, Slot};
use body::Body;
use connection::{Conn, Deadlines, KeepAlive, Peer, Phase, ProxyState};
use io::{Release, Waiter};
use listen::{Listeners, WorkerListener, LISTENER_BASE};
use transport::{Inline, Transport};

const SIGNAL_TOKEN: Token = Token(usize::MAX - 1);
const WAKE_TOKEN: Token = Token(usize::MAX - 2);
const HANDSHAKE_TOKEN: Token = Token(usize::MAX - 3);
/// The longest a TLS handshake may take (at most --timeout).
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
const READ_SIZE: usize = 16 * 1024;
/// `Completions::exit` when no request asked the worker to exit.
const NO_EXIT: i64 = i64::MIN;
/// How long a stopping worker keeps an idle connection open for a request
/// the client may already have sent (at most --keep-alive).
const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);
/// How long accepting pauses when the worker is out of file descriptors.
const FD_PAUSE: Duration = Duration::from_millis(100);
/// Connections accepted per listener before the loop looks at the others.
const ACCEPT_BATCH: usize = 16;

/// What a worker kind does with requests.
pub trait Handler {
    /// The kind's per-connection state (made at a connection's first request).
    type ConnState;
    fn connection(&mut self, peer: &Peer, listener: usize) -> Self::ConnState;
    /// Requests the kind can start now without making one wait (free
    /// threads): the loop accepts new connections only while this exceeds
    /// the connections whose first request is still on its way.
    fn capacity(&self) -> usize {
        usize::MAX
    }
    /// Serves one request: to the end on the loop thread (head, app,
    /// response, body consumed), or detached to be finished elsewhere and
    /// handed back with a [`Resumer`].
    fn serve(&mut self, req: Request<'_>, state: &mut Self::ConnState) -> Dispatch;
    /// After every wait of the loop: runs what was deferred to it (signal
    /// handlers of the interpreter). Err(code) makes the worker exit now.
    fn woke(&mut self) -> Result<(), i32>;
    /// USR1: reopen the kind's own log files.
    fn reopen_logs(&mut self);
    /// The worker began its graceful stop (TERM, max_requests): the
    /// loop accepts no more and waits for the requests it has.
    fn stopping(&mut self) {}
    /// Before the loop waits for events (not in a drain): a kind whose
    /// detached requests still wait for a thread may block here, briefly,
    /// until they are taken or one needs the loop ([`Served::needs_loop`]).
    /// Reading more requests would only queue them, and a loop that lets
    /// the input gather reads many requests in one turn instead of waking
    /// for each.
    fn hold(&mut self) {}
}

/// The loop's settings, from the configuration.
pub struct Settings {
    pub keepalive: Duration,
    /// --timeout: the I/O timeout inside a request, and the time a started
    /// request head has to be complete.
    pub timeout: Duration,
    pub max_conns: usize,
    /// Requests before the worker restarts (max_requests plus jitter);
    /// u64::MAX for none.
    pub max_requests: u64,
    pub graceful_timeout: Duration,
    pub parser: ParserConfig,
    pub proxy_mode: ProxyMode,
    pub proxy_allow: AllowList,
    pub forwarded_allow: AllowList,
    /// --protocol uwsgi: the peers allowed to send uwsgi packets
    /// (uwsgi_allow_ips); None for --protocol http.
    pub uwsgi_allow: Option<AllowList>,
    /// How the loop's own waits release what its thread holds (the GIL
    /// when the app runs on the loop thread).
    pub release: Release,
    /// How a request's body I/O waits for the socket in the code serving
    /// it (the GIL released, or a greenlet hub).
    pub app_wait: Waiter,
    /// TLS on every listener (certfile set).
    pub tls: Option<TlsSettings>,
}

impl Settings {
    /// How long a stopping worker keeps an idle kept-alive connection open
    /// for a request already on its way.
    fn drain_grace(&self) -> Duration {
        self.keepalive.min(DRAIN_IDLE_GRACE)
    }
}

/// The listeners' TLS, as the connection layer uses it.
#[derive(Clone)]
pub struct TlsSettings {
    pub config: Arc<rustls::ServerConfig>,
    pub suppress_ragged_eofs: bool,
}

/// The worker's lifecycle: alive until TERM or its request budget is spent.
pub struct Lifecycle {
    /// Requests started (gunicorn's worker.nr).
    nr: u64,
    max_requests: u64,
    alive: bool,
    slot: &'static Slot,
    keepalive_enabled: bool,
    /// The keep-alive decision of the request being served, once counted.
    current: Option<KeepAlive>,
}

impl Lifecycle {
    /// Requests the worker may still start.
    fn left(&self) -> u64 {
        self.max_requests.saturating_sub(self.nr)
    }
}

/// One complete request head, handed to the worker kind.
pub struct Request<'r> {
    pub head: RequestHead<'r>,
    /// Taken by the kind; returned through [`Body::finish`] in [`Served`].
    pub body: Option<Body>,
    pub peer: &'r Peer,
    pub listener: usize,
    /// Requests on this connection so far, this one included.
    pub nreq: u64,
    /// When the request's first byte was read.
    pub arrived: Instant,
    /// The request's link to the worker's lifecycle and its connection.
    pub ctl: Control<'r>,
}

/// What a kind may do with a request besides reading it: count it against
/// max_requests, detach it. A separate borrow from the head, so that a
/// kind can count while it reads the head.
pub struct Control<'r> {
    life: &'r mut Lifecycle,
    /// The client asked to keep the connection open.
    client_keep_alive: bool,
    /// Connections the worker holds now.
    open: usize,
    key: usize,
    completions: &'r Arc<Completions>,
    unread: &'r Arc<AtomicBool>,
}

impl Control<'_> {
    pub fn alive(&self) -> bool {
        self.life.alive
    }

    /// Counts the request against max_requests (where gunicorn's worker
    /// counts it: after pre_request) and decides whether the connection may
    /// stay open after it. A request that is never counted closes its
    /// connection.
    pub fn count(&mut self) -> KeepAlive {
        let life = &mut *self.life;
        life.nr += 1;
        // The worker never holds more connections than it has requests
        // left (see `conn_limit`), and a response closes its connection
        // when keeping it would break that; so no accepted request is
        // dropped and the worker never serves more than its limit.
        let left = life.left();
        let over_budget = self.open as u64 > left;
        if life.alive && left == 0 {
            crate::log_info!("Autorestarting worker after current request.");
            life.slot.set_exit_reason(ExitReason::MaxRequests);
            // This response says Connection: close; the drain starts once
            // it is written.
            life.alive = false;
        }
        let k = KeepAlive::before_response(
            self.client_keep_alive,
            life.keepalive_enabled,
            life.alive,
            over_budget,
        );
        life.current = Some(k);
        k
    }

    /// The handle that hands this request's connection back to the loop
    /// once it is served elsewhere; the handler then returns
    /// [`Dispatch::Detached`]. Until then the loop reads nothing from the
    /// connection and never closes it for a deadline or for room.
    pub fn detach(&self) -> Resumer {
        Resumer {
            key: self.key,
            completions: Arc::clone(self.completions),
            unread: Arc::clone(self.unread),
        }
    }
}

/// `HTTP/1.1 100 Continue` when the client asked for it, before the
/// request's body is read.
pub fn send_continue(head: &RequestHead<'_>, body: &Body) {
    if head.expect_continue {
        let _ = body.transport().write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
}

/// What became of a request.
pub struct Served {
    /// The response allows the connection to be reused and nothing failed.
    pub reusable: bool,
    /// The read buffer with what follows the body, when the body was
    /// consumed cleanly ([`Body::finish`]).
    pub leftover: Option<(Vec<u8>, usize)>,
    /// The worker must exit with this code (SystemExit in the app or a hook).
    pub exit: Option<i32>,
    /// When the response was done, if the kind read the clock then.
    pub ended: Option<Instant>,
}

impl Served {
    /// Whether the loop must see this completion now: the connection is to
    /// close, or already holds the next request's bytes, or the worker is
    /// to exit.
    pub fn needs_loop(&self) -> bool {
        self.exit.is_some()
            || !self.reusable
            || self
                .leftover
                .as_ref()
                .is_none_or(|(raw, pos)| *pos < raw.len())
    }

    /// A request that ended its connection (an error answered, the
    /// client gone).
    pub fn closed(exit: Option<i32>) -> Served {
        Served {
            reusable: false,
            leftover: None,
            exit,
            ended: None,
        }
    }
}

/// What the kind did with a request.
pub enum Dispatch {
    /// Served to the end on the loop thread.
    Done(Served),
    /// Being served elsewhere; a [`Resumer`] hands it back.
    Detached,
}

/// Requests finished away from the loop thread, waiting for the loop, and
/// the eventfd that wakes it (registered in its poll).
pub struct Completions {
    done: Mutex<Vec<(usize, Served)>>,
    /// `done` is not empty (read without the lock at every turn).
    queued: AtomicBool,
    /// A request finished away from the loop ended the worker (SystemExit)
    /// with this code ([`NO_EXIT`]: none): the loop stops accepting and
    /// serving at once, before it reads the completion.
    exit: AtomicI64,
    /// The loop is in a turn and checks `queued` before it waits again:
    /// a request finished meanwhile (by a greenlet the turn started) needs
    /// no eventfd write.
    in_turn: AtomicBool,
    /// The loop wants every completion at once: it drains, or accepts
    /// nothing until a request finishes (see [`Resumer::resume`]).
    eager: AtomicBool,
    wake: EventFd,
}

impl Completions {
    fn take(&self) -> Vec<(usize, Served)> {
        // A panic elsewhere while holding the lock cannot leave the list
        // half-changed (push and take are single operations): go on with it.
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        self.queued.store(false, Ordering::Release);
        std::mem::take(&mut *done)
    }
}

/// Hands a detached connection back to its loop (from any thread).
pub struct Resumer {
    key: usize,
    completions: Arc<Completions>,
    /// The connection's [`Conn::unread`].
    unread: Arc<AtomicBool>,
}

impl Resumer {
    pub fn resume(self, served: Served) {
        let c = &self.completions;
        if let Some(code) = served.exit {
            let _ = c.exit.compare_exchange(
                NO_EXIT,
                i64::from(code),
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        let prompt = served.needs_loop();
        let mut done = c.done.lock().unwrap_or_else(|e| e.into_inner());
        done.push((self.key, served));
        c.queued.store(true, Ordering::SeqCst);
        drop(done);
        // (SeqCst pairs with the loop's: it clears in_turn, then reads
        // queued; so either it sees this completion or this sees it out.)
        if c.in_turn.load(Ordering::SeqCst) {
            return;
        }
        // A kept-alive connection with nothing to read yet waits for its
        // next request: that request's readiness wakes the loop, which
        // takes the completions before it reads (one wake per request,
        // not two). The loop sets `unread` when bytes came meanwhile, and
        // `eager` when it cannot wait (both in a turn, before it clears
        // in_turn and reads queued: either it sees this completion, or
        // this sees its flags).
        if !prompt && !c.eager.load(Ordering::SeqCst) && !self.unread.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = c.wake.write(1) {
            crate::log_error!("waking the event loop: {e}");
        }
    }
}

/// What to do with a connection after processing its input.
enum Next {
    Wait,
    Close,
}

pub struct Loop<H: Handler> {
    poll: Poll,
    signals: Signals,
    listeners: Listeners,
    /// Listeners whose accept batch was cut short (see `accept`).
    accept_pending: Vec<usize>,
    /// Out of file descriptors (EMFILE/ENFILE at accept): accepting is
    /// paused until then, and the episode was logged once.
    fd_pause: Option<Instant>,
    fd_episode: bool,
    conns: Slab<Conn<H::ConnState>>,
    handler: H,
    settings: Settings,
    deadlines: Deadlines,
    life: Lifecycle,
    slot: &'static Slot,
    term: Arc<AtomicBool>,
    /// Set once the worker stops gracefully: the time it exits at the latest.
    draining: Option<Instant>,
    /// The worker must exit now with this code.
    exit: Option<i32>,
    completions: Arc<Completions>,
    events: Events,
    /// When idle connections are next checked against their deadlines.
    next_sweep: Instant,
    /// When this turn's events arrived: the arrival time of the requests
    /// they begin (one clock read per turn, not per request).
    turn_at: Instant,
    /// The TLS handshake thread (TLS listeners only).
    handshakes: Option<tls::Handshakes>,
    /// Connections handed to it so far.
    handshake_seq: u64,
}

fn setup_err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

impl<H: Handler> Loop<H> {
    pub fn new(
        listeners: Vec<WorkerListener>,
        settings: Settings,
        handler: H,
        slot: &'static Slot,
        term: Arc<AtomicBool>,
    ) -> Result<Loop<H>, String> {
        let poll = Poll::new().map_err(|e| setup_err("creating the event loop", e))?;
        let mut signals = Signals::new([SIGTERM, SIGUSR1, SIGHUP, SIGWINCH])
            .map_err(|e| setup_err("installing signal handlers", e))?;
        poll.registry()
            .register(&mut signals, SIGNAL_TOKEN, Interest::READABLE)
            .map_err(|e| setup_err("registering signals", e))?;
        let listeners = Listeners::new(listeners, poll.registry())
            .map_err(|e| setup_err("registering a listener", e))?;
        let wake = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map_err(|e| setup_err("creating the wake-up eventfd", e))?;
        poll.registry()
            .register(
                &mut SourceFd(&wake.as_fd().as_raw_fd()),
                WAKE_TOKEN,
                Interest::READABLE,
            )
            .map_err(|e| setup_err("registering the wake-up eventfd", e))?;
        let completions = Arc::new(Completions {
            done: Mutex::new(Vec::new()),
            queued: AtomicBool::new(false),
            exit: AtomicI64::new(NO_EXIT),
            in_turn: AtomicBool::new(false),
            eager: AtomicBool::new(false),
            wake,
        });
        let deadlines = Deadlines {
            keepalive: settings.keepalive,
            head: settings.timeout,
        };
        let handshakes = match &settings.tls {
            None => None,
            Some(t) => {
                let h = tls::Handshakes::start(
                    Arc::clone(&t.config),
                    settings.timeout.min(HANDSHAKE_LIMIT),
                )?;
                poll.registry()
                    .register(
                        &mut SourceFd(&h.done_fd()),
                        HANDSHAKE_TOKEN,
                        Interest::READABLE,
                    )
                    .map_err(|e| setup_err("registering the TLS handshake eventfd", e))?;
                Some(h)
            }
        };
        let life = Lifecycle {
            nr: 0,
            max_requests: settings.max_requests,
            alive: true,
            slot,
            keepalive_enabled: !settings.keepalive.is_zero(),
            current: None,
        };
        Ok(Loop {
            poll,
            signals,
            listeners,
            accept_pending: Vec::new(),
            fd_pause: None,
            fd_episode: false,
            conns: Slab::with_capacity(64),
            handler,
            settings,
            deadlines,
            life,
            slot,
            term,
            draining: None,
            exit: None,
            completions,
            events: Events::with_capacity(256),
            next_sweep: Instant::now() + Duration::from_secs(1),
            turn_at: Instant::now(),
            handshakes,
            handshake_seq: 0,
        })
    }

    /// Runs until the worker exits; returns the exit code.
    pub fn run(&mut self) -> i32 {
        loop {
            if let Some(code) = self.turn(self.next_wait()) {
                return code;
            }
        }
    }

    /// The loop's epoll descriptor: readable when a turn has work. A kind
    /// whose thread waits elsewhere (a greenlet hub) watches it and calls
    /// [`Loop::turn`] with no wait.
    pub fn wait_fd(&self) -> std::os::fd::RawFd {
        self.poll.as_raw_fd()
    }

    /// The kind's handler (a kind that runs the loop from its own event
    /// loop reaches its shared state through it).
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The longest the next turn may wait for events.
    pub fn next_wait(&self) -> Duration {
        if !self.accept_pending.is_empty() {
            // Listeners with connections left over from the last batch:
            // just collect ready events, then accept more.
            Duration::ZERO
        } else if let Some(until) = self.fd_pause {
            until.saturating_duration_since(Instant::now())
        } else if self.draining.is_some() {
            // Wake often enough to close idle connections at their
            // (short) drain deadlines.
            Duration::from_millis(50)
        } else {
            Duration::from_secs(1)
        }
    }

    /// One turn of the loop: waits up to `wait` for events and handles
    /// them, and what finished away from the loop meanwhile. Some(code)
    /// once the worker is done.
    pub fn turn(&mut self, wait: Duration) -> Option<i32> {
        if self.term.load(Ordering::Relaxed) || !self.life.alive {
            self.stop_gracefully();
        }
        if let Some(limit) = self.draining {
            if self.conns.is_empty() || Instant::now() >= limit {
                return Some(self.finish());
            }
        }
        if self.draining.is_none() && !wait.is_zero() {
            self.handler.hold();
        }
        let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        let mut res = Ok(());
        let poll = &mut self.poll;
        (self.settings.release)(&mut || res = poll.poll(&mut events, Some(wait)));
        self.turn_at = Instant::now();
        // Every turn proves the worker alive to the master (--timeout);
        // in the green kinds the hub runs the turns, so an app that blocks
        // the hub stops them.
        self.slot.beat();
        if let Err(e) = res {
            if e.kind() != std::io::ErrorKind::Interrupted {
                crate::log_error!("event loop failed: {e}");
                return Some(1);
            }
        }
        if let Err(code) = self.handler.woke() {
            return Some(code);
        }
        self.completions.in_turn.store(true, Ordering::SeqCst);
        for ev in events.iter() {
            match ev.token() {
                SIGNAL_TOKEN => self.handle_signals(),
                WAKE_TOKEN => self.resume_detached(),
                HANDSHAKE_TOKEN => self.handshaken(),
                Token(t) if t >= LISTENER_BASE => self.accept(t - LISTENER_BASE),
                Token(key) => {
                    if ev.is_read_closed() {
                        if let Some(c) = self.conns.get_mut(key) {
                            c.read_closed = true;
                        }
                    }
                    if let Next::Close = self.on_readable(key) {
                        self.close(key);
                    }
                }
            }
            if self.exiting() {
                break;
            }
        }
        self.events = events;
        for idx in std::mem::take(&mut self.accept_pending) {
            self.accept(idx);
        }
        // Requests finished during the turn (by a greenlet that did not
        // have to wait) go on without a wake. Completions after it wake
        // the loop at once only when it cannot wait for the next event.
        let eager = self.draining.is_some()
            || !self.life.alive
            || self.exit.is_some()
            || !self.listeners.accepting();
        self.completions.eager.store(eager, Ordering::SeqCst);
        self.completions.in_turn.store(false, Ordering::SeqCst);
        if self.exit.is_none() && self.completions.queued.load(Ordering::SeqCst) {
            self.resume_detached();
        }
        if self.exiting() {
            return Some(self.finish());
        }
        // The turn's time: a sweep at most one turn late.
        let now = self.turn_at;
        if now >= self.next_sweep || self.draining.is_some() {
            self.next_sweep = now + Duration::from_secs(1);
            self.sweep(now);
        }
        self.maybe_resume();
        None
    }

    /// The worker must exit now (its own exit code, or one a request
    /// finished away from the loop asked for).
    fn exiting(&mut self) -> bool {
        if self.exit.is_none() {
            let code = self.completions.exit.load(Ordering::SeqCst);
            if code != NO_EXIT {
                self.exit = Some(i32::try_from(code).unwrap_or(1));
            }
        }
        self.exit.is_some()
    }

    /// Closes whatever is left (idle past the drain deadline); the exit code.
    fn finish(&mut self) -> i32 {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.close(k);
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
                    self.handler.reopen_logs();
                }
                _ => {}
            }
        }
    }

    /// Connections the worker may hold: --worker-connections, and no more
    /// than the requests it has left before max_requests.
    fn conn_limit(&self) -> usize {
        self.settings
            .max_conns
            .min(usize::try_from(self.life.left()).unwrap_or(usize::MAX))
    }

    /// The kind could start one more new connection's request at once, so
    /// that a worker with every thread busy leaves new connections to an
    /// idle worker (gunicorn #908). First requests already arriving count
    /// as demand; connections that have sent nothing do not (idle clients
    /// must not stop a worker from accepting).
    fn has_capacity(&self) -> bool {
        let cap = self.handler.capacity();
        cap == usize::MAX || {
            let arriving = self
                .conns
                .iter()
                .filter(|(_, c)| c.nreq == 0 && matches!(c.phase, Phase::Head | Phase::Handshake))
                .count();
            cap > arriving
        }
    }

    fn accept(&mut self, idx: usize) {
        if self.term.load(Ordering::Relaxed) {
            self.stop_gracefully();
        }
        // A worker about to exit (SystemExit: the timeout abort, a hook)
        // leaves new connections in the backlog for the next worker; one it
        // accepted now would be reset when it exits.
        if !self.life.alive || self.exiting() {
            return;
        }
        for _ in 0..ACCEPT_BATCH {
            if !self.has_capacity() || (self.conns.len() >= self.conn_limit() && !self.make_room())
            {
                self.listeners.pause(self.poll.registry());
                return;
            }
            let Some(l) = self.listeners.get(idx) else {
                return;
            };
            let (fd, addr) = match listen::accept(l) {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    self.out_of_descriptors(&e);
                    return;
                }
                Err(e) => {
                    crate::log_error!("accept() failed: {e}");
                    return;
                }
            };
            if std::mem::take(&mut self.fd_episode) {
                crate::log_info!("accepting again: file descriptors are free");
            }
            let s = &self.settings;
            let peer = Peer {
                addr,
                // unix sockets: the peer is local, as gunicorn
                trusted: addr.is_none_or(|a| s.forwarded_allow.contains(a.ip())),
                proxy: None,
                https: self.handshakes.is_some(),
            };
            let proxy_state = match (&s.uwsgi_allow, s.proxy_mode, addr) {
                // gunicorn's uwsgi requests take no PROXY header. Unix
                // sockets are always allowed, as gunicorn.
                (Some(allow), _, a) => ProxyState::Uwsgi {
                    allowed: a.is_none_or(|a| allow.contains(a.ip())),
                },
                (None, ProxyMode::Off, _) => ProxyState::Done,
                (None, _, Some(a)) => ProxyState::Pending {
                    allowed: s.proxy_allow.contains(a.ip()),
                },
                (None, _, None) => ProxyState::Pending { allowed: true },
            };
            // The handshake thread gets a descriptor of its own, so that
            // the loop may close the connection (for room, at exit) while
            // the handshake runs.
            let for_thread = match &self.handshakes {
                None => None,
                Some(_) => match fd.try_clone() {
                    Ok(dup) => Some(dup),
                    Err(e) => {
                        crate::log_error!("duplicating a connection for its TLS handshake: {e}");
                        continue;
                    }
                },
            };
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            let raw = fd.as_raw_fd();
            // A TLS connection is registered once its handshake is done.
            if self.handshakes.is_none() {
                if let Err(e) = self.poll.registry().register(
                    &mut SourceFd(&raw),
                    Token(key),
                    Interest::READABLE,
                ) {
                    crate::log_error!("registering a connection: {e}");
                    continue;
                }
            }
            let now = Instant::now();
            entry.insert(Conn {
                io: Arc::new(Inline::new(raw, s.timeout, s.app_wait)),
                fd,
                listener: idx,
                peer,
                buf: Vec::new(),
                start: 0,
                spare: Vec::new(),
                head: HeadParser::new(),
                phase: if self.handshakes.is_some() {
                    Phase::Handshake
                } else {
                    Phase::Fresh
                },
                since: now,
                deadline: now + self.deadlines.of(Phase::Fresh),
                proxy_state,
                nreq: 0,
                state: None,
                keep: None,
                unread: Arc::new(AtomicBool::new(false)),
                read_closed: false,
                handshake: self.handshake_seq,
            });
            if let (Some(h), Some(dup)) = (&self.handshakes, for_thread) {
                h.submit(key, self.handshake_seq, dup);
                self.handshake_seq += 1;
                continue;
            }
            // The first request usually arrives with the connection: read it now.
            if let Next::Close = self.on_readable(key) {
                self.close(key);
            }
            if !self.life.alive || self.exiting() {
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

    /// The table is full: closes the longest-idle connection (one that
    /// never sent a byte first), as nginx does, so that idle clients cannot
    /// lock new ones out. Connections in the middle of a request are never
    /// closed for room, and only --worker-connections is made room in: the
    /// max_requests budget is never exceeded. Returns false when nothing
    /// could be closed.
    fn make_room(&mut self) -> bool {
        if self.conns.len() < self.settings.max_conns {
            return false; // the budget limits, not the table
        }
        let oldest = self
            .conns
            .iter()
            .filter_map(|(k, c)| c.eviction_rank().map(|r| (r, k)))
            .min();
        let Some((_, key)) = oldest else {
            return false;
        };
        crate::log_debug!("connection table full: closing the longest-idle connection");
        self.close(key);
        true
    }

    /// accept() found no free descriptor: the connection stays queued, and
    /// accepting pauses for FD_PAUSE (retrying at once would spin: the
    /// listener stays readable). One log line per episode.
    fn out_of_descriptors(&mut self, e: &std::io::Error) {
        if !self.fd_episode {
            self.fd_episode = true;
            crate::log_error!(
                "accept() failed: {e}; accepting pauses {} ms at a time until descriptors are free (raise the open files limit, or lower --worker-connections)",
                FD_PAUSE.as_millis()
            );
        }
        self.listeners.pause(self.poll.registry());
        self.fd_pause = Some(Instant::now() + FD_PAUSE);
    }

    /// Accepting was paused at the connection limit: resume once there is
    /// room, or an idle connection that could make room.
    fn maybe_resume(&mut self) {
        if self.listeners.accepting() || !self.life.alive || self.exiting() {
            return;
        }
        if let Some(until) = self.fd_pause {
            if Instant::now() < until {
                return;
            }
            self.fd_pause = None;
        }
        let room = self.conns.len() < self.conn_limit()
            || (self.conns.len() >= self.settings.max_conns
                && self.conns.iter().any(|(_, c)| c.eviction_rank().is_some()));
        let room = room && self.has_capacity();
        if room {
            if let Err(e) = self.listeners.resume(self.poll.registry()) {
                crate::log_error!("resuming accepting: {e}");
            }
        }
    }

    /// Graceful exit (TERM, max_requests): accept nothing new, answer every
    /// request already on an accepted connection with `Connection: close`,
    /// give idle connections a short grace for a request already on its way,
    /// then exit; bounded by --graceful-timeout.
    fn stop_gracefully(&mut self) {
        if self.draining.is_some() {
            return;
        }
        self.life.alive = false;
        self.handler.stopping();
        let now = Instant::now();
        self.draining = Some(now + self.settings.graceful_timeout);
        self.listeners.pause(self.poll.registry());
        let grace = now + self.settings.drain_grace();
        for (_, c) in self.conns.iter_mut() {
            if c.phase != Phase::Head {
                c.deadline = c.deadline.min(grace);
            }
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(c) = self.conns.try_remove(key) {
            let raw = c.fd.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
            c.io.close();
            if c.phase == Phase::Handshake {
                // The handshake thread's descriptor keeps the socket open:
                // end it, so that the thread gives up at once.
                io::shutdown_both(raw);
            }
        }
    }

    /// Closes connections past their deadline: idle past --keep-alive, a
    /// request head not complete within --timeout of its first byte.
    fn sweep(&mut self, now: Instant) {
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.deadline <= now && !matches!(c.phase, Phase::Detached | Phase::Handshake)
            })
            .map(|(k, _)| k)
            .collect();
        for k in expired {
            if let Some(c) = self.conns.get(k) {
                if c.phase == Phase::Head {
                    crate::log_debug!(
                        "closing a connection from {}: request head not complete within {:?}",
                        c.peer.ip_string(),
                        self.deadlines.head
                    );
                }
            }
            self.close(k);
        }
    }

    /// Reads what the socket has and serves every complete request in it.
    fn on_readable(&mut self, key: usize) -> Next {
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return Next::Close;
            };
            if conn.phase == Phase::Detached {
                // Served elsewhere: what arrives waits in the socket until
                // the connection is handed back.
                conn.unread.store(true, Ordering::SeqCst);
                return Next::Wait;
            }
            if conn.phase == Phase::Handshake {
                return Next::Wait;
            }
            if conn.start > 0 && conn.start == conn.buf.len() {
                conn.buf.clear();
                conn.start = 0;
            }
            let res = conn.io.read_append(&mut conn.buf, READ_SIZE);
            let read_closed = conn.read_closed;
            let n = match res {
                Ok(0) => return Next::Close,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Next::Wait,
                Err(_) => return Next::Close,
            };
            if let Next::Close = self.process(key) {
                return Next::Close;
            }
            // A short read drained the socket; edge-triggered epoll reports
            // the next arrival (but not an end of stream that came with
            // these bytes).
            if n < READ_SIZE && !read_closed {
                return Next::Wait;
            }
        }
    }

    /// Serves the complete requests buffered on a connection.
    fn process(&mut self, key: usize) -> Next {
        loop {
            if self.term.load(Ordering::Relaxed) || !self.life.alive {
                self.stop_gracefully();
            }
            if self.exiting() {
                return Next::Close;
            }
            let open = self.conns.len();
            let Some(conn) = self.conns.get_mut(key) else {
                return Next::Close;
            };
            if conn.start == conn.buf.len() {
                if conn.phase == Phase::Head {
                    conn.enter(Phase::Idle, Instant::now(), &self.deadlines);
                }
                return Next::Wait;
            }
            if conn.phase != Phase::Head {
                // The first byte of a request: its head must be complete
                // within --timeout from when it arrived, however slowly it
                // trickles.
                conn.enter(Phase::Head, self.turn_at, &self.deadlines);
            }
            let preamble = match conn.proxy_state {
                ProxyState::Done => None,
                ProxyState::Pending { allowed } => {
                    Some(read_proxy(conn, allowed, self.settings.proxy_mode))
                }
                ProxyState::Uwsgi { allowed } => Some(read_uwsgi(conn, allowed)),
            };
            match preamble {
                None => {}
                Some(Ok(true)) => continue,
                Some(Ok(false)) => return Next::Wait,
                Some(Err(e)) => {
                    reject(conn, &e);
                    return Next::Close;
                }
            }
            let parsed = conn.head.parse(
                &conn.buf[conn.start..],
                &self.settings.parser,
                conn.peer.trusted,
            );
            let (head, consumed) = match parsed {
                Ok(Parsed::Partial) => return Next::Wait,
                Err(e) => {
                    reject(conn, &e);
                    return Next::Close;
                }
                Ok(Parsed::Complete { head, consumed }) => (head, consumed),
            };
            conn.head.reset();
            // The bytes after the head become the body's buffer while the
            // head borrows `buf`; afterwards the buffers swap back.
            let after = conn.start.saturating_add(consumed).min(conn.buf.len());
            let mut rest = std::mem::take(&mut conn.spare);
            rest.clear();
            rest.extend_from_slice(&conn.buf[after..]);
            let io: Arc<dyn Transport> = conn.io.clone();
            let body = Body::new(io, head.body, rest, 0, &self.settings.parser);
            conn.nreq += 1;
            let state = conn
                .state
                .get_or_insert_with(|| self.handler.connection(&conn.peer, conn.listener));
            self.life.current = None;
            let client_keep_alive = head.keep_alive;
            let dispatch = self.handler.serve(
                Request {
                    head,
                    body: Some(body),
                    peer: &conn.peer,
                    listener: conn.listener,
                    nreq: conn.nreq,
                    arrived: conn.since,
                    ctl: Control {
                        life: &mut self.life,
                        client_keep_alive,
                        open,
                        key,
                        completions: &self.completions,
                        unread: &conn.unread,
                    },
                },
                state,
            );
            let keep = self.life.current.take();
            match dispatch {
                Dispatch::Done(served) => {
                    if let Next::Close = self.finished(key, keep, served) {
                        return Next::Close;
                    }
                }
                Dispatch::Detached => {
                    conn.keep = keep;
                    conn.phase = Phase::Detached;
                    return Next::Wait;
                }
            }
        }
    }

    /// After a request: the final keep-alive decision, and the read buffer
    /// back (with any pipelined bytes) when the connection stays open.
    fn finished(&mut self, key: usize, keep: Option<KeepAlive>, served: Served) -> Next {
        if let Some(code) = served.exit {
            self.exit = Some(code);
            return Next::Close;
        }
        // A response that told the client the connection stays open keeps
        // it open also when the worker began to stop meanwhile: closing at
        // once would race the client's next request (a reset). It waits
        // the drain's idle grace as the connections idle when the drain
        // began, and its next request is answered with Connection: close.
        let keep =
            keep.is_some_and(|k| k.after_response(served.reusable, served.leftover.is_some()));
        let grace = self.settings.drain_grace();
        let (Some((raw, pos)), Some(conn)) =
            (served.leftover.filter(|_| keep), self.conns.get_mut(key))
        else {
            return Next::Close;
        };
        let mut old = std::mem::replace(&mut conn.buf, raw);
        old.clear();
        conn.spare = old;
        conn.start = pos.min(conn.buf.len());
        // Keep-alive counts from the response's end (the serving kind read
        // the clock there already).
        let ended = served.ended.unwrap_or_else(Instant::now);
        conn.enter(Phase::Idle, ended, &self.deadlines);
        if self.draining.is_some() || !self.life.alive {
            conn.deadline = conn.deadline.min(ended + grace);
        }
        Next::Wait
    }

    /// Connections whose TLS handshake ended on the handshake thread: an
    /// established one is registered and read (the request usually came
    /// with the handshake's last flight); a failed one is closed, which
    /// costs the worker nothing else.
    fn handshaken(&mut self) {
        let Some(h) = &self.handshakes else {
            return;
        };
        for (key, seq, outcome) in h.take() {
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            if c.phase != Phase::Handshake || c.handshake != seq {
                continue; // closed meanwhile, its key reused
            }
            let raw = c.fd.as_raw_fd();
            let session = match outcome {
                Ok(s) => s,
                Err(e) => {
                    crate::log_debug!("TLS handshake with {} failed: {e}", c.peer.ip_string());
                    self.close(key);
                    continue;
                }
            };
            let (s, tls) = (&self.settings, self.settings.tls.as_ref());
            let ragged = tls.is_none_or(|t| t.suppress_ragged_eofs);
            c.io = Arc::new(Inline::tls(
                raw,
                s.timeout,
                s.app_wait,
                tls::Session::new(session, ragged),
            ));
            let now = Instant::now();
            c.enter(Phase::Fresh, now, &self.deadlines);
            if self.draining.is_some() {
                // A stopping worker gives it the idle grace of the others.
                c.deadline = c.deadline.min(now + self.settings.drain_grace());
            }
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut SourceFd(&raw), Token(key), Interest::READABLE)
            {
                crate::log_error!("registering a connection: {e}");
                self.close(key);
                continue;
            }
            if let Next::Close = self.on_readable(key) {
                self.close(key);
            }
            if self.exiting() {
                return;
            }
        }
    }

    /// Connections whose requests were finished away from the loop thread:
    /// each goes on as an inline request would, then reads what arrived
    /// meanwhile (the socket's readiness edge may have passed unseen).
    fn resume_detached(&mut self) {
        let _ = self.completions.wake.read();
        for (key, served) in self.completions.take() {
            let keep = match self.conns.get_mut(key) {
                Some(c) if c.phase == Phase::Detached => c.keep.take(),
                _ => continue,
            };
            let next = match self.finished(key, keep, served) {
                Next::Close => Next::Close,
                Next::Wait => match self.process(key) {
                    Next::Close => Next::Close,
                    // A read that would find nothing costs a syscall per
                    // keep-alive request: read only if bytes may be there.
                    Next::Wait => {
                        let unread = match self.conns.get_mut(key) {
                            // A TLS session may hold plaintext read while
                            // the request was served (no edge will come).
                            Some(c) if c.phase != Phase::Detached => {
                                c.unread.swap(false, Ordering::SeqCst) || c.io.is_tls()
                            }
                            _ => false,
                        };
                        if unread {
                            self.on_readable(key)
                        } else {
                            Next::Wait
                        }
                    }
                },
            };
            if let Next::Close = next {
                self.close(key);
            }
        }
    }
}

/// Reads a PROXY protocol preamble at the start of a connection. Ok(true):
/// done (or none), go on with the request; Ok(false): need more bytes.
fn read_proxy<S>(conn: &mut Conn<S>, allowed: bool, mode: ProxyMode) -> Result<bool, HttpError> {
    let data = &conn.buf[conn.start..];
    match detect_proxy(data, mode) {
        ProxyDetect::Partial => return Ok(false),
        ProxyDetect::NotProxy => {
            conn.proxy_state = ProxyState::Done;
            return Ok(true);
        }
        ProxyDetect::V1 | ProxyDetect::V2 if !allowed => {
            return Err(HttpError::new(403, "Forbidden", "Request forbidden".into()));
        }
        ProxyDetect::V1 | ProxyDetect::V2 => {}
    }
    match parse_proxy(data, mode)? {
        ProxyParsed::NotProxy => {
            conn.proxy_state = ProxyState::Done;
            Ok(true)
        }
        ProxyParsed::Partial => Ok(false),
        ProxyParsed::Complete { info, consumed } => {
            conn.start = conn.start.saturating_add(consumed).min(conn.buf.len());
            conn.proxy_state = ProxyState::Done;
            // The head starts after the preamble: parse it from there.
            conn.head.reset();
            conn.peer.proxy = Some(info);
            Ok(true)
        }
    }
}

/// Reads the uwsgi packet that starts a connection (--protocol uwsgi) and
/// puts the HTTP head that stands for it in its place, for the head parser.
/// Ok(true): done, go on with the request; Ok(false): need more bytes.
fn read_uwsgi<S>(conn: &mut Conn<S>, allowed: bool) -> Result<bool, HttpError> {
    if !allowed {
        // gunicorn refuses before it reads anything.
        return Err(uwsgi::forbidden(&conn.peer.ip_string()));
    }
    match uwsgi::parse_uwsgi(&conn.buf[conn.start..])? {
        uwsgi::UwsgiParsed::Partial => Ok(false),
        uwsgi::UwsgiParsed::Complete {
            head,
            consumed,
            https,
        } => {
            let end = conn.start.saturating_add(consumed).min(conn.buf.len());
            conn.buf.splice(conn.start..end, head);
            // The head says HTTP/1.0 without keep-alive: the connection
            // closes after this request, so no second packet is read.
            conn.proxy_state = ProxyState::Done;
            conn.peer.https = https;
            conn.head.reset();
            Ok(true)
        }
    }
}

/// Answers a request the parser refused and logs it as gunicorn does.
fn reject<S>(conn: &Conn<S>, e: &HttpError) {
    crate::log_warning!(
        "Invalid request from ip={}: {}",
        conn.peer.ip_string(),
        e.detail
    );
    let _ = conn
        .io
        .write_all_with(io::POLL, &e.response_bytes(), Duration::from_secs(5));
}
