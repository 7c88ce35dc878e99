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
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use super::serve::{ConnValues, Detached, WsgiServer};
use crate::conn::connection::Peer;
use crate::conn::{Dispatch, Handler, Request, Served};
use crate::wsgi::ThreadCache;

/// The longest the loop thread is held while requests wait for a thread.
const HOLD_MAX: Duration = Duration::from_millis(5);

/// The requests waiting for a thread. Only one thread runs Python at a
/// time, so the pool hands work to as few threads as keep the interpreter
/// busy:
/// - a thread that finished a request looks here before it sleeps, and
///   keeps the GIL while it finds work ("searching");
/// - a queued request wakes at most one sleeping thread, the standby, and
///   only when no thread is searching; the standby takes a request only once
///   it holds the GIL, i.e. once the thread running the app released it
///   (the app waits on I/O or a lock, or its request is over, or CPython's
///   switch interval made it yield). So an app that waits gets a second
///   thread at once, and a busy one keeps one thread serving the queue
///   without a thread or GIL hand-off per request.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    cond: Condvar,
    /// Threads between a finished request and their next look at `state`.
    searching: AtomicUsize,
    /// Wakes the loop thread held in [`Handler::hold`].
    drained: Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Detached>,
    sleeping: usize,
    /// A sleeping thread was woken and has not looked yet.
    standby: bool,
    /// The loop thread waits in [`Handler::hold`] for the queue to empty.
    loop_held: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, job: Detached) {
        let mut st = self.lock();
        st.jobs.push_back(job);
        self.wake_standby(&mut st);
    }

    /// Wakes a sleeping thread to wait for the GIL and then look for work,
    /// unless a thread is already about to look. The woken thread counts as
    /// searching from here on.
    fn wake_standby(&self, st: &mut QueueState) {
        if !st.standby && st.sleeping > 0 && self.searching.load(Ordering::SeqCst) == 0 {
            st.standby = true;
            self.searching.fetch_add(1, Ordering::SeqCst);
            self.cond.notify_one();
        }
    }

    /// Lets a held loop thread go on.
    fn release_loop(&self, st: &mut QueueState) {
        if st.loop_held {
            st.loop_held = false;
            self.drained.notify_one();
        }
    }

    /// The loop thread, before it waits for events: while requests wait
    /// for a thread, at most [`HOLD_MAX`] (signals and deadlines wait that
    /// long at most), until the queue empties or a finished request needs
    /// the loop.
    fn hold(&self) {
        let mut st = self.lock();
        if st.jobs.is_empty() {
            return;
        }
        st.loop_held = true;
        let deadline = Instant::now() + HOLD_MAX;
        while st.loop_held {
            let now = Instant::now();
            if now >= deadline {
                st.loop_held = false;
                break;
            }
            st = self
                .drained
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// The next job for a thread that holds the GIL and is searching
    /// (it has just finished a request, or woke as the standby).
    fn next(&self, py: Python<'_>) -> Detached {
        loop {
            {
                let mut st = self.lock();
                let job = st.jobs.pop_front();
                self.searching.fetch_sub(1, Ordering::SeqCst);
                if let Some(job) = job {
                    if st.jobs.is_empty() {
                        self.release_loop(&mut st);
                    } else {
                        // More waiting: a thread should be ready to take
                        // them when this request lets go of the GIL.
                        self.wake_standby(&mut st);
                    }
                    return job;
                }
            }
            // Nothing queued: sleep without the GIL until woken as the
            // standby, then take the GIL back and look.
            py.detach(|| {
                let mut st = self.lock();
                if !st.jobs.is_empty() {
                    // Queued after this thread looked, while no thread was
                    // sleeping or searching: no one was woken for it.
                    self.searching.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                st.sleeping += 1;
                // (A wake-up without the standby flag is spurious, or the
                // flag went to another thread: sleep on.)
                loop {
                    st = self.cond.wait(st).unwrap_or_else(|e| e.into_inner());
                    if st.standby {
                        st.standby = false;
                        break;
                    }
                }
                st.sleeping -= 1;
            });
        }
    }
}

pub struct ThreadHandler {
    /// The threads live as long as the worker process.
    jobs: Arc<Queue>,
    server: Arc<WsgiServer>,
    size: usize,
    /// Requests handed to threads and not finished.
    busy: Arc<AtomicUsize>,
    /// A signal Python handles (ABRT, QUIT, INT) arrived: the loop thread
    /// runs the interpreter's handlers (they run on the main thread only).
    py_signal: Arc<AtomicBool>,
    next_check: Instant,
    /// Per thread: when its request began (monotonic ms, 0 when idle),
    /// and whether that request was reported as stuck.
    started: Arc<[Started]>,
    /// --timeout in ms (0: none).
    timeout_ms: u64,
}

/// A thread's request start, for [`ThreadHandler::report_stuck`].
#[derive(Default)]
struct Started {
    at_ms: AtomicU64,
    reported: AtomicBool,
}

impl ThreadHandler {
    /// Starts `size` threads serving with `server`.
    pub fn start(server: WsgiServer, size: usize, timeout: u64) -> Result<ThreadHandler, String> {
        let size = size.max(1);
        let server = Arc::new(server);
        let jobs = Arc::new(Queue::default());
        let busy = Arc::new(AtomicUsize::new(0));
        let started: Arc<[Started]> = (0..size).map(|_| Started::default()).collect();
        for i in 0..size {
            let (server, jobs, busy) = (Arc::clone(&server), Arc::clone(&jobs), Arc::clone(&busy));
            let started = Arc::clone(&started);
            // Each thread starts by looking for work, as after a request.
            jobs.searching.fetch_add(1, Ordering::SeqCst);
            std::thread::Builder::new()
                .name(format!("gthread-{i}"))
                .spawn(move || run_thread(&server, &jobs, &busy, &started[i]))
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
            super::dump_signal(),
        ] {
            signal_hook::flag::register(sig, Arc::clone(&py_signal))
                .map_err(|e| format!("watching signal {sig}: {e}"))?;
        }
        Ok(ThreadHandler {
            jobs,
            server,
            size,
            busy,
            py_signal,
            next_check: Instant::now(),
            started,
            timeout_ms: timeout.saturating_mul(1000),
        })
    }

    /// gunicorn's gthread worker keeps beating while one of its threads is
    /// stuck, so --timeout never replaces it; ferrocorn keeps that, and
    /// once per request past --timeout logs the worker's Python stacks
    /// (as SIGRTMIN+1 does).
    fn report_stuck(&self) {
        if self.timeout_ms == 0 {
            return;
        }
        let now = crate::shm::monotonic_ms();
        for t in self.started.iter() {
            let at = t.at_ms.load(Ordering::Relaxed);
            if at == 0 || now.saturating_sub(at) <= self.timeout_ms {
                continue;
            }
            if !t.reported.swap(true, Ordering::Relaxed) {
                crate::log_error!(
                    "a request has run for {:.1} s, past --timeout; gthread workers are not replaced for it (as gunicorn's), the Python stacks follow",
                    now.saturating_sub(at) as f64 / 1000.0
                );
                Python::attach(|py| {
                    super::log_stacks(py, "Request past --timeout", None, crate::log::Level::Error)
                });
            }
        }
    }
}

/// One thread of the pool: attached to the interpreter for its whole life;
/// it holds the GIL while it serves and finds work, and releases it while
/// it sleeps (and in its socket waits).
fn run_thread(server: &WsgiServer, jobs: &Queue, busy: &AtomicUsize, started: &Started) {
    Python::attach(|py| {
        let keys = RefCell::new(ThreadCache::default());
        loop {
            let job = jobs.next(py);
            started.reported.store(false, Ordering::Relaxed);
            started
                .at_ms
                .store(crate::shm::monotonic_ms(), Ordering::Relaxed);
            let (back, served) = job.serve(py, server, &keys);
            started.at_ms.store(0, Ordering::Relaxed);
            jobs.searching.fetch_add(1, Ordering::SeqCst);
            busy.fetch_sub(1, Ordering::AcqRel);
            let needs_loop = served.needs_loop();
            back.resume(served);
            if needs_loop {
                jobs.release_loop(&mut jobs.lock());
            }
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
        if now >= self.next_check {
            self.report_stuck();
        }
        self.next_check = now + Duration::from_secs(1);
        Python::attach(super::check_signals)
    }

    fn reopen_logs(&mut self) {
        self.server.reopen_logs();
    }

    fn hold(&mut self) {
        self.jobs.hold();
    }

    fn serve(&mut self, mut req: Request<'_>, values: &mut ConnValues) -> Dispatch {
        let Some(job) = Detached::take(&mut req, values) else {
            return Dispatch::Done(Served::closed(None));
        };
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.jobs.push(job);
        Dispatch::Detached
    }
}
