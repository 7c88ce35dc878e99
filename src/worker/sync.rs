//! The sync worker kind: gunicorn's sync semantics (the app runs on the
//! loop thread, one request at a time, no thread-safety asked of it), while
//! the connection layer keeps idle keep-alive connections parked.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use pyo3::prelude::*;
use pyo3::types::PyString;

use super::request::RequestLog;
use crate::conn::connection::Peer;
use crate::conn::listen::WorkerListener;
use crate::conn::{Dispatch, Handler, Request, Served};
use crate::hooks::{Hooks, RequestView, ResponseView, WorkerView};
use crate::http::response::Encoder;
use crate::log::access::AccessLog;
use crate::metrics::store::{method_index, Observation, WorkerMetrics, METHODS};
use crate::shm::{ErrorTable, Slot};
use crate::sock::ListenKind;
use crate::wsgi::{Outcome, PeerValues, ServerAddr, Wsgi};

pub struct SyncHandler<'py> {
    py: Python<'py>,
    wsgi: Wsgi,
    /// SERVER_NAME / SERVER_PORT per listener.
    servers: Vec<ServerAddr>,
    access: Option<AccessLog>,
    slot: &'static Slot,
    metrics: &'static WorkerMetrics,
    /// Failed requests by label set.
    errors: &'static ErrorTable,
    hooks: Arc<Hooks>,
    /// pre_request or post_request is set: build `req` objects.
    request_hooks: bool,
    /// The worker as hooks see it (counters filled in per call).
    view: WorkerView,
}

impl<'py> SyncHandler<'py> {
    pub fn new(
        py: Python<'py>,
        wsgi: Wsgi,
        listeners: &[WorkerListener],
        access: Option<AccessLog>,
        ctx: super::Context,
    ) -> SyncHandler<'py> {
        let servers = listeners
            .iter()
            .map(|l| ServerAddr {
                tcp: match &l.kind {
                    ListenKind::Tcp(a) => Some((
                        PyString::new(py, &a.ip().to_string()).unbind(),
                        PyString::new(py, &a.port().to_string()).unbind(),
                    )),
                    ListenKind::Unix(_) => None,
                },
            })
            .collect();
        SyncHandler {
            py,
            wsgi,
            servers,
            access,
            slot: ctx.slot,
            metrics: ctx.metrics,
            errors: ctx.errors,
            request_hooks: ctx.hooks.has("pre_request") || ctx.hooks.has("post_request"),
            hooks: ctx.hooks,
            view: ctx.view,
        }
    }
}

impl Handler for SyncHandler<'_> {
    type ConnState = PeerValues;

    fn connection(&mut self, peer: &Peer, _listener: usize) -> PeerValues {
        PeerValues::new(self.py, peer.addr)
    }

    fn closed(&mut self, state: &mut PeerValues) {
        state.close(self.py);
    }

    fn woke(&mut self) -> Result<(), i32> {
        // Runs Python-level signal handlers (SIGABRT on timeout).
        self.py
            .check_signals()
            .map_err(|e| crate::python::system_exit_code(self.py, &e).unwrap_or(1))
    }

    fn reopen_logs(&mut self) {
        if let Some(a) = &self.access {
            if let Err(e) = a.reopen() {
                crate::log_error!("reopening the access log: {e}");
            }
        }
    }

    fn serve(&mut self, req: Request<'_>, peer: &mut PeerValues) -> Dispatch {
        Dispatch::Done(self.serve_inline(req, peer))
    }
}

impl SyncHandler<'_> {
    /// The whole request on the loop thread.
    fn serve_inline(&mut self, mut req: Request<'_>, peer: &mut PeerValues) -> Served {
        let py = self.py;
        // One monotonic clock read serves the duration metric and the
        // access log (which also wants the wall-clock start).
        let t0 = Instant::now();
        let wall = self.access.as_ref().map(|_| SystemTime::now());
        let Some(body) = req.body.take() else {
            return Served::closed(None);
        };
        let head = &req.head;
        let hook_req = if self.request_hooks {
            let headers: Vec<(&[u8], &[u8])> =
                head.headers.iter().map(|h| (h.name, &*h.value)).collect();
            let rv = RequestView {
                method: &head.method,
                uri: head.uri,
                path: head.path,
                query: head.query,
                fragment: head.fragment,
                version: head.version,
                headers: &headers,
                scheme: "http",
                peer: req.peer.addr,
                req_number: req.nreq,
            };
            let r = self.hooks.request(py, &rv);
            let view = self.live_view(req.alive());
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
        let keep_alive = req.count();
        self.slot.begin_request();
        self.slot.requests.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        req.send_continue(&body);
        let head = &req.head;
        let method = method_index(&head.method);
        let log_info = self.access.as_ref().map(|_| RequestLog::capture(head));
        let env = self.wsgi.environ(
            py,
            head,
            &self.servers[req.listener],
            peer,
            req.peer.proxy.as_ref(),
            req.peer.trusted,
        );
        let (mut out, env) = match env {
            Ok(env) => {
                let enc = Encoder::new(head.version, head.method == "HEAD", !keep_alive.before);
                // The environ as the app left it, for post_request and the
                // access log's `{NAME}e` atoms.
                let keep =
                    hook_req.is_some() || self.access.as_ref().is_some_and(|a| a.needs_environ());
                let kept = keep.then(|| env.clone());
                let out = self.wsgi.serve(py, env, body, peer, enc, req.peer.addr);
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
                        req.peer.ip_string(),
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
            let ip = req.peer.ip_string();
            let log_env = env.as_ref().filter(|_| access.needs_environ());
            info.log(access, &ip, &out, start, t0.elapsed(), log_env);
        }
        let mut exit = out.exit;
        if let Some(r) = &hook_req {
            let rv = ResponseView {
                status: out.status_line.as_deref(),
                status_code: out.status_line.as_ref().map(|_| out.status),
                headers: &out.response_headers,
                sent: out.sent,
                response_length: out.response_length,
                headers_sent: out.headers_sent,
            };
            let view = self.live_view(req.alive());
            // No environ: the request failed while it was built; gunicorn
            // then calls post_request with {} and no response.
            let resp = env.as_ref().map(|_| &rv);
            if let Err(e) = self.hooks.post_request(py, &view, r, env.as_ref(), resp) {
                exit = exit.or(e.system_exit);
            }
        }
        let hook_close = hook_req.as_ref().is_some_and(|r| r.must_close(py));
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics.record(&Observation {
            method,
            status: out.status,
            seconds: t0.elapsed().as_secs_f64(),
            request_bytes,
            response_bytes: out.sent,
        });
        if let Some(e) = &out.app_error {
            self.errors
                .record_failure(METHODS[method], &e.endpoint, &e.error_type);
        }
        self.slot.end_request();
        Served {
            reusable: out.reusable && !hook_close,
            leftover,
            exit,
        }
    }

    /// The worker as a hook sees it now (counters from the shared slot).
    fn live_view(&self, alive: bool) -> WorkerView {
        super::live_view(&self.view, self.slot, alive, true)
    }
}
