"""Tests for minihttpd.py: pure parser units and a real server on raw sockets.

Run with:  python3 -m unittest -v test_minihttpd

Every server test starts minihttpd.py as a subprocess on port 0 (a free
port chosen by the OS), reads the port from the first line it prints, and
speaks bytes to it the way a real client would.  Nothing here needs a
package outside the standard library; the one browser test skips, with a
printed reason, where Chromium is not installed.
"""

import gzip
import http.client
import io
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "minihttpd.py")
sys.path.insert(0, HERE)
import minihttpd  # noqa: E402  (the pure parts are tested without a server)

START_TIMEOUT_S = 20     # generous: a loaded CI machine can be slow to start Python
IO_TIMEOUT_S = 10        # every socket operation in a test is bounded by this
SERVING_RE = re.compile(r"^Serving (.+) on http://(\[[^\]]+\]|[^:/]+):(\d+)/$")


# ---------------------------------------------------------------------------
# Helpers: start a server, send raw bytes, parse what comes back
# ---------------------------------------------------------------------------

class Server(object):
    """A running minihttpd subprocess: .port, .proc, .root, .stderr_text()."""

    def __init__(self, proc, port, root, first_line, stderr_path):
        self.proc = proc
        self.port = port
        self.root = root
        self.first_line = first_line
        self.stderr_path = stderr_path

    def url(self, path="/"):
        """Return http://127.0.0.1:PORT + path."""
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def stderr_text(self):
        """Everything the server has written to stderr so far."""
        with open(self.stderr_path, "r", encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self):
        """Terminate the server (if still running) and reap it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()


def read_line_with_deadline(stream, deadline_s):
    """Read one line from a pipe, giving up after deadline_s seconds."""
    buf = b""
    end = time.monotonic() + deadline_s
    fd = stream.fileno()
    while not buf.endswith(b"\n"):
        left = end - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        ch = os.read(fd, 1)
        if not ch:
            break
        buf += ch
    return buf.decode("utf-8", "replace")


def start_server(testcase, root, *args, **kwargs):
    """Start minihttpd on a free port serving root; stopped at test cleanup.

    Extra args are passed on the command line.  kwargs: preexec_fn (for
    resource limits), bind (default 127.0.0.1), port (default "0").
    Returns a Server.
    """
    bind = kwargs.get("bind", "127.0.0.1")
    port = kwargs.get("port", "0")
    cmd = [sys.executable, SERVER, "-p", str(port), "-d", root]
    if bind:
        cmd += ["-b", bind]
    cmd += list(args)
    errfile = tempfile.NamedTemporaryFile(prefix="minihttpd-stderr-", delete=False)
    errfile.close()
    testcase.addCleanup(os.unlink, errfile.name)
    err = open(errfile.name, "wb")
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    popen_kwargs = {}
    if kwargs.get("preexec_fn") is not None:
        popen_kwargs["preexec_fn"] = kwargs["preexec_fn"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err,
                            stdin=subprocess.DEVNULL, env=env, **popen_kwargs)
    err.close()
    line = read_line_with_deadline(proc.stdout, START_TIMEOUT_S).rstrip("\r\n")
    m = SERVING_RE.match(line)
    if not m:
        proc.kill()
        proc.wait(timeout=10)
        with open(errfile.name, "rb") as f:
            detail = f.read().decode("utf-8", "replace")
        testcase.fail("server did not start: first line %r, stderr %r" % (line, detail))
    server = Server(proc, int(m.group(3)), root, line, errfile.name)
    testcase.addCleanup(server.stop)
    return server


def make_tree(testcase, files=None):
    """Create a temporary directory holding files {relpath: bytes or None for a dir}."""
    root = tempfile.mkdtemp(prefix="minihttpd-test-")
    testcase.addCleanup(shutil.rmtree, root, True)
    for rel, data in sorted((files or {}).items()):
        path = os.path.join(root, *rel.split("/"))
        if data is None:
            os.makedirs(path, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return root


def connect(port, timeout=IO_TIMEOUT_S):
    """Open a TCP connection to the server on 127.0.0.1."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return sock


def recv_until_closed(sock, limit=64 * 1024 * 1024):
    """Read until the peer closes (or the socket times out); return the bytes."""
    chunks = []
    total = 0
    while total < limit:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def send_raw(port, data, timeout=IO_TIMEOUT_S):
    """Send data on a new connection, half-close, and read until the server closes."""
    sock = connect(port, timeout)
    try:
        sock.sendall(data)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        return recv_until_closed(sock)
    finally:
        sock.close()


class Response(object):
    """A parsed HTTP response: status, reason, headers (lower-case dict), body."""

    def __init__(self, status, reason, headers, body, raw_head, header_list):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.raw_head = raw_head
        self.header_list = header_list

    def __repr__(self):
        return "<Response %d %r %r body=%r>" % (self.status, self.reason, self.headers, self.body[:200])


def parse_one_response(raw, head_request=False):
    """Parse one response from the start of raw; return (Response, rest).

    Handles Content-Length, chunked, and read-to-close bodies; 1xx, 204
    and 304 responses and responses to HEAD (head_request=True) have no body.
    """
    sep = raw.find(b"\r\n\r\n")
    if sep < 0:
        raise ValueError("no complete response head in %r" % raw[:300])
    head = raw[:sep].decode("latin-1")
    rest = raw[sep + 4:]
    lines = head.split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1])
    reason = parts[2] if len(parts) > 2 else ""
    headers = {}
    header_list = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        header_list.append((name, value.strip()))
        key = name.strip().lower()
        if key in headers:
            headers[key] += ", " + value.strip()
        else:
            headers[key] = value.strip()
    if head_request or status in (204, 304) or 100 <= status < 200:
        body = b""
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            line_end = rest.index(b"\r\n")
            size = int(rest[:line_end].split(b";")[0], 16)
            rest = rest[line_end + 2:]
            if size == 0:
                # trailers end with an empty line
                end = rest.index(b"\r\n")
                while end != 0:
                    rest = rest[end + 2:]
                    end = rest.index(b"\r\n")
                rest = rest[2:]
                break
            body += rest[:size]
            if rest[size:size + 2] != b"\r\n":
                raise ValueError("bad chunk framing")
            rest = rest[size + 2:]
    elif "content-length" in headers:
        n = int(headers["content-length"])
        if len(rest) < n:
            raise ValueError("body shorter than Content-Length: %d < %d" % (len(rest), n))
        body, rest = rest[:n], rest[n:]
    else:
        body, rest = rest, b""
    return Response(status, reason, headers, body, head, header_list), rest


def parse_response(raw, head_request=False):
    """Parse exactly one response from raw (what send_raw returned)."""
    resp, _ = parse_one_response(raw, head_request)
    return resp


def parse_responses(raw, head_flags=None):
    """Parse every response in raw (pipelining); head_flags[i] marks HEAD answers."""
    out = []
    i = 0
    while raw:
        flag = bool(head_flags and i < len(head_flags) and head_flags[i])
        resp, raw = parse_one_response(raw, flag)
        out.append(resp)
        i += 1
    return out


def read_response(sock, head_request=False):
    """Read exactly one response from an open keep-alive socket."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ValueError("connection closed before a full head: %r" % buf)
        buf += data
    while True:
        try:
            resp, rest = parse_one_response(buf, head_request)
        except (ValueError, IndexError):
            data = sock.recv(65536)
            if not data:
                raise
            buf += data
            continue
        if rest:
            raise ValueError("unexpected extra bytes after response: %r" % rest[:100])
        return resp


def request(port, method, path, headers=None, body=b"", version="HTTP/1.1"):
    """Send one request with Connection: close and return the parsed Response."""
    lines = ["%s %s %s" % (method, path, version), "Host: 127.0.0.1:%d" % port]
    hdrs = dict(headers or {})
    for name, value in hdrs.items():
        lines.append("%s: %s" % (name, value))
    if not any(k.lower() == "connection" for k in hdrs):
        lines.append("Connection: close")
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in hdrs):
        lines.append("Content-Length: %d" % len(body))
    raw = send_raw(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    return parse_response(raw, head_request=(method == "HEAD"))


def get(port, path, headers=None):
    """GET path with Connection: close; return the Response."""
    return request(port, "GET", path, headers)


def wait_for(predicate, timeout=IO_TIMEOUT_S, interval=0.02):
    """Poll predicate() until it is true or timeout passes; return its last value."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= end:
            return value
        time.sleep(interval)


def run_cli(*args, **kwargs):
    """Run minihttpd.py with args to completion; return CompletedProcess (text)."""
    timeout = kwargs.get("timeout", 20)
    return subprocess.run([sys.executable, SERVER] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, timeout=timeout,
                          universal_newlines=True)
