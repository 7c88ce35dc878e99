//! The uwsgi protocol (gunicorn 27's `--protocol uwsgi`, for nginx's
//! `uwsgi_pass`): a binary request head the front end sends instead of an
//! HTTP one; the response is plain HTTP written back on the socket.
//!
//! A packet is a 4-byte header (modifier1 u8, datasize u16 little-endian,
//! modifier2 u8), then `datasize` bytes of vars (each a u16 LE key length,
//! the key, a u16 LE value length, the value), then the body, framed by the
//! `CONTENT_LENGTH` var.
//!
//! [`parse_uwsgi`] does not build a [`super::RequestHead`] itself: it
//! rewrites the vars as the equivalent HTTP/1.0 request head, which the
//! connection's [`super::HeadParser`] then parses like any other. So a
//! uwsgi request gets the same strictness and limits as an HTTP one
//! (limit_request_line, limit_request_fields, limit_request_field_size,
//! method and header validation), and everything downstream (environ,
//! scope, body, response) is the HTTP path's, unchanged and no slower.
//!
//! What becomes of the vars, as gunicorn's `UWSGIRequest`:
//! * `REQUEST_METHOD` (default GET), `PATH_INFO` (default /) and
//!   `QUERY_STRING` make the request line. PATH_INFO is already decoded by
//!   the front end: it is percent-encoded here so that the environ's
//!   PATH_INFO (decoded once) is the var as sent.
//! * `HTTP_FOO_BAR` becomes the header `FOO-BAR`; `CONTENT_TYPE` and
//!   `CONTENT_LENGTH` become `Content-Type` / `Content-Length` (an empty
//!   CONTENT_LENGTH, which nginx's uwsgi_params sends for a GET, is none).
//!   `HTTP_CONTENT_LENGTH`, `HTTP_CONTENT_TYPE` and `HTTP_TRANSFER_ENCODING`
//!   are dropped: the body is framed by CONTENT_LENGTH only (the front end
//!   has de-chunked it), as gunicorn's body reader does.
//! * `HTTPS` on/1/true, or `wsgi.url_scheme` / `UWSGI_SCHEME` = https:
//!   `wsgi.url_scheme` https.
//! * One request per connection: the head says HTTP/1.0 without
//!   keep-alive, so the response is never chunked (nginx passes a uwsgi
//!   response body through as opaque bytes, so chunk markers would reach
//!   the client) and is delimited by the connection's close.
//! * REMOTE_ADDR and SERVER_* come from the socket, as gunicorn's.

use super::HttpError;

/// gunicorn's `MAX_UWSGI_VARS`.
pub const MAX_VARS: usize = 1000;

/// Outcome of [`parse_uwsgi`].
#[derive(Debug, PartialEq, Eq)]
pub enum UwsgiParsed {
    /// Need more bytes (at most 4 + 65535 are ever buffered for a head).
    Partial,
    /// The first `consumed` bytes were the packet's header and vars; `head`
    /// is the HTTP request head that stands for them.
    Complete {
        head: Vec<u8>,
        consumed: usize,
        https: bool,
    },
}

fn invalid(what: &str) -> HttpError {
    HttpError::new(400, "Bad Request", format!("Invalid uWSGI header: {what}"))
}

/// The answer to a peer not in `uwsgi_allow_ips` (gunicorn's
/// `ForbiddenUWSGIRequest`, code 403).
pub fn forbidden(ip: &str) -> HttpError {
    HttpError::new(
        403,
        "Forbidden",
        format!("uWSGI request from '{ip}' not allowed"),
    )
}

/// Reads a little-endian u16 length at `pos`, or None past the end.
fn read_len(data: &[u8], pos: usize) -> Option<usize> {
    let end = pos.checked_add(2)?;
    let b = data.get(pos..end)?;
    Some(usize::from(u16::from_le_bytes([b[0], b[1]])))
}

/// A var's key and value, borrowed from the packet.
type Var<'b> = (&'b [u8], &'b [u8]);

/// Splits the vars block into (key, value) pairs.
fn parse_vars(data: &[u8]) -> Result<Vec<Var<'_>>, HttpError> {
    let mut vars = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        if vars.len() >= MAX_VARS {
            return Err(invalid("too many variables"));
        }
        let klen = read_len(data, pos).ok_or_else(|| invalid("truncated key size"))?;
        pos += 2;
        let kend = pos
            .checked_add(klen)
            .filter(|e| *e <= data.len())
            .ok_or_else(|| invalid("truncated key"))?;
        let key = &data[pos..kend];
        pos = kend;
        let vlen = read_len(data, pos).ok_or_else(|| invalid("truncated value size"))?;
        pos += 2;
        let vend = pos
            .checked_add(vlen)
            .filter(|e| *e <= data.len())
            .ok_or_else(|| invalid("truncated value"))?;
        vars.push((key, &data[pos..vend]));
        pos = vend;
    }
    Ok(vars)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Path bytes that go into the request line as they are; the rest are
/// percent-encoded (`%` included, so decoding gives back the var).
fn path_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b)
}

/// Parses a uwsgi packet head at the start of `buf`.
pub fn parse_uwsgi(buf: &[u8]) -> Result<UwsgiParsed, HttpError> {
    let Some(hdr) = buf.get(..4) else {
        return Ok(UwsgiParsed::Partial);
    };
    let modifier1 = hdr[0];
    if modifier1 != 0 {
        // gunicorn's UnsupportedModifier (code 501).
        return Err(HttpError::new(
            501,
            "Not Implemented",
            format!("Unsupported uWSGI modifier1: {modifier1}"),
        ));
    }
    let datasize = usize::from(u16::from_le_bytes([hdr[1], hdr[2]]));
    let consumed = 4 + datasize; // at most 65539: no overflow
    let Some(data) = buf.get(4..consumed) else {
        return Ok(UwsgiParsed::Partial);
    };
    let vars = parse_vars(data)?;

    // gunicorn keeps the vars in a dict: the last of a repeated key wins.
    let get = |name: &[u8]| vars.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let method = get(b"REQUEST_METHOD").unwrap_or(b"GET");
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
        return Err(invalid("invalid REQUEST_METHOD"));
    }
    let path = get(b"PATH_INFO").filter(|p| !p.is_empty()).unwrap_or(b"/");
    let query = get(b"QUERY_STRING").unwrap_or(b"");
    // The query goes into the request line as sent (QUERY_STRING is not
    // decoded): bytes that would end the target or the line are refused.
    if query.iter().any(|b| *b <= b' ' || *b == 0x7f || *b == b'#') {
        return Err(invalid("invalid QUERY_STRING"));
    }
    let https = get(b"HTTPS").is_some_and(|v| {
        v.eq_ignore_ascii_case(b"on") || v == b"1" || v.eq_ignore_ascii_case(b"true")
    }) || get(b"wsgi.url_scheme")
        .or_else(|| get(b"UWSGI_SCHEME"))
        .is_some_and(|v| v.eq_ignore_ascii_case(b"https"));

    let mut head = Vec::with_capacity(data.len() + 64);
    head.extend_from_slice(method);
    head.push(b' ');
    for &b in path {
        if path_safe(b) {
            head.push(b);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            head.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
    if !query.is_empty() {
        head.push(b'?');
        head.extend_from_slice(query);
    }
    head.extend_from_slice(b" HTTP/1.0\r\n");
    for (i, &(key, value)) in vars.iter().enumerate() {
        let name: &[u8] = match key {
            b"CONTENT_TYPE" => b"CONTENT-TYPE",
            b"CONTENT_LENGTH" if value.is_empty() => continue,
            b"CONTENT_LENGTH" => b"CONTENT-LENGTH",
            b"HTTP_CONTENT_LENGTH" | b"HTTP_CONTENT_TYPE" | b"HTTP_TRANSFER_ENCODING" => continue,
            // One request per connection, whatever the client asked for.
            b"HTTP_CONNECTION" => continue,
            k => match k.strip_prefix(b"HTTP_") {
                Some(n) => n,
                None => continue,
            },
        };
        // A later var of the same key replaces this one (see `get`).
        if vars[i + 1..].iter().any(|(k, _)| *k == key) {
            continue;
        }
        // The name and value are written into a head line: anything that
        // could end the line or the name is refused here, and the head
        // parser then judges the header as it judges an HTTP one.
        if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
            return Err(invalid("invalid header variable name"));
        }
        if value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(invalid("invalid header variable value"));
        }
        for &b in name {
            head.push(if b == b'_' { b'-' } else { b });
        }
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Ok(UwsgiParsed::Complete {
        head,
        consumed,
        https,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{BodyKind, HeadParser, Parsed, ParserConfig};

    /// Builds a packet from vars (and a body).
    pub(crate) fn packet(vars: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut data = Vec::new();
        for (k, v) in vars {
            data.extend_from_slice(&(k.len() as u16).to_le_bytes());
            data.extend_from_slice(k.as_bytes());
            data.extend_from_slice(&(v.len() as u16).to_le_bytes());
            data.extend_from_slice(v.as_bytes());
        }
        let mut p = vec![0u8];
        p.extend_from_slice(&(data.len() as u16).to_le_bytes());
        p.push(0);
        p.extend_from_slice(&data);
        p.extend_from_slice(body);
        p
    }

    fn complete(buf: &[u8]) -> (String, usize, bool) {
        match parse_uwsgi(buf) {
            Ok(UwsgiParsed::Complete {
                head,
                consumed,
                https,
            }) => (String::from_utf8_lossy(&head).into_owned(), consumed, https),
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn get_with_query_and_headers() {
        let p = packet(
            &[
                ("REQUEST_METHOD", "GET"),
                ("PATH_INFO", "/a b/%c"),
                ("QUERY_STRING", "x=1&y=%20"),
                ("HTTP_HOST", "example.com"),
                ("HTTP_X_FORWARDED_FOR", "10.0.0.1"),
                ("CONTENT_LENGTH", ""),
                ("CONTENT_TYPE", ""),
                ("HTTP_CONNECTION", "keep-alive"),
                ("REMOTE_ADDR", "10.0.0.1"),
            ],
            b"",
        );
        let (head, consumed, https) = complete(&p);
        assert_eq!(consumed, p.len());
        assert!(!https);
        assert_eq!(
            head,
            "GET /a%20b/%25c?x=1&y=%20 HTTP/1.0\r\nHOST: example.com\r\n\
             X-FORWARDED-FOR: 10.0.0.1\r\nCONTENT-TYPE: \r\n\r\n"
        );
        // The head parser takes it as an HTTP head, closing after it.
        let mut hp = HeadParser::default();
        match hp.parse(head.as_bytes(), &ParserConfig::default(), false) {
            Ok(Parsed::Complete { head: h, .. }) => {
                assert_eq!(h.path, b"/a%20b/%25c");
                assert_eq!(h.query, b"x=1&y=%20");
                assert!(!h.keep_alive);
                assert_eq!(h.body, BodyKind::None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn post_body_via_content_length() {
        let p = packet(
            &[
                ("REQUEST_METHOD", "POST"),
                ("CONTENT_LENGTH", "5"),
                ("HTTP_CONTENT_LENGTH", "5"),
                ("HTTP_TRANSFER_ENCODING", "chunked"),
                ("HTTPS", "on"),
            ],
            b"hello",
        );
        let (head, consumed, https) = complete(&p);
        assert_eq!(&p[consumed..], b"hello");
        assert!(https);
        assert_eq!(head, "POST / HTTP/1.0\r\nCONTENT-LENGTH: 5\r\n\r\n");
        let mut hp = HeadParser::default();
        match hp.parse(head.as_bytes(), &ParserConfig::default(), false) {
            Ok(Parsed::Complete { head: h, .. }) => assert_eq!(h.body, BodyKind::Length(5)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn scheme_vars() {
        for (k, v, https) in [
            ("HTTPS", "1", true),
            ("HTTPS", "off", false),
            ("wsgi.url_scheme", "https", true),
            ("UWSGI_SCHEME", "HTTPS", true),
            ("UWSGI_SCHEME", "http", false),
        ] {
            assert_eq!(complete(&packet(&[(k, v)], b"")).2, https, "{k}={v}");
        }
    }

    #[test]
    fn truncated_is_partial_until_complete() {
        let p = packet(&[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/x")], b"");
        for n in 0..p.len() {
            assert_eq!(parse_uwsgi(&p[..n]), Ok(UwsgiParsed::Partial), "{n}");
        }
        complete(&p);
    }

    #[test]
    fn bad_modifier_is_501() {
        let mut p = packet(&[], b"");
        p[0] = 5;
        assert_eq!(parse_uwsgi(&p).unwrap_err().status, 501);
    }

    #[test]
    fn lengths_overflowing_the_vars_block() {
        // A key length beyond the block, a value length beyond it, a lone
        // byte of a length: each refused, never read past the block.
        for data in [
            &[5u8, 0, b'a'][..],
            &[1, 0, b'a', 0xff, 0xff, b'b'][..],
            &[1, 0, b'a', 1][..],
            &[1][..],
        ] {
            let mut p = vec![0u8];
            p.extend_from_slice(&(data.len() as u16).to_le_bytes());
            p.push(0);
            p.extend_from_slice(data);
            // Whatever follows the block is not part of it.
            p.extend_from_slice(&[0xff; 16]);
            let e = parse_uwsgi(&p).unwrap_err();
            assert_eq!(e.status, 400, "{data:?}");
            assert!(e.detail.starts_with("Invalid uWSGI header"), "{e}");
        }
    }

    #[test]
    fn oversized_and_injection_refused() {
        let many: Vec<(String, String)> = (0..=MAX_VARS)
            .map(|i| (format!("V{i}"), String::new()))
            .collect();
        let vars: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            parse_uwsgi(&packet(&vars, b"")).unwrap_err().detail,
            "Invalid uWSGI header: too many variables"
        );
        for vars in [
            &[("HTTP_X", "a\r\nInjected: 1")][..],
            &[("HTTP_X:Y", "a")][..],
            &[("HTTP_", "a")][..],
            &[("REQUEST_METHOD", "GET /x")][..],
            &[("QUERY_STRING", "a b")][..],
            &[("QUERY_STRING", "a#b")][..],
        ] {
            assert_eq!(
                parse_uwsgi(&packet(vars, b"")).unwrap_err().status,
                400,
                "{vars:?}"
            );
        }
        // A field over limit_request_field_size is the head parser's 431,
        // as for HTTP.
        let big = "v".repeat(9000);
        let (head, ..) = complete(&packet(&[("HTTP_X_BIG", &big)], b""));
        let e = HeadParser::default()
            .parse(head.as_bytes(), &ParserConfig::default(), false)
            .unwrap_err();
        assert_eq!(e.status, 431);
    }

    #[test]
    fn repeated_var_last_wins() {
        let (head, ..) = complete(&packet(
            &[
                ("HTTP_X_A", "1"),
                ("PATH_INFO", "/a"),
                ("HTTP_X_A", "2"),
                ("PATH_INFO", "/b"),
            ],
            b"",
        ));
        assert_eq!(head, "GET /b HTTP/1.0\r\nX-A: 2\r\n\r\n");
    }
}
