//! The master's side of the control socket: a non-blocking unix listener
//! and its connections, all sources of the master's mio `Poll` (no thread:
//! the master never has a second one). Each connection reads requests into
//! a buffer, answers the complete ones through the master's command
//! function, and stops reading while a reply is still unsent, so a client
//! that never reads cannot make the master buffer without end.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use serde_json::Value;
use slab::Slab;

use super::{decode, encode, error_reply, ok_reply, parse_request, Command, CommandError};

/// The listener's token; connections follow it. Far above the tokens the
/// master uses for anything else.
const LISTENER: Token = Token(1 << 30);
const FIRST_CONN: usize = (1 << 30) + 1;

/// Connections served at once; a new one beyond closes the least recently
/// active.
const MAX_CONNS: usize = 64;

/// gunicorn closes a client idle this long (its `_handle_client` timeout).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

const READ_CHUNK: usize = 64 * 1024;

struct Conn {
    stream: UnixStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    last: Instant,
    /// The peer closed its side: answer what is buffered, then close.
    eof: bool,
    /// A protocol error was answered: close once the answer is sent.
    closing: bool,
}

/// The control socket while the master serves it.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file this server bound: at stop, the
    /// file is removed only if it is still this one (a new master started
    /// by USR2 binds the same path and keeps it).
    file_id: (u64, u64),
    conns: Slab<Conn>,
    /// The master's Poll registry (a duplicate of its epoll descriptor).
    registry: Registry,
    /// When the server started (`show stats`' uptime).
    pub started: SystemTime,
}

/// What the master runs for a command.
pub type Exec<'a> = dyn FnMut(Command) -> Result<Value, CommandError> + 'a;

impl Server {
    /// Binds `path` (absolute) with permissions `mode`, as gunicorn's
    /// ControlSocketServer: the parent directory is created (0700) when
    /// missing, and a socket file left there, by a crashed run or another
    /// server, is replaced. A file there that is not a socket is left alone
    /// and the control socket does not start.
    pub fn start(path: &Path, mode: u32, registry: &Registry) -> Result<Server, String> {
        let shown = path.display();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| format!("creating the directory {}: {e}", dir.display()))?;
            }
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    crate::log_warning!(
                        "control socket {shown}: another server answers there; replacing it, as gunicorn does"
                    );
                } else {
                    crate::log_debug!("control socket {shown}: removing a stale socket file");
                }
                std::fs::remove_file(path)
                    .map_err(|e| format!("removing the old socket file {shown}: {e}"))?;
            }
            Ok(_) => {
                return Err(format!(
                    "{shown} exists and is not a socket; not removing it"
                ))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{shown}: {e}")),
        }
        // Nobody else may connect between bind and chmod: bind under a
        // umask that leaves the socket to its owner.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let mut listener = bound.map_err(|e| format!("binding {shown}: {e}"))?;
        let cleanup = |e: String| {
            let _ = std::fs::remove_file(path);
            e
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| cleanup(format!("setting the mode {mode:o} of {shown}: {e}")))?;
        let meta = std::fs::metadata(path).map_err(|e| cleanup(format!("{shown}: {e}")))?;
        let registry = registry
            .try_clone()
            .map_err(|e| cleanup(format!("duplicating the master's event loop handle: {e}")))?;
        registry
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| cleanup(format!("registering the control socket: {e}")))?;
        crate::log_info!("Control socket listening at {shown}");
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            file_id: (meta.dev(), meta.ino()),
            conns: Slab::new(),
            registry,
            started: SystemTime::now(),
        })
    }

    /// The token is one of the control socket's.
    pub fn owns(token: Token) -> bool {
        token.0 >= LISTENER.0
    }

    /// One readiness event of the control socket.
    pub fn handle(&mut self, token: Token, exec: &mut Exec<'_>) {
        if token == LISTENER {
            self.accept();
            return;
        }
        if let Some(key) = token.0.checked_sub(FIRST_CONN) {
            if self.conns.contains(key) {
                self.drive(key, exec);
            }
        }
    }

    /// Closes the connections idle for gunicorn's five minutes at `now`.
    pub fn sweep(&mut self, now: Instant) {
        let idle: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| now.duration_since(c.last) >= IDLE_TIMEOUT)
            .map(|(k, _)| k)
            .collect();
        for key in idle {
            self.close(key);
        }
    }

    /// Stops serving and removes the socket file if it is still ours.
    pub fn stop(mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key);
        }
        let _ = self.registry.deregister(&mut self.listener);
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.file_id {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    crate::log_debug!("removing {}: {e}", self.path.display());
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if self.conns.len() >= MAX_CONNS {
                        // Clients that hold connections open must not lock
                        // the operator out: the least recently active goes.
                        let oldest = self
                            .conns
                            .iter()
                            .min_by_key(|(_, c)| c.last)
                            .map(|(k, _)| k);
                        if let Some(k) = oldest {
                            crate::log_warning!(
                                "control socket: {MAX_CONNS} clients connected; closing the least recently active"
                            );
                            self.close(k);
                        }
                    }
                    let entry = self.conns.vacant_entry();
                    let Some(token) = entry.key().checked_add(FIRST_CONN).map(Token) else {
                        continue;
                    };
                    if let Err(e) = self.registry.register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        crate::log_debug!("control socket: registering a client: {e}");
                        continue;
                    }
                    // Data already there is reported at registration.
                    entry.insert(Conn {
                        stream,
                        inbuf: Vec::new(),
                        out: Vec::new(),
                        sent: 0,
                        last: Instant::now(),
                        eof: false,
                        closing: false,
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    crate::log_debug!("control socket: accept: {e}");
                    return;
                }
            }
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(mut c) = self.conns.try_remove(key) {
            let _ = self.registry.deregister(&mut c.stream);
        }
    }

    /// Writes what is pending, answers complete requests, reads more: until
    /// the socket would block either way, or the connection is done.
    fn drive(&mut self, key: usize, exec: &mut Exec<'_>) {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            while c.sent < c.out.len() {
                match c.stream.write(&c.out[c.sent..]) {
                    Ok(0) => return self.close(key),
                    Ok(n) => c.sent += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return self.close(key),
                }
            }
            c.out.clear();
            c.sent = 0;
            if c.closing {
                return self.close(key);
            }
            match decode(&c.inbuf) {
                Ok(Some((msg, used))) => {
                    c.inbuf.drain(..used);
                    c.last = Instant::now();
                    c.out = encode(&dispatch(&msg, exec));
                }
                Err(e) => {
                    // gunicorn drops the connection on a protocol error;
                    // the client is told why first.
                    c.inbuf = Vec::new();
                    c.out = encode(&error_reply(&Value::from(0), &e.to_string()));
                    c.closing = true;
                }
                Ok(None) if c.eof => return self.close(key),
                Ok(None) => match c.stream.read(&mut chunk) {
                    Ok(0) => c.eof = true,
                    Ok(n) => {
                        c.inbuf.extend_from_slice(&chunk[..n]);
                        c.last = Instant::now();
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return self.close(key),
                },
            }
        }
    }
}

/// gunicorn's `_dispatch`: the reply to one request.
fn dispatch(msg: &Value, exec: &mut Exec<'_>) -> Value {
    let id = msg.get("id").cloned().unwrap_or(Value::from(0));
    let result = parse_request(msg).and_then(exec);
    match result {
        Ok(data) => ok_reply(&id, data),
        Err(e) => error_reply(&id, &e.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_idle_for_five_minutes_is_closed() {
        let dir = std::env::temp_dir().join(format!("fc-ctl-idle-{}", std::process::id()));
        let path = dir.join("ctl.sock");
        let mut poll = mio::Poll::new().expect("poll");
        let mut server = Server::start(&path, 0o600, poll.registry()).expect("start");
        let mut client = std::os::unix::net::UnixStream::connect(&path).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut events = mio::Events::with_capacity(8);
        while server.conns.is_empty() {
            poll.poll(&mut events, Some(Duration::from_secs(5)))
                .expect("poll");
            assert!(!events.is_empty(), "the connection was never reported");
            for ev in events.iter() {
                server.handle(ev.token(), &mut |_| panic!("no command was sent"));
            }
        }
        let accepted = Instant::now();
        server.sweep(accepted + IDLE_TIMEOUT - Duration::from_secs(1));
        assert_eq!(server.conns.len(), 1, "closed before five minutes");
        server.sweep(accepted + IDLE_TIMEOUT);
        assert!(server.conns.is_empty(), "kept past five minutes");
        let mut byte = [0u8; 1];
        assert_eq!(client.read(&mut byte).expect("end of stream"), 0);
        server.stop();
        assert!(!path.exists(), "the socket file was left");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
