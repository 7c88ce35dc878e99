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
use std::time::{Duration, Instant};

use nix::poll::PollFlags;

use super::io::{self as sockio, Waiter};
use super::tls::Session;

/// The socket side of one request: read body bytes, write response bytes.
/// On a TLS connection every call goes through the session (sendfile
/// becomes reads of the file and writes).
pub trait Transport: Send + Sync {
    /// Appends at least one byte read from the peer to `buf` (at most
    /// `max`), waiting up to the I/O timeout. `Ok(0)` is the end of stream.
    fn read(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize>;
    /// Writes all of `data`.
    fn write_all(&self, data: &[u8]) -> io::Result<()>;
    /// Sends `count` bytes of an open file from `offset` (sendfile(2)).
    fn sendfile(&self, file: RawFd, offset: i64, count: u64) -> io::Result<()>;
    /// The socket's descriptor, for `gunicorn.socket` and for waiting on
    /// readiness after a call failed with `WouldBlock`; -1 once closed.
    fn fd(&self) -> RawFd;
    /// One non-blocking read (`WouldBlock`: wait for the descriptor).
    fn read_nb(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// One non-blocking write; the bytes taken may wait in the TLS session
    /// until [`Transport::flush_nb`] is Ok.
    fn write_nb(&self, data: &[u8]) -> io::Result<usize>;
    /// Ok once every byte taken is on the socket; `WouldBlock` while not.
    fn flush_nb(&self) -> io::Result<()>;
    /// Whether the peer closed (or reset) the connection; bytes it sent
    /// stay for the next read.
    fn peer_closed(&self) -> bool;
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
    tls: Option<Session>,
}

impl Inline {
    pub fn new(fd: RawFd, timeout: Duration, waiter: Waiter) -> Inline {
        Inline {
            fd,
            timeout,
            waiter,
            closed: AtomicBool::new(false),
            tls: None,
        }
    }

    /// The same over an established TLS session.
    pub fn tls(fd: RawFd, timeout: Duration, waiter: Waiter, session: Session) -> Inline {
        Inline {
            tls: Some(session),
            ..Inline::new(fd, timeout, waiter)
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Called by the loop right before it closes the socket (a TLS session
    /// sends close_notify).
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            if let Some(t) = &self.tls {
                t.close(self.fd);
            }
        }
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

    /// One non-blocking read appending up to `max` bytes (the loop's read).
    pub fn read_append(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        let fd = self.open_fd()?;
        match &self.tls {
            None => sockio::read_append(fd, buf, max),
            Some(t) => t.read_append(fd, buf, max),
        }
    }

    /// Writes all of `data`, waiting the given way (the loop's error pages
    /// wait in poll(2) whatever the kind's waiter).
    pub fn write_all_with(&self, waiter: Waiter, data: &[u8], timeout: Duration) -> io::Result<()> {
        let fd = self.open_fd()?;
        match &self.tls {
            None => sockio::write_all(waiter, fd, data, timeout),
            Some(t) => {
                let deadline = Instant::now() + timeout;
                t.write_all(fd, data, &mut || {
                    sockio::wait(waiter, fd, PollFlags::POLLOUT, deadline)
                })
            }
        }
    }
}

impl Transport for Inline {
    fn read(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        let fd = self.open_fd()?;
        let Some(t) = &self.tls else {
            return sockio::read_blocking(self.waiter, fd, buf, max, self.timeout);
        };
        let deadline = Instant::now() + self.timeout;
        loop {
            match t.read_append(fd, buf, max) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    sockio::wait(self.waiter, fd, PollFlags::POLLIN, deadline)?
                }
                other => return other,
            }
        }
    }

    fn write_all(&self, data: &[u8]) -> io::Result<()> {
        self.write_all_with(self.waiter, data, self.timeout)
    }

    fn sendfile(&self, file: RawFd, mut offset: i64, mut count: u64) -> io::Result<()> {
        let fd = self.open_fd()?;
        if self.tls.is_none() {
            return sockio::sendfile_all(self.waiter, fd, file, offset, count, self.timeout);
        }
        // No sendfile through userspace TLS: read the file and write it.
        let mut buf = vec![0u8; 64 * 1024];
        while count > 0 {
            let want = usize::try_from(count).unwrap_or(usize::MAX).min(buf.len());
            let n = sockio::pread(file, &mut buf[..want], offset)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shorter than Content-Length",
                ));
            }
            self.write_all(&buf[..n])?;
            count -= n as u64;
            offset = offset.saturating_add(n as i64);
        }
        Ok(())
    }

    fn fd(&self) -> RawFd {
        self.open_fd().unwrap_or(-1)
    }

    fn read_nb(&self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.open_fd()?;
        match &self.tls {
            None => sockio::read_nb(fd, buf),
            Some(t) => t.read_nb(fd, buf),
        }
    }

    fn write_nb(&self, data: &[u8]) -> io::Result<usize> {
        let fd = self.open_fd()?;
        match &self.tls {
            None => sockio::write_nb(fd, data),
            Some(t) => t.write_nb(fd, data),
        }
    }

    fn flush_nb(&self) -> io::Result<()> {
        let fd = self.open_fd()?;
        match &self.tls {
            None => Ok(()),
            Some(t) => t.flush_nb(fd),
        }
    }

    fn peer_closed(&self) -> bool {
        let Ok(fd) = self.open_fd() else {
            return true;
        };
        match &self.tls {
            None => sockio::peer_closed(fd),
            Some(t) => t.peer_closed(fd),
        }
    }
}
