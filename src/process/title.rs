//! Process titles, as gunicorn sets them through the `setproctitle` package:
//! `ps`, `top` and `/proc/PID/cmdline` show e.g. `ferrocorn: master [myapp]`,
//! and `/proc/PID/comm` (what `pgrep`, `top`'s default view and
//! `ps -o comm` use) shows its first 15 bytes.
//!
//! How: the setproctitle(3) technique (python-setproctitle, PostgreSQL,
//! nginx). The kernel serves /proc/PID/cmdline from the argv strings in the
//! process's own memory, followed by the environment strings. On the first
//! call, everything that points into that area — `argv[]` (read by
//! `std::env::args`), `environ[]` (read by `std::env::var` and getenv(3)),
//! glibc's `program_invocation_name` — is repointed to heap copies, then the
//! area is overwritten with the title and NUL-padded. A title longer than the
//! original argv spills into the environment area, which Linux ≥ 4.18 shows
//! too. The argv/envp pointers come from glibc, which hands them to
//! `.init_array` functions (the way Rust's std gets `std::env::args`).
//!
//! Why not `prctl(PR_SET_MM_ARG_START/ARG_END)`: it needs CAP_SYS_RESOURCE,
//! which a server started as a normal user (or in most containers) does not
//! have, and it goes away in workers after `setuid`; the rewrite works for
//! every user. Where the area is unknown (a libc other than glibc), only the
//! comm name is set.
//!
//! Titles survive fork: a child sees its parent's title until it sets its
//! own, which it can do any number of times.

/// Maximum bytes of `/proc/PID/comm` (TASK_COMM_LEN - 1).
pub const COMM_MAX: usize = 15;

/// Set the process title shown by `ps -o args` and `/proc/PID/cmdline`
/// (truncated to the space of the original command line and environment),
/// and the first [`COMM_MAX`] bytes as the comm name (`ps -o comm`,
/// `/proc/PID/comm`, `pgrep`). The title is used as given: callers pass
/// the full text, e.g. `ferrocorn: master [myapp]`.
///
/// Call it the first time while the process has one thread (the master, or
/// a worker right after fork): the first call moves the environment strings
/// to the heap, which must not race with another thread reading them.
///
/// Returns whether the command line was rewritten (false on a libc where the
/// argv area is unknown; the comm name is set regardless).
pub fn set_title(title: &str) -> bool {
    // An embedded NUL would end the title early in every reader; cut there.
    let bytes = title.as_bytes();
    let bytes = match bytes.iter().position(|&b| b == 0) {
        Some(i) => &bytes[..i],
        None => bytes,
    };
    set_comm(&comm_name(bytes));
    super::sys::write_title(bytes)
}

/// Bytes available for a command-line title (the original argv + environ
/// strings), or None where they cannot be rewritten.
#[cfg(test)]
pub fn capacity() -> Option<usize> {
    super::sys::title_capacity().map(|n| n.saturating_sub(1))
}

/// Set the comm name of the process, i.e. of its main thread: with
/// PR_SET_NAME from the main thread, else through /proc/self/comm (which
/// names the thread group leader). Best effort.
fn set_comm(comm: &[u8]) {
    if nix::unistd::gettid() == nix::unistd::getpid() {
        if let Ok(c) = std::ffi::CString::new(comm) {
            let _ = nix::sys::prctl::set_name(&c);
        }
    } else {
        let _ = std::fs::write("/proc/self/comm", comm);
    }
}

/// The first [`COMM_MAX`] bytes of `title`, cut back to a UTF-8 boundary when
/// the title is UTF-8 so `ps` never shows half a character.
fn comm_name(title: &[u8]) -> Vec<u8> {
    if title.len() <= COMM_MAX {
        return title.to_vec();
    }
    let mut n = COMM_MAX;
    if std::str::from_utf8(title).is_ok() {
        // Step back over continuation bytes (10xxxxxx).
        while n > 0 && (title[n] & 0xC0) == 0x80 {
            n -= 1;
        }
    }
    title[..n].to_vec()
}

#[cfg(test)]
mod tests {
    use super::super::sys::{self, Forked};
    use super::super::testutil::{isolated, wait_exit_code, Pipe};
    use super::*;

    #[test]
    fn comm_truncation() {
        assert_eq!(comm_name(b"short"), b"short".to_vec());
        assert_eq!(
            comm_name(b"ferrocorn: master [app]"),
            b"ferrocorn: mast".to_vec()
        );
        // Exactly 15 bytes, ending in a 2-byte character: kept whole.
        assert_eq!(
            comm_name("ferrocorn: maé".as_bytes()),
            "ferrocorn: maé".as_bytes()
        );
        // "ferrocorn: mas" + 'é' would straddle byte 15: cut before it.
        assert_eq!(
            comm_name("ferrocorn: masé".as_bytes()),
            b"ferrocorn: mas".to_vec()
        );
        assert_eq!(
            comm_name("ferrocorn: mastéé".as_bytes()),
            b"ferrocorn: mast".to_vec()
        );
        assert_eq!(
            comm_name("ferrocorn: masté".as_bytes()),
            b"ferrocorn: mast".to_vec()
        );
        assert_eq!(
            comm_name("ferrocorn: maséé".as_bytes()),
            "ferrocorn: mas".as_bytes()
        );
    }

    fn read_cmdline(pid: i32) -> Vec<u8> {
        std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()
    }

    fn first_string(b: &[u8]) -> String {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    }

    fn comm(pid: i32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim_end()
            .to_string()
    }

    fn ps_args(pid: i32) -> Option<String> {
        let out = std::process::Command::new("ps")
            .args(["-o", "args=", "-p", &pid.to_string()])
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// A forked child sets its title; the parent reads it from /proc and ps.
    /// The child checks that std::env::args and the environment still work.
    #[test]
    fn title_visible_from_parent() {
        isolated(module_path!(), "title_visible_from_parent", || {
            std::env::set_var("FC_TITLE_PROBE", "still-here");
            let args_before: Vec<String> = std::env::args().collect();
            let ready = Pipe::new();
            let done = Pipe::new();
            match sys::fork().expect("fork") {
                Forked::Child => {
                    let ok1 = set_title("ferrocorn: master [myapp]");
                    let args_after: Vec<String> = std::env::args().collect();
                    let env_ok = std::env::var("FC_TITLE_PROBE").as_deref() == Ok("still-here")
                        && std::env::var_os("PATH").is_some();
                    let code = if !ok1 {
                        10
                    } else if args_after != args_before {
                        11
                    } else if !env_ok {
                        12
                    } else {
                        0
                    };
                    ready.write_byte(code);
                    done.read_byte();
                    sys::exit_now(0);
                }
                Forked::Parent(child) => {
                    let code = ready.read_byte();
                    let pid = child.as_raw();
                    let cmdline = read_cmdline(pid);
                    let comm = comm(pid);
                    let ps = ps_args(pid);
                    done.write_byte(0);
                    assert_eq!(wait_exit_code(child), 0);
                    assert_eq!(code, 0, "child check failed");
                    assert_eq!(first_string(&cmdline), "ferrocorn: master [myapp]");
                    assert_eq!(comm, "ferrocorn: mast");
                    if let Some(ps) = ps {
                        assert_eq!(ps, "ferrocorn: master [myapp]");
                    }
                    // Our own title is untouched by the child's.
                    assert_ne!(
                        first_string(&read_cmdline(std::process::id() as i32)),
                        "ferrocorn: master [myapp]"
                    );
                }
            }
        });
    }

    /// A title longer than argv spills into the environ area (shown whole by
    /// Linux >= 4.18); a grandchild sets its own after fork; the parent's
    /// stays as it was.
    #[test]
    fn long_title_and_fork() {
        isolated(module_path!(), "long_title_and_fork", || {
            let cap = capacity().expect("argv area known on glibc");
            let argv_len: usize = std::env::args().map(|a| a.len() + 1).sum();
            let long = format!("ferrocorn: worker [{}]", "x".repeat(argv_len + 10));
            assert!(long.len() < cap, "environment too small for the test");
            assert!(set_title(&long));
            let me = std::process::id() as i32;
            assert_eq!(first_string(&read_cmdline(me)), long);

            let ready = Pipe::new();
            let done = Pipe::new();
            match sys::fork().expect("fork") {
                Forked::Child => {
                    set_title("ferrocorn: exporter [app]");
                    ready.write_byte(0);
                    done.read_byte();
                    sys::exit_now(0);
                }
                Forked::Parent(child) => {
                    ready.read_byte();
                    let c = first_string(&read_cmdline(child.as_raw()));
                    let cc = comm(child.as_raw());
                    done.write_byte(0);
                    assert_eq!(wait_exit_code(child), 0);
                    assert_eq!(c, "ferrocorn: exporter [app]");
                    assert_eq!(cc, "ferrocorn: expo");
                    assert_eq!(first_string(&read_cmdline(me)), long);
                }
            }
            // Truncation to the capacity.
            let huge = "y".repeat(cap + 100);
            assert!(set_title(&huge));
            let shown = first_string(&read_cmdline(me));
            // The kernel shows at most one page of a spilled-over title.
            assert_eq!(shown.len(), cap.min(4096));
            assert!(shown.bytes().all(|b| b == b'y'));
            // Shrinking back leaves no trace of the longer title.
            assert!(set_title("ferrocorn: master [a]"));
            assert_eq!(first_string(&read_cmdline(me)), "ferrocorn: master [a]");
            assert_eq!(comm(me), "ferrocorn: mast");
            if let Some(ps) = ps_args(me) {
                assert_eq!(ps, "ferrocorn: master [a]");
            }
        });
    }
}
