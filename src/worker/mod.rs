//! Worker processes: what every worker kind does after the fork (signals,
//! loading the app, exit codes), then the kind's own loop.

pub mod kind;
pub mod sync;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pyo3::prelude::*;

use crate::config::Config;
use crate::hooks::{Hooks, WorkerView};
use crate::metrics::store::WorkerMetrics;
use crate::shm::ErrorTable;
use crate::shm::{ExitReason, Slot, State};
use crate::sock::{ListenKind, Listener};

/// gunicorn's exit codes, which the master acts on.
pub const WORKER_BOOT_ERROR: i32 = 3;
pub const APP_LOAD_ERROR: i32 = 4;

/// What the master hands a new worker.
pub struct Spawn<'a> {
    pub cfg: &'a Config,
    pub listeners: &'a [Listener],
    /// The app, when --preload loaded it in the master.
    pub app: Option<Py<PyAny>>,
    /// This worker's slot in shared memory (heartbeat, state).
    pub slot: &'static Slot,
    pub metrics: &'static WorkerMetrics,
    /// The slot's failed-request table.
    pub errors: &'static ErrorTable,
    pub hooks: Arc<Hooks>,
    /// The worker as hooks see it at boot (pid, age, ...).
    pub view: WorkerView,
}

/// What every worker kind receives besides the config and the app.
pub struct Context {
    pub slot: &'static Slot,
    /// The slot's request metrics in shared memory.
    pub metrics: &'static WorkerMetrics,
    pub errors: &'static ErrorTable,
    pub hooks: Arc<Hooks>,
    pub view: WorkerView,
    /// Set by SIGTERM (registered right after the fork).
    pub term: Arc<AtomicBool>,
}

/// The worker's live view for a hook: counters from its shared-memory slot.
pub fn live_view(base: &WorkerView, slot: &Slot, alive: bool, booted: bool) -> WorkerView {
    WorkerView {
        nr: slot.requests.load(Ordering::Relaxed),
        alive,
        booted,
        ..*base
    }
}

/// A listener as a worker sees it.
pub struct WorkerListener {
    pub fd: RawFd,
    pub kind: ListenKind,
}

/// Runs a worker to completion; the return value is the process exit code.
pub fn run(spawn: Spawn<'_>) -> i32 {
    let pid = std::process::id();
    let slot = spawn.slot;
    slot.pid.store(pid, Ordering::Relaxed);
    slot.set_state(State::Booting);
    let hooks = spawn.hooks;
    let base = spawn.view;
    // TERM is caught from the first moment (the master's handlers were just
    // dropped): the pipe in the loop wakes it later; the flag is read between
    // requests, so a TERM stops the worker after its current request, and a
    // TERM during boot right after the app is loaded.
    let term = Arc::new(AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&term)) {
        crate::log_error!("Exception in worker process: installing the TERM handler: {e}");
        return WORKER_BOOT_ERROR;
    }
    if !crate::process::die_with_master(base.ppid) {
        crate::log_info!("Parent changed, shutting down: Worker (pid:{pid})");
        return 0;
    }
    let code = Python::attach(|py| {
        if let Err(e) = install_signal_handlers(py, slot, &hooks, base) {
            crate::log_error!(
                "Exception in worker process: {}",
                crate::python::format_err(py, &e)
            );
            return WORKER_BOOT_ERROR;
        }
        let app = match spawn.app {
            Some(app) => app,
            None => match load_app(py, spawn.cfg) {
                Ok(app) => app,
                Err(code) => return code,
            },
        };
        hooks.set_wsgi(py, app.bind(py));
        if let Err(e) = hooks.post_worker_init(py, &live_view(&base, slot, true, false)) {
            return e.system_exit.unwrap_or(WORKER_BOOT_ERROR);
        }
        let listeners: Vec<WorkerListener> = spawn
            .listeners
            .iter()
            .map(|l| WorkerListener {
                fd: l.fd.as_raw_fd(),
                kind: l.kind.clone(),
            })
            .collect();
        match sync::SyncWorker::new(
            py,
            spawn.cfg,
            listeners,
            app,
            Context {
                slot,
                metrics: spawn.metrics,
                errors: spawn.errors,
                hooks: Arc::clone(&hooks),
                view: base,
                term,
            },
        ) {
            Ok(mut w) => w.run(py),
            Err(e) => {
                crate::log_error!("Exception in worker process: {e}");
                WORKER_BOOT_ERROR
            }
        }
    });
    if slot.exit_reason() == ExitReason::Unknown {
        slot.set_exit_reason(ExitReason::Shutdown);
    }
    slot.set_state(State::Quitting);
    crate::log_info!("Worker exiting (pid: {pid})");
    code
}

/// gunicorn's worker.handle_abort and handle_quit: the master sends SIGABRT
/// to a worker silent past --timeout, and SIGQUIT (or the user SIGINT) for a
/// quick stop. Python-level handlers run at the next bytecode boundary, even
/// inside the app: they call worker_abort / worker_int, then end the worker
/// with SystemExit (1, resp. 0).
fn install_signal_handlers(
    py: Python<'_>,
    slot: &'static Slot,
    hooks: &Arc<Hooks>,
    base: WorkerView,
) -> PyResult<()> {
    let h = Arc::clone(hooks);
    let on_abort = pyo3::types::PyCFunction::new_closure(py, None, None, move |args, _kwargs| {
        slot.set_state(State::Aborting);
        let view = WorkerView {
            aborted: true,
            ..live_view(&base, slot, false, true)
        };
        let _ = h.worker_abort(args.py(), &view);
    })?;
    let h = Arc::clone(hooks);
    let on_quit = pyo3::types::PyCFunction::new_closure(py, None, None, move |args, _kwargs| {
        slot.set_state(State::Quitting);
        let _ = h.worker_int(args.py(), &live_view(&base, slot, false, true));
    })?;
    let boot = crate::python::boot(py)?;
    boot.getattr("install_abort_handler")?.call1((on_abort,))?;
    boot.getattr("install_quit_handler")?.call1((on_quit,))?;
    Ok(())
}

/// Imports the app; on failure logs as gunicorn does and returns the exit code.
pub fn load_app(py: Python<'_>, cfg: &Config) -> Result<Py<PyAny>, i32> {
    let Some(uri) = cfg.app_uri() else {
        crate::log_error!("No application module specified.");
        return Err(APP_LOAD_ERROR);
    };
    crate::python::import_app(py, uri).map_err(|e| {
        if let Some(code) = system_exit_code(py, &e) {
            // Aborted while booting (timeout) or the app exited on import.
            return code;
        }
        if crate::python::is_app_import_error(py, &e) {
            crate::log_debug!(
                "Exception while loading the application: {}",
                crate::python::format_err(py, &e)
            );
            crate::log_error!("{}", e.value(py));
            APP_LOAD_ERROR
        } else {
            crate::log_error!(
                "Exception in worker process\n{}",
                crate::python::format_err(py, &e)
            );
            WORKER_BOOT_ERROR
        }
    })
}

/// The exit code a SystemExit asks for, if `e` is one.
pub fn system_exit_code(py: Python<'_>, e: &PyErr) -> Option<i32> {
    if !e.is_instance_of::<pyo3::exceptions::PySystemExit>(py) {
        return None;
    }
    let code = e.value(py).getattr("code").ok()?;
    if code.is_none() {
        return Some(0);
    }
    Some(code.extract::<i32>().unwrap_or(1))
}
