//! The WSGI response: `start_response` and the `write()` callable. Python
//! values are checked and converted here; the HTTP encoding is
//! [`crate::http::response::Encoder`]'s, and the bytes go out through the
//! connection's [`Transport`].

use std::os::fd::RawFd;
use std::sync::Arc;

use pyo3::exceptions::{PyAssertionError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

use crate::conn::transport::Transport;
use crate::http::response::{Encoder, FLUSH_AT};

/// Response state for one request. Lives inside the `start_response`
/// Python object so that the app's `write()` and the worker share it.
pub struct Response {
    pub enc: Encoder,
    io: Arc<dyn Transport>,
    /// A write failed: the peer is gone; further writes are dropped.
    pub broken: bool,
    /// The request is over: a `write` the app kept must not reach the
    /// connection any more (it may serve another request by then).
    done: bool,
}

fn repr(obj: &Bound<'_, PyAny>) -> String {
    obj.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<object>".into())
}

fn py_str<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<&'a Bound<'a, PyString>> {
    obj.cast::<PyString>()
        .map_err(|_| PyTypeError::new_err(format!("{} is not a string", repr(obj))))
}

impl Response {
    pub fn new(io: Arc<dyn Transport>, enc: Encoder) -> Self {
        Response {
            enc,
            io,
            broken: false,
            done: false,
        }
    }

    /// gunicorn's Response.should_close, including a failed write.
    pub fn should_close(&self) -> bool {
        self.broken || self.enc.should_close()
    }

    fn start(&mut self, status: &Bound<'_, PyAny>, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        let status_str = py_str(status)?.to_str()?;
        self.enc.begin(status_str).map_err(PyValueError::new_err)?;
        for item in headers.try_iter()? {
            let item = item?;
            let not_a_pair = || {
                PyTypeError::new_err(format!(
                    "header {} is not a (name, value) tuple",
                    repr(&item)
                ))
            };
            let pair = item.cast::<PyTuple>().map_err(|_| not_a_pair())?;
            if pair.len() != 2 {
                return Err(not_a_pair());
            }
            let (name, value) = (pair.get_item(0)?, pair.get_item(1)?);
            let name = py_str(&name)?.to_str()?;
            let value = py_str(&value)?.to_str()?;
            self.enc
                .header(name, value)
                .map_err(PyValueError::new_err)?;
        }
        self.enc.end_headers();
        Ok(())
    }

    /// Queues body bytes; writes them out when `flush` or when the queue is
    /// large.
    pub fn write_body(&mut self, data: &[u8], flush: bool) -> PyResult<()> {
        if self.done {
            return Err(PyOSError::new_err(
                "write() of a request that is over (the app kept its write callable)",
            ));
        }
        if !self.enc.started() {
            return Err(PyAssertionError::new_err("write() before start_response()"));
        }
        self.enc.body(data);
        if flush || self.enc.out().len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes queued bytes to the socket.
    pub fn flush(&mut self) -> PyResult<()> {
        let out = self.enc.out();
        if out.is_empty() {
            return Ok(());
        }
        if self.broken || self.done {
            out.clear();
            return Err(PyOSError::new_err("connection closed by peer"));
        }
        let res = self.io.write_all(out);
        out.clear();
        res.map_err(|e| {
            self.broken = true;
            PyErr::from(e)
        })
    }

    /// Ends the response: head if still unsent, the last chunk, flush.
    pub fn finish(&mut self) -> PyResult<()> {
        if !self.enc.started() {
            return Err(PyAssertionError::new_err("start_response() was not called"));
        }
        self.enc.finish();
        self.flush()
    }

    /// Sends an open file's content from its current offset with
    /// sendfile(2), as gunicorn's Response.sendfile. Returns false when the
    /// caller must fall back to iterating.
    pub fn sendfile(&mut self, file_fd: RawFd) -> PyResult<bool> {
        use crate::conn::io::{file_position, file_size, seek};
        let Some(offset) = file_position(file_fd) else {
            return Ok(false);
        };
        let Some(size) = file_size(file_fd) else {
            return Ok(false);
        };
        let avail = u64::try_from(size.saturating_sub(offset)).unwrap_or(0);
        let nbytes = self.enc.file_body(avail);
        self.flush()?;
        if nbytes > 0 {
            self.io.sendfile(file_fd, offset, nbytes).map_err(|e| {
                self.broken = true;
                PyErr::from(e)
            })?;
        }
        self.enc.file_sent(nbytes);
        // Restores the file position, as gunicorn does.
        seek(file_fd, offset);
        Ok(true)
    }

    /// Error page bytes written in place of the response (nothing of it
    /// was sent yet).
    pub fn write_error(&mut self, status: u16, page: &[u8]) {
        if !self.done {
            let _ = self.io.write_all(page);
        }
        self.enc
            .replaced_by_error(status, crate::http::error_body_len(page));
    }

    /// The request is over (see `done`).
    pub fn end(&mut self) {
        self.done = true;
    }

    fn early_hints(&mut self, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut list = Vec::new();
        for item in headers.try_iter()? {
            let (name, value): (String, String) = item?.extract()?;
            list.push((name, value));
        }
        match self.enc.early_hints(&list).map_err(PyValueError::new_err)? {
            Some(bytes) if !self.done => self.io.write_all(&bytes).map_err(PyErr::from),
            _ => Ok(()),
        }
    }
}

/// The `start_response` callable handed to the app; its `write` attribute is
/// the WSGI write() callable.
#[pyclass(module = "ferrocorn", name = "start_response")]
pub struct StartResponse {
    pub resp: Response,
    /// The bound `write` returned by the first call, while the request runs
    /// (the worker takes it back after: it refers to this object).
    write: Option<Py<PyAny>>,
}

impl StartResponse {
    pub fn new(resp: Response) -> StartResponse {
        StartResponse { resp, write: None }
    }

    /// Readies a kept object for the next request.
    pub fn refill(&mut self, resp: Response, write: Option<Py<PyAny>>) {
        self.resp = resp;
        self.write = write;
    }

    pub fn take_write(&mut self) -> Option<Py<PyAny>> {
        self.write.take()
    }
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info=None))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        {
            let mut this = slf.borrow_mut();
            let resp = &mut this.resp;
            if resp.done {
                return Err(PyAssertionError::new_err(
                    "start_response() of a request that is over (the app kept it)",
                ));
            }
            match exc_info.filter(|e| !e.is_none()) {
                // PEP 3333: too late to change the response; re-raise.
                Some(info) if resp.enc.started() && resp.enc.headers_sent() => {
                    return Err(PyErr::from_value(info.get_item(1)?));
                }
                Some(_) => {}
                None if resp.enc.started() => {
                    return Err(PyAssertionError::new_err("Response headers already set!"));
                }
                None => {}
            }
            resp.start(status, headers)?;
            if let Some(w) = &this.write {
                return Ok(w.bind(slf.py()).clone());
            }
        }
        let write = slf.getattr(pyo3::intern!(slf.py(), "write"))?;
        slf.borrow_mut().write = Some(write.clone().unbind());
        Ok(write)
    }

    fn write(&mut self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let bytes = data
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err(format!("{} is not a byte", repr(data))))?;
        self.resp.write_body(bytes.as_bytes(), true)
    }

    /// `environ['wsgi.early_hints']`.
    fn early_hints(&mut self, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        self.resp.early_hints(headers)
    }
}
