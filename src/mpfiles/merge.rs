//! `MultiProcessCollector.merge(files, accumulate=True)` of prometheus_client
//! 0.26.0: the same families, samples, labels (and label order), values, and
//! the same order for the same file order.

use std::collections::{HashMap as StdHashMap, HashSet as StdHashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

use super::format::{float_to_go_string, py_float, python_pid_label, FileName};
use super::{Family, Kind, RawSample};

type Str = Arc<str>;
/// A label tuple as prometheus_client sorts it (names may repeat).
type LabelSet = [(Str, Str)];

/// FxHash (rustc's): much cheaper than SipHash for these short, trusted keys
/// (label tuples and JSON keys the app wrote; no untrusted input).
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(a)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(i)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.0 = (self.0.rotate_left(5) ^ i as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type HashMap<K, V> = StdHashMap<K, V, BuildHasherDefault<FxHasher>>;
type HashSet<K> = StdHashSet<K, BuildHasherDefault<FxHasher>>;

/// An interned value: equal contents share one allocation, so identity is
/// the pointer (cheap to hash and compare).
struct I<T: ?Sized>(Arc<T>);

impl<T: ?Sized> Clone for I<T> {
    fn clone(&self) -> Self {
        I(self.0.clone())
    }
}
impl<T: ?Sized> PartialEq for I<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl<T: ?Sized> Eq for I<T> {}
impl<T: ?Sized> Hash for I<T> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_usize(Arc::as_ptr(&self.0) as *const u8 as usize);
    }
}

#[derive(Default)]
struct Interner {
    strs: HashSet<Arc<str>>,
    sets: HashSet<Arc<LabelSet>>,
}

impl Interner {
    fn str(&mut self, s: &str) -> I<str> {
        if let Some(a) = self.strs.get(s) {
            return I(a.clone());
        }
        let a: Arc<str> = Arc::from(s);
        self.strs.insert(a.clone());
        I(a)
    }
    fn set(&mut self, v: Vec<(Str, Str)>) -> I<LabelSet> {
        if let Some(a) = self.sets.get(v.as_slice()) {
            return I(a.clone());
        }
        let a: Arc<LabelSet> = Arc::from(v);
        self.sets.insert(a.clone());
        I(a)
    }
    /// Drops what nothing else refers to any more.
    fn prune(&mut self) {
        self.strs.retain(|a| Arc::strong_count(a) > 1);
        self.sets.retain(|a| Arc::strong_count(a) > 1);
    }
}

/// A key parsed from its JSON: `[metric_name, sample_name, {labels}, help]`.
struct ParsedKey {
    metric: I<str>,
    name: I<str>,
    help: Str,
    /// `tuple(sorted(labels.items()))`.
    labels: I<LabelSet>,
    /// `labels` without any label named `pid` (gauges that drop the pid).
    no_pid: I<LabelSet>,
    /// The first `le` label's value, for histogram buckets.
    le: Option<Str>,
    /// `labels` without any label named `le`.
    no_le: I<LabelSet>,
}

fn label_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Bool(true) => "True".into(),
        serde_json::Value::Bool(false) => "False".into(),
        serde_json::Value::Null => "None".into(),
        other => other.to_string(),
    }
}

fn parse_key(key: &str, int: &mut Interner) -> Option<ParsedKey> {
    type Raw = (
        String,
        String,
        serde_json::Map<String, serde_json::Value>,
        String,
    );
    let (metric, name, labels, help): Raw = serde_json::from_str(key).ok()?;
    let mut labels: Vec<(Str, Str)> = labels
        .iter()
        .map(|(k, v)| (Str::from(k.as_str()), Str::from(label_value(v))))
        .collect();
    labels.sort();
    let without = |name: &str| -> Vec<(Str, Str)> {
        labels
            .iter()
            .filter(|(k, _)| &**k != name)
            .cloned()
            .collect()
    };
    let no_pid = without("pid");
    let no_le = without("le");
    let le = labels
        .iter()
        .find(|(k, _)| &**k == "le")
        .map(|(_, v)| v.clone());
    Some(ParsedKey {
        metric: int.str(&metric),
        name: int.str(&name),
        help: help.into(),
        no_pid: int.set(no_pid),
        no_le: int.set(no_le),
        labels: int.set(labels),
        le,
    })
}

/// Parsed keys, kept across scrapes (keys repeat in every worker's file and
/// from one scrape to the next); what a scrape no longer uses is dropped.
#[derive(Default)]
pub struct KeyCache {
    /// key -> (parsed, or None when unparsable; last scrape that used it).
    map: HashMap<Box<str>, (Option<Arc<ParsedKey>>, u64)>,
    int: Interner,
    generation: u64,
}

impl KeyCache {
    fn get(&mut self, key: &str) -> Option<Arc<ParsedKey>> {
        if let Some((v, g)) = self.map.get_mut(key) {
            *g = self.generation;
            return v.clone();
        }
        let v = parse_key(key, &mut self.int).map(Arc::new);
        self.map.insert(key.into(), (v.clone(), self.generation));
        v
    }

    fn end_scrape(&mut self) {
        let g = self.generation;
        self.map.retain(|_, (_, used)| *used == g);
        self.int.prune();
        self.generation += 1;
    }
}

/// A map that remembers insertion order, like a Python dict.
struct OMap<K, V> {
    idx: HashMap<K, usize>,
    items: Vec<(K, V)>,
}

impl<K: Hash + Eq + Clone, V> OMap<K, V> {
    fn new() -> Self {
        OMap {
            idx: HashMap::default(),
            items: Vec::new(),
        }
    }
    fn get_or_insert_with(&mut self, k: &K, f: impl FnOnce() -> V) -> &mut V {
        let i = match self.idx.get(k) {
            Some(&i) => i,
            None => {
                self.items.push((k.clone(), f()));
                self.idx.insert(k.clone(), self.items.len() - 1);
                self.items.len() - 1
            }
        };
        &mut self.items[i].1
    }
}

struct InSample {
    key: Arc<ParsedKey>,
    /// The `pid` label of samples from gauge files (appended after the
    /// sorted labels).
    pid: Option<I<str>>,
    value: f64,
    timestamp: Option<f64>,
}

struct Metric {
    name: I<str>,
    help: Str,
    kind: Kind,
    /// The mode of the last gauge file that held this metric.
    mode: Option<Str>,
    samples: Vec<InSample>,
}

fn kind_of(typ: &str) -> Option<Kind> {
    match typ {
        "counter" => Some(Kind::Counter),
        "gauge" => Some(Kind::Gauge),
        "histogram" => Some(Kind::Histogram),
        "summary" => Some(Kind::Summary),
        _ => None,
    }
}

/// One file to merge: its name (parsed, and as on disk) and its entries
/// (key, value, timestamp), the keys borrowed from wherever they were read.
pub(crate) struct MergeFile<'f> {
    pub name: &'f FileName,
    pub file_name: &'f str,
    pub entries: Vec<(&'f str, f64, f64)>,
}

/// Merges files the way prometheus_client does, in the order given. The
/// entries' keys are borrowed from the bytes read (none is copied out).
pub(crate) fn merge_entries(files: &[MergeFile<'_>], cache: &mut KeyCache) -> Vec<Family> {
    let mut metrics: OMap<I<str>, Metric> = OMap::new();
    for f in files {
        let Some(kind) = kind_of(&f.name.typ) else {
            continue;
        };
        let pid: Option<I<str>> = if kind == Kind::Gauge {
            match python_pid_label(f.file_name) {
                Some(p) => Some(cache.int.str(&p)),
                None => continue,
            }
        } else {
            None
        };
        let mode: Option<Str> = f.name.mode.as_deref().map(Str::from);
        for &(key, value, timestamp) in &f.entries {
            let Some(k) = cache.get(key) else {
                continue;
            };
            let m = metrics.get_or_insert_with(&k.metric, || Metric {
                name: k.metric.clone(),
                help: k.help.clone(),
                kind,
                mode: None,
                samples: Vec::new(),
            });
            if pid.is_some() {
                m.mode.clone_from(&mode);
            }
            m.samples.push(InSample {
                key: k,
                pid: pid.clone(),
                value,
                timestamp: pid.as_ref().map(|_| timestamp),
            });
        }
    }
    let out = metrics
        .items
        .into_iter()
        .map(|(_, m)| accumulate(m, &mut cache.int))
        .collect();
    cache.end_scrape();
    out
}

#[derive(Clone, Copy, PartialEq)]
enum GaugeRule {
    Min,
    Max,
    Sum,
    MostRecent,
    All,
}

fn gauge_rule(mode: Option<&str>) -> GaugeRule {
    match mode {
        Some("min" | "livemin") => GaugeRule::Min,
        Some("max" | "livemax") => GaugeRule::Max,
        Some("sum" | "livesum") => GaugeRule::Sum,
        Some("mostrecent" | "livemostrecent") => GaugeRule::MostRecent,
        _ => GaugeRule::All,
    }
}

/// A label tuple: the key's (sorted) labels, then the file's `pid`.
type Group = (I<LabelSet>, Option<I<str>>);
/// Inner key of a group: sample name, and the `le` label for buckets.
type SKey = (I<str>, Option<Str>);

/// prometheus_client's `samples: dict[labels, dict[(name, le), value]]`
/// flattened into one table: groups in first-seen order, each group's
/// values in first-seen order (one hash table for a metric, rather than one
/// per label set: with a series per pid, thousands of tiny tables).
struct Flat {
    groups: HashMap<Group, usize>,
    group_list: Vec<Group>,
    index: HashMap<(usize, SKey), usize>,
    values: Vec<(usize, SKey, f64)>,
}

impl Flat {
    /// Sized for `n` samples (at most `n` groups and values, plus a
    /// histogram's `_count` per group), so that the tables never grow.
    fn with_capacity(n: usize) -> Flat {
        Flat {
            groups: HashMap::with_capacity_and_hasher(n, Default::default()),
            group_list: Vec::with_capacity(n),
            index: HashMap::with_capacity_and_hasher(n, Default::default()),
            values: Vec::with_capacity(n),
        }
    }

    fn group(&mut self, g: &Group) -> usize {
        let next = self.group_list.len();
        match self.groups.entry(g.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => *e.get(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(next);
                self.group_list.push(g.clone());
                next
            }
        }
    }

    /// The value of `key` in group `gi`, made with `init` when new.
    fn slot(&mut self, gi: usize, key: &SKey, init: impl FnOnce() -> f64) -> &mut f64 {
        let next = self.values.len();
        let i = match self.index.entry((gi, key.clone())) {
            std::collections::hash_map::Entry::Occupied(e) => *e.get(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(next);
                self.values.push((gi, key.clone(), init()));
                next
            }
        };
        &mut self.values[i].2
    }

    /// (group, name and le, value), groups in first-seen order.
    fn into_items(mut self) -> (Vec<Group>, Vec<(usize, SKey, f64)>) {
        // Stable: each group's values keep their first-seen order.
        self.values.sort_by_key(|(gi, _, _)| *gi);
        (self.group_list, self.values)
    }
}

fn accumulate(m: Metric, int: &mut Interner) -> Family {
    let mut samples = Flat::with_capacity(m.samples.len());
    let mut stamps: HashMap<(Group, I<str>), f64> = HashMap::default();
    let mut buckets: OMap<Group, Vec<(f64, f64)>> = OMap::new();
    let rule = gauge_rule(m.mode.as_deref());
    for s in m.samples {
        let k = &*s.key;
        let v = s.value;
        match m.kind {
            Kind::Gauge => {
                let group: Group = if rule == GaugeRule::All {
                    (k.labels.clone(), s.pid)
                } else {
                    (k.no_pid.clone(), None)
                };
                let key: SKey = (k.name.clone(), None);
                match rule {
                    GaugeRule::Min | GaugeRule::Max => {
                        let gi = samples.group(&group);
                        let slot = samples.slot(gi, &key, || v);
                        let better = if rule == GaugeRule::Min {
                            v < *slot
                        } else {
                            v > *slot
                        };
                        if better {
                            *slot = v;
                        }
                    }
                    GaugeRule::Sum => {
                        let gi = samples.group(&group);
                        *samples.slot(gi, &key, || 0.0) += v;
                    }
                    GaugeRule::MostRecent => {
                        let cur = stamps.entry((group.clone(), k.name.clone())).or_insert(0.0);
                        let ts = s.timestamp.unwrap_or(0.0);
                        if *cur < ts {
                            let gi = samples.group(&group);
                            *samples.slot(gi, &key, || v) = v;
                            *cur = ts;
                        }
                    }
                    GaugeRule::All => {
                        let gi = samples.group(&group);
                        *samples.slot(gi, &key, || v) = v;
                    }
                }
            }
            Kind::Histogram => {
                if let Some(le) = &k.le {
                    // prometheus_client raises on an unparsable `le`; skip it.
                    let Some(bound) = py_float(le) else {
                        continue;
                    };
                    let list = buckets.get_or_insert_with(&(k.no_le.clone(), s.pid), Vec::new);
                    match list.iter_mut().find(|(b, _)| *b == bound) {
                        Some(slot) => slot.1 += v,
                        None => list.push((bound, 0.0 + v)),
                    }
                } else {
                    let gi = samples.group(&(k.labels.clone(), s.pid));
                    *samples.slot(gi, &(k.name.clone(), None), || 0.0) += v;
                }
            }
            Kind::Counter | Kind::Summary => {
                let gi = samples.group(&(k.labels.clone(), s.pid));
                *samples.slot(gi, &(k.name.clone(), None), || 0.0) += v;
            }
        }
    }
    if m.kind == Kind::Histogram {
        let bucket_name = int.str(&format!("{}_bucket", &*m.name.0));
        let count_name = int.str(&format!("{}_count", &*m.name.0));
        for (group, mut values) in buckets.items {
            values.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
            let gi = samples.group(&group);
            let mut acc = 0.0;
            for (bound, v) in values {
                acc += v;
                let le: Str = float_to_go_string(bound).into();
                *samples.slot(gi, &(bucket_name.clone(), Some(le)), || 0.0) = acc;
            }
            *samples.slot(gi, &(count_name.clone(), None), || 0.0) = acc;
        }
    }
    let (groups, values) = samples.into_items();
    let mut out = Vec::with_capacity(values.len());
    for (gi, (name, le), value) in values {
        let (labels, pid) = &groups[gi];
        let mut dict: Vec<(String, String)> = Vec::with_capacity(labels.0.len() + 2);
        let extra = [
            pid.as_ref().map(|p| ("pid", &*p.0)),
            le.as_deref().map(|le| ("le", le)),
        ];
        let all = labels
            .0
            .iter()
            .map(|(k, v)| (&**k, &**v))
            .chain(extra.into_iter().flatten());
        // `dict(labels)`: a repeated name keeps its first position and
        // takes the last value.
        for (k, v) in all {
            match dict.iter_mut().find(|(dk, _)| dk == k) {
                Some(slot) => slot.1 = v.to_string(),
                None => dict.push((k.to_string(), v.to_string())),
            }
        }
        out.push(RawSample {
            name: name.0.to_string(),
            labels: dict,
            value,
            timestamp: None,
        });
    }
    Family {
        name: m.name.0.to_string(),
        help: m.help.to_string(),
        kind: m.kind,
        samples: out,
    }
}
