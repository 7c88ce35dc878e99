//! Maps gunicorn worker class names (short names, dotted paths, and
//! gunicorn-prometheus-exporter's Prometheus*Worker classes) to the worker
//! ferrocorn runs.

/// The worker kinds ferrocorn implements so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sync,
}

/// What a worker class name asks for.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    Sync,
    /// WSGI with concurrency (gthread, gevent, eventlet): the app is served
    /// correctly by the sync worker, one request at a time per worker.
    ConcurrentWsgi(&'static str),
    /// Needs a different protocol or event loop (ASGI, tornado).
    Other(&'static str),
}

fn classify(name: &str) -> Option<Wanted> {
    let last = name.rsplit('.').next().unwrap_or(name);
    let wanted = match (name, last) {
        ("sync", _) | (_, "SyncWorker" | "PrometheusWorker") => Wanted::Sync,
        ("gthread", _) | (_, "ThreadWorker" | "PrometheusThreadWorker") => {
            Wanted::ConcurrentWsgi("gthread")
        }
        ("gevent" | "gevent_wsgi" | "gevent_pywsgi", _)
        | (_, "GeventWorker" | "GeventPyWSGIWorker" | "PrometheusGeventWorker") => {
            Wanted::ConcurrentWsgi("gevent")
        }
        ("eventlet", _) | (_, "EventletWorker" | "PrometheusEventletWorker") => {
            Wanted::ConcurrentWsgi("eventlet")
        }
        ("tornado", _) | (_, "TornadoWorker" | "PrometheusTornadoWorker") => {
            Wanted::Other("tornado")
        }
        ("asgi", _) | (_, "ASGIWorker") => Wanted::Other("asgi"),
        (_, "UvicornWorker" | "UvicornH11Worker" | "PrometheusUvicornWorker") => {
            Wanted::Other("uvicorn")
        }
        _ => return None,
    };
    Some(wanted)
}

/// Resolves `--worker-class`; Ok carries an optional warning for the log.
pub fn resolve(name: &str) -> Result<(Kind, Option<String>), String> {
    match classify(name) {
        Some(Wanted::Sync) => Ok((Kind::Sync, None)),
        Some(Wanted::ConcurrentWsgi(kind)) => Ok((
            Kind::Sync,
            Some(format!(
                "worker class {name:?}: the {kind} worker is not implemented yet in ferrocorn; \
                 serving with the sync worker (one request at a time per worker, idle keep-alive \
                 connections still parked)"
            )),
        )),
        Some(Wanted::Other(kind)) => Err(format!(
            "worker class {name:?}: the {kind} worker is not implemented yet in ferrocorn \
             (implemented: sync)"
        )),
        None => Err(format!(
            "worker class {name:?} is not known to ferrocorn (implemented: sync; \
             planned: gthread, gevent, eventlet, tornado, asgi, uvicorn)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gunicorn_names_resolve() {
        assert_eq!(resolve("sync").unwrap(), (Kind::Sync, None));
        assert_eq!(
            resolve("gunicorn.workers.sync.SyncWorker").unwrap().0,
            Kind::Sync
        );
        assert_eq!(
            resolve("gunicorn_prometheus_exporter.PrometheusWorker").unwrap(),
            (Kind::Sync, None)
        );
        let (k, warn) = resolve("gthread").unwrap();
        assert_eq!(k, Kind::Sync);
        assert!(warn.unwrap().contains("not implemented yet"));
        assert!(resolve("uvicorn.workers.UvicornWorker")
            .unwrap_err()
            .contains("uvicorn"));
        assert!(resolve("asgi").is_err());
        assert!(resolve("tornado").is_err());
        assert!(resolve("no.such.Worker").unwrap_err().contains("not known"));
    }
}
