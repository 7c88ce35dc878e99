//! One GET to the exporter, over plain HTTP or, when it serves HTTPS
//! (PROMETHEUS_SSL_CERTFILE), over TLS with the CA and client certificate
//! given on the command line.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

/// Bounds connecting to the exporter and each read.
const TIMEOUT: Duration = Duration::from_secs(3);

/// The largest `/workers` document read.
const MAX_DOC: u64 = 16 << 20;

/// `--cacert`, `--cert`, `--key`: how to speak to an HTTPS exporter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsArgs {
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsArgs {
    /// The client configuration, or None when no option asks for TLS.
    fn config(&self) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
        let client = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            _ => return Err("--cert and --key go together".to_owned()),
        };
        match &self.cacert {
            Some(ca) => crate::tls::client_config(ca, client).map(Some),
            None if client.is_some() => Err(
                "--cert and --key need --cacert FILE (the CA that signed the exporter's \
                 certificate)"
                    .to_owned(),
            ),
            None => Ok(None),
        }
    }
}

/// Where the exporter is and how to speak to it.
pub struct Endpoint {
    pub addr: SocketAddr,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl Endpoint {
    /// The exporter found at `addr` (by process): HTTPS when --cacert is
    /// given, its certificate checked against the address.
    pub fn found(addr: SocketAddr, tls: &TlsArgs) -> Result<Endpoint, String> {
        let tls = tls
            .config()?
            .map(|c| (c, ServerName::IpAddress(addr.ip().into())));
        Ok(Endpoint { addr, tls })
    }

    /// `HOST:PORT`, `http://HOST:PORT[/...]` or `https://HOST:PORT[/...]`
    /// (a certificate checked against HOST, which --cacert must trust).
    pub fn given(given: &str, tls: &TlsArgs) -> Result<Endpoint, String> {
        let (https, rest) = match given.strip_prefix("https://") {
            Some(rest) => (true, rest),
            None => (false, given.strip_prefix("http://").unwrap_or(given)),
        };
        let hostport = rest.split('/').next().unwrap_or(rest);
        let addr = hostport
            .to_socket_addrs()
            .map_err(|e| format!("--metrics {given}: {e} (give HOST:PORT)"))?
            .next()
            .ok_or_else(|| format!("--metrics {given}: the name has no address"))?;
        let config = tls.config()?;
        // No scheme: HTTPS when a CA is given.
        let https = https || (!given.starts_with("http://") && config.is_some());
        let tls = match (https, config) {
            (false, _) => None,
            (true, None) => {
                return Err(format!(
                    "--metrics {given}: an HTTPS exporter needs --cacert FILE (the CA that \
                     signed its certificate), and --cert FILE --key FILE when it requires \
                     client certificates"
                ))
            }
            (true, Some(c)) => {
                // "[::1]:80" -> "::1"; a name, or an address in its
                // certificate's IP names.
                let host = hostport
                    .rsplit_once(':')
                    .map_or(hostport, |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|e| format!("--metrics {given}: {host:?} is not a host name: {e}"))?;
                Some((c, name))
            }
        };
        Ok(Endpoint { addr, tls })
    }

    /// `http://ADDR` or `https://ADDR`, for messages.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// One GET; the body of a 200.
    pub fn get(&self, path: &str) -> Result<Vec<u8>, String> {
        let url = format!("{}{path}", self.url());
        let fail = |e: std::io::Error| format!("cannot read {url}: {e}");
        let tcp = TcpStream::connect_timeout(&self.addr, TIMEOUT).map_err(|e| {
            format!(
                "cannot connect to the metrics exporter at {}: {e} (is the server running?)",
                self.addr
            )
        })?;
        tcp.set_read_timeout(Some(TIMEOUT)).map_err(fail)?;
        tcp.set_write_timeout(Some(TIMEOUT)).map_err(fail)?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n\
             Connection: close\r\n\r\n",
            self.addr
        );
        let raw = match &self.tls {
            None => exchange(tcp, &request),
            Some((config, name)) => {
                let conn = rustls::ClientConnection::new(config.clone(), name.clone())
                    .map_err(|e| format!("cannot start TLS with {}: {e}", self.addr))?;
                exchange(rustls::StreamOwned::new(conn, tcp), &request)
            }
        }
        .map_err(fail)?;
        body_of(&raw, &url, self.tls.is_some())
    }
}

/// Sends `request`, reads the answer to the end of the stream.
fn exchange<S: Read + Write>(mut s: S, request: &str) -> std::io::Result<Vec<u8>> {
    s.write_all(request.as_bytes())?;
    s.flush()?;
    let mut raw = Vec::new();
    match s.take(MAX_DOC).read_to_end(&mut raw) {
        Ok(_) => Ok(raw),
        // The exporter closes after `Connection: close` without a TLS
        // close_notify; a short body is caught by its Content-Length.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => Ok(raw),
        Err(e) => Err(e),
    }
}

/// The body of a complete 200 answer.
fn body_of(raw: &[u8], url: &str, https: bool) -> Result<Vec<u8>, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            if https {
                format!("no HTTP answer from {url}")
            } else {
                format!(
                    "no HTTP answer from {url} (an HTTPS exporter? give --cacert FILE, and \
                     --cert FILE --key FILE when it requires client certificates)"
                )
            }
        })?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("no HTTP status from {url}"))?;
    if status == 404 {
        return Err(format!(
            "{url}: not found (is it a ferrocorn exporter of this version?)"
        ));
    }
    if status != 200 {
        return Err(format!("{url}: HTTP status {status}"));
    }
    if head.contains("transfer-encoding: chunked") {
        return Err(format!(
            "{url}: a chunked answer (not a ferrocorn exporter?)"
        ));
    }
    let body = &raw[split + 4..];
    let declared = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    if let Some(n) = declared.filter(|&n| n != body.len()) {
        return Err(format!(
            "{url}: the answer was cut short ({} of {n} bytes)",
            body.len()
        ));
    }
    Ok(body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let none = TlsArgs::default();
        let e = Endpoint::given("http://127.0.0.1:9090/metrics", &none).unwrap();
        assert_eq!(e.addr, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(e.url(), "http://127.0.0.1:9090");
        let e = Endpoint::given("[::1]:80", &none).unwrap();
        assert_eq!(e.addr, "[::1]:80".parse().unwrap());
        assert!(Endpoint::given("https://127.0.0.1:1", &none)
            .err()
            .unwrap()
            .contains("needs --cacert"));
        assert!(Endpoint::given("nonsense", &none).is_err());
        // --cacert makes a bare HOST:PORT HTTPS, never an explicit http://.
        let dir = std::env::temp_dir().join(format!("fc-top-http-{}", std::process::id()));
        let pki = crate::exporter::tls::testpki::make(&dir);
        let ca = TlsArgs {
            cacert: Some(pki.ca_file.clone()),
            ..TlsArgs::default()
        };
        let url = |given: &str| Endpoint::given(given, &ca).map(|e| e.url());
        assert_eq!(url("127.0.0.1:9").unwrap(), "https://127.0.0.1:9");
        assert_eq!(url("http://127.0.0.1:9").unwrap(), "http://127.0.0.1:9");
        let _ = std::fs::remove_dir_all(&dir);
        let half = TlsArgs {
            cert: Some("c.pem".into()),
            ..TlsArgs::default()
        };
        assert!(Endpoint::given("127.0.0.1:1", &half)
            .err()
            .unwrap()
            .contains("go together"));
        let missing = TlsArgs {
            cacert: Some("/nonexistent/ca.pem".into()),
            ..TlsArgs::default()
        };
        assert!(Endpoint::given("https://127.0.0.1:1", &missing)
            .err()
            .unwrap()
            .contains("cannot read CA file /nonexistent/ca.pem"));
    }

    #[test]
    fn answers() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(body_of(ok, "u", false).unwrap(), b"{}");
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}";
        assert!(body_of(short, "u", false)
            .unwrap_err()
            .contains("cut short"));
        let missing = b"HTTP/1.1 404 Not Found\r\n\r\n";
        assert!(body_of(missing, "u", false)
            .unwrap_err()
            .contains("not found"));
        assert!(body_of(b"\x15\x03\x03\x00\x02\x02\x46", "u", false)
            .unwrap_err()
            .contains("give --cacert"));
    }
}
