//! Python's `str % mapping` formatting, the subset an access-log format can
//! use: `%(key)[flags][width][.precision][hlL]conv` and `%%`.
//!
//! Conversions: `s r a` on any value, `d i u o x X f F` on integers.
//! `e E g G c` are rejected (Python would accept some of them; no access
//! log format in the wild uses them).  Positional conversions (`%s`) are
//! rejected: gunicorn formats with a mapping, where they fail (or, alone,
//! print the whole atoms dict).  Error messages are Python's.

/// One parsed piece of a format string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    Lit(String),
    Key(String, Spec),
}

pub(crate) const MINUS: u8 = 1;
pub(crate) const PLUS: u8 = 2;
pub(crate) const SPACE: u8 = 4;
pub(crate) const ALT: u8 = 8;
pub(crate) const ZERO: u8 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conv {
    Str,
    Repr,
    Ascii,
    Dec,
    Oct,
    Hex,
    HexUpper,
    Float,
}

impl Conv {
    pub(crate) fn is_numeric(self) -> bool {
        !matches!(self, Conv::Str | Conv::Repr | Conv::Ascii)
    }

    /// Python's TypeError text for applying this conversion to `ty`.
    pub(crate) fn type_error(self, ch: char, ty: &str) -> String {
        match self {
            Conv::Dec => format!("%{ch} format: a real number is required, not {ty}"),
            Conv::Float => format!("must be real number, not {ty}"),
            _ => format!("%{ch} format: an integer is required, not {ty}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spec {
    pub flags: u8,
    pub width: usize,
    pub prec: Option<usize>,
    pub conv: Conv,
    /// The conversion character as written (for error messages).
    pub ch: char,
}

impl Spec {
    /// A bare `%(key)s`: the value is copied as is.
    pub(crate) fn is_plain(&self) -> bool {
        self.conv == Conv::Str && self.width == 0 && self.prec.is_none()
    }
}

/// Parses `fmt`. The error is Python's message for the first problem.
pub(crate) fn parse(fmt: &str) -> Result<Vec<Piece>, String> {
    let chars: Vec<char> = fmt.chars().collect();
    let n = chars.len();
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut i = 0;
    while i < n {
        let c = chars[i];
        i += 1;
        if c != '%' {
            lit.push(c);
            continue;
        }
        if i >= n {
            return Err("incomplete format".into());
        }
        if chars[i] == '%' {
            lit.push('%');
            i += 1;
            continue;
        }
        let key = if chars[i] == '(' {
            i += 1;
            let start = i;
            let mut depth = 1;
            while i < n {
                match chars[i] {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            if i >= n {
                return Err("incomplete format key".into());
            }
            let k: String = chars[start..i].iter().collect();
            i += 1;
            Some(k)
        } else {
            None
        };
        let mut flags = 0;
        while i < n {
            flags |= match chars[i] {
                '-' => MINUS,
                '+' => PLUS,
                ' ' => SPACE,
                '#' => ALT,
                '0' => ZERO,
                _ => break,
            };
            i += 1;
        }
        if i < n && chars[i] == '*' {
            return Err("not enough arguments for format string".into());
        }
        let mut width = 0usize;
        while i < n && chars[i].is_ascii_digit() {
            width = width
                .saturating_mul(10)
                .saturating_add(chars[i] as usize - '0' as usize);
            i += 1;
        }
        let mut prec = None;
        if i < n && chars[i] == '.' {
            i += 1;
            if i < n && chars[i] == '*' {
                return Err("not enough arguments for format string".into());
            }
            let mut p = 0usize;
            while i < n && chars[i].is_ascii_digit() {
                p = p
                    .saturating_mul(10)
                    .saturating_add(chars[i] as usize - '0' as usize);
                i += 1;
            }
            prec = Some(p);
        }
        if i < n && matches!(chars[i], 'h' | 'l' | 'L') {
            i += 1;
        }
        if i >= n {
            return Err("incomplete format".into());
        }
        let ch = chars[i];
        let conv = match ch {
            's' => Conv::Str,
            'r' => Conv::Repr,
            'a' => Conv::Ascii,
            'd' | 'i' | 'u' => Conv::Dec,
            'o' => Conv::Oct,
            'x' => Conv::Hex,
            'X' => Conv::HexUpper,
            'f' | 'F' => Conv::Float,
            _ => {
                return Err(format!(
                    "unsupported format character '{ch}' (0x{:x}) at index {i}",
                    ch as u32
                ))
            }
        };
        i += 1;
        let Some(key) = key else {
            return Err("format requires a mapping".into());
        };
        if !lit.is_empty() {
            out.push(Piece::Lit(std::mem::take(&mut lit)));
        }
        out.push(Piece::Key(
            key,
            Spec {
                flags,
                width,
                prec,
                conv,
                ch,
            },
        ));
    }
    if !lit.is_empty() {
        out.push(Piece::Lit(lit));
    }
    Ok(out)
}

/// Applies a non-plain string conversion to `buf[start..]`, which holds
/// the value's `str()` (UTF-8): repr/ascii, then precision, then width.
pub(crate) fn finish_str(buf: &mut Vec<u8>, start: usize, spec: &Spec) {
    if spec.is_plain() {
        return;
    }
    if matches!(spec.conv, Conv::Repr | Conv::Ascii) {
        let s = String::from_utf8_lossy(&buf[start..]).into_owned();
        buf.truncate(start);
        repr(buf, &s, spec.conv == Conv::Ascii);
    }
    if let Some(p) = spec.prec {
        if let Some((cut, _)) = utf8(&buf[start..]).char_indices().nth(p) {
            buf.truncate(start + cut);
        }
    }
    let len = utf8(&buf[start..]).chars().count();
    if spec.width > len {
        let pad = spec.width - len;
        if spec.flags & MINUS != 0 {
            buf.resize(buf.len() + pad, b' ');
        } else {
            buf.splice(start..start, std::iter::repeat_n(b' ', pad));
        }
    }
}

fn utf8(b: &[u8]) -> &str {
    // The buffer segment was written from &str / valid transcodes; a
    // failure here would be a bug, not worth a panic in a log path.
    std::str::from_utf8(b).unwrap_or("")
}

/// Appends `v` with a numeric conversion (Python's `%d`, `%x`, `%f`, ...).
pub(crate) fn push_int(buf: &mut Vec<u8>, v: u64, spec: &Spec) {
    let mut digits = String::new();
    let prefix = match spec.conv {
        Conv::Oct => {
            digits = format!("{v:o}");
            if spec.flags & ALT != 0 {
                "0o"
            } else {
                ""
            }
        }
        Conv::Hex => {
            digits = format!("{v:x}");
            if spec.flags & ALT != 0 {
                "0x"
            } else {
                ""
            }
        }
        Conv::HexUpper => {
            digits = format!("{v:X}");
            if spec.flags & ALT != 0 {
                "0X"
            } else {
                ""
            }
        }
        Conv::Float => {
            let p = spec.prec.unwrap_or(6);
            digits = format!("{:.*}", p, v as f64);
            if spec.flags & ALT != 0 && p == 0 {
                digits.push('.');
            }
            ""
        }
        Conv::Dec | Conv::Str | Conv::Repr | Conv::Ascii => {
            digits.push_str(itoa::Buffer::new().format(v));
            ""
        }
    };
    if spec.conv != Conv::Float {
        if let Some(p) = spec.prec {
            if digits.len() < p {
                digits.insert_str(0, &"0".repeat(p - digits.len()));
            }
        }
    }
    let sign = if spec.flags & PLUS != 0 {
        "+"
    } else if spec.flags & SPACE != 0 {
        " "
    } else {
        ""
    };
    let len = sign.len() + prefix.len() + digits.len();
    let pad = spec.width.saturating_sub(len);
    if spec.flags & MINUS != 0 {
        buf.extend_from_slice(sign.as_bytes());
        buf.extend_from_slice(prefix.as_bytes());
        buf.extend_from_slice(digits.as_bytes());
        buf.resize(buf.len() + pad, b' ');
    } else if spec.flags & ZERO != 0 {
        buf.extend_from_slice(sign.as_bytes());
        buf.extend_from_slice(prefix.as_bytes());
        buf.resize(buf.len() + pad, b'0');
        buf.extend_from_slice(digits.as_bytes());
    } else {
        buf.resize(buf.len() + pad, b' ');
        buf.extend_from_slice(sign.as_bytes());
        buf.extend_from_slice(prefix.as_bytes());
        buf.extend_from_slice(digits.as_bytes());
    }
}

/// Python's `repr()` (or `ascii()`) of a str.
fn repr(out: &mut Vec<u8>, s: &str, ascii: bool) {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut o = String::with_capacity(s.len() + 2);
    o.push(q);
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if c == q => {
                o.push('\\');
                o.push(c);
            }
            c if (' '..='~').contains(&c) => o.push(c),
            c if !ascii && !c.is_ascii() && printable(c) => o.push(c),
            c => {
                let v = c as u32;
                if v < 0x100 {
                    o.push_str(&format!("\\x{v:02x}"));
                } else if v < 0x10000 {
                    o.push_str(&format!("\\u{v:04x}"));
                } else {
                    o.push_str(&format!("\\U{v:08x}"));
                }
            }
        }
    }
    o.push(q);
    out.extend_from_slice(o.as_bytes());
}

/// Approximates `str.isprintable()` for a non-ASCII char: not a control,
/// separator (other than the ASCII space) or common format character.
fn printable(c: char) -> bool {
    !(c.is_control()
        || c.is_whitespace()
        || matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}')
        || ('\u{e000}'..='\u{f8ff}').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Spec {
        match parse(s).unwrap().pop().unwrap() {
            Piece::Key(_, sp) => sp,
            p => panic!("{p:?}"),
        }
    }

    fn fmt_str(f: &str, v: &str) -> String {
        let mut b = b"<".to_vec();
        b.extend_from_slice(v.as_bytes());
        finish_str(&mut b, 1, &spec(f));
        String::from_utf8(b[1..].to_vec()).unwrap()
    }

    fn fmt_int(f: &str, v: u64) -> String {
        let mut b = Vec::new();
        push_int(&mut b, v, &spec(f));
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn parse_pieces() {
        let p = parse("a %(h)s %% \"%(r)s\"").unwrap();
        assert_eq!(p.len(), 5);
        assert_eq!(p[0], Piece::Lit("a ".into()));
        assert!(matches!(&p[1], Piece::Key(k, s) if k == "h" && s.is_plain()));
        assert_eq!(p[2], Piece::Lit(" % \"".into()));
        assert_eq!(p[4], Piece::Lit("\"".into()));
        assert!(matches!(&parse("%(a(b))s").unwrap()[0], Piece::Key(k, _) if k == "a(b)"));
        assert!(matches!(&parse("%(a)ld").unwrap()[0], Piece::Key(_, s) if s.conv == Conv::Dec));
    }

    #[test]
    fn parse_errors_are_pythons() {
        // Each message checked against CPython 3.11.
        assert_eq!(parse("%(a)5").unwrap_err(), "incomplete format");
        assert_eq!(parse("%(a").unwrap_err(), "incomplete format key");
        assert_eq!(
            parse("%(a)z").unwrap_err(),
            "unsupported format character 'z' (0x7a) at index 4"
        );
        assert_eq!(
            parse("%(a)*d").unwrap_err(),
            "not enough arguments for format string"
        );
        assert_eq!(parse("abc %").unwrap_err(), "incomplete format");
        assert_eq!(parse("%s").unwrap_err(), "format requires a mapping");
    }

    #[test]
    fn strings_like_python() {
        // Expected values produced by CPython 3.11.
        assert_eq!(fmt_str("%(a)05s", "ab"), "   ab");
        assert_eq!(fmt_str("%(a).1s", "abc"), "a");
        assert_eq!(fmt_str("%(a)5.2r", "xyz"), "   'x");
        assert_eq!(fmt_str("%(a)-6s", "é"), "é     ");
        assert_eq!(
            fmt_str("%(a)r", "a'b\"c\x00\u{a0}\u{ad}\u{200b}\x7f\u{80}é\\\\"),
            "'a\\'b\"c\\x00\\xa0\\xad\\u200b\\x7f\\x80é\\\\\\\\'"
        );
        assert_eq!(fmt_str("%(a)r", "it's"), "\"it's\"");
        assert_eq!(fmt_str("%(a)a", "é\u{1F600}"), "'\\xe9\\U0001f600'");
    }

    #[test]
    fn ints_like_python() {
        // Expected values produced by CPython 3.11.
        assert_eq!(fmt_int("%(a)05.3d", 5), "00005");
        assert_eq!(fmt_int("%(a)-05d", 5), "5    ");
        assert_eq!(fmt_int("%(a)#08x", 255), "0x0000ff");
        assert_eq!(fmt_int("%(a)+d", 5), "+5");
        assert_eq!(fmt_int("%(a) 5d", 5), "    5");
        assert_eq!(fmt_int("%(a)08.3f", 5), "0005.000");
        assert_eq!(fmt_int("%(a)#5o", 8), " 0o10");
        assert_eq!(fmt_int("%(a)-+6.3d", 5), "+005  ");
        assert_eq!(fmt_int("%(a)010.4d", 5), "0000000005");
        assert_eq!(fmt_int("%(a)-#0 +10.5d", 5), "+00005    ");
        assert_eq!(fmt_int("%(a).0f", 5), "5");
        assert_eq!(fmt_int("%(a)X", 48879), "BEEF");
        assert_eq!(fmt_int("%(a)s", 1234), "1234");
    }
}
