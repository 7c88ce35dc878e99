//! The two places where ferrocorn talks to CPython's C API directly:
//! interpreter start-up with a `PyConfig` (so that signal handlers stay
//! Rust's and the venv's executable drives sys.prefix) and `fork`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use pyo3::ffi;

/// Starts CPython as `python3` at `executable` would, minus signal handlers,
/// then releases the GIL so that later code attaches with `Python::attach`.
pub fn initialize(executable: &Path) -> Result<(), String> {
    let exe = CString::new(executable.as_os_str().as_bytes())
        .map_err(|_| format!("bad interpreter path {}", executable.display()))?;
    // SAFETY: the PyConfig is initialised by PyConfig_InitPythonConfig before
    // any field is read, lives on this stack frame for the whole sequence and
    // is cleared exactly once; CPython is not yet initialised (checked) and
    // this runs on the main thread, before any other thread exists.
    unsafe {
        if ffi::Py_IsInitialized() != 0 {
            return Err("the Python interpreter is already initialised".into());
        }
        let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::zeroed();
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let cfg = config.as_mut_ptr();
        (*cfg).install_signal_handlers = 0;
        // Like `python3 -c`: an empty sys.path[0] entry is not added; the
        // loader puts the working directory first as gunicorn does.
        (*cfg).parse_argv = 0;
        let status = ffi::PyConfig_SetBytesString(cfg, &mut (*cfg).program_name, exe.as_ptr());
        if ffi::PyStatus_Exception(status) != 0 {
            ffi::PyConfig_Clear(cfg);
            return Err(status_message(status, "setting the interpreter path"));
        }
        let status = ffi::Py_InitializeFromConfig(cfg);
        ffi::PyConfig_Clear(cfg);
        if ffi::PyStatus_Exception(status) != 0 {
            return Err(status_message(status, "initialising Python"));
        }
        // Py_InitializeFromConfig leaves this thread holding the GIL.
        ffi::PyEval_SaveThread();
    }
    Ok(())
}

fn status_message(status: ffi::PyStatus, what: &str) -> String {
    let msg = if status.err_msg.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: a non-null err_msg of a PyStatus is a static NUL-terminated C string.
        unsafe { std::ffi::CStr::from_ptr(status.err_msg) }
            .to_string_lossy()
            .into_owned()
    };
    format!("{what}: {msg}")
}

/// fork(2) wrapped in PyOS_BeforeFork / PyOS_AfterFork_{Parent,Child}.
/// The caller must hold the GIL (it has a `Python` token). `first_in_child`
/// runs in the child before anything else (no Python code).
pub fn fork(first_in_child: &dyn Fn()) -> nix::Result<nix::unistd::ForkResult> {
    // SAFETY: the master is single-threaded (docs/architecture.md) so no other thread can
    // hold a lock across the fork; the GIL is held by the caller as
    // PyOS_BeforeFork requires, and each branch calls the matching after-fork
    // function before running any other Python code.
    unsafe {
        ffi::PyOS_BeforeFork();
        let result = nix::unistd::fork();
        match result {
            Ok(nix::unistd::ForkResult::Child) => {
                first_in_child();
                ffi::PyOS_AfterFork_Child()
            }
            _ => ffi::PyOS_AfterFork_Parent(),
        }
        result
    }
}

/// `--daemon`: detaches with CPython's fork protocol around both forks.
pub fn daemonize(keep_stdio: bool) -> Result<(), String> {
    pyo3::Python::attach(|_py| {
        crate::process::daemon::daemonize_with_hooks(
            keep_stdio,
            // SAFETY: the GIL is held (attach) and the process is
            // single-threaded, as PyOS_BeforeFork requires.
            &mut || unsafe { ffi::PyOS_BeforeFork() },
            // SAFETY: runs in the new child right after fork, GIL held.
            &mut || unsafe { ffi::PyOS_AfterFork_Child() },
        )
    })
}

/// Runs `wait` with the interpreter lock released when this thread holds
/// it (a blocking wait inside a request lets other threads run Python);
/// otherwise just runs it. The lock is taken back even if `wait` panics.
pub fn release_gil(wait: &mut dyn FnMut()) {
    struct Reacquire(*mut ffi::PyThreadState);
    impl Drop for Reacquire {
        fn drop(&mut self) {
            // SAFETY: the state was returned by PyEval_SaveThread on this
            // thread just before, and is restored exactly once.
            unsafe { ffi::PyEval_RestoreThread(self.0) };
        }
    }
    // SAFETY: PyGILState_Check may be called at any time after
    // initialisation (it only reads this thread's state).
    if unsafe { ffi::Py_IsInitialized() == 0 || ffi::PyGILState_Check() == 0 } {
        return wait();
    }
    // SAFETY: this thread holds the GIL (checked above); it is released here
    // and re-acquired by the guard; `wait` touches no Python object.
    let _guard = Reacquire(unsafe { ffi::PyEval_SaveThread() });
    wait();
}
