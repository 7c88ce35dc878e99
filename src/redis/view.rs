//! The read side's fast path, first half: the pushed documents decoded in
//! place (strings borrowed from the fetched bytes, no allocation per label
//! or value). `exporter::view` renders them straight into the exposition.

use std::borrow::Cow;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::codec::VERSION;
use crate::metrics::model::{Family, Kind, SampleValue};

/// A number of the document: a JSON number, or "NaN", "+Inf", "-Inf".
#[derive(Debug, Clone, Copy)]
pub struct Num(pub f64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Num, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number, \"NaN\", \"+Inf\" or \"-Inf\"")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
                Ok(Num(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Num, E> {
                match v {
                    "NaN" => Ok(Num(f64::NAN)),
                    "+Inf" => Ok(Num(f64::INFINITY)),
                    "-Inf" => Ok(Num(f64::NEG_INFINITY)),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A string of the document: borrowed from its bytes unless it had escapes
/// (serde's own `Cow<str>` is always owned inside sequences and tuples).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Str<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Str<'a>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl Default for Str<'_> {
    fn default() -> Self {
        Str(Cow::Borrowed(""))
    }
}

/// One pushed document, borrowing from its bytes.
#[derive(Debug, Deserialize)]
pub struct Doc<'a> {
    pub v: u64,
    #[serde(borrow)]
    pub host: Str<'a>,
    #[serde(borrow)]
    pub instance: Str<'a>,
    #[serde(borrow)]
    pub families: Vec<Fam<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct Fam<'a> {
    #[serde(borrow)]
    pub n: Str<'a>,
    #[serde(borrow, default)]
    pub h: Str<'a>,
    #[serde(borrow)]
    pub k: Str<'a>,
    #[serde(borrow)]
    pub s: Vec<Smp<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct Smp<'a> {
    #[serde(borrow)]
    pub l: Vec<(Str<'a>, Str<'a>)>,
    #[serde(default)]
    pub v: Option<Num>,
    /// Histogram: `[[le, cumulative count], ...]`, `sum`, `c` (count).
    #[serde(default)]
    pub b: Option<Vec<(Num, u64)>>,
    #[serde(default)]
    pub sum: Option<Num>,
    #[serde(default)]
    pub c: Option<u64>,
    /// Raw sample: its suffix.
    #[serde(borrow, default)]
    pub x: Option<Str<'a>>,
}

/// A sample's value, checked.
pub enum Val<'s> {
    Scalar(f64),
    Hist {
        buckets: &'s [(Num, u64)],
        sum: f64,
        count: u64,
    },
    Raw {
        suffix: &'s str,
        value: f64,
    },
}

impl Smp<'_> {
    pub fn val(&self) -> Option<Val<'_>> {
        if let Some(b) = &self.b {
            return Some(Val::Hist {
                buckets: b,
                sum: self.sum?.0,
                count: self.c?,
            });
        }
        let value = self.v?.0;
        Some(match &self.x {
            Some(x) => Val::Raw { suffix: x, value },
            None => Val::Scalar(value),
        })
    }
}

pub fn kind_of(code: &str) -> Option<Kind> {
    Some(match code {
        "counter" => Kind::Counter,
        "gauge" => Kind::Gauge,
        "histogram" => Kind::Histogram,
        "summary" => Kind::Summary,
        _ => return None,
    })
}

/// Decodes and checks a document (the same checks as `codec::decode`: a
/// malformed sample or family drops the whole document).
pub fn decode(bytes: &[u8]) -> Result<Doc<'_>, String> {
    let doc: Doc<'_> = match serde_json::from_slice(bytes) {
        Ok(d) => d,
        Err(e) => {
            // Say "version" when that is what is wrong.
            #[derive(Deserialize)]
            struct V {
                v: Option<u64>,
            }
            if let Ok(V { v }) = serde_json::from_slice::<V>(bytes) {
                if v != Some(VERSION) {
                    return Err(format!(
                        "format version {v:?}, this ferrocorn reads {VERSION}"
                    ));
                }
            }
            return Err(format!("not a document: {e}"));
        }
    };
    if doc.v != VERSION {
        return Err(format!(
            "format version {:?}, this ferrocorn reads {VERSION}",
            Some(doc.v)
        ));
    }
    for f in &doc.families {
        if kind_of(&f.k).is_none() {
            return Err(format!("family {}: bad kind", &*f.n));
        }
        if f.s.iter().any(|s| s.val().is_none()) {
            return Err(format!("family {}: a malformed sample", &*f.n));
        }
    }
    Ok(doc)
}

/// The read side's own families as a source's families.
pub fn own(families: &[Family]) -> Vec<Fam<'_>> {
    families
        .iter()
        .map(|f| Fam {
            n: Str(Cow::Borrowed(&f.name)),
            h: Str(Cow::Borrowed(&f.help)),
            k: Str(Cow::Borrowed(match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
                Kind::Summary => "summary",
            })),
            s: f.samples
                .iter()
                .filter_map(|s| {
                    let l = s
                        .labels
                        .iter()
                        .map(|(k, v)| {
                            (
                                Str(Cow::Borrowed(k.as_str())),
                                Str(Cow::Borrowed(v.as_str())),
                            )
                        })
                        .collect();
                    match &s.value {
                        SampleValue::Scalar(v) => Some(Smp {
                            l,
                            v: Some(Num(*v)),
                            b: None,
                            sum: None,
                            c: None,
                            x: None,
                        }),
                        _ => None,
                    }
                })
                .collect(),
        })
        .collect()
}
