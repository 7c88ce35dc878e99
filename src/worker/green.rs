//! The gevent and eventlet worker kinds: one OS thread. The library's hub
//! runs the connection layer's loop (green.py): when the loop's epoll
//! descriptor is readable, and on a short timer, the hub calls
//! [`Loop::turn`] without waiting. Each complete request is detached and
//! started at once in a new greenlet whose parent is the hub: a request
//! that never waits is done before the turn goes on (as in the sync kind),
//! one that waits gives control back to the turn, and the hub resumes it
//! later. The connection goes back to the loop through its
//! [`crate::conn::Resumer`]. A request's body and response I/O wait for the
//! socket through the hub ([`Waiter::Yield`]), so ferrocorn's own waiting
//! never blocks it. No thread hand-off, no GIL hand-off.

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pyo3::prelude::*;

use super::serve::{ConnValues, Detached, WsgiServer};
use crate::conn::connection::Peer;
use crate::conn::io::Waiter;
use crate::conn::{Dispatch, Handler, Loop, Request, Served};
use crate::wsgi::ThreadCache;

const GREEN_SOURCE: &str = include_str!("green.py");

/// Which greenlet library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lib {
    Gevent,
    Eventlet,
}

impl Lib {
    pub fn name(self) -> &'static str {
        match self {
            Lib::Gevent => "gevent",
            Lib::Eventlet => "eventlet",
        }
    }
}

fn module(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    crate::python::embedded_module(py, c"_ferrocorn_green", c"<ferrocorn green>", GREEN_SOURCE)
}

/// Monkey-patches the standard library for `lib` (before the app loads).
pub fn patch(py: Python<'_>, lib: Lib) -> Result<(), String> {
    module(py)
        .and_then(|m| m.getattr("patch")?.call1((lib.name(),)).map(|_| ()))
        .map_err(|e| {
            format!(
                "the {} worker needs the {} package in the app's virtualenv \
                 (pip install {}): {}",
                lib.name(),
                lib.name(),
                lib.name(),
                crate::python::format_err(py, &e)
            )
        })
}

/// The hub's (wait_read, wait_write), set once the kind starts.
static WAITS: OnceLock<(Py<PyAny>, Py<PyAny>)> = OnceLock::new();

/// [`Waiter::Yield`]: waits for the socket in the hub, so other greenlets
/// run meanwhile.
fn hub_wait(fd: RawFd, write: bool, timeout: Duration) -> std::io::Result<()> {
    let Some((read_fn, write_fn)) = WAITS.get() else {
        return Err(std::io::Error::other("the hub's waits are not set up"));
    };
    Python::attach(|py| {
        let f = if write { write_fn } else { read_fn };
        f.call1(py, (fd, timeout.as_secs_f64()))
            .map(|_| ())
            .map_err(|e| {
                if e.is_instance_of::<pyo3::exceptions::PyTimeoutError>(py) {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")
                } else {
                    std::io::Error::other(e.to_string())
                }
            })
    })
}

/// The waiter requests use in the green kinds.
pub const WAITER: Waiter = Waiter::Yield(hub_wait);

/// The loop's side of the green kinds: starts each request in a greenlet.
pub struct GreenHandler {
    /// green.py's `start(job)`.
    start: Py<PyAny>,
    server: Arc<WsgiServer>,
}

impl GreenHandler {
    pub fn new(py: Python<'_>, lib: Lib, server: Arc<WsgiServer>) -> Result<GreenHandler, String> {
        let start = module(py)
            .and_then(|m| m.getattr("starter")?.call1((lib.name(),)))
            .map_err(|e| {
                format!(
                    "starting the {} hub: {}",
                    lib.name(),
                    crate::python::format_err(py, &e)
                )
            })?
            .unbind();
        Ok(GreenHandler { start, server })
    }
}

impl Handler for GreenHandler {
    type ConnState = ConnValues;

    fn connection(&mut self, _peer: &Peer, _listener: usize) -> ConnValues {
        Arc::new(Mutex::new(None))
    }

    fn woke(&mut self) -> Result<(), i32> {
        // The hub runs Python's signal handlers itself.
        Ok(())
    }

    fn reopen_logs(&mut self) {
        self.server.reopen_logs();
    }

    fn serve(&mut self, mut req: Request<'_>, values: &mut ConnValues) -> Dispatch {
        let Some(job) = Detached::take(&mut req, values) else {
            return Dispatch::Done(Served::closed(None));
        };
        // The turn runs in the hub, which holds the GIL.
        Python::attach(|py| {
            let job = GreenJob {
                job: Mutex::new(Some(job)),
                server: Arc::clone(&self.server),
            };
            let started = Bound::new(py, job).and_then(|j| self.start.call1(py, (j,)));
            if let Err(e) = started {
                // The job (and its Resumer) is gone with the error: the
                // connection stays detached until the worker stops.
                crate::log_error!(
                    "starting a greenlet for a request: {}",
                    crate::python::format_err(py, &e)
                );
            }
        });
        Dispatch::Detached
    }
}

thread_local! {
    /// The hub thread's cache of environ keys (shared by its greenlets,
    /// borrowed only while an environ is built).
    static KEYS: RefCell<ThreadCache> = RefCell::new(ThreadCache::default());
}

/// One request, as the greenlet that serves it calls it.
#[pyclass(module = "ferrocorn")]
struct GreenJob {
    job: Mutex<Option<Detached>>,
    server: Arc<WsgiServer>,
}

#[pymethods]
impl GreenJob {
    fn __call__(&self, py: Python<'_>) {
        let job = self.job.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(job) = job {
            let (back, served) = KEYS.with(|keys| job.serve(py, &self.server, keys));
            back.resume(served);
        }
    }
}

/// Runs the loop in the hub on this (the main) thread until the worker is
/// done; returns its exit code.
pub fn run(py: Python<'_>, lib: Lib, lp: Loop<GreenHandler>) -> i32 {
    let fail = |e: PyErr| {
        crate::python::system_exit_code(py, &e).unwrap_or_else(|| {
            crate::log_error!(
                "Exception in the {} hub: {}",
                lib.name(),
                crate::python::format_err(py, &e)
            );
            1
        })
    };
    let m = match module(py) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let waits = m
        .getattr("waits")
        .and_then(|w| w.call1((lib.name(),)))
        .and_then(|w| w.extract::<(Py<PyAny>, Py<PyAny>)>());
    match waits {
        Ok(w) => {
            let _ = WAITS.set(w);
        }
        Err(e) => return fail(e),
    }
    let fd = lp.wait_fd();
    let lp = Mutex::new(lp);
    let turn = pyo3::types::PyCFunction::new_closure(py, None, None, move |args, _kwargs| {
        // The hub calls one turn at a time: nothing in a turn runs the hub.
        let Ok(mut lp) = lp.try_lock() else {
            crate::log_error!("the connection loop was entered twice");
            return Ok::<_, PyErr>(args.py().None());
        };
        Ok(match lp.turn(Duration::ZERO) {
            Some(code) => code.into_pyobject(args.py())?.into_any().unbind(),
            None => args.py().None(),
        })
    });
    let code = turn.and_then(|turn| {
        m.getattr("run")?
            .call1((lib.name(), turn, fd))?
            .extract::<i32>()
    });
    code.unwrap_or_else(fail)
}
