//! Worker processes: what every worker kind does after the fork (signals,
//! loading the app, exit codes), then the kind's own loop.

pub mod kind;
pub mod sync;

use std::os::fd::{AsRawFd, RawFd};

use pyo3::prelude::*;

use crate::config::Config;
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
    slot.pid.store(pid, std::sync::atomic::Ordering::Relaxed);
    slot.set_state(State::Booting);
    crate::log_info!("Booting worker with pid: {pid}");
    let code = Python::attach(|py| {
        if let Err(e) = install_abort_handler(py, slot) {
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
        let listeners: Vec<WorkerListener> = spawn
            .listeners
            .iter()
            .map(|l| WorkerListener {
                fd: l.fd.as_raw_fd(),
                kind: l.kind.clone(),
            })
            .collect();
        match sync::SyncWorker::new(py, spawn.cfg, listeners, app, slot) {
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
/// inside the app, and end the worker with SystemExit (1, resp. 0).
fn install_abort_handler(py: Python<'_>, slot: &'static Slot) -> PyResult<()> {
    let on_abort = pyo3::types::PyCFunction::new_closure(py, None, None, move |_args, _kwargs| {
        slot.set_state(State::Aborting);
    })?;
    let on_quit = pyo3::types::PyCFunction::new_closure(py, None, None, move |_args, _kwargs| {
        slot.set_state(State::Quitting);
    })?;
    let boot = crate::python::boot(py)?;
    boot.getattr("install_abort_handler")?.call1((on_abort,))?;
    boot.getattr("install_quit_handler")?.call1((on_quit,))?;
    Ok(())
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
