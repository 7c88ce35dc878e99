//! A request body as its framing delivers it: `Content-Length` bytes or a
//! de-chunked `Transfer-Encoding: chunked` stream, read lazily through the
//! connection's [`Transport`] as the app asks (nothing is buffered whole).
//!
//! A [`Body`] owns the bytes the connection read past the request head; when
//! the request is done the loop takes them back ([`Body::into_leftover`])
//! with any pipelined request that follows the body.

use std::io;
use std::sync::Arc;

use super::transport::Transport;
use crate::http::chunked::ChunkedDecoder;
use crate::http::{BodyKind, HttpError, ParserConfig};

/// Bytes asked of the socket per read while a body is consumed.
const READ_CHUNK: usize = 64 * 1024;
/// Body bytes the app left unread that are read and dropped so that the
/// connection can be reused; past this it is closed instead.
const DISCARD_LIMIT: u64 = 1 << 20;

enum Framing {
    Done,
    /// Body bytes still to come.
    Length(u64),
    Chunked(Box<ChunkedDecoder>),
}

pub struct Body {
    io: Arc<dyn Transport>,
    /// Bytes read from the socket; `raw[pos..]` not yet consumed.
    raw: Vec<u8>,
    pos: usize,
    framing: Framing,
    /// De-chunked bytes not yet handed out.
    decoded: Vec<u8>,
    dpos: usize,
    /// The peer closed or failed mid-body: the connection cannot be reused.
    broken: bool,
    /// Body bytes handed out (or discarded after the app), for the request
    /// size metric and the logs.
    consumed: u64,
    /// A malformed or truncated body the client is to be told about (400),
    /// instead of a 500 for the exception the app saw.
    bad_request: Option<HttpError>,
}

impl Body {
    /// `raw[pos..]` holds the bytes read past the head.
    pub fn new(
        io: Arc<dyn Transport>,
        kind: BodyKind,
        raw: Vec<u8>,
        pos: usize,
        parser: &ParserConfig,
    ) -> Body {
        let framing = match kind {
            BodyKind::None | BodyKind::Length(0) => Framing::Done,
            BodyKind::Length(n) => Framing::Length(n),
            BodyKind::Chunked => Framing::Chunked(Box::new(ChunkedDecoder::with_config(parser))),
        };
        Body {
            io,
            pos: pos.min(raw.len()),
            raw,
            framing,
            decoded: Vec::new(),
            dpos: 0,
            broken: false,
            consumed: 0,
            bad_request: None,
        }
    }

    /// The connection's transport (the response goes out through it too).
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.io
    }

    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The client sent a malformed or truncated body: the answer it gets.
    pub fn take_bad_request(&mut self) -> Option<HttpError> {
        self.bad_request.take()
    }

    /// Reads more from the socket into `raw`. Ok(false) at end of stream.
    fn fill_raw(&mut self) -> io::Result<bool> {
        if self.pos == self.raw.len() {
            self.raw.clear();
            self.pos = 0;
        }
        Ok(self.io.read(&mut self.raw, READ_CHUNK)? > 0)
    }

    /// Body bytes of `raw` available now (never past the body's end).
    fn raw_avail(&self, left: u64) -> &[u8] {
        let have = self.raw.len() - self.pos;
        // `left` comes from the wire (up to u64::MAX): never add it to an
        // offset, only bound the slice by it.
        let n = usize::try_from(left).map_or(have, |l| l.min(have));
        &self.raw[self.pos..self.pos + n]
    }

    /// Makes at least one body byte available, unless the body is complete.
    /// Returns false at the end of the body.
    fn ensure(&mut self) -> io::Result<bool> {
        loop {
            match &mut self.framing {
                Framing::Done => return Ok(self.dpos < self.decoded.len()),
                Framing::Length(0) => self.framing = Framing::Done,
                Framing::Length(_) => {
                    if self.pos < self.raw.len() {
                        return Ok(true);
                    }
                    if !self.fill_raw()? {
                        // gunicorn: NoMoreData, the client went away.
                        self.broken = true;
                        self.framing = Framing::Done;
                    }
                }
                Framing::Chunked(dec) => {
                    if self.dpos < self.decoded.len() {
                        return Ok(true);
                    }
                    self.decoded.clear();
                    self.dpos = 0;
                    if self.pos < self.raw.len() {
                        let used = match dec.decode(&self.raw[self.pos..], &mut self.decoded) {
                            Ok(n) => n,
                            Err(e) => return Err(self.refuse(e)),
                        };
                        self.pos = self.pos.saturating_add(used).min(self.raw.len());
                        if dec.is_done() {
                            self.framing = Framing::Done;
                            continue;
                        }
                        if !self.decoded.is_empty() {
                            return Ok(true);
                        }
                        if used > 0 {
                            continue;
                        }
                    }
                    let eof_error = dec.eof_error();
                    if !self.fill_raw()? {
                        self.broken = true;
                        self.framing = Framing::Done;
                        if let Some(e) = eof_error {
                            return Err(self.refuse(e));
                        }
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "client closed the connection before the chunked body ended",
                        ));
                    }
                }
            }
        }
    }

    /// Records a client error in the body; the app sees an I/O error.
    fn refuse(&mut self, e: HttpError) -> io::Error {
        let err = io::Error::new(io::ErrorKind::InvalidData, e.detail.clone());
        self.bad_request = Some(e);
        self.broken = true;
        err
    }

    /// Up to `max` available body bytes, appended to `out`, consumed.
    fn take_avail(&mut self, max: usize, out: &mut Vec<u8>) -> usize {
        let n = match &mut self.framing {
            Framing::Length(left) => {
                let avail = {
                    let left = *left;
                    let have = self.raw.len() - self.pos;
                    usize::try_from(left).map_or(have, |l| l.min(have))
                };
                let n = max.min(avail);
                out.extend_from_slice(&self.raw[self.pos..self.pos + n]);
                self.pos += n;
                *left = left.saturating_sub(n as u64);
                n
            }
            _ => {
                let n = max.min(self.decoded.len() - self.dpos);
                out.extend_from_slice(&self.decoded[self.dpos..self.dpos + n]);
                self.dpos += n;
                n
            }
        };
        self.consumed = self.consumed.saturating_add(n as u64);
        n
    }

    /// Reads up to `size` bytes (all of the body when None).
    pub fn read(&mut self, size: Option<usize>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut want = size.unwrap_or(usize::MAX);
        while want > 0 && self.ensure()? {
            want -= self.take_avail(want, &mut out);
        }
        Ok(out)
    }

    /// Up to `max` body bytes that can be had with at most one read from
    /// the socket: for a caller that must not wait (an event loop), whose
    /// transport then fails with `WouldBlock` and leaves the body as it was.
    /// Empty at the end of the body.
    pub fn read_some(&mut self, max: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        if self.ensure()? {
            self.take_avail(max, &mut out);
        }
        Ok(out)
    }

    /// Whether body bytes may still come (false once the body is known to
    /// be complete; a chunked body may say true until its last chunk is read).
    pub fn more(&self) -> bool {
        match &self.framing {
            Framing::Done => self.dpos < self.decoded.len(),
            Framing::Length(left) => *left > 0,
            Framing::Chunked(dec) => self.dpos < self.decoded.len() || !dec.is_done(),
        }
    }

    /// Reads a line (through b'\n'), at most `size` bytes.
    pub fn readline(&mut self, size: Option<usize>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut want = size.unwrap_or(usize::MAX);
        while want > 0 && self.ensure()? {
            let avail: &[u8] = match &self.framing {
                Framing::Length(left) => self.raw_avail(*left),
                _ => &self.decoded[self.dpos..],
            };
            let (n, found) = match memchr::memchr(b'\n', avail) {
                Some(i) if i < want => (i + 1, true),
                _ => (avail.len().min(want), false),
            };
            want -= self.take_avail(n, &mut out);
            if found {
                break;
            }
        }
        Ok(out)
    }

    /// Ends the request's use of its body. When the connection is to be
    /// reused, what the app left unread is discarded (up to a bound).
    /// Returns the body bytes consumed (read or discarded), and the read
    /// buffer with what follows the body (`(raw, pos)`), or None when the
    /// connection cannot be reused.
    pub fn finish(mut self, reuse: bool) -> (u64, Option<(Vec<u8>, usize)>) {
        let clean = reuse && self.discard_rest(DISCARD_LIMIT);
        let consumed = self.consumed;
        (consumed, clean.then_some((self.raw, self.pos)))
    }

    /// Reads and discards the rest of the body, up to `limit` bytes. True
    /// when the body ended cleanly, so the connection can be reused.
    fn discard_rest(&mut self, limit: u64) -> bool {
        let mut sink = Vec::new();
        let mut discarded = 0u64;
        loop {
            match self.ensure() {
                Ok(true) => {
                    sink.clear();
                    discarded += self.take_avail(READ_CHUNK, &mut sink) as u64;
                    if discarded > limit {
                        return false;
                    }
                }
                Ok(false) => return !self.broken,
                Err(_) => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::io::POLL;
    use crate::conn::transport::Inline;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    fn pair() -> (UnixStream, Arc<dyn Transport>) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        b.set_nonblocking(true).expect("nonblocking");
        let io: Arc<dyn Transport> =
            Arc::new(Inline::new(b.as_raw_fd(), Duration::from_secs(2), POLL));
        // The server end stays open as long as the test holds `a` and the
        // transport; leak it so the fd outlives the transport.
        std::mem::forget(b);
        (a, io)
    }

    #[test]
    fn readline_with_a_huge_content_length_reads_what_is_there() {
        use std::io::Write;
        let (mut peer, io) = pair();
        let first = b"hello\nwor".to_vec();
        let mut body = Body::new(
            io,
            BodyKind::Length(u64::MAX),
            first,
            0,
            &ParserConfig::default(),
        );
        assert_eq!(body.readline(None).expect("line"), b"hello\n");
        peer.write_all(b"ld\nmore").expect("write");
        assert_eq!(body.readline(None).expect("line"), b"world\n");
        assert_eq!(body.read(Some(4)).expect("read"), b"more");
        assert_eq!(body.consumed(), 16);
    }

    #[test]
    fn length_body_stops_at_its_end_and_keeps_the_next_request() {
        let (_peer, io) = pair();
        let raw = b"HEADabcGET / HTTP/1.1\r\n".to_vec();
        let mut body = Body::new(io, BodyKind::Length(3), raw, 4, &ParserConfig::default());
        assert_eq!(body.read(None).expect("read"), b"abc");
        let (consumed, leftover) = body.finish(true);
        assert_eq!(consumed, 3);
        let (raw, pos) = leftover.expect("clean end");
        assert_eq!(&raw[pos..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn chunked_eof_after_the_last_chunk_is_a_400() {
        let (peer, io) = pair();
        let raw = b"5\r\nhello\r\n0\r\n".to_vec();
        let mut body = Body::new(io, BodyKind::Chunked, raw, 0, &ParserConfig::default());
        drop(peer);
        assert!(body.read(None).is_err());
        assert_eq!(body.take_bad_request().map(|e| e.status), Some(400));
    }

    #[test]
    fn chunked_eof_mid_chunk_is_no_answer() {
        let (peer, io) = pair();
        let raw = b"5\r\nhel".to_vec();
        let mut body = Body::new(io, BodyKind::Chunked, raw, 0, &ParserConfig::default());
        drop(peer);
        assert!(body.read(None).is_err());
        assert!(body.take_bad_request().is_none());
        assert!(!body.discard_rest(10));
    }

    #[test]
    fn discard_rest_refuses_past_its_limit() {
        use std::io::Write;
        let (mut peer, io) = pair();
        let mut body = Body::new(
            io,
            BodyKind::Length(100_000),
            Vec::new(),
            0,
            &ParserConfig::default(),
        );
        peer.write_all(&[b'x'; 70_000]).expect("write");
        assert!(!body.discard_rest(1000));
    }
}
