//! Reference counts, for reusing objects that nothing else holds.

use pyo3::prelude::*;

/// The object's reference count. Meaningful on the GIL builds ferrocorn
/// supports (CPython 3.9-3.13 without free threading), where a count equal
/// to the references the caller holds means no one else can reach the
/// object.
pub fn count<T>(_attached: Python<'_>, obj: &Py<T>) -> isize {
    // SAFETY: `obj` is a live object (a `Py` keeps it alive) and the thread
    // is attached to the interpreter (`_attached`), as reading ob_refcnt requires.
    unsafe { pyo3::ffi::Py_REFCNT(obj.as_ptr()) }
}
