//! One WSGI request with the app, as every WSGI kind serves it on whichever
//! thread (or greenlet) runs Python: pre_request, the environ, the app and
//! its response, then the request record (metrics, access log,
//! post_request).

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use pyo3::prelude::*;

use super::request::RequestLog;
use crate::conn::body::Body;
use crate::conn::connection::{KeepAlive, Peer};
use crate::conn::listen::WorkerListener;
use crate::conn::{Control, Request, Resumer, Served};
use crate::hooks::{Hooks, ResponseView, WorkerView};
use crate::http::owned::OwnedHead;
use crate::http::response::Encoder;
use crate::http::RequestHead;
use crate::log::access::AccessLog;
use crate::metrics::store::{method_index, Observation, WorkerMetrics, METHODS};
use crate::shm::{ErrorTable, InFlight, Slot};
use crate::sock::ListenKind;
use crate::wsgi::{Outcome, PeerValues, ServerAddr, ThreadCache, Wsgi};

/// Where a request stands with the worker's lifecycle, seen from the code
/// that serves it.
pub trait Budget {
    /// The worker is not stopping.
    fn alive(&self) -> bool;
    /// Counts the request (after pre_request) and returns the keep-alive
    /// decision made before the response.
    fn count(&mut self) -> KeepAlive;
}

impl Budget for Control<'_> {
    fn alive(&self) -> bool {
        Control::alive(self)
    }

    fn count(&mut self) -> KeepAlive {
        Control::count(self)
    }
}

/// A request counted by the loop thread when it was handed to another
/// thread (the count needs the loop's lifecycle): pre_request runs after
/// the count there, and a failing pre_request still counts.
pub struct Counted {
    pub keep: KeepAlive,
    pub alive: bool,
}

impl Budget for Counted {
    fn alive(&self) -> bool {
        self.alive
    }

    fn count(&mut self) -> KeepAlive {
        self.keep
    }
}

/// One request as the connection layer handed it over.
pub struct Call<'a> {
    pub head: &'a RequestHead<'a>,
    pub body: Body,
    pub peer: &'a Peer,
    pub listener: usize,
    /// Requests on its connection so far, this one included.
    pub nreq: u64,
    /// When its first byte was read.
    pub arrived: Instant,
}

/// Everything a WSGI kind needs to serve requests; shared by the threads
/// that run the app.
pub struct WsgiServer {
    wsgi: Wsgi,
    /// SERVER_NAME / SERVER_PORT per listener.
    servers: Vec<ServerAddr>,
    access: Option<AccessLog>,
    slot: &'static Slot,
    metrics: &'static WorkerMetrics,
    /// Failed requests by label set.
    errors: &'static ErrorTable,
    /// The requests in flight, as `ferrocorn top` shows them.
    in_flight: &'static InFlight,
    hooks: std::sync::Arc<Hooks>,
    /// pre_request or post_request is set: build `req` objects.
    request_hooks: bool,
    /// The worker as hooks see it (counters filled in per call).
    view: WorkerView,
}

impl WsgiServer {
    pub fn new(
        py: Python<'_>,
        wsgi: Wsgi,
        listeners: &[WorkerListener],
        access: Option<AccessLog>,
        ctx: super::Context,
    ) -> PyResult<WsgiServer> {
        let servers = listeners
            .iter()
            .map(|l| {
                wsgi.server_addr(
                    py,
                    match &l.kind {
                        ListenKind::Tcp(a) => Some(*a),
                        ListenKind::Unix(_) => None,
                    },
                )
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(WsgiServer {
            wsgi,
            servers,
            access,
            slot: ctx.slot,
            metrics: ctx.metrics,
            errors: ctx.errors,
            in_flight: ctx.in_flight,
            request_hooks: ctx.hooks.has("pre_request") || ctx.hooks.has("post_request"),
            hooks: ctx.hooks,
            view: ctx.view,
        })
    }

    /// USR1: reopens the access log.
    pub fn reopen_logs(&self) {
        if let Some(a) = &self.access {
            if let Err(e) = a.reopen() {
                crate::log_error!("reopening the access log: {e}");
            }
        }
    }

    /// Serves one request to the end: hooks, app, response, request record.
    pub fn serve(
        &self,
        py: Python<'_>,
        call: Call<'_>,
        budget: &mut dyn Budget,
        peer: &mut PeerValues,
        keys: &RefCell<ThreadCache>,
    ) -> Served {
        // One monotonic clock read serves the duration metric and the
        // access log (which also wants the wall-clock start).
        let t0 = Instant::now();
        let wall = self.access.as_ref().map(|_| SystemTime::now());
        let Call {
            head,
            body,
            peer: conn_peer,
            listener,
            nreq,
            arrived,
        } = call;
        let hook_req = if self.request_hooks {
            let r = self.hooks.request_for(py, head, conn_peer.addr, nreq);
            let view = self.live_view(budget.alive());
            if let Err(e) = self.hooks.pre_request(py, &view, &r) {
                // gunicorn: a 500, the connection closed, nr not counted;
                // post_request still runs with {} and no response.
                let page = crate::http::error_response(500, "Internal Server Error", "");
                let _ = body.transport().write_all(&page);
                let _ = self.hooks.post_request(py, &view, &r, None, None);
                return Served::closed(e.system_exit);
            }
            Some(r)
        } else {
            None
        };
        let keep_alive = budget.count();
        let began_ms = self.slot.begin_request();
        let shown = self
            .in_flight
            .begin(head.method.as_bytes(), head.path, began_ms);
        self.slot.requests.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        crate::conn::send_continue(head, &body);
        let method = method_index(&head.method);
        let log_info = self.access.as_ref().map(|_| RequestLog::capture(head));
        let env = {
            // Borrowed only while the environ is built: greenlets serving
            // other requests on this thread may build theirs while this
            // one's app waits. (Taken already: a finalizer that switched
            // greenlets mid-build; build without the cache then.)
            let mut spare = ThreadCache::default();
            let mut cache = keys.try_borrow_mut();
            let keys = match cache.as_deref_mut() {
                Ok(k) => k,
                Err(_) => &mut spare,
            };
            self.wsgi.environ(
                py,
                keys,
                head,
                &self.servers[listener],
                peer,
                conn_peer.proxy.as_ref(),
                conn_peer.trusted,
                conn_peer.https,
            )
        };
        let (mut out, env) = match env {
            Ok(env) => {
                let enc = Encoder::new(head.version, head.method == "HEAD", !keep_alive.before);
                // The environ as the app left it, for post_request and the
                // access log's `{NAME}e` atoms.
                let keep =
                    hook_req.is_some() || self.access.as_ref().is_some_and(|a| a.needs_environ());
                let kept = keep.then(|| env.clone());
                let queued = t0.saturating_duration_since(arrived);
                self.metrics.record_queue(queued.as_secs_f64());
                let out = self.wsgi.serve(py, env, body, peer, enc, keys);
                (out, kept)
            }
            Err(e) => {
                if e.status == 500 && e.reason == "Internal Server Error" {
                    crate::log_error!(
                        "Error handling request {}: {}",
                        String::from_utf8_lossy(head.uri),
                        e.message
                    );
                } else {
                    crate::log_warning!(
                        "Invalid request from ip={}: {}",
                        conn_peer.ip_string(),
                        e.message
                    );
                }
                let page = crate::http::error_response(e.status, e.reason, &e.message);
                let _ = body.transport().write_all(&page);
                let out = Outcome {
                    status: e.status,
                    sent: crate::http::error_body_len(&page),
                    body: Some(body),
                    ..Outcome::default()
                };
                (out, None)
            }
        };
        let reuse = out.reusable && keep_alive.before;
        let (request_bytes, leftover) = match out.body.take() {
            Some(b) => b.finish(reuse),
            None => (0, None),
        };
        if let (Some(access), Some(info), Some(start)) = (&self.access, log_info, wall) {
            let ip = conn_peer.ip_string();
            let log_env = env.as_ref().filter(|_| access.needs_environ());
            info.log(access, &ip, &out, start, t0.elapsed(), log_env);
        }
        let mut exit = out.exit;
        if let Some(r) = &hook_req {
            let headers = out.head.headers();
            let rv = ResponseView {
                status: out.head.status(),
                status_code: out.head.status().map(|_| out.status),
                headers: &headers,
                sent: out.sent,
                response_length: out.response_length,
                headers_sent: out.headers_sent,
            };
            let view = self.live_view(budget.alive());
            // No environ: the request failed while it was built; gunicorn
            // then calls post_request with {} and no response.
            let resp = env.as_ref().map(|_| &rv);
            if let Err(e) = self.hooks.post_request(py, &view, r, env.as_ref(), resp) {
                exit = exit.or(e.system_exit);
            }
        }
        let hook_close = hook_req.as_ref().is_some_and(|r| r.must_close(py));
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        let ended = Instant::now();
        self.metrics.record(&Observation {
            method,
            status: out.status,
            seconds: ended.saturating_duration_since(t0).as_secs_f64(),
            request_bytes,
            response_bytes: out.sent,
        });
        if let Some(e) = &out.app_error {
            self.errors
                .record_failure(METHODS[method], &e.endpoint, &e.error_type);
        }
        if let Some(t) = shown {
            self.in_flight.end(t);
        }
        self.slot.end_request();
        Served {
            reusable: out.reusable && !hook_close,
            leftover,
            exit,
            ended: Some(ended),
        }
    }

    /// The worker as a hook sees it now (counters from the shared slot).
    fn live_view(&self, alive: bool) -> WorkerView {
        super::live_view(&self.view, self.slot, alive, true)
    }
}

/// The connection's Python values (REMOTE_ADDR, gunicorn.socket) for kinds
/// that serve away from the loop thread, which holds no GIL: made by the
/// first request served. One request at a time per connection, so the lock
/// is never contended (and never held by two greenlets).
pub type ConnValues = Arc<Mutex<Option<PeerValues>>>;

/// A request detached from the loop thread, to be served on a thread or a
/// greenlet that runs Python; its connection goes back to the loop when the
/// response is done.
pub struct Detached {
    head: OwnedHead,
    body: Body,
    peer: Peer,
    listener: usize,
    nreq: u64,
    arrived: Instant,
    counted: Counted,
    values: ConnValues,
    back: Resumer,
}

impl Detached {
    /// Counts the request (the loop's lifecycle is on the loop thread) and
    /// takes it, with an owned copy of its head, off the loop. None when the
    /// request has no body reader (never: the loop gives one).
    pub fn take(req: &mut Request<'_>, values: &ConnValues) -> Option<Detached> {
        let body = req.body.take()?;
        let keep = req.ctl.count();
        Some(Detached {
            head: OwnedHead::new(&req.head),
            body,
            peer: req.peer.clone(),
            listener: req.listener,
            nreq: req.nreq,
            arrived: req.arrived,
            counted: Counted {
                keep,
                alive: req.ctl.alive(),
            },
            values: Arc::clone(values),
            back: req.ctl.detach(),
        })
    }

    /// Serves the request; the caller hands the connection back to the loop
    /// with the [`Resumer`] (after its own bookkeeping).
    pub fn serve(
        self,
        py: Python<'_>,
        server: &WsgiServer,
        keys: &RefCell<ThreadCache>,
    ) -> (Resumer, Served) {
        let Detached {
            head,
            body,
            peer,
            listener,
            nreq,
            arrived,
            mut counted,
            values,
            back,
        } = self;
        let head = head.view();
        let call = Call {
            head: &head,
            body,
            peer: &peer,
            listener,
            nreq,
            arrived,
        };
        let served = {
            let mut values = values.lock().unwrap_or_else(|e| e.into_inner());
            let values = values.get_or_insert_with(|| PeerValues::new(py, peer.addr));
            server.serve(py, call, &mut counted, values, keys)
        };
        (back, served)
    }
}
