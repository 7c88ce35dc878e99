"""Raw HTTP/1.x helpers for the integration tests.

Ordinary requests go through `requests`; these are for edge cases where the
exact bytes on the wire matter: pipelining, malformed requests, framing.
Only loopback addresses and unix sockets are ever contacted.
"""
import socket
import time


class ConnectionClosed(Exception):
    """The peer closed the connection before a complete response arrived."""


class Response:
    def __init__(self, version, status, reason, headers, body, raw_head, chunked):
        self.version = version          # "HTTP/1.1"
        self.status = status            # int
        self.reason = reason            # str
        self.headers = headers          # list of (name, value), names as sent
        self.body = body                # bytes (de-chunked)
        self.raw_head = raw_head        # bytes of the status line + headers
        self.chunked = chunked          # True if Transfer-Encoding: chunked

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def __repr__(self):
        return "<Response %s %d %r headers=%r body=%r>" % (
            self.version, self.status, self.reason, self.headers, self.body[:200])


class RawConn:
    """A client connection with its own read buffer."""

    def __init__(self, port=None, host="127.0.0.1", timeout=10.0, unix_path=None, family=None):
        if unix_path is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(unix_path)
        else:
            fam = family or (socket.AF_INET6 if ":" in host else socket.AF_INET)
            self.sock = socket.socket(fam, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect((host, port))
        self.buf = b""
        self.eof = False
        self.timeout = timeout

    # -- context manager
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def _fill(self, deadline=None):
        if self.eof:
            raise ConnectionClosed(self.buf)
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("deadline passed")
            self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        finally:
            self.sock.settimeout(self.timeout)
        if not data:
            self.eof = True
            raise ConnectionClosed(self.buf)
        self.buf += data

    def read_line(self):
        while b"\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_until_close(self):
        while True:
            try:
                self._fill()
            except ConnectionClosed:
                break
        data, self.buf = self.buf, b""
        return data

    def read_some(self, timeout=2.0):
        """Whatever arrives within `timeout` (b"" on EOF)."""
        if self.buf:
            data, self.buf = self.buf, b""
            return data
        if self.eof:
            return b""
        try:
            self._fill(deadline=time.monotonic() + timeout)
        except ConnectionClosed:
            return b""
        data, self.buf = self.buf, b""
        return data

    def read_head(self):
        head = b""
        while True:
            line = self.read_line()
            head += line
            if line in (b"\r\n", b"\n"):
                return head

    def read_response(self, method="GET", allow_interim=False):
        """Read one response. 1xx interim responses are returned as such only
        when allow_interim is true, otherwise they are skipped."""
        while True:
            head = self.read_head()
            resp = parse_head(head)
            if 100 <= resp.status < 200 and resp.status != 101:
                if allow_interim:
                    return resp
                continue
            break
        te = (resp.header("transfer-encoding") or "").lower()
        cl = resp.header("content-length")
        if method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200:
            body = b""
        elif "chunked" in te:
            resp.chunked = True
            body = self._read_chunked()
        elif cl is not None:
            body = self.read_exact(int(cl))
        else:
            body = self.read_until_close()
        resp.body = body
        return resp

    def _read_chunked(self):
        body = b""
        while True:
            line = self.read_line()
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # trailers until empty line
                while self.read_line() not in (b"\r\n", b"\n"):
                    pass
                return body
            body += self.read_exact(size)
            assert self.read_exact(2) == b"\r\n", "chunk not followed by CRLF"

    def is_closed(self, timeout=3.0):
        """True if the server closes the connection within `timeout` (pending
        unread bytes are discarded)."""
        deadline = time.monotonic() + timeout
        self.buf = b""
        while time.monotonic() < deadline:
            try:
                self._fill(deadline=deadline)
                self.buf = b""
            except ConnectionClosed:
                return True
            except (socket.timeout, TimeoutError):
                return False
            except OSError:
                return True
        return False


def parse_head(head):
    lines = head.split(b"\r\n")
    status_line = lines[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    version = parts[0]
    status = int(parts[1])
    reason = parts[2] if len(parts) > 2 else ""
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name, value.strip()))
    return Response(version, status, reason, headers, b"", head, False)


def request(port, data, method="GET", timeout=10.0, host="127.0.0.1", unix_path=None):
    """Send raw bytes, read one response."""
    with RawConn(port, host=host, timeout=timeout, unix_path=unix_path) as c:
        c.send(data)
        return c.read_response(method)


def exchange(port, data, timeout=10.0):
    """Send raw bytes, return everything the server sends until it closes."""
    with RawConn(port, timeout=timeout) as c:
        c.send(data)
        return c.read_until_close()


def chunked(body, sizes=None):
    """Encode `body` with chunked transfer coding (optionally in given sizes)."""
    out = b""
    pos = 0
    sizes = list(sizes or [])
    while pos < len(body):
        n = sizes.pop(0) if sizes else 4096
        piece = body[pos:pos + n]
        out += b"%x\r\n%s\r\n" % (len(piece), piece)
        pos += n
    return out + b"0\r\n\r\n"


def get(path="/", host="127.0.0.1", version="1.1", headers=(), close=True):
    """Build a simple GET request."""
    lines = ["GET %s HTTP/%s" % (path, version), "Host: %s" % host]
    lines += ["%s: %s" % h for h in headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def wait_until(probe, done, timeout=5.0, interval=0.05):
    """Calls probe() until done(value) holds; returns that value. Fails
    with the last value when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        assert time.monotonic() < deadline, "gave up waiting; last value: %r" % (value,)
        time.sleep(interval)
