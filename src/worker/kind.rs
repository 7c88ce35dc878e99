//! Maps gunicorn worker class names (short names, dotted paths, and
//! gunicorn-prometheus-exporter's Prometheus*Worker classes) to the worker
//! kind ferrocorn runs.

use super::green::Lib;

/// The worker kinds ferrocorn implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sync,
    /// N threads run the app (`--threads`).
    Gthread,
    /// One greenlet per request on gevent's or eventlet's hub.
    Green(Lib),
    /// ASGI 3 apps on an asyncio loop (`asgi`, uvicorn's worker names).
    Asgi,
    /// Tornado apps (and WSGI apps through tornado's WSGIContainer) on the
    /// asgi kind's loop.
    Tornado,
}

impl Kind {
    /// The kind's short name (`sync`, `gthread`, `gevent`, `eventlet`,
    /// `asgi`, `tornado`), as `ferrocorn top` shows it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Sync => "sync",
            Kind::Gthread => "gthread",
            Kind::Green(lib) => lib.name(),
            Kind::Asgi => "asgi",
            Kind::Tornado => "tornado",
        }
    }
}

/// The names `--worker-class` accepts, for messages.
const SUPPORTED: &str =
    "sync, gthread, gevent, gevent_wsgi, gevent_pywsgi, eventlet, asgi, tornado, \
     their gunicorn.workers.* class paths, uvicorn.workers.UvicornWorker, UvicornH11Worker \
     (and uvicorn_worker's), and gunicorn_prometheus_exporter.PrometheusWorker, \
     PrometheusThreadWorker, PrometheusGeventWorker, PrometheusEventletWorker, \
     PrometheusTornadoWorker";

/// Resolves `--worker-class` (after gunicorn's `--threads` rule, see
/// `Config::worker_class`).
pub fn resolve(name: &str) -> Result<Kind, String> {
    let last = name.rsplit('.').next().unwrap_or(name);
    match (name, last) {
        ("sync", _) | (_, "SyncWorker" | "PrometheusWorker") => Ok(Kind::Sync),
        ("gthread", _) | (_, "ThreadWorker" | "PrometheusThreadWorker") => Ok(Kind::Gthread),
        ("gevent" | "gevent_wsgi" | "gevent_pywsgi", _)
        | (_, "GeventWorker" | "GeventPyWSGIWorker" | "PrometheusGeventWorker") => {
            Ok(Kind::Green(Lib::Gevent))
        }
        ("eventlet", _) | (_, "EventletWorker" | "PrometheusEventletWorker") => {
            Ok(Kind::Green(Lib::Eventlet))
        }
        ("tornado", _) | (_, "TornadoWorker" | "PrometheusTornadoWorker") => Ok(Kind::Tornado),
        ("asgi", _)
        | (_, "ASGIWorker" | "UvicornWorker" | "UvicornH11Worker" | "PrometheusUvicornWorker") => {
            Ok(Kind::Asgi)
        }
        _ => Err(format!(
            "worker class {name:?} is not known to ferrocorn: ferrocorn runs its own worker \
             kinds, not Python Worker classes (supported: {SUPPORTED})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gunicorn_names_resolve() {
        for (name, kind) in [
            ("sync", Kind::Sync),
            ("gunicorn.workers.sync.SyncWorker", Kind::Sync),
            ("gunicorn_prometheus_exporter.PrometheusWorker", Kind::Sync),
            ("gthread", Kind::Gthread),
            ("gunicorn.workers.gthread.ThreadWorker", Kind::Gthread),
            (
                "gunicorn_prometheus_exporter.PrometheusThreadWorker",
                Kind::Gthread,
            ),
            ("gevent", Kind::Green(Lib::Gevent)),
            ("gevent_wsgi", Kind::Green(Lib::Gevent)),
            ("gevent_pywsgi", Kind::Green(Lib::Gevent)),
            (
                "gunicorn.workers.ggevent.GeventWorker",
                Kind::Green(Lib::Gevent),
            ),
            (
                "gunicorn.workers.ggevent.GeventPyWSGIWorker",
                Kind::Green(Lib::Gevent),
            ),
            (
                "gunicorn_prometheus_exporter.PrometheusGeventWorker",
                Kind::Green(Lib::Gevent),
            ),
            ("eventlet", Kind::Green(Lib::Eventlet)),
            (
                "gunicorn.workers.geventlet.EventletWorker",
                Kind::Green(Lib::Eventlet),
            ),
            (
                "gunicorn_prometheus_exporter.PrometheusEventletWorker",
                Kind::Green(Lib::Eventlet),
            ),
        ] {
            assert_eq!(resolve(name), Ok(kind), "{name}");
        }
        for name in [
            "asgi",
            "gunicorn.workers.gasgi.ASGIWorker",
            "uvicorn.workers.UvicornWorker",
            "uvicorn.workers.UvicornH11Worker",
            "uvicorn_worker.UvicornWorker",
            "uvicorn_worker.UvicornH11Worker",
        ] {
            assert_eq!(resolve(name), Ok(Kind::Asgi), "{name}");
        }
        for name in [
            "tornado",
            "gunicorn.workers.gtornado.TornadoWorker",
            "gunicorn_prometheus_exporter.PrometheusTornadoWorker",
        ] {
            assert_eq!(resolve(name), Ok(Kind::Tornado), "{name}");
        }
        let e = resolve("myproject.workers.CustomWorker").unwrap_err();
        assert!(
            e.contains("not known") && e.contains("gevent_pywsgi"),
            "{e}"
        );
    }
}
