//! The exporter's settings from the PROMETHEUS_* environment variables of
//! gunicorn-prometheus-exporter, with its defaults. Read after the config
//! file has run (configs set them with `os.environ.setdefault`).

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;

use super::server::ServerConfig;
use super::tls::TlsConfig;
use crate::redis::settings::RedisSettings;

pub const ENV_BIND_ADDRESS: &str = "PROMETHEUS_BIND_ADDRESS";
pub const ENV_METRICS_PORT: &str = "PROMETHEUS_METRICS_PORT";
pub const ENV_SSL_CERTFILE: &str = "PROMETHEUS_SSL_CERTFILE";
pub const ENV_SSL_KEYFILE: &str = "PROMETHEUS_SSL_KEYFILE";
pub const ENV_SSL_CLIENT_CAFILE: &str = "PROMETHEUS_SSL_CLIENT_CAFILE";
pub const ENV_SSL_CLIENT_CAPATH: &str = "PROMETHEUS_SSL_CLIENT_CAPATH";
pub const ENV_SSL_CLIENT_AUTH_REQUIRED: &str = "PROMETHEUS_SSL_CLIENT_AUTH_REQUIRED";

pub const DEFAULT_BIND_ADDRESS: &str = "0.0.0.0";
pub const DEFAULT_METRICS_PORT: u16 = 9090;

/// Where and how to serve, as read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvConfig {
    pub bind_address: String,
    pub port: u16,
    pub tls: Option<TlsConfig>,
    /// The Redis push (REDIS_ENABLED and the REDIS_* settings), if on.
    pub redis: Option<RedisSettings>,
}

impl EnvConfig {
    /// Completes a [`ServerConfig`] with what only the master knows.
    /// `master_pid`: `None` for the standalone read side.
    pub fn into_server_config(self, master_pid: Option<u32>, log: fn(&str)) -> ServerConfig {
        ServerConfig {
            bind_address: self.bind_address,
            port: self.port,
            tls: self.tls,
            master_pid,
            log,
        }
    }
}

/// The exporter's settings from the configuration (whose metrics settings
/// were fed by the PROMETHEUS_* variables, see `Config::apply_env_sources`).
pub fn config_from_settings(cfg: &crate::config::Config) -> Result<EnvConfig, String> {
    config_from_vars(|name| cfg.metrics_var(name))
}

/// The exporter's settings from any source of PROMETHEUS_* variables.
///
/// Rules (gunicorn-prometheus-exporter's, made strict where it silently
/// ignored a setting):
/// - `PROMETHEUS_BIND_ADDRESS`: default `0.0.0.0`; empty means the default;
///   an IPv4/IPv6 literal (brackets allowed) or a host name.
/// - `PROMETHEUS_METRICS_PORT`: default 9090; an integer 1-65535.
/// - HTTPS when `PROMETHEUS_SSL_CERTFILE` and `PROMETHEUS_SSL_KEYFILE` are
///   both set (non-empty). Only one of them set, or a client CA / client
///   auth set without them, is an error rather than plain HTTP.
/// - `PROMETHEUS_SSL_CLIENT_CAFILE` / `PROMETHEUS_SSL_CLIENT_CAPATH`:
///   optional client CA file / directory.
/// - `PROMETHEUS_SSL_CLIENT_AUTH_REQUIRED`: `true`/`1`/`yes`/`on` or
///   `false`/`0`/`no`/`off` (any case; empty = false); default false.
///   Another value is an error, so that a typo never silently turns client
///   authentication off.
///
/// File contents are not checked here: call [`super::tls::validate`].
pub fn config_from_vars(get: impl Fn(&str) -> Option<OsString>) -> Result<EnvConfig, String> {
    let text = |name: &str| crate::config::env_text(&get, name);
    let path =
        |name: &str| -> Option<PathBuf> { get(name).filter(|v| !v.is_empty()).map(PathBuf::from) };

    let bind_address = match text(ENV_BIND_ADDRESS)? {
        None => DEFAULT_BIND_ADDRESS.to_owned(),
        Some(a) => {
            check_bind_address(&a).map_err(|why| format!("{ENV_BIND_ADDRESS}={a:?}: {why}"))?;
            a
        }
    };

    let port = match text(ENV_METRICS_PORT)? {
        None => DEFAULT_METRICS_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(format!(
                    "{ENV_METRICS_PORT}={p:?}: must be a port number from 1 to 65535"
                ))
            }
        },
    };

    let auth_required = match text(ENV_SSL_CLIENT_AUTH_REQUIRED)? {
        None => false,
        Some(v) => parse_bool(&v).ok_or_else(|| {
            format!(
                "{ENV_SSL_CLIENT_AUTH_REQUIRED}={v:?}: must be true/false (also 1/0, yes/no, on/off)"
            )
        })?,
    };

    let certfile = path(ENV_SSL_CERTFILE);
    let keyfile = path(ENV_SSL_KEYFILE);
    let cafile = path(ENV_SSL_CLIENT_CAFILE);
    let capath = path(ENV_SSL_CLIENT_CAPATH);

    let tls = match (certfile, keyfile) {
        (Some(certfile), Some(keyfile)) => Some(TlsConfig {
            certfile,
            keyfile,
            client_cafile: cafile,
            client_capath: capath,
            client_auth_required: auth_required,
        }),
        (Some(_), None) => {
            return Err(format!(
                "{ENV_SSL_CERTFILE} is set but {ENV_SSL_KEYFILE} is not: HTTPS needs both"
            ))
        }
        (None, Some(_)) => {
            return Err(format!(
                "{ENV_SSL_KEYFILE} is set but {ENV_SSL_CERTFILE} is not: HTTPS needs both"
            ))
        }
        (None, None) => {
            let stray = [
                (ENV_SSL_CLIENT_CAFILE, cafile.is_some()),
                (ENV_SSL_CLIENT_CAPATH, capath.is_some()),
                (ENV_SSL_CLIENT_AUTH_REQUIRED, auth_required),
            ];
            if let Some((name, _)) = stray.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "{name} is set but HTTPS is off: client certificates need \
                     {ENV_SSL_CERTFILE} and {ENV_SSL_KEYFILE}"
                ));
            }
            None
        }
    };

    let redis = crate::redis::settings::from_vars(&get, true)?;

    Ok(EnvConfig {
        bind_address,
        port,
        tls,
        redis,
    })
}

/// gunicorn-prometheus-exporter's truthy set, plus the matching falsy set.
pub fn parse_bool(v: &str) -> Option<bool> {
    if v.trim().is_empty() {
        return Some(false);
    }
    crate::config::env_bool(v)
}

fn check_bind_address(a: &str) -> Result<(), &'static str> {
    let inner = a
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(a);
    if inner.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let hostname_ok = !inner.is_empty()
        && inner.len() <= 253
        && inner
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if hostname_ok {
        Ok(())
    } else {
        Err("not an IP address or host name (give the address only, without a port)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<EnvConfig, String> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        config_from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = from(&[]).expect("defaults");
        assert_eq!(
            c,
            EnvConfig {
                bind_address: "0.0.0.0".into(),
                port: 9090,
                tls: None,
                redis: None,
            }
        );
        // Empty values mean "unset".
        let c = from(&[(ENV_BIND_ADDRESS, ""), (ENV_METRICS_PORT, " ")]).expect("empty");
        assert_eq!((c.bind_address.as_str(), c.port), ("0.0.0.0", 9090));
    }

    #[test]
    fn address_and_port() {
        let c = from(&[(ENV_BIND_ADDRESS, "127.0.0.1"), (ENV_METRICS_PORT, "9091")]).expect("ok");
        assert_eq!((c.bind_address.as_str(), c.port), ("127.0.0.1", 9091));
        for a in ["::", "[::1]", "localhost", "metrics.example.internal"] {
            assert!(from(&[(ENV_BIND_ADDRESS, a)]).is_ok(), "{a}");
        }
        for a in ["0.0.0.0:9090", "a b", "http://x"] {
            let e = from(&[(ENV_BIND_ADDRESS, a)]).expect_err(a);
            assert!(e.contains(ENV_BIND_ADDRESS), "{e}");
        }
        for p in ["0", "65536", "-1", "abc", "90.5"] {
            let e = from(&[(ENV_METRICS_PORT, p)]).expect_err(p);
            assert!(e.contains(ENV_METRICS_PORT), "{e}");
        }
    }

    #[test]
    fn tls_settings() {
        let c = from(&[
            (ENV_SSL_CERTFILE, "/c.pem"),
            (ENV_SSL_KEYFILE, "/k.pem"),
            (ENV_SSL_CLIENT_CAFILE, "/ca.pem"),
            (ENV_SSL_CLIENT_CAPATH, "/cas"),
            (ENV_SSL_CLIENT_AUTH_REQUIRED, "TRUE"),
        ])
        .expect("tls");
        assert_eq!(
            c.tls,
            Some(TlsConfig {
                certfile: "/c.pem".into(),
                keyfile: "/k.pem".into(),
                client_cafile: Some("/ca.pem".into()),
                client_capath: Some("/cas".into()),
                client_auth_required: true,
            })
        );
        for (v, want) in [
            ("1", true),
            ("yes", true),
            ("On", true),
            ("false", false),
            ("0", false),
            ("no", false),
            ("OFF", false),
            ("", false),
        ] {
            let c = from(&[
                (ENV_SSL_CERTFILE, "/c"),
                (ENV_SSL_KEYFILE, "/k"),
                (ENV_SSL_CLIENT_CAFILE, "/ca"),
                (ENV_SSL_CLIENT_AUTH_REQUIRED, v),
            ])
            .expect(v);
            assert_eq!(c.tls.map(|t| t.client_auth_required), Some(want), "{v}");
        }
        let e = from(&[
            (ENV_SSL_CERTFILE, "/c"),
            (ENV_SSL_KEYFILE, "/k"),
            (ENV_SSL_CLIENT_AUTH_REQUIRED, "ture"),
        ])
        .expect_err("typo");
        assert!(e.contains(ENV_SSL_CLIENT_AUTH_REQUIRED), "{e}");
    }

    #[test]
    fn half_configured_tls_is_an_error() {
        let e = from(&[(ENV_SSL_CERTFILE, "/c")]).expect_err("cert only");
        assert!(e.contains(ENV_SSL_KEYFILE), "{e}");
        let e = from(&[(ENV_SSL_KEYFILE, "/k")]).expect_err("key only");
        assert!(e.contains(ENV_SSL_CERTFILE), "{e}");
        let e = from(&[(ENV_SSL_CLIENT_CAFILE, "/ca")]).expect_err("ca only");
        assert!(e.contains(ENV_SSL_CLIENT_CAFILE), "{e}");
        let e = from(&[(ENV_SSL_CLIENT_AUTH_REQUIRED, "true")]).expect_err("auth only");
        assert!(e.contains(ENV_SSL_CLIENT_AUTH_REQUIRED), "{e}");
        // Explicitly false without TLS is fine.
        assert!(from(&[(ENV_SSL_CLIENT_AUTH_REQUIRED, "false")])
            .expect("false")
            .tls
            .is_none());
    }
}
