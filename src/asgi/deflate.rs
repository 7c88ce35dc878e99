//! permessage-deflate (RFC 7692) under tungstenite, which has no extension
//! support: a codec between the socket and tungstenite that inflates the
//! client's compressed messages into plain frames before tungstenite reads
//! them, and compresses tungstenite's data frames on their way out. Every
//! other WebSocket rule (UTF-8, fragmentation, control frames, the close
//! handshake, the size limits) stays tungstenite's.
//!
//! The server takes the first offer it can honour: any `client_*`
//! parameter, `server_no_context_takeover`, `server_max_window_bits=15`
//! (the compressor's window is always 32 KiB, so an offer of a smaller one
//! is declined).

use std::io::{self, Cursor, Read, Write};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// The empty stored block a sync flush ends with: removed from each sent
/// message and added back to each received one (RFC 7692 7.2.1, 7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Messages shorter than this go out uncompressed (allowed: RSV1 is per
/// message); deflate would make them longer.
const MIN_COMPRESS: usize = 64;

/// The agreed parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deflate {
    /// The server starts each message with an empty window.
    pub server_no_context_takeover: bool,
    /// The client said it will (the inflater is reset after each message).
    pub client_no_context_takeover: bool,
}

impl Deflate {
    /// The first permessage-deflate offer among `Sec-WebSocket-Extensions`
    /// values that the server can take; None: no compression.
    pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<Deflate> {
        values
            .into_iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .find_map(|offer| {
                let offer = std::str::from_utf8(offer).ok()?;
                offer_of(offer)
            })
    }

    /// The `Sec-WebSocket-Extensions` response value.
    pub fn response_value(&self) -> String {
        let mut v = String::from("permessage-deflate");
        if self.server_no_context_takeover {
            v.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            v.push_str("; client_no_context_takeover");
        }
        v
    }
}

/// One offer (`permessage-deflate; param; param=value`) if acceptable.
fn offer_of(offer: &str) -> Option<Deflate> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut agreed = Deflate::default();
    let mut seen = Vec::new();
    for p in parts {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        let name = name.to_ascii_lowercase();
        // RFC 7692 7: a parameter twice, or one not known, declines the offer.
        if seen.contains(&name) {
            return None;
        }
        let bits_ok = |v: Option<&str>| {
            v.is_none_or(|v| v.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b)))
        };
        match name.as_str() {
            "server_no_context_takeover" if value.is_none() => {
                agreed.server_no_context_takeover = true;
            }
            "client_no_context_takeover" if value.is_none() => {
                agreed.client_no_context_takeover = true;
            }
            // The inflater's window (32 KiB) takes any smaller one.
            "client_max_window_bits" if bits_ok(value) => {}
            "server_max_window_bits" if value == Some("15") => {}
            _ => return None,
        }
        seen.push(name);
    }
    Some(agreed)
}

/// A frame header and where its payload starts, if `buf` holds it whole.
fn header_of(buf: &[u8]) -> io::Result<Option<(FrameHeader, u64, usize)>> {
    let mut cur = Cursor::new(buf);
    match FrameHeader::parse(&mut cur) {
        Ok(Some((h, len))) => {
            let at = usize::try_from(cur.position()).map_err(io::Error::other)?;
            Ok(Some((h, len, at)))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
    }
}

/// The error a decompressed message over the limit gives (close 1009).
#[derive(Debug)]
pub struct TooBig;

impl std::fmt::Display for TooBig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("decompressed message too big")
    }
}

impl std::error::Error for TooBig {}

/// Whether a read error is a message over the limit (close 1009); other
/// InvalidData errors are compressed data that does not inflate (1007).
pub fn is_too_big(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<TooBig>())
}

/// Room made for each read from the socket.
const READ_SIZE: usize = 16 * 1024;

fn too_big() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, TooBig)
}

/// The codec over a stream `S` (the socket): tungstenite reads and writes
/// it as it would the socket.
pub struct Codec<S> {
    inner: S,
    agreed: Deflate,
    /// Largest message, inflated.
    limit: usize,
    /// Socket bytes not yet handled: `raw[raw_at..raw_end]`. The buffer
    /// is zeroed only when it grows; reads land in the rest.
    raw: Vec<u8>,
    raw_at: usize,
    raw_end: usize,
    /// Bytes for tungstenite, from `plain_at`.
    plain: Vec<u8>,
    plain_at: usize,
    /// Payload bytes of a frame passed through unchanged still to come.
    passing: u64,
    /// The message being received is compressed (its continuation frames
    /// carry no RSV1).
    compressed: bool,
    /// Inflated bytes of that message so far.
    inflated: usize,
    /// A frame's inflated payload (kept for its capacity).
    out: Vec<u8>,
    inflater: Decompress,
    /// Bytes from tungstenite not yet a whole frame.
    frames: Vec<u8>,
    /// Bytes for the socket, from `wire_at`.
    wire: Vec<u8>,
    wire_at: usize,
    deflater: Compress,
}

impl<S: Read + Write> Codec<S> {
    /// `leftover`: socket bytes read with the request head.
    pub fn new(inner: S, agreed: Deflate, limit: usize, leftover: Vec<u8>) -> Codec<S> {
        Codec {
            inner,
            agreed,
            limit,
            raw_end: leftover.len(),
            raw: leftover,
            raw_at: 0,
            plain: Vec::new(),
            plain_at: 0,
            passing: 0,
            compressed: false,
            inflated: 0,
            out: Vec::new(),
            inflater: Decompress::new(false),
            frames: Vec::new(),
            wire: Vec::new(),
            wire_at: 0,
            deflater: Compress::new(Compression::default(), false),
        }
    }

    /// Turns the next whole frame in `raw` into plain bytes; false when
    /// more socket bytes are needed first.
    fn next_frame(&mut self) -> io::Result<bool> {
        let buf = &self.raw[self.raw_at..self.raw_end];
        let Some((h, len, at)) = header_of(buf)? else {
            return Ok(false);
        };
        let data = matches!(h.opcode, OpCode::Data(_));
        let first = matches!(h.opcode, OpCode::Data(Data::Text | Data::Binary));
        let inflate = data && ((first && h.rsv1) || (!first && self.compressed && !h.rsv1));
        if !inflate {
            // As it came (tungstenite rejects RSV bits it does not expect).
            if first {
                self.compressed = false;
            }
            self.plain.extend_from_slice(&buf[..at]);
            self.passing = len;
            self.raw_at += at;
            return Ok(true);
        }
        // A compressed frame is inflated whole: at most the limit (plus
        // what deflate can add) is buffered.
        let cap = u64::try_from(self.limit.saturating_add(1024)).unwrap_or(u64::MAX);
        if len > cap {
            return Err(too_big());
        }
        let len = usize::try_from(len).map_err(|_| too_big())?;
        let end = at.checked_add(len).ok_or_else(too_big)?;
        if buf.len() < end {
            return Ok(false);
        }
        // Unmasked where it lies: these socket bytes are consumed here.
        let payload = self.raw_at + at..self.raw_at + end;
        if let Some(mask) = h.mask {
            for (i, b) in self.raw[payload.clone()].iter_mut().enumerate() {
                *b ^= mask[i & 3];
            }
        }
        self.raw_at += end;
        if first {
            self.compressed = true;
            self.inflated = 0;
        }
        // (Taken out of self for the length of the calls that borrow it.)
        let raw = std::mem::take(&mut self.raw);
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let inflated = self.inflate(&raw[payload], &mut out);
        self.raw = raw;
        let inflated = inflated.and_then(|()| match h.is_final {
            true => self.inflate(&TAIL, &mut out),
            false => Ok(()),
        });
        if let Err(e) = inflated {
            self.out = out;
            return Err(e);
        }
        if h.is_final {
            self.compressed = false;
            if self.agreed.client_no_context_takeover {
                self.inflater.reset(false);
            }
        }
        let plain = FrameHeader {
            is_final: h.is_final,
            rsv1: false,
            rsv2: h.rsv2,
            rsv3: h.rsv3,
            opcode: h.opcode,
            // tungstenite wants client frames masked; a zero key leaves
            // the bytes as they are.
            mask: Some([0; 4]),
        };
        let formatted = plain
            .format(out.len() as u64, &mut self.plain)
            .map_err(io::Error::other);
        self.plain.extend_from_slice(&out);
        self.out = out;
        formatted.map(|()| true)
    }

    /// Inflates `input` onto `out`, keeping the message within the limit.
    fn inflate(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let mut used = 0;
        loop {
            // At most one byte past the limit per call: enough to tell.
            let room = self.limit.saturating_sub(self.inflated).saturating_add(1);
            if out.len() == out.capacity() {
                let more = input.len().saturating_mul(4).clamp(4096, 1 << 20);
                out.reserve_exact(more.min(room));
            }
            let (in0, out0) = (self.inflater.total_in(), out.len());
            let status = self
                .inflater
                .decompress_vec(&input[used..], out, FlushDecompress::Sync)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let took = usize::try_from(self.inflater.total_in() - in0).unwrap_or(usize::MAX);
            used = used.saturating_add(took).min(input.len());
            self.inflated = self.inflated.saturating_add(out.len() - out0);
            if self.inflated > self.limit {
                return Err(too_big());
            }
            if status == Status::StreamEnd {
                // A final deflate block: the next message starts a stream.
                self.inflater.reset(false);
                return Ok(());
            }
            let progressed = took > 0 || out.len() > out0;
            if used == input.len() && (out.len() < out.capacity() || !progressed) {
                return Ok(());
            }
            if !progressed && out.len() < out.capacity() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "compressed data does not inflate",
                ));
            }
        }
    }

    /// Encodes the whole frames tungstenite wrote.
    fn encode(&mut self) -> io::Result<()> {
        let mut at = 0;
        while let Some((h, len, hsize)) = header_of(&self.frames[at..])? {
            let len = usize::try_from(len).map_err(io::Error::other)?;
            let Some(end) = hsize.checked_add(len).and_then(|e| e.checked_add(at)) else {
                return Err(io::Error::other("frame too long"));
            };
            if self.frames.len() < end {
                break;
            }
            let payload = &self.frames[at + hsize..end];
            let whole = matches!(h.opcode, OpCode::Data(Data::Text | Data::Binary)) && h.is_final;
            if whole && !h.rsv1 && h.mask.is_none() && payload.len() >= MIN_COMPRESS {
                let packed = compress(&mut self.deflater, payload)?;
                if self.agreed.server_no_context_takeover {
                    self.deflater.reset();
                }
                let head = FrameHeader { rsv1: true, ..h };
                head.format(packed.len() as u64, &mut self.wire)
                    .map_err(io::Error::other)?;
                self.wire.extend_from_slice(&packed);
            } else {
                self.wire.extend_from_slice(&self.frames[at..end]);
            }
            at = end;
        }
        self.frames.drain(..at);
        Ok(())
    }

    /// Writes queued socket bytes; Ok(false) while some are left.
    fn drain(&mut self) -> io::Result<bool> {
        while self.wire_at < self.wire.len() {
            match self.inner.write(&self.wire[self.wire_at..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wire_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.wire.clear();
        self.wire_at = 0;
        Ok(true)
    }
}

/// `payload` as one compressed message (the sync flush's tail removed).
fn compress(c: &mut Compress, payload: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    let mut used = 0;
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        let (in0, out0) = (c.total_in(), out.len());
        c.compress_vec(&payload[used..], &mut out, FlushCompress::Sync)
            .map_err(io::Error::other)?;
        used += usize::try_from(c.total_in() - in0).unwrap_or(usize::MAX);
        // Done once all input is in and the flush fit.
        if used >= payload.len() && out.len() < out.capacity() && out.ends_with(&TAIL) {
            break;
        }
        if c.total_in() == in0 && out.len() == out0 && out.len() < out.capacity() {
            return Err(io::Error::other("deflate made no progress"));
        }
    }
    out.truncate(out.len() - TAIL.len());
    Ok(out)
}

impl<S: Read + Write> Read for Codec<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.plain_at < self.plain.len() {
                let n = buf.len().min(self.plain.len() - self.plain_at);
                buf[..n].copy_from_slice(&self.plain[self.plain_at..self.plain_at + n]);
                self.plain_at += n;
                if self.plain_at == self.plain.len() {
                    self.plain.clear();
                    self.plain_at = 0;
                }
                return Ok(n);
            }
            if self.raw_at == self.raw_end {
                self.raw_at = 0;
                self.raw_end = 0;
            }
            let have = self.raw_end - self.raw_at;
            if self.passing > 0 && have > 0 {
                let n = usize::try_from(self.passing).map_or(have, |p| p.min(have));
                self.plain
                    .extend_from_slice(&self.raw[self.raw_at..self.raw_at + n]);
                self.raw_at += n;
                self.passing -= n as u64;
                continue;
            }
            if self.passing == 0 && have > 0 && self.next_frame()? {
                continue;
            }
            // More from the socket.
            if self.raw_at > 0 {
                self.raw.copy_within(self.raw_at..self.raw_end, 0);
                self.raw_end -= self.raw_at;
                self.raw_at = 0;
            }
            if self.raw.len() - self.raw_end < READ_SIZE {
                self.raw.resize(self.raw_end + READ_SIZE, 0);
            }
            match self.inner.read(&mut self.raw[self.raw_end..])? {
                0 => return Ok(0),
                n => self.raw_end += n,
            }
        }
    }
}

impl<S: Read + Write> Write for Codec<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.frames.extend_from_slice(buf);
        self.encode()?;
        self.drain()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.drain()? {
            self.inner.flush()
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use tungstenite::protocol::{Role, WebSocket};
    use tungstenite::Message;

    /// An in-memory socket: reads from `input` (WouldBlock when empty),
    /// writes to `output`.
    #[derive(Default)]
    struct Pipe {
        input: VecDeque<u8>,
        output: Vec<u8>,
    }

    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.input.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.input.len());
            for (i, b) in self.input.drain(..n).enumerate() {
                buf[i] = b;
            }
            Ok(n)
        }
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::default(), false);
        compress(&mut c, data).unwrap()
    }

    fn inflate_all(data: &[u8]) -> Vec<u8> {
        let mut d = Decompress::new(false);
        let mut input = data.to_vec();
        input.extend_from_slice(&TAIL);
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        out
    }

    /// A masked client frame.
    fn client_frame(opcode: OpCode, fin: bool, rsv1: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let h = FrameHeader {
            is_final: fin,
            rsv1,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: Some(mask),
        };
        let mut out = Vec::new();
        h.format(payload.len() as u64, &mut out).unwrap();
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    fn server(agreed: Deflate, limit: usize, input: Vec<u8>) -> WebSocket<Codec<Pipe>> {
        let codec = Codec::new(Pipe::default(), agreed, limit, input);
        WebSocket::from_raw_socket(codec, Role::Server, None)
    }

    #[test]
    fn offers_are_taken_or_declined_as_rfc_7692_says() {
        let got = |v: &str| Deflate::negotiate([v.as_bytes()]);
        assert_eq!(got("permessage-deflate"), Some(Deflate::default()));
        assert_eq!(
            got("permessage-deflate; client_max_window_bits"),
            Some(Deflate::default())
        );
        assert_eq!(
            got("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            Some(Deflate {
                server_no_context_takeover: true,
                client_no_context_takeover: true
            })
        );
        // A smaller server window cannot be honoured: the next offer is.
        assert_eq!(
            got("permessage-deflate; server_max_window_bits=10, permessage-deflate; client_no_context_takeover"),
            Some(Deflate {
                server_no_context_takeover: false,
                client_no_context_takeover: true
            })
        );
        assert_eq!(
            got("permessage-deflate; server_max_window_bits=\"15\""),
            Some(Deflate::default())
        );
        assert_eq!(got("permessage-deflate; client_max_window_bits=7"), None);
        assert_eq!(got("permessage-deflate; bogus"), None);
        assert_eq!(
            got("permessage-deflate; server_no_context_takeover; server_no_context_takeover"),
            None
        );
        assert_eq!(got("x-webkit-deflate-frame"), None);
        assert_eq!(
            Deflate {
                server_no_context_takeover: true,
                client_no_context_takeover: false
            }
            .response_value(),
            "permessage-deflate; server_no_context_takeover"
        );
    }

    #[test]
    fn compressed_messages_arrive_inflated_even_fragmented() {
        let text = "hello hello hello hello ".repeat(100);
        let packed = raw_deflate(text.as_bytes());
        let (a, b) = packed.split_at(packed.len() / 2);
        let mut input = client_frame(OpCode::Data(Data::Text), true, true, &packed);
        input.extend(client_frame(OpCode::Data(Data::Binary), false, true, a));
        // A ping between the fragments passes as it is.
        input.extend(client_frame(
            OpCode::Control(tungstenite::protocol::frame::coding::Control::Ping),
            true,
            false,
            b"p",
        ));
        input.extend(client_frame(OpCode::Data(Data::Continue), true, false, b));
        input.extend(client_frame(
            OpCode::Data(Data::Text),
            true,
            false,
            b"plain",
        ));
        let mut ws = server(Deflate::default(), 1 << 20, input);
        assert_eq!(ws.read().unwrap(), Message::Text(text.clone().into()));
        assert!(matches!(ws.read().unwrap(), Message::Ping(_)));
        assert_eq!(
            ws.read().unwrap(),
            Message::Binary(text.clone().into_bytes().into())
        );
        assert_eq!(ws.read().unwrap(), Message::Text("plain".into()));
    }

    #[test]
    fn sent_messages_are_compressed_when_worth_it() {
        let mut ws = server(Deflate::default(), 1 << 20, Vec::new());
        let big = "abcabcabc".repeat(1000);
        ws.send(Message::Text(big.clone().into())).unwrap();
        ws.send(Message::Text("tiny".into())).unwrap();
        let wire = std::mem::take(&mut ws.get_mut().inner.output);
        let (h, len, at) = header_of(&wire).unwrap().unwrap();
        assert!(h.rsv1 && h.mask.is_none());
        let end = at + len as usize;
        assert!(end < big.len() / 10, "compressed to {end} bytes");
        assert_eq!(inflate_all(&wire[at..end]), big.as_bytes());
        let (h2, len2, at2) = header_of(&wire[end..]).unwrap().unwrap();
        assert!(!h2.rsv1);
        assert_eq!(&wire[end + at2..end + at2 + len2 as usize], b"tiny");
    }

    #[test]
    fn a_decompression_bomb_is_refused_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let packed = raw_deflate(&zeros);
        assert!(packed.len() < 64 * 1024);
        let input = client_frame(OpCode::Data(Data::Binary), true, true, &packed);
        let mut ws = server(Deflate::default(), 1 << 20, input);
        match ws.read() {
            Err(tungstenite::Error::Io(e)) => assert!(is_too_big(&e), "{e}"),
            other => panic!("expected too big, got {other:?}"),
        }
    }

    #[test]
    fn a_message_of_exactly_the_limit_passes() {
        let text = "a".repeat(1000);
        let input = client_frame(
            OpCode::Data(Data::Text),
            true,
            true,
            &raw_deflate(text.as_bytes()),
        );
        let mut ws = server(Deflate::default(), 1000, input);
        assert_eq!(ws.read().unwrap(), Message::Text(text.into()));
        let more = client_frame(
            OpCode::Data(Data::Text),
            true,
            true,
            &raw_deflate(&[b'b'; 1001]),
        );
        let codec = ws.get_mut();
        codec.raw.truncate(codec.raw_end);
        codec.raw.extend_from_slice(&more);
        codec.raw_end = codec.raw.len();
        match ws.read() {
            Err(tungstenite::Error::Io(e)) => assert!(is_too_big(&e), "{e}"),
            other => panic!("expected too big, got {other:?}"),
        }
    }

    #[test]
    fn rsv1_where_rfc_7692_forbids_it_is_tungstenites_protocol_error() {
        use tungstenite::protocol::frame::coding::Control;
        // On a control frame, and on a continuation frame.
        for frames in [
            client_frame(OpCode::Control(Control::Ping), true, true, b"p"),
            [
                client_frame(OpCode::Data(Data::Text), false, false, b"a"),
                client_frame(OpCode::Data(Data::Continue), true, true, b"b"),
            ]
            .concat(),
        ] {
            let mut ws = server(Deflate::default(), 1 << 20, frames);
            match ws.read() {
                Err(tungstenite::Error::Protocol(_)) => {}
                other => panic!("expected a protocol error, got {other:?}"),
            }
        }
    }

    #[test]
    fn frames_split_across_reads_come_out_whole() {
        let text = "split ".repeat(500);
        let mut input = client_frame(
            OpCode::Data(Data::Text),
            true,
            true,
            &raw_deflate(text.as_bytes()),
        );
        input.extend(client_frame(
            OpCode::Data(Data::Text),
            true,
            false,
            b"after",
        ));
        let mut ws = server(Deflate::default(), 1 << 20, Vec::new());
        let mut got = Vec::new();
        for byte in input {
            ws.get_mut().inner.input.push_back(byte);
            match ws.read() {
                Ok(m) => got.push(m),
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(
            got,
            [Message::Text(text.into()), Message::Text("after".into())]
        );
    }

    #[test]
    fn garbage_that_does_not_inflate_is_an_error() {
        let input = client_frame(OpCode::Data(Data::Text), true, true, &[0xff; 32]);
        let mut ws = server(Deflate::default(), 1 << 20, input);
        match ws.read() {
            Err(tungstenite::Error::Io(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                assert!(!is_too_big(&e));
            }
            other => panic!("expected an inflate error, got {other:?}"),
        }
    }
}
