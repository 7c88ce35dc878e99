//! The pid file, as gunicorn's `gunicorn.pidfile.Pidfile`.
//!
//! - [`Pidfile::create`] refuses to start while the file names a live
//!   process other than us, then writes `"<pid>\n"` to a temporary file in
//!   the same directory and renames it over the path (readers never see a
//!   partial file); the file ends up `-rw-r--r--` (gunicorn chmods to 0o644
//!   explicitly, so the umask does not matter).
//! - [`Pidfile::rename`] moves it (a re-exec'd master writes `<pidfile>.2`
//!   and takes over `<pidfile>` once the old master is gone).
//! - [`Pidfile::unlink`] removes the file only if it still holds our pid.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// A pid file at a fixed path, and the pid we wrote there.
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
    pid: Option<i32>,
}

impl Pidfile {
    /// A pid file at `path`; nothing is touched until [`Pidfile::create`].
    pub fn new(path: impl Into<PathBuf>) -> Pidfile {
        Pidfile {
            path: path.into(),
            pid: None,
        }
    }

    /// The path of the pid file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pid written by the last successful [`Pidfile::create`].
    #[cfg(test)]
    pub fn pid(&self) -> Option<i32> {
        self.pid
    }

    /// Write `pid` into the file.
    ///
    /// Fails with gunicorn's message `Already running on PID <n> (or pid file
    /// '<path>' is stale)` when the file names a live process other than the
    /// calling one (a process we may not signal counts as live); a file
    /// naming a dead process, or without a number, is replaced. When it names
    /// the calling process already it is left as it is (gunicorn does the
    /// same; unlike gunicorn we still remember `pid`, so [`Pidfile::unlink`]
    /// removes it at exit).
    pub fn create(&mut self, pid: i32) -> Result<(), String> {
        if let Some(old) = self.validate()? {
            if old == std::process::id() as i32 {
                self.pid = Some(pid);
                return Ok(());
            }
            return Err(format!(
                "Already running on PID {old} (or pid file '{}' is stale)",
                self.path.display()
            ));
        }
        if self.path.as_os_str().is_empty() {
            return Err("empty pid file path".to_string());
        }
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(format!(
                "{} doesn't exist. Can't create pidfile.",
                dir.display()
            ));
        }
        // mkstemp: O_CREAT|O_EXCL, mode 0600, O_CLOEXEC; in the same
        // directory so that rename() is atomic.
        let (fd, tmp) = nix::unistd::mkstemp(&dir.join("tmpXXXXXX")).map_err(|e| {
            format!(
                "cannot create a temporary pid file in {}: {e}",
                dir.display()
            )
        })?;
        let mut f = File::from(fd);
        let written = f
            .write_all(format!("{pid}\n").as_bytes())
            // set permissions to -rw-r--r-- (gunicorn: os.chmod(fname, 420)),
            // before the rename so the file never shows up with 0600.
            .and_then(|()| f.set_permissions(std::fs::Permissions::from_mode(0o644)))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!(
                "cannot write pid file {}: {e}",
                self.path.display()
            ));
        }
        self.pid = Some(pid);
        Ok(())
    }

    /// Move the pid file to `path`: unlink the current one (if it still
    /// holds our pid), then [`Pidfile::create`] at the new path with the
    /// same pid.
    pub fn rename(&mut self, path: impl Into<PathBuf>) -> Result<(), String> {
        let path = path.into();
        let Some(pid) = self.pid else {
            return Err(format!(
                "cannot move pid file {} to {}: it was never created",
                self.path.display(),
                path.display()
            ));
        };
        self.unlink();
        self.path = path;
        self.create(pid)
    }

    /// Delete the file if it still contains our pid; every error is ignored
    /// (gunicorn too), so another process's pid file is never removed.
    pub fn unlink(&self) {
        let Some(pid) = self.pid else { return };
        let mut s = String::new();
        if File::open(&self.path)
            .and_then(|mut f| f.read_to_string(&mut s))
            .is_err()
        {
            return;
        }
        // gunicorn: int(f.read() or 0)
        let found = if s.is_empty() { Some(0) } else { parse_pid(&s) };
        if found == Some(pid) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// The pid in the file if that process is alive (or exists but we may
    /// not signal it); None when the file is missing, holds no valid pid, or
    /// names a dead process. Errors other than a missing file are reported
    /// (gunicorn raises them).
    pub fn validate(&self) -> Result<Option<i32>, String> {
        if self.path.as_os_str().is_empty() {
            return Ok(None);
        }
        let mut s = String::new();
        match File::open(&self.path).and_then(|mut f| f.read_to_string(&mut s)) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == ErrorKind::InvalidData => return Ok(None),
            Err(e) => return Err(format!("cannot read pid file {}: {e}", self.path.display())),
        }
        let Some(wpid) = parse_pid(&s) else {
            return Ok(None);
        };
        match kill(Pid::from_raw(wpid), None) {
            Ok(()) | Err(Errno::EPERM) => Ok(Some(wpid)),
            Err(Errno::ESRCH) => Ok(None),
            Err(e) => Err(format!(
                "cannot check pid {wpid} from pid file {}: {e}",
                self.path.display()
            )),
        }
    }
}

/// Python's `int(text)` for what a pid file can hold: surrounding
/// whitespace, an optional sign, digits with single underscores between
/// them. Only positive values that fit a pid are pids: kill(0 or -n, 0)
/// would probe process groups, not a process.
fn parse_pid(text: &str) -> Option<i32> {
    let t = text.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    if t.is_empty() || t.starts_with('_') || t.ends_with('_') || t.contains("__") {
        return None;
    }
    let digits: String = t.chars().filter(|&c| c != '_').collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match digits.parse::<i32>() {
        Ok(n) if n > 0 => Some(n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "fc-pidfile-{tag}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn parse() {
        assert_eq!(parse_pid("123\n"), Some(123));
        assert_eq!(parse_pid("  +1_000 "), Some(1000));
        assert_eq!(parse_pid("0"), None);
        assert_eq!(parse_pid("-5"), None);
        assert_eq!(parse_pid("abc"), None);
        assert_eq!(parse_pid(""), None);
        assert_eq!(parse_pid("1__0"), None);
        assert_eq!(parse_pid("99999999999"), None);
    }

    #[test]
    fn create_write_mode_unlink() {
        let d = tmpdir("basic");
        let p = d.join("app.pid");
        let mut pf = Pidfile::new(&p);
        let me = std::process::id() as i32;
        assert_eq!(pf.pid(), None);
        pf.create(me).expect("create");
        assert_eq!(pf.pid(), Some(me));
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            format!("{me}\n")
        );
        assert_eq!(std::fs::metadata(&p).expect("stat").mode() & 0o777, 0o644);
        // Only the pid file is left: the temporary was renamed.
        assert_eq!(std::fs::read_dir(&d).expect("ls").count(), 1);
        assert_eq!(pf.validate().expect("validate"), Some(me));
        // Our own pid in the file: create again is fine.
        pf.create(me).expect("create twice");
        pf.unlink();
        assert!(!p.exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn missing_directory() {
        let mut pf = Pidfile::new("/nonexistent-dir-fc/x.pid");
        let e = pf.create(1234).expect_err("must fail");
        assert_eq!(
            e,
            "/nonexistent-dir-fc doesn't exist. Can't create pidfile."
        );
    }

    #[test]
    fn live_and_stale() {
        let d = tmpdir("live");
        let p = d.join("app.pid");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let cpid = child.id() as i32;
        std::fs::write(&p, format!("{cpid}\n")).expect("write");
        let mut pf = Pidfile::new(&p);
        assert_eq!(pf.validate().expect("validate"), Some(cpid));
        let e = pf.create(std::process::id() as i32).expect_err("live pid");
        assert_eq!(
            e,
            format!(
                "Already running on PID {cpid} (or pid file '{}' is stale)",
                p.display()
            )
        );
        // The file was left alone.
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            format!("{cpid}\n")
        );
        // unlink never removes a file that holds another pid.
        pf.unlink();
        assert!(p.exists());

        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(pf.validate().expect("validate"), None);
        let me = std::process::id() as i32;
        pf.create(me).expect("stale pid file is replaced");
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            format!("{me}\n")
        );

        // Garbage content is not a pid: replaced too.
        std::fs::write(&p, "not a pid").expect("write");
        let mut pf2 = Pidfile::new(&p);
        pf2.create(me).expect("garbage replaced");

        // A pid we may not signal still counts as live (EPERM): pid 1 when
        // not root is such a case; as root, pid 1 is simply alive.
        std::fs::write(&p, "1\n").expect("write");
        assert_eq!(Pidfile::new(&p).validate().expect("validate"), Some(1));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn rename_for_reexec() {
        let d = tmpdir("rename");
        let main = d.join("app.pid");
        let second = d.join("app.pid.2");
        let me = std::process::id() as i32;
        // The new master writes <pidfile>.2 ...
        let mut pf = Pidfile::new(&second);
        pf.create(me).expect("create .2");
        // ... and takes over <pidfile> once the old master is gone, whose
        // pid file was left behind naming a dead process.
        let mut dead = std::process::Command::new("true").spawn().expect("spawn");
        let dead_pid = dead.id();
        let _ = dead.wait();
        std::fs::write(&main, format!("{dead_pid}\n")).expect("write");
        pf.rename(&main).expect("rename");
        assert!(!second.exists());
        assert_eq!(
            std::fs::read_to_string(&main).expect("read"),
            format!("{me}\n")
        );
        assert_eq!(pf.path(), main.as_path());
        pf.unlink();
        assert!(!main.exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn unreadable_is_an_error() {
        // A directory in place of the pid file: reading fails, not ENOENT.
        let d = tmpdir("dir");
        let e = Pidfile::new(&d).validate().expect_err("must fail");
        assert!(e.contains(&d.display().to_string()), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
