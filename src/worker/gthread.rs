//! The gthread worker kind: the connection layer's loop runs on the main
//! thread without the GIL (accepting, reading, parsing, keep-alive parking),
//! and N threads, each attached to the interpreter once, run only the app.
//! A complete request is detached from the loop with an owned copy of its
//! head and handed to a free thread; the thread gives the connection back
//! through the loop's [`crate::conn::Resumer`] when the response is written.
//!
//! Backpressure: the kind reports its free threads as its capacity, and
//! the loop accepts a new connection only while a thread would be free for
//! it, so a request never waits behind a busy thread while another worker
//! is idle (gunicorn #908, #3433).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use super::serve::{ConnValues, Detached, WsgiServer};
use crate::conn::connection::Peer;
use crate::conn::{Dispatch, Handler, Request, Served};
use crate::wsgi::HeaderKeys;

pub struct ThreadHandler {
    /// Dropped with the handler: the threads then end after their request.
    jobs: Sender<Detached>,
    server: Arc<WsgiServer>,
    size: usize,
    /// Requests handed to threads and not finished.
    busy: Arc<AtomicUsize>,
    /// A signal Python handles (ABRT, QUIT, INT) arrived: the loop thread
    /// runs the interpreter's handlers (they run on the main thread only).
    py_signal: Arc<AtomicBool>,
    next_check: Instant,
}

impl ThreadHandler {
    /// Starts `size` threads serving with `server`.
    pub fn start(server: WsgiServer, size: usize) -> Result<ThreadHandler, String> {
        let size = size.max(1);
        let server = Arc::new(server);
        let (tx, rx) = channel::<Detached>();
        let rx = Arc::new(Mutex::new(rx));
        let busy = Arc::new(AtomicUsize::new(0));
        for i in 0..size {
            let (server, rx, busy) = (Arc::clone(&server), Arc::clone(&rx), Arc::clone(&busy));
            std::thread::Builder::new()
                .name(format!("gthread-{i}"))
                .spawn(move || run_thread(&server, &rx, &busy))
                .map_err(|e| format!("starting thread {i} of {size}: {e}"))?;
        }
        // Python's handlers for these were installed at boot; signal-hook
        // chains to them and raises the flag, so the loop thread knows when
        // to let the interpreter run them.
        let py_signal = Arc::new(AtomicBool::new(false));
        for sig in [
            signal_hook::consts::SIGABRT,
            signal_hook::consts::SIGQUIT,
            signal_hook::consts::SIGINT,
        ] {
            signal_hook::flag::register(sig, Arc::clone(&py_signal))
                .map_err(|e| format!("watching signal {sig}: {e}"))?;
        }
        Ok(ThreadHandler {
            jobs: tx,
            server,
            size,
            busy,
            py_signal,
            next_check: Instant::now(),
        })
    }
}

/// One thread of the pool: attached to the interpreter for its whole life,
/// it releases the GIL while it waits for a request.
fn run_thread(server: &WsgiServer, rx: &Mutex<Receiver<Detached>>, busy: &AtomicUsize) {
    Python::attach(|py| {
        let keys = RefCell::new(HeaderKeys::default());
        loop {
            let job = py.detach(|| rx.lock().unwrap_or_else(|e| e.into_inner()).recv());
            let Ok(job) = job else {
                return; // the worker is exiting
            };
            let (back, served) = job.serve(py, server, &keys);
            busy.fetch_sub(1, Ordering::AcqRel);
            back.resume(served);
        }
    });
}

impl Handler for ThreadHandler {
    type ConnState = ConnValues;

    fn connection(&mut self, _peer: &Peer, _listener: usize) -> ConnValues {
        Arc::new(Mutex::new(None))
    }

    fn capacity(&self) -> usize {
        self.size.saturating_sub(self.busy.load(Ordering::Acquire))
    }

    fn woke(&mut self) -> Result<(), i32> {
        // Python's handlers run when the interpreter is asked to on the
        // main thread: on a signal, and once a second in case the app
        // replaced a handler (then no flag is raised).
        let now = Instant::now();
        if !self.py_signal.swap(false, Ordering::AcqRel) && now < self.next_check {
            return Ok(());
        }
        self.next_check = now + Duration::from_secs(1);
        Python::attach(super::check_signals)
    }

    fn reopen_logs(&mut self) {
        self.server.reopen_logs();
    }

    fn serve(&mut self, mut req: Request<'_>, values: &mut ConnValues) -> Dispatch {
        let Some(job) = Detached::take(&mut req, values) else {
            return Dispatch::Done(Served::closed(None));
        };
        self.busy.fetch_add(1, Ordering::AcqRel);
        if self.jobs.send(job).is_err() {
            // Every thread is gone (cannot happen while the handler lives).
            self.busy.fetch_sub(1, Ordering::AcqRel);
            crate::log_error!("gthread: no thread left to serve a request");
            return Dispatch::Done(Served::closed(Some(1)));
        }
        Dispatch::Detached
    }
}
