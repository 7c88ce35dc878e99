//! The WSGI response: `start_response`, the `write()` callable, and the
//! framing of the body (Content-Length, chunked, or close-delimited), with
//! gunicorn 27's rules for status lines, header validation, hop-by-hop
//! headers and bodiless responses.

use std::os::fd::RawFd;
use std::time::Duration;

use pyo3::exceptions::{PyAssertionError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

use crate::netio;

/// Bytes queued before they are written in one go; a list response is
/// written with a single write(2) when it fits.
const FLUSH_AT: usize = 64 * 1024;

/// Response state for one request. Lives inside the `start_response`
/// Python object so that the app's `write()` and the worker share it.
pub struct Response {
    pub fd: RawFd,
    pub io_timeout: Duration,
    pub version: (u8, u8),
    pub is_head: bool,
    /// The request or the server wants the connection closed afterwards.
    pub must_close: bool,
    pub status: Option<String>,
    pub status_code: u16,
    pub headers: Vec<(String, String)>,
    pub response_length: Option<u64>,
    pub chunked: bool,
    pub omits_body: bool,
    pub upgrade: bool,
    pub headers_sent: bool,
    /// Body bytes sent (or queued), as gunicorn's `resp.sent`.
    pub sent: u64,
    out: Vec<u8>,
    warned_body: bool,
    /// A write failed: the peer is gone; further writes are dropped.
    pub broken: bool,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// HTAB / SP / VCHAR / obs-text, as chars (the str is later latin-1 encoded).
fn is_field_value(s: &str) -> bool {
    s.chars().all(|c| {
        c == ' '
            || c == '\t'
            || ('\x21'..='\x7e').contains(&c)
            || ('\u{80}'..='\u{ff}').contains(&c)
    })
}

fn is_status(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 3
        && b[..3].iter().all(u8::is_ascii_digit)
        && (b.len() == 3 || (b[3] == b' ' && is_field_value(&s[4..])))
}

fn is_hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Appends `s` encoded as latin-1 (chars above U+00FF cannot occur: they
/// were rejected by validation, except in the status reason, checked too).
fn push_latin1(out: &mut Vec<u8>, s: &str) {
    if s.is_ascii() {
        out.extend_from_slice(s.as_bytes());
    } else {
        out.extend(s.chars().map(|c| c as u32 as u8));
    }
}

impl Response {
    pub fn new(
        fd: RawFd,
        io_timeout: Duration,
        version: (u8, u8),
        is_head: bool,
        must_close: bool,
    ) -> Self {
        Response {
            fd,
            io_timeout,
            version,
            is_head,
            must_close,
            status: None,
            status_code: 0,
            headers: Vec::new(),
            response_length: None,
            chunked: false,
            omits_body: false,
            upgrade: false,
            headers_sent: false,
            sent: 0,
            out: Vec::new(),
            warned_body: false,
            broken: false,
        }
    }

    /// gunicorn's Response.should_close.
    pub fn should_close(&self) -> bool {
        if self.must_close || self.broken {
            return true;
        }
        if self.response_length.is_some() || self.chunked || self.is_head {
            return false;
        }
        !(self.status_code < 200 || self.status_code == 204 || self.status_code == 304)
    }

    fn start(&mut self, status: &Bound<'_, PyAny>, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        let status_str = status
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err(format!("{} is not a string", repr(status))))?
            .to_str()?;
        if !is_status(status_str) {
            return Err(PyValueError::new_err(format!(
                "Invalid status {}",
                repr(status)
            )));
        }
        let code: u16 = status_str[..3].parse().unwrap_or(0);
        let mut list = Vec::new();
        let mut length = None;
        let mut upgrade = false;
        for item in headers.try_iter()? {
            let item = item?;
            let pair = item.cast::<PyTuple>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "header {} is not a (name, value) tuple",
                    repr(&item)
                ))
            })?;
            if pair.len() != 2 {
                return Err(PyTypeError::new_err(format!(
                    "header {} is not a (name, value) tuple",
                    repr(&item)
                )));
            }
            let (name_obj, value_obj) = (pair.get_item(0)?, pair.get_item(1)?);
            let name = name_obj
                .cast::<PyString>()
                .map_err(|_| PyTypeError::new_err(format!("{} is not a string", repr(&name_obj))))?
                .to_str()?;
            if !is_token(name) {
                return Err(invalid_header_name(name));
            }
            let value = value_obj
                .cast::<PyString>()
                .map_err(|_| PyTypeError::new_err(format!("{} is not a string", repr(&value_obj))))?
                .to_str()?;
            if !is_field_value(value) {
                return Err(invalid_header(name));
            }
            let value = value.trim_matches(|c| c == ' ' || c == '\t');
            let is = |n: &str| name.eq_ignore_ascii_case(n);
            if is("content-length") {
                length = Some(value.parse::<u64>().map_err(|_| {
                    PyValueError::new_err(format!("invalid literal for Content-Length: {value:?}"))
                })?);
            } else if is_hop_by_hop(name) {
                if is("connection") && value.eq_ignore_ascii_case("upgrade") {
                    upgrade = true;
                } else if is("upgrade") && value.eq_ignore_ascii_case("websocket") {
                    list.push((name.to_string(), value.to_string()));
                }
                continue;
            }
            list.push((name.to_string(), value.to_string()));
        }
        let omits_body = self.is_head || code == 204 || code == 304 || (100..200).contains(&code);
        // RFC 9110 6.4.2: no Content-Length on 1xx or 204.
        if omits_body && (code == 204 || (100..200).contains(&code)) {
            length = None;
            list.retain(|(k, _)| !k.eq_ignore_ascii_case("content-length"));
        }
        self.status = Some(status_str.to_string());
        self.status_code = code;
        self.headers = list;
        self.response_length = length;
        self.upgrade = upgrade;
        self.omits_body = omits_body;
        self.chunked = length.is_none() && self.version >= (1, 1) && !omits_body;
        Ok(())
    }

    /// Queues the status line and headers (once).
    fn queue_head(&mut self) {
        if self.headers_sent {
            return;
        }
        self.headers_sent = true;
        let connection = if self.upgrade {
            "upgrade"
        } else if self.should_close() {
            "close"
        } else {
            "keep-alive"
        };
        let out = &mut self.out;
        out.extend_from_slice(if self.version == (1, 0) {
            b"HTTP/1.0 "
        } else {
            b"HTTP/1.1 "
        });
        push_latin1(
            out,
            self.status
                .as_deref()
                .unwrap_or("500 Internal Server Error"),
        );
        out.extend_from_slice(b"\r\nServer: ferrocorn\r\nDate: ");
        crate::httpdate::append_now(out);
        out.extend_from_slice(b"\r\nConnection: ");
        out.extend_from_slice(connection.as_bytes());
        out.extend_from_slice(b"\r\n");
        if self.chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        for (k, v) in &self.headers {
            push_latin1(out, k);
            out.extend_from_slice(b": ");
            push_latin1(out, v);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Queues body bytes with gunicorn's rules (never beyond Content-Length,
    /// nothing for bodiless responses, chunk framing). Writes out when
    /// `flush` or when the queue is large.
    pub fn write_body(&mut self, py: Python<'_>, data: &[u8], flush: bool) -> PyResult<()> {
        if self.status.is_none() {
            return Err(PyAssertionError::new_err("write() before start_response()"));
        }
        self.queue_head();
        let mut data = data;
        if self.omits_body {
            if !data.is_empty() && !self.warned_body {
                self.warned_body = true;
                crate::log_warning!(
                    "WSGI app sent body bytes on a no-body response (status={}); dropping per RFC 9110.",
                    self.status_code
                );
            }
            data = &[];
        }
        if let Some(limit) = self.response_length {
            let room = limit.saturating_sub(self.sent);
            if (data.len() as u64) > room {
                data = &data[..room as usize];
            }
        }
        if !data.is_empty() {
            self.sent += data.len() as u64;
            if self.chunked {
                self.out
                    .extend_from_slice(format!("{:X}\r\n", data.len()).as_bytes());
                self.out.extend_from_slice(data);
                self.out.extend_from_slice(b"\r\n");
            } else {
                self.out.extend_from_slice(data);
            }
        }
        if flush || self.out.len() >= FLUSH_AT {
            self.flush(py)?;
        }
        Ok(())
    }

    /// Writes queued bytes to the socket.
    pub fn flush(&mut self, py: Python<'_>) -> PyResult<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        if self.broken {
            self.out.clear();
            return Err(PyOSError::new_err("connection closed by peer"));
        }
        let res = netio::write_all(Some(py), self.fd, &self.out, self.io_timeout);
        self.out.clear();
        res.map_err(|e| {
            self.broken = true;
            PyErr::from(e)
        })
    }

    /// Ends the response: head if still unsent, the last chunk, flush.
    pub fn finish(&mut self, py: Python<'_>) -> PyResult<()> {
        self.queue_head();
        if self.chunked {
            self.out.extend_from_slice(b"0\r\n\r\n");
        }
        self.flush(py)
    }

    /// Sends a file with sendfile(2) as gunicorn's Response.sendfile does.
    /// Returns false when the caller must fall back to iterating.
    pub fn sendfile(&mut self, py: Python<'_>, file_fd: RawFd) -> PyResult<bool> {
        let Some(offset) = netio::file_position(file_fd) else {
            return Ok(false);
        };
        let nbytes = match self.response_length {
            Some(n) => n,
            None => match netio::file_size(file_fd) {
                Some(size) => (size - offset).max(0) as u64,
                None => return Ok(false),
            },
        };
        self.queue_head();
        if self.omits_body {
            return self.flush(py).map(|_| true);
        }
        if self.chunked {
            self.out
                .extend_from_slice(format!("{nbytes:X}\r\n").as_bytes());
        }
        self.flush(py)?;
        if nbytes > 0 {
            netio::sendfile_all(Some(py), self.fd, file_fd, offset, nbytes, self.io_timeout)
                .map_err(|e| {
                    self.broken = true;
                    PyErr::from(e)
                })?;
            self.sent += nbytes;
        }
        if self.chunked {
            self.out.extend_from_slice(b"\r\n");
        }
        // Restores the file position, as gunicorn does.
        netio::seek(file_fd, offset);
        Ok(true)
    }

    /// Sends `103 Early Hints` (HTTP/1.1+, before the response starts).
    fn early_hints(&mut self, py: Python<'_>, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.headers_sent || self.version < (1, 1) {
            return Ok(());
        }
        let mut out = b"HTTP/1.1 103 Early Hints\r\n".to_vec();
        for item in headers.try_iter()? {
            let (name, value): (String, String) = item?.extract()?;
            if !is_token(&name) {
                return Err(invalid_header_name(&name));
            }
            if !is_field_value(&value) {
                return Err(invalid_header(&name));
            }
            push_latin1(&mut out, &name);
            out.extend_from_slice(b": ");
            push_latin1(&mut out, value.trim_matches(|c| c == ' ' || c == '\t'));
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        netio::write_all(Some(py), self.fd, &out, self.io_timeout).map_err(PyErr::from)
    }
}

fn repr(obj: &Bound<'_, PyAny>) -> String {
    obj.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<object>".into())
}

fn invalid_header_name(name: &str) -> PyErr {
    PyValueError::new_err(format!("Invalid response header name {name:?}"))
}

fn invalid_header(name: &str) -> PyErr {
    PyValueError::new_err(format!("Invalid response header value for {name:?}"))
}

/// The `start_response` callable handed to the app; its `write` attribute is
/// the WSGI write() callable.
#[pyclass(module = "ferrocorn", name = "start_response")]
pub struct StartResponse {
    pub resp: Response,
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
            match exc_info.filter(|e| !e.is_none()) {
                // PEP 3333: too late to change the response; re-raise.
                Some(info) if resp.status.is_some() && resp.headers_sent => {
                    return Err(PyErr::from_value(info.get_item(1)?));
                }
                Some(_) => {}
                None if resp.status.is_some() => {
                    return Err(PyAssertionError::new_err("Response headers already set!"));
                }
                None => {}
            }
            resp.start(status, headers)?;
        }
        slf.getattr("write")
    }

    fn write(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let bytes = data
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err(format!("{} is not a byte", repr(data))))?;
        self.resp.write_body(py, bytes.as_bytes(), true)
    }

    /// `environ['wsgi.early_hints']`.
    fn early_hints(&mut self, py: Python<'_>, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        self.resp.early_hints(py, headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_follow_gunicorn() {
        assert!(is_status("200 OK"));
        assert!(is_status("200"));
        assert!(is_status("404 Not \tFound"));
        assert!(!is_status("20 OK"));
        assert!(!is_status("200OK"));
        assert!(!is_status("200 OK\r\n"));
        assert!(!is_status("abc OK"));
    }

    #[test]
    fn header_tokens_and_values() {
        assert!(is_token("X-Custom_1"));
        assert!(!is_token("Bad Name"));
        assert!(!is_token(""));
        assert!(is_field_value("text/plain; charset=é"));
        assert!(!is_field_value("a\r\nInjected: 1"));
        assert!(!is_field_value("\u{100}"));
    }
}
