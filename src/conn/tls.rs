//! TLS on a connection's socket (rustls, in userspace: the kernel has no
//! kTLS here): the handshake thread, and the established session's reads
//! and writes that [`super::transport::Inline`] does instead of plain
//! read(2)/write(2).
//!
//! Handshakes run on one thread per worker, created after the fork, that
//! never runs Python: the loop accepts a connection on a TLS listener and
//! hands it to the thread, which drives the handshake on its own poll
//! with a deadline and hands the established session back through a queue
//! and an eventfd in the loop's poll. A client that fails the handshake
//! (a plain-HTTP client gets a plain-text 400 first, as nginx answers)
//! costs that connection only.
//!
//! An established session reads and writes with the same contract as the
//! plain socket functions of `io.rs`: `WouldBlock` only once the socket is
//! drained and rustls holds no plaintext, and a short read means the
//! socket is drained, so the edge-triggered loop and the kinds' waits on
//! the descriptor work unchanged.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::sys::eventfd::{EfdFlags, EventFd};
use rustls::ServerConnection;
use slab::Slab;

use super::io as sockio;

/// The socket as rustls reads and writes it: one non-blocking syscall.
struct Fd(RawFd);

impl Read for Fd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sockio::read_nb(self.0, buf)
    }
}

impl Write for Fd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sockio::write_nb(self.0, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn would_block() -> io::Error {
    io::Error::from(io::ErrorKind::WouldBlock)
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

/// Sends what rustls has to send. Ok(true): all out; Ok(false): the socket
/// is full.
fn flush(fd: RawFd, c: &mut ServerConnection) -> io::Result<bool> {
    while c.wants_write() {
        match c.write_tls(&mut Fd(fd)) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads ciphertext once and processes it. Ok(false): end of stream.
fn read_tls(fd: RawFd, c: &mut ServerConnection) -> io::Result<bool> {
    let n = c.read_tls(&mut Fd(fd))?;
    if n == 0 {
        return Ok(false);
    }
    let state = c.process_new_packets();
    // Alerts, key updates and TLS 1.3 tickets go out as they come.
    let _ = flush(fd, c);
    state.map_err(tls_err)?;
    Ok(true)
}

/// Plaintext bytes sent per rustls write (one TLS record is 16 KiB).
const WRITE_CHUNK: usize = 64 * 1024;

/// An established TLS session on a connection's socket.
pub struct Session {
    conn: Mutex<ServerConnection>,
    /// A peer that closes without close_notify ends the stream quietly
    /// (gunicorn's suppress_ragged_eofs, on by default); otherwise a read
    /// fails.
    suppress_ragged_eofs: bool,
}

impl Session {
    pub fn new(conn: ServerConnection, suppress_ragged_eofs: bool) -> Session {
        Session {
            conn: Mutex::new(conn),
            suppress_ragged_eofs,
        }
    }

    fn lock(&self) -> MutexGuard<'_, ServerConnection> {
        // Nothing leaves the session half-changed on a panic elsewhere.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends up to `max` plaintext bytes to `buf`, reading the socket as
    /// needed: Ok(0) at the end of the stream, `WouldBlock` when nothing
    /// can be had now. Fewer than `max` bytes only once the socket is
    /// drained.
    pub fn read_append(&self, fd: RawFd, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        let mut c = self.lock();
        let start = buf.len();
        let mut eof = false;
        let res = loop {
            let got = buf.len() - start;
            // rustls reads into initialised bytes: grow, read, cut back.
            let at = buf.len();
            buf.resize(start + max, 0);
            let r = c.reader().read(&mut buf[at..]);
            buf.truncate(at + *r.as_ref().unwrap_or(&0));
            match r {
                // close_notify
                Ok(0) => break Ok(got),
                Ok(n) if got + n >= max => break Ok(got + n),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !eof => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(got),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    break if got > 0 || self.suppress_ragged_eofs {
                        Ok(got)
                    } else {
                        Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "TLS: the peer closed without close_notify",
                        ))
                    };
                }
                Err(e) => break if got > 0 { Ok(got) } else { Err(e) },
            }
            match read_tls(fd, &mut c) {
                Ok(true) => {}
                // The reader tells a clean end from a ragged one.
                Ok(false) => eof = true,
                Err(e) => break if got > 0 { Ok(got) } else { Err(e) },
            }
        };
        if res.is_err() {
            buf.truncate(start);
        }
        res
    }

    /// Plaintext into `buf` with at most the reads `read_append` does.
    pub fn read_nb(&self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        let mut v = Vec::with_capacity(buf.len());
        let n = self.read_append(fd, &mut v, buf.len())?;
        buf[..n].copy_from_slice(&v[..n]);
        Ok(n)
    }

    /// Takes up to 64 KiB of `data` once what was queued before is out:
    /// `WouldBlock` while it is not. What it takes may still sit in rustls
    /// when the socket is full: [`Session::flush_nb`] sends it.
    pub fn write_nb(&self, fd: RawFd, data: &[u8]) -> io::Result<usize> {
        let mut c = self.lock();
        if !flush(fd, &mut c)? {
            return Err(would_block());
        }
        let n = c.writer().write(&data[..data.len().min(WRITE_CHUNK)])?;
        match flush(fd, &mut c) {
            Ok(_) => Ok(n),
            Err(e) if n == 0 => Err(e),
            // The bytes are taken; the error comes back at the next call.
            Err(_) => Ok(n),
        }
    }

    /// Sends what rustls still holds: Ok once all is out, `WouldBlock`
    /// while the socket is full.
    pub fn flush_nb(&self, fd: RawFd) -> io::Result<()> {
        if flush(fd, &mut self.lock())? {
            Ok(())
        } else {
            Err(would_block())
        }
    }

    /// Writes all of `data`, waiting with `wait` (POLLOUT) when the socket
    /// is full.
    pub fn write_all(
        &self,
        fd: RawFd,
        data: &[u8],
        wait: &mut dyn FnMut() -> io::Result<()>,
    ) -> io::Result<()> {
        let mut c = self.lock();
        for part in data.chunks(WRITE_CHUNK) {
            c.writer().write_all(part)?;
            while !flush(fd, &mut c)? {
                wait()?;
            }
        }
        while !flush(fd, &mut c)? {
            wait()?;
        }
        Ok(())
    }

    /// Whether the peer closed (close_notify, or the socket's end), reading
    /// what is there into the session (plaintext stays for the next read).
    pub fn peer_closed(&self, fd: RawFd) -> bool {
        let mut c = self.lock();
        loop {
            match c.read_tls(&mut Fd(fd)) {
                Ok(0) => return true,
                Ok(_) => match c.process_new_packets() {
                    Ok(state) if state.peer_has_closed() => return true,
                    Ok(_) => {}
                    Err(_) => return true,
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
    }

    /// Sends close_notify before the socket closes (best effort, no wait).
    pub fn close(&self, fd: RawFd) {
        if let Ok(mut c) = self.conn.try_lock() {
            c.send_close_notify();
            let _ = flush(fd, &mut c);
        }
    }
}

// -- the handshake thread ----------------------------------------------------

/// What the loop gets back for a connection it handed over.
pub type Outcome = Result<ServerConnection, String>;

/// A connection handed to the thread: slab key, hand-over number, the
/// thread's own descriptor of the socket.
type Job = (usize, u64, OwnedFd);

/// A report: slab key, hand-over number, outcome.
type Report = (usize, u64, Outcome);

/// The loop's end of the handshake thread.
pub struct Handshakes {
    jobs: Arc<Mutex<Vec<Job>>>,
    waker: Arc<Waker>,
    done: Arc<Mutex<Vec<Report>>>,
    /// Readable when `done` has entries (registered in the loop's poll).
    done_fd: Arc<EventFd>,
}

const WAKER: Token = Token(usize::MAX);

impl Handshakes {
    /// Starts the thread (in the worker, after the fork).
    pub fn start(
        config: Arc<rustls::ServerConfig>,
        timeout: Duration,
    ) -> Result<Handshakes, String> {
        let poll = Poll::new().map_err(|e| format!("creating the TLS handshake poll: {e}"))?;
        let waker = Arc::new(
            Waker::new(poll.registry(), WAKER)
                .map_err(|e| format!("creating the TLS handshake waker: {e}"))?,
        );
        let done_fd = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(|e| format!("creating the TLS handshake eventfd: {e}"))?,
        );
        let h = Handshakes {
            jobs: Arc::new(Mutex::new(Vec::new())),
            waker,
            done: Arc::new(Mutex::new(Vec::new())),
            done_fd,
        };
        let mut worker = Thread {
            poll,
            config,
            timeout,
            jobs: Arc::clone(&h.jobs),
            done: Arc::clone(&h.done),
            done_fd: Arc::clone(&h.done_fd),
            live: Slab::new(),
        };
        std::thread::Builder::new()
            .name("tls-handshake".into())
            .spawn(move || worker.run())
            .map_err(|e| format!("starting the TLS handshake thread: {e}"))?;
        Ok(h)
    }

    /// The descriptor the loop registers: readable when handshakes ended.
    pub fn done_fd(&self) -> RawFd {
        use std::os::fd::{AsFd, AsRawFd};
        self.done_fd.as_fd().as_raw_fd()
    }

    /// Hands a fresh connection (slab key, hand-over number, a descriptor
    /// of its socket for the thread) to the thread.
    pub fn submit(&self, key: usize, seq: u64, fd: OwnedFd) {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((key, seq, fd));
        if let Err(e) = self.waker.wake() {
            crate::log_error!("waking the TLS handshake thread: {e}");
        }
    }

    /// The handshakes that ended since the last call.
    pub fn take(&self) -> Vec<Report> {
        let _ = self.done_fd.read();
        std::mem::take(&mut *self.done.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

struct Pending {
    key: usize,
    seq: u64,
    /// The thread's own descriptor (closed when it is done with it).
    own: OwnedFd,
    fd: RawFd,
    conn: ServerConnection,
    deadline: Instant,
    /// The first byte was looked at (plain HTTP is answered, not parsed).
    checked: bool,
}

struct Thread {
    poll: Poll,
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
    jobs: Arc<Mutex<Vec<Job>>>,
    done: Arc<Mutex<Vec<Report>>>,
    done_fd: Arc<EventFd>,
    live: Slab<Pending>,
}

/// What a plain-HTTP client on the TLS port reads (as nginx answers it).
const PLAIN_HTTP: &[u8] = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\
Content-Type: text/plain\r\nContent-Length: 47\r\n\r\n\
The plain HTTP request was sent to HTTPS port.\n";

enum Step {
    Wait,
    Done,
    Failed(String),
}

impl Thread {
    fn run(&mut self) {
        let mut events = Events::with_capacity(64);
        loop {
            let now = Instant::now();
            let wait = self
                .live
                .iter()
                .map(|(_, p)| p.deadline.saturating_duration_since(now))
                .min()
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    crate::log_error!("TLS handshake poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            let mut ended = Vec::new();
            for ev in events.iter() {
                if ev.token() == WAKER {
                    self.take_jobs(&mut ended);
                } else {
                    let i = ev.token().0;
                    if let Some(p) = self.live.get_mut(i) {
                        match drive(p) {
                            Step::Wait => {}
                            Step::Done => ended.push((i, None)),
                            Step::Failed(e) => ended.push((i, Some(e))),
                        }
                    }
                }
            }
            let now = Instant::now();
            for (i, p) in self.live.iter() {
                if p.deadline <= now && !ended.iter().any(|(j, _)| *j == i) {
                    ended.push((i, Some(format!("not complete within {:?}", self.timeout))));
                }
            }
            if !ended.is_empty() {
                self.finish(ended);
            }
        }
    }

    fn take_jobs(&mut self, ended: &mut Vec<(usize, Option<String>)>) {
        let jobs = std::mem::take(&mut *self.jobs.lock().unwrap_or_else(|e| e.into_inner()));
        for (key, seq, own) in jobs {
            let fd = own.as_raw_fd();
            let conn = match ServerConnection::new(Arc::clone(&self.config)) {
                Ok(c) => c,
                Err(e) => {
                    self.report(vec![(key, seq, Err(format!("TLS session: {e}")))]);
                    continue;
                }
            };
            let entry = self.live.vacant_entry();
            let i = entry.key();
            if let Err(e) = self.poll.registry().register(
                &mut SourceFd(&fd),
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                let e = format!("registering for the handshake: {e}");
                self.report(vec![(key, seq, Err(e))]);
                continue;
            }
            let p = entry.insert(Pending {
                key,
                seq,
                own,
                fd,
                conn,
                deadline: Instant::now() + self.timeout,
                checked: false,
            });
            // The ClientHello usually came with the connection.
            match drive(p) {
                Step::Wait => {}
                Step::Done => ended.push((i, None)),
                Step::Failed(e) => ended.push((i, Some(e))),
            }
        }
    }

    fn finish(&mut self, ended: Vec<(usize, Option<String>)>) {
        let mut out = Vec::with_capacity(ended.len());
        for (i, err) in ended {
            let Some(p) = self.live.try_remove(i) else {
                continue;
            };
            let _ = self.poll.registry().deregister(&mut SourceFd(&p.fd));
            drop(p.own);
            out.push((
                p.key,
                p.seq,
                match err {
                    None => Ok(p.conn),
                    Some(e) => Err(e),
                },
            ));
        }
        self.report(out);
    }

    fn report(&self, out: Vec<Report>) {
        if out.is_empty() {
            return;
        }
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(out);
        if let Err(e) = self.done_fd.write(1) {
            crate::log_error!("waking the event loop after a TLS handshake: {e}");
        }
    }
}

/// Advances a handshake as far as the socket allows.
fn drive(p: &mut Pending) -> Step {
    loop {
        match flush(p.fd, &mut p.conn) {
            Ok(true) => {}
            Ok(false) => return Step::Wait,
            // Established, and the client no longer reads (it sent its
            // request and shut the socket): the loop still reads it.
            Err(_) if !p.conn.is_handshaking() => return Step::Done,
            Err(e) => return Step::Failed(format!("writing: {e}")),
        }
        if !p.conn.is_handshaking() {
            return Step::Done;
        }
        if !p.checked {
            let mut b = [0u8; 1];
            match sockio::peek(p.fd, &mut b) {
                Ok(0) => return Step::Failed("the client closed the connection".into()),
                Ok(_) => {
                    p.checked = true;
                    if b[0].is_ascii_uppercase() {
                        // TLS starts with a handshake record (0x16); a
                        // request line with its method.
                        // What it sent is read first: closing a socket
                        // with unread bytes resets it, and the client
                        // would lose the answer.
                        let mut sink = [0u8; 4096];
                        for _ in 0..16 {
                            if !matches!(sockio::read_nb(p.fd, &mut sink), Ok(n) if n > 0) {
                                break;
                            }
                        }
                        let _ = sockio::write_nb(p.fd, PLAIN_HTTP);
                        sockio::shutdown_write(p.fd);
                        return Step::Failed("a plain HTTP request on a TLS listener".into());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                Err(e) => return Step::Failed(format!("reading: {e}")),
            }
        }
        match read_tls(p.fd, &mut p.conn) {
            Ok(true) => {}
            Ok(false) => return Step::Failed("the client closed the connection".into()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
            Err(e) => return Step::Failed(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

    /// A server configuration for "localhost" and a client that trusts it.
    fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        let der = cert.der().clone();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).expect("root");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// Hands `server` to a handshake thread and waits for its outcome.
    fn handshake(h: &Handshakes, server: &UnixStream) -> Outcome {
        let own = server.as_fd().try_clone_to_owned().expect("dup");
        h.submit(7, 1, own);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((key, seq, out)) = h.take().pop() {
                assert_eq!((key, seq), (7, 1));
                return out;
            }
            assert!(Instant::now() < deadline, "no handshake outcome");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn wait(fd: RawFd, out: bool) {
        let flags = if out {
            nix::poll::PollFlags::POLLOUT
        } else {
            nix::poll::PollFlags::POLLIN
        };
        sockio::wait(
            sockio::POLL,
            fd,
            flags,
            Instant::now() + Duration::from_secs(10),
        )
        .expect("socket ready");
    }

    #[test]
    fn a_session_reads_writes_and_sees_the_peer_close() {
        let (server_cfg, client_cfg) = configs();
        let h = Handshakes::start(server_cfg, Duration::from_secs(5)).expect("thread");
        let (server, client) = UnixStream::pair().expect("pair");
        server.set_nonblocking(true).expect("nonblocking");
        let name = ServerName::try_from("localhost").expect("name");
        let peer = std::thread::spawn(move || {
            let conn = rustls::ClientConnection::new(client_cfg, name).expect("client");
            let mut tls = rustls::StreamOwned::new(conn, client);
            tls.write_all(&vec![b'q'; 200_000]).expect("client write");
            let mut got = vec![0u8; 1_000_000];
            tls.read_exact(&mut got).expect("client read");
            assert!(got.iter().all(|&b| b == b'r'));
            tls.conn.send_close_notify();
            tls.flush().expect("close_notify");
            tls
        });
        let s = Session::new(handshake(&h, &server).expect("handshake"), true);
        let fd = server.as_fd().as_raw_fd();
        let mut buf = Vec::new();
        while buf.len() < 200_000 {
            match s.read_append(fd, &mut buf, 16 * 1024) {
                Ok(0) => panic!("early end"),
                Ok(n) => assert!(n <= 16 * 1024),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(fd, false),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(buf, vec![b'q'; 200_000]);
        let data = vec![b'r'; 1_000_000];
        let mut sent = 0;
        while sent < data.len() {
            match s.write_nb(fd, &data[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(fd, true),
                Err(e) => panic!("{e}"),
            }
        }
        loop {
            match s.flush_nb(fd) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(fd, true),
                Err(e) => panic!("{e}"),
            }
        }
        let _kept_open = peer.join().expect("client thread");
        wait(fd, false);
        assert!(s.peer_closed(fd));
        let mut more = Vec::new();
        assert_eq!(s.read_append(fd, &mut more, 100).expect("clean end"), 0);
    }

    #[test]
    fn ragged_ends_and_plain_http() {
        let (server_cfg, client_cfg) = configs();
        let h = Handshakes::start(server_cfg, Duration::from_secs(5)).expect("thread");
        for suppress in [true, false] {
            let (server, client) = UnixStream::pair().expect("pair");
            server.set_nonblocking(true).expect("nonblocking");
            let cfg = Arc::clone(&client_cfg);
            let peer = std::thread::spawn(move || {
                let name = ServerName::try_from("localhost").expect("name");
                let conn = rustls::ClientConnection::new(cfg, name).expect("client");
                let mut tls = rustls::StreamOwned::new(conn, client);
                tls.write_all(b"hi").expect("client write");
                // gone without close_notify
                tls.sock
                    .shutdown(std::net::Shutdown::Both)
                    .expect("shutdown");
            });
            let s = Session::new(handshake(&h, &server).expect("handshake"), suppress);
            peer.join().expect("client thread");
            let fd = server.as_fd().as_raw_fd();
            let mut buf = Vec::new();
            assert_eq!(s.read_append(fd, &mut buf, 100).expect("data"), 2);
            let end = s.read_append(fd, &mut buf, 100);
            if suppress {
                assert_eq!(end.expect("quiet end"), 0);
            } else {
                let e = end.expect_err("ragged end");
                assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
            }
        }
        // a plain HTTP client: answered in plain text, the handshake fails
        let (server, mut client) = UnixStream::pair().expect("pair");
        server.set_nonblocking(true).expect("nonblocking");
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let e = handshake(&h, &server).expect_err("plain HTTP");
        assert!(e.contains("plain HTTP"), "{e}");
        let mut answer = String::new();
        client.read_to_string(&mut answer).expect("answer");
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    }
}
