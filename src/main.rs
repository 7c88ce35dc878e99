//! ferrocorn: a Rust pre-fork application server for Python web apps, run
//! exactly like `gunicorn`. See docs/architecture.md.

mod arbiter;
mod asgi;
mod config;
mod conn;
mod exporter;
mod hooks;
mod http;
mod log;
mod metrics;
mod mpfiles;
mod process;
mod python;
mod redis;
mod shm;
mod sock;
mod worker;
mod wsgi;

use pyo3::prelude::*;

use config::{Config, Loaded};

fn main() {
    std::process::exit(real_main());
}

fn real_main() -> i32 {
    // Writes to a closed connection must fail with EPIPE, not kill the
    // process. CPython would do this itself, but it is initialised without
    // its signal handlers.
    // SAFETY: setting a signal disposition to SIG_IGN before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    // `ferrocorn exporter`: the Redis read side, no Python, no master. (An
    // application module named `exporter` is given as `exporter:app`.)
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "exporter") {
        return exporter::standalone::main(&args[2..]);
    }
    // First, before anything changes the environment: USR2 re-exec needs
    // the original argv, environment and executable.
    let mut ctx = match process::reexec::StartCtx::capture() {
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
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
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
    if let Ok(cwd) = process::reexec::getcwd() {
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
    for w in cfg.warnings() {
        log_warning!("{w}");
    }
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
    // gunicorn loads the app for --print-config and --check-config too, so
    // that a broken app fails the check.
    if cfg.print_config_requested() || cfg.check_config() {
        return worker::load_app(py, cfg).map(|_| ()).map_err(|_| 1);
    }
    Ok(())
}
