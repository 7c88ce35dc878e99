//! Native reader, merger and compactor for prometheus_client's multiprocess
//! `.db` files (`PROMETHEUS_MULTIPROC_DIR`), matching prometheus_client 0.26.0,
//! and the directory that holds them.
//!
//! - [`appdir`]: the run's directory (the user's, or a private one that
//!   ferrocorn creates, hands over on USR2 and removes); the master compacts
//!   a reaped worker's files through it.
//! - [`floor`]: keeps the application's counters from going backwards by a
//!   rounding step when files are compacted (the exporter applies it).
//! - [`read_dir`]: every `*.db` file of a directory, parsed (robust to files
//!   being appended to, truncated or corrupt).
//! - [`collect`] / [`Collector::collect`]: exactly what
//!   `MultiProcessCollector(registry, path).collect()` yields, with `live*`
//!   gauge files of dead pids left out.
//! - [`compact_dead`]: folds a dead worker's files into archive files in the
//!   same format (`counter_archive.db`, `gauge_max_archive.db`, ...) and
//!   removes them; prometheus_client reading the directory computes the same
//!   values as before.
//! - [`cleanup_dir`]: `CLEANUP_DB_FILES=true`, empty the directory at start.

pub mod appdir;
mod compact;
pub mod floor;
mod format;
mod merge;

use std::collections::HashSet;
use std::io;
use std::path::Path;

pub use compact::{cleanup_dir, compact_dead, AllMode};
#[cfg(test)]
pub use format::FileData;
pub use format::FileName;
pub use merge::KeyCache;

/// Metric type of a family: the metrics data model's, so that app families
/// need no conversion of their type.
pub use crate::metrics::model::Kind;

/// One metric family as prometheus_client's files hold it (sample names
/// with their suffixes); the exporter turns it into a
/// `crate::metrics::model::Family`.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub kind: Kind,
    pub samples: Vec<RawSample>,
}

/// One sample of a family.
#[derive(Debug, Clone, PartialEq)]
pub struct RawSample {
    /// Full sample name, e.g. `x_total`, `x_bucket`.
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
    pub timestamp: Option<f64>,
}

/// How often a directory listing is re-read when a listed file vanished while
/// reading it (a compaction or `mark_process_dead` ran meanwhile).
const READ_ATTEMPTS: usize = 3;

/// Reads every `*.db` file of `dir` (the files prometheus_client's collector
/// globs), sorted by file name.
///
/// A file being appended to by a live worker is read up to its used-size
/// header. A truncated or corrupt file yields the entries before the damage and
/// sets [`FileData::error`]; a file that is not a `.db` file of a known shape
/// is skipped. The view is consistent with compaction: a file that an archive
/// says it already holds is left out, and when a listed file vanishes while
/// being read the directory is read again (a few times at most).
#[cfg(test)]
pub fn read_dir(dir: &Path) -> Result<Vec<FileData>, String> {
    let mut last = Vec::new();
    for _ in 0..READ_ATTEMPTS {
        let (files, vanished) = read_dir_once(dir)?;
        last = files;
        if !vanished {
            break;
        }
    }
    Ok(last)
}

/// The `.db` files of `dir` that have a known shape, sorted by name.
pub(crate) fn list_db_files(dir: &Path) -> Result<Vec<(String, FileName)>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    let mut names = Vec::new();
    for ent in rd {
        let Ok(ent) = ent else { continue };
        let Ok(file_name) = ent.file_name().into_string() else {
            continue;
        };
        if let Some(name) = FileName::parse(&file_name) {
            names.push((file_name, name));
        }
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(names)
}

#[cfg(test)]
fn read_dir_once(dir: &Path) -> Result<(Vec<FileData>, bool), String> {
    let names = list_db_files(dir)?;
    let mut files = Vec::with_capacity(names.len());
    let mut vanished = false;
    for (file_name, name) in names {
        match format::read_file_io(&dir.join(&file_name), name) {
            Ok(f) => files.push(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => vanished = true,
            Err(_) => {}
        }
    }
    // Files an archive already holds (the short window of a compaction
    // between renaming the archive and deleting them, or a crash inside it).
    let folded: HashSet<format::FileIdent> = files
        .iter()
        .flat_map(|f| f.folded.iter().cloned())
        .collect();
    if !folded.is_empty() {
        files.retain(|f| !folded.contains(&f.ident));
    }
    Ok((files, vanished))
}

/// Whether prometheus_client would show this file: a `live*` gauge file of a
/// pid that is not alive is left out (prometheus_client relies on
/// `mark_process_dead` deleting it; this does not need it).
fn shown_name(name: &FileName, live_pids: &dyn Fn(u32) -> bool) -> bool {
    if name.typ == "gauge" && name.mode.as_deref().is_some_and(|m| m.starts_with("live")) {
        if let Some(pid) = name.pid_u32() {
            return live_pids(pid);
        }
    }
    true
}

/// A collector that keeps parsed keys between scrapes.
#[derive(Default)]
pub struct Collector {
    cache: KeyCache,
}

impl Collector {
    pub fn new() -> Collector {
        Collector::default()
    }

    /// What `MultiProcessCollector(registry, dir).collect()` yields (files
    /// taken in name order), with `live*` gauges limited to `live_pids`.
    /// An unreadable directory yields no families.
    ///
    /// The same view of the directory as [`read_dir`], without copying
    /// the keys out of the bytes read (they are looked up in the key cache
    /// where they lie).
    pub fn collect(&mut self, dir: &Path, live_pids: &dyn Fn(u32) -> bool) -> Vec<Family> {
        let mut raws = Vec::new();
        for _ in 0..READ_ATTEMPTS {
            match read_raw_dir_once(dir) {
                Ok((r, vanished)) => {
                    raws = r;
                    if !vanished {
                        break;
                    }
                }
                Err(_) => return Vec::new(),
            }
        }
        let files: Vec<merge::MergeFile<'_>> = raws
            .iter()
            .filter(|(_, name, _)| shown_name(name, live_pids))
            .map(|(file_name, name, raw)| merge::MergeFile {
                name,
                file_name,
                entries: format::parse_entries_ref(&raw.data).0,
            })
            .collect();
        merge::merge_entries(&files, &mut self.cache)
    }
}

/// [`read_dir_once`] without parsing: (file name, parsed name, bytes).
#[allow(clippy::type_complexity)]
fn read_raw_dir_once(
    dir: &Path,
) -> Result<(Vec<(String, FileName, format::RawFile)>, bool), String> {
    let names = list_db_files(dir)?;
    let mut files = Vec::with_capacity(names.len());
    let mut vanished = false;
    for (file_name, name) in names {
        match format::read_raw(&dir.join(&file_name), &name) {
            Ok(raw) => files.push((file_name, name, raw)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => vanished = true,
            Err(_) => {}
        }
    }
    let folded: HashSet<format::FileIdent> = files
        .iter()
        .flat_map(|(_, _, r)| r.folded.iter().cloned())
        .collect();
    if !folded.is_empty() {
        files.retain(|(_, _, r)| !folded.contains(&r.ident));
    }
    Ok((files, vanished))
}

/// [`Collector::collect`] without a key cache kept between calls (the tests
/// compare it with prometheus_client; the exporter keeps a [`Collector`]).
#[cfg(test)]
pub fn collect(dir: &Path, live_pids: &dyn Fn(u32) -> bool) -> Vec<Family> {
    Collector::new().collect(dir, live_pids)
}

#[cfg(test)]
mod tests;
