//! The on-disk format of prometheus_client's multiprocess `.db` files
//! (`prometheus_client/mmap_dict.py`, 0.26.0) and their file names.
//!
//! Layout (native byte order, as Python's `struct` without a prefix):
//!
//! ```text
//! 0   i32   used: bytes of the file in use, header included (8 when empty)
//! 4   4     padding
//! 8   entries, each:
//!       i32   key length L
//!       L     key, UTF-8 JSON `[metric_name, sample_name, {labels}, help]`
//!       pad   spaces up to 8-byte alignment: 8 - (L + 4) % 8 bytes (1..=8)
//!       f64   value
//!       f64   timestamp (seconds; 0.0 unless a `mostrecent` gauge was set)
//! used..     preallocated zeroes (Python grows files by doubling from 64 KiB)
//! ```
//!
//! A writer appends an entry first and bumps `used` afterwards, so a reader
//! that reads `used` first and stops there never sees a half-written entry.
//! Archive files written by [`super::compact_dead`] carry a trailer *after*
//! `used` (ignored by prometheus_client, which never reads past `used`) that
//! names the files folded into them by the latest compaction.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The "pid" part of the file name of archive files.
///
/// prometheus_client takes `name.split('_')[2][:-3]` as the `pid` label of
/// gauges, so it must contain no `_`; a real pid is all digits, so it never
/// collides. Only `counter`, `histogram`, `summary` and gauges in the modes
/// `min`, `max`, `sum` and `mostrecent` are archived, none of which shows the
/// pid label.
pub const ARCHIVE_PID: &str = "archive";

/// Prefix of the temporary files this module writes (hidden: prometheus_client
/// globs `*.db`, which skips dot files, and the name does not end in `.db`).
pub(crate) const TEMP_PREFIX: &str = ".fcmp-";

const TRAILER_MAGIC: &[u8; 8] = b"FCMPTRL1";
const HEADER_LEN: usize = 8;
/// Python reads one page first, then the rest up to `used`.
const FIRST_READ: usize = 4096;

/// One `key -> (value, timestamp)` entry of a `.db` file.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The JSON key, verbatim.
    pub key: String,
    pub value: f64,
    pub timestamp: f64,
}

/// Identity of a file on disk (to recognise a file already folded into an
/// archive): name, device, inode and modification time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct FileIdent {
    pub name: String,
    pub dev: u64,
    pub ino: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
}

impl FileIdent {
    pub(crate) fn of(name: &str, md: &fs::Metadata) -> FileIdent {
        FileIdent {
            name: name.to_string(),
            dev: md.dev(),
            ino: md.ino(),
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
        }
    }
}

/// What a `.db` file name says: `<type>_<pid>.db` or `<type>_<mode>_<pid>.db`
/// for gauges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName {
    /// `counter`, `gauge`, `histogram`, `summary` (anything else is kept as
    /// written and ignored by the merge).
    pub typ: String,
    /// The gauge multiprocess mode (`all`, `liveall`, `min`, ...); `None` for
    /// other types.
    pub mode: Option<String>,
    /// Everything after the type (and mode) up to `.db`: the pid, or
    /// [`ARCHIVE_PID`].
    pub pid: String,
}

impl FileName {
    /// Parses a file name as prometheus_client's collector would glob and
    /// split it. `None` for names it would not glob (hidden, not `*.db`) or
    /// could not parse (a gauge name without a mode and pid).
    pub fn parse(file_name: &str) -> Option<FileName> {
        if file_name.starts_with('.') {
            return None;
        }
        let stem = file_name.strip_suffix(".db")?;
        let (typ, rest) = stem.split_once('_')?;
        if typ == "gauge" {
            let (mode, pid) = rest.split_once('_')?;
            Some(FileName {
                typ: typ.to_string(),
                mode: Some(mode.to_string()),
                pid: pid.to_string(),
            })
        } else {
            Some(FileName {
                typ: typ.to_string(),
                mode: None,
                pid: rest.to_string(),
            })
        }
    }

    /// The file name this describes.
    pub fn file_name(&self) -> String {
        match &self.mode {
            Some(mode) => format!("{}_{}_{}.db", self.typ, mode, self.pid),
            None => format!("{}_{}.db", self.typ, self.pid),
        }
    }

    /// The pid as a number, when it is one.
    pub fn pid_u32(&self) -> Option<u32> {
        if self.pid.is_empty() || !self.pid.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        self.pid.parse().ok()
    }
}

/// The `pid` label prometheus_client gives the samples of a gauge file:
/// `os.path.basename(f).split('_')[2][:-3]`, character for character.
pub(crate) fn python_pid_label(file_name: &str) -> Option<String> {
    let part = file_name.split('_').nth(2)?;
    let n = part.chars().count();
    Some(part.chars().take(n.saturating_sub(3)).collect())
}

/// One parsed `.db` file.
#[derive(Debug, Clone)]
pub struct FileData {
    // Read by the merge of whole files (the tests' path; the collector
    // merges without parsing into FileData).
    #[cfg_attr(not(test), allow(dead_code))]
    pub path: PathBuf,
    #[cfg_attr(not(test), allow(dead_code))]
    pub name: FileName,
    /// Entries in file order, up to the first damaged one.
    pub entries: Vec<Entry>,
    /// Set when the file is truncated or corrupt: `entries` then holds what
    /// could be read before the damage.
    pub error: Option<String>,
    pub(crate) ident: FileIdent,
    /// For archive files: the files the latest compaction folded into it.
    pub(crate) folded: Vec<FileIdent>,
}

fn rd_i32(b: &[u8], pos: usize) -> Option<i32> {
    let s = b.get(pos..pos.checked_add(4)?)?;
    Some(i32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn rd_u32(b: &[u8], pos: usize) -> Option<u32> {
    let s = b.get(pos..pos.checked_add(4)?)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn rd_u64(b: &[u8], pos: usize) -> Option<u64> {
    let s = b.get(pos..pos.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_ne_bytes(a))
}

fn rd_f64(b: &[u8], pos: usize) -> Option<f64> {
    rd_u64(b, pos).map(f64::from_bits)
}

/// Padding after a key of `len` bytes, as mmap_dict.py computes it.
fn pad_len(len: usize) -> usize {
    8 - (len + 4) % 8
}

/// Parses the entries of `data` (the file's first bytes; `used` from its
/// header). Returns the entries read and an error for damage found.
pub(crate) fn parse_entries(data: &[u8]) -> (Vec<Entry>, usize, Option<String>) {
    let (entries, used, err) = parse_entries_ref(data);
    let entries = entries
        .into_iter()
        .map(|(key, value, timestamp)| Entry {
            key: key.to_string(),
            value,
            timestamp,
        })
        .collect();
    (entries, used, err)
}

/// One entry with its key borrowed from the file's bytes: (key, value,
/// timestamp).
pub(crate) type EntryRef<'d> = (&'d str, f64, f64);

/// [`parse_entries`] with the keys borrowed from `data`.
pub(crate) fn parse_entries_ref(data: &[u8]) -> (Vec<EntryRef<'_>>, usize, Option<String>) {
    let Some(used) = rd_i32(data, 0) else {
        // Empty or shorter than the header: a file being created.
        return (Vec::new(), 0, None);
    };
    if used == 0 {
        // Created and sized, header not yet written.
        return (Vec::new(), 0, None);
    }
    if used < HEADER_LEN as i32 {
        return (Vec::new(), 0, Some(format!("bad used-size header {used}")));
    }
    let used = used as usize;
    let mut err = None;
    let limit = if data.len() < used {
        err = Some(format!(
            "truncated: header says {used} bytes used, file has {}",
            data.len()
        ));
        data.len()
    } else {
        used
    };
    let mut entries = Vec::new();
    let mut pos = HEADER_LEN;
    while pos < limit {
        let Some(len) = rd_i32(data, pos) else {
            err.get_or_insert_with(|| format!("entry header cut at offset {pos}"));
            break;
        };
        if len < 0 {
            err = Some(format!("negative key length at offset {pos}"));
            break;
        }
        let len = len as usize;
        let key_start = pos + 4;
        let val_pos = key_start + len + pad_len(len);
        let end = val_pos + 16;
        if end > limit {
            err.get_or_insert_with(|| format!("entry at offset {pos} runs past the used size"));
            break;
        }
        let (Some(value), Some(timestamp)) = (rd_f64(data, val_pos), rd_f64(data, val_pos + 8))
        else {
            break;
        };
        match std::str::from_utf8(&data[key_start..key_start + len]) {
            Ok(key) => entries.push((key, value, timestamp)),
            Err(_) => {
                err.get_or_insert_with(|| format!("key at offset {pos} is not UTF-8"));
            }
        }
        pos = end;
    }
    (entries, used, err)
}

fn parse_trailer(data: &[u8], used: usize) -> Vec<FileIdent> {
    let mut out = Vec::new();
    if data.get(used..used + 8) != Some(&TRAILER_MAGIC[..]) {
        return out;
    }
    let mut pos = used + 8;
    let Some(count) = rd_u32(data, pos) else {
        return out;
    };
    pos += 4;
    for _ in 0..count {
        let (Some(dev), Some(ino), Some(mtime), Some(nsec), Some(nlen)) = (
            rd_u64(data, pos),
            rd_u64(data, pos + 8),
            rd_u64(data, pos + 16),
            rd_u64(data, pos + 24),
            rd_u32(data, pos + 32),
        ) else {
            break;
        };
        pos += 36;
        let Some(name) = data
            .get(pos..pos + nlen as usize)
            .and_then(|b| std::str::from_utf8(b).ok())
        else {
            break;
        };
        pos += nlen as usize;
        out.push(FileIdent {
            name: name.to_string(),
            dev,
            ino,
            mtime: mtime as i64,
            mtime_nsec: nsec as i64,
        });
    }
    out
}

/// Reads one `.db` file. `Err(io)` only when the file cannot be opened or
/// read at all (e.g. `NotFound` when it vanished); damage inside the file is
/// reported in [`FileData::error`].
/// One `.db` file's bytes (up to its used size; archives whole), identity
/// and, for archives, the files folded into it.
pub(crate) struct RawFile {
    pub data: Vec<u8>,
    pub ident: FileIdent,
    pub folded: Vec<FileIdent>,
}

pub(crate) fn read_file_io(path: &Path, name: FileName) -> io::Result<FileData> {
    let raw = read_raw(path, &name)?;
    let (entries, _, error) = parse_entries(&raw.data);
    Ok(FileData {
        path: path.to_path_buf(),
        name,
        entries,
        error,
        ident: raw.ident,
        folded: raw.folded,
    })
}

/// Reads one `.db` file's bytes without parsing its entries.
pub(crate) fn read_raw(path: &Path, name: &FileName) -> io::Result<RawFile> {
    let mut f = File::open(path)?;
    let md = f.metadata()?;
    if !md.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ident = FileIdent::of(&file_name, &md);
    let mut data = Vec::new();
    if name.pid == ARCHIVE_PID {
        // Ours and small: read it whole, trailer included.
        f.read_to_end(&mut data)?;
    } else {
        // Read the used-size header's page, then up to `used` and no further:
        // a live writer may be appending beyond it.
        let first = (md.len() as usize).min(FIRST_READ);
        data.resize(first, 0);
        let n = read_full(&mut f, &mut data)?;
        data.truncate(n);
        if let Some(used) = rd_i32(&data, 0) {
            if used > 0 && used as usize > data.len() {
                let have = data.len();
                data.resize(used as usize, 0);
                let n = read_full(&mut f, &mut data[have..])?;
                data.truncate(have + n);
            }
        }
    }
    let folded = if name.pid == ARCHIVE_PID {
        match rd_i32(&data, 0) {
            Some(used) if used >= HEADER_LEN as i32 => parse_trailer(&data, used as usize),
            _ => Vec::new(),
        }
    } else {
        Vec::new()
    };
    Ok(RawFile {
        data,
        ident,
        folded,
    })
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Encodes entries in the `.db` format, followed by a trailer naming the
/// folded files (none: no trailer).
pub(crate) fn encode(entries: &[Entry], folded: &[FileIdent]) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; HEADER_LEN];
    for e in entries {
        let key = e.key.as_bytes();
        let len = i32::try_from(key.len()).map_err(|_| "key too long".to_string())?;
        out.extend_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(key);
        out.extend(std::iter::repeat_n(b' ', pad_len(key.len())));
        out.extend_from_slice(&e.value.to_ne_bytes());
        out.extend_from_slice(&e.timestamp.to_ne_bytes());
    }
    let used = i32::try_from(out.len()).map_err(|_| "archive too large".to_string())?;
    out[0..4].copy_from_slice(&used.to_ne_bytes());
    if !folded.is_empty() {
        out.extend_from_slice(TRAILER_MAGIC);
        out.extend_from_slice(&(folded.len() as u32).to_ne_bytes());
        for id in folded {
            out.extend_from_slice(&id.dev.to_ne_bytes());
            out.extend_from_slice(&id.ino.to_ne_bytes());
            out.extend_from_slice(&(id.mtime as u64).to_ne_bytes());
            out.extend_from_slice(&(id.mtime_nsec as u64).to_ne_bytes());
            out.extend_from_slice(&(id.name.len() as u32).to_ne_bytes());
            out.extend_from_slice(id.name.as_bytes());
        }
    }
    Ok(out)
}

/// Writes `bytes` to `dir/file_name` atomically for readers: a hidden temp
/// file in the same directory, then rename over the target.
pub(crate) fn write_atomic(dir: &Path, file_name: &str, bytes: &[u8]) -> Result<(), String> {
    let tmp = dir.join(format!(
        "{TEMP_PREFIX}{file_name}.{}.tmp",
        std::process::id()
    ));
    let target = dir.join(file_name);
    let res = (|| -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        drop(f);
        fs::rename(&tmp, &target)
    })();
    res.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("writing {}: {e}", target.display())
    })
}

/// Python's `repr(float)` (shortest round-trip digits; scientific notation
/// when the decimal exponent is below -4 or at least 16).
pub(crate) fn py_repr(d: f64) -> String {
    if d.is_nan() {
        return "nan".into();
    }
    if d.is_infinite() {
        return if d > 0.0 { "inf".into() } else { "-inf".into() };
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7", "5e0".
    let s = format!("{d:e}");
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mant) = match mant.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mant),
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let sign = if neg { "-" } else { "" };
    if !(-4..16).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let esign = if exp < 0 { '-' } else { '+' };
        let dot = if rest.is_empty() { "" } else { "." };
        return format!("{sign}{first}{dot}{rest}e{esign}{:02}", exp.abs());
    }
    let n = digits.len() as i32;
    if exp < 0 {
        let zeros = "0".repeat((-exp - 1) as usize);
        format!("{sign}0.{zeros}{digits}")
    } else if exp + 1 >= n {
        let zeros = "0".repeat((exp + 1 - n) as usize);
        format!("{sign}{digits}{zeros}.0")
    } else {
        let (int, frac) = digits.split_at((exp + 1) as usize);
        format!("{sign}{int}.{frac}")
    }
}

/// prometheus_client's `utils.floatToGoString`.
pub(crate) fn float_to_go_string(d: f64) -> String {
    if d == f64::INFINITY {
        return "+Inf".into();
    }
    if d == f64::NEG_INFINITY {
        return "-Inf".into();
    }
    if d.is_nan() {
        return "NaN".into();
    }
    let s = py_repr(d);
    if let Some(dot) = s.find('.') {
        if d > 0.0 && dot > 6 {
            let mut mantissa = format!("{}.{}{}", &s[..1], &s[1..dot], &s[dot + 1..]);
            while mantissa.ends_with('0') || mantissa.ends_with('.') {
                mantissa.pop();
            }
            return format!("{mantissa}e+{:02}", dot - 1);
        }
    }
    s
}

/// Python's `float(str)` for the strings that occur as `le` values.
pub(crate) fn py_float(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.is_empty() || t.contains('_') {
        return None;
    }
    t.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_matches_python() {
        let cases: &[(f64, &str)] = &[
            (0.005, "0.005"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (123.0, "123.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e15, "1000000000000000.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.2345e-7, "1.2345e-07"),
            (-2.5, "-2.5"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1e300, "1e+300"),
            (12345.678, "12345.678"),
        ];
        for (v, want) in cases {
            assert_eq!(py_repr(*v), *want, "repr({v})");
        }
    }

    #[test]
    fn go_string_matches_python() {
        let cases: &[(f64, &str)] = &[
            (0.005, "0.005"),
            (10.0, "10.0"),
            (f64::INFINITY, "+Inf"),
            (1234567.0, "1.234567e+06"),
            (10000000.0, "1e+07"),
            (123456.0, "123456.0"),
            (2.5e20, "2.5e+20"),
        ];
        for (v, want) in cases {
            assert_eq!(float_to_go_string(*v), *want, "floatToGoString({v})");
        }
    }

    #[test]
    fn file_names() {
        let f = FileName::parse("gauge_livesum_123.db").expect("parses");
        assert_eq!(f.typ, "gauge");
        assert_eq!(f.mode.as_deref(), Some("livesum"));
        assert_eq!(f.pid_u32(), Some(123));
        assert_eq!(f.file_name(), "gauge_livesum_123.db");
        let c = FileName::parse("counter_archive.db").expect("parses");
        assert_eq!(c.pid, ARCHIVE_PID);
        assert_eq!(c.pid_u32(), None);
        assert!(FileName::parse(".fcmp-counter_archive.db").is_none());
        assert!(FileName::parse("gauge_all.db").is_none());
        assert!(FileName::parse("counter_1.db.tmp").is_none());
        assert_eq!(python_pid_label("gauge_all_123.db").as_deref(), Some("123"));
        assert_eq!(
            python_pid_label("gauge_max_archive.db").as_deref(),
            Some("archive")
        );
    }

    #[test]
    fn roundtrip_and_damage() {
        let entries = vec![
            Entry {
                key: "[\"a\", \"a_total\", {}, \"h\"]".into(),
                value: 3.5,
                timestamp: 0.0,
            },
            Entry {
                key: "[\"b\", \"b\", {\"x\": \"1\"}, \"\"]".into(),
                value: -1.0,
                timestamp: 17.25,
            },
        ];
        let bytes = encode(&entries, &[]).expect("encodes");
        let (got, used, err) = parse_entries(&bytes);
        assert_eq!(got, entries);
        assert_eq!(used, bytes.len());
        assert!(err.is_none());
        // Every truncation point: no panic, a prefix of the entries.
        for cut in 0..bytes.len() {
            let (got, _, _) = parse_entries(&bytes[..cut]);
            assert!(got.len() <= entries.len());
            assert_eq!(&entries[..got.len()], &got[..]);
        }
        // Garbage: no panic.
        let mut junk = bytes.clone();
        junk[8..12].copy_from_slice(&i32::MAX.to_ne_bytes());
        let (got, _, err) = parse_entries(&junk);
        assert!(got.is_empty() && err.is_some());
        junk[8..12].copy_from_slice(&(-5i32).to_ne_bytes());
        let (got, _, err) = parse_entries(&junk);
        assert!(got.is_empty() && err.is_some());
        junk[0..4].copy_from_slice(&(-5i32).to_ne_bytes());
        let (_, _, err) = parse_entries(&junk);
        assert!(err.is_some());
    }
}
