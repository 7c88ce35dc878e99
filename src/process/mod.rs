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
