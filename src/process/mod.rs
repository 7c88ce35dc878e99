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
