//! `--daemon`, as gunicorn's `util.daemonize(enable_stdio_inheritance)`.
//!
//! fork (the parent exits 0) → setsid → fork again (the session leader
//! exits 0, so the daemon can never reacquire a controlling terminal) →
//! umask 0o022 → stdio. Like gunicorn it does NOT chdir to `/` and does NOT
//! close any descriptor above 2.
//!
//! stdio: without `--enable-stdio-inheritance`, fds 0, 1 and 2 all point at
//! /dev/null afterwards. With it, stdin goes to /dev/null and stdout/stderr
//! go to /dev/null only when they are terminals, so `ferrocorn --daemon ... >
//! out.log 2>&1` keeps writing to out.log.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsRawFd, IntoRawFd};

use nix::sys::stat::{umask, Mode};
use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, isatty, setsid};

use super::sys::{self, Forked};

/// Daemonize the calling process; returns `Ok(())` in the daemon (the
/// grandchild) only: the original process and the intermediate session
/// leader `_exit(0)`.
///
/// A no-op when `GUNICORN_FD` is in the environment: a master re-exec'd by
/// USR2 is already detached (gunicorn checks the same variable).
///
/// Must run while the process has a single thread (it checks and refuses
/// otherwise), before the pid file is written and before the listening
/// sockets are bound (gunicorn daemonizes first, then creates the arbiter,
/// which writes the pid file and binds), since both pid and session change.
/// Buffered Rust stdout/stderr are flushed before forking. Use
/// [`daemonize_with_hooks`] when an initialised CPython must be told about
/// the forks.
#[cfg(test)]
pub fn daemonize(keep_stdio: bool) -> Result<(), String> {
    daemonize_with_hooks(keep_stdio, &mut || {}, &mut || {})
}

/// [`daemonize`], calling `before_fork` right before each of the two forks
/// and `after_fork_child` in the child right after each (for an embedded
/// interpreter: `PyOS_BeforeFork` / `PyOS_AfterFork_Child`, with the GIL
/// held; the parents `_exit` at once, so nothing runs there).
pub fn daemonize_with_hooks(
    keep_stdio: bool,
    before_fork: &mut dyn FnMut(),
    after_fork_child: &mut dyn FnMut(),
) -> Result<(), String> {
    if std::env::var_os("GUNICORN_FD").is_some() {
        return Ok(());
    }
    let threads = thread_count();
    if threads > 1 {
        return Err(format!(
            "cannot daemonize: the process has {threads} threads (fork would lose all but one)"
        ));
    }
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();

    fork_and_exit_parent(before_fork, after_fork_child)
        .map_err(|e| format!("daemonize: fork failed: {e}"))?;
    setsid().map_err(|e| format!("daemonize: setsid failed: {e}"))?;
    fork_and_exit_parent(before_fork, after_fork_child)
        .map_err(|e| format!("daemonize: second fork failed: {e}"))?;

    umask(Mode::from_bits_truncate(0o022));
    redirect_stdio(keep_stdio)
}

/// Fork; the parent `_exit(0)`s, the child returns.
fn fork_and_exit_parent(
    before_fork: &mut dyn FnMut(),
    after_fork_child: &mut dyn FnMut(),
) -> Result<(), nix::Error> {
    before_fork();
    match sys::fork()? {
        Forked::Parent(_) => sys::exit_now(0),
        Forked::Child => {
            after_fork_child();
            Ok(())
        }
    }
}

/// Point stdio at /dev/null as gunicorn does (see the module doc).
fn redirect_stdio(keep_stdio: bool) -> Result<(), String> {
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("daemonize: cannot open /dev/null: {e}"))?;
    let err =
        |what: &str, e: nix::Error| format!("daemonize: cannot redirect {what} to /dev/null: {e}");
    dup2_stdin(&null).map_err(|e| err("stdin", e))?;
    if keep_stdio {
        if isatty(std::io::stdout()).unwrap_or(false) {
            dup2_stdout(&null).map_err(|e| err("stdout", e))?;
        }
        if isatty(std::io::stderr()).unwrap_or(false) {
            dup2_stderr(&null).map_err(|e| err("stderr", e))?;
        }
    } else {
        dup2_stdout(&null).map_err(|e| err("stdout", e))?;
        dup2_stderr(&null).map_err(|e| err("stderr", e))?;
    }
    // If stdio was closed when we started, open() returned 0, 1 or 2, which
    // is now one of the std streams: keep it open.
    if null.as_raw_fd() <= 2 {
        let _ = null.into_raw_fd();
    }
    Ok(())
}

/// Number of threads of this process (1 if /proc is unavailable).
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::super::sys::{self, Forked};
    use super::super::testutil::{isolated, wait_exit_code};
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;

    /// What the daemon reports about itself, one line per item.
    fn report() -> String {
        let link = |fd: i32| {
            std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .map(|p| p.display().to_string())
                .unwrap_or_else(|e| format!("error {e}"))
        };
        let old = umask(Mode::from_bits_truncate(0o077));
        let sid = nix::unistd::getsid(None).map(|p| p.as_raw()).unwrap_or(-1);
        format!(
            "pid={}\nsid={}\nfd0={}\nfd1={}\nfd2={}\numask={:o}\ncwd={}\n",
            std::process::id(),
            sid,
            link(0),
            link(1),
            link(2),
            old.bits(),
            std::env::current_dir()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )
    }

    fn field<'a>(rep: &'a str, key: &str) -> &'a str {
        rep.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .unwrap_or("")
    }

    /// Fork a child that daemonizes; the daemon writes `report()` into a
    /// pipe kept open across daemonize (fds > 2 are not touched).
    fn run(keep_stdio: bool) -> (i32, String) {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let umask_before = umask(Mode::from_bits_truncate(0o077));
        match sys::fork().expect("fork") {
            Forked::Child => {
                drop(r);
                let mut before = 0;
                let mut after = 0;
                let r = daemonize_with_hooks(keep_stdio, &mut || before += 1, &mut || after += 1);
                if let Err(e) = r {
                    let _ = nix::unistd::write(w.as_fd(), format!("error={e}\n").as_bytes());
                    sys::exit_now(1);
                }
                let hooks = format!("hooks={before},{after}\n");
                let _ = nix::unistd::write(w.as_fd(), (report() + &hooks).as_bytes());
                sys::exit_now(0);
            }
            Forked::Parent(child) => {
                umask(umask_before);
                drop(w);
                // The direct child exits 0 as soon as it forked.
                assert_eq!(wait_exit_code(child), 0);
                let mut out = String::new();
                let mut f = std::fs::File::from(r);
                let _ = f.read_to_string(&mut out); // EOF once the daemon exits
                (child.as_raw(), out)
            }
        }
    }

    #[test]
    fn daemonize_detaches_and_nulls_stdio() {
        isolated(module_path!(), "daemonize_detaches_and_nulls_stdio", || {
            let my_sid = nix::unistd::getsid(None).expect("getsid").as_raw();
            let cwd = std::env::current_dir().expect("cwd").display().to_string();
            let (child, rep) = run(false);
            assert!(!rep.contains("error="), "{rep}");
            let pid: i32 = field(&rep, "pid").parse().expect("pid");
            let sid: i32 = field(&rep, "sid").parse().expect("sid");
            // The daemon is the grandchild of the process that called
            // daemonize (our child): in the new session that daemonize's first
            // fork created, and not its leader (it can never reacquire a
            // controlling terminal).
            assert_ne!(pid, child);
            assert_ne!(sid, my_sid, "{rep}");
            assert_ne!(sid, child, "{rep}");
            assert_ne!(sid, pid, "{rep}");
            assert!(sid > 0, "{rep}");
            for fd in ["fd0", "fd1", "fd2"] {
                assert_eq!(field(&rep, fd), "/dev/null", "{rep}");
            }
            assert_eq!(field(&rep, "umask"), "22");
            assert_eq!(field(&rep, "hooks"), "2,2");
            // gunicorn does not chdir("/").
            assert_eq!(field(&rep, "cwd"), cwd);
        });
    }

    #[test]
    fn daemonize_stdio_inheritance_keeps_redirected_output() {
        isolated(
            module_path!(),
            "daemonize_stdio_inheritance_keeps_redirected_output",
            || {
                // stdout/stderr are pipes here (the test harness captures them),
                // i.e. not terminals: they must survive; stdin goes to /dev/null.
                let out_before = std::fs::read_link("/proc/self/fd/1").expect("fd1");
                let (_, rep) = run(true);
                assert!(!rep.contains("error="), "{rep}");
                assert_eq!(field(&rep, "fd0"), "/dev/null");
                assert_eq!(field(&rep, "fd1"), out_before.display().to_string());
            },
        );
    }

    #[test]
    fn reexeced_master_does_not_daemonize() {
        isolated(module_path!(), "reexeced_master_does_not_daemonize", || {
            std::env::set_var("GUNICORN_FD", "3");
            let pid = std::process::id();
            daemonize(false).expect("no-op");
            assert_eq!(std::process::id(), pid);
        });
    }

    #[test]
    fn refuses_with_threads() {
        isolated(module_path!(), "refuses_with_threads", || {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let t = std::thread::spawn(move || {
                let _ = rx.recv();
            });
            let e = daemonize(false).expect_err("threads");
            assert!(e.contains("threads"), "{e}");
            drop(tx);
            let _ = t.join();
        });
    }
}
