//! TLS configuration shared by the exporter's HTTPS and the app listeners:
//! PEM loading (certificates, keys, CA files and directories) and, in
//! [`listener`], the rustls server configuration of the app listeners from
//! gunicorn's SSL settings (certfile, keyfile, ca_certs, cert_reqs,
//! ciphers, the ssl_context hook's context). The TLS I/O itself is the
//! connection layer's (`conn/tls.rs`).

pub mod ciphers;
pub mod listener;

use std::path::Path;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// The error text for a PEM file that could not be used: opening and
/// reading problems say "cannot read", malformed PEM says "cannot parse".
fn pem_error(what: &str, path: &Path, e: pem::Error) -> String {
    match e {
        pem::Error::Io(e) => format!("cannot read {what} file {}: {e}", path.display()),
        e => format!("cannot parse {what} file {}: {e}", path.display()),
    }
}

pub fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    // Sections of other kinds (a key next to the certificate) are skipped.
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(format!(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in {what} file {}",
            path.display()
        ));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    match PrivateKeyDer::from_pem_file(path) {
        Ok(key) => Ok(key),
        // Encrypted keys (-----BEGIN ENCRYPTED PRIVATE KEY-----) are
        // sections of another kind, skipped like any other: none found.
        Err(pem::Error::NoItemsFound) => Err(format!(
            "no PEM private key (PKCS#8, PKCS#1 or SEC1; encrypted keys are not supported) \
             in TLS key file {}",
            path.display()
        )),
        Err(e) => Err(pem_error("TLS key", path, e)),
    }
}

/// Adds every certificate of every readable regular file in `dir`; files
/// that hold no valid certificate are skipped (as OpenSSL's CApath lookup
/// never reads them), but the directory must yield at least one CA.
pub fn add_ca_dir(roots: &mut RootCertStore, dir: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read client CA directory {}: {e}", dir.display()))?;
    let mut added = 0usize;
    for entry in entries {
        let entry =
            entry.map_err(|e| format!("cannot read client CA directory {}: {e}", dir.display()))?;
        let path = entry.path();
        // metadata() follows symlinks, as hashed CApath entries are links.
        if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let Ok(certs) = CertificateDer::pem_file_iter(&path) else {
            continue;
        };
        for cert in certs.map_while(Result::ok) {
            if roots.add(cert).is_ok() {
                added += 1;
            }
        }
    }
    if added == 0 {
        return Err(format!(
            "no PEM CA certificate found in client CA directory {}",
            dir.display()
        ));
    }
    Ok(())
}

/// A rustls client configuration that trusts the CA certificates of
/// `cafile` and, given `client` (certificate file, key file), presents
/// that certificate to servers that ask for one. Used by the tools that
/// read a server's HTTPS exporter (`ferrocorn top`).
pub fn client_config(
    cafile: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in load_certs(cafile, "CA")? {
        roots
            .add(cert)
            .map_err(|e| format!("invalid CA certificate in {}: {e}", cafile.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert, "client certificate")?, load_key(key)?)
            .map_err(|e| {
                format!(
                    "the client certificate {} and key {} do not go together: {e}",
                    cert.display(),
                    key.display()
                )
            })?,
    };
    Ok(std::sync::Arc::new(config))
}
