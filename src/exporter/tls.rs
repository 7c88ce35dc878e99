//! HTTPS for the exporter: a rustls server configuration (ring provider)
//! from PROMETHEUS_SSL_* style settings, with optional client-certificate
//! verification (mTLS). The PEM loading is [`crate::tls`]'s, shared with
//! the app listeners.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::tls::{add_ca_dir, load_certs, load_key};

/// TLS settings of the metrics endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM server certificate chain (leaf first).
    pub certfile: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1; not encrypted).
    pub keyfile: PathBuf,
    /// PEM file of CA certificates that sign client certificates.
    pub client_cafile: Option<PathBuf>,
    /// Directory of PEM CA certificates (every regular file in it is read;
    /// OpenSSL's hashed `<hash>.0` links work as they are).
    pub client_capath: Option<PathBuf>,
    /// With a client CA: refuse clients without a valid certificate. Without
    /// it, a client may present no certificate, but one it presents must be
    /// valid.
    pub client_auth_required: bool,
}

/// Checks that the files are readable and valid and that they make a
/// working configuration, without starting anything. The error names the
/// file at fault.
pub fn validate(cfg: &TlsConfig) -> Result<(), String> {
    server_config(cfg).map(|_| ())
}

/// Builds the rustls server configuration.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = load_certs(&cfg.certfile, "TLS certificate")?;
    let key = load_key(&cfg.keyfile)?;

    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| format!("TLS setup failed: {e}"))?;

    let has_ca = cfg.client_cafile.is_some() || cfg.client_capath.is_some();
    let builder = if has_ca {
        let mut roots = RootCertStore::empty();
        if let Some(file) = &cfg.client_cafile {
            for cert in load_certs(file, "client CA")? {
                roots.add(cert).map_err(|e| {
                    format!("invalid client CA certificate in {}: {e}", file.display())
                })?;
            }
        }
        if let Some(dir) = &cfg.client_capath {
            add_ca_dir(&mut roots, dir)?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = if cfg.client_auth_required {
            verifier
        } else {
            verifier.allow_unauthenticated()
        };
        let verifier = verifier
            .build()
            .map_err(|e| format!("cannot build the client certificate verifier: {e}"))?;
        builder.with_client_cert_verifier(verifier)
    } else if cfg.client_auth_required {
        return Err(
            "client certificates are required (PROMETHEUS_SSL_CLIENT_AUTH_REQUIRED) \
                    but no client CA is set (PROMETHEUS_SSL_CLIENT_CAFILE or \
                    PROMETHEUS_SSL_CLIENT_CAPATH), so no client could be verified"
                .to_owned(),
        );
    } else {
        builder.with_no_client_auth()
    };

    let config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "TLS certificate {} and key {} do not make a usable pair: {e}",
            cfg.certfile.display(),
            cfg.keyfile.display()
        )
    })?;
    Ok(Arc::new(config))
}

#[cfg(test)]
pub(crate) mod testpki {
    //! A throwaway PKI for the tests: a CA, a server certificate for
    //! localhost/127.0.0.1, and client certificates.

    use std::path::{Path, PathBuf};

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    pub struct Pki {
        pub dir: PathBuf,
        pub ca_pem: String,
        pub server_cert: PathBuf,
        pub server_key: PathBuf,
        pub ca_file: PathBuf,
        pub ca_dir: PathBuf,
        /// (cert PEM, key PEM) signed by the CA.
        pub client_good: (String, String),
        /// (cert PEM, key PEM) signed by another CA.
        pub client_rogue: (String, String),
    }

    fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        (cert.pem(), Issuer::new(params, key))
    }

    fn leaf(
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        issuer: &Issuer<'_, KeyPair>,
    ) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, "ferrocorn test");
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, issuer).expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }

    pub fn make(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).expect("pki dir");
        let (ca_pem, issuer) = ca("ferrocorn test CA");
        let (_rogue_pem, rogue_issuer) = ca("rogue CA");
        let (srv_cert, srv_key) = leaf(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &issuer,
        );
        let client_good = leaf(&["scraper"], ExtendedKeyUsagePurpose::ClientAuth, &issuer);
        let client_rogue = leaf(
            &["scraper"],
            ExtendedKeyUsagePurpose::ClientAuth,
            &rogue_issuer,
        );
        let write = |name: &str, data: &str| {
            let p = dir.join(name);
            std::fs::write(&p, data).expect("write pki file");
            p
        };
        let ca_dir = dir.join("cas");
        std::fs::create_dir_all(&ca_dir).expect("ca dir");
        std::fs::write(ca_dir.join("ca.pem"), &ca_pem).expect("write ca");
        std::fs::write(ca_dir.join("README"), "not a certificate\n").expect("write readme");
        Pki {
            dir: dir.to_path_buf(),
            server_cert: write("server.pem", &srv_cert),
            server_key: write("server.key", &srv_key),
            ca_file: write("ca.pem", &ca_pem),
            ca_pem,
            ca_dir,
            client_good,
            client_rogue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fc-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn base(pki: &testpki::Pki) -> TlsConfig {
        TlsConfig {
            certfile: pki.server_cert.clone(),
            keyfile: pki.server_key.clone(),
            client_cafile: None,
            client_capath: None,
            client_auth_required: false,
        }
    }

    #[test]
    fn valid_configurations() {
        let pki = testpki::make(&tmpdir("valid"));
        let plain = base(&pki);
        validate(&plain).expect("server cert only");
        let cafile = TlsConfig {
            client_cafile: Some(pki.ca_file.clone()),
            client_auth_required: true,
            ..plain.clone()
        };
        validate(&cafile).expect("cafile, required");
        let capath = TlsConfig {
            client_capath: Some(pki.ca_dir.clone()),
            client_auth_required: false,
            ..plain.clone()
        };
        validate(&capath).expect("capath, optional");
        let _ = std::fs::remove_dir_all(&pki.dir);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tmpdir("errors");
        let pki = testpki::make(&dir);
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "hello\n").expect("write");
        let missing = dir.join("missing.pem");

        let err = validate(&TlsConfig {
            certfile: missing.clone(),
            ..base(&pki)
        })
        .expect_err("missing cert");
        assert!(
            err.contains("missing.pem") && err.contains("certificate"),
            "{err}"
        );

        let err = validate(&TlsConfig {
            certfile: garbage.clone(),
            ..base(&pki)
        })
        .expect_err("garbage cert");
        assert!(err.contains("garbage.pem"), "{err}");

        let err = validate(&TlsConfig {
            keyfile: garbage.clone(),
            ..base(&pki)
        })
        .expect_err("garbage key");
        assert!(err.contains("garbage.pem") && err.contains("key"), "{err}");

        // The CA's certificate given as the server key file: no key in it.
        let err = validate(&TlsConfig {
            keyfile: pki.ca_file.clone(),
            ..base(&pki)
        })
        .expect_err("cert as key");
        assert!(err.contains("ca.pem"), "{err}");

        let err = validate(&TlsConfig {
            client_cafile: Some(missing.clone()),
            ..base(&pki)
        })
        .expect_err("missing ca");
        assert!(
            err.contains("missing.pem") && err.contains("client CA"),
            "{err}"
        );

        let err = validate(&TlsConfig {
            client_capath: Some(dir.join("nodir")),
            ..base(&pki)
        })
        .expect_err("missing ca dir");
        assert!(err.contains("nodir"), "{err}");

        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty).expect("mkdir");
        let err = validate(&TlsConfig {
            client_capath: Some(empty.clone()),
            ..base(&pki)
        })
        .expect_err("empty ca dir");
        assert!(err.contains("empty"), "{err}");

        let err = validate(&TlsConfig {
            client_auth_required: true,
            ..base(&pki)
        })
        .expect_err("required without CA");
        assert!(err.contains("PROMETHEUS_SSL_CLIENT_CAFILE"), "{err}");

        // A key that does not belong to the certificate.
        let other = testpki::make(&dir.join("other"));
        let err = validate(&TlsConfig {
            keyfile: other.server_key.clone(),
            ..base(&pki)
        })
        .expect_err("mismatched key");
        assert!(err.contains("server.key"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
