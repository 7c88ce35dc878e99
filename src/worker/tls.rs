//! The app listeners' TLS from the configuration: gunicorn's SSL settings,
//! or the context the ssl_context hook returns (called in the master at
//! start and on HUP, as gunicorn 27 calls it, with a real
//! `ssl.SSLContext` factory; `tls.py` reads back what it can and names
//! what rustls cannot be given). The rustls configuration is built from
//! that (`crate::tls::listener`) and kept for the workers forked next.

use std::path::PathBuf;

use pyo3::prelude::*;

use crate::config::Config;
use crate::tls::listener::{self, ClientCerts, ListenerTls};

const TLS_SOURCE: &str = include_str!("tls.py");

/// What the settings ask for; None without certfile/keyfile (plain HTTP).
fn from_settings(cfg: &Config) -> Result<Option<ListenerTls>, String> {
    let certfile = cfg.str("certfile").filter(|s| !s.is_empty());
    let keyfile = cfg.str("keyfile").filter(|s| !s.is_empty());
    let certfile = match (certfile, keyfile) {
        (None, None) => return Ok(None),
        (None, Some(k)) => {
            return Err(format!(
                "keyfile {k} is set but certfile is not: TLS needs a certificate (certfile)"
            ))
        }
        (Some(c), _) => c,
    };
    Ok(Some(ListenerTls {
        certfile: PathBuf::from(certfile),
        keyfile: keyfile.map(PathBuf::from),
        ca_certs: cfg
            .str("ca_certs")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .into_iter()
            .collect(),
        client_certs: ClientCerts::from_cert_reqs(cfg.int("cert_reqs"))?,
        ciphers: cfg
            .str("ciphers")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        tls12: true,
        tls13: true,
        suppress_ragged_eofs: cfg.bool("suppress_ragged_eofs"),
    }))
}

type ReadBack = (
    String,
    Option<String>,
    Vec<String>,
    i64,
    Option<String>,
    i64,
    i64,
    Vec<String>,
);

/// Calls the ssl_context hook and carries what it returned over to `t`.
fn apply_hook(
    py: Python<'_>,
    hook: &Py<PyAny>,
    conf: Bound<'_, PyAny>,
    t: &mut ListenerTls,
) -> Result<(), String> {
    let m = crate::python::embedded_module(py, c"_ferrocorn_tls", c"<ferrocorn tls>", TLS_SOURCE)
        .map_err(|e| format!("ssl_context: {}", crate::python::format_err(py, &e)))?;
    let path = |p: &PathBuf| p.to_string_lossy().into_owned();
    let got = m
        .getattr("call_hook")
        .and_then(|f| {
            f.call1((
                hook.bind(py),
                conf,
                path(&t.certfile),
                t.keyfile.as_ref().map(path),
                t.ca_certs.first().map(path),
                match t.client_certs {
                    ClientCerts::None => 0,
                    ClientCerts::Optional => 1,
                    ClientCerts::Required => 2,
                },
                t.ciphers.clone(),
            ))
        })
        .and_then(|r| r.extract::<ReadBack>())
        .map_err(|e| format!("ssl_context: {}", crate::python::format_err(py, &e)))?;
    let (cert, key, cas, verify, ciphers, vmin, vmax, uncarried) = got;
    t.certfile = PathBuf::from(cert);
    t.keyfile = key.map(PathBuf::from);
    t.ca_certs = cas.into_iter().map(PathBuf::from).collect();
    t.client_certs = ClientCerts::from_cert_reqs(verify)?;
    t.ciphers = ciphers;
    t.tls12 = vmin <= 12 && vmax >= 12;
    t.tls13 = vmax >= 13;
    if !uncarried.is_empty() {
        crate::log_warning!(
            "ssl_context: not carried over to rustls (ferrocorn serves without it): {}",
            uncarried.join("; ")
        );
    }
    Ok(())
}

/// Builds the listeners' TLS from `cfg` (the hook called with `conf`, the
/// `cfg` object hooks get) and makes it the one the next workers use.
/// Err stops the start (names the setting or file at fault).
pub fn setup(
    py: Python<'_>,
    cfg: &Config,
    conf: impl FnOnce() -> PyResult<Py<PyAny>>,
) -> Result<(), String> {
    let Some(mut t) = from_settings(cfg)? else {
        listener::set_current(None);
        return Ok(());
    };
    if let Some(hook) = cfg.hook("ssl_context") {
        let conf =
            conf().map_err(|e| format!("ssl_context: {}", crate::python::format_err(py, &e)))?;
        apply_hook(py, hook, conf.into_bound(py), &mut t)?;
    }
    if cfg.bool("do_handshake_on_connect") {
        crate::log_debug!(
            "do_handshake_on_connect: ferrocorn always completes the handshake before \
             reading a request (on its handshake thread)"
        );
    }
    let built = listener::build(&t)?;
    crate::log_info!("{}", built.summary);
    listener::set_current(Some(built));
    Ok(())
}
