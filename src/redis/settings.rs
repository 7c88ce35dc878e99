//! The Redis settings (gunicorn-prometheus-exporter's REDIS_* variables plus
//! ferrocorn's REDIS_URL, push interval and instance name), parsed by one set
//! of rules whichever source they came from: the settings table (config
//! file, CLI, environment) for the server, the environment alone for the
//! standalone `ferrocorn exporter`.

use std::ffi::OsString;
use std::time::Duration;

use ::redis::{ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use crate::config::{env_text, redact_url};

pub const ENV_ENABLED: &str = "REDIS_ENABLED";
pub const ENV_URL: &str = "REDIS_URL";
pub const ENV_HOST: &str = "REDIS_HOST";
pub const ENV_PORT: &str = "REDIS_PORT";
pub const ENV_DB: &str = "REDIS_DB";
pub const ENV_PASSWORD: &str = "REDIS_PASSWORD";
pub const ENV_KEY_PREFIX: &str = "REDIS_KEY_PREFIX";
pub const ENV_TTL_SECONDS: &str = "REDIS_TTL_SECONDS";
pub const ENV_TTL_DISABLED: &str = "REDIS_TTL_DISABLED";
pub const ENV_PUSH_INTERVAL: &str = "REDIS_PUSH_INTERVAL";
pub const ENV_INSTANCE: &str = "REDIS_INSTANCE";
pub const ENV_CLUSTER_NODES: &str = "REDIS_CLUSTER_NODES";
pub const ENV_SENTINEL_NODES: &str = "REDIS_SENTINEL_NODES";
pub const ENV_SENTINEL_SERVICE: &str = "REDIS_SENTINEL_SERVICE";
pub const DEFAULT_SENTINEL_SERVICE: &str = "mymaster";

pub const DEFAULT_HOST: &str = "127.0.0.1";
pub const DEFAULT_PORT: u16 = 6379;
pub const DEFAULT_PREFIX: &str = "gunicorn";
pub const DEFAULT_TTL_SECONDS: u64 = 300;
pub const DEFAULT_PUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Bounds of the push interval: below 0.1 s Redis would see a write storm
/// for nothing (Prometheus scrapes every 15 s or so), above an hour the
/// read side would be useless.
const MIN_INTERVAL: f64 = 0.1;
const MAX_INTERVAL: f64 = 3600.0;

/// Where Redis is: a URL, gunicorn-prometheus-exporter's separate parts,
/// or the seed nodes of a Redis Cluster.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    Url(String),
    /// `host:port` or `redis[s]://...` seeds; a bare seed gets the password.
    Cluster {
        nodes: Vec<String>,
        password: Option<String>,
    },
    /// Sentinels (`host:port` or `redis://` URLs, whose password is the
    /// sentinels') that name the master of `service`; the master is
    /// logged into with `db` and `password`.
    Sentinel {
        sentinels: Vec<String>,
        service: String,
        db: i64,
        password: Option<String>,
    },
    Parts {
        host: String,
        port: u16,
        db: i64,
        password: Option<String>,
    },
}

impl std::fmt::Debug for Target {
    // Never print a password (logs, --print-config of a derived Debug).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

impl Target {
    /// The connection parameters for the `redis` crate (for a cluster, its
    /// seed nodes). Checked once at start ([`from_vars`]), so later calls
    /// only fail on what cannot fail.
    pub fn connection_infos(&self) -> Result<Vec<ConnectionInfo>, String> {
        match self {
            Target::Url(u) => u
                .as_str()
                .into_connection_info()
                .map(|c| vec![c])
                .map_err(|e| format!("{ENV_URL}={}: {e}", redact_url(u))),
            Target::Parts {
                host,
                port,
                db,
                password,
            } => {
                let mut redis = RedisConnectionInfo::default().set_db(*db);
                if let Some(p) = password {
                    redis = redis.set_password(p);
                }
                (host.as_str(), *port)
                    .into_connection_info()
                    .map(|c| vec![c.set_redis_settings(redis)])
                    .map_err(|e| format!("{ENV_HOST}={host:?}, {ENV_PORT}={port}: {e}"))
            }
            Target::Cluster { nodes, password } => nodes
                .iter()
                .map(|n| node_info(ENV_CLUSTER_NODES, n, password.as_deref()))
                .collect(),
            // The sentinels themselves; the master's comes from them.
            Target::Sentinel { sentinels, .. } => sentinels
                .iter()
                .map(|n| node_info(ENV_SENTINEL_NODES, n, None))
                .collect(),
        }
    }

    /// For log lines: the address and database, never the password.
    pub fn display(&self) -> String {
        match self {
            Target::Url(u) => redact_url(u),
            Target::Parts { host, port, db, .. } => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                format!("redis://{host}:{port}/{db}")
            }
            Target::Cluster { nodes, .. } => format!("redis cluster {}", redact_list(nodes)),
            Target::Sentinel {
                sentinels,
                service,
                db,
                ..
            } => format!(
                "redis sentinel {} master {service:?} db {db}",
                redact_list(sentinels)
            ),
        }
    }
}

fn redact_list(nodes: &[String]) -> String {
    nodes
        .iter()
        .map(|n| redact_url(n))
        .collect::<Vec<_>>()
        .join(",")
}

/// One node of a list: a `redis[s]://` URL, or `host:port` (logging in
/// with `password`).
fn node_info(var: &str, n: &str, password: Option<&str>) -> Result<ConnectionInfo, String> {
    let bad = |e: String| format!("{var}: {}: {e}", redact_url(n));
    if n.contains("://") {
        return n.into_connection_info().map_err(|e| bad(e.to_string()));
    }
    let (host, port) = n
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
        .filter(|(h, p)| !h.is_empty() && *p > 0)
        .ok_or_else(|| bad("not host:port or a redis:// URL".to_owned()))?;
    let mut redis = RedisConnectionInfo::default();
    if let Some(p) = password {
        redis = redis.set_password(p);
    }
    (host, port)
        .into_connection_info()
        .map(|c| c.set_redis_settings(redis))
        .map_err(|e| bad(e.to_string()))
}

/// The Redis settings of a server that pushes, or of a read side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub target: Target,
    pub prefix: String,
    /// `None`: REDIS_TTL_DISABLED (keys stay until a clean shutdown).
    pub ttl_seconds: Option<u64>,
    pub push_interval: Duration,
    /// This instance's name; `None`: its first listening address.
    pub instance: Option<String>,
}

/// The settings from any source of REDIS_* variables; `Ok(None)` when
/// REDIS_ENABLED is not true (and `require_enabled`).
///
/// Rules (gunicorn-prometheus-exporter's variables and defaults, made
/// strict where it would have failed later or silently):
/// - `REDIS_ENABLED`: true/false, 1/0, yes/no, on/off; default false.
/// - `REDIS_URL`: `redis://[[user]:password@]host[:port][/db]`,
///   `rediss://...` (TLS) or `redis+unix:///path?db=N`; when set, the
///   host, port, db and password variables are not used.
/// - `REDIS_HOST` (default 127.0.0.1), `REDIS_PORT` (1-65535, default
///   6379), `REDIS_DB` (0 or more, default 0), `REDIS_PASSWORD` (empty: none).
/// - `REDIS_KEY_PREFIX`: default `gunicorn`; not empty, no spaces.
/// - `REDIS_TTL_SECONDS`: a whole number of seconds, at least 1, default
///   300; `REDIS_TTL_DISABLED` true: keys do not expire.
/// - `REDIS_PUSH_INTERVAL`: seconds, 0.1 to 3600, default 5.
/// - `REDIS_INSTANCE`: this instance's name; default its listening address.
pub fn from_vars(
    get: impl Fn(&str) -> Option<OsString>,
    require_enabled: bool,
) -> Result<Option<RedisSettings>, String> {
    let text = |name: &str| env_text(&get, name);
    let boolean = |name: &str| -> Result<bool, String> {
        match text(name)? {
            None => Ok(false),
            Some(v) => crate::config::env_bool(&v).ok_or_else(|| {
                format!("{name}={v:?}: must be true/false (also 1/0, yes/no, on/off)")
            }),
        }
    };
    if require_enabled && !boolean(ENV_ENABLED)? {
        return Ok(None);
    }
    let int = |name: &str, min: i64, max: i64, default: i64| -> Result<i64, String> {
        match text(name)? {
            None => Ok(default),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(format!(
                    "{name}={v:?}: must be a whole number from {min} to {max}"
                )),
            },
        }
    };

    // Not trimmed: a password may end in a space.
    let password = || -> Result<Option<String>, String> {
        Ok(get(ENV_PASSWORD)
            .map(|v| {
                v.into_string()
                    .map_err(|_| format!("{ENV_PASSWORD} is not valid UTF-8"))
            })
            .transpose()?
            .filter(|p| !p.is_empty()))
    };
    let list = |v: String| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let chosen: Vec<&str> = [ENV_URL, ENV_CLUSTER_NODES, ENV_SENTINEL_NODES]
        .into_iter()
        .filter(|v| get(v).is_some_and(|x| !x.to_string_lossy().trim().is_empty()))
        .collect();
    if chosen.len() > 1 {
        return Err(format!("{} are all set: give one", chosen.join(" and ")));
    }
    let target = match (
        text(ENV_CLUSTER_NODES)?,
        text(ENV_SENTINEL_NODES)?,
        text(ENV_URL)?,
    ) {
        (Some(nodes), _, _) => Target::Cluster {
            nodes: list(nodes),
            password: password()?,
        },
        (_, Some(nodes), _) => Target::Sentinel {
            sentinels: list(nodes),
            service: text(ENV_SENTINEL_SERVICE)?
                .unwrap_or_else(|| DEFAULT_SENTINEL_SERVICE.to_owned()),
            db: int(ENV_DB, 0, i64::from(i32::MAX), 0)?,
            password: password()?,
        },
        (_, _, Some(url)) => Target::Url(url),
        (None, None, None) => Target::Parts {
            host: text(ENV_HOST)?.unwrap_or_else(|| DEFAULT_HOST.to_owned()),
            port: int(ENV_PORT, 1, 65_535, DEFAULT_PORT.into())? as u16,
            db: int(ENV_DB, 0, i64::from(i32::MAX), 0)?,
            password: password()?,
        },
    };
    // A wrong URL or scheme is a start-up error, not an outage later.
    let infos = target.connection_infos()?;
    if infos.is_empty() {
        return Err(format!(
            "{}: no node given",
            match target {
                Target::Sentinel { .. } => ENV_SENTINEL_NODES,
                _ => ENV_CLUSTER_NODES,
            }
        ));
    }
    if infos.iter().any(|i| !i.addr().is_supported()) {
        return Err(format!(
            "{}: this kind of Redis address is not supported",
            target.display()
        ));
    }

    let prefix = text(ENV_KEY_PREFIX)?.unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
    // Braces would change the keys' hash tag (see `super::state_key`).
    if prefix
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
    {
        return Err(format!(
            "{ENV_KEY_PREFIX}={prefix:?}: must not contain spaces, braces or control characters"
        ));
    }
    let ttl = int(
        ENV_TTL_SECONDS,
        1,
        i64::from(i32::MAX),
        DEFAULT_TTL_SECONDS as i64,
    )? as u64;
    let ttl_seconds = (!boolean(ENV_TTL_DISABLED)?).then_some(ttl);

    let push_interval = match text(ENV_PUSH_INTERVAL)? {
        None => DEFAULT_PUSH_INTERVAL,
        Some(v) => match v.parse::<f64>() {
            Ok(s) if (MIN_INTERVAL..=MAX_INTERVAL).contains(&s) => Duration::from_secs_f64(s),
            _ => {
                return Err(format!(
                    "{ENV_PUSH_INTERVAL}={v:?}: must be a number of seconds from \
                     {MIN_INTERVAL} to {MAX_INTERVAL}"
                ))
            }
        },
    };
    if ttl_seconds.is_some_and(|t| (t as f64) <= push_interval.as_secs_f64()) {
        return Err(format!(
            "{ENV_TTL_SECONDS}={ttl} is not longer than {ENV_PUSH_INTERVAL} ({}s): the keys \
             would expire between two pushes",
            push_interval.as_secs_f64()
        ));
    }
    let instance = text(ENV_INSTANCE)?;
    if let Some(i) = &instance {
        if i.chars().any(char::is_control) {
            return Err(format!(
                "{ENV_INSTANCE}={i:?}: must not contain control characters"
            ));
        }
    }
    Ok(Some(RedisSettings {
        target,
        prefix,
        ttl_seconds,
        push_interval,
        instance,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<Option<RedisSettings>, String> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        from_vars(|k| map.get(k).cloned(), true)
    }

    #[test]
    fn off_unless_enabled() {
        assert_eq!(from(&[]), Ok(None));
        assert_eq!(from(&[(ENV_ENABLED, "false"), (ENV_PORT, "x")]), Ok(None));
        let e = from(&[(ENV_ENABLED, "ture")]).expect_err("typo");
        assert!(e.contains(ENV_ENABLED), "{e}");
    }

    #[test]
    fn defaults() {
        let s = from(&[(ENV_ENABLED, "1")]).expect("ok").expect("on");
        assert_eq!(
            s,
            RedisSettings {
                target: Target::Parts {
                    host: "127.0.0.1".into(),
                    port: 6379,
                    db: 0,
                    password: None
                },
                prefix: "gunicorn".into(),
                ttl_seconds: Some(300),
                push_interval: Duration::from_secs(5),
                instance: None,
            }
        );
        // gunicorn-prometheus-exporter's configs set REDIS_PASSWORD to "".
        let s = from(&[(ENV_ENABLED, "yes"), (ENV_PASSWORD, "")])
            .expect("ok")
            .expect("on");
        assert!(matches!(s.target, Target::Parts { password: None, .. }));
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, v) in [
            (ENV_PORT, "0"),
            (ENV_PORT, "70000"),
            (ENV_PORT, "abc"),
            (ENV_DB, "-1"),
            (ENV_DB, "one"),
            (ENV_TTL_SECONDS, "0"),
            (ENV_TTL_SECONDS, "5m"),
            (ENV_TTL_DISABLED, "maybe"),
            (ENV_PUSH_INTERVAL, "0"),
            (ENV_PUSH_INTERVAL, "0.01"),
            (ENV_PUSH_INTERVAL, "5s"),
            (ENV_PUSH_INTERVAL, "NaN"),
            (ENV_TTL_SECONDS, "5"),
            (ENV_KEY_PREFIX, "a b"),
            (ENV_KEY_PREFIX, "{a}"),
            (ENV_CLUSTER_NODES, "127.0.0.1"),
            (ENV_CLUSTER_NODES, " , "),
            (ENV_CLUSTER_NODES, "127.0.0.1:0"),
            (ENV_URL, "http://localhost:6379"),
            (ENV_URL, "redis://"),
        ] {
            let e = from(&[(ENV_ENABLED, "true"), (var, v)]).expect_err(v);
            assert!(e.contains(var), "{var}={v}: {e}");
        }
    }

    #[test]
    fn url_and_redaction() {
        let s = from(&[
            (ENV_ENABLED, "true"),
            (ENV_URL, "rediss://app:s3cret@redis.example:6380/2"),
            (ENV_HOST, "ignored"),
            (ENV_PUSH_INTERVAL, "0.5"),
            (ENV_TTL_DISABLED, "on"),
        ])
        .expect("ok")
        .expect("on");
        assert_eq!(s.push_interval, Duration::from_millis(500));
        assert_eq!(s.ttl_seconds, None);
        let shown = s.target.display();
        assert_eq!(shown, "rediss://app:***@redis.example:6380/2");
        assert!(!format!("{:?}", s).contains("s3cret"));
        let info = s.target.connection_infos().expect("info").remove(0);
        assert_eq!(info.redis_settings().username(), Some("app"));
        assert_eq!(info.redis_settings().password(), Some("s3cret"));
        assert_eq!(info.redis_settings().db(), 2);
        let e = from(&[(ENV_ENABLED, "true"), (ENV_URL, "redis://:pw@/x")]).expect_err("bad");
        assert!(!e.contains("pw@"), "{e}");
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
    }

    #[test]
    fn cluster_nodes() {
        let s = from(&[
            (ENV_ENABLED, "true"),
            (
                ENV_CLUSTER_NODES,
                "10.0.0.1:7000, 10.0.0.2:7001,redis://:pw2@10.0.0.3:7002",
            ),
            (ENV_PASSWORD, "pw"),
        ])
        .expect("ok")
        .expect("on");
        let infos = s.target.connection_infos().expect("infos");
        assert_eq!(infos.len(), 3);
        assert_eq!(infos[0].addr().to_string(), "10.0.0.1:7000");
        assert_eq!(infos[1].redis_settings().password(), Some("pw"));
        assert_eq!(infos[2].redis_settings().password(), Some("pw2"));
        assert_eq!(
            s.target.display(),
            "redis cluster 10.0.0.1:7000,10.0.0.2:7001,redis://:***@10.0.0.3:7002"
        );
        let e = from(&[
            (ENV_ENABLED, "true"),
            (ENV_CLUSTER_NODES, "a:1"),
            (ENV_URL, "redis://b"),
        ])
        .expect_err("both");
        assert!(e.contains(ENV_CLUSTER_NODES) && e.contains(ENV_URL), "{e}");
        let s = from(&[
            (ENV_ENABLED, "true"),
            (ENV_SENTINEL_NODES, "10.0.0.1:26379,10.0.0.2:26379"),
            (ENV_DB, "2"),
            (ENV_PASSWORD, "pw"),
        ])
        .expect("ok")
        .expect("on");
        assert_eq!(
            s.target,
            Target::Sentinel {
                sentinels: vec!["10.0.0.1:26379".into(), "10.0.0.2:26379".into()],
                service: "mymaster".into(),
                db: 2,
                password: Some("pw".into())
            }
        );
        assert!(from(&[(ENV_ENABLED, "true"), (ENV_SENTINEL_NODES, "x")])
            .expect_err("bad")
            .contains(ENV_SENTINEL_NODES));
    }

    #[test]
    fn parts_with_password() {
        let s = from(&[
            (ENV_ENABLED, "true"),
            (ENV_HOST, "10.0.0.5"),
            (ENV_PORT, "6380"),
            (ENV_DB, "3"),
            (ENV_PASSWORD, "p w"),
        ])
        .expect("ok")
        .expect("on");
        assert_eq!(s.target.display(), "redis://10.0.0.5:6380/3");
        let info = s.target.connection_infos().expect("info").remove(0);
        assert_eq!(info.redis_settings().password(), Some("p w"));
        assert_eq!(info.redis_settings().db(), 3);
    }
}
