//! The master process ("arbiter" in gunicorn's words): owns the listening
//! sockets and the signals, forks workers and keeps their number right,
//! reaps them, reloads (HUP), re-executes itself (USR2) and stops the
//! server. It never starts a second thread (docs/architecture.md: forking a
//! multi-threaded process deadlocks).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::sync::Arc;
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

use crate::config::{Config, Loaded};
use crate::exporter::config::EnvConfig;
use crate::hooks::{HookError, Hooks, ListenerView, ServerView, WorkerView};
use crate::mpfiles::appdir::AppDir;
use crate::process::pidfile::Pidfile;
use crate::process::reexec::{self, StartCtx};
use crate::process::{systemd, title};
use crate::shm::{ExitReason, Shm, Slot, State};
use crate::sock::Listener;
use crate::worker::{self, APP_LOAD_ERROR, WORKER_BOOT_ERROR};

mod ctl;
mod rollout;

use rollout::Rollout;

const SIGNAL_TOKEN: Token = Token(0);

/// Slots in the shared region: far above any worker count ferrocorn is run
/// with; unused slots cost no memory (MAP_NORESERVE).
const SHM_SLOTS: usize = 1024;

/// gunicorn's exit status when a hook or the main loop fails.
const MAIN_LOOP_FAILURE: i32 = 255;

struct WorkerProc {
    age: u64,
    /// Index of the worker's slot in shared memory.
    slot: usize,
    /// SIGABRT was sent for a timeout; the next timeout check sends SIGKILL.
    aborted: bool,
    /// The master retired this worker (TTOU, reload): its exit is expected.
    retired: Option<&'static str>,
    /// When max_worker_lifetime (plus this worker's jitter) is up.
    expires: Option<Instant>,
    /// The reload generation it was spawned in (a rolling reload tells the
    /// new workers from the old ones by it).
    generation: u64,
    /// The master saw it ready (idle or busy) during a rolling reload. (At
    /// its exit the slot reads `quitting` whether it booted or not.)
    seen_ready: bool,
}

/// Everything the master needs from `main`.
/// The settings of the Python logging configuration (boot.py's
/// `setup_logging`) in `cfg`.
pub fn python_logging(py: Python<'_>, cfg: &Config) -> crate::python::pylog::Settings {
    // gunicorn tests `if cfg.logconfig_dict:`: an empty dict is no
    // configuration.
    let dict = match cfg.get("logconfig_dict").to_py(py) {
        Ok(d) if d.is_truthy().unwrap_or(false) => Some(d.unbind()),
        _ => None,
    };
    crate::python::pylog::Settings {
        loglevel: cfg.loglevel(),
        errorlog: cfg.errorlog(),
        accesslog: cfg.accesslog(),
        access_format: cfg.access_log_format(),
        logconfig: cfg.str("logconfig").map(str::to_owned),
        logconfig_dict: dict,
        logconfig_json: cfg.str("logconfig_json").map(str::to_owned),
    }
}

pub struct Start {
    pub cfg: Config,
    pub argv: Vec<OsString>,
    pub ctx: StartCtx,
    pub hooks: Hooks,
}

pub struct Arbiter {
    cfg: Config,
    argv: Vec<OsString>,
    ctx: StartCtx,
    hooks: Arc<Hooks>,
    listeners: Vec<Listener>,
    /// The listeners came from systemd socket activation.
    systemd: bool,
    app: Option<Py<PyAny>>,
    /// Automatic gc paused while --preload imported the app
    /// (preload_freeze), until the first worker's fork.
    gc_paused: Option<crate::python::gc::Paused>,
    /// The number of objects frozen by the last gc.freeze() (logged when it
    /// changes).
    frozen: u64,
    workers: BTreeMap<Pid, WorkerProc>,
    num_workers: usize,
    age: u64,
    pid: u32,
    poll: Poll,
    signals: Option<Signals>,
    pidfile: Option<Pidfile>,
    /// Set in a master started by USR2 (gunicorn's GUNICORN_PID): the old
    /// master, until it exits and this one promotes itself.
    master_pid: Option<i32>,
    /// The new master this one started on USR2, while it runs.
    reexec_pid: Option<Pid>,
    proc_name: String,
    shm: &'static Shm,
    /// Reaped workers by exit cause (logged at exit in debug).
    restarts: BTreeMap<String, u64>,
    /// The metrics exporter's settings; `None` with --no-metrics.
    exporter_cfg: Option<EnvConfig>,
    /// statsd_host and its settings: the exporter process sends them (and
    /// runs for them alone with --no-metrics).
    statsd: Option<crate::config::Statsd>,
    /// The metrics exporter child while it runs, and when it was forked.
    exporter: Option<(Pid, Instant)>,
    /// Do not fork the exporter again before this (it died right away).
    exporter_not_before: Option<Instant>,
    /// The exporter was told to stop for a reload: start it again at once.
    exporter_restart: bool,
    /// prometheus_client's multiprocess directory (metrics on).
    app_dir: Option<AppDir>,
    /// `3.11.7`: the `python` label of ferrocorn_build_info.
    python_version: String,
    /// Bumped by each reload: the generation of the workers spawned now.
    generation: u64,
    /// The rolling reload in progress.
    rollout: Option<Rollout>,
    /// The last rolling reload failed (the old workers kept serving) and no
    /// reload has succeeded since: a worker that fails to boot now does not
    /// stop the server; its replacement is tried again after a pause.
    reload_failed: bool,
    /// No worker is spawned before this (a worker failed to boot after a
    /// failed reload).
    spawn_not_before: Option<Instant>,
    /// The control socket (gunicornc), while it is served.
    ctl: Option<crate::ctl::Server>,
}

/// How often the master looks at the new workers' readiness while a
/// rolling reload runs (they do not signal it).
const ROLLOUT_TICK: Duration = Duration::from_millis(50);

/// The pause before a worker is spawned again after one failed to boot
/// following a failed reload.
const BOOT_RETRY_DELAY: Duration = Duration::from_secs(1);

/// How long a stopping master waits for the exporter once the workers are
/// gone (its last Redis push), before SIGKILL.
const EXPORTER_STOP_GRACE: Duration = Duration::from_secs(5);

/// An exporter that dies sooner than this after its start is restarted
/// only after [`EXPORTER_RESPAWN_DELAY`], so a crash loop cannot spin.
const EXPORTER_MIN_LIFE: Duration = Duration::from_secs(5);
const EXPORTER_RESPAWN_DELAY: Duration = Duration::from_secs(1);

/// A worker exit's cause: one of `shm::RESTART_REASONS`, a signal the
/// master did not send, or a shutdown exit (not a restart).
enum Cause {
    Reason(&'static str),
    Killed(Signal),
}

/// Why the master is stopping, and the exit status it stops with.
struct Halt {
    reason: Option<String>,
    status: i32,
    graceful: bool,
}

impl Halt {
    fn with(status: i32, reason: Option<String>) -> Halt {
        Halt {
            reason,
            status,
            graceful: false,
        }
    }
}

impl Arbiter {
    pub fn new(start: Start) -> Result<Arbiter, String> {
        let poll = Poll::new().map_err(|e| format!("creating the master's event loop: {e}"))?;
        let shm = crate::shm::init(SHM_SLOTS)?;
        if let Some(c) = shm.log_counts() {
            crate::log::count_into(&c.counts);
        }
        let master_pid = reexec::master_pid()?;
        let mut proc_name = start.cfg.proc_name();
        if master_pid.is_some() {
            proc_name.push_str(".2");
        }
        Ok(Arbiter {
            num_workers: start.cfg.workers().max(1),
            cfg: start.cfg,
            argv: start.argv,
            ctx: start.ctx,
            hooks: Arc::new(start.hooks),
            listeners: Vec::new(),
            systemd: false,
            app: None,
            gc_paused: None,
            frozen: 0,
            workers: BTreeMap::new(),
            age: 0,
            pid: std::process::id(),
            poll,
            signals: None,
            pidfile: None,
            master_pid,
            reexec_pid: None,
            proc_name,
            shm,
            restarts: BTreeMap::new(),
            exporter_cfg: None,
            statsd: None,
            exporter: None,
            exporter_not_before: None,
            exporter_restart: false,
            app_dir: None,
            python_version: String::new(),
            generation: 0,
            rollout: None,
            reload_failed: false,
            spawn_not_before: None,
            ctl: None,
        })
    }

    /// Runs the master until it stops; returns the process exit status.
    pub fn run(mut self) -> i32 {
        let halt = match self.start() {
            Ok(()) => self.main_loop(),
            Err(h) => h,
        };
        self.halt(halt)
    }

    /// gunicorn's Arbiter.setup() and start(), in its order.
    fn start(&mut self) -> Result<(), Halt> {
        self.setup_metrics().map_err(|e| {
            crate::log_error!("{e}");
            Halt::with(1, None)
        })?;
        self.hook_result(|h, py, sv| h.nworkers_changed(py, sv, sv.num_workers, None))?;
        self.setup_tls().map_err(|e| {
            crate::log_error!("{e}");
            Halt::with(1, None)
        })?;
        if self.cfg.preload_app() {
            self.preload().map_err(|code| Halt::with(code, None))?;
        }
        crate::log_info!("Starting ferrocorn {}", env!("CARGO_PKG_VERSION"));
        if let Some(path) = self.cfg.pidfile() {
            let path = if self.master_pid.is_some() {
                format!("{path}.2")
            } else {
                path
            };
            let mut pf = Pidfile::new(path);
            if let Err(e) = pf.create(self.pid as i32) {
                crate::log_error!("{e}");
                return Err(Halt::with(1, None));
            }
            self.pidfile = Some(pf);
        }
        if self.cfg.bool("spew") {
            // Before any hook, so that they and the workers forked from
            // this thread are traced too.
            Python::attach(crate::python::spew);
        }
        self.hook_result(|h, py, sv| h.on_starting(py, sv))?;
        self.init_signals().map_err(|e| {
            crate::log_error!("{e}");
            Halt::with(1, None)
        })?;
        self.listeners = self.create_listeners().map_err(|e| {
            crate::log_error!("{e}");
            Halt::with(1, None)
        })?;
        crate::log_debug!("Arbiter booted");
        let urls: Vec<String> = self.listeners.iter().map(shown_url).collect();
        crate::log_info!("Listening at: {} ({})", urls.join(","), self.pid);
        crate::log_info!("Using worker: {}", self.cfg.worker_class());
        if crate::log::enabled(crate::log::Level::Debug) {
            Python::attach(|py| {
                crate::log_debug!("Current configuration:\n{}", self.cfg.print_config(py));
            });
        }
        if let Err(e) = systemd::sd_notify("READY=1\nSTATUS=ferrocorn arbiter booted", false) {
            crate::log_debug!("sd_notify failed: {e}");
        }
        self.set_title();
        self.spawn_exporter();
        self.hook_result(|h, py, sv| h.when_ready(py, sv))?;
        Ok(())
    }

    /// --preload: imports the app in the master (with automatic gc paused
    /// until the next fork under preload_freeze, see
    /// [`Arbiter::freeze_before_fork`]); Err is the exit code.
    fn preload(&mut self) -> Result<(), i32> {
        let app = Python::attach(|py| {
            if self.cfg.preload_freeze() && self.gc_paused.is_none() {
                match crate::python::gc::pause(py) {
                    Ok(p) => self.gc_paused = Some(p),
                    Err(e) => crate::log_warning!(
                        "preload_freeze: cannot pause the garbage collector: {}",
                        crate::python::format_err(py, &e)
                    ),
                }
            }
            worker::load_app(py, &self.cfg).inspect(|app| self.hooks.set_wsgi(py, app.bind(py)))
        })?;
        self.app = Some(app);
        Ok(())
    }

    /// TLS on the listeners (certfile, ssl_context): built now, so a bad
    /// file, cipher or hook stops the start; the workers forked afterwards
    /// serve with it.
    fn setup_tls(&self) -> Result<(), String> {
        let hooks = &self.hooks;
        Python::attach(|py| worker::tls::setup(py, &self.cfg, || hooks.cfg_object(py)))
    }

    // -- metrics ----------------------------------------------------------------

    /// Before anything imports the app: the histogram bounds, the exporter's
    /// settings (a bad value or unreadable TLS file stops the start with a
    /// clear error) and PROMETHEUS_MULTIPROC_DIR.
    fn setup_metrics(&mut self) -> Result<(), String> {
        let bounds = self.cfg.metrics_duration_buckets().map_err(|e| e.0)?;
        crate::metrics::store::set_duration_bounds(bounds);
        self.python_version = Python::attach(|py| {
            let v = py.version_info();
            format!("{}.{}.{}", v.major, v.minor, v.patch)
        });
        self.statsd = self.cfg.statsd()?;
        if !self.cfg.metrics() {
            if self.cfg.bool("redis_enabled") {
                crate::log_warning!(
                    "redis_enabled (REDIS_ENABLED) has no effect with --no-metrics: the \
                     exporter pushes to Redis, and there is none"
                );
            }
            return Ok(());
        }
        self.exporter_cfg = Some(self.exporter_settings()?);
        let (uid, gid) = (self.cfg.uid(), self.cfg.gid());
        let owner = (uid != nix::unistd::geteuid().as_raw()
            || gid != nix::unistd::getegid().as_raw())
        .then_some((uid, gid));
        let dir = self.cfg.str("prometheus_multiproc_dir").map(str::to_owned);
        let cleanup = self.cfg.bool("cleanup_db_files");
        let app_dir = Python::attach(|py| {
            crate::mpfiles::appdir::prepare(py, dir.as_deref(), cleanup, owner)
        })
        .map_err(|e| format!("metrics: {e}"))?;
        let mut app_dir = app_dir;
        if self.cfg.bool("keep_dead_worker_gauges") {
            app_dir.all_mode = crate::mpfiles::AllMode::Keep;
        }
        self.app_dir = Some(app_dir);
        Ok(())
    }

    /// The exporter's settings from the configuration, TLS files checked.
    fn exporter_settings(&self) -> Result<EnvConfig, String> {
        let c = crate::exporter::config::config_from_settings(&self.cfg)
            .map_err(|e| format!("metrics: {e}"))?;
        if let Some(tls) = &c.tls {
            crate::exporter::tls::validate(tls).map_err(|e| format!("metrics: {e}"))?;
        }
        Ok(c)
    }

    /// Forks the exporter process (metrics on, none running).
    fn spawn_exporter(&mut self) {
        let (cfg, statsd) = (self.exporter_cfg.clone(), self.statsd.clone());
        if (cfg.is_none() && statsd.is_none()) || self.exporter.is_some() {
            return;
        }
        let source = crate::exporter::collect::Source {
            shm: self.shm,
            tcp_listeners: self
                .listeners
                .iter()
                .filter(|l| matches!(l.kind, crate::sock::ListenKind::Tcp(_)))
                .map(|l| (l.fd.as_raw_fd(), shown_url(l)))
                .collect(),
            multiproc_dir: self.app_dir.as_ref().map(|d| d.path.clone()),
            version: env!("CARGO_PKG_VERSION"),
            python: self.python_version.clone(),
            worker_kind: crate::worker::kind::resolve(&self.cfg.worker_class())
                .map_or("?", |k| k.name()),
        };
        let what = match &cfg {
            Some(cfg) => {
                let scheme = if cfg.tls.is_some() { "https" } else { "http" };
                let shown = if cfg.bind_address.contains(':') && !cfg.bind_address.starts_with('[')
                {
                    format!("[{}]:{}", cfg.bind_address, cfg.port)
                } else {
                    format!("{}:{}", cfg.bind_address, cfg.port)
                };
                format!("metrics exporter for {scheme}://{shown}/metrics")
            }
            None => "metrics exporter for statsd".to_owned(),
        };
        let master_pid = self.pid;
        let forked = Python::attach(|py| {
            let title = format!("ferrocorn: exporter [{}]", self.proc_name);
            let res = crate::python::fork(py, &|| {
                title::set_title(&title);
            });
            if let Ok(nix::unistd::ForkResult::Child) = res {
                drop(self.signals.take());
                // Closes the control socket's fds (its file stays).
                drop(self.ctl.take());
                // The exporter's threads never take the GIL (this thread
                // keeps it): its log lines are written by Rust.
                crate::log::set_python(None);
                let code = crate::exporter::child::run(cfg, statsd, master_pid, source);
                std::process::exit(code);
            }
            res
        });
        match forked {
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                crate::log_info!("Starting {what} (pid: {child})");
                self.exporter = Some((child, Instant::now()));
            }
            Ok(nix::unistd::ForkResult::Child) => std::process::exit(1),
            Err(e) => {
                crate::log_error!("cannot fork the metrics exporter: {e}");
                self.exporter_not_before = Some(Instant::now() + EXPORTER_RESPAWN_DELAY);
            }
        }
    }

    /// Restarts the exporter if it died (not before its respawn delay).
    fn manage_exporter(&mut self) {
        if self.exporter.is_some() || (self.exporter_cfg.is_none() && self.statsd.is_none()) {
            return;
        }
        if self.exporter_not_before.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.exporter_not_before = None;
        self.spawn_exporter();
    }

    /// The exporter `pid` was reaped.
    fn exporter_exited(&mut self, started: Instant, status: Result<i32, Signal>, stopping: bool) {
        self.exporter = None;
        if stopping || std::mem::take(&mut self.exporter_restart) {
            return;
        }
        match status {
            Ok(code) => {
                crate::log_error!("metrics exporter exited with code {code}; restarting it")
            }
            Err(sig) => {
                crate::log_error!(
                    "metrics exporter was killed by {}; restarting it",
                    sig.as_str()
                )
            }
        }
        if started.elapsed() < EXPORTER_MIN_LIFE {
            self.exporter_not_before = Some(Instant::now() + EXPORTER_RESPAWN_DELAY);
        }
    }

    /// HUP: the exporter restarts with the new settings (the multiprocess
    /// directory and histogram bounds stay those of the start).
    fn reload_exporter(&mut self) {
        self.exporter_cfg = if self.cfg.metrics() {
            match self.exporter_settings() {
                Ok(c) => Some(c),
                Err(e) => {
                    crate::log_error!("reload: {e}; metrics are off until fixed");
                    None
                }
            }
        } else {
            None
        };
        self.statsd = self.cfg.statsd().unwrap_or_else(|e| {
            crate::log_error!("reload: {e}; statsd is off until fixed");
            None
        });
        if let Some((pid, _)) = self.exporter {
            self.exporter_restart = true;
            // HUP, not TERM: the exporter pushes to Redis once more and
            // keeps the instance's keys, as the instance lives on.
            let _ = kill(pid, Signal::SIGHUP);
        }
    }

    /// Asks the exporter to stop (it is reaped with the workers).
    fn stop_exporter(&self) {
        if let Some((pid, _)) = self.exporter {
            let _ = kill(pid, Signal::SIGTERM);
        }
    }

    fn init_signals(&mut self) -> Result<(), String> {
        let mut signals = Signals::new([
            SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGTTIN, SIGTTOU, SIGUSR1, SIGUSR2, SIGWINCH,
        ])
        .map_err(|e| format!("installing the master's signal handlers: {e}"))?;
        self.poll
            .registry()
            .register(&mut signals, SIGNAL_TOKEN, Interest::READABLE)
            .map_err(|e| format!("registering signals: {e}"))?;
        self.signals = Some(signals);
        Ok(())
    }

    /// Listening sockets: systemd's (LISTEN_FDS), a parent master's
    /// (GUNICORN_FD, after USR2), else bound from --bind.
    fn create_listeners(&mut self) -> Result<Vec<Listener>, String> {
        let n = systemd::listen_fds(true)?;
        if n > 0 {
            self.systemd = true;
            return systemd::listen_fds_range(n)
                .map(crate::sock::from_fd)
                .collect();
        }
        if let Some(fds) = reexec::inherited_fds()? {
            return fds.into_iter().map(crate::sock::from_fd).collect();
        }
        crate::sock::create_listeners(&self.cfg.bind(), &self.bind_options())
    }

    fn bind_options(&self) -> crate::sock::BindOptions {
        crate::sock::BindOptions {
            backlog: self.cfg.backlog(),
            reuse_port: self.cfg.reuse_port(),
            umask: self.cfg.umask(),
            uid: self.cfg.uid(),
            gid: self.cfg.gid(),
        }
    }

    /// gunicorn's master_name: "Master", or "Master.2" for a USR2 child.
    fn master_name(&self) -> &'static str {
        if self.master_pid.is_some() {
            "Master.2"
        } else {
            "Master"
        }
    }

    fn set_title(&self) {
        title::set_title(&format!("ferrocorn: master [{}]", self.proc_name));
    }

    fn main_loop(&mut self) -> Halt {
        let mut events = Events::with_capacity(16);
        if let Err(h) = self.manage_workers() {
            return h;
        }
        self.start_ctl();
        loop {
            if let Err(e) = self.poll.poll(&mut events, Some(self.next_wait())) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    crate::log_error!("master event loop failed: {e}");
                    return Halt::with(1, None);
                }
            }
            self.maybe_promote();
            if let Some(h) = self.serve_ctl(&events) {
                return h;
            }
            let pending: Vec<i32> = match self.signals.as_mut() {
                Some(s) => s.pending().collect(),
                None => Vec::new(),
            };
            for sig in pending {
                if let Some(h) = self.handle_signal(sig) {
                    return h;
                }
            }
            if let Err(h) = self.reap() {
                return h;
            }
            self.murder_workers();
            self.recycle_workers();
            if let Err(h) = self.manage_workers() {
                return h;
            }
            self.manage_exporter();
        }
    }

    /// One signal, as gunicorn's handle_* methods. Returns a Halt to stop.
    fn handle_signal(&mut self, sig: i32) -> Option<Halt> {
        if let Some(m) = self.shm.master() {
            m.count_signal(sig);
        }
        let name = signal_name(sig).to_lowercase();
        let name = name.trim_start_matches("sig");
        if sig == SIGCHLD {
            crate::log_debug!("Handling signal: {name}");
        } else {
            crate::log_info!("Handling signal: {name}");
        }
        match sig {
            SIGTERM => {
                return Some(Halt {
                    reason: None,
                    status: 0,
                    graceful: true,
                })
            }
            SIGINT | SIGQUIT => return Some(Halt::with(0, None)),
            SIGTTIN => return self.change_workers(self.num_workers + 1).err(),
            SIGTTOU if self.num_workers > 1 => {
                return self.change_workers(self.num_workers - 1).err()
            }
            SIGUSR1 => {
                if let Err(e) = crate::log::reopen() {
                    crate::log_error!("reopening log files: {e}");
                }
                self.kill_workers(Signal::SIGUSR1);
            }
            SIGHUP => {
                crate::log_info!("Hang up: {}", self.master_name());
                return self.reload().err();
            }
            SIGUSR2 => self.reexec(),
            SIGWINCH => {
                if self.cfg.daemon() {
                    crate::log_info!("graceful stop of workers");
                    if let Err(h) = self.change_workers(0) {
                        return Some(h);
                    }
                } else {
                    crate::log_debug!("SIGWINCH ignored. Not daemonized");
                }
            }
            _ => {}
        }
        None
    }

    /// gunicorn 26.1's reload of the logger configuration: the new
    /// `logconfig*` and `loglevel` settings apply (the new workers inherit
    /// them); one that fails is reported on stderr and the previous
    /// configuration is applied again, so the master keeps running.
    fn reload_python_logging(&self, old: &Config) {
        Python::attach(|py| {
            let Err(e) = crate::python::pylog::apply(py, &python_logging(py, &self.cfg)) else {
                return;
            };
            eprintln!(
                "\nError: reloading the logger configuration failed, keeping the previous one\n{e}"
            );
            match crate::python::pylog::apply(py, &python_logging(py, old)) {
                Ok(()) => crate::log_error!(
                    "reloading the logger configuration failed, keeping the previous one"
                ),
                Err(e) => {
                    eprintln!("Error: restoring the previous logger configuration failed\n{e}")
                }
            }
        });
    }

    fn change_workers(&mut self, n: usize) -> Result<(), Halt> {
        let old = self.num_workers;
        self.num_workers = n;
        self.hook_result(|h, py, sv| h.nworkers_changed(py, sv, n, Some(old)))
    }

    /// gunicorn's reload(): re-read the configuration, reopen logs, rebind
    /// if the addresses changed, on_reload, new pidfile, then new workers:
    /// a rolling reload (`reload_strategy = rolling`, src/arbiter/rollout.rs)
    /// or, with `all`, every old worker retired once the new ones are
    /// spawned. The one entry point of a reload (HUP, or any other trigger).
    fn reload(&mut self) -> Result<(), Halt> {
        if let Some(m) = self.shm.master() {
            m.count_reload();
        }
        let loaded = Python::attach(|py| {
            // Undo the previous -e/raw_env so removed variables disappear.
            for (k, _) in self.cfg.raw_env() {
                match self
                    .ctx
                    .env_orig
                    .iter()
                    .find(|(n, _)| n.to_str() == Some(k.as_str()))
                {
                    Some((_, v)) => std::env::set_var(&k, v),
                    None => std::env::remove_var(&k),
                }
            }
            Config::load(py, self.argv.clone())
        });
        let cfg = match loaded {
            Ok(Loaded::Run(cfg)) => cfg,
            Ok(Loaded::Exit(_)) => return Ok(()),
            Err(e) => {
                crate::log_error!("reload failed, keeping the current configuration: {e}");
                if let Some(m) = self.shm.master() {
                    m.count_reload_failure();
                }
                return Ok(());
            }
        };
        let old_binds = self.cfg.bind();
        let old_workers = self.num_workers;
        let old_cfg = std::mem::replace(&mut self.cfg, cfg);
        if self.cfg.bool("spew") {
            Python::attach(crate::python::spew);
        }
        Python::attach(|py| {
            for (k, v) in self.cfg.raw_env() {
                let _ = crate::python::set_environ(py, &k, &v);
            }
            if let Err(e) = self.cfg.apply_env_sources() {
                crate::log_error!("reload: {e}");
            }
            if let Some(h) = Arc::get_mut(&mut self.hooks) {
                if let Err(e) = h.update_config(py, &self.cfg) {
                    crate::log_error!("reload: {}", crate::python::format_err(py, &e));
                }
            }
        });
        for w in self.cfg.warnings() {
            crate::log_warning!("{w}");
        }
        self.num_workers = self.cfg.workers().max(1);
        let (n, old) = (self.num_workers, old_workers);
        self.hook_result(|h, py, sv| h.nworkers_changed(py, sv, n, Some(old)))?;
        if let Err(e) = crate::log::reopen() {
            crate::log_error!("reopening log files: {e}");
        }
        // The new workers may run as another user or log to another access
        // log: give them the files, as gunicorn's reload runs Logger.setup.
        if let Err(e) = crate::log::syslog::configure(self.cfg.syslog()) {
            crate::log_error!("reload: {e}");
        }
        if let Err(e) = crate::log::prepare_files(
            self.cfg.accesslog().as_deref(),
            &self.cfg.access_log_format(),
            self.cfg.uid(),
            self.cfg.gid(),
        ) {
            crate::log_error!("reload: {e}");
        }
        self.reload_python_logging(&old_cfg);
        if old_binds != self.cfg.bind() && !self.systemd {
            match crate::sock::create_listeners(&self.cfg.bind(), &self.bind_options()) {
                Ok(new) => {
                    crate::sock::unlink_owned(&self.listeners);
                    self.listeners = new;
                    let urls: Vec<String> = self.listeners.iter().map(shown_url).collect();
                    crate::log_info!("Listening at: {}", urls.join(","));
                }
                Err(e) => crate::log_error!("reload: keeping the old listeners: {e}"),
            }
        }
        // A TLS configuration that no longer builds keeps the last one.
        if let Err(e) = self.setup_tls() {
            crate::log_error!("reload: keeping the previous TLS configuration: {e}");
        }
        self.hook_result(|h, py, sv| h.on_reload(py, sv))?;
        if let Some(pf) = &self.pidfile {
            pf.unlink();
        }
        self.pidfile = None;
        if let Some(path) = self.cfg.pidfile() {
            let mut pf = Pidfile::new(path);
            match pf.create(self.pid as i32) {
                Ok(()) => self.pidfile = Some(pf),
                Err(e) => crate::log_error!("{e}"),
            }
        }
        self.proc_name = self.cfg.proc_name();
        self.set_title();
        self.reload_exporter();
        self.generation += 1;
        if self.cfg.rolling_reload() {
            self.start_rollout();
            return Ok(());
        }
        self.rollout = None;
        // gunicorn's way: retire every current worker once replacements are
        // forked.
        let old: Vec<Pid> = self.workers.keys().copied().collect();
        for _ in 0..self.num_workers {
            self.spawn_worker()?;
        }
        for pid in old {
            if let Some(w) = self.workers.get_mut(&pid) {
                if w.retired.is_none() {
                    w.retired = Some("reload");
                    let _ = kill(pid, Signal::SIGTERM);
                }
            }
        }
        Ok(())
    }

    /// gunicorn's reexec(): fork a child that runs pre_exec and execs this
    /// binary with the listening sockets inherited (GUNICORN_FD).
    fn reexec(&mut self) {
        if self.reexec_pid.is_some() {
            crate::log_warning!("USR2 signal ignored. Child exists.");
            return;
        }
        if self.master_pid.is_some() {
            crate::log_warning!("USR2 signal ignored. Parent exists.");
            return;
        }
        let forked = Python::attach(|py| {
            let res = crate::python::fork(py, &|| {});
            if let Ok(nix::unistd::ForkResult::Child) = res {
                drop(self.signals.take());
                // Closes the control socket's fds (its file stays).
                drop(self.ctl.take());
                let code = self.exec_new_master(py);
                std::process::exit(code);
            }
            res
        });
        match forked {
            Ok(nix::unistd::ForkResult::Parent { child }) => self.reexec_pid = Some(child),
            Ok(nix::unistd::ForkResult::Child) => std::process::exit(1),
            Err(e) => crate::log_error!("fork for USR2 failed: {e}"),
        }
    }

    /// In the USR2 child: pre_exec, then execve. Returns only on failure.
    fn exec_new_master(&self, py: Python<'_>) -> i32 {
        let failed = self.with_server(|sv| self.hooks.pre_exec(py, sv)).is_err();
        if failed {
            return MAIN_LOOP_FAILURE;
        }
        let fds: Vec<i32> = self.listeners.iter().map(|l| l.fd.as_raw_fd()).collect();
        let mut env = reexec::reexec_env(
            &self.ctx.env_orig,
            self.pid,
            &fds,
            self.systemd,
            std::process::id(),
        );
        // The environment is the one ferrocorn started with (gunicorn's
        // env_orig), which lacks the private metrics directory: hand it on,
        // so the new master keeps the counts and removes it at its exit.
        if let Some(dir) = &self.app_dir {
            for (k, v) in dir.handover_env() {
                reexec::set_var(&mut env, k, v);
            }
        }
        if let Err(e) = reexec::prepare_inherit(&fds) {
            crate::log_error!("{e}");
            return 1;
        }
        match reexec::exec_self(&self.ctx, &env) {
            Ok(never) => match never {},
            Err(e) => {
                crate::log_error!("{e}");
                1
            }
        }
    }

    /// A master started by USR2 takes over once the old one has exited.
    fn maybe_promote(&mut self) {
        let Some(old) = self.master_pid else { return };
        if !reexec::promoted(old) {
            return;
        }
        crate::log_info!("Master has been promoted.");
        reexec::forget_master_pid();
        self.master_pid = None;
        self.proc_name = self.cfg.proc_name();
        if let (Some(pf), Some(path)) = (&mut self.pidfile, self.cfg.pidfile()) {
            if let Err(e) = pf.rename(path) {
                crate::log_error!("{e}");
            }
        }
        self.set_title();
    }

    /// Collects exited workers and records why each left; a boot or
    /// app-load failure stops the master instead of respawning forever.
    fn reap(&mut self) -> Result<(), Halt> {
        self.reap_workers(false)
    }

    /// gunicorn's reap_workers; while `stopping`, exit codes no longer halt
    /// (the master is already stopping) but child_exit still runs.
    fn reap_workers(&mut self, stopping: bool) -> Result<(), Halt> {
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
            if Some(pid) == self.reexec_pid {
                // The new master died: this one stays in charge.
                crate::log_error!("New master (pid:{pid}) exited: {status:?}");
                self.reexec_pid = None;
                continue;
            }
            if let Some((_, started)) = self.exporter.filter(|(p, _)| *p == pid) {
                self.exporter_exited(started, status, stopping);
                continue;
            }
            let Some(w) = self.workers.remove(&pid) else {
                continue;
            };
            let cause = self.exit_cause(pid, &w, status);
            let view = self.worker_view(pid, &w);
            // A new worker of a rolling reload that never got ready stops
            // the rollout, not the server.
            let rollout_failure = !stopping
                && !w.seen_ready
                && self
                    .rollout
                    .as_ref()
                    .is_some_and(|r| w.generation == r.generation && w.retired.is_none());
            self.shm.release(w.slot);
            if let Some(dir) = &self.app_dir {
                dir.compact(pid.as_raw() as u32);
            }
            let label = match &cause {
                Cause::Reason(r) => (*r).to_owned(),
                Cause::Killed(sig) => sig.as_str().to_owned(),
            };
            *self.restarts.entry(label).or_default() += 1;
            if let (false, Some(m)) = (stopping, self.shm.master()) {
                match cause {
                    Cause::Reason(r) => m.count_restart(r),
                    Cause::Killed(sig) => m.count_killed_by(sig as i32),
                }
            }
            match status {
                _ if stopping => {}
                _ if rollout_failure => self.abort_rollout(pid, status),
                Ok(WORKER_BOOT_ERROR | APP_LOAD_ERROR) if self.reload_failed => {
                    crate::log_error!(
                        "Worker (pid:{pid}) failed to boot after a failed reload: the server \
                         keeps running with the workers it has and tries again in {} s; fix \
                         the cause and send HUP",
                        BOOT_RETRY_DELAY.as_secs()
                    );
                    self.spawn_not_before = Some(Instant::now() + BOOT_RETRY_DELAY);
                }
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
            self.hook_result(|h, py, sv| h.child_exit(py, sv, &view))?;
        }
    }

    /// The cause of a worker's exit, logged as gunicorn does and returned for
    /// the `reason` label of gunicorn_master_worker_restarts_total.
    fn exit_cause(&self, pid: Pid, w: &WorkerProc, status: Result<i32, Signal>) -> Cause {
        let slot_reason = self.shm.slot(w.slot).map(|s| s.exit_reason());
        match status {
            Err(sig) => {
                if sig == Signal::SIGKILL {
                    crate::log_error!(
                        "Worker (pid:{pid}) was sent SIGKILL! Perhaps out of memory?"
                    );
                } else {
                    crate::log_error!("Worker (pid:{pid}) was sent {}!", sig.as_str());
                }
                match sig {
                    _ if w.aborted => Cause::Reason("timeout"),
                    Signal::SIGSEGV
                    | Signal::SIGBUS
                    | Signal::SIGILL
                    | Signal::SIGFPE
                    | Signal::SIGABRT => Cause::Reason("crash"),
                    _ => Cause::Killed(sig),
                }
            }
            Ok(code) if w.aborted => {
                crate::log_info!("Worker (pid:{pid}) exited after a timeout abort (code {code}).");
                Cause::Reason("timeout")
            }
            Ok(0) if slot_reason == Some(ExitReason::MaxRequests) => {
                crate::log_info!("Worker (pid:{pid}) exited after max_requests.");
                Cause::Reason("max_requests")
            }
            Ok(0) => match w.retired {
                Some(r) => Cause::Reason(r),
                None => {
                    crate::log_info!("Worker (pid:{pid}) exited.");
                    Cause::Reason("exit")
                }
            },
            Ok(code) => {
                crate::log_error!("Worker (pid:{pid}) exited with code {code}.");
                Cause::Reason("exit_code")
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
                // The worker's abort handler logs its Python stacks and the
                // request in flight; this says how long that request ran.
                crate::log_error!(
                    "Worker (pid:{pid}) gave no sign of life for {:.1} s (--timeout {} s): its request has run at least that long",
                    silent as f64 / 1000.0,
                    timeout_ms / 1000
                );
                w.aborted = true;
                let _ = kill(*pid, Signal::SIGABRT);
            } else {
                let _ = kill(*pid, Signal::SIGKILL);
            }
        }
    }

    /// max_worker_lifetime plus up to max_worker_lifetime_jitter seconds,
    /// to the millisecond, different per worker (a hash of its pid, as the
    /// max_requests jitter).
    fn lifetime_deadline(&self, pid: Pid) -> Option<Instant> {
        let (secs, jitter) = self.cfg.max_worker_lifetime();
        if secs == 0 {
            return None;
        }
        let jitter_ms = jitter.saturating_mul(1000);
        let extra = if jitter_ms > 0 {
            (pid.as_raw() as u64).wrapping_mul(2_654_435_761) % (jitter_ms + 1)
        } else {
            0
        };
        let life = Duration::from_secs(secs).saturating_add(Duration::from_millis(extra));
        Some(Instant::now() + life)
    }

    /// How long the loop may sleep: a second (signals wake it sooner), a
    /// tenth with max_worker_memory (an app that leaks fast overshoots the
    /// limit by at most what it takes in that time), or less when a
    /// worker's lifetime ends first.
    fn next_wait(&self) -> Duration {
        let now = Instant::now();
        let tick = if self.rollout.is_some() {
            ROLLOUT_TICK
        } else if self.cfg.max_worker_memory() > 0 {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        let tick = match self.spawn_not_before {
            Some(t) => tick.min(t.saturating_duration_since(now)),
            None => tick,
        };
        self.workers
            .values()
            .filter(|w| w.retired.is_none())
            .filter_map(|w| w.expires)
            .map(|t| t.saturating_duration_since(now))
            .fold(tick, Duration::min)
    }

    /// Replaces workers past max_worker_lifetime or max_worker_memory:
    /// TERM, so each finishes its requests, while a new one is spawned at
    /// once in its place. Memory is read from /proc, by the master, about
    /// ten times a second, and only of workers that finished booting (an app
    /// whose import alone is over the limit would restart forever).
    fn recycle_workers(&mut self) {
        let mem_limit_mb = self.cfg.max_worker_memory();
        let now = Instant::now();
        for (pid, w) in self.workers.iter_mut() {
            if w.retired.is_some() || w.aborted {
                continue;
            }
            if w.expires.is_some_and(|t| now >= t) {
                crate::log_info!("Worker (pid:{pid}) reached max_worker_lifetime: replacing it");
                w.retired = Some("lifetime");
                let _ = kill(*pid, Signal::SIGTERM);
                continue;
            }
            if mem_limit_mb == 0 {
                continue;
            }
            let booted = self.shm.slot(w.slot).is_some_and(Slot::ready);
            if !booted {
                continue;
            }
            let Some(rss) = crate::process::rss_bytes(pid.as_raw()) else {
                continue;
            };
            let rss_mb = rss / (1024 * 1024);
            if rss_mb > mem_limit_mb {
                crate::log_warning!(
                    "Worker (pid:{pid}) uses {rss_mb} MB, over max_worker_memory ({mem_limit_mb} MB): replacing it"
                );
                w.retired = Some("memory");
                let _ = kill(*pid, Signal::SIGTERM);
            }
        }
    }

    /// Spawns or retires workers until their number is `num_workers`; while
    /// a rolling reload runs, its plan decides instead.
    fn manage_workers(&mut self) -> Result<(), Halt> {
        if self.spawn_not_before.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        self.spawn_not_before = None;
        if self.rollout.is_some() {
            return self.step_rollout();
        }
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

    /// Gracefully stops the oldest active worker, as gunicorn does for TTOU;
    /// it stays in the table until it is reaped.
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
        let Some(slot_idx) = self.shm.claim(age) else {
            crate::log_error!("no free worker slot in shared memory ({SHM_SLOTS} workers at most)");
            return Ok(());
        };
        let booting = self.new_worker_view(0, age);
        if let Err(h) = self.hook_result(|h, py, sv| h.pre_fork(py, sv, &booting)) {
            self.shm.release(slot_idx);
            return Err(h);
        }
        let forked = Python::attach(|py| {
            self.freeze_before_fork(py);
            let title = format!("ferrocorn: worker [{}]", self.proc_name);
            let res = crate::python::fork(py, &|| {
                title::set_title(&title);
            });
            if let Ok(nix::unistd::ForkResult::Child) = res {
                // The child must not see the master's signals: dropping them
                // unregisters signal-hook's actions and the self-pipe.
                drop(self.signals.take());
                // Closes the control socket's fds (its file stays).
                drop(self.ctl.take());
                let code = self.run_worker(py, slot_idx, age);
                flush_python_stdio(py);
                std::process::exit(code);
            }
            res
        });
        match forked {
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                if let Some(slot) = self.shm.slot(slot_idx) {
                    // Visible to the exporter from the fork on (the
                    // worker stores it too, first thing).
                    slot.pid
                        .store(child.as_raw() as u32, std::sync::atomic::Ordering::Relaxed);
                }
                self.workers.insert(
                    child,
                    WorkerProc {
                        age,
                        slot: slot_idx,
                        aborted: false,
                        retired: None,
                        expires: self.lifetime_deadline(child),
                        generation: self.generation,
                        seen_ready: false,
                    },
                );
                Ok(())
            }
            Ok(nix::unistd::ForkResult::Child) => std::process::exit(1),
            Err(e) => {
                self.shm.release(slot_idx);
                crate::log_error!("fork failed: {e}");
                Err(Halt::with(1, Some(format!("fork failed: {e}"))))
            }
        }
    }

    /// preload_freeze: gc.freeze() right before forking a worker (the
    /// objects the master made since the last fork join the frozen ones),
    /// then automatic collection back on if the import paused it: the
    /// worker inherits it on. See src/python/gc.rs.
    fn freeze_before_fork(&mut self, py: Python<'_>) {
        if self.app.is_none() || !self.cfg.preload_freeze() {
            if let Some(p) = self.gc_paused.take() {
                if let Err(e) = p.resume(py) {
                    crate::log_warning!("gc: {}", crate::python::format_err(py, &e));
                }
            }
            return;
        }
        match crate::python::gc::freeze(py) {
            Ok(n) if n != self.frozen => {
                if self.frozen == 0 {
                    crate::log_info!(
                        "Preloaded app frozen for copy-on-write: gc.freeze() moved {n} objects \
                         out of the collector's reach (--no-preload-freeze turns this off)"
                    );
                } else {
                    crate::log_debug!("gc.freeze(): {n} objects frozen");
                }
                self.frozen = n;
            }
            Ok(_) => {}
            Err(e) => crate::log_warning!(
                "preload_freeze: gc.freeze() failed: {}",
                crate::python::format_err(py, &e)
            ),
        }
        if let Some(p) = self.gc_paused.take() {
            if let Err(e) = p.resume(py) {
                crate::log_warning!(
                    "preload_freeze: cannot restore the garbage collector: {}",
                    crate::python::format_err(py, &e)
                );
            }
        }
    }

    /// The worker side of a fork (titled by then): user switch, post_fork, then the
    /// worker proper. Returns the exit code.
    fn run_worker(&self, py: Python<'_>, slot_idx: usize, age: u64) -> i32 {
        let (Some(slot), Some(metrics), Some(errors), Some(in_flight)) = (
            self.shm.slot(slot_idx),
            self.shm.metrics(slot_idx),
            self.shm.errors(slot_idx),
            self.shm.in_flight(slot_idx),
        ) else {
            return WORKER_BOOT_ERROR;
        };
        let me = self.new_worker_view(std::process::id(), age);
        crate::log_info!("Booting worker with pid: {}", me.pid);
        let post_fork = self.with_server(|sv| self.hooks.post_fork(py, sv, &me));
        if let Err(e) = post_fork {
            return e.system_exit.unwrap_or(WORKER_BOOT_ERROR);
        }
        // gunicorn's init_process: switch user/group (only when they differ).
        let (uid, gid) = (self.cfg.uid(), self.cfg.gid());
        if let Err(e) = crate::process::user::set_owner_process(uid, gid, self.cfg.initgroups()) {
            crate::log_error!("Exception in worker process: {e}");
            return WORKER_BOOT_ERROR;
        }
        let app = self.app.as_ref().map(|a| a.clone_ref(py));
        let code = worker::run(worker::Spawn {
            cfg: &self.cfg,
            listeners: &self.listeners,
            app,
            slot,
            metrics,
            errors,
            in_flight,
            hooks: Arc::clone(&self.hooks),
            view: me,
        });
        let mut done = me;
        done.alive = false;
        done.booted = slot.state() != State::Booting;
        done.nr = slot.requests.load(std::sync::atomic::Ordering::Relaxed);
        let _ = self.with_server(|sv| self.hooks.worker_exit(py, sv, &done));
        code
    }

    fn kill_workers(&self, sig: Signal) {
        for pid in self.workers.keys() {
            let _ = kill(*pid, sig);
        }
    }

    /// Stops everything and returns the exit status (gunicorn's halt()).
    fn halt(&mut self, halt: Halt) -> i32 {
        self.stop_ctl();
        self.stop(halt.graceful);
        crate::log_debug!("worker exits by cause: {:?}", self.restarts);
        if let Some(retired) = self.shm.retired() {
            crate::log_debug!("requests served by all workers: {}", retired.requests());
        }
        if let Some(reason) = &halt.reason {
            crate::log_info!("Reason: {reason}");
        }
        if let Some(pf) = &self.pidfile {
            pf.unlink();
        }
        // A new master started by USR2 carries on with the directory.
        if let (Some(dir), None) = (&self.app_dir, self.reexec_pid) {
            dir.remove();
        }
        let on_exit = self.with_server(|sv| Python::attach(|py| self.hooks.on_exit(py, sv)));
        match (halt.status, on_exit) {
            (0, Err(e)) => e.system_exit.unwrap_or(1),
            (status, _) => status,
        }
    }

    /// gunicorn's stop(): TERM (graceful) or QUIT (quick) to every worker,
    /// wait up to --graceful-timeout, then SIGKILL what is left.
    fn stop(&mut self, graceful: bool) {
        // Close the listeners first, as gunicorn: connections still queued
        // in the backlog are refused once the workers let go too. A new
        // master started by USR2 keeps using the sockets: leave their files.
        if self.reexec_pid.is_none() && self.master_pid.is_none() {
            crate::sock::unlink_owned(&self.listeners);
        }
        self.listeners.clear();
        self.stop_exporter();
        crate::log_info!("Shutting down: Master");
        let sig = if graceful {
            Signal::SIGTERM
        } else {
            Signal::SIGQUIT
        };
        self.kill_workers(sig);
        let limit = Instant::now() + Duration::from_secs(self.cfg.graceful_timeout());
        while !self.workers.is_empty() && Instant::now() < limit {
            let _ = self.reap_workers(true);
            if self.workers.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill_workers(Signal::SIGKILL);
        // The exporter's last Redis push waits for the workers to be reaped
        // (it carries their final counts): give it a moment before SIGKILL.
        // Without Redis it has exited on TERM already.
        let limit = Instant::now() + EXPORTER_STOP_GRACE;
        while self.exporter.is_some() && Instant::now() < limit {
            let _ = self.reap_workers(true);
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some((pid, _)) = self.exporter {
            let _ = kill(pid, Signal::SIGKILL);
        }
        let limit = Instant::now() + Duration::from_secs(5);
        while (!self.workers.is_empty() || self.exporter.is_some()) && Instant::now() < limit {
            let _ = self.reap_workers(true);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    // -- hooks ----------------------------------------------------------------

    fn new_worker_view(&self, pid: u32, age: u64) -> WorkerView {
        WorkerView {
            pid,
            ppid: self.pid,
            age,
            nr: 0,
            alive: true,
            booted: false,
            aborted: false,
            max_requests: self.cfg.max_requests(),
            timeout: self.cfg.timeout(),
        }
    }

    fn worker_view(&self, pid: Pid, w: &WorkerProc) -> WorkerView {
        let slot = self.shm.slot(w.slot);
        WorkerView {
            pid: pid.as_raw() as u32,
            nr: slot.map_or(0, |s| s.requests.load(std::sync::atomic::Ordering::Relaxed)),
            alive: w.retired.is_none(),
            booted: slot.is_some_and(|s| !matches!(s.state(), State::Booting | State::Free)),
            aborted: w.aborted,
            ..self.new_worker_view(pid.as_raw() as u32, w.age)
        }
    }

    /// Builds gunicorn's `server` view for a hook call.
    fn with_server<R>(&self, f: impl FnOnce(&ServerView<'_>) -> R) -> R {
        let workers: Vec<WorkerView> = self
            .workers
            .iter()
            .map(|(p, w)| self.worker_view(*p, w))
            .collect();
        let urls: Vec<String> = self.listeners.iter().map(shown_url).collect();
        let listeners: Vec<ListenerView<'_>> = self
            .listeners
            .iter()
            .zip(&urls)
            .map(|(l, u)| ListenerView {
                fd: l.fd.as_raw_fd(),
                url: u,
            })
            .collect();
        let pidfile = self
            .pidfile
            .as_ref()
            .map(|p| p.path().to_string_lossy().into_owned());
        f(&ServerView {
            pid: self.pid,
            num_workers: self.num_workers,
            workers: &workers,
            pidfile: pidfile.as_deref(),
            proc_name: &self.proc_name,
            listeners: &listeners,
        })
    }

    /// Calls a master hook; a failing one stops the master as it would stop
    /// gunicorn's (the hooks module logged it). A hook may also set
    /// `server.num_workers`.
    fn hook_result(
        &mut self,
        call: impl FnOnce(&Hooks, Python<'_>, &ServerView<'_>) -> Result<(), HookError>,
    ) -> Result<(), Halt> {
        let hooks = Arc::clone(&self.hooks);
        let (res, asked) = Python::attach(|py| {
            let res = self.with_server(|sv| call(&hooks, py, sv));
            (res, hooks.take_num_workers(py))
        });
        if let Some(n) = asked {
            self.num_workers = n;
        }
        res.map_err(|e| match e.system_exit {
            Some(code) => Halt::with(code, None),
            None => Halt::with(MAIN_LOOP_FAILURE, None),
        })
    }
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

/// A listener as gunicorn shows it (the log, `server.LISTENERS`, the
/// metrics' `listener` label): https:// when TLS is on.
fn shown_url(l: &Listener) -> String {
    let url = l.url();
    match url.strip_prefix("http://") {
        Some(rest) if crate::tls::listener::current().is_some() => format!("https://{rest}"),
        _ => url,
    }
}
