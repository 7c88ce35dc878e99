//! WSGI (PEP 3333) with gunicorn's environ: building the environ in Rust
//! from interned keys and a per-worker template, calling the app, and
//! streaming its result through [`response::Response`]. The request's bytes
//! come from, and go to, the connection layer ([`crate::conn`]).

pub mod file_wrapper;
pub mod input;
pub mod response;

use std::collections::HashMap;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::conn::body::Body;
use crate::conn::transport::Transport;
use crate::http::proxy::ProxyInfo;
use crate::http::response::Encoder;
use crate::http::RequestHead;
use crate::python::refs;
use file_wrapper::FileWrapper;
use input::Input;
use response::{Response, StartResponse};

/// Header names whose environ key was already computed, bounded so that a
/// client sending random names cannot grow it without limit.
const HEADER_KEY_CACHE: usize = 512;

const METHODS: [&str; 7] = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"];

/// Environ keys and constant values, created once per worker.
struct Keys {
    request_method: Py<PyString>,
    query_string: Py<PyString>,
    raw_uri: Py<PyString>,
    server_protocol: Py<PyString>,
    path_info: Py<PyString>,
    script_name: Py<PyString>,
    content_type: Py<PyString>,
    content_length: Py<PyString>,
    remote_addr: Py<PyString>,
    remote_port: Py<PyString>,
    server_name: Py<PyString>,
    server_port: Py<PyString>,
    url_scheme: Py<PyString>,
    input: Py<PyString>,
    socket: Py<PyString>,
    early_hints: Py<PyString>,
    proxy_protocol: Py<PyString>,
    proxy_addr: Py<PyString>,
    proxy_port: Py<PyString>,
    http10: Py<PyString>,
    http11: Py<PyString>,
    https: Py<PyString>,
    /// The common methods, so a request reuses one string object.
    methods: [Py<PyString>; 7],
    close: Py<PyString>,
}

impl Keys {
    fn new(py: Python<'_>) -> Keys {
        let k = |s: &str| PyString::intern(py, s).unbind();
        Keys {
            request_method: k("REQUEST_METHOD"),
            query_string: k("QUERY_STRING"),
            raw_uri: k("RAW_URI"),
            server_protocol: k("SERVER_PROTOCOL"),
            path_info: k("PATH_INFO"),
            script_name: k("SCRIPT_NAME"),
            content_type: k("CONTENT_TYPE"),
            content_length: k("CONTENT_LENGTH"),
            remote_addr: k("REMOTE_ADDR"),
            remote_port: k("REMOTE_PORT"),
            server_name: k("SERVER_NAME"),
            server_port: k("SERVER_PORT"),
            url_scheme: k("wsgi.url_scheme"),
            input: k("wsgi.input"),
            socket: k("gunicorn.socket"),
            early_hints: k("wsgi.early_hints"),
            proxy_protocol: k("PROXY_PROTOCOL"),
            proxy_addr: k("PROXY_ADDR"),
            proxy_port: k("PROXY_PORT"),
            http10: k("HTTP/1.0"),
            http11: k("HTTP/1.1"),
            https: k("https"),
            methods: METHODS.map(k),
            close: k("close"),
        }
    }
}

/// What the worker knows about the listener a connection came from.
pub struct ServerAddr {
    /// The environ template of its requests: the worker's, with SERVER_NAME
    /// and SERVER_PORT set for a TCP listener (two fewer stores per request).
    template: Py<PyDict>,
    /// A unix socket: SERVER_* come from the Host header, as in gunicorn.
    from_host: bool,
}

/// Per-connection Python values, created once per connection.
pub struct PeerValues {
    /// REMOTE_ADDR and REMOTE_PORT (unix sockets: "" and no port).
    pub addr: Py<PyString>,
    pub port: Option<Py<PyString>>,
    /// `gunicorn.socket`, created on the connection's first request.
    pub socket: Option<Py<LazySocket>>,
    /// The peer's address as the socket gave it (for log lines).
    peer: Option<std::net::SocketAddr>,
    /// The listener's environ template with REMOTE_ADDR and REMOTE_PORT
    /// set, made at the connection's first request: kept-alive requests
    /// copy it and set two keys fewer.
    template: Option<Py<PyDict>>,
}

impl PeerValues {
    pub fn new(py: Python<'_>, addr: Option<std::net::SocketAddr>) -> PeerValues {
        PeerValues {
            addr: PyString::new(py, &addr.map(|a| a.ip().to_string()).unwrap_or_default()).unbind(),
            port: addr.map(|a| PyString::new(py, &a.port().to_string()).unbind()),
            socket: None,
            peer: addr,
            template: None,
        }
    }
}

/// Settings the environ depends on.
pub struct WsgiSettings {
    pub workers: usize,
    pub script_name: String,
    pub secure_scheme_headers: Vec<(String, String)>,
    pub multithread: bool,
    /// --no-sendfile / SENDFILE: file_wrapper bodies are iterated instead.
    pub sendfile: bool,
}

pub struct Wsgi {
    app: Py<PyAny>,
    template: Py<PyDict>,
    keys: Keys,
    settings: WsgiSettings,
}

/// What happened to a request, for keep-alive, logs and metrics. The
/// default is a request that failed before the app ran (close the connection).
#[derive(Default)]
pub struct Outcome {
    pub status: u16,
    pub sent: u64,
    /// The response allows the connection to be reused and nothing failed.
    pub reusable: bool,
    /// The request body, back from `wsgi.input`.
    pub body: Option<Body>,
    /// The status line and headers the app gave start_response (for
    /// post_request and the access log).
    pub head: crate::http::response::Head,
    pub response_length: Option<u64>,
    pub headers_sent: bool,
    /// The app raised SystemExit (e.g. the timeout abort): the worker exits
    /// with this code once the connection is closed.
    pub exit: Option<i32>,
    /// An exception escaped the app (gunicorn_worker_failed_requests_total).
    pub app_error: Option<AppError>,
}

/// An exception that escaped the application, for the error metrics.
#[derive(Debug, Clone, Default)]
pub struct AppError {
    /// The exception's class name.
    pub error_type: String,
    /// The request path, without the query string.
    pub endpoint: String,
}

/// The path of a request target (origin or absolute form), without the
/// query string: the `endpoint` label of the error metrics.
fn endpoint_of(raw_uri: &str) -> &str {
    let path = raw_uri.split(['?', '#']).next().unwrap_or("");
    let absolute = path
        .strip_prefix("http://")
        .or_else(|| path.strip_prefix("https://"));
    match absolute {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => path,
    }
}

/// Decodes bytes as latin-1, as PEP 3333 "native strings".
pub fn latin1<'py>(py: Python<'py>, b: &[u8]) -> Bound<'py, PyString> {
    crate::python::text::latin1(py, b)
        .unwrap_or_else(|_| PyString::new(py, &crate::http::latin1_to_string(b)))
}

/// gunicorn's unquote_to_wsgi_str: percent-decode to bytes, then latin-1.
fn unquote<'py>(py: Python<'py>, path: &[u8]) -> Bound<'py, PyString> {
    if !path.contains(&b'%') {
        return latin1(py, path);
    }
    latin1(py, &crate::http::percent_decode_path(path))
}

/// A request the app cannot be given (400-class), found while building the environ.
pub struct EnvironError {
    pub status: u16,
    pub reason: &'static str,
    pub message: String,
}

impl Wsgi {
    pub fn new(py: Python<'_>, app: Py<PyAny>, settings: WsgiSettings) -> PyResult<Wsgi> {
        let template = PyDict::new(py);
        let sys = py.import("sys")?;
        template.set_item("wsgi.errors", sys.getattr("stderr")?)?;
        template.set_item("wsgi.version", PyTuple::new(py, [1, 0])?)?;
        template.set_item("wsgi.multithread", settings.multithread)?;
        template.set_item("wsgi.multiprocess", settings.workers > 1)?;
        template.set_item("wsgi.run_once", false)?;
        template.set_item("wsgi.file_wrapper", py.get_type::<FileWrapper>())?;
        template.set_item("wsgi.input_terminated", true)?;
        template.set_item("wsgi.url_scheme", "http")?;
        template.set_item(
            "SERVER_SOFTWARE",
            concat!("ferrocorn/", env!("CARGO_PKG_VERSION")),
        )?;
        template.set_item("SCRIPT_NAME", settings.script_name.as_str())?;
        // Keys every request sets, present from the start: the per-request
        // copy is then a clone of a table already sized for them, and the
        // request only replaces values (no insertion, no resize).
        for key in [
            "REQUEST_METHOD",
            "QUERY_STRING",
            "RAW_URI",
            "SERVER_PROTOCOL",
            "REMOTE_ADDR",
            "SERVER_NAME",
            "SERVER_PORT",
            "PATH_INFO",
            "wsgi.input",
            "gunicorn.socket",
            "wsgi.early_hints",
        ] {
            template.set_item(PyString::intern(py, key), py.None())?;
        }
        // The commonest values, which requests then need not set.
        let keys = Keys::new(py);
        template.set_item(keys.request_method.bind(py), keys.methods[0].bind(py))?;
        template.set_item(keys.query_string.bind(py), "")?;
        template.set_item(keys.server_protocol.bind(py), keys.http11.bind(py))?;
        presize(&template)?;
        Ok(Wsgi {
            app,
            template: template.unbind(),
            keys,
            settings,
        })
    }

    /// The environ template for a listener: TCP (its address) or a unix
    /// socket (None).
    pub fn server_addr(
        &self,
        py: Python<'_>,
        tcp: Option<std::net::SocketAddr>,
    ) -> PyResult<ServerAddr> {
        // A copy keeps the template's presized table (dict.copy clones it).
        let template = self.template.bind(py).copy()?;
        if let Some(a) = tcp {
            template.set_item(self.keys.server_name.bind(py), a.ip().to_string())?;
            template.set_item(self.keys.server_port.bind(py), a.port().to_string())?;
        }
        Ok(ServerAddr {
            template: template.unbind(),
            from_host: tcp.is_none(),
        })
    }
}

/// Entries CPython's dict table must hold before it grows to 64 slots (42
/// usable entries; the 32-slot table holds 21).
const PRESIZED_ENTRIES: usize = 22;

/// Leaves room in the template's table for a request's headers. Each
/// environ is a copy of the template, and `dict.copy` clones the table at
/// its size: a template of 21 keys fills a 32-slot table, so the first
/// header set on every copy would grow it (a rehash per request). With a
/// placeholder added and removed the table has 64 slots, and the copies
/// take 20 more keys without growing (CPython 3.7+: tables grow to
/// used * 3, copies clone while at most a third of the entries are
/// deleted ones).
fn presize(template: &Bound<'_, PyDict>) -> PyResult<()> {
    let py = template.py();
    let mut placeholders = Vec::new();
    while template.len() < PRESIZED_ENTRIES {
        let key = PyString::new(py, &format!("ferrocorn.presize.{}", placeholders.len()));
        template.set_item(&key, py.None())?;
        placeholders.push(key);
    }
    for key in placeholders {
        template.del_item(key)?;
    }
    Ok(())
}

/// What a thread that serves requests keeps from one request to the next,
/// so that threads share no lock: the `HTTP_*` environ keys made so far (by
/// header name), and the last request's objects if the app let go of them.
#[derive(Default)]
pub struct ThreadCache {
    keys: HashMap<Vec<u8>, Py<PyString>>,
    spare: Option<RequestObjects>,
}

/// The objects a request hands the app: `wsgi.input`, `start_response`,
/// its `write` and `wsgi.early_hints`. When nothing but the worker holds
/// them after the request, the thread's next request reuses them: two
/// objects and two bound methods fewer to make and free per request. (One
/// the app kept is never reused: it stays done, and its request's body
/// gone.)
struct RequestObjects {
    input: Py<Input>,
    sr: Py<StartResponse>,
    early_hints: Option<Py<PyAny>>,
    write: Option<Py<PyAny>>,
}

impl RequestObjects {
    fn new(py: Python<'_>, body: Body, resp: Response) -> PyResult<RequestObjects> {
        let input = Py::new(py, Input::new(body))?;
        let sr = Bound::new(py, StartResponse::new(resp))?;
        let early_hints = sr
            .getattr(pyo3::intern!(py, "early_hints"))
            .ok()
            .map(Bound::unbind);
        Ok(RequestObjects {
            input,
            sr: sr.unbind(),
            early_hints,
            write: None,
        })
    }

    /// Readies kept objects for a new request.
    fn refill(&mut self, py: Python<'_>, body: Body, resp: Response) {
        self.input.borrow_mut(py).refill(body);
        self.sr.borrow_mut(py).refill(resp, self.write.take());
    }

    /// After the request: takes `write` back from `start_response` (which
    /// holds it while the request runs) and says whether the worker holds
    /// the only references left.
    fn release(&mut self, py: Python<'_>) -> bool {
        self.write = self.sr.borrow_mut(py).take_write();
        let methods = [&self.early_hints, &self.write];
        let bound = methods.iter().filter(|m| m.is_some()).count();
        refs::count(py, &self.input) == 1
            && refs::count(py, &self.sr) == 1 + bound as isize
            && methods
                .iter()
                .flat_map(|m| m.as_ref())
                .all(|m| refs::count(py, m) == 1)
    }
}

fn header_key<'py>(
    cache: &mut HashMap<Vec<u8>, Py<PyString>>,
    py: Python<'py>,
    name: &[u8],
) -> Bound<'py, PyString> {
    {
        if let Some(k) = cache.get(name) {
            return k.bind(py).clone();
        }
        let mut key = String::with_capacity(name.len() + 5);
        key.push_str("HTTP_");
        key.extend(name.iter().map(|&c| match c {
            b'-' => '_',
            c => c.to_ascii_uppercase() as char,
        }));
        let k = PyString::intern(py, &key);
        if cache.len() < HEADER_KEY_CACHE {
            cache.insert(name.to_vec(), k.clone().unbind());
        }
        k
    }
}

impl Wsgi {
    fn peer_template<'py>(
        &self,
        py: Python<'py>,
        server: &ServerAddr,
        peer: &PeerValues,
    ) -> PyResult<Py<PyDict>> {
        let t = server.template.bind(py).copy()?;
        self.set_remote(&t, peer)?;
        Ok(t.unbind())
    }

    fn set_remote(&self, env: &Bound<'_, PyDict>, peer: &PeerValues) -> PyResult<()> {
        let py = env.py();
        env.set_item(self.keys.remote_addr.bind(py), peer.addr.bind(py))?;
        if let Some(port) = &peer.port {
            env.set_item(self.keys.remote_port.bind(py), port.bind(py))?;
        }
        Ok(())
    }

    /// Builds the environ for `head`, as gunicorn's wsgi.create does.
    #[allow(clippy::too_many_arguments)]
    pub fn environ<'py>(
        &self,
        py: Python<'py>,
        cache: &mut ThreadCache,
        head: &RequestHead<'_>,
        server: &ServerAddr,
        peer: &mut PeerValues,
        proxy: Option<&ProxyInfo>,
        trusted: bool,
        uwsgi_https: bool,
    ) -> Result<Bound<'py, PyDict>, EnvironError> {
        let py_err = |e: PyErr| EnvironError {
            status: 500,
            reason: "Internal Server Error",
            message: e.to_string(),
        };
        let k = &self.keys;
        if peer.template.is_none() {
            // (Should the copy fail, each request sets REMOTE_* itself.)
            peer.template = self.peer_template(py, server, peer).ok();
        }
        let env = match &peer.template {
            Some(t) => t.bind(py).copy().map_err(py_err)?,
            None => {
                let env = server.template.bind(py).copy().map_err(py_err)?;
                self.set_remote(&env, peer).map_err(py_err)?;
                env
            }
        };
        let set = |key: &Py<PyString>, v: Bound<'py, PyAny>| {
            env.set_item(key.bind(py), v).map_err(py_err)
        };
        // (GET, an empty query and HTTP/1.1 are the template's values.)
        match METHODS.iter().position(|m| *m == head.method) {
            Some(0) => {}
            Some(i) => set(&k.request_method, k.methods[i].bind(py).clone().into_any())?,
            None => set(
                &k.request_method,
                PyString::new(py, &head.method).into_any(),
            )?,
        }
        if !head.query.is_empty() {
            set(&k.query_string, latin1(py, head.query).into_any())?;
        }
        set(&k.raw_uri, latin1(py, head.uri).into_any())?;
        match head.version {
            (1, 1) => {}
            (1, 0) => set(&k.server_protocol, k.http10.bind(py).clone().into_any())?,
            (a, b) => set(
                &k.server_protocol,
                PyString::new(py, &format!("HTTP/{a}.{b}")).into_any(),
            )?,
        }

        let mut host: Option<&[u8]> = None;
        let mut script_name: Option<&[u8]> = None;
        let mut scheme: Option<bool> = None; // Some(true) = https
        let mut repeated: Vec<(Bound<'py, PyString>, Vec<u8>)> = Vec::new();
        for h in &head.headers {
            let name = h.name;
            let value: &[u8] = &h.value;
            if trusted && !self.settings.secure_scheme_headers.is_empty() {
                if let Some((_, secure)) = self
                    .settings
                    .secure_scheme_headers
                    .iter()
                    .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
                {
                    let https = value == secure.as_bytes();
                    match scheme {
                        Some(prev) if prev != https => {
                            return Err(EnvironError {
                                status: 400,
                                reason: "Bad Request",
                                message: "Contradictory scheme headers".into(),
                            })
                        }
                        _ => scheme = Some(https),
                    }
                }
            }
            if name.eq_ignore_ascii_case(b"host") {
                host = Some(value);
            } else if name.eq_ignore_ascii_case(b"script_name") {
                script_name = Some(value);
            } else if name.eq_ignore_ascii_case(b"content-type") {
                set(&self.keys.content_type, latin1(py, value).into_any())?;
                continue;
            } else if name.eq_ignore_ascii_case(b"content-length") {
                set(&self.keys.content_length, latin1(py, value).into_any())?;
                continue;
            }
            let key = header_key(&mut cache.keys, py, name);
            if env.contains(&key).map_err(py_err)? {
                match repeated.iter_mut().find(|(k, _)| k.is(&key)) {
                    Some((_, joined)) => {
                        joined.push(b',');
                        joined.extend_from_slice(value);
                    }
                    None => {
                        let first = env.get_item(&key).map_err(py_err)?;
                        let mut joined: Vec<u8> = match first {
                            Some(f) => f
                                .extract::<String>()
                                .map(|s| s.chars().map(|c| c as u32 as u8).collect())
                                .unwrap_or_default(),
                            None => Vec::new(),
                        };
                        joined.push(b',');
                        joined.extend_from_slice(value);
                        repeated.push((key, joined));
                    }
                }
            } else {
                env.set_item(&key, latin1(py, value)).map_err(py_err)?;
            }
        }
        for (key, joined) in repeated {
            env.set_item(key, latin1(py, &joined)).map_err(py_err)?;
        }
        // (uwsgi: the front end's HTTPS var, as gunicorn's UWSGIRequest.)
        let https = scheme == Some(true) || uwsgi_https;
        if https {
            set(&k.url_scheme, k.https.bind(py).clone().into_any())?;
        }

        if server.from_host {
            // Unix socket: SERVER_* from the Host header, as gunicorn.
            let (name, port) = match host {
                Some(h) => {
                    let h = latin1(py, h).to_string();
                    let mut parts = h.split(':');
                    let name = parts.next().unwrap_or("").to_string();
                    let port = match parts.next() {
                        Some(p) => p.to_string(),
                        None if https => "443".into(),
                        None => "80".into(),
                    };
                    (name, port)
                }
                None => (String::new(), String::new()),
            };
            set(&k.server_name, PyString::new(py, &name).into_any())?;
            set(&k.server_port, PyString::new(py, &port).into_any())?;
        }

        let mut path = head.path;
        if let Some(sn) = script_name {
            set(&k.script_name, latin1(py, sn).into_any())?;
        }
        let sn: &[u8] = script_name.unwrap_or(self.settings.script_name.as_bytes());
        if !sn.is_empty() {
            if !path.starts_with(sn) {
                // gunicorn's ConfigurationProblem: a client error answered
                // with status 500 and reason "Bad Request".
                return Err(EnvironError {
                    status: 500,
                    reason: "Bad Request",
                    message: format!(
                        "Request path {:?} does not start with SCRIPT_NAME {:?}",
                        String::from_utf8_lossy(path),
                        String::from_utf8_lossy(sn)
                    ),
                });
            }
            path = &path[sn.len()..];
        }
        set(&k.path_info, unquote(py, path).into_any())?;

        if let Some(p) = proxy {
            // gunicorn: addresses as received (None for LOCAL/UNSPEC), ports
            // as strings ("None" when absent).
            let host = |h: &Option<String>| match h {
                Some(h) => PyString::new(py, h).into_any(),
                None => py.None().into_bound(py),
            };
            let port = |a: &Option<std::net::SocketAddr>| {
                PyString::new(
                    py,
                    &a.map_or_else(|| "None".to_string(), |a| a.port().to_string()),
                )
                .into_any()
            };
            set(&k.proxy_protocol, PyString::new(py, &p.proto).into_any())?;
            set(&k.remote_addr, host(&p.client_host))?;
            set(&k.remote_port, port(&p.client_addr))?;
            set(&k.proxy_addr, host(&p.proxy_host))?;
            set(&k.proxy_port, port(&p.proxy_addr))?;
        }
        Ok(env)
    }

    /// Runs the app for one request and writes its response. The body
    /// comes back in the [`Outcome`] for the connection layer.
    pub fn serve<'py>(
        &self,
        py: Python<'py>,
        env: Bound<'py, PyDict>,
        body: Body,
        peer: &mut PeerValues,
        enc: Encoder,
        cache: &std::cell::RefCell<ThreadCache>,
    ) -> Outcome {
        let io = Arc::clone(body.transport());
        let resp = Response::new(Arc::clone(&io), enc);
        let spare = cache.try_borrow_mut().ok().and_then(|mut c| c.spare.take());
        let made = match spare {
            Some(mut objs) => {
                objs.refill(py, body, resp);
                Ok(objs)
            }
            None => RequestObjects::new(py, body, resp),
        };
        let mut objs = match made {
            Ok(o) => o,
            Err(e) => {
                crate::log_error!(
                    "Error handling request: {}",
                    crate::python::format_err(py, &e)
                );
                return Outcome::default();
            }
        };
        let (input, sr) = (objs.input.bind(py), objs.sr.bind(py));
        let k = &self.keys;
        let setup = (|| -> PyResult<()> {
            env.set_item(k.input.bind(py), input)?;
            env.set_item(k.socket.bind(py), peer.socket(py, &io)?)?;
            if let Some(early) = &objs.early_hints {
                env.set_item(k.early_hints.bind(py), early)?;
            }
            Ok(())
        })();
        let run = match setup {
            Err(e) => Err(e),
            Ok(()) => match self.app.bind(py).call1((env.clone(), sr.clone())) {
                Ok(iterable) => {
                    let r = self.write_result(py, sr, &iterable);
                    // PEP 3333: close() is always called on the iterable.
                    // (lists and tuples have none: skip the failing lookup)
                    let plain = iterable.is_exact_instance_of::<PyList>()
                        || iterable.is_exact_instance_of::<PyTuple>();
                    if !plain && iterable.hasattr(k.close.bind(py)).unwrap_or(false) {
                        if let Err(e) = iterable.call_method0(k.close.bind(py)) {
                            crate::log_error!(
                                "Error closing response iterable: {}",
                                crate::python::format_err(py, &e)
                            );
                        }
                    }
                    r
                }
                Err(e) => Err(e),
            },
        };
        let mut body = input.borrow_mut().take();
        let exit = match &run {
            Err(e) => crate::python::system_exit_code(py, e),
            Ok(_) => None,
        };
        let bad_request = match &run {
            Err(_) => body.as_mut().and_then(|b| b.take_bad_request()),
            Ok(_) => None,
        };
        let mut resp_guard = sr.borrow_mut();
        let resp = &mut resp_guard.resp;
        let mut app_error = None;
        let mut failed = false;
        if let (Some(bad), false) = (&bad_request, resp.enc.headers_sent()) {
            // The client sent a malformed body: a client error, as gunicorn.
            crate::log_warning!(
                "Invalid request from ip={}: {}",
                peer.peer.map(|a| a.ip().to_string()).unwrap_or_default(),
                bad.detail
            );
            resp.write_error(bad.status, &bad.response_bytes());
            failed = true;
        } else if let Err(e) = run {
            failed = true;
            if resp.broken {
                crate::log_debug!("client went away: {e}");
            } else {
                let item = |k: &str| {
                    env.get_item(k)
                        .ok()
                        .flatten()
                        .map(|v| v.to_string())
                        .unwrap_or_default()
                };
                let raw_uri = item("RAW_URI");
                app_error = Some(AppError {
                    error_type: e
                        .get_type(py)
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default(),
                    endpoint: endpoint_of(&raw_uri).to_owned(),
                });
                // gunicorn: "Error handling request METHOD URI" + traceback;
                // a SystemExit (the timeout abort) is answered the same way.
                // (gunicorn's log.exception: statsd counts it as
                // gunicorn.log.exception, not as an error line.)
                crate::python::log_exception(
                    py,
                    &format!(
                        "Error handling request {} {}",
                        item("REQUEST_METHOD"),
                        raw_uri
                    ),
                    &e,
                );
                if !resp.enc.headers_sent() {
                    // Nothing was sent yet: answer 500 like gunicorn's handle_error.
                    let page = crate::http::error_response(500, "Internal Server Error", "");
                    resp.write_error(500, &page);
                }
            }
        }
        if failed {
            resp.enc.force_close();
        }
        resp.end();
        let out = Outcome {
            status: resp.enc.status_code(),
            sent: resp.enc.sent(),
            reusable: !resp.should_close() && !failed,
            body,
            head: resp.enc.take_head(),
            response_length: resp.enc.length(),
            headers_sent: resp.enc.headers_sent(),
            exit,
            app_error,
        };
        drop(resp_guard);
        drop(env);
        if objs.release(py) {
            if let Ok(mut c) = cache.try_borrow_mut() {
                c.spare.get_or_insert(objs);
            }
        }
        out
    }

    /// Streams the app's iterable: lists and tuples are queued and written at
    /// once; other iterables are written chunk by chunk as they are produced.
    fn write_result(
        &self,
        py: Python<'_>,
        sr: &Bound<'_, StartResponse>,
        iterable: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        if let (true, Ok(fw)) = (self.settings.sendfile, iterable.cast::<FileWrapper>()) {
            if let Some(fd) = fw.borrow().fileno(py) {
                let mut s = sr.borrow_mut();
                if !s.resp.enc.started() {
                    return Err(pyo3::exceptions::PyAssertionError::new_err(
                        "start_response() was not called",
                    ));
                }
                if s.resp.sendfile(fd)? {
                    return s.resp.finish();
                }
            }
        }
        let buffered = iterable.is_instance_of::<PyList>() || iterable.is_instance_of::<PyTuple>();
        for item in iterable.try_iter()? {
            let item = item?;
            let bytes = item.cast::<PyBytes>().map_err(|_| {
                pyo3::exceptions::PyTypeError::new_err(format!(
                    "{} is not a byte",
                    item.repr().map(|r| r.to_string()).unwrap_or_default()
                ))
            })?;
            let mut s = sr.borrow_mut();
            s.resp.write_body(bytes.as_bytes(), !buffered)?;
        }
        sr.borrow_mut().resp.finish()
    }
}

/// `gunicorn.socket`: stands in for the connection's Python socket and
/// creates the real one (over a dup of the fd) only when the app first
/// touches it, so requests that never use it pay one small allocation per
/// connection instead of a dup(2) and a socket object.
#[pyclass(module = "ferrocorn", name = "socket")]
pub struct LazySocket {
    /// The connection's socket; its descriptor reads -1 once the
    /// connection layer closed it, so a late use never dups a reused fd.
    io: Arc<dyn Transport>,
    real: Option<Py<PyAny>>,
}

impl LazySocket {
    fn real<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if let Some(s) = &self.real {
            return Ok(s.bind(py).clone());
        }
        let fd = self.io.fd();
        if fd < 0 {
            return Err(pyo3::exceptions::PyOSError::new_err(
                "the connection is closed",
            ));
        }
        let dup = py.import("os")?.getattr("dup")?.call1((fd,))?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("fileno", dup)?;
        let sock = py
            .import("socket")?
            .getattr("socket")?
            .call((), Some(&kwargs))?;
        self.real = Some(sock.clone().unbind());
        Ok(sock)
    }
}

#[pymethods]
impl LazySocket {
    fn fileno(&self) -> i32 {
        self.io.fd()
    }

    fn __getattr__<'py>(&mut self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        self.real(py)?.getattr(name)
    }
}

impl PeerValues {
    /// The connection's `gunicorn.socket` object, made on its first request.
    fn socket<'py>(
        &mut self,
        py: Python<'py>,
        io: &Arc<dyn Transport>,
    ) -> PyResult<Bound<'py, LazySocket>> {
        if let Some(s) = &self.socket {
            return Ok(s.bind(py).clone());
        }
        let s = Bound::new(
            py,
            LazySocket {
                io: Arc::clone(io),
                real: None,
            },
        )?;
        self.socket = Some(s.clone().unbind());
        Ok(s)
    }
}
