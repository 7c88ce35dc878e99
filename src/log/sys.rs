//! The only place in `log` that calls libc: thin, safe wrappers.
//!
//! Every function here retries on `EINTR` and reports failures as
//! `std::io::Error`.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

/// Broken-down local time, the fields the log formats need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tm {
    pub year: i64,
    /// 1..=12
    pub mon: u8,
    pub mday: u8,
    pub hour: u8,
    pub min: u8,
    pub sec: u8,
    /// Seconds east of UTC.
    pub gmtoff: i64,
}

fn cpath(path: &str) -> io::Result<CString> {
    CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "embedded null byte"))
}

/// Opens `path` for appending (created 0666 & ~umask if missing),
/// close-on-exec, like Python's `open(path, 'a')`.
pub(crate) fn open_append(path: &str) -> io::Result<RawFd> {
    let c = cpath(path)?;
    let flags = libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC;
    loop {
        // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
        let fd = unsafe { libc::open(c.as_ptr(), flags, 0o666 as libc::c_uint) };
        if fd >= 0 {
            return Ok(fd);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Writes all of `buf` to `fd`. A regular file opened `O_APPEND` takes the
/// whole buffer in the first `write(2)`, which is what keeps lines from
/// different processes apart; the loop only matters for pipes and ttys.
pub(crate) fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid readable slice of `buf.len()` bytes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// `dup2(old, new)`: atomically makes `new` refer to `old`'s file.
pub(crate) fn dup2(old: RawFd, new: RawFd) -> io::Result<()> {
    loop {
        // SAFETY: dup2 only manipulates the descriptor table; invalid
        // descriptors are reported through errno.
        if unsafe { libc::dup2(old, new) } >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) {
            return Err(e);
        }
    }
}

pub(crate) fn close(fd: RawFd) {
    // SAFETY: callers only pass descriptors this module opened and owns.
    // EINTR is not retried: on Linux the descriptor is released anyway.
    unsafe {
        libc::close(fd);
    }
}

pub(crate) fn getpid() -> u32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() as u32 }
}

/// `localtime_r` of a Unix timestamp (honours `TZ` like Python's
/// `time.localtime`).
pub(crate) fn localtime(secs: i64) -> Option<Tm> {
    let t = secs as libc::time_t;
    // SAFETY: `tm` is plain old data; all-zero is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call;
    // localtime_r is thread-safe.
    let r = unsafe { libc::localtime_r(&t, &mut tm) };
    if r.is_null() {
        return None;
    }
    Some(Tm {
        year: tm.tm_year as i64 + 1900,
        mon: (tm.tm_mon + 1) as u8,
        mday: tm.tm_mday as u8,
        hour: tm.tm_hour as u8,
        min: tm.tm_min as u8,
        sec: tm.tm_sec as u8,
        gmtoff: tm.tm_gmtoff as i64,
    })
}

/// The effective uid and gid of this process.
pub(crate) fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

pub(crate) fn getegid() -> u32 {
    // SAFETY: getegid cannot fail and touches no memory.
    unsafe { libc::getegid() }
}

/// `chown(path, uid, gid)`.
pub(crate) fn chown(path: &str, uid: u32, gid: u32) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::chown(c.as_ptr(), uid, gid) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Test helpers: fork / wait / _exit.
#[cfg(test)]
pub(crate) mod testing {
    /// Forks; returns 0 in the child, the child's pid in the parent.
    pub fn fork() -> i32 {
        // SAFETY: the test child only writes log lines and then `_exit`s,
        // never touching locks another test thread might hold.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        pid
    }

    /// Waits for `pid`; returns its exit status.
    pub fn wait(pid: i32) -> i32 {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        }
    }

    pub fn exit(code: i32) -> ! {
        // SAFETY: `_exit` skips atexit handlers and stdio flushing, which is
        // what a forked test child must do.
        unsafe { libc::_exit(code) }
    }
}
