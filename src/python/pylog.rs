//! Python logging configuration (`logconfig`, `logconfig_dict`,
//! `logconfig_json`): when one is set, the error-log and access-log records
//! go through Python's `logging` under the loggers `gunicorn.error` and
//! `gunicorn.access`, configured as gunicorn 27's `glogging.Logger.setup`
//! configures them (boot.py's `setup_logging`), so the user's handlers and
//! formatters see records with gunicorn's fields.
//!
//! The master configures Python's logging at start and on HUP, then turns
//! the Rust log's forwarding on ([`crate::log::set_python`]); the workers
//! inherit both through fork. Without these settings nothing here runs and
//! the Rust log writes the lines itself.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::log::access::{AccessLog, AccessRecord, AtomValue};
use crate::log::Level;

/// What `setup_logging` needs of a configuration.
pub struct Settings {
    pub loglevel: String,
    /// `-` for stderr.
    pub errorlog: String,
    pub accesslog: Option<String>,
    pub access_format: String,
    pub logconfig: Option<String>,
    /// The `logconfig_dict` object (None when empty).
    pub logconfig_dict: Option<Py<PyAny>>,
    pub logconfig_json: Option<String>,
}

impl Settings {
    /// Whether the records go through Python's logging (gunicorn's
    /// `cfg.logconfig or cfg.logconfig_dict or cfg.logconfig_json`).
    pub fn active(&self) -> bool {
        self.logconfig.is_some() || self.logconfig_dict.is_some() || self.logconfig_json.is_some()
    }
}

/// Applies `s` in the master (start, HUP). With a logging configuration,
/// Python's logging is set up as gunicorn does and the Rust log forwards
/// to it; without one, the Rust log writes the lines itself again. On
/// failure (gunicorn's RuntimeError messages: a missing `logconfig` file,
/// a dictConfig error naming the handler) nothing is switched and the
/// message is returned.
pub fn apply(py: Python<'_>, s: &Settings) -> Result<(), String> {
    let boot = super::boot(py).map_err(|e| super::format_err(py, &e))?;
    if !s.active() {
        crate::log::set_python(None);
        // gunicorn's setup sets the level of gunicorn.error from loglevel,
        // at start and on HUP (unknown names mean info).
        crate::log::set_level(Level::parse(&s.loglevel).unwrap_or(Level::Info));
        boot.call_method0("stop_logging")
            .map_err(|e| super::format_err(py, &e))?;
        return Ok(());
    }
    let level = boot
        .getattr("setup_logging")
        .and_then(|f| {
            f.call1((
                &s.loglevel,
                &s.errorlog,
                s.accesslog.as_deref(),
                &s.access_format,
                s.logconfig.as_deref(),
                s.logconfig_dict.as_ref().map(|d| d.bind(py)),
                s.logconfig_json.as_deref(),
            ))?
            .extract::<i64>()
        })
        .map_err(|e| {
            // RuntimeError carries gunicorn's one-line message; anything
            // else is a bug worth its traceback.
            if e.is_instance_of::<pyo3::exceptions::PyRuntimeError>(py) {
                e.value(py).to_string()
            } else {
                super::format_err(py, &e)
            }
        })?;
    crate::log::set_python(Some(SINK));
    crate::log::set_level(Level::from_python(level));
    Ok(())
}

/// Where the Rust log hands its records while Python logging is on.
const SINK: crate::log::PySink = crate::log::PySink {
    error: forward_error,
    reopen: reopen_files,
};

/// One error-log record to `gunicorn.error`. A failure inside logging
/// itself (a handler raising) is reported by logging's handleError on
/// stderr; a failure to reach it at all is reported there too, since the
/// error log is what failed.
fn forward_error(level: Level, msg: &str) {
    Python::attach(|py| {
        let r = super::boot(py).and_then(|b| b.call_method1("log_error", (level as u8, msg)));
        if let Err(e) = r {
            eprintln!(
                "ferrocorn: logging an error-log record through Python failed: {}\n{msg}",
                super::format_err(py, &e)
            );
        }
    });
}

/// USR1: every `logging.FileHandler` reopens its file (gunicorn's
/// `reopen_files`).
fn reopen_files() -> Result<(), String> {
    Python::attach(|py| {
        super::boot(py)
            .and_then(|b| b.call_method0("reopen_logging"))
            .map(|_| ())
            .map_err(|e| super::format_err(py, &e))
    })
}

/// One access record to `gunicorn.access`, as gunicorn's
/// `Logger.access`: message `access_log_format`, `args` the atoms
/// (`SafeAtoms`), `{key}e` atoms from `environ` when given. Called with
/// the GIL held (the worker has just finished the request in Python).
pub fn access(
    py: Python<'_>,
    log: &AccessLog,
    rec: &AccessRecord<'_>,
    environ: Option<&Bound<'_, PyDict>>,
) {
    if log.is_json() {
        // --access-log-json: the record's message is the JSON line.
        let mut line = Vec::with_capacity(512);
        let r = log
            .render(rec, &mut line)
            .map_err(pyo3::exceptions::PyValueError::new_err)
            .and_then(|()| {
                let line = String::from_utf8_lossy(&line);
                super::boot(py)?.call_method1("log_access_line", (line,))?;
                Ok(())
            });
        if let Err(e) = r {
            crate::log_error!("access log: {}", super::format_err(py, &e));
        }
        return;
    }
    let r = (|| -> PyResult<()> {
        let atoms = PyDict::new(py);
        let mut err = None;
        rec.atoms(|key, value| {
            if err.is_some() {
                return;
            }
            let r = match value {
                AtomValue::Str(s) => atoms.set_item(key, s),
                AtomValue::Int(n) => atoms.set_item(key, n),
            };
            if let Err(e) = r {
                err = Some(e);
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        super::boot(py)?.call_method1("log_access", (atoms, environ))?;
        Ok(())
    })();
    if let Err(e) = r {
        crate::log_error!("access log: {}", super::format_err(py, &e));
    }
}
