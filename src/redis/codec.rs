//! The push format: one instance's merged state (ferrocorn's families and
//! the application's) as one document, the value of one Redis key.
//!
//! Version 2 carries each family's exposition lines already rendered, with
//! the instance's `host` and `instance` labels in them but for their
//! values, whose places are listed: the read side copies the lines into
//! its exposition, writing the values at those places, instead of decoding
//! and re-rendering every sample (for 200 instances that decoding was most
//! of a scrape).
//! What it cannot copy, the sums across instances, comes as a small table
//! beside the lines: each summable family's groups (the key the sums are
//! matched by across instances, which also holds the summed series'
//! labels) and one binary value per sample. The lines are the same in both exposition
//! formats (text 0.0.4, OpenMetrics); only the HELP and TYPE lines differ,
//! and the read side writes those.
//!
//! Layout (little-endian; `str` is a u32 byte length and UTF-8 bytes):
//!
//! ```text
//! doc      = "FCP" u8:version  str:host  str:instance  f64:time  body
//! body     = u32:raw  lz4(families)  version 3: `raw` is the size of `families`
//!                                   decompressed, lz4 an LZ4 block (no frame)
//!          | families               version 2 (still read, from older instances)
//! families = u32:n  family*n
//! family   = str:name  str:help  u8:kind  str:lines  u32:n  u32:splice*n
//!            u32:n  key*n  u32:n  contrib*n
//! splice   = where in lines the host's, then the instance's value goes (an
//!            instance's lines; a family of the read side's own has none)
//! key      = u32:len  (str:suffix  (str:label  str:value)*)    the labels without
//!                                        host, instance and worker_id, sorted
//! contrib  = u32:key  u8:shape  value   shape 0 scalar, 1 raw: f64
//!                                        shape 2 histogram: u32:n (f64:le u64:count)*n f64:sum u64:count
//! ```
//!
//! Version 3 compresses the families (a document's lines repeat their
//! names and labels from line to line: 5 to 10 times smaller), because
//! what a read of 200 instances cost was Redis building, and the read side
//! receiving, the reply of tens of megabytes. The header stays
//! uncompressed: who pushed it is readable without decompressing.
//!
//! The pusher renders with `exporter::pushdoc`; `redis::view` reads.

use crate::metrics::model::{Family, Kind};

/// Bumped when the document changes incompatibly; the read side skips
/// documents of another version (and says so) instead of misreading them.
/// Version 1 was JSON (a document starting with `{`), version 2 the
/// layout above uncompressed (still read).
pub const VERSION: u8 = 3;

/// The uncompressed version, still read (and written for the read side's
/// own families, which never leave the process).
pub const VERSION_PLAIN: u8 = 2;

/// The largest decompressed families a document may claim: a damaged or
/// hostile length is refused before anything is allocated (an instance's
/// families are well under a megabyte per thousand series).
pub const MAX_RAW: usize = 1 << 30;

/// The first bytes of a document, before its version byte.
pub const MAGIC: &[u8; 3] = b"FCP";

/// One instance's pushed state.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub host: String,
    pub instance: String,
    /// Unix seconds of the push.
    pub time: f64,
    pub families: Vec<Family>,
}

/// How a snapshot becomes the bytes of its key (the pusher is given one,
/// so that the format's rendering can live beside the exposition's).
pub type Encode = fn(&Snapshot, &mut Vec<u8>);

/// Shapes of a summed sample's value.
pub const SHAPE_SCALAR: u8 = 0;
pub const SHAPE_RAW: u8 = 1;
pub const SHAPE_HIST: u8 = 2;

pub fn kind_code(k: Kind) -> u8 {
    match k {
        Kind::Counter => 0,
        Kind::Gauge => 1,
        Kind::Histogram => 2,
        Kind::Summary => 3,
    }
}

pub fn kind_of_code(c: u8) -> Option<Kind> {
    Some(match c {
        0 => Kind::Counter,
        1 => Kind::Gauge,
        2 => Kind::Histogram,
        3 => Kind::Summary,
        _ => return None,
    })
}

/// A length as the format's u32. Nothing an instance renders comes near
/// 4 GiB; a longer field is written as u32::MAX rather than a wrapped
/// length, so that the read side finds the document malformed instead of
/// misreading it.
pub fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

pub fn put_u32(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(&n.to_le_bytes());
}

pub fn put_f64(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_len(out, s.len());
    out.extend_from_slice(s);
}

/// `raw` (a document's families) LZ4-compressed onto `out`, after its
/// length (`body` of version 3).
pub fn put_compressed(out: &mut Vec<u8>, raw: &[u8]) {
    put_len(out, raw.len());
    let start = out.len();
    out.resize(
        start + lz4_flex::block::get_maximum_output_size(raw.len()),
        0,
    );
    match lz4_flex::block::compress_into(raw, &mut out[start..]) {
        Ok(n) => out.truncate(start + n),
        // Cannot happen (the room is the worst case's); were it to, the
        // document would be refused by the read side, and logged there.
        Err(_) => out.truncate(start),
    }
}

/// A version 3 body's families, decompressed into `out` (its old content
/// replaced).
/// `raw` is the size the document claims; anything that does not
/// decompress to exactly that is an error, never a panic.
pub fn inflate(data: &[u8], raw: usize, out: &mut Vec<u8>) -> Result<(), String> {
    // An LZ4 block expands at most 255 times (plus a few bytes).
    let most = data
        .len()
        .saturating_mul(255)
        .saturating_add(16)
        .min(MAX_RAW);
    if raw > most {
        return Err(format!(
            "claims {raw} bytes decompressed from {}, more than LZ4 can give",
            data.len()
        ));
    }
    // A buffer kept from an earlier read is overwritten, not cleared: the
    // size check below catches a block that does not fill it.
    if out.len() < raw {
        out.resize(raw, 0);
    } else {
        out.truncate(raw);
    }
    let n = lz4_flex::block::decompress_into(data, out)
        .map_err(|e| format!("cannot decompress its families ({} bytes): {e}", data.len()))?;
    if n != raw {
        return Err(format!(
            "decompressed to {n} bytes where its header says {raw}"
        ));
    }
    Ok(())
}

/// Reads a document's fields in order; every length is checked against
/// what is left, so a truncated or hostile document is an error, never a
/// panic or an over-read.
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf, pos: 0 }
    }

    /// Bytes not read yet (bounds allocations sized from the document).
    pub fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "truncated: {n} bytes wanted at offset {} of {}",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn length(&mut self) -> Result<usize, String> {
        usize::try_from(self.u32()?).map_err(|_| "a length beyond this machine's".to_owned())
    }

    pub fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn f64(&mut self) -> Result<f64, String> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.length()?;
        self.take(n)
    }

    pub fn str(&mut self) -> Result<&'a str, String> {
        std::str::from_utf8(self.bytes()?).map_err(|e| format!("not UTF-8: {e}"))
    }
}

/// The bucket at `i` of a histogram value's `(f64 le, u64 count)` pairs as
/// the document holds them (`pairs.len()` is a multiple of 16, checked when
/// the document is read).
pub fn bucket(pairs: &[u8], i: usize) -> (f64, u64) {
    let at = i * 16;
    let mut le = [0u8; 8];
    let mut c = [0u8; 8];
    le.copy_from_slice(&pairs[at..at + 8]);
    c.copy_from_slice(&pairs[at + 8..at + 16]);
    (f64::from_le_bytes(le), u64::from_le_bytes(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_checks_lengths() {
        let mut b = Vec::new();
        put_str(&mut b, b"abc");
        put_u32(&mut b, 7);
        put_f64(&mut b, 1.5);
        let mut c = Cursor::new(&b);
        assert_eq!(c.str().expect("str"), "abc");
        assert_eq!(c.u32().expect("u32"), 7);
        assert_eq!(c.f64().expect("f64"), 1.5);
        assert!(c.at_end());
        assert!(c.u8().is_err());
        // A length past the end, and one near usize::MAX.
        let mut c = Cursor::new(&[9, 0, 0, 0, b'x']);
        assert!(c.str().expect_err("truncated").contains("truncated"));
        let mut c = Cursor::new(&[0xff, 0xff, 0xff, 0xff]);
        assert!(c.bytes().is_err());
        let mut c = Cursor::new(&[2, 0, 0, 0, 0xff, 0xfe]);
        assert!(c.str().expect_err("utf8").contains("UTF-8"));
    }

    #[test]
    fn compressed_bodies_round_trip_and_damage_is_an_error() {
        let raw: Vec<u8> = (0..5000u32)
            .flat_map(|i| {
                format!("m{{item=\"item{:03}\",pid=\"7\"}} {i}.0\n", i % 500).into_bytes()
            })
            .collect();
        let mut doc = Vec::new();
        put_compressed(&mut doc, &raw);
        assert!(doc.len() < raw.len() / 4, "{} of {}", doc.len(), raw.len());
        let mut c = Cursor::new(&doc);
        let n = c.length().expect("length");
        let data = c.take(c.left()).expect("data");
        let mut out = Vec::new();
        inflate(data, n, &mut out).expect("inflate");
        assert_eq!(out, raw);
        // Truncated, a byte changed, a wrong or absurd length: errors.
        for cut in [0, 1, data.len() / 2, data.len() - 1] {
            assert!(inflate(&data[..cut], n, &mut out).is_err(), "cut at {cut}");
        }
        for i in (0..data.len()).step_by(7) {
            let mut bad = data.to_vec();
            bad[i] ^= 0x5a;
            // Read (the change may fall in a literal) or refused; no panic.
            let _ = inflate(&bad, n, &mut out);
        }
        assert!(inflate(data, n + 1, &mut out).is_err());
        assert!(inflate(data, n - 1, &mut out).is_err());
        let big = inflate(data, usize::MAX, &mut out).expect_err("absurd length");
        assert!(big.contains("more than LZ4 can give"), "{big}");
    }
}
