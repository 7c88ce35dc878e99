//! Process-level plumbing of the master, each piece as gunicorn 27 does it:
//!
//! - [`pidfile`]: the pid file (`--pid`), stale detection, `.2` rename on
//!   USR2 promotion (gunicorn `pidfile.py`);
//! - [`daemon`]: `--daemon` / `--enable-stdio-inheritance` (`util.daemonize`);
//! - [`user`]: `--user`/`--group`/`--initgroups`/`--umask` helpers
//!   (`util.set_owner_process`, `util.chown`);
//! - [`title`]: process titles (`setproctitle`);
//! - [`systemd`]: socket activation and `sd_notify` (`systemd.py`);
//! - [`reexec`]: USR2 re-exec with inherited sockets (`Arbiter.reexec`).
//!
//! Order in the master, as gunicorn (`Application.run` → `Arbiter`):
//! `StartCtx::capture` (first thing) → load config, `--chdir` →
//! `daemonize` (if `--daemon`) → `ctx.cwd = getcwd()` → `master_pid()` →
//! pid file `create` → signals → listeners: `systemd::listen_fds(true)`, else
//! `reexec::inherited_fds()` when re-exec'd, else bind (unix sockets under
//! `--umask`, then `chown`) → `sd_notify("READY=1\n...")` → `set_title`.
//!
//! All `unsafe` code is in `sys`.

pub mod daemon;
pub mod pidfile;
pub mod reexec;
pub mod systemd;
pub mod title;
pub mod user;

mod sys;

#[cfg(test)]
mod testutil;

/// Writes to a closed connection must fail with EPIPE, not kill the
/// process: SIGPIPE is ignored from the start (CPython does the same when it
/// installs its signal handlers, which the binary's interpreter does not).
pub fn ignore_sigpipe() {
    sys::ignore_sigpipe();
}

/// In a child of the master (worker, exporter): asks the kernel for SIGTERM
/// when the master dies, so a master killed with SIGKILL leaves nothing
/// serving unsupervised (gunicorn's workers notice a changed parent in their
/// loop; this is immediate). False if the master is already gone, i.e. died
/// before the request took effect: the caller should exit.
pub fn die_with_master(master_pid: u32) -> bool {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM) {
        crate::log_debug!("PR_SET_PDEATHSIG failed: {e}");
    }
    nix::unistd::getppid().as_raw() as u32 == master_pid
}

/// Raises the soft limit of open files to the hard limit, for the master
/// and the workers it forks (each connection is a descriptor; systemd and
/// shells often start services at 1024). Logged at debug; a failure is
/// only logged: the server runs with the limit it has.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => crate::log_debug!("open files limit raised from {soft} to {hard}"),
            Err(e) => crate::log_debug!("raising the open files limit from {soft} to {hard}: {e}"),
        },
        Ok((soft, _)) => crate::log_debug!("open files limit: {soft} (already the hard limit)"),
        Err(e) => crate::log_debug!("reading the open files limit: {e}"),
    }
}

/// Resident memory of process `pid` in bytes (`/proc/PID/statm`'s second
/// field, in pages); None when it cannot be read (the process is gone).
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096);
    pages.checked_mul(page)
}

/// CPU time process `pid` has used so far, user and system, in seconds
/// (`/proc/PID/stat`'s utime and stime, in clock ticks); None when it
/// cannot be read.
pub fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it start after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100);
    Some(utime.saturating_add(stime) as f64 / ticks as f64)
}

#[cfg(test)]
mod rss_tests {
    #[test]
    fn own_cpu_time_grows() {
        let before = super::cpu_seconds(std::process::id() as i32).unwrap();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = super::cpu_seconds(std::process::id() as i32).unwrap();
        assert!(after - before >= 0.1, "{before} -> {after}");
        assert_eq!(super::cpu_seconds(-5), None);
    }

    #[test]
    fn own_rss_is_plausible() {
        let rss = super::rss_bytes(std::process::id() as i32).unwrap();
        assert!(rss > 1024 * 1024 && rss < 64 * 1024 * 1024 * 1024, "{rss}");
        assert_eq!(super::rss_bytes(-5), None);
    }
}
