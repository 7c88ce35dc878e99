//! Listening sockets: gunicorn's bind syntax (HOST, HOST:PORT, [IPv6]:PORT,
//! unix:PATH, fd://N, tcp://HOST:PORT), created once by the master and
//! inherited by every worker.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{
    bind, getsockname, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag,
    SockType, SockaddrIn, SockaddrIn6, SockaddrStorage, UnixAddr,
};

/// A parsed `--bind` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindAddr {
    Tcp(String, u16),
    Unix(PathBuf),
    Fd(RawFd),
}

/// Parses one bind string with gunicorn's rules (default port 8000).
pub fn parse_bind(s: &str) -> Result<BindAddr, String> {
    if let Some(rest) = s.strip_prefix("unix:") {
        let path = rest.strip_prefix("//").unwrap_or(rest);
        return Ok(BindAddr::Unix(PathBuf::from(path)));
    }
    if let Some(fd) = s.strip_prefix("fd://") {
        return fd
            .parse::<RawFd>()
            .map(BindAddr::Fd)
            .map_err(|_| format!("{fd:?} is not a valid file descriptor."));
    }
    let netloc = s.strip_prefix("tcp://").unwrap_or(s);
    let (host, port) = if let (Some(open), Some(close)) = (netloc.find('['), netloc.find(']')) {
        let host = netloc.get(open + 1..close).unwrap_or("");
        let port = netloc.get(close + 1..).and_then(|p| p.strip_prefix(':'));
        (host.to_string(), port.unwrap_or("8000"))
    } else if netloc.is_empty() {
        ("0.0.0.0".to_string(), "8000")
    } else {
        let mut parts = netloc.split(':');
        let host = parts.next().unwrap_or("");
        (host.to_string(), parts.next().unwrap_or("8000"))
    };
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{port:?} is not a valid port number."))?;
    Ok(BindAddr::Tcp(host.to_lowercase(), port))
}

/// What kind of socket a listener is; workers need it for the environ.
#[derive(Clone, Debug)]
pub enum ListenKind {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A bound, listening socket owned by the master.
#[derive(Debug)]
pub struct Listener {
    pub fd: OwnedFd,
    pub kind: ListenKind,
    /// Unix socket files the master created and removes at exit.
    pub owns_path: bool,
}

impl Listener {
    /// gunicorn's display form: `http://127.0.0.1:8000`, `unix:/tmp/x.sock`.
    pub fn url(&self) -> String {
        match &self.kind {
            ListenKind::Tcp(SocketAddr::V4(a)) => format!("http://{a}"),
            ListenKind::Tcp(SocketAddr::V6(a)) => format!("http://[{}]:{}", a.ip(), a.port()),
            ListenKind::Unix(p) => format!("unix:{}", p.display()),
        }
    }
}

/// How sockets are created (--backlog, --reuse-port; unix sockets are bound
/// under --umask and chowned to --user/--group, as gunicorn).
pub struct BindOptions {
    pub backlog: i32,
    pub reuse_port: bool,
    pub umask: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Creates every listener in `binds`, retrying a busy address as gunicorn
/// does (5 tries, 1 s apart).
pub fn create_listeners(binds: &[String], opts: &BindOptions) -> Result<Vec<Listener>, String> {
    let mut out = Vec::with_capacity(binds.len());
    for b in binds {
        let addr = parse_bind(b).map_err(|e| format!("invalid bind {b:?}: {e}"))?;
        let mut last_err = String::new();
        let mut bound = None;
        for attempt in 0..5 {
            match bind_one(&addr, opts) {
                Ok(l) => {
                    bound = Some(l);
                    break;
                }
                Err(e) => {
                    crate::log_error!("connection to {b} failed: {e}");
                    last_err = e;
                    if attempt < 4 {
                        crate::log_debug!("Retrying in 1 second.");
                        std::thread::sleep(std::time::Duration::from_secs(1));
                    }
                }
            }
        }
        match bound {
            Some(l) => out.push(l),
            None => return Err(format!("Can't connect to {b}: {last_err}")),
        }
    }
    Ok(out)
}

fn bind_one(addr: &BindAddr, opts: &BindOptions) -> Result<Listener, String> {
    let backlog = Backlog::new(opts.backlog.max(1)).unwrap_or(Backlog::MAXCONN);
    match addr {
        BindAddr::Tcp(host, port) => {
            let sa = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .next()
                .ok_or_else(|| format!("{host} resolves to no address"))?;
            let family = if sa.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
                .map_err(|e| e.to_string())?;
            setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| e.to_string())?;
            if opts.reuse_port {
                setsockopt(&fd, sockopt::ReusePort, &true).map_err(|e| e.to_string())?;
            }
            if sa.is_ipv6() {
                setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(|e| e.to_string())?;
            }
            match sa {
                SocketAddr::V4(a) => bind(fd.as_raw_fd(), &SockaddrIn::from(a)),
                SocketAddr::V6(a) => bind(fd.as_raw_fd(), &SockaddrIn6::from(a)),
            }
            .map_err(|e| e.desc().to_string())?;
            listen(&fd, backlog).map_err(|e| e.to_string())?;
            let local = local_tcp_addr(fd.as_raw_fd()).unwrap_or(sa);
            Ok(Listener {
                fd,
                kind: ListenKind::Tcp(local),
                owns_path: false,
            })
        }
        BindAddr::Unix(path) => {
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                if meta.file_type().is_socket() {
                    let _ = std::fs::remove_file(path);
                } else {
                    return Err(format!("{} exists and is not a socket", path.display()));
                }
            }
            let fd = socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(|e| e.to_string())?;
            let ua = UnixAddr::new(path).map_err(|e| e.to_string())?;
            let old_umask = crate::process::user::set_umask(opts.umask);
            let bound = bind(fd.as_raw_fd(), &ua).map_err(|e| e.desc().to_string());
            crate::process::user::set_umask(old_umask);
            bound?;
            crate::process::user::chown(path, opts.uid, opts.gid)?;
            listen(&fd, backlog).map_err(|e| e.to_string())?;
            Ok(Listener {
                fd,
                kind: ListenKind::Unix(path.clone()),
                owns_path: true,
            })
        }
        BindAddr::Fd(raw) => from_fd(*raw),
    }
}

/// Adopts an already-bound listening socket (fd://N, systemd, USR2 re-exec).
pub fn from_fd(raw: RawFd) -> Result<Listener, String> {
    // SAFETY: the user (or systemd / the parent master) handed us this fd
    // number as an open listening socket that nothing else in this process
    // owns; fstat below verifies that it is open at all.
    nix::sys::stat::fstat(unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) })
        .map_err(|e| format!("fd://{raw}: {e}"))?;
    // SAFETY: see above; from here on the Listener owns the descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let ss: SockaddrStorage =
        getsockname(fd.as_raw_fd()).map_err(|e| format!("fd://{raw}: {e}"))?;
    let kind = if let Some(u) = ss.as_unix_addr() {
        ListenKind::Unix(u.path().map(PathBuf::from).unwrap_or_default())
    } else if let Some(a) = local_tcp_addr(fd.as_raw_fd()) {
        ListenKind::Tcp(a)
    } else {
        return Err(format!("fd://{raw} is not a TCP or unix socket"));
    };
    Ok(Listener {
        fd,
        kind,
        owns_path: false,
    })
}

fn local_tcp_addr(fd: RawFd) -> Option<SocketAddr> {
    let ss: SockaddrStorage = getsockname(fd).ok()?;
    if let Some(a) = ss.as_sockaddr_in() {
        return Some(SocketAddr::V4((*a).into()));
    }
    ss.as_sockaddr_in6().map(|a| SocketAddr::V6((*a).into()))
}

/// Removes unix socket files this process created.
pub fn unlink_owned(listeners: &[Listener]) {
    for l in listeners {
        if let (true, ListenKind::Unix(p)) = (l.owns_path, &l.kind) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Connections waiting in a listening TCP socket's accept queue (Linux
/// reports it as `tcpi_unacked` of a listener's TCP_INFO); `None` for other
/// sockets or on error.
pub fn accept_queue_len(fd: RawFd) -> Option<u32> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is
    // that large and zero-initialised; a bad fd only makes it fail.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: zero-initialised and (partly) filled by the kernel: every bit
    // pattern is a valid tcp_info (plain integers).
    let info = unsafe { info.assume_init() };
    // TCP_LISTEN is state 10.
    (info.tcpi_state == 10).then_some(info.tcpi_unacked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gunicorn_bind_forms() {
        assert_eq!(
            parse_bind("127.0.0.1:9000"),
            Ok(BindAddr::Tcp("127.0.0.1".into(), 9000))
        );
        assert_eq!(
            parse_bind("localhost"),
            Ok(BindAddr::Tcp("localhost".into(), 8000))
        );
        assert_eq!(parse_bind("[::1]:81"), Ok(BindAddr::Tcp("::1".into(), 81)));
        assert_eq!(parse_bind("[::1]"), Ok(BindAddr::Tcp("::1".into(), 8000)));
        assert_eq!(
            parse_bind("unix:/tmp/a.sock"),
            Ok(BindAddr::Unix("/tmp/a.sock".into()))
        );
        assert_eq!(
            parse_bind("unix:///tmp/a.sock"),
            Ok(BindAddr::Unix("/tmp/a.sock".into()))
        );
        assert_eq!(parse_bind("fd://3"), Ok(BindAddr::Fd(3)));
        assert_eq!(
            parse_bind("tcp://Example.COM:1"),
            Ok(BindAddr::Tcp("example.com".into(), 1))
        );
        assert!(parse_bind("fd://x").is_err());
        assert!(parse_bind("host:notaport").is_err());
    }
}
