//! Worker processes: what every worker kind does after the fork (signals,
//! loading the app, exit codes), then the kind's own loop.

mod asgi;
mod asgi_writer;
pub mod green;
mod gthread;
pub mod kind;
mod request;
mod serve;
mod sync;
pub mod tls;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;

use crate::config::Config;
use crate::conn::listen::WorkerListener;
use crate::hooks::{Hooks, WorkerView};
use crate::http::allowlist::AllowList;
use crate::http::proxy::ProxyMode;
use crate::http::{HeaderMap, ParserConfig};
use crate::log::access::AccessLog;
use crate::log::Level;
use crate::metrics::store::WorkerMetrics;
use crate::shm::{ErrorTable, InFlight};
use crate::shm::{ExitReason, Slot, State};
use crate::sock::Listener;
use crate::wsgi::{Wsgi, WsgiSettings};
use kind::Kind;

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
    /// The slot's requests in flight (for `ferrocorn top`).
    pub in_flight: &'static InFlight,
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
    /// The slot's requests in flight (method, path, start).
    pub in_flight: &'static InFlight,
    pub hooks: Arc<Hooks>,
    pub view: WorkerView,
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

/// Runs the interpreter's pending signal handlers (SIGABRT on timeout,
/// SIGQUIT/SIGINT); Err(code) when one ended the worker (SystemExit).
fn check_signals(py: Python<'_>) -> Result<(), i32> {
    py.check_signals()
        .map_err(|e| crate::python::system_exit_code(py, &e).unwrap_or(1))
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
    let kind = match kind::resolve(&spawn.cfg.worker_class()) {
        Ok(k) => k,
        Err(e) => {
            crate::log_error!("Exception in worker process: {e}");
            return WORKER_BOOT_ERROR;
        }
    };
    let code = Python::attach(|py| {
        if let Err(e) = install_signal_handlers(py, slot, &hooks, base) {
            crate::log_error!(
                "Exception in worker process: {}",
                crate::python::format_err(py, &e)
            );
            return WORKER_BOOT_ERROR;
        }
        if let Kind::Green(lib) = kind {
            if let Err(e) = green::patch(py, lib) {
                crate::log_error!("Exception in worker process: {e}");
                return WORKER_BOOT_ERROR;
            }
        }
        let reload = spawn.cfg.bool("reload");
        let mut watch_also = None;
        let app = match spawn.app {
            Some(app) => app,
            None if reload => match syntax_error_app(py, spawn.cfg, kind) {
                Ok((app, file)) => {
                    watch_also = file;
                    app
                }
                Err(code) => return code,
            },
            None => match load_app(py, spawn.cfg) {
                Ok(app) => app,
                Err(code) => return code,
            },
        };
        hooks.set_wsgi(py, app.bind(py));
        if reload {
            if let Err(e) = start_reloader(py, spawn.cfg, watch_also) {
                crate::log_error!(
                    "Exception in worker process: {}",
                    crate::python::format_err(py, &e)
                );
                return WORKER_BOOT_ERROR;
            }
        }
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
        let ctx = Context {
            slot,
            metrics: spawn.metrics,
            errors: spawn.errors,
            in_flight: spawn.in_flight,
            hooks: Arc::clone(&hooks),
            view: base,
        };
        match serve(py, kind, spawn.cfg, listeners, app, ctx, term) {
            Ok(code) => code,
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

/// The signal that asks a worker for its Python stacks (boot.py's
/// DUMP_SIGNAL_OFFSET): SIGRTMIN+1, which gunicorn gives no meaning.
pub fn dump_signal() -> i32 {
    libc::SIGRTMIN() + 1
}

/// --reload: boot.py's reloader thread watches the app's modules and the
/// extra files; at the first change the worker stops as gunicorn's does
/// (SIGQUIT to itself: worker_int, then SystemExit(0)) and the master
/// starts a new one, which imports the changed code.
fn start_reloader(
    py: Python<'_>,
    cfg: &crate::config::Config,
    watch_also: Option<String>,
) -> PyResult<()> {
    let on_change = pyo3::types::PyCFunction::new_closure(py, None, None, |args, _kwargs| {
        let path: String = args.get_item(0)?.extract()?;
        crate::log_info!("Worker reloading: {path} modified");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGQUIT);
        Ok::<(), PyErr>(())
    })?;
    let log_warning = pyo3::types::PyCFunction::new_closure(py, None, None, |args, _kwargs| {
        let text: String = args.get_item(0)?.extract()?;
        crate::log_warning!("{text}");
        Ok::<(), PyErr>(())
    })?;
    let engine = cfg.str("reload_engine").unwrap_or("auto").to_owned();
    crate::python::boot(py)?.call_method1(
        "start_reloader",
        (
            engine,
            cfg.list("reload_extra_files")
                .into_iter()
                .chain(watch_also)
                .collect::<Vec<_>>(),
            on_change,
            log_warning,
        ),
    )?;
    Ok(())
}

/// With --reload, gunicorn's load_wsgi: an app whose import raises
/// SyntaxError is logged and replaced by one that answers 500 with the
/// traceback, and the file is watched, so that fixing it reloads the
/// worker. Returns the app and the file to watch.
fn syntax_error_app(
    py: Python<'_>,
    cfg: &crate::config::Config,
    kind: Kind,
) -> Result<(Py<PyAny>, Option<String>), i32> {
    let Some(uri) = cfg.app_uri() else {
        return load_app(py, cfg).map(|a| (a, None));
    };
    let loaded = match cfg.paste_global_conf() {
        Some(_) => return load_app(py, cfg).map(|a| (a, None)),
        None => crate::python::import_app(py, uri),
    };
    let err = match loaded {
        Ok(app) => return Ok((app, None)),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PySyntaxError>(py) => e,
        Err(_) => return load_app(py, cfg).map(|a| (a, None)),
    };
    let text = crate::python::format_err(py, &err);
    crate::log_error!("{text}");
    let file: Option<String> = err
        .value(py)
        .getattr("filename")
        .and_then(|f| f.extract())
        .ok();
    let asgi = matches!(kind, Kind::Asgi | Kind::Tornado);
    crate::python::boot(py)
        .and_then(|b| b.call_method1("make_fail_app", (text, asgi)))
        .map(|app| (app.unbind(), file))
        .map_err(|e| {
            crate::log_error!(
                "Exception in worker process\n{}",
                crate::python::format_err(py, &e)
            );
            WORKER_BOOT_ERROR
        })
}

/// Logs every thread's Python stack and the request each serves (boot.py
/// dump_stacks) at `level`: the one way every stack dump takes (a request
/// past --timeout in gthread, and the SIGABRT and SIGRTMIN+1 handlers,
/// which pass the frame they interrupted as `here`).
pub fn log_stacks(py: Python<'_>, why: &str, here: Option<&Bound<'_, PyAny>>, level: Level) {
    let text = crate::python::boot(py)
        .and_then(|b| b.call_method1("dump_stacks", (why, here)))
        .and_then(|t| t.extract::<String>());
    match text {
        Ok(t) => crate::log::write(level, &t),
        Err(e) => crate::log_error!(
            "{why}: no stack dump: {}",
            crate::python::format_err(py, &e)
        ),
    }
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
    // boot.py's handlers log their stack dumps through log_stacks.
    let stacks = pyo3::types::PyCFunction::new_closure(py, None, None, |args, _kwargs| {
        let (why, here, error): (String, Bound<'_, PyAny>, bool) = args.extract()?;
        let level = if error { Level::Error } else { Level::Warning };
        log_stacks(args.py(), &why, Some(&here), level);
        Ok::<(), PyErr>(())
    })?;
    let boot = crate::python::boot(py)?;
    boot.getattr("install_abort_handler")?
        .call1((on_abort, stacks))?;
    boot.getattr("install_quit_handler")?.call1((on_quit,))?;
    Ok(())
}

/// Runs the worker's connection loop with the kind's handler until the
/// worker exits; returns the exit code.
fn serve(
    py: Python<'_>,
    kind: Kind,
    cfg: &Config,
    listeners: Vec<WorkerListener>,
    app: Py<PyAny>,
    ctx: Context,
    term: Arc<AtomicBool>,
) -> Result<i32, String> {
    let err = |what: &str, e: String| format!("{what}: {e}");
    let timeout = cfg.timeout();
    let io_timeout = Duration::from_secs(if timeout == 0 { 3600 } else { timeout.max(1) });
    let max_requests = match cfg.max_requests() {
        0 => u64::MAX,
        n => {
            let jitter = cfg.max_requests_jitter();
            let extra = if jitter > 0 {
                u64::from(std::process::id()).wrapping_mul(2_654_435_761) % (jitter + 1)
            } else {
                0
            };
            n.saturating_add(extra)
        }
    };
    let settings = crate::conn::Settings {
        keepalive: Duration::from_secs(cfg.keepalive()),
        timeout: io_timeout,
        max_conns: cfg.worker_connections().max(1),
        max_requests,
        graceful_timeout: Duration::from_secs(cfg.graceful_timeout()),
        parser: parser_config(cfg),
        proxy_mode: match cfg.proxy_protocol().as_str() {
            "v1" => ProxyMode::V1,
            "v2" => ProxyMode::V2,
            "auto" => ProxyMode::Auto,
            _ => ProxyMode::Off,
        },
        proxy_allow: AllowList::parse(&cfg.proxy_allow_ips())
            .map_err(|e| err("proxy_allow_ips", e.to_string()))?,
        forwarded_allow: AllowList::parse(&cfg.forwarded_allow_ips())
            .map_err(|e| err("forwarded_allow_ips", e.to_string()))?,
        uwsgi_allow: match cfg.protocol().as_str() {
            "uwsgi" => Some(
                AllowList::parse(&cfg.uwsgi_allow_ips())
                    .map_err(|e| err("uwsgi_allow_ips", e.to_string()))?,
            ),
            _ => None,
        },
        // sync: the loop thread holds the GIL but while it waits; gthread's
        // loop never holds it; the hub's turns never wait in epoll.
        release: match kind {
            Kind::Sync => crate::python::release_gil,
            Kind::Gthread | Kind::Green(_) | Kind::Asgi | Kind::Tornado => {
                crate::conn::io::no_release
            }
        },
        app_wait: match kind {
            Kind::Sync | Kind::Gthread => crate::conn::io::Waiter::Poll(crate::python::release_gil),
            Kind::Green(_) => green::WAITER,
            Kind::Asgi | Kind::Tornado => asgi::WAITER,
        },
        // Built by the master (certfile set), inherited by the fork.
        tls: crate::tls::listener::current().map(|b| crate::conn::TlsSettings {
            config: Arc::clone(&b.config),
            suppress_ragged_eofs: b.suppress_ragged_eofs,
        }),
    };
    // With --log-syslog, access lines go to syslog even without a file.
    // A Python logging configuration takes every access record (the master
    // set it up; this worker inherited it).
    let access = match cfg.accesslog() {
        _ if crate::log::python_on() => Some(AccessLog::python(&cfg.access_log_format())?),
        Some(target) => Some(AccessLog::new(Some(&target), &cfg.access_log_format())?),
        None if crate::log::syslog::access_enabled() => {
            Some(AccessLog::new(None, &cfg.access_log_format())?)
        }
        None => None,
    }
    .map(|a| a.with_json(cfg.bool("access_log_json")));
    ctx.metrics.capacity.store(
        match kind {
            Kind::Sync => 1,
            Kind::Gthread => cfg.threads().max(1) as u64,
            Kind::Green(_) | Kind::Asgi | Kind::Tornado => cfg.worker_connections().max(1) as u64,
        },
        Ordering::Relaxed,
    );
    if matches!(kind, Kind::Asgi | Kind::Tornado) {
        let slot = ctx.slot;
        let asgi_settings = asgi::AsgiSettings {
            root_path: cfg.str("root_path").unwrap_or("").to_string(),
            // Tornado apps have no lifespan protocol (gunicorn's tornado
            // worker has none either).
            lifespan: if kind == Kind::Tornado {
                "off".to_string()
            } else {
                cfg.str("asgi_lifespan").unwrap_or("auto").to_string()
            },
            tornado: kind == Kind::Tornado,
            loop_kind: cfg.str("asgi_loop").unwrap_or("auto").to_string(),
            graceful_timeout: settings.graceful_timeout,
            io_timeout,
            ws_max_message: usize::try_from(cfg.int("websocket_max_message_size")).unwrap_or(0),
            disconnect_grace: Duration::from_secs(
                u64::try_from(cfg.int("asgi_disconnect_grace_period")).unwrap_or(0),
            ),
        };
        let code = asgi::run(py, &app, &asgi_settings, |event_loop, app| {
            let handler = asgi::AsgiHandler::new(
                py,
                app,
                &listeners,
                access,
                &ctx,
                &asgi_settings,
                event_loop,
            )
            .map_err(|e| {
                format!(
                    "starting the asgi worker: {}",
                    crate::python::format_err(py, &e)
                )
            })?;
            let lp = crate::conn::Loop::new(listeners, settings, handler, slot, term)?;
            slot.set_state(State::Idle);
            Ok(lp)
        });
        return Ok(code);
    }
    let wsgi = Wsgi::new(
        py,
        app,
        WsgiSettings {
            workers: cfg.workers(),
            script_name: std::env::var("SCRIPT_NAME").unwrap_or_default(),
            secure_scheme_headers: cfg
                .secure_scheme_headers()
                .into_iter()
                .map(|(k, v)| (k.to_ascii_uppercase(), v))
                .collect(),
            multithread: kind == Kind::Gthread,
            sendfile: cfg.sendfile(),
        },
    )
    .map_err(|e| {
        err(
            "preparing the WSGI environ",
            crate::python::format_err(py, &e),
        )
    })?;
    let slot = ctx.slot;
    let ctx = Context {
        view: WorkerView {
            max_requests: if max_requests == u64::MAX {
                0
            } else {
                max_requests
            },
            ..ctx.view
        },
        ..ctx
    };
    let server = serve::WsgiServer::new(py, wsgi, &listeners, access, ctx).map_err(|e| {
        err(
            "preparing the WSGI environ",
            crate::python::format_err(py, &e),
        )
    })?;
    match kind {
        Kind::Sync => {
            let handler = sync::SyncHandler::new(py, server);
            let mut lp = crate::conn::Loop::new(listeners, settings, handler, slot, term)?;
            slot.set_state(State::Idle);
            Ok(lp.run())
        }
        Kind::Gthread => {
            let handler = gthread::ThreadHandler::start(server, cfg.threads(), cfg.timeout())?;
            let mut lp = crate::conn::Loop::new(listeners, settings, handler, slot, term)?;
            slot.set_state(State::Idle);
            // The loop never runs Python: it holds no GIL, so the threads
            // run the app while it reads and parses.
            Ok(py.detach(|| lp.run()))
        }
        Kind::Green(lib) => {
            let handler = green::GreenHandler::new(py, lib, Arc::new(server))?;
            let lp = crate::conn::Loop::new(listeners, settings, handler, slot, term)?;
            slot.set_state(State::Idle);
            Ok(green::run(py, lib, lp))
        }
        Kind::Asgi | Kind::Tornado => {
            Err("the asgi and tornado kinds are served above".to_string())
        }
    }
}

/// The request parser's settings.
fn parser_config(cfg: &Config) -> ParserConfig {
    let (line, fields, field_size) = cfg.parser_limits();
    ParserConfig {
        limit_request_line: line,
        limit_request_fields: fields,
        limit_request_field_size: field_size,
        permit_obsolete_folding: cfg.bool("permit_obsolete_folding"),
        strip_header_spaces: cfg.bool("strip_header_spaces"),
        permit_unconventional_http_method: cfg.bool("permit_unconventional_http_method"),
        permit_unconventional_http_version: cfg.bool("permit_unconventional_http_version"),
        casefold_http_method: cfg.bool("casefold_http_method"),
        header_map: match cfg.header_map().as_str() {
            "refuse" => HeaderMap::Refuse,
            "dangerous" => HeaderMap::Dangerous,
            _ => HeaderMap::Drop,
        },
        forwarder_headers: cfg.forwarder_headers(),
    }
}

/// Imports the app; on failure logs as gunicorn does and returns the exit code.
pub fn load_app(py: Python<'_>, cfg: &Config) -> Result<Py<PyAny>, i32> {
    let Some(uri) = cfg.app_uri() else {
        crate::log_error!("No application module specified.");
        return Err(APP_LOAD_ERROR);
    };
    let loaded = match cfg.paste_global_conf() {
        Some(global_conf) => crate::python::load_paste(py, uri, global_conf),
        None => crate::python::import_app(py, uri),
    };
    loaded.map_err(|e| {
        if let Some(code) = crate::python::system_exit_code(py, &e) {
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
