//! The push format: one instance's merged state (ferrocorn's families and
//! the application's) as one JSON document, the value of one Redis key.
//!
//! JSON rather than the Prometheus text: the read side needs the families'
//! kinds and histogram structure back to add labels and sum across
//! instances, and parsing the exposition would be slower and lossy.
//! Non-finite floats (NaN, ±Inf) are strings, since JSON has no such numbers.

use serde_json::{json, Map, Value};

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

fn num(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else if v.is_nan() {
        json!("NaN")
    } else if v > 0.0 {
        json!("+Inf")
    } else {
        json!("-Inf")
    }
}

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

fn kind_of(code: &str) -> Option<Kind> {
    Some(match code {
        "counter" => Kind::Counter,
        "gauge" => Kind::Gauge,
        "histogram" => Kind::Histogram,
        "summary" => Kind::Summary,
        _ => return None,
    })
}

/// The document for `snap`, as bytes ready for SET.
pub fn encode(snap: &Snapshot) -> Vec<u8> {
    let families: Vec<Value> = snap
        .families
        .iter()
        .map(|f| {
            let samples: Vec<Value> = f.samples.iter().map(encode_sample).collect();
            json!({"n": f.name, "h": f.help, "k": kind_code(f.kind), "s": samples})
        })
        .collect();
    let doc = json!({
        "v": VERSION,
        "host": snap.host,
        "instance": snap.instance,
        "time": snap.time,
        "families": families,
    });
    // Serialising a Value built from strings and finite numbers cannot fail.
    serde_json::to_vec(&doc).unwrap_or_default()
}

fn encode_sample(s: &Sample) -> Value {
    let labels: Vec<Value> = s.labels.iter().map(|(k, v)| json!([k, v])).collect();
    let mut m = Map::new();
    m.insert("l".into(), Value::Array(labels));
    match &s.value {
        SampleValue::Scalar(v) => {
            m.insert("v".into(), num(*v));
        }
        SampleValue::Histogram {
            buckets,
            sum,
            count,
        } => {
            let b: Vec<Value> = buckets.iter().map(|(le, c)| json!([num(*le), c])).collect();
            m.insert("b".into(), Value::Array(b));
            m.insert("sum".into(), num(*sum));
            m.insert("c".into(), json!(count));
        }
        SampleValue::Raw { suffix, value } => {
            m.insert("x".into(), json!(suffix));
            m.insert("v".into(), num(*value));
        }
    }
    Value::Object(m)
}

/// Reads a document back. Errors say what was wrong, for the read side's
/// log line; a malformed sample drops the document rather than half of it.
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

fn decode_family(f: &Value) -> Result<Family, String> {
    let s = |k: &str| f.get(k).and_then(Value::as_str);
    let name = s("n").ok_or("a family without a name")?.to_owned();
    let kind = s("k")
        .and_then(kind_of)
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
