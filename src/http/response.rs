//! HTTP/1.x response encoding with gunicorn 27's rules: status line and
//! header validation, hop-by-hop headers dropped, bodiless responses, and
//! the body framing (Content-Length, chunked, or close-delimited). Pure
//! bytes: the caller writes [`Encoder::out`] to the socket when it likes.

/// Bytes queued before the caller should write them out; a list response
/// is written with a single write(2) when it fits.
pub const FLUSH_AT: usize = 64 * 1024;

/// One response being encoded.
pub struct Encoder {
    version: (u8, u8),
    is_head: bool,
    /// The request or the server wants the connection closed afterwards.
    must_close: bool,
    /// The status line and headers the app gave.
    head: Head,
    status_code: u16,
    length: Option<u64>,
    /// The Content-Length header is the server's (set_length), not in
    /// `head`.
    length_header: bool,
    chunked: bool,
    omits_body: bool,
    upgrade: bool,
    headers_sent: bool,
    /// Body bytes sent or queued, as gunicorn's `resp.sent`.
    sent: u64,
    out: Vec<u8>,
    warned_body: bool,
}

/// The status line and headers an app gave (hop-by-hop headers dropped),
/// as one string: the status text, then `name: value\r\n` per header. One
/// allocation per response, copied into the head as it is; validation
/// guarantees that names hold no `:` and values no CR or LF, so the pairs
/// can be read back for hooks and the access log.
#[derive(Debug, Default, Clone)]
pub struct Head {
    text: String,
    status_len: Option<usize>,
}

impl Head {
    /// The status line as the app gave it ("200 OK"), once started.
    pub fn status(&self) -> Option<&str> {
        self.status_len.and_then(|n| self.text.get(..n))
    }

    /// The serialized header fields.
    fn fields(&self) -> &str {
        self.text.get(self.status_len.unwrap_or(0)..).unwrap_or("")
    }

    /// The headers as (name, value) pairs, in the order given.
    pub fn headers(&self) -> Vec<(&str, &str)> {
        self.fields()
            .split_terminator("\r\n")
            .filter_map(|field| field.split_once(": "))
            .collect()
    }

    fn start(&mut self, status: &str) {
        self.text.clear();
        // Room for a few headers: no regrowth as they are pushed.
        self.text.reserve(status.len() + 128);
        self.text.push_str(status);
        self.status_len = Some(status.len());
    }

    fn push(&mut self, name: &str, value: &str) {
        self.text.reserve(name.len() + value.len() + 4);
        self.text.push_str(name);
        self.text.push_str(": ");
        self.text.push_str(value);
        self.text.push_str("\r\n");
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// HTAB / SP / VCHAR / obs-text, as chars (the str is later latin-1 encoded).
pub fn is_field_value(s: &str) -> bool {
    if s.is_ascii() {
        return s
            .bytes()
            .all(|b| b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b));
    }
    s.chars().all(|c| {
        c == ' '
            || c == '\t'
            || ('\x21'..='\x7e').contains(&c)
            || ('\u{80}'..='\u{ff}').contains(&c)
    })
}

fn is_status(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 3
        && b[..3].iter().all(u8::is_ascii_digit)
        && (b.len() == 3 || (b[3] == b' ' && is_field_value(&s[4..])))
}

fn is_hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Appends `s` encoded as latin-1 (chars above U+00FF cannot occur: they
/// were rejected by validation).
fn push_latin1(out: &mut Vec<u8>, s: &str) {
    if s.is_ascii() {
        out.extend_from_slice(s.as_bytes());
    } else {
        out.extend(
            s.chars()
                .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?')),
        );
    }
}

pub fn invalid_header_name(name: &str) -> String {
    format!("Invalid response header name {name:?}")
}

pub fn invalid_header(name: &str) -> String {
    format!("Invalid response header value for {name:?}")
}

impl Encoder {
    pub fn new(version: (u8, u8), is_head: bool, must_close: bool) -> Encoder {
        Encoder {
            version,
            is_head,
            must_close,
            head: Head::default(),
            status_code: 0,
            length: None,
            length_header: false,
            chunked: false,
            omits_body: false,
            upgrade: false,
            headers_sent: false,
            sent: 0,
            out: Vec::new(),
            warned_body: false,
        }
    }

    /// Starts (or, before the head is sent, restarts) the response with a
    /// status line; the headers follow with [`Encoder::header`], then
    /// [`Encoder::end_headers`]. Errors are the app's (a ValueError).
    pub fn begin(&mut self, status: &str) -> Result<(), String> {
        if !is_status(status) {
            return Err(format!("Invalid status {status:?}"));
        }
        self.status_code = status[..3].parse().unwrap_or(0);
        self.head.start(status);
        self.length = None;
        self.length_header = false;
        self.upgrade = false;
        Ok(())
    }

    /// Adds a response header, validated; hop-by-hop headers are dropped
    /// (a WebSocket upgrade keeps its `Upgrade`), and so is Content-Length
    /// on a response that cannot have one (1xx, 204: RFC 9110 8.6).
    pub fn header(&mut self, name: &str, value: &str) -> Result<(), String> {
        if !is_token(name) {
            return Err(invalid_header_name(name));
        }
        if !is_field_value(value) {
            return Err(invalid_header(name));
        }
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("content-length") {
            self.length = Some(
                value
                    .parse::<u64>()
                    .map_err(|_| format!("invalid literal for Content-Length: {value:?}"))?,
            );
            if self.status_code == 204 || (100..200).contains(&self.status_code) {
                return Ok(());
            }
        } else if is_hop_by_hop(name) {
            if is("connection") && value.eq_ignore_ascii_case("upgrade") {
                self.upgrade = true;
            } else if is("upgrade") && value.eq_ignore_ascii_case("websocket") {
                self.head.push(name, value);
            }
            return Ok(());
        }
        self.head.push(name, value);
        Ok(())
    }

    /// The server knows the whole body (`n` bytes) before the head goes
    /// out: a Content-Length header of its own, as if the app gave it.
    pub fn set_length(&mut self, n: u64) {
        self.length = Some(n);
        self.length_header = true;
    }

    /// Decides the framing once the headers are known.
    pub fn end_headers(&mut self) {
        let code = self.status_code;
        self.omits_body = self.is_head || code == 204 || code == 304 || (100..200).contains(&code);
        // RFC 9110 6.4.2: no Content-Length on 1xx or 204.
        if code == 204 || (100..200).contains(&code) {
            self.length = None;
        }
        self.chunked = self.length.is_none() && self.version >= (1, 1) && !self.omits_body;
    }

    pub fn started(&self) -> bool {
        self.head.status_len.is_some()
    }

    /// The response to a HEAD request (no body goes out).
    pub fn is_head(&self) -> bool {
        self.is_head
    }

    pub fn headers_sent(&self) -> bool {
        self.headers_sent
    }

    pub fn status_code(&self) -> u16 {
        self.status_code
    }

    pub fn sent(&self) -> u64 {
        self.sent
    }

    pub fn length(&self) -> Option<u64> {
        self.length
    }

    /// The status line and headers as the app gave them.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// [`Encoder::head`], taken out of the encoder.
    pub fn take_head(&mut self) -> Head {
        std::mem::take(&mut self.head)
    }

    /// Records that an error page replaced the response (nothing was sent).
    pub fn replaced_by_error(&mut self, status: u16, body_len: u64) {
        self.status_code = status;
        self.sent = body_len;
        self.must_close = true;
    }

    /// The connection must close after this response (an app error).
    pub fn force_close(&mut self) {
        self.must_close = true;
    }

    /// gunicorn's Response.should_close: whether the connection must close
    /// after this response, as far as the response itself decides.
    pub fn should_close(&self) -> bool {
        if self.must_close {
            return true;
        }
        if self.length.is_some() || self.chunked || self.is_head {
            return false;
        }
        !(self.status_code < 200 || self.status_code == 204 || self.status_code == 304)
    }

    /// Bytes queued for the socket.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Queues the status line and headers (once).
    pub fn queue_head(&mut self) {
        if self.headers_sent {
            return;
        }
        self.headers_sent = true;
        let connection: &[u8] = if self.upgrade {
            b"upgrade"
        } else if self.should_close() {
            b"close"
        } else {
            b"keep-alive"
        };
        let status = self.head.status().unwrap_or("500 Internal Server Error");
        // One allocation for the whole head (the date, the fixed headers
        // and a length take under 128 bytes).
        let size = 128 + self.head.text.len();
        let out = &mut self.out;
        out.reserve(size);
        out.extend_from_slice(if self.version == (1, 0) {
            b"HTTP/1.0 "
        } else {
            b"HTTP/1.1 "
        });
        push_latin1(out, status);
        out.extend_from_slice(b"\r\nServer: ferrocorn\r\nDate: ");
        super::date::append_now(out);
        out.extend_from_slice(b"\r\nConnection: ");
        out.extend_from_slice(connection);
        out.extend_from_slice(b"\r\n");
        if self.chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        push_latin1(out, self.head.fields());
        if let (true, Some(n)) = (self.length_header, self.length) {
            use std::io::Write as _;
            // (Writing to a Vec cannot fail.)
            let _ = write!(out, "Content-Length: {n}\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Queues body bytes with gunicorn's rules (never beyond Content-Length,
    /// nothing for bodiless responses, chunk framing).
    pub fn body(&mut self, data: &[u8]) {
        self.queue_head();
        let mut data = data;
        if self.omits_body {
            if !data.is_empty() && !self.warned_body {
                self.warned_body = true;
                crate::log_warning!(
                    "WSGI app sent body bytes on a no-body response (status={}); dropping per RFC 9110.",
                    self.status_code
                );
            }
            data = &[];
        }
        if let Some(limit) = self.length {
            let room = limit.saturating_sub(self.sent);
            if let Ok(room) = usize::try_from(room) {
                data = &data[..data.len().min(room)];
            }
        }
        if data.is_empty() {
            return;
        }
        self.sent = self.sent.saturating_add(data.len() as u64);
        if self.chunked {
            self.out
                .extend_from_slice(format!("{:X}\r\n", data.len()).as_bytes());
            self.out.extend_from_slice(data);
            self.out.extend_from_slice(b"\r\n");
        } else {
            self.out.extend_from_slice(data);
        }
    }

    /// Ends the response: the head if still unsent, and the last chunk.
    pub fn finish(&mut self) {
        self.queue_head();
        if self.chunked {
            self.out.extend_from_slice(b"0\r\n\r\n");
        }
    }

    /// Prepares a file body of `size` bytes (from the file's current
    /// offset) sent by sendfile(2): queues the head and chunk header.
    /// Returns how many file bytes to send.
    pub fn file_body(&mut self, size: u64) -> u64 {
        let nbytes = self.length.unwrap_or(size);
        self.queue_head();
        if self.omits_body {
            return 0;
        }
        if self.chunked {
            self.out
                .extend_from_slice(format!("{nbytes:X}\r\n").as_bytes());
        }
        nbytes
    }

    /// After a file body went out: counts it and closes its chunk.
    pub fn file_sent(&mut self, nbytes: u64) {
        self.sent = self.sent.saturating_add(nbytes);
        if self.chunked {
            self.out.extend_from_slice(b"\r\n");
        }
    }

    /// A `103 Early Hints` interim response (HTTP/1.1+, before the response
    /// starts); None when it cannot be sent any more.
    pub fn early_hints(&self, headers: &[(String, String)]) -> Result<Option<Vec<u8>>, String> {
        if self.headers_sent || self.version < (1, 1) {
            return Ok(None);
        }
        let mut out = b"HTTP/1.1 103 Early Hints\r\n".to_vec();
        for (name, value) in headers {
            if !is_token(name) {
                return Err(invalid_header_name(name));
            }
            if !is_field_value(value) {
                return Err(invalid_header(name));
            }
            push_latin1(&mut out, name);
            out.extend_from_slice(b": ");
            push_latin1(&mut out, value.trim_matches(|c| c == ' ' || c == '\t'));
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_follow_gunicorn() {
        assert!(is_status("200 OK"));
        assert!(is_status("200"));
        assert!(is_status("404 Not \tFound"));
        assert!(!is_status("20 OK"));
        assert!(!is_status("200OK"));
        assert!(!is_status("200 OK\r\n"));
        assert!(!is_status("abc OK"));
    }

    #[test]
    fn header_tokens_and_values() {
        assert!(is_token("X-Custom_1"));
        assert!(!is_token("Bad Name"));
        assert!(!is_token(""));
        assert!(is_field_value("text/plain; charset=é"));
        assert!(!is_field_value("a\r\nInjected: 1"));
        assert!(!is_field_value("\u{100}"));
    }

    fn text(e: &mut Encoder) -> String {
        String::from_utf8_lossy(&std::mem::take(e.out())).into_owned()
    }

    #[test]
    fn content_length_body_is_cut_at_its_length_and_keeps_alive() {
        let mut e = Encoder::new((1, 1), false, false);
        e.begin("200 OK").unwrap();
        e.header("Content-Length", "3").unwrap();
        e.end_headers();
        e.body(b"abcdef");
        e.finish();
        let t = text(&mut e);
        assert!(t.starts_with("HTTP/1.1 200 OK\r\n"), "{t}");
        assert!(t.contains("Connection: keep-alive\r\n"), "{t}");
        assert!(t.ends_with("\r\n\r\nabc"), "{t}");
        assert_eq!(e.sent(), 3);
        assert!(!e.should_close());
    }

    #[test]
    fn unknown_length_is_chunked_on_1_1_and_close_delimited_on_1_0() {
        let mut e = Encoder::new((1, 1), false, false);
        e.begin("200 OK").unwrap();
        e.end_headers();
        e.body(b"hello");
        e.finish();
        let t = text(&mut e);
        assert!(t.contains("Transfer-Encoding: chunked\r\n"), "{t}");
        assert!(t.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{t}");
        let mut e = Encoder::new((1, 0), false, false);
        e.begin("200 OK").unwrap();
        e.end_headers();
        assert!(e.should_close());
        e.body(b"hello");
        e.finish();
        let t = text(&mut e);
        assert!(t.contains("Connection: close\r\n"), "{t}");
        assert!(t.ends_with("\r\n\r\nhello"), "{t}");
    }

    #[test]
    fn bodiless_responses_drop_body_and_hop_by_hop_headers() {
        let mut e = Encoder::new((1, 1), false, false);
        e.begin("204 No Content").unwrap();
        e.header("Content-Length", "5").unwrap();
        e.header("Transfer-Encoding", "chunked").unwrap();
        e.header("X-A", " b ").unwrap();
        e.end_headers();
        e.body(b"nope");
        e.finish();
        let t = text(&mut e);
        assert!(!t.contains("Content-Length"), "{t}");
        assert!(!t.contains("Transfer-Encoding"), "{t}");
        assert!(t.contains("X-A: b\r\n"), "{t}");
        assert!(t.ends_with("\r\n\r\n"), "{t}");
        assert!(e.header("Bad Name", "x").is_err());
        assert!(e.header("X", "a\nb").is_err());
        assert!(e.header("Content-Length", "-1").is_err());
        assert!(e.begin("2000").is_err());
    }

    #[test]
    fn the_head_reads_back_as_the_app_gave_it() {
        let mut e = Encoder::new((1, 1), false, false);
        assert_eq!(e.head().status(), None);
        e.begin("500 Oops").unwrap();
        e.header("X-Gone", "1").unwrap();
        // A restart (start_response with exc_info) replaces everything.
        e.begin("200 Fine: really").unwrap();
        e.header("Content-Type", "text/plain; a=b: c").unwrap();
        e.header("Connection", "close").unwrap();
        e.header("X-Latin", "caf\u{e9}").unwrap();
        e.header("Content-Length", "2").unwrap();
        let head = e.head();
        assert_eq!(head.status(), Some("200 Fine: really"));
        assert_eq!(
            head.headers(),
            [
                ("Content-Type", "text/plain; a=b: c"),
                ("X-Latin", "caf\u{e9}"),
                ("Content-Length", "2"),
            ]
        );
        e.end_headers();
        e.body(b"ok");
        // Latin-1 on the wire.
        let want = b"X-Latin: caf\xe9\r\n";
        assert!(e.out().windows(want.len()).any(|w| w == want));
        let t = text(&mut e);
        assert!(t.starts_with("HTTP/1.1 200 Fine: really\r\n"), "{t}");
        assert!(t.ends_with("\r\nContent-Length: 2\r\n\r\nok"), "{t}");
        let taken = e.take_head();
        assert_eq!(taken.headers().len(), 3);
    }
}
