//! The access log: gunicorn's `access_log_format` atoms
//! (`glogging.Logger.atoms`), formatted with Python `%`-mapping semantics
//! and gunicorn's `SafeAtoms` wrapper (string values get `"` escaped as
//! `\"`, unknown keys print `-`, `{..}` keys are looked up lowercased).
//!
//! The format is compiled once into segments; a line is a walk over them
//! into a per-thread reused buffer, then one `write(2)` on an `O_APPEND`
//! descriptor (stdout for `-`).
//!
//! Text encoding: request bytes (target, header values) are latin-1, as
//! gunicorn decodes them, and the line is written as UTF-8 (Python's
//! default file encoding), so a byte 0xE9 is logged as `é`.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, SystemTime};

use super::pyfmt::{self, Piece, Spec};
use super::{not_writable, sys, time, Level};

/// gunicorn's default `access_log_format` (the settings table holds the
/// one in use; the tests render this one).
#[cfg(test)]
pub const DEFAULT_FORMAT: &str = r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s""#;

/// `{NAME}e` lookup: NAME as written in the format -> `str(environ[key])`.
pub type EnvironFn<'a> = &'a dyn Fn(&str) -> Option<String>;

/// What one request contributes to its access-log line.
pub struct AccessRecord<'a> {
    /// `h`: environ `REMOTE_ADDR` (the peer IP; empty for a unix socket,
    /// as gunicorn's).
    pub remote_addr: &'a str,
    /// `m`, and `r`'s first word.
    pub method: &'a str,
    /// `r`'s middle word: the request target as received (`RAW_URI`).
    pub raw_uri: &'a [u8],
    /// `U`: `PATH_INFO` as the app saw it (the WSGI latin-1 string).
    pub path: &'a str,
    /// `q`: `QUERY_STRING`.
    pub query: &'a str,
    /// `H` (`HTTP/1.1`) and `r`'s last word.
    pub version: (u8, u8),
    /// `s`: the status code (gunicorn logs only the first word of the
    /// status line; the reason phrase never appears).
    pub status: u16,
    /// `b` / `B`: body bytes actually sent (gunicorn's `resp.sent`, which
    /// starts at 0, so an empty body logs `0`, not `-`).  `None` logs `b`
    /// as `-` and `B` as `None`, as Python would.
    pub response_length: Option<u64>,
    /// Request headers (name, value) as received; `{name}i` takes the
    /// last one of that name, `f`, `a` and `u` join repeats with `,` like
    /// the `HTTP_*` environ keys.
    pub request_headers: &'a [(&'a [u8], &'a [u8])],
    /// Response headers the app set (not Server/Date/Connection), for
    /// `{name}o`; the last one of a name wins.
    pub response_headers: &'a [(&'a str, &'a str)],
    /// When the request started; `t` is `request_start + request_time`,
    /// i.e. the logging time, in local time.
    pub request_start: SystemTime,
    /// `T`, `M`, `D`, `L`.
    pub request_time: Duration,
    /// `p`: `<pid>`.
    pub pid: u32,
    /// `{NAME}e`: called with NAME as written in the format (gunicorn
    /// matches environ keys case-insensitively, so should this); returns
    /// `str(value)`.  `None` (or the function returning `None`) logs `-`.
    pub environ: Option<EnvironFn<'a>>,
}

/// An atom's value as gunicorn's `Logger.atoms` has it: a string (already
/// `SafeAtoms`-escaped) or an int (`B` may be None).
pub enum AtomValue {
    Str(String),
    Int(Option<u64>),
}

/// The atoms gunicorn's `Logger.atoms` always has, in its order.
const ATOM_KEYS: [&str; 19] = [
    "h", "l", "u", "t", "r", "s", "m", "U", "q", "H", "b", "B", "f", "a", "T", "D", "M", "L", "p",
];

impl AccessRecord<'_> {
    /// Every atom gunicorn's `Logger.atoms` makes of this request, but the
    /// `{key}e` ones (the caller has the environ): the fixed ones, then
    /// `{name}i` per request header and `{name}o` per response header
    /// (names lowercased; a repeated name: the last wins, as in the dict
    /// gunicorn builds). For the access records of a Python logging
    /// configuration, whose `args` they are.
    pub fn atoms(&self, mut f: impl FnMut(&str, AtomValue)) {
        let mut b = Vec::with_capacity(64);
        let text = |b: &mut Vec<u8>| {
            let s = String::from_utf8_lossy(b).into_owned();
            b.clear();
            s
        };
        for key in ATOM_KEYS {
            let atom = Atom::from_key(key);
            if atom.is_int() {
                f(key, AtomValue::Int(int_atom(&atom, self)));
            } else {
                push_str_atom(&mut b, &atom, self);
                f(key, AtomValue::Str(text(&mut b)));
            }
        }
        let mut key = String::new();
        for (name, value) in self.request_headers {
            key.clear();
            key.push('{');
            push_latin1(&mut b, name);
            key.push_str(&text(&mut b).to_lowercase());
            key.push_str("}i");
            push_latin1(&mut b, value);
            f(&key, AtomValue::Str(text(&mut b)));
        }
        for (name, value) in self.response_headers {
            key.clear();
            key.push('{');
            key.push_str(&name.to_lowercase());
            key.push_str("}o");
            push_escaped(&mut b, value.as_bytes());
            f(&key, AtomValue::Str(text(&mut b)));
        }
    }
}

/// One atom of the format.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Atom {
    RemoteAddr,
    Ident,
    User,
    Time,
    RequestLine,
    Status,
    Method,
    Path,
    Query,
    Protocol,
    BytesClf,
    Bytes,
    Referer,
    UserAgent,
    Secs,
    Micros,
    Millis,
    DecimalSecs,
    Pid,
    /// `{name}i`, name lowercased.
    ReqHeader(Box<str>),
    /// `{name}o`, name lowercased.
    RespHeader(Box<str>),
    /// `{name}e`, name as written.
    Environ(Box<str>),
    /// Anything else: `-`.
    Missing,
}

impl Atom {
    fn from_key(k: &str) -> Atom {
        if k.starts_with('{') {
            // SafeAtoms: `{...}` keys are matched lowercased.
            let kl = k.to_lowercase();
            let inner = |suffix: &str| {
                kl.strip_prefix('{')
                    .and_then(|s| s.strip_suffix(suffix))
                    .map(|s| s.to_owned().into_boxed_str())
            };
            if let Some(n) = inner("}i") {
                return Atom::ReqHeader(n);
            }
            if let Some(n) = inner("}o") {
                return Atom::RespHeader(n);
            }
            if kl.ends_with("}e") && kl.len() >= 3 {
                // `{` and `}e` are ASCII, so these byte offsets are char
                // boundaries of `k` too.
                return Atom::Environ(k[1..k.len() - 2].into());
            }
            return Atom::Missing;
        }
        match k {
            "h" => Atom::RemoteAddr,
            "l" => Atom::Ident,
            "u" => Atom::User,
            "t" => Atom::Time,
            "r" => Atom::RequestLine,
            "s" => Atom::Status,
            "m" => Atom::Method,
            "U" => Atom::Path,
            "q" => Atom::Query,
            "H" => Atom::Protocol,
            "b" => Atom::BytesClf,
            "B" => Atom::Bytes,
            "f" => Atom::Referer,
            "a" => Atom::UserAgent,
            "T" => Atom::Secs,
            "D" => Atom::Micros,
            "M" => Atom::Millis,
            "L" => Atom::DecimalSecs,
            "p" => Atom::Pid,
            _ => Atom::Missing,
        }
    }

    /// Python type of the value: ints for B (int or None), T, D, M.
    fn is_int(&self) -> bool {
        matches!(self, Atom::Bytes | Atom::Secs | Atom::Micros | Atom::Millis)
    }
}

#[derive(Debug)]
enum Seg {
    Lit(Box<str>),
    /// `spec` is `None` for a bare `%(x)s`.
    Atom(Atom, Option<Spec>),
}

/// A compiled access-log format and its output.
pub struct AccessLog {
    segs: Vec<Seg>,
    /// Python would fail every line with this (bad format string).
    error: Option<String>,
    needs_environ: bool,
    /// --access-log-json: each line is a JSON object of the atoms.
    json: bool,
    /// The records go to Python's logging (a logging configuration is in
    /// force): the caller hands them there instead of calling `log`.
    python: bool,
    /// -1: no file (the lines go to syslog only).
    fd: AtomicI32,
    /// `None` = stdout, or no file.
    path: Option<String>,
    reported: AtomicBool,
}

thread_local! {
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl AccessLog {
    /// `target`: `-` for stdout, else a file opened for appending (created
    /// if missing).  Fails only when the file cannot be opened (message as
    /// gunicorn's).  A malformed `format` is accepted, as gunicorn accepts
    /// it, but every [`log`](Self::log) then drops the line; the first one
    /// says why in the error log.
    ///
    /// `target` None: no file; the lines go to syslog (`--log-syslog`).
    pub fn new(target: Option<&str>, format: &str) -> Result<AccessLog, String> {
        let (segs, error) = compile(format);
        let needs_environ = segs
            .iter()
            .any(|s| matches!(s, Seg::Atom(Atom::Environ(_), _)));
        let (fd, path) = match target {
            None => (-1, None),
            Some("-") => (1, None),
            Some(target) => {
                let fd = sys::open_append(target).map_err(|e| not_writable(target, &e))?;
                (fd, Some(target.to_owned()))
            }
        };
        Ok(AccessLog {
            segs,
            error,
            needs_environ,
            json: false,
            python: false,
            fd: AtomicI32::new(fd),
            path,
            reported: AtomicBool::new(false),
        })
    }

    /// The access log of a Python logging configuration: no file, no
    /// syslog of its own; every record goes to `gunicorn.access` (gunicorn
    /// logs access records whenever such a configuration is set).
    pub fn python(format: &str) -> Result<AccessLog, String> {
        let mut a = AccessLog::new(None, format)?;
        a.python = true;
        Ok(a)
    }

    /// --access-log-json: each line is one JSON object, the atoms of
    /// gunicorn's `Logger.atoms` (and the format's `{..}e` ones) by name.
    pub fn with_json(mut self, on: bool) -> AccessLog {
        self.json = on;
        self
    }

    /// Whether each line is a JSON object ([`AccessLog::with_json`]).
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Whether the records go to Python's logging ([`AccessLog::python`]).
    pub fn to_python(&self) -> bool {
        self.python
    }

    /// Whether the format uses any `{..}e` atom (so the caller must supply
    /// [`AccessRecord::environ`]); always, for Python's logging, whose
    /// records carry every environ atom as gunicorn's do.
    pub fn needs_environ(&self) -> bool {
        self.needs_environ || self.python
    }

    /// Formats and writes one line (one `write(2)`).  Never panics; a
    /// failure is reported once to the error log, then ignored.
    pub fn log(&self, rec: &AccessRecord) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            BUF.with(|cell| match cell.try_borrow_mut() {
                Ok(mut b) => self.log_with(&mut b, rec),
                Err(_) => self.log_with(&mut Vec::new(), rec),
            })
        }));
        if r.is_err() {
            self.report_once(|| "access log: internal error formatting a line".into());
        }
    }

    fn log_with(&self, b: &mut Vec<u8>, rec: &AccessRecord) {
        b.clear();
        if let Err(e) = self.render(rec, b) {
            self.report_once(|| format!("access log format error: {e}"));
            return;
        }
        super::syslog::access(b);
        b.push(b'\n');
        let fd = self.fd.load(Ordering::Acquire);
        if fd < 0 {
            // (syslog only)
        } else if let Err(e) = sys::write_all(fd, b) {
            let target = self.path.as_deref().unwrap_or("<stdout>");
            self.report_once(|| format!("access log: cannot write to {target}: {e}"));
        }
        if b.capacity() > 64 * 1024 {
            *b = Vec::with_capacity(1024);
        }
    }

    fn report_once(&self, msg: impl FnOnce() -> String) {
        if !self.reported.swap(true, Ordering::Relaxed) {
            super::write(Level::Error, &msg());
        }
    }

    /// Appends the line for `rec` (without the newline) to `out`.  Fails
    /// where Python's `%` would (bad format, `%d` of a missing length).
    pub fn render(&self, rec: &AccessRecord, out: &mut Vec<u8>) -> Result<(), String> {
        if self.json {
            return self.render_json(rec, out);
        }
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        for seg in &self.segs {
            match seg {
                Seg::Lit(s) => out.extend_from_slice(s.as_bytes()),
                Seg::Atom(a, None) => push_str_atom(out, a, rec),
                Seg::Atom(a, Some(spec)) => {
                    if a.is_int() {
                        match int_atom(a, rec) {
                            Some(v) if spec.conv.is_numeric() => pyfmt::push_int(out, v, spec),
                            None if spec.conv.is_numeric() => {
                                return Err(spec.conv.type_error(spec.ch, "NoneType"))
                            }
                            v => {
                                let start = out.len();
                                match v {
                                    Some(v) => push_u64(out, v),
                                    None => out.extend_from_slice(b"None"),
                                }
                                pyfmt::finish_str(out, start, spec);
                            }
                        }
                    } else {
                        let start = out.len();
                        push_str_atom(out, a, rec);
                        pyfmt::finish_str(out, start, spec);
                    }
                }
            }
        }
        Ok(())
    }

    /// The JSON line: every atom gunicorn's `Logger.atoms` has (strings
    /// and ints as there; `B` may be null), plus the `{NAME}e` atoms of the
    /// format. Strings are the values themselves, without SafeAtoms'
    /// escaping, and bytes from the wire that are UTF-8 read as UTF-8 (not
    /// one character per byte); serde_json escapes quotes, control
    /// characters and newlines, so no request content can end or forge a
    /// line. A repeated header name: the last wins (as in gunicorn's dict).
    fn render_json(&self, rec: &AccessRecord, out: &mut Vec<u8>) -> Result<(), String> {
        use serde_json::Value;
        let mut map = serde_json::Map::new();
        rec.atoms(|key, value| {
            let v = match value {
                AtomValue::Str(s) => Value::String(wire_text(unsafe_atom(s))),
                AtomValue::Int(Some(n)) => Value::from(n),
                AtomValue::Int(None) => Value::Null,
            };
            map.insert(key.to_owned(), v);
        });
        for seg in &self.segs {
            if let Seg::Atom(Atom::Environ(name), _) = seg {
                let v = match rec.environ.and_then(|f| f(name)) {
                    Some(v) => Value::String(wire_text(v)),
                    None => Value::String("-".into()),
                };
                map.insert(format!("{{{name}}}e"), v);
            }
        }
        serde_json::to_writer(&mut *out, &map).map_err(|e| format!("JSON access line: {e}"))
    }

    /// Reopens the file (log rotation); no-op for stdout.  On failure the
    /// old file stays in use.
    pub fn reopen(&self) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let fd = sys::open_append(path).map_err(|e| not_writable(path, &e))?;
        let cur = self.fd.load(Ordering::Acquire);
        // dup2 swaps the file under the same number, atomically for any
        // thread writing concurrently.
        if sys::dup2(fd, cur).is_ok() {
            sys::close(fd);
        } else {
            self.fd.store(fd, Ordering::Release);
        }
        self.reported.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Gives the file to `uid:gid`, as gunicorn does after opening it
    /// (errors ignored, as there).
    pub fn chown(&self, uid: u32, gid: u32) {
        if let Some(p) = &self.path {
            let _ = sys::chown(p, uid, gid);
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        if self.path.is_some() {
            sys::close(*self.fd.get_mut());
        }
    }
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("segs", &self.segs)
            .field("error", &self.error)
            .field("path", &self.path)
            .finish()
    }
}

/// Compiles `format`; on a Python formatting error keeps the message
/// (Python raises at the first bad conversion, left to right).
fn compile(format: &str) -> (Vec<Seg>, Option<String>) {
    let pieces = match pyfmt::parse(format) {
        Ok(p) => p,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut segs = Vec::with_capacity(pieces.len());
    for p in pieces {
        match p {
            Piece::Lit(s) => segs.push(Seg::Lit(s.into_boxed_str())),
            Piece::Key(k, spec) => {
                let atom = Atom::from_key(&k);
                if !atom.is_int() && spec.conv.is_numeric() {
                    return (Vec::new(), Some(spec.conv.type_error(spec.ch, "str")));
                }
                let spec = (!spec.is_plain()).then_some(spec);
                segs.push(Seg::Atom(atom, spec));
            }
        }
    }
    (segs, None)
}

fn push_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// `timedelta.seconds` and `.microseconds` of `d` (days dropped, as
/// gunicorn's atoms do).
fn secs_micros(d: Duration) -> (u64, u64) {
    let us = d.as_micros();
    (((us / 1_000_000) % 86_400) as u64, (us % 1_000_000) as u64)
}

fn int_atom(a: &Atom, rec: &AccessRecord) -> Option<u64> {
    let (s, us) = secs_micros(rec.request_time);
    match a {
        Atom::Bytes => rec.response_length,
        Atom::Secs => Some(s),
        Atom::Micros => Some(s * 1_000_000 + us),
        Atom::Millis => Some(s * 1000 + us / 1000),
        _ => None,
    }
}

/// A string atom without SafeAtoms' escaping: that escaping only puts a
/// backslash before every `"`, so the byte before each `"` goes.
fn unsafe_atom(s: String) -> String {
    if !s.contains('"') {
        return s;
    }
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '"' {
            out.pop();
        }
        out.push(c);
    }
    out
}

/// Text from the wire as the client meant it: WSGI strings hold one
/// character per byte (latin-1); when those bytes are UTF-8, UTF-8 it is.
fn wire_text(s: String) -> String {
    if s.is_ascii() || s.chars().any(|c| c as u32 > 0xff) {
        return s;
    }
    let bytes: Vec<u8> = s.chars().map(|c| c as u32 as u8).collect();
    String::from_utf8(bytes).unwrap_or(s)
}

/// Appends `s` with SafeAtoms' `"` → `\"`.
fn push_escaped(out: &mut Vec<u8>, s: &[u8]) {
    let mut rest = s;
    while let Some(i) = memchr::memchr(b'"', rest) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(b"\\\"");
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
}

/// Appends latin-1 `s` as UTF-8, with `"` escaped.
fn push_latin1(out: &mut Vec<u8>, s: &[u8]) {
    if s.is_ascii() {
        return push_escaped(out, s);
    }
    for &c in s {
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            0..=0x7f => out.push(c),
            _ => {
                out.push(0xc0 | (c >> 6));
                out.push(0x80 | (c & 0x3f));
            }
        }
    }
}

/// The `HTTP_*` environ value gunicorn builds for header `name`: names
/// compare with `-` and `_` alike (both map to `_`), repeats joined by `,`.
fn environ_header<'a>(hdrs: &[(&'a [u8], &'a [u8])], name: &str) -> Option<Cow<'a, [u8]>> {
    let same = |h: &[u8]| {
        h.len() == name.len()
            && h.iter().zip(name.bytes()).all(|(&a, b)| {
                let a = if a == b'_' { b'-' } else { a };
                a.eq_ignore_ascii_case(&b)
            })
    };
    let mut found: Option<Cow<'a, [u8]>> = None;
    for (k, v) in hdrs {
        if same(k) {
            found = Some(match found {
                None => Cow::Borrowed(*v),
                Some(prev) => {
                    let mut j = prev.into_owned();
                    j.push(b',');
                    j.extend_from_slice(v);
                    Cow::Owned(j)
                }
            });
        }
    }
    found
}

/// Writes the `str()` of a string-valued atom (SafeAtoms-escaped).
fn push_str_atom(out: &mut Vec<u8>, a: &Atom, rec: &AccessRecord) {
    match a {
        Atom::RemoteAddr => push_escaped(out, rec.remote_addr.as_bytes()),
        Atom::Ident | Atom::Missing => out.push(b'-'),
        Atom::User => push_user(out, rec.request_headers),
        Atom::Time => {
            let end = rec.request_start + rec.request_time;
            time::push_clf_stamp(out, time::unix_secs(end));
        }
        Atom::RequestLine => {
            push_escaped(out, rec.method.as_bytes());
            out.push(b' ');
            push_latin1(out, rec.raw_uri);
            out.push(b' ');
            push_protocol(out, rec.version);
        }
        Atom::Status => push_u64(out, rec.status as u64),
        Atom::Method => push_escaped(out, rec.method.as_bytes()),
        Atom::Path => push_escaped(out, rec.path.as_bytes()),
        Atom::Query => push_escaped(out, rec.query.as_bytes()),
        Atom::Protocol => push_protocol(out, rec.version),
        Atom::BytesClf => match rec.response_length {
            Some(n) => push_u64(out, n),
            None => out.push(b'-'),
        },
        Atom::Referer => match environ_header(rec.request_headers, "referer") {
            Some(v) => push_latin1(out, &v),
            None => out.push(b'-'),
        },
        Atom::UserAgent => match environ_header(rec.request_headers, "user-agent") {
            Some(v) => push_latin1(out, &v),
            None => out.push(b'-'),
        },
        Atom::DecimalSecs => {
            let (s, us) = secs_micros(rec.request_time);
            push_u64(out, s);
            out.push(b'.');
            let mut digits = itoa::Buffer::new();
            let d = digits.format(us);
            out.resize(out.len() + 6 - d.len(), b'0');
            out.extend_from_slice(d.as_bytes());
        }
        Atom::Pid => {
            out.push(b'<');
            push_u64(out, rec.pid as u64);
            out.push(b'>');
        }
        Atom::ReqHeader(name) => {
            let v = rec
                .request_headers
                .iter()
                .rev()
                .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()));
            match v {
                Some((_, v)) => push_latin1(out, v),
                None => out.push(b'-'),
            }
        }
        Atom::RespHeader(name) => {
            let v = rec
                .response_headers
                .iter()
                .rev()
                .find(|(k, _)| k.eq_ignore_ascii_case(name));
            match v {
                Some((_, v)) => push_escaped(out, v.as_bytes()),
                None => out.push(b'-'),
            }
        }
        Atom::Environ(name) => match rec.environ.and_then(|f| f(name)) {
            Some(v) => push_escaped(out, v.as_bytes()),
            None => out.push(b'-'),
        },
        Atom::Bytes | Atom::Secs | Atom::Micros | Atom::Millis => match int_atom(a, rec) {
            Some(v) => push_u64(out, v),
            None => out.extend_from_slice(b"None"),
        },
    }
}

fn push_protocol(out: &mut Vec<u8>, (major, minor): (u8, u8)) {
    out.extend_from_slice(b"HTTP/");
    push_u64(out, major as u64);
    out.push(b'.');
    push_u64(out, minor as u64);
}

/// `u`: gunicorn's `_get_user`: the user of a `Basic` Authorization, or
/// `-`.
fn push_user(out: &mut Vec<u8>, hdrs: &[(&[u8], &[u8])]) {
    let start = out.len();
    let Some(auth) = environ_header(hdrs, "authorization") else {
        out.push(b'-');
        return;
    };
    // `http_auth.lower().startswith('basic')`, then `split(" ", 1)`.
    if auth.len() < 5 || !auth[..5].eq_ignore_ascii_case(b"basic") {
        out.push(b'-');
        return;
    }
    let Some(sp) = memchr::memchr(b' ', &auth) else {
        out.push(b'-');
        return;
    };
    // `.strip().encode('utf-8')` only moves characters b64decode skips.
    if let Err(e) = b64decode_into(out, &auth[sp + 1..]) {
        out.truncate(start);
        out.push(b'-');
        crate::log_debug!("Couldn't get username: {e}");
        return;
    }
    if let Some(colon) = memchr::memchr(b':', &out[start..]) {
        out.truncate(start + colon);
    }
    let user = &out[start..];
    if let Err(e) = std::str::from_utf8(user) {
        let msg = utf8_error(user, &e);
        out.truncate(start);
        out.push(b'-');
        crate::log_debug!("Couldn't get username: {msg}");
        return;
    }
    if user.is_empty() {
        out.push(b'-');
    } else if memchr::memchr(b'"', user).is_some() {
        let u = user.to_vec();
        out.truncate(start);
        push_escaped(out, &u);
    }
}

/// Python's `UnicodeDecodeError` text for `b.decode("UTF-8")`.
fn utf8_error(b: &[u8], e: &std::str::Utf8Error) -> String {
    let pos = e.valid_up_to();
    let (len, reason) = match e.error_len() {
        None => (b.len() - pos, "unexpected end of data"),
        Some(n) if (0xc2..=0xf4).contains(&b[pos]) => (n, "invalid continuation byte"),
        Some(n) => (n, "invalid start byte"),
    };
    if len <= 1 {
        format!(
            "'utf-8' codec can't decode byte 0x{:02x} in position {pos}: {reason}",
            b[pos]
        )
    } else {
        format!(
            "'utf-8' codec can't decode bytes in position {pos}-{}: {reason}",
            pos + len - 1
        )
    }
}

/// `base64.b64decode(s)` (non-validating `binascii.a2b_base64`): skips
/// characters outside the alphabet, stops at a complete pad sequence.
/// Appends the decoded bytes; the error text is binascii's.
fn b64decode_into(out: &mut Vec<u8>, s: &[u8]) -> Result<(), String> {
    fn val(c: u8) -> Option<u8> {
        match c {
            b'A'..=b'Z' => Some(c - b'A'),
            b'a'..=b'z' => Some(c - b'a' + 26),
            b'0'..=b'9' => Some(c - b'0' + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let start = out.len();
    let mut quad = 0u8;
    let mut left = 0u8;
    let mut pads = 0u8;
    for &c in s {
        if c == b'=' {
            if quad >= 2 {
                pads += 1;
                if quad + pads >= 4 {
                    return Ok(());
                }
            }
            continue;
        }
        let Some(v) = val(c) else { continue };
        pads = 0;
        match quad {
            0 => {
                quad = 1;
                left = v;
            }
            1 => {
                quad = 2;
                out.push((left << 2) | (v >> 4));
                left = v & 0x0f;
            }
            2 => {
                quad = 3;
                out.push((left << 4) | (v >> 2));
                left = v & 0x03;
            }
            _ => {
                quad = 0;
                out.push((left << 6) | v);
                left = 0;
            }
        }
    }
    match quad {
        0 => Ok(()),
        1 => Err(format!(
            "Invalid base64-encoded string: number of data characters ({}) \
             cannot be 1 more than a multiple of 4",
            (out.len() - start) / 3 * 4 + 1
        )),
        _ => Err("Incorrect padding".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{global_lock, tmpdir};
    use super::*;

    // Expected strings below were produced by gunicorn 27.0.1's own
    // `Logger.atoms` + `SafeAtoms` under CPython 3.11 (with `t` stubbed).

    const REQ: &[(&[u8], &[u8])] = &[
        (b"Host", b"example.com"),
        (b"User-Agent", b"curl/8.0 \"x\""),
        (b"Referer", b"http://r/\xe9"),
        (b"X-Forwarded-For", b"1.1.1.1"),
        (b"x-forwarded-for", b"2.2.2.2"),
        (b"Authorization", b"Basic YWxhZGRpbjpvcGVuc2VzYW1l"),
    ];
    const RESP: &[(&str, &str)] = &[
        ("Content-Type", "text/plain"),
        ("X-Req-Id", "abc\"d"),
        ("x-req-id", "second"),
    ];

    fn env(name: &str) -> Option<String> {
        match name.to_ascii_lowercase().as_str() {
            "remote_addr" => Some("10.0.0.1".into()),
            "wsgi.url_scheme" => Some("http".into()),
            _ => None,
        }
    }

    fn rec<'a>(hdrs: &'a [(&'a [u8], &'a [u8])], env: Option<EnvironFn<'a>>) -> AccessRecord<'a> {
        AccessRecord {
            remote_addr: "10.0.0.1",
            method: "GET",
            raw_uri: b"/p%20a/th?x=1&y=\"q\"",
            path: "/p a/th",
            query: "x=1&y=\"q\"",
            version: (1, 1),
            status: 200,
            response_length: Some(1234),
            request_headers: hdrs,
            response_headers: RESP,
            request_start: SystemTime::now(),
            request_time: Duration::new(2, 345_678_901),
            pid: 4242,
            environ: env,
        }
    }

    fn render(fmt: &str, r: &AccessRecord) -> Result<String, String> {
        let log = AccessLog::new(Some("-"), fmt).unwrap();
        let mut out = Vec::new();
        log.render(r, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    fn stamp(r: &AccessRecord) -> String {
        let mut v = Vec::new();
        time::push_clf_stamp(&mut v, time::unix_secs(r.request_start + r.request_time));
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn atoms_as_gunicorns_logger_makes_them() {
        let r = rec(REQ, None);
        let mut got = Vec::new();
        r.atoms(|k, v| {
            got.push((
                k.to_owned(),
                match v {
                    AtomValue::Str(s) => s,
                    AtomValue::Int(Some(n)) => format!("int {n}"),
                    AtomValue::Int(None) => "None".to_owned(),
                },
            ))
        });
        let get = |k: &str| {
            got.iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        // the 19 fixed atoms first, in gunicorn's order
        let keys: Vec<&str> = got.iter().take(19).map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ATOM_KEYS);
        assert_eq!(get("h"), Some("10.0.0.1"));
        assert_eq!(get("u"), Some("aladdin"));
        assert_eq!(get("r"), Some("GET /p%20a/th?x=1&y=\\\"q\\\" HTTP/1.1"));
        assert_eq!(get("s"), Some("200"));
        assert_eq!(get("q"), Some("x=1&y=\\\"q\\\""));
        assert_eq!(get("b"), Some("1234"));
        assert_eq!(get("B"), Some("int 1234"));
        assert_eq!(get("T"), Some("int 2"));
        assert_eq!(get("D"), Some("int 2345678"));
        assert_eq!(get("M"), Some("int 2345"));
        assert_eq!(get("L"), Some("2.345678"));
        assert_eq!(get("p"), Some("<4242>"));
        assert_eq!(get("t"), Some(stamp(&r).as_str()));
        // headers: lowercased names, latin-1 values, escaped, last one wins
        assert_eq!(get("{user-agent}i"), Some("curl/8.0 \\\"x\\\""));
        assert_eq!(get("{referer}i"), Some("http://r/\u{e9}"));
        assert_eq!(get("{x-forwarded-for}i"), Some("2.2.2.2"));
        assert_eq!(get("{x-req-id}o"), Some("second"));
        assert_eq!(get("{content-type}o"), Some("text/plain"));
        let r = AccessRecord {
            response_length: None,
            ..rec(REQ, None)
        };
        let mut b = None;
        r.atoms(|k, v| {
            if k == "B" {
                b = Some(matches!(v, AtomValue::Int(None)));
            }
        });
        assert_eq!(b, Some(true));
    }

    #[test]
    fn json_lines_hold_the_values_and_cannot_be_broken() {
        let hdrs: &[(&[u8], &[u8])] = &[
            (b"User-Agent", b"a \"quoted\" \\\" agent"),
            (b"X-Text", "caf\u{e9} \u{2603}".as_bytes()),
            (b"X-Latin", b"\xe9t\xe9"),
            (b"X-Line", b"one\ntwo\r\n{\"forged\": 1}"),
        ];
        let env = |k: &str| (k == "custom").then(|| "v\"al".to_owned());
        let r = AccessRecord {
            path: "/a\"b\nc\u{c3}\u{a9}",
            response_length: None,
            ..rec(hdrs, Some(&env))
        };
        let log = AccessLog::new(None, "%(h)s %({custom}e)s")
            .unwrap()
            .with_json(true);
        let mut out = Vec::new();
        log.render(&r, &mut out).unwrap();
        assert!(!out.contains(&b'\n'), "{}", String::from_utf8_lossy(&out));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["h"], "10.0.0.1");
        assert_eq!(v["s"], "200");
        assert_eq!(v["b"], "-");
        assert_eq!(v["B"], serde_json::Value::Null);
        assert_eq!(v["D"], 2_345_678);
        assert_eq!(v["r"], "GET /p%20a/th?x=1&y=\"q\" HTTP/1.1");
        assert_eq!(v["U"], "/a\"b\nc\u{e9}");
        assert_eq!(v["{user-agent}i"], "a \"quoted\" \\\" agent");
        assert_eq!(v["a"], "a \"quoted\" \\\" agent");
        assert_eq!(v["{x-text}i"], "caf\u{e9} \u{2603}");
        assert_eq!(v["{x-latin}i"], "\u{e9}t\u{e9}");
        assert_eq!(v["{x-line}i"], "one\ntwo\r\n{\"forged\": 1}");
        assert_eq!(v["{x-req-id}o"], "second");
        assert_eq!(v["{custom}e"], "v\"al");
    }

    #[test]
    fn default_format() {
        let r = rec(REQ, None);
        let want = format!(
            "10.0.0.1 - aladdin {} \"GET /p%20a/th?x=1&y=\\\"q\\\" HTTP/1.1\" 200 1234 \
             \"http://r/\u{e9}\" \"curl/8.0 \\\"x\\\"\"",
            stamp(&r)
        );
        assert_eq!(render(DEFAULT_FORMAT, &r).unwrap(), want);
    }

    #[test]
    fn simple_atoms() {
        let r = rec(REQ, None);
        assert_eq!(
            render(
                "%(m)s|%(U)s|%(q)s|%(H)s|%(B)s|%(T)s|%(M)s|%(D)s|%(L)s|%(p)s",
                &r
            )
            .unwrap(),
            "GET|/p a/th|x=1&y=\\\"q\\\"|HTTP/1.1|1234|2|2345|2345678|2.345678|<4242>"
        );
        let t = render("%(t)s", &r).unwrap();
        assert_eq!(t, stamp(&r));
        assert_eq!(t.len(), 28);
        assert!(t.starts_with('[') && t.ends_with(']') && t.as_bytes()[12] == b':');
    }

    #[test]
    fn header_environ_and_unknown_atoms() {
        let e = env;
        let r = rec(REQ, Some(&e));
        let f = "%({x-forwarded-for}i)s|%({X-FORWARDED-FOR}I)s|%({host}i)s|%({nope}i)s|\
                 %({x-req-id}o)s|%({content-type}O)s|%({REMOTE_ADDR}e)s|\
                 %({wsgi.url_scheme}e)s|%({nope}e)s|%(zz)s|%({x}y)s|%(Z)s";
        assert_eq!(
            render(f, &r).unwrap(),
            "2.2.2.2|2.2.2.2|example.com|-|second|text/plain|10.0.0.1|http|-|-|-|-"
        );
        // Quotes in header values are escaped; no environ function: '-'.
        let r = rec(REQ, None);
        assert_eq!(
            render("%({user-agent}i)s %({a}e)s", &r).unwrap(),
            "curl/8.0 \\\"x\\\" -"
        );
        assert!(AccessLog::new(Some("-"), f).unwrap().needs_environ());
        assert!(!AccessLog::new(Some("-"), DEFAULT_FORMAT)
            .unwrap()
            .needs_environ());
    }

    #[test]
    fn conversions() {
        let r = rec(REQ, None);
        assert_eq!(
            render("%(T)d %(D)08d %(B)x %(s)5s %(h)r %(b)-6s|", &r).unwrap(),
            "2 02345678 4d2   200 '10.0.0.1' 1234  |"
        );
        assert_eq!(
            render("%(B).1f %(T)05s %(a).4s", &r).unwrap(),
            "1234.0     2 curl"
        );
        assert_eq!(render("100%% %(l)s", &r).unwrap(), "100% -");
        // Python raises; gunicorn's line is lost.
        assert_eq!(
            render("%(s)d", &r).unwrap_err(),
            "%d format: a real number is required, not str"
        );
        assert_eq!(render("%(h", &r).unwrap_err(), "incomplete format key");
        let mut r = rec(REQ, None);
        r.response_length = None;
        assert_eq!(render("%(b)s %(B)s", &r).unwrap(), "- None");
        assert_eq!(
            render("%(B)d", &r).unwrap_err(),
            "%d format: a real number is required, not NoneType"
        );
    }

    fn urow(hdrs: &[(&[u8], &[u8])], sent: u64, rt: Duration) -> String {
        let mut r = rec(hdrs, None);
        r.response_length = Some(sent);
        r.request_time = rt;
        render("%(u)s|%(a)s|%(f)s|%(b)s|%(B)s|%(T)s|%(M)s|%(D)s|%(L)s", &r).unwrap()
    }

    #[test]
    fn user_agent_referer_user_and_timing() {
        let _g = global_lock(); // may log_debug while another test has DEBUG on
        let day = Duration::new(86_400 + 3723, 4_005_000);
        assert_eq!(
            urow(
                &[
                    (b"User-Agent", b"a"),
                    (b"User_Agent", b"b"),
                    (b"Referer", b"x")
                ],
                0,
                day
            ),
            "-|a,b|x|0|0|3723|3723004|3723004005|3723.004005"
        );
        let z = Duration::ZERO;
        let tail = "|-|-|0|0|0|0|0|0.000000";
        let cases: &[(&[u8], &str)] = &[
            (b"basic ImEiYjpw", "\\\"a\\\"b"),
            (b"Basic YQ", "-"),
            (b"Bearer YWxhZGRpbjpvcGVuc2VzYW1l", "-"),
            (b"Basic", "-"),
            (b"Basic /w==", "-"),
            (b"Basic Onh4", "-"),
        ];
        for (auth, user) in cases {
            let h: &[(&[u8], &[u8])] = &[(b"Authorization", auth)];
            assert_eq!(urow(h, 0, z), format!("{user}{tail}"), "{auth:?}");
        }
        let h: &[(&[u8], &[u8])] = &[
            (b"Authorization", b"Basic YWxh"),
            (b"authorization", b"ZGRp"),
        ];
        assert_eq!(urow(h, 0, z), format!("aladdi{tail}"));
    }

    #[test]
    fn b64_like_python() {
        let d = |s: &[u8]| {
            let mut v = Vec::new();
            b64decode_into(&mut v, s).map(|_| v)
        };
        assert_eq!(d(b"YQ=x=").unwrap(), b"a\x0c");
        assert_eq!(d(b"YWJj=ZGVm").unwrap(), b"abcdef");
        assert_eq!(d(b"YWxh ZGRp bjpv").unwrap(), b"aladdin:o");
        assert_eq!(d(b"=YQ==").unwrap(), b"a");
        assert_eq!(d(b"YWJjZA").unwrap_err(), "Incorrect padding");
        assert_eq!(
            d(b"Y").unwrap_err(),
            "Invalid base64-encoded string: number of data characters (1) \
             cannot be 1 more than a multiple of 4"
        );
    }

    #[test]
    fn utf8_errors_like_python() {
        let m = |b: &[u8]| utf8_error(b, &std::str::from_utf8(b).unwrap_err());
        assert_eq!(
            m(b"\xff"),
            "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"
        );
        assert_eq!(
            m(b"a\xc3("),
            "'utf-8' codec can't decode byte 0xc3 in position 1: invalid continuation byte"
        );
        assert_eq!(
            m(b"\xe2\x82"),
            "'utf-8' codec can't decode bytes in position 0-1: unexpected end of data"
        );
    }

    #[test]
    fn file_target_reopen_and_errors() {
        let _g = global_lock();
        let d = tmpdir("access");
        let p = d.join("access.log");
        let ps = p.to_str().unwrap();
        let log = AccessLog::new(Some(ps), "%(s)s %(m)s %(U)s").unwrap();
        let r = rec(REQ, None);
        log.log(&r);
        std::fs::rename(&p, d.join("access.log.1")).unwrap();
        log.log(&r);
        log.reopen().unwrap();
        log.log(&r);
        log.log(&r);
        let old = std::fs::read_to_string(d.join("access.log.1")).unwrap();
        assert_eq!(old, "200 GET /p a/th\n200 GET /p a/th\n");
        let new = std::fs::read_to_string(&p).unwrap();
        assert_eq!(new, "200 GET /p a/th\n200 GET /p a/th\n");

        let e = AccessLog::new(Some("/nonexistent-dir/a.log"), DEFAULT_FORMAT).unwrap_err();
        assert_eq!(
            e,
            "Error: '/nonexistent-dir/a.log' isn't writable \
             [FileNotFoundError(2, 'No such file or directory')]"
        );

        // A bad format: lines dropped, reported once to the error log.
        let elog = d.join("error.log");
        super::super::init("info", elog.to_str().unwrap(), false).unwrap();
        let bad = AccessLog::new(Some(ps), "%(s)d").unwrap();
        bad.log(&r);
        bad.log(&r);
        super::super::init("info", "-", false).unwrap();
        let errs = std::fs::read_to_string(&elog).unwrap();
        assert_eq!(errs.lines().count(), 1, "{errs}");
        assert!(errs.ends_with(
            "[ERROR] access log format error: %d format: a real number is required, not str\n"
        ));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), new);
    }

    #[test]
    fn forked_access_writers_never_interleave() {
        let _g = global_lock();
        let d = tmpdir("access-fork");
        let p = d.join("access.log");
        let log = AccessLog::new(Some(p.to_str().unwrap()), "%(p)s %(U)s").unwrap();
        const N: usize = 1500;
        let mut kids = Vec::new();
        for tag in ['a', 'b'] {
            let pid = sys::testing::fork();
            if pid == 0 {
                let path: String = std::iter::repeat_n(tag, 5000).collect();
                let mut r = rec(REQ, None);
                r.path = &path;
                r.pid = tag as u32;
                for _ in 0..N {
                    log.log(&r);
                }
                sys::testing::exit(0);
            }
            kids.push(pid);
        }
        for pid in kids {
            assert_eq!(sys::testing::wait(pid), 0);
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let mut counts = [0; 2];
        for line in text.lines() {
            let (pid, path) = line.split_once(' ').unwrap();
            let tag = match pid {
                "<97>" => 'a',
                "<98>" => 'b',
                _ => panic!("bad line start {pid:?}"),
            };
            assert_eq!(path.len(), 5000);
            assert!(path.chars().all(|c| c == tag), "interleaved line");
            counts[(tag as u8 - b'a') as usize] += 1;
        }
        assert_eq!(counts, [N, N]);
    }
}
