//! USR2 re-exec with socket inheritance, as gunicorn's `Arbiter.reexec()`
//! and the start of `Arbiter.start()`.
//!
//! Old master, on USR2 (refused while a re-exec'd child or a parent master
//! exists): fork; in the child run the `pre_exec` hook, then
//!
//! ```text
//! env = env_orig (the environment as ferrocorn started)
//!       + GUNICORN_PID=<old master pid>
//!       + LISTEN_PID=<child pid>, LISTEN_FDS=<n>   if the sockets came from systemd
//!       | GUNICORN_FD=<fd>,<fd>,...               otherwise
//! chdir(START_CTX cwd); execve(executable, original argv, env)
//! ```
//!
//! New master: `GUNICORN_PID` set → it is "Master.2", proc_name gets `.2`,
//! the pid file is `<pidfile>.2`; sockets come from systemd's variables if
//! `LISTEN_PID` is its pid, else from `GUNICORN_FD` (removed from the
//! environment once read). Each loop iteration it checks whether its parent
//! is still the old master; when not ([`promoted`]), it drops `GUNICORN_PID`
//! ([`forget_master_pid`]), renames the pid file to `<pidfile>` and resets
//! its title. `GUNICORN_FD` also makes `daemonize` a no-op.

use std::convert::Infallible;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};

use super::sys;

/// Variable holding the inherited listening fds (gunicorn's name).
pub const ENV_FD: &str = "GUNICORN_FD";
/// Variable holding the old master's pid in a re-exec'd master.
pub const ENV_PID: &str = "GUNICORN_PID";

/// gunicorn's `START_CTX` plus `cfg.env_orig`: what a re-exec needs.
#[derive(Clone, Debug)]
pub struct StartCtx {
    /// The program to execve: the path the binary was started from (argv[0]
    /// resolved against the start directory or `$PATH`, when it is the
    /// running binary; else the running binary's path). A path, not
    /// /proc/self/exe, so that a binary replaced by an upgrade is picked up
    /// — the point of USR2. If it is gone at exec time, /proc/self/exe runs.
    pub exe: PathBuf,
    /// The original argv, argv[0] included.
    pub args: Vec<OsString>,
    /// Directory to exec in. gunicorn takes it when the arbiter is created,
    /// i.e. after `--chdir` was applied: set it with [`getcwd`] then.
    pub cwd: PathBuf,
    /// The environment as ferrocorn started, before `--env`/`raw_env`,
    /// `SERVER_SOFTWARE`, removals of `LISTEN_*`, etc.
    pub env_orig: Vec<(OsString, OsString)>,
}

impl StartCtx {
    /// Capture argv, the environment and the current directory. Call first
    /// thing in `main`: before the environment is changed and before the
    /// first process title is set. `cwd` is the directory now; gunicorn
    /// uses the one after `--chdir`, so update it then.
    pub fn capture() -> Result<StartCtx, String> {
        let args: Vec<OsString> = std::env::args_os().collect();
        let cwd = getcwd()?;
        let argv0 = args.first().cloned().unwrap_or_default();
        let exe = resolve_exe(&argv0, &cwd);
        Ok(StartCtx {
            exe,
            args,
            cwd,
            env_orig: std::env::vars_os().collect(),
        })
    }
}

impl StartCtx {
    /// As [`StartCtx::capture`], for a master running inside a Python
    /// interpreter (the wheel's `ferrocorn` console script, `python -m
    /// ferrocorn`): a re-exec runs `executable` (`sys.executable`) with the
    /// interpreter's whole command line `orig_argv` (`sys.orig_argv`), so the
    /// same script or `-m ferrocorn` with the same interpreter options runs
    /// again. `script` and `argc` are `sys.argv[0]` and `len(sys.argv)`: a
    /// script given by a relative path is made absolute against the start
    /// directory, since the re-exec happens after `--chdir`.
    pub fn capture_interpreter(
        executable: PathBuf,
        orig_argv: &[OsString],
        script: Option<&OsStr>,
        argc: usize,
    ) -> Result<StartCtx, String> {
        let cwd = getcwd()?;
        let args = interpreter_args(&executable, orig_argv, script, argc, &cwd);
        Ok(StartCtx {
            exe: executable,
            args,
            cwd,
            env_orig: std::env::vars_os().collect(),
        })
    }
}

/// The argv of an interpreter's re-exec: `orig_argv` with argv[0] replaced
/// by `executable` (so the new process finds the same virtualenv whatever
/// `$PATH` holds) and a relative `script` made absolute against `cwd`.
/// The script is the element of `orig_argv` that `sys.argv` starts with,
/// i.e. the `argc`-th from the end, when it is `script` and names a file.
fn interpreter_args(
    executable: &Path,
    orig_argv: &[OsString],
    script: Option<&OsStr>,
    argc: usize,
    cwd: &Path,
) -> Vec<OsString> {
    let mut args = orig_argv.to_vec();
    match args.first_mut() {
        Some(first) => *first = executable.as_os_str().to_owned(),
        None => args.push(executable.as_os_str().to_owned()),
    }
    if let (Some(script), Some(i)) = (script, args.len().checked_sub(argc)) {
        let path = Path::new(script);
        if i > 0 && args[i] == script && path.is_relative() && cwd.join(path).is_file() {
            args[i] = cwd.join(path).into_os_string();
        }
    }
    args
}

/// gunicorn's `util.getcwd()`: `$PWD` when it names the current directory
/// (keeps the symlinked path the user started from), else getcwd(3).
pub fn getcwd() -> Result<PathBuf, String> {
    let real =
        std::env::current_dir().map_err(|e| format!("cannot get the current directory: {e}"))?;
    if let Some(pwd) = std::env::var_os("PWD") {
        if let (Ok(a), Ok(b)) = (std::fs::metadata(&pwd), std::fs::metadata(&real)) {
            if a.ino() == b.ino() && a.dev() == b.dev() {
                return Ok(PathBuf::from(pwd));
            }
        }
    }
    Ok(real)
}

/// Where the running binary was started from: argv[0] made absolute (or
/// looked up in `$PATH` like execvp), if that file is the running binary;
/// otherwise the running binary's resolved path.
fn resolve_exe(argv0: &OsStr, cwd: &Path) -> PathBuf {
    let running = std::env::current_exe().ok();
    let candidate = if argv0.as_bytes().contains(&b'/') {
        Some(cwd.join(argv0))
    } else if argv0.is_empty() {
        None
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| {
                    if dir.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        dir
                    }
                })
                .map(|dir| cwd.join(dir).join(argv0))
                .find(|p| p.is_file())
        })
    };
    match (candidate, running) {
        (Some(c), Some(r)) if same_file(&c, &r) => c,
        (_, Some(r)) => r,
        (Some(c), None) => c,
        (None, None) => PathBuf::from("/proc/self/exe"),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// The old master's pid when this process is a re-exec'd master
/// (`$GUNICORN_PID`). An unparsable value is an error.
pub fn master_pid() -> Result<Option<i32>, String> {
    match std::env::var_os(ENV_PID) {
        None => Ok(None),
        Some(v) => {
            let s = v.to_string_lossy();
            match s.trim().parse::<i32>() {
                Ok(p) if p > 0 => Ok(Some(p)),
                _ => Err(format!("invalid {ENV_PID} value: {s:?}")),
            }
        }
    }
}

/// Whether a re-exec'd master has been promoted: its parent is no longer
/// the old master `master_pid` (gunicorn's `maybe_promote_master` test).
pub fn promoted(master_pid: i32) -> bool {
    nix::unistd::getppid().as_raw() != master_pid
}

/// Remove `GUNICORN_PID` from the environment, on promotion. Single-threaded
/// master only.
pub fn forget_master_pid() {
    std::env::remove_var(ENV_PID);
}

/// The listening fds inherited through `$GUNICORN_FD`, which is removed from
/// the environment (gunicorn pops it). None when unset. Every fd must be an
/// open descriptor; a malformed list is an error naming the value.
///
/// gunicorn reads it only in a re-exec'd master ([`master_pid`] is Some)
/// after systemd's `listen_fds` found none. Single-threaded master only.
pub fn inherited_fds() -> Result<Option<Vec<RawFd>>, String> {
    let Some(v) = std::env::var_os(ENV_FD) else {
        return Ok(None);
    };
    std::env::remove_var(ENV_FD);
    let s = v.to_string_lossy();
    let mut fds = Vec::new();
    for part in s.split(',') {
        let fd: RawFd = part
            .trim()
            .parse()
            .ok()
            .filter(|fd| *fd >= 0)
            .ok_or_else(|| {
                format!("invalid {ENV_FD} value {s:?}: {part:?} is not a file descriptor")
            })?;
        if sys::is_cloexec(fd).is_none() {
            return Err(format!("{ENV_FD}={s}: inherited fd {fd} is not open"));
        }
        fds.push(fd);
    }
    Ok(Some(fds))
}

/// Clear `FD_CLOEXEC` on the listening fds so that they survive the exec.
/// Call in the forked child, just before [`exec_self`].
pub fn prepare_inherit(fds: &[RawFd]) -> Result<(), String> {
    for &fd in fds {
        sys::clear_cloexec(fd)
            .map_err(|e| format!("cannot keep listening fd {fd} across exec: {e}"))?;
    }
    Ok(())
}

/// The environment of the new master, as gunicorn's `reexec()` builds it:
/// `env_orig` plus `GUNICORN_PID=master_pid` and either
/// `LISTEN_PID=listen_pid` + `LISTEN_FDS=<count>` (when the listeners came
/// from systemd socket activation, so they are fds 3..3+n) or
/// `GUNICORN_FD=<fds comma-joined>`. `listen_pid` is the forked child's pid
/// (the pid the exec'd program will have).
pub fn reexec_env(
    env_orig: &[(OsString, OsString)],
    master_pid: u32,
    listeners: &[RawFd],
    systemd: bool,
    listen_pid: u32,
) -> Vec<(OsString, OsString)> {
    let mut env = env_orig.to_vec();
    set_var(&mut env, ENV_PID, master_pid.to_string());
    if systemd {
        set_var(&mut env, "LISTEN_PID", listen_pid.to_string());
        set_var(&mut env, "LISTEN_FDS", listeners.len().to_string());
    } else {
        let joined = listeners
            .iter()
            .map(|fd| fd.to_string())
            .collect::<Vec<_>>()
            .join(",");
        set_var(&mut env, ENV_FD, joined);
    }
    env
}

/// Sets `key` in an environment list, replacing an earlier value.
pub fn set_var(env: &mut Vec<(OsString, OsString)>, key: &str, value: impl Into<OsString>) {
    let value = value.into();
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => env.push((OsString::from(key), value)),
    }
}

/// chdir to `ctx.cwd` and execve `ctx.exe` with `ctx.args` and `env`
/// (built by [`reexec_env`]). The signal mask is cleared first (a blocked
/// signal would stay blocked in the new master). Only returns on failure;
/// call it in the forked child (after [`prepare_inherit`]), which must then
/// `_exit` — never return into the master's loop.
pub fn exec_self(ctx: &StartCtx, env: &[(OsString, OsString)]) -> Result<Infallible, String> {
    std::env::set_current_dir(&ctx.cwd)
        .map_err(|e| format!("re-exec: cannot chdir to {}: {e}", ctx.cwd.display()))?;
    let cstr = |b: Vec<u8>, what: &str| {
        CString::new(b).map_err(|_| format!("re-exec: {what} contains a NUL byte"))
    };
    let args = ctx
        .args
        .iter()
        .map(|a| cstr(a.clone().into_vec(), "an argument"))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.clone().into_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            cstr(kv, "an environment variable")
        })
        .collect::<Result<Vec<_>, _>>()?;
    let exe = cstr(
        ctx.exe.clone().into_os_string().into_vec(),
        "the executable path",
    )?;
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let err = match nix::unistd::execve(&exe, &args, &envp) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    if err == Errno::ENOENT {
        // The binary was removed (not replaced) since start: run the one
        // that is running.
        let proc_exe = c"/proc/self/exe";
        let err2 = match nix::unistd::execve(proc_exe, &args, &envp) {
            Ok(never) => match never {},
            Err(e) => e,
        };
        return Err(format!(
            "re-exec: cannot execute {} ({err}) nor /proc/self/exe ({err2})",
            ctx.exe.display()
        ));
    }
    Err(format!(
        "re-exec: cannot execute {}: {err}",
        ctx.exe.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::super::sys::Forked;
    use super::super::testutil::{isolated, wait_exit_code};
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    fn os(k: &str, v: &str) -> (OsString, OsString) {
        (k.into(), v.into())
    }

    fn get<'a>(env: &'a [(OsString, OsString)], k: &str) -> Option<&'a OsStr> {
        env.iter()
            .find(|(ek, _)| ek == k)
            .map(|(_, v)| v.as_os_str())
    }

    #[test]
    fn env_plain() {
        let orig = vec![
            os("PATH", "/bin"),
            os("GUNICORN_PID", "1"),
            os("LISTEN_FDS", "9"),
        ];
        let env = reexec_env(&orig, 100, &[5, 7], false, 200);
        assert_eq!(get(&env, "GUNICORN_PID"), Some(OsStr::new("100")));
        assert_eq!(get(&env, "GUNICORN_FD"), Some(OsStr::new("5,7")));
        assert_eq!(get(&env, "PATH"), Some(OsStr::new("/bin")));
        // Untouched: gunicorn only sets LISTEN_* under systemd.
        assert_eq!(get(&env, "LISTEN_FDS"), Some(OsStr::new("9")));
        assert_eq!(get(&env, "LISTEN_PID"), None);
        // Replaced in place, not duplicated.
        assert_eq!(env.iter().filter(|(k, _)| k == "GUNICORN_PID").count(), 1);
        assert_eq!(env.len(), 4);
    }

    #[test]
    fn env_systemd() {
        let orig = vec![
            os("LISTEN_PID", "1"),
            os("LISTEN_FDS", "1"),
            os("HOME", "/root"),
        ];
        let env = reexec_env(&orig, 100, &[3, 4], true, 200);
        assert_eq!(get(&env, "GUNICORN_PID"), Some(OsStr::new("100")));
        assert_eq!(get(&env, "LISTEN_PID"), Some(OsStr::new("200")));
        assert_eq!(get(&env, "LISTEN_FDS"), Some(OsStr::new("2")));
        assert_eq!(get(&env, "GUNICORN_FD"), None);
    }

    #[test]
    fn capture_start_ctx() {
        let ctx = StartCtx::capture().expect("capture");
        assert_eq!(ctx.args, std::env::args_os().collect::<Vec<_>>());
        let running = std::env::current_exe().expect("exe");
        assert!(same_file(&ctx.exe, &running), "{}", ctx.exe.display());
        assert!(ctx.exe.is_absolute());
        assert!(same_file(&ctx.cwd, &std::env::current_dir().expect("cwd")));
    }

    #[test]
    fn interpreter_command() {
        let tmp = std::env::temp_dir().join(format!("fc-reexec-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("venv/bin")).expect("mkdir");
        std::fs::write(tmp.join("venv/bin/ferrocorn"), "#!python\n").expect("script");
        let exe = Path::new("/v/bin/python3");
        let osv = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        // The console script run through its shebang, from a relative path:
        // the script becomes absolute, argv[0] the executable.
        let orig = osv(&["python3", "venv/bin/ferrocorn", "-w", "2", "app:app"]);
        let got = interpreter_args(exe, &orig, Some(OsStr::new("venv/bin/ferrocorn")), 4, &tmp);
        let script = tmp.join("venv/bin/ferrocorn").into_os_string();
        assert_eq!(
            got,
            vec![
                OsString::from("/v/bin/python3"),
                script,
                "-w".into(),
                "2".into(),
                "app:app".into()
            ]
        );
        // `python -X dev -m ferrocorn`: interpreter options and -m kept;
        // sys.argv[0] (the path of __main__.py) is not in the command line.
        let orig = osv(&["python", "-X", "dev", "-m", "ferrocorn", "-b", ":1"]);
        let got = interpreter_args(exe, &orig, Some(OsStr::new("/x/__main__.py")), 3, &tmp);
        assert_eq!(got[0], OsString::from("/v/bin/python3"));
        assert_eq!(got[1..], orig[1..]);
        // An absolute script and a relative name that is no file stay.
        let orig = osv(&["/v/bin/python3", "/v/bin/ferrocorn", "app"]);
        let got = interpreter_args(exe, &orig, Some(OsStr::new("/v/bin/ferrocorn")), 2, &tmp);
        assert_eq!(got, orig);
        let orig = osv(&["python3", "-c", "import ferrocorn", "app"]);
        let got = interpreter_args(exe, &orig, Some(OsStr::new("-c")), 2, &tmp);
        assert_eq!(got[1..], orig[1..]);
        // Nothing known: the interpreter alone.
        assert_eq!(
            interpreter_args(exe, &[], None, 0, &tmp),
            osv(&["/v/bin/python3"])
        );
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn exe_resolution() {
        let running = std::env::current_exe().expect("exe");
        let dir = running.parent().expect("dir").to_path_buf();
        let name = running.file_name().expect("name").to_os_string();
        // Relative to the start directory.
        let rel = resolve_exe(&PathBuf::from("./").join(&name).into_os_string(), &dir);
        assert_eq!(rel, dir.join("./").join(&name));
        // A lying argv[0] never selects another program.
        assert_eq!(resolve_exe(OsStr::new("sh"), &dir), running);
        assert_eq!(resolve_exe(OsStr::new("/bin/sh"), &dir), running);
    }

    #[test]
    fn master_pid_and_inherited_fds() {
        isolated(module_path!(), "master_pid_and_inherited_fds", || {
            std::env::remove_var(ENV_PID);
            std::env::remove_var(ENV_FD);
            assert_eq!(master_pid(), Ok(None));
            assert_eq!(inherited_fds(), Ok(None));
            std::env::set_var(ENV_PID, "4242");
            assert_eq!(master_pid(), Ok(Some(4242)));
            assert!(!promoted(nix::unistd::getppid().as_raw()));
            assert!(promoted(4242) || nix::unistd::getppid().as_raw() == 4242);
            forget_master_pid();
            assert_eq!(master_pid(), Ok(None));
            std::env::set_var(ENV_PID, "x");
            assert!(master_pid().is_err());

            let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let v = format!("{},{}", a.as_raw_fd(), b.as_raw_fd());
            std::env::set_var(ENV_FD, &v);
            assert_eq!(
                inherited_fds(),
                Ok(Some(vec![a.as_raw_fd(), b.as_raw_fd()]))
            );
            // Popped.
            assert!(std::env::var_os(ENV_FD).is_none());

            std::env::set_var(ENV_FD, "3,x");
            let e = inherited_fds().expect_err("garbage");
            assert!(e.contains("GUNICORN_FD") && e.contains("\"x\""), "{e}");
            std::env::set_var(ENV_FD, "");
            assert!(inherited_fds().is_err());
            std::env::set_var(ENV_FD, "999");
            let e = inherited_fds().expect_err("closed fd");
            assert!(e.contains("999"), "{e}");
        });
    }

    /// The whole child side of USR2: a CLOEXEC listening socket survives
    /// prepare_inherit + exec_self; the exec'd program runs in ctx.cwd with
    /// ctx.args and the built environment.
    #[test]
    fn exec_self_inherits_fds() {
        isolated(module_path!(), "exec_self_inherits_fds", || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let lfd = listener.as_raw_fd();
            assert_eq!(sys::is_cloexec(lfd), Some(true));
            let (r, w) = nix::unistd::pipe().expect("pipe");
            let wfd = w.as_raw_fd();
            let tmp = std::env::temp_dir();
            // A shell stands in for the new master: it reports its cwd, the
            // variables, and whether the listening fd is open in it.
            let script = format!(
                "printf '%s|%s|%s|%s|' \"$(pwd)\" \"$GUNICORN_FD\" \"$GUNICORN_PID\" \"$1\" >&{wfd}; \
                 if [ -e /proc/self/fd/{lfd} ]; then echo open >&{wfd}; else echo closed >&{wfd}; fi"
            );
            let ctx = StartCtx {
                exe: PathBuf::from("/bin/sh"),
                args: vec![
                    "sh".into(),
                    "-c".into(),
                    script.into(),
                    "sh".into(),
                    "arg1".into(),
                ],
                cwd: tmp.clone(),
                env_orig: vec![os("PATH", "/usr/bin:/bin")],
            };
            match sys::fork().expect("fork") {
                Forked::Child => {
                    drop(r);
                    // The pipe end must survive too.
                    let env = reexec_env(&ctx.env_orig, 77, &[lfd], false, std::process::id());
                    let res = prepare_inherit(&[lfd, wfd]).and_then(|()| exec_self(&ctx, &env));
                    let _ = res;
                    sys::exit_now(5);
                }
                Forked::Parent(child) => {
                    drop(w);
                    let mut out = String::new();
                    let _ = std::fs::File::from(r).read_to_string(&mut out);
                    assert_eq!(wait_exit_code(child), 0, "{out}");
                    let cwd = tmp.canonicalize().expect("canon").display().to_string();
                    assert_eq!(out.trim_end(), format!("{cwd}|{lfd}|77|arg1|open"));
                    // Our own fd is unchanged (the child cleared its copy's flag).
                    assert_eq!(sys::is_cloexec(lfd), Some(true));
                }
            }
        });
    }

    #[test]
    fn exec_self_errors_name_the_path() {
        let ctx = StartCtx {
            exe: PathBuf::from("/bin/sh"),
            args: vec!["sh".into()],
            cwd: PathBuf::from("/nonexistent-fc-dir"),
            env_orig: vec![],
        };
        let e = exec_self(&ctx, &[]).expect_err("chdir fails");
        assert!(e.contains("/nonexistent-fc-dir"), "{e}");
        let e = prepare_inherit(&[987_654]).expect_err("bad fd");
        assert!(e.contains("987654"), "{e}");
    }
}
