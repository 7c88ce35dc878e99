//! The worker's side of the listening sockets: registering them in the
//! loop, pausing and resuming accepting, accepting one connection.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{OwnedFd, RawFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::socket::{getpeername, setsockopt, sockopt, SockaddrStorage};

use crate::sock::ListenKind;

/// Tokens of listeners start here (connections use slab keys below it).
pub const LISTENER_BASE: usize = usize::MAX / 2;

/// A listener as a worker sees it.
pub struct WorkerListener {
    pub fd: RawFd,
    pub kind: ListenKind,
}

pub struct Listeners {
    list: Vec<WorkerListener>,
    accepting: bool,
}

impl Listeners {
    pub fn new(list: Vec<WorkerListener>, registry: &Registry) -> std::io::Result<Listeners> {
        let mut l = Listeners {
            list,
            accepting: false,
        };
        for w in &l.list {
            super::io::set_nonblocking(w.fd);
        }
        l.resume(registry)?;
        Ok(l)
    }

    pub fn get(&self, idx: usize) -> Option<&WorkerListener> {
        self.list.get(idx)
    }

    pub fn accepting(&self) -> bool {
        self.accepting
    }

    /// Stops accepting: queued connections wait for another worker.
    pub fn pause(&mut self, registry: &Registry) {
        if !self.accepting {
            return;
        }
        self.accepting = false;
        for l in &self.list {
            let _ = registry.deregister(&mut SourceFd(&l.fd));
        }
    }

    /// Accepts again. Registering an edge-triggered listener that already
    /// has connections queued reports it readable at once.
    pub fn resume(&mut self, registry: &Registry) -> std::io::Result<()> {
        if self.accepting {
            return Ok(());
        }
        self.accepting = true;
        for (i, l) in self.list.iter().enumerate() {
            registry.register(
                &mut SourceFd(&l.fd),
                Token(LISTENER_BASE + i),
                Interest::READABLE,
            )?;
        }
        Ok(())
    }
}

/// Accepts one connection: Ok(None) when none is waiting. TCP connections
/// get TCP_NODELAY and their peer address.
pub fn accept(l: &WorkerListener) -> std::io::Result<Option<(OwnedFd, Option<SocketAddr>)>> {
    let Some(fd) = super::io::accept(l.fd)? else {
        return Ok(None);
    };
    let addr = match l.kind {
        ListenKind::Tcp(_) => {
            let _ = setsockopt(&fd, sockopt::TcpNoDelay, &true);
            peer_addr(&fd)
        }
        ListenKind::Unix(_) => None,
    };
    Ok(Some((fd, addr)))
}

fn peer_addr(fd: &OwnedFd) -> Option<SocketAddr> {
    use std::os::fd::AsRawFd;
    let ss: SockaddrStorage = getpeername(fd.as_raw_fd()).ok()?;
    if let Some(a) = ss.as_sockaddr_in() {
        return Some(SocketAddr::new(IpAddr::V4(a.ip()), a.port()));
    }
    ss.as_sockaddr_in6()
        .map(|a| SocketAddr::new(IpAddr::V6(a.ip()), a.port()))
}
