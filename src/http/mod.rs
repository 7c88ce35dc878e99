//! HTTP/1.x request parsing with gunicorn 27's rules (RFC 9110 / RFC 9112).
//!
//! * [`HeadParser`] parses a request head (request line + header fields)
//!   from a connection buffer as it grows over several reads, examining only
//!   the new bytes each time, and enforcing gunicorn's limits also on
//!   incomplete input so the caller never buffers unbounded data.
//! * [`chunked::ChunkedDecoder`] decodes a `Transfer-Encoding: chunked` body.
//! * [`proxy::parse_proxy`] parses a PROXY protocol v1/v2 preamble.
//! * [`uwsgi::parse_uwsgi`] turns a uwsgi packet (--protocol uwsgi) into
//!   the HTTP head the head parser then parses.
//!
//! # String conversion (what gunicorn puts in the WSGI environ)
//!
//! gunicorn decodes every byte string that reaches the environ as **latin-1**
//! (`bytes.decode("latin-1")`, PEP 3333 "native strings"): each byte 0x00-0xFF
//! becomes the code point of the same value, so the conversion never fails
//! and is reversible. Use [`latin1_to_string`].
//!
//! * `REQUEST_METHOD`: the method (ASCII token), upper-cased only with
//!   `casefold_http_method`.
//! * `RAW_URI`: [`RequestHead::uri`] as received.
//! * `QUERY_STRING`: [`RequestHead::query`], *not* percent-decoded.
//! * `PATH_INFO`: [`RequestHead::path`] with `SCRIPT_NAME` stripped from its
//!   front (gunicorn answers 500 when the path does not start with it), then
//!   `urllib.parse.unquote_to_bytes(..).decode("latin-1")`: see
//!   [`percent_decode_path`] + [`latin1_to_string`].
//! * `HTTP_*`: header name upper-cased, `-` replaced by `_`, value latin-1.
//!   Repeated names are joined with `","`. `CONTENT-TYPE` and
//!   `CONTENT-LENGTH` go to `CONTENT_TYPE` / `CONTENT_LENGTH` instead (the
//!   last one wins, though duplicates of both are rejected here). A `HOST`
//!   header feeds `SERVER_NAME`/`SERVER_PORT` for unix sockets; a
//!   `SCRIPT_NAME` header (only present when it survived the `_` policy, i.e.
//!   from a trusted forwarder listed in `forwarder_headers`, or with
//!   `header_map=dangerous`) overrides the `SCRIPT_NAME` environment value.
//! * `SERVER_PROTOCOL`: `"HTTP/{major}.{minor}"` from [`RequestHead::version`].
//!
//! Not handled here (needs configuration this module does not see):
//! `secure_scheme_headers` (gunicorn: contradictory scheme headers → 400
//! "Contradictory scheme headers", only for trusted peers) and the
//! `proxy_allow_ips` check (403), see [`proxy`].

pub mod allowlist;
pub mod chunked;
pub mod date;
#[cfg(test)]
mod fuzz;
pub mod owned;
pub mod proxy;
mod request;
pub mod response;
pub mod uwsgi;

#[cfg(test)]
pub use request::parse_request;
pub use request::{HeadParser, Parsed, RequestHead};

/// What to do with header names containing `_` (gunicorn `header_map`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderMap {
    /// Silently drop the header (gunicorn default).
    Drop,
    /// Refuse the request: 400 "Invalid HTTP header name".
    Refuse,
    /// Keep it (it will collide with the `-` spelling in the environ).
    Dangerous,
}

/// gunicorn's hard cap on `limit_request_line`.
pub const MAX_REQUEST_LINE: usize = 8190;
/// gunicorn's hard cap on `limit_request_fields`.
pub const MAX_HEADERS: usize = 32768;
/// gunicorn's `limit_request_field_size` fallback.
pub const DEFAULT_MAX_HEADERFIELD_SIZE: usize = 8190;
/// Request-line bound used when `limit_request_line = 0` ("unlimited"):
/// gunicorn's C parser uses the same 1 MiB; we need *some* bound so the
/// caller never buffers without limit.
pub const UNLIMITED_REQUEST_LINE: usize = 1024 * 1024;

/// Parser settings, named and defaulted as gunicorn 27's settings.
#[derive(Clone, Debug)]
pub struct ParserConfig {
    /// Max request-line length (without CRLF). 0 = "unlimited" (bounded at
    /// [`UNLIMITED_REQUEST_LINE`]); values above 8190 are capped at 8190.
    pub limit_request_line: usize,
    /// Max number of header fields. 0 or > 32768 means 32768 (gunicorn).
    pub limit_request_fields: usize,
    /// Max size of one header field line (incl. CRLF and folded lines).
    /// gunicorn documents 0 as unlimited but its parser then uses 8190;
    /// we do the same.
    pub limit_request_field_size: usize,
    pub permit_obsolete_folding: bool,
    pub strip_header_spaces: bool,
    pub permit_unconventional_http_method: bool,
    pub permit_unconventional_http_version: bool,
    pub casefold_http_method: bool,
    pub header_map: HeaderMap,
    /// Upper-case header names (with `_`) a trusted forwarder may set; `"*"`
    /// means all. Compared like gunicorn: the received name upper-cased must
    /// equal an entry exactly (entries are not case-folded, so a lower-case
    /// entry never matches).
    pub forwarder_headers: Vec<String>,
}

impl Default for ParserConfig {
    fn default() -> Self {
        ParserConfig {
            limit_request_line: 4094,
            limit_request_fields: 100,
            limit_request_field_size: 8190,
            permit_obsolete_folding: false,
            strip_header_spaces: false,
            permit_unconventional_http_method: false,
            permit_unconventional_http_version: false,
            casefold_http_method: false,
            header_map: HeaderMap::Drop,
            forwarder_headers: vec!["SCRIPT_NAME".to_string(), "PATH_INFO".to_string()],
        }
    }
}

/// Effective limits, normalised the way gunicorn's `Message.__init__` does.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub request_line: usize,
    pub fields: usize,
    pub field_size: usize,
    /// `fields * (field_size + 2) + 4`: bound on the buffered head
    /// (gunicorn `max_buffer_headers`), also the trailer-section bound.
    pub max_buffer: usize,
}

impl Limits {
    pub(crate) fn new(request_line: usize, fields: usize, field_size: usize) -> Limits {
        let request_line = match request_line {
            0 => UNLIMITED_REQUEST_LINE,
            n => n.min(MAX_REQUEST_LINE),
        };
        let fields = if fields == 0 || fields > MAX_HEADERS {
            MAX_HEADERS
        } else {
            fields
        };
        let field_size = if field_size == 0 {
            DEFAULT_MAX_HEADERFIELD_SIZE
        } else {
            field_size
        };
        Limits {
            request_line,
            fields,
            field_size,
            max_buffer: fields
                .saturating_mul(field_size.saturating_add(2))
                .saturating_add(4),
        }
    }

    pub(crate) fn from_cfg(cfg: &ParserConfig) -> Limits {
        Limits::new(
            cfg.limit_request_line,
            cfg.limit_request_fields,
            cfg.limit_request_field_size,
        )
    }
}

/// How the request body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// No body (no Content-Length, no Transfer-Encoding).
    None,
    /// `Content-Length: n` (n may be 0).
    Length(u64),
    /// `Transfer-Encoding: ..., chunked`: use [`chunked::ChunkedDecoder`].
    Chunked,
}

/// A request that cannot be served; `status` is gunicorn 27's status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    /// Reason phrase as gunicorn sends it (note: gunicorn sends
    /// "501 Bad Request" for an unsupported transfer coding).
    pub reason: &'static str,
    /// gunicorn's message for this error (the text of its error page and,
    /// mostly, of its "Invalid request from ip=..." log line).
    pub detail: String,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.reason, self.detail)
    }
}

impl std::error::Error for HttpError {}

impl HttpError {
    pub fn new(status: u16, reason: &'static str, detail: String) -> HttpError {
        HttpError {
            status,
            reason,
            detail,
        }
    }

    pub(crate) fn bad_request(detail: String) -> HttpError {
        HttpError::new(400, "Bad Request", detail)
    }

    pub(crate) fn invalid_request_line(line: &[u8]) -> HttpError {
        HttpError::bad_request(format!(
            "Invalid Request Line 'Invalid HTTP request line: {}'",
            repr(line)
        ))
    }

    pub(crate) fn invalid_method(method: &[u8]) -> HttpError {
        HttpError::bad_request(format!(
            "Invalid Method 'Invalid HTTP method: {}'",
            repr(method)
        ))
    }

    pub(crate) fn invalid_version(what: String) -> HttpError {
        HttpError::bad_request(format!(
            "Invalid HTTP Version 'Invalid HTTP Version: {}'",
            what
        ))
    }

    pub(crate) fn invalid_header(hdr: &[u8]) -> HttpError {
        HttpError::bad_request(format!("Invalid HTTP Header: {}", repr(hdr)))
    }

    pub(crate) fn invalid_header_name(name: &[u8]) -> HttpError {
        HttpError::bad_request(format!("Invalid HTTP header name: {}", repr(name)))
    }

    pub(crate) fn obsolete_folding(name: &[u8]) -> HttpError {
        HttpError::bad_request(format!(
            "Obsolete line folding is unacceptable: {}",
            repr(name)
        ))
    }

    pub(crate) fn limit_request_line(size: usize, max: usize) -> HttpError {
        HttpError::new(
            414,
            "URI Too Long",
            format!("Request Line is too large ({} > {})", size, max),
        )
    }

    pub(crate) fn limit_headers(msg: &str) -> HttpError {
        HttpError::new(
            431,
            "Request Header Fields Too Large",
            format!("Error parsing headers: '{}'", msg),
        )
    }

    pub(crate) fn expectation_failed(value: &[u8]) -> HttpError {
        HttpError::new(
            417,
            "Expectation Failed",
            format!("Unable to comply with expectation: {}", repr(value)),
        )
    }

    pub(crate) fn unsupported_coding(value: &[u8]) -> HttpError {
        // gunicorn changes only the status code, keeping "Bad Request".
        HttpError::new(
            501,
            "Bad Request",
            format!("Unsupported transfer coding: {}", repr(value)),
        )
    }

    /// The complete error response for this error ([`error_response`]).
    pub fn response_bytes(&self) -> Vec<u8> {
        error_response(self.status, self.reason, &self.detail)
    }
}

/// The complete error response gunicorn's `util.write_error` sends:
/// `HTTP/1.1 {status} {reason}`, `Connection: close`,
/// `Content-Type: text/html`, `Content-Length`, and a small HTML page with
/// the reason and the HTML-escaped detail. Every error page ferrocorn sends
/// is rendered here.
pub fn error_response(status: u16, reason: &str, detail: &str) -> Vec<u8> {
    let mut body = String::with_capacity(160 + detail.len());
    body.push_str("<html>\n  <head>\n    <title>");
    body.push_str(reason);
    body.push_str("</title>\n  </head>\n  <body>\n    <h1><p>");
    body.push_str(reason);
    body.push_str("</p></h1>\n    ");
    html_escape_into(detail, &mut body);
    body.push_str("\n  </body>\n</html>\n");
    let body = latin1_encode(&body);
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// The status line of a status code ("200 OK"), without allocating for
/// the common ones.
pub fn status_line(code: u16) -> std::borrow::Cow<'static, str> {
    match code {
        200 => "200 OK".into(),
        201 => "201 Created".into(),
        204 => "204 No Content".into(),
        301 => "301 Moved Permanently".into(),
        302 => "302 Found".into(),
        304 => "304 Not Modified".into(),
        307 => "307 Temporary Redirect".into(),
        400 => "400 Bad Request".into(),
        401 => "401 Unauthorized".into(),
        403 => "403 Forbidden".into(),
        404 => "404 Not Found".into(),
        422 => "422 Unprocessable Content".into(),
        500 => "500 Internal Server Error".into(),
        _ => format!("{code} {}", reason_phrase(code)).into(),
    }
}

/// The reason phrase of a status code (RFC 9110 and the registered
/// extensions), for servers given only the number (ASGI); "" for an
/// unknown code, as a status line may have an empty reason.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        418 => "I'm a Teapot",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => "",
    }
}

/// The length of the body of [`error_response`] (for the logs and metrics).
pub fn error_body_len(response: &[u8]) -> u64 {
    memchr::memmem::find(response, b"\r\n\r\n").map_or(0, |i| (response.len() - i - 4) as u64)
}

fn html_escape_into(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
}

fn latin1_encode(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}

/// Python-`repr`-like rendering of peer bytes for error messages: quoted,
/// non-printable bytes escaped. Truncated to keep log lines short.
pub(crate) fn repr(b: &[u8]) -> String {
    const MAX: usize = 200;
    let (shown, more) = if b.len() > MAX {
        (&b[..MAX], "...")
    } else {
        (b, "")
    };
    format!("'{}{}'", shown.escape_ascii(), more)
}

/// Decode bytes as latin-1 (every byte is the code point of the same value),
/// the conversion gunicorn uses for every environ string (PEP 3333).
pub fn latin1_to_string(b: &[u8]) -> String {
    if b.is_ascii() {
        // ASCII bytes are the same code points in UTF-8.
        if let Ok(s) = std::str::from_utf8(b) {
            return s.to_owned();
        }
    }
    b.iter().map(|&c| char::from(c)).collect()
}

/// `urllib.parse.unquote_to_bytes`: replace each `%XX` (two hex digits, any
/// case) by the byte it encodes; a `%` not followed by two hex digits stays
/// as it is. gunicorn's `PATH_INFO` is `latin1_to_string(percent_decode_path(path))`
/// (after stripping `SCRIPT_NAME` from the undecoded path).
pub fn percent_decode_path(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let c = path[i];
        if c == b'%' && i + 2 < path.len() {
            if let (Some(h), Some(l)) = (hex_val(path[i + 1]), hex_val(path[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

pub(crate) fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// RFC 9110 5.6.2 `tchar`.
pub(crate) static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        c += 1;
    }
    t
};

/// Bytes refused in a field value (RFC 9110 5.5): controls except HTAB, DEL.
pub(crate) static BAD_VALUE: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = (c < 0x20 && c != 0x09) || c == 0x7f;
        c += 1;
    }
    t
};

#[inline]
pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&c| TOKEN[c as usize])
}

#[inline]
pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decode() {
        assert_eq!(percent_decode_path(b"/a%20b"), b"/a b");
        assert_eq!(percent_decode_path(b"/%e9%E9"), b"/\xe9\xe9");
        assert_eq!(percent_decode_path(b"/%zz%2"), b"/%zz%2");
        assert_eq!(percent_decode_path(b"%"), b"%");
        assert_eq!(percent_decode_path(b"%4"), b"%4");
        assert_eq!(percent_decode_path(b"%41"), b"A");
        assert_eq!(percent_decode_path(b"%2541"), b"%41");
        assert_eq!(percent_decode_path(b""), b"");
    }

    #[test]
    fn latin1() {
        assert_eq!(latin1_to_string(b"a\xe9\xff"), "a\u{e9}\u{ff}");
    }

    #[test]
    fn limits_normalised() {
        let l = Limits::new(0, 0, 0);
        assert_eq!(l.request_line, UNLIMITED_REQUEST_LINE);
        assert_eq!(l.fields, MAX_HEADERS);
        assert_eq!(l.field_size, DEFAULT_MAX_HEADERFIELD_SIZE);
        let l = Limits::new(9000, 40000, 10);
        assert_eq!(l.request_line, 8190);
        assert_eq!(l.fields, MAX_HEADERS);
        assert_eq!(l.max_buffer, 32768 * 12 + 4);
        let l = Limits::from_cfg(&ParserConfig::default());
        assert_eq!((l.request_line, l.fields, l.field_size), (4094, 100, 8190));
        assert_eq!(l.max_buffer, 100 * 8192 + 4);
    }

    #[test]
    fn error_response_matches_gunicorn() {
        let e = HttpError::limit_request_line(5000, 4094);
        let r = e.response_bytes();
        let expected = "HTTP/1.1 414 URI Too Long\r\nConnection: close\r\nContent-Type: text/html\r\nContent-Length: 165\r\n\r\n<html>\n  <head>\n    <title>URI Too Long</title>\n  </head>\n  <body>\n    <h1><p>URI Too Long</p></h1>\n    Request Line is too large (5000 &gt; 4094)\n  </body>\n</html>\n";
        assert_eq!(String::from_utf8(r).unwrap(), expected);
    }
}
