//! The asgi kind's WebSocket requests: [`WsCycle`] is `receive` and `send`
//! of one websocket connection scope. Framing, masking, fragmentation,
//! ping/pong and the close handshake are tungstenite's, over the request's
//! non-blocking socket: a read or write that would wait goes back to the
//! event loop (asgi.py's waits) and tungstenite resumes where it stopped.
//!
//! A session is counted as one request when it ends (status 101, its
//! duration), and in `gunicorn_websocket_connections` while it is open. At
//! a graceful stop, open sessions get close code 1001 once no HTTP request
//! is left in flight.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Error as WsError, Message};

use super::{ready, sent_or_wait, AsgiServer, Ending, Rec};
use crate::asgi::websocket::{self, Session};
use crate::conn::body::Body;
use crate::conn::transport::Transport;
use crate::conn::{Resumer, Served};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `websocket.connect` not yet received by the app.
    Connect,
    /// The app has the connect message; accept or close comes next.
    Handshake,
    Open,
    /// The session is over; the connection went back to the loop (closed).
    Finished,
}

/// One WebSocket connection as its app sees it.
#[pyclass(module = "ferrocorn", frozen)]
pub struct WsCycle {
    inner: Mutex<WsState>,
}

pub(super) struct WsState {
    /// Its key in the server's table of open sessions.
    id: u64,
    server: Arc<AsgiServer>,
    phase: Phase,
    key: Vec<u8>,
    /// permessage-deflate as agreed from the client's offer.
    deflate: Option<websocket::Deflate>,
    io: Arc<dyn Transport>,
    /// The request (for bytes the client sent after its head).
    body: Option<Body>,
    session: Option<Session>,
    /// Handshake or refusal bytes not yet written, from `written`.
    pending: Vec<u8>,
    written: usize,
    /// The close code the app is told when the session ends.
    close_code: Option<u16>,
    /// The reason in the client's close frame.
    close_reason: String,
    /// The server sent its close frame (the app's, or 1001 at shutdown).
    closing: bool,
    /// Counted in gunicorn_websocket_connections.
    open_counted: bool,
    status: u16,
    sent: u64,
    received: u64,
    back: Option<Resumer>,
    ending: Ending,
    rec: Rec,
}

fn lock(c: &WsCycle) -> MutexGuard<'_, WsState> {
    c.inner.lock().unwrap_or_else(|e| e.into_inner())
}

impl WsCycle {
    pub(super) fn new(
        id: u64,
        server: Arc<AsgiServer>,
        head: &crate::http::RequestHead<'_>,
        body: Body,
        back: Resumer,
        rec: Rec,
    ) -> WsCycle {
        WsCycle {
            inner: Mutex::new(WsState {
                id,
                key: websocket::client_key(head),
                deflate: websocket::deflate_offer(head),
                io: Arc::clone(body.transport()),
                body: Some(body),
                server,
                phase: Phase::Connect,
                session: None,
                pending: Vec::new(),
                written: 0,
                close_code: None,
                close_reason: String::new(),
                closing: false,
                open_counted: false,
                status: 0,
                sent: 0,
                received: 0,
                back: Some(back),
                ending: Ending::default(),
                rec,
            }),
        }
    }

    /// Graceful stop: sends close code 1001 (once).
    pub(super) fn going_away(&self, py: Python<'_>) {
        let mut st = lock(self);
        if st.phase == Phase::Open && !st.closing {
            st.close(py, 1001, "server shutting down");
        }
    }
}

fn message<'py>(py: Python<'py>, kind: &str) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("type", kind)?;
    Ok(d)
}

impl WsState {
    fn disconnect_message(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let d = message(py, "websocket.disconnect")?;
        d.set_item("code", self.close_code.unwrap_or(1006))?;
        d.set_item("reason", &self.close_reason)?;
        Ok(d.into_any().unbind())
    }

    /// Writes the pending handshake bytes; true once all are out (or the
    /// client is gone).
    fn write_pending(&mut self) -> bool {
        while self.written < self.pending.len() {
            match self.io.write_nb(&self.pending[self.written..]) {
                Ok(n) if n > 0 => self.written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                _ => {
                    self.close_code.get_or_insert(1006);
                    break;
                }
            }
        }
        // A TLS session may still hold the last bytes.
        if self.close_code.is_none() {
            match self.io.flush_nb() {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(_) => {
                    self.close_code.get_or_insert(1006);
                }
            }
        }
        self.pending.clear();
        self.written = 0;
        true
    }

    /// Flushes what tungstenite holds; Ok(true) once all is out.
    fn flush(&mut self) -> bool {
        if !self.write_pending() {
            return false;
        }
        let Some(s) = self.session.as_mut() else {
            return true;
        };
        match s.flush() {
            Ok(()) => true,
            Err(WsError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(_) => true,
        }
    }

    fn close(&mut self, _py: Python<'_>, code: u16, reason: &str) {
        self.closing = true;
        if let Some(s) = self.session.as_mut() {
            let _ = s.close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.to_string().into(),
            }));
            let _ = s.flush();
        }
    }

    /// The next message from the client, if one can be had now.
    fn read(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let Some(s) = self.session.as_mut() else {
            return Ok(Some(self.disconnect_message(py)?));
        };
        loop {
            match s.read() {
                Ok(Message::Text(t)) => {
                    self.received = self.received.saturating_add(t.len() as u64);
                    let d = message(py, "websocket.receive")?;
                    d.set_item("text", PyString::new(py, t.as_str()))?;
                    d.set_item("bytes", py.None())?;
                    return Ok(Some(d.into_any().unbind()));
                }
                Ok(Message::Binary(b)) => {
                    self.received = self.received.saturating_add(b.len() as u64);
                    let d = message(py, "websocket.receive")?;
                    d.set_item("bytes", PyBytes::new(py, &b))?;
                    d.set_item("text", py.None())?;
                    return Ok(Some(d.into_any().unbind()));
                }
                // Pongs to pings are queued by tungstenite and go out with
                // the next read or write.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(Message::Close(frame)) => {
                    if let Some(f) = &frame {
                        self.close_reason = f.reason.to_string();
                    }
                    self.close_code = Some(frame.map_or(1005, |f| u16::from(f.code)));
                    // tungstenite queued the reply; send it, then end.
                    let _ = s.flush();
                    self.finish(py);
                    return Ok(Some(self.disconnect_message(py)?));
                }
                Err(WsError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Ok(None)
                }
                Err(e) => {
                    let code = match e {
                        WsError::ConnectionClosed | WsError::AlreadyClosed => 1000,
                        // From the permessage-deflate codec: a message that
                        // inflates past the limit, or data that does not.
                        WsError::Io(e) if websocket::is_too_big(&e) => 1009,
                        WsError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => 1007,
                        WsError::Capacity(_) => 1009,
                        WsError::Protocol(_) => 1002,
                        WsError::Utf8(_) => 1007,
                        _ => 1006,
                    };
                    if matches!(code, 1009 | 1002 | 1007) {
                        self.close(py, code, "");
                    }
                    self.close_code.get_or_insert(code);
                    self.finish(py);
                    return Ok(Some(self.disconnect_message(py)?));
                }
            }
        }
    }

    /// Handles one message from the app; Ok(true) once it is all written.
    fn send(&mut self, py: Python<'_>, msg: &Bound<'_, PyAny>) -> PyResult<bool> {
        let msg = msg
            .cast::<PyDict>()
            .map_err(|_| PyTypeError::new_err("ASGI message must be a dict"))?;
        let kind: String = msg
            .get_item("type")?
            .ok_or_else(|| PyValueError::new_err("ASGI message has no 'type'"))?
            .extract()?;
        match (self.phase, kind.as_str()) {
            (Phase::Handshake | Phase::Connect, "websocket.accept") => {
                let subprotocol: Option<String> = match msg.get_item("subprotocol")? {
                    Some(p) if !p.is_none() => Some(p.extract()?),
                    _ => None,
                };
                let mut headers = Vec::new();
                if let Some(list) = msg.get_item("headers")? {
                    for item in list.try_iter()? {
                        let (k, v): (Vec<u8>, Vec<u8>) = item?.extract()?;
                        headers.push((
                            crate::http::latin1_to_string(&k),
                            crate::http::latin1_to_string(&v),
                        ));
                    }
                }
                self.pending = websocket::accept_response(
                    &self.key,
                    subprotocol.as_deref(),
                    self.deflate.as_ref(),
                    &headers,
                );
                self.written = 0;
                let leftover = match self.body.take() {
                    Some(b) => match b.finish(true) {
                        (_, Some((raw, pos))) => raw.get(pos..).unwrap_or_default().to_vec(),
                        (_, None) => Vec::new(),
                    },
                    None => Vec::new(),
                };
                self.session = Some(websocket::session(
                    Arc::clone(&self.io),
                    leftover,
                    self.server.ws_max_message,
                    self.deflate,
                ));
                self.status = 101;
                self.phase = Phase::Open;
                self.open_counted = true;
                self.server
                    .metrics
                    .websockets
                    .fetch_add(1, Ordering::Relaxed);
                Ok(self.write_pending())
            }
            (Phase::Handshake | Phase::Connect, "websocket.close") => {
                // Refused before the handshake: 403, as uvicorn answers.
                self.pending = b"HTTP/1.1 403 Forbidden\r\nServer: ferrocorn\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec();
                self.written = 0;
                self.status = 403;
                let all = self.write_pending();
                if all {
                    self.finish(py);
                }
                Ok(all)
            }
            (Phase::Open, "websocket.send") if !self.closing => {
                let out = match (msg.get_item("bytes")?, msg.get_item("text")?) {
                    (Some(b), _) if !b.is_none() => Message::Binary(b.extract::<Vec<u8>>()?.into()),
                    (_, Some(t)) if !t.is_none() => Message::Text(t.extract::<String>()?.into()),
                    _ => {
                        return Err(PyValueError::new_err(
                            "websocket.send needs 'bytes' or 'text'",
                        ))
                    }
                };
                let len = match &out {
                    Message::Binary(b) => b.len(),
                    Message::Text(t) => t.len(),
                    _ => 0,
                };
                let Some(s) = self.session.as_mut() else {
                    return Err(PyOSError::new_err("the WebSocket is closed"));
                };
                match s.write(out) {
                    Ok(()) => {}
                    Err(WsError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        self.close_code.get_or_insert(1006);
                        return Err(PyOSError::new_err(format!("the WebSocket is closed: {e}")));
                    }
                }
                self.sent = self.sent.saturating_add(len as u64);
                Ok(self.flush())
            }
            (Phase::Open, "websocket.close") => {
                let code: u16 = match msg.get_item("code")? {
                    Some(c) if !c.is_none() => c.extract()?,
                    _ => 1000,
                };
                let reason: String = match msg.get_item("reason")? {
                    Some(r) if !r.is_none() => r.extract()?,
                    _ => String::new(),
                };
                if !self.closing {
                    self.close(py, code, &reason);
                }
                self.close_code.get_or_insert(code);
                Ok(self.flush())
            }
            (Phase::Open | Phase::Finished, "websocket.send") => {
                Err(PyOSError::new_err("the WebSocket is closed"))
            }
            (Phase::Finished, "websocket.close") => Ok(true),
            (_, other) => Err(PyRuntimeError::new_err(format!(
                "Unexpected ASGI message '{other}' in the websocket protocol"
            ))),
        }
    }

    /// The session is over: records, and the connection back to the loop
    /// (closed: a WebSocket connection is never reused).
    fn finish(&mut self, py: Python<'_>) {
        if self.phase == Phase::Finished {
            return;
        }
        self.phase = Phase::Finished;
        self.ending.end(py);
        if self.open_counted {
            self.open_counted = false;
            self.server
                .metrics
                .websockets
                .fetch_sub(1, Ordering::Relaxed);
        }
        self.server.forget_ws(self.id);
        self.session = None;
        let server = Arc::clone(&self.server);
        let status = if self.status == 0 { 500 } else { self.status };
        self.rec.end(
            &server,
            status,
            self.sent,
            self.received,
            crate::http::response::Head::default(),
            self.ending.app_error.as_ref(),
        );
        if let Some(back) = self.back.take() {
            back.resume(Served::closed(self.ending.exit));
        }
    }
}

#[pymethods]
impl WsCycle {
    fn receive(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let mut st = lock(slf.get());
        match st.phase {
            Phase::Connect => {
                st.phase = Phase::Handshake;
                ready(
                    py,
                    Some(message(py, "websocket.connect")?.into_any().unbind()),
                )
            }
            Phase::Handshake => Err(PyRuntimeError::new_err(
                "receive() before websocket.accept: the connection is not open yet",
            )),
            Phase::Finished => {
                let m = st.disconnect_message(py)?;
                ready(py, Some(m))
            }
            Phase::Open => match st.read(py)? {
                Some(m) => ready(py, Some(m)),
                None => {
                    let (f, fd) = (st.server.ws_receive.clone_ref(py), st.io.fd());
                    drop(st);
                    f.call1(py, (slf, fd))
                }
            },
        }
    }

    /// The next message if one can be had now, else None.
    fn receive_now(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let mut st = lock(self);
        st.read(py)
    }

    fn disconnect(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let mut st = lock(self);
        st.finish(py);
        st.disconnect_message(py)
    }

    fn timed_out_receive(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.disconnect(py)
    }

    fn send(slf: &Bound<'_, Self>, message: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let mut st = lock(slf.get());
        let all = st.send(py, message)?;
        let server = Arc::clone(&st.server);
        let fd = st.io.fd();
        drop(st);
        sent_or_wait(slf.as_any(), all, &server, fd)
    }

    fn flush(&self, py: Python<'_>) -> bool {
        let mut st = lock(self);
        let all = st.flush();
        if all && st.status == 403 {
            st.finish(py);
        }
        all
    }

    /// asgi.py: the session's Task. A WebSocket app learns of the client's
    /// going away from websocket.disconnect and is never cancelled.
    fn running(&self, _task: Py<PyAny>) {}

    fn abort(&self, py: Python<'_>, why: &str) {
        let mut st = lock(self);
        crate::log_debug!("WebSocket aborted: {why}");
        st.close_code.get_or_insert(1006);
        st.finish(py);
    }

    fn on_finish(&self, py: Python<'_>, f: Py<PyAny>) {
        lock(self).ending.watch(py, f);
    }

    fn off_finish(&self, py: Python<'_>, f: Py<PyAny>) {
        lock(self).ending.unwatch(py, &f);
    }

    /// The app returned (`error` None) or raised.
    fn done(&self, py: Python<'_>, error: Option<Bound<'_, PyAny>>) {
        let mut guard = lock(self);
        let st = &mut *guard;
        if let Some(e) = error {
            let log = st.phase != Phase::Finished;
            st.ending.failed(py, e, &st.rec.path, log);
        }
        match st.phase {
            Phase::Finished => {}
            Phase::Connect | Phase::Handshake => {
                // Never accepted: 403 when the app just returned (uvicorn),
                // 500 when it raised.
                let (status, line): (u16, &[u8]) = if st.ending.app_error.is_some() {
                    (500, b"HTTP/1.1 500 Internal Server Error\r\n")
                } else {
                    (403, b"HTTP/1.1 403 Forbidden\r\n")
                };
                let mut page = line.to_vec();
                page.extend_from_slice(
                    b"Server: ferrocorn\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                st.pending = page;
                st.written = 0;
                st.status = status;
                st.write_pending();
                st.finish(py);
            }
            Phase::Open => {
                if !st.closing {
                    let code = if st.ending.app_error.is_some() {
                        1011
                    } else {
                        1000
                    };
                    st.close(py, code, "");
                }
                st.finish(py);
            }
        }
    }
}

impl super::Driven for WsCycle {
    fn ended(&self, py: Python<'_>, error: Option<Bound<'_, PyAny>>) {
        self.done(py, error);
    }
    fn waits_in(&self, task: Py<PyAny>) {
        self.running(task);
    }
}
