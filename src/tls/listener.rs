//! The rustls server configuration of the app listeners, from gunicorn's
//! SSL settings or from what the ssl_context hook's context carries over
//! (the python side reads that back and fills [`ListenerTls`]).
//!
//! The master builds it at start (a bad file, cipher or combination stops
//! the start with a message naming it) and on HUP, and keeps it in
//! [`current`]; the workers it forks afterwards serve with that
//! configuration (built before the fork: no thread is involved).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use super::{load_certs, load_key};

/// ssl.CERT_NONE / CERT_OPTIONAL / CERT_REQUIRED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    None,
    Optional,
    Required,
}

impl ClientCerts {
    /// gunicorn's cert_reqs (0, 1, 2).
    pub fn from_cert_reqs(v: i64) -> Result<ClientCerts, String> {
        match v {
            0 => Ok(ClientCerts::None),
            1 => Ok(ClientCerts::Optional),
            2 => Ok(ClientCerts::Required),
            n => Err(format!(
                "cert_reqs {n}: expected 0 (ssl.CERT_NONE), 1 (ssl.CERT_OPTIONAL) or 2 \
                 (ssl.CERT_REQUIRED)"
            )),
        }
    }
}

/// What the app listeners' TLS is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub certfile: PathBuf,
    /// None: the key is in the certificate file (as Python's load_cert_chain).
    pub keyfile: Option<PathBuf>,
    /// CA files that sign client certificates (ca_certs, or the
    /// ssl_context's load_verify_locations).
    pub ca_certs: Vec<PathBuf>,
    pub client_certs: ClientCerts,
    /// An OpenSSL cipher list (None: every suite rustls has).
    pub ciphers: Option<String>,
    /// Offer TLS 1.2 / TLS 1.3.
    pub tls12: bool,
    pub tls13: bool,
    pub suppress_ragged_eofs: bool,
}

/// The configuration the I/O uses, with the settings it came from.
pub struct Built {
    pub config: Arc<rustls::ServerConfig>,
    pub suppress_ragged_eofs: bool,
    /// One line for the log: what is served.
    pub summary: String,
}

/// Builds the rustls configuration; the error names the setting or file
/// at fault.
pub fn build(t: &ListenerTls) -> Result<Built, String> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = super::ciphers::default_order();
    let mut chosen = String::new();
    if let Some(list) = &t.ciphers {
        provider.cipher_suites = super::ciphers::select(list)?.suites;
        let names: Vec<String> = provider
            .cipher_suites
            .iter()
            .map(|s| super::ciphers::openssl_name(*s))
            .collect();
        chosen = format!(", cipher suites {}", names.join(":"));
    }
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if t.tls13 {
        versions.push(&rustls::version::TLS13);
    }
    if t.tls12 {
        versions.push(&rustls::version::TLS12);
    }
    if versions.is_empty() {
        return Err("TLS: no protocol version left (rustls offers TLS 1.2 and 1.3)".to_owned());
    }
    let has = |v: rustls::ProtocolVersion| {
        provider
            .cipher_suites
            .iter()
            .any(|s| s.version().version == v)
    };
    if t.tls13 && !t.tls12 && !has(rustls::ProtocolVersion::TLSv1_3) {
        return Err("TLS: ciphers leaves no TLS 1.3 suite, and only TLS 1.3 is allowed".into());
    }
    if t.tls12 && !t.tls13 && !has(rustls::ProtocolVersion::TLSv1_2) {
        return Err("TLS: ciphers leaves no TLS 1.2 suite, and only TLS 1.2 is allowed".into());
    }
    let provider = Arc::new(provider);
    let certs = load_certs(&t.certfile, "TLS certificate (certfile)")?;
    let key = load_key(t.keyfile.as_ref().unwrap_or(&t.certfile))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let builder = match t.client_certs {
        ClientCerts::None => builder.with_no_client_auth(),
        _ if t.ca_certs.is_empty() => {
            return Err(
                "cert_reqs asks for client certificates (1: optional, 2: required) but \
                 ca_certs is not set, so no client certificate could be verified \
                 (ferrocorn does not read the system's CA store for client certificates)"
                    .to_owned(),
            )
        }
        req => {
            let mut roots = RootCertStore::empty();
            for ca in &t.ca_certs {
                for cert in load_certs(ca, "CA certificates (ca_certs)")? {
                    roots.add(cert).map_err(|e| {
                        format!("invalid CA certificate in ca_certs {}: {e}", ca.display())
                    })?;
                }
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if req == ClientCerts::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            let v = v
                .build()
                .map_err(|e| format!("cannot build the client certificate verifier: {e}"))?;
            builder.with_client_cert_verifier(v)
        }
    };
    let keyname = t.keyfile.as_ref().unwrap_or(&t.certfile);
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "TLS certificate {} and key {} do not make a usable pair: {e}",
            t.certfile.display(),
            keyname.display()
        )
    })?;
    // The server's order decides, as in Python's SSLContext
    // (OP_CIPHER_SERVER_PREFERENCE): the `ciphers` list's order, or
    // `default_order`.
    config.ignore_client_order = true;
    let summary = format!(
        "TLS on the listeners: {}{}, client certificates {}",
        match (t.tls12, t.tls13) {
            (true, true) => "TLS 1.2 and 1.3",
            (true, false) => "TLS 1.2 only",
            _ => "TLS 1.3 only",
        },
        chosen,
        match t.client_certs {
            ClientCerts::None => "not requested",
            ClientCerts::Optional => "optional",
            ClientCerts::Required => "required",
        }
    );
    Ok(Built {
        config: Arc::new(config),
        suppress_ragged_eofs: t.suppress_ragged_eofs,
        summary,
    })
}

static CURRENT: Mutex<Option<Arc<Built>>> = Mutex::new(None);

/// The configuration the next workers serve with (None: plain HTTP).
pub fn current() -> Option<Arc<Built>> {
    CURRENT.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Sets it (the master, at start and on HUP).
pub fn set_current(b: Option<Built>) {
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = b.map(Arc::new);
}
