//! The metrics data model: what a scrape yields and the exposition renders.
//! The exporter's collector (`exporter::collect`) produces it at every
//! scrape, `exporter::expose` turns it into Prometheus text or OpenMetrics;
//! `mpfiles` reads the application's families with the same [`Kind`].

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// Only from application metrics (prometheus_client's Summary: `_count`
    /// and `_sum`, as its multiprocess mode keeps them), as raw samples.
    Summary,
}

/// One metric family: every sample of one metric name.
///
/// `name` is the family name as prometheus_client holds it: for counters
/// WITHOUT the `_total` suffix (`gunicorn_worker_requests`); the exposition
/// adds `_total` to the sample lines (and, in text 0.0.4, to HELP/TYPE). A
/// counter name that still ends in `_total` has it stripped, as
/// prometheus_client's `Counter` does.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

/// One series of a family. Label order does not matter: the exposition
/// sorts labels by name, as prometheus_client does.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Vec<(String, String)>,
    pub value: SampleValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SampleValue {
    /// A counter's or a gauge's value.
    Scalar(f64),
    /// A histogram series. `buckets` are `(le, cumulative count)` with
    /// finite, ascending upper bounds; the `+Inf` bucket is added by the
    /// exposition from `count`.
    Histogram {
        buckets: Vec<(f64, u64)>,
        sum: f64,
        count: u64,
    },
    /// One sample line as prometheus_client produced it (application
    /// metrics): the family name plus `suffix` (`_total`, `_bucket`, `_sum`,
    /// `""`, ...), with its labels (`le` included) and value.
    Raw { suffix: String, value: f64 },
}
