//! Tests against prometheus_client itself (skipped when no Python with
//! prometheus_client is found: `$MPFILES_PYTHON`, `./.venv/bin/python`,
//! `/tmp/pc-venv/bin/python`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::compact::{compact_dead_with, AllMode};
use super::*;

const ORACLE: &str = include_str!("testdata/oracle.py");

fn python() -> Option<PathBuf> {
    let mut cands: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("MPFILES_PYTHON") {
        cands.push(p.into());
    }
    cands.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    cands.push("/tmp/pc-venv/bin/python".into());
    cands.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import prometheus_client"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

struct Py {
    exe: PathBuf,
    script: PathBuf,
}

impl Py {
    fn get(tmp: &TempDir) -> Option<Py> {
        let Some(exe) = python() else {
            eprintln!("skipped: no python with prometheus_client");
            return None;
        };
        let script = tmp.0.join("oracle.py");
        fs::write(&script, ORACLE).expect("write oracle");
        Some(Py { exe, script })
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(&self.exe)
            .arg(&self.script)
            .args(args)
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "oracle {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// (merge of the files in name order, collect() in glob order).
    fn collect(&self, dir: &Path) -> (Vec<Family>, Vec<Family>) {
        let out = self.run(&["collect", dir.to_str().expect("path")]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        (families(&v["sorted"]), families(&v["collect"]))
    }
}

fn unhex(v: &serde_json::Value) -> f64 {
    let s = v.as_str().expect("hex");
    let mut b = [0u8; 8];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex digit");
    }
    f64::from_le_bytes(b)
}

fn families(v: &serde_json::Value) -> Vec<Family> {
    let s = |v: &serde_json::Value| v.as_str().expect("string").to_string();
    v.as_array()
        .expect("families")
        .iter()
        .map(|f| Family {
            name: s(&f["name"]),
            help: s(&f["help"]),
            kind: match f["type"].as_str() {
                Some("counter") => Kind::Counter,
                Some("gauge") => Kind::Gauge,
                Some("histogram") => Kind::Histogram,
                Some("summary") => Kind::Summary,
                other => panic!("type {other:?}"),
            },
            samples: f["samples"]
                .as_array()
                .expect("samples")
                .iter()
                .map(|x| RawSample {
                    name: s(&x[0]),
                    labels: x[1]
                        .as_array()
                        .expect("labels")
                        .iter()
                        .map(|p| (s(&p[0]), s(&p[1])))
                        .collect(),
                    value: unhex(&x[2]),
                    timestamp: if x[3].is_null() {
                        None
                    } else {
                        Some(unhex(&x[3]))
                    },
                })
                .collect(),
        })
        .collect()
}

/// Same families and samples, order aside.
fn normalized(fams: &[Family]) -> Vec<Family> {
    let mut out: Vec<Family> = fams
        .iter()
        .map(|f| {
            let mut f = f.clone();
            f.samples.sort_by(|a, b| {
                (&a.name, &a.labels)
                    .cmp(&(&b.name, &b.labels))
                    .then(a.value.total_cmp(&b.value))
            });
            f
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn assert_same(what: &str, got: &[Family], want: &[Family]) {
    if got != want {
        let g = format!("{got:#?}");
        let w = format!("{want:#?}");
        for (i, (a, b)) in g.lines().zip(w.lines()).enumerate() {
            if a != b {
                panic!("{what}: first difference at line {i}:\n got: {a}\nwant: {b}");
            }
        }
        panic!(
            "{what}: differ in length ({} vs {} lines)",
            g.lines().count(),
            w.lines().count()
        );
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "mpfiles-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let p = PathBuf::from(p.to_string_lossy().replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '/' && c != '-',
            "",
        ));
        fs::create_dir_all(p.join("mp")).expect("mkdir");
        TempDir(p)
    }
    fn mp(&self) -> PathBuf {
        self.0.join("mp")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn all_live(_: u32) -> bool {
    true
}

fn db_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("ls")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    v.sort();
    v
}

#[test]
fn merge_equals_prometheus_client() {
    let tmp = TempDir::new("merge");
    let Some(py) = Py::get(&tmp) else { return };
    let mp = tmp.mp();
    let dir = mp.to_str().expect("path");
    py.run(&["gen", dir, "101", "102", "103"]);
    let (sorted, globbed) = py.collect(&mp);
    let ours = collect(&mp, &all_live);
    assert!(ours.len() >= 15, "{} families", ours.len());
    // Same file order: identical, order included.
    assert_same("merge(sorted files)", &ours, &sorted);
    // collect() (glob order): same set.
    assert_same("collect()", &normalized(&ours), &normalized(&globbed));
    // A kept collector gives the same again.
    let mut c = Collector::new();
    assert_same("collector 1", &c.collect(&mp, &all_live), &sorted);
    assert_same("collector 2", &c.collect(&mp, &all_live), &sorted);

    // live* modes: a dead pid filtered here == prometheus_client after
    // mark_process_dead.
    let ours = collect(&mp, &|p| p != 102);
    py.run(&["mark_dead", dir, "102"]);
    let (sorted, _) = py.collect(&mp);
    assert_same("live filter", &ours, &sorted);
}

#[test]
fn compaction_keeps_totals() {
    let tmp = TempDir::new("compact");
    let Some(py) = Py::get(&tmp) else { return };
    let mp = tmp.mp();
    let dir = mp.to_str().expect("path");
    py.run(&["gen", dir, "201", "202", "203", "204"]);

    // Worker 203 dies: what prometheus_client shows once it is marked dead.
    py.run(&["mark_dead", dir, "203"]);
    let (_, before) = py.collect(&mp);
    let live = |p: u32| p != 203;
    assert_same(
        "rust before",
        &normalized(&collect(&mp, &live)),
        &normalized(&before),
    );
    // Keep a hard link to a dead file, to replay an interrupted compaction.
    fs::hard_link(mp.join("counter_203.db"), tmp.0.join("counter_203.keep")).expect("link");

    let rep = compact_dead_with(&mp, 203, AllMode::Keep).expect("compact");
    assert_eq!(rep.kept, vec!["gauge_all_203.db".to_string()]);
    assert!(rep.archives.contains(&"counter_archive.db".to_string()));
    assert!(rep
        .archives
        .contains(&"gauge_mostrecent_archive.db".to_string()));
    let left: Vec<String> = db_files(&mp)
        .into_iter()
        .filter(|f| f.contains("_203"))
        .collect();
    assert_eq!(left, vec!["gauge_all_203.db".to_string()]);
    let (sorted, after) = py.collect(&mp);
    assert_same(
        "python after compaction",
        &normalized(&after),
        &normalized(&before),
    );
    assert_same("rust after compaction", &collect(&mp, &live), &sorted);

    // A second compaction of the same pid changes nothing.
    compact_dead(&mp, 203, AllMode::Keep).expect("again");
    let (_, again) = py.collect(&mp);
    assert_same("idempotent", &normalized(&again), &normalized(&before));

    // 201 dies too, its `all` gauges dropped this time.
    py.run(&["mark_dead", dir, "201"]);
    let (_, before) = py.collect(&mp);

    // Interrupted compaction: the dead file reappears (same inode); the
    // archive's trailer keeps it from being counted twice by us, and the next
    // compaction deletes it.
    fs::hard_link(tmp.0.join("counter_203.keep"), mp.join("counter_203.db")).expect("relink");
    let live201 = |p: u32| p != 203 && p != 201;
    assert_same(
        "rust, leftover",
        &normalized(&collect(&mp, &live201)),
        &normalized(&before),
    );
    let rep = compact_dead_with(&mp, 201, AllMode::Drop).expect("compact 201");
    assert_eq!(rep.recovered, vec!["counter_203.db".to_string()]);
    assert!(rep.dropped.contains(&"gauge_all_201.db".to_string()));
    assert!(db_files(&mp).iter().all(|f| !f.contains("_201")));
    let (sorted, after) = py.collect(&mp);
    let without_201_all: Vec<Family> = before
        .iter()
        .map(|f| {
            let mut f = f.clone();
            f.samples
                .retain(|s| !s.labels.contains(&("pid".to_string(), "201".to_string())));
            f
        })
        .collect();
    assert_same(
        "python after drop",
        &normalized(&after),
        &normalized(&without_201_all),
    );
    let live = |p: u32| p != 203 && p != 201;
    assert_same("rust after drop", &collect(&mp, &live), &sorted);
    // One archive per type and mode, whatever the number of dead workers.
    let archives: Vec<String> = db_files(&mp)
        .into_iter()
        .filter(|f| f.contains("archive"))
        .collect();
    assert_eq!(
        archives,
        [
            "counter_archive.db",
            "gauge_max_archive.db",
            "gauge_min_archive.db",
            "gauge_mostrecent_archive.db",
            "gauge_sum_archive.db",
            "histogram_archive.db",
            "summary_archive.db"
        ]
    );
    // No temporary files left.
    assert!(db_files(&mp).iter().all(|f| !f.starts_with('.')));

    let n = db_files(&mp).len();
    fs::write(mp.join("notes.txt"), b"not ours").expect("write");
    assert_eq!(cleanup_dir(&mp).expect("cleanup"), n);
    assert_eq!(db_files(&mp), vec!["notes.txt".to_string()]);
    fs::remove_file(mp.join("notes.txt")).expect("rm");
    assert!(db_files(&mp).is_empty());
    assert!(collect(&mp, &all_live).is_empty());
}

#[test]
fn damaged_files() {
    let tmp = TempDir::new("damaged");
    let Some(py) = Py::get(&tmp) else { return };
    let mp = tmp.mp();
    let dir = mp.to_str().expect("path");
    py.run(&["gen", dir, "301"]);
    let good = fs::read(mp.join("counter_301.db")).expect("read");
    let used = i32::from_ne_bytes([good[0], good[1], good[2], good[3]]) as usize;
    let whole = read_dir(&mp).expect("read_dir");
    let n = whole
        .iter()
        .find(|f| f.name.typ == "counter")
        .map(|f| f.entries.len())
        .expect("counter file");
    assert!(n >= 3);
    // Every truncation: no panic, a prefix of the entries, flagged when cut
    // inside the used part.
    for cut in 0..used + 8 {
        fs::write(mp.join("counter_301.db"), &good[..cut]).expect("write");
        let files = read_dir(&mp).expect("read_dir");
        let f = files
            .iter()
            .find(|f| f.name.typ == "counter")
            .expect("counter");
        assert!(f.entries.len() <= n);
        if cut >= 4 && cut < used {
            assert!(f.error.is_some(), "cut at {cut} not flagged");
        }
        if cut >= used {
            assert!(f.error.is_none() && f.entries.len() == n);
        }
        let _ = collect(&mp, &all_live);
    }
    // Junk, odd names, a directory named like a file.
    fs::write(mp.join("counter_302.db"), [0xffu8; 100]).expect("junk");
    fs::write(mp.join("summary_303.db"), b"").expect("empty");
    fs::write(mp.join("unknown_304.db"), &good).expect("unknown type");
    fs::write(mp.join("gauge_all.db"), &good).expect("bad gauge name");
    fs::create_dir(mp.join("histogram_305.db")).expect("dir");
    let mut bad_key = good.clone();
    bad_key[12] = b'{';
    fs::write(mp.join("counter_306.db"), &bad_key).expect("bad key");
    let files = read_dir(&mp).expect("read_dir");
    assert!(files
        .iter()
        .any(|f| f.path.ends_with("counter_302.db") && f.error.is_some()));
    let fams = collect(&mp, &all_live);
    assert!(fams.iter().any(|f| f.name == "app_requests"));
    // Compaction of damaged files folds what is readable, and removes them.
    let rep = compact_dead_with(&mp, 302, AllMode::Keep).expect("compact damaged");
    assert_eq!(rep.damaged, vec!["counter_302.db".to_string()]);
    assert!(!mp.join("counter_302.db").exists());
}

#[test]
fn reads_while_a_worker_appends() {
    let tmp = TempDir::new("append");
    let Some(py) = Py::get(&tmp) else { return };
    let mp = tmp.mp();
    let n = 4000usize;
    let mut child = Command::new(&py.exe)
        .arg(&py.script)
        .args(["writer", mp.to_str().expect("path"), "401", &n.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn writer");
    let mut reads = 0;
    let mut last = 0;
    loop {
        let done = child.try_wait().expect("wait").is_some();
        let files = read_dir(&mp).expect("read_dir");
        if let Some(f) = files.first() {
            assert!(f.error.is_none(), "{:?}", f.error);
            assert!(f.entries.len() >= last, "entries went backwards");
            last = f.entries.len();
            for (i, e) in f.entries.iter().enumerate() {
                // Series i is written once with value i (an entry is added
                // with 0 first, then set).
                assert!(
                    e.value == 0.0 || e.value == i as f64,
                    "entry {i}: {}",
                    e.value
                );
                assert!(e.key.contains(&format!("label-value-{i:06}")));
            }
            reads += 1;
        }
        if done {
            break;
        }
    }
    assert_eq!(last, n);
    assert!(fs::metadata(mp.join("counter_401.db")).expect("md").len() > 65536);
    eprintln!("{reads} reads while appending");
}

#[test]
fn collect_speed() {
    let tmp = TempDir::new("speed");
    let Some(py) = Py::get(&tmp) else { return };
    let mp = tmp.mp();
    for pid in 1..=8 {
        py.run(&[
            "series",
            mp.to_str().expect("path"),
            &(1000 + pid).to_string(),
            "500",
        ]);
    }
    let files = read_dir(&mp).expect("read_dir");
    let series: usize = files.iter().map(|f| f.entries.len()).sum();
    assert!(series >= 8 * 500, "{series}");
    let mut c = Collector::new();
    let mut times = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let fams = c.collect(&mp, &all_live);
        times.push(t.elapsed());
        assert_eq!(fams.len(), 3);
    }
    times.sort();
    let t = Instant::now();
    let _ = collect(&mp, &all_live);
    let cold = t.elapsed();
    let t = Instant::now();
    let _ = read_dir(&mp);
    let read = t.elapsed();
    eprintln!(
        "collect over {} files, {series} entries: median {:?} (kept cache), {:?} (cold), read_dir alone {:?}",
        files.len(),
        times[times.len() / 2],
        cold,
        read
    );
}

/// Two masters compact into one directory during a USR2 upgrade: each
/// compaction must see the other's archive, or a fold is lost.
#[test]
fn concurrent_compactions_take_turns() {
    let tmp = TempDir::new("turns");
    let mp = tmp.mp();
    let key = r#"["jobs", "jobs_total", {}, "Jobs"]"#;
    let pids: Vec<u32> = (1000..1120).collect();
    for pid in &pids {
        let entry = format::Entry {
            key: key.to_string(),
            value: 1.0,
            timestamp: 0.0,
        };
        let bytes = format::encode(&[entry], &[]).expect("encode");
        fs::write(mp.join(format!("counter_{pid}.db")), bytes).expect("write");
    }
    let (even, odd): (Vec<u32>, Vec<u32>) = pids.iter().partition(|p| *p % 2 == 0);
    std::thread::scope(|s| {
        for half in [&even, &odd] {
            let mp = &mp;
            s.spawn(move || {
                for pid in half {
                    compact_dead(mp, *pid, AllMode::Keep).expect("compact");
                }
            });
        }
    });
    assert_eq!(db_files(&mp), vec!["counter_archive.db".to_string()]);
    let name = format::FileName::parse("counter_archive.db").expect("name");
    let archive = format::read_file_io(&mp.join("counter_archive.db"), name).expect("read");
    let sum: f64 = archive.entries.iter().map(|e| e.value).sum();
    assert_eq!(sum, pids.len() as f64);
}
