//! `wsgi.input`: the request body, read lazily from the socket as the app
//! asks for it (nothing is buffered whole), de-chunked in Rust.
//!
//! During a request the object owns the connection's read buffer; the
//! worker takes it back afterwards, with any pipelined bytes that follow
//! the body, via [`Input::take_state`].

use std::os::fd::RawFd;
use std::time::Duration;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::http::chunked::ChunkedDecoder;
use crate::netio;

const READ_CHUNK: usize = 64 * 1024;

pub enum BodyState {
    Done,
    Length(u64),
    Chunked(Box<ChunkedDecoder>),
}

pub struct InputState {
    pub fd: RawFd,
    pub timeout: Duration,
    /// Bytes read from the socket; `raw[pos..]` not yet consumed.
    pub raw: Vec<u8>,
    pub pos: usize,
    pub body: BodyState,
    /// De-chunked bytes not yet handed to the app.
    decoded: Vec<u8>,
    dpos: usize,
    /// The peer closed or failed mid-body: the connection cannot be reused.
    pub broken: bool,
    /// Total body bytes handed out (for the request-size metric and logs).
    pub consumed: u64,
    /// A malformed chunked body: the request is answered with this error
    /// (400) instead of a 500 for the exception it raised in the app.
    pub bad_request: Option<crate::http::HttpError>,
}

impl InputState {
    pub fn new(fd: RawFd, timeout: Duration, raw: Vec<u8>, pos: usize, body: BodyState) -> Self {
        InputState {
            fd,
            timeout,
            raw,
            pos,
            body,
            decoded: Vec::new(),
            dpos: 0,
            broken: false,
            consumed: 0,
            bad_request: None,
        }
    }

    /// Reads more from the socket into `raw`. Ok(false) at end of stream.
    fn fill_raw(&mut self, py: Option<Python<'_>>) -> std::io::Result<bool> {
        if self.pos == self.raw.len() {
            self.raw.clear();
            self.pos = 0;
        }
        let n = netio::read_blocking(py, self.fd, &mut self.raw, READ_CHUNK, self.timeout)?;
        Ok(n > 0)
    }

    /// Makes at least one body byte available in `avail()`, unless the body is
    /// complete. Returns false at the end of the body.
    fn ensure(&mut self, py: Option<Python<'_>>) -> std::io::Result<bool> {
        loop {
            match &mut self.body {
                BodyState::Done => return Ok(self.dpos < self.decoded.len()),
                BodyState::Length(0) => {
                    self.body = BodyState::Done;
                }
                BodyState::Length(_) => {
                    if self.pos < self.raw.len() {
                        return Ok(true);
                    }
                    if !self.fill_raw(py)? {
                        self.broken = true;
                        self.body = BodyState::Done;
                    }
                }
                BodyState::Chunked(dec) => {
                    if self.dpos < self.decoded.len() {
                        return Ok(true);
                    }
                    self.decoded.clear();
                    self.dpos = 0;
                    if self.pos < self.raw.len() {
                        let used = match dec.decode(&self.raw[self.pos..], &mut self.decoded) {
                            Ok(n) => n,
                            Err(e) => {
                                let err = std::io::Error::new(
                                    std::io::ErrorKind::InvalidData,
                                    e.detail.clone(),
                                );
                                self.bad_request = Some(e);
                                self.broken = true;
                                return Err(err);
                            }
                        };
                        self.pos += used;
                        if dec.is_done() {
                            self.body = BodyState::Done;
                            continue;
                        }
                        if !self.decoded.is_empty() {
                            return Ok(true);
                        }
                        if used > 0 {
                            continue;
                        }
                    }
                    if !self.fill_raw(py)? {
                        // gunicorn's ChunkedReader raises NoMoreData here.
                        self.broken = true;
                        self.body = BodyState::Done;
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "client closed the connection before the chunked body ended",
                        ));
                    }
                }
            }
        }
    }

    /// Up to `max` available body bytes, appended to `out`, consumed.
    fn take_avail(&mut self, max: usize, out: &mut Vec<u8>) -> usize {
        let n = match &mut self.body {
            BodyState::Length(left) => {
                let n = max.min(self.raw.len() - self.pos).min(*left as usize);
                out.extend_from_slice(&self.raw[self.pos..self.pos + n]);
                self.pos += n;
                *left -= n as u64;
                n
            }
            _ => {
                let n = max.min(self.decoded.len() - self.dpos);
                out.extend_from_slice(&self.decoded[self.dpos..self.dpos + n]);
                self.dpos += n;
                n
            }
        };
        self.consumed += n as u64;
        n
    }

    /// Reads up to `size` bytes (all when None).
    pub fn read(
        &mut self,
        py: Option<Python<'_>>,
        size: Option<usize>,
    ) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut want = size.unwrap_or(usize::MAX);
        while want > 0 && self.ensure(py)? {
            want -= self.take_avail(want, &mut out);
        }
        Ok(out)
    }

    /// Reads a line (through b'\n'), at most `size` bytes.
    pub fn readline(
        &mut self,
        py: Option<Python<'_>>,
        size: Option<usize>,
    ) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut want = size.unwrap_or(usize::MAX);
        while want > 0 && self.ensure(py)? {
            let avail: &[u8] = match &self.body {
                BodyState::Length(left) => {
                    let end = self.raw.len().min(self.pos + *left as usize);
                    &self.raw[self.pos..end]
                }
                _ => &self.decoded[self.dpos..],
            };
            let (n, found) = match memchr::memchr(b'\n', avail) {
                Some(i) if i < want => (i + 1, true),
                _ => (avail.len().min(want), false),
            };
            want -= self.take_avail(n, &mut out);
            if found {
                break;
            }
        }
        Ok(out)
    }

    /// Reads and discards the rest of the body, up to `limit` bytes. Returns
    /// true when the body ended cleanly (the connection can be reused).
    pub fn discard_rest(&mut self, limit: u64) -> bool {
        let mut sink = Vec::new();
        let mut discarded = 0u64;
        loop {
            match self.ensure(None) {
                Ok(true) => {
                    sink.clear();
                    discarded += self.take_avail(READ_CHUNK, &mut sink) as u64;
                    if discarded > limit {
                        return false;
                    }
                }
                Ok(false) => return !self.broken,
                Err(_) => return false,
            }
        }
    }
}

/// The Python-visible `wsgi.input` object.
#[pyclass(module = "ferrocorn", name = "Input")]
pub struct Input {
    pub state: Option<InputState>,
}

fn size_arg(size: Option<i64>) -> Option<usize> {
    size.filter(|s| *s >= 0).map(|s| s as usize)
}

fn io_err(e: std::io::Error) -> PyErr {
    PyOSError::new_err(format!("error reading request body: {e}"))
}

impl Input {
    /// Takes the state back after the request (the object becomes empty).
    pub fn take_state(&mut self) -> Option<InputState> {
        self.state.take()
    }
}

#[pymethods]
impl Input {
    #[pyo3(signature = (size=None))]
    fn read<'py>(&mut self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let data = match self.state.as_mut() {
            Some(st) => st.read(Some(py), size_arg(size)).map_err(io_err)?,
            None => Vec::new(),
        };
        Ok(PyBytes::new(py, &data))
    }

    #[pyo3(signature = (size=None))]
    fn readline<'py>(
        &mut self,
        py: Python<'py>,
        size: Option<i64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let data = match self.state.as_mut() {
            Some(st) => st.readline(Some(py), size_arg(size)).map_err(io_err)?,
            None => Vec::new(),
        };
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
        while let Some(st) = self.state.as_mut() {
            let line = st.readline(Some(py), None).map_err(io_err)?;
            if line.is_empty() {
                break;
            }
            total += line.len();
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
