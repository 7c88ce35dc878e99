//! Test helpers for the process module.
//!
//! Tests that change process-global state (environment, stdio, session,
//! title) or fork run in a fresh copy of the test binary that runs only that
//! test, on one test thread: forking there is safe (the only other thread,
//! libtest's main, is blocked waiting for the test), and nothing leaks into
//! the other tests.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

const CHILD_ENV: &str = "FERROCORN_PROCESS_ISOLATED_TEST";

/// Run `body` in a fresh process running only this test. `module` is
/// `module_path!()` of the test, `name` the test function's name.
pub(crate) fn isolated(module: &str, name: &str, body: impl FnOnce()) {
    // libtest's test names leave out the crate name.
    let path = match module.split_once("::") {
        Some((_, rest)) => format!("{rest}::{name}"),
        None => name.to_string(),
    };
    if std::env::var_os(CHILD_ENV).is_some_and(|v| v == path.as_str()) {
        body();
        return;
    }
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut child = Command::new(exe)
        .args([path.as_str(), "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD_ENV, &path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the isolated test");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for the isolated test") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("isolated test {path} timed out");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    assert!(
        status.success() && out.contains("1 passed"),
        "isolated test {path} failed ({status}):\n{out}\n{err}"
    );
}

/// A pipe to pass single bytes between a forked child and its parent.
pub(crate) struct Pipe {
    pub(crate) r: OwnedFd,
    pub(crate) w: OwnedFd,
}

impl Pipe {
    pub(crate) fn new() -> Pipe {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        Pipe { r, w }
    }

    pub(crate) fn write_byte(&self, b: u8) {
        let _ = nix::unistd::write(self.w.as_fd(), &[b]);
    }

    /// Block for one byte; 255 on EOF or error.
    pub(crate) fn read_byte(&self) -> u8 {
        let mut b = [255u8];
        loop {
            match nix::unistd::read(self.r.as_fd(), &mut b) {
                Err(nix::errno::Errno::EINTR) => continue,
                Ok(1) => return b[0],
                _ => return 255,
            }
        }
    }
}

/// Reap `pid`; its exit code, or -signal when it was killed.
pub(crate) fn wait_exit_code(pid: Pid) -> i32 {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return -(sig as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => panic!("waitpid({pid}): {e}"),
        }
    }
}
