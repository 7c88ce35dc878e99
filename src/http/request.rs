//! Request head parser (request line + header fields), gunicorn 27 rules.
//!
//! Hand-written: one `memmem` scan for the end of the head, one `memchr`
//! per line, and table lookups over the method, target, names and values.
//! The only allocation in the common case is the headers `Vec`.
//!
//! Rough timing (release, `cargo test --release -- --ignored --nocapture
//! bench`, 2-core VM, Rust 1.95): a 6-header browser-like GET (347 bytes)
//! parses in ~260 ns (~3.9 M parses/s on one core), headers `Vec` included.

use std::borrow::Cow;

use memchr::{memchr, memchr_iter, memmem};

use super::{
    is_token, trim_ows, BodyKind, HeaderMap, HttpError, Limits, ParserConfig, BAD_VALUE, TOKEN,
};

/// One header field. `name` is as received (original case; with
/// `strip_header_spaces` the whitespace before the colon is removed);
/// `value` has leading/trailing SP/HTAB removed, and is `Owned` only when
/// obsolete line folding joined several lines (with single spaces).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header<'b> {
    pub name: &'b [u8],
    pub value: Cow<'b, [u8]>,
}

/// A parsed request head, borrowing from the input buffer.
#[derive(Clone, Debug)]
pub struct RequestHead<'b> {
    /// Upper-cased only when `casefold_http_method`.
    pub method: Cow<'b, str>,
    /// Raw request-target (`RAW_URI`).
    pub uri: &'b [u8],
    /// Path part of the target, not percent-decoded (absolute-form: the
    /// path of the URL, possibly empty; asterisk-form: `*`; CONNECT
    /// authority-form: what Python's `urlsplit` makes of it, e.g. `443` for
    /// `example.com:443`).
    pub path: &'b [u8],
    /// Query without `?` (`QUERY_STRING`).
    pub query: &'b [u8],
    pub fragment: &'b [u8],
    pub version: (u8, u8),
    /// Headers in order; names with `_` already dropped/refused per
    /// `header_map` and `forwarder_headers`.
    pub headers: Vec<Header<'b>>,
    pub body: BodyKind,
    /// gunicorn's `not should_close()`: false after a `gzip`/`deflate`/
    /// `compress` transfer coding, for CONNECT, when the first Connection
    /// header is `close`, or for HTTP/1.0 (and below) unless the first
    /// Connection header is `keep-alive`.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on HTTP/1.1+: send `HTTP/1.1 100 Continue\r\n\r\n`
    /// before reading the body (gunicorn does so when building the environ).
    pub expect_continue: bool,
}

/// Outcome of [`parse_request`].
#[derive(Debug)]
pub enum Parsed<'b> {
    /// Need more bytes; everything seen so far is within the limits.
    Partial,
    /// `consumed` bytes (incl. an optional leading CRLF and the final empty
    /// line) form the head; the body/next request starts right after.
    Complete {
        head: RequestHead<'b>,
        consumed: usize,
    },
}

/// Parse a request head from the start of `buf`.
///
/// `trusted_forwarder`: the peer is in `forwarded_allow_ips`, so the
/// `forwarder_headers` exemption from the `_` rule applies (gunicorn passes
/// an empty list for untrusted peers).
///
/// On `Partial`, limits are enforced on what is there: a request line
/// longer than the limit is 414 as soon as that many bytes arrived, and the
/// head is bounded by gunicorn's `max_buffer_headers` (and by the field
/// size/count limits on the lines already received) with 431.
///
/// Stateless: every call starts from the first byte. A connection that
/// calls again as more bytes arrive should hold a [`HeadParser`] instead,
/// which gives the same answers without re-reading what it has seen (the
/// connection layer does; the tests parse whole inputs with this).
#[cfg(test)]
pub fn parse_request<'b>(
    buf: &'b [u8],
    cfg: &ParserConfig,
    trusted_forwarder: bool,
) -> Result<Parsed<'b>, HttpError> {
    HeadParser::new().parse(buf, cfg, trusted_forwarder)
}

/// Resumable request-head parser, one per connection.
///
/// [`HeadParser::parse`] takes the whole unparsed head received so far
/// (each call's `buf` extends the previous call's `buf`) and gives, call
/// for call, exactly what [`parse_request`] gives on the same `buf`: the
/// same `Partial`, the same `Complete` head, the same error at the same
/// call. It remembers how far the input has been checked (request-line
/// LF search, head-end search, line count and longest line, the header
/// fields already validated against the limits), so a head arriving a few
/// bytes at a time costs O(head) in total instead of O(head²); the full
/// parse that builds [`RequestHead`] runs once, when the head is complete.
/// A head that arrives in one read costs what `parse_request` costs.
///
/// After `Complete` or an error, call [`HeadParser::reset`] before the next
/// head. (A `buf` shorter than the previous one is taken as a new head.)
#[derive(Clone, Debug, Default)]
pub struct HeadParser {
    /// `buf.len()` at the previous call.
    seen: usize,
    /// Bytes of the request line (after the optional leading CRLF) known
    /// to hold no LF.
    line_scanned: usize,
    /// Where the request line starts (2 after a leading CRLF) and where the
    /// header section starts (just after the request line's LF); `head_start`
    /// is 0 until the request line has been received and validated.
    line_begin: usize,
    head_start: usize,
    /// The remaining fields are offsets into the header section
    /// (`buf[head_start..]`). Bytes known to hold no CRLFCRLF.
    end_scanned: usize,
    /// Bytes whose LFs have been checked and counted.
    lf_scanned: usize,
    /// Complete lines so far, the longest (with its CRLF), and where the
    /// incomplete last line starts.
    lines: usize,
    longest: usize,
    line_start: usize,
    /// Field checks over the complete lines, run only once a limit is hit
    /// (as `parse_request` does), resumed where they stopped.
    fields: FieldScan,
    /// Bytes read by the scans, for the test that shows the work is linear.
    #[cfg(test)]
    examined: usize,
}

impl HeadParser {
    pub fn new() -> Self {
        HeadParser::default()
    }

    /// Forget the previous head; the next `parse` starts from scratch.
    pub fn reset(&mut self) {
        *self = HeadParser::default();
    }

    #[inline(always)]
    fn count(&mut self, _n: usize) {
        #[cfg(test)]
        {
            self.examined += _n;
        }
    }

    /// [`parse_request`] on `buf`, resumed from the previous call (see the
    /// type's documentation for the contract on `buf`).
    pub fn parse<'b>(
        &mut self,
        buf: &'b [u8],
        cfg: &ParserConfig,
        trusted_forwarder: bool,
    ) -> Result<Parsed<'b>, HttpError> {
        if buf.len() < self.seen {
            // Not a continuation of the previous head: a caller that forgot
            // to reset. Starting over is always correct.
            self.reset();
        }
        self.seen = buf.len();
        let lim = Limits::from_cfg(cfg);

        let mut rl = None;
        if self.head_start == 0 {
            // RFC 9112 2.2: one empty line (CRLF only) before the request
            // line is ignored; only one, as gunicorn.
            let mut start = 0;
            if buf.first() == Some(&b'\r') {
                match buf.get(1) {
                    None => return Ok(Parsed::Partial),
                    Some(b'\n') => start = 2,
                    Some(_) => {}
                }
            }
            let data = &buf[start..];

            // Request line; earlier calls found no LF before `line_scanned`.
            let from = self.line_scanned.min(data.len());
            self.count(data.len() - from);
            let nl = match memchr(b'\n', &data[from..]) {
                Some(i) => from + i,
                None => {
                    self.line_scanned = data.len();
                    if data.len().saturating_sub(2) > lim.request_line {
                        return Err(HttpError::limit_request_line(data.len(), lim.request_line));
                    }
                    return Ok(Parsed::Partial);
                }
            };
            if nl == 0 || data[nl - 1] != b'\r' {
                return Err(HttpError::invalid_request_line(
                    b"bare LF as line terminator",
                ));
            }
            let line = &data[..nl - 1];
            if line.len() > lim.request_line {
                return Err(HttpError::limit_request_line(line.len(), lim.request_line));
            }
            self.count(line.len());
            rl = Some(parse_request_line(line, cfg)?);
            self.line_begin = start;
            self.head_start = start + nl + 1;
        }

        // Header section.
        let head_start = self.head_start;
        let rest = &buf[head_start..];
        let (block, consumed) = if rest.starts_with(b"\r\n") {
            (&rest[..0], head_start + 2)
        } else {
            // A CRLFCRLF not found before `end_scanned` may still start in
            // its last 3 bytes.
            let from = self.end_scanned.saturating_sub(3).min(rest.len());
            self.count(rest.len() - from);
            match memmem::find(&rest[from..], b"\r\n\r\n") {
                Some(i) => (&rest[..from + i], head_start + from + i + 4),
                None => {
                    self.end_scanned = rest.len();
                    self.check_partial(rest, cfg, &lim)?;
                    return Ok(Parsed::Partial);
                }
            }
        };

        let rl = match rl {
            Some(rl) => rl,
            // Validated by an earlier call; parsed again (once) because the
            // head borrows from this call's `buf`.
            None => parse_request_line(&buf[self.line_begin..head_start - 2], cfg)?,
        };
        self.count(block.len());
        finish_head(rl, block, consumed, cfg, &lim, trusted_forwarder)
    }

    /// Limits on an incomplete head (no empty line yet). `rest` starts
    /// right after the request line's CRLF. Same checks, in the same order,
    /// as a full re-scan, over the bytes that are new since the last call.
    fn check_partial(
        &mut self,
        rest: &[u8],
        cfg: &ParserConfig,
        lim: &Limits,
    ) -> Result<(), HttpError> {
        // gunicorn: every LF must be part of a CRLF, reject rather than wait.
        let from = self.lf_scanned.min(rest.len());
        for p in memchr_iter(b'\n', &rest[from..]) {
            let pos = from + p;
            if pos == 0 || rest[pos - 1] != b'\r' {
                return Err(HttpError::invalid_header(b"bare LF as line terminator"));
            }
            self.lines += 1;
            self.longest = self.longest.max(pos + 1 - self.line_start);
            self.line_start = pos + 1;
        }
        self.count(rest.len() - from);
        self.lf_scanned = rest.len();
        let tail = &rest[self.line_start..];
        let tail_too_long =
            tail.len().saturating_add(2) > lim.field_size.saturating_add(1) && tail != b"\r";
        if self.lines > lim.fields || self.longest > lim.field_size || tail_too_long {
            // Some limit will be hit: validate the complete lines in order so
            // the error is the one gunicorn reports once the head is complete.
            // (Untrusted: `forwarder_headers` are not exempted here, as
            // before this parser was made resumable.)
            if self.line_start > 2 {
                let before = self.fields.pos;
                self.fields.advance(rest, self.line_start, cfg, lim)?;
                self.count(self.fields.pos - before);
                self.fields.check_open(rest, cfg, lim)?;
            }
            if tail_too_long {
                // This line will be refused whatever follows: 400 if what we
                // can see is already malformed, else 431 (field too large).
                return Err(classify_long_line(tail, cfg, self.line_start == 0));
            }
        }
        if rest.len() > lim.max_buffer {
            return Err(HttpError::limit_headers("max buffer headers"));
        }
        Ok(())
    }
}

/// The complete head: header fields, framing, keep-alive.
#[inline]
fn finish_head<'b>(
    rl: RequestLine<'b>,
    block: &'b [u8],
    consumed: usize,
    cfg: &ParserConfig,
    lim: &Limits,
    trusted_forwarder: bool,
) -> Result<Parsed<'b>, HttpError> {
    let forwarders: &[String] = if trusted_forwarder {
        &cfg.forwarder_headers
    } else {
        &[]
    };
    let mut st = FieldState::new(rl.version);
    let mut headers = Vec::with_capacity(16);
    let mut fr = Framing::default();
    parse_fields(
        block,
        cfg,
        lim,
        &mut st,
        false,
        forwarders,
        &mut FieldSink::Request {
            headers: &mut headers,
            framing: &mut fr,
        },
    )?;
    let (body, must_close) = fr.finish(&headers, rl.version)?;

    let keep_alive = if must_close || rl.method == "CONNECT" {
        false
    } else {
        match fr.connection {
            Some(Conn::Close) => false,
            Some(Conn::KeepAlive) => true,
            _ => rl.version > (1, 0),
        }
    };

    Ok(Parsed::Complete {
        head: RequestHead {
            method: rl.method,
            uri: rl.uri,
            path: rl.path,
            query: rl.query,
            fragment: rl.fragment,
            version: rl.version,
            headers,
            body,
            keep_alive,
            expect_continue: st.expect_continue,
        },
        consumed,
    })
}
struct RequestLine<'b> {
    method: Cow<'b, str>,
    uri: &'b [u8],
    path: &'b [u8],
    query: &'b [u8],
    fragment: &'b [u8],
    version: (u8, u8),
}

fn parse_request_line<'b>(
    line: &'b [u8],
    cfg: &ParserConfig,
) -> Result<RequestLine<'b>, HttpError> {
    // Exactly like Python's `line.split(b" ", 2)` needing 3 parts.
    let sp1 = memchr(b' ', line).ok_or_else(|| HttpError::invalid_request_line(line))?;
    let method_b = &line[..sp1];
    let after = &line[sp1 + 1..];
    let sp2 = memchr(b' ', after).ok_or_else(|| HttpError::invalid_request_line(line))?;
    let uri = &after[..sp2];
    let version_b = &after[sp2 + 1..];

    // Method: RFC 9110 9 token, plus gunicorn's conventional restrictions.
    if !cfg.permit_unconventional_http_method
        && (method_b
            .iter()
            .any(|&c| c.is_ascii_lowercase() || c == b'#')
            || !(3..=20).contains(&method_b.len()))
    {
        return Err(HttpError::invalid_method(method_b));
    }
    if !is_token(method_b) {
        return Err(HttpError::invalid_method(method_b));
    }
    let method_s =
        std::str::from_utf8(method_b).map_err(|_| HttpError::invalid_method(method_b))?;
    let method: Cow<'b, str> =
        if cfg.casefold_http_method && method_b.iter().any(|c| c.is_ascii_lowercase()) {
            Cow::Owned(method_s.to_ascii_uppercase())
        } else {
            Cow::Borrowed(method_s)
        };

    // Target: printable ASCII only (RFC 9112 3.2, RFC 3986 2), non-empty,
    // and the form must fit the method.
    if uri.is_empty() || uri.iter().any(|&c| !(0x21..=0x7e).contains(&c)) {
        return Err(HttpError::invalid_request_line(line));
    }
    if uri == b"*" && method != "OPTIONS" {
        return Err(HttpError::invalid_request_line(line));
    }
    if method != "CONNECT" && uri != b"*" && uri[0] != b'/' && memmem::find(uri, b"://").is_none() {
        return Err(HttpError::invalid_request_line(line));
    }
    let (path, query, fragment) =
        split_target(uri).ok_or_else(|| HttpError::invalid_request_line(line))?;

    // Version: `HTTP/d.d`, 1.0 <= v < 2.0 unless permitted.
    let version = match version_b {
        [b'H', b'T', b'T', b'P', b'/', maj, b'.', min]
            if maj.is_ascii_digit() && min.is_ascii_digit() =>
        {
            (maj - b'0', min - b'0')
        }
        _ => {
            return Err(HttpError::invalid_version(super::repr(version_b)));
        }
    };
    if !(cfg.permit_unconventional_http_version || ((1, 0)..(2, 0)).contains(&version)) {
        return Err(HttpError::invalid_version(format!(
            "({}, {})",
            version.0, version.1
        )));
    }

    Ok(RequestLine {
        method,
        uri,
        path,
        query,
        fragment,
        version,
    })
}

/// gunicorn's `split_request_uri` (Python 3.11 `urllib.parse.urlsplit`,
/// with a leading `//` taken as a path). `None` where `urlsplit` raises.
/// Input is already restricted to 0x21..=0x7e.
fn split_target(uri: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let mut url = uri;
    if !uri.starts_with(b"//") {
        // scheme
        if let Some(i) = memchr(b':', url) {
            if i > 0
                && url[0].is_ascii_alphabetic()
                && url[..i]
                    .iter()
                    .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
            {
                url = &url[i + 1..];
            }
        }
        // netloc
        if url.starts_with(b"//") {
            let delim = url[2..]
                .iter()
                .position(|&c| matches!(c, b'/' | b'?' | b'#'))
                .map_or(url.len(), |p| p + 2);
            let netloc = &url[2..delim];
            check_netloc(netloc)?;
            url = &url[delim..];
        }
    }
    let (url, fragment) = match memchr(b'#', url) {
        Some(i) => (&url[..i], &url[i + 1..]),
        None => (url, &url[url.len()..]),
    };
    let (path, query) = match memchr(b'?', url) {
        Some(i) => (&url[..i], &url[i + 1..]),
        None => (url, &url[url.len()..]),
    };
    Some((path, query, fragment))
}

fn check_netloc(netloc: &[u8]) -> Option<()> {
    let open = memchr(b'[', netloc);
    let close = memchr(b']', netloc);
    match (open, close) {
        (None, None) => Some(()),
        (Some(o), Some(_)) => {
            let after = &netloc[o + 1..];
            let host = match memchr(b']', after) {
                Some(c) => &after[..c],
                None => after,
            };
            check_bracketed_host(host)
        }
        _ => None,
    }
}

/// Python's `_check_bracketed_host`: IPvFuture `v<hex>+.<any>+` or an IPv6
/// address (optionally with a `%scope`); IPv4 is refused.
fn check_bracketed_host(host: &[u8]) -> Option<()> {
    if let Some(rest) = host.strip_prefix(b"v") {
        let dot = memchr(b'.', rest)?;
        if dot > 0 && rest[..dot].iter().all(u8::is_ascii_hexdigit) && rest.len() > dot + 1 {
            return Some(());
        }
        return None;
    }
    let addr = match memchr(b'%', host) {
        Some(p) => {
            let scope = &host[p + 1..];
            if scope.is_empty() || memchr(b'%', scope).is_some() {
                return None;
            }
            &host[..p]
        }
        None => host,
    };
    let s = std::str::from_utf8(addr).ok()?;
    s.parse::<std::net::Ipv6Addr>().ok().map(|_| ())
}

/// [`parse_fields`] over the complete lines of an incomplete header section
/// (no sink, no forwarder exemptions), resumable: lines are examined once,
/// as they complete. The last field may still get continuation lines, so
/// its end-of-field checks are run on a copy ([`FieldScan::check_open`])
/// and for real only when the next field starts.
#[derive(Clone, Debug, Default)]
struct FieldScan {
    /// Offset of the first line not yet examined.
    pos: usize,
    kept: usize,
    seen_host: bool,
    seen_content_type: bool,
    open: Option<OpenField>,
    /// `pos` at which `check_open` last passed (nothing new to check).
    probed: Option<usize>,
}

/// A field whose lines have been seen, but maybe not all of them.
#[derive(Clone, Copy, Debug)]
struct OpenField {
    /// Name (after `strip_header_spaces`) and trimmed first value.
    name: (usize, usize),
    first: (usize, usize),
    /// The continuation lines, CRLFs included.
    conts: (usize, usize),
    /// Line lengths with CRLFs, as `parse_fields` counts them.
    header_length: usize,
    /// Length of the folded value, and whether it holds a refused byte.
    value_len: usize,
    bad: bool,
}

impl FieldScan {
    /// Examine the complete lines of `rest[self.pos..upto]` (`upto` is
    /// just after a CRLF; every LF before it ends a CRLF).
    fn advance(
        &mut self,
        rest: &[u8],
        upto: usize,
        cfg: &ParserConfig,
        lim: &Limits,
    ) -> Result<(), HttpError> {
        while self.pos < upto {
            let Some(nl) = memchr(b'\n', &rest[self.pos..upto]) else {
                break;
            };
            let begin = self.pos;
            let end = begin + nl; // the LF; a CR precedes it
            let line = &rest[begin..end.saturating_sub(1).max(begin)];
            self.pos = end + 1;
            if let (Some(f), Some(b' ' | b'\t')) = (self.open.as_mut(), line.first()) {
                // Continuation of the open field (obs-fold).
                if !cfg.permit_obsolete_folding {
                    let name = &rest[f.name.0..f.name.1];
                    return Err(HttpError::obsolete_folding(&name.to_ascii_uppercase()));
                }
                f.header_length = f.header_length.saturating_add(line.len() + 2);
                if f.header_length > lim.field_size {
                    return Err(HttpError::limit_headers(
                        "limit request headers fields size",
                    ));
                }
                let v = trim_ows(line);
                f.bad |= v.iter().any(|&c| BAD_VALUE[c as usize]);
                f.value_len += 1 + v.len();
                f.conts.1 = self.pos;
                continue;
            }
            if let Some(f) = self.open.take() {
                self.close(f, rest, cfg, lim)?;
            }
            if self.kept >= lim.fields {
                return Err(HttpError::limit_headers("limit request headers fields"));
            }
            let colon = match memchr(b':', line) {
                Some(c) if c > 0 => c,
                _ => return Err(HttpError::invalid_header(line)),
            };
            let mut name = &line[..colon];
            if cfg.strip_header_spaces {
                name = trim_end(name);
            }
            if !is_token(name) {
                return Err(HttpError::invalid_header_name(name));
            }
            let value = &line[colon + 1..];
            let first = trim_ows(value);
            // Offset of `first` within `rest`: after the leading OWS.
            let first_at = begin + colon + 1 + (value.len() - trim_start_len(value));
            self.open = Some(OpenField {
                name: (begin, begin + name.len()),
                first: (first_at, first_at + first.len()),
                conts: (self.pos, self.pos),
                header_length: line.len() + 2,
                value_len: first.len(),
                bad: first.iter().any(|&c| BAD_VALUE[c as usize]),
            });
        }
        Ok(())
    }

    /// The end-of-field checks of the open field, as if no more lines came.
    fn check_open(
        &mut self,
        rest: &[u8],
        cfg: &ParserConfig,
        lim: &Limits,
    ) -> Result<(), HttpError> {
        let Some(f) = self.open else { return Ok(()) };
        if self.probed == Some(self.pos) {
            return Ok(());
        }
        self.clone().close(f, rest, cfg, lim)?;
        self.probed = Some(self.pos);
        Ok(())
    }

    /// `parse_fields`' checks after a field's last line, and its policy.
    fn close(
        &mut self,
        f: OpenField,
        rest: &[u8],
        cfg: &ParserConfig,
        lim: &Limits,
    ) -> Result<(), HttpError> {
        let name = &rest[f.name.0..f.name.1];
        if f.bad {
            return Err(HttpError::invalid_header(&name.to_ascii_uppercase()));
        }
        if f.header_length > lim.field_size {
            return Err(HttpError::limit_headers(
                "limit request headers fields size",
            ));
        }
        if name.len() == 4 && name.eq_ignore_ascii_case(b"host") {
            if self.seen_host {
                return Err(HttpError::invalid_header(b"HOST"));
            }
            self.seen_host = true;
        } else if name.len() == 12 && name.eq_ignore_ascii_case(b"content-type") {
            if self.seen_content_type {
                return Err(HttpError::invalid_header(b"CONTENT-TYPE"));
            }
            self.seen_content_type = true;
        } else if name.len() == 6 && name.eq_ignore_ascii_case(b"expect") {
            // Only a 12-byte value can be "100-continue"; build the folded
            // value only then, or for the error message.
            const CONTINUE: &[u8] = b"100-continue";
            let ok = f.value_len == CONTINUE.len() && {
                let v = folded_value(rest, &f);
                v.eq_ignore_ascii_case(CONTINUE)
            };
            if !ok {
                return Err(HttpError::expectation_failed(&folded_value(rest, &f)));
            }
        }
        if memchr(b'_', name).is_some() {
            match cfg.header_map {
                HeaderMap::Dangerous => {}
                HeaderMap::Drop => return Ok(()),
                HeaderMap::Refuse => {
                    return Err(HttpError::invalid_header_name(&name.to_ascii_uppercase()))
                }
            }
        }
        self.kept += 1;
        Ok(())
    }
}

/// The value of `f` as `parse_fields` builds it: the trimmed first value,
/// then each trimmed continuation line after one space.
fn folded_value(rest: &[u8], f: &OpenField) -> Vec<u8> {
    let mut v = rest[f.first.0..f.first.1].to_vec();
    let mut conts = &rest[f.conts.0..f.conts.1];
    while let Some(nl) = memchr(b'\n', conts) {
        let line = &conts[..nl.saturating_sub(1)];
        v.push(b' ');
        v.extend_from_slice(trim_ows(line));
        conts = &conts[nl + 1..];
    }
    v
}

/// Length of `s` without its leading SP/HTAB.
fn trim_start_len(mut s: &[u8]) -> usize {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    s.len()
}
fn classify_long_line(line: &[u8], cfg: &ParserConfig, first: bool) -> HttpError {
    let too_large = HttpError::limit_headers("limit request headers fields size");
    if matches!(line.first(), Some(b' ' | b'\t')) {
        if first {
            return HttpError::invalid_header(&line[..line.len().min(64)]);
        }
        if !cfg.permit_obsolete_folding {
            return HttpError::obsolete_folding(b"");
        }
        return too_large;
    }
    if let Some(colon) = memchr(b':', line) {
        let mut name = &line[..colon];
        if cfg.strip_header_spaces {
            name = trim_end(name);
        }
        if colon == 0 || !is_token(name) {
            return HttpError::invalid_header_name(name);
        }
        let value = &line[colon + 1..];
        let value = value.strip_suffix(b"\r").unwrap_or(value);
        if value.iter().any(|&c| BAD_VALUE[c as usize]) {
            return HttpError::invalid_header(name);
        }
    } else if !line.iter().all(|&c| TOKEN[c as usize]) {
        return HttpError::invalid_header(&line[..line.len().min(64)]);
    }
    too_large
}

fn trim_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Per-message state of the field checks.
pub(crate) struct FieldState {
    kept: usize,
    seen_host: bool,
    seen_content_type: bool,
    expect_continue: bool,
    version: (u8, u8),
}

impl FieldState {
    pub(crate) fn new(version: (u8, u8)) -> FieldState {
        FieldState {
            kept: 0,
            seen_host: false,
            seen_content_type: false,
            expect_continue: false,
            version,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Conn {
    Close,
    KeepAlive,
    Other,
}

/// Body framing gathered while the fields are read; errors are deferred
/// so they come after every field error, in header order (gunicorn checks
/// framing in `set_body_reader`, after parsing all headers).
#[derive(Default)]
pub(crate) struct Framing {
    content_length: Option<usize>, // index into the headers Vec
    te_seen: bool,
    chunked: bool,
    must_close: bool,
    deferred: Option<HttpError>,
    connection: Option<Conn>,
}

impl Framing {
    fn on_header(&mut self, name: &[u8], value: &[u8], idx: usize) {
        if name.len() == 10 && name.eq_ignore_ascii_case(b"connection") {
            if self.connection.is_none() {
                let v = trim_ows(value);
                self.connection = Some(if v.eq_ignore_ascii_case(b"close") {
                    Conn::Close
                } else if v.eq_ignore_ascii_case(b"keep-alive") {
                    Conn::KeepAlive
                } else {
                    Conn::Other
                });
            }
            return;
        }
        if self.deferred.is_some() {
            return;
        }
        if name.len() == 14 && name.eq_ignore_ascii_case(b"content-length") {
            if self.content_length.is_some() {
                self.deferred = Some(HttpError::invalid_header(b"CONTENT-LENGTH"));
            }
            self.content_length = Some(idx);
        } else if name.len() == 17 && name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.te_seen = true;
            for v in value.split(|&c| c == b',') {
                let v = trim_ows(v);
                if v.eq_ignore_ascii_case(b"chunked") {
                    if self.chunked {
                        self.deferred = Some(HttpError::invalid_header(b"TRANSFER-ENCODING"));
                        return;
                    }
                    self.chunked = true;
                } else if v.eq_ignore_ascii_case(b"identity") {
                    if self.chunked {
                        self.deferred = Some(HttpError::invalid_header(b"TRANSFER-ENCODING"));
                        return;
                    }
                } else if v.eq_ignore_ascii_case(b"compress")
                    || v.eq_ignore_ascii_case(b"deflate")
                    || v.eq_ignore_ascii_case(b"gzip")
                {
                    if self.chunked {
                        self.deferred = Some(HttpError::invalid_header(b"TRANSFER-ENCODING"));
                        return;
                    }
                    self.must_close = true;
                } else {
                    self.deferred = Some(HttpError::unsupported_coding(value));
                    return;
                }
            }
        }
    }

    fn finish(
        &mut self,
        headers: &[Header<'_>],
        version: (u8, u8),
    ) -> Result<(BodyKind, bool), HttpError> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        if self.te_seen && !self.chunked {
            return Err(HttpError::invalid_header(b"TRANSFER-ENCODING"));
        }
        if self.chunked {
            if version < (1, 1) {
                return Err(HttpError::invalid_header(b"TRANSFER-ENCODING"));
            }
            if self.content_length.is_some() {
                return Err(HttpError::invalid_header(b"CONTENT-LENGTH"));
            }
            return Ok((BodyKind::Chunked, self.must_close));
        }
        if let Some(idx) = self.content_length {
            let v: &[u8] = headers.get(idx).map_or(&b""[..], |h| &h.value);
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return Err(HttpError::invalid_header(b"CONTENT-LENGTH"));
            }
            let mut n: u64 = 0;
            for &c in v {
                n = n
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(c - b'0')))
                    .ok_or_else(|| HttpError::invalid_header(b"CONTENT-LENGTH"))?;
            }
            return Ok((BodyKind::Length(n), self.must_close));
        }
        Ok((BodyKind::None, self.must_close))
    }
}

pub(crate) enum FieldSink<'s, 'b> {
    Request {
        headers: &'s mut Vec<Header<'b>>,
        framing: &'s mut Framing,
    },
    Discard,
}

/// RFC 9110 6.5.1: fields not allowed in trailers.
fn forbidden_in_trailer(name: &[u8]) -> bool {
    const F: [&[u8]; 6] = [
        b"HOST",
        b"CONTENT-LENGTH",
        b"TRANSFER-ENCODING",
        b"TRAILER",
        b"AUTHORIZATION",
        b"TE",
    ];
    F.iter().any(|f| f.eq_ignore_ascii_case(name))
}

fn forwarder_allows(forwarders: &[String], name: &[u8]) -> bool {
    forwarders.iter().any(|f| {
        f == "*"
            || (f.len() == name.len()
                && f.bytes()
                    .zip(name)
                    .all(|(a, b)| a == b.to_ascii_uppercase()))
    })
}

/// Split on CRLF exactly like Python's `data.split(b"\r\n")` (a bare LF
/// stays inside its line).
struct Lines<'b> {
    rest: &'b [u8],
    done: bool,
}

impl<'b> Lines<'b> {
    fn next_line(&mut self) -> Option<&'b [u8]> {
        if self.done {
            return None;
        }
        let mut from = 0;
        loop {
            match memchr(b'\n', &self.rest[from..]) {
                Some(p) => {
                    let p = from + p;
                    if p > 0 && self.rest[p - 1] == b'\r' {
                        let line = &self.rest[..p - 1];
                        self.rest = &self.rest[p + 1..];
                        return Some(line);
                    }
                    from = p + 1;
                }
                None => {
                    self.done = true;
                    return Some(self.rest);
                }
            }
        }
    }

    fn next_is_continuation(&self) -> bool {
        !self.done && matches!(self.rest.first(), Some(b' ' | b'\t'))
    }
}

/// gunicorn's `parse_headers` over a header block (lines separated by CRLF,
/// without the final empty line) plus its per-header policy.
pub(crate) fn parse_fields<'b>(
    block: &'b [u8],
    cfg: &ParserConfig,
    lim: &Limits,
    st: &mut FieldState,
    from_trailer: bool,
    forwarders: &[String],
    sink: &mut FieldSink<'_, 'b>,
) -> Result<(), HttpError> {
    if block.is_empty() {
        return Ok(());
    }
    let mut lines = Lines {
        rest: block,
        done: false,
    };
    while let Some(line) = lines.next_line() {
        if st.kept >= lim.fields {
            return Err(HttpError::limit_headers("limit request headers fields"));
        }
        let mut header_length = line.len() + 2;
        let colon = match memchr(b':', line) {
            Some(c) if c > 0 => c,
            _ => return Err(HttpError::invalid_header(line)),
        };
        let mut name = &line[..colon];
        if cfg.strip_header_spaces {
            name = trim_end(name);
        }
        if !is_token(name) {
            return Err(HttpError::invalid_header_name(name));
        }
        if from_trailer && forbidden_in_trailer(name) {
            return Err(HttpError::invalid_header_name(&name.to_ascii_uppercase()));
        }
        let first = trim_ows(&line[colon + 1..]);
        let value: Cow<'b, [u8]> = if lines.next_is_continuation() {
            if !cfg.permit_obsolete_folding {
                return Err(HttpError::obsolete_folding(&name.to_ascii_uppercase()));
            }
            let mut v = first.to_vec();
            while lines.next_is_continuation() {
                let Some(cont) = lines.next_line() else { break };
                header_length += cont.len() + 2;
                if header_length > lim.field_size {
                    return Err(HttpError::limit_headers(
                        "limit request headers fields size",
                    ));
                }
                v.push(b' ');
                v.extend_from_slice(trim_ows(cont));
            }
            Cow::Owned(v)
        } else {
            Cow::Borrowed(first)
        };
        if value.iter().any(|&c| BAD_VALUE[c as usize]) {
            return Err(HttpError::invalid_header(&name.to_ascii_uppercase()));
        }
        if header_length > lim.field_size {
            return Err(HttpError::limit_headers(
                "limit request headers fields size",
            ));
        }

        // Header policy (gunicorn `_apply_header_policy`).
        if name.len() == 4 && name.eq_ignore_ascii_case(b"host") {
            if st.seen_host {
                return Err(HttpError::invalid_header(b"HOST"));
            }
            st.seen_host = true;
        } else if name.len() == 12 && name.eq_ignore_ascii_case(b"content-type") {
            if st.seen_content_type {
                return Err(HttpError::invalid_header(b"CONTENT-TYPE"));
            }
            st.seen_content_type = true;
        } else if !from_trailer && name.len() == 6 && name.eq_ignore_ascii_case(b"expect") {
            if value.eq_ignore_ascii_case(b"100-continue") {
                if st.version >= (1, 1) {
                    st.expect_continue = true;
                }
            } else {
                return Err(HttpError::expectation_failed(&value));
            }
        }
        if memchr(b'_', name).is_some() && !forwarder_allows(forwarders, name) {
            match cfg.header_map {
                HeaderMap::Dangerous => {}
                HeaderMap::Drop => continue,
                HeaderMap::Refuse => {
                    return Err(HttpError::invalid_header_name(&name.to_ascii_uppercase()))
                }
            }
        }

        st.kept += 1;
        if let FieldSink::Request { headers, framing } = sink {
            framing.on_header(name, &value, headers.len());
            headers.push(Header { name, value });
        }
    }
    Ok(())
}

/// The stateless parser as it was before [`HeadParser`] (kept verbatim,
/// tests only): the oracle that `HeadParser` must match call for call.
#[cfg(test)]
pub(crate) mod reference {
    use super::*;

    pub(crate) fn parse_request<'b>(
        buf: &'b [u8],
        cfg: &ParserConfig,
        trusted_forwarder: bool,
    ) -> Result<Parsed<'b>, HttpError> {
        let lim = Limits::from_cfg(cfg);

        // RFC 9112 2.2: one empty line (CRLF only) before the request line is
        // ignored; only one, as gunicorn.
        let mut start = 0;
        if buf.first() == Some(&b'\r') {
            match buf.get(1) {
                None => return Ok(Parsed::Partial),
                Some(b'\n') => start = 2,
                Some(_) => {}
            }
        }
        let data = &buf[start..];

        // Request line.
        let nl = match memchr(b'\n', data) {
            Some(nl) => nl,
            None => {
                if data.len().saturating_sub(2) > lim.request_line {
                    return Err(HttpError::limit_request_line(data.len(), lim.request_line));
                }
                return Ok(Parsed::Partial);
            }
        };
        if nl == 0 || data[nl - 1] != b'\r' {
            return Err(HttpError::invalid_request_line(
                b"bare LF as line terminator",
            ));
        }
        let line = &data[..nl - 1];
        if line.len() > lim.request_line {
            return Err(HttpError::limit_request_line(line.len(), lim.request_line));
        }
        let rl = parse_request_line(line, cfg)?;

        // Header section.
        let head_start = start + nl + 1;
        let rest = &buf[head_start..];
        let (block, consumed) = if rest.starts_with(b"\r\n") {
            (&rest[..0], head_start + 2)
        } else {
            match memmem::find(rest, b"\r\n\r\n") {
                Some(idx) => (&rest[..idx], head_start + idx + 4),
                None => {
                    check_partial_head(rest, cfg, &lim, rl.version)?;
                    return Ok(Parsed::Partial);
                }
            }
        };

        let forwarders: &[String] = if trusted_forwarder {
            &cfg.forwarder_headers
        } else {
            &[]
        };
        let mut st = FieldState::new(rl.version);
        let mut headers = Vec::with_capacity(16);
        let mut fr = Framing::default();
        parse_fields(
            block,
            cfg,
            &lim,
            &mut st,
            false,
            forwarders,
            &mut FieldSink::Request {
                headers: &mut headers,
                framing: &mut fr,
            },
        )?;
        let (body, must_close) = fr.finish(&headers, rl.version)?;

        let keep_alive = if must_close || rl.method == "CONNECT" {
            false
        } else {
            match fr.connection {
                Some(Conn::Close) => false,
                Some(Conn::KeepAlive) => true,
                _ => rl.version > (1, 0),
            }
        };

        Ok(Parsed::Complete {
            head: RequestHead {
                method: rl.method,
                uri: rl.uri,
                path: rl.path,
                query: rl.query,
                fragment: rl.fragment,
                version: rl.version,
                headers,
                body,
                keep_alive,
                expect_continue: st.expect_continue,
            },
            consumed,
        })
    }

    /// Limits on an incomplete head (no empty line yet). `rest` starts right
    /// after the request line's CRLF.
    fn check_partial_head(
        rest: &[u8],
        cfg: &ParserConfig,
        lim: &Limits,
        version: (u8, u8),
    ) -> Result<(), HttpError> {
        // gunicorn: every LF must be part of a CRLF, reject rather than wait.
        let mut lines = 0usize;
        let mut longest = 0usize;
        let mut line_start = 0usize;
        for pos in memchr_iter(b'\n', rest) {
            if pos == 0 || rest[pos - 1] != b'\r' {
                return Err(HttpError::invalid_header(b"bare LF as line terminator"));
            }
            lines += 1;
            longest = longest.max(pos + 1 - line_start);
            line_start = pos + 1;
        }
        let tail = &rest[line_start..];
        let tail_too_long = tail.len() + 2 > lim.field_size + 1 && tail != b"\r";
        if lines > lim.fields || longest > lim.field_size || tail_too_long {
            // Some limit will be hit: validate the complete lines in order so
            // the error is the one gunicorn reports once the head is complete.
            if line_start >= 2 {
                let mut st = FieldState::new(version);
                parse_fields(
                    &rest[..line_start - 2],
                    cfg,
                    lim,
                    &mut st,
                    false,
                    &[],
                    &mut FieldSink::Discard,
                )?;
            }
            if tail_too_long {
                // This line will be refused whatever follows: 400 if what we
                // can see is already malformed, else 431 (field too large).
                return Err(classify_long_line(tail, cfg, line_start == 0));
            }
        }
        if rest.len() > lim.max_buffer {
            return Err(HttpError::limit_headers("max buffer headers"));
        }
        Ok(())
    }

    /// Feed `full` through a `HeadParser` in the pieces ending at `cuts`
    /// and through the pre-`HeadParser` parser on the same prefixes; every
    /// call must answer the same. Returns the final answer (Debug form).
    pub(crate) fn same_as_reference(
        full: &[u8],
        cuts: &[usize],
        c: &ParserConfig,
        trusted: bool,
    ) -> String {
        let mut hp = HeadParser::new();
        for &end in cuts.iter().chain(std::iter::once(&full.len())) {
            let buf = &full[..end.min(full.len())];
            let new = format!("{:?}", hp.parse(buf, c, trusted));
            let old = format!("{:?}", parse_request(buf, c, trusted));
            assert_eq!(
                new,
                old,
                "prefix {} of {:?}",
                buf.len(),
                full.escape_ascii().to_string()
            );
            if !new.starts_with("Ok(Partial") {
                return new;
            }
        }
        format!("{:?}", parse_request(full, c, trusted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ParserConfig {
        ParserConfig::default()
    }

    fn ok(buf: &[u8]) -> (RequestHead<'_>, usize) {
        ok_cfg(buf, &cfg())
    }

    fn ok_cfg<'b>(buf: &'b [u8], c: &ParserConfig) -> (RequestHead<'b>, usize) {
        match parse_request(buf, c, false) {
            Ok(Parsed::Complete { head, consumed }) => (head, consumed),
            other => panic!(
                "expected Complete for {:?}, got {:?}",
                buf.escape_ascii().to_string(),
                other
            ),
        }
    }

    fn status(buf: &[u8]) -> u16 {
        status_cfg(buf, &cfg())
    }

    fn status_cfg(buf: &[u8], c: &ParserConfig) -> u16 {
        match parse_request(buf, c, false) {
            Err(e) => e.status,
            other => panic!(
                "expected error for {:?}, got {:?}",
                buf.escape_ascii().to_string(),
                other
            ),
        }
    }

    fn partial(buf: &[u8], c: &ParserConfig) -> bool {
        matches!(parse_request(buf, c, false), Ok(Parsed::Partial))
    }

    fn req(line: &str) -> Vec<u8> {
        format!("{}\r\nHost: a\r\n\r\n", line).into_bytes()
    }

    fn with_headers(h: &str) -> Vec<u8> {
        format!("GET / HTTP/1.1\r\n{}\r\n\r\n", h).into_bytes()
    }

    const TYPICAL: &[u8] = b"GET /api/v1/items?page=2&sort=name HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\nAccept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nConnection: keep-alive\r\n\r\n";

    #[test]
    fn simple_get() {
        let (h, n) = ok(TYPICAL);
        assert_eq!(n, TYPICAL.len());
        assert_eq!(h.method, "GET");
        assert!(matches!(h.method, Cow::Borrowed(_)));
        assert_eq!(h.uri, b"/api/v1/items?page=2&sort=name");
        assert_eq!(h.path, b"/api/v1/items");
        assert_eq!(h.query, b"page=2&sort=name");
        assert_eq!(h.fragment, b"");
        assert_eq!(h.version, (1, 1));
        assert_eq!(h.headers.len(), 6);
        assert_eq!(h.headers[0].name, b"Host");
        assert_eq!(&*h.headers[0].value, b"www.example.com");
        assert!(matches!(h.headers[0].value, Cow::Borrowed(_)));
        assert_eq!(h.body, BodyKind::None);
        assert!(h.keep_alive);
        assert!(!h.expect_continue);
    }

    #[test]
    fn no_headers_and_pipelining() {
        let buf = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi";
        let (h, n) = ok(buf);
        assert_eq!(h.path, b"/a");
        assert_eq!(n, 19);
        assert!(h.headers.is_empty());
        let (h, n2) = ok(&buf[n..]);
        assert_eq!(h.path, b"/b");
        let (h, n3) = ok(&buf[n + n2..]);
        assert_eq!(h.path, b"/c");
        assert_eq!(h.body, BodyKind::Length(2));
        assert_eq!(&buf[n + n2 + n3..], b"hi");
    }

    #[test]
    fn partial_at_every_prefix() {
        for full in [
            TYPICAL,
            &b"\r\nPOST /x HTTP/1.0\r\nContent-Length: 0\r\nA: b\r\n  c\r\n\r\n"[..],
        ] {
            let mut c = cfg();
            c.permit_obsolete_folding = true;
            for i in 0..full.len() {
                assert!(partial(&full[..i], &c), "prefix {}", i);
            }
            let (_, n) = ok_cfg(full, &c);
            assert_eq!(n, full.len());
        }
    }

    #[test]
    fn leading_empty_line() {
        let (h, n) = ok(b"\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!((h.path, n), (&b"/"[..], 20));
        assert!(partial(b"\r", &cfg()));
        // only one is skipped
        assert_eq!(status(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"\nGET / HTTP/1.1\r\n\r\n"), 400);
        // the limit applies to the line after the empty one
        let mut c = cfg();
        c.limit_request_line = 10;
        assert_eq!(status_cfg(b"\r\nGET /abcdefghij HTTP/1.1\r\n\r\n", &c), 414);
    }

    #[test]
    fn request_line_limit() {
        let mut c = cfg();
        c.limit_request_line = 20;
        assert_eq!(
            ok_cfg(b"GET /123456 HTTP/1.1\r\n\r\n", &c).0.path,
            b"/123456"
        ); // 20 bytes
        assert_eq!(status_cfg(b"GET /1234567 HTTP/1.1\r\n\r\n", &c), 414);
        // incomplete: 414 as soon as len - 2 > limit
        assert!(partial(b"GET /12345678901234567", &c)); // 22 bytes
        assert_eq!(status_cfg(b"GET /123456789012345678", &c), 414);
        // default 4094 and cap 8190
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(4090));
        assert_eq!(status(long.as_bytes()), 414);
        c.limit_request_line = 100_000;
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(8180));
        assert_eq!(status_cfg(long.as_bytes(), &c), 414);
        let ok_long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(8170));
        ok_cfg(ok_long.as_bytes(), &c);
        // 0 = unlimited (bounded at 1 MiB)
        c.limit_request_line = 0;
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(100_000));
        ok_cfg(long.as_bytes(), &c);
        let huge = vec![b'a'; 2 * 1024 * 1024];
        assert_eq!(status_cfg(&huge, &c), 414);
    }

    #[test]
    fn huge_partial_inputs_hit_limits() {
        // endless request line
        let buf = vec![b'A'; 10_000];
        assert_eq!(status(&buf), 414);
        // endless header line
        let mut buf = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        buf.extend(std::iter::repeat_n(b'a', 9000));
        assert_eq!(status(&buf), 431);
        // endless header name without colon: still refused
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        buf.extend(std::iter::repeat_n(b'a', 9000));
        assert_eq!(status(&buf), 431);
        // too many header lines
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..101 {
            buf.extend(format!("X-H{}: v\r\n", i).bytes());
        }
        assert_eq!(status(&buf), 431);
        // 100 is fine
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            buf.extend(format!("X-H{}: v\r\n", i).bytes());
        }
        assert!(partial(&buf, &cfg()));
        buf.extend(b"\r\n");
        assert_eq!(ok(&buf).0.headers.len(), 100);
        // dropped '_' headers do not count against the field count (as
        // gunicorn), but the buffered head is still bounded
        let mut c = cfg();
        c.limit_request_fields = 2;
        c.limit_request_field_size = 20;
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        let mut hit = None;
        for i in 0..200 {
            buf.extend(b"X_A: 1\r\n");
            if let Err(e) = parse_request(&buf, &c, false) {
                hit = Some((i, e.status));
                break;
            }
        }
        let (i, s) = hit.expect("bounded");
        assert_eq!(s, 431);
        assert!(i * 8 <= 2 * 22 + 4);
        // an early-error on partial input reports gunicorn's first error
        let mut buf = b"GET / HTTP/1.1\r\nBad Name: x\r\n".to_vec();
        buf.extend(std::iter::repeat_n(b'a', 9000));
        assert_eq!(status(&buf), 400);
    }

    #[test]
    fn field_limits() {
        let mut c = cfg();
        c.limit_request_fields = 2;
        ok_cfg(&with_headers("A: 1\r\nB: 2"), &c);
        assert_eq!(status_cfg(&with_headers("A: 1\r\nB: 2\r\nC: 3"), &c), 431);
        c.limit_request_field_size = 10; // line + CRLF
        ok_cfg(&with_headers("A: 12345"), &c); // 8 + 2
        assert_eq!(status_cfg(&with_headers("A: 123456"), &c), 431);
        // folded lines count towards the same field
        c.permit_obsolete_folding = true;
        assert_eq!(status_cfg(&with_headers("A: 1\r\n 23"), &c), 431);
        // 0 means gunicorn's fallback 8190, not unlimited
        c.limit_request_field_size = 0;
        c.limit_request_fields = 0;
        ok_cfg(&with_headers(&format!("A: {}", "x".repeat(8185))), &c);
        assert_eq!(
            status_cfg(&with_headers(&format!("A: {}", "x".repeat(8186))), &c),
            431
        );
    }

    #[test]
    fn bare_lf() {
        assert_eq!(status(b"GET / HTTP/1.1\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\nHost: a\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\n\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\n\n"), 400);
        // even before the head is complete
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\nX"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\n"), 400);
        // bare CR in a value
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"), 400);
    }

    #[test]
    fn methods() {
        for m in [
            "GET",
            "DELETE",
            "PROPFIND",
            "M-SEARCH",
            "ABCDEFGHIJKLMNOPQRST",
        ] {
            assert_eq!(ok(&req(&format!("{} / HTTP/1.1", m))).0.method, m);
        }
        for m in [
            "get",
            "Get",
            "GE",
            "ABCDEFGHIJKLMNOPQRSTU",
            "G#T",
            "GE(T",
            "GE\x01T",
            "",
        ] {
            assert_eq!(status(&req(&format!("{} / HTTP/1.1", m))), 400, "{m}");
        }
        let mut c = cfg();
        c.permit_unconventional_http_method = true;
        for m in ["get", "GE", "X", "G#T", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"] {
            let b = req(&format!("{} / HTTP/1.1", m));
            assert_eq!(ok_cfg(&b, &c).0.method, m);
        }
        assert_eq!(status_cfg(&req("GE(T / HTTP/1.1"), &c), 400);
        assert_eq!(status_cfg(&req(" / HTTP/1.1"), &c), 400);
        c.casefold_http_method = true;
        let b = req("get / HTTP/1.1");
        let (h, _) = ok_cfg(&b, &c);
        assert_eq!(h.method, "GET");
        assert!(matches!(h.method, Cow::Owned(_)));
        // casefold alone does not permit lower case
        let mut c = cfg();
        c.casefold_http_method = true;
        assert_eq!(status_cfg(&req("get / HTTP/1.1"), &c), 400);
    }

    #[test]
    fn versions() {
        assert_eq!(ok(&req("GET / HTTP/1.0")).0.version, (1, 0));
        assert_eq!(ok(&req("GET / HTTP/1.2")).0.version, (1, 2));
        assert_eq!(ok(&req("GET / HTTP/1.9")).0.version, (1, 9));
        for v in [
            "HTTP/2.0",
            "HTTP/0.9",
            "HTTP/3.0",
            "http/1.1",
            "HTTP/1",
            "HTTP/1.10",
            "HTTP/11.1",
            "HTTP/1.1 ",
            "HTTP/1.x",
            "HTTP/ 1.1",
        ] {
            assert_eq!(status(&req(&format!("GET / {}", v))), 400, "{v}");
        }
        let mut c = cfg();
        c.permit_unconventional_http_version = true;
        assert_eq!(ok_cfg(&req("GET / HTTP/2.0"), &c).0.version, (2, 0));
        assert_eq!(ok_cfg(&req("GET / HTTP/0.9"), &c).0.version, (0, 9));
        assert_eq!(status_cfg(&req("GET / HTTP/1.10"), &c), 400);
        // request line shape
        assert_eq!(status(&req("GET /")), 400);
        assert_eq!(status(&req("GET")), 400);
        assert_eq!(status(&req("GET  / HTTP/1.1")), 400);
        assert_eq!(status(&req("GET / HTTP/1.1 extra")), 400);
    }

    #[test]
    fn targets() {
        let b = req("GET /a/b%2Fc?x=1?y#f?g#h HTTP/1.1");
        let (h, _) = ok(&b);
        assert_eq!(
            (h.path, h.query, h.fragment),
            (&b"/a/b%2Fc"[..], &b"x=1?y"[..], &b"f?g#h"[..])
        );
        let b = req("GET /a#f?q HTTP/1.1");
        let (h, _) = ok(&b);
        assert_eq!(
            (h.path, h.query, h.fragment),
            (&b"/a"[..], &b""[..], &b"f?q"[..])
        );
        // '//' prefix is a path, not a netloc
        let b = req("GET //host/p?q HTTP/1.1");
        let (h, _) = ok(&b);
        assert_eq!((h.path, h.query), (&b"//host/p"[..], &b"q"[..]));
        // absolute-form
        let b = req("GET http://example.com:8080/p/q?x#y HTTP/1.1");
        let (h, _) = ok(&b);
        assert_eq!(h.uri, b"http://example.com:8080/p/q?x#y");
        assert_eq!(
            (h.path, h.query, h.fragment),
            (&b"/p/q"[..], &b"x"[..], &b"y"[..])
        );
        let b = req("GET https://example.com HTTP/1.1");
        assert_eq!(ok(&b).0.path, b"");
        let b = req("GET http://example.com?q HTTP/1.1");
        assert_eq!((ok(&b).0.path, ok(&b).0.query), (&b""[..], &b"q"[..]));
        let b = req("GET http://[::1]:80/x HTTP/1.1");
        assert_eq!(ok(&b).0.path, b"/x");
        let b = req("GET http://[v1.fe]/x HTTP/1.1");
        assert_eq!(ok(&b).0.path, b"/x");
        assert_eq!(status(&req("GET http://[::1/x HTTP/1.1")), 400);
        assert_eq!(status(&req("GET http://::1]/x HTTP/1.1")), 400);
        assert_eq!(status(&req("GET http://[1.2.3.4]/x HTTP/1.1")), 400);
        assert_eq!(status(&req("GET http://[zz]/x HTTP/1.1")), 400);
        // asterisk-form only with OPTIONS
        let b = req("OPTIONS * HTTP/1.1");
        let (h, _) = ok(&b);
        assert_eq!((h.uri, h.path), (&b"*"[..], &b"*"[..]));
        assert_eq!(status(&req("GET * HTTP/1.1")), 400);
        // authority-form only with CONNECT
        let b = req("CONNECT example.com:443 HTTP/1.1");
        let (h, _) = ok(&b);
        assert_eq!(h.uri, b"example.com:443");
        assert_eq!(h.path, b"443"); // what urlsplit makes of it
        assert!(!h.keep_alive);
        assert_eq!(status(&req("GET example.com:443 HTTP/1.1")), 400);
        assert_eq!(status(&req("GET a HTTP/1.1")), 400);
        // characters: printable ASCII only
        for t in ["/a\x7f", "/\u{e9}", "/a\x01", "/a\tb"] {
            assert_eq!(status(&req(&format!("GET {} HTTP/1.1", t))), 400);
        }
        assert_eq!(status(b"GET /\xff HTTP/1.1\r\n\r\n"), 400);
        ok(&req("GET /!$&'()*+,;=:@-._~%20[]{}|^`\"<>\\ HTTP/1.1"));
    }

    #[test]
    fn header_syntax() {
        let b = with_headers("A:b\r\nC:  d e \t\r\nE:\r\nF: \t");
        let (h, _) = ok(&b);
        let v: Vec<(&[u8], &[u8])> = h.headers.iter().map(|h| (h.name, &*h.value)).collect();
        assert_eq!(
            v,
            vec![
                (&b"A"[..], &b"b"[..]),
                (b"C", b"d e"),
                (b"E", b""),
                (b"F", b"")
            ]
        );
        for bad in [
            "A b: c",
            ": c",
            "nocolon",
            "A\x01: b",
            "(A): b",
            "A\u{e9}: b",
        ] {
            assert_eq!(status(&with_headers(bad)), 400, "{bad:?}");
        }
        for bad in ["A: b\x00", "A: b\x7f", "A: \x1fb", "A: b\x0bc"] {
            assert_eq!(status(&with_headers(bad)), 400, "{bad:?}");
        }
        // obs-text and HTAB are fine in values
        let b = b"GET / HTTP/1.1\r\nA: caf\xe9\tx\r\n\r\n";
        assert_eq!(&*ok(b).0.headers[0].value, b"caf\xe9\tx");
        // whitespace before colon
        assert_eq!(status(&with_headers("Host : a")), 400);
        assert_eq!(status(&with_headers("Host\t: a")), 400);
        let mut c = cfg();
        c.strip_header_spaces = true;
        let b = with_headers("Host \t: a");
        assert_eq!(ok_cfg(&b, &c).0.headers[0].name, b"Host");
        assert_eq!(status_cfg(&with_headers(" Host: a"), &c), 400);
    }

    #[test]
    fn obsolete_folding() {
        let b = with_headers("A: b\r\n  c \r\n\td\r\nE: f");
        assert_eq!(status(&b), 400);
        let mut c = cfg();
        c.permit_obsolete_folding = true;
        let (h, _) = ok_cfg(&b, &c);
        assert_eq!(&*h.headers[0].value, b"b c d");
        assert!(matches!(h.headers[0].value, Cow::Owned(_)));
        assert_eq!(&*h.headers[1].value, b"f");
        // first header line cannot be a continuation
        assert_eq!(status_cfg(&with_headers(" A: b"), &c), 400);
        // invalid characters in a continuation line
        assert_eq!(status_cfg(&with_headers("A: b\r\n c\x01"), &c), 400);
    }

    #[test]
    fn content_length_rules() {
        assert_eq!(
            ok(&with_headers("Content-Length: 0")).0.body,
            BodyKind::Length(0)
        );
        assert_eq!(
            ok(&with_headers("content-length:  0012 ")).0.body,
            BodyKind::Length(12)
        );
        assert_eq!(
            ok(&with_headers("Content-Length: 18446744073709551615"))
                .0
                .body,
            BodyKind::Length(u64::MAX)
        );
        for bad in [
            "Content-Length: 18446744073709551616",
            "Content-Length: -1",
            "Content-Length: +1",
            "Content-Length: 1 2",
            "Content-Length: 0x10",
            "Content-Length:",
            "Content-Length: 1,1",
            "Content-Length: 1\r\nContent-Length: 1",
            "Content-Length: 1\r\ncontent-length: 2",
        ] {
            assert_eq!(status(&with_headers(bad)), 400, "{bad:?}");
        }
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n"),
            400
        );
    }

    #[test]
    fn transfer_encoding_rules() {
        assert_eq!(
            ok(&with_headers("Transfer-Encoding: chunked")).0.body,
            BodyKind::Chunked
        );
        assert_eq!(
            ok(&with_headers("Transfer-Encoding: CHUNKED")).0.body,
            BodyKind::Chunked
        );
        assert_eq!(
            ok(&with_headers("Transfer-Encoding: identity, chunked"))
                .0
                .body,
            BodyKind::Chunked
        );
        let b = with_headers("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked");
        let (h, _) = ok(&b);
        assert_eq!(h.body, BodyKind::Chunked);
        assert!(!h.keep_alive); // gzip forces close
        let b = with_headers("Transfer-Encoding: deflate ,\tchunked");
        let (h, _) = ok(&b);
        assert!(!h.keep_alive);
        // unknown coding: 501
        for bad in [
            "Transfer-Encoding: br, chunked",
            "Transfer-Encoding: chunked, x",
            "Transfer-Encoding: chunked,",
            "Transfer-Encoding: ",
            "Transfer-Encoding: ,chunked",
        ] {
            assert_eq!(status(&with_headers(bad)), 501, "{bad:?}");
        }
        // malformed framing: 400
        for bad in [
            "Transfer-Encoding: gzip",
            "Transfer-Encoding: identity",
            "Transfer-Encoding: chunked, gzip",
            "Transfer-Encoding: chunked, chunked",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: chunked, identity",
            "Transfer-Encoding: chunked\r\nContent-Length: 3",
            "Content-Length: 3\r\nTransfer-Encoding: chunked",
        ] {
            assert_eq!(status(&with_headers(bad)), 400, "{bad:?}");
        }
        // chunked on HTTP/1.0
        assert_eq!(
            status(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        // errors come in header order: CL duplicate before unknown coding
        assert_eq!(
            status(&with_headers(
                "Content-Length: 1\r\nContent-Length: 1\r\nTransfer-Encoding: x"
            )),
            400
        );
        assert_eq!(
            status(&with_headers(
                "Transfer-Encoding: x\r\nContent-Length: 1\r\nContent-Length: 1"
            )),
            501
        );
        // header errors come before framing errors
        assert_eq!(
            status(&with_headers("Transfer-Encoding: x\r\nExpect: y")),
            417
        );
    }

    #[test]
    fn expect() {
        let b = with_headers("Expect: 100-Continue");
        let (h, _) = ok(&b);
        assert!(h.expect_continue);
        let (h, _) = ok(b"GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n");
        assert!(!h.expect_continue);
        assert_eq!(status(&with_headers("Expect: 100-continue, x")), 417);
        assert_eq!(status(&with_headers("Expect: foo")), 417);
        assert_eq!(status(b"GET / HTTP/1.0\r\nExpect: foo\r\n\r\n"), 417);
        assert_eq!(status(&with_headers("Expect:")), 417);
    }

    #[test]
    fn singletons() {
        assert_eq!(status(&with_headers("Host: a\r\nhost: a")), 400);
        assert_eq!(
            status(&with_headers("Content-Type: a\r\nContent-Type: a")),
            400
        );
        assert_eq!(
            ok(&with_headers("Accept: a\r\nAccept: b")).0.headers.len(),
            2
        );
    }

    #[test]
    fn connection_and_keep_alive() {
        assert!(ok(&with_headers("X: y")).0.keep_alive);
        assert!(!ok(&with_headers("Connection: Close")).0.keep_alive);
        assert!(!ok(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive);
        assert!(
            ok(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .0
                .keep_alive
        );
        // only the first Connection header counts, and only exact values
        assert!(
            ok(&with_headers("Connection: upgrade\r\nConnection: close"))
                .0
                .keep_alive
        );
        assert!(ok(&with_headers("Connection: close, foo")).0.keep_alive);
        assert!(
            !ok(b"GET / HTTP/1.0\r\nConnection: keep-alive, x\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(
            !ok(b"GET / HTTP/1.0\r\nConnection: te\r\nConnection: keep-alive\r\n\r\n")
                .0
                .keep_alive
        );
    }

    #[test]
    fn underscore_headers() {
        let b = with_headers("X_Foo: 1\r\nSCRIPT_NAME: /s\r\nX-Bar: 2");
        // drop (default), untrusted: all '_' headers dropped
        let (h, _) = ok(&b);
        let names: Vec<&[u8]> = h.headers.iter().map(|h| h.name).collect();
        assert_eq!(names, vec![&b"X-Bar"[..]]);
        // trusted forwarder: SCRIPT_NAME survives
        let c = cfg();
        let Ok(Parsed::Complete { head, .. }) = parse_request(&b, &c, true) else {
            panic!()
        };
        let names: Vec<&[u8]> = head.headers.iter().map(|h| h.name).collect();
        assert_eq!(names, vec![&b"SCRIPT_NAME"[..], b"X-Bar"]);
        // names are compared upper-cased
        let b2 = with_headers("script_name: /s");
        let Ok(Parsed::Complete { head, .. }) = parse_request(&b2, &c, true) else {
            panic!()
        };
        assert_eq!(head.headers.len(), 1);
        // '*' trusts all
        let mut c = cfg();
        c.forwarder_headers = vec!["*".into()];
        let Ok(Parsed::Complete { head, .. }) = parse_request(&b, &c, true) else {
            panic!()
        };
        assert_eq!(head.headers.len(), 3);
        // lower-case entries never match (gunicorn)
        c.forwarder_headers = vec!["x_foo".into()];
        let Ok(Parsed::Complete { head, .. }) = parse_request(&b, &c, true) else {
            panic!()
        };
        assert_eq!(head.headers.len(), 1);
        // refuse
        let mut c = cfg();
        c.header_map = HeaderMap::Refuse;
        assert_eq!(status_cfg(&b, &c), 400);
        let b3 = with_headers("SCRIPT_NAME: /s");
        let Ok(Parsed::Complete { head, .. }) = parse_request(&b3, &c, true) else {
            panic!()
        };
        assert_eq!(head.headers.len(), 1);
        // dangerous
        c.header_map = HeaderMap::Dangerous;
        assert_eq!(ok_cfg(&b, &c).0.headers.len(), 3);
    }

    #[test]
    fn error_statuses_and_response() {
        let e = parse_request(
            b"GET / HTTP/1.1\r\nTransfer-Encoding: foo\r\n\r\n",
            &cfg(),
            false,
        )
        .unwrap_err();
        assert_eq!((e.status, e.reason), (501, "Bad Request"));
        let r = String::from_utf8(e.response_bytes()).unwrap();
        assert!(r.starts_with(
            "HTTP/1.1 501 Bad Request\r\nConnection: close\r\nContent-Type: text/html\r\n"
        ));
        assert!(r.contains("Unsupported transfer coding: &#x27;foo&#x27;"));
        let e = parse_request(&with_headers("Expect: x"), &cfg(), false).unwrap_err();
        assert_eq!((e.status, e.reason), (417, "Expectation Failed"));
        let e = parse_request(&vec![b'a'; 5000], &cfg(), false).unwrap_err();
        assert_eq!((e.status, e.reason), (414, "URI Too Long"));
    }

    fn byte_by_byte(full: &[u8], c: &ParserConfig) -> String {
        let cuts: Vec<usize> = (0..full.len()).collect();
        reference::same_as_reference(full, &cuts, c, false)
    }

    /// Every input of the tests above, fed one byte at a time, under
    /// several configurations: same answers as the reference, call for call.
    #[test]
    fn head_parser_matches_reference_byte_by_byte() {
        let mut inputs: Vec<Vec<u8>> = vec![
            TYPICAL.to_vec(),
            b"\r\nPOST /x HTTP/1.0\r\nContent-Length: 0\r\nA: b\r\n  c\r\n\r\n".to_vec(),
            b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n".to_vec(),
            b"\r\n\r\nGET / HTTP/1.1\r\n\r\n".to_vec(),
            b"\nGET / HTTP/1.1\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\r\n\n".to_vec(),
            b"GET / HTTP/1.1\r\nA: caf\xe9\tx\r\n\r\n".to_vec(),
            vec![b'A'; 10_000],
        ];
        for h in [
            "A: b\r\n  c \r\n\td\r\nE: f",
            " A: b",
            "A: b\r\n c\x01",
            "A: b\x01\r\n c",
            "Expect: 100-continue",
            "Expect: 100-\r\n continue",
            "Expect: 100-continue\r\n x",
            "Expect: foo",
            "Host: a\r\nhost: a",
            "Content-Type: a\r\n b\r\nContent-Type: a",
            "X_Foo: 1\r\nSCRIPT_NAME: /s\r\nX-Bar: 2",
            "Host : a",
            "Host \t: a",
            "Bad Name: x",
            "nocolon",
            ": c",
            "Transfer-Encoding: chunked\r\nContent-Length: 3",
            "Content-Length: 18446744073709551616",
        ] {
            inputs.push(with_headers(h));
        }
        let mut long = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 9000));
        inputs.push(long);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..120 {
            many.extend(format!("X-H{}: v\r\n", i).bytes());
        }
        inputs.push(many);
        let mut dropped = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..40 {
            dropped.extend(b"X_A: 1\r\n");
        }
        dropped.extend(b"\r\n");
        inputs.push(dropped);
        let mut bad_then_long = b"GET / HTTP/1.1\r\nBad Name: x\r\n".to_vec();
        bad_then_long.extend(std::iter::repeat_n(b'a', 9000));
        inputs.push(bad_then_long);

        let mut small = cfg();
        small.limit_request_line = 30;
        small.limit_request_fields = 2;
        small.limit_request_field_size = 20;
        let mut folding = small.clone();
        folding.permit_obsolete_folding = true;
        folding.strip_header_spaces = true;
        let mut refuse = folding.clone();
        refuse.header_map = HeaderMap::Refuse;
        let mut dangerous = cfg();
        dangerous.header_map = HeaderMap::Dangerous;
        dangerous.permit_obsolete_folding = true;
        for c in [cfg(), small, folding, refuse, dangerous] {
            for input in &inputs {
                byte_by_byte(input, &c);
            }
        }
    }

    /// Errors found on incomplete input come at the same call, with the
    /// same detail, when the head arrives in pieces.
    #[test]
    fn head_parser_partial_errors() {
        let mut c = cfg();
        c.limit_request_fields = 2;
        c.limit_request_field_size = 20;
        c.permit_obsolete_folding = true;
        // third field while the second is folded: "too many fields"
        let r = byte_by_byte(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n x\r\nC: 3\r\n", &c);
        assert!(r.contains("limit request headers fields'"), "{r}");
        // folded field outgrows the field size before the head ends
        let r = byte_by_byte(
            b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n xxxxxxxxxxxxxxx\r\n",
            &c,
        );
        assert!(r.contains("fields size"), "{r}");
        // an Expect value completed by a continuation line, then refused
        c.limit_request_field_size = 40;
        let r = byte_by_byte(
            b"GET / HTTP/1.1\r\nExpect: 100-\r\n continue\r\n x\r\nA: 1\r\nB: 2\r\nC: 3\r\n",
            &c,
        );
        assert!(
            r.contains("Unable to comply with expectation: '100- continue x'"),
            "{r}"
        );
        // a refused header among dropped ones, reported while incomplete
        c.header_map = HeaderMap::Refuse;
        let r = byte_by_byte(b"GET / HTTP/1.1\r\nX_A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n", &c);
        assert!(r.contains("Invalid HTTP header name: 'X_A'"), "{r}");
    }

    /// A head of 64 KiB arriving one byte per read: the bytes examined grow
    /// linearly (re-parsing from the start would examine ~2 G bytes). Each
    /// read examines its new byte a few times (LF scan, the head-end search
    /// which looks back 3 bytes, the final parse): about 6 per byte.
    #[test]
    fn head_parser_work_is_linear() {
        let mut c = cfg();
        c.limit_request_fields = 2000;
        let mut head = b"POST /upload HTTP/1.1\r\n".to_vec();
        let mut i = 0;
        while head.len() < 64 * 1024 {
            head.extend(format!("X-Field-{i}: {}\r\n", "v".repeat(40)).bytes());
            i += 1;
        }
        head.extend(b"\r\n");
        let mut hp = HeadParser::new();
        let mut result = None;
        for end in 1..=head.len() {
            match hp.parse(&head[..end], &c, false) {
                Ok(Parsed::Partial) => {}
                other => {
                    result = Some((end, format!("{other:?}")));
                    break;
                }
            }
        }
        let (end, r) = result.expect("complete");
        assert_eq!(end, head.len());
        assert!(r.starts_with("Ok(Complete"), "{r}");
        assert!(
            hp.examined <= 8 * head.len(),
            "examined {} bytes for a {}-byte head",
            hp.examined,
            head.len()
        );

        // The same when a limit is already exceeded and the fields must be
        // validated at every read (dropped '_' fields do not count, so
        // the head goes on): each line is still examined once.
        let mut c = cfg();
        c.limit_request_fields = 10;
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        while head.len() < 64 * 1024 {
            head.extend(b"X_Dropped: 1\r\n");
        }
        let mut hp = HeadParser::new();
        for end in 1..=head.len() {
            assert!(matches!(
                hp.parse(&head[..end], &c, false),
                Ok(Parsed::Partial)
            ));
        }
        assert!(
            hp.examined <= 8 * head.len(),
            "examined {} bytes for a {}-byte head",
            hp.examined,
            head.len()
        );
    }

    /// Lengths from the wire at and past u64::MAX, and limits from the
    /// configuration at usize::MAX: no overflow, 400 where refused.
    #[test]
    fn extreme_lengths() {
        for (v, want) in [
            ("18446744073709551615", Some(u64::MAX)),
            (
                "000000000000000000000000018446744073709551615",
                Some(u64::MAX),
            ),
            ("18446744073709551616", None),
            ("99999999999999999999999999999", None),
            ("0xFFFFFFFFFFFFFFFFF", None),
        ] {
            let b = with_headers(&format!("Content-Length: {v}"));
            match want {
                Some(n) => assert_eq!(ok(&b).0.body, BodyKind::Length(n)),
                None => assert_eq!(status(&b), 400, "{v}"),
            }
        }
        let mut c = cfg();
        c.limit_request_field_size = usize::MAX;
        c.limit_request_fields = usize::MAX;
        c.limit_request_line = usize::MAX;
        let b = with_headers("Content-Length: 18446744073709551615\r\nA: b");
        let mut hp = HeadParser::new();
        for end in 0..b.len() {
            let r = hp.parse(&b[..end], &c, false);
            assert!(matches!(r, Ok(Parsed::Partial)), "{end}: {r:?}");
        }
        let Ok(Parsed::Complete { head, .. }) = hp.parse(&b, &c, false) else {
            panic!()
        };
        assert_eq!(head.body, BodyKind::Length(u64::MAX));
    }

    #[test]
    fn head_parser_reset_and_reuse() {
        let c = cfg();
        let buf = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        let mut hp = HeadParser::new();
        assert!(matches!(
            hp.parse(&buf[..20], &c, false),
            Ok(Parsed::Partial)
        ));
        let Ok(Parsed::Complete { head, consumed }) = hp.parse(buf, &c, false) else {
            panic!()
        };
        assert_eq!((head.path, consumed), (&b"/a"[..], 28));
        hp.reset();
        let Ok(Parsed::Complete { head, .. }) = hp.parse(&buf[28..], &c, false) else {
            panic!()
        };
        assert_eq!(head.path, b"/b");
        // a shorter buffer without reset is taken as a new head
        let mut hp = HeadParser::new();
        assert!(matches!(
            hp.parse(buf, &c, false),
            Ok(Parsed::Complete { .. })
        ));
        let Ok(Parsed::Complete { head, .. }) = hp.parse(&buf[28..], &c, false) else {
            panic!()
        };
        assert_eq!(head.path, b"/b");
    }

    /// Rough timing; run with
    /// `cargo test --release -- --ignored --nocapture bench`.
    #[test]
    #[ignore]
    fn bench_typical_get() {
        // FERROCORN_BENCH_N / FERROCORN_BENCH_ONLY (new, reference, held):
        // to compare instruction counts, e.g. under
        // `valgrind --tool=callgrind` with N=100000, one variant per run.
        let n: usize = std::env::var("FERROCORN_BENCH_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2_000_000);
        let only = std::env::var("FERROCORN_BENCH_ONLY").ok();
        let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
        let c = cfg();
        let mut total = 0;
        if run("new") {
            let t = std::time::Instant::now();
            for _ in 0..n {
                if let Ok(Parsed::Complete { head, consumed }) =
                    parse_request(std::hint::black_box(TYPICAL), &c, false)
                {
                    total += consumed + head.headers.len();
                }
            }
            let dt = t.elapsed();
            println!(
                "typical 6-header GET ({} bytes): {:.0} ns/parse, {:.2} M parses/s",
                TYPICAL.len(),
                dt.as_nanos() as f64 / n as f64,
                n as f64 / dt.as_secs_f64() / 1e6
            );
        }
        // The same with the stateless parser as it was before HeadParser.
        if run("reference") {
            let t = std::time::Instant::now();
            for _ in 0..n {
                if let Ok(Parsed::Complete { head, consumed }) =
                    reference::parse_request(std::hint::black_box(TYPICAL), &c, false)
                {
                    total += consumed + head.headers.len();
                }
            }
            println!(
                "  reference (before HeadParser): {:.0} ns/parse",
                t.elapsed().as_nanos() as f64 / n as f64
            );
        }
        // A HeadParser held by the connection, reset after each head.
        if run("held") {
            let mut hp = HeadParser::new();
            let t = std::time::Instant::now();
            for _ in 0..n {
                if let Ok(Parsed::Complete { head, consumed }) =
                    hp.parse(std::hint::black_box(TYPICAL), &c, false)
                {
                    total += consumed + head.headers.len();
                }
                hp.reset();
            }
            println!(
                "  held HeadParser + reset: {:.0} ns/parse",
                t.elapsed().as_nanos() as f64 / n as f64
            );
        }
        assert!(total > 0);
    }

    /// A 16 KiB head arriving one byte per read, resumed vs re-parsed; run
    /// with `cargo test --release -- --ignored --nocapture bench`.
    #[test]
    #[ignore]
    fn bench_byte_by_byte() {
        let mut c = cfg();
        c.limit_request_fields = 1000;
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        let mut i = 0;
        while head.len() < 16 * 1024 {
            head.extend(format!("X-Field-{i}: {}\r\n", "v".repeat(40)).bytes());
            i += 1;
        }
        head.extend(b"\r\n");
        let t = std::time::Instant::now();
        let mut hp = HeadParser::new();
        for end in 1..=head.len() {
            let _ = std::hint::black_box(hp.parse(&head[..end], &c, false));
        }
        let resumed = t.elapsed();
        let t = std::time::Instant::now();
        for end in 1..=head.len() {
            let _ = std::hint::black_box(reference::parse_request(&head[..end], &c, false));
        }
        println!(
            "{}-byte head, 1 byte per read: HeadParser {:.2?}, re-parsing {:.2?}",
            head.len(),
            resumed,
            t.elapsed()
        );
    }
}
