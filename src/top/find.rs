//! Where the running server's `/workers` is: from a pid file, a master's
//! pid, or the only process titled `ferrocorn: master`, to its exporter
//! child and the one TCP socket that child listens on and the master does
//! not (the master's are the application's listeners, which the exporter
//! inherits for its backlog gauges).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

const MASTER_TITLE: &[u8] = b"ferrocorn: master";
const EXPORTER_TITLE: &[u8] = b"ferrocorn: exporter";

fn cmdline(pid: u32) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()
}

fn pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The parent pid of `pid` (`/proc/PID/stat`'s fourth field).
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The master's pid from a gunicorn pid file (`--pid`).
pub fn master_from_pidfile(path: &Path) -> Result<u32, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the pid file {}: {e} (is the server running with --pid {}?)",
            path.display(),
            path.display()
        )
    })?;
    let pid: u32 = text.trim().parse().map_err(|_| {
        format!(
            "the pid file {} does not hold a process id: {:?}",
            path.display(),
            text.trim()
        )
    })?;
    check_master(pid).map_err(|e| format!("{e} (from the pid file {})", path.display()))
}

/// `pid` if it is a running ferrocorn master.
pub fn check_master(pid: u32) -> Result<u32, String> {
    if !alive(pid) {
        return Err(format!(
            "no server is running: process {pid} does not exist"
        ));
    }
    if !cmdline(pid).starts_with(MASTER_TITLE) {
        return Err(format!(
            "process {pid} is not a ferrocorn master (its title does not start with \"ferrocorn: master\")"
        ));
    }
    Ok(pid)
}

/// The only running ferrocorn master on this host.
pub fn only_master() -> Result<u32, String> {
    let is_master = |p: u32| cmdline(p).starts_with(MASTER_TITLE);
    // A child of a master still titled as one is a worker or the exporter
    // just forked, before it set its own title (or a USR2 re-exec, until
    // the old master leaves): not another server.
    let mut masters: Vec<u32> = pids()
        .into_iter()
        .filter(|&p| is_master(p) && !parent(p).is_some_and(is_master))
        .collect();
    masters.sort_unstable();
    match masters.as_slice() {
        [] => Err(
            "no running ferrocorn server found (no process titled \"ferrocorn: master\"); \
             name one with --pid FILE, --master PID or --metrics ADDRESS"
                .to_owned(),
        ),
        [one] => Ok(*one),
        many => Err(format!(
            "{} ferrocorn servers are running (masters {}): choose one with --pid FILE, \
             --master PID or --metrics ADDRESS",
            many.len(),
            many.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Socket inodes among the open files of `pid`.
fn socket_inodes(pid: u32) -> Result<HashSet<u64>, String> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("cannot list the open files of process {pid}: {e}"))?;
    Ok(dir
        .filter_map(|e| {
            let link = std::fs::read_link(e.ok()?.path()).ok()?;
            let s = link.to_str()?;
            s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect())
}

/// A `/proc/net/tcp{,6}` address (`0100007F:1F90`): the kernel prints the
/// address as 32-bit words in host order.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..ip.len()).step_by(8) {
        let word = u32::from_str_radix(ip.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&bytes);
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Listening TCP sockets seen by `pid`: inode -> address.
fn listening(pid: u32) -> Vec<(u64, SocketAddr)> {
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... inode (field 9)
            if f.get(3) != Some(&"0A") {
                continue;
            }
            if let (Some(addr), Some(inode)) = (
                f.get(1).and_then(|a| parse_proc_addr(a)),
                f.get(9).and_then(|i| i.parse().ok()),
            ) {
                out.push((inode, addr));
            }
        }
    }
    out
}

/// Where to connect to reach a socket bound to `addr` (a wildcard address
/// is reached on loopback).
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// The metrics address of the server whose master is `master`.
pub fn exporter_of(master: u32) -> Result<SocketAddr, String> {
    let exporters: Vec<u32> = pids()
        .into_iter()
        .filter(|&p| parent(p) == Some(master) && cmdline(p).starts_with(EXPORTER_TITLE))
        .collect();
    let Some(&exporter) = exporters.first() else {
        return Err(format!(
            "the server with master {master} runs no metrics exporter (no child titled \
             \"ferrocorn: exporter\"): ferrocorn top reads the exporter's /workers; it may be \
             starting or restarting, or metrics are off"
        ));
    };
    let master_sockets = socket_inodes(master)?;
    let own = socket_inodes(exporter)?;
    let mut found: Vec<SocketAddr> = listening(exporter)
        .into_iter()
        .filter(|(inode, _)| own.contains(inode) && !master_sockets.contains(inode))
        .map(|(_, a)| reachable(a))
        .collect();
    found.sort();
    found.dedup();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "the metrics exporter of master {master} (pid {exporter}) listens on no TCP port \
             yet (it retries a busy port every few seconds); give --metrics ADDRESS"
        )),
        [first, ..] => Ok(*first),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_addresses() {
        // 127.0.0.1:8080 as /proc/net/tcp shows it on a little-endian host.
        let v4 = if cfg!(target_endian = "little") {
            "0100007F:1F90"
        } else {
            "7F000001:1F90"
        };
        assert_eq!(parse_proc_addr(v4), Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(
            parse_proc_addr("00000000000000000000000000000000:0050"),
            Some("[::]:80".parse().unwrap())
        );
        assert_eq!(parse_proc_addr("zz:1"), None);
        assert_eq!(parse_proc_addr("0100007F"), None);
        assert_eq!(parse_proc_addr("0100007F0:10"), None);
        assert_eq!(
            reachable("0.0.0.0:9".parse().unwrap()),
            "127.0.0.1:9".parse().unwrap()
        );
    }

    /// A socket this process listens on is found with its address.
    #[test]
    fn own_listening_socket_is_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let me = std::process::id();
        let mine = socket_inodes(me).unwrap();
        assert!(listening(me)
            .iter()
            .any(|(inode, a)| *a == addr && mine.contains(inode)));
    }

    #[test]
    fn pidfile_errors_say_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("fc-top-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pid");
        assert!(master_from_pidfile(&missing)
            .unwrap_err()
            .contains("cannot read the pid file"));
        let junk = dir.join("junk.pid");
        std::fs::write(&junk, "abc\n").unwrap();
        assert!(master_from_pidfile(&junk)
            .unwrap_err()
            .contains("does not hold a process id"));
        // This test process is alive but not a master.
        let me = dir.join("me.pid");
        std::fs::write(&me, format!("{}\n", std::process::id())).unwrap();
        assert!(master_from_pidfile(&me)
            .unwrap_err()
            .contains("is not a ferrocorn master"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
