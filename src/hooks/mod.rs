//! gunicorn's server hooks (`on_starting` ... `on_exit`), called with
//! objects that look like gunicorn's to the hook: `server` (the Arbiter),
//! `worker`, `req`, `resp`, with `cfg` and `log` on them. The objects are
//! defined in `objects.py` (module `_ferrocorn_hooks`); this file builds
//! them from the Rust master's and workers' state and calls the hooks.
//!
//! A hook that is not set costs nothing: every method returns `Ok(())`
//! before touching Python. Set hooks get their `server`/`worker` objects
//! refreshed from the views (pids, ages, counters) just before the call.
//!
//! The `worker` object of a worker process is one Python object for the
//! whole life of that worker (hooks stash attributes on it): it is created
//! in the master at the first hook that needs it (normally `pre_fork`),
//! found again by the worker's `age` afterwards, and inherited by the
//! worker through fork, exactly as gunicorn's Worker instance. In the
//! master, `server.WORKERS` maps pid -> those objects.
//!
//! # What gunicorn 27 does when a hook raises
//!
//! "Main-loop failure" is gunicorn's `except Exception` around its master
//! loop: ERROR `Unhandled exception in main loop` + traceback, then
//! `stop(False)` (SIGQUIT to the workers, wait, SIGKILL), remove the
//! pidfile, exit status 255 (`sys.exit(-1)`); `on_exit` is NOT called.
//! "Worker failure" is the `except Exception` of `spawn_worker` in the
//! child: ERROR `Exception in worker process` + traceback, `str(exc)` on
//! stderr, exit 3 (WORKER_BOOT_ERROR, which makes the master halt with
//! `Reason: Worker failed to boot.`) when the worker had not booted yet,
//! else exit 255 (the master logs `Worker (pid:N) exited with code 255.`
//! and spawns a replacement); `Worker exiting (pid: N)` and `worker_exit`
//! still run (`finally`). "Uncaught" means the exception leaves
//! `Arbiter.run()`: Python prints the traceback on stderr (not the error
//! log; a `RuntimeError` prints `\nError: <msg>\n` instead) and exits 1.
//!
//! | hook | process | gunicorn on exception | logged here |
//! |---|---|---|---|
//! | `nworkers_changed` (first call, old = None) | master | uncaught, exit 1 (before `on_starting`) | stderr, as Python |
//! | `nworkers_changed` (TTIN/TTOU/WINCH/reload) | master | main-loop failure, exit 255 | `Unhandled exception in main loop` |
//! | `on_starting` | master | uncaught, exit 1; the pidfile (already written) stays | stderr, as Python |
//! | `when_ready` | master | uncaught, exit 1; no worker was spawned | stderr, as Python |
//! | `pre_fork` | master | main-loop failure, exit 255 (no fork) | `Unhandled exception in main loop` |
//! | `post_fork` | worker | worker failure: exit 3 -> master halts | `Exception in worker process` + stderr |
//! | `post_worker_init` | worker | worker failure: exit 3 -> master halts | `Exception in worker process` + stderr |
//! | `worker_int` | worker | worker failure, booted: exit 255 instead of 0 | `Exception in worker process` + stderr |
//! | `worker_abort` | worker | worker failure, booted: exit 255 instead of 1 | `Exception in worker process` + stderr |
//! | `pre_request` | worker | the request is answered `500 Internal Server Error` (access-log line with 500), connection closed; `nr` not counted; `post_request` still runs with `environ = {}`, `resp = None` | `Error handling request <method> <uri>` |
//! | `post_request` | worker | caught and logged; nothing else changes | `Exception in post_request hook` |
//! | `child_exit` | master | main-loop failure, exit 255 | `Unhandled exception in main loop` |
//! | `worker_exit` | worker | caught: WARNING, the worker exits with its code | WARNING `Exception during worker exit:\n<tb>` |
//! | `on_reload` | master | main-loop failure, exit 255 (no new workers) | `Unhandled exception in main loop` |
//! | `pre_exec` | USR2 child of the master | main-loop failure *in the forked child*, which never execs (gunicorn's child even SIGQUITs the workers; don't copy that: exit the child 255) | `Unhandled exception in main loop` |
//! | `on_exit` | master | uncaught, exit 1 instead of 0 | stderr, as Python |
//!
//! `SystemExit` raised by a hook is not logged: [`HookError::system_exit`]
//! carries the status (gunicorn re-raises it everywhere: the process exits
//! with it, a non-integer code printed on stderr, see
//! [`HookError::message`]). `ssl_context` is not here: the master calls it
//! when it sets up TLS (`worker/tls.rs`), with [`Hooks::cfg_object`].

use std::ffi::CString;
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PySystemExit};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule, PyTuple};

use crate::config::settings::SETTINGS;
use crate::config::Config;
use crate::http::latin1_to_string;
use crate::log::Level;

#[cfg(test)]
mod tests;

const OBJECTS_SOURCE: &str = include_str!("objects.py");
const MODULE: &str = "_ferrocorn_hooks";

/// The hooks, in gunicorn's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    OnStarting,
    OnReload,
    WhenReady,
    PreFork,
    PostFork,
    PostWorkerInit,
    WorkerInt,
    WorkerAbort,
    PreExec,
    PreRequest,
    PostRequest,
    ChildExit,
    WorkerExit,
    NworkersChanged,
    OnExit,
}

const ALL: [Hook; 15] = [
    Hook::OnStarting,
    Hook::OnReload,
    Hook::WhenReady,
    Hook::PreFork,
    Hook::PostFork,
    Hook::PostWorkerInit,
    Hook::WorkerInt,
    Hook::WorkerAbort,
    Hook::PreExec,
    Hook::PreRequest,
    Hook::PostRequest,
    Hook::ChildExit,
    Hook::WorkerExit,
    Hook::NworkersChanged,
    Hook::OnExit,
];

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::OnStarting => "on_starting",
            Hook::OnReload => "on_reload",
            Hook::WhenReady => "when_ready",
            Hook::PreFork => "pre_fork",
            Hook::PostFork => "post_fork",
            Hook::PostWorkerInit => "post_worker_init",
            Hook::WorkerInt => "worker_int",
            Hook::WorkerAbort => "worker_abort",
            Hook::PreExec => "pre_exec",
            Hook::PreRequest => "pre_request",
            Hook::PostRequest => "post_request",
            Hook::ChildExit => "child_exit",
            Hook::WorkerExit => "worker_exit",
            Hook::NworkersChanged => "nworkers_changed",
            Hook::OnExit => "on_exit",
        }
    }

    fn from_name(name: &str) -> Option<Hook> {
        ALL.into_iter().find(|h| h.name() == name)
    }
}

/// How a failing hook is reported (see the table at the top).
enum Report {
    /// `Unhandled exception in main loop` + traceback (ERROR).
    MainLoop,
    /// `Exception in worker process` + traceback (ERROR), `str(exc)` on
    /// stderr.
    WorkerProcess,
    /// Python's report of an uncaught exception, on stderr.
    Uncaught,
    /// `Error handling request <method> <uri>` + traceback (ERROR).
    Request(String),
    /// `Exception in post_request hook` + traceback (ERROR).
    PostRequest,
    /// WARNING `Exception during worker exit:\n<traceback>\n`.
    WorkerExit,
}

/// A hook raised. What was logged is in the table at the top of this file.
#[derive(Debug, Clone)]
pub struct HookError {
    pub hook: &'static str,
    /// Python's traceback text (`Traceback (most recent call last): ...`),
    /// without the final newline. Empty for `SystemExit`. It has already
    /// been logged (see the table); the tests compare it with the log.
    #[cfg(test)]
    pub traceback: String,
    /// `str(exception)` (for SystemExit with a non-integer code, the text
    /// Python prints on stderr at exit).
    pub message: String,
    /// `Some(status)` when the hook raised `SystemExit`: gunicorn lets it
    /// end the process with that status. Nothing was logged.
    pub system_exit: Option<i32>,
}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.system_exit {
            Some(code) => write!(f, "{} hook called sys.exit({code})", self.hook),
            None => write!(f, "Exception in {} hook: {}", self.hook, self.message),
        }
    }
}

/// A worker as hooks see it (gunicorn's Worker attributes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerView {
    /// 0 before the fork (`pre_fork`): the hook sees gunicorn's
    /// `"[booting]"`.
    pub pid: u32,
    /// The master's pid.
    pub ppid: u32,
    /// gunicorn's worker age: 1 for the first worker the master spawns, +1
    /// for each one after. Identifies the worker's Python object, so it
    /// must be the same in every view of one worker, master and worker side.
    pub age: u64,
    /// Requests handled so far.
    pub nr: u64,
    pub alive: bool,
    /// True once the app is loaded and `post_worker_init` returned.
    pub booted: bool,
    /// Set by the master when it sent the worker SIGABRT for a timeout.
    pub aborted: bool,
    /// This worker's max_requests including its jitter; 0 = unlimited (the
    /// hook sees `sys.maxsize`, as gunicorn).
    pub max_requests: u64,
    /// The `--timeout` setting in seconds; the hook sees `timeout / 2.0`,
    /// what gunicorn passes to its workers.
    pub timeout: u64,
}

/// A listening socket, for `server.LISTENERS` / `worker.sockets`.
#[derive(Debug, Clone, Copy)]
pub struct ListenerView<'a> {
    pub fd: RawFd,
    /// What gunicorn's `str(listener)` gives: `http://127.0.0.1:8000`,
    /// `unix:/tmp/x.sock`.
    pub url: &'a str,
}

/// The master as hooks see it (gunicorn's Arbiter attributes).
#[derive(Debug, Clone, Copy)]
pub struct ServerView<'a> {
    pub pid: u32,
    pub num_workers: usize,
    /// The live workers (gunicorn's WORKERS: not the one a `child_exit` or
    /// `worker_exit` reports, which the master has already removed, nor the
    /// one `pre_fork` is about to fork).
    pub workers: &'a [WorkerView],
    pub pidfile: Option<&'a str>,
    /// `server.proc_name`.
    pub proc_name: &'a str,
    pub listeners: &'a [ListenerView<'a>],
}

/// A parsed request as `pre_request`/`post_request` see it (gunicorn's
/// `http.Request`). Byte strings are decoded as latin-1, as gunicorn does.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub uri: &'a [u8],
    pub path: &'a [u8],
    pub query: &'a [u8],
    pub fragment: &'a [u8],
    pub version: (u8, u8),
    /// As received (the hook sees the names upper-cased, as gunicorn).
    pub headers: &'a [(&'a [u8], &'a [u8])],
    /// "http" or "https" (after secure_scheme_headers).
    pub scheme: &'a str,
    /// `None` for a Unix socket (the hook sees `''`).
    pub peer: Option<SocketAddr>,
    /// 1 for the first request on the connection, +1 per keep-alive request.
    pub req_number: u64,
}

/// The response as `post_request` sees it (gunicorn's `http.wsgi.Response`).
#[derive(Debug, Clone, Copy)]
pub struct ResponseView<'a> {
    /// The status line given to start_response; `None` if it was not called.
    pub status: Option<&'a str>,
    /// The status code (`None` when the status does not start with a number).
    pub status_code: Option<u16>,
    /// The response headers as gunicorn keeps them (the application's,
    /// without hop-by-hop headers).
    pub headers: &'a [(&'a str, &'a str)],
    /// Body bytes sent.
    pub sent: u64,
    /// The Content-Length the application set.
    pub response_length: Option<u64>,
    pub headers_sent: bool,
}

/// The `req` object of one request: build it with [`Hooks::request`]
/// before `pre_request` and pass the same one to `post_request`, so that a
/// hook sees the same object in both (configs store e.g. a start time on
/// it). Empty (and free) when neither hook is set.
pub struct HookRequest {
    obj: Option<Py<PyAny>>,
}

impl HookRequest {
    /// True when a hook called `req.force_close()` (the connection should
    /// not be kept alive after this request).
    pub fn must_close(&self, py: Python<'_>) -> bool {
        self.obj.as_ref().is_some_and(|o| {
            o.bind(py)
                .getattr("must_close")
                .and_then(|v| v.is_truthy())
                .unwrap_or(false)
        })
    }
}

/// The hooks of one configuration, and the Python objects they receive.
pub struct Hooks {
    runtime: Py<PyAny>,
    fns: [Option<Py<PyAny>>; 15],
}

impl Hooks {
    /// Loads `_ferrocorn_hooks` (once per process) and builds `cfg`, `log`
    /// and `server` from `cfg`. Call in the master once the configuration
    /// is loaded and the error log is set up; workers inherit it.
    pub fn new(py: Python<'_>, cfg: &Config) -> PyResult<Hooks> {
        let module = module(py)?;
        let (settings, computed) = cfg_args(py, cfg)?;
        let runtime = module
            .getattr("Runtime")?
            .call1((settings, computed))?
            .unbind();
        Ok(Hooks {
            runtime,
            fns: hook_fns(py, cfg),
        })
    }

    /// After a reload (HUP): new `cfg` and hooks. `server` and the worker
    /// objects stay; workers spawned from now on get the new `cfg` (the old
    /// ones keep theirs, as in gunicorn).
    pub fn update_config(&mut self, py: Python<'_>, cfg: &Config) -> PyResult<()> {
        let (settings, computed) = cfg_args(py, cfg)?;
        self.runtime
            .bind(py)
            .call_method1("set_config", (settings, computed))?;
        self.fns = hook_fns(py, cfg);
        Ok(())
    }

    /// The `cfg` object hooks receive (the ssl_context hook's `conf`).
    pub fn cfg_object(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.runtime.bind(py).getattr("cfg")?.unbind())
    }

    /// Whether the user set this hook (gunicorn's no-op defaults count as
    /// unset). Unknown names give false.
    pub fn has(&self, name: &str) -> bool {
        Hook::from_name(name).is_some_and(|h| self.fns[h as usize].is_some())
    }

    /// Makes the loaded application visible to hooks (`worker.wsgi`,
    /// `server.app.callable`): call after loading it (in the worker, or in
    /// the master with --preload).
    pub fn set_wsgi(&self, py: Python<'_>, app: &Bound<'_, PyAny>) {
        let _ = self.runtime.bind(py).call_method1("set_wsgi", (app,));
    }

    /// The worker count a hook asked for by assigning
    /// `server.num_workers` during the last server hook, if any (gunicorn
    /// would then spawn or retire workers to match).
    pub fn take_num_workers(&self, py: Python<'_>) -> Option<usize> {
        self.runtime
            .bind(py)
            .call_method0("take_num_workers")
            .and_then(|n| n.extract::<Option<usize>>())
            .ok()
            .flatten()
    }

    // -- master hooks --------------------------------------------------------

    /// `on_starting(server)`.
    pub fn on_starting(&self, py: Python<'_>, server: &ServerView<'_>) -> Result<(), HookError> {
        self.server_hook(py, Hook::OnStarting, server, None, (), Report::Uncaught)
    }

    /// `on_reload(server)`.
    pub fn on_reload(&self, py: Python<'_>, server: &ServerView<'_>) -> Result<(), HookError> {
        self.server_hook(py, Hook::OnReload, server, None, (), Report::MainLoop)
    }

    /// `when_ready(server)`.
    pub fn when_ready(&self, py: Python<'_>, server: &ServerView<'_>) -> Result<(), HookError> {
        self.server_hook(py, Hook::WhenReady, server, None, (), Report::Uncaught)
    }

    /// `pre_fork(server, worker)`, `worker.pid` is 0 ("[booting]").
    pub fn pre_fork(
        &self,
        py: Python<'_>,
        server: &ServerView<'_>,
        worker: &WorkerView,
    ) -> Result<(), HookError> {
        self.server_hook(
            py,
            Hook::PreFork,
            server,
            Some(worker),
            (),
            Report::MainLoop,
        )
    }

    /// `pre_exec(server)`, in the child forked for USR2, before exec.
    pub fn pre_exec(&self, py: Python<'_>, server: &ServerView<'_>) -> Result<(), HookError> {
        self.server_hook(py, Hook::PreExec, server, None, (), Report::MainLoop)
    }

    /// `child_exit(server, worker)`, in the master, after reaping `worker`.
    pub fn child_exit(
        &self,
        py: Python<'_>,
        server: &ServerView<'_>,
        worker: &WorkerView,
    ) -> Result<(), HookError> {
        self.server_hook(
            py,
            Hook::ChildExit,
            server,
            Some(worker),
            (),
            Report::MainLoop,
        )
    }

    /// `nworkers_changed(server, new_value, old_value)`; `old` is `None`
    /// the first time (gunicorn calls it once at start-up, before
    /// `on_starting`).
    pub fn nworkers_changed(
        &self,
        py: Python<'_>,
        server: &ServerView<'_>,
        new: usize,
        old: Option<usize>,
    ) -> Result<(), HookError> {
        let report = if old.is_none() {
            Report::Uncaught
        } else {
            Report::MainLoop
        };
        self.server_hook(py, Hook::NworkersChanged, server, None, (new, old), report)
    }

    /// `on_exit(server)`.
    pub fn on_exit(&self, py: Python<'_>, server: &ServerView<'_>) -> Result<(), HookError> {
        self.server_hook(py, Hook::OnExit, server, None, (), Report::Uncaught)
    }

    // -- worker-process hooks with the server -------------------------------

    /// `post_fork(server, worker)`, in the worker right after the fork.
    pub fn post_fork(
        &self,
        py: Python<'_>,
        server: &ServerView<'_>,
        worker: &WorkerView,
    ) -> Result<(), HookError> {
        self.server_hook(
            py,
            Hook::PostFork,
            server,
            Some(worker),
            (),
            Report::WorkerProcess,
        )
    }

    /// `worker_exit(server, worker)`, in the worker as it exits.
    pub fn worker_exit(
        &self,
        py: Python<'_>,
        server: &ServerView<'_>,
        worker: &WorkerView,
    ) -> Result<(), HookError> {
        self.server_hook(
            py,
            Hook::WorkerExit,
            server,
            Some(worker),
            (),
            Report::WorkerExit,
        )
    }

    // -- worker hooks ---------------------------------------------------------

    /// `post_worker_init(worker)`, after the app is loaded, before serving.
    pub fn post_worker_init(&self, py: Python<'_>, worker: &WorkerView) -> Result<(), HookError> {
        self.worker_hook(py, Hook::PostWorkerInit, worker, Report::WorkerProcess)
    }

    /// `worker_int(worker)`, on SIGINT/SIGQUIT.
    pub fn worker_int(&self, py: Python<'_>, worker: &WorkerView) -> Result<(), HookError> {
        self.worker_hook(py, Hook::WorkerInt, worker, Report::WorkerProcess)
    }

    /// `worker_abort(worker)`, on SIGABRT (timeout).
    pub fn worker_abort(&self, py: Python<'_>, worker: &WorkerView) -> Result<(), HookError> {
        self.worker_hook(py, Hook::WorkerAbort, worker, Report::WorkerProcess)
    }

    /// The `req` object for a parsed request head, as every worker kind
    /// builds it (plain http: TLS is not served yet).
    pub fn request_for(
        &self,
        py: Python<'_>,
        head: &crate::http::RequestHead<'_>,
        peer: Option<SocketAddr>,
        req_number: u64,
    ) -> HookRequest {
        let headers: Vec<(&[u8], &[u8])> =
            head.headers.iter().map(|h| (h.name, &*h.value)).collect();
        self.request(
            py,
            &RequestView {
                method: &head.method,
                uri: head.uri,
                path: head.path,
                query: head.query,
                fragment: head.fragment,
                version: head.version,
                headers: &headers,
                scheme: "http",
                peer,
                req_number,
            },
        )
    }

    /// The `req` object for `pre_request`/`post_request`; empty when
    /// neither is set.
    pub fn request(&self, py: Python<'_>, req: &RequestView<'_>) -> HookRequest {
        if self.fns[Hook::PreRequest as usize].is_none()
            && self.fns[Hook::PostRequest as usize].is_none()
        {
            return HookRequest { obj: None };
        }
        match self.build_request(py, req) {
            Ok(obj) => HookRequest { obj: Some(obj) },
            Err(e) => {
                log_exception(
                    "Error building the request object for hooks",
                    &format_exc(py, &e),
                );
                HookRequest { obj: None }
            }
        }
    }

    /// `pre_request(worker, req)`.
    pub fn pre_request(
        &self,
        py: Python<'_>,
        worker: &WorkerView,
        req: &HookRequest,
    ) -> Result<(), HookError> {
        let (Some(f), Some(r)) = (&self.fns[Hook::PreRequest as usize], &req.obj) else {
            return Ok(());
        };
        let res = self
            .worker_obj(py, worker)
            .and_then(|w| f.bind(py).call1((w, r.bind(py))).map(drop));
        res.map_err(|e| {
            let r = r.bind(py);
            let attr = |n: &str| {
                r.getattr(n)
                    .and_then(|v| v.str().map(|s| s.to_string()))
                    .unwrap_or_default()
            };
            let what = format!("Error handling request {} {}", attr("method"), attr("uri"));
            self.fail(py, Hook::PreRequest, e, Report::Request(what))
        })
    }

    /// `post_request(worker, req, environ, resp)` (2- and 3-argument
    /// functions are wrapped by the config). `environ`: the WSGI environ,
    /// `None` when it was never built (the hook gets `{}`); `resp`: `None`
    /// when there is no response object (pre_request failed), as gunicorn.
    pub fn post_request(
        &self,
        py: Python<'_>,
        worker: &WorkerView,
        req: &HookRequest,
        environ: Option<&Bound<'_, PyDict>>,
        resp: Option<&ResponseView<'_>>,
    ) -> Result<(), HookError> {
        let (Some(f), Some(r)) = (&self.fns[Hook::PostRequest as usize], &req.obj) else {
            return Ok(());
        };
        let res = (|| -> PyResult<()> {
            let environ = match environ {
                Some(e) => e.clone(),
                None => PyDict::new(py),
            };
            let resp = match resp {
                Some(v) => Some(response_args(py, v)?),
                None => None,
            };
            self.runtime.bind(py).call_method1(
                "post_request",
                (f.bind(py), worker_tuple(worker), r.bind(py), environ, resp),
            )?;
            Ok(())
        })();
        res.map_err(|e| self.fail(py, Hook::PostRequest, e, Report::PostRequest))
    }

    // -- internals --------------------------------------------------------------

    fn server_hook<'py, A>(
        &self,
        py: Python<'py>,
        hook: Hook,
        server: &ServerView<'_>,
        worker: Option<&WorkerView>,
        extra: A,
        report: Report,
    ) -> Result<(), HookError>
    where
        A: IntoExtra<'py>,
    {
        let Some(f) = &self.fns[hook as usize] else {
            return Ok(());
        };
        let res = (|| -> PyResult<()> {
            let mut args = vec![
                f.bind(py).clone(),
                server_tuple(py, server)?,
                worker.map(worker_tuple).into_pyobject(py)?.into_any(),
            ];
            args.extend(extra.into_extra(py)?);
            self.runtime
                .bind(py)
                .call_method1("call_server", PyTuple::new(py, args)?)?;
            Ok(())
        })();
        res.map_err(|e| self.fail(py, hook, e, report))
    }

    fn worker_hook(
        &self,
        py: Python<'_>,
        hook: Hook,
        worker: &WorkerView,
        report: Report,
    ) -> Result<(), HookError> {
        let Some(f) = &self.fns[hook as usize] else {
            return Ok(());
        };
        let res = self
            .worker_obj(py, worker)
            .and_then(|w| f.bind(py).call1((w,)).map(drop));
        res.map_err(|e| self.fail(py, hook, e, report))
    }

    /// The worker object for `worker`, refreshed from the view.
    fn worker_obj<'py>(&self, py: Python<'py>, worker: &WorkerView) -> PyResult<Bound<'py, PyAny>> {
        self.runtime
            .bind(py)
            .call_method1("worker", (worker_tuple(worker),))
    }

    fn build_request(&self, py: Python<'_>, req: &RequestView<'_>) -> PyResult<Py<PyAny>> {
        let headers: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|(n, v)| {
                let mut name = latin1_to_string(n);
                name.make_ascii_uppercase();
                (name, latin1_to_string(v))
            })
            .collect();
        let peer: Bound<'_, PyAny> = match req.peer {
            None => "".into_pyobject(py)?.into_any(),
            Some(SocketAddr::V4(a)) => (a.ip().to_string(), a.port()).into_pyobject(py)?.into_any(),
            Some(SocketAddr::V6(a)) => (a.ip().to_string(), a.port(), a.flowinfo(), a.scope_id())
                .into_pyobject(py)?
                .into_any(),
        };
        let args = (
            req.method,
            latin1_to_string(req.uri),
            latin1_to_string(req.path),
            latin1_to_string(req.query),
            latin1_to_string(req.fragment),
            (req.version.0, req.version.1),
            headers,
            req.scheme,
            peer,
            req.req_number,
        );
        Ok(self
            .runtime
            .bind(py)
            .call_method1("request", args)?
            .unbind())
    }

    /// Logs a failed hook as gunicorn would (see the table) and builds the
    /// error.
    fn fail(&self, py: Python<'_>, hook: Hook, e: PyErr, report: Report) -> HookError {
        if e.is_instance_of::<PySystemExit>(py) {
            let (code, text) = module(py)
                .and_then(|m| {
                    m.getattr("system_exit_code")?
                        .call1((e.value(py),))?
                        .extract::<(i32, Option<String>)>()
                })
                .unwrap_or((1, None));
            return HookError {
                hook: hook.name(),
                #[cfg(test)]
                traceback: String::new(),
                message: text.unwrap_or_default(),
                system_exit: Some(code),
            };
        }
        let traceback = format_exc(py, &e);
        let message = e.value(py).str().map(|s| s.to_string()).unwrap_or_default();
        match report {
            Report::MainLoop => {
                log_py_exception(py, "Unhandled exception in main loop", &e, &traceback)
            }
            Report::WorkerProcess => {
                log_py_exception(py, "Exception in worker process", &e, &traceback);
                to_stderr(&format!("{message}\n"));
            }
            Report::Uncaught => {
                if e.is_instance_of::<PyRuntimeError>(py) {
                    to_stderr(&format!("\nError: {message}\n\n"));
                } else {
                    to_stderr(&format!("{traceback}\n"));
                }
            }
            Report::Request(what) => log_py_exception(py, &what, &e, &traceback),
            Report::PostRequest => {
                log_py_exception(py, "Exception in post_request hook", &e, &traceback)
            }
            Report::WorkerExit => log_write(
                Level::Warning,
                &format!("Exception during worker exit:\n{traceback}\n"),
            ),
        }
        HookError {
            hook: hook.name(),
            #[cfg(test)]
            traceback,
            message,
            system_exit: None,
        }
    }
}

/// Extra positional arguments after (server[, worker]).
trait IntoExtra<'py> {
    fn into_extra(self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>>;
}

impl<'py> IntoExtra<'py> for () {
    fn into_extra(self, _py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        Ok(Vec::new())
    }
}

impl<'py> IntoExtra<'py> for (usize, Option<usize>) {
    fn into_extra(self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        Ok(vec![
            self.0.into_pyobject(py)?.into_any(),
            self.1.into_pyobject(py)?.into_any(),
        ])
    }
}

type WorkerTuple = (u32, u32, u64, u64, bool, bool, bool, u64, u64);

fn worker_tuple(w: &WorkerView) -> WorkerTuple {
    (
        w.pid,
        w.ppid,
        w.age,
        w.nr,
        w.alive,
        w.booted,
        w.aborted,
        w.max_requests,
        w.timeout,
    )
}

fn server_tuple<'py>(py: Python<'py>, s: &ServerView<'_>) -> PyResult<Bound<'py, PyAny>> {
    let workers: Vec<WorkerTuple> = s.workers.iter().map(worker_tuple).collect();
    let listeners: Vec<(RawFd, &str)> = s.listeners.iter().map(|l| (l.fd, l.url)).collect();
    Ok((
        s.pid,
        s.num_workers,
        workers,
        s.pidfile,
        s.proc_name,
        listeners,
    )
        .into_pyobject(py)?
        .into_any())
}

fn response_args<'py>(py: Python<'py>, r: &ResponseView<'_>) -> PyResult<Bound<'py, PyAny>> {
    Ok((
        r.status,
        r.status_code,
        r.headers,
        r.sent,
        r.response_length,
        r.headers_sent,
        false, // chunked
        false, // must_close
    )
        .into_pyobject(py)?
        .into_any())
}

/// Latin-1 decoding, as gunicorn's `bytes_to_str` for the request line and
/// headers.
/// The hooks the configuration sets. gunicorn-prometheus-exporter's
/// ready-made hooks (`default_when_ready`, ...) are called too: the module
/// `gunicorn_prometheus_exporter` is always ferrocorn's compatibility
/// package (gunicorn_compat/, found before the venv's copy), whose hooks do
/// their work on ferrocorn's native parts and never duplicate it (no second
/// metrics server, no process ferrocorn supervises is killed).
fn hook_fns(py: Python<'_>, cfg: &Config) -> [Option<Py<PyAny>>; 15] {
    ALL.map(|h| cfg.hook(h.name()).map(|f| f.clone_ref(py)))
}

fn cfg_args<'py>(
    py: Python<'py>,
    cfg: &Config,
) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyDict>)> {
    let module = module(py)?;
    let setting = module.getattr("Setting")?;
    let settings = PyDict::new(py);
    for s in SETTINGS {
        let v = cfg.get(s.name).to_py(py)?;
        settings.set_item(s.name, setting.call1((s.name, s.section, v))?)?;
    }
    let computed = PyDict::new(py);
    computed.set_item("sendfile", cfg.sendfile())?;
    Ok((settings, computed))
}

/// `_ferrocorn_hooks`, loaded on first use (also registered in
/// `sys.modules`).
fn module(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    static MODULE_CELL: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    MODULE_CELL
        .get_or_try_init(py, || -> PyResult<Py<PyModule>> {
            let code =
                CString::new(OBJECTS_SOURCE).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
            let m = PyModule::from_code(py, &code, c"<ferrocorn hooks>", c"_ferrocorn_hooks")?;
            m.setattr("_write", wrap_pyfunction!(py_write, &m)?)?;
            m.setattr("_enabled", wrap_pyfunction!(py_enabled, &m)?)?;
            m.setattr("_reopen", wrap_pyfunction!(py_reopen, &m)?)?;
            m.setattr("_stderr", wrap_pyfunction!(py_stderr, &m)?)?;
            py.import("sys")?.getattr("modules")?.set_item(MODULE, &m)?;
            Ok(m.unbind())
        })
        .map(|m| m.bind(py).clone())
}

/// A raised exception as the text `logging` prints for it (the hooks
/// module's own formatter: it is loaded even where the boot module is not).
fn format_exc(py: Python<'_>, e: &PyErr) -> String {
    // The traceback is passed explicitly: on Python < 3.12 the exception
    // value of a fetched error does not carry `__traceback__`.
    module(py)
        .and_then(|m| {
            m.getattr("format_exception")?
                .call1((e.value(py), e.traceback(py)))?
                .extract::<String>()
        })
        .unwrap_or_else(|_| e.to_string())
}

/// A Python logging level number as ferrocorn's level (custom numbers go
/// to the level below them).
fn level_of(levelno: i64) -> Level {
    match levelno {
        n if n >= 50 => Level::Critical,
        n if n >= 40 => Level::Error,
        n if n >= 30 => Level::Warning,
        n if n >= 20 => Level::Info,
        _ => Level::Debug,
    }
}

/// `_write(levelno, msg, traceback_or_None)`: one error-log line.
#[pyfunction]
#[pyo3(name = "_write", signature = (levelno, msg, tb=None))]
fn py_write(levelno: i64, msg: &str, tb: Option<&str>) {
    let level = level_of(levelno);
    match tb {
        Some(tb) if level == Level::Error => log_exception(msg, tb),
        Some(tb) => log_write(level, &format!("{msg}\n{tb}")),
        None => log_write(level, msg),
    }
}

/// `_stderr(text)`: text for stderr (logging's report of a bad message).
#[pyfunction]
#[pyo3(name = "_stderr")]
fn py_stderr(text: &str) {
    to_stderr(text);
}

// -- output (captured per thread in tests) -------------------------------------

fn log_exception(msg: &str, traceback: &str) {
    #[cfg(test)]
    if tests::capture(Some(Level::Error), &format!("{msg}\n{traceback}")) {
        return;
    }
    crate::log::exception(msg, traceback);
}

/// An exception a hook raised, as gunicorn's `log.exception` (with
/// `exc_info` under a logging configuration).
fn log_py_exception(py: Python<'_>, msg: &str, e: &PyErr, traceback: &str) {
    #[cfg(test)]
    if tests::capture(Some(Level::Error), &format!("{msg}\n{traceback}")) {
        return;
    }
    crate::python::log_exception_as(py, msg, e, || traceback.to_owned());
}

fn log_write(level: Level, msg: &str) {
    #[cfg(test)]
    if tests::capture(Some(level), msg) {
        return;
    }
    crate::log::write(level, msg);
}

/// Text for stderr, where gunicorn prints it (`print(..., file=sys.stderr)`
/// or Python's report of an uncaught exception).
fn to_stderr(text: &str) {
    #[cfg(test)]
    if tests::capture(None, text) {
        return;
    }
    use std::io::Write as _;
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

/// `_enabled(levelno)`: whether a message at that level would be written.
#[pyfunction]
#[pyo3(name = "_enabled")]
fn py_enabled(levelno: i64) -> bool {
    crate::log::enabled(level_of(levelno))
}

/// `_reopen()`: reopen the error log (gunicorn's `log.reopen_files()`).
#[pyfunction]
#[pyo3(name = "_reopen")]
fn py_reopen() -> PyResult<()> {
    crate::log::reopen().map_err(PyOSError::new_err)
}
