//! The pushed document's rendering (format in `redis::codec`): each
//! family's exposition lines as the read side serves them, the instance's
//! `host` and `instance` labels included, plus the table the read side
//! sums across instances with. It lives beside `expose` because the lines
//! must be exactly the ones `expose` writes for the same samples.

use std::collections::HashMap;

use super::expose::{escape_name, write_lines, Names};
use crate::metrics::model::{Family, Kind, SampleValue};
use crate::redis::codec::{
    self, put_compressed, put_f64, put_len, put_str, put_u32, put_u64, Snapshot, MAGIC, SHAPE_HIST,
    SHAPE_RAW, SHAPE_SCALAR, VERSION, VERSION_PLAIN,
};
use crate::redis::read::{summable, PER_PRODUCER};

/// The name a family is grouped and typed under (as `expose` does).
pub fn base_name(kind: Kind, name: &str) -> &str {
    match kind {
        Kind::Counter => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    }
}

/// An instance's document for `snap` into `out` (cleared first): its lines
/// carry `host` and `instance` labels (a series' own labels of those names
/// become `exported_host` / `exported_instance`, as Prometheus does on a
/// clash). The families are compressed (format version 3).
pub fn encode_into(snap: &Snapshot, out: &mut Vec<u8>) {
    encode_with(snap, Some((&snap.host, &snap.instance)), true, out);
}

/// `snap` in format version 2 (uncompressed), as older instances pushed it.
#[cfg(test)]
pub fn encode_plain_into(snap: &Snapshot, out: &mut Vec<u8>) {
    encode_with(snap, Some((&snap.host, &snap.instance)), false, out);
}

/// The read side's own families as a document: no labels added, not
/// compressed (it never leaves the process).
pub fn encode_own(families: &[Family]) -> Vec<u8> {
    let snap = Snapshot {
        host: String::new(),
        instance: String::new(),
        time: 0.0,
        families: families.to_vec(),
    };
    let mut out = Vec::new();
    encode_with(&snap, None, false, &mut out);
    out
}

/// Reused buffers of one encoding.
#[derive(Default)]
struct Scratch<'s> {
    labels: Vec<(&'s str, &'s str)>,
    lines: String,
    rendered: String,
    after: String,
    key: Vec<u8>,
    keys: HashMap<Vec<u8>, u32>,
    groups: Vec<u8>,
    contribs: Vec<u8>,
    splices: Vec<u8>,
    le_cache: Vec<(u64, String)>,
}

fn encode_with<'s>(
    snap: &'s Snapshot,
    who: Option<(&'s str, &'s str)>,
    compress: bool,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(MAGIC);
    out.push(if compress { VERSION } else { VERSION_PLAIN });
    put_str(out, snap.host.as_bytes());
    put_str(out, snap.instance.as_bytes());
    put_f64(out, snap.time);
    let mut sc = Scratch::default();
    let mut raw = Vec::new();
    let families = if compress { &mut raw } else { &mut *out };
    put_len(families, snap.families.len());
    for f in &snap.families {
        family(families, f, who, &mut sc);
    }
    if compress {
        put_compressed(out, &raw);
    }
}

fn family<'s>(
    out: &mut Vec<u8>,
    f: &'s Family,
    who: Option<(&'s str, &'s str)>,
    sc: &mut Scratch<'s>,
) {
    put_str(out, f.name.as_bytes());
    put_str(out, f.help.as_bytes());
    out.push(codec::kind_code(f.kind));
    let names = Names::new(&escape_name(base_name(f.kind, &f.name)));
    let sum_up = summable(f.kind);
    sc.lines.clear();
    sc.keys.clear();
    sc.groups.clear();
    sc.contribs.clear();
    let mut contribs = 0usize;
    // The lines are written with a NUL where the host's and the instance's
    // values go; they are cut out below and their places listed, so that
    // the read side writes the values (a third of a typical document's
    // bytes, were they written on every line). A family with a NUL of its
    // own in a label value keeps the values in its lines instead.
    let splice = who.is_some()
        && !f
            .samples
            .iter()
            .any(|s| s.labels.iter().any(|(_, v)| v.contains('\0')));
    let who_here = if splice { Some(("\0", "\0")) } else { who };
    for s in &f.samples {
        sc.labels.clear();
        for (k, v) in &s.labels {
            let k = match (who, k.as_str()) {
                (Some(_), "host") => "exported_host",
                (Some(_), "instance") => "exported_instance",
                (_, k) => k,
            };
            sc.labels.push((k, v));
        }
        if let Some((host, instance)) = who_here {
            sc.labels.push(("host", host));
            sc.labels.push(("instance", instance));
        }
        sc.labels.sort_unstable();
        write_lines(
            &mut sc.lines,
            f.kind,
            &s.value,
            &names,
            &sc.labels,
            true,
            &mut sc.rendered,
            &mut sc.after,
            &mut sc.le_cache,
        );
        if !sum_up {
            continue;
        }
        // The group: the suffix and the labels that are not per producer
        // (sorted already), as the read side matches them across instances
        // and labels their sum.
        sc.key.clear();
        let suffix = match &s.value {
            SampleValue::Raw { suffix, .. } => suffix.as_str(),
            _ => "",
        };
        put_str(&mut sc.key, suffix.as_bytes());
        for (k, v) in &sc.labels {
            if !PER_PRODUCER.contains(k) {
                put_str(&mut sc.key, k.as_bytes());
                put_str(&mut sc.key, v.as_bytes());
            }
        }
        let group = match sc.keys.get(&sc.key[..]) {
            Some(&g) => g,
            None => {
                let g = u32::try_from(sc.keys.len()).unwrap_or(u32::MAX);
                sc.keys.insert(sc.key.clone(), g);
                put_str(&mut sc.groups, &sc.key);
                g
            }
        };
        put_u32(&mut sc.contribs, group);
        match &s.value {
            SampleValue::Scalar(v) => {
                sc.contribs.push(SHAPE_SCALAR);
                put_f64(&mut sc.contribs, *v);
            }
            SampleValue::Raw { value, .. } => {
                sc.contribs.push(SHAPE_RAW);
                put_f64(&mut sc.contribs, *value);
            }
            SampleValue::Histogram {
                buckets,
                sum,
                count,
            } => {
                sc.contribs.push(SHAPE_HIST);
                put_len(&mut sc.contribs, buckets.len());
                for (le, c) in buckets {
                    put_f64(&mut sc.contribs, *le);
                    put_u64(&mut sc.contribs, *c);
                }
                put_f64(&mut sc.contribs, *sum);
                put_u64(&mut sc.contribs, *count);
            }
        }
        contribs += 1;
    }
    // The lines without the NULs, then where each was: the host's and the
    // instance's places, alternately.
    let lines = sc.lines.as_bytes();
    sc.splices.clear();
    if splice {
        let nuls = lines.iter().filter(|&&b| b == 0).count();
        put_len(out, lines.len() - nuls);
        let mut parts = lines.split(|&b| b == 0);
        let mut at = 0usize;
        if let Some(first) = parts.next() {
            out.extend_from_slice(first);
            at += first.len();
        }
        for part in parts {
            put_len(&mut sc.splices, at);
            out.extend_from_slice(part);
            at += part.len();
        }
    } else {
        put_str(out, lines);
    }
    put_len(out, sc.splices.len() / 4);
    out.extend_from_slice(&sc.splices);
    put_len(out, sc.keys.len());
    out.extend_from_slice(&sc.groups);
    put_len(out, contribs);
    out.extend_from_slice(&sc.contribs);
}
