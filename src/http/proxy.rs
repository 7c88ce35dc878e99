//! PROXY protocol v1 (text) and v2 (binary), as gunicorn 27's
//! `--proxy-protocol off|v1|v2|auto`.
//!
//! gunicorn only looks for a PROXY header at the start of a connection
//! (its first request). The caller must also apply `proxy_allow_ips`:
//! gunicorn checks the peer as soon as a signature is recognised, before
//! parsing the rest, and answers 403 "Forbidden" / "Request forbidden" for
//! a peer not in the list (`*` allows all; unix-socket peers are always
//! allowed). Use [`detect_proxy`] to learn whether a header is present
//! before parsing it with [`parse_proxy`].
//!
//! Deviations from gunicorn: a v1 line longer than [`V1_MAX_LINE`] bytes
//! without CRLF is refused (gunicorn reads on forever); v1 ports must be
//! plain decimal digits (gunicorn uses Python's `int()`, which also takes
//! `+80`, `8_0` or surrounding whitespace); a malformed v2 header is 400 here
//! (gunicorn 27's worker does not list `InvalidProxyHeader` among client
//! errors and answers 500).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::HttpError;

/// gunicorn `proxy_protocol` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    Off,
    V1,
    V2,
    Auto,
}

/// Bound on a v1 line (the spec's maximum is 107 bytes incl. CRLF; some
/// slack for zero-padded ports).
pub const V1_MAX_LINE: usize = 256;

/// The v2 signature.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\x00\r\nQUIT\n";

/// What a PROXY header said; how gunicorn 27 puts it into the environ
/// (`proxy_environ`, applied after the socket's own REMOTE_ADDR/PORT, so it
/// overrides them):
///
/// | environ key      | value                                                      |
/// |------------------|------------------------------------------------------------|
/// | `PROXY_PROTOCOL` | `proto`                                                    |
/// | `REMOTE_ADDR`    | `client_host` (Python `None` when absent)                  |
/// | `REMOTE_PORT`    | `client_addr.port()` as decimal; the string `"None"` when absent |
/// | `PROXY_ADDR`     | `proxy_host` (Python `None` when absent)                   |
/// | `PROXY_PORT`     | `proxy_addr.port()` as decimal; the string `"None"` when absent |
///
/// (gunicorn literally does `str(None)` for the ports of a v2 LOCAL or
/// UNSPEC header, and stores `None` for the addresses.) The `*_host`
/// strings are exactly what gunicorn stores: for v1 the address text as
/// received (e.g. `::FFFF:1.2.3.4` keeps its case), for v2 C `inet_ntop`'s
/// rendering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyInfo {
    /// `"TCP4"`, `"TCP6"` (v1 and v2 PROXY), `"LOCAL"` (v2 LOCAL command),
    /// `"UNSPEC"` (v2 PROXY with AF_UNSPEC). gunicorn refuses v1
    /// `UNKNOWN` (400), and v2 UDP / unix families (400).
    pub proto: String,
    /// Source address (the real client): REMOTE_ADDR / REMOTE_PORT.
    pub client_addr: Option<SocketAddr>,
    /// Destination address (the proxy's listener): PROXY_ADDR / PROXY_PORT.
    pub proxy_addr: Option<SocketAddr>,
    /// REMOTE_ADDR text.
    pub client_host: Option<String>,
    /// PROXY_ADDR text.
    pub proxy_host: Option<String>,
}

/// Outcome of [`parse_proxy`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyParsed {
    /// Need more bytes.
    Partial,
    /// No PROXY header (or mode off): parse the buffer as HTTP, unchanged.
    NotProxy,
    /// A header of `consumed` bytes; HTTP starts right after it.
    Complete { info: ProxyInfo, consumed: usize },
}

/// Outcome of [`detect_proxy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyDetect {
    Partial,
    NotProxy,
    V1,
    V2,
}

/// Whether `buf` starts with a PROXY header allowed by `mode` (v2
/// signature first, then `"PROXY "`), without validating it.
pub fn detect_proxy(buf: &[u8], mode: ProxyMode) -> ProxyDetect {
    let v1 = matches!(mode, ProxyMode::V1 | ProxyMode::Auto);
    let v2 = matches!(mode, ProxyMode::V2 | ProxyMode::Auto);
    if v2 {
        if buf.starts_with(V2_SIGNATURE) {
            return ProxyDetect::V2;
        }
        if buf.len() < V2_SIGNATURE.len() && V2_SIGNATURE.starts_with(buf) {
            return ProxyDetect::Partial;
        }
    }
    if v1 {
        if buf.starts_with(b"PROXY ") {
            return ProxyDetect::V1;
        }
        if buf.len() < 6 && b"PROXY ".starts_with(buf) {
            return ProxyDetect::Partial;
        }
    }
    ProxyDetect::NotProxy
}

fn invalid_line(line: &[u8]) -> HttpError {
    HttpError::bad_request(format!("'Invalid PROXY line: {}'", super::repr(line)))
}

fn invalid_header(msg: &str) -> HttpError {
    HttpError::bad_request(format!("Invalid PROXY header: {}", msg))
}

/// Parse a PROXY header at the start of a connection.
pub fn parse_proxy(buf: &[u8], mode: ProxyMode) -> Result<ProxyParsed, HttpError> {
    match detect_proxy(buf, mode) {
        ProxyDetect::Partial => Ok(ProxyParsed::Partial),
        ProxyDetect::NotProxy => Ok(ProxyParsed::NotProxy),
        ProxyDetect::V1 => parse_v1(buf),
        ProxyDetect::V2 => parse_v2(buf),
    }
}

fn parse_v1(buf: &[u8]) -> Result<ProxyParsed, HttpError> {
    let Some(idx) = memchr::memmem::find(buf, b"\r\n") else {
        if buf.len() > V1_MAX_LINE {
            return Err(invalid_line(&buf[..V1_MAX_LINE]));
        }
        return Ok(ProxyParsed::Partial);
    };
    let line = &buf[..idx];
    if idx + 2 > V1_MAX_LINE {
        return Err(invalid_line(line));
    }
    let bits: Vec<&[u8]> = line.split(|&c| c == b' ').collect();
    if bits.len() != 6 {
        return Err(invalid_line(line));
    }
    let proto = bits[1];
    let (s, d) = (
        std::str::from_utf8(bits[2]).map_err(|_| invalid_line(line))?,
        std::str::from_utf8(bits[3]).map_err(|_| invalid_line(line))?,
    );
    let (s_ip, d_ip): (IpAddr, IpAddr) = match proto {
        b"TCP4" => (
            s.parse::<Ipv4Addr>()
                .map_err(|_| invalid_line(line))?
                .into(),
            d.parse::<Ipv4Addr>()
                .map_err(|_| invalid_line(line))?
                .into(),
        ),
        b"TCP6" => (
            s.parse::<Ipv6Addr>()
                .map_err(|_| invalid_line(line))?
                .into(),
            d.parse::<Ipv6Addr>()
                .map_err(|_| invalid_line(line))?
                .into(),
        ),
        _ => {
            return Err(HttpError::bad_request(format!(
                "'Invalid PROXY line: \"protocol {} not supported\"'",
                super::repr(proto)
            )))
        }
    };
    let port = |b: &[u8]| -> Result<u16, HttpError> {
        if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
            return Err(invalid_line(line));
        }
        let mut n: u32 = 0;
        for &c in b {
            n = n * 10 + u32::from(c - b'0');
            if n > 65535 {
                return Err(invalid_line(line));
            }
        }
        u16::try_from(n).map_err(|_| invalid_line(line))
    };
    let (s_port, d_port) = (port(bits[4])?, port(bits[5])?);
    Ok(ProxyParsed::Complete {
        info: ProxyInfo {
            proto: if proto == b"TCP4" { "TCP4" } else { "TCP6" }.to_string(),
            client_addr: Some(SocketAddr::new(s_ip, s_port)),
            proxy_addr: Some(SocketAddr::new(d_ip, d_port)),
            client_host: Some(s.to_string()),
            proxy_host: Some(d.to_string()),
        },
        consumed: idx + 2,
    })
}

fn parse_v2(buf: &[u8]) -> Result<ProxyParsed, HttpError> {
    if buf.len() < 16 {
        return Ok(ProxyParsed::Partial);
    }
    let ver_cmd = buf[12];
    let fam_proto = buf[13];
    let length = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let version = ver_cmd >> 4;
    if version != 2 {
        return Err(invalid_header(&format!("unsupported version {}", version)));
    }
    let command = ver_cmd & 0x0f;
    if command > 1 {
        return Err(invalid_header(&format!("unsupported command {}", command)));
    }
    let total = 16 + length;
    if buf.len() < total {
        return Ok(ProxyParsed::Partial);
    }
    let none = |proto: &str| ProxyParsed::Complete {
        info: ProxyInfo {
            proto: proto.to_string(),
            client_addr: None,
            proxy_addr: None,
            client_host: None,
            proxy_host: None,
        },
        consumed: total,
    };
    if command == 0 {
        return Ok(none("LOCAL"));
    }
    let family = fam_proto >> 4;
    if fam_proto & 0x0f != 1 {
        return Err(invalid_header("only TCP protocol is supported"));
    }
    let a = &buf[16..total];
    let (s_ip, d_ip, s_port, d_port, proto): (IpAddr, IpAddr, u16, u16, &str) = match family {
        1 => {
            if a.len() < 12 {
                return Err(invalid_header("insufficient address data for IPv4"));
            }
            (
                Ipv4Addr::new(a[0], a[1], a[2], a[3]).into(),
                Ipv4Addr::new(a[4], a[5], a[6], a[7]).into(),
                u16::from_be_bytes([a[8], a[9]]),
                u16::from_be_bytes([a[10], a[11]]),
                "TCP4",
            )
        }
        2 => {
            if a.len() < 36 {
                return Err(invalid_header("insufficient address data for IPv6"));
            }
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&a[0..16]);
            d.copy_from_slice(&a[16..32]);
            (
                Ipv6Addr::from(s).into(),
                Ipv6Addr::from(d).into(),
                u16::from_be_bytes([a[32], a[33]]),
                u16::from_be_bytes([a[34], a[35]]),
                "TCP6",
            )
        }
        0 => return Ok(none("UNSPEC")),
        f => return Err(invalid_header(&format!("unsupported address family {}", f))),
    };
    Ok(ProxyParsed::Complete {
        info: ProxyInfo {
            proto: proto.to_string(),
            client_addr: Some(SocketAddr::new(s_ip, s_port)),
            proxy_addr: Some(SocketAddr::new(d_ip, d_port)),
            client_host: Some(inet_ntop(s_ip)),
            proxy_host: Some(inet_ntop(d_ip)),
        },
        consumed: total,
    })
}

/// C `inet_ntop` rendering (what Python's `socket.inet_ntop` returns). Rust's
/// `Display` agrees except for IPv4-compatible `::a.b.c.d`.
pub fn inet_ntop(ip: IpAddr) -> String {
    if let IpAddr::V6(v6) = ip {
        let w = v6.segments();
        if w[..6].iter().all(|&x| x == 0) && w[6] != 0 {
            let o = v6.octets();
            return format!("::{}.{}.{}.{}", o[12], o[13], o[14], o[15]);
        }
    }
    ip.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8], mode: ProxyMode) -> (ProxyInfo, usize) {
        match parse_proxy(buf, mode) {
            Ok(ProxyParsed::Complete { info, consumed }) => (info, consumed),
            other => panic!("{:?}", other),
        }
    }

    fn v2(cmd: u8, fam: u8, addr: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(cmd);
        b.push(fam);
        b.extend_from_slice(&(addr.len() as u16).to_be_bytes());
        b.extend_from_slice(addr);
        b.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        b
    }

    #[test]
    fn v1_valid() {
        let buf = b"PROXY TCP4 192.168.0.1 10.0.0.2 56324 443\r\nGET / HTTP/1.1\r\n\r\n";
        let (i, n) = complete(buf, ProxyMode::V1);
        assert_eq!(&buf[n..], b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(i.proto, "TCP4");
        assert_eq!(i.client_addr, Some("192.168.0.1:56324".parse().unwrap()));
        assert_eq!(i.proxy_addr, Some("10.0.0.2:443".parse().unwrap()));
        assert_eq!(i.client_host.as_deref(), Some("192.168.0.1"));
        assert_eq!(complete(buf, ProxyMode::Auto).1, n);
        let buf = b"PROXY TCP6 ::FFFF:1.2.3.4 2001:db8::1 0 65535\r\n";
        let (i, _) = complete(buf, ProxyMode::Auto);
        assert_eq!(i.proto, "TCP6");
        assert_eq!(i.client_host.as_deref(), Some("::FFFF:1.2.3.4"));
        assert_eq!(i.proxy_addr.unwrap().port(), 65535);
        // every prefix is Partial
        for k in 0..buf.len() {
            assert_eq!(
                parse_proxy(&buf[..k], ProxyMode::V1).unwrap(),
                ProxyParsed::Partial,
                "{k}"
            );
        }
    }

    #[test]
    fn v1_invalid() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY UNKNOWN\r\n",
            b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 x 2\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            let e = parse_proxy(bad, ProxyMode::V1).unwrap_err();
            assert_eq!(e.status, 400, "{:?}", bad.escape_ascii().to_string());
        }
        // no CRLF within the bound
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend(std::iter::repeat_n(b'1', 300));
        assert_eq!(parse_proxy(&long, ProxyMode::V1).unwrap_err().status, 400);
    }

    #[test]
    fn modes() {
        let v1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\n\r\n";
        let v2b = v2(0x21, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 80, 1, 187]);
        assert_eq!(
            parse_proxy(v1, ProxyMode::Off).unwrap(),
            ProxyParsed::NotProxy
        );
        assert_eq!(
            parse_proxy(v1, ProxyMode::V2).unwrap(),
            ProxyParsed::NotProxy
        );
        assert_eq!(
            parse_proxy(&v2b, ProxyMode::V1).unwrap(),
            ProxyParsed::NotProxy
        );
        assert_eq!(
            parse_proxy(&v2b, ProxyMode::Off).unwrap(),
            ProxyParsed::NotProxy
        );
        assert!(matches!(
            parse_proxy(&v2b, ProxyMode::Auto).unwrap(),
            ProxyParsed::Complete { .. }
        ));
        let http = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(
            parse_proxy(http, ProxyMode::Auto).unwrap(),
            ProxyParsed::NotProxy
        );
        assert_eq!(
            parse_proxy(b"PRO", ProxyMode::Auto).unwrap(),
            ProxyParsed::Partial
        );
        assert_eq!(
            parse_proxy(b"\r\n\r", ProxyMode::Auto).unwrap(),
            ProxyParsed::Partial
        );
        assert_eq!(
            parse_proxy(b"\r\n\r", ProxyMode::V1).unwrap(),
            ProxyParsed::NotProxy
        );
        assert_eq!(
            parse_proxy(b"", ProxyMode::Auto).unwrap(),
            ProxyParsed::Partial
        );
        assert_eq!(detect_proxy(v1, ProxyMode::Auto), ProxyDetect::V1);
        assert_eq!(detect_proxy(&v2b, ProxyMode::Auto), ProxyDetect::V2);
    }

    #[test]
    fn v2_valid() {
        let b = v2(0x21, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 80, 1, 187]);
        let (i, n) = complete(&b, ProxyMode::V2);
        assert_eq!(n, 28);
        assert_eq!(&b[n..], b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(i.proto, "TCP4");
        assert_eq!(i.client_addr, Some("1.2.3.4:80".parse().unwrap()));
        assert_eq!(i.proxy_addr, Some("5.6.7.8:443".parse().unwrap()));
        assert_eq!(i.proxy_host.as_deref(), Some("5.6.7.8"));
        // TLVs after the addresses are skipped
        let b = v2(
            0x21,
            0x11,
            &[1, 2, 3, 4, 5, 6, 7, 8, 0, 80, 1, 187, 0x04, 0, 1, 9],
        );
        assert_eq!(complete(&b, ProxyMode::V2).1, 32);
        // IPv6
        let mut a = vec![0u8; 36];
        a[15] = 1; // ::1
        a[16] = 0x20;
        a[17] = 0x01;
        a[31] = 2;
        a[32..34].copy_from_slice(&8080u16.to_be_bytes());
        a[34..36].copy_from_slice(&443u16.to_be_bytes());
        let b = v2(0x21, 0x21, &a);
        let (i, n) = complete(&b, ProxyMode::Auto);
        assert_eq!((i.proto.as_str(), n), ("TCP6", 52));
        assert_eq!(i.client_host.as_deref(), Some("::1"));
        assert_eq!(i.proxy_host.as_deref(), Some("2001::2"));
        assert_eq!(i.client_addr.unwrap().port(), 8080);
        // LOCAL: no addresses, whatever the family
        let b = v2(0x20, 0x00, &[]);
        let (i, n) = complete(&b, ProxyMode::V2);
        assert_eq!((i.proto.as_str(), n, i.client_addr), ("LOCAL", 16, None));
        let b = v2(0x20, 0x11, &[0; 12]);
        assert_eq!(complete(&b, ProxyMode::V2).0.proto, "LOCAL");
        // PROXY + UNSPEC/STREAM
        let b = v2(0x21, 0x01, &[]);
        let (i, _) = complete(&b, ProxyMode::V2);
        assert_eq!((i.proto.as_str(), i.proxy_addr), ("UNSPEC", None));
        // every prefix is Partial
        let b = v2(0x21, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 80, 1, 187]);
        for k in 0..28 {
            assert_eq!(
                parse_proxy(&b[..k], ProxyMode::Auto).unwrap(),
                ProxyParsed::Partial,
                "{k}"
            );
        }
    }

    #[test]
    fn v2_invalid() {
        for (cmd, fam, addr) in [
            (0x11u8, 0x11u8, &[0u8; 12][..]), // version 1
            (0x31, 0x11, &[0; 12]),           // version 3
            (0x22, 0x11, &[0; 12]),           // command 2
            (0x21, 0x12, &[0; 12]),           // UDP
            (0x21, 0x00, &[]),                // UNSPEC/UNSPEC protocol
            (0x21, 0x11, &[0; 11]),           // short IPv4
            (0x21, 0x21, &[0; 35]),           // short IPv6
            (0x21, 0x31, &[0; 216]),          // unix
            (0x21, 0x41, &[0; 12]),           // unknown family
        ] {
            let b = v2(cmd, fam, addr);
            assert_eq!(
                parse_proxy(&b, ProxyMode::V2).unwrap_err().status,
                400,
                "{cmd:x} {fam:x}"
            );
        }
    }

    #[test]
    fn ntop() {
        assert_eq!(inet_ntop("::1.2.3.4".parse().unwrap()), "::1.2.3.4");
        assert_eq!(
            inet_ntop("::ffff:1.2.3.4".parse().unwrap()),
            "::ffff:1.2.3.4"
        );
        assert_eq!(inet_ntop("::1".parse().unwrap()), "::1");
        assert_eq!(inet_ntop("::".parse().unwrap()), "::");
        assert_eq!(inet_ntop("2001:db8::1".parse().unwrap()), "2001:db8::1");
    }
}
