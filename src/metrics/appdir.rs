//! The prometheus_client multiprocess directory of the run
//! (`PROMETHEUS_MULTIPROC_DIR`): the user's, or a private one on tmpfs that
//! ferrocorn creates and removes (DESIGN.md, Metrics from the application).

use std::path::{Path, PathBuf};

use pyo3::prelude::*;

/// Tells a master started by USR2 that the directory in
/// PROMETHEUS_MULTIPROC_DIR is ferrocorn's private one, which it now owns.
const OWNED_VAR: &str = "FERROCORN_OWNED_MULTIPROC_DIR";

pub struct AppDir {
    pub path: PathBuf,
    /// Created by ferrocorn for this run: removed at exit.
    pub owned: bool,
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
        None => (private_dir()?, true),
    };
    if cleanup {
        let n = crate::mpfiles::cleanup_dir(&path)?;
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
    Ok(AppDir { path, owned })
}

/// A fresh private directory, on tmpfs when the machine has /dev/shm.
fn private_dir() -> Result<PathBuf, String> {
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
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
        if let Err(e) = crate::mpfiles::compact_dead(&self.path, pid) {
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
