//! One accepted connection: its socket, read buffers, peer, deadlines and
//! where it is in its life; and the keep-alive decision, made here only.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::transport::Inline;
use crate::http::proxy::ProxyInfo;
use crate::http::HeadParser;

/// Where a connection is between requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepted, not a byte received yet.
    Fresh,
    /// Between requests on a kept-alive connection.
    Idle,
    /// Part of a request head (or PROXY preamble) has arrived: it must be
    /// complete by the deadline set at its first byte.
    Head,
    /// A request is being served away from the loop thread; nothing is
    /// read, and no deadline or eviction applies until it is handed back.
    Detached,
    /// Accepted on a TLS listener, its handshake on the handshake thread
    /// (which owns its deadline, on a descriptor of its own): the loop
    /// reads nothing until the thread hands it back; it may close it for
    /// room, as a fresh connection.
    Handshake,
}

/// What may still come before the first HTTP request head on a
/// connection: a PROXY protocol header, or (--protocol uwsgi) the uwsgi
/// packet that stands for the head. One field, so the HTTP path pays one
/// branch for both.
#[derive(Clone, Copy)]
pub enum ProxyState {
    Pending {
        allowed: bool,
    },
    /// `allowed`: the peer is in uwsgi_allow_ips (unix sockets: always).
    Uwsgi {
        allowed: bool,
    },
    Done,
}

/// What the connection layer knows of a peer, for every worker kind.
#[derive(Clone)]
pub struct Peer {
    /// None for unix sockets.
    pub addr: Option<SocketAddr>,
    /// In --forwarded-allow-ips (unix sockets: always, as gunicorn).
    pub trusted: bool,
    /// The PROXY protocol header's addresses, once received.
    pub proxy: Option<ProxyInfo>,
    /// The uwsgi front end said the client came over TLS (`HTTPS` var):
    /// wsgi.url_scheme https.
    pub https: bool,
}

impl Peer {
    /// The peer's IP as logs show it ("" for unix sockets).
    pub fn ip_string(&self) -> String {
        self.addr.map(|a| a.ip().to_string()).unwrap_or_default()
    }
}

pub struct Conn<S> {
    pub fd: OwnedFd,
    pub io: Arc<Inline>,
    /// Index of the listener it came from.
    pub listener: usize,
    pub peer: Peer,
    /// Bytes read and not yet consumed: `buf[start..]`.
    pub buf: Vec<u8>,
    pub start: usize,
    /// A second buffer: the bytes after a request head move here for the
    /// request's body while the head still borrows `buf`; the two swap
    /// afterwards, so steady keep-alive traffic allocates nothing.
    pub spare: Vec<u8>,
    /// The request head being received, parsed as it arrives (each read
    /// examines only the new bytes).
    pub head: HeadParser,
    pub phase: Phase,
    /// When the current phase began (idle order for eviction).
    pub since: Instant,
    /// The connection is closed when this passes.
    pub deadline: Instant,
    pub proxy_state: ProxyState,
    /// Requests served on this connection (gunicorn's req_number).
    pub nreq: u64,
    /// The worker kind's per-connection state, made at the first request.
    pub state: Option<S>,
    /// The keep-alive decision of a detached request, until it is back.
    pub keep: Option<KeepAlive>,
    /// The socket may hold bytes the loop has not read: a readiness edge
    /// came while the connection was detached, or it was detached before a
    /// read came up short. When it is handed back, the loop reads only then
    /// (edge-triggered epoll reports anything that arrives later). Shared
    /// with the connection's [`super::Resumer`], which then wakes the loop.
    pub unread: Arc<AtomicBool>,
    /// A readiness event reported the peer's end of stream. It comes with
    /// the last bytes and brings no edge of its own, so from then on a
    /// short read does not mean the socket is drained: reads go on until
    /// one returns end of stream.
    pub read_closed: bool,
    /// Which hand-over to the TLS handshake thread this is (a key may be
    /// reused before the thread reports on a connection closed meanwhile).
    pub handshake: u64,
}

impl<S> Conn<S> {
    /// Enters `phase` now, with the deadline that phase allows.
    pub fn enter(&mut self, phase: Phase, now: Instant, limits: &Deadlines) {
        self.phase = phase;
        self.since = now;
        self.deadline = now + limits.of(phase);
    }

    /// Closed first when the connection table is full: connections that
    /// never sent a byte, then idle keep-alive ones; the longest idle first.
    /// Connections in the middle of a request are never evicted.
    pub fn eviction_rank(&self) -> Option<(u8, Instant)> {
        match self.phase {
            Phase::Fresh | Phase::Handshake => Some((0, self.since)),
            Phase::Idle => Some((1, self.since)),
            Phase::Head | Phase::Detached => None,
        }
    }
}

/// How long each phase may last.
pub struct Deadlines {
    /// --keep-alive: between requests.
    pub keepalive: Duration,
    /// --timeout: a started request head must be complete within it (the
    /// time gunicorn's sync worker would be killed after).
    pub head: Duration,
}

impl Deadlines {
    pub fn of(&self, phase: Phase) -> Duration {
        match phase {
            // A new connection gets at least a second for its first byte,
            // even with a tiny --keep-alive.
            Phase::Fresh => self.keepalive.max(Duration::from_secs(1)),
            Phase::Idle => self.keepalive,
            Phase::Head | Phase::Detached | Phase::Handshake => self.head,
        }
    }
}

/// The keep-alive decision, in two steps: before the response (so that its
/// head says `Connection: close` when the connection will close) and after
/// it (what the response, the app and the request body allow).
#[derive(Clone, Copy, Debug)]
pub struct KeepAlive {
    /// May the connection stay open after this response?
    pub before: bool,
}

impl KeepAlive {
    /// `client`: the request allows it (HTTP/1.1 without `Connection:
    /// close`, or HTTP/1.0 with `keep-alive`); `enabled`: --keep-alive > 0;
    /// `alive`: the worker is not stopping; `over_budget`: the worker holds
    /// more connections than it has requests left before max_requests.
    pub fn before_response(client: bool, enabled: bool, alive: bool, over_budget: bool) -> Self {
        KeepAlive {
            before: client && enabled && alive && !over_budget,
        }
    }

    /// `response`: the response framing allows reuse and nothing failed;
    /// `body_clean`: the request body was consumed to its end. A worker
    /// that began to stop meanwhile still keeps a connection whose
    /// response said keep-alive, for the drain's idle grace (the loop's
    /// `finished`): closing it at once would race the client's next request.
    pub fn after_response(self, response: bool, body_clean: bool) -> bool {
        self.before && response && body_clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_needs_every_party() {
        let k = KeepAlive::before_response(true, true, true, false);
        assert!(k.after_response(true, true));
        assert!(!k.after_response(false, true));
        assert!(!k.after_response(true, false));
        for (c, e, a, o) in [
            (false, true, true, false),
            (true, false, true, false),
            (true, true, false, false),
            (true, true, true, true),
        ] {
            let k = KeepAlive::before_response(c, e, a, o);
            assert!(!k.before);
            assert!(!k.after_response(true, true));
        }
    }

    #[test]
    fn deadlines_by_phase() {
        let d = Deadlines {
            keepalive: Duration::from_millis(100),
            head: Duration::from_secs(30),
        };
        assert_eq!(d.of(Phase::Fresh), Duration::from_secs(1));
        assert_eq!(d.of(Phase::Idle), Duration::from_millis(100));
        assert_eq!(d.of(Phase::Head), Duration::from_secs(30));
    }
}
