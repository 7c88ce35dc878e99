//! A Rust thread that writes the asgi kind's last response bytes, so that
//! the Python thread does not spend the write(2) (on loopback TCP it also
//! runs the receiving side's stack: a third of a hello-world request's CPU
//! in the worker). Only a response's final message, when nothing earlier is
//! still pending and it is at most [`MAX_DEFERRED`] bytes, goes here:
//! larger and streamed responses are written from the Python thread with
//! its backpressure (add_writer), so this queue stays bounded by the
//! number of requests in flight. The connection goes back to the loop
//! (its [`Resumer`]) only after the bytes are written, so a connection the
//! loop closes or reuses never has bytes still queued here, and a failed
//! write closes it. The thread is started in the worker, after the fork.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::conn::transport::Transport;
use crate::conn::{Resumer, Served};

/// The largest final message handed to the writer.
pub const MAX_DEFERRED: usize = 64 * 1024;

/// Requests that ran for less (from their head to their last message) are
/// written on the Python thread: for a hello-world handler the hand-off
/// costs more than the write it saves (docs/architecture.md).
pub const MIN_APP_TIME: Duration = Duration::from_micros(20);

/// One response's last bytes and what to do once they are out. The bytes
/// go through the connection's transport (a TLS session encrypts them).
pub struct Job {
    pub io: Arc<dyn Transport>,
    pub data: Vec<u8>,
    pub timeout: Duration,
    pub back: Resumer,
    pub served: Served,
}

/// A job whose socket would not take all of it yet.
struct Blocked {
    job: Job,
    written: usize,
    deadline: Instant,
}

struct Queue {
    jobs: VecDeque<Job>,
    /// The thread is (about to be) asleep in poll: a push must wake it.
    sleeping: bool,
}

pub struct Writer {
    q: Mutex<Queue>,
    wake: EventFd,
    /// The Python thread is in a turn of the connection loop: a push finds
    /// the thread asleep and leaves the wake to the turn's end ([`held`]),
    /// so a turn that finishes many responses wakes it once, not once per
    /// response (each wake is a write(2) and, in a VM, an inter-processor
    /// interrupt: the cost the thread is there to take off the Python
    /// thread).
    held: AtomicBool,
    /// A push was left asleep while held.
    owed: AtomicBool,
}

/// FERROCORN_ASGI_WRITER=inline turns the thread off (for measurements:
/// docs/architecture.md).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("FERROCORN_ASGI_WRITER").as_deref() != Ok("inline"))
}

static W: OnceLock<Option<&'static Writer>> = OnceLock::new();

/// Runs `turn` (one turn of the connection loop, on the Python thread)
/// with the writer's wakes held until it ends (see [`Writer::held`]).
pub fn held<T>(turn: impl FnOnce() -> T) -> T {
    let Some(Some(w)) = W.get() else {
        return turn();
    };
    w.held.store(true, Ordering::Relaxed);
    let out = turn();
    w.held.store(false, Ordering::Relaxed);
    if w.owed.swap(false, Ordering::Relaxed) {
        w.wake_if_asleep();
    }
    out
}

/// The worker's writer, started on first use; None if it could not be.
pub fn get() -> Option<&'static Writer> {
    *W.get_or_init(|| {
        let wake = match EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK) {
            Ok(fd) => fd,
            Err(e) => {
                crate::log_error!("the response writer's eventfd: {e}");
                return None;
            }
        };
        let w: &'static Writer = Box::leak(Box::new(Writer {
            q: Mutex::new(Queue {
                jobs: VecDeque::new(),
                sleeping: false,
            }),
            wake,
            held: AtomicBool::new(false),
            owed: AtomicBool::new(false),
        }));
        match std::thread::Builder::new()
            .name("ferrocorn-write".into())
            .spawn(move || w.run())
        {
            Ok(_) => Some(w),
            Err(e) => {
                crate::log_error!("starting the response writer thread: {e}");
                None
            }
        }
    })
}

impl Writer {
    /// Queues `job`. Called on the Python thread only (so `held` is that
    /// thread's own flag).
    pub fn push(&self, job: Job) {
        let mut q = self.q.lock().unwrap_or_else(|e| e.into_inner());
        q.jobs.push_back(job);
        if q.sleeping {
            if self.held.load(Ordering::Relaxed) {
                self.owed.store(true, Ordering::Relaxed);
                return;
            }
            q.sleeping = false;
            drop(q);
            self.wake();
        }
    }

    fn wake_if_asleep(&self) {
        let mut q = self.q.lock().unwrap_or_else(|e| e.into_inner());
        if q.sleeping && !q.jobs.is_empty() {
            q.sleeping = false;
            drop(q);
            self.wake();
        }
    }

    fn wake(&self) {
        if let Err(e) = self.wake.write(1) {
            crate::log_error!("waking the response writer: {e}");
        }
    }

    fn run(&self) {
        let mut batch = VecDeque::new();
        let mut blocked: Vec<Blocked> = Vec::new();
        loop {
            {
                let mut q = self.q.lock().unwrap_or_else(|e| e.into_inner());
                if q.jobs.is_empty() {
                    q.sleeping = true;
                    drop(q);
                    self.wait(&mut blocked);
                    continue;
                }
                std::mem::swap(&mut batch, &mut q.jobs);
            }
            for job in batch.drain(..) {
                write(
                    Blocked {
                        deadline: Instant::now() + job.timeout,
                        job,
                        written: 0,
                    },
                    &mut blocked,
                );
            }
        }
    }

    /// Sleeps until a job is pushed or a blocked socket takes bytes (or
    /// its deadline passes), then goes on with the blocked ones.
    fn wait(&self, blocked: &mut Vec<Blocked>) {
        // A connection closed meanwhile (the worker's exit) has no socket.
        let (open, closed): (Vec<_>, Vec<_>) = std::mem::take(blocked)
            .into_iter()
            .partition(|b| b.job.io.fd() >= 0);
        *blocked = open;
        for b in closed {
            fail(
                b.job,
                &io::Error::new(io::ErrorKind::NotConnected, "connection closed"),
            );
        }
        let now = Instant::now();
        let next = blocked.iter().map(|b| b.deadline).min();
        let timeout = match next {
            None => PollTimeout::NONE,
            Some(d) => PollTimeout::try_from(
                d.saturating_duration_since(now).as_millis().min(60_000) as i32 + 1,
            )
            .unwrap_or(PollTimeout::MAX),
        };
        let mut fds = Vec::with_capacity(blocked.len() + 1);
        fds.push(PollFd::new(self.wake.as_fd(), PollFlags::POLLIN));
        for b in blocked.iter() {
            // SAFETY: the socket stays open while its job is here: the
            // connection is detached from the loop until the job resumes it.
            let fd = unsafe { BorrowedFd::borrow_raw(b.job.io.fd()) };
            fds.push(PollFd::new(fd, PollFlags::POLLOUT));
        }
        let ready = nix::poll::poll(&mut fds, timeout).is_ok();
        let revents: Vec<bool> = fds
            .iter()
            .skip(1)
            .map(|f| ready && f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let _ = self.wake.read();
        let now = Instant::now();
        let mut still = Vec::new();
        for (b, ready) in std::mem::take(blocked).into_iter().zip(revents) {
            if ready {
                write(b, &mut still);
            } else if now >= b.deadline {
                fail(b.job, &io::Error::new(io::ErrorKind::TimedOut, "timed out"));
            } else {
                still.push(b);
            }
        }
        *blocked = still;
    }
}

/// Writes what the socket takes now: all of it resumes the connection,
/// less parks the job in `blocked`.
fn write(mut b: Blocked, blocked: &mut Vec<Blocked>) {
    if b.job.io.fd() < 0 {
        let e = io::Error::new(io::ErrorKind::NotConnected, "connection closed");
        return fail(b.job, &e);
    }
    while b.written < b.job.data.len() {
        match b.job.io.write_nb(&b.job.data[b.written..]) {
            Ok(0) => {
                let e = io::Error::new(io::ErrorKind::WriteZero, "connection closed");
                return fail(b.job, &e);
            }
            Ok(n) => b.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                blocked.push(b);
                return;
            }
            Err(e) => return fail(b.job, &e),
        }
    }
    // A TLS session may still hold the last bytes.
    match b.job.io.flush_nb() {
        Ok(()) => b.job.back.resume(b.job.served),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => blocked.push(b),
        Err(e) => fail(b.job, &e),
    }
}

/// The bytes could not all be written: the loop closes the connection.
fn fail(mut job: Job, e: &io::Error) {
    crate::log_debug!("writing a response: {e}");
    job.served.reusable = false;
    job.served.leftover = None;
    job.back.resume(job.served);
}
