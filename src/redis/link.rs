//! One connection to Redis as the push and the read side use it: connect
//! on demand, every round trip bounded by a timeout, a failed round trip
//! drops the connection (the next one reconnects), and an outage is logged
//! once when it starts and once when it ends, never per attempt.

use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::cluster::{ClusterClient, ClusterClientBuilder};
use ::redis::cluster_async::ClusterConnection;
use ::redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use ::redis::{AsyncConnectionConfig, Client, FromRedisValue, Pipeline};

use super::settings::Target;

/// A standalone server or a cluster: the `redis` crate has a client type
/// for each.
enum Clients {
    Single(Client),
    Cluster(ClusterClient),
    /// Asks the sentinels for the master at every (re)connect, so a
    /// failover is followed at the next push after the old master fails.
    Sentinel(SentinelClient),
}

enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// Receives complete log lines (no trailing newline).
pub type Log = fn(&str);

pub struct Link {
    target: Target,
    client: Clients,
    conn: Option<Conn>,
    timeout: Duration,
    /// What this link is for, in log lines ("push", "read").
    role: &'static str,
    log: Log,
    outage: Option<Outage>,
}

struct Outage {
    since: Instant,
    failures: u64,
}

impl Link {
    /// A link that connects at its first round trip. `timeout` bounds the
    /// connect and each round trip separately.
    pub fn new(
        target: &Target,
        timeout: Duration,
        role: &'static str,
        log: Log,
    ) -> Result<Link, String> {
        let mut infos = target.connection_infos()?;
        let bad = |e: ::redis::RedisError| format!("{}: {e}", target.display());
        let client = match target {
            Target::Sentinel {
                service,
                db,
                password,
                ..
            } => {
                let mut master = ::redis::RedisConnectionInfo::default().set_db(*db);
                if let Some(p) = password {
                    master = master.set_password(p);
                }
                Clients::Sentinel(
                    SentinelClient::build(
                        infos,
                        service.as_str(),
                        Some(
                            SentinelNodeConnectionInfo::default().set_redis_connection_info(master),
                        ),
                        SentinelServerType::Master,
                    )
                    .map_err(bad)?,
                )
            }
            Target::Cluster { .. } => Clients::Cluster(
                ClusterClientBuilder::new(infos)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    // One quick retry (MOVED after a failover is handled
                    // anyway); the next push is the real retry.
                    .retries(1)
                    .build()
                    .map_err(bad)?,
            ),
            _ => {
                let info = infos
                    .pop()
                    .ok_or_else(|| format!("{}: no address", target.display()))?;
                Clients::Single(Client::open(info).map_err(bad)?)
            }
        };
        Ok(Link {
            target: target.clone(),
            client,
            conn: None,
            timeout,
            role,
            log,
            outage: None,
        })
    }

    /// Runs `pipe` in one round trip. `None` when Redis could not be
    /// reached or answered with an error (logged as described above).
    pub async fn query<T: FromRedisValue>(&mut self, pipe: &Pipeline) -> Option<T> {
        match self.try_query(pipe).await {
            Ok(v) => {
                if let Some(o) = self.outage.take() {
                    (self.log)(&format!(
                        "redis {}: {} is reachable again after {:.1}s ({} failed attempts)",
                        self.role,
                        self.target.display(),
                        o.since.elapsed().as_secs_f64(),
                        o.failures
                    ));
                }
                Some(v)
            }
            Err(e) => {
                self.conn = None;
                match &mut self.outage {
                    Some(o) => o.failures += 1,
                    None => {
                        (self.log)(&format!(
                            "redis {}: {} failed: {e}; retrying (logged again only when it \
                             works again; requests and the local /metrics are not affected)",
                            self.role,
                            self.target.display()
                        ));
                        self.outage = Some(Outage {
                            since: Instant::now(),
                            failures: 1,
                        });
                    }
                }
                None
            }
        }
    }

    async fn try_query<T: FromRedisValue>(&mut self, pipe: &Pipeline) -> Result<T, String> {
        if self.conn.is_none() {
            let cfg = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout));
            // The crate's own timeouts cover the TCP connect and each
            // response; the outer one also bounds DNS, TLS, AUTH and, for a
            // cluster, the discovery of its slots.
            let limit = self.timeout * 2;
            let late = |_| format!("connecting timed out after {limit:?}");
            let conn = match &mut self.client {
                Clients::Single(c) => Conn::Single(
                    tokio::time::timeout(
                        limit,
                        c.get_multiplexed_async_connection_with_config(&cfg),
                    )
                    .await
                    .map_err(late)?
                    .map_err(|e| format!("cannot connect: {e}"))?,
                ),
                Clients::Sentinel(c) => Conn::Single(
                    tokio::time::timeout(limit, c.get_async_connection_with_config(&cfg))
                        .await
                        .map_err(late)?
                        .map_err(|e| format!("cannot connect: {e}"))?,
                ),
                Clients::Cluster(c) => Conn::Cluster(
                    tokio::time::timeout(limit, c.get_async_connection())
                        .await
                        .map_err(late)?
                        .map_err(|e| format!("cannot connect: {e}"))?,
                ),
            };
            self.conn = Some(conn);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err("no connection".to_owned());
        };
        let answer = match conn {
            Conn::Single(c) => tokio::time::timeout(self.timeout, pipe.query_async::<T>(c)).await,
            Conn::Cluster(c) => tokio::time::timeout(self.timeout, pipe.query_async::<T>(c)).await,
        };
        answer
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
            .map_err(|e| e.to_string())
    }
}
