//! ASGI 3.0 (HTTP), the protocol side: the connection scope built from a
//! parsed request head, the `http.request` / `http.disconnect` messages, the
//! response messages read back from the app, and [`Ready`], the awaitable
//! that `receive()` and `send()` return when they need not wait.
//!
//! Nothing here does I/O or knows the event loop: the asgi worker kind
//! (src/worker/asgi.rs) drives requests with these pieces.

use std::collections::HashMap;

use pyo3::exceptions::{PyRuntimeError, PyStopIteration, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::http::RequestHead;

pub mod deflate;
pub mod websocket;

/// Dict keys and constant values, interned once per worker.
pub struct Keys {
    type_: Py<PyString>,
    asgi: Py<PyString>,
    version: Py<PyString>,
    spec_version: Py<PyString>,
    v3: Py<PyString>,
    spec: Py<PyString>,
    http: Py<PyString>,
    http_version: Py<PyString>,
    http_10: Py<PyString>,
    http_11: Py<PyString>,
    method: Py<PyString>,
    scheme: Py<PyString>,
    path: Py<PyString>,
    raw_path: Py<PyString>,
    query_string: Py<PyString>,
    root_path: Py<PyString>,
    headers: Py<PyString>,
    server: Py<PyString>,
    client: Py<PyString>,
    state: Py<PyString>,
    body: Py<PyString>,
    more_body: Py<PyString>,
    http_request: Py<PyString>,
    http_disconnect: Py<PyString>,
    status: Py<PyString>,
    empty: Py<PyBytes>,
    /// Common methods, so that a request does not make its own string.
    methods: Vec<(&'static str, Py<PyString>)>,
}

/// The ASGI spec version ferrocorn implements for HTTP.
pub const SPEC_VERSION: &str = "2.3";

impl Keys {
    pub fn new(py: Python<'_>) -> Keys {
        let s = |v: &str| PyString::intern(py, v).unbind();
        Keys {
            type_: s("type"),
            asgi: s("asgi"),
            version: s("version"),
            spec_version: s("spec_version"),
            v3: s("3.0"),
            spec: s(SPEC_VERSION),
            http: s("http"),
            http_version: s("http_version"),
            http_10: s("1.0"),
            http_11: s("1.1"),
            method: s("method"),
            scheme: s("scheme"),
            path: s("path"),
            raw_path: s("raw_path"),
            query_string: s("query_string"),
            root_path: s("root_path"),
            headers: s("headers"),
            server: s("server"),
            client: s("client"),
            state: s("state"),
            body: s("body"),
            more_body: s("more_body"),
            http_request: s("http.request"),
            http_disconnect: s("http.disconnect"),
            status: s("status"),
            empty: PyBytes::new(py, b"").unbind(),
            methods: ["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"]
                .into_iter()
                .map(|m| (m, s(m)))
                .collect(),
        }
    }

    /// `{"type": "http.request", "body": body, "more_body": more}`.
    pub fn request_message<'py>(
        &self,
        py: Python<'py>,
        body: &[u8],
        more: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item(self.type_.bind(py), self.http_request.bind(py))?;
        if body.is_empty() {
            d.set_item(self.body.bind(py), self.empty.bind(py))?;
        } else {
            d.set_item(self.body.bind(py), PyBytes::new(py, body))?;
        }
        d.set_item(self.more_body.bind(py), more)?;
        Ok(d)
    }

    /// `{"type": "http.disconnect"}`.
    pub fn disconnect_message<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item(self.type_.bind(py), self.http_disconnect.bind(py))?;
        Ok(d)
    }
}

/// Lower-cased header names as bytes objects, made once per distinct name
/// (a worker sees the same few dozen names over and over).
#[derive(Default)]
pub struct HeaderNames {
    cache: HashMap<Vec<u8>, Py<PyBytes>>,
}

/// Distinct names kept; past this, names are made per request (a client
/// sending random names must not grow the worker).
const HEADER_NAMES_KEPT: usize = 512;

impl HeaderNames {
    fn get<'py>(&mut self, py: Python<'py>, raw: &[u8]) -> Bound<'py, PyBytes> {
        if let Some(b) = self.cache.get(raw) {
            return b.bind(py).clone();
        }
        let lower = raw.to_ascii_lowercase();
        let b = PyBytes::new(py, &lower);
        if self.cache.len() < HEADER_NAMES_KEPT {
            self.cache.insert(raw.to_vec(), b.clone().unbind());
        }
        b
    }
}

/// An address in a scope: (host, port), or None (a unix socket).
pub type Addr = Option<(String, u16)>;

/// What an HTTP scope is made of besides the head.
pub struct ScopeParts<'a, 'py> {
    pub scheme: &'a str,
    /// [`scope_template`] of the request's listener.
    pub template: &'a Bound<'py, PyDict>,
    pub client: &'a Bound<'py, PyAny>,
    /// The lifespan state; each request gets a shallow copy (ASGI lifespan
    /// spec: one request's changes never reach another).
    pub state: Option<&'a Bound<'py, PyDict>>,
}

/// The `(host, port)` tuple (or None) of a scope's server or client.
pub fn addr_value<'py>(py: Python<'py>, addr: &Addr) -> PyResult<Bound<'py, PyAny>> {
    Ok(match addr {
        Some((host, port)) => PyTuple::new(
            py,
            [
                PyString::new(py, host).into_any(),
                port.into_pyobject(py)?.into_any(),
            ],
        )?
        .into_any(),
        None => py.None().into_bound(py),
    })
}

/// The fields every HTTP scope of one listener shares, the commonest
/// values of some others (HTTP/1.1, GET, no query: a request sets them
/// only when it differs), and the rest (None here) in their places: each
/// scope starts as a copy of it, which costs less than a dozen inserts
/// into a new dict.
pub fn scope_template<'py>(
    py: Python<'py>,
    keys: &Keys,
    scheme: &str,
    root_path: &Bound<'py, PyString>,
    server: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let t = PyDict::new(py);
    let none = py.None();
    t.set_item(keys.type_.bind(py), keys.http.bind(py))?;
    t.set_item(keys.asgi.bind(py), &none)?;
    t.set_item(keys.http_version.bind(py), keys.http_11.bind(py))?;
    t.set_item(keys.method.bind(py), PyString::intern(py, "GET"))?;
    t.set_item(keys.scheme.bind(py), scheme)?;
    t.set_item(keys.path.bind(py), &none)?;
    t.set_item(keys.raw_path.bind(py), &none)?;
    t.set_item(keys.query_string.bind(py), PyBytes::new(py, b""))?;
    t.set_item(keys.root_path.bind(py), root_path)?;
    t.set_item(keys.headers.bind(py), &none)?;
    t.set_item(keys.server.bind(py), server)?;
    t.set_item(keys.client.bind(py), &none)?;
    Ok(t)
}

/// The HTTP connection scope of one request.
pub fn http_scope<'py>(
    py: Python<'py>,
    keys: &Keys,
    names: &mut HeaderNames,
    head: &RequestHead<'_>,
    parts: &ScopeParts<'_, 'py>,
) -> PyResult<Bound<'py, PyDict>> {
    let scope = parts.template.copy()?;
    let asgi = PyDict::new(py);
    asgi.set_item(keys.version.bind(py), keys.v3.bind(py))?;
    asgi.set_item(keys.spec_version.bind(py), keys.spec.bind(py))?;
    scope.set_item(keys.asgi.bind(py), asgi)?;
    // (HTTP/1.1, GET, an empty query and http are the template's; https
    // here comes from a uwsgi front end's HTTPS var.)
    if parts.scheme == "https" {
        scope.set_item(keys.scheme.bind(py), parts.scheme)?;
    }
    match head.version {
        (1, 1) => {}
        (1, 0) => scope.set_item(keys.http_version.bind(py), keys.http_10.bind(py))?,
        (a, b) => scope.set_item(keys.http_version.bind(py), format!("{a}.{b}"))?,
    }
    if head.method != "GET" {
        let method = match keys.methods.iter().find(|(m, _)| *m == head.method) {
            Some((_, s)) => s.bind(py).clone(),
            None => PyString::new(py, &head.method),
        };
        scope.set_item(keys.method.bind(py), method)?;
    }
    // `path` is percent-decoded UTF-8 (invalid sequences replaced, as
    // uvicorn's unquote does); `raw_path` the bytes as sent.
    let path = if head.path.contains(&b'%') {
        PyString::new(
            py,
            &String::from_utf8_lossy(&crate::http::percent_decode_path(head.path)),
        )
    } else {
        PyString::new(py, &String::from_utf8_lossy(head.path))
    };
    scope.set_item(keys.path.bind(py), path)?;
    scope.set_item(keys.raw_path.bind(py), PyBytes::new(py, head.path))?;
    if !head.query.is_empty() {
        scope.set_item(keys.query_string.bind(py), PyBytes::new(py, head.query))?;
    }
    let headers = PyList::empty(py);
    for h in &head.headers {
        let pair = PyTuple::new(
            py,
            [
                names.get(py, h.name).into_any(),
                PyBytes::new(py, &h.value).into_any(),
            ],
        )?;
        headers.append(pair)?;
    }
    scope.set_item(keys.headers.bind(py), headers)?;
    scope.set_item(keys.client.bind(py), parts.client)?;
    if let Some(state) = parts.state {
        scope.set_item(keys.state.bind(py), state.copy()?)?;
    }
    Ok(scope)
}

/// A message the app sent, as far as the server needs it.
pub enum Sent<'py> {
    Start {
        status: u16,
        /// The message's `headers` iterable, read by [`Sent::headers`].
        headers: Option<Bound<'py, PyAny>>,
    },
    Body {
        /// A bytes-like object (bytes, bytearray, memoryview), read where
        /// it is encoded (no copy of a bytes body before that).
        body: Option<Bound<'py, PyAny>>,
        more: bool,
    },
}

impl Sent<'_> {
    /// Calls `f` with each `[name, value]` pair of a Start message's
    /// headers, as str of the same code points (latin-1); ASCII headers
    /// are read where they lie, without a copy.
    pub fn headers(
        list: &Option<Bound<'_, PyAny>>,
        mut f: impl FnMut(&str, &str) -> Result<(), String>,
    ) -> PyResult<()> {
        let Some(list) = list else {
            return Ok(());
        };
        for item in list.try_iter()? {
            let item = item?;
            let mut pair = item.try_iter()?;
            let (Some(name), Some(value), None) = (pair.next(), pair.next(), pair.next()) else {
                return Err(PyValueError::new_err(
                    "ASGI response headers must be [name, value] pairs",
                ));
            };
            let (name, value) = (name?, value?);
            let name = latin1_field(&name, "name")?;
            let value = latin1_field(&value, "value")?;
            f(&name, &value).map_err(PyValueError::new_err)?;
        }
        Ok(())
    }

    /// Calls `f` with the body bytes of a Body message.
    pub fn with_body<R>(
        body: &Option<Bound<'_, PyAny>>,
        f: impl FnOnce(&[u8]) -> R,
    ) -> PyResult<R> {
        match body {
            None => Ok(f(b"")),
            Some(b) => match b.cast::<PyBytes>() {
                Ok(b) => Ok(f(b.as_bytes())),
                Err(_) => {
                    let v = b
                        .extract::<Vec<u8>>()
                        .map_err(|_| PyTypeError::new_err("ASGI response body must be bytes"))?;
                    Ok(f(&v))
                }
            },
        }
    }
}

/// Header bytes as a str of the same code points (latin-1), for the
/// encoder: borrowed when ASCII (the same bytes in UTF-8).
fn latin1_field<'a>(v: &'a Bound<'_, PyAny>, what: &str) -> PyResult<std::borrow::Cow<'a, str>> {
    if let Ok(b) = v.cast::<PyBytes>() {
        let bytes = b.as_bytes();
        return Ok(match std::str::from_utf8(bytes) {
            Ok(s) if bytes.is_ascii() => s.into(),
            _ => crate::http::latin1_to_string(bytes).into(),
        });
    }
    Err(PyTypeError::new_err(format!(
        "ASGI response header {what} must be bytes, not {}",
        v.get_type().name()?
    )))
}

/// Reads an `http.response.*` message; a message of another type (or a
/// malformed one) is the app's error (as uvicorn raises it).
pub fn parse_sent<'py>(
    py: Python<'py>,
    keys: &Keys,
    msg: &Bound<'py, PyAny>,
) -> PyResult<Sent<'py>> {
    let msg = msg.cast::<PyDict>().map_err(|_| {
        PyTypeError::new_err(format!(
            "ASGI message must be a dict, not {}",
            msg.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    let kind = msg
        .get_item(keys.type_.bind(py))?
        .ok_or_else(|| PyValueError::new_err("ASGI message has no 'type'"))?;
    let kind = kind
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err("ASGI message 'type' must be a str"))?;
    match kind.to_str()? {
        "http.response.start" => {
            let status = msg
                .get_item(keys.status.bind(py))?
                .ok_or_else(|| PyValueError::new_err("http.response.start has no 'status'"))?
                .extract::<u16>()
                .map_err(|_| PyValueError::new_err("ASGI response status must be an int"))?;
            if !(100..=999).contains(&status) {
                return Err(PyValueError::new_err(format!(
                    "invalid ASGI response status {status}"
                )));
            }
            let headers = msg.get_item(keys.headers.bind(py))?;
            Ok(Sent::Start { status, headers })
        }
        "http.response.body" => {
            let body = msg.get_item(keys.body.bind(py))?;
            let more = match msg.get_item(keys.more_body.bind(py))? {
                None => false,
                Some(m) => m.is_truthy()?,
            };
            Ok(Sent::Body { body, more })
        }
        other => Err(PyRuntimeError::new_err(format!(
            "Unexpected ASGI message '{other}' sent, in the HTTP protocol"
        ))),
    }
}

/// An awaitable that is already done: `await` on it returns `value` at
/// once, without a future or a trip through the event loop.
#[pyclass(module = "ferrocorn", freelist = 64)]
pub struct Ready {
    value: Option<Py<PyAny>>,
}

impl Ready {
    pub fn new(value: Option<Py<PyAny>>) -> Ready {
        Ready { value }
    }
}

#[pymethods]
impl Ready {
    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// Ends the await: with None, by returning nothing (no StopIteration
    /// is made: this is how every `await send(...)` ends); with a value, by
    /// StopIteration(value).
    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match self.value.take() {
            None => Ok(None),
            // StopIteration(value) carries the await's result (a tuple
            // argument, so that a tuple value is not unpacked).
            Some(v) => Err(PyStopIteration::new_err((v.clone_ref(py),))),
        }
    }

    fn send(&mut self, py: Python<'_>, _value: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
        self.__next__(py)
    }
}
