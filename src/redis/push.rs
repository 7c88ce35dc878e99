//! The push: the exporter process writes its instance's merged state to
//! Redis in one pipelined round trip per interval and once more when it
//! stops. It runs as its own task beside the HTTP server, so a slow or
//! absent Redis never delays a scrape, and nothing on the request path
//! knows Redis exists.
//!
//! Per push (TTL on): `SET state doc EX ttl`, `SADD index state`,
//! `EXPIRE index ttl`. With REDIS_TTL_DISABLED the two expiries are left
//! out and a clean shutdown deletes the state key and its index entry.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::codec::{Encode, Snapshot};
use super::link::{Link, Log};
use super::settings::RedisSettings;
use super::{index_key, state_key};
use crate::metrics::model::{Family, Kind, Sample, SampleValue};

/// Why the exporter stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The server shuts down: last push after the workers are gone (or,
    /// with the TTL disabled, the keys are removed).
    Shutdown,
    /// The exporter restarts (HUP): push once more, keep the keys.
    Restart,
}

/// What a [`Ticker`] says next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Time for the periodic work (a push, a flush).
    Tick,
    /// Stop ticking, for this reason.
    Stop(Stop),
}

/// The loop of the exporter's periodic tasks (the Redis push, the statsd
/// flush): a tick every interval, the first at once (a late tick is
/// delayed, not bunched up with the next), until the server says why it
/// stops (then [`Stop::wait_drained`] before the last push or flush).
pub struct Ticker {
    tick: tokio::time::Interval,
    stop: watch::Receiver<Option<Stop>>,
}

impl Ticker {
    pub fn new(every: Duration, stop: watch::Receiver<Option<Stop>>) -> Ticker {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticker { tick, stop }
    }

    /// The next tick, or why to stop (a server gone without saying why
    /// counts as a restart).
    pub async fn next(&mut self) -> Beat {
        loop {
            if let Some(why) = *self.stop.borrow() {
                return Beat::Stop(why);
            }
            tokio::select! {
                _ = self.tick.tick() => return Beat::Tick,
                changed = self.stop.changed() => {
                    if changed.is_err() {
                        return Beat::Stop(Stop::Restart);
                    }
                }
            }
        }
    }
}

impl Stop {
    /// At a shutdown, waits until `drained()` (the workers are gone) or
    /// `limit` has passed, so that a last push or flush has the workers'
    /// final counts; at a restart, returns at once.
    pub async fn wait_drained(self, drained: impl Fn() -> bool, limit: Duration) {
        if self != Stop::Shutdown {
            return;
        }
        let until = Instant::now() + limit;
        while !drained() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What the local /metrics shows about the pushes.
#[derive(Debug, Default, Clone)]
pub struct PushStats {
    pub ok: u64,
    pub failed: u64,
    pub last_seconds: f64,
    /// Of `last_seconds`, collecting and encoding (the rest is the round trip).
    pub last_collect_seconds: f64,
    pub last_bytes: usize,
    pub up: bool,
}

impl PushStats {
    /// The `ferrocorn_redis_*` families of the local /metrics.
    pub fn families(&self) -> Vec<Family> {
        let scalar = |labels: Vec<(String, String)>, v: f64| Sample {
            labels,
            value: SampleValue::Scalar(v),
        };
        vec![
            Family {
                name: "ferrocorn_redis_pushes".into(),
                help: "Pushes of this instance's metrics to Redis, by result".into(),
                kind: Kind::Counter,
                samples: vec![
                    scalar(vec![("result".into(), "ok".into())], self.ok as f64),
                    scalar(vec![("result".into(), "error".into())], self.failed as f64),
                ],
            },
            Family {
                name: "ferrocorn_redis_push_duration_seconds".into(),
                help: "Duration of the last push to Redis (collect, encode, one round trip)".into(),
                kind: Kind::Gauge,
                samples: vec![scalar(vec![], self.last_seconds)],
            },
            Family {
                name: "ferrocorn_redis_push_collect_seconds".into(),
                help: "Of the last push's duration, collecting and encoding the metrics (the rest is the round trip to Redis)".into(),
                kind: Kind::Gauge,
                samples: vec![scalar(vec![], self.last_collect_seconds)],
            },
            Family {
                name: "ferrocorn_redis_push_bytes".into(),
                help: "Size of the last pushed document".into(),
                kind: Kind::Gauge,
                samples: vec![scalar(vec![], self.last_bytes as f64)],
            },
            Family {
                name: "ferrocorn_redis_up".into(),
                help: "1 if the last push to Redis succeeded".into(),
                kind: Kind::Gauge,
                samples: vec![scalar(vec![], if self.up { 1.0 } else { 0.0 })],
            },
        ]
    }
}

/// Produces the families to push (a collector of its own, so that the
/// pushes do not shorten the CPU window of the local scrapes).
pub type Collect = Box<dyn FnMut() -> Vec<Family> + Send>;

pub struct Pusher {
    link: Link,
    settings: RedisSettings,
    host: String,
    instance: String,
    key: String,
    index: String,
    collect: Collect,
    encode: Encode,
    stats: Arc<Mutex<PushStats>>,
    /// The document's buffer, kept across pushes (no fresh pages to fault
    /// in for a quarter-megabyte document every interval).
    buf: Vec<u8>,
}

/// How long a round trip may take: long enough for a large push on a busy
/// network, short enough that a hung Redis is noticed within an interval
/// or two.
fn round_trip_timeout(interval: Duration) -> Duration {
    interval.clamp(Duration::from_secs(1), Duration::from_secs(5))
}

impl Pusher {
    pub fn new(
        settings: RedisSettings,
        host: String,
        instance: String,
        collect: Collect,
        encode: Encode,
        log: Log,
    ) -> Result<Pusher, String> {
        let link = Link::new(
            &settings.target,
            round_trip_timeout(settings.push_interval),
            "push",
            log,
        )?;
        Ok(Pusher {
            link,
            key: state_key(&settings.prefix, &host, &instance),
            index: index_key(&settings.prefix),
            settings,
            host,
            instance,
            collect,
            encode,
            stats: Arc::default(),
            buf: Vec::new(),
        })
    }

    pub fn stats(&self) -> Arc<Mutex<PushStats>> {
        self.stats.clone()
    }

    /// Pushes every interval (the first at once) until `stop` says why to
    /// stop, then does the last push or the clean-up. `drained` tells
    /// whether the server's workers are all gone (the last push waits for
    /// it, up to `drain_limit`, so that it has their final counts).
    pub async fn run(
        mut self,
        stop: watch::Receiver<Option<Stop>>,
        drained: impl Fn() -> bool,
        drain_limit: Duration,
    ) {
        crate::log_info!(
            "redis push: {} every {:.1}s as {} (key {})",
            self.settings.target.display(),
            self.settings.push_interval.as_secs_f64(),
            self.instance,
            self.key
        );
        let mut ticker = Ticker::new(self.settings.push_interval, stop);
        let why = loop {
            match ticker.next().await {
                Beat::Tick => self.push().await,
                Beat::Stop(why) => break why,
            }
        };
        why.wait_drained(drained, drain_limit).await;
        match (why, self.settings.ttl_seconds) {
            (Stop::Shutdown, None) => self.remove().await,
            _ => self.push().await,
        }
    }

    /// One push: collect, encode, one pipelined round trip.
    pub async fn push(&mut self) {
        let t0 = Instant::now();
        let snap = Snapshot {
            host: self.host.clone(),
            instance: self.instance.clone(),
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            families: (self.collect)(),
        };
        (self.encode)(&snap, &mut self.buf);
        let doc = &self.buf[..];
        let encoded = t0.elapsed();
        let bytes = doc.len();
        let mut pipe = ::redis::pipe();
        match self.settings.ttl_seconds {
            Some(ttl) => {
                pipe.cmd("SET")
                    .arg(&self.key)
                    .arg(doc)
                    .arg("EX")
                    .arg(ttl)
                    .ignore();
                pipe.cmd("SADD").arg(&self.index).arg(&self.key).ignore();
                pipe.cmd("EXPIRE").arg(&self.index).arg(ttl).ignore();
            }
            None => {
                pipe.cmd("SET").arg(&self.key).arg(doc).ignore();
                pipe.cmd("SADD").arg(&self.index).arg(&self.key).ignore();
            }
        }
        let ok = self.link.query::<()>(&pipe).await.is_some();
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            s.ok += 1;
            s.last_seconds = t0.elapsed().as_secs_f64();
            s.last_collect_seconds = encoded.as_secs_f64();
            s.last_bytes = bytes;
        } else {
            s.failed += 1;
        }
        s.up = ok;
    }

    /// A clean shutdown with the TTL disabled: the keys go with the instance.
    async fn remove(&mut self) {
        let mut pipe = ::redis::pipe();
        pipe.cmd("DEL").arg(&self.key).ignore();
        pipe.cmd("SREM").arg(&self.index).arg(&self.key).ignore();
        if self.link.query::<()>(&pipe).await.is_some() {
            crate::log_info!("redis push: removed {} at shutdown", self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
            .block_on(f)
    }

    #[test]
    fn ticker_ticks_until_told_why_to_stop() {
        block_on(async {
            let (tx, rx) = watch::channel(None);
            let mut t = Ticker::new(Duration::from_secs(3600), rx);
            let t0 = Instant::now();
            // The first tick at once; a stop without waiting for the next.
            assert_eq!(t.next().await, Beat::Tick);
            tx.send(Some(Stop::Shutdown)).expect("send");
            assert_eq!(t.next().await, Beat::Stop(Stop::Shutdown));
            assert_eq!(t.next().await, Beat::Stop(Stop::Shutdown));
            assert!(t0.elapsed() < Duration::from_secs(60));

            // Ticks keep coming at the interval.
            let (tx, rx) = watch::channel(None);
            let mut t = Ticker::new(Duration::from_millis(20), rx);
            let t0 = Instant::now();
            for _ in 0..4 {
                assert_eq!(t.next().await, Beat::Tick);
            }
            assert!(t0.elapsed() >= Duration::from_millis(60));
            // The server gone without saying why: a restart.
            drop(tx);
            assert_eq!(t.next().await, Beat::Stop(Stop::Restart));
        });
    }

    #[test]
    fn a_shutdown_waits_for_the_drain_a_restart_does_not() {
        block_on(async {
            let t0 = Instant::now();
            Stop::Restart
                .wait_drained(|| false, Duration::from_secs(30))
                .await;
            assert!(t0.elapsed() < Duration::from_secs(20));
            Stop::Shutdown
                .wait_drained(|| false, Duration::from_millis(100))
                .await;
            assert!(t0.elapsed() >= Duration::from_millis(100));
            let calls = std::cell::Cell::new(0);
            let t1 = Instant::now();
            Stop::Shutdown
                .wait_drained(
                    || {
                        calls.set(calls.get() + 1);
                        calls.get() >= 3
                    },
                    Duration::from_secs(30),
                )
                .await;
            assert_eq!(calls.get(), 3);
            assert!(t1.elapsed() < Duration::from_secs(20));
        });
    }
}
