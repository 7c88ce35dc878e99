//! Copy-on-write after `--preload` (`preload_freeze`), as the CPython docs
//! for `gc.freeze` advise: no automatic collection in the master while it
//! imports the app (a collection frees objects and leaves holes that the
//! workers' allocations later fill, copying those pages), `gc.freeze()`
//! right before each fork (the workers' collections then never write to the
//! header of an object that came from the master, which would copy its
//! page), collection back on for the workers (and the master) after that.
//!
//! "Off" is `threshold0 = 0` rather than `gc.disable()`, so that an app
//! that turns the collector off (or retunes it) at import keeps its choice:
//! the threshold is put back only if it is still the 0 set here.

use pyo3::prelude::*;

/// Automatic collection paused for the import: [`Paused::resume`] undoes it.
#[must_use = "resume() puts the collector's threshold back"]
pub struct Paused {
    threshold: (u64, u64, u64),
}

/// Stops automatic collections (threshold0 = 0) until [`Paused::resume`].
pub fn pause(py: Python<'_>) -> PyResult<Paused> {
    let gc = py.import("gc")?;
    let threshold: (u64, u64, u64) = gc.call_method0("get_threshold")?.extract()?;
    gc.call_method1("set_threshold", (0, threshold.1, threshold.2))?;
    Ok(Paused { threshold })
}

impl Paused {
    /// Puts the threshold back, unless the app changed it meanwhile.
    pub fn resume(self, py: Python<'_>) -> PyResult<()> {
        let gc = py.import("gc")?;
        let now: (u64, u64, u64) = gc.call_method0("get_threshold")?.extract()?;
        if now == (0, self.threshold.1, self.threshold.2) {
            gc.call_method1("set_threshold", self.threshold)?;
        }
        Ok(())
    }
}

/// `gc.freeze()`: every object tracked so far moves to the permanent
/// generation, which no collection visits. Returns `gc.get_freeze_count()`.
pub fn freeze(py: Python<'_>) -> PyResult<u64> {
    let gc = py.import("gc")?;
    gc.call_method0("freeze")?;
    gc.call_method0("get_freeze_count")?.extract()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threshold(py: Python<'_>) -> (u64, u64, u64) {
        let gc = py.import("gc").expect("gc");
        let t = gc.call_method0("get_threshold").expect("get_threshold");
        t.extract().expect("3 ints")
    }

    /// One test (the threshold is the process's): the pause sets
    /// threshold0 to 0 and resume puts it back; an app that set its own
    /// threshold meanwhile keeps it.
    #[test]
    fn pause_and_resume_keep_the_apps_choice() {
        Python::initialize();
        Python::attach(|py| {
            let gc = py.import("gc").expect("gc");
            let before = threshold(py);
            let p = pause(py).expect("pause");
            assert_eq!(threshold(py), (0, before.1, before.2));
            p.resume(py).expect("resume");
            assert_eq!(threshold(py), before);

            let p = pause(py).expect("pause");
            gc.call_method1("set_threshold", (1234, 5, 6)).expect("set");
            p.resume(py).expect("resume");
            assert_eq!(threshold(py), (1234, 5, 6));
            gc.call_method1("set_threshold", before).expect("restore");
        });
    }
}
