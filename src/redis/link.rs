//! One connection to Redis as the push and the read side use it: connect
//! on demand, every round trip bounded by a timeout, a failed round trip
//! drops the connection (the next one reconnects), and an outage is logged
//! once when it starts and once when it ends, never per attempt.

use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, FromRedisValue, Pipeline};

use super::settings::Target;

/// Receives complete log lines (no trailing newline).
pub type Log = fn(&str);

pub struct Link {
    target: Target,
    client: Client,
    conn: Option<MultiplexedConnection>,
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
        let info = target.connection_info()?;
        let client = Client::open(info).map_err(|e| format!("{}: {e}", target.display()))?;
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
            // response; the outer one also bounds DNS, TLS and AUTH.
            let conn = tokio::time::timeout(
                self.timeout * 2,
                self.client
                    .get_multiplexed_async_connection_with_config(&cfg),
            )
            .await
            .map_err(|_| format!("connecting timed out after {:?}", self.timeout * 2))?
            .map_err(|e| format!("cannot connect: {e}"))?;
            self.conn = Some(conn);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err("no connection".to_owned());
        };
        tokio::time::timeout(self.timeout, pipe.query_async::<T>(conn))
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
            .map_err(|e| e.to_string())
    }
}
