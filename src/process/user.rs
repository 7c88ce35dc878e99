//! Dropping privileges, as gunicorn's `util.set_owner_process`, `util.chown`
//! and the umask handling around them. Names are resolved by the config;
//! these take numeric ids.

use std::ffi::CString;
use std::path::Path;

use nix::sys::stat::{umask, Mode};
use nix::unistd::{getgid, getuid, initgroups, setgid, setuid, Gid, Uid, User};

/// Switch the calling process (a worker, after fork) to `uid`/`gid`, as
/// gunicorn's `set_owner_process(uid, gid, initgroups)`:
///
/// - `gid` 0 means "leave the group alone", `uid` 0 "leave the user alone"
///   (gunicorn tests them for truth).
/// - the group is set first (setgid needs the privileges the user change
///   drops), and only when it differs from the current real gid;
/// - with `initgroups` (`--initgroups`), the supplementary groups become
///   those of `uid`'s user name plus `gid` (initgroups(3)); skipped when
///   `uid` is 0 or has no passwd entry, as in gunicorn;
/// - then the user, only when it differs from the current real uid.
///
/// Departure from gunicorn 27: with `initgroups`, gunicorn calls only
/// `os.initgroups` and never `setgid`, so the worker keeps the master's
/// primary group (root's, typically) although `--group` asked for another;
/// here the primary group is set in both cases. Without `initgroups`, the
/// supplementary groups are left as they are (gunicorn does the same).
pub fn set_owner_process(uid: u32, gid: u32, initgroups_: bool) -> Result<(), String> {
    if gid != 0 {
        let mut init = initgroups_;
        let mut name = None;
        if init {
            name = if uid != 0 { username(uid) } else { None };
            if name.is_none() {
                init = false;
            }
        }
        if gid != getgid().as_raw() {
            setgid(Gid::from_raw(gid)).map_err(|e| format!("cannot set group id to {gid}: {e}"))?;
        }
        if let (true, Some(name)) = (init, name) {
            let cname = CString::new(name.clone())
                .map_err(|_| format!("user name of uid {uid} contains a NUL byte"))?;
            initgroups(&cname, Gid::from_raw(gid)).map_err(|e| {
                format!("cannot initialize the groups of user {name} (uid {uid}, gid {gid}): {e}")
            })?;
        }
    }
    if uid != 0 && uid != getuid().as_raw() {
        setuid(Uid::from_raw(uid)).map_err(|e| format!("cannot set user id to {uid}: {e}"))?;
    }
    Ok(())
}

/// Set the process umask; returns the previous one.
pub fn set_umask(mask: u32) -> u32 {
    umask(Mode::from_bits_truncate(mask as libc::mode_t)).bits() as u32
}

/// chown(2) `path` to `uid`:`gid` (gunicorn chowns unix sockets it binds to
/// the configured user and group).
pub fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| format!("cannot chown {} to {uid}:{gid}: {e}", path.display()))
}

/// The user name of `uid` from the passwd database, if it has one.
pub fn username(uid: u32) -> Option<String> {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::isolated;
    use super::*;

    #[test]
    fn username_lookup() {
        assert_eq!(username(0).as_deref(), Some("root"));
        assert_eq!(username(3_999_999_999), None);
    }

    #[test]
    fn umask_roundtrip() {
        isolated(module_path!(), "umask_roundtrip", || {
            set_umask(0o027);
            assert_eq!(set_umask(0o022), 0o027);
            assert_eq!(set_umask(0o022), 0o022);
        });
    }

    #[test]
    fn chown_reports_path() {
        let e = chown(Path::new("/nonexistent-fc/sock"), 0, 0).expect_err("missing");
        assert!(e.contains("/nonexistent-fc/sock"), "{e}");
        let f = std::env::temp_dir().join(format!("fc-chown-{}", std::process::id()));
        std::fs::write(&f, b"").expect("write");
        // To ourselves: always allowed.
        chown(&f, getuid().as_raw(), getgid().as_raw()).expect("chown to self");
        let _ = std::fs::remove_file(&f);
    }

    #[test]
    fn no_change_is_a_noop() {
        // Same ids as now (or 0 = leave alone): nothing to do, never fails.
        set_owner_process(getuid().as_raw(), getgid().as_raw(), false).expect("same ids");
        set_owner_process(0, 0, true).expect("zeros");
    }

    /// As root: switch to nobody with initgroups, check real/effective ids
    /// and supplementary groups.
    #[test]
    fn drop_to_nobody() {
        isolated(module_path!(), "drop_to_nobody", || {
            if !getuid().is_root() {
                return; // needs root; the error path is covered below
            }
            let Some(nobody) = User::from_name("nobody").ok().flatten() else {
                return;
            };
            let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
            set_owner_process(uid, gid, true).expect("drop");
            assert_eq!(nix::unistd::getuid().as_raw(), uid);
            assert_eq!(nix::unistd::geteuid().as_raw(), uid);
            assert_eq!(nix::unistd::getgid().as_raw(), gid);
            assert_eq!(nix::unistd::getegid().as_raw(), gid);
            let groups = nix::unistd::getgroups().expect("getgroups");
            assert!(
                groups.iter().all(|g| g.as_raw() != 0),
                "still in group 0: {groups:?}"
            );
            // Going back is refused, with the ids in the message.
            let e = set_owner_process(0, 0, false);
            assert!(e.is_ok(), "0 means leave alone");
            let e = set_owner_process(1, 0, false).expect_err("not root anymore");
            assert!(e.contains("cannot set user id to 1"), "{e}");
        });
    }
}
