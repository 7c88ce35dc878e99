//! The read side's fast path, second half: the documents that
//! `redis::view` decoded in place, rendered straight into one exposition
//! buffer, with the `host` and `instance` labels and the sums across
//! instances written as they go (no families model in between: for 200
//! instances of 4,000 series that model cost most of a scrape).
//!
//! The output is what [`super::expose::render`] makes of
//! `redis::read::merge` (the model-based path, kept for the tests that
//! compare the two): same families in the same order, same lines; only the
//! summed series may come in another order within their family.

use std::collections::{HashMap, HashSet};

use super::expose::{self, bucket_line, sample_line, Format};
use crate::metrics::model::Kind;
use crate::redis::link::Log;
use crate::redis::read::{own_families, Found, ALL};
use crate::redis::view::{self, kind_of, Doc, Fam, Num, Val};

/// Where a source's samples come from: an instance (its `host` and
/// `instance` labels are added) or the read side itself (no labels added).
pub struct Source<'d, 'a> {
    pub who: Option<(&'d str, &'d str)>,
    pub families: &'d [Fam<'a>],
}

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
        for ((key, _), decoded) in found.docs.iter().zip(decode_all(&found.docs)) {
            match decoded {
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
    docs.sort_by(|a, b| (&a.host, &a.instance).cmp(&(&b.host, &b.instance)));
    let own = own_families(docs.len(), found.is_some());
    let own = view::own(&own);
    let mut sources: Vec<Source<'_, '_>> = docs
        .iter()
        .map(|d| Source {
            who: Some((&d.host, &d.instance)),
            families: &d.families,
        })
        .collect();
    sources.push(Source {
        who: None,
        families: &own,
    });
    render(&sources, format)
}

/// Documents at least this large in total are decoded on several threads.
const PARALLEL_BYTES: usize = 4 << 20;

/// Each document decoded, in order; on up to 4 threads when there is much
/// to decode (a read of 200 large documents is mostly JSON parsing).
fn decode_all(docs: &[(String, Vec<u8>)]) -> Vec<Result<Doc<'_>, String>> {
    let total: usize = docs.iter().map(|(_, d)| d.len()).sum();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    if threads < 2 || total < PARALLEL_BYTES || docs.len() < 2 {
        return docs.iter().map(|(_, d)| view::decode(d)).collect();
    }
    let per = docs.len().div_ceil(threads);
    std::thread::scope(|sc| {
        let parts: Vec<_> = docs
            .chunks(per)
            .map(|chunk| {
                let h = sc.spawn(move || {
                    chunk
                        .iter()
                        .map(|(_, d)| view::decode(d))
                        .collect::<Vec<_>>()
                });
                (chunk.len(), h)
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|(n, h)| {
                h.join().unwrap_or_else(|_| {
                    (0..n)
                        .map(|_| Err("decoding panicked".to_owned()))
                        .collect()
                })
            })
            .collect()
    })
}

/// Labels that the sums fold away: who produced the series.
const PER_PRODUCER: [&str; 3] = ["host", "instance", "worker_id"];

fn summable(k: Kind) -> bool {
    matches!(k, Kind::Counter | Kind::Histogram | Kind::Summary)
}

/// One family across sources: its first appearance's name, help and kind,
/// and every (source, family) of that name and kind.
struct Group<'d, 'a> {
    name: &'d str,
    help: &'d str,
    kind: Kind,
    members: Vec<(usize, &'d Fam<'a>)>,
}

/// The name a family is grouped and typed under (as `expose` does).
fn base_name(kind: Kind, name: &str) -> &str {
    match kind {
        Kind::Counter => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    }
}

/// A sum being accumulated.
enum Acc<'s> {
    Scalar(f64),
    Raw(&'s str, f64),
    Hist {
        bounds: &'s [(Num, u64)],
        counts: Vec<u64>,
        sum: f64,
        count: u64,
    },
    Broken,
}

/// Reused buffers of the render.
#[derive(Default)]
struct Scratch<'s> {
    labels: Vec<(&'s str, &'s str)>,
    rendered: String,
    after: String,
    key: String,
}

/// The exposition of `sources` in `format`: the union with `host` and
/// `instance` labels, then each summable family's sums across sources
/// (`host="all", instance="all"`).
pub fn render(sources: &[Source<'_, '_>], format: Format) -> String {
    let mut groups: Vec<Group<'_, '_>> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut size = 0usize;
    for (si, src) in sources.iter().enumerate() {
        for f in src.families {
            let Some(kind) = kind_of(&f.k) else { continue };
            let name = base_name(kind, &f.n);
            size += f.s.len();
            match index.get(name) {
                Some(&gi) => {
                    if groups[gi].kind == kind {
                        groups[gi].members.push((si, f));
                    }
                }
                None => {
                    index.insert(name, groups.len());
                    groups.push(Group {
                        name,
                        help: &f.h,
                        kind,
                        members: vec![(si, f)],
                    });
                }
            }
        }
    }
    let mut out = String::with_capacity(size * 96 + 4096);
    let mut scratch = Scratch::default();
    for g in &groups {
        render_group(&mut out, g, sources, format, &mut scratch);
    }
    if format == Format::OpenMetrics100 {
        out.push_str("# EOF\n");
    }
    out
}

fn render_group<'d>(
    out: &mut String,
    g: &Group<'d, '_>,
    sources: &'d [Source<'d, '_>],
    format: Format,
    sc: &mut Scratch<'d>,
) {
    let name = expose::escape_name(g.name);
    let type_str = match g.kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
        Kind::Summary => "summary",
    };
    let total = format!("{name}_total");
    match format {
        Format::Text004 => {
            let type_name = if g.kind == Kind::Counter {
                &total
            } else {
                &name
            };
            out.push_str("# HELP ");
            out.push_str(type_name);
            out.push(' ');
            expose::escape_help_004(out, g.help);
            out.push_str("\n# TYPE ");
            out.push_str(type_name);
        }
        Format::OpenMetrics100 => {
            out.push_str("# HELP ");
            out.push_str(&name);
            out.push(' ');
            expose::escape_value(out, g.help);
            out.push_str("\n# TYPE ");
            out.push_str(&name);
        }
    }
    out.push(' ');
    out.push_str(type_str);
    out.push('\n');

    let names = Names {
        base: &name,
        total: &total,
        bucket: format!("{name}_bucket"),
        count: format!("{name}_count"),
        sum: format!("{name}_sum"),
    };
    let mut le_cache: Vec<(u64, String)> = Vec::new();
    let sum_up = summable(g.kind);
    let mut sums = Sums::default();
    let samples: usize = g.members.iter().map(|(_, f)| f.s.len()).sum();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    if threads >= 2 && samples >= PARALLEL_SAMPLES && g.members.len() >= 2 {
        // A large family (thousands of series in each of many instances):
        // its instances' lines are rendered on several threads, each with
        // its own sums, then joined in order.
        let per = g.members.len().div_ceil(threads);
        let names = &names;
        let parts: Vec<Option<(String, Sums<'d>)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = g
                .members
                .chunks(per)
                .map(|chunk| {
                    scope.spawn(move || {
                        let mut out = String::with_capacity(samples / threads * 96);
                        let mut sc = Scratch::default();
                        let mut sums = Sums::default();
                        let mut le_cache = Vec::new();
                        render_members(
                            &mut out,
                            g.kind,
                            chunk,
                            sources,
                            names,
                            &mut sc,
                            sum_up.then_some(&mut sums),
                            &mut le_cache,
                        );
                        (out, sums)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().ok()).collect()
        });
        for part in parts {
            // A thread that panicked leaves its instances out of this
            // scrape rather than failing it.
            let Some((text, part)) = part else { continue };
            out.push_str(&text);
            sums.absorb(part);
        }
    } else {
        render_members(
            out,
            g.kind,
            &g.members,
            sources,
            &names,
            sc,
            sum_up.then_some(&mut sums),
            &mut le_cache,
        );
    }
    let mut accs = sums.list;
    if accs.is_empty() {
        return;
    }
    accs.sort_by(|a, b| a.key.cmp(&b.key));
    for sum in &mut accs {
        sum.labels.push(("host", ALL));
        sum.labels.push(("instance", ALL));
        sum.labels.sort_unstable();
        let counts: Vec<(Num, u64)>;
        let val = match &sum.acc {
            Acc::Broken => continue,
            Acc::Scalar(v) => Val::Scalar(*v),
            Acc::Raw(suffix, v) => Val::Raw { suffix, value: *v },
            Acc::Hist {
                bounds,
                counts: c,
                sum,
                count,
            } => {
                counts = bounds.iter().zip(c).map(|((le, _), c)| (*le, *c)).collect();
                Val::Hist {
                    buckets: &counts,
                    sum: *sum,
                    count: *count,
                }
            }
        };
        write_sample(
            out,
            g.kind,
            &val,
            &names,
            &sum.labels,
            &mut sc.rendered,
            &mut sc.after,
            &mut le_cache,
        );
    }
}

/// Families with at least this many series are rendered on several threads.
const PARALLEL_SAMPLES: usize = 50_000;

/// The sample lines of `members`, their sums added to `sums` when given.
#[allow(clippy::too_many_arguments)]
fn render_members<'d>(
    out: &mut String,
    kind: Kind,
    members: &[(usize, &'d Fam<'_>)],
    sources: &'d [Source<'d, '_>],
    names: &Names<'_>,
    sc: &mut Scratch<'d>,
    mut sums: Option<&mut Sums<'d>>,
    le_cache: &mut Vec<(u64, String)>,
) {
    for &(si, f) in members {
        let who = sources[si].who;
        for s in &f.s {
            let Some(val) = s.val() else { continue };
            sc.labels.clear();
            for (k, v) in &s.l {
                let k: &str = k;
                let k = match (who, k) {
                    // A series' own host/instance labels are kept as
                    // exported_*, as Prometheus does on a clash.
                    (Some(_), "host") => "exported_host",
                    (Some(_), "instance") => "exported_instance",
                    _ => k,
                };
                sc.labels.push((k, v));
            }
            if let Some((host, instance)) = who {
                sc.labels.push(("host", host));
                sc.labels.push(("instance", instance));
            }
            sc.labels.sort_unstable();
            write_sample(
                out,
                kind,
                &val,
                names,
                &sc.labels,
                &mut sc.rendered,
                &mut sc.after,
                le_cache,
            );
            if let Some(sums) = sums.as_deref_mut() {
                add_to_sums(&val, sc, sums);
            }
        }
    }
}

/// The sums of one family being accumulated: by key, in first-seen order.
#[derive(Default)]
struct Sums<'s> {
    index: HashMap<String, usize>,
    list: Vec<Sum<'s>>,
}

impl<'s> Sums<'s> {
    /// Adds another thread's sums of the same family.
    fn absorb(&mut self, other: Sums<'s>) {
        for sum in other.list {
            match self.index.get(&sum.key) {
                Some(&i) => {
                    let acc = &mut self.list[i].acc;
                    *acc = combine(std::mem::replace(acc, Acc::Broken), sum.acc);
                }
                None => {
                    self.index.insert(sum.key.clone(), self.list.len());
                    self.list.push(sum);
                }
            }
        }
    }
}

fn combine<'s>(a: Acc<'s>, b: Acc<'s>) -> Acc<'s> {
    match (a, b) {
        (Acc::Scalar(x), Acc::Scalar(y)) => Acc::Scalar(x + y),
        (Acc::Raw(s, x), Acc::Raw(_, y)) => Acc::Raw(s, x + y),
        (
            Acc::Hist {
                bounds,
                mut counts,
                sum,
                count,
            },
            Acc::Hist {
                bounds: b2,
                counts: c2,
                sum: s2,
                count: n2,
            },
        ) if same_bounds(bounds, b2) => {
            for (c, c2) in counts.iter_mut().zip(c2) {
                *c += c2;
            }
            Acc::Hist {
                bounds,
                counts,
                sum: sum + s2,
                count: count + n2,
            }
        }
        _ => Acc::Broken,
    }
}

fn same_bounds(a: &[(Num, u64)], b: &[(Num, u64)]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 .0 == y.0 .0)
}

/// One summed series: its key (for the order), labels and running value.
struct Sum<'s> {
    key: String,
    labels: Vec<(&'s str, &'s str)>,
    acc: Acc<'s>,
}

struct Names<'n> {
    base: &'n str,
    total: &'n str,
    bucket: String,
    count: String,
    sum: String,
}

/// One sample's lines, as `expose::write_samples` writes them.
#[allow(clippy::too_many_arguments)]
fn write_sample(
    out: &mut String,
    kind: Kind,
    val: &Val<'_>,
    names: &Names<'_>,
    labels: &[(&str, &str)],
    rendered: &mut String,
    after: &mut String,
    le_cache: &mut Vec<(u64, String)>,
) {
    match (kind, val) {
        (Kind::Counter, Val::Scalar(v)) => {
            render_labels(rendered, labels);
            sample_line(out, names.total, "", rendered, *v);
        }
        (Kind::Gauge, Val::Scalar(v)) => {
            render_labels(rendered, labels);
            sample_line(out, names.base, "", rendered, *v);
        }
        (
            Kind::Histogram,
            Val::Hist {
                buckets,
                sum,
                count,
            },
        ) => {
            let split = labels.partition_point(|(k, _)| *k <= "le");
            render_labels(rendered, &labels[..split]);
            render_labels(after, &labels[split..]);
            let mut first_bound = f64::INFINITY;
            let finite = buckets.iter().filter(|(le, _)| le.0.is_finite());
            for (i, (le, c)) in finite.enumerate() {
                let le = le.0;
                if i == 0 {
                    first_bound = le;
                }
                let idx = match le_cache.iter().position(|(b, _)| *b == le.to_bits()) {
                    Some(idx) => idx,
                    None => {
                        le_cache.push((le.to_bits(), expose::float_to_go_string(le)));
                        le_cache.len() - 1
                    }
                };
                bucket_line(
                    out,
                    &names.bucket,
                    rendered,
                    &le_cache[idx].1,
                    after,
                    *c as f64,
                );
            }
            bucket_line(out, &names.bucket, rendered, "+Inf", after, *count as f64);
            render_labels(rendered, labels);
            sample_line(out, &names.count, "", rendered, *count as f64);
            if first_bound >= 0.0 {
                sample_line(out, &names.sum, "", rendered, *sum);
            }
        }
        (_, Val::Raw { suffix, value }) => {
            render_labels(rendered, labels);
            sample_line(out, names.base, suffix, rendered, *value);
        }
        _ => {}
    }
}

/// Adds a sample to its group's sum; the group key is the sample's suffix
/// and its labels without host, instance and worker_id (already sorted).
fn add_to_sums<'s>(val: &Val<'s>, sc: &mut Scratch<'s>, sums: &mut Sums<'s>) {
    sc.key.clear();
    if let Val::Raw { suffix, .. } = val {
        sc.key.push_str(suffix);
    }
    for (k, v) in &sc.labels {
        if PER_PRODUCER.contains(k) {
            continue;
        }
        sc.key.push('\0');
        sc.key.push_str(k);
        sc.key.push('\0');
        sc.key.push_str(v);
    }
    let i = match sums.index.get(sc.key.as_str()) {
        Some(&i) => i,
        None => {
            let acc = match val {
                Val::Scalar(_) => Acc::Scalar(0.0),
                Val::Raw { suffix, .. } => Acc::Raw(suffix, 0.0),
                Val::Hist { buckets, .. } => Acc::Hist {
                    bounds: buckets,
                    counts: vec![0; buckets.len()],
                    sum: 0.0,
                    count: 0,
                },
            };
            sums.index.insert(sc.key.clone(), sums.list.len());
            sums.list.push(Sum {
                key: sc.key.clone(),
                labels: sc
                    .labels
                    .iter()
                    .filter(|(k, _)| !PER_PRODUCER.contains(k))
                    .copied()
                    .collect(),
                acc,
            });
            sums.list.len() - 1
        }
    };
    let acc = &mut sums.list[i].acc;
    match (&mut *acc, val) {
        (Acc::Scalar(a), Val::Scalar(b)) => *a += b,
        (Acc::Raw(_, a), Val::Raw { value, .. }) => *a += value,
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
            for (c, (_, c2)) in counts.iter_mut().zip(*buckets) {
                *c += c2;
            }
            *sum += s2;
            *count += c2;
        }
        // Cumulative counts of different bounds (or values of different
        // shapes) cannot be added: the group gets no sum.
        (Acc::Broken, _) => {}
        _ => *acc = Acc::Broken,
    }
}

/// `k1="v1",k2="v2"` (escaped) into `buf`, replacing its contents.
fn render_labels(buf: &mut String, labels: &[(&str, &str)]) {
    buf.clear();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            buf.push(',');
        }
        expose::escape_label_name(buf, k);
        buf.push_str("=\"");
        expose::escape_value(buf, v);
        buf.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::model::{Family, Sample, SampleValue};
    use crate::redis::codec::{encode, Snapshot};
    use crate::redis::read::{merge, snapshots};

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
                    vec![smp(&[], SampleValue::Scalar(0.25))],
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
            let mut want = merge(&snapshots(&found));
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
                ("k:a".into(), good),
                ("k:bad".into(), b"{\"v\":1,\"host\":3}".to_vec()),
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
}
