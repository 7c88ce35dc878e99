//! `--log-syslog`: error-log and access-log records also go to syslog, as
//! gunicorn's `SysLogHandler`s send them (`Logger._set_syslog_handler`):
//!
//! ```text
//! <14>gunicorn.myapp.app.error: [4242] Booting worker with pid: 4242\0
//! ```
//!
//! i.e. `<PRI>` (facility * 8 + severity), the ident `gunicorn.<prefix>.error`
//! or `.access`, `[pid] message` and a NUL, one message per datagram (or
//! per write on a stream socket).
//!
//! The socket is made in the master when the configuration is applied and
//! inherited by the workers it forks. The write path takes a read lock
//! that only [`configure`] (the master, single-threaded, at start and on
//! reload) ever takes for writing, so a forked child can always log.

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use super::Level;

/// gunicorn's SYSLOG_FACILITIES.
const FACILITIES: [(&str, u8); 21] = [
    ("auth", 4),
    ("authpriv", 10),
    ("cron", 9),
    ("daemon", 3),
    ("ftp", 11),
    ("kern", 0),
    ("lpr", 6),
    ("mail", 2),
    ("news", 7),
    ("security", 4),
    ("syslog", 5),
    ("user", 1),
    ("uucp", 8),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

/// The syslog settings of a configuration.
pub struct Settings {
    /// `syslog_addr`: unix://PATH[#dgram|#stream], udp://HOST[:PORT],
    /// tcp://HOST[:PORT].
    pub addr: String,
    /// `syslog_prefix`, else the process name (':' made '.').
    pub prefix: String,
    pub facility: String,
    /// Access-log lines go there too (not `disable_redirect_access_to_syslog`).
    pub access: bool,
}

/// Where a syslog address points, as gunicorn's `parse_syslog_address`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Address {
    /// `#dgram` asks for a datagram socket; otherwise a datagram socket is
    /// tried, then a stream one (Python's SysLogHandler).
    Unix {
        path: String,
        dgram_only: bool,
    },
    Udp(String, u16),
    Tcp(String, u16),
}

fn parse_address(addr: &str) -> Result<Address, String> {
    if let Some(rest) = addr.strip_prefix("unix://") {
        let (path, kind) = match rest.split_once('#') {
            Some((p, k)) => (p, Some(k)),
            None => (rest, None),
        };
        return Ok(Address::Unix {
            path: path.to_owned(),
            dgram_only: kind == Some("dgram"),
        });
    }
    let (rest, tcp) = if let Some(r) = addr.strip_prefix("udp://") {
        (r, false)
    } else if let Some(r) = addr.strip_prefix("tcp://") {
        (r, true)
    } else {
        return Err(format!("invalid syslog address {addr:?}"));
    };
    let host = if rest.contains('[') && rest.contains(']') {
        rest.split(']').next().unwrap_or("").trim_start_matches('[')
    } else if let Some((h, _)) = rest.split_once(':') {
        h
    } else if rest.is_empty() {
        "localhost"
    } else {
        rest
    }
    .to_ascii_lowercase();
    let after = rest.rsplit(']').next().unwrap_or(rest);
    let port = match after.split_once(':') {
        Some((_, p)) => match p.parse::<u16>() {
            Ok(n) if p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("{p:?} is not a valid port number.")),
        },
        None => 514,
    };
    Ok(if tcp {
        Address::Tcp(host, port)
    } else {
        Address::Udp(host, port)
    })
}

fn facility_code(name: &str) -> Result<u8, String> {
    FACILITIES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, c)| c)
        .ok_or_else(|| format!("unknown syslog facility name {name:?}"))
}

enum Conn {
    UnixDgram(UnixDatagram),
    UnixStream(UnixStream),
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream),
}

impl Conn {
    /// One message: one datagram, or one write on a stream.
    fn send(&self, msg: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::UnixDgram(s) => s.send(msg).map(drop),
            Conn::UnixStream(s) => (&*s).write_all(msg),
            Conn::Udp(s, to) => s.send_to(msg, to).map(drop),
            Conn::Tcp(s) => (&*s).write_all(msg),
        }
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("syslog address {host}:{port}: {e}"))?
        .next()
        .ok_or_else(|| format!("syslog address {host}:{port} resolves to nothing"))
}

fn connect(addr: &Address) -> Result<Conn, String> {
    match addr {
        Address::Unix { path, dgram_only } => {
            let dgram = UnixDatagram::unbound().and_then(|s| s.connect(path).map(|()| s));
            match dgram {
                Ok(s) => Ok(Conn::UnixDgram(s)),
                Err(_) if !dgram_only => UnixStream::connect(path)
                    .map(Conn::UnixStream)
                    .map_err(|e| format!("cannot connect to syslog at unix://{path}: {e}")),
                Err(e) => Err(format!("cannot connect to syslog at unix://{path}: {e}")),
            }
        }
        Address::Udp(host, port) => {
            let to = resolve(host, *port)?;
            let local: SocketAddr = if to.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                ([0u16; 8], 0).into()
            };
            let s = UdpSocket::bind(local).map_err(|e| format!("syslog UDP socket: {e}"))?;
            Ok(Conn::Udp(s, to))
        }
        Address::Tcp(host, port) => {
            let to = resolve(host, *port)?;
            TcpStream::connect(to)
                .map(Conn::Tcp)
                .map_err(|e| format!("cannot connect to syslog at tcp://{host}:{port}: {e}"))
        }
    }
}

struct Target {
    addr: Address,
    conn: Conn,
    facility: u8,
    error_ident: String,
    /// None: access lines stay out of syslog.
    access_ident: Option<String>,
}

static TARGET: RwLock<Option<Arc<Target>>> = RwLock::new(None);
/// A target is set: without one, a log line costs one atomic load here.
static ON: AtomicBool = AtomicBool::new(false);

fn current() -> Option<Arc<Target>> {
    if !ON.load(Ordering::Acquire) {
        return None;
    }
    TARGET.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Applies a configuration's syslog settings (None: off). Errors name the
/// setting; the previous state stays then.
pub fn configure(settings: Option<Settings>) -> Result<(), String> {
    let target = match settings {
        None => None,
        Some(s) => {
            let facility = facility_code(&s.facility)?;
            let addr = parse_address(&s.addr)?;
            let conn = connect(&addr)?;
            Some(Arc::new(Target {
                addr,
                conn,
                facility,
                error_ident: format!("gunicorn.{}.error", s.prefix),
                access_ident: s.access.then(|| format!("gunicorn.{}.access", s.prefix)),
            }))
        }
    };
    ON.store(target.is_some(), Ordering::Release);
    *TARGET.write().unwrap_or_else(|e| e.into_inner()) = target;
    Ok(())
}

/// Whether access lines go to syslog.
pub fn access_enabled() -> bool {
    current().is_some_and(|t| t.access_ident.is_some())
}

/// Python's SysLogHandler.mapPriority for logging's level names.
fn severity(level: Level) -> u8 {
    match level {
        Level::Debug => 7,
        Level::Info => 6,
        Level::Warning => 4,
        Level::Error => 3,
        Level::Critical => 2,
    }
}

/// Whether records go to syslog (so a caller knows whether the text of a
/// record that took another way is still needed).
pub(super) fn configured() -> bool {
    current().is_some()
}

/// Sends an error-log record (its message, without the stamp).
pub(super) fn error(level: Level, msg: &[u8]) {
    if let Some(t) = current() {
        send(&t, &t.error_ident, level, msg);
    }
}

/// Sends an access-log line (without its newline).
pub(super) fn access(line: &[u8]) {
    if let Some(t) = current() {
        if let Some(ident) = &t.access_ident {
            send(&t, ident, Level::Info, line);
        }
    }
}

fn send(t: &Target, ident: &str, level: Level, msg: &[u8]) {
    let mut b = Vec::with_capacity(msg.len() + ident.len() + 24);
    let pri = u16::from(t.facility) * 8 + u16::from(severity(level));
    b.push(b'<');
    b.extend_from_slice(itoa::Buffer::new().format(pri).as_bytes());
    b.push(b'>');
    b.extend_from_slice(ident.as_bytes());
    b.extend_from_slice(b": [");
    b.extend_from_slice(itoa::Buffer::new().format(std::process::id()).as_bytes());
    b.extend_from_slice(b"] ");
    b.extend_from_slice(msg);
    b.push(0);
    // Nowhere to report a failing syslog; Python's handler drops it too
    // (after one reconnection for a unix socket, as here).
    if t.conn.send(&b).is_ok() || !matches!(t.addr, Address::Unix { .. }) {
        return;
    }
    // A restarted syslog daemon: connect again and keep the new socket.
    let Ok(conn) = connect(&t.addr) else { return };
    if conn.send(&b).is_ok() {
        let mut cur = TARGET.write().unwrap_or_else(|e| e.into_inner());
        if cur.as_ref().is_some_and(|c| std::ptr::eq(&**c, t)) {
            *cur = Some(Arc::new(Target {
                addr: t.addr.clone(),
                conn,
                facility: t.facility,
                error_ident: t.error_ident.clone(),
                access_ident: t.access_ident.clone(),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_as_gunicorn_parses_them() {
        assert_eq!(
            parse_address("unix:///dev/log").unwrap(),
            Address::Unix {
                path: "/dev/log".into(),
                dgram_only: false
            }
        );
        assert_eq!(
            parse_address("unix:///run/log#dgram").unwrap(),
            Address::Unix {
                path: "/run/log".into(),
                dgram_only: true
            }
        );
        assert_eq!(
            parse_address("udp://LogHost").unwrap(),
            Address::Udp("loghost".into(), 514)
        );
        assert_eq!(
            parse_address("udp://").unwrap(),
            Address::Udp("localhost".into(), 514)
        );
        assert_eq!(
            parse_address("tcp://127.0.0.1:6514").unwrap(),
            Address::Tcp("127.0.0.1".into(), 6514)
        );
        assert_eq!(
            parse_address("udp://[::1]:1514").unwrap(),
            Address::Udp("::1".into(), 1514)
        );
        assert!(parse_address("udp://h:x1")
            .unwrap_err()
            .contains("not a valid port"));
        assert!(parse_address("http://h")
            .unwrap_err()
            .contains("invalid syslog address"));
    }

    #[test]
    fn facilities_by_name_any_case() {
        assert_eq!(facility_code("user").unwrap(), 1);
        assert_eq!(facility_code("LOCAL7").unwrap(), 23);
        assert!(facility_code("nope").is_err());
    }
}
