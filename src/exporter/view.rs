//! The read side's fast path, second half: the documents that
//! `redis::view` read in place, copied into one exposition buffer. Each
//! instance's lines arrive rendered (`pushdoc`), with the places of their
//! `host` and `instance` values listed, so a scrape copies them family by
//! family and writes the two values at those places; what it computes is
//! the sums across instances, from each document's small table of groups
//! and values.
//!
//! The output is what [`super::expose::render`] makes of
//! `redis::read::merge` (the model-based path, kept for the tests that
//! compare the two): same families in the same order, same lines; only the
//! summed series may come in another order within their family.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::expose::{self, write_lines, Format, Names};
use super::pushdoc::{base_name, encode_own};
use crate::metrics::model::{Kind, SampleValue};
use crate::redis::codec::bucket;
use crate::redis::link::Log;
use crate::redis::read::{own_families, summable, Found, ALL};
use crate::redis::view::{self, Doc, Envelope, Fam, Val};

/// Buffers a read side keeps from one read to the next, so that a scrape
/// of tens of megabytes does not fault in fresh pages for all of them.
#[derive(Default)]
pub struct Scratch {
    /// One per document: its families decompressed.
    inflated: Vec<Vec<u8>>,
}

/// Where a rendering goes: told the body's exact length first, then
/// given its bytes piece by piece (a streamed response sends them on in
/// chunks while the rest is rendered).
pub trait Out {
    /// The body's length in bytes, before any of it is written.
    fn start(&mut self, len: usize);
    /// The buffer the next piece is appended to.
    fn buf(&mut self) -> &mut String;
    /// Called after each piece; `false` stops the rendering (the client
    /// is gone).
    fn piece_done(&mut self) -> bool;
}

/// A whole body in one string.
impl Out for String {
    fn start(&mut self, len: usize) {
        self.clear();
        self.reserve(len);
    }

    fn buf(&mut self) -> &mut String {
        self
    }

    fn piece_done(&mut self) -> bool {
        true
    }
}

/// The exposition of every instance of `found` (`None`: Redis could not be
/// read) plus the read side's own families, in `format`, written to
/// `out`. A document that cannot be read is left out and logged once per
/// key (`bad` remembers them across reads).
pub fn render_found(
    found: Option<&Found>,
    bad: &Mutex<HashSet<String>>,
    log: Log,
    format: Format,
    scratch: &mut Scratch,
    out: &mut dyn Out,
) {
    let skip = |key: &str, e: String| {
        let mut bad = bad.lock().unwrap_or_else(|p| p.into_inner());
        if bad.insert(key.to_owned()) {
            log(&format!("redis read: skipping {key}: {e}"));
        }
    };
    let mut envs: Vec<(&str, Envelope<'_>)> = Vec::new();
    if let Some(found) = found {
        envs.reserve(found.docs.len());
        for (key, bytes) in &found.docs {
            match view::open(bytes) {
                Ok(e) => envs.push((key, e)),
                Err(e) => skip(key, e),
            }
        }
    }
    let pool = &mut scratch.inflated;
    if pool.len() < envs.len() {
        pool.resize_with(envs.len(), Vec::new);
    }
    let read = read_all(&envs, pool);
    let mut docs: Vec<Doc<'_>> = Vec::with_capacity(envs.len());
    let mut good: Vec<&str> = Vec::with_capacity(envs.len());
    for ((key, env), families) in envs.iter().zip(read) {
        match families {
            Ok(families) => {
                good.push(key);
                docs.push(Doc {
                    host: env.host,
                    instance: env.instance,
                    families,
                });
            }
            Err(e) => skip(key, e),
        }
    }
    if !good.is_empty() {
        let mut bad = bad.lock().unwrap_or_else(|p| p.into_inner());
        for key in good {
            bad.remove(key);
        }
    }
    // By (host, instance), as `merge` orders them.
    docs.sort_by(|a, b| (a.host, a.instance).cmp(&(b.host, b.instance)));
    let own = encode_own(&own_families(docs.len(), found.is_some()));
    let mut sources: Vec<Source<'_, '_>> = docs
        .iter()
        .map(|d| Source {
            families: &d.families,
            host: escaped(d.host),
            instance: escaped(d.instance),
        })
        .collect();
    // Encoded here, so it reads back; were it not, the scrape would only
    // miss the read side's own two gauges.
    let mut own_buf = Vec::new();
    let own = view::decode(&own, &mut own_buf);
    if let Ok(own) = &own {
        sources.push(Source {
            families: &own.families,
            host: String::new(),
            instance: String::new(),
        });
    }
    render(&sources, format, out);
}

/// Below this much to decompress, one thread reads all documents.
const PARALLEL_FROM: usize = 4 << 20;

/// At most this many threads read documents.
const MAX_THREADS: usize = 4;

/// Each document's families, read and checked (decompressed first, into
/// its buffer of `pool`, if it is compressed), in the documents' order; on
/// a few threads when there is much to decompress (200 instances of a
/// large application: 70 MB to decompress and check).
fn read_all<'a>(
    envs: &[(&str, Envelope<'a>)],
    pool: &'a mut [Vec<u8>],
) -> Vec<Result<Vec<Fam<'a>>, String>> {
    let total = envs
        .iter()
        .fold(0usize, |t, (_, e)| t.saturating_add(e.raw_len()));
    let threads = if total < PARALLEL_FROM {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS))
    };
    // Each thread takes the next document (and its buffer) until none is left.
    let queue = Mutex::new(envs.iter().zip(pool.iter_mut()).enumerate());
    let work = || {
        let mut done = Vec::new();
        loop {
            let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
            let Some((i, ((_, env), buf))) = next else {
                return done;
            };
            done.push((i, read_one(env, buf)));
        }
    };
    let mut out: Vec<Result<Vec<Fam<'a>>, String>> = envs
        .iter()
        .map(|_| Err("not read (a reading thread failed)".to_owned()))
        .collect();
    std::thread::scope(|s| {
        // Threads the system will not start leave their share to the others.
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| {
                std::thread::Builder::new()
                    .name("redis-read".into())
                    .spawn_scoped(s, work)
                    .ok()
            })
            .collect();
        let mine = work();
        for (i, r) in helpers
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .chain(mine)
        {
            if let Some(slot) = out.get_mut(i) {
                *slot = r;
            }
        }
    });
    out
}

/// One document's families, decompressed into `buf` if need be.
fn read_one<'a>(env: &Envelope<'a>, buf: &'a mut Vec<u8>) -> Result<Vec<Fam<'a>>, String> {
    env.inflate(buf)?;
    let buf: &'a Vec<u8> = buf;
    view::families(env.plain().unwrap_or(buf))
}

/// A label value as the exposition writes it.
fn escaped(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    expose::escape_value(&mut out, v);
    out
}

/// One document's families and the values its lines' splices take.
struct Source<'d, 'a> {
    families: &'d [Fam<'a>],
    host: String,
    instance: String,
}

/// One family across sources: its first appearance's name, help and kind,
/// and every family of that name and kind, in the sources' order.
struct Group<'d, 'a> {
    name: &'d str,
    help: &'d str,
    kind: Kind,
    /// (family, index of its source).
    members: Vec<(&'d Fam<'a>, usize)>,
}

/// The exposition of `sources` in `format`: each family's lines from every
/// source, then, for summable families, the sums across sources
/// (`host="all", instance="all"`). The HELP and TYPE lines and the sums
/// are made first, so that the body's length is known before its first
/// byte; the lines are then copied family by family, source by source.
fn render(sources: &[Source<'_, '_>], format: Format, out: &mut dyn Out) {
    let mut groups: Vec<Group<'_, '_>> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut size = 0usize;
    for (si, src) in sources.iter().enumerate() {
        for f in src.families {
            let name = base_name(f.kind, f.name);
            match index.get(name) {
                Some(&gi) => {
                    // A family whose kind differs from its first
                    // appearance's is left out, as `merge` does.
                    if groups[gi].kind == f.kind {
                        groups[gi].members.push((f, si));
                    } else {
                        continue;
                    }
                }
                None => {
                    index.insert(name, groups.len());
                    groups.push(Group {
                        name,
                        help: f.help,
                        kind: f.kind,
                        members: vec![(f, si)],
                    });
                }
            }
            size = size.saturating_add(copied_len(f, &src.host, &src.instance));
        }
    }
    // Each group's HELP and TYPE lines, and its sums' lines.
    let mut sums = Sums::default();
    let made: Vec<(String, String)> = groups
        .iter()
        .map(|g| {
            let mut head = String::new();
            header(&mut head, g, format);
            let mut summed = String::new();
            if summable(g.kind) {
                sums.add_up(&g.members);
                sums.write(&mut summed, g);
            }
            (head, summed)
        })
        .collect();
    let eof = match format {
        Format::OpenMetrics100 => "# EOF\n",
        Format::Text004 => "",
    };
    for (head, summed) in &made {
        size = size.saturating_add(head.len()).saturating_add(summed.len());
    }
    out.start(size.saturating_add(eof.len()));
    for (g, (head, summed)) in groups.iter().zip(&made) {
        out.buf().push_str(head);
        for &(f, si) in &g.members {
            copy_lines(out.buf(), f, &sources[si]);
            if !out.piece_done() {
                return;
            }
        }
        out.buf().push_str(summed);
        if !out.piece_done() {
            return;
        }
    }
    out.buf().push_str(eof);
    out.piece_done();
}

/// What [`copy_lines`] writes for `f`.
fn copied_len(f: &Fam<'_>, host: &str, instance: &str) -> usize {
    // Half of the splices take the host, half the instance (checked).
    let pairs = f.splices.len() / 8;
    f.lines
        .len()
        .saturating_add(pairs.saturating_mul(host.len().saturating_add(instance.len())))
}

/// A family's lines, the source's host and instance written at their
/// places.
fn copy_lines(out: &mut String, f: &Fam<'_>, src: &Source<'_, '_>) {
    let mut at = 0;
    for i in 0..f.splices.len() / 4 {
        // Checked by `view::decode`: ascending, on character boundaries.
        let to = view::splice(f.splices, i);
        out.push_str(&f.lines[at..to]);
        out.push_str(if i % 2 == 0 { &src.host } else { &src.instance });
        at = to;
    }
    out.push_str(&f.lines[at..]);
}

/// A family's HELP and TYPE lines.
fn header(out: &mut String, g: &Group<'_, '_>, format: Format) {
    let name = expose::escape_name(g.name);
    let type_str = match g.kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
        Kind::Summary => "summary",
    };
    let type_name = match (format, g.kind) {
        (Format::Text004, Kind::Counter) => format!("{name}_total"),
        _ => name,
    };
    out.push_str("# HELP ");
    out.push_str(&type_name);
    out.push(' ');
    match format {
        Format::Text004 => expose::escape_help_004(out, g.help),
        Format::OpenMetrics100 => expose::escape_value(out, g.help),
    }
    out.push_str("\n# TYPE ");
    out.push_str(&type_name);
    out.push(' ');
    out.push_str(type_str);
    out.push('\n');
}

/// A sum being accumulated.
enum Acc<'a> {
    /// No sample yet (a group listed without samples).
    Empty,
    Scalar(f64),
    Raw(f64),
    Hist {
        /// The first sample's buckets: their bounds are the sum's.
        bounds: &'a [u8],
        counts: Vec<u64>,
        sum: f64,
        count: u64,
    },
    /// Samples that cannot be added (other bucket bounds, other shapes):
    /// the group gets no sum.
    Broken,
}

/// One summed series: its key (which holds its labels) and its running
/// value.
struct Sum<'a> {
    key: &'a [u8],
    acc: Acc<'a>,
}

/// The sums of one family at a time (buffers reused across families).
#[derive(Default)]
struct Sums<'a> {
    list: Vec<Sum<'a>>,
    index: HashMap<&'a [u8], usize>,
    /// A document's group numbers to `list` positions.
    map: Vec<usize>,
}

impl<'a> Sums<'a> {
    /// Adds up the samples of `members` in order (the order `merge` adds
    /// them in, so that float sums come out the same).
    fn add_up(&mut self, members: &[(&'a Fam<'a>, usize)]) {
        self.list.clear();
        self.index.clear();
        for &(f, _) in members {
            self.map.clear();
            for (j, g) in f.groups.iter().enumerate() {
                // Instances of one application list the same groups in the
                // same order: a comparison finds the group without hashing.
                let at = match self.list.get(j) {
                    Some(s) if s.key == g.key => j,
                    _ => *self.index.entry(g.key).or_insert_with(|| {
                        self.list.push(Sum {
                            key: g.key,
                            acc: Acc::Empty,
                        });
                        self.list.len() - 1
                    }),
                };
                self.map.push(at);
            }
            for c in &f.contribs {
                // Both indexes checked: `c.group` by `view::decode`, `map`
                // has one entry per group.
                add(&mut self.list[self.map[c.group]].acc, &c.val);
            }
        }
    }

    /// The sums' lines, by key, written as `expose` writes a sample
    /// (one series per group of the whole read: no cost per instance).
    fn write(&mut self, out: &mut String, g: &Group<'_, '_>) {
        self.list.sort_unstable_by(|a, b| a.key.cmp(b.key));
        let names = Names::new(&expose::escape_name(g.name));
        let (mut rendered, mut after, mut le_cache) = (String::new(), String::new(), Vec::new());
        for sum in &self.list {
            let Some((suffix, mut labels)) = view::key_parts(sum.key) else {
                continue;
            };
            let value = match &sum.acc {
                Acc::Empty | Acc::Broken => continue,
                Acc::Scalar(v) => SampleValue::Scalar(*v),
                Acc::Raw(v) => SampleValue::Raw {
                    suffix: suffix.to_owned(),
                    value: *v,
                },
                Acc::Hist {
                    bounds,
                    counts,
                    sum,
                    count,
                } => SampleValue::Histogram {
                    buckets: counts
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (bucket(bounds, i).0, *c))
                        .collect(),
                    sum: *sum,
                    count: *count,
                },
            };
            labels.push(("host", ALL));
            labels.push(("instance", ALL));
            labels.sort_unstable();
            write_lines(
                out,
                g.kind,
                &value,
                &names,
                &labels,
                true,
                &mut rendered,
                &mut after,
                &mut le_cache,
            );
        }
    }
}

/// Adds one sample to its group's sum.
fn add<'a>(acc: &mut Acc<'a>, val: &Val<'a>) {
    match (&mut *acc, val) {
        (Acc::Empty, Val::Scalar(v)) => *acc = Acc::Scalar(0.0 + v),
        (Acc::Empty, Val::Raw(v)) => *acc = Acc::Raw(0.0 + v),
        (
            Acc::Empty,
            Val::Hist {
                buckets,
                sum,
                count,
            },
        ) => {
            *acc = Acc::Hist {
                bounds: buckets,
                counts: (0..val.buckets()).map(|i| bucket(buckets, i).1).collect(),
                sum: 0.0 + sum,
                count: *count,
            }
        }
        (Acc::Scalar(a), Val::Scalar(b)) => *a += b,
        (Acc::Raw(a), Val::Raw(b)) => *a += b,
        (
            Acc::Hist {
                bounds,
                counts,
                sum,
                count,
            },
            Val::Hist {
                buckets,
                sum: s2,
                count: c2,
            },
        ) if same_bounds(bounds, buckets) => {
            for (i, c) in counts.iter_mut().enumerate() {
                *c = c.saturating_add(bucket(buckets, i).1);
            }
            *sum += s2;
            *count = count.saturating_add(*c2);
        }
        // Cumulative counts of different bounds (or values of different
        // shapes) cannot be added: the group gets no sum.
        (Acc::Broken, _) => {}
        _ => *acc = Acc::Broken,
    }
}

/// Whether two histograms' buckets have the same bounds (compared as
/// numbers, as `merge` does).
fn same_bounds(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && (0..a.len() / 16).all(|i| bucket(a, i).0 == bucket(b, i).0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::model::{Family, Sample, SampleValue};
    use crate::redis::codec::Snapshot;
    use crate::redis::read::merge;

    fn render_found(
        found: Option<&Found>,
        bad: &mut HashSet<String>,
        log: Log,
        format: Format,
    ) -> String {
        let mut out = Announced::default();
        let shared = Mutex::new(std::mem::take(bad));
        super::render_found(
            found,
            &shared,
            log,
            format,
            &mut Scratch::default(),
            &mut out,
        );
        *bad = shared.into_inner().unwrap_or_else(|p| p.into_inner());
        // The length announced first is the length written.
        assert_eq!(out.len, Some(out.body.len()));
        out.body
    }

    /// A body that remembers the length announced for it.
    #[derive(Default)]
    struct Announced {
        len: Option<usize>,
        body: String,
    }

    impl Out for Announced {
        fn start(&mut self, len: usize) {
            assert!(self.len.is_none(), "announced twice");
            self.len = Some(len);
        }

        fn buf(&mut self) -> &mut String {
            &mut self.body
        }

        fn piece_done(&mut self) -> bool {
            assert!(self.len.is_some(), "written before the length");
            true
        }
    }

    fn encode(snap: &Snapshot) -> Vec<u8> {
        let mut out = Vec::new();
        super::super::pushdoc::encode_into(snap, &mut out);
        out
    }

    fn fam(name: &str, kind: Kind, samples: Vec<Sample>) -> Family {
        Family {
            name: name.into(),
            help: format!("help of {name}\nwith \\ and \""),
            kind,
            samples,
        }
    }

    fn smp(labels: &[(&str, &str)], value: SampleValue) -> Sample {
        Sample {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        }
    }

    fn snap(host: &str, instance: &str, n: f64, bound: f64, counter_kind: Kind) -> Snapshot {
        let raw = |suffix: &str, v: f64| SampleValue::Raw {
            suffix: suffix.into(),
            value: v,
        };
        Snapshot {
            host: host.into(),
            instance: instance.into(),
            time: 1.5,
            families: vec![
                fam(
                    "gunicorn_worker_requests",
                    Kind::Counter,
                    vec![
                        smp(&[("worker_id", "worker_1_7")], SampleValue::Scalar(n)),
                        smp(&[("worker_id", "worker_1_8")], SampleValue::Scalar(2.0)),
                    ],
                ),
                fam(
                    "gunicorn_request_duration_seconds",
                    Kind::Histogram,
                    vec![smp(
                        &[("method", "GET"), ("zz", "last")],
                        SampleValue::Histogram {
                            buckets: vec![(bound, 1), (1.0, n as u64)],
                            sum: n / 3.0,
                            count: n as u64 + 1,
                        },
                    )],
                ),
                fam(
                    "gunicorn_requests_in_flight",
                    Kind::Gauge,
                    vec![
                        smp(&[], SampleValue::Scalar(0.25)),
                        // A NUL of its own: this family's lines keep the
                        // host and instance values (no splices).
                        smp(&[("nul", "a\0b")], SampleValue::Scalar(1.0)),
                    ],
                ),
                fam(
                    "app_hits",
                    counter_kind,
                    vec![
                        smp(
                            &[("path", "/a\"b\\c\nd"), ("host", "app-said")],
                            raw("_total", n),
                        ),
                        smp(&[("path", "/")], raw("_created", 1e9)),
                    ],
                ),
                fam(
                    "app_latency",
                    Kind::Histogram,
                    vec![
                        smp(&[("le", "0.5"), ("pid", "9")], raw("_bucket", 3.0)),
                        smp(&[("le", "+Inf"), ("pid", "9")], raw("_bucket", n)),
                        smp(&[("pid", "9")], raw("_sum", f64::NAN)),
                    ],
                ),
                fam(
                    "ferrocorn_redis_up",
                    Kind::Gauge,
                    vec![smp(&[], SampleValue::Scalar(1.0))],
                ),
            ],
        }
    }

    fn lines(text: &str) -> Vec<String> {
        let mut v: Vec<String> = text.lines().map(str::to_owned).collect();
        v.sort();
        v
    }

    #[test]
    fn same_exposition_as_the_model_path() {
        let snaps = [
            snap("b", "10.0.0.2:8000", 5.0, 0.1, Kind::Counter),
            snap("a", "10.0.0.1:8000", 3.0, 0.1, Kind::Counter),
            // Other bucket bounds (no sum for that series) and a kind clash
            // (left out).
            snap("c", "10.0.0.3:8000", 7.0, 0.2, Kind::Gauge),
        ];
        // One instance of an older ferrocorn: format 2, not compressed.
        let mut plain = Vec::new();
        super::super::pushdoc::encode_plain_into(&snaps[2], &mut plain);
        assert_eq!(&plain[..4], b"FCP\x02");
        assert_eq!(&encode(&snaps[0])[..4], b"FCP\x03");
        let found = Found {
            docs: snaps[..2]
                .iter()
                .map(|s| (format!("k:{}", s.host), encode(s)))
                .chain([("k:c".to_owned(), plain)])
                .collect(),
            expired: 0,
        };
        for format in [Format::Text004, Format::OpenMetrics100] {
            let mut want = merge(&snaps);
            want.extend(own_families(3, true));
            let want = expose::render(&want, format);
            let got = render_found(Some(&found), &mut HashSet::new(), |_| {}, format);
            assert_eq!(lines(&got), lines(&want), "{format:?}\n{got}\n---\n{want}");
            // Families in the same order, each with its HELP and TYPE once.
            let heads = |t: &str| -> Vec<String> {
                t.lines()
                    .filter(|l| l.starts_with('#'))
                    .map(str::to_owned)
                    .collect()
            };
            assert_eq!(heads(&got), heads(&want));
            if format == Format::Text004 {
                assert!(got.contains(
                    "gunicorn_worker_requests_total{host=\"all\",instance=\"all\"} 21.0\n"
                ));
            }
        }
    }

    #[test]
    fn bad_documents_are_left_out_and_logged_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static LOGGED: AtomicUsize = AtomicUsize::new(0);
        let good = encode(&snap("a", "i", 1.0, 0.1, Kind::Counter));
        let found = Found {
            docs: vec![
                ("k:a".into(), good.clone()),
                // Truncated, and a version 1 (JSON) document.
                ("k:bad".into(), good[..good.len() - 3].to_vec()),
                ("k:v2".into(), b"{\"v\":2}".to_vec()),
            ],
            expired: 0,
        };
        let mut bad = HashSet::new();
        let log = |_: &str| {
            LOGGED.fetch_add(1, Ordering::Relaxed);
        };
        for _ in 0..3 {
            let text = render_found(Some(&found), &mut bad, log, Format::Text004);
            assert!(text.contains("ferrocorn_redis_instances 1.0\n"), "{text}");
        }
        assert_eq!(LOGGED.load(Ordering::Relaxed), 2);
        let none = render_found(None, &mut bad, log, Format::Text004);
        assert!(none.contains("ferrocorn_redis_up 0.0\n"), "{none}");
    }

    #[test]
    fn damaged_documents_are_errors_not_panics() {
        let good = encode(&snap("a", "i", 1.0, 0.1, Kind::Counter));
        assert!(view::decode(&good, &mut Vec::new()).is_ok());
        for n in 0..good.len() {
            assert!(
                view::decode(&good[..n], &mut Vec::new()).is_err(),
                "cut at {n}"
            );
        }
        // Any byte changed: read or refused, never a panic or an over-read;
        // what reads renders.
        for i in 0..good.len() {
            for b in [0x00, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[i] = b;
                let found = Found {
                    docs: vec![("k".into(), bad)],
                    expired: 0,
                };
                let _ = render_found(Some(&found), &mut HashSet::new(), |_| {}, Format::Text004);
            }
        }
    }
}
