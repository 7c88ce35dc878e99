//! The push format: one instance's merged state (ferrocorn's families and
//! the application's) as one JSON document, the value of one Redis key.
//!
//! JSON rather than the Prometheus text: the read side needs the families'
//! kinds and histogram structure back to add labels and sum across
//! instances, and parsing the exposition would be slower and lossy.
//! Non-finite floats (NaN, ±Inf) are strings, since JSON has no such numbers.

#[cfg(test)]
use serde_json::Value;

use crate::metrics::model::{Family, Kind, Sample, SampleValue};

/// Bumped when the document changes incompatibly; the read side skips
/// documents of another version (and says so) instead of misreading them.
pub const VERSION: u64 = 1;

/// One instance's pushed state.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub host: String,
    pub instance: String,
    /// Unix seconds of the push.
    pub time: f64,
    pub families: Vec<Family>,
}

#[cfg(test)]
fn unnum(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

fn kind_code(k: Kind) -> &'static str {
    match k {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
        Kind::Summary => "summary",
    }
}

/// The document for `snap`, as bytes ready for SET. Written directly rather
/// than through a `serde_json::Value` tree: for 4,000 series that tree cost
/// 18 ms per push, more than collecting the metrics.
#[cfg(test)]
pub fn encode(snap: &Snapshot) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * 1024);
    encode_into(snap, &mut out);
    out
}

/// [`encode`] into `out` (cleared first), so that a pusher can keep one
/// buffer across pushes.
pub fn encode_into(snap: &Snapshot, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"{\"v\":");
    out.extend_from_slice(VERSION.to_string().as_bytes());
    out.extend_from_slice(b",\"host\":");
    string(out, &snap.host);
    out.extend_from_slice(b",\"instance\":");
    string(out, &snap.instance);
    out.extend_from_slice(b",\"time\":");
    number(out, snap.time);
    out.extend_from_slice(b",\"families\":[");
    for (i, f) in snap.families.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"n\":");
        string(out, &f.name);
        out.extend_from_slice(b",\"h\":");
        string(out, &f.help);
        out.extend_from_slice(b",\"k\":\"");
        out.extend_from_slice(kind_code(f.kind).as_bytes());
        out.extend_from_slice(b"\",\"s\":[");
        for (j, smp) in f.samples.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            encode_sample(out, smp);
        }
        out.extend_from_slice(b"]}");
    }
    out.extend_from_slice(b"]}");
}

/// A JSON string, escaped by serde_json.
fn string(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A finite float as a JSON number, else its string (see the module doc).
fn number(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        let _ = serde_json::to_writer(&mut *out, &v);
    } else if v.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if v > 0.0 {
        out.extend_from_slice(b"\"+Inf\"");
    } else {
        out.extend_from_slice(b"\"-Inf\"");
    }
}

fn encode_sample(out: &mut Vec<u8>, s: &Sample) {
    out.extend_from_slice(b"{\"l\":[");
    for (i, (k, v)) in s.labels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        string(out, k);
        out.push(b',');
        string(out, v);
        out.push(b']');
    }
    out.push(b']');
    match &s.value {
        SampleValue::Scalar(v) => {
            out.extend_from_slice(b",\"v\":");
            number(out, *v);
        }
        SampleValue::Histogram {
            buckets,
            sum,
            count,
        } => {
            out.extend_from_slice(b",\"b\":[");
            for (i, (le, c)) in buckets.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'[');
                number(out, *le);
                out.push(b',');
                out.extend_from_slice(c.to_string().as_bytes());
                out.push(b']');
            }
            out.extend_from_slice(b"],\"sum\":");
            number(out, *sum);
            out.extend_from_slice(b",\"c\":");
            out.extend_from_slice(count.to_string().as_bytes());
        }
        SampleValue::Raw { suffix, value } => {
            out.extend_from_slice(b",\"x\":");
            string(out, suffix);
            out.extend_from_slice(b",\"v\":");
            number(out, *value);
        }
    }
    out.push(b'}');
}

/// Reads a document back. Errors say what was wrong, for the read side's
/// log line; a malformed sample drops the document rather than half of it.
#[cfg(test)]
pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let version = doc.get("v").and_then(Value::as_u64);
    if version != Some(VERSION) {
        return Err(format!(
            "format version {version:?}, this ferrocorn reads {VERSION}"
        ));
    }
    let text = |k: &str| -> Result<String, String> {
        doc.get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("no {k:?}"))
    };
    let families = doc
        .get("families")
        .and_then(Value::as_array)
        .ok_or("no \"families\"")?
        .iter()
        .map(decode_family)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Snapshot {
        host: text("host")?,
        instance: text("instance")?,
        time: doc.get("time").and_then(Value::as_f64).unwrap_or(0.0),
        families,
    })
}

#[cfg(test)]
fn decode_family(f: &Value) -> Result<Family, String> {
    let s = |k: &str| f.get(k).and_then(Value::as_str);
    let name = s("n").ok_or("a family without a name")?.to_owned();
    let kind = s("k")
        .and_then(super::view::kind_of)
        .ok_or_else(|| format!("family {name}: bad kind"))?;
    let samples = f
        .get("s")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("family {name}: no samples"))?
        .iter()
        .map(|v| decode_sample(v).ok_or_else(|| format!("family {name}: a malformed sample")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Family {
        help: s("h").unwrap_or("").to_owned(),
        name,
        kind,
        samples,
    })
}

#[cfg(test)]
fn decode_sample(v: &Value) -> Option<Sample> {
    let labels = v
        .get("l")?
        .as_array()?
        .iter()
        .map(|p| {
            let p = p.as_array()?;
            Some((
                p.first()?.as_str()?.to_owned(),
                p.get(1)?.as_str()?.to_owned(),
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    let value = if let Some(b) = v.get("b") {
        let buckets = b
            .as_array()?
            .iter()
            .map(|p| {
                let p = p.as_array()?;
                Some((unnum(p.first()?)?, p.get(1)?.as_u64()?))
            })
            .collect::<Option<Vec<_>>>()?;
        SampleValue::Histogram {
            buckets,
            sum: unnum(v.get("sum")?)?,
            count: v.get("c")?.as_u64()?,
        }
    } else if let Some(x) = v.get("x") {
        SampleValue::Raw {
            suffix: x.as_str()?.to_owned(),
            value: unnum(v.get("v")?)?,
        }
    } else {
        SampleValue::Scalar(unnum(v.get("v")?)?)
    };
    Some(Sample { labels, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_snapshot() -> Snapshot {
        Snapshot {
            host: "web-1".into(),
            instance: "0.0.0.0:8000".into(),
            time: 1_700_000_000.25,
            families: vec![
                Family {
                    name: "gunicorn_requests".into(),
                    help: "Requests \"served\"\n".into(),
                    kind: Kind::Counter,
                    samples: vec![Sample {
                        labels: vec![
                            ("method".into(), "GET".into()),
                            ("status".into(), "200".into()),
                        ],
                        value: SampleValue::Scalar(12.0),
                    }],
                },
                Family {
                    name: "gunicorn_request_duration_seconds".into(),
                    help: "d".into(),
                    kind: Kind::Histogram,
                    samples: vec![Sample {
                        labels: vec![("method".into(), "GET".into())],
                        value: SampleValue::Histogram {
                            buckets: vec![(0.005, 3), (0.1, 11)],
                            sum: 0.123_456_789_012_345_6,
                            count: 12,
                        },
                    }],
                },
                Family {
                    name: "app_temperature".into(),
                    help: "".into(),
                    kind: Kind::Gauge,
                    samples: vec![
                        Sample {
                            labels: vec![("pid".into(), "77".into())],
                            value: SampleValue::Raw {
                                suffix: "".into(),
                                value: f64::INFINITY,
                            },
                        },
                        Sample {
                            labels: vec![],
                            value: SampleValue::Scalar(-0.5),
                        },
                    ],
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let snap = sample_snapshot();
        let back = decode(&encode(&snap)).expect("decodes");
        assert_eq!(back, snap);
        let mut nan = sample_snapshot();
        nan.families[2].samples[1].value = SampleValue::Scalar(f64::NAN);
        let back = decode(&encode(&nan)).expect("decodes");
        assert!(matches!(back.families[2].samples[1].value, SampleValue::Scalar(v) if v.is_nan()));
    }

    #[test]
    fn malformed_documents_are_errors() {
        assert!(decode(b"").is_err());
        assert!(
            decode(b"{\"v\":2,\"host\":\"h\",\"instance\":\"i\",\"families\":[]}")
                .expect_err("version")
                .contains("version")
        );
        let e = decode(
            b"{\"v\":1,\"host\":\"h\",\"instance\":\"i\",\"families\":[{\"n\":\"x\",\"k\":\"gauge\",\"s\":[{\"l\":[[1,2]],\"v\":1}]}]}",
        )
        .expect_err("bad label");
        assert!(e.contains("family x"), "{e}");
    }
}
