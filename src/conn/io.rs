//! Blocking-style I/O on non-blocking sockets, for code that runs inside a
//! request (the app writing its response, reading its body): try the
//! syscall, and on EAGAIN wait up to a deadline. How it waits is the
//! worker kind's [`Waiter`]: poll(2) with the interpreter lock released, so
//! that other threads may run Python meanwhile, or a greenlet hub's
//! cooperative wait. This module itself knows nothing of Python.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

/// Runs a blocking wait (the closure) on behalf of the connection layer.
/// A worker kind whose threads share the interpreter passes a function
/// that releases the interpreter lock around it.
pub type Release = fn(&mut dyn FnMut());

/// A [`Release`] for callers that hold no lock.
pub fn no_release(wait: &mut dyn FnMut()) {
    wait()
}

/// How code serving a request waits for its socket.
#[derive(Clone, Copy)]
pub enum Waiter {
    /// poll(2) on the calling thread, with what it holds released around it.
    Poll(Release),
    /// The kind's cooperative wait (a greenlet hub's), which runs other
    /// requests meanwhile: `(fd, writable, timeout)`, Ok once ready, a
    /// TimedOut error after `timeout`.
    Yield(fn(RawFd, bool, Duration) -> io::Result<()>),
}

/// Waits in poll(2) with nothing to release.
pub const POLL: Waiter = Waiter::Poll(no_release);

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Waits until `fd` is readable (or writable) or `deadline` passes.
pub(super) fn wait(
    waiter: Waiter,
    fd: RawFd,
    flags: PollFlags,
    deadline: Instant,
) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        let release = match waiter {
            Waiter::Poll(release) => release,
            Waiter::Yield(wait) => return wait(fd, flags.contains(PollFlags::POLLOUT), left),
        };
        let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1)
            .unwrap_or(PollTimeout::MAX);
        let mut res = Err(nix::errno::Errno::EINTR);
        release(&mut || {
            // SAFETY: `fd` is a socket owned by the connection for the whole request.
            let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
            let mut fds = [PollFd::new(bfd, flags)];
            res = nix::poll::poll(&mut fds, ms).map(|n| (n, fds[0].revents()));
        });
        match res {
            Ok((0, _)) => continue,
            Ok((_, Some(rev))) if rev.intersects(PollFlags::POLLNVAL) => {
                return Err(io::Error::from_raw_os_error(libc::EBADF))
            }
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
        }
    }
}

/// Runs a read(2)/write(2)-style call again while it is interrupted.
fn retry_eintr(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// write(2) once (MSG_NOSIGNAL semantics come from SIGPIPE being ignored).
pub fn write_nb(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is a valid readable slice of buf.len() bytes.
    retry_eintr(|| unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })
}

/// Whether the peer closed (or reset) a connection with nothing left to
/// read, without taking any byte that is there (recv with MSG_PEEK).
pub fn peer_closed(fd: RawFd) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: `b` is a valid one-byte buffer; MSG_PEEK leaves the data in
    // the socket for the next request.
    match retry_eintr(|| unsafe {
        libc::recv(
            fd,
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    }) {
        Ok(n) => n == 0,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

/// recv(2) with MSG_PEEK: the first bytes waiting, left in the socket.
pub fn peek(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is a valid writable slice of buf.len() bytes.
    retry_eintr(|| unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    })
}

/// shutdown(2) the sending side: the peer reads the end of the stream.
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: shutdown on a descriptor the caller keeps open.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// shutdown(2) both ways: the socket ends for every descriptor of it.
pub fn shutdown_both(fd: RawFd) {
    // SAFETY: shutdown on a descriptor the caller keeps open.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// pread(2) once from an open file at `offset`. Ok(0) at its end.
pub fn pread(fd: RawFd, buf: &mut [u8], offset: i64) -> io::Result<usize> {
    // SAFETY: buf is a valid writable slice of buf.len() bytes.
    retry_eintr(|| unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), offset) })
}

/// read(2) once into `buf`. Ok(0) means end of stream.
pub fn read_nb(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is a valid writable slice of buf.len() bytes.
    retry_eintr(|| unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// read(2) once, appending up to `max` bytes to `buf` without zeroing the
/// space first (this runs once per request). Ok(0) means end of stream.
pub fn read_append(fd: RawFd, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    buf.reserve(max);
    loop {
        let spare = buf.spare_capacity_mut();
        let len = spare.len().min(max);
        // SAFETY: the pointer and length describe the vector's spare
        // capacity, which read(2) may fill with any bytes.
        let n = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), len) };
        if n >= 0 {
            let n = n as usize;
            // SAFETY: read(2) initialised exactly n bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reads at least one byte into the spare capacity of `buf` (growing it by
/// up to `chunk`), waiting up to `timeout`. Ok(0) is end of stream.
pub fn read_blocking(
    waiter: Waiter,
    fd: RawFd,
    buf: &mut Vec<u8>,
    chunk: usize,
    timeout: Duration,
) -> io::Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        match read_append(fd, buf, chunk) {
            Err(e) if would_block(&e) => wait(waiter, fd, PollFlags::POLLIN, deadline)?,
            other => return other,
        }
    }
}

/// Writes all of `data`, waiting for the socket to drain as needed.
pub fn write_all(waiter: Waiter, fd: RawFd, mut data: &[u8], timeout: Duration) -> io::Result<()> {
    let mut deadline = None;
    while !data.is_empty() {
        match write_nb(fd, data) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "connection closed",
                ))
            }
            Ok(n) => data = &data[n..],
            Err(e) if would_block(&e) => {
                let d = *deadline.get_or_insert_with(|| Instant::now() + timeout);
                wait(waiter, fd, PollFlags::POLLOUT, d)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// sendfile(2) `count` bytes of `file_fd` from `offset` to the socket.
pub fn sendfile_all(
    waiter: Waiter,
    sock: RawFd,
    file_fd: RawFd,
    mut offset: i64,
    mut count: u64,
    timeout: Duration,
) -> io::Result<()> {
    let mut deadline = None;
    while count > 0 {
        let chunk = count.min(0x3FFF_FFFF) as usize;
        // SAFETY: both fds are open for the duration of the call; offset is a
        // valid pointer to a local.
        let n = unsafe { libc::sendfile(sock, file_fd, &mut offset, chunk) };
        if n > 0 {
            count -= n as u64;
            continue;
        }
        if n == 0 {
            // The file is shorter than announced: the response is truncated.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than Content-Length",
            ));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                let d = *deadline.get_or_insert_with(|| Instant::now() + timeout);
                wait(waiter, sock, PollFlags::POLLOUT, d)?;
            }
            _ => return Err(e),
        }
    }
    Ok(())
}

/// accept4(2) a non-blocking, close-on-exec connection. Ok(None) when no
/// connection is waiting.
pub fn accept(listener: RawFd) -> io::Result<Option<std::os::fd::OwnedFd>> {
    use std::os::fd::FromRawFd;
    loop {
        // SAFETY: null address pointers are allowed (peer fetched separately).
        let fd = unsafe {
            libc::accept4(
                listener,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: accept4 just returned this descriptor; nothing else owns it.
            return Ok(Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) | Some(libc::ECONNABORTED) => continue,
            Some(libc::EAGAIN) => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Sets O_NONBLOCK on a descriptor the process keeps open.
pub fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an open descriptor with valid commands.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// The current offset of an open file (None if it cannot seek).
pub fn file_position(fd: RawFd) -> Option<i64> {
    // SAFETY: lseek on a descriptor the caller keeps open.
    let off = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
    (off >= 0).then_some(off)
}

/// Moves an open file's offset.
pub fn seek(fd: RawFd, offset: i64) {
    // SAFETY: lseek on a descriptor the caller keeps open.
    unsafe { libc::lseek(fd, offset, libc::SEEK_SET) };
}

/// The size of an open file.
pub fn file_size(fd: RawFd) -> Option<i64> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: st is a valid out-pointer for fstat.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: fstat succeeded, so st is initialised.
    Some(unsafe { st.assume_init() }.st_size)
}
