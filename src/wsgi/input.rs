//! `wsgi.input`: the Python face of the connection layer's request
//! [`Body`]. During a request the object owns the body; the worker takes it
//! back afterwards ([`Input::take`]), with any pipelined bytes after it.

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::conn::body::Body;

/// The Python-visible `wsgi.input` object.
#[pyclass(module = "ferrocorn", name = "Input")]
pub struct Input {
    body: Option<Body>,
}

fn size_arg(size: Option<i64>) -> Option<usize> {
    size.and_then(|s| usize::try_from(s).ok())
}

fn io_err(e: std::io::Error) -> PyErr {
    PyOSError::new_err(format!("error reading request body: {e}"))
}

impl Input {
    pub fn new(body: Body) -> Input {
        Input { body: Some(body) }
    }

    /// Gives a kept object the next request's body.
    pub fn refill(&mut self, body: Body) {
        self.body = Some(body);
    }

    /// Takes the body back after the request (the object reads as empty
    /// from then on, should the app have kept it).
    pub fn take(&mut self) -> Option<Body> {
        self.body.take()
    }

    /// Runs a body read (the transport lets other threads run Python while
    /// it waits for the socket).
    fn with_body<T: Default>(
        &mut self,
        f: impl FnOnce(&mut Body) -> std::io::Result<T>,
    ) -> PyResult<T> {
        match self.body.as_mut() {
            Some(b) => f(b).map_err(io_err),
            None => Ok(T::default()),
        }
    }
}

#[pymethods]
impl Input {
    #[pyo3(signature = (size=None))]
    fn read<'py>(&mut self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.with_body(|b| b.read(size_arg(size)))?;
        Ok(PyBytes::new(py, &data))
    }

    #[pyo3(signature = (size=None))]
    fn readline<'py>(
        &mut self,
        py: Python<'py>,
        size: Option<i64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.with_body(|b| b.readline(size_arg(size)))?;
        Ok(PyBytes::new(py, &data))
    }

    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(
        &mut self,
        py: Python<'py>,
        hint: Option<i64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        let hint = size_arg(hint).filter(|h| *h > 0);
        let mut total = 0usize;
        loop {
            let line = self.with_body(|b| b.readline(None))?;
            if line.is_empty() {
                break;
            }
            total = total.saturating_add(line.len());
            list.append(PyBytes::new(py, &line))?;
            if hint.is_some_and(|h| total >= h) {
                break;
            }
        }
        Ok(list)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.readline(py, None)?;
        Ok(if line.as_bytes().is_empty() {
            None
        } else {
            Some(line)
        })
    }
}
