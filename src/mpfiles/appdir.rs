//! The prometheus_client multiprocess directory of the run
//! (`PROMETHEUS_MULTIPROC_DIR`): the user's, or a private one on tmpfs that
//! ferrocorn creates and removes (docs/architecture.md, Metrics from the application).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use pyo3::prelude::*;

/// Tells a master started by USR2 that the directory in
/// PROMETHEUS_MULTIPROC_DIR is ferrocorn's private one, which it now owns.
const OWNED_VAR: &str = "FERROCORN_OWNED_MULTIPROC_DIR";

/// In a private directory: the file its masters hold a shared flock(2) on
/// while they run (workers inherit the descriptor). A later start that can
/// lock it exclusively knows the run is over, SIGKILL or not.
const OWNER_LOCK: &str = ".owner.lock";

/// A private directory younger than this is never swept (its master may be
/// between mkdir and taking the lock).
const SWEEP_MIN_AGE: Duration = Duration::from_secs(60);

pub struct AppDir {
    pub path: PathBuf,
    /// Created by ferrocorn for this run: removed at exit.
    pub owned: bool,
    /// The shared lock on [`OWNER_LOCK`] (private directories only).
    _owner_lock: Option<Flock<File>>,
    /// Dead workers' `all`-mode gauges: dropped at reap unless
    /// `keep_dead_worker_gauges`.
    pub all_mode: super::AllMode,
}

/// Chooses (and creates) the directory and points PROMETHEUS_MULTIPROC_DIR
/// at it for the app, before the app or prometheus_client is imported.
/// `user`: the `prometheus_multiproc_dir` setting. `owner`: uid/gid the
/// workers run as (the directory must be theirs to write).
pub fn prepare(
    py: Python<'_>,
    user: Option<&str>,
    cleanup: bool,
    owner: Option<(u32, u32)>,
) -> Result<AppDir, String> {
    let inherited = std::env::var_os(OWNED_VAR).map(PathBuf::from);
    let (path, owned) = match user {
        Some(dir) => {
            let path = PathBuf::from(dir);
            let owned = inherited.as_deref() == Some(path.as_path());
            std::fs::create_dir_all(&path).map_err(|e| {
                format!(
                    "cannot create PROMETHEUS_MULTIPROC_DIR {}: {e}",
                    path.display()
                )
            })?;
            (path, owned)
        }
        None => {
            sweep_stale(&private_base());
            (private_dir()?, true)
        }
    };
    let owner_lock = if owned {
        Some(hold_owner_lock(&path)?)
    } else {
        None
    };
    if cleanup {
        let n = super::cleanup_dir(&path)?;
        crate::log_debug!(
            "CLEANUP_DB_FILES: removed {n} files from {}",
            path.display()
        );
    }
    if let Some((uid, gid)) = owner {
        nix::unistd::chown(
            &path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(|e| format!("cannot chown {}: {e}", path.display()))?;
    }
    let text = path.to_string_lossy().into_owned();
    let set = |k: &str, v: &str| {
        crate::python::set_environ(py, k, v).map_err(|e| format!("cannot set {k}: {e}"))
    };
    set("PROMETHEUS_MULTIPROC_DIR", &text)?;
    if owned {
        set(OWNED_VAR, &text)?;
    }
    Ok(AppDir {
        path,
        owned,
        _owner_lock: owner_lock,
        all_mode: super::AllMode::default(),
    })
}

/// Where private directories go: tmpfs when the machine has /dev/shm.
fn private_base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Takes the shared owner lock of a private directory, for this master's
/// lifetime (a USR2 master takes it too, next to the old one).
fn hold_owner_lock(dir: &Path) -> Result<Flock<File>, String> {
    let path = dir.join(OWNER_LOCK);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    Flock::lock(file, FlockArg::LockSharedNonblock)
        .map_err(|(_, e)| format!("cannot lock {}: {e}", path.display()))
}

/// Removes private directories of earlier runs that could not clean up (a
/// master killed with SIGKILL or by the OOM killer): tmpfs is memory, and
/// they would pile up across restarts. A directory goes when nobody holds its
/// owner lock any more; one of an older ferrocorn (no lock file) goes when
/// its master's pid is gone. Anything unclear is left alone.
fn sweep_stale(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    for ent in rd.flatten() {
        let name = ent.file_name();
        let Some(pid) = name.to_str().and_then(private_dir_pid) else {
            continue;
        };
        let path = ent.path();
        let Ok(md) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let old_enough = md
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= SWEEP_MIN_AGE);
        if !md.is_dir() || !old_enough {
            continue;
        }
        // Held until the directory is gone, so no other start races us.
        let lock = match File::open(path.join(OWNER_LOCK)) {
            Ok(f) => match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(l) => Some(l),
                Err(_) => continue,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                    == Err(nix::errno::Errno::ESRCH);
                if !gone {
                    continue;
                }
                None
            }
            Err(_) => continue,
        };
        match std::fs::remove_dir_all(&path) {
            Ok(()) => crate::log_info!(
                "Removed {}: metrics directory of an earlier run that did not clean up",
                path.display()
            ),
            Err(e) => crate::log_debug!("cannot remove stale {}: {e}", path.display()),
        }
        drop(lock);
    }
}

/// The master pid in a private directory's name, `ferrocorn-<pid>-<n>`.
fn private_dir_pid(name: &str) -> Option<i32> {
    let (pid, n) = name.strip_prefix("ferrocorn-")?.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse::<i32>().ok().filter(|p| *p > 0)
}

/// A fresh private directory under [`private_base`].
fn private_dir() -> Result<PathBuf, String> {
    let base = private_base();
    let pid = std::process::id();
    for n in 0..100u32 {
        let p = base.join(format!("ferrocorn-{pid}-{n}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot create {}: {e}", p.display())),
        }
    }
    Err(format!(
        "cannot create a metrics directory in {}",
        base.display()
    ))
}

use std::os::unix::fs::DirBuilderExt;

impl AppDir {
    /// Folds a reaped worker's files into the archives (master).
    pub fn compact(&self, pid: u32) {
        if let Err(e) = super::compact_dead(&self.path, pid, self.all_mode) {
            crate::log_error!("compacting the metrics files of worker {pid}: {e}");
        }
    }

    /// What a new master started by USR2 needs in its environment to take
    /// the private directory over (nothing for the user's own directory:
    /// the new master finds that where this one did).
    pub fn handover_env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        if !self.owned {
            return Vec::new();
        }
        let path = self.path.as_os_str().to_os_string();
        vec![
            ("PROMETHEUS_MULTIPROC_DIR", path.clone()),
            (OWNED_VAR, path),
        ]
    }

    /// Removes the private directory at exit.
    pub fn remove(&self) {
        if self.owned {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    crate::log_error!("removing {}: {e}", self.path.display());
                }
            }
        }
    }
}
