//! systemd integration, as gunicorn's `gunicorn.systemd`: socket activation
//! (`LISTEN_PID`/`LISTEN_FDS`, fds from 3) and `sd_notify` over
//! `$NOTIFY_SOCKET`.

use std::os::fd::RawFd;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// First inherited socket of socket activation.
pub const SD_LISTEN_FDS_START: RawFd = 3;

/// Number of sockets passed by systemd socket activation: `$LISTEN_FDS` when
/// `$LISTEN_PID` is our pid, else 0. The sockets are fds
/// `SD_LISTEN_FDS_START .. SD_LISTEN_FDS_START + n` (see [`listen_fds_range`]).
///
/// When `$LISTEN_PID` matches and `unset_environment` is set (gunicorn's
/// arbiter uses the default, true), both variables are removed so that
/// workers and hooks do not see them. Like gunicorn, FD_CLOEXEC is not set on
/// the sockets. A variable that is not a number is an error (gunicorn's
/// `int()` raises), naming the variable and its value.
///
/// Removing variables must happen while the process is single-threaded.
pub fn listen_fds(unset_environment: bool) -> Result<usize, String> {
    let fds = env_int("LISTEN_FDS")?;
    let listen_pid = env_int("LISTEN_PID")?;
    if listen_pid != i64::from(std::process::id()) {
        return Ok(0);
    }
    if unset_environment {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
    }
    usize::try_from(fds).map_err(|_| format!("invalid LISTEN_FDS value: {fds}"))
}

/// The fds of `n` activated sockets.
pub fn listen_fds_range(n: usize) -> std::ops::Range<RawFd> {
    let n = RawFd::try_from(n).unwrap_or(RawFd::MAX - SD_LISTEN_FDS_START);
    SD_LISTEN_FDS_START..SD_LISTEN_FDS_START.saturating_add(n)
}

/// `int(os.environ.get(name, 0))`.
fn env_int(name: &str) -> Result<i64, String> {
    match std::env::var_os(name) {
        None => Ok(0),
        Some(v) => {
            let s = v.to_string_lossy();
            s.trim()
                .parse::<i64>()
                .map_err(|_| format!("invalid {name} value: {s:?}"))
        }
    }
}

/// Send `state` (e.g. `"READY=1\nSTATUS=..."`) to the service manager over
/// the datagram socket named by `$NOTIFY_SOCKET` (a path, or an abstract
/// name when it starts with `@`).
///
/// `Ok(false)` when `$NOTIFY_SOCKET` is unset (not run by systemd: a no-op),
/// `Ok(true)` when sent. gunicorn logs a failure at debug level and goes on;
/// the caller should do the same with the `Err` text. With
/// `unset_environment`, the variable is removed in every case (not inherited
/// by children any more).
///
/// gunicorn's master sends `"READY=1\nSTATUS=Gunicorn arbiter booted"` once it
/// listens, right after logging "Listening at".
pub fn sd_notify(state: &str, unset_environment: bool) -> Result<bool, String> {
    let Some(addr) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let result = send_notify(&addr, state.as_bytes());
    if unset_environment {
        std::env::remove_var("NOTIFY_SOCKET");
    }
    result.map(|()| true)
}

fn send_notify(addr: &std::ffi::OsStr, msg: &[u8]) -> Result<(), String> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;

    let shown = addr.to_string_lossy();
    let bytes = addr.as_bytes();
    let sockaddr = if let Some(name) = bytes.strip_prefix(b"@") {
        SocketAddr::from_abstract_name(name)
    } else {
        SocketAddr::from_pathname(std::path::Path::new(addr))
    }
    .map_err(|e| format!("sd_notify: invalid NOTIFY_SOCKET {shown:?}: {e}"))?;
    // std sockets are SOCK_CLOEXEC.
    let sock = UnixDatagram::unbound().map_err(|e| format!("sd_notify: socket: {e}"))?;
    sock.connect_addr(&sockaddr)
        .and_then(|()| sock.send(msg))
        .map_err(|e| format!("sd_notify: cannot send to {shown}: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::isolated;
    use super::*;
    use std::os::linux::net::SocketAddrExt;

    #[test]
    fn range() {
        assert_eq!(listen_fds_range(0), 3..3);
        assert_eq!(listen_fds_range(2), 3..5);
    }

    #[test]
    fn listen_fds_env() {
        isolated(module_path!(), "listen_fds_env", || {
            std::env::remove_var("LISTEN_PID");
            std::env::remove_var("LISTEN_FDS");
            assert_eq!(listen_fds(true), Ok(0));

            // Meant for another process: ignored and left in place.
            std::env::set_var("LISTEN_PID", "1");
            std::env::set_var("LISTEN_FDS", "2");
            assert_eq!(listen_fds(true), Ok(0));
            assert!(std::env::var_os("LISTEN_FDS").is_some());

            let me = std::process::id().to_string();
            std::env::set_var("LISTEN_PID", &me);
            assert_eq!(listen_fds(false), Ok(2));
            assert!(std::env::var_os("LISTEN_PID").is_some());
            assert_eq!(listen_fds(true), Ok(2));
            assert!(std::env::var_os("LISTEN_PID").is_none());
            assert!(std::env::var_os("LISTEN_FDS").is_none());
            assert_eq!(listen_fds(true), Ok(0));

            std::env::set_var("LISTEN_PID", &me);
            std::env::set_var("LISTEN_FDS", "two");
            let e = listen_fds(true).expect_err("garbage");
            assert!(e.contains("LISTEN_FDS") && e.contains("two"), "{e}");
        });
    }

    #[test]
    fn sd_notify_path_and_abstract() {
        isolated(module_path!(), "sd_notify_path_and_abstract", || {
            std::env::remove_var("NOTIFY_SOCKET");
            assert_eq!(sd_notify("READY=1", false), Ok(false));

            // A filesystem socket.
            let path = std::env::temp_dir().join(format!("fc-notify-{}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let server = UnixDatagram::bind(&path).expect("bind");
            std::env::set_var("NOTIFY_SOCKET", &path);
            let msg = "READY=1\nSTATUS=Gunicorn arbiter booted";
            assert_eq!(sd_notify(msg, false), Ok(true));
            let mut buf = [0u8; 256];
            let n = server.recv(&mut buf).expect("recv");
            assert_eq!(&buf[..n], msg.as_bytes());
            drop(server);
            let _ = std::fs::remove_file(&path);

            // An abstract socket, named with '@'.
            let name = format!("fc-notify-test-{}", std::process::id());
            let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
            let server = UnixDatagram::bind_addr(&addr).expect("bind abstract");
            std::env::set_var("NOTIFY_SOCKET", format!("@{name}"));
            assert_eq!(sd_notify("STATUS=x", true), Ok(true));
            let n = server.recv(&mut buf).expect("recv");
            assert_eq!(&buf[..n], b"STATUS=x");
            // unset_environment removed it.
            assert!(std::env::var_os("NOTIFY_SOCKET").is_none());

            // Nobody listening: an error naming the socket, variable removed.
            std::env::set_var("NOTIFY_SOCKET", "/nonexistent-fc/notify");
            let e = sd_notify("READY=1", true).expect_err("no listener");
            assert!(e.contains("/nonexistent-fc/notify"), "{e}");
            assert!(std::env::var_os("NOTIFY_SOCKET").is_none());
        });
    }
}
