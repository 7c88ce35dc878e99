//! Logging: gunicorn's error log (this file) and access log ([`access`]).
//!
//! Error-log lines are byte-for-byte gunicorn's (`glogging.Logger`):
//!
//! ```text
//! [2024-05-01 12:00:00 +0200] [4242] [INFO] Listening at: http://127.0.0.1:8000 (4242)
//! ```
//!
//! i.e. `%(asctime)s [%(process)d] [%(levelname)s] %(message)s` with
//! `datefmt = [%Y-%m-%d %H:%M:%S %z]` in local time.
//!
//! # Process-global state and fork
//!
//! The write path reads only atomics (level, file descriptor): no lock, so
//! a child forked at any moment can keep logging.  The configured target
//! (path, capture flag) sits behind a mutex taken only by `init`, `reopen`
//! and `chown`.  Each line is
//! built in memory and handed to a single `write(2)` on an `O_APPEND`
//! descriptor, so lines written by the master and its workers to the same
//! file never interleave.
//!
//! Reopening swaps the file underneath the same descriptor number with
//! `dup2`, which is atomic with respect to concurrent writers.
//!
//! # Python logging
//!
//! With a logging configuration (`logconfig`, `logconfig_dict`,
//! `logconfig_json`), the python module registers a [`PySink`] and every
//! line is handed to Python's `gunicorn.error` logger instead of being
//! written here ([`set_python`]); the access log's records take the same
//! way from the worker (`AccessLog::python`). Off, that costs one relaxed
//! atomic load per error-log line and nothing per access line.
//!
//! Assumption: [`init`] is called while the process has a single thread
//! (the master at startup or on a configuration reload); [`reopen`] and
//! [`write`] may be called from any thread of any process.

pub mod access;
mod pyfmt;
mod sys;
pub mod syslog;
mod time;

use std::fmt;
use std::io::Write as _;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

const STDERR: RawFd = 2;
const STDOUT: RawFd = 1;

/// Error-log levels, as gunicorn's `--log-level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Level {
    Debug = 10,
    Info = 20,
    Warning = 30,
    Error = 40,
    Critical = 50,
}

impl Level {
    /// Python's `levelname`.
    pub fn name(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
            Level::Critical => "CRITICAL",
        }
    }

    /// The level whose records a Python logger with effective level
    /// `n` lets through first (`n` = 15 lets INFO through, not DEBUG).
    pub fn from_python(n: i64) -> Level {
        match n {
            ..=10 => Level::Debug,
            11..=20 => Level::Info,
            21..=30 => Level::Warning,
            31..=40 => Level::Error,
            _ => Level::Critical,
        }
    }

    /// Parses a `--log-level` value, case-insensitively. gunicorn maps an
    /// unknown name to INFO (`LOG_LEVELS.get(..., logging.INFO)`); that
    /// fallback is [`init`]'s, this returns `None`.
    pub fn parse(s: &str) -> Option<Level> {
        const ALL: [Level; 5] = [
            Level::Debug,
            Level::Info,
            Level::Warning,
            Level::Error,
            Level::Critical,
        ];
        ALL.into_iter().find(|l| l.name().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What `init` was given.
#[derive(Clone)]
struct Target {
    /// `None` = stderr.
    path: Option<String>,
    capture_output: bool,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
/// Descriptor lines are written to; 2 until `init` opens a file.
static FD: AtomicI32 = AtomicI32::new(STDERR);
/// Only `init`, `reopen` and `chown` take this lock, never `write`, so a
/// forked child can always log.  (It could only be held across a fork by
/// another thread of the forking process; the master has just one.)
static TARGET: Mutex<Option<Target>> = Mutex::new(None);

/// Where records go while a Python logging configuration is in force
/// (`logconfig`, `logconfig_dict`, `logconfig_json`): functions of the
/// python module, which this one cannot name (it uses nothing).
#[derive(Clone, Copy)]
pub struct PySink {
    /// One error-log record to the `gunicorn.error` logger.
    pub error: fn(Level, &str),
    /// USR1: Python's file handlers reopen their files.
    pub reopen: fn() -> Result<(), String>,
}

/// Set once, the first time Python logging is turned on.
static PY_SINK: OnceLock<PySink> = OnceLock::new();
/// Whether records go to [`PY_SINK`]: one relaxed load per error-log line
/// (never per access line) when off.
static PY_ON: AtomicBool = AtomicBool::new(false);

/// Turns forwarding to Python's logging on (`Some`) or off (`None`). The
/// master calls it at start and on HUP, single-threaded; workers inherit
/// the state through fork; the exporter turns it off (it never runs
/// Python).
pub fn set_python(sink: Option<PySink>) {
    match sink {
        Some(s) => {
            let _ = PY_SINK.set(s);
            PY_ON.store(true, Ordering::Release);
        }
        None => PY_ON.store(false, Ordering::Release),
    }
}

/// Whether records go through Python's logging (the access log asks once
/// per worker, when it is made).
pub fn python_on() -> bool {
    PY_ON.load(Ordering::Acquire)
}

fn py_sink() -> Option<&'static PySink> {
    if PY_ON.load(Ordering::Relaxed) {
        PY_SINK.get()
    } else {
        None
    }
}

/// Sets the level below which records are dropped (`--log-level` on HUP,
/// or the effective level of Python's `gunicorn.error` logger).
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

fn target() -> Option<Target> {
    TARGET.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// gunicorn's `util.check_is_writable` message:
/// `Error: '<path>' isn't writable [PermissionError(13, 'Permission denied')]`.
pub(crate) fn not_writable(path: &str, e: &std::io::Error) -> String {
    format!("Error: '{path}' isn't writable [{}]", py_oserror_repr(e))
}

/// Python's `repr()` of the `OSError` subclass `open()` would raise.
fn py_oserror_repr(e: &std::io::Error) -> String {
    let Some(code) = e.raw_os_error() else {
        return format!("ValueError('{e}')");
    };
    let class = match code {
        libc::EACCES | libc::EPERM => "PermissionError",
        libc::ENOENT => "FileNotFoundError",
        libc::EISDIR => "IsADirectoryError",
        libc::ENOTDIR => "NotADirectoryError",
        libc::EEXIST => "FileExistsError",
        libc::EINTR => "InterruptedError",
        libc::EAGAIN | libc::EALREADY | libc::EINPROGRESS => "BlockingIOError",
        libc::ETIMEDOUT => "TimeoutError",
        _ => "OSError",
    };
    let text = e.to_string();
    let text = match text.find(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    format!("{class}({code}, '{text}')")
}

/// Sets up the error log, as gunicorn's `Logger.setup`.
///
/// * `level`: debug / info / warning / error / critical (any case);
///   anything else means info, as in gunicorn.
/// * `target`: `"-"` for stderr, else a file opened for appending
///   (created if missing).
/// * `capture_output`: with a file target, fds 1 and 2 are redirected into
///   it (`dup2`), and again on every [`reopen`].
///
/// Call it while the process is single-threaded (startup / reload).
/// On failure the previous configuration stays in place and the message
/// names the path, in gunicorn's words.
pub fn init(level: &str, target: &str, capture_output: bool) -> Result<(), String> {
    let path = (target != "-").then(|| target.to_owned());
    if let Some(p) = &path {
        let fd = sys::open_append(p).map_err(|e| not_writable(p, &e))?;
        if capture_output {
            capture(fd);
        }
        let old = FD.load(Ordering::Acquire);
        if old != STDERR && sys::dup2(fd, old).is_ok() {
            sys::close(fd);
        } else {
            FD.store(fd, Ordering::Release);
        }
    } else {
        let old = FD.swap(STDERR, Ordering::AcqRel);
        if old != STDERR {
            sys::close(old);
        }
    }
    let lvl = Level::parse(level).unwrap_or(Level::Info);
    LEVEL.store(lvl as u8, Ordering::Relaxed);
    *TARGET.lock().unwrap_or_else(|e| e.into_inner()) = Some(Target {
        path,
        capture_output,
    });
    Ok(())
}

/// Points stdout and stderr at `fd` (after flushing Rust's stdout buffer,
/// as gunicorn flushes `sys.stdout` / `sys.stderr`).
fn capture(fd: RawFd) {
    let _ = std::io::stdout().flush();
    let _ = sys::dup2(fd, STDOUT);
    let _ = sys::dup2(fd, STDERR);
}

/// Reopens the error-log file (SIGUSR1 / log rotation), as gunicorn's
/// `reopen_files`: a renamed file stops receiving lines, a new one is
/// created at the configured path.  No-op when logging to stderr.  On
/// failure the old file stays in use and the message names the path.
pub fn reopen() -> Result<(), String> {
    let py = py_sink().map_or(Ok(()), |s| (s.reopen)());
    reopen_file().and(py)
}

fn reopen_file() -> Result<(), String> {
    let Some(t) = target() else { return Ok(()) };
    let Some(path) = &t.path else { return Ok(()) };
    let fd = sys::open_append(path).map_err(|e| not_writable(path, &e))?;
    if t.capture_output {
        capture(fd);
    }
    let cur = FD.load(Ordering::Acquire);
    if cur != STDERR && sys::dup2(fd, cur).is_ok() {
        sys::close(fd);
    } else {
        FD.store(fd, Ordering::Release);
    }
    Ok(())
}

/// Changes the owner of the error-log file, as gunicorn does right after
/// opening it (`os.chown(path, cfg.user, cfg.group)`) so that workers
/// running as `user` can reopen it.  Errors are ignored, as in gunicorn.
fn chown(uid: u32, gid: u32) {
    if let Some(Target {
        path: Some(path), ..
    }) = target()
    {
        let _ = sys::chown(&path, uid, gid);
    }
}

/// The rest of gunicorn's `Logger.setup` in the master, after [`init`]: it
/// opens the access log too (creating it; a file it cannot open stops the
/// start with gunicorn's message) and gives both log files to the worker
/// user and group, so that workers that switched to `--user`/`--group` can
/// open the access log (ferrocorn's workers open it after the switch) and
/// reopen both on USR1.  Call it at start and after a reload.
///
/// gunicorn chowns even to the master's own uid and gid (the defaults of
/// `user` and `group`); that gives workers nothing they lack (they run as
/// the master then) and could only re-own a shared file, such as a
/// terminal given as `/dev/stderr`, so it is skipped here.
pub fn prepare_files(
    accesslog: Option<&str>,
    access_format: &str,
    uid: u32,
    gid: u32,
) -> Result<(), String> {
    let access = match accesslog {
        Some(target) => Some(access::AccessLog::new(Some(target), access_format)?),
        None => None,
    };
    if uid == sys::geteuid() && gid == sys::getegid() {
        return Ok(());
    }
    chown(uid, gid);
    if let Some(a) = &access {
        a.chown(uid, gid);
    }
    Ok(())
}

/// The current `--log-level`.
#[cfg(test)]
fn level() -> Level {
    match LEVEL.load(Ordering::Relaxed) {
        10 => Level::Debug,
        20 => Level::Info,
        30 => Level::Warning,
        40 => Level::Error,
        _ => Level::Critical,
    }
}

/// The descriptor error-log lines go to (2 for stderr).
#[cfg(test)]
fn error_log_fd() -> RawFd {
    FD.load(Ordering::Acquire)
}

/// Whether a message at `level` would be written.
#[inline]
pub fn enabled(level: Level) -> bool {
    level as u8 >= LEVEL.load(Ordering::Relaxed)
}

/// Where lines at WARNING and above are counted (shared memory, set by the
/// master before it forks): statsd's `gunicorn.log.critical`, `.error`,
/// `.warning` and `.exception` counters. gunicorn's statsd logger counts a
/// line whatever `--log-level` lets through, and so does this.
static COUNTS: std::sync::OnceLock<&'static [std::sync::atomic::AtomicU64; 4]> =
    std::sync::OnceLock::new();

/// Index of each counted kind of line in the array given to [`count_into`].
pub const COUNTED: [&str; 4] = ["critical", "error", "warning", "exception"];

/// Counts lines at WARNING and above into `counts` (see [`COUNTED`]) from
/// now on, in this process and the children it forks.
pub fn count_into(counts: &'static [std::sync::atomic::AtomicU64; 4]) {
    let _ = COUNTS.set(counts);
}

/// One atomic add, no syscall (error-log lines are rare next to requests).
fn count(i: usize) {
    if let Some(c) = COUNTS.get().and_then(|c| c.get(i)) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

fn count_level(level: Level) {
    match level {
        Level::Critical => count(0),
        Level::Error => count(1),
        Level::Warning => count(2),
        Level::Debug | Level::Info => {}
    }
}

/// Writes one error-log line at `level` (if enabled).
pub fn write(level: Level, msg: &str) {
    count_level(level);
    if enabled(level) {
        emit(level, |b| b.extend_from_slice(msg.as_bytes()));
    }
}

/// `format_args!` flavour of [`write`], used by the `log_*!` macros.
pub fn write_fmt(level: Level, args: fmt::Arguments<'_>) {
    count_level(level);
    if !enabled(level) {
        return;
    }
    match args.as_str() {
        Some(s) => emit(level, |b| b.extend_from_slice(s.as_bytes())),
        None => emit(level, |b| {
            let _ = b.write_fmt(args);
        }),
    }
}

/// gunicorn's `log.exception(msg)`: an ERROR line followed by the
/// traceback text (Python's `formatException` output, passed in by the
/// caller), as `logging.Formatter` lays it out.
pub fn exception(msg: &str, traceback: &str) {
    // gunicorn's statsd logger counts these as `exception`, not `error`.
    count(3);
    if !enabled(Level::Error) {
        return;
    }
    emit_exception(msg, traceback);
}

/// The ERROR line of an exception: `msg`, a newline, the traceback text.
fn emit_exception(msg: &str, traceback: &str) {
    emit(Level::Error, |b| {
        b.extend_from_slice(msg.as_bytes());
        let tb = traceback.strip_suffix('\n').unwrap_or(traceback);
        if !tb.is_empty() {
            if !msg.ends_with('\n') {
                b.push(b'\n');
            }
            b.extend_from_slice(tb.as_bytes());
        }
    });
}

/// gunicorn's `log.exception(msg)` for an exception Python still holds.
/// Under a logging configuration, `to_python` hands the record to
/// `gunicorn.error` with the exception as its `exc_info`, so the user's
/// handlers (Sentry's, a JSON formatter's `exc_info` field) get the
/// exception itself rather than its text; it returns whether it could.
/// Otherwise (or when it could not) the line is `msg` and `traceback()`,
/// as [`exception`] writes it.
pub fn exception_with(
    msg: &str,
    to_python: impl FnOnce() -> bool,
    traceback: impl FnOnce() -> String,
) {
    count(3);
    if !enabled(Level::Error) {
        return;
    }
    if py_sink().is_some() && to_python() {
        if syslog::configured() {
            syslog::error(Level::Error, format!("{msg}\n{}", traceback()).as_bytes());
        }
        return;
    }
    let tb = traceback();
    emit_exception(msg, &tb);
}

/// Builds `[stamp] [pid] [LEVEL] <body>\n` and writes it with one write(2).
fn emit(level: Level, body: impl FnOnce(&mut Vec<u8>)) {
    let mut b = Vec::with_capacity(128);
    if let Some(sink) = py_sink() {
        // Python's formatter makes the line; syslog is ferrocorn's own
        // handler and keeps getting the record.
        body(&mut b);
        syslog::error(level, &b);
        (sink.error)(level, &String::from_utf8_lossy(&b));
        return;
    }
    let now = time::unix_secs(std::time::SystemTime::now());
    time::push_err_stamp(&mut b, now);
    b.extend_from_slice(b" [");
    b.extend_from_slice(itoa::Buffer::new().format(sys::getpid()).as_bytes());
    b.extend_from_slice(b"] [");
    b.extend_from_slice(level.name().as_bytes());
    b.extend_from_slice(b"] ");
    let start = b.len();
    body(&mut b);
    syslog::error(level, &b[start..]);
    b.push(b'\n');
    // Nowhere to report a failing error log; gunicorn drops it too.
    let _ = sys::write_all(FD.load(Ordering::Acquire), &b);
}

/// `log_debug!("fmt", args..)`: error log at DEBUG.
#[macro_export]
macro_rules! log_debug {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Debug) {
            $crate::log::write_fmt($crate::log::Level::Debug, ::std::format_args!($($arg)*));
        }
    };
}

/// `log_info!("fmt", args..)`: error log at INFO.
#[macro_export]
macro_rules! log_info {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Info) {
            $crate::log::write_fmt($crate::log::Level::Info, ::std::format_args!($($arg)*));
        }
    };
}

/// `log_warning!("fmt", args..)`: error log at WARNING.
#[macro_export]
macro_rules! log_warning {
    ($($arg:tt)*) => {
        // Not behind `enabled`: the line is counted whatever the level
        // (statsd's gunicorn.log.*); write_fmt checks the level itself.
        {
            $crate::log::write_fmt($crate::log::Level::Warning, ::std::format_args!($($arg)*));
        }
    };
}

/// `log_error!("fmt", args..)`: error log at ERROR.
#[macro_export]
macro_rules! log_error {
    ($($arg:tt)*) => {
        // Not behind `enabled`: the line is counted whatever the level
        // (statsd's gunicorn.log.*); write_fmt checks the level itself.
        {
            $crate::log::write_fmt($crate::log::Level::Error, ::std::format_args!($($arg)*));
        }
    };
}

/// `log_critical!("fmt", args..)`: error log at CRITICAL.
#[macro_export]
macro_rules! log_critical {
    ($($arg:tt)*) => {
        // Not behind `enabled`: the line is counted whatever the level
        // (statsd's gunicorn.log.*); write_fmt checks the level itself.
        {
            $crate::log::write_fmt($crate::log::Level::Critical, ::std::format_args!($($arg)*));
        }
    };
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::sync::{Mutex, MutexGuard};

    /// Serialises tests that touch the process-global logger.
    pub fn global_lock() -> MutexGuard<'static, ()> {
        static L: Mutex<()> = Mutex::new(());
        L.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh scratch directory under the system temp dir.
    pub fn tmpdir(tag: &str) -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "fc-log-{}-{}-{}",
            tag,
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::{global_lock, tmpdir};
    use super::*;
    use std::fs;

    /// `[YYYY-mm-dd HH:MM:SS +zzzz] [pid] [LEVEL] `
    fn check_prefix(line: &str, level: &str) -> String {
        let b = line.as_bytes();
        assert!(b.len() > 28, "{line:?}");
        assert_eq!(b[0], b'[');
        for (i, c) in b[1..26].iter().enumerate() {
            let pos = i + 1;
            match pos {
                5 | 8 => assert_eq!(*c, b'-', "{line:?}"),
                11 | 20 => assert_eq!(*c, b' ', "{line:?}"),
                14 | 17 => assert_eq!(*c, b':', "{line:?}"),
                21 => assert!(*c == b'+' || *c == b'-', "{line:?}"),
                _ => assert!(c.is_ascii_digit(), "{line:?} at {pos}"),
            }
        }
        assert_eq!(b[26], b']');
        let rest = &line[27..];
        let pid = std::process::id();
        let want = format!(" [{pid}] [{level}] ");
        assert!(rest.starts_with(&want), "{line:?}");
        rest[want.len()..].to_owned()
    }

    fn lines(p: &std::path::Path) -> Vec<String> {
        fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn level_parse_and_names() {
        assert_eq!(Level::parse("DEBUG"), Some(Level::Debug));
        assert_eq!(Level::parse("Warning"), Some(Level::Warning));
        assert_eq!(Level::parse("critical"), Some(Level::Critical));
        assert_eq!(Level::parse("warn"), None);
        assert_eq!(Level::Error.to_string(), "ERROR");
        assert!(Level::Debug < Level::Info && Level::Error < Level::Critical);
        // Python effective levels: the first level whose records pass
        assert_eq!(Level::from_python(0), Level::Debug);
        assert_eq!(Level::from_python(10), Level::Debug);
        assert_eq!(Level::from_python(15), Level::Info);
        assert_eq!(Level::from_python(30), Level::Warning);
        assert_eq!(Level::from_python(40), Level::Error);
        assert_eq!(Level::from_python(99), Level::Critical);
    }

    #[test]
    fn line_format_levels_and_reopen() {
        let _g = global_lock();
        let d = tmpdir("err");
        let p = d.join("error.log");
        let ps = p.to_str().unwrap();

        init("warning", ps, false).unwrap();
        assert!(!enabled(Level::Info) && enabled(Level::Warning));
        crate::log_info!("dropped {}", 1);
        crate::log_debug!("dropped");
        crate::log_warning!("Worker with pid {} was terminated", 42);
        crate::log_error!("plain");
        crate::log_critical!("WORKER TIMEOUT (pid:{})", 7);
        write(Level::Info, "dropped too");
        write(Level::Error, "direct");
        exception(
            "Error handling request /x",
            "Traceback (most recent call last):\n  File \"x\"\nValueError: boom\n",
        );
        let l = lines(&p);
        assert_eq!(l.len(), 8, "{l:#?}");
        assert_eq!(
            check_prefix(&l[0], "WARNING"),
            "Worker with pid 42 was terminated"
        );
        assert_eq!(check_prefix(&l[1], "ERROR"), "plain");
        assert_eq!(check_prefix(&l[2], "CRITICAL"), "WORKER TIMEOUT (pid:7)");
        assert_eq!(check_prefix(&l[3], "ERROR"), "direct");
        assert_eq!(check_prefix(&l[4], "ERROR"), "Error handling request /x");
        assert_eq!(l[5], "Traceback (most recent call last):");
        assert_eq!(l[7], "ValueError: boom");

        // Unknown level names mean info, as in gunicorn.
        init("bogus", ps, false).unwrap();
        assert_eq!(level(), Level::Info);
        init("DEBUG", ps, false).unwrap();
        crate::log_debug!("now visible");
        assert_eq!(
            check_prefix(lines(&p).last().unwrap(), "DEBUG"),
            "now visible"
        );

        // Rotation: rename, reopen, the new file gets the next line.
        let rotated = d.join("error.log.1");
        fs::rename(&p, &rotated).unwrap();
        crate::log_info!("still old");
        reopen().unwrap();
        crate::log_info!("in new");
        assert_eq!(
            check_prefix(lines(&rotated).last().unwrap(), "INFO"),
            "still old"
        );
        let l = lines(&p);
        assert_eq!(l.len(), 1);
        assert_eq!(check_prefix(&l[0], "INFO"), "in new");

        // A failing reopen keeps the old file.
        fs::remove_dir_all(&d).unwrap();
        let e = reopen().unwrap_err();
        assert!(
            e.starts_with(&format!(
                "Error: '{ps}' isn't writable [FileNotFoundError(2, "
            )),
            "{e}"
        );

        init("info", "-", false).unwrap();
        assert_eq!(error_log_fd(), 2);
    }

    #[test]
    fn init_error_names_path() {
        let _g = global_lock();
        let e = init("info", "/nonexistent-dir/x/error.log", false).unwrap_err();
        assert_eq!(
            e,
            "Error: '/nonexistent-dir/x/error.log' isn't writable \
             [FileNotFoundError(2, 'No such file or directory')]"
        );
        let d = tmpdir("isdir");
        let e = init("info", d.to_str().unwrap(), false).unwrap_err();
        assert!(
            e.ends_with("[IsADirectoryError(21, 'Is a directory')]"),
            "{e}"
        );
    }

    #[test]
    fn capture_output_redirects_stdout_stderr() {
        let _g = global_lock();
        let d = tmpdir("cap");
        let p = d.join("err.log");
        let ps = p.to_str().unwrap().to_owned();
        // fds 1 and 2 are redirected, so do it in a child process.
        let pid = sys::testing::fork();
        if pid == 0 {
            let ok = init("info", &ps, true).is_ok();
            let _ = sys::write_all(1, b"to stdout\n");
            let _ = sys::write_all(2, b"to stderr\n");
            crate::log_info!("logged");
            let _ = fs::rename(&ps, format!("{ps}.old"));
            let ok = ok && reopen().is_ok();
            let _ = sys::write_all(1, b"after reopen\n");
            sys::testing::exit(if ok { 0 } else { 1 });
        }
        assert_eq!(sys::testing::wait(pid), 0);
        let old = fs::read_to_string(format!("{ps}.old")).unwrap();
        let mut it = old.lines();
        assert_eq!(it.next(), Some("to stdout"));
        assert_eq!(it.next(), Some("to stderr"));
        assert!(it.next().unwrap().ends_with("] [INFO] logged"));
        assert_eq!(fs::read_to_string(&p).unwrap(), "after reopen\n");
    }

    #[test]
    fn forked_writers_never_interleave() {
        let _g = global_lock();
        let d = tmpdir("fork");
        let p = d.join("shared.log");
        init("info", p.to_str().unwrap(), false).unwrap();
        const N: usize = 2000;
        let mut kids = Vec::new();
        for tag in [b'a', b'b'] {
            let pid = sys::testing::fork();
            if pid == 0 {
                let body = String::from_utf8(vec![tag; 3000]).unwrap();
                for i in 0..N {
                    write(Level::Info, &format!("{i} {body}"));
                }
                sys::testing::exit(0);
            }
            kids.push(pid);
        }
        for pid in kids {
            assert_eq!(sys::testing::wait(pid), 0);
        }
        init("info", "-", false).unwrap();
        let text = fs::read_to_string(&p).unwrap();
        let mut counts = [0usize; 2];
        for line in text.lines() {
            let (_, msg) = line.split_once("] [INFO] ").unwrap();
            let (_, body) = msg.split_once(' ').unwrap();
            assert_eq!(body.len(), 3000);
            let c = body.as_bytes()[0];
            assert!(body.bytes().all(|x| x == c), "interleaved line");
            counts[(c - b'a') as usize] += 1;
        }
        assert_eq!(counts, [N, N]);
    }

    #[test]
    fn oserror_repr() {
        let e = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(
            py_oserror_repr(&e),
            "PermissionError(13, 'Permission denied')"
        );
        let e = std::io::Error::from_raw_os_error(libc::EROFS);
        assert_eq!(py_oserror_repr(&e), "OSError(30, 'Read-only file system')");
    }
}
