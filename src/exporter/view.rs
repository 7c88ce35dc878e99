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

use super::expose::{self, write_lines, Format, Names};
use super::pushdoc::{base_name, encode_own};
use crate::metrics::model::{Kind, SampleValue};
use crate::redis::codec::bucket;
use crate::redis::link::Log;
use crate::redis::read::{own_families, summable, Found, ALL};
use crate::redis::view::{self, Doc, Fam, Val};

/// The exposition of every instance of `found` (`None`: Redis could not be
/// read) plus the read side's own families, in `format`. A document that
/// cannot be read is left out and logged once per key (`bad` remembers
/// them across reads).
pub fn render_found(
    found: Option<&Found>,
    bad: &mut HashSet<String>,
    log: Log,
    format: Format,
) -> String {
    let mut docs: Vec<Doc<'_>> = Vec::new();
    if let Some(found) = found {
        docs.reserve(found.docs.len());
        for (key, bytes) in &found.docs {
            match view::decode(bytes) {
                Ok(d) => {
                    bad.remove(key);
                    docs.push(d);
                }
                Err(e) => {
                    if bad.insert(key.clone()) {
                        log(&format!("redis read: skipping {key}: {e}"));
                    }
                }
            }
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
    let own = view::decode(&own);
    if let Ok(own) = &own {
        sources.push(Source {
            families: &own.families,
            host: String::new(),
            instance: String::new(),
        });
    }
    render(&sources, format)
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
/// (`host="all", instance="all"`).
fn render(sources: &[Source<'_, '_>], format: Format) -> String {
    let mut groups: Vec<Group<'_, '_>> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut size = 0usize;
    for (si, src) in sources.iter().enumerate() {
        for f in src.families {
            let name = base_name(f.kind, f.name);
            let spliced = (src.host.len() + src.instance.len()) * f.splices.len() / 8;
            size = size.saturating_add(f.lines.len()).saturating_add(spliced);
            match index.get(name) {
                Some(&gi) => {
                    // A family whose kind differs from its first
                    // appearance's is left out, as `merge` does.
                    if groups[gi].kind == f.kind {
                        groups[gi].members.push((f, si));
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
        }
    }
    let mut out = String::with_capacity(size.saturating_add(groups.len() * 256 + 4096));
    let mut sums = Sums::default();
    for g in &groups {
        header(&mut out, g, format);
        for &(f, si) in &g.members {
            copy_lines(&mut out, f, &sources[si]);
        }
        if summable(g.kind) {
            sums.add_up(&g.members);
            sums.write(&mut out, g);
        }
    }
    if format == Format::OpenMetrics100 {
        out.push_str("# EOF\n");
    }
    out
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
        let found = Found {
            docs: snaps
                .iter()
                .map(|s| (format!("k:{}", s.host), encode(s)))
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
        assert!(view::decode(&good).is_ok());
        for n in 0..good.len() {
            assert!(view::decode(&good[..n]).is_err(), "cut at {n}");
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
