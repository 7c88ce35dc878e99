//! The read side: every live instance's pushed state under one prefix,
//! served as one exposition. Each series gets `host` and `instance` labels;
//! counters, histograms and summaries are also summed across instances
//! (and workers), as series labelled `host="all", instance="all"`.

#[cfg(test)]
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

#[cfg(test)]
use super::codec::Snapshot;
use super::index_key;
use super::link::{Link, Log};
use super::settings::RedisSettings;
use crate::metrics::model::{Family, Kind, Sample, SampleValue};

/// The label value of the summed series.
pub const ALL: &str = "all";

/// Labels that the sums fold away: who produced the series.
pub const PER_PRODUCER: [&str; 3] = ["host", "instance", "worker_id"];

/// MGET this many keys per command (one round trip still: pipelined).
const MGET_CHUNK: usize = 100;

pub struct Reader {
    link: Link,
    index: String,
}

/// What one read found.
#[derive(Debug, Default)]
pub struct Found {
    /// (state key, document) of each live instance, by key.
    pub docs: Vec<(String, Vec<u8>)>,
    /// Index entries whose key had expired (removed from the index).
    pub expired: usize,
}

impl Reader {
    pub fn new(settings: &RedisSettings, timeout: Duration, log: Log) -> Result<Reader, String> {
        Ok(Reader {
            link: Link::new(&settings.target, timeout, "read", log)?,
            index: index_key(&settings.prefix),
        })
    }

    /// Every live instance's document, undecoded; `None` when Redis failed
    /// (logged by the link, once per outage).
    pub async fn fetch(&mut self) -> Option<Found> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("SMEMBERS").arg(&self.index);
        let (mut keys,): (Vec<String>,) = self.link.query(&pipe).await?;
        keys.sort();
        if keys.is_empty() {
            return Some(Found::default());
        }
        let mut pipe = ::redis::pipe();
        for chunk in keys.chunks(MGET_CHUNK) {
            pipe.cmd("MGET").arg(chunk);
        }
        let docs: Vec<Vec<Option<Vec<u8>>>> = self.link.query(&pipe).await?;
        let mut found = Found::default();
        let mut expired = Vec::new();
        for (key, doc) in keys.into_iter().zip(docs.into_iter().flatten()) {
            match doc {
                Some(doc) => found.docs.push((key, doc)),
                None => expired.push(key),
            }
        }
        if !expired.is_empty() {
            // An instance that stopped pushing: its key expired, its index
            // entry goes too (it comes back with the instance's next push).
            let mut pipe = ::redis::pipe();
            pipe.cmd("SREM").arg(&self.index).arg(&expired).ignore();
            let _ = self.link.query::<()>(&pipe).await;
            found.expired = expired.len();
        }
        Some(found)
    }
}

/// The union of the instances' families, each sample labelled with its
/// instance, plus the sums. A family whose kind differs between instances
/// keeps the kind it has in the first instance (by host, instance); the
/// other instances' samples of it are left out rather than mislabelled.
#[cfg(test)]
pub fn merge(snaps: &[Snapshot]) -> Vec<Family> {
    let mut order: Vec<String> = Vec::new();
    let mut by_name: HashMap<String, Family> = HashMap::new();
    let mut sorted: Vec<&Snapshot> = snaps.iter().collect();
    sorted.sort_by(|a, b| (&a.host, &a.instance).cmp(&(&b.host, &b.instance)));
    for snap in sorted {
        for f in &snap.families {
            let out = by_name.entry(f.name.clone()).or_insert_with(|| {
                order.push(f.name.clone());
                Family {
                    name: f.name.clone(),
                    help: f.help.clone(),
                    kind: f.kind,
                    samples: Vec::new(),
                }
            });
            if out.kind != f.kind {
                continue;
            }
            for s in &f.samples {
                // A series' own host/instance labels are kept as
                // exported_*, as Prometheus does on a clash.
                let mut labels: Vec<(String, String)> = s
                    .labels
                    .iter()
                    .map(|(k, v)| match k.as_str() {
                        "host" | "instance" => (format!("exported_{k}"), v.clone()),
                        _ => (k.clone(), v.clone()),
                    })
                    .collect();
                labels.push(("host".into(), snap.host.clone()));
                labels.push(("instance".into(), snap.instance.clone()));
                out.samples.push(Sample {
                    labels,
                    value: s.value.clone(),
                });
            }
        }
    }
    order
        .into_iter()
        .filter_map(|n| by_name.remove(&n))
        .map(|mut f| {
            let sums = sums(&f);
            f.samples.extend(sums);
            f
        })
        .collect()
}

/// Whether summing a family across instances means something: counts and
/// sums add up, gauges (memory, state, in flight) do not in general.
pub fn summable(k: Kind) -> bool {
    matches!(k, Kind::Counter | Kind::Histogram | Kind::Summary)
}

/// The family's samples summed by their labels minus host, instance and
/// worker_id, labelled `host="all", instance="all"`.
#[cfg(test)]
fn sums(f: &Family) -> Vec<Sample> {
    if !summable(f.kind) {
        return Vec::new();
    }
    // key: (suffix of raw samples, remaining labels sorted)
    type Key = (Option<String>, Vec<(String, String)>);
    let mut acc: BTreeMap<Key, SampleValue> = BTreeMap::new();
    let mut broken: HashSet<Key> = HashSet::new();
    for s in &f.samples {
        let mut labels: Vec<(String, String)> = s
            .labels
            .iter()
            .filter(|(k, _)| !PER_PRODUCER.contains(&k.as_str()))
            .cloned()
            .collect();
        labels.sort();
        let suffix = match &s.value {
            SampleValue::Raw { suffix, .. } => Some(suffix.clone()),
            _ => None,
        };
        let key = (suffix, labels);
        match (acc.get_mut(&key), &s.value) {
            (None, v) => {
                acc.insert(key, v.clone());
            }
            (Some(SampleValue::Scalar(a)), SampleValue::Scalar(b)) => *a += b,
            (Some(SampleValue::Raw { value: a, .. }), SampleValue::Raw { value: b, .. }) => *a += b,
            // Cumulative counts of different bounds cannot be added: such a
            // pair falls to the last arm and the group gets no sum.
            (
                Some(SampleValue::Histogram {
                    buckets,
                    sum,
                    count,
                }),
                SampleValue::Histogram {
                    buckets: b2,
                    sum: s2,
                    count: c2,
                },
            ) if same_bounds(buckets, b2) => {
                for ((_, c), (_, c2)) in buckets.iter_mut().zip(b2) {
                    *c += c2;
                }
                *sum += s2;
                *count += c2;
            }
            _ => {
                broken.insert(key);
            }
        }
    }
    acc.into_iter()
        .filter(|(k, _)| !broken.contains(k))
        .map(|((_, mut labels), value)| {
            labels.push(("host".into(), ALL.into()));
            labels.push(("instance".into(), ALL.into()));
            Sample { labels, value }
        })
        .collect()
}

#[cfg(test)]
fn same_bounds(a: &[(f64, u64)], b: &[(f64, u64)]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|((l1, _), (l2, _))| l1 == l2)
}

/// The read side's own families: how many instances it serves.
pub fn own_families(instances: usize, up: bool) -> Vec<Family> {
    vec![
        Family {
            name: "ferrocorn_redis_instances".into(),
            help: "Instances whose pushed metrics this read side serves".into(),
            kind: Kind::Gauge,
            samples: vec![Sample {
                labels: vec![],
                value: SampleValue::Scalar(instances as f64),
            }],
        },
        Family {
            name: "ferrocorn_redis_up".into(),
            help: "1 if the last read from Redis succeeded".into(),
            kind: Kind::Gauge,
            samples: vec![Sample {
                labels: vec![],
                value: SampleValue::Scalar(if up { 1.0 } else { 0.0 }),
            }],
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(host: &str, instance: &str, requests: f64, worker: &str) -> Snapshot {
        Snapshot {
            host: host.into(),
            instance: instance.into(),
            time: 0.0,
            families: vec![
                Family {
                    name: "gunicorn_worker_requests".into(),
                    help: "h".into(),
                    kind: Kind::Counter,
                    samples: vec![Sample {
                        labels: vec![("worker_id".into(), worker.into())],
                        value: SampleValue::Scalar(requests),
                    }],
                },
                Family {
                    name: "gunicorn_request_duration_seconds".into(),
                    help: "d".into(),
                    kind: Kind::Histogram,
                    samples: vec![Sample {
                        labels: vec![("method".into(), "GET".into())],
                        value: SampleValue::Histogram {
                            buckets: vec![(0.1, requests as u64), (1.0, requests as u64)],
                            sum: requests / 100.0,
                            count: requests as u64,
                        },
                    }],
                },
                Family {
                    name: "gunicorn_requests_in_flight".into(),
                    help: "g".into(),
                    kind: Kind::Gauge,
                    samples: vec![Sample {
                        labels: vec![],
                        value: SampleValue::Scalar(1.0),
                    }],
                },
                Family {
                    name: "app_hits".into(),
                    help: "a".into(),
                    kind: Kind::Counter,
                    samples: vec![Sample {
                        labels: vec![("path".into(), "/".into())],
                        value: SampleValue::Raw {
                            suffix: "_total".into(),
                            value: 2.0,
                        },
                    }],
                },
            ],
        }
    }

    fn value_of<'a>(f: &'a Family, host: &str, instance: &str) -> Vec<&'a SampleValue> {
        f.samples
            .iter()
            .filter(|s| {
                s.labels.contains(&("host".into(), host.into()))
                    && s.labels.contains(&("instance".into(), instance.into()))
            })
            .map(|s| &s.value)
            .collect()
    }

    #[test]
    fn union_with_labels_and_sums() {
        let fams = merge(&[
            snap("b", "i2", 5.0, "worker_1_20"),
            snap("a", "i1", 3.0, "worker_1_10"),
        ]);
        let names: Vec<&str> = fams.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "gunicorn_worker_requests",
                "gunicorn_request_duration_seconds",
                "gunicorn_requests_in_flight",
                "app_hits"
            ]
        );
        let req = &fams[0];
        assert_eq!(value_of(req, "a", "i1"), [&SampleValue::Scalar(3.0)]);
        assert_eq!(value_of(req, "b", "i2"), [&SampleValue::Scalar(5.0)]);
        // Summed over instances and workers: worker_id is gone.
        let all: Vec<&Sample> = req
            .samples
            .iter()
            .filter(|s| s.labels.contains(&("instance".into(), "all".into())))
            .collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].value, SampleValue::Scalar(8.0));
        assert!(!all[0].labels.iter().any(|(k, _)| k == "worker_id"));

        let hist = &fams[1];
        assert_eq!(
            value_of(hist, ALL, ALL),
            [&SampleValue::Histogram {
                buckets: vec![(0.1, 8), (1.0, 8)],
                sum: 0.08,
                count: 8
            }]
        );
        // Gauges are not summed.
        assert!(value_of(&fams[2], ALL, ALL).is_empty());
        assert_eq!(fams[2].samples.len(), 2);
        // Application counters (raw samples) are.
        assert_eq!(
            value_of(&fams[3], ALL, ALL),
            [&SampleValue::Raw {
                suffix: "_total".into(),
                value: 4.0
            }]
        );
    }

    #[test]
    fn mismatched_histograms_and_kinds_are_not_mixed() {
        let a = snap("a", "i1", 3.0, "w");
        let mut b = snap("b", "i2", 5.0, "w");
        if let SampleValue::Histogram { buckets, .. } = &mut b.families[1].samples[0].value {
            buckets[0].0 = 0.2;
        }
        b.families[2].kind = Kind::Counter;
        let fams = merge(&[a, b]);
        assert!(
            value_of(&fams[1], ALL, ALL).is_empty(),
            "no sum of different bounds"
        );
        assert_eq!(fams[1].samples.len(), 2, "both instances still shown");
        assert_eq!(fams[2].kind, Kind::Gauge);
        assert_eq!(
            fams[2].samples.len(),
            1,
            "b's counter of that name is left out"
        );
    }
}
