//! The read side's fast path, first half: a pushed document (format in
//! `codec`) read in place: its families' lines and sum tables are slices
//! of the fetched bytes, checked once here. `exporter::view` copies the
//! lines into the exposition and adds up the sums.

use super::codec::{
    self, Cursor, MAGIC, SHAPE_HIST, SHAPE_RAW, SHAPE_SCALAR, VERSION, VERSION_PLAIN,
};
use crate::metrics::model::Kind;

/// One pushed document, borrowing from its bytes.
#[derive(Debug)]
pub struct Doc<'a> {
    pub host: &'a str,
    pub instance: &'a str,
    pub families: Vec<Fam<'a>>,
}

#[derive(Debug)]
pub struct Fam<'a> {
    /// As the instance named it (a counter's may end in `_total`).
    pub name: &'a str,
    pub help: &'a str,
    pub kind: Kind,
    /// The family's sample lines, each ending in "\n", labels included
    /// except the values of `host` and `instance` when `splices` says where
    /// they go.
    pub lines: &'a str,
    /// Where in `lines` the host's and the instance's values go,
    /// alternately (u32 offsets, 4 bytes each; checked: ascending, within
    /// `lines`, on character boundaries). Empty: `lines` is complete.
    pub splices: &'a [u8],
    /// Summable families: the groups the samples are summed in.
    pub groups: Vec<Group<'a>>,
    /// Summable families: each sample's value, in the samples' order.
    pub contribs: Vec<Contrib<'a>>,
}

#[derive(Debug)]
pub struct Group<'a> {
    /// Matches the group across instances: the suffix and the labels that
    /// are not per producer (`codec`; read by [`key_parts`] when its sum
    /// is written).
    pub key: &'a [u8],
}

/// A group key's suffix and labels; `None` when it is malformed (the sum
/// is then left out).
pub fn key_parts(key: &[u8]) -> Option<(&str, Vec<(&str, &str)>)> {
    let mut c = Cursor::new(key);
    let suffix = c.str().ok()?;
    let mut labels = Vec::new();
    while !c.at_end() {
        labels.push((c.str().ok()?, c.str().ok()?));
    }
    Some((suffix, labels))
}

#[derive(Debug)]
pub struct Contrib<'a> {
    /// Index into the family's `groups` (checked).
    pub group: usize,
    pub val: Val<'a>,
}

#[derive(Debug)]
pub enum Val<'a> {
    Scalar(f64),
    Raw(f64),
    Hist {
        /// `(f64 le, u64 cumulative count)` pairs, 16 bytes each
        /// (`codec::bucket` reads one).
        buckets: &'a [u8],
        sum: f64,
        count: u64,
    },
}

impl Val<'_> {
    pub fn buckets(&self) -> usize {
        match self {
            Val::Hist { buckets, .. } => buckets.len() / 16,
            _ => 0,
        }
    }
}

/// A document's header, and its families' bytes as they came.
#[derive(Debug)]
pub struct Envelope<'a> {
    pub host: &'a str,
    pub instance: &'a str,
    body: Body<'a>,
}

#[derive(Debug)]
enum Body<'a> {
    /// Version 2: the families as they are.
    Plain(&'a [u8]),
    /// Version 3: an LZ4 block and the size it decompresses to.
    Lz4 { raw: usize, data: &'a [u8] },
}

/// Reads a document's header (no decompression yet).
pub fn open(bytes: &[u8]) -> Result<Envelope<'_>, String> {
    if bytes.first() == Some(&b'{') {
        return Err(format!(
            "format version 1 (JSON), this ferrocorn reads {VERSION_PLAIN} and {VERSION}"
        ));
    }
    let mut c = Cursor::new(bytes);
    if c.take(3).ok() != Some(&MAGIC[..]) {
        return Err("not a ferrocorn document".to_owned());
    }
    let v = c.u8()?;
    if v != VERSION && v != VERSION_PLAIN {
        return Err(format!(
            "format version {v}, this ferrocorn reads {VERSION_PLAIN} and {VERSION}"
        ));
    }
    let host = c.str()?;
    let instance = c.str()?;
    let _time = c.f64()?;
    let body = if v == VERSION {
        let raw = c.length()?;
        Body::Lz4 {
            raw,
            data: c.take(c.left())?,
        }
    } else {
        Body::Plain(c.take(c.left())?)
    };
    Ok(Envelope {
        host,
        instance,
        body,
    })
}

impl<'a> Envelope<'a> {
    /// The families' bytes of an uncompressed document.
    pub fn plain(&self) -> Option<&'a [u8]> {
        match self.body {
            Body::Plain(b) => Some(b),
            Body::Lz4 { .. } => None,
        }
    }

    /// The size of the families once decompressed (0: not compressed).
    pub fn raw_len(&self) -> usize {
        match self.body {
            Body::Plain(_) => 0,
            Body::Lz4 { raw, .. } => raw,
        }
    }

    /// A compressed document's families, decompressed into `buf`; an
    /// uncompressed one leaves `buf` alone.
    pub fn inflate(&self, buf: &mut Vec<u8>) -> Result<(), String> {
        match self.body {
            Body::Plain(_) => Ok(()),
            Body::Lz4 { raw, data } => codec::inflate(data, raw, buf),
        }
    }
}

/// Reads and checks a document, decompressing it into `buf` if it is
/// compressed: a malformed family or sample drops the whole document
/// (rather than serving half of an instance).
pub fn decode<'a>(bytes: &'a [u8], buf: &'a mut Vec<u8>) -> Result<Doc<'a>, String> {
    let env = open(bytes)?;
    env.inflate(buf)?;
    let body = env.plain().unwrap_or(&buf[..]);
    Ok(Doc {
        host: env.host,
        instance: env.instance,
        families: families(body)?,
    })
}

/// Reads and checks a document's families (`families` in `codec`),
/// decompressed.
pub fn families(body: &[u8]) -> Result<Vec<Fam<'_>>, String> {
    let mut c = Cursor::new(body);
    let n = c.length()?;
    // Each family takes at least 21 bytes: no allocation beyond what the
    // document could hold.
    let mut families = Vec::with_capacity(n.min(body.len() / 21));
    for _ in 0..n {
        families.push(family(&mut c)?);
    }
    if !c.at_end() {
        return Err("trailing bytes after the last family".to_owned());
    }
    Ok(families)
}

/// A block of lines: empty, or ending in a newline (so that a block can be
/// copied next to another without running lines together).
fn line_block<'a>(c: &mut Cursor<'a>, what: &str) -> Result<&'a str, String> {
    let s = c.str()?;
    if !s.is_empty() && !s.ends_with('\n') {
        return Err(format!("{what} without a final newline"));
    }
    Ok(s)
}

fn family<'a>(c: &mut Cursor<'a>) -> Result<Fam<'a>, String> {
    let name = c.str()?;
    let ctx = |e: String| format!("family {name}: {e}");
    let help = c.str().map_err(ctx)?;
    let kind = codec::kind_of_code(c.u8().map_err(ctx)?).ok_or_else(|| ctx("bad kind".into()))?;
    let lines = line_block(c, "lines").map_err(ctx)?;
    let n = c.length().map_err(ctx)?;
    let splices = c
        .take(
            n.checked_mul(4)
                .ok_or_else(|| ctx("too many splices".into()))?,
        )
        .map_err(ctx)?;
    let mut prev = 0usize;
    for i in 0..n {
        let at = splice(splices, i);
        if at < prev || !lines.is_char_boundary(at) {
            return Err(ctx(format!("splice {i} at {at}: out of order or place")));
        }
        prev = at;
    }
    if n % 2 != 0 {
        return Err(ctx("a host without its instance".into()));
    }
    let n = c.length().map_err(ctx)?;
    let mut groups = Vec::with_capacity(n.min(c.left() / 4));
    for _ in 0..n {
        let key = c.bytes().map_err(ctx)?;
        groups.push(Group { key });
    }
    let n = c.length().map_err(ctx)?;
    let mut contribs = Vec::with_capacity(n.min(c.left() / 13));
    for _ in 0..n {
        let group = c.length().map_err(ctx)?;
        if group >= groups.len() {
            return Err(ctx(format!(
                "a sample of group {group} of {}",
                groups.len()
            )));
        }
        let val = match c.u8().map_err(ctx)? {
            SHAPE_SCALAR => Val::Scalar(c.f64().map_err(ctx)?),
            SHAPE_RAW => Val::Raw(c.f64().map_err(ctx)?),
            SHAPE_HIST => {
                let nb = c.length().map_err(ctx)?;
                let bytes = nb
                    .checked_mul(16)
                    .ok_or_else(|| ctx("too many buckets".into()))?;
                let buckets = c.take(bytes).map_err(ctx)?;
                Val::Hist {
                    buckets,
                    sum: c.f64().map_err(ctx)?,
                    count: c.u64().map_err(ctx)?,
                }
            }
            s => return Err(ctx(format!("a sample of shape {s}"))),
        };
        contribs.push(Contrib { group, val });
    }
    Ok(Fam {
        name,
        help,
        kind,
        lines,
        splices,
        groups,
        contribs,
    })
}

/// The `i`th offset of `splices` (`i` below `splices.len() / 4`).
pub fn splice(splices: &[u8], i: usize) -> usize {
    let mut b = [0u8; 4];
    b.copy_from_slice(&splices[i * 4..i * 4 + 4]);
    // u32 to usize: lossless on the 32- and 64-bit targets ferrocorn runs on.
    u32::from_le_bytes(b) as usize
}
