//! Body I/O: how code serving a request reaches its connection's socket.
//!
//! One interface, [`Transport`], so that the body decoder
//! ([`super::body::Body`]) and the response writers above it stay the same
//! for every kind. [`Inline`] does the socket's I/O from the code serving
//! the request, on a connection the loop has handed over (the loop reads
//! nothing from a detached one meanwhile), and waits the kind's way
//! ([`Waiter`]): poll(2) with the GIL released (sync, gthread), or a
//! greenlet hub's cooperative wait (gevent, eventlet). Against a channel to
//! the loop thread (DESIGN.md's first plan, not built), that saves a copy
//! of the response and two wake-ups per request, and the waits are the
//! same.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::io::{self as sockio, Waiter};

/// The socket side of one request: read body bytes, write response bytes.
pub trait Transport: Send + Sync {
    /// Appends at least one byte read from the peer to `buf` (at most
    /// `max`), waiting up to the I/O timeout. `Ok(0)` is the end of stream.
    fn read(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize>;
    /// Writes all of `data`.
    fn write_all(&self, data: &[u8]) -> io::Result<()>;
    /// Sends `count` bytes of an open file from `offset` (sendfile(2)).
    fn sendfile(&self, file: RawFd, offset: i64, count: u64) -> io::Result<()>;
    /// The socket's descriptor, for `gunicorn.socket`; -1 once closed.
    fn fd(&self) -> RawFd;
}

/// Blocking I/O on the connection's socket from the thread that serves the
/// request. Shared (reference-counted) between the loop and the objects a
/// request hands to the app; once the loop closes the socket, `closed` makes
/// every later call fail instead of touching a reused descriptor.
pub struct Inline {
    fd: RawFd,
    timeout: Duration,
    waiter: Waiter,
    closed: AtomicBool,
}

impl Inline {
    pub fn new(fd: RawFd, timeout: Duration, waiter: Waiter) -> Inline {
        Inline {
            fd,
            timeout,
            waiter,
            closed: AtomicBool::new(false),
        }
    }

    /// Called by the loop right before it closes the socket.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    fn open_fd(&self) -> io::Result<RawFd> {
        if self.closed.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the connection is closed",
            ));
        }
        Ok(self.fd)
    }
}

impl Transport for Inline {
    fn read(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        sockio::read_blocking(self.waiter, self.open_fd()?, buf, max, self.timeout)
    }

    fn write_all(&self, data: &[u8]) -> io::Result<()> {
        sockio::write_all(self.waiter, self.open_fd()?, data, self.timeout)
    }

    fn sendfile(&self, file: RawFd, offset: i64, count: u64) -> io::Result<()> {
        sockio::sendfile_all(
            self.waiter,
            self.open_fd()?,
            file,
            offset,
            count,
            self.timeout,
        )
    }

    fn fd(&self) -> RawFd {
        self.open_fd().unwrap_or(-1)
    }
}
