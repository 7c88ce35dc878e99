//! Driving a coroutine's first step from Rust: a copy of the current
//! `contextvars` context to run it in, and `coro.send(None)` that tells a
//! return from a yield without raising StopIteration (C API calls pyo3 has
//! no safe wrapper for).

use pyo3::ffi;
use pyo3::prelude::*;

/// A `contextvars.Context` (only made by [`Context::copy_current`], so
/// that the C calls below are given nothing else).
pub struct Context<'py>(Bound<'py, PyAny>);

impl<'py> Context<'py> {
    /// `contextvars.copy_context()`.
    pub fn copy_current(py: Python<'py>) -> PyResult<Context<'py>> {
        // SAFETY: the thread is attached (`py`); the call returns a new
        // reference or NULL with an exception set.
        let ctx = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent())? };
        Ok(Context(ctx))
    }

    /// `ctx.run(f)`: `f` runs with this context current.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> PyResult<R> {
        let py = self.0.py();
        // SAFETY: `self.0` is a Context object (see the type), alive for
        // the call; Enter fails (with an exception) if it is already
        // entered.
        if unsafe { ffi::PyContext_Enter(self.0.as_ptr()) } != 0 {
            return Err(PyErr::fetch(py));
        }
        let r = f();
        // SAFETY: as above; the context is the one entered just before.
        if unsafe { ffi::PyContext_Exit(self.0.as_ptr()) } != 0 {
            return Err(PyErr::fetch(py));
        }
        Ok(r)
    }

    pub fn as_any(&self) -> &Bound<'py, PyAny> {
        &self.0
    }
}

/// How `coro.send(None)` came back.
pub enum Step<'py> {
    /// It yielded (a future it waits on, or None).
    Yielded(Bound<'py, PyAny>),
    /// It returned.
    Returned,
}

/// `coro.send(None)`; a return is [`Step::Returned`] (no StopIteration is
/// made), an exception the coroutine raised is the error.
#[cfg(Py_3_10)]
pub fn send_none<'py>(coro: &Bound<'py, PyAny>) -> PyResult<Step<'py>> {
    let py = coro.py();
    let mut out: *mut ffi::PyObject = std::ptr::null_mut();
    // SAFETY: `coro` is alive for the call and `None` is borrowed (the
    // call steals neither); on NEXT and RETURN `out` holds a new
    // reference, on ERROR an exception is set. An object that is no
    // coroutine gets its `send` method called (an AttributeError).
    let r = unsafe { ffi::PyIter_Send(coro.as_ptr(), ffi::Py_None(), &mut out) };
    match r {
        ffi::PySendResult::PYGEN_NEXT => {
            // SAFETY: a new reference (see above).
            Ok(Step::Yielded(unsafe { Bound::from_owned_ptr(py, out) }))
        }
        ffi::PySendResult::PYGEN_RETURN => {
            // SAFETY: a new reference (see above), dropped here.
            drop(unsafe { Bound::from_owned_ptr(py, out) });
            Ok(Step::Returned)
        }
        ffi::PySendResult::PYGEN_ERROR => Err(PyErr::fetch(py)),
    }
}

/// Python 3.9 has no PyIter_Send: the `send` method, StopIteration caught.
#[cfg(not(Py_3_10))]
pub fn send_none<'py>(coro: &Bound<'py, PyAny>) -> PyResult<Step<'py>> {
    let py = coro.py();
    match coro.call_method1(pyo3::intern!(py, "send"), (py.None(),)) {
        Ok(v) => Ok(Step::Yielded(v)),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyStopIteration>(py) => Ok(Step::Returned),
        Err(e) => Err(e),
    }
}
