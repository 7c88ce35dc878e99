//! Tests of the hook layer: each hook is called with views and the hook
//! functions (written in a config file) record what they received.

use super::*;
use crate::config::Loaded;
use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use pyo3::types::PyList;

thread_local! {
    /// Lines the hook layer would have written, when capturing.
    static CAPTURED: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Records `text` if this thread captures; `level` None = stderr.
pub(super) fn capture(level: Option<Level>, text: &str) -> bool {
    CAPTURED.with(|c| {
        let mut c = c.borrow_mut();
        let Some(v) = c.as_mut() else {
            return false;
        };
        match level {
            Some(l) if !crate::log::enabled(l) => {}
            Some(l) => v.push(format!("[{}] {text}", l.name())),
            None => v.push(format!("<stderr> {text}")),
        }
        true
    })
}

fn start_capture() {
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
}

fn captured() -> Vec<String> {
    CAPTURED.with(|c| c.borrow_mut().replace(Vec::new()).unwrap_or_default())
}

fn tmpdir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "fc-hooks-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A Config from a config file with `text` (which must define CALLS), and
/// extra command-line arguments.
fn config(py: Python<'_>, text: &str, args: &[&str]) -> Config {
    let d = tmpdir();
    let p = d.join("conf.py");
    std::fs::write(&p, text).unwrap();
    let mut argv: Vec<std::ffi::OsString> =
        vec!["ferrocorn".into(), "-c".into(), p.clone().into_os_string()];
    argv.extend(args.iter().map(|a| (*a).into()));
    argv.push("app:app".into());
    match Config::load(py, argv) {
        Ok(Loaded::Run(c)) => c,
        Ok(Loaded::Exit(code)) => panic!("exit {code}"),
        Err(e) => panic!("config error: {e}"),
    }
}

/// The config module's CALLS list (found through any hook's globals).
fn calls<'py>(py: Python<'py>, cfg: &Config) -> Bound<'py, PyList> {
    for h in ALL {
        if let Some(f) = cfg.hook(h.name()) {
            if let Ok(g) = f.bind(py).getattr("__globals__") {
                if let Ok(c) = g.get_item("CALLS") {
                    return c.cast_into::<PyList>().unwrap();
                }
            }
        }
    }
    panic!("no hook with CALLS in its globals");
}

/// CALLS as Python reprs, then emptied.
fn take(py: Python<'_>, cfg: &Config) -> Vec<String> {
    let l = calls(py, cfg);
    let out = l
        .iter()
        .map(|x| match x.extract::<String>() {
            Ok(s) => s,
            Err(_) => x.repr().unwrap().to_string(),
        })
        .collect();
    l.call_method0("clear").unwrap();
    out
}

fn with_py<R>(f: impl FnOnce(Python<'_>) -> R) -> R {
    Python::initialize();
    Python::attach(|py| {
        start_capture();
        f(py)
    })
}

fn wv(pid: u32, age: u64) -> WorkerView {
    WorkerView {
        pid,
        ppid: 4242,
        age,
        nr: 0,
        alive: true,
        booted: false,
        aborted: false,
        max_requests: 0,
        timeout: 30,
    }
}

const LISTENERS: [ListenerView<'static>; 1] = [ListenerView {
    fd: 0,
    url: "http://127.0.0.1:8000",
}];

fn sv(workers: &[WorkerView]) -> ServerView<'_> {
    ServerView {
        pid: 4242,
        num_workers: 2,
        workers,
        pidfile: Some("/tmp/fc.pid"),
        proc_name: "myapp",
        listeners: &LISTENERS,
    }
}

fn req_view<'a>(headers: &'a [(&'a [u8], &'a [u8])]) -> RequestView<'a> {
    RequestView {
        method: "GET",
        uri: b"/p/a%20th?q=1&r=\xe9#frag",
        path: b"/p/a%20th",
        query: b"q=1&r=\xe9",
        fragment: b"frag",
        version: (1, 1),
        headers,
        scheme: "http",
        peer: Some("10.1.2.3:5555".parse().unwrap()),
        req_number: 1,
    }
}

// -- tests ---------------------------------------------------------------------

#[test]
fn unset_hooks_are_free_and_ok() {
    with_py(|py| {
        let cfg = config(py, "", &[]);
        let h = Hooks::new(py, &cfg).unwrap();
        for hook in ALL {
            assert!(!h.has(hook.name()), "{}", hook.name());
        }
        assert!(!h.has("nope"));
        let w = wv(0, 1);
        let s = sv(&[]);
        assert!(h.on_starting(py, &s).is_ok());
        assert!(h.when_ready(py, &s).is_ok());
        assert!(h.pre_fork(py, &s, &w).is_ok());
        assert!(h.post_fork(py, &s, &w).is_ok());
        assert!(h.post_worker_init(py, &w).is_ok());
        assert!(h.nworkers_changed(py, &s, 2, None).is_ok());
        let hdrs: [(&[u8], &[u8]); 0] = [];
        let r = h.request(py, &req_view(&hdrs));
        assert!(r.obj.is_none());
        assert!(h.pre_request(py, &w, &r).is_ok());
        assert!(h.post_request(py, &w, &r, None, None).is_ok());
        assert!(captured().is_empty());
    });
}

const SERVER_CONF: &str = r#"
CALLS = []
def describe(server):
    return "pid=%s n=%s workers=%s pidfile=%s name=%s addr=%s timeout=%s wc=%s listeners=%s cfgw=%s" % (
        server.pid, server.num_workers,
        sorted((p, w.age, str(w)) for p, w in server.WORKERS.items()),
        server.pidfile.fname if server.pidfile else None, server.proc_name,
        server.address, server.timeout, server.worker_class.__name__,
        [str(l) for l in server.LISTENERS], server.cfg.workers)
def on_starting(server): CALLS.append("on_starting " + describe(server))
def when_ready(server): CALLS.append("when_ready " + describe(server))
def on_reload(server): CALLS.append("on_reload " + describe(server))
def pre_exec(server): CALLS.append("pre_exec " + describe(server))
def on_exit(server): CALLS.append("on_exit " + describe(server))
def nworkers_changed(server, new, old): CALLS.append("nworkers_changed %r %r" % (new, old))
"#;

#[test]
fn server_hooks_get_the_arbiter() {
    with_py(|py| {
        let cfg = config(
            py,
            SERVER_CONF,
            &[
                "-b",
                "127.0.0.1:8000",
                "-b",
                "unix:/tmp/s.sock",
                "-w",
                "3",
                "-t",
                "20",
            ],
        );
        let h = Hooks::new(py, &cfg).unwrap();
        for name in [
            "on_starting",
            "when_ready",
            "on_reload",
            "pre_exec",
            "on_exit",
            "nworkers_changed",
        ] {
            assert!(h.has(name), "{name}");
        }
        assert!(!h.has("pre_fork"));
        h.nworkers_changed(py, &sv(&[]), 3, None).unwrap();
        h.on_starting(py, &sv(&[])).unwrap();
        let ws = [wv(101, 1), wv(102, 2)];
        h.when_ready(py, &sv(&ws)).unwrap();
        h.nworkers_changed(py, &sv(&ws), 4, Some(3)).unwrap();
        h.on_reload(py, &sv(&ws)).unwrap();
        h.pre_exec(py, &sv(&ws)).unwrap();
        h.on_exit(py, &sv(&[])).unwrap();
        let tail = "pidfile=/tmp/fc.pid name=myapp addr=[('127.0.0.1', 8000), '/tmp/s.sock'] \
                    timeout=20 wc=SyncWorker listeners=['http://127.0.0.1:8000'] cfgw=3";
        let two = "workers=[(101, 1, '<Worker 101>'), (102, 2, '<Worker 102>')]";
        assert_eq!(
            take(py, &cfg),
            vec![
                "nworkers_changed 3 None".to_owned(),
                format!("on_starting pid=4242 n=2 workers=[] {tail}"),
                format!("when_ready pid=4242 n=2 {two} {tail}"),
                "nworkers_changed 4 3".to_owned(),
                format!("on_reload pid=4242 n=2 {two} {tail}"),
                format!("pre_exec pid=4242 n=2 {two} {tail}"),
                format!("on_exit pid=4242 n=2 workers=[] {tail}"),
            ]
        );
        assert!(captured().is_empty());
    });
}

const WORKER_CONF: &str = r#"
import os
CALLS = []
def pre_fork(server, worker):
    worker.counter = 1
    worker.seen_pid = worker.pid
    CALLS.append("pre_fork pid=%s age=%s ppid=%s timeout=%s max=%s" % (
        worker.pid, worker.age, worker.ppid, worker.timeout, worker.max_requests))
def post_fork(server, worker):
    worker.counter += 1
    CALLS.append("post_fork pid=%s counter=%s seen=%s sockets=%s" % (
        worker.pid, worker.counter, worker.seen_pid, [str(s) for s in worker.sockets]))
def post_worker_init(worker):
    worker.counter += 1
    CALLS.append("post_worker_init counter=%s booted=%s cls=%s.%s" % (
        worker.counter, worker.booted, type(worker).__module__, type(worker).__name__))
def worker_int(worker):
    CALLS.append("worker_int counter=%s alive=%s" % (worker.counter, worker.alive))
def worker_abort(worker):
    CALLS.append("worker_abort counter=%s aborted=%s" % (worker.counter, worker.aborted))
def worker_exit(server, worker):
    CALLS.append("worker_exit counter=%s nr=%s" % (worker.counter, worker.nr))
def child_exit(server, worker):
    CALLS.append("child_exit pid=%s counter=%s in_workers=%s others=%s" % (
        worker.pid, getattr(worker, "counter", None), worker.pid in server.WORKERS,
        sorted(server.WORKERS)))
def on_exit(server):
    CALLS.append("on_exit workers=%s" % sorted(
        (p, getattr(w, "counter", None)) for p, w in server.WORKERS.items()))
"#;

#[test]
fn worker_object_persists_across_hooks() {
    with_py(|py| {
        let cfg = config(py, WORKER_CONF, &["--max-requests", "100"]);
        let h = Hooks::new(py, &cfg).unwrap();
        // Master: pre_fork for the second worker, then the fork.
        let first = wv(101, 1);
        let mut second = wv(0, 2);
        second.max_requests = 105;
        h.pre_fork(py, &sv(&[first]), &second).unwrap();
        second.pid = 102;
        // Child: post_fork, post_worker_init, worker signals, exit.
        h.post_fork(py, &sv(&[first]), &second).unwrap();
        h.post_worker_init(py, &second).unwrap();
        second.booted = true;
        second.nr = 7;
        h.worker_int(py, &second).unwrap();
        second.aborted = true;
        h.worker_abort(py, &second).unwrap();
        h.worker_exit(py, &sv(&[first]), &second).unwrap();
        // Master: the worker is in WORKERS with its attributes; then it exits.
        h.on_exit(py, &sv(&[first, second])).unwrap();
        h.child_exit(py, &sv(&[first]), &second).unwrap();
        h.on_exit(py, &sv(&[first])).unwrap();
        // A new worker with the same pid but a new age is a new object.
        h.child_exit(py, &sv(&[]), &wv(102, 3)).unwrap();
        assert_eq!(
            take(py, &cfg),
            vec![
                "pre_fork pid=[booting] age=2 ppid=4242 timeout=15.0 max=105",
                "post_fork pid=102 counter=2 seen=[booting] sockets=['http://127.0.0.1:8000']",
                "post_worker_init counter=3 booted=False cls=gunicorn.workers.sync.SyncWorker",
                "worker_int counter=3 alive=True",
                "worker_abort counter=3 aborted=True",
                "worker_exit counter=3 nr=7",
                "on_exit workers=[(101, None), (102, 3)]",
                "child_exit pid=102 counter=3 in_workers=False others=[101]",
                "on_exit workers=[(101, None)]",
                "child_exit pid=102 counter=None in_workers=False others=[]",
            ]
        );
        assert!(captured().is_empty());
    });
}

const REQUEST_CONF: &str = r#"
import time
CALLS = []
def pre_request(worker, req):
    req.stash = "from pre"
    worker.reqs = getattr(worker, "reqs", 0) + 1
    CALLS.append("pre %r %r %r %r %r %r %r %r %r %r %r" % (
        req.method, req.uri, req.path, req.query, req.fragment, req.version,
        req.headers, req.scheme, req.peer_addr, req.remote_addr, req.should_close()))
def post_request(worker, req, environ, resp):
    if resp is None:
        CALLS.append("post %s %r %r None" % (getattr(req, "stash", None), environ, worker.reqs))
        return
    CALLS.append("post %s %r %r %r %r %r %r %r %r %r" % (
        req.stash, environ, worker.reqs, resp.status, getattr(resp, "status_code", "unset"),
        resp.headers, resp.sent, resp.response_length, resp.headers_sent, worker.nr))
"#;

#[test]
fn request_and_response_objects() {
    with_py(|py| {
        let cfg = config(py, REQUEST_CONF, &[]);
        let h = Hooks::new(py, &cfg).unwrap();
        let mut w = wv(101, 1);
        let hdrs: [(&[u8], &[u8]); 2] = [(b"Host", b"example.com"), (b"x-Cafe", b"\xe9t\xe9")];
        let r = h.request(py, &req_view(&hdrs));
        assert!(r.obj.is_some());
        h.pre_request(py, &w, &r).unwrap();
        w.nr = 1;
        let environ = PyDict::new(py);
        environ.set_item("PATH_INFO", "/p/a th").unwrap();
        let rh = [("Content-Type", "text/plain")];
        let resp = ResponseView {
            status: Some("200 OK"),
            status_code: Some(200),
            headers: &rh,
            sent: 5,
            response_length: Some(5),
            headers_sent: true,
        };
        h.post_request(py, &w, &r, Some(&environ), Some(&resp))
            .unwrap();
        assert!(!r.must_close(py));
        // No response and no environ (pre_request failed in gunicorn terms).
        let r2 = h.request(py, &req_view(&hdrs));
        h.post_request(py, &w, &r2, None, None).unwrap();
        // start_response never called: no status_code attribute.
        let empty = ResponseView {
            status: None,
            status_code: None,
            headers: &[],
            sent: 0,
            response_length: None,
            headers_sent: false,
        };
        h.post_request(py, &w, &r, None, Some(&empty)).unwrap();
        assert_eq!(
            take(py, &cfg),
            vec![
                "pre 'GET' '/p/a%20th?q=1&r=é#frag' '/p/a%20th' 'q=1&r=é' 'frag' (1, 1) \
                 [('HOST', 'example.com'), ('X-CAFE', 'été')] 'http' ('10.1.2.3', 5555) \
                 ('10.1.2.3', 5555) False",
                "post from pre {'PATH_INFO': '/p/a th'} 1 '200 OK' 200 \
                 [('Content-Type', 'text/plain')] 5 5 True 1",
                "post None {} 1 None",
                "post from pre {} 1 None 'unset' [] 0 None False 1",
            ]
        );
        assert!(captured().is_empty());
    });
}

#[test]
fn peer_addresses_and_force_close() {
    with_py(|py| {
        let cfg = config(
            py,
            "CALLS = []\ndef pre_request(worker, req):\n    CALLS.append(req.peer_addr)\n    req.force_close()\n",
            &[],
        );
        let h = Hooks::new(py, &cfg).unwrap();
        let w = wv(101, 1);
        let hdrs: [(&[u8], &[u8]); 0] = [];
        let mut rv = req_view(&hdrs);
        rv.peer = None;
        let r = h.request(py, &rv);
        h.pre_request(py, &w, &r).unwrap();
        assert!(r.must_close(py));
        rv.peer = Some("[::1]:8080".parse().unwrap());
        h.pre_request(py, &w, &h.request(py, &rv)).unwrap();
        assert_eq!(take(py, &cfg), vec!["", "('::1', 8080, 0, 0)"]);
    });
}

#[test]
fn post_request_with_two_three_and_four_arguments() {
    with_py(|py| {
        for (params, want) in [
            ("worker, req", "2 GET"),
            ("worker, req, environ", "3 GET {'A': 'b'}"),
            ("worker, req, environ, resp", "4 GET {'A': 'b'} 204"),
        ] {
            let n = params.split(',').count();
            let body = match n {
                2 => "CALLS.append('2 ' + req.method)".to_owned(),
                3 => "CALLS.append('3 %s %r' % (req.method, environ))".to_owned(),
                _ => "CALLS.append('4 %s %r %s' % (req.method, environ, resp.status_code))"
                    .to_owned(),
            };
            let text = format!(
                "CALLS = []\ndef on_exit(server): pass\ndef post_request({params}):\n    {body}\n"
            );
            let cfg = config(py, &text, &[]);
            let h = Hooks::new(py, &cfg).unwrap();
            let w = wv(101, 1);
            let hdrs: [(&[u8], &[u8]); 0] = [];
            let r = h.request(py, &req_view(&hdrs));
            let environ = PyDict::new(py);
            environ.set_item("A", "b").unwrap();
            let resp = ResponseView {
                status: Some("204 No Content"),
                status_code: Some(204),
                headers: &[],
                sent: 0,
                response_length: None,
                headers_sent: true,
            };
            h.post_request(py, &w, &r, Some(&environ), Some(&resp))
                .unwrap();
            assert_eq!(take(py, &cfg), vec![want.to_owned()], "{params}");
        }
    });
}

const FAILING_CONF: &str = r#"
import sys
CALLS = []
def on_starting(server): raise RuntimeError("no start")
def when_ready(server): raise ValueError("not ready")
def pre_fork(server, worker): raise KeyError("pf")
def post_fork(server, worker): raise ValueError("boom in post_fork")
def post_worker_init(worker): sys.exit(3)
def worker_int(worker): sys.exit("bye")
def pre_request(worker, req): raise ValueError("pre")
def post_request(worker, req, environ, resp): 1 / 0
def worker_exit(server, worker): raise OSError("gone")
def child_exit(server, worker): raise TypeError("ce")
"#;

#[test]
fn exceptions_are_logged_as_gunicorn_and_returned() {
    with_py(|py| {
        let cfg = config(py, FAILING_CONF, &[]);
        let h = Hooks::new(py, &cfg).unwrap();
        let w = wv(101, 1);
        let s = sv(&[]);

        let e = h.on_starting(py, &s).unwrap_err();
        assert_eq!(
            (e.hook, e.message.as_str(), e.system_exit),
            ("on_starting", "no start", None)
        );
        assert!(
            e.traceback
                .starts_with("Traceback (most recent call last):"),
            "{}",
            e.traceback
        );
        assert!(
            e.traceback.ends_with("RuntimeError: no start"),
            "{}",
            e.traceback
        );
        assert_eq!(captured(), vec!["<stderr> \nError: no start\n\n"]);

        let e = h.when_ready(py, &s).unwrap_err();
        assert_eq!(captured(), vec![format!("<stderr> {}\n", e.traceback)]);
        assert!(e.traceback.ends_with("ValueError: not ready"));

        let e = h.pre_fork(py, &s, &w).unwrap_err();
        assert_eq!(e.message, "'pf'");
        assert_eq!(
            captured(),
            vec![format!(
                "[ERROR] Unhandled exception in main loop\n{}",
                e.traceback
            )]
        );
        let e = h.child_exit(py, &s, &w).unwrap_err();
        assert_eq!(
            captured(),
            vec![format!(
                "[ERROR] Unhandled exception in main loop\n{}",
                e.traceback
            )]
        );

        let e = h.post_fork(py, &s, &w).unwrap_err();
        assert_eq!(
            captured(),
            vec![
                format!("[ERROR] Exception in worker process\n{}", e.traceback),
                "<stderr> boom in post_fork\n".to_owned(),
            ]
        );

        let e = h.post_worker_init(py, &w).unwrap_err();
        assert_eq!((e.system_exit, e.traceback.as_str()), (Some(3), ""));
        let e = h.worker_int(py, &w).unwrap_err();
        assert_eq!((e.system_exit, e.message.as_str()), (Some(1), "bye"));
        assert!(captured().is_empty());

        let hdrs: [(&[u8], &[u8]); 0] = [];
        let r = h.request(py, &req_view(&hdrs));
        let e = h.pre_request(py, &w, &r).unwrap_err();
        assert_eq!(
            captured(),
            vec![format!(
                "[ERROR] Error handling request GET /p/a%20th?q=1&r=\u{e9}#frag\n{}",
                e.traceback
            )]
        );
        let e = h.post_request(py, &w, &r, None, None).unwrap_err();
        assert!(e.traceback.ends_with("ZeroDivisionError: division by zero"));
        assert_eq!(
            captured(),
            vec![format!(
                "[ERROR] Exception in post_request hook\n{}",
                e.traceback
            )]
        );

        let e = h.worker_exit(py, &s, &w).unwrap_err();
        assert_eq!(
            captured(),
            vec![format!(
                "[WARNING] Exception during worker exit:\n{}\n",
                e.traceback
            )]
        );
        assert_eq!(e.to_string(), "Exception in worker_exit hook: gone");
    });
}

const LOG_CONF: &str = r#"
import logging
CALLS = []
def on_starting(server):
    log = server.log
    log.info("hello %s %d", "x", 3)
    log.warning("pct %(a)s", {"a": 1})
    log.debug("hidden %s", "d")
    log.log("error", "by name")
    log.log(logging.CRITICAL, "by number")
    log.error("plain 100%")
    log.error("bad %d", "x")
    try:
        raise ValueError("inner")
    except ValueError:
        log.exception("caught %s", "it")
    log.info("with exc_info", exc_info=True)
    CALLS.append(log.cfg is server.cfg)
"#;

#[test]
fn log_object_writes_to_the_error_log() {
    with_py(|py| {
        let cfg = config(py, LOG_CONF, &[]);
        let h = Hooks::new(py, &cfg).unwrap();
        h.on_starting(py, &sv(&[])).unwrap();
        assert_eq!(take(py, &cfg), vec!["True"]);
        let lines = captured();
        assert_eq!(lines.len(), 8, "{lines:#?}");
        assert_eq!(lines[0], "[INFO] hello x 3");
        assert_eq!(lines[1], "[WARNING] pct 1");
        assert_eq!(lines[2], "[ERROR] by name");
        assert_eq!(lines[3], "[CRITICAL] by number");
        assert_eq!(lines[4], "[ERROR] plain 100%");
        // A bad format is reported on stderr (logging's handleError) and dropped.
        assert!(
            lines[5].starts_with("<stderr> --- Logging error ---\nTraceback"),
            "{}",
            lines[5]
        );
        assert!(
            lines[5].ends_with("Message: 'bad %d'\nArguments: ('x',)\n"),
            "{}",
            lines[5]
        );
        assert!(lines[6].starts_with("[ERROR] caught it\nTraceback (most recent call last):"));
        assert!(lines[6].ends_with("ValueError: inner"), "{}", lines[6]);
        assert_eq!(lines[7], "[INFO] with exc_info\nNoneType: None");
    });
}

const CFG_CONF: &str = r#"
CALLS = []
raw_env = ["A=1", "B=x=y"]
def on_starting(server):
    cfg = server.cfg
    CALLS.append("%s %s %s %s %s %s %s %s" % (
        cfg.workers, cfg.worker_class_str, cfg.env, cfg.address, cfg.proc_name,
        bool(cfg.is_ssl), cfg.settings["workers"].value, cfg.timeout))
    for action in (lambda: setattr(cfg, "workers", 9), lambda: cfg.set("workers", 9),
                   lambda: cfg.nope):
        try:
            action()
            CALLS.append("no error")
        except AttributeError as e:
            CALLS.append("AttributeError: %s" % e)
    cfg.custom = 1
    CALLS.append(cfg.custom)
    server.num_workers = 5
"#;

#[test]
fn cfg_object_reads_like_gunicorns() {
    with_py(|py| {
        let cfg = config(
            py,
            CFG_CONF,
            &["--threads", "4", "-b", "[::1]:9000", "-n", "svc"],
        );
        let h = Hooks::new(py, &cfg).unwrap();
        h.on_starting(py, &sv(&[])).unwrap();
        let got = take(py, &cfg);
        assert_eq!(
            got[0],
            "1 gthread {'A': '1', 'B': 'x=y'} [('::1', 9000)] svc False 1 30"
        );
        assert_eq!(got[1], "AttributeError: Invalid access!");
        assert!(got[2].starts_with("AttributeError: ferrocorn: settings cannot be changed"));
        assert_eq!(got[3], "AttributeError: No configuration setting for: nope");
        assert_eq!(got[4], "1");
        assert_eq!(h.take_num_workers(py), Some(5));
        assert_eq!(h.take_num_workers(py), None);
    });
}

#[test]
fn set_wsgi_and_update_config() {
    with_py(|py| {
        let text = "CALLS = []\ndef post_worker_init(worker):\n    CALLS.append('%s %s %s' % (worker.wsgi, worker.app.wsgi(), worker.cfg.workers))\n";
        let cfg = config(py, text, &["-w", "2"]);
        let mut h = Hooks::new(py, &cfg).unwrap();
        let app = py.eval(c"len", None, None).unwrap();
        h.set_wsgi(py, &app);
        h.post_worker_init(py, &wv(101, 1)).unwrap();
        let cfg2 = config(py, text, &["-w", "5"]);
        h.update_config(py, &cfg2).unwrap();
        // The old worker keeps its cfg, a new one gets the new cfg.
        h.post_worker_init(py, &wv(101, 1)).unwrap();
        h.post_worker_init(py, &wv(102, 2)).unwrap();
        let mut got = take(py, &cfg);
        got.extend(take(py, &cfg2));
        assert_eq!(
            got,
            vec![
                "<built-in function len> <built-in function len> 2",
                "<built-in function len> <built-in function len> 2",
                "<built-in function len> <built-in function len> 5",
            ]
        );
    });
}

#[test]
fn alive_false_and_reload_signal_the_process() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&term)).unwrap();
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup)).unwrap();
    let wait = |flag: &AtomicBool| {
        for _ in 0..200 {
            if flag.load(Ordering::SeqCst) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        false
    };
    with_py(|py| {
        let text = "CALLS = []\n\
                    def post_request(worker, req, environ, resp):\n    worker.alive = False\n\
                    def on_reload(server):\n    server.reload()\n\
                    def pre_fork(server, worker):\n    worker.alive = False\n";
        let cfg = config(py, text, &[]);
        let h = Hooks::new(py, &cfg).unwrap();
        let me = std::process::id();
        // In the master (the worker's pid is not ours): no signal.
        h.pre_fork(py, &sv(&[]), &wv(0, 1)).unwrap();
        assert!(!wait(&term));
        let hdrs: [(&[u8], &[u8]); 0] = [];
        let r = h.request(py, &req_view(&hdrs));
        h.post_request(py, &wv(me, 2), &r, None, None).unwrap();
        assert!(wait(&term), "SIGTERM for alive = False");
        let mut s = sv(&[]);
        s.pid = me;
        h.on_reload(py, &s).unwrap();
        assert!(wait(&hup), "SIGHUP for server.reload()");
    });
}
