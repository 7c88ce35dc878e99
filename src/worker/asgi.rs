//! The asgi worker kind (also uvicorn's worker class names): an asyncio
//! loop (uvloop when installed) on the main thread runs the connection
//! layer's loop as one of its readers (asgi.py). A complete request is
//! detached and its app coroutine started at once inside the turn; it runs
//! as a Task only if it has to wait. `receive()` and `send()` are native
//! ([`Cycle`]): body bytes already read and responses the socket takes at
//! once cost no future and no trip through the event loop; otherwise they
//! return a coroutine that waits with the loop's add_reader / add_writer.
//!
//! Lifespan (--asgi-lifespan): startup before the first turn (a failure is a
//! boot error, which stops the master, not a respawn loop), shutdown after
//! the last request.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use super::request::RequestLog;
use crate::asgi::{self, websocket, HeaderNames, Keys, Ready, ScopeParts, Sent};
use crate::conn::body::Body;
use crate::conn::connection::{KeepAlive, Peer};
use crate::conn::io::Waiter;
use crate::conn::listen::WorkerListener;
use crate::conn::transport::Transport;
use crate::conn::{Dispatch, Handler, Loop, Request, Resumer, Served};
use crate::hooks::{HookRequest, Hooks, ResponseView, WorkerView};
use crate::http::response::Encoder;
use crate::log::access::AccessLog;
use crate::metrics::store::{method_index, Observation, WorkerMetrics, METHODS};
use crate::python::coro::{send_none, Context, Step};
use crate::shm::{ErrorTable, InFlight, Slot, Ticket};
use crate::sock::ListenKind;
use crate::wsgi::{AppError, Outcome};

#[path = "asgi_ws.rs"]
mod ws;

const ASGI_SOURCE: &str = include_str!("asgi.py");

fn module(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    crate::python::embedded_module(py, c"_ferrocorn_asgi", c"<ferrocorn asgi>", ASGI_SOURCE)
}

/// [`Waiter::Yield`] for the asgi kind: never waits. The socket I/O of a
/// request is tried once; `WouldBlock` goes back to [`Cycle`], which waits
/// in the event loop.
fn never_wait(_fd: RawFd, _write: bool, _timeout: Duration) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::WouldBlock))
}

/// The waiter requests use in the asgi kind.
pub const WAITER: Waiter = Waiter::Yield(never_wait);

/// Bytes handed to the app per `http.request` message.
const RECEIVE_CHUNK: usize = 64 * 1024;

/// What the kind's settings say (from the configuration).
pub struct AsgiSettings {
    pub root_path: String,
    pub lifespan: String,
    pub loop_kind: String,
    pub graceful_timeout: Duration,
    pub io_timeout: Duration,
    /// --websocket-max-message-size (0: no limit).
    pub ws_max_message: usize,
    /// --asgi-disconnect-grace-period.
    pub disconnect_grace: Duration,
    /// The tornado kind: the app is a tornado app (or WSGI through
    /// tornado's WSGIContainer), served through asgi.py's adapter.
    pub tornado: bool,
}

/// Everything the requests of one worker share.
struct AsgiServer {
    keys: Keys,
    /// asgi::scope_template per listener (its `server`, the root path).
    templates: Vec<Py<PyDict>>,
    /// The lifespan state (copied into each request's scope).
    state: Py<PyDict>,
    access: Option<AccessLog>,
    slot: &'static Slot,
    metrics: &'static WorkerMetrics,
    errors: &'static ErrorTable,
    /// The requests in flight, as `ferrocorn top` shows them.
    in_flight: &'static InFlight,
    /// The set of asgi.py's Tasks (requests that wait), and the waiting
    /// coroutines.
    tasks: Py<PyAny>,
    receive_body: Py<PyAny>,
    receive_disconnect: Py<PyAny>,
    send_rest: Py<PyAny>,
    ws_receive: Py<PyAny>,
    ws_max_message: usize,
    /// --timeout: how long the writer thread waits on a socket.
    io_timeout: Duration,
    /// asgi.py's cancel_later(task, seconds), and the grace it is given.
    cancel_later: Py<PyAny>,
    disconnect_grace: f64,
    /// Open WebSocket sessions (closed with 1001 at a graceful stop).
    open_ws: Mutex<HashMap<u64, Py<ws::WsCycle>>>,
    next_ws: AtomicU64,
    hooks: Arc<Hooks>,
    /// pre_request or post_request is set.
    request_hooks: bool,
    /// The worker as hooks see it (counters filled in per call).
    view: WorkerView,
    /// The worker is stopping gracefully; `going_away`: the 1001 closes
    /// were sent.
    stopping: AtomicBool,
    going_away: AtomicBool,
}

impl AsgiServer {
    /// The worker as a hook sees it now.
    fn live_view(&self) -> WorkerView {
        super::live_view(
            &self.view,
            self.slot,
            !self.stopping.load(Ordering::Relaxed),
            true,
        )
    }

    fn forget_ws(&self, id: u64) {
        let gone = self
            .open_ws
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        drop(gone);
    }
}

/// The loop's side of the asgi kind: starts each request's app.
pub struct AsgiHandler {
    server: Arc<AsgiServer>,
    names: HeaderNames,
    starter: Starter,
}

/// Where a request's response stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No http.response.start yet.
    Start,
    /// Started; body messages may follow.
    Body,
    /// The last body message was queued (maybe not all written yet).
    Sent,
    /// Finished: the connection went back to the loop.
    Finished,
}

/// One request as its app sees it: `receive` and `send`.
#[pyclass(module = "ferrocorn", frozen)]
pub struct Cycle {
    inner: Mutex<CycleState>,
}

struct CycleState {
    server: Arc<AsgiServer>,
    body: Option<Body>,
    io: Arc<dyn Transport>,
    enc: Encoder,
    phase: Phase,
    /// Response bytes not yet written, from `written`.
    pending: Vec<u8>,
    written: usize,
    /// The response's last bytes, for the writer thread to write before
    /// the connection goes back to the loop (asgi_writer).
    deferred: Option<Vec<u8>>,
    /// The whole body was handed to the app.
    body_done: bool,
    expect_continue: bool,
    /// The client went away (or a write failed): the connection is closed.
    gone: bool,
    keep: KeepAlive,
    back: Option<Resumer>,
    ending: Ending,
    rec: Rec,
    /// The `req` of pre_request / post_request, and the minimal environ
    /// post_request gets (gunicorn's asgi worker gives the same fields).
    hook: Option<(HookRequest, Py<PyDict>)>,
    /// The request's Task, once it waited (the eager part did not finish
    /// it), until its cancellation is scheduled when the client goes away.
    task: Option<Py<PyAny>>,
}

/// How a request (or WebSocket session) ends, kept the same way by both
/// kinds of cycle: the app's failure, a SystemExit's code, and asgi.py's
/// waits on the socket, each called with False when the request ends so
/// that it unregisters before the connection goes back to the loop.
#[derive(Default)]
struct Ending {
    waits: Vec<Py<PyAny>>,
    ended: bool,
    app_error: Option<AppError>,
    exit: Option<i32>,
}

impl Ending {
    /// Keeps `f` for the end of the request (calls it now if it ended).
    fn watch(&mut self, py: Python<'_>, f: Py<PyAny>) {
        if self.ended {
            Self::call(py, &f);
        } else {
            self.waits.push(f);
        }
    }

    /// Drops `f` (a wait that ended by itself): a long WebSocket session
    /// waits once per message, and must not keep every wait's callback.
    fn unwatch(&mut self, py: Python<'_>, f: &Py<PyAny>) {
        if let Some(i) = self.waits.iter().position(|g| g.bind(py).is(f.bind(py))) {
            self.waits.swap_remove(i);
        }
    }

    /// The request ended: every wait is told.
    fn end(&mut self, py: Python<'_>) {
        self.ended = true;
        for f in std::mem::take(&mut self.waits) {
            Self::call(py, &f);
        }
    }

    fn call(py: Python<'_>, f: &Py<PyAny>) {
        if let Err(e) = f.call1(py, (false,)) {
            crate::log_error!("ending an ASGI wait: {}", crate::python::format_err(py, &e));
        }
    }

    /// The app raised `e` (logged unless `log` is false, or a SystemExit).
    fn failed(&mut self, py: Python<'_>, e: Bound<'_, PyAny>, path: &str, log: bool) {
        let (error, exit) = app_failure(py, e, path, log);
        self.exit = exit;
        self.app_error = Some(error);
    }

    /// The app raised or asked the worker to exit.
    fn failing(&self) -> bool {
        self.app_error.is_some() || self.exit.is_some()
    }
}

/// What the records of a request (access log, metrics) need from its start.
struct Rec {
    method: usize,
    path: String,
    t0: Instant,
    wall: Option<SystemTime>,
    log_info: Option<RequestLog>,
    peer: Peer,
    /// Its entry in the worker's in-flight table, until it ends.
    shown: Option<(Ticket, &'static InFlight)>,
}

impl Drop for Rec {
    /// A request dropped without [`Rec::end`] leaves no entry behind.
    fn drop(&mut self) {
        if let Some((t, table)) = self.shown.take() {
            table.end(t);
        }
    }
}

impl Rec {
    fn new(
        server: &AsgiServer,
        head: &crate::http::RequestHead<'_>,
        peer: &Peer,
        t0: Instant,
        began_ms: u64,
    ) -> Rec {
        Rec {
            method: method_index(&head.method),
            path: String::from_utf8_lossy(head.path).into_owned(),
            t0,
            wall: server.access.as_ref().map(|_| SystemTime::now()),
            log_info: server.access.as_ref().map(|_| RequestLog::capture(head)),
            peer: peer.clone(),
            shown: server
                .in_flight
                .begin(head.method.as_bytes(), head.path, began_ms)
                .map(|t| (t, server.in_flight)),
        }
    }

    /// The request ended: access-log line, metrics, failures, the slot.
    /// Returns when it ended.
    fn end(
        &mut self,
        server: &AsgiServer,
        status: u16,
        sent: u64,
        request_bytes: u64,
        head: crate::http::response::Head,
        app_error: Option<&AppError>,
    ) -> Instant {
        let ended = Instant::now();
        let took = ended.saturating_duration_since(self.t0);
        if let (Some(access), Some(info), Some(start)) =
            (&server.access, self.log_info.take(), self.wall)
        {
            let out = Outcome {
                status,
                sent,
                head,
                ..Outcome::default()
            };
            info.log(access, &self.peer.ip_string(), &out, start, took, None);
        }
        server.metrics.record(&Observation {
            method: self.method,
            status,
            seconds: took.as_secs_f64(),
            request_bytes,
            response_bytes: sent,
        });
        if let Some(e) = app_error {
            server
                .errors
                .record_failure(METHODS[self.method], &e.endpoint, &e.error_type);
        }
        if let Some((t, table)) = self.shown.take() {
            table.end(t);
        }
        server.slot.end_request();
        ended
    }
}

/// An exception from the app, for the logs and the failure metrics; the
/// exit code when it is a SystemExit.
fn app_failure(
    py: Python<'_>,
    e: Bound<'_, PyAny>,
    path: &str,
    log: bool,
) -> (AppError, Option<i32>) {
    let err = PyErr::from_value(e);
    let exit = crate::python::system_exit_code(py, &err);
    if exit.is_none() && log {
        // gunicorn 27's asgi worker: log.exception("Error in ASGI application").
        crate::python::log_exception(py, "Error in ASGI application", &err);
    }
    let error = AppError {
        error_type: err
            .get_type(py)
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default(),
        endpoint: path.to_string(),
    };
    (error, exit)
}

impl AsgiHandler {
    pub fn new(
        py: Python<'_>,
        app: &Py<PyAny>,
        listeners: &[WorkerListener],
        access: Option<AccessLog>,
        ctx: &super::Context,
        settings: &AsgiSettings,
        event_loop: &Bound<'_, PyAny>,
    ) -> PyResult<AsgiHandler> {
        let m = module(py)?;
        let (stand_by, tasks, enter, leave): (Py<PyAny>, Py<PyAny>, Py<PyAny>, Py<PyAny>) =
            m.getattr("starter")?.call1((event_loop,))?.extract()?;
        let starter = Starter {
            app: app.clone_ref(py),
            event_loop: event_loop.clone().unbind(),
            stand_by,
            enter,
            leave,
            standing: None,
        };
        let (receive_body, receive_disconnect, send_rest, ws_receive): (
            Py<PyAny>,
            Py<PyAny>,
            Py<PyAny>,
            Py<PyAny>,
        ) = m
            .getattr("waits")?
            .call1((event_loop, settings.io_timeout.as_secs_f64()))?
            .extract()?;
        let cancel_later = m.getattr("canceller")?.call1((event_loop,))?.unbind();
        let keys = Keys::new(py);
        let root_path = PyString::new(py, &settings.root_path);
        let templates = listeners
            .iter()
            .map(|l| {
                let addr = match &l.kind {
                    ListenKind::Tcp(a) => Some((a.ip().to_string(), a.port())),
                    ListenKind::Unix(_) => None,
                };
                let server = asgi::addr_value(py, &addr)?;
                asgi::scope_template(py, &keys, "http", &root_path, &server).map(Bound::unbind)
            })
            .collect::<PyResult<Vec<_>>>()?;
        let server = AsgiServer {
            keys,
            templates,
            state: PyDict::new(py).unbind(),
            access,
            slot: ctx.slot,
            metrics: ctx.metrics,
            errors: ctx.errors,
            in_flight: ctx.in_flight,
            tasks,
            receive_body,
            receive_disconnect,
            send_rest,
            ws_receive,
            ws_max_message: settings.ws_max_message,
            io_timeout: settings.io_timeout,
            cancel_later,
            disconnect_grace: settings.disconnect_grace.as_secs_f64(),
            open_ws: Mutex::new(HashMap::new()),
            next_ws: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            going_away: AtomicBool::new(false),
            request_hooks: ctx.hooks.has("pre_request") || ctx.hooks.has("post_request"),
            hooks: Arc::clone(&ctx.hooks),
            view: ctx.view,
        };
        Ok(AsgiHandler {
            server: Arc::new(server),
            names: HeaderNames::default(),
            starter,
        })
    }

    /// `client`: the scope's client tuple of this connection, made at its
    /// first request.
    fn start(
        &mut self,
        py: Python<'_>,
        mut req: Request<'_>,
        client: &mut Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let Some(body) = req.body.take() else {
            return Ok(());
        };
        let keep = req.ctl.count();
        let back = req.ctl.detach();
        let server = &self.server;
        let head = &req.head;
        let t0 = Instant::now();
        let began_ms = server.slot.begin_request();
        server.slot.requests.fetch_add(1, Ordering::Relaxed);
        let client = match client {
            Some(c) => c.bind(py).clone(),
            None => {
                let addr = req.peer.addr.map(|a| (a.ip().to_string(), a.port()));
                let c = asgi::addr_value(py, &addr)?;
                *client = Some(c.clone().unbind());
                c
            }
        };
        let Some(template) = server.templates.get(req.listener) else {
            return Err(PyRuntimeError::new_err(
                "a request from an unknown listener",
            ));
        };
        let state = server.state.bind(py);
        let parts = ScopeParts {
            // (https only when a uwsgi front end said so: its HTTPS var.)
            scheme: if req.peer.https { "https" } else { "http" },
            template: template.bind(py),
            client: &client,
            state: Some(state),
        };
        if websocket::is_upgrade(head) {
            let scope = websocket::scope(py, &server.keys, &mut self.names, head, &parts)?;
            let id = server.next_ws.fetch_add(1, Ordering::Relaxed);
            let rec = Rec::new(server, head, req.peer, t0, began_ms);
            let cycle = Bound::new(
                py,
                ws::WsCycle::new(id, Arc::clone(server), head, body, back, rec),
            )?;
            server
                .open_ws
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, cycle.clone().unbind());
            self.starter.start(py, &cycle, scope)?;
            return Ok(());
        }
        server.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        let hook = if server.request_hooks {
            Some(request_hook(py, server, head, req.peer, req.nreq)?)
        } else {
            None
        };
        let scope = asgi::http_scope(py, &server.keys, &mut self.names, head, &parts)?;
        let io = Arc::clone(body.transport());
        let cycle = Cycle {
            inner: Mutex::new(CycleState {
                server: Arc::clone(server),
                io,
                enc: Encoder::new(head.version, head.method == "HEAD", !keep.before),
                body: Some(body),
                phase: Phase::Start,
                pending: Vec::new(),
                written: 0,
                deferred: None,
                body_done: false,
                expect_continue: head.expect_continue,
                gone: false,
                keep,
                back: Some(back),
                ending: Ending::default(),
                rec: Rec::new(server, head, req.peer, t0, began_ms),
                hook,
                task: None,
            }),
        };
        server
            .metrics
            .record_queue(req.arrived.elapsed().as_secs_f64());
        // gunicorn's asgi worker runs pre_request inside the app's try:
        // its exception is answered as the app's (500).
        let refused = match &lock(&cycle).hook {
            Some((r, _)) => server.hooks.pre_request(py, &server.live_view(), r).err(),
            None => None,
        };
        let cycle = Bound::new(py, cycle)?;
        if let Some(e) = refused {
            let err = match e.system_exit {
                Some(code) => pyo3::exceptions::PySystemExit::new_err(code),
                None => PyRuntimeError::new_err("the pre_request hook failed"),
            };
            cycle
                .get()
                .done(py, Some(err.into_value(py).into_bound(py).into_any()));
            return Ok(());
        }
        self.starter.start(py, &cycle, scope)
    }
}

/// What [`Starter`] tells a request's cycle.
trait Driven: pyo3::PyClass<Frozen = pyo3::pyclass::boolean_struct::True> + Sync {
    /// The app returned (`error` None) or raised.
    fn ended(&self, py: Python<'_>, error: Option<Bound<'_, PyAny>>);
    /// The request waits, and goes on in `task`.
    fn waits_in(&self, task: Py<PyAny>);
}

impl Driven for Cycle {
    fn ended(&self, py: Python<'_>, error: Option<Bound<'_, PyAny>>) {
        self.done(py, error);
    }
    fn waits_in(&self, task: Py<PyAny>) {
        self.running(task);
    }
}

/// Runs each request's app coroutine at once, up to its end or its first
/// wait, with asgi.py's standing Task current (asgi.py's `starter` says
/// why there is no Task per request); a request that waits is handed to
/// that Task, and a new one stands by.
struct Starter {
    app: Py<PyAny>,
    event_loop: Py<PyAny>,
    /// asgi.py's stand_by() -> (task, handoff), and asyncio's
    /// _enter_task / _leave_task.
    stand_by: Py<PyAny>,
    enter: Py<PyAny>,
    leave: Py<PyAny>,
    /// The standing Task and the future it waits on for a request.
    standing: Option<(Py<PyAny>, Py<PyAny>)>,
}

impl Starter {
    fn start<C: Driven>(
        &mut self,
        py: Python<'_>,
        cycle: &Bound<'_, C>,
        scope: Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let (task, handoff) = match self.standing.take() {
            // (Done only when cancelled: the worker stops, or an app
            // cancelled its current task.)
            Some((t, h)) if !t.bind(py).call_method0(intern!(py, "done"))?.is_truthy()? => (t, h),
            _ => self.stand_by.call0(py)?.extract(py)?,
        };
        let ctx = Context::copy_current(py)?;
        self.enter.call1(py, (&self.event_loop, &task))?;
        let first = ctx.run(|| -> PyResult<_> {
            let coro = self.app.bind(py).call1((
                scope,
                cycle.as_any().getattr(intern!(py, "receive"))?,
                cycle.as_any().getattr(intern!(py, "send"))?,
            ))?;
            let step = send_none(&coro)?;
            Ok((coro, step))
        });
        let first = first.and_then(|r| r);
        let left = self.leave.call1(py, (&self.event_loop, &task));
        match first {
            Ok((coro, Step::Yielded(fut))) => {
                handoff.call_method1(
                    py,
                    intern!(py, "set_result"),
                    ((cycle, ctx.as_any(), coro, fut),),
                )?;
                cycle.get().waits_in(task);
            }
            Ok((_, Step::Returned)) => {
                self.standing = Some((task, handoff));
                cycle.get().ended(py, None);
            }
            Err(e) => {
                self.standing = Some((task, handoff));
                cycle
                    .get()
                    .ended(py, Some(e.into_value(py).into_bound(py).into_any()));
            }
        }
        left.map(drop)
    }
}

impl Handler for AsgiHandler {
    /// The scope's client tuple (made once per connection).
    type ConnState = Option<Py<PyAny>>;

    fn connection(&mut self, _peer: &Peer, _listener: usize) -> Self::ConnState {
        None
    }

    fn woke(&mut self) -> Result<(), i32> {
        // (The event loop runs Python's signal handlers itself.) At a
        // graceful stop, open WebSockets are closed with 1001 once the HTTP
        // requests in flight are done.
        let s = &self.server;
        if s.stopping.load(Ordering::Relaxed)
            && !s.going_away.load(Ordering::Relaxed)
            && s.metrics.in_flight.load(Ordering::Relaxed) == 0
        {
            s.going_away.store(true, Ordering::Relaxed);
            Python::attach(|py| {
                let open: Vec<Py<ws::WsCycle>> = s
                    .open_ws
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .map(|c| c.clone_ref(py))
                    .collect();
                for c in open {
                    c.get().going_away(py);
                }
            });
        }
        Ok(())
    }

    fn stopping(&mut self) {
        self.server.stopping.store(true, Ordering::Relaxed);
    }

    fn reopen_logs(&mut self) {
        if let Some(a) = &self.server.access {
            if let Err(e) = a.reopen() {
                crate::log_error!("reopening the access log: {e}");
            }
        }
    }

    fn serve(&mut self, req: Request<'_>, client: &mut Self::ConnState) -> Dispatch {
        // The turn runs in the event loop, which holds the GIL.
        Python::attach(|py| {
            if let Err(e) = self.start(py, req, client) {
                // The request (and its Resumer) is gone with the error: the
                // connection stays detached until the worker stops.
                crate::log_error!(
                    "starting an ASGI request: {}",
                    crate::python::format_err(py, &e)
                );
            }
        });
        Dispatch::Detached
    }
}

impl CycleState {
    /// The client went away while the app runs: the app has seen (or will
    /// see) http.disconnect, and after --asgi-disconnect-grace-period its
    /// Task is cancelled.
    fn watch_gone(&mut self, py: Python<'_>) {
        if !self.gone || self.phase == Phase::Finished {
            return;
        }
        if let Some(task) = self.task.take() {
            let grace = self.server.disconnect_grace;
            if let Err(e) = self.server.cancel_later.call1(py, (task, grace)) {
                crate::log_error!(
                    "scheduling the cancellation of a request: {}",
                    crate::python::format_err(py, &e)
                );
            }
        }
    }

    /// Writes what is pending; Ok(true) once all is written.
    fn write_pending(&mut self) -> bool {
        if self.gone {
            self.pending.clear();
            self.written = 0;
            return true;
        }
        while self.written < self.pending.len() {
            match self.io.write_nb(&self.pending[self.written..]) {
                Ok(0) => {
                    self.gone = true;
                    break;
                }
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => {
                    self.gone = true;
                    break;
                }
            }
        }
        // A TLS session may still hold the last bytes.
        if !self.gone {
            match self.io.flush_nb() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => self.gone = true,
            }
        }
        self.pending.clear();
        self.written = 0;
        true
    }

    /// The response's last bytes go to the writer thread when nothing
    /// earlier is pending and they are few (asgi_writer).
    fn defer_last(&mut self) -> bool {
        if self.gone
            || self.back.is_none()
            || !self.pending.is_empty()
            || self.io.fd() < 0
            || !super::asgi_writer::enabled()
            || super::asgi_writer::get().is_none()
        {
            return false;
        }
        // A request that took the app little time costs less to write
        // here than to hand over (measured: docs/architecture.md).
        if self.rec.t0.elapsed() < super::asgi_writer::MIN_APP_TIME {
            return false;
        }
        let out = self.enc.out();
        if out.is_empty() || out.len() > super::asgi_writer::MAX_DEFERRED {
            return false;
        }
        self.deferred = Some(std::mem::take(out));
        true
    }

    /// Moves the encoder's output to the pending bytes.
    fn queue_out(&mut self) {
        let out = self.enc.out();
        if self.pending.is_empty() {
            std::mem::swap(&mut self.pending, out);
        } else {
            self.pending.append(out);
        }
    }

    /// Ends the request: its records, and the connection back to the loop.
    fn finish(&mut self, py: Python<'_>) {
        if self.phase == Phase::Finished {
            return;
        }
        self.phase = Phase::Finished;
        self.ending.end(py);
        let server = Arc::clone(&self.server);
        let reusable = !self.gone && !self.enc.should_close() && self.ending.app_error.is_none();
        let mut reuse = reusable && self.keep.before;
        let (request_bytes, leftover) = match self.body.take() {
            Some(b) => b.finish(reuse),
            None => (0, None),
        };
        server.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some((r, env)) = self.hook.take() {
            let status = self.enc.status_code();
            let line = crate::http::status_line(status);
            let headers = self.enc.head().headers();
            let rv = ResponseView {
                status: Some(&line),
                status_code: Some(status),
                headers: &headers,
                sent: self.enc.sent(),
                response_length: self.enc.length(),
                headers_sent: self.enc.headers_sent(),
            };
            if let Err(e) = server.hooks.post_request(
                py,
                &server.live_view(),
                &r,
                Some(env.bind(py)),
                Some(&rv),
            ) {
                self.ending.exit = self.ending.exit.or(e.system_exit);
            }
            if r.must_close(py) {
                reuse = false;
            }
        }
        let head = self.enc.take_head();
        let ended = self.rec.end(
            &server,
            self.enc.status_code(),
            self.enc.sent(),
            request_bytes,
            head,
            self.ending.app_error.as_ref(),
        );
        if let Some(back) = self.back.take() {
            let served = Served {
                reusable: reuse && leftover.is_some(),
                leftover,
                exit: self.ending.exit,
                ended: Some(ended),
            };
            // defer_last took the bytes only when the writer runs.
            match (self.deferred.take()).and_then(|d| Some((d, super::asgi_writer::get()?))) {
                Some((data, writer)) => writer.push(super::asgi_writer::Job {
                    io: Arc::clone(&self.io),
                    data,
                    timeout: server.io_timeout,
                    back,
                    served,
                }),
                None => back.resume(served),
            }
        }
    }

    /// The response ended without all its bytes: close the connection.
    fn abort(&mut self, py: Python<'_>) {
        self.gone = true;
        self.pending.clear();
        self.finish(py);
    }

    fn body_message<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        if self.expect_continue {
            self.expect_continue = false;
            if let Some(b) = &self.body {
                let t = b.transport();
                let _ = t.write_nb(b"HTTP/1.1 100 Continue\r\n\r\n");
                let _ = t.flush_nb();
            }
        }
        let Some(body) = self.body.as_mut() else {
            self.body_done = true;
            return self.server.keys.request_message(py, b"", false).map(Some);
        };
        match body.read_some(RECEIVE_CHUNK) {
            Ok(data) => {
                let more = !data.is_empty() && body.more();
                if !more {
                    self.body_done = true;
                }
                self.server.keys.request_message(py, &data, more).map(Some)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(_) => {
                // A malformed body or the client gone: the app sees
                // http.disconnect, the connection is closed.
                self.gone = true;
                self.body_done = true;
                self.server.keys.disconnect_message(py).map(Some)
            }
        }
    }

    fn send(&mut self, py: Python<'_>, msg: &Bound<'_, PyAny>) -> PyResult<bool> {
        let sent = asgi::parse_sent(py, &self.server.keys, msg)?;
        match (self.phase, sent) {
            (Phase::Start, Sent::Start { status, headers }) => {
                let line = crate::http::status_line(status);
                self.enc
                    .begin(&line)
                    .map_err(pyo3::exceptions::PyValueError::new_err)?;
                let enc = &mut self.enc;
                Sent::headers(&headers, |k, v| enc.header(k, v))?;
                self.phase = Phase::Body;
                Ok(true)
            }
            (Phase::Body, Sent::Body { body, more }) => {
                let enc = &mut self.enc;
                Sent::with_body(&body, |body| {
                    if !enc.headers_sent() {
                        // A whole response in one message: say its length
                        // rather than chunk it.
                        let code = enc.status_code();
                        if !more
                            && enc.length().is_none()
                            && !matches!(code, 100..=199 | 204 | 304)
                            && !enc.is_head()
                        {
                            enc.set_length(body.len() as u64);
                        }
                        enc.end_headers();
                    }
                    enc.body(body);
                })?;
                if !more {
                    self.enc.finish();
                    self.phase = Phase::Sent;
                    if self.defer_last() {
                        self.finish(py);
                        return Ok(true);
                    }
                }
                self.queue_out();
                let all = self.write_pending();
                if all && self.phase == Phase::Sent {
                    self.finish(py);
                }
                Ok(all)
            }
            (Phase::Sent | Phase::Finished, _) if self.gone => Ok(true),
            (Phase::Start, _) => Err(PyRuntimeError::new_err(
                "Expected ASGI message 'http.response.start', but got 'http.response.body'",
            )),
            (Phase::Body, _) => Err(PyRuntimeError::new_err(
                "Expected ASGI message 'http.response.body', but got 'http.response.start'",
            )),
            (Phase::Sent | Phase::Finished, _) => Err(PyRuntimeError::new_err(
                "Unexpected ASGI message sent, after response already completed",
            )),
        }
    }
}

fn lock(c: &Cycle) -> std::sync::MutexGuard<'_, CycleState> {
    c.inner.lock().unwrap_or_else(|e| e.into_inner())
}

#[pymethods]
impl Cycle {
    /// ASGI `receive()`.
    fn receive(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let mut st = lock(slf.get());
        if st.body_done || st.gone {
            st.watch_gone(py);
            if st.gone || st.phase == Phase::Finished {
                let msg = st.server.keys.disconnect_message(py)?;
                return ready(py, Some(msg.into_any().unbind()));
            }
            let (f, fd) = (st.server.receive_disconnect.clone_ref(py), st.io.fd());
            drop(st);
            return f.call1(py, (slf, fd));
        }
        let msg = st.body_message(py)?;
        st.watch_gone(py);
        match msg {
            Some(msg) => ready(py, Some(msg.into_any().unbind())),
            None => {
                let (f, fd) = (st.server.receive_body.clone_ref(py), st.io.fd());
                drop(st);
                f.call1(py, (slf, fd))
            }
        }
    }

    /// The next body message if it can be had now, else None.
    fn receive_now(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let mut st = lock(self);
        if st.gone {
            return Ok(Some(
                st.server.keys.disconnect_message(py)?.into_any().unbind(),
            ));
        }
        let msg = st.body_message(py)?;
        st.watch_gone(py);
        Ok(msg.map(|m| m.into_any().unbind()))
    }

    /// The client stopped sending its body for longer than the timeout.
    fn timed_out_receive(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let mut st = lock(self);
        st.gone = true;
        st.watch_gone(py);
        Ok(st.server.keys.disconnect_message(py)?.into_any().unbind())
    }

    /// `{"type": "http.disconnect"}`.
    fn disconnect(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let st = lock(self);
        Ok(st.server.keys.disconnect_message(py)?.into_any().unbind())
    }

    /// The socket is readable after the whole body: true when the client
    /// closed (or reset) the connection.
    fn peer_gone(&self, py: Python<'_>) -> bool {
        let mut st = lock(self);
        let gone = st.io.peer_closed();
        if gone {
            st.gone = true;
            st.watch_gone(py);
        }
        gone
    }

    /// asgi.py: the request's Task (the app had to wait).
    fn running(&self, task: Py<PyAny>) {
        lock(self).task = Some(task);
    }

    /// ASGI `send(message)`.
    fn send(slf: &Bound<'_, Self>, message: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let mut st = lock(slf.get());
        let all = st.send(py, message)?;
        st.watch_gone(py);
        let server = Arc::clone(&st.server);
        let fd = st.io.fd();
        drop(st);
        sent_or_wait(slf.as_any(), all, &server, fd)
    }

    /// Writes pending response bytes; true once all are out.
    fn flush(&self, py: Python<'_>) -> bool {
        let mut st = lock(self);
        let all = st.write_pending();
        st.watch_gone(py);
        if all && st.phase == Phase::Sent {
            st.finish(py);
        }
        all
    }

    /// Ends the request without the rest of its response.
    fn abort(&self, py: Python<'_>, why: &str) {
        let mut st = lock(self);
        crate::log_debug!("ASGI response aborted: {why}");
        st.abort(py);
    }

    /// `f(False)` is called when the request ends.
    fn on_finish(&self, py: Python<'_>, f: Py<PyAny>) {
        lock(self).ending.watch(py, f);
    }

    /// `f` is no longer to be called (its wait ended).
    fn off_finish(&self, py: Python<'_>, f: Py<PyAny>) {
        lock(self).ending.unwatch(py, &f);
    }

    /// The app returned (`error` None) or raised.
    fn done(&self, py: Python<'_>, error: Option<Bound<'_, PyAny>>) {
        let mut guard = lock(self);
        let st = &mut *guard;
        if let Some(e) = error {
            // An exception once the client is gone is the disconnect's
            // (the grace period's cancellation, a write that failed).
            st.ending.failed(py, e, &st.rec.path, !st.gone);
        }
        match st.phase {
            Phase::Finished => {}
            Phase::Start => {
                if !st.ending.failing() {
                    crate::log_error!("ASGI callable returned without starting response.");
                }
                let page = crate::http::error_response(500, "Internal Server Error", "");
                st.enc
                    .replaced_by_error(500, crate::http::error_body_len(&page));
                st.pending = page;
                st.written = 0;
                st.phase = Phase::Sent;
                // Best effort: the connection closes after it.
                st.gone = st.gone || !st.write_pending();
                st.gone = true;
                st.finish(py);
            }
            Phase::Body => {
                if !st.ending.failing() {
                    crate::log_error!("ASGI callable returned without completing response.");
                }
                st.abort(py);
            }
            Phase::Sent => {
                // Still writing (send_rest runs): an error ends it now.
                if st.ending.failing() {
                    st.abort(py);
                }
            }
        }
    }
}

/// The `req` object of the request hooks, and the minimal environ
/// post_request gets (the fields gunicorn's asgi worker gives it).
fn request_hook(
    py: Python<'_>,
    server: &AsgiServer,
    head: &crate::http::RequestHead<'_>,
    peer: &Peer,
    nreq: u64,
) -> PyResult<(HookRequest, Py<PyDict>)> {
    let r = server.hooks.request_for(py, head, peer.addr, nreq);
    let env = PyDict::new(py);
    env.set_item("REQUEST_METHOD", &*head.method)?;
    env.set_item("RAW_URI", crate::http::latin1_to_string(head.uri))?;
    env.set_item(
        "PATH_INFO",
        crate::http::latin1_to_string(&crate::http::percent_decode_path(head.path)),
    )?;
    env.set_item("QUERY_STRING", crate::http::latin1_to_string(head.query))?;
    env.set_item(
        "SERVER_PROTOCOL",
        format!("HTTP/{}.{}", head.version.0, head.version.1),
    )?;
    env.set_item(
        "REMOTE_ADDR",
        peer.addr
            .map_or_else(|| "-".to_string(), |a| a.ip().to_string()),
    )?;
    for h in &head.headers {
        let name = String::from_utf8_lossy(h.name)
            .to_ascii_uppercase()
            .replace('-', "_");
        env.set_item(
            format!("HTTP_{name}"),
            crate::http::latin1_to_string(&h.value),
        )?;
    }
    Ok((r, env.unbind()))
}

/// What `send()` returns: done when everything went out, else asgi.py's
/// coroutine that writes the rest as the socket allows.
fn sent_or_wait(
    cycle: &Bound<'_, PyAny>,
    all: bool,
    server: &AsgiServer,
    fd: RawFd,
) -> PyResult<Py<PyAny>> {
    if all {
        return ready(cycle.py(), None);
    }
    server.send_rest.call1(cycle.py(), (cycle, fd))
}

fn ready(py: Python<'_>, value: Option<Py<PyAny>>) -> PyResult<Py<PyAny>> {
    Ok(Bound::new(py, Ready::new(value))?.into_any().unbind())
}

/// Runs the worker: lifespan startup, the loop's turns in the event loop,
/// lifespan shutdown. Returns the exit code.
pub fn run<F>(py: Python<'_>, app: &Py<PyAny>, settings: &AsgiSettings, make: F) -> i32
where
    F: FnOnce(&Bound<'_, PyAny>, &Py<PyAny>) -> Result<Loop<AsgiHandler>, String>,
{
    let fail = |e: PyErr| {
        crate::python::system_exit_code(py, &e).unwrap_or_else(|| {
            crate::log_error!(
                "Exception in the asgi worker: {}",
                crate::python::format_err(py, &e)
            );
            1
        })
    };
    let m = match module(py) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let event_loop = match m
        .getattr("new_loop")
        .and_then(|f| f.call1((&settings.loop_kind,)))
    {
        Ok(l) => l,
        Err(e) => {
            crate::log_error!(
                "Exception in worker process: {}",
                crate::python::format_err(py, &e)
            );
            return super::WORKER_BOOT_ERROR;
        }
    };
    let adapted;
    let app = if settings.tornado {
        adapted = match m.getattr("tornado_app").and_then(|f| f.call1((app,))) {
            Ok(a) => a.unbind(),
            Err(e) => {
                crate::log_error!(
                    "Exception in worker process: the tornado worker needs the tornado package \
                     in the app's virtualenv (pip install tornado): {}",
                    crate::python::format_err(py, &e)
                );
                return super::WORKER_BOOT_ERROR;
            }
        };
        &adapted
    } else {
        app
    };
    let lp = match make(&event_loop, app) {
        Ok(lp) => lp,
        Err(e) => {
            crate::log_error!("Exception in worker process: {e}");
            return super::WORKER_BOOT_ERROR;
        }
    };
    let state = lp.handler().server.state.clone_ref(py);
    let log_info = pyo3::types::PyCFunction::new_closure(py, None, None, |args, _| {
        if let Ok(msg) = args.get_item(0).and_then(|m| m.extract::<String>()) {
            crate::log_info!("{msg}");
        }
    });
    let log_error = pyo3::types::PyCFunction::new_closure(py, None, None, |args, _| {
        if let Ok(msg) = args.get_item(0).and_then(|m| m.extract::<String>()) {
            crate::log_error!("{msg}");
        }
    });
    let (log_info, log_error) = match (log_info, log_error) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return fail(e),
    };
    let started = m.getattr("startup").and_then(|f| {
        f.call1((
            &event_loop,
            app,
            &settings.lifespan,
            state,
            log_info,
            log_error,
        ))?
        .extract::<(Py<PyAny>, Option<String>)>()
    });
    let lifespan = match started {
        Ok((_, Some(err))) => {
            crate::log_error!("{err}");
            crate::log_error!("Application startup failed. Exiting.");
            return super::WORKER_BOOT_ERROR;
        }
        Ok((ls, None)) => ls,
        Err(e) => {
            if let Some(code) = crate::python::system_exit_code(py, &e) {
                return code;
            }
            crate::log_error!(
                "Exception in ASGI lifespan startup: {}",
                crate::python::format_err(py, &e)
            );
            return super::WORKER_BOOT_ERROR;
        }
    };
    let tasks = lp.handler().server.tasks.clone_ref(py);
    let fd = lp.wait_fd();
    let lp = Mutex::new(lp);
    let turn = pyo3::types::PyCFunction::new_closure(py, None, None, move |args, _kwargs| {
        let py = args.py();
        // The event loop calls one turn at a time: nothing in a turn runs it.
        let Ok(mut lp) = lp.try_lock() else {
            crate::log_error!("the connection loop was entered twice");
            return Ok::<_, PyErr>(0.05f64.into_pyobject(py)?.into_any().unbind());
        };
        Ok(match super::asgi_writer::held(|| lp.turn(Duration::ZERO)) {
            Some(code) => code.into_pyobject(py)?.into_any().unbind(),
            None => lp
                .next_wait()
                .as_secs_f64()
                .into_pyobject(py)?
                .into_any()
                .unbind(),
        })
    });
    let code = turn.and_then(|turn| {
        m.getattr("run")?
            .call1((
                &event_loop,
                turn,
                fd,
                lifespan,
                tasks,
                settings.graceful_timeout.as_secs_f64(),
            ))?
            .extract::<i32>()
    });
    let code = code.unwrap_or_else(fail);
    let _ = event_loop.call_method0("close");
    code
}
