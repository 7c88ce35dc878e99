//! Property / fuzz test of the request path on the stable toolchain: valid
//! and invalid requests, chunked bodies and PROXY preambles are generated
//! and mutated from a seeded PRNG and run through the head parser (whole,
//! in random pieces, one byte at a time), the chunked decoder (whole and in
//! random pieces) and the PROXY parser. Nothing may panic, and what is
//! accepted must keep its framing:
//!
//! * [`HeadParser`] answers exactly as the stateless reference parser, call
//!   for call, whatever the pieces;
//! * a complete head ends at the first empty line (`consumed` within the
//!   input), and its [`BodyKind`] is what a naive reading of the header
//!   lines says, where that reading is unambiguous;
//! * chunked decoding in any pieces equals decoding at once; the decoded
//!   body of a generated body is the generated data, it never exceeds the
//!   input, and consumed counts never exceed the input;
//! * a PROXY header, once complete, stays the same as more bytes arrive,
//!   and the request after it parses as on its own;
//! * a uwsgi packet (valid, mutated, or with lengths that overflow it) is
//!   partial until its vars block is there and then settles; the HTTP head
//!   it becomes parses with the head parser as with the reference parser.
//!
//! `cargo test --release http::fuzz` runs a bounded number of cases with a
//! fixed seed; `scripts/fuzz.sh` runs many more (FERROCORN_FUZZ_CASES,
//! FERROCORN_FUZZ_SEED). A failing case prints the seed that replays it
//! alone: `FERROCORN_FUZZ_SEED=<seed> FERROCORN_FUZZ_CASES=1`.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use super::chunked::ChunkedDecoder;
use super::proxy::{parse_proxy, ProxyMode, ProxyParsed, V2_SIGNATURE};
use super::request::reference;
use super::uwsgi::{parse_uwsgi, UwsgiParsed};
use super::{BodyKind, HeadParser, HeaderMap, Parsed, ParserConfig};

/// splitmix64: small, seedable, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Run `cases` cases of `f`, each from its own seed; a failure names the
/// seed that replays it.
fn run_cases(what: &str, default_cases: u64, f: impl Fn(&mut Rng) -> &'static str) {
    let cases = env_u64("FERROCORN_FUZZ_CASES").unwrap_or(default_cases);
    let seed = env_u64("FERROCORN_FUZZ_SEED").unwrap_or(0x5eed_f00d);
    let t = std::time::Instant::now();
    // How the cases ended, to show the generators reach every outcome.
    let mut tally = std::collections::BTreeMap::new();
    for i in 0..cases {
        // Case 0 of seed s has seed s, so a printed seed replays alone.
        let case_seed = seed.wrapping_add(i.wrapping_mul(0x2545_f491_4f6c_dd1d));
        match catch_unwind(AssertUnwindSafe(|| f(&mut Rng(case_seed)))) {
            Ok(outcome) => *tally.entry(outcome).or_insert(0u64) += 1,
            Err(e) => {
                eprintln!(
                    "fuzz {what}: case {i} failed; replay with \
                     FERROCORN_FUZZ_SEED={case_seed:#x} FERROCORN_FUZZ_CASES=1"
                );
                resume_unwind(e);
            }
        }
    }
    eprintln!(
        "fuzz {what}: {cases} cases from seed {seed:#x} in {:.2?}: {tally:?}",
        t.elapsed()
    );
}

// ---------------------------------------------------------------- inputs

const HUGE: &[&str] = &[
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999",
    "0xFFFFFFFFFFFFFFFFF",
    "FFFFFFFFFFFFFFFF",
    "1FFFFFFFFFFFFFFFF",
    "00000000000000000000000000000000001",
    "-1",
    "+5",
    " 5",
    "5 ",
    "",
];

const TE_VALUES: &[&str] = &[
    "chunked",
    "CHUNKED",
    " chunked ",
    "gzip, chunked",
    "deflate ,\tchunked",
    "identity, chunked",
    "chunked, gzip",
    "chunked, chunked",
    "chunked,",
    ",chunked",
    "identity",
    "gzip",
    "br, chunked",
    "x",
    "",
];

/// Interesting bytes to insert or to overwrite with.
const BYTES: &[u8] = b"\r\n\0\x80\xff\xe9 \t:;=\"\\_,0fF9-/?#%\x7f\x0b";

/// Interesting strings to insert.
const SNIPPETS: &[&str] = &[
    "\r\n",
    "\r\n ",
    "\r\n\t",
    "\r\n\r\n",
    "\n",
    "\r",
    ":",
    " : ",
    "chunked",
    ", chunked",
    "Transfer-Encoding: chunked\r\n",
    "Content-Length: 5\r\n",
    "Content-Length: 18446744073709551615\r\n",
    "Expect: 100-continue\r\n",
    "Host: h\r\n",
    "X_Forwarded: 1\r\n",
    "18446744073709551615",
    "FFFFFFFFFFFFFFFFF",
    ";ext=\"v\"",
    "0\r\n\r\n",
    "PROXY ",
    "HTTP/1.1",
];

fn gen_request(r: &mut Rng) -> Vec<u8> {
    // Half the requests are valid under the default configuration (so that
    // mutations start from, and many cases reach, a complete head); the
    // others draw from everything, valid or not.
    let tame = r.chance(2);
    let mut out = Vec::new();
    if r.chance(10) {
        out.extend(b"\r\n");
    }
    let (method, target) = if tame || r.chance(2) {
        (
            *r.pick(&["GET", "POST", "PUT", "DELETE", "M-SEARCH"]),
            *r.pick(&[
                "/",
                "/a/b?x=1#f",
                "http://h:80/p?q",
                "http://[::1]/x",
                "//x",
            ]),
        )
    } else {
        (
            *r.pick(&["OPTIONS", "CONNECT", "get", "GE", "POST"]),
            *r.pick(&["*", "example.com:443", "/%20", "a", "/\x7f"]),
        )
    };
    let version = if tame || r.chance(2) {
        *r.pick(&["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"])
    } else {
        *r.pick(&["HTTP/2.0", "HTTP/1.9", "HTTP/0.9", "http/1.1"])
    };
    out.extend(format!("{method} {target} {version}\r\n").bytes());
    let mut body = Vec::new();
    let framing = r.below(5);
    for k in 0..r.below(8) {
        let line = if tame {
            match (k, framing) {
                (0, 1) => format!("Content-Length: {}", r.below(20)),
                (0, 2) => "Content-Length: 18446744073709551615".to_string(),
                (0, 3) if version == "HTTP/1.1" => {
                    format!(
                        "Transfer-Encoding: {}",
                        r.pick(&["chunked", "gzip, chunked"])
                    )
                }
                _ => match r.below(6) {
                    0 => "Host: example.com".to_string(),
                    1 => format!("Connection: {}", r.pick(&["close", "keep-alive"])),
                    2 => "X_Foo: 1".to_string(),
                    3 => format!("X-Long: {}", "v".repeat(r.below(100))),
                    _ => format!("X-H{k}: v{}", r.below(10)),
                },
            }
        } else {
            match r.below(14) {
                0 => format!("Content-Length: {}", r.below(20)),
                1 => format!("Content-Length: {}", r.pick(HUGE)),
                2 | 3 => format!("Transfer-Encoding: {}", r.pick(TE_VALUES)),
                4 => "Host: example.com".to_string(),
                5 => format!(
                    "Connection: {}",
                    r.pick(&["close", "keep-alive", "upgrade"])
                ),
                6 => format!("Expect: {}", r.pick(&["100-continue", "x", ""])),
                7 => format!("{}: 1", r.pick(&["X_Foo", "SCRIPT_NAME", "content_length"])),
                8 => "X-Folded: a\r\n  b\r\n\tc".to_string(),
                9 => format!("X-Long: {}", "v".repeat(r.below(100))),
                10 => "content-length : 3".to_string(),
                _ => format!("X-H{}: v{}", r.below(1000), r.below(10)),
            }
        };
        out.extend(line.bytes());
        out.extend(b"\r\n");
    }
    out.extend(b"\r\n");
    if r.chance(2) {
        body = gen_chunked(r).0;
    } else if r.chance(2) {
        body.extend(b"hello world");
    }
    out.extend(body);
    out
}

/// A valid chunked body followed by the start of the next request, and
/// the data it encodes.
fn gen_chunked(r: &mut Rng) -> (Vec<u8>, Vec<u8>) {
    let mut out = Vec::new();
    let mut data = Vec::new();
    for _ in 0..r.below(5) {
        let n = 1 + r.below(40);
        let chunk: Vec<u8> = (0..n).map(|_| r.next() as u8).collect();
        let size = if r.chance(4) {
            format!("{n:08X}")
        } else {
            format!("{n:x}")
        };
        out.extend(size.bytes());
        match r.below(5) {
            0 => out.extend(b";a=b"),
            1 => out.extend(b" \t; name=\"q \\\" v\" ;x"),
            _ => {}
        }
        out.extend(b"\r\n");
        out.extend(&chunk);
        out.extend(b"\r\n");
        data.extend(chunk);
    }
    out.extend(if r.chance(3) { &b"000"[..] } else { b"0" });
    out.extend(b"\r\n");
    for _ in 0..r.below(3) {
        out.extend(format!("X-Trailer-{}: {}\r\n", r.below(100), r.below(100)).bytes());
    }
    out.extend(b"\r\n");
    out.extend(b"GET /next HTTP/1.1\r\n\r\n");
    (out, data)
}

fn gen_proxy(r: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    match r.below(3) {
        0 => {
            let line = *r.pick(&[
                "PROXY TCP4 192.168.0.1 10.0.0.2 56324 443",
                "PROXY TCP6 ::FFFF:1.2.3.4 2001:db8::1 0 65535",
                "PROXY TCP4 1.2.3.4 5.6.7.8 65536 1",
                "PROXY UNKNOWN",
                "PROXY TCP4 1.2.3.4 5.6.7.8 +80 1",
                "PROXY TCP6 1.2.3.4 5.6.7.8 80 1",
            ]);
            out.extend(line.bytes());
            out.extend(b"\r\n");
        }
        _ => {
            out.extend(V2_SIGNATURE);
            out.push(*r.pick(&[0x21, 0x20, 0x22, 0x11]));
            out.push(*r.pick(&[0x11, 0x21, 0x00, 0x12, 0x31]));
            let addr_len = *r.pick(&[0usize, 12, 36, 11, 35, 200]);
            let len = if r.chance(5) {
                r.below(65536)
            } else {
                addr_len
            };
            out.extend((len as u16).to_be_bytes());
            out.extend((0..addr_len).map(|_| r.next() as u8));
        }
    }
    out.extend(gen_request(r));
    out
}

fn mutate(r: &mut Rng, buf: &mut Vec<u8>) {
    for _ in 0..1 + r.below(3) {
        let at = r.below(buf.len() + 1);
        match r.below(8) {
            0 if at < buf.len() => buf[at] = *r.pick(BYTES),
            1 if at < buf.len() => buf[at] = r.next() as u8,
            2 => buf.insert(at, *r.pick(BYTES)),
            3 => {
                let s = r.pick(SNIPPETS).as_bytes();
                buf.splice(at..at, s.iter().copied());
            }
            4 if at < buf.len() => {
                let n = r.below(8).min(buf.len() - at);
                buf.drain(at..at + n);
            }
            5 | 6 => {
                // Duplicate or remove a whole line.
                let lines: Vec<usize> = memchr::memchr_iter(b'\n', buf).collect();
                if lines.len() >= 2 {
                    let k = r.below(lines.len() - 1);
                    let (a, b) = (lines[k] + 1, lines[k + 1] + 1);
                    if r.chance(2) {
                        let line = buf[a..b].to_vec();
                        buf.splice(a..a, line);
                    } else {
                        buf.drain(a..b);
                    }
                }
            }
            _ => buf.truncate(at),
        }
    }
}

fn gen_config(r: &mut Rng) -> ParserConfig {
    let mut c = ParserConfig::default();
    match r.below(6) {
        0 => {}
        1 => {
            c.limit_request_line = 40;
            c.limit_request_fields = 3;
            c.limit_request_field_size = 30;
        }
        2 => {
            c.permit_obsolete_folding = true;
            c.strip_header_spaces = true;
            c.limit_request_fields = 4;
            c.limit_request_field_size = 40;
        }
        3 => {
            c.header_map = *r.pick(&[HeaderMap::Refuse, HeaderMap::Dangerous]);
            c.permit_obsolete_folding = r.chance(2);
            c.limit_request_fields = 2;
        }
        4 => {
            c.permit_unconventional_http_method = true;
            c.permit_unconventional_http_version = true;
            c.casefold_http_method = true;
        }
        _ => {
            c.limit_request_line = 0;
            c.limit_request_fields = 0;
            c.limit_request_field_size = 0;
        }
    }
    c
}

/// Random increasing cut points in `0..len`.
fn gen_cuts(r: &mut Rng, len: usize) -> Vec<usize> {
    if len < 600 && r.chance(3) {
        return (0..len).collect();
    }
    let mut cuts: Vec<usize> = (0..r.below(12)).map(|_| r.below(len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

// -------------------------------------------------- reference framing

/// Where the head ends, read naively: after the request line, the first
/// empty line. `None` if there is none.
fn naive_head_end(buf: &[u8]) -> Option<usize> {
    let start = if buf.starts_with(b"\r\n") { 2 } else { 0 };
    let line_end = start + memchr::memmem::find(&buf[start..], b"\r\n")? + 2;
    if buf[line_end..].starts_with(b"\r\n") {
        return Some(line_end + 2);
    }
    Some(line_end + memchr::memmem::find(&buf[line_end..], b"\r\n\r\n")? + 4)
}

/// Body framing from a naive reading of the header lines, where it is
/// unambiguous: no folding, at most one Content-Length or one
/// Transfer-Encoding line with a plain value.
fn naive_body_kind(head: &[u8]) -> Option<BodyKind> {
    let text = head.strip_prefix(b"\r\n").unwrap_or(head);
    let (mut cl, mut te, mut n_cl, mut n_te) = (None, None, 0, 0);
    for line in text.split(|&c| c == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r")?;
        if line.is_empty() {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return None;
        }
        let colon = memchr::memchr(b':', line)?;
        let name = &line[..colon];
        if matches!(name.last(), Some(b' ' | b'\t')) {
            return None; // strip_header_spaces decides
        }
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            n_cl += 1;
            cl = Some(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            n_te += 1;
            te = Some(value);
        }
    }
    match (n_cl, n_te) {
        (0, 0) => Some(BodyKind::None),
        (1, 0) => {
            let v = std::str::from_utf8(cl?).ok()?;
            if !v.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            v.parse::<u64>().ok().map(BodyKind::Length)
        }
        (0, 1) if te?.eq_ignore_ascii_case(b"chunked") => Some(BodyKind::Chunked),
        _ => None,
    }
}

// ------------------------------------------------------------ checks

fn check_head(r: &mut Rng) -> &'static str {
    let mut buf = gen_request(r);
    if r.chance(2) {
        mutate(r, &mut buf);
    }
    let c = gen_config(r);
    let trusted = r.chance(3);
    let cuts = gen_cuts(r, buf.len());
    // Call for call the same as the reference (which re-reads everything).
    let split = reference::same_as_reference(&buf, &cuts, &c, trusted);
    // One call on the whole input: the reference, the wrapper and a
    // HeadParser agree.
    let whole = reference::parse_request(&buf, &c, trusted);
    let w = format!("{whole:?}");
    assert_eq!(format!("{:?}", super::parse_request(&buf, &c, trusted)), w);
    assert_eq!(
        format!("{:?}", HeadParser::new().parse(&buf, &c, trusted)),
        w
    );
    // In pieces an error may come earlier than at once, with another
    // status (limits and bare LFs are checked on what has arrived, in that
    // order; a head over `max_buffer_headers` only through dropped `_`
    // fields is refused only in pieces, as by gunicorn), but an error at
    // once is an error in pieces.
    if whole.is_err() {
        assert!(split.starts_with("Err("), "whole {w}\nsplit {split}");
    }
    if let Ok(Parsed::Complete { head, consumed }) = whole {
        assert!(consumed <= buf.len());
        assert_eq!(Some(consumed), naive_head_end(&buf), "head end");
        let naive = naive_body_kind(&buf[..consumed]);
        if let Some(kind) = naive {
            assert_eq!(
                head.body,
                kind,
                "framing of {:?}",
                buf.escape_ascii().to_string()
            );
        } // A chunked body right after it decodes the same in any pieces.
        if head.body == BodyKind::Chunked {
            let mk = || ChunkedDecoder::with_config(&c);
            let body = &buf[consumed..];
            let cuts = gen_cuts(r, body.len());
            assert_eq!(
                decode_pieces(body, &cuts, &mk),
                decode_pieces(body, &[], &mk)
            );
        }
        // The head alone parses the same.
        let again = super::parse_request(&buf[..consumed], &c, trusted);
        assert_eq!(format!("{again:?}"), w);
        return match (head.body, naive) {
            (_, None) => "complete, framing ambiguous",
            (BodyKind::None, _) => "complete, no body (checked)",
            (BodyKind::Length(_), _) => "complete, length (checked)",
            (BodyKind::Chunked, _) => "complete, chunked (checked)",
        };
    }
    match (whole, split.starts_with("Err(")) {
        (Ok(_), false) => "partial",
        (Ok(_), true) => "refused in pieces only",
        (Err(_), _) => "refused",
    }
}

/// Decode in the pieces ending at `cuts`, as a connection would: each
/// piece is what arrived since the last call, after the unconsumed rest.
fn decode_pieces(
    input: &[u8],
    cuts: &[usize],
    mk: &dyn Fn() -> ChunkedDecoder,
) -> Result<(Vec<u8>, usize, bool), u16> {
    let mut d = mk();
    let mut out = Vec::new();
    let mut pos = 0;
    for &end in cuts.iter().chain(std::iter::once(&input.len())) {
        if end <= pos || d.is_done() {
            continue;
        }
        let piece = &input[pos..end];
        let before = out.len();
        let n = d.decode(piece, &mut out).map_err(|e| e.status)?;
        assert!(n <= piece.len(), "consumed {n} of {}", piece.len());
        assert!(out.len() - before <= n, "decoded more than consumed");
        if !d.is_done() {
            assert_eq!(n, piece.len(), "stopped early without being done");
        }
        pos += n;
    }
    Ok((out, pos, d.is_done()))
}

fn check_chunked(r: &mut Rng) -> &'static str {
    let (mut input, data) = gen_chunked(r);
    let huge = r.chance(8);
    if huge {
        // A huge chunk size in front (data for it never comes in full).
        let line = format!(
            "{}{}\r\nabc",
            r.pick(HUGE),
            r.pick(&["", ";x", " ;y=\"z\""])
        );
        input.splice(0..0, line.bytes());
    }
    let mutated = r.chance(2);
    if mutated {
        mutate(r, &mut input);
    }
    let (fields, size) = *r.pick(&[(100, 8190), (2, 16), (3, 40), (0, 0)]);
    let cfg = ParserConfig {
        limit_request_fields: fields,
        limit_request_field_size: size,
        permit_obsolete_folding: r.chance(2),
        header_map: *r.pick(&[HeaderMap::Drop, HeaderMap::Refuse, HeaderMap::Dangerous]),
        ..ParserConfig::default()
    };
    let mk = || ChunkedDecoder::with_config(&cfg);
    let whole = decode_pieces(&input, &[], &mk);
    if !mutated && !huge && size >= 40 {
        let (out, n, done) = whole.clone().expect("valid body");
        assert!(done);
        assert_eq!(out, data);
        assert_eq!(&input[n..], b"GET /next HTTP/1.1\r\n\r\n");
    }
    if let Ok((out, n, _)) = &whole {
        assert!(*n <= input.len() && out.len() <= *n);
    }
    for _ in 0..3 {
        let cuts = gen_cuts(r, input.len());
        let split = decode_pieces(&input, &cuts, &mk);
        assert_eq!(
            split,
            whole,
            "cuts {cuts:?} of {:?}",
            input.escape_ascii().to_string()
        );
    }
    match whole {
        Ok((_, _, true)) => "done",
        Ok(_) => "incomplete",
        Err(400) => "400",
        Err(431) => "431",
        Err(_) => "other error",
    }
}

fn check_proxy(r: &mut Rng) -> &'static str {
    let mut buf = gen_proxy(r);
    if r.chance(2) {
        mutate(r, &mut buf);
    }
    let mode = *r.pick(&[ProxyMode::V1, ProxyMode::V2, ProxyMode::Auto]);
    let whole = parse_proxy(&buf, mode);
    // Every prefix: once complete (or refused), more bytes change nothing.
    let mut settled: Option<String> = None;
    for end in 0..=buf.len() {
        let p = parse_proxy(&buf[..end], mode);
        if let Ok(ProxyParsed::Complete { consumed, .. }) = &p {
            assert!(*consumed <= end);
        }
        // Errors compare by status: the detail quotes what has arrived.
        let s = match &p {
            Ok(v) => format!("{v:?}"),
            Err(e) => format!("error {}", e.status),
        };
        match &settled {
            Some(first) => assert_eq!(&s, first, "prefix {end}"),
            None if !matches!(p, Ok(ProxyParsed::Partial)) => {
                // NotProxy is decided as soon as the signature cannot match;
                // a complete header and an error are final.
                settled = Some(s);
            }
            None => {}
        }
    }
    match whole {
        Ok(ProxyParsed::Complete { consumed, .. }) => {
            let c = ParserConfig::default();
            let rest = &buf[consumed..];
            let a = format!("{:?}", HeadParser::new().parse(rest, &c, false));
            let b = format!("{:?}", reference::parse_request(rest, &c, false));
            assert_eq!(a, b);
            "complete"
        }
        Ok(ProxyParsed::Partial) => "partial",
        Ok(ProxyParsed::NotProxy) => "not proxy",
        Err(_) => "refused",
    }
}

const UWSGI_KEYS: &[&str] = &[
    "REQUEST_METHOD",
    "PATH_INFO",
    "QUERY_STRING",
    "CONTENT_LENGTH",
    "CONTENT_TYPE",
    "HTTPS",
    "UWSGI_SCHEME",
    "HTTP_HOST",
    "HTTP_X_A",
    "HTTP_CONNECTION",
    "HTTP_TRANSFER_ENCODING",
    "HTTP_",
    "HTTP_X:Y",
    "REMOTE_ADDR",
    "",
];

const UWSGI_VALUES: &[&str] = &[
    "GET", "POST", "/", "/a b", "a=1", "on", "https", "5", "h", "",
];

fn gen_uwsgi(r: &mut Rng) -> Vec<u8> {
    let mut data = Vec::new();
    for _ in 0..r.below(12) {
        let key = r.pick(UWSGI_KEYS).as_bytes();
        let value: Vec<u8> = match r.below(4) {
            0 => r.pick(SNIPPETS).as_bytes().to_vec(),
            1 => r.pick(HUGE).as_bytes().to_vec(),
            2 => (0..r.below(40)).map(|_| r.next() as u8).collect(),
            _ => r.pick(UWSGI_VALUES).as_bytes().to_vec(),
        };
        for part in [key, &value[..]] {
            // Now and then a length that does not match what follows.
            let len = if r.chance(30) {
                r.next() as u16
            } else {
                part.len() as u16
            };
            data.extend_from_slice(&len.to_le_bytes());
            data.extend_from_slice(part);
        }
    }
    let size = if r.chance(20) {
        r.next() as u16
    } else {
        u16::try_from(data.len()).unwrap_or(u16::MAX)
    };
    let modifier1 = if r.chance(20) { r.next() as u8 } else { 0 };
    let mut out = vec![modifier1];
    out.extend_from_slice(&size.to_le_bytes());
    out.push(r.next() as u8);
    out.extend_from_slice(&data);
    out.extend_from_slice(r.pick(SNIPPETS).as_bytes());
    out
}

fn check_uwsgi(r: &mut Rng) -> &'static str {
    let mut buf = gen_uwsgi(r);
    if r.chance(3) {
        mutate(r, &mut buf);
    }
    let whole = parse_uwsgi(&buf);
    let mut settled: Option<String> = None;
    for end in 0..=buf.len() {
        let p = parse_uwsgi(&buf[..end]);
        if let Ok(UwsgiParsed::Complete { consumed, .. }) = &p {
            assert!(*consumed <= end);
        }
        let s = match &p {
            Ok(v) => format!("{v:?}"),
            Err(e) => format!("error {}: {}", e.status, e.detail),
        };
        match &settled {
            Some(first) => assert_eq!(&s, first, "prefix {end}"),
            None if !matches!(p, Ok(UwsgiParsed::Partial)) => settled = Some(s),
            None => {}
        }
    }
    match whole {
        Ok(UwsgiParsed::Complete { head, .. }) => {
            let c = gen_config(r);
            let a = format!("{:?}", HeadParser::new().parse(&head, &c, false));
            let b = format!("{:?}", reference::parse_request(&head, &c, false));
            assert_eq!(a, b);
            // The head is whole: the parser never waits for more of it.
            assert!(!a.starts_with("Ok(Partial"), "{a}");
            "complete"
        }
        Ok(UwsgiParsed::Partial) => "partial",
        Err(_) => "refused",
    }
}

#[test]
fn fuzz_uwsgi_parser() {
    run_cases("uwsgi", 20_000, check_uwsgi);
}

#[test]
fn fuzz_head_parser() {
    run_cases("head", 20_000, check_head);
}

#[test]
fn fuzz_chunked_decoder() {
    run_cases("chunked", 20_000, check_chunked);
}

#[test]
fn fuzz_proxy_parser() {
    run_cases("proxy", 6000, check_proxy);
}
