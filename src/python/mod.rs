//! The embedded CPython interpreter: start-up inside the user's virtualenv,
//! the fork protocol, and small helpers shared by the master and the workers.
//!
//! The standalone binary initialises the interpreter once in the master,
//! before any fork, with `install_signal_handlers = 0`: Rust owns every
//! signal. The wheel's extension module runs in an interpreter that is
//! already up ([`init_running`]) and takes the signals back from it
//! ([`release_signals`]). Workers inherit the interpreter through [`fork`].

pub mod coro;
mod ffi_init;
pub mod gc;
pub mod pylog;
pub mod refs;
pub mod text;

use std::ffi::{CStr, CString, OsString};
use std::path::{Path, PathBuf};

use pyo3::prelude::*;
use pyo3::types::PyModule;

/// Python version ferrocorn was linked against ("3.11"), from build.rs.
pub const BUILT_VERSION: &str = env!("FERROCORN_PYTHON_VERSION");

const BOOT_SOURCE: &str = include_str!("boot.py");

// `COMPAT_SOURCES`: gunicorn_compat/'s Python files, listed by build.rs.
include!(concat!(env!("OUT_DIR"), "/compat_sources.rs"));

/// The interpreter the user expects: the active virtualenv, else the
/// `python3` found on PATH. `executable` is what CPython's path calculation
/// starts from, so the venv's site-packages import as they would under
/// `gunicorn` run from that venv.
#[derive(Debug)]
pub struct Interpreter {
    pub executable: PathBuf,
    pub version: String,
}

/// Locates the interpreter and checks that its version is the one ferrocorn
/// was built against (a mismatch would load the wrong stdlib and crash).
pub fn locate() -> Result<Interpreter, String> {
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        let venv = PathBuf::from(venv);
        let executable = ["python3", "python"]
            .iter()
            .map(|n| venv.join("bin").join(n))
            .find(|p| p.exists())
            .ok_or_else(|| {
                format!(
                    "VIRTUAL_ENV={} has no bin/python3; activate a valid virtualenv",
                    venv.display()
                )
            })?;
        let version = venv_version(&venv.join("pyvenv.cfg"))
            .map_or_else(|| probe(&executable).map(|(_, v)| v), Ok)?;
        return check(Interpreter {
            executable,
            version,
        });
    }
    let (executable, version) = probe(Path::new("python3"))?;
    check(Interpreter {
        executable,
        version,
    })
}

fn check(interp: Interpreter) -> Result<Interpreter, String> {
    if interp.version != BUILT_VERSION {
        return Err(format!(
            "Python version mismatch: {} is Python {}, but this ferrocorn was built against Python {}. \
             Rebuild it for that interpreter: PYO3_PYTHON={} cargo build --release",
            interp.executable.display(),
            interp.version,
            BUILT_VERSION,
            interp.executable.display()
        ));
    }
    Ok(interp)
}

/// "3.11" from a venv's pyvenv.cfg (`version = 3.11.7` or `version_info = 3.11.7.final.0`).
fn venv_version(cfg: &Path) -> Option<String> {
    let text = std::fs::read_to_string(cfg).ok()?;
    text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        if !matches!(key.trim(), "version" | "version_info") {
            return None;
        }
        let mut parts = value.trim().split('.');
        Some(format!("{}.{}", parts.next()?, parts.next()?))
    })
}

/// Asks a python binary (it may be a pyenv shim) for its real executable and version.
fn probe(python: &Path) -> Result<(PathBuf, String), String> {
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import sys; print(sys.executable); print('%d.%d' % sys.version_info[:2])",
        ])
        .output()
        .map_err(|e| {
            format!(
                "cannot run {} to locate the Python environment: {e}; set VIRTUAL_ENV or put python3 on PATH",
                python.display()
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    match (lines.next(), lines.next()) {
        (Some(exe), Some(ver)) if out.status.success() => Ok((PathBuf::from(exe), ver.to_string())),
        _ => Err(format!(
            "{} did not report its version: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Initialises the interpreter for `interp` and loads the boot module. The
/// calling thread does not hold the GIL afterwards; use `Python::attach`.
pub fn init(interp: &Interpreter) -> Result<(), String> {
    ffi_init::initialize(&interp.executable)?;
    Python::attach(init_running)
}

/// Prepares an interpreter that is already running (the wheel's extension
/// module: the master is the Python process of the `ferrocorn` console
/// script): loads the boot module and puts the importer of the built-in
/// compatibility packages (gunicorn_compat/, `COMPAT_SOURCES`) first on
/// `sys.meta_path`, before anything imports them.
pub fn init_running(py: Python<'_>) -> Result<(), String> {
    let boot = embedded_module(py, c"_ferrocorn_boot", c"<ferrocorn boot>", BOOT_SOURCE)
        .map_err(|e| format!("loading ferrocorn's boot module: {}", format_err(py, &e)))?;
    boot.getattr("install_compat")
        .and_then(|f| f.call1((COMPAT_SOURCES.to_vec(),)))
        .map(|_| ())
        .map_err(|e| {
            format!(
                "installing the importer of gunicorn_compat/: {}",
                format_err(py, &e)
            )
        })
}

/// What the running interpreter was started with, for the extension
/// module's entry point.
#[derive(Debug)]
pub struct Host {
    /// `sys.executable` (the virtualenv's `bin/python`, not resolved).
    pub executable: PathBuf,
    /// The interpreter's whole command line (`sys.orig_argv`; on 3.9, which
    /// lacks it, the process's argv as the C runtime handed it over, which
    /// is what `sys.orig_argv` holds).
    pub orig_argv: Vec<OsString>,
    /// `sys.argv`: the script (or `__main__.py` of `-m`) and its arguments.
    pub argv: Vec<OsString>,
}

/// Reads [`Host`] from `sys`.
pub fn host(py: Python<'_>) -> PyResult<Host> {
    let sys = py.import("sys")?;
    let argv: Vec<OsString> = sys.getattr("argv")?.extract()?;
    let orig_argv: Vec<OsString> = match sys.getattr("orig_argv") {
        Ok(v) => v.extract()?,
        Err(_) => std::env::args_os().collect(),
    };
    let executable: Option<OsString> = sys.getattr("executable")?.extract()?;
    let executable = match executable.filter(|e| !e.is_empty()) {
        Some(e) => PathBuf::from(e),
        None => std::env::current_exe().map_err(|e| {
            pyo3::exceptions::PyRuntimeError::new_err(format!(
                "sys.executable is empty and the running program is unknown: {e}"
            ))
        })?,
    };
    Ok(Host {
        executable,
        orig_argv,
        argv,
    })
}

/// Gives the signals back to Rust in an interpreter that installed its own
/// (the extension module's case; the binary starts CPython without them):
/// every signal with a Python handler (SIGINT's KeyboardInterrupt, any set
/// by site or user code) gets the default disposition, and so does SIGXFSZ,
/// which CPython ignores at start-up. SIGPIPE stays ignored (ferrocorn
/// ignores it too). Must run on the main thread (Python's rule for
/// `signal.signal`).
pub fn release_signals(py: Python<'_>) -> PyResult<()> {
    let signal = py.import("signal")?;
    let dfl = signal.getattr("SIG_DFL")?;
    let ign = signal.getattr("SIG_IGN")?;
    for signum in signal.call_method0("valid_signals")?.try_iter()? {
        let signum = signum?;
        let handler = signal.call_method1("getsignal", (&signum,))?;
        // None: a handler not installed from Python (left alone).
        if handler.is_none() || handler.eq(&dfl)? || handler.eq(&ign)? {
            continue;
        }
        signal.call_method1("signal", (&signum, &dfl))?;
    }
    if let Ok(xfsz) = signal.getattr("SIGXFSZ") {
        signal.call_method1("signal", (xfsz, &dfl))?;
    }
    Ok(())
}

/// A Python module whose source is built into the binary: made on first
/// use and kept in `sys.modules` under `name`.
pub fn embedded_module<'py>(
    py: Python<'py>,
    name: &CStr,
    file: &CStr,
    source: &str,
) -> PyResult<Bound<'py, PyModule>> {
    let modules = py.import("sys")?.getattr("modules")?;
    let key = name.to_string_lossy();
    if let Ok(m) = modules.get_item(&*key) {
        return Ok(m.cast_into::<PyModule>()?);
    }
    let code =
        CString::new(source).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    let m = PyModule::from_code(py, &code, file, name)?;
    modules.set_item(&*key, &m)?;
    Ok(m)
}

/// The boot module (see boot.py).
pub fn boot(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    py.import("_ferrocorn_boot")
}

/// `--spew`: traces every line of Python this thread runs (and the
/// processes forked from it), printed on stdout.
pub fn spew(py: Python<'_>) {
    if let Err(e) = boot(py).and_then(|b| b.call_method0("spew")) {
        crate::log_error!("--spew: {}", format_err(py, &e));
    }
}

/// A Python exception as the multi-line text of its traceback.
pub fn format_err(py: Python<'_>, err: &PyErr) -> String {
    let formatted = boot(py).and_then(|b| {
        b.getattr("format_exception")?
            .call1((err.value(py), err.traceback(py)))?
            .extract::<String>()
    });
    formatted.unwrap_or_else(|_| err.to_string())
}

/// gunicorn's `log.exception(msg)` for `err`: under a logging
/// configuration the `gunicorn.error` record carries the exception as its
/// `exc_info` ([`crate::log::exception_with`]); otherwise the line is
/// `msg` and the traceback.
pub fn log_exception(py: Python<'_>, msg: &str, err: &PyErr) {
    log_exception_as(py, msg, err, || format_err(py, err));
}

/// [`log_exception`] with the traceback text already made (or made
/// another way) by the caller.
pub fn log_exception_as(
    py: Python<'_>,
    msg: &str,
    err: &PyErr,
    traceback: impl FnOnce() -> String,
) {
    let to_python = || {
        let r = boot(py).and_then(|b| {
            // The traceback is passed explicitly: on Python < 3.12 a
            // fetched exception's value does not carry `__traceback__`.
            b.call_method1(
                "log_exception",
                (msg, err.get_type(py), err.value(py), err.traceback(py)),
            )
        });
        match r {
            Ok(_) => true,
            Err(e) => {
                eprintln!(
                    "ferrocorn: logging an exception through Python failed: {}",
                    format_err(py, &e)
                );
                false
            }
        }
    };
    crate::log::exception_with(msg, to_python, traceback);
}

/// True when `err` is boot.AppImportError (gunicorn's APP_LOAD_ERROR case).
pub fn is_app_import_error(py: Python<'_>, err: &PyErr) -> bool {
    boot(py)
        .and_then(|b| b.getattr("AppImportError"))
        .map(|cls| err.value(py).is_instance(&cls).unwrap_or(false))
        .unwrap_or(false)
}

/// gunicorn's working-directory and --pythonpath handling, before any app import.
pub fn prepare_paths(py: Python<'_>, chdir: Option<&str>, pythonpath: &[String]) -> PyResult<()> {
    boot(py)?
        .getattr("prepare_paths")?
        .call1((chdir, pythonpath.to_vec()))?;
    Ok(())
}

/// Imports the WSGI/ASGI application named by `uri`.
pub fn import_app(py: Python<'_>, uri: &str) -> PyResult<Py<PyAny>> {
    Ok(boot(py)?.getattr("import_app")?.call1((uri,))?.unbind())
}

/// `--paste`: the application of a PasteDeploy file (`FILE.ini[#name]`),
/// loaded as gunicorn's `pasterapp.get_wsgi_app` loads it.
pub fn load_paste(
    py: Python<'_>,
    uri: &str,
    global_conf: Vec<(String, String)>,
) -> PyResult<Py<PyAny>> {
    let conf = pyo3::types::PyDict::new(py);
    for (k, v) in global_conf {
        conf.set_item(k, v)?;
    }
    Ok(boot(py)?
        .getattr("load_paste")?
        .call1((uri, conf))?
        .unbind())
}

/// Sets os.environ[key] = value (and so the process environment).
pub fn set_environ(py: Python<'_>, key: &str, value: &str) -> PyResult<()> {
    py.import("os")?.getattr("environ")?.set_item(key, value)
}

/// fork(2) with CPython's fork protocol: the GIL is held across the fork
/// (the `Python` token proves it) and the interpreter's locks are reset in
/// the child. `first_in_child` runs in the child before the interpreter's
/// after-fork handlers: a process title set there names the child from its
/// first moments (a process list never shows a fork of the master as a
/// second master).
pub fn fork(_gil: Python<'_>, first_in_child: &dyn Fn()) -> nix::Result<nix::unistd::ForkResult> {
    ffi_init::fork(first_in_child)
}

/// Detaches the process (`--daemon`) with the interpreter's fork protocol.
pub fn daemonize(keep_stdio: bool) -> Result<(), String> {
    ffi_init::daemonize(keep_stdio)
}

/// A [`crate::conn::io::Release`] for code running Python: blocking waits
/// of the connection layer let other threads run Python meanwhile.
pub fn release_gil(wait: &mut dyn FnMut()) {
    ffi_init::release_gil(wait)
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
