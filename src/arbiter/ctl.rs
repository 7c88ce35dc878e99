//! The control socket's commands (src/ctl), run by the master on its own
//! thread, between two turns of its loop: the replies of gunicorn's
//! `CommandHandlers`, read from the arbiter's state; reload, reopen and
//! shutdown send the master its own signal (as gunicorn does), worker
//! add/remove change the worker count as TTIN/TTOU do.

use std::os::fd::AsRawFd;
use std::time::SystemTime;

use mio::Events;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pyo3::prelude::*;
use serde_json::{json, Map, Value as Json};

use super::{shown_url, Arbiter, Halt, SHM_SLOTS};
use crate::config::Value;
use crate::ctl::{self, Command, CommandError};
use crate::sock::ListenKind;

/// The settings `show config` lists (gunicorn's `config_keys`).
const CONFIG_KEYS: &[&str] = &[
    "bind",
    "workers",
    "worker_class",
    "threads",
    "timeout",
    "graceful_timeout",
    "keepalive",
    "max_requests",
    "max_requests_jitter",
    "worker_connections",
    "preload_app",
    "daemon",
    "pidfile",
    "proc_name",
    "reload",
    "dirty_workers",
    "dirty_apps",
    "dirty_timeout",
    "control_socket",
    "control_socket_disable",
];

impl Arbiter {
    /// Starts the control socket (gunicorn: once the first workers are
    /// spawned). A failure is a warning: the server runs without it.
    pub(super) fn start_ctl(&mut self) {
        let Some((path, mode)) = self.cfg.control_socket() else {
            crate::log_debug!("Control socket disabled");
            return;
        };
        match ctl::Server::start(&path, mode, self.poll.registry()) {
            Ok(s) => self.ctl = Some(s),
            Err(e) => crate::log_warning!("Failed to start control socket: {e}"),
        }
    }

    /// Stops it and removes its file (first thing at halt, as gunicorn).
    pub(super) fn stop_ctl(&mut self) {
        if let Some(s) = self.ctl.take() {
            s.stop();
        }
    }

    /// Serves the control socket's events of one turn of the loop and
    /// closes clients idle too long. A Halt when a hook run by a command
    /// (nworkers_changed) stops the master.
    pub(super) fn serve_ctl(&mut self, events: &Events) -> Option<Halt> {
        let mut server = self.ctl.take()?;
        let mut halt = None;
        let started = server.started;
        for ev in events.iter().filter(|e| ctl::Server::owns(e.token())) {
            server.handle(ev.token(), &mut |cmd| {
                self.ctl_command(cmd, started, &mut halt)
            });
        }
        server.sweep(std::time::Instant::now());
        self.ctl = Some(server);
        halt
    }

    fn ctl_command(
        &mut self,
        cmd: Command,
        started: SystemTime,
        halt: &mut Option<Halt>,
    ) -> Result<Json, CommandError> {
        match cmd {
            Command::ShowAll => Ok(json!({
                "arbiter": {"pid": self.pid, "type": "arbiter", "role": "master"},
                "web_workers": self.ctl_workers(Some("web")),
                "web_worker_count": self.workers.len(),
                "dirty_arbiter": null,
                "dirty_workers": [],
                "dirty_worker_count": 0,
            })),
            Command::ShowWorkers => {
                let workers = self.ctl_workers(None);
                Ok(json!({"count": workers.len(), "workers": workers}))
            }
            Command::ShowConfig => Ok(self.ctl_config()),
            Command::ShowStats => Ok(self.ctl_stats(started)),
            Command::ShowListeners => {
                let listeners: Vec<Json> = self
                    .listeners
                    .iter()
                    .map(|l| {
                        let kind = match &l.kind {
                            ListenKind::Unix(_) => "unix",
                            ListenKind::Tcp(a) if a.is_ipv6() => "tcp6",
                            ListenKind::Tcp(_) => "tcp",
                        };
                        json!({"address": shown_url(l), "fd": l.fd.as_raw_fd(), "type": kind})
                    })
                    .collect();
                Ok(json!({"count": listeners.len(), "listeners": listeners}))
            }
            Command::WorkerAdd(n) => {
                let old = self.num_workers;
                let total = u64::try_from(old)
                    .ok()
                    .and_then(|o| o.checked_add(n))
                    .and_then(|t| usize::try_from(t).ok())
                    .filter(|t| *t <= SHM_SLOTS)
                    .ok_or_else(|| {
                        CommandError::Invalid(format!(
                            "{old} + {n} workers: ferrocorn runs {SHM_SLOTS} workers at most"
                        ))
                    })?;
                self.ctl_set_workers(total, halt);
                Ok(json!({"added": n, "previous": old, "total": self.num_workers}))
            }
            Command::WorkerRemove(n) => {
                let old = self.num_workers;
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                let total = old.saturating_sub(n).max(1);
                self.ctl_set_workers(total, halt);
                Ok(json!({"removed": old - total, "previous": old, "total": self.num_workers}))
            }
            Command::WorkerKill(pid) => {
                let known = i32::try_from(pid)
                    .ok()
                    .map(Pid::from_raw)
                    .filter(|p| self.workers.contains_key(p));
                let Some(pid) = known else {
                    return Ok(
                        json!({"success": false, "error": format!("Worker {pid} not found")}),
                    );
                };
                Ok(match kill(pid, Signal::SIGTERM) {
                    Ok(()) => json!({"success": true, "killed": pid.as_raw()}),
                    Err(e) => json!({"success": false, "error": e.desc()}),
                })
            }
            Command::ShowDirty | Command::DirtyAdd | Command::DirtyRemove => {
                Err(CommandError::Plain(ctl::DIRTY_NOT_IMPLEMENTED.to_owned()))
            }
            Command::Reload => {
                self.signal_self(Signal::SIGHUP)?;
                Ok(json!({"status": "reloading"}))
            }
            Command::Reopen => {
                self.signal_self(Signal::SIGUSR1)?;
                Ok(json!({"status": "reopening"}))
            }
            Command::Shutdown(mode) => {
                let sig = if mode == "quick" {
                    Signal::SIGINT
                } else {
                    Signal::SIGTERM
                };
                self.signal_self(sig)?;
                Ok(json!({"status": "shutting_down", "mode": mode}))
            }
            Command::Help => Ok(ctl::help()),
        }
    }

    /// The signal the command stands for, handled by the master's loop
    /// right after this turn's replies are written.
    fn signal_self(&self, sig: Signal) -> Result<(), CommandError> {
        kill(Pid::from_raw(self.pid as i32), sig)
            .map_err(|e| CommandError::Failed(format!("sending {sig} to the master: {e}")))
    }

    /// TTIN/TTOU with a count: the loop spawns or retires the difference.
    fn ctl_set_workers(&mut self, n: usize, halt: &mut Option<Halt>) {
        if let Err(h) = self.change_workers(n) {
            halt.get_or_insert(h);
        }
    }

    /// gunicorn's worker entries, oldest first (`type: web` for show all);
    /// `requests` is ferrocorn's addition.
    fn ctl_workers(&self, kind: Option<&str>) -> Vec<Json> {
        let mut ws: Vec<(u64, Json)> = self
            .workers
            .iter()
            .map(|(pid, w)| {
                let view = self.worker_view(*pid, w);
                let beat = self.shm.slot(w.slot).map(|s| {
                    // A worker that has not beaten yet: since its spawn
                    // (gunicorn's heartbeat file is made at the fork).
                    let born = crate::shm::monotonic_ms().saturating_sub(s.born_ms());
                    (s.silent_for_ms().min(born) as f64 / 10.0).round() / 100.0
                });
                let mut e = Map::new();
                e.insert("pid".into(), json!(pid.as_raw()));
                if let Some(k) = kind {
                    e.insert("type".into(), json!(k));
                }
                e.insert("age".into(), json!(w.age));
                e.insert("booted".into(), json!(view.booted));
                if kind.is_none() {
                    e.insert("aborted".into(), json!(w.aborted));
                }
                e.insert("last_heartbeat".into(), json!(beat));
                e.insert("requests".into(), json!(view.nr));
                (w.age, Json::Object(e))
            })
            .collect();
        ws.sort_by_key(|(age, _)| *age);
        ws.into_iter().map(|(_, e)| e).collect()
    }

    fn ctl_config(&self) -> Json {
        let mut out = Map::new();
        for key in CONFIG_KEYS {
            let v = if *key == "worker_class" {
                json!(self.cfg.worker_class())
            } else {
                value_json(self.cfg.get(key))
            };
            out.insert((*key).to_owned(), v);
        }
        Json::Object(out)
    }

    /// gunicorn's stats. uptime counts from the control socket's start
    /// (right after the first workers', as gunicorn's is close to it),
    /// workers_spawned counts forks (each gets the next age),
    /// workers_killed the workers reaped since the start, reloads the HUPs
    /// handled.
    fn ctl_stats(&self, started: SystemTime) -> Json {
        let uptime = SystemTime::now()
            .duration_since(started)
            .map(|d| (d.as_secs_f64() * 100.0).round() / 100.0)
            .ok();
        let master = self.shm.master();
        let reaped: u64 = self.restarts.values().sum();
        let reloads = master.map_or(0, |m| {
            m.signals()
                .iter()
                .filter(|(s, _)| *s == Signal::SIGHUP as i32)
                .map(|(_, n)| n)
                .sum()
        });
        json!({
            "uptime": uptime,
            "pid": self.pid,
            "workers_current": self.workers.len(),
            "workers_target": self.num_workers,
            "workers_spawned": self.age,
            "workers_killed": reaped,
            "reloads": reloads,
            "dirty_arbiter_pid": null,
        })
    }
}

/// A setting's value as JSON (gunicorn: `str()` of what JSON cannot hold).
fn value_json(v: &Value) -> Json {
    match v {
        Value::None => Json::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::Float(f) => json!(f),
        Value::Str(s) => json!(s),
        Value::List(l) => json!(l),
        Value::Dict(d) => Json::Object(d.iter().map(|(k, v)| (k.clone(), json!(v))).collect()),
        Value::Callable(o) | Value::Object(o) => Python::attach(|py| {
            o.bind(py)
                .str()
                .map(|s| json!(s.to_string_lossy()))
                .unwrap_or(Json::Null)
        }),
    }
}
