//! ASGI WebSocket, the protocol side: which requests are upgrades, their
//! scope, the handshake response, and the socket as tungstenite sees it
//! (non-blocking: a read or write that would wait fails with `WouldBlock`,
//! and tungstenite keeps its state for the next try).

use std::io::{self, Read, Write};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

use super::deflate::Codec;
pub use super::deflate::{is_too_big, Deflate};
use super::{HeaderNames, Keys, ScopeParts};
use crate::conn::transport::Transport;
use crate::http::RequestHead;

fn header<'a>(head: &'a RequestHead<'_>, name: &str) -> Option<&'a [u8]> {
    head.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
        .map(|h| &*h.value)
}

/// Whether a comma-separated header value has `token` (case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The request asks for a WebSocket (RFC 6455 4.2.1): GET on HTTP/1.1,
/// `Upgrade: websocket`, `Connection: upgrade`, and a key.
pub fn is_upgrade(head: &RequestHead<'_>) -> bool {
    head.method == "GET"
        && head.version >= (1, 1)
        && header(head, "upgrade").is_some_and(|v| has_token(v, "websocket"))
        && header(head, "connection").is_some_and(|v| has_token(v, "upgrade"))
        && header(head, "sec-websocket-key").is_some()
}

/// The permessage-deflate parameters agreed from the client's offers.
pub fn deflate_offer(head: &RequestHead<'_>) -> Option<Deflate> {
    Deflate::negotiate(
        head.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(b"sec-websocket-extensions"))
            .map(|h| &*h.value),
    )
}

/// The client's `Sec-WebSocket-Key`.
pub fn client_key(head: &RequestHead<'_>) -> Vec<u8> {
    header(head, "sec-websocket-key")
        .map(|v| v.trim_ascii().to_vec())
        .unwrap_or_default()
}

/// The websocket connection scope: the HTTP scope's fields with
/// `type: websocket`, a ws/wss scheme and the offered subprotocols.
pub fn scope<'py>(
    py: Python<'py>,
    keys: &Keys,
    names: &mut HeaderNames,
    head: &RequestHead<'_>,
    parts: &ScopeParts<'_, 'py>,
) -> PyResult<Bound<'py, PyDict>> {
    let scope = super::http_scope(py, keys, names, head, parts)?;
    scope.set_item("type", "websocket")?;
    scope.set_item("scheme", if parts.scheme == "https" { "wss" } else { "ws" })?;
    scope.del_item("method")?;
    let subprotocols = PyList::empty(py);
    for h in head
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(b"sec-websocket-protocol"))
    {
        for p in h.value.split(|&b| b == b',') {
            let p = p.trim_ascii();
            if !p.is_empty() {
                subprotocols.append(PyString::new(py, &String::from_utf8_lossy(p)))?;
            }
        }
    }
    scope.set_item("subprotocols", subprotocols)?;
    Ok(scope)
}

/// The `101 Switching Protocols` response accepting the upgrade.
pub fn accept_response(
    key: &[u8],
    subprotocol: Option<&str>,
    deflate: Option<&Deflate>,
    headers: &[(String, String)],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nServer: ferrocorn\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(tungstenite::handshake::derive_accept_key(key).as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(p) = subprotocol {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(d) = deflate {
        out.extend_from_slice(b"Sec-WebSocket-Extensions: ");
        out.extend_from_slice(d.response_value().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (k, v) in headers {
        let lower = k.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "upgrade"
                | "connection"
                | "sec-websocket-accept"
                | "sec-websocket-protocol"
                // The framing is the server's: an app cannot add extensions.
                | "sec-websocket-extensions"
        ) {
            continue;
        }
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The request's socket for tungstenite: one non-blocking read or write
/// per call, through the connection's transport descriptor.
pub struct FdStream {
    pub io: Arc<dyn Transport>,
}

impl Read for FdStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.read_nb(buf)
    }
}

impl Write for FdStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.io.write_nb(buf)
    }

    /// What a TLS session still holds goes out (`WouldBlock` while the
    /// socket is full; plain sockets hold nothing).
    fn flush(&mut self) -> io::Result<()> {
        self.io.flush_nb()
    }
}

/// The socket as tungstenite sees it: as it is, or through the
/// permessage-deflate codec.
pub enum WsStream {
    Plain(FdStream),
    Deflate(Box<Codec<FdStream>>),
}

impl Read for WsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            WsStream::Plain(s) => s.read(buf),
            WsStream::Deflate(c) => c.read(buf),
        }
    }
}

impl Write for WsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WsStream::Plain(s) => s.write(buf),
            WsStream::Deflate(c) => c.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            WsStream::Plain(s) => s.flush(),
            WsStream::Deflate(c) => c.flush(),
        }
    }
}

/// A server-side WebSocket session on a request's socket.
pub type Session = tungstenite::WebSocket<WsStream>;

/// Starts a session after the handshake; `leftover` are bytes the client
/// sent after its request head (frames sent without waiting for the 101).
/// `max_message` 0: no limit.
pub fn session(
    io: Arc<dyn Transport>,
    leftover: Vec<u8>,
    max_message: usize,
    deflate: Option<Deflate>,
) -> Session {
    let limit = (max_message > 0).then_some(max_message);
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(limit)
        .max_frame_size(limit);
    let (stream, leftover) = match deflate {
        None => (WsStream::Plain(FdStream { io }), leftover),
        // The codec reads the leftover frames: they may be compressed.
        Some(d) => {
            let codec = Codec::new(FdStream { io }, d, limit.unwrap_or(usize::MAX), leftover);
            (WsStream::Deflate(Box::new(codec)), Vec::new())
        }
    };
    tungstenite::WebSocket::from_partially_read(
        stream,
        leftover,
        tungstenite::protocol::Role::Server,
        Some(config),
    )
}
