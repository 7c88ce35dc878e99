//! ferrocorn: a Rust pre-fork application server for Python web apps, run
//! exactly like `gunicorn`. See docs/architecture.md.

mod allowlist;
mod arbiter;
mod config;
mod http;
mod httpdate;
mod log;
mod netio;
mod python;
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
    let loaded = Python::attach(|py| Config::load(py, argv));
    let cfg = match loaded {
        Ok(Loaded::Run(cfg)) => cfg,
        Ok(Loaded::Exit(code)) => return code,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    if let Err(e) = log::init(&cfg.loglevel(), &cfg.errorlog(), cfg.capture_output()) {
        eprintln!("Error: {e}");
        return 1;
    }
    for w in cfg.warnings() {
        log_warning!("{w}");
    }
    match worker::kind::resolve(&cfg.worker_class()) {
        Ok((_, Some(warning))) => log_warning!("{warning}"),
        Ok((_, None)) => {}
        Err(e) => {
            eprintln!("Error: {e}");
            return 1;
        }
    }
    let prepared = Python::attach(|py| prepare(py, &cfg));
    let app = match prepared {
        Ok(Some(app)) => Some(app),
        Ok(None) => None,
        Err(code) => return code,
    };
    if cfg.print_config_requested() || cfg.check_config() {
        return 0;
    }
    let listeners = match sock::create_listeners(&cfg.bind(), cfg.backlog(), cfg.reuse_port()) {
        Ok(l) => l,
        Err(e) => {
            log_error!("{e}");
            return 1;
        }
    };
    match arbiter::Arbiter::new(cfg, listeners, app) {
        Ok(a) => a.run(),
        Err(e) => {
            log_error!("{e}");
            1
        }
    }
}

/// Everything the master does with Python before binding: the environment
/// (-e), sys.path (--chdir, --pythonpath), --print-config, --check-config and
/// --preload. Returns the preloaded app, or the exit code to stop with.
fn prepare(py: Python<'_>, cfg: &Config) -> Result<Option<Py<PyAny>>, i32> {
    for (k, v) in cfg.raw_env() {
        if let Err(e) = python::set_environ(py, &k, &v) {
            log_error!("cannot set {k}: {e}");
            return Err(1);
        }
    }
    if let Err(e) = python::prepare_paths(py, cfg.chdir().as_deref(), &cfg.pythonpath()) {
        log_error!("{}", python::format_err(py, &e));
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
        return match worker::load_app(py, cfg) {
            Ok(_) => Ok(None),
            Err(_) => Err(1),
        };
    }
    if cfg.preload_app() {
        return worker::load_app(py, cfg).map(Some);
    }
    Ok(None)
}
