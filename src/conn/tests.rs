//! The connection layer driven over real loopback sockets by a pure-Rust
//! handler (no Python): framing, keep-alive, pipelining, eviction, head
//! deadlines and the max_requests budget.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::body::Body;
use super::connection::{KeepAlive, Peer};
use super::io::no_release;
use super::listen::WorkerListener;
use super::{Dispatch, Handler, Loop, Request, Served, Settings};
use crate::http::allowlist::AllowList;
use crate::http::proxy::ProxyMode;
use crate::http::response::Encoder;
use crate::http::ParserConfig;
use crate::shm::{Shm, Slot};
use crate::sock::ListenKind;

/// Answers `<path> <body>` with Content-Length, reading the whole body.
/// Paths under /slow/ are served on another thread after 300 ms, the
/// connection detached meanwhile.
struct Echo;

/// Reads the whole body and writes the echo; the request's outcome.
fn echo(path: Vec<u8>, version: (u8, u8), keep: KeepAlive, mut body: Body) -> Served {
    let data = match body.read(None) {
        Ok(d) => d,
        Err(_) => return Served::closed(None),
    };
    let mut out = path;
    out.push(b' ');
    out.extend_from_slice(&data);
    let mut enc = Encoder::new(version, false, !keep.before);
    enc.begin("200 OK").expect("status");
    enc.header("Content-Length", &out.len().to_string())
        .expect("header");
    enc.end_headers();
    enc.body(&out);
    enc.finish();
    if body.transport().write_all(enc.out()).is_err() {
        return Served::closed(None);
    }
    let reusable = !enc.should_close();
    let (_, leftover) = body.finish(reusable && keep.before);
    Served {
        reusable,
        leftover,
        exit: None,
        ended: None,
    }
}

impl Handler for Echo {
    type ConnState = ();

    fn connection(&mut self, _peer: &Peer, _listener: usize) {}

    fn serve(&mut self, mut req: Request<'_>, _state: &mut ()) -> Dispatch {
        let Some(body) = req.body.take() else {
            return Dispatch::Done(Served::closed(None));
        };
        let keep = req.ctl.count();
        crate::conn::send_continue(&req.head, &body);
        let path = req.head.path.to_vec();
        let version = req.head.version;
        if !path.starts_with(b"/slow/") {
            return Dispatch::Done(echo(path, version, keep, body));
        }
        let back = req.ctl.detach();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            back.resume(echo(path, version, keep, body));
        });
        Dispatch::Detached
    }

    fn woke(&mut self) -> Result<(), i32> {
        Ok(())
    }

    fn reopen_logs(&mut self) {}
}

struct Server {
    port: u16,
    term: Arc<AtomicBool>,
    thread: Option<JoinHandle<i32>>,
}

impl Server {
    fn start(tune: impl FnOnce(&mut Settings) + Send + 'static) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let fd = l.into_raw_fd();
        let term = Arc::new(AtomicBool::new(false));
        let t = Arc::clone(&term);
        let thread = std::thread::spawn(move || {
            let shm: &'static Shm = Box::leak(Box::new(Shm::new(1).expect("shm")));
            let i = shm.claim(1).expect("slot");
            let slot: &'static Slot = shm.slot(i).expect("slot");
            let mut settings = Settings {
                keepalive: Duration::from_secs(5),
                timeout: Duration::from_secs(5),
                max_conns: 100,
                max_requests: u64::MAX,
                graceful_timeout: Duration::from_secs(2),
                parser: ParserConfig::default(),
                proxy_mode: ProxyMode::Off,
                proxy_allow: AllowList::default(),
                uwsgi_allow: None,
                forwarded_allow: AllowList::default(),
                release: no_release,
                app_wait: super::io::POLL,
                tls: None,
            };
            tune(&mut settings);
            let listeners = vec![WorkerListener {
                fd,
                kind: ListenKind::Tcp(addr),
            }];
            let mut lp = Loop::new(listeners, settings, Echo, slot, t).expect("loop");
            lp.run()
        });
        Server {
            port: addr.port(),
            term,
            thread: Some(thread),
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s
    }

    /// Stops the loop (TERM) and returns its exit code.
    fn stop(mut self) -> i32 {
        self.term.store(true, Ordering::Relaxed);
        self.join()
    }

    fn join(&mut self) -> i32 {
        self.thread
            .take()
            .map(|t| t.join().expect("loop thread"))
            .unwrap_or(-1)
    }
}

/// Reads one response with a Content-Length body: (head, body).
fn response(s: &mut TcpStream, pending: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    loop {
        if let Some(end) = memchr::memmem::find(pending, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let total = end + 4 + len;
            while pending.len() < total {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).ok()?;
                if n == 0 {
                    return None;
                }
                pending.extend_from_slice(&buf[..n]);
            }
            let body = pending[end + 4..total].to_vec();
            pending.drain(..total);
            return Some((head, body));
        }
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// True when the server closed the connection (EOF or reset) within `wait`.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn pipelined_requests_and_bodies_keep_the_connection() {
    let srv = Server::start(|_| {});
    let mut c = srv.connect();
    c.write_all(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .expect("write");
    let mut pending = Vec::new();
    for want in [&b"/a "[..], b"/b hello", b"/c abc"] {
        let (head, body) = response(&mut c, &mut pending).expect("response");
        assert!(head.contains("Connection: keep-alive"), "{head}");
        assert_eq!(body, want);
    }
    // The body arrives after the head, in pieces.
    c.write_all(b"POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nab")
        .expect("write");
    std::thread::sleep(Duration::from_millis(50));
    c.write_all(b"cdef").expect("write");
    let (_, body) = response(&mut c, &mut pending).expect("response");
    assert_eq!(body, b"/d abcdef");
    drop(c);
    assert_eq!(srv.stop(), 0);
}

#[test]
fn a_refused_head_is_answered_and_closed() {
    let srv = Server::start(|_| {});
    let mut c = srv.connect();
    c.write_all(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
        .expect("write");
    let mut pending = Vec::new();
    let (head, _) = response(&mut c, &mut pending).expect("response");
    assert!(head.starts_with("HTTP/1.1 400 Bad Request"), "{head}");
    assert!(closed_within(&mut c, Duration::from_secs(2)));
    // A Content-Length that cannot be honoured ends only its connection.
    let mut c = srv.connect();
    c.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\nab")
        .expect("write");
    drop(c);
    let mut c = srv.connect();
    c.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let (_, body) = response(&mut c, &mut Vec::new()).expect("the loop still serves");
    assert_eq!(body, b"/ok ");
    drop(c);
    assert_eq!(srv.stop(), 0);
}

#[test]
fn a_full_table_evicts_the_longest_idle_connection() {
    let srv = Server::start(|s| s.max_conns = 4);
    let mut idle: Vec<TcpStream> = Vec::new();
    // One kept-alive connection that already served a request, then three
    // that never sent a byte: the table is full.
    let mut kept = srv.connect();
    kept.write_all(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    response(&mut kept, &mut Vec::new()).expect("response");
    for _ in 0..3 {
        idle.push(srv.connect());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    let mut c = srv.connect();
    c.write_all(b"GET /new HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let (_, body) = response(&mut c, &mut Vec::new()).expect("the new client is served");
    assert_eq!(body, b"/new ");
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    // Those that never sent a byte went first, the oldest first.
    assert!(closed_within(&mut idle[0], Duration::from_secs(1)));
    kept.write_all(b"GET /k2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let (_, body) = response(&mut kept, &mut Vec::new()).expect("kept is still open");
    assert_eq!(body, b"/k2 ");
    drop((idle, kept, c));
    assert_eq!(srv.stop(), 0);
}

#[test]
fn a_trickling_head_is_cut_off_at_its_deadline() {
    let srv = Server::start(|s| s.timeout = Duration::from_secs(1));
    let mut c = srv.connect();
    let t0 = Instant::now();
    c.write_all(b"GET / HTTP/1.1\r\n").expect("write");
    let mut closed = None;
    for i in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        if c.write_all(format!("X-{i}: y\r\n").as_bytes()).is_err()
            || closed_within(&mut c, Duration::from_millis(1))
        {
            closed = Some(t0.elapsed());
            break;
        }
    }
    let closed = closed.expect("the head was never cut off");
    // The sweep runs once a second.
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_millis(2600),
        "{closed:?}"
    );
    assert_eq!(srv.stop(), 0);
}

#[test]
fn the_budget_ends_the_worker_after_its_last_request() {
    let mut srv = Server::start(|s| s.max_requests = 2);
    let mut c = srv.connect();
    let mut pending = Vec::new();
    c.write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let (head, _) = response(&mut c, &mut pending).expect("first");
    assert!(head.contains("Connection: keep-alive"), "{head}");
    c.write_all(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let (head, _) = response(&mut c, &mut pending).expect("second");
    assert!(head.contains("Connection: close"), "{head}");
    assert!(closed_within(&mut c, Duration::from_secs(2)));
    // The loop exits by itself, without a TERM.
    assert_eq!(srv.join(), 0);
}

#[test]
fn expect_continue_is_answered_before_the_body() {
    let srv = Server::start(|_| {});
    let mut c = srv.connect();
    c.write_all(
        b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
    )
    .expect("write");
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).expect("read");
    assert_eq!(&buf[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(b"ok").expect("write");
    let (_, body) = response(&mut c, &mut Vec::new()).expect("response");
    assert_eq!(body, b"/e ok");
    drop(c);
    assert_eq!(srv.stop(), 0);
}

#[test]
fn a_detached_request_does_not_hold_up_the_loop_and_comes_back() {
    let srv = Server::start(|_| {});
    let mut slow = srv.connect();
    let t0 = Instant::now();
    // A pipelined second request waits in the socket while the first is
    // served away from the loop, and is served once it is handed back.
    slow.write_all(
        b"POST /slow/a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi\
          GET /after HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .expect("write");
    std::thread::sleep(Duration::from_millis(50));
    let mut fast = srv.connect();
    fast.write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let (_, body) = response(&mut fast, &mut Vec::new()).expect("fast");
    assert_eq!(body, b"/fast ");
    assert!(
        t0.elapsed() < Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    let mut pending = Vec::new();
    let (head, body) = response(&mut slow, &mut pending).expect("slow");
    assert_eq!(body, b"/slow/a hi");
    assert!(head.contains("Connection: keep-alive"), "{head}");
    assert!(t0.elapsed() >= Duration::from_millis(300));
    let (_, body) = response(&mut slow, &mut pending).expect("pipelined after resume");
    assert_eq!(body, b"/after ");
    // A request sent after the hand-back is read too (no edge was lost).
    slow.write_all(b"GET /slow/b HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let (_, body) = response(&mut slow, &mut pending).expect("second slow");
    assert_eq!(body, b"/slow/b ");
    drop((slow, fast));
    assert_eq!(srv.stop(), 0);
}
