//! Keeps the application's counters from going backwards by a rounding step.
//!
//! prometheus_client's totals are float sums over the multiprocess files.
//! When the master compacts a dead worker's file into the archive, the same
//! values are added in another order, and a total (a Histogram's `_sum`, a
//! Counter incremented by fractions) can come out one rounding step lower
//! than at the previous scrape. Prometheus reads any decrease of a counter as
//! a reset, and `rate()` then spikes. So the exporter never shows such a
//! sample lower than it showed before when the difference is rounding-sized;
//! a real decrease (files removed, a fresh directory) passes through.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use super::Family;
use crate::metrics::model::Kind;

/// Largest decrease, relative to the value, taken for rounding: float sums
/// of a few thousand terms err by far less; any real decrease is far more.
const ROUNDING: f64 = 1e-9;

#[derive(Default)]
pub struct Floor {
    /// Hash of (sample name, labels) -> the value shown at the last scrape.
    /// Rebuilt at each scrape, so series that disappear are forgotten.
    last: HashMap<u64, f64>,
}

impl Floor {
    pub fn apply(&mut self, families: &mut [Family]) {
        let mut next = HashMap::with_capacity(self.last.len());
        for f in families.iter_mut() {
            if !matches!(f.kind, Kind::Counter | Kind::Histogram | Kind::Summary) {
                continue;
            }
            for s in &mut f.samples {
                if s.name.ends_with("_created") {
                    continue;
                }
                let mut h = DefaultHasher::new();
                s.name.hash(&mut h);
                s.labels.hash(&mut h);
                let key = h.finish();
                if let Some(&prev) = self.last.get(&key) {
                    if s.value < prev && prev - s.value <= ROUNDING * prev.abs() {
                        s.value = prev;
                    }
                }
                next.insert(key, s.value);
            }
        }
        self.last = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mpfiles::RawSample;

    fn fam(kind: Kind, name: &str, value: f64) -> Vec<Family> {
        vec![Family {
            name: "x".into(),
            help: String::new(),
            kind,
            samples: vec![RawSample {
                name: name.into(),
                labels: vec![("le".into(), "+Inf".into())],
                value,
                timestamp: None,
            }],
        }]
    }

    fn shown(floor: &mut Floor, kind: Kind, name: &str, value: f64) -> f64 {
        let mut f = fam(kind, name, value);
        floor.apply(&mut f);
        f[0].samples[0].value
    }

    #[test]
    fn rounding_decrease_is_held_real_changes_pass() {
        let mut floor = Floor::default();
        // 2 µs + 13,860 µs added as floats, then the same folded into one file
        assert_eq!(
            shown(&mut floor, Kind::Histogram, "x_sum", 0.013862000000000001),
            0.013862000000000001
        );
        assert_eq!(
            shown(&mut floor, Kind::Histogram, "x_sum", 0.013862),
            0.013862000000000001
        );
        assert_eq!(shown(&mut floor, Kind::Histogram, "x_sum", 0.02), 0.02);
        // a real decrease is shown as it is
        assert_eq!(shown(&mut floor, Kind::Histogram, "x_sum", 0.01), 0.01);
        // gauges may go down by any amount
        assert_eq!(
            shown(&mut floor, Kind::Gauge, "g", 1.0000000000000002),
            1.0000000000000002
        );
        assert_eq!(shown(&mut floor, Kind::Gauge, "g", 1.0), 1.0);
        // counters, and a series seen for the first time
        assert_eq!(
            shown(&mut floor, Kind::Counter, "c_total", 0.30000000000000004),
            0.30000000000000004
        );
        assert_eq!(
            shown(&mut floor, Kind::Counter, "c_total", 0.3),
            0.30000000000000004
        );
    }
}
