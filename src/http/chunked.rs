//! `Transfer-Encoding: chunked` decoder (RFC 9112 7.1), gunicorn 27 rules.
//!
//! * chunk-size: hex digits only (no sign, `0x`, or whitespace before it),
//!   leading zeros allowed, overflow of u64 refused; BWS (SP/HTAB) allowed
//!   between the size and a `;` only; extensions must match RFC 9112's
//!   `chunk-ext` grammar (token / quoted-string values), no bare CR.
//! * chunk data must be followed by exactly CRLF.
//! * the size line is bounded by `max_field_size` (gunicorn:
//!   `limit_request_field_size`, 400 when exceeded); the trailer section
//!   by `max_trailer_fields * (max_field_size + 2) + 4` bytes (431), and its
//!   fields are checked like request headers (count 431, size 431, syntax
//!   400, plus RFC 9110 6.5.1 forbidden trailer names 400). Trailers are
//!   validated and discarded (gunicorn keeps them on `req.trailers`, which
//!   no WSGI app sees).
//!
//! Truncation (EOF before [`ChunkedDecoder::is_done`]) is the caller's to
//! detect; [`ChunkedDecoder::eof_error`] says what gunicorn answers then.

use memchr::{memchr, memmem};

use super::request::{parse_fields, FieldSink, FieldState};
use super::{hex_val, HeaderMap, HttpError, Limits, ParserConfig, TOKEN};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line (possibly partially buffered in `buf`).
    Size,
    /// This many data bytes of the current chunk are left.
    Data(u64),
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// After the last chunk: reading the trailer section into `buf`.
    Trailer,
    Done,
}

/// Streaming chunked-body decoder.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    buf: Vec<u8>,
    limits: Limits,
    strip_header_spaces: bool,
    permit_obsolete_folding: bool,
    header_map: HeaderMap,
}

impl ChunkedDecoder {
    /// `max_trailer_fields` / `max_field_size`: normally the request's
    /// `limit_request_fields` / `limit_request_field_size` (0 means 32768 /
    /// 8190, as gunicorn). Trailer names with `_` are dropped
    /// (`header_map=drop`); see [`ChunkedDecoder::with_config`].
    pub fn new(max_trailer_fields: usize, max_field_size: usize) -> Self {
        ChunkedDecoder {
            state: State::Size,
            buf: Vec::new(),
            limits: Limits::new(0, max_trailer_fields, max_field_size),
            strip_header_spaces: false,
            permit_obsolete_folding: false,
            header_map: HeaderMap::Drop,
        }
    }

    /// Decoder applying all of `cfg`'s field rules to the trailers
    /// (limits, `strip_header_spaces`, `permit_obsolete_folding`,
    /// `header_map`; `forwarder_headers` never apply to trailers).
    pub fn with_config(cfg: &ParserConfig) -> Self {
        let mut d = ChunkedDecoder::new(cfg.limit_request_fields, cfg.limit_request_field_size);
        d.strip_header_spaces = cfg.strip_header_spaces;
        d.permit_obsolete_folding = cfg.permit_obsolete_folding;
        d.header_map = cfg.header_map;
        d
    }

    /// True once the last chunk, the trailer section and its final CRLF
    /// have been consumed. Bytes after that belong to the next request.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// What gunicorn 27 answers when the stream ends at this point: right
    /// after a chunk's data or after the last chunk the terminator is
    /// missing (400, its ChunkMissingTerminator); anywhere else the client
    /// simply went away (None: gunicorn's NoMoreData, no answer).
    pub fn eof_error(&self) -> Option<HttpError> {
        let got: &[u8] = match self.state {
            State::DataCr | State::Trailer => b"",
            State::DataLf => b"\r",
            State::Size | State::Data(_) | State::Done => return None,
        };
        Some(HttpError::bad_request(format!(
            "Invalid chunk terminator is not '\\r\\n': {}",
            super::repr(got)
        )))
    }

    /// Decode as much of `input` as possible, appending body bytes to
    /// `out`. Returns the number of bytes consumed from `input` (all of it
    /// unless the body ended inside it). After an error the decoder must
    /// not be used again (the connection is to be closed).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, HttpError> {
        let mut pos = 0;
        while pos < input.len() {
            let inp = &input[pos..];
            match self.state {
                State::Done => break,
                State::Data(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(inp.len());
                    out.extend_from_slice(&inp[..n]);
                    pos += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data(left)
                    };
                }
                State::DataCr | State::DataLf => {
                    let want = if self.state == State::DataCr {
                        b'\r'
                    } else {
                        b'\n'
                    };
                    if inp[0] != want {
                        let got: &[u8] = if self.state == State::DataCr {
                            &inp[..inp.len().min(2)]
                        } else {
                            &inp[..1]
                        };
                        return Err(HttpError::bad_request(format!(
                            "Invalid chunk terminator is not '\\r\\n': {}",
                            super::repr(got)
                        )));
                    }
                    pos += 1;
                    self.state = if self.state == State::DataCr {
                        State::DataLf
                    } else {
                        State::Size
                    };
                }
                State::Size => pos += self.size_line(inp)?,
                State::Trailer => pos += self.trailer(inp)?,
            }
        }
        Ok(pos)
    }

    /// Consume (part of) a chunk-size line.
    fn size_line(&mut self, inp: &[u8]) -> Result<usize, HttpError> {
        let limit = self.limits.field_size;
        // The line may take `limit` bytes and its CR; beyond that it is too
        // long whether or not its LF has arrived (so the answer does not
        // depend on how the body was split into reads).
        let max = limit.saturating_add(1);
        let Some(nl) = memchr(b'\n', inp) else {
            if self.buf.len().saturating_add(inp.len()) > max {
                return Err(size_line_too_long(limit));
            }
            self.buf.extend_from_slice(inp);
            return Ok(inp.len());
        };
        if self.buf.len().saturating_add(nl) > max {
            return Err(size_line_too_long(limit));
        }
        let size = if self.buf.is_empty() {
            parse_size_line(&inp[..nl], limit)?
        } else {
            self.buf.extend_from_slice(&inp[..nl]);
            let line = std::mem::take(&mut self.buf);
            let r = parse_size_line(&line, limit);
            self.buf = line;
            self.buf.clear();
            r?
        };
        self.state = if size == 0 {
            State::Trailer
        } else {
            State::Data(size)
        };
        Ok(nl + 1)
    }

    /// Consume (part of) the trailer section after the last chunk.
    ///
    /// The section, final CRLF included, may take `max_buffer` bytes, and
    /// every LF in it must end a CRLF. Of these faults (and the end of the
    /// section) the one earliest in the input is reported, so the answer
    /// does not depend on how the body was split into reads.
    fn trailer(&mut self, inp: &[u8]) -> Result<usize, HttpError> {
        let max = self.limits.max_buffer;
        let old = self.buf.len();
        // Never copy more than could still belong to a legal section.
        let take = inp.len().min(max.saturating_sub(old));
        self.buf.extend_from_slice(&inp[..take]);
        let too_large = || HttpError::limit_headers("limit request trailer section size");
        if self.buf.starts_with(b"\r\n") {
            self.finish_trailer();
            return Ok(2usize.saturating_sub(old));
        }
        // Earlier calls found neither a CRLFCRLF nor a bare LF in the old
        // bytes; either may end in the last 3 (resp. 1) of them.
        let end = memmem::find(&self.buf[old.saturating_sub(3)..], b"\r\n\r\n")
            .map(|i| i + old.saturating_sub(3) + 4);
        let scan_to = end.unwrap_or(self.buf.len());
        let from = old.saturating_sub(1);
        // RFC 9112 2.2: trailer lines end with CRLF too.
        let bare_lf = memchr::memchr_iter(b'\n', &self.buf[from..scan_to])
            .map(|p| p + from)
            .find(|&p| p == 0 || self.buf[p - 1] != b'\r');
        // (`buf` holds at most `max` bytes, so a bare LF in it comes before
        // the section could be too large.)
        if bare_lf.is_some() {
            return Err(HttpError::invalid_header(b"bare LF as line terminator"));
        }
        match end {
            Some(end) => {
                // `end <= max` as `buf` holds at most `max` bytes, and
                // `end > old` as the old bytes held no CRLFCRLF.
                let cfg = ParserConfig {
                    strip_header_spaces: self.strip_header_spaces,
                    permit_obsolete_folding: self.permit_obsolete_folding,
                    header_map: self.header_map,
                    forwarder_headers: Vec::new(),
                    ..ParserConfig::default()
                };
                let mut st = FieldState::new((1, 1));
                parse_fields(
                    &self.buf[..end - 4],
                    &cfg,
                    &self.limits,
                    &mut st,
                    true,
                    &[],
                    &mut FieldSink::Discard,
                )?;
                self.finish_trailer();
                Ok(end - old)
            }
            // `max` bytes and no end: the section is longer than allowed.
            None if self.buf.len() >= max => Err(too_large()),
            None => Ok(take),
        }
    }

    fn finish_trailer(&mut self) {
        self.state = State::Done;
        self.buf = Vec::new();
    }
}

fn size_line_too_long(limit: usize) -> HttpError {
    HttpError::bad_request(format!(
        "Invalid chunk size: 'line over {} bytes with no terminator'",
        limit
    ))
}

fn invalid_size(s: &[u8]) -> HttpError {
    HttpError::bad_request(format!("Invalid chunk size: {}", super::repr(s)))
}

/// `line` is everything before the LF (so it must end with CR).
fn parse_size_line(line: &[u8], limit: usize) -> Result<u64, HttpError> {
    let Some(line) = line.strip_suffix(b"\r") else {
        return Err(invalid_size(line));
    };
    if line.len() > limit {
        return Err(size_line_too_long(limit));
    }
    let (mut size, ext) = match memchr(b';', line) {
        Some(i) => (&line[..i], Some(&line[i..])),
        None => (line, None),
    };
    if let Some(ext) = ext {
        if memchr(b'\r', ext).is_some() {
            return Err(HttpError::bad_request(
                "Invalid chunk extension: bare CR not allowed".to_string(),
            ));
        }
        while let [rest @ .., b' ' | b'\t'] = size {
            size = rest;
        }
    }
    if size.is_empty() || !size.iter().all(u8::is_ascii_hexdigit) {
        return Err(invalid_size(size));
    }
    if let Some(ext) = ext {
        if !valid_chunk_ext(ext) {
            return Err(HttpError::bad_request(
                "Invalid chunk extension: invalid chunk extension".to_string(),
            ));
        }
    }
    let mut n: u64 = 0;
    for &c in size {
        let d = hex_val(c).ok_or_else(|| invalid_size(size))?;
        n = n
            .checked_mul(16)
            .and_then(|n| n.checked_add(u64::from(d)))
            .ok_or_else(|| invalid_size(size))?;
    }
    Ok(n)
}

/// RFC 9112 7.1.1 `chunk-ext` (starting at the first `;`):
/// `*( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )`.
fn valid_chunk_ext(mut s: &[u8]) -> bool {
    fn token_len(s: &[u8]) -> usize {
        s.iter().take_while(|&&c| TOKEN[c as usize]).count()
    }
    fn quoted_len(s: &[u8]) -> Option<usize> {
        if s.first() != Some(&b'"') {
            return None;
        }
        let mut i = 1;
        while i < s.len() {
            match s[i] {
                b'"' => return Some(i + 1),
                b'\\' => {
                    let c = *s.get(i + 1)?;
                    if !(c == b'\t' || (0x20..=0x7e).contains(&c) || c >= 0x80) {
                        return None;
                    }
                    i += 2;
                }
                c if c == b'\t'
                    || c == b' '
                    || c == b'!'
                    || (0x23..=0x7e).contains(&c)
                    || c >= 0x80 =>
                {
                    i += 1
                }
                _ => return None,
            }
        }
        None
    }
    loop {
        if s.is_empty() {
            return true;
        }
        let Some(rest) = trim_start(s).strip_prefix(b";") else {
            return false;
        };
        s = trim_start(rest);
        let n = token_len(s);
        if n == 0 {
            return false;
        }
        s = &s[n..];
        let t = trim_start(s);
        if let Some(v) = t.strip_prefix(b"=") {
            let v = trim_start(v);
            let n = token_len(v);
            if n > 0 {
                s = &v[n..];
            } else if let Some(n) = quoted_len(v) {
                s = &v[n..];
            } else {
                return false;
            }
        }
    }
}

fn trim_start(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `input` in one go; returns (body, consumed, done).
    fn run(d: &mut ChunkedDecoder, input: &[u8]) -> Result<(Vec<u8>, usize, bool), u16> {
        let mut out = Vec::new();
        let n = d.decode(input, &mut out).map_err(|e| e.status)?;
        Ok((out, n, d.is_done()))
    }

    fn one(input: &[u8]) -> Result<(Vec<u8>, usize, bool), u16> {
        run(&mut ChunkedDecoder::new(100, 8190), input)
    }

    const BODY: &[u8] = b"5\r\nhello\r\n1;a=b ; c=\"x\\\"y\"\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: yes\r\nY: z\r\n\r\nNEXT";

    #[test]
    fn basic() {
        let (b, n, done) = one(BODY).unwrap();
        assert_eq!(b, b"hello 0123456789");
        assert_eq!(&BODY[n..], b"NEXT");
        assert!(done);
        let (b, n, done) = one(b"0\r\n\r\n").unwrap();
        assert_eq!((b.len(), n, done), (0, 5, true));
        let (b, n, done) = one(b"000003\r\nabc\r\n0\r\n\r\n").unwrap();
        assert_eq!((b, n, done), (b"abc".to_vec(), 18, true));
        // after done nothing more is consumed
        let mut d = ChunkedDecoder::new(100, 8190);
        run(&mut d, b"0\r\n\r\n").unwrap();
        assert_eq!(run(&mut d, b"1\r\nx\r\n").unwrap().1, 0);
    }

    #[test]
    fn split_at_every_boundary() {
        for split in 0..=BODY.len() {
            for split2 in split..=BODY.len() {
                let mut d = ChunkedDecoder::new(100, 8190);
                let mut out = Vec::new();
                let mut pos = 0;
                for (a, b) in [(0, split), (split, split2), (split2, BODY.len())] {
                    if pos < a {
                        continue; // decoder stopped early (done)
                    }
                    let n = d.decode(&BODY[a..b], &mut out).unwrap();
                    pos = a + n;
                    if d.is_done() {
                        break;
                    }
                    assert_eq!(n, b - a);
                }
                assert!(d.is_done(), "split {split} {split2}");
                assert_eq!(out, b"hello 0123456789");
                assert_eq!(&BODY[pos..], b"NEXT");
            }
        }
        // byte by byte
        let mut d = ChunkedDecoder::new(100, 8190);
        let mut out = Vec::new();
        let mut i = 0;
        while !d.is_done() {
            i += d.decode(&BODY[i..i + 1], &mut out).unwrap();
        }
        assert_eq!(&BODY[i..], b"NEXT");
        assert_eq!(out, b"hello 0123456789");
    }

    #[test]
    fn partial_is_not_done() {
        for i in 0..BODY.len() - 4 {
            let r = one(&BODY[..i]).unwrap();
            assert!(!r.2, "{i}");
            assert_eq!(r.1, i);
        }
    }

    #[test]
    fn bad_sizes() {
        for bad in [
            &b"-5\r\nhello\r\n0\r\n\r\n"[..],
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"g\r\n",
            b"1ffffffffffffffff\r\n",
            b"5;\r\nhello\r\n",
            b"5;a=\r\nhello\r\n",
            b"5;a b\r\nhello\r\n",
            b"5;a=\"x\r\nhello\r\n",
            b"5;a\rb\r\nhello\r\n",
            b"5;a \r\nhello\r\n",
            b";a\r\nhello\r\n",
        ] {
            assert_eq!(
                one(bad).unwrap_err(),
                400,
                "{:?}",
                bad.escape_ascii().to_string()
            );
        }
        // fine: leading zeros, BWS before ';', extensions
        assert!(
            one(b"0005 ;x\r\nhello\r\n0 \t; y = z ; q=\"a b\"\r\n\r\n")
                .unwrap()
                .2
        );
        assert!(one(b"ffffffffffffffff\r\n").is_ok());
    }

    #[test]
    fn eof_after_the_last_chunk_is_a_missing_terminator() {
        let mut d = ChunkedDecoder::new(100, 8190);
        let mut out = Vec::new();
        assert_eq!(d.decode(b"5\r\nhello\r\n0\r\n", &mut out), Ok(13));
        let e = d.eof_error().expect("400 at EOF in the trailer section");
        assert_eq!(e.status, 400);
        assert!(e.detail.starts_with("Invalid chunk terminator"), "{e}");
        let mut d = ChunkedDecoder::new(100, 8190);
        assert_eq!(d.decode(b"5\r\nhel", &mut out), Ok(6));
        assert_eq!(d.eof_error(), None, "mid-chunk EOF: the client went away");
        let mut d = ChunkedDecoder::new(100, 8190);
        assert_eq!(d.decode(b"5\r\nhello\r", &mut out), Ok(9));
        assert_eq!(d.eof_error().map(|e| e.status), Some(400));
    }

    #[test]
    fn bad_terminators() {
        for bad in [
            &b"5\r\nhelloX\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\rX",
            b"5\r\nhello\r\r\n",
            b"0\r\n\n",
        ] {
            assert_eq!(
                one(bad).unwrap_err(),
                400,
                "{:?}",
                bad.escape_ascii().to_string()
            );
        }
    }

    #[test]
    fn size_line_limit() {
        let mut d = ChunkedDecoder::new(100, 20);
        let mut line = b"5".to_vec();
        line.extend(std::iter::repeat_n(b'0', 30));
        assert_eq!(run(&mut d, &line).unwrap_err(), 400);
        let mut d = ChunkedDecoder::new(100, 20);
        assert!(run(&mut d, b"5;aaaaaaaaaaaaaaaa\r\n").is_ok()); // 18 bytes
        let mut d = ChunkedDecoder::new(100, 20);
        assert_eq!(
            run(&mut d, b"5;aaaaaaaaaaaaaaaaaaaaa\r\n").unwrap_err(),
            400
        );
        // split line is bounded too
        let mut d = ChunkedDecoder::new(100, 20);
        for _ in 0..25 {
            if run(&mut d, b"0").is_err() {
                return;
            }
        }
        panic!("unbounded size line");
    }

    #[test]
    fn trailers() {
        assert!(one(b"0\r\nA: b\r\nC: d\r\n\r\n").unwrap().2);
        for bad in [
            &b"0\r\nA b: c\r\n\r\n"[..],
            b"0\r\nnocolon\r\n\r\n",
            b"0\r\nA: b\x01\r\n\r\n",
            b"0\r\nA: b\r\n c\r\n\r\n",
            b"0\r\nHost: x\r\n\r\n",
            b"0\r\nContent-Length: 1\r\n\r\n",
            b"0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"0\r\nTrailer: x\r\n\r\n",
            b"0\r\nauthorization: x\r\n\r\n",
            b"0\r\nTE: x\r\n\r\n",
            b"0\r\nContent-Type: a\r\nContent-Type: b\r\n\r\n",
            b"0\r\nA: b\nC: d\r\n\r\n",
            b"0\r\nA: b\nC",
        ] {
            assert_eq!(
                one(bad).unwrap_err(),
                400,
                "{:?}",
                bad.escape_ascii().to_string()
            );
        }
        // Expect is not interpreted in trailers
        assert!(one(b"0\r\nExpect: x\r\n\r\n").unwrap().2);
        // limits: count and field size (431)
        let mut d = ChunkedDecoder::new(2, 8190);
        assert_eq!(
            run(&mut d, b"0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n").unwrap_err(),
            431
        );
        let mut d = ChunkedDecoder::new(2, 10);
        assert_eq!(run(&mut d, b"0\r\nA: 123456\r\n\r\n").unwrap_err(), 431);
        // section size bounded while incomplete: 2 * (10 + 2) + 4 = 28
        let mut d = ChunkedDecoder::new(2, 10);
        let mut err = None;
        let mut fed = 0;
        for _ in 0..100 {
            match run(&mut d, b"0\r\nAAAAAAAAAA"[fed.min(3)..].as_ref()) {
                Err(s) => {
                    err = Some(s);
                    break;
                }
                Ok(_) => fed += 10,
            }
        }
        assert_eq!(err, Some(431));
        assert!(fed <= 40);
        // header_map and folding follow the config
        let c = ParserConfig {
            header_map: HeaderMap::Refuse,
            permit_obsolete_folding: true,
            ..ParserConfig::default()
        };
        let mut d = ChunkedDecoder::with_config(&c);
        assert_eq!(run(&mut d, b"0\r\nX_Y: 1\r\n\r\n").unwrap_err(), 400);
        let mut d = ChunkedDecoder::with_config(&c);
        assert!(run(&mut d, b"0\r\nA: 1\r\n 2\r\n\r\n").unwrap().2);
        let mut d = ChunkedDecoder::new(100, 8190);
        assert!(run(&mut d, b"0\r\nX_Y: 1\r\n\r\n").unwrap().2);
    }

    /// Found by the fuzz test: a trailer section with a bare LF, or one a
    /// few bytes over its bound, was refused in pieces but (with another
    /// message, or not at all) when it arrived at once; a size line without
    /// CR over the limit got another message at once than in pieces.
    #[test]
    fn same_answer_whole_or_split() {
        fn both(d: impl Fn() -> ChunkedDecoder, input: &[u8]) -> Result<usize, HttpError> {
            let mut out = Vec::new();
            let whole = d().decode(input, &mut out);
            let mut dec = d();
            let mut split = Ok(0);
            for i in 0..input.len() {
                match dec.decode(&input[i..i + 1], &mut out) {
                    Ok(n) => split = Ok(i + n),
                    Err(e) => {
                        split = Err(e);
                        break;
                    }
                }
                if dec.is_done() {
                    break;
                }
            }
            assert_eq!(whole, split, "{:?}", input.escape_ascii().to_string());
            whole
        }
        let bare = both(
            || ChunkedDecoder::new(2, 16),
            b"0\r\nX-Trailer-78: 80\r\nX-Trail\ner-24: 43\r\n\r\n",
        );
        assert!(bare.unwrap_err().detail.contains("bare LF"));
        // 2 * (10 + 2) + 4 = 28 bytes, final CRLF included
        let d = || ChunkedDecoder::new(2, 10);
        let mut sec = b"0\r\n".to_vec();
        sec.extend(b"A: 1\r\nX_B: 2\r\nX_C: 3\r\nX:\r\n\r\n"); // 28 bytes
        assert!(both(d, &sec).is_ok());
        sec.splice(4..4, *b"A");
        assert_eq!(both(d, &sec).unwrap_err().status, 431);
        // size line limit with and without CR
        let d = || ChunkedDecoder::new(100, 4);
        assert_eq!(both(d, b"0000\r\n\r\n"), Ok(8));
        for bad in [&b"00000\r\n"[..], b"000000\n", b"0000000000\n"] {
            let e = both(d, bad).unwrap_err();
            assert!(e.detail.contains("line over 4 bytes"), "{e}");
        }
    }

    /// Sizes from the wire at and past u64::MAX, and limits from the
    /// configuration at usize::MAX: no overflow, 400 where refused.
    #[test]
    fn extreme_sizes() {
        let mut d = ChunkedDecoder::new(100, 8190);
        let mut out = Vec::new();
        assert_eq!(d.decode(b"ffffffffffffffff\r\nabc", &mut out), Ok(21));
        assert_eq!(d.state, State::Data(u64::MAX - 3));
        assert_eq!(out, b"abc");
        let mut d = ChunkedDecoder::new(100, 8190);
        assert_eq!(d.decode(b"FFFFFFFFFFFFFFFF;x=\"y\"\r\n", &mut out), Ok(24));
        for bad in [
            &b"10000000000000000\r\n"[..],
            b"FFFFFFFFFFFFFFFFF\r\n",
            b"0xFFFFFFFFFFFFFFFFF\r\n",
            b"18446744073709551615\r\n",
            b"99999999999999999999999999\r\n",
        ] {
            let r = ChunkedDecoder::new(100, 8190).decode(bad, &mut out);
            assert_eq!(r.map_err(|e| e.status), Err(400), "{bad:?}");
        }
        // leading zeros do not overflow
        let mut d = ChunkedDecoder::new(100, 8190);
        let mut z = vec![b'0'; 100];
        z.extend(b"1\r\nx\r\n0\r\n\r\n");
        assert_eq!(d.decode(&z, &mut out), Ok(z.len()));
        assert!(d.is_done());
        // unbounded limits from the configuration
        for (f, s) in [(usize::MAX, usize::MAX), (0, usize::MAX), (usize::MAX, 0)] {
            let mut d = ChunkedDecoder::new(f, s);
            let mut out = Vec::new();
            for b in b"5\r\nhello\r\n0\r\nA: b\r\n\r\n".chunks(3) {
                d.decode(b, &mut out).unwrap();
            }
            assert!(d.is_done());
            assert_eq!(out, b"hello");
        }
    }

    #[test]
    fn large_chunk_streams() {
        let mut d = ChunkedDecoder::new(100, 8190);
        let mut out = Vec::new();
        assert_eq!(d.decode(b"100000\r\n", &mut out).unwrap(), 8);
        let data = vec![7u8; 0x100000];
        for part in data.chunks(4096) {
            assert_eq!(d.decode(part, &mut out).unwrap(), part.len());
        }
        d.decode(b"\r\n0\r\n\r\n", &mut out).unwrap();
        assert!(d.is_done());
        assert_eq!(out.len(), 0x100000);
    }
}
