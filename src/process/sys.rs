//! The only `unsafe` code of the process module: fork, `_exit`, ignoring
//! SIGPIPE, clearing `FD_CLOEXEC` on a raw fd, and the argv/environ memory
//! work behind process titles. Every wrapper here is safe to call under the
//! contract in its doc.

use std::ffi::{c_char, c_int, CStr, CString};
use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::OnceLock;

use nix::unistd::Pid;

/// Result of [`fork`].
pub(crate) enum Forked {
    Parent(#[cfg_attr(not(test), allow(dead_code))] Pid),
    Child,
}

/// fork(2).
///
/// Contract: the calling process has a single thread, or the child only
/// calls async-signal-safe functions before it execs or `_exit`s. Every
/// caller in this module runs in the single-threaded master (or a test
/// process that is single-threaded where it forks).
pub(crate) fn fork() -> Result<Forked, nix::Error> {
    // SAFETY: see the contract above; the callers uphold it (daemonize checks
    // the thread count itself before calling).
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// `_exit(2)`: leave without running atexit handlers or flushing stdio
/// buffers that the parent of a fork also holds (Python's `os._exit`).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Ignore SIGPIPE: a write to a closed connection fails with EPIPE instead
/// of killing the process.
pub(crate) fn ignore_sigpipe() {
    // SAFETY: SIG_IGN needs no handler code; changing a disposition is
    // async-signal-safe and has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Clear `FD_CLOEXEC` on `fd` so that it survives execve().
pub(crate) fn clear_cloexec(fd: RawFd) -> Result<(), nix::Error> {
    // SAFETY: F_GETFD/F_SETFD only read and write the descriptor flags of
    // `fd`; an invalid fd makes fcntl fail with EBADF, reported below.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: as above.
    let r = unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) };
    if r < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// Whether `fd` has `FD_CLOEXEC` set (None: fd not open).
pub(crate) fn is_cloexec(fd: RawFd) -> Option<bool> {
    // SAFETY: F_GETFD only reads the descriptor flags; EBADF gives -1.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    (flags >= 0).then_some(flags & libc::FD_CLOEXEC != 0)
}

// ---------------------------------------------------------------------------
// argv / environ capture for process titles.
//
// glibc passes (argc, argv, envp) to the functions of `.init_array` (Rust's
// std gets its own `std::env::args` this way). We keep the pointers: `argv`
// and `envp` are the arrays on the initial stack, followed in memory by the
// strings they point to — the area that /proc/PID/cmdline shows and that
// setproctitle(3)-style titles overwrite.

static ARGC: AtomicUsize = AtomicUsize::new(0);
static ARGV: AtomicPtr<*mut c_char> = AtomicPtr::new(ptr::null_mut());
static ENVP: AtomicPtr<*mut c_char> = AtomicPtr::new(ptr::null_mut());

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[used]
#[link_section = ".init_array.00099"]
static CAPTURE_ARGV: extern "C" fn(c_int, *mut *mut c_char, *mut *mut c_char) = capture_argv;

#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
extern "C" fn capture_argv(argc: c_int, argv: *mut *mut c_char, envp: *mut *mut c_char) {
    ARGC.store(usize::try_from(argc).unwrap_or(0), Ordering::Relaxed);
    ARGV.store(argv, Ordering::Relaxed);
    ENVP.store(envp, Ordering::Relaxed);
}

extern "C" {
    static mut environ: *mut *mut c_char;
    static mut program_invocation_name: *mut c_char;
    static mut program_invocation_short_name: *mut c_char;
}

/// The writable argv+environ string area: `[start, start + len)`.
#[derive(Clone, Copy)]
struct Area {
    start: usize,
    len: usize,
}

impl Area {
    fn contains(&self, p: *const c_char) -> bool {
        let p = p as usize;
        p >= self.start && p < self.start + self.len
    }
}

static AREA: OnceLock<Option<Area>> = OnceLock::new();

/// Leak a heap copy of the C string at `p`.
///
/// # Safety
/// `p` is a valid NUL-terminated string.
unsafe fn leak_copy(p: *const c_char) -> *mut c_char {
    // SAFETY: guaranteed by the caller.
    let s: &CStr = unsafe { CStr::from_ptr(p) };
    CString::from(s).into_raw()
}

/// Find the argv+environ string area and move everything that points into it
/// (argv[], environ[], glibc's program_invocation_name) to heap copies, so
/// that the area can be overwritten while `std::env::args`, `std::env::var`,
/// getenv(3) and glibc's own messages keep working. Runs once per process
/// image; forked children inherit the result.
fn prepare_area() -> Option<Area> {
    let argc = ARGC.load(Ordering::Relaxed);
    let argv = ARGV.load(Ordering::Relaxed);
    let envp = ENVP.load(Ordering::Relaxed);
    if argc == 0 || argv.is_null() {
        return None;
    }
    // SAFETY: argv/envp are the NULL-terminated arrays the loader passed to
    // the .init_array functions: they and their NUL-terminated strings live
    // on the initial stack for the whole life of the process and are
    // writable. The master is single-threaded when it first sets a title
    // (and forked children have one thread), so nothing reads argv[] or
    // environ[] while we rewrite the pointers; each pointer is replaced by a
    // pointer to an identical, leaked, heap copy, so readers never see
    // anything but a valid string.
    unsafe {
        let first = *argv;
        if first.is_null() {
            return None;
        }
        let start = first as usize;
        let mut end = start + CStr::from_ptr(first).to_bytes().len(); // at its NUL
        for i in 1..argc {
            let p = *argv.add(i);
            if p.is_null() || p as usize != end + 1 {
                break;
            }
            end = p as usize + CStr::from_ptr(p).to_bytes().len();
        }
        if !envp.is_null() {
            let mut i = 0;
            loop {
                let p = *envp.add(i);
                if p.is_null() || p as usize != end + 1 {
                    break;
                }
                end = p as usize + CStr::from_ptr(p).to_bytes().len();
                i += 1;
            }
        }
        let area = Area {
            start,
            len: end + 1 - start,
        };

        // argv[]: std::env::args() and glibc's __libc_argv read these.
        for i in 0..argc {
            let slot = argv.add(i);
            if (*slot).is_null() {
                break;
            }
            if area.contains(*slot) {
                *slot = leak_copy(*slot);
            }
        }
        // environ[] as it is now (setenv may have moved the array) and the
        // original array the loader gave us.
        let mut arrays = vec![environ];
        if envp != environ {
            arrays.push(envp);
        }
        for arr in arrays {
            if arr.is_null() {
                continue;
            }
            let mut i = 0;
            loop {
                let slot = arr.add(i);
                if (*slot).is_null() {
                    break;
                }
                if area.contains(*slot) {
                    *slot = leak_copy(*slot);
                }
                i += 1;
            }
        }
        // glibc's program_invocation_name / _short_name point into argv[0].
        let name = program_invocation_name;
        let short = program_invocation_short_name;
        if !name.is_null() && area.contains(name) {
            let copy = leak_copy(name);
            program_invocation_name = copy;
            if !short.is_null() && short as usize >= name as usize {
                let off = short as usize - name as usize;
                if off <= CStr::from_ptr(copy).to_bytes().len() {
                    program_invocation_short_name = copy.add(off);
                }
            }
        }
        if !short.is_null() && area.contains(program_invocation_short_name) {
            program_invocation_short_name = leak_copy(short);
        }
        Some(area)
    }
}

/// Bytes available for a title in the argv+environ area (including the
/// terminating NUL), or None when that area is unknown (non-glibc).
#[cfg(test)]
pub(crate) fn title_capacity() -> Option<usize> {
    AREA.get_or_init(prepare_area).map(|a| a.len)
}

/// Overwrite the argv+environ area with `title` (NUL-padded, truncated to
/// fit). Returns false when the area is unknown.
///
/// Contract: no other thread reads the environment or argv during the first
/// call of the process image (the master calls it single-threaded; workers
/// call it right after fork).
pub(crate) fn write_title(title: &[u8]) -> bool {
    let Some(area) = *AREA.get_or_init(prepare_area) else {
        return false;
    };
    let n = title.len().min(area.len - 1);
    // SAFETY: [start, start+len) is the argv+environ string area of this
    // process: writable stack memory that, after prepare_area, nothing else
    // references. n < len, so the copy and the zeroing stay inside it.
    unsafe {
        let dst = area.start as *mut u8;
        ptr::copy_nonoverlapping(title.as_ptr(), dst, n);
        ptr::write_bytes(dst.add(n), 0, area.len - n);
    }
    true
}
