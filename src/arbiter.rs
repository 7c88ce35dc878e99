//! The master process ("arbiter" in gunicorn's words): owns the listening
//! sockets and the signals, forks workers and keeps their number right,
//! reaps them, and stops the server. It never starts a second thread
//! (DESIGN.md: forking a multi-threaded process deadlocks).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use pyo3::prelude::*;
use signal_hook::consts::{
    SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGTTIN, SIGTTOU, SIGUSR1, SIGUSR2, SIGWINCH,
};
use signal_hook_mio::v1_0::Signals;

use crate::config::Config;
use crate::shm::{ExitReason, Shm};
use crate::sock::Listener;
use crate::worker::{self, APP_LOAD_ERROR, WORKER_BOOT_ERROR};

const SIGNAL_TOKEN: Token = Token(0);

struct WorkerProc {
    age: u64,
    /// Index of the worker's slot in shared memory.
    slot: usize,
    /// SIGABRT was sent for a timeout; the next timeout check sends SIGKILL.
    aborted: bool,
    /// The master retired this worker (TTOU, reload): its exit is expected.
    retired: Option<&'static str>,
}

/// Slots in the shared region: far above any worker count ferrocorn is run
/// with; unused slots cost no memory (MAP_NORESERVE).
const SHM_SLOTS: usize = 1024;

pub struct Arbiter {
    cfg: Config,
    listeners: Vec<Listener>,
    app: Option<Py<PyAny>>,
    workers: BTreeMap<Pid, WorkerProc>,
    num_workers: usize,
    age: u64,
    poll: Poll,
    signals: Option<Signals>,
    pidfile: Option<String>,
    shm: &'static Shm,
    /// Reaped workers by exit cause (exported by the metrics issue).
    restarts: BTreeMap<String, u64>,
}

/// Why the master is stopping, and the exit status it stops with.
struct Halt {
    reason: Option<String>,
    status: i32,
    graceful: bool,
}

impl Arbiter {
    pub fn new(
        cfg: Config,
        listeners: Vec<Listener>,
        app: Option<Py<PyAny>>,
    ) -> Result<Arbiter, String> {
        let poll = Poll::new().map_err(|e| format!("creating the master's event loop: {e}"))?;
        let mut signals = Signals::new([
            SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGTTIN, SIGTTOU, SIGUSR1, SIGUSR2, SIGWINCH,
        ])
        .map_err(|e| format!("installing the master's signal handlers: {e}"))?;
        poll.registry()
            .register(&mut signals, SIGNAL_TOKEN, Interest::READABLE)
            .map_err(|e| format!("registering signals: {e}"))?;
        let num_workers = cfg.workers().max(1);
        let pidfile = cfg.pidfile();
        let shm = crate::shm::init(SHM_SLOTS)?;
        Ok(Arbiter {
            cfg,
            listeners,
            app,
            workers: BTreeMap::new(),
            num_workers,
            age: 0,
            poll,
            signals: Some(signals),
            pidfile,
            shm,
            restarts: BTreeMap::new(),
        })
    }

    /// Runs the master until it stops; returns the process exit status.
    pub fn run(mut self) -> i32 {
        let pid = std::process::id();
        crate::log_info!("Starting ferrocorn {}", env!("CARGO_PKG_VERSION"));
        for l in &self.listeners {
            crate::log_info!("Listening at: {} ({pid})", l.url());
        }
        crate::log_info!("Using worker: {}", self.cfg.worker_class());
        if crate::log::enabled(crate::log::Level::Debug) {
            Python::attach(|py| {
                crate::log_debug!("Current configuration:\n{}", self.cfg.print_config(py));
            });
        }
        if let Some(p) = &self.pidfile {
            if let Err(e) = std::fs::write(p, format!("{pid}\n")) {
                crate::log_error!("cannot write pidfile {p}: {e}");
                return 1;
            }
        }
        let halt = self.main_loop();
        self.stop(halt.graceful);
        if let Some(reason) = &halt.reason {
            crate::log_info!("Reason: {reason}");
        }
        if let Some(p) = &self.pidfile {
            let _ = std::fs::remove_file(p);
        }
        halt.status
    }

    fn main_loop(&mut self) -> Halt {
        let mut events = Events::with_capacity(16);
        if let Err(h) = self.manage_workers() {
            return h;
        }
        crate::log_debug!("Arbiter booted");
        loop {
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::from_secs(1))) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    crate::log_error!("master event loop failed: {e}");
                    return Halt {
                        reason: None,
                        status: 1,
                        graceful: false,
                    };
                }
            }
            let pending: Vec<i32> = match self.signals.as_mut() {
                Some(s) => s.pending().collect(),
                None => Vec::new(),
            };
            for sig in pending {
                let name = signal_name(sig).to_lowercase();
                let name = name.trim_start_matches("sig");
                if sig == SIGCHLD {
                    crate::log_debug!("Handling signal: {name}");
                } else {
                    crate::log_info!("Handling signal: {name}");
                }
                match sig {
                    SIGTERM => {
                        return Halt {
                            reason: None,
                            status: 0,
                            graceful: true,
                        }
                    }
                    SIGINT | SIGQUIT => {
                        return Halt {
                            reason: None,
                            status: 0,
                            graceful: false,
                        }
                    }
                    SIGTTIN => self.num_workers += 1,
                    SIGTTOU if self.num_workers > 1 => self.num_workers -= 1,
                    SIGUSR1 => {
                        if let Err(e) = crate::log::reopen() {
                            crate::log_error!("reopening log files: {e}");
                        }
                        self.kill_workers(Signal::SIGUSR1);
                    }
                    SIGHUP | SIGUSR2 | SIGWINCH => {
                        crate::log_warning!(
                            "{} is not implemented yet in ferrocorn; ignoring it",
                            signal_name(sig)
                        );
                    }
                    _ => {}
                }
            }
            if let Err(h) = self.reap() {
                return h;
            }
            self.murder_workers();
            if let Err(h) = self.manage_workers() {
                return h;
            }
        }
    }

    /// Collects exited workers and records why each left; a boot or
    /// app-load failure stops the master instead of respawning forever.
    fn reap(&mut self) -> Result<(), Halt> {
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Ok(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Err(sig)),
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return Ok(()),
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    crate::log_error!("waitpid failed: {e}");
                    return Ok(());
                }
            };
            let Some(w) = self.workers.remove(&pid) else {
                continue;
            };
            let reason = self.exit_cause(pid, &w, status);
            self.shm.release(w.slot);
            *self.restarts.entry(reason).or_default() += 1;
            match status {
                Ok(WORKER_BOOT_ERROR) => {
                    return Err(Halt {
                        reason: Some("Worker failed to boot.".into()),
                        status: WORKER_BOOT_ERROR,
                        graceful: true,
                    })
                }
                Ok(APP_LOAD_ERROR) => {
                    return Err(Halt {
                        reason: Some("App failed to load.".into()),
                        status: APP_LOAD_ERROR,
                        graceful: true,
                    })
                }
                _ => {}
            }
        }
    }

    /// The cause of a worker's exit, logged as gunicorn does and returned as
    /// the `reason` label of gunicorn_master_worker_restarts_total.
    fn exit_cause(&self, pid: Pid, w: &WorkerProc, status: Result<i32, Signal>) -> String {
        let slot_reason = self.shm.slot(w.slot).map(|s| s.exit_reason());
        match status {
            Err(Signal::SIGKILL) if w.aborted => {
                crate::log_error!("Worker (pid:{pid}) was sent SIGKILL! Perhaps out of memory?");
                "timeout".into()
            }
            Err(Signal::SIGKILL) => {
                crate::log_error!("Worker (pid:{pid}) was sent SIGKILL! Perhaps out of memory?");
                "SIGKILL".into()
            }
            Err(sig) => {
                crate::log_error!("Worker (pid:{pid}) was sent {}!", sig.as_str());
                if w.aborted {
                    "timeout".into()
                } else {
                    sig.as_str().into()
                }
            }
            Ok(code) if w.aborted => {
                crate::log_info!("Worker (pid:{pid}) exited after a timeout abort (code {code}).");
                "timeout".into()
            }
            Ok(0) if slot_reason == Some(ExitReason::MaxRequests) => {
                crate::log_info!("Worker (pid:{pid}) exited after max_requests.");
                "max_requests".into()
            }
            Ok(0) => match w.retired {
                Some(r) => r.into(),
                None => {
                    crate::log_info!("Worker (pid:{pid}) exited.");
                    "exit".into()
                }
            },
            Ok(code) => {
                crate::log_error!("Worker (pid:{pid}) exited with code {code}.");
                "exit_code".into()
            }
        }
    }

    /// gunicorn's murder_workers: SIGABRT to a worker silent past --timeout,
    /// SIGKILL if it is still silent at the next check.
    fn murder_workers(&mut self) {
        let timeout_ms = self.cfg.timeout().saturating_mul(1000);
        if timeout_ms == 0 {
            return;
        }
        for (pid, w) in self.workers.iter_mut() {
            let silent = self.shm.slot(w.slot).map_or(0, |s| s.silent_for_ms());
            if silent <= timeout_ms {
                continue;
            }
            if !w.aborted {
                crate::log_critical!("WORKER TIMEOUT (pid:{pid})");
                w.aborted = true;
                let _ = kill(*pid, Signal::SIGABRT);
            } else {
                let _ = kill(*pid, Signal::SIGKILL);
            }
        }
    }

    /// Spawns or retires workers until their number is `num_workers`.
    fn manage_workers(&mut self) -> Result<(), Halt> {
        while self.active_workers() < self.num_workers {
            self.spawn_worker()?;
        }
        while self.active_workers() > self.num_workers {
            self.retire_oldest("ttou");
        }
        Ok(())
    }

    /// Workers not already told to leave.
    fn active_workers(&self) -> usize {
        self.workers
            .values()
            .filter(|w| w.retired.is_none())
            .count()
    }

    /// Gracefully stops the oldest active worker, as gunicorn does for TTOU
    /// and after a reload; it stays in the table until it is reaped.
    fn retire_oldest(&mut self, why: &'static str) {
        let oldest = self
            .workers
            .iter_mut()
            .filter(|(_, w)| w.retired.is_none())
            .min_by_key(|(_, w)| w.age);
        if let Some((pid, w)) = oldest {
            w.retired = Some(why);
            let _ = kill(*pid, Signal::SIGTERM);
        }
    }

    fn spawn_worker(&mut self) -> Result<(), Halt> {
        self.age += 1;
        let age = self.age;
        let Some(slot_idx) = self.shm.claim() else {
            crate::log_error!("no free worker slot in shared memory ({SHM_SLOTS} workers at most)");
            return Ok(());
        };
        let forked = Python::attach(|py| {
            let res = crate::python::fork(py);
            if let Ok(nix::unistd::ForkResult::Child) = res {
                // The child must not see the master's signals: dropping them
                // unregisters signal-hook's actions and the self-pipe.
                drop(self.signals.take());
                let app = self.app.as_ref().map(|a| a.clone_ref(py));
                let Some(slot) = self.shm.slot(slot_idx) else {
                    std::process::exit(WORKER_BOOT_ERROR);
                };
                let code = worker::run(worker::Spawn {
                    cfg: &self.cfg,
                    listeners: &self.listeners,
                    app,
                    slot,
                });
                flush_python_stdio(py);
                std::process::exit(code);
            }
            res
        });
        match forked {
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                self.workers.insert(
                    child,
                    WorkerProc {
                        age,
                        slot: slot_idx,
                        aborted: false,
                        retired: None,
                    },
                );
                Ok(())
            }
            Ok(nix::unistd::ForkResult::Child) => unreachable_child(),
            Err(e) => {
                self.shm.release(slot_idx);
                crate::log_error!("fork failed: {e}");
                Err(Halt {
                    reason: Some(format!("fork failed: {e}")),
                    status: 1,
                    graceful: true,
                })
            }
        }
    }

    fn kill_workers(&self, sig: Signal) {
        for pid in self.workers.keys() {
            let _ = kill(*pid, sig);
        }
    }

    /// gunicorn's stop(): TERM (graceful) or QUIT (quick) to every worker,
    /// wait up to --graceful-timeout, then SIGKILL what is left.
    fn stop(&mut self, graceful: bool) {
        crate::log_info!("Shutting down: Master");
        // Close the listeners first, as gunicorn: connections still queued
        // in the backlog are refused once the workers let go too.
        crate::sock::unlink_owned(&self.listeners);
        self.listeners.clear();
        let sig = if graceful {
            Signal::SIGTERM
        } else {
            Signal::SIGQUIT
        };
        self.kill_workers(sig);
        let limit = Instant::now() + Duration::from_secs(self.cfg.graceful_timeout());
        while !self.workers.is_empty() && Instant::now() < limit {
            let _ = self.reap_quietly();
            if self.workers.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill_workers(Signal::SIGKILL);
        while !self.workers.is_empty() {
            if !self.reap_quietly() {
                break;
            }
        }
    }

    /// Reaps without acting on exit codes (used while stopping). Returns
    /// false when there is nothing left to wait for.
    fn reap_quietly(&mut self) -> bool {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, _)) | Ok(WaitStatus::Signaled(pid, _, _)) => {
                    self.workers.remove(&pid);
                }
                Ok(WaitStatus::StillAlive) => return true,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => {
                    self.workers.clear();
                    return false;
                }
            }
        }
    }
}

/// The child branch of fork never returns from spawn_worker's closure.
fn unreachable_child() -> Result<(), Halt> {
    std::process::exit(1)
}

fn flush_python_stdio(py: Python<'_>) {
    if let Ok(sys) = py.import("sys") {
        for name in ["stdout", "stderr"] {
            if let Ok(s) = sys.getattr(name) {
                let _ = s.call_method0("flush");
            }
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    Signal::try_from(sig)
        .map(|s| s.as_str())
        .unwrap_or("SIGUNKNOWN")
}
