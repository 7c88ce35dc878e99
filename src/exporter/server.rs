//! The exporter process's HTTP(S) server: `/metrics`, `/health`, on a tokio
//! current-thread runtime with hyper, one task per connection.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_ENCODING, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use tokio::sync::watch;

use super::expose::{self, Format};
use super::tls::{self, TlsConfig};
use crate::metrics::model::Family;
pub use crate::redis::push::Stop as StopReason;

/// What the exporter serves and where.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// IPv4/IPv6 literal (brackets allowed) or host name.
    pub bind_address: String,
    pub port: u16,
    /// HTTPS (and optional mTLS) when set.
    pub tls: Option<TlsConfig>,
    /// `/health` answers 200 while this pid is our parent process; `None`
    /// (the standalone read side, which has no master): while it serves.
    pub master_pid: Option<u32>,
    /// Receives the exporter's error lines (and the line saying it
    /// recovered), one complete line per call, without trailing newline.
    pub log: fn(&str),
}

/// Produces the families to expose; called once per `/metrics` request.
pub type Collect = Box<dyn FnMut() -> Vec<Family> + Send>;

/// Produces the `/workers` JSON document (`ferrocorn top`).
pub type Workers = Box<dyn Fn() -> String + Send + Sync>;

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Awaited before each `/metrics` collect (the read side fetches from Redis
/// there); bounded by its own timeouts.
pub type Refresh = Arc<dyn Fn() -> BoxFuture + Send + Sync>;

/// A task that runs beside the server (the Redis push). It is told why the
/// server stops and the process exits once both have finished.
pub type Companion = Box<dyn FnOnce(watch::Receiver<Option<StopReason>>) -> BoxFuture + Send>;

/// Renders the `/metrics` body itself (the Redis read side, whose
/// exposition is too large to go through the families model); when set,
/// it replaces the collect and the render. It starts the rendering and
/// returns at once: the body comes through the [`Streamed`].
pub type Render = Box<dyn FnMut(Format) -> Streamed + Send>;

/// A body being rendered elsewhere: its exact length first (so that the
/// response has a Content-Length), then its bytes in chunks, sent on while
/// the rest is rendered. A renderer that fails drops its ends: the length
/// never comes (a 500) or the chunks stop short (the connection is cut,
/// so the client sees an incomplete body, not a wrong one).
pub struct Streamed {
    pub len: tokio::sync::oneshot::Receiver<u64>,
    pub chunks: tokio::sync::mpsc::Receiver<Bytes>,
}

/// A response body: one piece, or a [`Streamed`] one.
pub enum Body {
    Whole(Option<Bytes>),
    Chunks {
        chunks: tokio::sync::mpsc::Receiver<Bytes>,
        left: u64,
    },
}

impl Body {
    fn whole(b: Bytes) -> Body {
        Body::Whole(Some(b))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        match self.get_mut() {
            Body::Whole(b) => Poll::Ready(b.take().map(|b| Ok(hyper::body::Frame::data(b)))),
            Body::Chunks { chunks, left } => {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                match chunks.poll_recv(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Some(b)) => match left.checked_sub(b.len() as u64) {
                        Some(l) => {
                            *left = l;
                            Poll::Ready(Some(Ok(hyper::body::Frame::data(b))))
                        }
                        None => Poll::Ready(Some(Err(std::io::Error::other(
                            "the rendered body is longer than announced",
                        )))),
                    },
                    Poll::Ready(None) => Poll::Ready(Some(Err(std::io::Error::other(
                        "the rendering stopped before the end of the body",
                    )))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Whole(b) => b.is_none(),
            Body::Chunks { left, .. } => *left == 0,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(match self {
            Body::Whole(b) => b.as_ref().map_or(0, |b| b.len() as u64),
            Body::Chunks { left, .. } => *left,
        })
    }
}

/// What the server does besides serving; `Default`: nothing.
#[derive(Default)]
pub struct Extras {
    pub refresh: Option<Refresh>,
    pub companion: Option<Companion>,
    pub render: Option<Render>,
    /// Serves `/workers` when set.
    pub workers: Option<Workers>,
}

/// Timing and limits. `Default` is what [`run`] uses.
#[derive(Debug, Clone)]
pub(crate) struct Tunables {
    /// Between attempts to bind (port in use) or to load TLS files.
    pub retry_every: Duration,
    /// A client must send a complete request head within this time
    /// (also bounds an idle keep-alive connection).
    pub header_read_timeout: Duration,
    /// A TLS handshake must finish within this time.
    pub tls_handshake_timeout: Duration,
    /// After this a connection is asked to close once its response is out…
    pub conn_lifetime: Duration,
    /// …and is dropped this much later if it still has not.
    pub conn_grace: Duration,
    /// Connections beyond this many are closed at once.
    pub max_connections: usize,
}

impl Default for Tunables {
    fn default() -> Self {
        Tunables {
            retry_every: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            conn_lifetime: Duration::from_secs(120),
            conn_grace: Duration::from_secs(10),
            max_connections: 256,
        }
    }
}

/// Serves until SIGTERM or SIGINT (the server stops) or SIGHUP (the master
/// restarts the exporter), then returns 0 once the companion task, if any,
/// has finished too. Builds its own tokio current-thread runtime, so call it
/// in the exporter child after the fork (never in the master). Never panics
/// on peer data, a busy port (it logs one line and retries every 5 s) or
/// unreadable TLS files (same); returns 1 only if the runtime or the signal
/// handlers cannot be set up.
pub fn run(cfg: ServerConfig, collect: Collect, extras: Extras) -> i32 {
    let log = cfg.log;
    let Extras {
        refresh,
        companion,
        render,
        workers,
    } = extras;
    until_signal(log, companion, move |stop| {
        serve(
            cfg,
            collect,
            refresh,
            render,
            workers,
            Tunables::default(),
            stop,
        )
    })
}

/// Runs only `companion` (statsd with the Prometheus metrics off), with the
/// signal handling of [`run`]: it is told why it stops, and the process
/// exits once it has finished.
pub fn run_companion(log: fn(&str), companion: Companion) -> i32 {
    until_signal(log, Some(companion), |stop| async move {
        stop.await;
        0
    })
}

/// A current-thread runtime running `main` and the companion until SIGTERM,
/// SIGINT or SIGHUP; `main` is given a future that completes then.
fn until_signal<F: Future<Output = i32>>(
    log: fn(&str),
    companion: Option<Companion>,
    main: impl FnOnce(Stop) -> F,
) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log(&format!("metrics exporter: cannot start its runtime: {e}"));
            return 1;
        }
    };
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut int, mut hup) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(t), Ok(i), Ok(h)) => (t, i, h),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                log(&format!(
                    "metrics exporter: cannot install signal handlers: {e}"
                ));
                return 1;
            }
        };
        let (tx, rx) = watch::channel(None);
        let signals = async move {
            let why = tokio::select! {
                _ = term.recv() => StopReason::Shutdown,
                _ = int.recv() => StopReason::Shutdown,
                _ = hup.recv() => StopReason::Restart,
            };
            let _ = tx.send(Some(why));
        };
        let mut main_rx = rx.clone();
        let stop = Box::pin(async move {
            let _ = main_rx.wait_for(Option::is_some).await;
        });
        let companion = companion.map(|c| c(rx));
        let (code, (), ()) = tokio::join!(main(stop), signals, async move {
            if let Some(c) = companion {
                c.await;
            }
        });
        code
    })
}

type Stop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The server proper, on the current runtime, until `stop` completes.
pub(crate) async fn serve(
    cfg: ServerConfig,
    collect: Collect,
    refresh: Option<Refresh>,
    render: Option<Render>,
    workers: Option<Workers>,
    tun: Tunables,
    mut stop: Stop,
) -> i32 {
    let log = cfg.log;
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };

    // TLS files: retried like the port, so a fixable mistake does not make
    // the master respawn us in a loop.
    let acceptor = match &cfg.tls {
        None => None,
        Some(t) => {
            let mut failed = false;
            loop {
                match tls::server_config(t) {
                    Ok(c) => {
                        if failed {
                            log("metrics exporter: TLS files loaded");
                        }
                        break Some(tokio_rustls::TlsAcceptor::from(c));
                    }
                    Err(e) => {
                        if !failed {
                            log(&format!(
                                "metrics exporter: cannot serve HTTPS: {e}; retrying every {}s",
                                tun.retry_every.as_secs()
                            ));
                            failed = true;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(tun.retry_every) => {}
                            _ = &mut stop => return 0,
                        }
                    }
                }
            }
        }
    };

    let listener = {
        let mut last_err: Option<String> = None;
        loop {
            match bind(&cfg.bind_address, cfg.port).await {
                Ok(l) => {
                    if last_err.is_some() {
                        log(&format!(
                            "metrics exporter: now listening on {scheme}://{}",
                            display_addr(&cfg.bind_address, cfg.port)
                        ));
                    }
                    break l;
                }
                Err(e) => {
                    if last_err.as_deref() != Some(e.as_str()) {
                        log(&format!(
                            "metrics exporter: cannot listen on {}: {e}; retrying every {}s \
                             (the application keeps serving)",
                            display_addr(&cfg.bind_address, cfg.port),
                            tun.retry_every.as_secs()
                        ));
                        last_err = Some(e);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(tun.retry_every) => {}
                        _ = &mut stop => return 0,
                    }
                }
            }
        }
    };

    let shared = Arc::new(Shared {
        collect: Mutex::new(collect),
        render: render.map(Mutex::new),
        refresh,
        workers,
        master_pid: cfg.master_pid,
        log,
    });
    let open = Arc::new(AtomicUsize::new(0));
    let mut last_accept_err: Option<String> = None;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = &mut stop => return 0,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => {
                last_accept_err = None;
                stream
            }
            Err(e) => {
                // EMFILE and the like: say so once, back off briefly.
                let msg = e.to_string();
                if last_accept_err.as_deref() != Some(msg.as_str()) {
                    log(&format!("metrics exporter: accept failed: {msg}"));
                    last_accept_err = Some(msg);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = &mut stop => return 0,
                }
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= tun.max_connections {
            drop(stream);
            continue;
        }
        let guard = ConnGuard::new(open.clone());
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        let tun = tun.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let _ = stream.set_nodelay(true);
            match acceptor {
                None => serve_conn(TokioIo::new(stream), shared, &tun).await,
                Some(acceptor) => {
                    let hs =
                        tokio::time::timeout(tun.tls_handshake_timeout, acceptor.accept(stream));
                    if let Ok(Ok(tls_stream)) = hs.await {
                        serve_conn(TokioIo::new(tls_stream), shared, &tun).await;
                    }
                }
            }
        });
    }
}

struct ConnGuard(Arc<AtomicUsize>);

impl ConnGuard {
    fn new(counter: Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        ConnGuard(counter)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Shared {
    collect: Mutex<Collect>,
    render: Option<Mutex<Render>>,
    refresh: Option<Refresh>,
    workers: Option<Workers>,
    master_pid: Option<u32>,
    log: fn(&str),
}

async fn serve_conn<I>(io: TokioIo<I>, shared: Arc<Shared>, tun: &Tunables)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move {
            let get = req.method() == Method::GET || req.method() == Method::HEAD;
            if get && req.uri().path() == "/metrics" {
                if let Some(refresh) = &shared.refresh {
                    refresh().await;
                }
                if shared.render.is_some() {
                    return Ok::<_, Infallible>(rendered(&shared, &req).await);
                }
            }
            Ok::<_, Infallible>(handle(&shared, &req))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(tun.header_read_timeout)
        .max_buf_size(16 * 1024)
        .keep_alive(true)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = tokio::time::sleep(tun.conn_lifetime) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(tun.conn_grace, conn).await;
}

fn text_response(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::whole(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn header(req: &Request<Incoming>, name: hyper::header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn handle(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let workers = shared.workers.as_ref().filter(|_| path == "/workers");
    if path != "/metrics" && path != "/health" && workers.is_none() {
        return text_response(StatusCode::NOT_FOUND, "Not Found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text_response(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    if let Some(workers) = workers {
        let doc = std::panic::catch_unwind(AssertUnwindSafe(workers));
        let Ok(doc) = doc else {
            (shared.log)("metrics exporter: reading the workers panicked; answered 500");
            return text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reading the workers failed\n",
            );
        };
        let mut resp = Response::new(Body::whole(Bytes::from(doc.into_bytes())));
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return resp;
    }
    if path == "/health" {
        let master_alive = shared
            .master_pid
            .is_none_or(|pid| std::os::unix::process::parent_id() == pid);
        return if master_alive {
            text_response(StatusCode::OK, "OK")
        } else {
            text_response(StatusCode::SERVICE_UNAVAILABLE, "master process is gone")
        };
    }

    let format = Format::from_accept(header(req, hyper::header::ACCEPT));
    let families = {
        let mut collect = shared
            .collect
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::panic::catch_unwind(AssertUnwindSafe(|| (*collect)()))
    };
    let Ok(families) = families else {
        (shared.log)("metrics exporter: collecting metrics panicked; answered 500");
        return text_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "collecting metrics failed\n",
        );
    };
    let body = Bytes::from(expose::render(&families, format).into_bytes());
    metrics_response(req, format, body)
}

/// The `/metrics` response of a [`Render`]: streamed as it is rendered,
/// or gathered and gzipped when the client accepts gzip.
async fn rendered(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let format = Format::from_accept(header(req, hyper::header::ACCEPT));
    let started = shared.render.as_ref().map(|render| {
        let mut render = render.lock().unwrap_or_else(|p| p.into_inner());
        std::panic::catch_unwind(AssertUnwindSafe(|| (*render)(format)))
    });
    let failed = |what: &str| {
        (shared.log)(&format!("metrics exporter: {what}; answered 500"));
        text_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "collecting metrics failed\n",
        )
    };
    let Some(Ok(Streamed { len, mut chunks })) = started else {
        return failed("rendering metrics panicked");
    };
    let Ok(len) = len.await else {
        return failed("rendering metrics failed");
    };
    if !expose::gzip_accepted(header(req, hyper::header::ACCEPT_ENCODING)) {
        let mut resp = Response::new(Body::Chunks { chunks, left: len });
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        );
        return resp;
    }
    let mut all = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    while let Some(chunk) = chunks.recv().await {
        all.extend_from_slice(&chunk);
    }
    if all.len() as u64 != len {
        return failed("rendering metrics stopped before the end");
    }
    metrics_response(req, format, Bytes::from(all))
}

/// The `/metrics` response for a rendered body: gzipped when accepted.
fn metrics_response(req: &Request<Incoming>, format: Format, body: Bytes) -> Response<Body> {
    let (body, gzipped) = if expose::gzip_accepted(header(req, hyper::header::ACCEPT_ENCODING)) {
        match expose::gzip(&body) {
            Ok(z) => (Bytes::from(z), true),
            Err(_) => (body, false),
        }
    } else {
        (body, false)
    };
    let mut resp = Response::new(Body::whole(body));
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if gzipped {
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
}

fn display_addr(host: &str, port: u16) -> String {
    let inner = host
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(host);
    match inner.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port).to_string(),
        Err(_) => format!("{inner}:{port}"),
    }
}

/// Binds the first address `host` resolves to that accepts a listener.
async fn bind(host: &str, port: u16) -> Result<TcpListener, String> {
    let inner = host
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(host);
    let inner = if inner.is_empty() { "0.0.0.0" } else { inner };
    let addrs: Vec<SocketAddr> = match inner.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((inner, port))
            .await
            .map_err(|e| format!("cannot resolve {inner:?}: {e}"))?
            .collect(),
    };
    let mut last = format!("{inner:?} resolves to no address");
    for addr in addrs {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exporter::tls::testpki;
    use crate::metrics::model::{Kind, Sample, SampleValue};
    use std::io::{Read, Write};
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

    fn test_log(line: &str) {
        LOG.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line.to_owned());
    }

    fn log_lines(containing: &str) -> Vec<String> {
        LOG.lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|l| l.contains(containing))
            .cloned()
            .collect()
    }

    fn families() -> Vec<Family> {
        vec![
            Family {
                name: "gunicorn_worker_requests".into(),
                help: "Total number of requests handled by this worker".into(),
                kind: Kind::Counter,
                samples: vec![Sample {
                    labels: vec![("worker_id".into(), "worker_1_99".into())],
                    value: SampleValue::Scalar(7.0),
                }],
            },
            Family {
                name: "gunicorn_request_duration_seconds".into(),
                help: "Request duration".into(),
                kind: Kind::Histogram,
                samples: vec![Sample {
                    labels: vec![("method".into(), "GET".into())],
                    value: SampleValue::Histogram {
                        buckets: vec![(0.1, 2), (1.0, 3)],
                        sum: 0.75,
                        count: 3,
                    },
                }],
            },
        ]
    }

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind :0");
        l.local_addr().expect("local addr").port()
    }

    fn fast() -> Tunables {
        Tunables {
            retry_every: Duration::from_millis(300),
            header_read_timeout: Duration::from_millis(500),
            tls_handshake_timeout: Duration::from_secs(2),
            conn_lifetime: Duration::from_secs(30),
            conn_grace: Duration::from_secs(1),
            max_connections: 64,
        }
    }

    struct Running {
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<i32>>,
    }

    impl Running {
        fn stop(mut self) -> i32 {
            self.stop.store(true, Ordering::SeqCst);
            self.thread
                .take()
                .map(|t| t.join().expect("server thread"))
                .unwrap_or(-1)
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
        }
    }

    /// Starts `serve` in a thread with its own current-thread runtime (as
    /// `run` does), stopped through a flag instead of a signal so that
    /// parallel tests do not stop each other.
    fn start(port: u16, tls: Option<TlsConfig>, master_pid: u32, tun: Tunables) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let cfg = ServerConfig {
            bind_address: "127.0.0.1".into(),
            port,
            tls,
            master_pid: Some(master_pid),
            log: test_log,
        };
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let stop: Stop = Box::pin(async move {
                    while !flag.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                });
                serve(cfg, Box::new(families), None, None, None, tun, stop).await
            })
        });
        Running {
            stop,
            thread: Some(thread),
        }
    }

    fn wait_up(port: u16, within: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < within {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Resp {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    fn parse(raw: &[u8]) -> Option<Resp> {
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&raw[..split]).ok()?;
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Some(Resp {
            status,
            headers,
            body: raw[split + 4..].to_vec(),
        })
    }

    fn request(method: &str, path: &str, extra: &str) -> String {
        format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n")
    }

    fn http(port: u16, req: &str) -> Resp {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(req.as_bytes()).expect("write");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read");
        parse(&raw).expect("an HTTP response")
    }

    #[test]
    fn serves_metrics_health_and_404() {
        let port = free_port();
        let me = std::os::unix::process::parent_id();
        let srv = start(port, None, me, fast());
        assert!(wait_up(port, Duration::from_secs(5)), "server up");

        let r = http(port, &request("GET", "/metrics", ""));
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let want = expose::render(&families(), Format::Text004);
        assert_eq!(String::from_utf8_lossy(&r.body), want);
        assert_eq!(
            r.header("content-length"),
            Some(want.len().to_string().as_str())
        );
        assert!(want.contains("gunicorn_worker_requests_total{worker_id=\"worker_1_99\"} 7.0\n"));

        let r = http(
            port,
            &request(
                "GET",
                "/metrics",
                "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
            ),
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        assert!(String::from_utf8_lossy(&r.body).ends_with("# EOF\n"));

        let r = http(
            port,
            &request("GET", "/metrics", "Accept-Encoding: gzip, deflate\r\n"),
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&r.body[..])
            .read_to_string(&mut plain)
            .expect("gunzip");
        assert_eq!(plain, want);

        let r = http(port, &request("HEAD", "/metrics", ""));
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-length"),
            Some(want.len().to_string().as_str())
        );
        assert!(r.body.is_empty(), "HEAD has no body");

        let r = http(port, &request("GET", "/health", ""));
        assert_eq!((r.status, &r.body[..]), (200, &b"OK"[..]));
        let r = http(port, &request("HEAD", "/health", ""));
        assert_eq!((r.status, r.body.len()), (200, 0));

        for path in ["/", "/metricsx", "/favicon.ico", "/metrics/"] {
            assert_eq!(http(port, &request("GET", path, "")).status, 404, "{path}");
        }
        let r = http(port, &request("POST", "/metrics", "Content-Length: 0\r\n"));
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET, HEAD"));

        // Garbage does not hurt the server.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let _ = s.write_all(b"\x16\x03\x01\x00\xff garbage \r\n\r\n");
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        assert_eq!(http(port, &request("GET", "/health", "")).status, 200);

        // Keep-alive: two requests on one connection.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("read");
        assert_eq!(raw.matches("HTTP/1.1 200 OK").count(), 2, "{raw}");

        assert_eq!(srv.stop(), 0);
    }

    #[test]
    fn health_is_503_when_master_is_not_our_parent() {
        let port = free_port();
        let srv = start(port, None, u32::MAX, fast());
        assert!(wait_up(port, Duration::from_secs(5)));
        let r = http(port, &request("GET", "/health", ""));
        assert_eq!(r.status, 503);
        assert_eq!(srv.stop(), 0);
    }

    #[test]
    fn slow_clients_do_not_block_scrapes() {
        let port = free_port();
        let srv = start(port, None, 0, fast());
        assert!(wait_up(port, Duration::from_secs(5)));
        // Ten clients that send half a request head and stall, one idle.
        let mut stalled = Vec::new();
        for _ in 0..10 {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.write_all(b"GET /metr").expect("write");
            stalled.push(s);
        }
        let idle = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stalled.push(idle);
        let t0 = Instant::now();
        let r = http(port, &request("GET", "/metrics", ""));
        assert_eq!(r.status, 200);
        assert!(
            t0.elapsed() < Duration::from_millis(400),
            "{:?}",
            t0.elapsed()
        );
        // The stalled ones are cut after the header read timeout (0.5 s).
        for mut s in stalled {
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let t0 = Instant::now();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            assert!(
                t0.elapsed() < Duration::from_secs(4),
                "closed by the server"
            );
        }
        assert_eq!(srv.stop(), 0);
    }

    #[test]
    fn connection_limit_sheds_excess_connections() {
        let port = free_port();
        let mut tun = fast();
        tun.max_connections = 3;
        tun.header_read_timeout = Duration::from_secs(30);
        let srv = start(port, None, 0, tun);
        assert!(wait_up(port, Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(100)); // wait_up's probe is gone
        let held: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let mut extra = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        extra
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = extra.write_all(&request("GET", "/health", "").into_bytes());
        let mut buf = Vec::new();
        let _ = extra.read_to_end(&mut buf);
        assert!(buf.is_empty(), "over the limit: closed without an answer");
        drop(held);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(http(port, &request("GET", "/health", "")).status, 503);
        assert_eq!(srv.stop(), 0);
    }

    #[test]
    fn old_keep_alive_connections_are_closed_after_their_lifetime() {
        let port = free_port();
        let mut tun = fast();
        tun.conn_lifetime = Duration::from_millis(300);
        tun.header_read_timeout = Duration::from_secs(30);
        let srv = start(port, None, 0, tun);
        assert!(wait_up(port, Duration::from_secs(5)));
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("write");
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).expect("first response");
        assert!(buf[..n].starts_with(b"HTTP/1.1 503"));
        let t0 = Instant::now();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty());
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "closed at end of life"
        );
        assert_eq!(srv.stop(), 0);
    }

    #[test]
    fn port_in_use_logs_once_and_retries_until_free() {
        let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = blocker.local_addr().expect("addr").port();
        let srv = start(port, None, 0, fast());
        let needle = format!("cannot listen on 127.0.0.1:{port}");
        let t0 = Instant::now();
        while log_lines(&needle).is_empty() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Several retries (every 0.3 s) later, still a single line.
        std::thread::sleep(Duration::from_millis(1000));
        let lines = log_lines(&needle);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("in use"), "{}", lines[0]);
        // Nobody is serving metrics on it yet: the blocker holds it.
        drop(blocker);
        assert!(
            wait_up(port, Duration::from_secs(3)),
            "came up after the port was freed"
        );
        assert_eq!(http(port, &request("GET", "/metrics", "")).status, 200);
        assert_eq!(
            log_lines(&format!("now listening on http://127.0.0.1:{port}")).len(),
            1
        );
        assert_eq!(srv.stop(), 0);
    }

    #[test]
    fn stop_during_bind_retry_returns_zero() {
        let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = blocker.local_addr().expect("addr").port();
        let srv = start(port, None, 0, fast());
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(srv.stop(), 0);
        drop(blocker);
    }

    // ---- TLS ----

    fn pem_chain(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certs")
    }

    /// One HTTPS request; Ok(raw response) or Err(TLS/IO error text).
    fn https(
        port: u16,
        ca_pem: &str,
        client: Option<&(String, String)>,
        req: &str,
    ) -> Result<Vec<u8>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in pem_chain(ca_pem) {
            roots.add(c).map_err(|e| e.to_string())?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                use rustls::pki_types::pem::PemObject;
                let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
                    .map_err(|e| e.to_string())?;
                builder
                    .with_client_auth_cert(pem_chain(cert), key)
                    .map_err(|e| e.to_string())?
            }
        };
        let name =
            rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let conn =
            rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        match tls.read_to_end(&mut raw) {
            Ok(_) => Ok(raw),
            // hyper closes without close_notify after Connection: close.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => Ok(raw),
            Err(e) => Err(e.to_string()),
        }
    }

    fn status_of(r: &Result<Vec<u8>, String>) -> Option<u16> {
        r.as_ref().ok().and_then(|raw| parse(raw)).map(|r| r.status)
    }

    #[test]
    fn tls_client_auth_required() {
        let dir = std::env::temp_dir().join(format!("fc-srv-tls-req-{}", std::process::id()));
        let pki = testpki::make(&dir);
        let port = free_port();
        let tls = TlsConfig {
            certfile: pki.server_cert.clone(),
            keyfile: pki.server_key.clone(),
            client_cafile: Some(pki.ca_file.clone()),
            client_capath: None,
            client_auth_required: true,
        };
        let srv = start(port, Some(tls), 0, fast());
        assert!(wait_up(port, Duration::from_secs(5)));
        let req = request("GET", "/metrics", "");

        let r = https(port, &pki.ca_pem, Some(&pki.client_good), &req);
        assert_eq!(status_of(&r), Some(200), "{r:?}");
        let body = parse(r.as_ref().map(|v| &v[..]).unwrap_or_default()).map(|r| r.body);
        assert!(String::from_utf8_lossy(&body.unwrap_or_default())
            .contains("gunicorn_worker_requests_total"));

        let r = https(port, &pki.ca_pem, None, &req);
        assert_eq!(
            status_of(&r),
            None,
            "no client certificate must be refused: {r:?}"
        );
        let r = https(port, &pki.ca_pem, Some(&pki.client_rogue), &req);
        assert_eq!(
            status_of(&r),
            None,
            "a foreign CA's certificate must be refused: {r:?}"
        );

        // Plain HTTP on the HTTPS port gets nothing useful.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = s.write_all(req.as_bytes());
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        assert!(!raw.starts_with(b"HTTP/1.1 200"));

        assert_eq!(srv.stop(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tls_client_auth_optional_with_capath() {
        let dir = std::env::temp_dir().join(format!("fc-srv-tls-opt-{}", std::process::id()));
        let pki = testpki::make(&dir);
        let port = free_port();
        let tls = TlsConfig {
            certfile: pki.server_cert.clone(),
            keyfile: pki.server_key.clone(),
            client_cafile: None,
            client_capath: Some(pki.ca_dir.clone()),
            client_auth_required: false,
        };
        let srv = start(port, Some(tls), 0, fast());
        assert!(wait_up(port, Duration::from_secs(5)));
        let req = request("GET", "/metrics", "");
        let r = https(port, &pki.ca_pem, None, &req);
        assert_eq!(status_of(&r), Some(200), "{r:?}");
        let r = https(port, &pki.ca_pem, Some(&pki.client_good), &req);
        assert_eq!(status_of(&r), Some(200), "{r:?}");
        let r = https(port, &pki.ca_pem, Some(&pki.client_rogue), &req);
        assert_eq!(status_of(&r), None, "{r:?}");
        assert_eq!(srv.stop(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tls_files_missing_at_start_are_logged_and_retried() {
        let dir = std::env::temp_dir().join(format!("fc-srv-tls-late-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let port = free_port();
        let tls = TlsConfig {
            certfile: dir.join("server.pem"),
            keyfile: dir.join("server.key"),
            client_cafile: None,
            client_capath: None,
            client_auth_required: false,
        };
        let srv = start(port, Some(tls), 0, fast());
        std::thread::sleep(Duration::from_millis(700));
        let needle = format!("{}", dir.join("server.pem").display());
        assert_eq!(log_lines(&needle).len(), 1, "one line naming the file");
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        let pki = testpki::make(&dir);
        assert!(wait_up(port, Duration::from_secs(3)));
        let r = https(port, &pki.ca_pem, None, &request("GET", "/health", ""));
        assert_eq!(status_of(&r), Some(503), "{r:?}");
        assert_eq!(srv.stop(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    // ---- the real entry point, in a child process ----

    const CHILD_ENV: &str = "FC_EXPORTER_TEST_RUN_PORT";

    /// Re-runs this test binary as a child that calls `run`; the parent
    /// scrapes it, sends SIGTERM and expects exit status 0.
    #[test]
    fn run_serves_and_exits_zero_on_sigterm() {
        if let Ok(port) = std::env::var(CHILD_ENV) {
            let port: u16 = port.parse().expect("port");
            let cfg = ServerConfig {
                bind_address: "127.0.0.1".into(),
                port,
                tls: None,
                master_pid: Some(std::os::unix::process::parent_id()),
                log: |l| eprintln!("{l}"),
            };
            std::process::exit(run(cfg, Box::new(families), Extras::default()));
        }
        let port = free_port();
        let exe = std::env::current_exe().expect("current exe");
        let mut child = std::process::Command::new(exe)
            .args([
                "run_serves_and_exits_zero_on_sigterm",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, port.to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn child");
        let up = wait_up(port, Duration::from_secs(10));
        let health = up.then(|| http(port, &request("GET", "/health", "")).status);
        let metrics = up.then(|| http(port, &request("GET", "/metrics", "")).status);
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break Some(s);
            }
            if t0.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(up, "child server came up");
        assert_eq!(health, Some(200), "the child's parent is us: healthy");
        assert_eq!(metrics, Some(200));
        assert_eq!(status.and_then(|s| s.code()), Some(0), "exit 0 on SIGTERM");
    }
}
