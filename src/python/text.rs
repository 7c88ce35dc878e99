//! Python strings from bytes as latin-1 (WSGI's "native strings"): one C
//! call that copies the bytes, where going through `&str` would validate
//! UTF-8 twice (in Rust, then in CPython).

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;

/// `bytes.decode("latin-1")`.
pub fn latin1<'py>(py: Python<'py>, b: &[u8]) -> PyResult<Bound<'py, PyString>> {
    let len = ffi::Py_ssize_t::try_from(b.len())
        .map_err(|_| pyo3::exceptions::PyOverflowError::new_err("string too long"))?;
    // SAFETY: the thread is attached (`py`); `b` is valid for `len` bytes
    // during the call (CPython copies them; every byte is a valid latin-1
    // character); the result is a new reference to a str, or NULL with an
    // exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyUnicode_DecodeLatin1(b.as_ptr().cast(), len, std::ptr::null()),
        )
        .map(|s| s.cast_into_unchecked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_become_their_latin1_characters() {
        Python::initialize();
        Python::attach(|py| {
            let s = latin1(py, b"caf\xe9 \x00\xff").unwrap();
            assert_eq!(s.to_str().unwrap(), "caf\u{e9} \u{0}\u{ff}");
            assert_eq!(latin1(py, b"").unwrap().to_str().unwrap(), "");
        });
    }
}
