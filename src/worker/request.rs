//! What every worker kind records of a finished request: the access-log
//! line (from the request fields captured before the head's buffer is
//! reused) and the request metrics.

use std::time::{Duration, SystemTime};

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::log::access::{AccessLog, AccessRecord};

/// The request fields the access log needs after the head's buffer is gone.
pub struct RequestLog {
    method: String,
    uri: Vec<u8>,
    path: String,
    query: String,
    version: (u8, u8),
    headers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RequestLog {
    pub fn capture(head: &crate::http::RequestHead<'_>) -> RequestLog {
        RequestLog {
            method: head.method.to_string(),
            uri: head.uri.to_vec(),
            // `U` is gunicorn's PATH_INFO: percent-decoded, one character
            // per byte.
            path: if head.path.contains(&b'%') {
                crate::http::latin1_to_string(&crate::http::percent_decode_path(head.path))
            } else {
                crate::http::latin1_to_string(head.path)
            },
            query: String::from_utf8_lossy(head.query).into_owned(),
            version: head.version,
            headers: head
                .headers
                .iter()
                .map(|h| (h.name.to_vec(), h.value.to_vec()))
                .collect(),
        }
    }

    pub fn log(
        self,
        access: &AccessLog,
        peer: &str,
        out: &crate::wsgi::Outcome,
        start: SystemTime,
        took: Duration,
        environ: Option<&Bound<'_, PyDict>>,
    ) {
        // `{NAME}e` atoms: environ keys, matched case-insensitively as gunicorn.
        let lookup = |name: &str| -> Option<String> {
            environ?.iter().find_map(|(k, v)| {
                let k = k.extract::<String>().ok()?;
                if k.eq_ignore_ascii_case(name) {
                    v.str().map(|s| s.to_string()).ok()
                } else {
                    None
                }
            })
        };
        let req_headers: Vec<(&[u8], &[u8])> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        let resp_headers = out.head.headers();
        let rec = AccessRecord {
            remote_addr: peer,
            method: &self.method,
            raw_uri: &self.uri,
            path: &self.path,
            query: &self.query,
            version: self.version,
            status: out.status,
            response_length: Some(out.sent),
            request_headers: &req_headers,
            response_headers: &resp_headers,
            request_start: start,
            request_time: took,
            pid: std::process::id(),
            environ: environ.map(|_| &lookup as &dyn Fn(&str) -> Option<String>),
        };
        if access.to_python() {
            match environ {
                Some(env) => crate::python::pylog::access(env.py(), access, &rec, Some(env)),
                None => Python::attach(|py| crate::python::pylog::access(py, access, &rec, None)),
            }
        } else {
            access.log(&rec);
        }
    }
}
