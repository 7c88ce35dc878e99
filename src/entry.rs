//! The two ways into ferrocorn, with one main behind them ([`serve`]):
//!
//! - the standalone binary ([`binary_main`], from src/main.rs) starts its
//!   own interpreter, the one of the active virtualenv, with CPython's
//!   signal handlers off;
//! - the wheel's `ferrocorn` console script and `python -m ferrocorn` call
//!   `ferrocorn._ferrocorn.run()` ([`extension`]) inside the interpreter
//!   that runs them: the master is that Python process. `run` takes the
//!   signals back from Python, releases the GIL and runs the same main, then
//!   exits the process as the binary does.
//!
//! Either way the master is single-threaded and the rest of ferrocorn
//! attaches to the interpreter with `Python::attach`.

use std::ffi::OsString;

use pyo3::prelude::*;

use crate::config::{Config, Loaded};
use crate::process::reexec::{self, StartCtx};
use crate::{
    arbiter, ctl, exporter, hooks, log, log_error, log_warning, process, python, top, worker,
};

/// The standalone binary's main: the process's exit code.
pub fn binary_main() -> i32 {
    // Writes to a closed connection must fail with EPIPE, not kill the
    // process. CPython would do this itself, but it is initialised without
    // its signal handlers.
    process::ignore_sigpipe();
    let argv: Vec<OsString> = std::env::args_os().collect();
    // `ferrocorn exporter`: the Redis read side, no Python, no master. (An
    // application module named `exporter` is given as `exporter:app`.)
    if argv.get(1).is_some_and(|a| a == "exporter") {
        return exporter::standalone::main(&argv[2..]);
    }
    // `ferrocorn top`: the live view of a running server (an application
    // module named `top` is given as `top:app`).
    if argv.get(1).is_some_and(|a| a == "top") {
        return top::main(&argv[2..]);
    }
    // `ferrocorn ctl`: gunicornc's client for the control socket.
    if argv.get(1).is_some_and(|a| a == "ctl") {
        return ctl::client::main(&argv[2..]);
    }
    // First, before anything changes the environment: USR2 re-exec needs
    // the original argv, environment and executable.
    let ctx = match StartCtx::capture() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e}");
            return 1;
        }
    };
    let interp = match python::locate() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("Error: {e}");
            return 1;
        }
    };
    if let Err(e) = python::init(&interp) {
        eprintln!("Error: {e}");
        return 1;
    }
    serve(argv, ctx)
}

/// The extension module `ferrocorn._ferrocorn` of the wheel.
#[pymodule]
#[pyo3(name = "_ferrocorn")]
mod extension {
    use std::ffi::OsString;

    use pyo3::prelude::*;

    /// ferrocorn's version (Cargo.toml).
    #[pymodule_export]
    const VERSION: &str = env!("CARGO_PKG_VERSION");

    /// The Python version this extension was built for ("3.11").
    #[pymodule_export]
    const BUILT_FOR: &str = crate::python::BUILT_VERSION;

    /// Runs the `ferrocorn` command with this interpreter: the arguments
    /// are `sys.argv[1:]`, the program name `prog` (default `sys.argv[0]`).
    /// Never returns: the process exits with the server's exit code, without
    /// finalising the interpreter, as the standalone binary does. Call it
    /// from the main thread, with no other thread running.
    #[pyfunction]
    #[pyo3(signature = (prog=None))]
    fn run(py: Python<'_>, prog: Option<OsString>) -> PyResult<()> {
        let code = super::extension_main(py, prog);
        std::process::exit(code)
    }
}

/// [`extension::run`]'s main: the process's exit code.
fn extension_main(py: Python<'_>, prog: Option<OsString>) -> i32 {
    process::ignore_sigpipe();
    let host = match python::host(py) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("Error: reading the interpreter's command line: {e}");
            return 1;
        }
    };
    // Rust owns the signals, as in the binary: Python's SIGINT handler
    // (KeyboardInterrupt) and whatever else Python code installed go.
    if let Err(e) = python::release_signals(py) {
        eprintln!("Error: taking the signal handlers back from Python: {e}");
        return 1;
    }
    let mut argv = host.argv.clone();
    if let (Some(p), Some(first)) = (prog, argv.first_mut()) {
        *first = p;
    }
    if argv.get(1).is_some_and(|a| a == "exporter") {
        let rest = argv[2..].to_vec();
        return py.detach(move || exporter::standalone::main(&rest));
    }
    if argv.get(1).is_some_and(|a| a == "top") {
        let rest = argv[2..].to_vec();
        return py.detach(move || top::main(&rest));
    }
    if argv.get(1).is_some_and(|a| a == "ctl") {
        let rest = argv[2..].to_vec();
        return py.detach(move || ctl::client::main(&rest));
    }
    let ctx = match StartCtx::capture_interpreter(
        host.executable,
        &host.orig_argv,
        host.argv.first().map(OsString::as_os_str),
        host.argv.len(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e}");
            return 1;
        }
    };
    if let Err(e) = python::init_running(py) {
        eprintln!("Error: {e}");
        return 1;
    }
    py.detach(move || {
        // A panic ends the process with the binary's status for it (the
        // panic message is already printed), not with a Python traceback.
        std::panic::catch_unwind(move || serve(argv, ctx)).unwrap_or(101)
    })
}

/// The main behind both entry points, from the configuration on; the
/// interpreter is initialised and this thread does not hold the GIL.
/// `argv` includes the program name; `ctx` is what USR2 re-executes.
fn serve(argv: Vec<OsString>, mut ctx: StartCtx) -> i32 {
    let loaded = Python::attach(|py| Config::load(py, argv.clone()));
    let mut cfg = match loaded {
        Ok(Loaded::Run(cfg)) => cfg,
        Ok(Loaded::Exit(code)) => return code,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    if let Err(e) = worker::kind::resolve(&cfg.worker_class()) {
        eprintln!("Error: {e}");
        return 1;
    }
    if let Err(code) = Python::attach(|py| prepare(py, &mut cfg)) {
        return code;
    }
    if cfg.print_config_requested() || cfg.check_config() {
        return 0;
    }
    if cfg.daemon() {
        if let Err(e) = python::daemonize(cfg.bool("enable_stdio_inheritance")) {
            eprintln!("Error: {e}");
            return 1;
        }
    }
    // gunicorn re-executes in the directory it runs in after --chdir.
    if let Ok(cwd) = reexec::getcwd() {
        ctx.cwd = cwd;
    }
    if let Err(e) = log::init(&cfg.loglevel(), &cfg.errorlog(), cfg.capture_output()) {
        eprintln!("Error: {e}");
        return 1;
    }
    if let Err(e) = log::syslog::configure(cfg.syslog()) {
        eprintln!("Error: {e}");
        return 1;
    }
    if let Err(e) = log::prepare_files(
        cfg.accesslog().as_deref(),
        &cfg.access_log_format(),
        cfg.uid(),
        cfg.gid(),
    ) {
        eprintln!("Error: {e}");
        return 1;
    }
    if let Err(e) =
        Python::attach(|py| python::pylog::apply(py, &arbiter::python_logging(py, &cfg)))
    {
        eprintln!("\nError: {e}\n");
        return 1;
    }
    for w in cfg.warnings() {
        log_warning!("{w}");
    }
    process::raise_open_files_limit();
    let hooks = match Python::attach(|py| {
        hooks::Hooks::new(py, &cfg).map_err(|e| python::format_err(py, &e))
    }) {
        Ok(h) => h,
        Err(e) => {
            log_error!("preparing the server hooks: {e}");
            return 1;
        }
    };
    let start = arbiter::Start {
        cfg,
        argv,
        ctx,
        hooks,
    };
    match arbiter::Arbiter::new(start) {
        Ok(a) => a.run(),
        Err(e) => {
            log_error!("{e}");
            1
        }
    }
}

/// What the master does with Python before the arbiter starts: the
/// environment (-e) and the settings it feeds (PROMETHEUS_*), sys.path
/// (--chdir, --pythonpath), --print-config and --check-config. Returns the
/// exit code to stop with.
fn prepare(py: Python<'_>, cfg: &mut Config) -> Result<(), i32> {
    for (k, v) in cfg.raw_env() {
        if let Err(e) = python::set_environ(py, &k, &v) {
            eprintln!("Error: cannot set {k}: {e}");
            return Err(1);
        }
    }
    if let Err(e) = cfg.apply_env_sources() {
        eprintln!("{e}");
        return Err(1);
    }
    if let Err(e) = python::prepare_paths(py, cfg.chdir().as_deref(), &cfg.pythonpath()) {
        eprintln!("{}", python::format_err(py, &e));
        return Err(1);
    }
    if cfg.print_config_requested() {
        println!("{}", cfg.print_config(py));
    }
    if let Err(e) = cfg.require_app_uri() {
        eprintln!("{e}");
        return Err(1);
    }
    // --check-config also builds the listeners' TLS (files, ciphers, the
    // ssl_context hook), which the start would refuse.
    if cfg.check_config() {
        let conf = || hooks::Hooks::new(py, cfg)?.cfg_object(py);
        if let Err(e) = worker::tls::setup(py, cfg, conf) {
            eprintln!("Error: {e}");
            return Err(1);
        }
    }
    // gunicorn loads the app for --print-config and --check-config too, so
    // that a broken app fails the check.
    if cfg.print_config_requested() || cfg.check_config() {
        return worker::load_app(py, cfg).map(|_| ()).map_err(|_| 1);
    }
    Ok(())
}
