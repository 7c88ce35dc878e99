//! Exposition: Prometheus text format 0.0.4 and OpenMetrics 1.0.0, rendered
//! the way prometheus_client (0.26) renders them, plus the content
//! negotiation (`Accept`, `Accept-Encoding`) of its `choose_encoder` and
//! `gzip_accepted`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;

use crate::metrics::model::{Family, Kind, Sample, SampleValue};

/// `text/plain; version=0.0.4; charset=utf-8`
pub const CONTENT_TYPE_TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `application/openmetrics-text; version=1.0.0; charset=utf-8`
pub const CONTENT_TYPE_OPENMETRICS_100: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text004,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics100,
}

impl Format {
    /// The `Content-Type` header value of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text004 => CONTENT_TYPE_TEXT_004,
            Format::OpenMetrics100 => CONTENT_TYPE_OPENMETRICS_100,
        }
    }

    /// Chooses the format from an `Accept` header as prometheus_client's
    /// `choose_encoder` does: the first comma-separated entry whose media
    /// type is exactly `application/openmetrics-text` and whose `version`
    /// parameter is absent or at least 1.0.0 selects OpenMetrics (q-values
    /// are ignored, as there); otherwise text 0.0.4. An OpenMetrics entry with
    /// an older version (0.0.1) is skipped, as prometheus_client 0.26 does.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let accept = accept.unwrap_or("");
        for entry in accept.split(',') {
            let mut toks = entry.split(';');
            let media = toks.next().unwrap_or("").trim();
            if media != "application/openmetrics-text" {
                continue;
            }
            let version = toks.find_map(|tok| {
                let (key, value) = tok.trim().split_once('=')?;
                (key == "version").then_some(value)
            });
            match version {
                None | Some("") => return Format::OpenMetrics100,
                Some(v) if version_at_least_1(v) => return Format::OpenMetrics100,
                Some(_) => {}
            }
        }
        Format::Text004
    }
}

/// prometheus_client's `parse_version(v) >= (1, 0, 0)`: dot-separated
/// integers compared as a tuple (so `1` < `1.0.0`); a non-numeric part makes
/// the version unusable.
fn version_at_least_1(v: &str) -> bool {
    let parts: Option<Vec<u64>> = v.split('.').map(|p| p.parse().ok()).collect();
    parts.is_some_and(|p| p.as_slice() >= [1u64, 0, 0].as_slice())
}

/// prometheus_client's `gzip_accepted`: true when any comma-separated entry
/// of `Accept-Encoding` is `gzip` (case-insensitive; parameters such as `q`
/// are ignored, as there).
pub fn gzip_accepted(accept_encoding: Option<&str>) -> bool {
    accept_encoding.unwrap_or("").split(',').any(|entry| {
        entry
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("gzip")
    })
}

/// Gzip-compresses a rendered body.
pub fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    enc.write_all(data)?;
    enc.finish()
}

/// Renders `families` in `format`.
///
/// Families that share a name are merged into one (the first one's HELP
/// wins), so each family appears once with one HELP and one TYPE line; a
/// later family whose name matches an earlier one of another kind is
/// dropped, since one exposition cannot type a name twice.
pub fn render(families: &[Family], format: Format) -> String {
    let mut out = String::with_capacity(4096);
    for group in merge(families) {
        match format {
            Format::Text004 => render_family_004(&mut out, &group),
            Format::OpenMetrics100 => render_family_om(&mut out, &group),
        }
    }
    if format == Format::OpenMetrics100 {
        out.push_str("# EOF\n");
    }
    out
}

struct Group<'a> {
    name: &'a str,
    help: &'a str,
    kind: Kind,
    samples: Vec<&'a Sample>,
}

fn base_name(f: &Family) -> &str {
    match f.kind {
        Kind::Counter => f.name.strip_suffix("_total").unwrap_or(&f.name),
        _ => &f.name,
    }
}

fn merge(families: &[Family]) -> Vec<Group<'_>> {
    let mut groups: Vec<Group<'_>> = Vec::with_capacity(families.len());
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(families.len());
    for f in families {
        let name = base_name(f);
        match index.get(name) {
            Some(&i) => {
                if groups[i].kind == f.kind {
                    groups[i].samples.extend(f.samples.iter());
                }
            }
            None => {
                index.insert(name, groups.len());
                groups.push(Group {
                    name,
                    help: &f.help,
                    kind: f.kind,
                    samples: f.samples.iter().collect(),
                });
            }
        }
    }
    groups
}

fn render_family_004(out: &mut String, g: &Group<'_>) {
    let name = escape_name(g.name);
    let (type_name, type_str) = match g.kind {
        Kind::Counter => (format!("{name}_total"), "counter"),
        Kind::Gauge => (name.clone(), "gauge"),
        Kind::Histogram => (name.clone(), "histogram"),
        Kind::Summary => (name.clone(), "summary"),
    };
    out.push_str("# HELP ");
    out.push_str(&type_name);
    out.push(' ');
    escape_help_004(out, g.help);
    out.push('\n');
    let _ = writeln!(out, "# TYPE {type_name} {type_str}");
    write_samples(out, &name, g);
}

fn render_family_om(out: &mut String, g: &Group<'_>) {
    let name = escape_name(g.name);
    let type_str = match g.kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
        Kind::Summary => "summary",
    };
    out.push_str("# HELP ");
    out.push_str(&name);
    out.push(' ');
    escape_value(out, g.help);
    out.push('\n');
    let _ = writeln!(out, "# TYPE {name} {type_str}");
    write_samples(out, &name, g);
}

/// Sample lines are the same in both formats for the kinds we have.
/// Labels are sorted by name (then value), `le` included, as
/// prometheus_client 0.26 does in both formats.
fn write_samples(out: &mut String, name: &str, g: &Group<'_>) {
    let names = Names::new(name);
    // `le` strings of the bounds seen so far (bounds repeat across series).
    let mut le_cache: Vec<(u64, String)> = Vec::new();
    let mut labels: Vec<(&str, &str)> = Vec::new();
    let mut rendered = String::new();
    let mut after = String::new();
    for s in &g.samples {
        labels.clear();
        labels.extend(s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        labels.sort_unstable();
        write_lines(
            out,
            g.kind,
            &s.value,
            &names,
            &labels,
            true,
            &mut rendered,
            &mut after,
            &mut le_cache,
        );
    }
}

/// `k1="v1",k2="v2"` (escaped) into `buf`, replacing its contents.
pub(super) fn render_labels(buf: &mut String, labels: &[(&str, &str)]) {
    buf.clear();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            buf.push(',');
        }
        escape_label_name(buf, k);
        buf.push_str("=\"");
        escape_value(buf, v);
        buf.push('"');
    }
}

/// The metric names of one family's lines.
pub struct Names {
    pub base: String,
    pub total: String,
    pub bucket: String,
    pub count: String,
    pub sum: String,
}

impl Names {
    /// `base`: the family's name as typed, escaped (a counter's without
    /// `_total`).
    pub fn new(base: &str) -> Names {
        let base = base.to_owned();
        Names {
            total: format!("{base}_total"),
            bucket: format!("{base}_bucket"),
            count: format!("{base}_count"),
            sum: format!("{base}_sum"),
            base,
        }
    }
}

/// One sample's lines, as `expose` writes them; with `values` false, only
/// each line's head (`name{labels}`) and a newline: the lines of a sum,
/// whose values the read side adds up.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_lines(
    out: &mut String,
    kind: Kind,
    value: &SampleValue,
    names: &Names,
    labels: &[(&str, &str)],
    values: bool,
    rendered: &mut String,
    after: &mut String,
    le_cache: &mut Vec<(u64, String)>,
) {
    let end = |out: &mut String, v: f64| {
        if values {
            out.push(' ');
            write_float(out, v);
        }
        out.push('\n');
    };
    match (kind, value) {
        (Kind::Counter, SampleValue::Scalar(v)) => {
            render_labels(rendered, labels);
            head(out, &names.total, "", rendered);
            end(out, *v);
        }
        (Kind::Gauge, SampleValue::Scalar(v)) => {
            render_labels(rendered, labels);
            head(out, &names.base, "", rendered);
            end(out, *v);
        }
        (
            Kind::Histogram,
            SampleValue::Histogram {
                buckets,
                sum,
                count,
            },
        ) => {
            // `le` sorts between the labels before and after it.
            let split = labels.partition_point(|(k, _)| *k <= "le");
            render_labels(rendered, &labels[..split]);
            render_labels(after, &labels[split..]);
            let mut first_bound = f64::INFINITY;
            let finite = buckets.iter().filter(|(le, _)| le.is_finite());
            for (i, (le, c)) in finite.enumerate() {
                if i == 0 {
                    first_bound = *le;
                }
                let idx = match le_cache.iter().position(|(b, _)| *b == le.to_bits()) {
                    Some(idx) => idx,
                    None => {
                        le_cache.push((le.to_bits(), float_to_go_string(*le)));
                        le_cache.len() - 1
                    }
                };
                bucket_head(out, &names.bucket, rendered, &le_cache[idx].1, after);
                end(out, *c as f64);
            }
            bucket_head(out, &names.bucket, rendered, "+Inf", after);
            end(out, *count as f64);
            render_labels(rendered, labels);
            head(out, &names.count, "", rendered);
            end(out, *count as f64);
            // As prometheus_client: no _sum when a bucket is negative.
            if first_bound >= 0.0 {
                head(out, &names.sum, "", rendered);
                end(out, *sum);
            }
        }
        (_, SampleValue::Raw { suffix, value }) => {
            render_labels(rendered, labels);
            head(out, &names.base, suffix, rendered);
            end(out, *value);
        }
        // A value that does not fit its family's kind cannot be expressed
        // under that family's TYPE: no lines.
        _ => {}
    }
}

/// `name` `suffix` `{labels}`.
fn head(out: &mut String, name: &str, suffix: &str, labels: &str) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() {
        out.push('{');
        out.push_str(labels);
        out.push('}');
    }
}

/// A histogram bucket's line head: `le` between the labels `before` and
/// `after`.
fn bucket_head(out: &mut String, name: &str, before: &str, le: &str, after: &str) {
    out.push_str(name);
    out.push('{');
    if !before.is_empty() {
        out.push_str(before);
        out.push(',');
    }
    out.push_str("le=\"");
    out.push_str(le);
    out.push('"');
    if !after.is_empty() {
        out.push(',');
        out.push_str(after);
    }
    out.push('}');
}

fn is_legacy_metric_char(c: char, i: usize) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
}

fn is_legacy_label_char(c: char, i: usize) -> bool {
    c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit())
}

/// Metric names outside the legacy character set get prometheus_client's
/// default "underscores" escaping: each invalid character becomes `_`.
pub(crate) fn escape_name(name: &str) -> String {
    if name
        .chars()
        .enumerate()
        .all(|(i, c)| is_legacy_metric_char(c, i))
    {
        return name.to_owned();
    }
    name.chars()
        .enumerate()
        .map(|(i, c)| if is_legacy_metric_char(c, i) { c } else { '_' })
        .collect()
}

pub(crate) fn escape_label_name(out: &mut String, name: &str) {
    if name
        .chars()
        .enumerate()
        .all(|(i, c)| is_legacy_label_char(c, i))
    {
        out.push_str(name);
        return;
    }
    for (i, c) in name.chars().enumerate() {
        out.push(if is_legacy_label_char(c, i) { c } else { '_' });
    }
}

/// Label values (both formats) and OpenMetrics HELP: `\` `\n` `"` escaped.
pub(crate) fn escape_value(out: &mut String, v: &str) {
    if !v.bytes().any(|b| b == b'\\' || b == b'\n' || b == b'"') {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Text 0.0.4 HELP: only `\` and `\n` escaped.
pub(crate) fn escape_help_004(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// [`float_to_go_string`] appended to `out`, with a fast path for the
/// common whole numbers (counts): `7.0`, `-3.0`.
pub(crate) fn write_float(out: &mut String, v: f64) {
    // Whole numbers below 10^6 (positive; the Go exponent form starts
    // there) or above -10^16 (negative; Python's repr switches there) print
    // as the integer plus ".0". -0.0 goes the general way ("-0.0").
    if v.fract() == 0.0 && v < 1e6 && v > -1e16 && (v != 0.0 || v.is_sign_positive()) {
        out.push_str(itoa::Buffer::new().format(v as i64));
        out.push_str(".0");
    } else {
        out.push_str(&float_to_go_string(v));
    }
}

/// prometheus_client's `floatToGoString`: `+Inf`, `-Inf`, `NaN`, otherwise
/// Python's `repr(float)` (`1.0`, `0.005`, `1e-05`), except that positive
/// values of 10^6 and more switch to Go's exponent form (`1.5e+06`).
pub fn float_to_go_string(d: f64) -> String {
    if d.is_nan() {
        return "NaN".to_owned();
    }
    if d == f64::INFINITY {
        return "+Inf".to_owned();
    }
    if d == f64::NEG_INFINITY {
        return "-Inf".to_owned();
    }
    let s = py_repr(d);
    if d > 0.0 {
        if let Some(dot) = s.find('.') {
            if dot > 6 {
                let mut mantissa = String::with_capacity(s.len() + 1);
                mantissa.push_str(&s[..1]);
                mantissa.push('.');
                mantissa.push_str(&s[1..dot]);
                mantissa.push_str(&s[dot + 1..]);
                let mantissa = mantissa.trim_end_matches(['0', '.']);
                return format!("{mantissa}e+{:02}", dot - 1);
            }
        }
    }
    s
}

/// Python's `repr()` of a finite float: the shortest round-trip digits, in
/// fixed notation when the decimal exponent is in -4..16, else scientific
/// with a signed, at least two-digit exponent.
fn py_repr(d: f64) -> String {
    if d == 0.0 {
        return if d.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    let neg = d.is_sign_negative();
    let (digits, exp) = shortest_digits(d.abs());
    let mut out = String::with_capacity(digits.len() + 8);
    if neg {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    out
}

/// Splits Rust's `{:e}` output ("1.25e-3") into digits ("125") and the
/// decimal exponent (-3).
fn split_exp(e: &str) -> (String, i32) {
    let (mant, exp) = e.split_once('e').unwrap_or((e, "0"));
    let digits = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    (digits, exp.parse().unwrap_or(0))
}

/// The shortest digits that round-trip to `d` (finite, positive) and their
/// decimal exponent, as Python's `repr` picks them. Rust and Python agree
/// except on exact ties between two shortest candidates (only possible with
/// 16+ digits, e.g. 88783124901023.125): Rust rounds half up, Python's dtoa
/// half to even.
fn shortest_digits(d: f64) -> (String, i32) {
    let (digits, exp) = split_exp(&format!("{d:e}"));
    let n = digits.len();
    if n < 16 {
        return (digits, exp);
    }
    let is_tie = |ds: &str| {
        ds.as_bytes().get(n) == Some(&b'5') && ds.as_bytes()[n + 1..].iter().all(|b| *b == b'0')
    };
    // Cheap screen on 25 more digits, then the exact expansion (an f64's
    // decimal expansion has at most 767 significant digits).
    let (near, near_exp) = split_exp(&format!("{:.*e}", n + 24, d));
    if !is_tie(&near) {
        return (digits, exp);
    }
    let (full, _) = split_exp(&format!("{:.*e}", 800, d));
    if !is_tie(&full) {
        return (digits, exp);
    }
    let low = &full[..n];
    let last_even = low.as_bytes().last().is_some_and(|b| (b - b'0') % 2 == 0);
    let (mut cand, cand_exp) = if last_even {
        (low.to_owned(), near_exp)
    } else {
        increment_digits(low, near_exp)
    };
    while cand.len() > 1 && cand.ends_with('0') {
        cand.pop();
    }
    let back: Option<f64> = format!("{}.{}e{}", &cand[..1], &cand[1..], cand_exp)
        .parse()
        .ok();
    if back == Some(d) {
        (cand, cand_exp)
    } else {
        (digits, exp)
    }
}

/// Adds one unit in the last place to a digit string.
fn increment_digits(digits: &str, exp: i32) -> (String, i32) {
    let mut bytes = digits.as_bytes().to_vec();
    for b in bytes.iter_mut().rev() {
        if *b == b'9' {
            *b = b'0';
        } else {
            *b += 1;
            return (String::from_utf8_lossy(&bytes).into_owned(), exp);
        }
    }
    let mut s = String::from("1");
    s.push_str(&String::from_utf8_lossy(&bytes));
    (s, exp + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lbl(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub(crate) fn sample_families() -> Vec<Family> {
        vec![
            Family {
                name: "gunicorn_worker_requests".into(),
                help: "Total number of requests handled by this worker".into(),
                kind: Kind::Counter,
                samples: vec![
                    Sample {
                        labels: lbl(&[("worker_id", "worker_1_1234")]),
                        value: SampleValue::Scalar(5.0),
                    },
                    Sample {
                        labels: lbl(&[("worker_id", "worker_2_1235")]),
                        value: SampleValue::Scalar(0.0),
                    },
                ],
            },
            Family {
                name: "gunicorn_worker_memory_bytes".into(),
                help: "Memory usage of the worker process".into(),
                kind: Kind::Gauge,
                samples: vec![Sample {
                    labels: lbl(&[("worker_id", "worker_1_1234")]),
                    value: SampleValue::Scalar(52428800.0),
                }],
            },
            Family {
                name: "gunicorn_worker_request_duration_seconds".into(),
                help: "Request duration in seconds".into(),
                kind: Kind::Histogram,
                samples: vec![Sample {
                    labels: lbl(&[("worker_id", "worker_1_1234")]),
                    value: SampleValue::Histogram {
                        buckets: vec![(0.005, 1), (0.5, 3), (1.0, 4), (10.0, 4)],
                        sum: 1.25,
                        count: 5,
                    },
                }],
            },
        ]
    }

    const GOLDEN_004: &str = "\
# HELP gunicorn_worker_requests_total Total number of requests handled by this worker
# TYPE gunicorn_worker_requests_total counter
gunicorn_worker_requests_total{worker_id=\"worker_1_1234\"} 5.0
gunicorn_worker_requests_total{worker_id=\"worker_2_1235\"} 0.0
# HELP gunicorn_worker_memory_bytes Memory usage of the worker process
# TYPE gunicorn_worker_memory_bytes gauge
gunicorn_worker_memory_bytes{worker_id=\"worker_1_1234\"} 5.24288e+07
# HELP gunicorn_worker_request_duration_seconds Request duration in seconds
# TYPE gunicorn_worker_request_duration_seconds histogram
gunicorn_worker_request_duration_seconds_bucket{le=\"0.005\",worker_id=\"worker_1_1234\"} 1.0
gunicorn_worker_request_duration_seconds_bucket{le=\"0.5\",worker_id=\"worker_1_1234\"} 3.0
gunicorn_worker_request_duration_seconds_bucket{le=\"1.0\",worker_id=\"worker_1_1234\"} 4.0
gunicorn_worker_request_duration_seconds_bucket{le=\"10.0\",worker_id=\"worker_1_1234\"} 4.0
gunicorn_worker_request_duration_seconds_bucket{le=\"+Inf\",worker_id=\"worker_1_1234\"} 5.0
gunicorn_worker_request_duration_seconds_count{worker_id=\"worker_1_1234\"} 5.0
gunicorn_worker_request_duration_seconds_sum{worker_id=\"worker_1_1234\"} 1.25
";

    const GOLDEN_OM: &str = "\
# HELP gunicorn_worker_requests Total number of requests handled by this worker
# TYPE gunicorn_worker_requests counter
gunicorn_worker_requests_total{worker_id=\"worker_1_1234\"} 5.0
gunicorn_worker_requests_total{worker_id=\"worker_2_1235\"} 0.0
# HELP gunicorn_worker_memory_bytes Memory usage of the worker process
# TYPE gunicorn_worker_memory_bytes gauge
gunicorn_worker_memory_bytes{worker_id=\"worker_1_1234\"} 5.24288e+07
# HELP gunicorn_worker_request_duration_seconds Request duration in seconds
# TYPE gunicorn_worker_request_duration_seconds histogram
gunicorn_worker_request_duration_seconds_bucket{le=\"0.005\",worker_id=\"worker_1_1234\"} 1.0
gunicorn_worker_request_duration_seconds_bucket{le=\"0.5\",worker_id=\"worker_1_1234\"} 3.0
gunicorn_worker_request_duration_seconds_bucket{le=\"1.0\",worker_id=\"worker_1_1234\"} 4.0
gunicorn_worker_request_duration_seconds_bucket{le=\"10.0\",worker_id=\"worker_1_1234\"} 4.0
gunicorn_worker_request_duration_seconds_bucket{le=\"+Inf\",worker_id=\"worker_1_1234\"} 5.0
gunicorn_worker_request_duration_seconds_count{worker_id=\"worker_1_1234\"} 5.0
gunicorn_worker_request_duration_seconds_sum{worker_id=\"worker_1_1234\"} 1.25
# EOF
";

    #[test]
    fn golden_text_004() {
        assert_eq!(render(&sample_families(), Format::Text004), GOLDEN_004);
    }

    #[test]
    fn golden_openmetrics() {
        assert_eq!(
            render(&sample_families(), Format::OpenMetrics100),
            GOLDEN_OM
        );
    }

    #[test]
    fn counter_name_with_total_is_stripped_and_duplicates_merge() {
        let fams = vec![
            Family {
                name: "app_hits_total".into(),
                help: "Hits".into(),
                kind: Kind::Counter,
                samples: vec![Sample {
                    labels: vec![],
                    value: SampleValue::Scalar(1.0),
                }],
            },
            Family {
                name: "app_hits".into(),
                help: "ignored".into(),
                kind: Kind::Counter,
                samples: vec![Sample {
                    labels: lbl(&[("a", "b")]),
                    value: SampleValue::Scalar(2.0),
                }],
            },
            // Same name, other kind: dropped.
            Family {
                name: "app_hits".into(),
                help: "conflict".into(),
                kind: Kind::Gauge,
                samples: vec![Sample {
                    labels: vec![],
                    value: SampleValue::Scalar(9.0),
                }],
            },
        ];
        assert_eq!(
            render(&fams, Format::Text004),
            "# HELP app_hits_total Hits\n# TYPE app_hits_total counter\n\
             app_hits_total 1.0\napp_hits_total{a=\"b\"} 2.0\n"
        );
        assert_eq!(
            render(&fams, Format::OpenMetrics100),
            "# HELP app_hits Hits\n# TYPE app_hits counter\n\
             app_hits_total 1.0\napp_hits_total{a=\"b\"} 2.0\n# EOF\n"
        );
    }

    #[test]
    fn escaping() {
        let fams = vec![Family {
            name: "app.weird-name".into(),
            help: "line1\nback\\slash \"q\"".into(),
            kind: Kind::Gauge,
            samples: vec![Sample {
                labels: lbl(&[("z", "1"), ("path", "a\"b\\c\nd"), ("bad-label", "x")]),
                value: SampleValue::Scalar(f64::NAN),
            }],
        }];
        assert_eq!(
            render(&fams, Format::Text004),
            "# HELP app_weird_name line1\\nback\\\\slash \"q\"\n\
             # TYPE app_weird_name gauge\n\
             app_weird_name{bad_label=\"x\",path=\"a\\\"b\\\\c\\nd\",z=\"1\"} NaN\n"
        );
        assert_eq!(
            render(&fams, Format::OpenMetrics100),
            "# HELP app_weird_name line1\\nback\\\\slash \\\"q\\\"\n\
             # TYPE app_weird_name gauge\n\
             app_weird_name{bad_label=\"x\",path=\"a\\\"b\\\\c\\nd\",z=\"1\"} NaN\n# EOF\n"
        );
    }

    #[test]
    fn empty_family_and_unlabelled_histogram() {
        let fams = vec![
            Family {
                name: "g".into(),
                help: "".into(),
                kind: Kind::Gauge,
                samples: vec![],
            },
            Family {
                name: "h".into(),
                help: "H".into(),
                kind: Kind::Histogram,
                samples: vec![Sample {
                    labels: vec![],
                    value: SampleValue::Histogram {
                        buckets: vec![],
                        sum: 0.0,
                        count: 0,
                    },
                }],
            },
        ];
        assert_eq!(
            render(&fams, Format::Text004),
            "# HELP g \n# TYPE g gauge\n# HELP h H\n# TYPE h histogram\n\
             h_bucket{le=\"+Inf\"} 0.0\nh_count 0.0\nh_sum 0.0\n"
        );
    }

    #[test]
    fn floats_like_prometheus_client() {
        let cases: &[(f64, &str)] = &[
            (1.0, "1.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (0.005, "0.005"),
            (2.5, "2.5"),
            (10.0, "10.0"),
            (-3.0, "-3.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123456.0, "123456.0"),
            (999999.0, "999999.0"),
            (1000000.0, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (52428800.0, "5.24288e+07"),
            (1e10, "1e+10"),
            (12345678.9, "1.23456789e+07"),
            (1e15, "1e+15"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e100, "1e+100"),
            (-1e7, "-10000000.0"),
            (-1e16, "-1e+16"),
            (0.1 + 0.2, "0.30000000000000004"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            // Exact ties between two shortest candidates: half to even.
            (88783124901023.0 + 0.125, "8.878312490102312e+13"),
            (70956655107661.0 + 0.125, "7.095665510766112e+13"),
        ];
        for (v, want) in cases {
            assert_eq!(float_to_go_string(*v), *want, "value {v:e}");
        }
    }

    #[test]
    fn fast_float_path_matches_general_path() {
        let mut vals: Vec<f64> = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            999_999.0,
            1e6,
            1e6 + 1.0,
            -1e6,
            -9_999_999_999_999_998.0,
            -1e16,
            1e15,
            0.5,
            -0.5,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e300,
        ];
        vals.extend((0..2000).map(|i| (i * 997) as f64));
        vals.extend((0..2000).map(|i| -((i as f64) * 7919.0 * 1e9)));
        for v in vals {
            let mut fast = String::new();
            write_float(&mut fast, v);
            assert_eq!(fast, float_to_go_string(v), "value {v:e}");
        }
    }

    #[test]
    fn accept_negotiation() {
        use Format::*;
        let cases: &[(Option<&str>, Format)] = &[
            (None, Text004),
            (Some(""), Text004),
            (Some("text/plain"), Text004),
            (Some("*/*"), Text004),
            (Some("application/openmetrics-text"), OpenMetrics100),
            (
                Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                OpenMetrics100,
            ),
            // Prometheus 2.x default scrape_protocols.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                     version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                OpenMetrics100,
            ),
            // Prometheus 3 default.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
                     application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;\
                     escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                ),
                OpenMetrics100,
            ),
            // Only the old OpenMetrics draft: skipped.
            (
                Some("application/openmetrics-text;version=0.0.1,text/plain;version=0.0.4"),
                Text004,
            ),
            // Later entries count too; q-values are ignored.
            (
                Some("text/plain;version=0.0.4;q=1, application/openmetrics-text;q=0.1"),
                OpenMetrics100,
            ),
            (
                Some("application/openmetrics-text;version=2.0.0"),
                OpenMetrics100,
            ),
            (Some("application/openmetrics-text;version=1"), Text004),
            (Some("application/openmetrics-text;version=x.y"), Text004),
            // Media type match is exact.
            (Some("Application/OpenMetrics-Text"), Text004),
            (Some("application/openmetrics-textx"), Text004),
        ];
        for (accept, want) in cases {
            assert_eq!(Format::from_accept(*accept), *want, "accept {accept:?}");
        }
        assert_eq!(Format::Text004.content_type(), CONTENT_TYPE_TEXT_004);
        assert_eq!(
            Format::OpenMetrics100.content_type(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
    }

    #[test]
    fn gzip_negotiation_and_roundtrip() {
        assert!(gzip_accepted(Some("gzip")));
        assert!(gzip_accepted(Some("deflate, GZIP;q=0.5")));
        assert!(gzip_accepted(Some("br, gzip")));
        assert!(!gzip_accepted(Some("deflate, br")));
        assert!(!gzip_accepted(Some("x-gzip")));
        assert!(!gzip_accepted(None));
        let body = render(&sample_families(), Format::Text004);
        let z = gzip(body.as_bytes()).expect("gzip");
        assert_eq!(&z[..2], &[0x1f, 0x8b]);
        let mut d = flate2::read::GzDecoder::new(&z[..]);
        let mut back = String::new();
        std::io::Read::read_to_string(&mut d, &mut back).expect("gunzip");
        assert_eq!(back, body);
    }

    fn big_families() -> Vec<Family> {
        let mut fams = sample_families();
        fams.push(Family {
            name: "gunicorn_worker_state".into(),
            help: "Current state of the worker (1=active)".into(),
            kind: Kind::Gauge,
            samples: vec![Sample {
                labels: lbl(&[
                    ("worker_id", "worker_1_1234"),
                    ("state", "idle"),
                    ("timestamp", "1700000000.5"),
                ]),
                value: SampleValue::Scalar(1.0),
            }],
        });
        fams.push(Family {
            name: "gunicorn_worker_error_handling".into(),
            help: "Errors \"with\" quotes\\ and\nnewlines".into(),
            kind: Kind::Counter,
            samples: vec![Sample {
                labels: lbl(&[
                    ("worker_id", "w1"),
                    ("method", "GET"),
                    ("endpoint", "/a\"b\\c\nd"),
                    ("error_type", "ValueError"),
                ]),
                value: SampleValue::Scalar(3.0),
            }],
        });
        fams.push(Family {
            name: "gunicorn_requests_in_flight".into(),
            help: "Requests in flight".into(),
            kind: Kind::Gauge,
            samples: vec![Sample {
                labels: vec![],
                value: SampleValue::Scalar(f64::NAN),
            }],
        });
        fams
    }

    /// `promtool check metrics` on a 0.0.4 rendering; skipped without promtool.
    #[test]
    fn promtool_accepts_text_004() {
        let Some(promtool) = find_tool("promtool") else {
            eprintln!("promtool not installed; skipping");
            return;
        };
        let body = render(&big_families(), Format::Text004);
        let out = run_with_stdin(&promtool, &["check", "metrics"], &body);
        assert!(out.0, "promtool rejected:\n{}\n---\n{body}", out.1);
    }

    /// prometheus_client's own parsers accept both renderings and read the
    /// same values back; skipped when python3 with prometheus_client is
    /// absent.
    #[test]
    fn prometheus_client_parses_both_formats() {
        let Some(py) = find_tool("python3") else {
            eprintln!("python3 not installed; skipping");
            return;
        };
        let probe = run_with_stdin(&py, &["-c", "import prometheus_client"], "");
        if !probe.0 {
            eprintln!("prometheus_client not importable; skipping");
            return;
        }
        let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families as p004
from prometheus_client.openmetrics.parser import text_string_to_metric_families as pom
fmt, body = sys.argv[1], sys.stdin.read()
fams = list((pom if fmt == 'om' else p004)(body))
for f in fams:
    for s in f.samples:
        print(f.name, f.type, s.name, sorted(s.labels.items()), repr(s.value))
"#;
        let mut outputs = Vec::new();
        for (fmt, format) in [("004", Format::Text004), ("om", Format::OpenMetrics100)] {
            let body = render(&big_families(), format);
            let out = run_with_stdin(&py, &["-c", script, fmt], &body);
            assert!(
                out.0,
                "prometheus_client rejected {fmt}:\n{}\n---\n{body}",
                out.1
            );
            outputs.push(out.1);
        }
        assert!(outputs[1].contains(
            "gunicorn_worker_requests counter gunicorn_worker_requests_total [('worker_id', 'worker_1_1234')] 5.0"
        ), "{}", outputs[1]);
        assert!(
            outputs[1].contains("[('endpoint', '/a\"b\\\\c\\nd')"),
            "{}",
            outputs[1]
        );
        assert!(outputs[0].contains(
            "gunicorn_worker_request_duration_seconds histogram gunicorn_worker_request_duration_seconds_bucket [('le', '+Inf'), ('worker_id', 'worker_1_1234')] 5.0"
        ), "{}", outputs[0]);
    }

    fn py_str(s: &str) -> String {
        let mut out = String::from("'");
        for c in s.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\'' => out.push_str("\\'"),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('\'');
        out
    }

    fn py_labels(labels: &[(String, String)], extra: Option<(&str, String)>) -> String {
        let mut items: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{}: {}", py_str(k), py_str(v)))
            .collect();
        if let Some((k, v)) = extra {
            items.push(format!("{}: {}", py_str(k), py_str(&v)));
        }
        format!("{{{}}}", items.join(", "))
    }

    /// The families as prometheus_client `Metric` objects (Python literal).
    fn py_literal(fams: &[Family]) -> String {
        let mut out = String::from("[");
        for f in fams {
            let (ty, base) = match f.kind {
                Kind::Counter => ("counter", base_name(f)),
                Kind::Gauge => ("gauge", f.name.as_str()),
                Kind::Histogram => ("histogram", f.name.as_str()),
                Kind::Summary => ("summary", f.name.as_str()),
            };
            let mut samples = Vec::new();
            for s in &f.samples {
                match &s.value {
                    SampleValue::Scalar(v) => {
                        let n = if f.kind == Kind::Counter {
                            format!("{base}_total")
                        } else {
                            base.to_string()
                        };
                        samples.push(format!(
                            "({}, {}, '{v:?}')",
                            py_str(&n),
                            py_labels(&s.labels, None)
                        ));
                    }
                    SampleValue::Raw { suffix, value } => {
                        samples.push(format!(
                            "({}, {}, '{value:?}')",
                            py_str(&format!("{base}{suffix}")),
                            py_labels(&s.labels, None)
                        ));
                    }
                    SampleValue::Histogram {
                        buckets,
                        sum,
                        count,
                    } => {
                        for (le, c) in buckets {
                            samples.push(format!(
                                "('{base}_bucket', {}, '{c}')",
                                py_labels(&s.labels, Some(("le", float_to_go_string(*le))))
                            ));
                        }
                        samples.push(format!(
                            "('{base}_bucket', {}, '{count}')",
                            py_labels(&s.labels, Some(("le", "+Inf".into())))
                        ));
                        samples.push(format!(
                            "('{base}_count', {}, '{count}')",
                            py_labels(&s.labels, None)
                        ));
                        samples.push(format!(
                            "('{base}_sum', {}, '{sum:?}')",
                            py_labels(&s.labels, None)
                        ));
                    }
                }
            }
            out.push_str(&format!(
                "({}, {}, '{ty}', [{}]),\n",
                py_str(base),
                py_str(&f.help),
                samples.join(", ")
            ));
        }
        out.push(']');
        out
    }

    /// Byte-for-byte comparison with prometheus_client's own
    /// `generate_latest` (both formats) for the same families; skipped when
    /// python3 with prometheus_client is absent.
    #[test]
    fn identical_to_prometheus_client_output() {
        let Some(py) = find_tool("python3") else {
            eprintln!("python3 not installed; skipping");
            return;
        };
        // Verified against 0.26; older releases differ (no label sorting).
        let (ok, version) = run_with_stdin(
            &py,
            &["-c", "import prometheus_client, importlib.metadata as m; print(m.version('prometheus_client'))"],
            "",
        );
        let parts: Vec<u32> = version
            .trim()
            .split('.')
            .map_while(|p| p.parse().ok())
            .collect();
        if !ok || parts.as_slice() < [0, 26].as_slice() {
            eprintln!("prometheus_client >= 0.26 not importable ({version:?}); skipping");
            return;
        }
        let script = r#"
import sys, ast
from prometheus_client.metrics_core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as om_latest
data = ast.literal_eval(sys.stdin.read())
class C:
    def collect(self):
        for name, doc, typ, samples in data:
            m = Metric(name, doc, typ)
            for sname, labels, value in samples:
                m.add_sample(sname, labels, float(value))
            yield m
gen = om_latest if sys.argv[1] == 'om' else generate_latest
sys.stdout.write(gen(C()).decode('utf-8'))
"#;
        let fams = big_families();
        let lit = py_literal(&fams);
        for (arg, format) in [("004", Format::Text004), ("om", Format::OpenMetrics100)] {
            let (ok, text) = run_with_stdin(&py, &["-c", script, arg], &lit);
            assert!(ok, "python failed: {text}");
            assert_eq!(render(&fams, format), text, "format {arg}");
        }
    }

    pub(crate) fn find_tool(name: &str) -> Option<std::path::PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }

    fn run_with_stdin(tool: &std::path::Path, args: &[&str], input: &str) -> (bool, String) {
        use std::process::{Command, Stdio};
        let mut child = Command::new(tool)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tool");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_owned();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let out = child.wait_with_output().expect("tool output");
        let _ = writer.join();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}
