//! `wsgi.file_wrapper`: iterable over a file-like object; when the worker
//! sees one with a real file descriptor it uses sendfile(2) instead.

use pyo3::prelude::*;

#[pyclass(module = "ferrocorn", name = "FileWrapper")]
pub struct FileWrapper {
    #[pyo3(get)]
    pub filelike: Py<PyAny>,
    #[pyo3(get)]
    pub blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize=8192))]
    fn new(filelike: Py<PyAny>, blksize: usize) -> Self {
        FileWrapper { filelike, blksize }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let data = self
            .filelike
            .bind(py)
            .call_method1("read", (self.blksize,))?;
        Ok(if data.is_truthy()? { Some(data) } else { None })
    }

    fn __getitem__<'py>(&self, py: Python<'py>, _key: isize) -> PyResult<Bound<'py, PyAny>> {
        match self.__next__(py)? {
            Some(d) => Ok(d),
            None => Err(pyo3::exceptions::PyIndexError::new_err("end of file")),
        }
    }

    /// Closes the file-like object, as PEP 3333 asks of a file wrapper.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr("close")? {
            f.call_method0("close")?;
        }
        Ok(())
    }
}

impl FileWrapper {
    /// The file's descriptor when it has a usable `fileno()`.
    pub fn fileno(&self, py: Python<'_>) -> Option<i32> {
        let f = self.filelike.bind(py);
        let fd = f.call_method0("fileno").ok()?.extract::<i32>().ok()?;
        // Buffered readers may hold data ahead of the fd position; gunicorn
        // uses the fd position as the offset, so do the same.
        Some(fd)
    }
}
