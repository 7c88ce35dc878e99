//! Folding a dead worker's files into archive files, and `CLEANUP_DB_FILES`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::format::{self, Entry, FileData, FileIdent, FileName, ARCHIVE_PID, TEMP_PREFIX};

/// What to do with a dead pid's `gauge_all_<pid>.db` (mode `all`, and modes
/// prometheus_client does not know, which it treats like `all`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AllMode {
    /// Keep the file, as prometheus_client's `mark_process_dead` does: its
    /// series (labelled `pid="<pid>"`) stay visible, as they would with
    /// prometheus_client alone. One file per dead pid remains
    /// (`keep_dead_worker_gauges`).
    Keep,
    /// Delete it: the dead pid's `all` series disappear (as `liveall` ones
    /// do). The default: they describe nothing alive, and keeping them is
    /// the file and series pile-up of prometheus_client #204/#367/#443.
    #[default]
    Drop,
}

/// What [`compact_dead_with`] did, by file name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Dead files folded into an archive (and deleted).
    pub folded: Vec<String>,
    /// Archive files written.
    pub archives: Vec<String>,
    /// Dead files deleted without folding (`live*` gauges, `all` with
    /// [`AllMode::Drop`]).
    pub dropped: Vec<String>,
    /// Dead files left in place (`all` with [`AllMode::Keep`], unknown types).
    pub kept: Vec<String>,
    /// Files that were damaged: the readable entries were folded.
    pub damaged: Vec<String>,
    /// Leftovers of an interrupted earlier compaction, deleted.
    pub recovered: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fold {
    Sum,
    Min,
    Max,
    MostRecent,
}

enum Plan {
    Archive { target: String, fold: Fold },
    Drop,
    Keep,
}

fn plan(name: &FileName, all: AllMode) -> Plan {
    let archive = |fold| Plan::Archive {
        target: FileName {
            typ: name.typ.clone(),
            mode: name.mode.clone(),
            pid: ARCHIVE_PID.to_string(),
        }
        .file_name(),
        fold,
    };
    match (name.typ.as_str(), name.mode.as_deref()) {
        ("counter" | "histogram" | "summary", _) => archive(Fold::Sum),
        ("gauge", Some("sum")) => archive(Fold::Sum),
        ("gauge", Some("min")) => archive(Fold::Min),
        ("gauge", Some("max")) => archive(Fold::Max),
        ("gauge", Some("mostrecent")) => archive(Fold::MostRecent),
        ("gauge", Some(m)) if m.starts_with("live") => Plan::Drop,
        ("gauge", _) => match all {
            AllMode::Keep => Plan::Keep,
            AllMode::Drop => Plan::Drop,
        },
        _ => Plan::Keep,
    }
}

/// Entries by key, in first-seen order.
struct Folded {
    idx: HashMap<String, usize>,
    entries: Vec<Entry>,
}

impl Folded {
    fn new(base: Vec<Entry>) -> Folded {
        let mut f = Folded {
            idx: HashMap::new(),
            entries: Vec::with_capacity(base.len()),
        };
        for e in base {
            f.add(e, Fold::Sum);
        }
        f
    }

    fn add(&mut self, e: Entry, fold: Fold) {
        let Some(&i) = self.idx.get(&e.key) else {
            self.idx.insert(e.key.clone(), self.entries.len());
            self.entries.push(e);
            return;
        };
        let cur = &mut self.entries[i];
        match fold {
            Fold::Sum => cur.value += e.value,
            Fold::Min => {
                if e.value < cur.value {
                    cur.value = e.value;
                }
            }
            Fold::Max => {
                if e.value > cur.value {
                    cur.value = e.value;
                }
            }
            Fold::MostRecent => {
                if e.timestamp > cur.timestamp {
                    cur.value = e.value;
                    cur.timestamp = e.timestamp;
                }
            }
        }
    }
}

/// [`compact_dead_with`], without the report.
pub fn compact_dead(dir: &Path, pid: u32, all: AllMode) -> Result<(), String> {
    compact_dead_with(dir, pid, all).map(|_| ())
}

/// Folds the files of the dead worker `pid` into the archive files of `dir`
/// and deletes them. Call it once the pid is reaped and before it can be
/// reused. Compactions of one directory take turns ([`lock_dir`]).
///
/// - `counter`, `histogram`, `summary`: values added into
///   `<type>_archive.db`.
/// - gauges `sum`, `min`, `max`, `mostrecent`: folded into
///   `gauge_<mode>_archive.db` by sum, min, max, latest timestamp.
/// - gauges `live*`: deleted (`mark_process_dead`).
/// - gauges `all` and unknown modes: per `all` ([`AllMode`]).
///
/// prometheus_client's `MultiProcessCollector` computes the same values from
/// the directory afterwards (up to float rounding of sums, which are added in
/// another order), and so does [`super::Collector::collect`] with the pid
/// not live.
/// Archives are replaced by rename; each names the files it just absorbed in a
/// trailer past its used size, so a reader racing the compaction, or a
/// compaction interrupted between rename and delete, never counts them twice.
pub fn compact_dead_with(dir: &Path, pid: u32, all: AllMode) -> Result<CompactReport, String> {
    let _turn = lock_dir(dir)?;
    let mut report = CompactReport::default();
    let listed = super::list_db_files(dir)?;

    // Recovery: files an archive says it holds but that still exist.
    let mut folded_before: Vec<FileIdent> = Vec::new();
    for (file_name, name) in &listed {
        if name.pid == ARCHIVE_PID {
            if let Ok(a) = format::read_file_io(&dir.join(file_name), name.clone()) {
                folded_before.extend(a.folded);
            }
        }
    }
    for id in &folded_before {
        let path = dir.join(&id.name);
        let Ok(md) = fs::metadata(&path) else {
            continue;
        };
        if FileIdent::of(&id.name, &md) == *id {
            match fs::remove_file(&path) {
                Ok(()) => report.recovered.push(id.name.clone()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("removing {}: {e}", path.display())),
            }
        }
    }

    let pid_s = pid.to_string();
    // Archive target -> (fold rule, dead files to fold).
    let mut targets: BTreeMap<String, (Fold, Vec<FileData>)> = BTreeMap::new();
    let mut to_drop: Vec<String> = Vec::new();
    for (file_name, name) in listed {
        if name.pid != pid_s || report.recovered.contains(&file_name) {
            continue;
        }
        match plan(&name, all) {
            Plan::Keep => report.kept.push(file_name),
            Plan::Drop => to_drop.push(file_name),
            Plan::Archive { target, fold } => {
                match format::read_file_io(&dir.join(&file_name), name) {
                    Ok(f) => {
                        if f.error.is_some() {
                            report.damaged.push(file_name);
                        }
                        targets
                            .entry(target)
                            .or_insert_with(|| (fold, Vec::new()))
                            .1
                            .push(f);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(format!("reading {}: {e}", dir.join(&file_name).display()))
                    }
                }
            }
        }
    }

    let mut first_err = None;
    for (target, (fold, dead)) in targets {
        let base =
            match FileName::parse(&target).map(|n| format::read_file_io(&dir.join(&target), n)) {
                Some(Ok(a)) => {
                    if a.error.is_some() {
                        report.damaged.push(target.clone());
                    }
                    a.entries
                }
                Some(Err(e)) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Some(Err(e)) => {
                    first_err.get_or_insert(format!("reading {target}: {e}"));
                    continue;
                }
                None => Vec::new(),
            };
        let mut acc = Folded::new(base);
        let mut idents = Vec::with_capacity(dead.len());
        for f in dead {
            for e in f.entries {
                acc.add(e, fold);
            }
            idents.push(f.ident);
        }
        let bytes = match format::encode(&acc.entries, &idents) {
            Ok(b) => b,
            Err(e) => {
                first_err.get_or_insert(format!("{target}: {e}"));
                continue;
            }
        };
        if let Err(e) = format::write_atomic(dir, &target, &bytes) {
            first_err.get_or_insert(e);
            continue;
        }
        report.archives.push(target);
        for id in idents {
            match fs::remove_file(dir.join(&id.name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // The trailer keeps it from being counted twice; the next
                // compaction retries the delete.
                Err(e) => {
                    first_err.get_or_insert(format!("removing {}: {e}", id.name));
                }
            }
            report.folded.push(id.name);
        }
    }
    for file_name in to_drop {
        match fs::remove_file(dir.join(&file_name)) {
            Ok(()) => report.dropped.push(file_name),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                first_err.get_or_insert(format!("removing {file_name}: {e}"));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// How long a compaction waits for another one in the same directory.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Compactions of one directory take turns: archives are read, folded and
/// replaced, so two at once would lose one's fold. Two masters share a
/// directory during a USR2 upgrade (the old one reaps its workers while the
/// new one recycles its own). The turn is an flock(2) on the directory
/// itself, so no lock file is left behind. A holder that does not let go
/// within LOCK_WAIT (a stopped process) makes this compaction fail: the dead
/// worker's files then stay where readers still count them.
fn lock_dir(dir: &Path) -> Result<Flock<fs::File>, String> {
    let mut file = fs::File::open(dir).map_err(|e| format!("opening {}: {e}", dir.display()))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((back, Errno::EWOULDBLOCK | Errno::EINTR)) if Instant::now() < deadline => {
                file = back;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((_, e)) => {
                return Err(format!(
                    "{}: another compaction holds the directory ({e})",
                    dir.display()
                ))
            }
        }
    }
}

/// `CLEANUP_DB_FILES=true`: empties the multiprocess directory at start
/// (creating it when missing). Removes every `*.db` file (prometheus_client's
/// files and archives) and this module's temporary files; leaves anything else
/// (subdirectories, unrelated files) alone. Returns how many files it removed.
pub fn cleanup_dir(dir: &Path) -> Result<usize, String> {
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let rd = fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    let mut removed = 0;
    for ent in rd {
        let Ok(ent) = ent else { continue };
        let Ok(file_name) = ent.file_name().into_string() else {
            continue;
        };
        if !(file_name.ends_with(".db") || file_name.starts_with(TEMP_PREFIX)) {
            continue;
        }
        if ent.file_type().map(|t| t.is_dir()).unwrap_or(true) {
            continue;
        }
        match fs::remove_file(ent.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("removing {}: {e}", ent.path().display())),
        }
    }
    Ok(removed)
}
