//! The gevent and eventlet worker kinds: the connection layer's loop runs on
//! its own OS thread without the GIL; the main thread runs the library's hub
//! (green.py) with one greenlet per request. A complete request is detached
//! from the loop, queued, and the hub is woken through an eventfd it watches;
//! the greenlet hands the connection back with the loop's
//! [`crate::conn::Resumer`]. A request's body and response I/O wait for the
//! socket through the hub ([`Waiter::Yield`]), so ferrocorn's own waiting
//! never blocks it.

use std::cell::RefCell;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};
use pyo3::prelude::*;
use pyo3::types::PyList;

use super::serve::{ConnValues, Detached, WsgiServer};
use crate::conn::connection::Peer;
use crate::conn::io::Waiter;
use crate::conn::{Dispatch, Handler, Request, Served};
use crate::shm::Slot;
use crate::wsgi::HeaderKeys;

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
    let sys_modules = py.import("sys")?.getattr("modules")?;
    if let Ok(m) = sys_modules.get_item("_ferrocorn_green") {
        return Ok(m.cast_into::<PyModule>()?);
    }
    let code = CString::new(GREEN_SOURCE)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    let m = PyModule::from_code(py, &code, c"<ferrocorn green>", c"_ferrocorn_green")?;
    sys_modules.set_item("_ferrocorn_green", &m)?;
    Ok(m)
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

/// Requests handed from the loop thread to the hub.
pub struct Queue {
    jobs: Mutex<Vec<Detached>>,
    wake: EventFd,
    /// The loop has ended: the hub stops once the queue is empty.
    ended: AtomicBool,
}

impl Queue {
    pub fn new() -> Result<Arc<Queue>, String> {
        let wake = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map_err(|e| format!("creating the hub's eventfd: {e}"))?;
        Ok(Arc::new(Queue {
            jobs: Mutex::new(Vec::new()),
            wake,
            ended: AtomicBool::new(false),
        }))
    }

    fn push(&self, job: Detached) {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(job);
        self.ring();
    }

    fn ring(&self) {
        if let Err(e) = self.wake.write(1) {
            crate::log_error!("waking the hub: {e}");
        }
    }

    /// The loop thread is done: the hub returns.
    pub fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.ring();
    }

    /// What the hub runs next; None once the loop has ended and all is taken.
    fn take(&self) -> Option<Vec<Detached>> {
        let _ = self.wake.read();
        let jobs = std::mem::take(&mut *self.jobs.lock().unwrap_or_else(|e| e.into_inner()));
        if jobs.is_empty() && self.ended.load(Ordering::Acquire) {
            return None;
        }
        Some(jobs)
    }
}

/// The loop thread's side of the green kinds.
pub struct GreenHandler {
    queue: Arc<Queue>,
    server: Arc<WsgiServer>,
}

impl GreenHandler {
    pub fn new(queue: Arc<Queue>, server: Arc<WsgiServer>) -> GreenHandler {
        GreenHandler { queue, server }
    }
}

impl Handler for GreenHandler {
    type ConnState = ConnValues;

    fn connection(&mut self, _peer: &Peer, _listener: usize) -> ConnValues {
        Arc::new(Mutex::new(None))
    }

    fn woke(&mut self) -> Result<(), i32> {
        // The hub runs on the main thread and runs Python's signal
        // handlers itself.
        Ok(())
    }

    fn reopen_logs(&mut self) {
        self.server.reopen_logs();
    }

    fn serve(&mut self, mut req: Request<'_>, values: &mut ConnValues) -> Dispatch {
        let Some(job) = Detached::take(&mut req, values) else {
            return Dispatch::Done(Served::closed(None));
        };
        self.queue.push(job);
        Dispatch::Detached
    }
}

thread_local! {
    /// The hub thread's cache of environ keys (shared by its greenlets,
    /// borrowed only while an environ is built).
    static KEYS: RefCell<HeaderKeys> = RefCell::new(HeaderKeys::default());
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

/// Runs the hub on this (the main) thread until the loop ends. Err(code)
/// when the worker must exit with it (SystemExit in the hub).
pub fn run(
    py: Python<'_>,
    lib: Lib,
    queue: &Arc<Queue>,
    server: &Arc<WsgiServer>,
    slot: &'static Slot,
) -> Result<(), i32> {
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
    let m = module(py).map_err(fail)?;
    let waits: (Py<PyAny>, Py<PyAny>) = m
        .getattr("waits")
        .and_then(|w| w.call1((lib.name(),)))
        .and_then(|w| w.extract())
        .map_err(fail)?;
    let _ = WAITS.set(waits);
    let (q, srv) = (Arc::clone(queue), Arc::clone(server));
    let take = pyo3::types::PyCFunction::new_closure(py, None, None, move |args, _kwargs| {
        let py = args.py();
        match q.take() {
            None => Ok::<_, PyErr>(py.None()),
            Some(jobs) => {
                let jobs = jobs.into_iter().map(|job| GreenJob {
                    job: Mutex::new(Some(job)),
                    server: Arc::clone(&srv),
                });
                let list = PyList::empty(py);
                for j in jobs {
                    list.append(Bound::new(py, j)?)?;
                }
                Ok(list.into_any().unbind())
            }
        }
    })
    .map_err(fail)?;
    let beat = pyo3::types::PyCFunction::new_closure(py, None, None, move |_args, _kwargs| {
        slot.beat();
    })
    .map_err(fail)?;
    let fd = queue.wake.as_fd().as_raw_fd();
    m.getattr("run")
        .and_then(|r| r.call1((lib.name(), take, fd, beat)))
        .map(|_| ())
        .map_err(fail)
}
