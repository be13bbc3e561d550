#!/usr/bin/env python3
"""minihttpd: a one-file HTTP/1.1 file server, standard library only.

Share a folder on a trusted network, receive uploads, or test an HTTP
client:

    python3 minihttpd.py -d .            # serve the current folder on :8000
    python3 minihttpd.py -d www -p 0     # any free port
    python3 minihttpd.py -u -d inbox     # also accept uploads (PUT, POST, forms)

What it is: keep-alive, pipelining, ranges (resumable downloads, video
seeking), conditional requests, directory listings in HTML and JSON,
gzip, uploads that never leave a half-written file, many clients on one
thread.  What it deliberately is not: a CGI host, a reverse proxy, or a
server for the open Internet.  It runs unchanged on CPython 3.6 and later.

One thread serves everyone, so the loop is fair by rule: each turn gives
each connection a bounded slice (one request, 256 KiB written, one
piece of a generated body), and every input has a limit that answers
with a clear status when reached.

Map of this file (each section uses only those above it):
   1. Constants and limits
   2. Errors
   3. HTTP parsing and formatting   (pure functions on bytes, no sockets)
   4. Request bodies                (body readers and multipart decoder, pure)
   5. Paths and files               (root confinement, content types)
   6. Responses
   7. Generated bodies              (folder archives and QR codes, pure generators)
   8. Pages                         (listing, error and landing pages)
   9. Handlers                      (request, ctx -> Response or upload sink)
  10. Uploads                       (temporary files, all-or-nothing publish)
  11. WebDAV and dispatch           (properties, locks; every method to its handler)
  12. Transport and connection      (socket layer; the per-client state machine)
  13. Server and loop               (accepting, selector, turns, deadlines)
  14. Command line
"""

__version__ = "1.1.0"

import argparse
import base64
import binascii
import calendar
import collections
import errno
import functools
import hashlib
import hmac
import html
import http
import ipaddress
import json
import mimetypes
import operator
import os
import re
import selectors
import signal
import socket
import stat
import sys
import tempfile
import time
import urllib.parse
import zlib

try:
    import resource                     # POSIX only: the descriptor limit
except ImportError:
    resource = None
try:
    import ssl                          # absent from some minimal Python builds
except ImportError:
    ssl = None


# ---------------------------------------------------------------------------
# 1. Constants and limits
# ---------------------------------------------------------------------------

SERVER_NAME = "minihttpd/" + __version__
DEFAULT_PORT = 8000
FALLBACK_PORT = 8080                   # tried when the default port is taken
MAX_REQUEST_LINE_BYTES = 8192          # RFC 9112 §3 recommends at least 8000
MAX_HEADER_BYTES = 64 * 1024           # the whole head; browsers send ~1 KiB
MAX_HEADER_FIELDS = 100                # bounds the work a hostile head can cause
MAX_LEADING_BLANK_BYTES = 1024         # RFC 9112 §2.2 lets us skip a few CRLFs
MAX_RANGES = 100                       # more is a denial-of-service pattern, not a client
MAX_RANGE_OVERLAPS = 1                 # ranges overlapping an earlier one; more: whole file
MAX_POSITION_DIGITS = 18               # a longer byte position is past any file (and int()
                                       # of 5,000 digits raises on 3.11+)
MAX_HEADER_PARAMS = 64                 # "; name=value" pairs in one header field
MAX_PATH_SEGMENTS = 64                 # deeper paths get 414 (os.makedirs recursed at 2,000)
MAX_NAME_BYTES = 255                   # NAME_MAX on Linux, macOS and Windows
MAX_LISTING_ENTRIES = 20000            # a listing shows this many; it says how many more
MAX_LARGE_LISTINGS = 4                 # listings too large for one step, at once; more: 503
LISTING_STEP_ENTRIES = 256             # entries stat()ed or rendered per body piece
MAX_FORM_PARTS = 1000                  # parts in one form post; more get 413
FORM_PARTS_PER_TURN = 4                # part starts and ends (each end an fsync) per turn
MAX_CHUNK_LINE_BYTES = 4096            # a chunk-size line with its extensions
MAX_TRAILER_BYTES = 16 * 1024
MAX_PART_HEADER_BYTES = 16 * 1024      # one multipart part's header block
TIMEOUT_S = 10.0                       # --timeout: the base of every phase deadline
IDLE_TIMEOUT_FACTOR = 1.5              # keep-alive connection with nothing to say: 15 s
WRITE_TIMEOUT_FACTOR = 6.0             # a reader that takes nothing for 60 s is gone
                                       # (the head: T from its first byte; a body pause: T)
LINGER_S = 2.0                         # read and drop input after our FIN so the
                                       # client sees our answer, not a reset
SHUTDOWN_GRACE_S = 5.0                 # in-flight responses may finish on SIGTERM
LISTEN_BACKLOG = 1024                  # socketserver's 5 drops SYNs under load
RECV_BYTES = 256 * 1024                # at most this much is read per connection per turn
FILE_CHUNK_BYTES = 256 * 1024          # read/sendfile step: bounded memory per client
SMALL_FILE_BYTES = 64 * 1024           # read whole and send with the head: one syscall
SEND_BUFFER_BYTES = 256 * 1024         # fill the output buffer up to this before a send
WRITE_BUDGET_BYTES = 256 * 1024        # bytes one connection may send per loop turn
BODY_STEPS_PER_TURN = 1                # generated-body pieces (gzip, listing) per turn:
                                       # 6 gzip streams kept a probe at 120 ms with 8,
                                       # 24 ms with 1, at the same speed for each stream
GZIP_STEP_BYTES = 64 * 1024            # input compressed per piece: ~1 ms of CPU
MAX_OPEN_FILES_DEFAULT = 16384         # the soft descriptor limit is raised to this
CONNECTIONS_WITHOUT_RLIMIT = 500       # Windows' select() takes 512 sockets
ACCEPT_BACKOFF_S = 0.5                 # accept() failed for lack of descriptors
ACCEPT_ERROR_LOG_S = 10.0              # at most one "cannot accept" line this often
ACCEPTS_PER_EVENT = 64
GZIP_MIN_BYTES = 1024                  # below this gzip's header outweighs the savings
GZIP_IN_MEMORY_BYTES = 256 * 1024      # larger bodies are compressed as they are sent
GZIP_LEVEL = 6
UPLOAD_TMP_PREFIX = ".minihttpd-upload-"
WRITEBACK_BYTES = 16 * 1024 * 1024     # an upload asks the kernel to write back this often
STALE_UPLOAD_S = 24 * 3600             # a temporary this old is stale whoever made it
STALE_SWEEP_S = 600                    # a folder is swept for stale temporaries this often

AUTH_REALM = "minihttpd"
AUTH_FAILURES_ALLOWED = 10             # wrong passwords from one address within ...
AUTH_FAILURE_WINDOW_S = 60.0           # ... this long earn a 429 ...
AUTH_BLOCK_S = 60.0                    # ... for this long
AUTH_TABLE_SIZE = 1024                 # addresses remembered; the oldest is forgotten first
FILE_CACHE_ENTRIES = 256               # small files whose 200 is kept ...
CACHED_FILE_BYTES = 16 * 1024          # ... if at most this large: 4 MiB at the most
HOST_CACHE_ENTRIES = 256               # Host values whose check_host answer is kept
CORS_MAX_AGE_S = 600                   # how long a browser may cache a preflight answer
TLS_SEND_BYTES = 64 * 1024             # one TLS write: a retry after WANT_WRITE must
                                       # offer at least what the last try did
TLS_HANDSHAKE_RECORD = b"\x16"         # the first byte of a TLS ClientHello

# Methods that change the share: behind --auth-writes, refused cross-site.
WRITE_METHODS = frozenset(["PUT", "POST", "DELETE", "PATCH", "MKCOL", "COPY", "MOVE",
                           "PROPPATCH", "LOCK", "UNLOCK"])

CLOSING_STATUSES = frozenset([400, 408, 413, 414, 431, 501, 505])  # framing can't be trusted
READ_EVENTS = selectors.EVENT_READ
WRITE_EVENTS = selectors.EVENT_WRITE

# Methods this server knows; those not allowed for a resource get 405, others 501.
KNOWN_METHODS = frozenset(["GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE",
                           "PATCH", "TRACE", "CONNECT"])

# Types that win over the platform's mimetypes tables, which differ between
# machines (Windows' registry has served .js as text/plain).
CONTENT_TYPES = {
    ".html": "text/html", ".htm": "text/html", ".css": "text/css",
    ".js": "text/javascript", ".mjs": "text/javascript", ".json": "application/json",
    ".txt": "text/plain", ".md": "text/markdown", ".csv": "text/csv",
    ".xml": "application/xml", ".svg": "image/svg+xml", ".png": "image/png",
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
    ".webp": "image/webp", ".ico": "image/x-icon", ".pdf": "application/pdf",
    ".zip": "application/zip", ".gz": "application/gzip", ".tgz": "application/gzip",
    ".bz2": "application/x-bzip2", ".xz": "application/x-xz",
    ".zst": "application/zstd", ".7z": "application/x-7z-compressed",
    ".tar": "application/x-tar", ".wasm": "application/wasm",
    ".mp4": "video/mp4", ".webm": "video/webm", ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg", ".wav": "audio/wav", ".woff2": "font/woff2",
    ".woff": "font/woff",
}
COMPRESSIBLE_TYPES = frozenset([
    "application/json", "application/javascript", "application/xml",
    "image/svg+xml", "application/wasm", "application/x-yaml",
])

IS_WINDOWS = os.name == "nt"
PROCESS_UMASK = os.umask(0o022)        # read once (the only way to read it) ...
os.umask(PROCESS_UMASK)                # ... and put back at once
HAS_SENDFILE = hasattr(os, "sendfile")
FADVISE_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None) if hasattr(os, "posix_fadvise") \
    else None


# ---------------------------------------------------------------------------
# 2. Errors
# ---------------------------------------------------------------------------

class HTTPError(Exception):
    """A client fault or refusal that becomes a response with this status."""

    def __init__(self, status, message="", headers=None, detail=None):
        Exception.__init__(self, status, message)
        self.status = status
        self.message = message
        self.headers = list(headers or [])
        self.detail = detail          # for the error log only (an OS error, a path)


def reason_phrase(status):
    """Return the standard reason phrase for status ("OK", "Not Found", ...)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


# ---------------------------------------------------------------------------
# 3. HTTP parsing and formatting: pure functions on bytes, no sockets
# ---------------------------------------------------------------------------

TOKEN_RE = re.compile(rb"\A[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
VERSION_RE = re.compile(rb"\AHTTP/(\d)(?:\.(\d))?\Z")
BAD_FIELD_VALUE_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
DIGITS_RE = re.compile(r"\A[0-9]*\Z")  # ASCII only: str.isdigit() takes "²" too
BAD_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
ABSOLUTE_FORM_RE = re.compile(r"\A[A-Za-z][A-Za-z0-9+.\-]*://")
ETAG_LIST_RE = re.compile(r'\s*(?:(W/)?("[^"]*")|(\*))\s*(?:,|\Z)')


class Request(object):
    """A parsed request head.  `client` is filled in by the connection."""

    __slots__ = ("method", "target", "version", "headers", "client", "route", "user",
                 "_index")

    def __init__(self, method, target, version, headers):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.client = None
        self.route = None             # set once by dispatch
        self.user = None              # the user its credentials named (--auth)
        index = {}
        for name, value in headers:
            key = name.lower()
            if key in index:
                index[key] = index[key] + ", " + value
            else:
                index[key] = value
        self._index = index

    def get_header(self, name, default=None):
        """Return the field's value (repeated fields joined by ", ") or default."""
        return self._index.get(name.lower(), default)

    def header_tokens(self, name):
        """Return the comma-separated tokens of a field, lower-cased."""
        value = self._index.get(name.lower(), "")
        return [t.strip().lower() for t in value.split(",") if t.strip()]

    @property
    def keep_alive(self):
        """Whether the client lets the connection stay open (RFC 9112 §9.3)."""
        tokens = self.header_tokens("connection")
        if "close" in tokens:
            return False
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return True

    def request_line(self):
        """The request line as the client sent it, for logs."""
        return "%s %s %s" % (self.method, self.target, self.version)


def _find_head_end(data, start):
    """Return (end_of_head_index, length_of_blank_line) or (-1, 0)."""
    crlf = data.find(b"\n\r\n", start)
    lf = data.find(b"\n\n", start)
    if crlf < 0 and lf < 0:
        return -1, 0
    if lf < 0 or (0 <= crlf < lf):
        return crlf, 3
    return lf, 2


def parse_request_head(data):
    """Parse a request head at the start of data.

    Returns None when more bytes are needed, else (Request, consumed) where
    consumed counts the head and the blank line that ends it.  Raises
    HTTPError 400 (malformed), 414 (request line too long), 431 (head too
    large or too many fields) or 505 (unsupported HTTP version).
    """
    data = bytes(data)
    start = 0
    # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before
    # the request line (some clients send a stray CRLF after a POST body).
    while start < len(data) and data[start:start + 1] in (b"\r", b"\n"):
        if data[start:start + 2] == b"\r\n":
            start += 2
        elif data[start:start + 1] == b"\n":
            start += 1
        elif start + 1 == len(data):
            break                       # a lone CR: wait for its LF
        else:
            raise HTTPError(400, "Stray carriage return before the request line.")
        if start > MAX_LEADING_BLANK_BYTES:
            raise HTTPError(400, "Too many empty lines before the request line.")
    line_end = data.find(b"\n", start)
    if line_end < 0:
        if len(data) - start > MAX_REQUEST_LINE_BYTES:
            raise HTTPError(414, "The request line is too long.")
        return None
    if line_end - start > MAX_REQUEST_LINE_BYTES:
        raise HTTPError(414, "The request line is too long.")
    head_end, blank = _find_head_end(data, line_end)
    if head_end < 0:
        if len(data) - start > MAX_HEADER_BYTES:
            raise HTTPError(431, "The request head is too large.")
        return None
    if head_end - start > MAX_HEADER_BYTES:
        raise HTTPError(431, "The request head is too large.")
    lines = data[start:head_end].split(b"\n")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]

    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[1]:
        raise HTTPError(400, "Malformed request line.")
    method, target, version = parts
    if not TOKEN_RE.match(method):
        raise HTTPError(400, "Malformed method.")
    if BAD_FIELD_VALUE_RE.search(target) or b"\t" in target or b"\r" in target:
        raise HTTPError(400, "Malformed request target.")
    match = VERSION_RE.match(version)
    if not match:
        raise HTTPError(400, "Malformed HTTP version.")
    major = int(match.group(1))
    if major != 1:
        raise HTTPError(505, "Only HTTP/1.0 and HTTP/1.1 are supported.")
    if match.group(2) is None:
        raise HTTPError(400, "Malformed HTTP version.")
    # RFC 9110 §6.2: a higher minor version is served as the highest we know.
    version_text = "HTTP/1.0" if match.group(2) == b"0" else "HTTP/1.1"

    headers = []
    if len(lines) - 1 > MAX_HEADER_FIELDS:
        raise HTTPError(431, "Too many header fields.")
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            # RFC 9112 §5.2: obsolete line folding may be rejected with 400.
            raise HTTPError(400, "Folded header lines are not accepted.")
        name, sep, value = line.partition(b":")
        if not sep or not TOKEN_RE.match(name):
            raise HTTPError(400, "Malformed header field.")
        value = value.strip(b" \t")
        if BAD_FIELD_VALUE_RE.search(value) or b"\r" in value:
            raise HTTPError(400, "Invalid character in a header field.")
        headers.append((name.decode("ascii"), value.decode("latin-1")))

    request = Request(method.decode("ascii"), target.decode("latin-1"),
                      version_text, headers)
    hosts = [v for n, v in headers if n.lower() == "host"]
    if len(hosts) > 1:
        raise HTTPError(400, "More than one Host header.")
    if version_text == "HTTP/1.1" and not hosts:
        raise HTTPError(400, "HTTP/1.1 requests need a Host header.")
    return request, head_end + blank


def parse_target(target):
    """Split a request target into (decoded path, raw query).

    The path is percent-decoded but not normalised.  Bytes that are not
    UTF-8 are kept as surrogates (as os.fsdecode does on POSIX), so a file
    whose name is not UTF-8 can still be reached by its exact bytes.
    Absolute-form targets (http://host/path) are reduced to their path;
    "*" stays "*".  Raises HTTPError(400) for a malformed target or NUL.
    """
    if target == "*":
        return "*", ""
    if ABSOLUTE_FORM_RE.match(target):
        try:
            parts = urllib.parse.urlsplit(target)
        except ValueError:              # "http://[::1/": an unclosed IPv6 literal
            raise HTTPError(400, "Malformed absolute URI.")
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    if not target.startswith("/"):
        raise HTTPError(400, "The request target must start with '/'.")
    target = target.split("#", 1)[0]
    raw_path, _, query = target.partition("?")
    if BAD_PERCENT_RE.search(raw_path):
        raise HTTPError(400, "Bad percent-encoding in the path.")
    raw = urllib.parse.unquote_to_bytes(raw_path)
    try:
        path = raw.decode("utf-8")
    except UnicodeDecodeError:
        if IS_WINDOWS:                  # names there are Unicode: no such file
            raise HTTPError(400, "The path is not valid UTF-8.")
        path = raw.decode("utf-8", "surrogateescape")
    if "\x00" in path:
        raise HTTPError(400, "NUL in the path.")
    return path, query


def url_quote(text):
    """Percent-encode a path for a URL, keeping the exact bytes of any name."""
    return urllib.parse.quote(text.encode("utf-8", "surrogateescape"))


def display_text(text):
    """A name as a person sees it: bytes that are not UTF-8 become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def parse_query(query):
    """Return the query string as a dict of first values."""
    result = {}
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        result.setdefault(name, value)
    return result


def parse_body_framing(request):
    """Return the body length (0 for none) or None for chunked.

    Raises HTTPError 400 for conflicting or malformed framing (RFC 9112
    §6.3: both Content-Length and Transfer-Encoding are a smuggling sign),
    including any transfer coding other than exactly "chunked": a body we
    cannot frame cannot be skipped, so the connection must close (§6.1).
    """
    te = request.get_header("transfer-encoding")
    cl = request.get_header("content-length")
    if te is not None:
        if cl is not None:
            raise HTTPError(400, "Both Content-Length and Transfer-Encoding.")
        if request.version == "HTTP/1.0":
            raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request.")
        codings = [t.strip().lower() for t in te.split(",")]
        if codings != ["chunked"]:
            raise HTTPError(400, "Only the chunked transfer coding is supported.")
        return None
    if cl is None:
        return 0
    values = set(v.strip() for v in cl.split(","))
    if len(values) != 1:
        raise HTTPError(400, "Conflicting Content-Length values.")
    value = values.pop()
    if not value or len(value) > 18 or not DIGITS_RE.match(value):
        raise HTTPError(400, "Malformed Content-Length.")
    return int(value)


def parse_position(text):
    """A byte position from ASCII digits; one longer than any file is capped."""
    return int(text) if len(text) <= MAX_POSITION_DIGITS else 10 ** MAX_POSITION_DIGITS


def parse_range(value, size):
    """Parse a Range header against a representation of size bytes.

    Returns a list of inclusive (start, end) pairs, sorted, with ranges that
    overlap or touch merged, so the body is never larger than the file; or
    None when the header is to be ignored (not bytes, malformed, too many
    ranges, or more than MAX_RANGE_OVERLAPS overlapping ones: RFC 9110
    §14.2 lets a server ignore such a pattern).  Raises HTTPError(416)
    when no range is satisfiable (RFC 9110 §14.1.2).
    """
    unit, sep, spec = value.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    specs = [s.strip() for s in spec.split(",") if s.strip()]
    if not specs or len(specs) > MAX_RANGES:
        return None
    ranges = []
    for item in specs:
        first, dash, last = item.partition("-")
        first, last = first.strip(), last.strip()
        if not dash or not DIGITS_RE.match(first) or not DIGITS_RE.match(last):
            return None
        if not first:
            if not last:
                return None
            suffix = parse_position(last)
            if suffix > 0 and size > 0:  # "-0", or any suffix of nothing, selects nothing
                ranges.append((max(0, size - suffix), size - 1))
            continue
        start = parse_position(first)
        if last and parse_position(last) < start:
            return None                  # RFC 9110 §14.1.1: invalid, so ignored
        if start < size:
            ranges.append((start, min(parse_position(last) if last else size - 1, size - 1)))
    if not ranges:
        raise HTTPError(416, "Range not satisfiable.",
                        [("Content-Range", "bytes */%d" % size)])
    ranges.sort()
    merged = [ranges[0]]
    overlaps = 0
    for start, end in ranges[1:]:
        last_start, last_end = merged[-1]
        if start <= last_end:
            overlaps += 1
            if overlaps > MAX_RANGE_OVERLAPS:
                return None
        if start <= last_end + 1:
            merged[-1] = (last_start, max(last_end, end))
        else:
            merged.append((start, end))
    return merged


def parse_accept_encoding(value):
    """Return {coding: q} from an Accept-Encoding value (RFC 9110 §12.5.3)."""
    result = {}
    for item in (value or "").split(","):
        params = item.split(";")
        coding = params[0].strip().lower()
        if not coding:
            continue
        q = 1.0
        for param in params[1:]:
            name, _, val = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(val.strip())
                except ValueError:
                    q = 0.0
                q = min(max(q, 0.0), 1.0)
        result[coding] = q
    return result


def accepts_gzip(value):
    """Whether an Accept-Encoding value allows a gzip response."""
    if value is None:
        return False
    codings = parse_accept_encoding(value)
    for name in ("gzip", "x-gzip"):
        if name in codings:
            return codings[name] > 0
    return codings.get("*", 0) > 0


def parse_etags(value):
    """Return the entity tags of an If-Match/If-None-Match value ("*" kept)."""
    tags = []
    pos = 0
    value = value.strip()
    while pos < len(value):
        match = ETAG_LIST_RE.match(value, pos)
        if not match:
            return tags
        tags.append(match.group(3) or match.group(2))
        pos = match.end()
    return tags


def parse_http_date(text):
    """Parse an HTTP date (IMF-fixdate, RFC 850 or asctime) to Unix seconds."""
    import email.utils
    try:
        parsed = email.utils.parsedate_tz(text)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    year, month, day, hour, minute, second = parsed[:6]
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]
            and hour < 24 and minute < 60 and second < 61):
        return None
    try:
        return int(email.utils.mktime_tz(parsed))
    except (TypeError, ValueError, OverflowError):
        return None


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
           "Nov", "Dec")


def format_http_date(timestamp):
    """Format Unix seconds as an IMF-fixdate (RFC 9110 §5.6.7)."""
    t = time.gmtime(timestamp)
    return "%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _WEEKDAYS[t.tm_wday], t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year,
        t.tm_hour, t.tm_min, t.tm_sec)


def format_log_date(timestamp):
    """Format Unix seconds as a Common Log Format date, in UTC."""
    t = time.gmtime(timestamp)
    return "%02d/%s/%04d:%02d:%02d:%02d +0000" % (
        t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


def format_response_head(version, status, headers):
    """Return the bytes of a status line and header block."""
    lines = ["%s %d %s" % (version, status, reason_phrase(status))]
    lines.extend("%s: %s" % (name, value) for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_size(text):
    """Parse a byte size: "500", "500K", "500M", "2G" (binary).  Raises ValueError."""
    text = text.strip()
    match = re.match(r"\A(\d+)\s*([KMGT]?)(?:i?B)?\Z", text, re.IGNORECASE)
    if not match:
        raise ValueError("not a size: %r" % text)
    power = " KMGT".index(match.group(2).upper() or " ")
    return int(match.group(1)) * (1024 ** power)


PARAM_NAME_RE = re.compile(r"[^=;]*")
QUOTED_STRING_RE = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
UNQUOTED_VALUE_RE = re.compile(r"[^;]*")
QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)


def parse_header_params(value, unescape=True):
    """Split 'type; a=1; b="x y"' into ("type", {"a": "1", "b": "x y"}).

    One pass from left to right, so the time is linear in the input (a
    regular expression tried at every offset took 38 s on 60 KB).  Bare
    words without "=" are skipped.  Browsers send form file names with
    backslashes as they are (HTML's multipart encoding), so callers parsing
    those pass unescape=False.  Raises HTTPError(400) past
    MAX_HEADER_PARAMS parameters.
    """
    pos = value.find(";")
    if pos < 0:
        return value.strip().lower(), {}
    main = value[:pos].strip().lower()
    params = {}
    count = 0
    i, n = pos + 1, len(value)
    while i < n:
        name_end = PARAM_NAME_RE.match(value, i).end()
        name = value[i:name_end].strip().lower()
        if name_end >= n or value[name_end] == ";":
            i = name_end + 1             # a bare word: no value
            continue
        i = name_end + 1
        while i < n and value[i] in " \t":
            i += 1
        quoted = QUOTED_STRING_RE.match(value, i) if value.startswith('"', i) else None
        if quoted is not None:
            val = quoted.group(1)
            if unescape:
                val = QUOTED_PAIR_RE.sub(r"\1", val)
            semi = value.find(";", quoted.end())
            i = n if semi < 0 else semi + 1
        else:
            end = UNQUOTED_VALUE_RE.match(value, i).end()
            val = value[i:end].strip()
            i = end + 1
        if name:
            count += 1
            if count > MAX_HEADER_PARAMS:
                raise HTTPError(400, "Too many header parameters.")
            params[name] = val
    return main, params


def parse_basic_auth(value):
    """Return (user, password) from an Authorization: Basic value, or None.

    RFC 7617: base64 of "user:password", decoded as UTF-8 (we announce
    charset="UTF-8"); the first colon ends the user name.
    """
    scheme, _, token = (value or "").strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        text = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = text.partition(":")
    if not sep:
        return None
    return user, password


def parse_host(value):
    """Return the host name of a Host value, lower-case, without port or final dot.

    An IPv6 literal comes back without its brackets.  Returns "" for a
    value that is not a host.
    """
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else ""
    name, sep, port = value.rpartition(":")
    if not sep or ":" in name:
        name = value                    # no port (or a bare IPv6 address)
    return name.rstrip(".")


def is_ip_literal(name):
    """Whether a host name is an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def decide_close(request, status, length_known, body_unread, stopping, peer_done):
    """Whether the connection closes after this response (RFC 9112 §9.3, §9.6).

    request is None when the head could not be parsed.  length_known says
    whether the response has a Content-Length (or no body); body_unread
    whether the request's body is still on the wire, unread; peer_done
    whether the client has shut its side with nothing more to answer.
    """
    if request is None or stopping or peer_done or body_unread:
        return True
    if status in CLOSING_STATUSES:      # framing can't be trusted
        return True
    if not request.keep_alive:
        return True
    return not length_known and request.version == "HTTP/1.0"


# ---------------------------------------------------------------------------
# 4. Request bodies: body readers and the multipart decoder, pure
# ---------------------------------------------------------------------------

class ContentLengthReader(object):
    """Read a body of a known length (RFC 9112 §6.2) fed in pieces.

    The body readers share one interface, chosen once per request from its
    framing (h11's model): feed(data) returns the payload it holds; .done
    turns true at the body's end and .unused holds what followed (the next
    pipelined request).  A connection that ends before .done cut the body.
    """

    def __init__(self, length):
        self.left = length
        self.done = length == 0
        self.unused = b""

    def feed(self, data):
        """Consume data; return the payload bytes in it."""
        if self.done:
            self.unused += bytes(data)
            return b""
        take = min(self.left, len(data))
        payload = bytes(data[:take])
        self.left -= take
        if self.left == 0:
            self.done = True
            self.unused = bytes(data[take:])
        return payload


CHUNK_SIZE_LINE_RE = re.compile(rb"\A([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?\Z")


class ChunkedDecoder(object):
    """Decode a chunked body (RFC 9112 §7.1) fed in pieces.

    Same interface as ContentLengthReader.  Every line must end in CRLF:
    a bare LF or a stray CR is how request smuggling between a proxy and
    a server starts, so it is a 400.  Chunk extensions and trailer fields
    are accepted and ignored.
    """

    def __init__(self):
        self.done = False
        self.unused = b""
        self._buf = bytearray()
        self._left = 0               # payload bytes left in the current chunk
        self._state = "size"         # size, data, data_crlf, trailer
        self._trailer_bytes = 0

    def _take_line(self, limit, what):
        """Remove and return the next CRLF-terminated line, or None for more."""
        buf = self._buf
        nl = buf.find(b"\n")
        if nl < 0:
            if len(buf) > limit:
                raise HTTPError(400, "%s too long." % what)
            return None
        if nl == 0 or buf[nl - 1] != 0x0D:
            raise HTTPError(400, "%s does not end in CRLF." % what)
        line = bytes(buf[:nl - 1])
        del buf[:nl + 1]
        if b"\r" in line:
            raise HTTPError(400, "Stray CR in %s." % what.lower())
        return line

    def feed(self, data):
        """Consume data; return decoded payload bytes.  Raises HTTPError(400)."""
        if self.done:
            self.unused += bytes(data)
            return b""
        self._buf += data
        out = bytearray()
        buf = self._buf
        while True:
            if self._state == "size":
                line = self._take_line(MAX_CHUNK_LINE_BYTES, "Chunk size line")
                if line is None:
                    break
                match = CHUNK_SIZE_LINE_RE.match(line)
                if not match:
                    raise HTTPError(400, "Bad chunk size.")
                self._left = int(match.group(1), 16)
                self._state = "data" if self._left else "trailer"
            elif self._state == "data":
                if not buf:
                    break
                take = min(self._left, len(buf))
                out += buf[:take]
                del buf[:take]
                self._left -= take
                if self._left == 0:
                    self._state = "data_crlf"
            elif self._state == "data_crlf":
                if len(buf) < 2:
                    break
                if buf[:2] != b"\r\n":
                    raise HTTPError(400, "Chunk data not followed by CRLF.")
                del buf[:2]
                self._state = "size"
            else:  # trailer section: lines until an empty one
                before = len(buf)
                line = self._take_line(MAX_TRAILER_BYTES, "Trailer line")
                if line is None:
                    break
                self._trailer_bytes += before - len(buf)
                if self._trailer_bytes > MAX_TRAILER_BYTES:
                    raise HTTPError(400, "Trailer section too large.")
                if not line:
                    self.done = True
                    self.unused = bytes(buf)
                    self._buf = bytearray()
                    break
        return bytes(out)


class MultipartParser(object):
    """Stream a multipart/form-data body (RFC 7578) without holding it.

    feed(data, max_parts) returns events: ("part", headers) with lower-case
    header names, ("data", bytes) for part content, ("end", None) when a
    part ends.  .done turns true at the closing delimiter.  With max_parts,
    it stops after that many "part" and "end" events and sets .pending: the
    caller feeds b"" later to go on (a bound on per-turn work when a body
    packs thousands of tiny parts).  Beyond that, only a delimiter's length
    of bytes is ever held back, so memory stays flat for any upload size.
    """

    def __init__(self, boundary):
        if not boundary or len(boundary) > 200:
            raise HTTPError(400, "Bad multipart boundary.")
        self.done = False
        self._delim = b"\r\n--" + boundary
        self._buf = bytearray(b"\r\n")   # lets the first delimiter match like the rest
        self._state = "preamble"         # preamble, after_delim, headers, body, epilogue
        self.pending = False

    def feed(self, data, max_parts=None):
        """Consume data; return a list of events.  Raises HTTPError(400)."""
        events = []
        self._buf += data
        buf = self._buf
        delim = self._delim
        budget = max_parts
        self.pending = False
        while True:
            if budget is not None and self._state in ("headers", "body") and budget <= 0:
                self.pending = bool(buf)
                break
            if self._state == "preamble":
                pos = buf.find(delim)
                if pos < 0:
                    keep = len(delim) - 1
                    if len(buf) > keep:
                        del buf[:len(buf) - keep]
                    break
                del buf[:pos + len(delim)]
                self._state = "after_delim"
            elif self._state == "after_delim":
                if len(buf) < 2:
                    break
                if buf[:2] == b"--":
                    self.done = True
                    self._state = "epilogue"
                    continue
                nl = buf.find(b"\n")
                if nl < 0:
                    if len(buf) > 256:
                        raise HTTPError(400, "Malformed multipart delimiter.")
                    break
                if bytes(buf[:nl]).strip(b" \t\r"):
                    raise HTTPError(400, "Malformed multipart delimiter.")
                del buf[:nl + 1]
                self._state = "headers"
            elif self._state == "headers":
                end, blank = _find_head_end(buf, 0)
                if buf[:2] == b"\r\n":
                    end, blank = -1, 2
                    headers_block = b""
                    del buf[:2]
                elif buf[:1] == b"\n":
                    headers_block = b""
                    del buf[:1]
                elif end < 0:
                    if len(buf) > MAX_PART_HEADER_BYTES:
                        raise HTTPError(400, "Multipart part headers too large.")
                    break
                else:
                    headers_block = bytes(buf[:end + 1])
                    del buf[:end + blank]
                headers = {}
                for line in headers_block.split(b"\n"):
                    line = line.rstrip(b"\r")
                    if not line:
                        continue
                    name, sep, value = line.partition(b":")
                    if not sep:
                        raise HTTPError(400, "Malformed multipart part header.")
                    headers[name.strip().lower().decode("latin-1")] = \
                        value.strip().decode("utf-8", "replace")
                events.append(("part", headers))
                if budget is not None:
                    budget -= 1
                self._state = "body"
            elif self._state == "body":
                pos = buf.find(delim)
                if pos < 0:
                    # Keep a tail that could be the start of a delimiter.
                    keep = len(delim) - 1
                    if len(buf) > keep:
                        events.append(("data", bytes(buf[:len(buf) - keep])))
                        del buf[:len(buf) - keep]
                    break
                if pos:
                    events.append(("data", bytes(buf[:pos])))
                del buf[:pos + len(delim)]
                events.append(("end", None))
                if budget is not None:
                    budget -= 1
                self._state = "after_delim"
            else:  # epilogue: ignored
                del buf[:]
                break
        return events


# ---------------------------------------------------------------------------
# 5. Paths and files
# ---------------------------------------------------------------------------

def is_inside(path, root):
    """Whether the real path `path` is root itself or below it."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def is_visible(name, hidden):
    """Whether a name may be served or listed: the one rule for every feature.

    Never: empty names, "." and "..", names holding a separator or NUL (or
    ":" on Windows, an alternate data stream), upload temporaries.
    Dotfiles only when hidden is on.
    """
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        return False
    if IS_WINDOWS and ":" in name:
        return False
    if name.startswith(UPLOAD_TMP_PREFIX):
        return False
    return hidden or not name.startswith(".")


def is_confined(fs_path, root, follow_symlinks):
    """Whether fs_path, with its symlinks resolved, stays inside root.

    With follow_symlinks every path below the root counts as confined: the
    user asked for links that lead out to be served.  A path below the
    (real) root with no symlink among its components is confined as it
    stands: one lstat per component below the root, instead of realpath's
    walk from "/" on every request.
    """
    if follow_symlinks:
        return True
    parts = fs_path[len(root):].split(os.sep)
    if is_inside(fs_path, root) and ".." not in parts and "." not in parts \
            and not (os.altsep and os.altsep in fs_path):
        path = root
        try:
            for part in parts:
                if part:
                    path = os.path.join(path, part)
                    if stat.S_ISLNK(os.lstat(path).st_mode):
                        break           # a link: only realpath can tell
            else:
                return True
        except (FileNotFoundError, NotADirectoryError):
            return True                 # the rest does not exist, so it holds no link
        except OSError:
            pass
    return is_inside(os.path.realpath(fs_path), root)


def check_path_limits(url_path):
    """Return a URL path's segments, within the limits every method shares.

    Raises HTTPError 414 past MAX_PATH_SEGMENTS, and 400 for a name longer
    than MAX_NAME_BYTES, which no file system can hold.
    """
    segments = [s for s in url_path.split("/") if s not in ("", ".")]
    if len(segments) > MAX_PATH_SEGMENTS:
        raise HTTPError(414, "The path is deeper than %d folders." % MAX_PATH_SEGMENTS)
    for segment in segments:
        if len(segment) * 3 > MAX_NAME_BYTES and \
                len(segment.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise HTTPError(400, "A name in the path is longer than %d bytes."
                            % MAX_NAME_BYTES)
    return segments


def resolve_path(config, url_path):
    """Map a decoded URL path to a file system path under config.root.

    Raises HTTPError(404) for anything that would leave the root or is not
    visible: ".." above it, backslashes, drive letters, dotfiles (unless
    hidden), upload temporaries, symlinks resolving outside (unless
    follow_symlinks), and private files (the TLS key).  The answer is the
    same 404 whatever lies outside.  Raises 414/400 past the limits of
    check_path_limits.
    """
    parts = []
    for segment in check_path_limits(url_path):
        if segment == "..":
            if not parts:
                raise HTTPError(404, "Not found.")
            parts.pop()
            continue
        if not is_visible(segment, config.hidden):
            raise HTTPError(404, "Not found.")
        parts.append(segment)
    fs_path = os.path.join(config.root, *parts)
    if not is_confined(fs_path, config.root, config.follow_symlinks) \
            or is_private(fs_path, config):
        raise HTTPError(404, "Not found.")
    return fs_path


def is_private(fs_path, config):
    """Whether a path is one the server must never serve (its TLS key)."""
    return bool(config.private_files) and os.path.realpath(fs_path) in config.private_files


# 3.13 soft-deprecated guess_type() for file paths in favour of guess_file_type().
GUESS_FILE_TYPE = getattr(mimetypes, "guess_file_type", mimetypes.guess_type)


def guess_content_type(name):
    """Return the Content-Type for a file name, with charset for text."""
    return content_type_for_extension(os.path.splitext(name)[1].lower())


@functools.lru_cache(maxsize=512)
def content_type_for_extension(ext):
    """The Content-Type for a lower-case extension (".txt"); memoised, as
    mimetypes' lookup costs more than the rest of a small GET's headers."""
    ctype = CONTENT_TYPES.get(ext)
    if ctype is None:
        ctype, encoding = GUESS_FILE_TYPE("file" + ext, strict=False)
        if encoding is not None or ctype is None:
            ctype = "application/octet-stream"
    if ctype.startswith("text/"):
        ctype += "; charset=utf-8"
    return ctype


def is_compressible(content_type):
    """Whether gzip helps this type (text and structured text, not media)."""
    base = content_type.split(";", 1)[0].strip().lower()
    return base.startswith("text/") or base in COMPRESSIBLE_TYPES or base.endswith("+json") \
        or base.endswith("+xml")


def make_etag(st):
    """A strong entity tag from a file's mtime and size."""
    return '"%x-%x"' % (st.st_mtime_ns, st.st_size)


def etag_matches(tags, etag, weak=True):
    """Whether etag is among tags ("*" matches); weak compare ignores W/."""
    if "*" in tags:
        return True
    if etag is None:
        return False
    return etag in tags if weak else etag in tags and not etag.startswith("W/")


def format_size(size):
    """Human-readable size: 512 B, 1.5 KiB, 3.0 MiB."""
    if size < 1024:
        return "%d B" % size
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024.0
        if size < 1024 or unit == "TiB":
            return "%.1f %s" % (size, unit)


Entry = collections.namedtuple("Entry", [
    "name",     # as a person reads it (bytes that are not UTF-8 shown as U+FFFD)
    "href",     # its exact bytes, URL-quoted; a folder's ends in "/"
    "type",     # "dir" or "file"
    "size",     # bytes (0 for a folder)
    "mtime",    # whole Unix seconds
    "folded",   # natural_key(name), the sort key, computed once
])

DIGIT_RUN_RE = re.compile(r"([0-9]+)")  # ASCII digits: int() of "²" would raise


def natural_key(name):
    """A name's natural, case-insensitive sort key: file_2 before file_10.

    Returns a tuple alternating text and numbers (re.split with a group
    always starts with text), so two keys never compare a str with an int.
    A name holds at most MAX_NAME_BYTES digits, far below int()'s limit.
    """
    parts = DIGIT_RUN_RE.split(name.casefold())
    parts[1::2] = [int(digits) for digits in parts[1::2]]
    return tuple(parts)


def scan_directory(scandir_iter, config, limit=LISTING_STEP_ENTRIES):
    """Read up to limit entries from an os.scandir iterator.

    Returns (entries, exhausted), entries as Entry tuples (a third of a
    dict's memory; sorting compares them in C).  Names that are not
    visible are left out, and so are symlinks that lead outside the root
    unless follow_symlinks, and private files.
    """
    entries = []
    for entry in scandir_iter:
        name = entry.name
        if not is_visible(name, config.hidden):
            continue
        try:
            if entry.is_symlink() and not is_confined(entry.path, config.root,
                                                      config.follow_symlinks):
                continue
            if is_private(entry.path, config):
                continue
            st = entry.stat()
        except OSError:
            continue                   # broken link or raced away
        shown = display_text(name)
        if stat.S_ISDIR(st.st_mode):
            entries.append(Entry(shown, url_quote(name) + "/", "dir", 0, int(st.st_mtime),
                                 natural_key(shown)))
        else:
            entries.append(Entry(shown, url_quote(name), "file", st.st_size, int(st.st_mtime),
                                 natural_key(shown)))
        if limit is not None and len(entries) >= limit:
            return entries, False
    return entries, True


SORT_KEYS = {
    "name": operator.attrgetter("folded", "name"),
    "size": operator.attrgetter("size", "folded"),
    "time": operator.attrgetter("mtime", "folded"),
}


def sort_entries(entries, sort="name", order="asc"):
    """Sort listing entries, folders first, by name (natural order), size or time.

    Ties fall back to the name, then its exact text, so the order never
    depends on the order the file system returned the names in.
    """
    key = SORT_KEYS.get(sort, SORT_KEYS["name"])
    reverse = order == "desc"
    dirs = sorted((e for e in entries if e.type == "dir"), key=key, reverse=reverse)
    files = sorted((e for e in entries if e.type != "dir"), key=key, reverse=reverse)
    return dirs + files


def entry_json(e):
    """An entry as the JSON listing shows it."""
    return json.dumps({"name": e.name, "href": e.href, "type": e.type, "size": e.size,
                       "mtime": e.mtime}, ensure_ascii=False)


# ---------------------------------------------------------------------------
# 6. Responses
# ---------------------------------------------------------------------------

class FileRegion(object):
    """A byte range of an open file, sent without reading it all."""

    __slots__ = ("file", "offset", "length")

    def __init__(self, file, offset, length):
        self.file = file
        self.offset = offset
        self.length = length


class Response(object):
    """What a handler returns: status, headers, and a body.

    body is a list of parts, each bytes, a FileRegion, or an iterator of
    bytes (whose total length is unknown, so the response is chunked).
    files lists open files the connection closes when the response ends.
    """

    __slots__ = ("status", "headers", "body", "files", "close", "log_extra")

    def __init__(self, status, headers=None, body=b"", files=None):
        self.status = status
        self.headers = list(headers or [])
        self.body = [body] if isinstance(body, (bytes, FileRegion)) else list(body)
        self.files = list(files or [])
        self.close = False
        self.log_extra = ""

    def body_length(self):
        """The body's total size, or None when a part has no known length."""
        total = 0
        for part in self.body:
            if isinstance(part, bytes):
                total += len(part)
            elif isinstance(part, FileRegion):
                total += part.length
            else:
                return None
        return total

    def close_files(self):
        """Close the files (and generators) this response holds open."""
        for f in self.files + [p for p in self.body if hasattr(p, "close")]:
            try:
                f.close()
            except OSError:
                pass
        self.files = []


def gzip_bytes(data):
    """Compress data to a whole gzip member (header mtime 0, reproducible)."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def file_pieces(f, offset, length, step=GZIP_STEP_BYTES):
    """Yield a file region in pieces of at most step bytes, reading as it goes."""
    f.seek(offset)
    left = length
    while left > 0:
        data = f.read(min(step, left))
        if not data:
            raise OSError("file shrank while being sent")
        left -= len(data)
        yield data


def gzip_pieces(pieces):
    """Yield the gzip of an iterable of bytes, one compressed step per piece.

    A step may yield b"" (deflate holds back its output): the connection
    still counts it, so a huge, very compressible file costs each turn a
    bounded amount of CPU instead of running until output appears.
    """
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    for piece in pieces:
        yield compressor.compress(piece)
    yield compressor.flush()


def text_response(status, text, content_type="text/plain; charset=utf-8", headers=None):
    """A response with a small text body."""
    body = text.encode("utf-8")
    return Response(status, [("Content-Type", content_type)] + list(headers or []), body)


def json_response(status, obj, headers=None):
    """A response with a JSON body."""
    body = (json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
    return Response(status, [("Content-Type", "application/json")] + list(headers or []), body)


def maybe_gzip(response, request, config, always=False):
    """Compress a response in place when the client accepts gzip.

    Small bodies stay as they are (gzip would grow them) unless always,
    which the echo endpoints use to show the mechanism.  A generated body
    (a listing) is compressed piece by piece as it is sent.
    """
    ctype = dict((k.lower(), v) for k, v in response.headers).get("content-type", "")
    if not config.gzip or not is_compressible(ctype):
        return response
    response.headers.append(("Vary", "Accept-Encoding"))
    if not accepts_gzip(request.get_header("accept-encoding")):
        return response
    if response.body_length() is None:
        body = response.body
        response.body = [gzip_pieces(piece for part in body
                                     for piece in ([part] if isinstance(part, bytes) else part))]
    else:
        body = b"".join(response.body)
        if len(body) < GZIP_MIN_BYTES and not always:
            return response
        response.body = [gzip_bytes(body)]
    response.headers.append(("Content-Encoding", "gzip"))
    return response


# ---------------------------------------------------------------------------
# 7. Generated bodies: folder archives and QR codes, pure generators
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# 8. Pages: listing, error and landing pages
# ---------------------------------------------------------------------------

def svg_data_uri(svg):
    """An SVG picture as a data: URI, for CSS url() and <link href>: nothing to fetch.

    The xmlns inside names SVG's namespace (without it the picture does not
    render); it is an identifier, never fetched.
    """
    return "data:image/svg+xml," + urllib.parse.quote(
        "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'>%s</svg>" % svg,
        safe=" '=:/;,.-()")


# File-type icons, 16 px pictures drawn once in CSS (one class per row, no
# per-row markup): a coloured page with a white sign, a folder, a plain page.
ICON_PAGE = ("<path fill='%s' d='M3 0h6.5L14 4.5V15a1 1 0 0 1-1 1H3a1 1 0 0 1-1-1V1a1 1 "
             "0 0 1 1-1z'/><path fill='#fff' fill-opacity='.45' d='M9.5 0v3.5a1 1 0 0 0 1 "
             "1H14z'/><path fill='#fff' d='%s'/>")
ICON_FOLDER = ("<path fill='#d9961a' d='M1 3.5C1 2.7 1.7 2 2.5 2H6l1.5 1.5h6c.8 0 1.5.7 1.5 "
               "1.5v7.5c0 .8-.7 1.5-1.5 1.5h-11C1.7 14 1 13.3 1 12.5z'/><path fill='#f5bd42' "
               "d='M1 6h14v6.5c0 .8-.7 1.5-1.5 1.5h-11C1.7 14 1 13.3 1 12.5z'/>")
ICON_FILE = ("<path fill='#f6f8fa' stroke='#8c959f' d='M3.5.5h6l3 3v12h-9z'/><path "
             "fill='none' stroke='#8c959f' d='M9.5.5v3h3'/>")
ICON_UP = "<path fill='none' stroke='#8c959f' stroke-width='1.7' d='M8 14V3M3.5 7.5 8 3l4.5 4.5'/>"
ICONS = [                               # (the link's class, picture)
    ("", ICON_FILE),                    # any other file
    (".dir", ICON_FOLDER),
    (".up", ICON_UP),
    (".img", ICON_PAGE % ("#2e9d5b", "M4 13.5 6.7 9.5l1.6 2 2.2-3.3 2.5 5.3zM6.3 5a1.3 1.3 0 1 "
                         "1 0 2.6 1.3 1.3 0 0 1 0-2.6z")),
    (".vid", ICON_PAGE % ("#e0475b", "M6 6.5v6.5l5.2-3.25z")),
    (".aud", ICON_PAGE % ("#8250df", "M7 5.5h4.2v1.8H8.5v4.4a1.8 1.8 0 1 1-1.5-1.8z")),
    (".zip", ICON_PAGE % ("#a0702e", "M7 1h1.5v1.3H7zm1.5 1.3H10v1.3H8.5zM7 3.6h1.5v1.3H7zm1.5 "
                         "1.3H10v1.3H8.5zM7 6.2h3V11H7zm1 2.3v1.5h1V8.5z")),
    (".txt", ICON_PAGE % ("#3574d4", "M5 7h6v1.2H5zm0 2.4h6v1.2H5zm0 2.4h4v1.2H5z")),
    (".pdf", ICON_PAGE % ("#b42318", "M5 6h2.6a2 2 0 0 1 0 4H6.4v2.5H5zm1.4 1.3v1.4h1.2a.7.7 0 "
                         "0 0 0-1.4z")),
]
# Icons by extension where the type alone cannot tell: .gz is an encoding to mimetypes,
# and mimetypes tables differ between machines (some lack .go, .yaml, .toml ...).
ICON_ARCHIVE_EXTENSIONS = frozenset([
    ".zip", ".gz", ".tgz", ".bz2", ".tbz2", ".xz", ".txz", ".zst", ".lz4", ".7z", ".rar",
    ".tar", ".iso", ".jar", ".whl", ".deb", ".rpm", ".dmg", ".apk", ".cab"])
ICON_TEXT_EXTENSIONS = frozenset([
    ".go", ".rs", ".toml", ".yaml", ".yml", ".ini", ".cfg", ".conf", ".log", ".php", ".rb",
    ".pl", ".lua", ".kt", ".swift", ".tsx", ".jsx", ".sql", ".bat", ".ps1"])

PAGE_STYLE = """
:root{color-scheme:light dark;--fg:#1f2328;--bg:#fff;--muted:#59636e;--line:#e5e8eb;
--link:#0550ae;--hover:#f3f6f9;--box:#f6f8fa}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--bg:#0d1117;--muted:#9198a1;
--line:#262c36;--link:#58a6ff;--hover:#161b22;--box:#161b22}}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
max-width:64rem;padding:1rem;color:var(--fg);background:var(--bg);line-height:1.4}
[hidden]{display:none!important}
header{display:flex;flex-wrap:wrap;align-items:center;gap:.25rem 1rem}
h1{font-size:1.3rem;font-weight:600;word-break:break-all;margin:.4rem 0;flex:1 1 20rem}
h1 a,h1 span{padding:.4rem .1rem}
a{color:var(--link);text-decoration:none}a:hover{text-decoration:underline}
.bar{display:flex;flex-wrap:wrap;align-items:center;gap:.5rem 1rem;margin:.25rem 0 .75rem;
color:var(--muted)}
#summary{margin:0;flex:1 1 auto}
#filter{font:inherit;padding:.35rem .6rem;border:1px solid var(--line);border-radius:.4rem;
background:var(--bg);color:var(--fg);width:15rem;max-width:100%;box-sizing:border-box}
form.dl{display:flex;align-items:center;gap:.4rem;margin:0;padding:0;border:0}
.dl button{font:inherit;font-size:.9rem;padding:.3rem .7rem;border:1px solid var(--line);
border-radius:.4rem;background:var(--box);color:var(--link);cursor:pointer}
.dl button:hover{border-color:var(--link)}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.45rem .5rem;border-bottom:1px solid var(--line)}
th{font-size:.9rem;white-space:nowrap}
td.size,th.size{text-align:right;white-space:nowrap}
td.time{white-space:nowrap;color:var(--muted)}
tbody tr:hover{background:var(--hover)}
td.n{width:100%;overflow-wrap:anywhere}
td.n a{display:flex}
td.n a::before,header h1::before{content:"";flex:none;width:1.15em;height:1.15em;
margin:.1em .5em 0 0;background:center/contain no-repeat}
header h1::before{display:inline-block;vertical-align:-.15em}
""" + "".join('td.n %s::before%s{background-image:url("%s")}\n'
              % (css or "a", ",header h1::before" if css == ".dir" else "", svg_data_uri(svg))
              for css, svg in ICONS) + """.sortbar{display:none}
form{margin:1rem 0;padding:1rem;border:2px dashed #bbb;border-radius:.5rem}
form.drag{border-color:#0550ae;background:#f0f6ff}
progress{width:100%}
footer{margin-top:1rem;color:var(--muted);font-size:.8rem}
@media (max-width:40rem){
body{padding:.5rem}
#filter{width:100%}
.sortbar{display:block;margin:0 0 .25rem;padding:0 .5rem;font-size:.9rem;color:var(--muted)}
.sortbar a{margin-left:.8rem}
thead{display:none}
table,tbody{display:block}
tbody tr{display:grid;grid-template-columns:auto 1fr;align-content:center;position:relative;
min-height:2.75rem;border-bottom:1px solid var(--line)}
tbody td{border:0;padding:0 .5rem}
td.n{grid-column:1/-1;padding-top:.5rem}
td.n:only-child,tr.up td.n{padding-bottom:.5rem}
td.n a::after{content:"";position:absolute;top:0;right:0;bottom:0;left:0}
td.size,td.time{font-size:.8rem;padding-bottom:.5rem}
td.size{text-align:left;padding:0 0 .5rem 2.15rem}
td.time{padding-left:.3rem}
td.time::before{content:"\\b7  "}
tr.dir td.size,tr.up td.size,tr.up td.time{display:none}
tr.dir td.time{padding-left:2.15rem}
tr.dir td.time::before{content:none}
}
"""
FAVICON_URI = svg_data_uri(ICON_FOLDER)

UPLOAD_SCRIPT = """
(function(){
var f=document.getElementById('upload');if(!f||!window.FormData)return;
var input=f.querySelector('input[type=file]'),bar=document.getElementById('progress'),
msg=document.getElementById('upload-status');
function send(files){
 if(!files.length)return;var data=new FormData();
 for(var i=0;i<files.length;i++)data.append('file',files[i],files[i].name);
 var x=new XMLHttpRequest();x.open('POST',location.pathname);
 x.setRequestHeader('Accept','application/json');
 bar.hidden=false;bar.value=0;
 x.upload.onprogress=function(e){if(e.lengthComputable)bar.value=e.loaded/e.total;};
 x.onload=function(){if(x.status<300){location.reload();}else{
  bar.hidden=true;msg.textContent='Upload failed: '+x.status+' '+x.statusText;}};
 x.onerror=function(){bar.hidden=true;msg.textContent='Upload failed: connection lost';};
 x.send(data);}
f.addEventListener('submit',function(e){e.preventDefault();send(input.files);});
['dragenter','dragover'].forEach(function(t){document.addEventListener(t,function(e){
 e.preventDefault();f.className='drag';});});
document.addEventListener('dragleave',function(){f.className='';});
document.addEventListener('drop',function(e){e.preventDefault();f.className='';
 send(e.dataTransfer.files);});
})();
"""

# The listing's filter box: hidden in the markup, shown by this script, so a
# page without JavaScript shows no dead box.  It hides rows whose name does
# not hold the text and sums the shown rows' data-size.  "#filter=TEXT" in the
# address fills the box (a link can carry a filter; tests use it too).
FILTER_SCRIPT = """
(function(){
var box=document.getElementById('filter'),sum=document.getElementById('summary'),
body=document.querySelector('tbody');if(!box||!sum||!body)return;
var rows=[],dirs=0,files=0,text=sum.textContent,title=sum.title;
[].forEach.call(body.rows,function(r){if(r.className=='up')return;
 var file=r.hasAttribute('data-size');if(file)files++;else dirs++;
 rows.push([r,r.cells[0].textContent.toLowerCase(),file?+r.getAttribute('data-size'):-1]);});
function count(n,all,word){return n+(n==all?'':' of '+all)+' '+word+(all==1?'':'s');}
function human(n){if(n<1024)return n+' B';var u=['KiB','MiB','GiB','TiB'],i=0;n/=1024;
 while(n>=1024&&i<3){n/=1024;i++;}return n.toFixed(1)+' '+u[i];}
function apply(){var q=box.value.toLowerCase(),d=0,f=0,b=0;
 rows.forEach(function(x){var hit=x[1].indexOf(q)>=0;x[0].toggleAttribute('hidden',!hit);
  if(hit){if(x[2]<0)d++;else{f++;b+=x[2];}}});
 if(!q){sum.textContent=text;sum.title=title;return;}
 sum.textContent=count(d,dirs,'folder')+', '+count(f,files,'file')+', '+human(b);
 sum.title=b+' bytes';}
box.addEventListener('input',function(){apply();history.replaceState(null,'',
 box.value?'#filter='+encodeURIComponent(box.value):location.pathname+location.search);});
var m=/^#filter=(.*)$/.exec(location.hash);
if(m){try{box.value=decodeURIComponent(m[1]);}catch(e){box.value=m[1];}apply();}
box.removeAttribute('hidden');
})();
"""


def csp_hash(text):
    """The 'sha256-…' source a Content-Security-Policy uses to allow one inline text."""
    return "'sha256-%s'" % base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()
                                            ).decode("ascii")


# Our pages run only their own inline style and script (hashes, not 'unsafe-inline'),
# talk only to this server, and can't be framed by another site.
PAGE_CSP = ("default-src 'none'; style-src %s; script-src %s; img-src 'self' data:; "
            "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'self'"
            % (csp_hash(PAGE_STYLE), csp_hash(UPLOAD_SCRIPT) + " " + csp_hash(FILTER_SCRIPT)))
PAGE_HEADERS = [("Content-Type", "text/html; charset=utf-8"),
                ("Content-Security-Policy", PAGE_CSP)]


def page_head(title, extra_head=""):
    """The start of a phone-friendly HTML5 page, up to and including <body>."""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<title>%s</title>\n<link rel=\"icon\" href=\"%s\">\n"
            "<style>%s</style>%s\n</head>\n<body>\n"
            % (html.escape(title), html.escape(FAVICON_URI, quote=False), PAGE_STYLE,
               extra_head))


def page_tail():
    """The end of a page that page_head began."""
    return "\n<footer>%s</footer>\n</body>\n</html>\n" % html.escape(SERVER_NAME)


def html_page(title, body_html, extra_head=""):
    """Wrap body HTML in a complete, phone-friendly HTML5 page."""
    return (page_head(title, extra_head) + body_html + page_tail()).encode("utf-8")


def render_error_page(status, message="", back=None):
    """A small HTML error page; back: a folder's URL path (with the prefix) to link to."""
    title = "%d %s" % (status, reason_phrase(status))
    body = "<h1>%s</h1>\n" % html.escape(title)
    if message:
        body += "<p>%s</p>\n" % html.escape(message)
    if back is not None:
        body += '<p><a class="back" href="%s">&#8592; Back to %s</a></p>\n' % (
            html.escape(url_quote(back)), html.escape(display_text(back)))
    return html_page(title, body)


@functools.lru_cache(maxsize=512)
def icon_class(ext):
    """The class attribute that gives a file link its icon, from its lower-case
    extension ("" for the plain page); memoised like content_type_for_extension."""
    ctype = content_type_for_extension(ext).split(";", 1)[0]
    kind = ctype.split("/", 1)[0]
    if ext in ICON_ARCHIVE_EXTENSIONS:
        kind = "zip"
    elif ctype == "application/pdf":
        kind = "pdf"
    elif kind in ("image", "video", "audio"):
        kind = {"image": "img", "video": "vid", "audio": "aud"}[kind]
    elif is_compressible(ctype) or ext in ICON_TEXT_EXTENSIONS:
        kind = "txt"
    else:
        return ""
    return ' class="%s"' % kind


def render_listing_rows(entries, minutes, carry=""):
    """Table rows for listing entries; minutes caches formatted times.

    A file's row holds its exact size in data-size (the filter sums them);
    folder links carry the page's sort (carry, a query or "").
    """
    rows = []
    carry = html.escape(carry)
    for e in entries:
        minute = e.mtime // 60
        when = minutes.get(minute)
        if when is None:                # strftime is slow; many files share a minute
            when = minutes[minute] = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.mtime))
        if e.type == "dir":
            rows.append('<tr class="dir"><td class="n"><a class="dir" href="%s%s">%s/</a></td>'
                        '<td class="size">&#8212;</td><td class="time">%s</td></tr>\n'
                        % (html.escape(e.href), carry, html.escape(e.name), when))
        else:
            rows.append('<tr data-size="%d"><td class="n"><a%s href="%s">%s</a></td>'
                        '<td class="size" title="%d bytes">%s</td><td class="time">%s</td></tr>\n'
                        % (e.size, icon_class(os.path.splitext(e.name)[1].lower()),
                           html.escape(e.href), html.escape(e.name), e.size,
                           format_size(e.size), when))
    return "".join(rows)


def render_upload_form():
    """The upload form of a listing, with the script that sends it in the background."""
    return ('<form id="upload" method="post" enctype="multipart/form-data">\n'
            '<input type="file" name="file" multiple>\n'
            '<button type="submit">Upload</button>\n'
            '<progress id="progress" max="1" value="0" hidden></progress>\n'
            '<p id="upload-status"></p>\n</form>\n<script>%s</script>\n' % UPLOAD_SCRIPT)


def listing_carry(sort, order):
    """The query a listing sorted other than by name carries into its folder links, or ""."""
    return "" if (sort, order) == ("name", "asc") else "?sort=%s&order=%s" % (sort, order)


def describe_counts(dirs, files, size):
    """What a listing holds, as "3 folders, 12 files, 4.2 MiB"."""
    return "%d folder%s, %d file%s, %s" % (dirs, "" if dirs == 1 else "s", files,
                                           "" if files == 1 else "s", format_size(size))


def render_breadcrumbs(url_path, prefix, carry):
    """A listing's <h1>: its path with each folder above a relative link (a prefix just works)."""
    parts = [part for part in url_path[len(prefix):].split("/") if part]
    labels = [prefix + "/"] + [part + "/" for part in parts]
    crumbs = []
    for i, label in enumerate(labels):
        up = len(parts) - i             # how many "../" lead from this page to that folder
        label = html.escape(display_text(label))
        crumbs.append('<a href="%s">%s</a>' % (html.escape("../" * up + carry), label)
                      if up else "<span>%s</span>" % label)
    return "<h1>%s</h1>\n" % "".join(crumbs)


def render_listing_top(url_path, sort, order, config, counts):
    """The listing page up to its first row; links are relative, so a prefix just works.

    counts: (folders, files, bytes in the files).  The download buttons are a
    GET form, not links: they ask for ?download=zip|tar all the same, but
    wget -r (which follows every href, rel="nofollow" or not) never submits
    a form, so mirroring a tree does not also fetch an archive of each folder.
    """
    title = "Index of " + display_text(url_path)
    carry = listing_carry(sort, order)
    links, headings = [], []
    for key, label, css in (("name", "Name", "n"), ("size", "Size", "size"),
                            ("time", "Modified", "time")):
        next_order = "desc" if (sort == key and order == "asc") else "asc"
        arrow = (" &#9650;" if order == "asc" else " &#9660;") if sort == key else ""
        links.append('<a href="?sort=%s&amp;order=%s" rel="nofollow">%s%s</a>'
                     % (key, next_order, label, arrow))
        headings.append('<th class="%s">%s</th>' % (css, links[-1]))
    dirs, files, size = counts
    tools = ['<p id="summary" title="%d bytes">%s</p>'
             % (size, describe_counts(dirs, files, size)),
             '<input id="filter" type="search" placeholder="Filter names" '
             'aria-label="Filter names" hidden>']
    if config.archive:
        tools.append('<form class="dl" method="get"><span>Download as</span>'
                     '<button name="download" value="zip" formaction="?download=zip">zip</button>'
                     '<button name="download" value="tar" formaction="?download=tar">tar</button>'
                     '</form>')
    up = ""
    if url_path != config.prefix + "/":
        up = ('<tr class="up"><td class="n"><a class="up" href="../%s">../</a></td>'
              '<td class="size"></td><td class="time"></td></tr>\n' % html.escape(carry))
    # A sorted copy is the same folder again: robots, wget -r among them, need not
    # follow its links (the default order's page links to everything it does).
    robots = '\n<meta name="robots" content="noindex, nofollow">' if carry else ""
    return (page_head(title, robots) + "<header>\n%s</header>\n"
            '<div class="bar">\n%s\n</div>\n%s<p class="sortbar">Sort:%s</p>\n'
            "<table>\n<thead><tr>%s</tr></thead>\n<tbody>\n%s"
            % (render_breadcrumbs(url_path, config.prefix, carry), "\n".join(tools),
               render_upload_form() if config.upload else "", "".join(links),
               "".join(headings), up))


def render_listing_bottom(left_out):
    """The listing page after its last row, with the filter box's script."""
    note = ""
    if left_out:
        note = "<p>%d more entries are not shown (a listing shows at most %d).</p>\n" % (
            left_out, MAX_LISTING_ENTRIES)
    return "</tbody>\n</table>\n%s<script>%s</script>%s" % (note, FILTER_SCRIPT, page_tail())


def listing_pieces(scandir_iter, config, url_path, sort, order, as_json, entries, exhausted):
    """Yield a folder's listing as HTML or JSON, in bounded pieces.

    entries were read already (exhausted: all of them).  Reading the rest
    (a stat per entry), sorting and rendering are each cut into steps of
    LISTING_STEP_ENTRIES, so a folder of 50,000 names never holds the
    loop; at most MAX_LISTING_ENTRIES are shown, and the page says how
    many were left out.
    """
    while not exhausted and len(entries) < MAX_LISTING_ENTRIES:
        batch, exhausted = scan_directory(
            scandir_iter, config, min(LISTING_STEP_ENTRIES, MAX_LISTING_ENTRIES - len(entries)))
        entries.extend(batch)
        yield b""
    left_out = 0
    while not exhausted:                # count what is left, cheaply, in steps
        for _ in range(16 * LISTING_STEP_ENTRIES):
            entry = next(scandir_iter, None)
            if entry is None:
                exhausted = True
                break
            left_out += is_visible(entry.name, config.hidden)
        yield b""
    entries = sort_entries(entries, sort, order)
    dirs = sum(1 for e in entries if e.type == "dir")
    counts = (dirs, len(entries) - dirs, sum(e.size for e in entries))
    yield b""
    step = LISTING_STEP_ENTRIES
    if as_json:
        yield ('{"path": %s, "more": %d, "entries": [\n'
               % (json.dumps(display_text(url_path), ensure_ascii=False), left_out)
               ).encode("utf-8")
        for i in range(0, len(entries), step):
            yield ((",\n" if i else "") + ",\n".join(
                entry_json(e) for e in entries[i:i + step])).encode("utf-8")
        yield b"\n]}\n"
        return
    yield render_listing_top(url_path, sort, order, config, counts).encode("utf-8")
    minutes = {}
    carry = listing_carry(sort, order)
    for i in range(0, len(entries), step):
        yield render_listing_rows(entries[i:i + step], minutes, carry).encode("utf-8")
    yield render_listing_bottom(left_out).encode("utf-8")


def render_landing(prefix):
    """The page at / when the tree is served under a route prefix."""
    href = html.escape(urllib.parse.quote(prefix + "/"))
    return html_page(SERVER_NAME, '<h1>minihttpd</h1>\n<p>Files are served at '
                     '<a href="%s">%s</a>.</p>' % (href, href))


# ---------------------------------------------------------------------------
# 9. Handlers: plain functions (request, ctx) -> Response or upload sink
# ---------------------------------------------------------------------------

Config = collections.namedtuple("Config", [
    "root",             # real path of the served folder
    "listing",          # directory listings on
    "hidden",           # serve and list dotfiles
    "follow_symlinks",  # serve symlinks that lead outside the root
    "quiet",            # no access log
    "upload",           # accept PUT/POST uploads
    "overwrite",        # uploads may replace existing files
    "max_upload",       # largest upload in bytes, or None
    "echo",             # /echo/, /user-agent and /request on
    "prefix",           # route prefix like "/files", or ""
    "gzip",             # gzip responses when the client accepts it
    "precompressed",    # serve name.gz for name (on unless uploads are on)
    "head_timeout",     # seconds from a head's first byte to its end
    "body_timeout",     # longest pause inside a request body
    "idle_timeout",     # seconds a keep-alive connection may idle
    "write_timeout",    # longest a reader may take nothing of a response
    "max_connections",  # clients served at once; more wait in the backlog
    "users",            # {user: sha256 of the password} with --auth, else None
    "auth_writes",      # credentials only for write methods
    "cors",             # origins allowed cross-site: "*" reads only; named ones read and write
    "hosts",            # names accepted in Host besides IP literals and localhost; None: any
    "tls",              # served over HTTPS
    "private_files",    # real paths inside the root never served (the TLS key)
    "archive",          # folders can be downloaded as zip or tar (?download=zip|tar)
])


class Context(object):
    """What every handler gets besides the request: settings and caches.

    One per server.  Caches live here rather than in module globals, so
    the module keeps no state that changes and two servers share nothing.
    """

    def __init__(self, config):
        self.config = config
        self.swept_folders = {}         # folder -> when stale temporaries were last removed
        self.active_temps = set()       # this process's upload temporaries in progress
        self.auth_failures = collections.OrderedDict()   # address -> AuthFailures
        self.host_answers = {}          # Host value -> whether check_host lets it in
        self.file_cache = collections.OrderedDict()   # handle_file's small answers, LRU
        self.large_listings = 0         # large listings being sent (ListingSlot)


Route = collections.namedtuple("Route", [
    "kind",     # "tree", "landing", "prefix_redirect", "asterisk" or an echo endpoint
    "path",     # for "tree": the path below the root, starting with "/"
    "query",    # the raw query string
])


def route(request, config):
    """Decide once what a request's target names; returns a Route.

    Raises HTTPError 400 for a malformed target and for "*" with any
    method but OPTIONS (RFC 9112 §3.2.4), 404 outside the route prefix.
    """
    path, query = parse_target(request.target)
    if path == "*":
        if request.method != "OPTIONS":
            raise HTTPError(400, "The target * is only for OPTIONS.")
        return Route("asterisk", path, query)
    if config.echo:
        if path.startswith("/echo/"):
            return Route("echo", path[len("/echo/"):], query)
        if path in ("/user-agent", "/request"):
            return Route(path[1:], path, query)
    if not config.prefix:
        return Route("tree", path, query)
    if path == "/":
        return Route("landing", path, query)
    if path == config.prefix:
        return Route("prefix_redirect", path, query)
    if path.startswith(config.prefix + "/"):
        return Route("tree", path[len(config.prefix):], query)
    raise HTTPError(404, "Not found.")


def open_regular_file(fs_path, config):
    """Open a visible, confined regular file for reading; None if it is not one."""
    if not is_confined(fs_path, config.root, config.follow_symlinks):
        return None
    try:                                # O_NONBLOCK: opening a FIFO must not wait for a writer
        f = os.fdopen(os.open(fs_path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                              | getattr(os, "O_BINARY", 0)), "rb")
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return f
    except OSError:
        pass
    f.close()
    return None


def error_response(error, request, ctx):
    """Turn an HTTPError into an HTML error response.

    A 404 uses the root's 404.html when it is a regular file inside the
    root; it is streamed like any file, never read whole into memory.
    """
    if error.status == 404:
        f = open_regular_file(os.path.join(ctx.config.root, "404.html"), ctx.config)
        if f is not None:                # the site's own page: its own rules, no CSP of ours
            size = os.fstat(f.fileno()).st_size
            return Response(404, [("Content-Type", "text/html; charset=utf-8")] + error.headers,
                            FileRegion(f, 0, size), files=[f])
    return Response(error.status, PAGE_HEADERS + error.headers,
                    render_error_page(error.status, error.message,
                                      nearest_folder(request, ctx.config)))


def nearest_folder(request, config):
    """The URL path (with the prefix) of the nearest folder above a tree request's
    path that exists and may be listed, for an error page's link back; else None.

    Walks down from the root, one stat per level (at most MAX_PATH_SEGMENTS),
    and stops at a name that may not be served, so it never points into a
    hidden folder or out through a symlink.
    """
    if request.route is None or request.route.kind != "tree":
        return None
    parts = []                          # the folders above the path's last name
    for segment in request.route.path.rstrip("/").split("/")[:-1][:MAX_PATH_SEGMENTS]:
        if segment in ("", "."):
            continue
        if segment == "..":
            if parts:                   # above the root stays at the root, so a path
                parts.pop()             # reaching outside gets the same page as any 404
            continue
        if not is_visible(segment, config.hidden):
            break
        try:
            st = os.lstat(os.path.join(config.root, *(parts + [segment])))
        except (OSError, ValueError):
            break
        if not stat.S_ISDIR(st.st_mode):
            break                       # missing, a file, or a link (its target may be outside)
        parts.append(segment)
    folder = "/" + "".join(part + "/" for part in parts)
    if folder == request.route.path:
        return None                     # the root itself failed: nothing above it
    return config.prefix + folder


# -- access: Host names, passwords, origins --------------------------------

def host_allowed(name, hosts):
    """Whether a host name (from parse_host) is one this server answers to."""
    return (is_ip_literal(name) or name == "localhost" or name.endswith(".localhost")
            or name in hosts)


def check_host(request, ctx):
    """Refuse a Host this server does not answer to: 421 (DNS rebinding).

    A page on evil.example whose name is re-pointed at 127.0.0.1 sends
    "Host: evil.example"; answering it would give that page our files.
    Answers are cached per Host value (a client sends the same one each
    time, and parsing an IP address costs more than the rest of a request).
    """
    value = request.get_header("host")
    hosts = ctx.config.hosts
    if hosts is None or value is None:
        return
    allowed = ctx.host_answers.get(value)
    if allowed is None:
        allowed = host_allowed(parse_host(value), hosts)
        if len(ctx.host_answers) >= HOST_CACHE_ENTRIES:
            ctx.host_answers.clear()
        ctx.host_answers[value] = allowed
    if allowed:
        return
    name = parse_host(value)
    raise HTTPError(421, "This server does not answer to the name %s. Start it with "
                         "--host %s to allow that name (or --host '*' for any)."
                    % (name or value, name or "NAME"))


class AuthFailures(object):
    """Failed logins from one address: when the window began, how many, blocked until."""

    __slots__ = ("since", "count", "blocked_until")

    def __init__(self, now):
        self.since = now
        self.count = 0
        self.blocked_until = 0.0


UNKNOWN_USER_DIGEST = hashlib.sha256(b"no such user").digest()


def authenticate(request, ctx):
    """Return the user the request's Basic credentials name, or raise 401/429.

    Missing, malformed and wrong credentials get the same 401.  The
    password's hash is compared with hmac.compare_digest, against a dummy
    for an unknown user too, so timing tells nothing.  Wrong credentials
    count against the address; AUTH_FAILURES_ALLOWED of them within
    AUTH_FAILURE_WINDOW_S get 429 for AUTH_BLOCK_S, in a table of at most
    AUTH_TABLE_SIZE addresses.
    """
    addr = (request.client or "").rsplit(":", 1)[0]
    now = time.monotonic()
    failures = ctx.auth_failures.get(addr)
    if failures is not None and failures.blocked_until > now:
        raise HTTPError(429, "Too many failed logins from this address; try again later.",
                        [("Retry-After", "%d" % (failures.blocked_until - now + 1))])
    value = request.get_header("authorization")
    if value is not None:
        credentials = parse_basic_auth(value)
        user, password = credentials or ("", "")
        digest = hashlib.sha256(password.encode("utf-8", "surrogatepass")).digest()
        expected = ctx.config.users.get(user, UNKNOWN_USER_DIGEST)
        if hmac.compare_digest(digest, expected) and credentials is not None \
                and user in ctx.config.users:
            return user
        note_auth_failure(ctx.auth_failures, addr, now)
    raise HTTPError(401, "This server needs a user name and password.",
                    [("WWW-Authenticate", 'Basic realm="%s", charset="UTF-8"' % AUTH_REALM)])


def note_auth_failure(table, addr, now):
    """Count a failed login; block the address when it has failed too often."""
    failures = table.pop(addr, None)
    if failures is None or now - failures.since > AUTH_FAILURE_WINDOW_S:
        failures = AuthFailures(now)
    failures.count += 1
    if failures.count >= AUTH_FAILURES_ALLOWED:
        failures.blocked_until = now + AUTH_BLOCK_S
    table[addr] = failures              # most recent last
    while len(table) > AUTH_TABLE_SIZE:
        table.popitem(last=False)


def check_same_origin(request, config):
    """Refuse a write sent by a page of another site: 403.

    A page elsewhere can send a CORS-simple POST (text/plain) to any
    address the browser reaches; storing it would let that page plant
    pages in our origin.  Browsers name the sending page in Origin (or
    at least say cross-site in Sec-Fetch-Site); curl, wget and rclone
    send neither, and are let through.  Our pages' Referrer-Policy makes
    a browser send "Origin: null" for their own form posts, so "null"
    passes only with Sec-Fetch-Site: same-origin.
    """
    if request.method not in WRITE_METHODS:
        return
    origin = request.get_header("origin")
    fetch_site = (request.get_header("sec-fetch-site") or "").strip().lower()
    if origin is not None and origin.strip() == "null" and fetch_site == "same-origin":
        origin = None                   # our own page under Referrer-Policy: no-referrer
    if origin is not None:
        origin = origin.strip()
        own = "%s://%s" % ("https" if config.tls else "http",
                           (request.get_header("host") or "").strip())
        if origin.lower() == own.lower() or (origin in config.cors and origin != "*"):
            return
        raise HTTPError(403, "Writes from another site (Origin: %s) are refused." % origin)
    if fetch_site == "cross-site":
        raise HTTPError(403, "Writes from another site are refused.")


def is_preflight(request):
    """Whether a request is a CORS preflight (RFC: the Fetch standard)."""
    return (request.method == "OPTIONS" and request.get_header("origin") is not None
            and request.get_header("access-control-request-method") is not None)


def handle_preflight(request, ctx):
    """Answer a CORS preflight: which methods and headers the origin may use.

    The Access-Control-Allow-Origin itself comes from cors_headers, as on
    every response; an origin --cors does not name gets none, and the
    browser stops there.
    """
    config = ctx.config
    origin = request.get_header("origin").strip()
    headers = [("Allow", allowed_methods(config))]
    if config.cors:
        methods = allowed_methods(config) if origin in config.cors and origin != "*" \
            else "GET, HEAD, OPTIONS"
        asked = [t.strip() for t in
                 (request.get_header("access-control-request-headers") or "").split(",")]
        asked = [t for t in asked if TOKEN_RE.match(t.encode("latin-1", "replace"))]
        headers += [("Access-Control-Allow-Methods", methods),
                    ("Access-Control-Max-Age", str(CORS_MAX_AGE_S))]
        if asked:
            headers.append(("Access-Control-Allow-Headers", ", ".join(asked)))
    return Response(204, headers)


def cors_headers(request, config):
    """The CORS headers of a response: "*" for --cors, the origin for --cors ORIGIN."""
    if not config.cors:
        return []
    origin = request.get_header("origin") if request is not None else None
    origin = origin.strip() if origin else None
    named = [o for o in config.cors if o != "*"]
    if origin is not None and origin in named:
        headers = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        if config.users is not None:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        return headers
    headers = [("Vary", "Origin")] if named else []
    if "*" in config.cors:
        headers.append(("Access-Control-Allow-Origin", "*"))
    return headers


def allowed_methods(config):
    """The methods allowed on files, for Allow headers."""
    methods = ["GET", "HEAD", "OPTIONS"]
    if config.upload:
        methods += ["PUT", "POST"]
    return ", ".join(methods)


def redirect_response(location):
    """A 301 to a path on this server, with a short HTML body.

    Runs of slashes are collapsed: "//evil.com/" would be a link to
    another host (a scheme-relative URL), an open redirect.
    """
    location = re.sub(r"/{2,}", "/", location)
    body = html_page("301 Moved Permanently", '<p>Moved to <a href="%s">%s</a>.</p>'
                     % (html.escape(location), html.escape(location)))
    return Response(301, [("Location", location)] + PAGE_HEADERS, body)


def handle_get(request, ctx):
    """GET and HEAD: echo endpoints, the landing page, files and folders."""
    config = ctx.config
    kind, path, query = request.route
    if kind == "echo":
        return maybe_gzip(Response(200, [("Content-Type", "text/plain")],
                                   path.encode("utf-8", "surrogateescape")),
                          request, config, always=True)
    if kind == "user-agent":
        agent = request.get_header("user-agent", "")
        return maybe_gzip(Response(200, [("Content-Type", "text/plain")],
                                   agent.encode("latin-1", "replace")), request, config,
                          always=True)
    if kind == "request":
        return maybe_gzip(handle_request_echo(request, config), request, config, always=True)
    if kind == "landing":
        return maybe_gzip(Response(200, PAGE_HEADERS + [("Cache-Control", "no-cache")],
                                   render_landing(config.prefix)), request, config)
    if kind == "prefix_redirect":
        return redirect_response(url_quote(config.prefix) + "/" +
                                 ("?" + query if query else ""))
    fs_path = resolve_path(config, path)
    try:
        st = os.stat(fs_path)
    except OSError:
        raise HTTPError(404, "Not found.")
    if stat.S_ISDIR(st.st_mode):
        if not path.endswith("/"):
            location = url_quote(config.prefix + path) + "/"
            return redirect_response(location + ("?" + query if query else ""))
        index = os.path.join(fs_path, "index.html")
        try:
            index_st = os.stat(index)
        except OSError:
            index_st = None
        if index_st is not None and stat.S_ISREG(index_st.st_mode):
            return handle_file(request, ctx, index, index_st)
        if not config.listing:
            raise HTTPError(403, "Directory listing is turned off.")
        return handle_listing(request, ctx, fs_path, path, query)
    if not stat.S_ISREG(st.st_mode):
        raise HTTPError(404, "Not found.")
    if path.endswith("/"):
        raise HTTPError(404, "Not found.")
    return handle_file(request, ctx, fs_path, st)


def handle_request_echo(request, config):
    """GET /request: what the server received, as text or JSON."""
    if "application/json" in (request.get_header("accept") or ""):
        return json_response(200, {
            "client": request.client, "method": request.method,
            "target": request.target, "version": request.version,
            "headers": [[n, v] for n, v in request.headers]})
    lines = ["client: %s" % request.client, "", request.request_line()]
    lines += ["%s: %s" % (n, v) for n, v in request.headers]
    return text_response(200, "\n".join(lines) + "\n")


def wants_json(request, query):
    """Whether the client asked for JSON: ?format=json or Accept: application/json."""
    if query.get("format") == "json":
        return True
    accept = request.get_header("accept") or ""
    return "application/json" in accept and "text/html" not in accept


def handle_listing(request, ctx, fs_dir, path, query_text):
    """A folder's listing as HTML, or JSON on request.

    A folder that one step of reading exhausts (the usual case) is
    rendered at once, with a Content-Length; a larger one is generated in
    pieces as it is sent (chunked), and HEAD then skips the work.
    """
    config = ctx.config
    query = parse_query(query_text)
    sort = query.get("sort", "name")
    sort = sort if sort in ("name", "size", "time") else "name"
    order = "desc" if query.get("order") == "desc" else "asc"
    as_json = wants_json(request, query)
    headers = ([("Content-Type", "application/json")] if as_json else PAGE_HEADERS) + \
        [("Cache-Control", "no-cache")]
    try:
        scandir_iter = os.scandir(fs_dir)
    except OSError:
        raise HTTPError(403, "This folder cannot be read.")
    try:
        entries, exhausted = scan_directory(scandir_iter, config)
    except OSError:
        scandir_iter.close()
        raise HTTPError(403, "This folder cannot be read.")
    pieces = listing_pieces(scandir_iter, config, config.prefix + path, sort, order, as_json,
                            entries, exhausted)
    if exhausted:
        scandir_iter.close()
        response = Response(200, headers, b"".join(pieces))
    elif request.method == "HEAD":
        scandir_iter.close()
        response = Response(200, headers, [iter(())])
    elif ctx.large_listings >= MAX_LARGE_LISTINGS:
        scandir_iter.close()
        raise HTTPError(503, "Other large folders are being listed; try again in a moment.",
                        [("Retry-After", "1")])
    else:                               # the slot and the reader are given back at the end
        response = Response(200, headers, [pieces],
                            files=[scandir_iter, pieces, ListingSlot(ctx)])
    return maybe_gzip(response, request, config)


class ListingSlot(object):
    """One of MAX_LARGE_LISTINGS: a large listing in progress holds its entries
    (and a client that does not read holds them long), so only a few may run."""

    def __init__(self, ctx):
        self.ctx = ctx
        ctx.large_listings += 1

    def close(self):
        """Give the slot back (once)."""
        if self.ctx is not None:
            self.ctx.large_listings -= 1
            self.ctx = None


def check_conditions(request, etag, mtime):
    """Evaluate If-Match/If-Unmodified-Since/If-None-Match/If-Modified-Since.

    Returns 412, 304 or None (go on), following RFC 9110 §13.2.2's order.
    """
    if_match = request.get_header("if-match")
    if if_match is not None:
        if not etag_matches(parse_etags(if_match), etag, weak=False):
            return 412
    else:
        ius = request.get_header("if-unmodified-since")
        if ius is not None:
            when = parse_http_date(ius)
            if when is not None and mtime > when:
                return 412
    if_none_match = request.get_header("if-none-match")
    if if_none_match is not None:
        if etag_matches(parse_etags(if_none_match), etag):
            return 304 if request.method in ("GET", "HEAD") else 412
        return None
    ims = request.get_header("if-modified-since")
    if ims is not None and request.method in ("GET", "HEAD"):
        when = parse_http_date(ims)
        # RFC 9110 §13.1.3: a date later than the server's clock is invalid.
        if when is not None and mtime <= when <= time.time():
            return 304
    return None


def if_range_holds(request, etag, last_modified):
    """Whether a Range may be applied given If-Range (RFC 9110 §13.1.5)."""
    value = request.get_header("if-range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith('"') or value.startswith("W/"):
        return value == etag            # strong comparison; weak never matches
    return value == last_modified


def find_precompressed(request, config, fs_path, content_type):
    """Pick the precompressed name.gz beside name when the client takes gzip.

    Off by default with uploads on: uploading report.txt.gz must not change
    what report.txt serves, past the no-clobber rule (--precompressed).
    """
    if not (config.gzip and config.precompressed and is_compressible(content_type)
            and accepts_gzip(request.get_header("accept-encoding"))
            and request.get_header("range") is None):
        return None
    gz_path = fs_path + ".gz"
    try:
        gz_st = os.stat(gz_path)
    except OSError:
        return None
    if not stat.S_ISREG(gz_st.st_mode) or not is_confined(gz_path, config.root,
                                                          config.follow_symlinks):
        return None
    return gz_path


# Request fields that make a file's answer differ from the plain 200 that is cached.
UNCACHED_IF_PRESENT = ("range", "if-range", "if-match", "if-none-match", "if-modified-since",
                       "if-unmodified-since")


def file_signature(st):
    """What must not change for a cached answer to stay right: a changed
    inode (a rename over it), size, mtime, ctime or mode means read again."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def file_cache_key(request, config, fs_path, content_type, st):
    """The key of a small file's plain 200 in the cache, or None when its
    answer depends on more than the file (ranges, conditions, a .gz sibling,
    looked for on every request since one may appear at any time)."""
    if st.st_size > CACHED_FILE_BYTES or request.method not in ("GET", "HEAD"):
        return None
    for name in UNCACHED_IF_PRESENT:
        if request.get_header(name) is not None:
            return None
    gzipped = (config.gzip and is_compressible(content_type)
               and accepts_gzip(request.get_header("accept-encoding")))
    if gzipped and config.precompressed and os.path.lexists(fs_path + ".gz"):
        return None                     # a name.gz sibling: the full path picks it
    return (fs_path, gzipped)


def handle_file(request, ctx, fs_path, st):
    """A regular file: conditional requests, ranges, gzip, streamed body.

    st is the os.stat the caller made.  The plain 200 of a small file is
    kept (head fields and bytes) and served again while the file's
    signature is unchanged: one stat instead of open, fstat, read and
    close, and no headers to build.  It is byte for byte the answer the
    full path gives.
    """
    config = ctx.config
    content_type = guess_content_type(fs_path)
    key = file_cache_key(request, config, fs_path, content_type, st)
    if key is not None:
        cached = ctx.file_cache.get(key)
        if cached is not None and cached[0] == file_signature(st):
            return Response(200, cached[1], cached[2])
    gz_path = find_precompressed(request, config, fs_path, content_type)
    try:
        f = open(gz_path or fs_path, "rb")
    except OSError:
        raise HTTPError(404 if not os.access(fs_path, os.F_OK) else 403, "Cannot open file.")
    try:
        opened = os.fstat(f.fileno())
        response = build_file_response(request, config, f, opened, content_type,
                                       precompressed=gz_path is not None)
        if key is not None and response.status == 200 and \
                file_signature(opened) == file_signature(st):
            remember_file(ctx.file_cache, key, file_signature(st), response)
    except BaseException:
        f.close()
        raise
    if f not in response.files:
        f.close()
    return response


def remember_file(cache, key, signature, response):
    """Keep a small file's 200 with its body as bytes (read now, from the open file)."""
    body = response.body
    if len(body) == 1 and isinstance(body[0], FileRegion):
        region = body[0]
        region.file.seek(region.offset)
        data = region.file.read(region.length)
        if len(data) != region.length:
            return                          # changing under us: don't keep it
        response.body = [data]
        response.close_files()
    elif not all(isinstance(part, bytes) for part in body):
        return
    cache[key] = (signature, tuple(response.headers), b"".join(response.body))
    cache.move_to_end(key)
    while len(cache) > FILE_CACHE_ENTRIES:
        cache.popitem(last=False)


def build_file_response(request, config, f, st, content_type, precompressed):
    """The response for an open file: 200, 206, 304, 412 or 416."""
    size = st.st_size
    compressible = config.gzip and is_compressible(content_type)
    wants_gzip = compressible and accepts_gzip(request.get_header("accept-encoding"))
    ranged = request.get_header("range") is not None and request.method in ("GET", "HEAD")
    stream_gzip = (wants_gzip and not precompressed and not ranged and size >= GZIP_MIN_BYTES)
    etag = make_etag(st)
    if precompressed or stream_gzip:
        etag = etag[:-1] + '-gz"'       # each representation has its own tag
    last_modified = format_http_date(st.st_mtime)
    headers = [("Content-Type", content_type), ("Last-Modified", last_modified),
               ("ETag", etag), ("Cache-Control", "no-cache")]
    if compressible:
        headers.append(("Vary", "Accept-Encoding"))
    status = check_conditions(request, etag, int(st.st_mtime))
    if status == 304:
        return Response(304, headers)
    if status == 412:
        raise HTTPError(412, "A precondition failed.")
    if precompressed or stream_gzip:
        headers.append(("Content-Encoding", "gzip"))
        if precompressed:
            return Response(200, headers, FileRegion(f, 0, size), files=[f])
        if size <= GZIP_IN_MEMORY_BYTES:
            return Response(200, headers, gzip_bytes(f.read(size)))
        return Response(200, headers, [gzip_pieces(file_pieces(f, 0, size))], files=[f])
    headers.append(("Accept-Ranges", "bytes"))
    ranges = None
    if ranged and if_range_holds(request, etag, last_modified):
        ranges = parse_range(request.get_header("range"), size)
    if not ranges:
        return Response(200, headers, FileRegion(f, 0, size), files=[f])
    if len(ranges) == 1:
        start, end = ranges[0]
        headers.append(("Content-Range", "bytes %d-%d/%d" % (start, end, size)))
        return Response(206, headers, FileRegion(f, start, end - start + 1), files=[f])
    boundary = os.urandom(12).hex()
    parts = []
    for start, end in ranges:
        parts.append(("\r\n--%s\r\nContent-Type: %s\r\nContent-Range: bytes %d-%d/%d\r\n\r\n"
                      % (boundary, content_type, start, end, size)).encode("latin-1"))
        parts.append(FileRegion(f, start, end - start + 1))
    parts.append(("\r\n--%s--\r\n" % boundary).encode("latin-1"))
    headers[0] = ("Content-Type", "multipart/byteranges; boundary=" + boundary)
    return Response(206, headers, parts, files=[f])


def handle_options(request, ctx):
    """OPTIONS: 204 with the allowed methods."""
    return Response(204, [("Allow", allowed_methods(ctx.config))])


def handle_not_allowed(request, ctx):
    """A known method this resource does not allow: 405 with Allow."""
    raise HTTPError(405, "%s is not allowed here." % request.method,
                    [("Allow", allowed_methods(ctx.config))])


def handle_write(request, ctx):
    """PUT and POST: an upload sink when uploads are on, else 405."""
    if not ctx.config.upload:
        return handle_not_allowed(request, ctx)
    if request.route.kind != "tree":
        raise HTTPError(405, "Uploads go into the served folder.",
                        [("Allow", "GET, HEAD, OPTIONS")])
    # Calls down into section 10: the sink that will receive the body.
    return start_upload(request, ctx, request.route.path)


# ---------------------------------------------------------------------------
# 10. Uploads: temporary file in the target folder, atomic publish
# ---------------------------------------------------------------------------

def shorten_name(name, limit=MAX_NAME_BYTES):
    """Cut a name to at most limit bytes of UTF-8, keeping its extension."""
    if len(name.encode("utf-8", "surrogateescape")) <= limit:
        return name
    stem, ext = os.path.splitext(name)
    if stem.lower().endswith(".tar"):   # keep ".tar.gz" whole
        stem, ext = stem[:-4], stem[-4:] + ext
    if len(ext.encode("utf-8", "surrogateescape")) > 32:
        stem, ext = name, ""            # not an extension, just a long tail
    room = limit - len(ext.encode("utf-8", "surrogateescape"))
    stem = stem.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return stem + ext


def safe_upload_name(name, hidden=False):
    """Reduce a client-given file name to a safe base name, or None.

    Folders are dropped (browsers send backslashes as they are), a name
    too long for any file system is shortened keeping its extension, and
    what is left must pass the visibility rule.
    """
    if name is None:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if re.search(r"[\x00-\x1f\x7f]", name):
        return None
    if IS_WINDOWS and re.search(r'[*?"<>|]', name):
        return None
    name = shorten_name(name)
    return name if is_visible(name, hidden) else None


def write_error(exc, path):
    """Map a write failure to an HTTPError: 507 for a full disk, else 500.

    The 500 carries the OS error and the path for the error log.
    """
    if getattr(exc, "errno", None) in (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EFBIG):
        return HTTPError(507, "Not enough space to store the upload.")
    return HTTPError(500, "The upload could not be stored.",
                     detail="cannot store %s: %s" % (path, exc))


def remove_stale_temporaries(folder, ctx):
    """Delete upload temporaries that no running upload owns.

    A temporary is stale when the process named in it is gone; when it is
    this process's but not one of its uploads in progress (a container
    restarted: the server is PID 1 again); or when it is older than
    STALE_UPLOAD_S whoever made it.  Each folder is swept at most every
    STALE_SWEEP_S, so uploads into a huge folder don't list it each time.
    """
    now = time.time()
    if ctx.swept_folders.get(folder, -STALE_SWEEP_S) > now - STALE_SWEEP_S:
        return
    ctx.swept_folders[folder] = now
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if not name.startswith(UPLOAD_TMP_PREFIX):
            continue
        pid_text = name[len(UPLOAD_TMP_PREFIX):].split("-", 1)[0]
        path = os.path.join(folder, name)
        if not pid_text.isdigit() or path in ctx.active_temps:
            continue
        pid = int(pid_text)
        try:
            old = now - os.lstat(path).st_mtime > STALE_UPLOAD_S
        except OSError:
            continue
        if old or pid == os.getpid() or not process_alive(pid):
            try:
                os.unlink(path)
            except OSError:
                pass


def process_alive(pid):
    """Whether a process with this id exists (conservatively True if unknown)."""
    if IS_WINDOWS:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def temp_name(folder, kind=""):
    """A fresh upload-temporary path in folder, named after this process."""
    return os.path.join(folder, "%s%d-%s%s" % (UPLOAD_TMP_PREFIX, os.getpid(), kind,
                                                os.urandom(6).hex()))


class TempFile(object):
    """An upload being written: a hidden temporary beside its target."""

    def __init__(self, folder, ctx):
        self.ctx = ctx
        try:
            fd, self.path = tempfile.mkstemp(prefix="%s%d-" % (UPLOAD_TMP_PREFIX, os.getpid()),
                                             dir=folder)
        except OSError as exc:
            raise write_error(exc, folder)
        ctx.active_temps.add(self.path)
        self.file = os.fdopen(fd, "wb")
        self.size = 0
        self.started_writeback = 0
        self.mode = 0o666 & ~PROCESS_UMASK      # mkstemp's 0600 is for the temporary only

    def write(self, data):
        """Append data; raises HTTPError 507/500 when the disk refuses."""
        try:
            self.file.write(data)
            self.size += len(data)
            if self.size - self.started_writeback >= WRITEBACK_BYTES:
                self.start_writeback()
        except OSError as exc:
            raise write_error(exc, self.path)

    def start_writeback(self):
        """Let the kernel write what we have so far, without waiting for it.

        POSIX_FADV_DONTNEED starts the write-back of dirty pages on Linux,
        so the fsync at the end (which the loop waits for) has at most
        WRITEBACK_BYTES left to flush instead of a whole upload.
        """
        self.started_writeback = self.size
        if FADVISE_DONTNEED is not None:
            self.file.flush()
            os.posix_fadvise(self.file.fileno(), 0, 0, FADVISE_DONTNEED)

    def complete(self):
        """Flush the content to disk and close it (safe to call again)."""
        if self.file.closed:
            return
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
        except OSError as exc:
            raise write_error(exc, self.path)

    def publish(self, target, overwrite):
        """Give the complete file its name, atomically; 409 if taken.

        Returns the path of a hard-linked backup of the file it replaced
        (overwrite only, where hard links work), so a form can put every
        file back if a later one fails; the caller removes it.
        """
        self.complete()
        backup = None
        try:
            if overwrite:
                try:                    # a replacement keeps the old file's mode,
                    old_mode = stat.S_IMODE(os.stat(target).st_mode)
                    self.mode = old_mode & ~(stat.S_ISUID | stat.S_ISGID)   # never set-id
                except OSError:
                    pass
            os.chmod(self.path, self.mode)
            if overwrite:
                if os.path.isfile(target) and not IS_WINDOWS:
                    backup = temp_name(os.path.dirname(target), "old-")
                    try:
                        os.link(target, backup)
                    except OSError:
                        backup = None
                os.replace(self.path, target)
            elif IS_WINDOWS:
                os.rename(self.path, target)        # fails if the target exists
            else:
                try:
                    os.link(self.path, target)      # atomic and never clobbers
                except OSError as exc:
                    if exc.errno in (errno.EEXIST,):
                        raise
                    if os.path.lexists(target):     # no hard links here (FAT, some FUSE)
                        raise FileExistsError(errno.EEXIST, "exists")
                    os.rename(self.path, target)
        except FileExistsError:
            raise HTTPError(409, "A file named %s exists." % display_text(
                os.path.basename(target)))
        except IsADirectoryError:
            raise HTTPError(409, "A folder named %s exists." % display_text(
                os.path.basename(target)))
        except OSError as exc:
            discard_path(backup)
            raise write_error(exc, target)
        finally:
            self.discard()
        return backup

    def discard(self):
        """Close and delete the temporary (safe to call more than once)."""
        try:
            self.file.close()
        except OSError:
            pass
        discard_path(self.path)
        self.ctx.active_temps.discard(self.path)


def discard_path(path):
    """Remove a file if it is there (None is fine)."""
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


def check_upload_target(request, config, fs_path):
    """Refuse a target early (before any body byte): 409 or 412."""
    try:
        st = os.stat(fs_path)
    except FileNotFoundError:
        st = None
    except OSError:
        raise HTTPError(409, "The target path is not usable.")
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise HTTPError(409, "A folder of that name exists.")
    if_none_match = request.get_header("if-none-match")
    if st is not None and if_none_match is not None and "*" in parse_etags(if_none_match):
        raise HTTPError(412, "The target exists (If-None-Match: *).")
    if st is None:
        if request.get_header("if-match") is not None:
            raise HTTPError(412, "The target does not exist (If-Match).")
        return
    if check_conditions(request, make_etag(st), int(st.st_mtime)) == 412:
        raise HTTPError(412, "A precondition failed.")
    if not config.overwrite:
        raise HTTPError(409, "A file of that name exists; the server was not "
                             "started with --overwrite.")


def make_folder(root, fs_folder):
    """Create missing folders inside the root (PUT /new/sub/file).

    Returns the folders it created, outermost first, so that a failed
    upload can remove them again (remove_folders).  resolve_path has
    already bounded the depth (MAX_PATH_SEGMENTS).
    """
    created = []
    path = fs_folder
    while path != root and is_inside(path, root) and not os.path.isdir(path):
        created.insert(0, path)
        path = os.path.dirname(path)
    try:
        os.makedirs(fs_folder, exist_ok=True)
    except FileExistsError:
        raise HTTPError(409, "A file stands where a folder is needed.")
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            raise HTTPError(409, "A file stands where a folder is needed.")
        raise write_error(exc, fs_folder)
    if not is_inside(os.path.realpath(fs_folder), root):
        remove_folders(created)
        raise HTTPError(404, "Not found.")
    return created


def remove_folders(created):
    """Remove folders make_folder created, innermost first, while they are empty."""
    for path in reversed(created):
        try:
            os.rmdir(path)
        except OSError:
            return                     # not empty: another upload is using it


# An upload sink receives a request body and answers when it is complete:
#   write(data)  store payload bytes (raises HTTPError to refuse);
#   pending      true when write() left work for a later turn (call write(b""));
#   finish()     the body is complete: publish all or nothing, return a Response;
#   abort()      the body will not complete: leave nothing behind.

class RawUpload(object):
    """Sink for a PUT/POST body that becomes one file."""

    pending = False

    def __init__(self, request, ctx, fs_path, url_path):
        self.request = request
        self.config = ctx.config
        self.fs_path = fs_path
        self.url_path = url_path
        check_upload_target(request, self.config, fs_path)
        folder = os.path.dirname(fs_path)
        self.created = make_folder(self.config.root, folder)
        remove_stale_temporaries(folder, ctx)
        try:
            self.temp = TempFile(folder, ctx)
        except HTTPError:
            remove_folders(self.created)
            raise
        self.received = 0

    def write(self, data):
        """Store a piece of the body."""
        self.received += len(data)
        self.temp.write(data)

    def finish(self):
        """The body is complete: publish; 201 for a new file, 200 for a replaced one.

        RFC 9110 §9.3.4: a PUT that creates answers 201, one that replaces
        answers 200 or 204.
        """
        check_upload_target(self.request, self.config, self.fs_path)
        replaced = os.path.lexists(self.fs_path)
        discard_path(self.temp.publish(self.fs_path, self.config.overwrite))
        if replaced:
            return text_response(200, "Replaced %s (%d bytes)\n"
                                 % (display_text(self.url_path), self.received))
        location = url_quote(self.url_path)
        return text_response(201, "Created %s (%d bytes)\n"
                             % (display_text(self.url_path), self.received),
                             headers=[("Location", location)])

    def abort(self):
        """The upload failed: leave nothing behind."""
        self.temp.discard()
        remove_folders(self.created)


class FormUpload(object):
    """Sink for a browser's multipart/form-data POST to a folder: all or nothing.

    Each file part goes to its own temporary, flushed to disk when the part
    ends.  Only when the closing delimiter has arrived and every part is
    accepted do the files get their names; if one fails, those already
    published are taken back (and replaced ones restored), so a form never
    half succeeds.
    """

    def __init__(self, request, ctx, fs_folder, url_folder, boundary):
        self.request = request
        self.ctx = ctx
        self.config = ctx.config
        self.fs_folder = fs_folder
        self.url_folder = url_folder
        self.parser = MultipartParser(boundary)
        self.received = 0
        self.parts = 0
        self.temp = None                # the file part being received
        self.name = None
        self.files = collections.OrderedDict()    # name -> complete TempFile
        self.pending = False
        self.created = make_folder(self.config.root, fs_folder)
        remove_stale_temporaries(fs_folder, ctx)

    def write(self, data):
        """Feed body bytes through the multipart parser to temporary files."""
        self.received += len(data)
        events = self.parser.feed(data, FORM_PARTS_PER_TURN)
        self.pending = self.parser.pending
        for kind, value in events:
            if kind == "part":
                self.start_part(value)
            elif kind == "data":
                if self.temp is not None:
                    self.temp.write(value)
            elif self.temp is not None:
                self.end_part()

    def start_part(self, headers):
        """A new part: file parts get a temporary, other fields are ignored."""
        self.parts += 1
        if self.parts > MAX_FORM_PARTS:
            raise HTTPError(413, "A form may have at most %d parts." % MAX_FORM_PARTS)
        _, params = parse_header_params(headers.get("content-disposition", ""), unescape=False)
        if "filename" not in params:
            return
        name = safe_upload_name(params["filename"], self.config.hidden)
        if name is None:
            if params["filename"] == "":
                return                          # an empty file input
            raise HTTPError(400, "Unsafe file name %r." % params["filename"])
        target = os.path.join(self.fs_folder, name)
        if os.path.isdir(target) or (not self.config.overwrite and os.path.lexists(target)):
            raise HTTPError(409, "Exists already: %s." % name)   # before its bytes arrive
        if name in self.files and not self.config.overwrite:
            raise HTTPError(409, "The form holds two files named %s." % name)
        self.name = name
        self.temp = TempFile(self.fs_folder, self.ctx)

    def end_part(self):
        """A file part is complete: flush it; it waits for the whole form."""
        temp, self.temp = self.temp, None
        temp.complete()
        previous = self.files.pop(self.name, None)
        if previous is not None:
            previous.discard()                  # --overwrite: the last of a name wins
        self.files[self.name] = temp

    def finish(self):
        """The body is complete: publish every file, then 303 or 201 JSON."""
        if not self.parser.done:
            raise HTTPError(400, "The multipart body ended early.")
        if not self.files:
            raise HTTPError(400, "The form held no file.")
        published = []                          # (target, backup or None)
        try:
            for name, temp in self.files.items():
                target = os.path.join(self.fs_folder, name)
                published.append((target, temp.publish(target, self.config.overwrite)))
        except HTTPError:
            for target, backup in reversed(published):
                if backup is not None:
                    os.replace(backup, target)  # put the replaced file back
                else:
                    discard_path(target)
            raise
        finally:
            for temp in self.files.values():
                temp.discard()
        saved = []
        for (target, backup), (name, temp) in zip(published, self.files.items()):
            discard_path(backup)
            saved.append({"name": display_text(name), "size": temp.size,
                          "url": url_quote(self.url_folder + name)})
        self.files = collections.OrderedDict()
        if "application/json" in (self.request.get_header("accept") or ""):
            return json_response(201, {"saved": saved})
        location = url_quote(self.url_folder)
        body = html_page("303 See Other", '<p>Uploaded. <a href="%s">Back</a></p>'
                         % html.escape(location))
        return Response(303, [("Location", location)] + PAGE_HEADERS, body)

    def abort(self):
        """The upload failed: remove every temporary; publish nothing."""
        if self.temp is not None:
            self.temp.discard()
            self.temp = None
        for temp in self.files.values():
            temp.discard()
        self.files = collections.OrderedDict()
        remove_folders(self.created)    # only if nothing was saved into them


def start_upload(request, ctx, path):
    """Check a write request before its body and return the sink for it."""
    config = ctx.config
    length = parse_body_framing(request)
    if config.max_upload is not None and length is not None and length > config.max_upload:
        raise HTTPError(413, "The upload is larger than %d bytes." % config.max_upload)
    fs_path = resolve_path(config, path)
    ctype, params = parse_header_params(request.get_header("content-type") or "")
    url_path = config.prefix + path
    if path.endswith("/") or os.path.isdir(fs_path):
        if request.method != "POST" or ctype != "multipart/form-data":
            raise HTTPError(400 if request.method == "POST" else 405,
                            "Send a file to a file URL, or a form to a folder.")
        if "boundary" not in params:
            raise HTTPError(400, "multipart/form-data without a boundary.")
        if not path.endswith("/"):
            url_path += "/"
        return FormUpload(request, ctx, fs_path, url_path,
                          params["boundary"].encode("latin-1", "replace"))
    return RawUpload(request, ctx, fs_path, url_path)


# ---------------------------------------------------------------------------
# 11. WebDAV and dispatch: properties, locks, every method to its handler
# ---------------------------------------------------------------------------

HANDLERS = {
    "GET": handle_get,
    "HEAD": handle_get,
    "OPTIONS": handle_options,
    "PUT": handle_write,
    "POST": handle_write,
}


def dispatch(request, ctx):
    """Check access, route a request once and run its handler.

    Returns a Response or an upload sink.  The order matters: a Host this
    server does not answer to (DNS rebinding) is refused first; a CORS
    preflight carries no credentials, so it is answered before auth; a
    cross-site write is refused even with the right password.
    """
    config = ctx.config
    check_host(request, ctx)
    if is_preflight(request):
        return handle_preflight(request, ctx)
    if config.users is not None and (not config.auth_writes
                                     or request.method in WRITE_METHODS):
        request.user = authenticate(request, ctx)
    check_same_origin(request, config)
    handler = HANDLERS.get(request.method)
    if handler is None and request.method not in KNOWN_METHODS:
        if request.target == "*":
            raise HTTPError(400, "The target * is only for OPTIONS.")
        raise HTTPError(501, "Unknown method %s." % request.method)
    request.route = route(request, ctx.config)
    if request.route.kind == "tree":
        check_path_limits(request.route.path)   # for every method, not only those that read
    return (handler or handle_not_allowed)(request, ctx)


# ---------------------------------------------------------------------------
# 12. Transport and connection: the per-client state machine
# ---------------------------------------------------------------------------

SENDFILE_UNSUPPORTED = frozenset([errno.EINVAL, errno.ENOSYS, errno.ENOTSUP,
                                  getattr(errno, "EOPNOTSUPP", errno.ENOTSUP),
                                  errno.ENOTSOCK])


class WouldBlock(Exception):
    """The transport cannot go on until its socket is ready for `events`."""

    def __init__(self, events):
        Exception.__init__(self, events)
        self.events = events


class SocketTransport(object):
    """A plain TCP socket as the connection sees it.

    recv, send and sendfile raise WouldBlock(READ_EVENTS or WRITE_EVENTS)
    naming what the socket must become before the call can succeed.  A
    TLS transport may need to write while reading (or the reverse), which
    is why the direction is reported rather than assumed.  sendfile
    returns None when this transport or file cannot use it (TLS, some
    file systems); the connection then reads the file and sends it.
    """

    def __init__(self, sock):
        self.sock = sock
        self.can_sendfile = HAS_SENDFILE

    def recv(self, size):
        """Up to size bytes; b"" when the peer has shut its side."""
        try:
            return self.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            raise WouldBlock(READ_EVENTS)

    def send(self, data):
        """Send what the socket takes of data; returns the count."""
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            raise WouldBlock(WRITE_EVENTS)

    def sendfile(self, file, offset, count):
        """Send a file region from the kernel; the count sent, or None if it can't."""
        if not self.can_sendfile:
            return None
        try:
            return os.sendfile(self.sock.fileno(), file.fileno(), offset, count)
        except (BlockingIOError, InterruptedError):
            raise WouldBlock(WRITE_EVENTS)
        except OSError as exc:
            if exc.errno in SENDFILE_UNSUPPORTED:
                self.can_sendfile = False     # this file or socket can't: read instead
                return None
            raise

    def shutdown_write(self):
        """Send our FIN; the peer may still send to us."""
        self.sock.shutdown(socket.SHUT_WR)

    def pending(self):
        """Bytes received but not yet returned: none for a plain socket."""
        return 0

    def close(self):
        """Release the socket."""
        try:
            self.sock.close()
        except OSError:
            pass


class TLSTransport(SocketTransport):
    """A TLS connection over a non-blocking ssl.SSLSocket.

    OpenSSL may need the socket writable to read (or readable to write),
    so SSLWantReadError and SSLWantWriteError become WouldBlock with that
    direction, never "the peer is gone".  It decrypts whole records, so
    after a read it may hold bytes the selector cannot see: pending()
    tells the connection to come back without waiting for the socket.
    The kernel's sendfile would bypass TLS: can_sendfile is False, and
    files are read and sent through the TLS layer.
    """

    def __init__(self, sock):
        SocketTransport.__init__(self, sock)
        self.can_sendfile = False

    def recv(self, size):
        """Up to size decrypted bytes; b"" at the end of the stream."""
        chunks = []
        total = 0
        while total < size:
            try:
                data = self.sock.recv(min(size - total, RECV_BYTES))
            except ssl.SSLWantReadError:
                if chunks:
                    break
                raise WouldBlock(READ_EVENTS)
            except ssl.SSLWantWriteError:
                if chunks:
                    break
                raise WouldBlock(WRITE_EVENTS)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                data = b""
            if not data:
                break
            chunks.append(data)
            total += len(data)
            if not self.sock.pending():
                break
        return b"".join(chunks)

    def send(self, data):
        """Encrypt and send the start of data; returns the count taken."""
        try:
            return self.sock.send(data[:TLS_SEND_BYTES])
        except ssl.SSLWantWriteError:
            raise WouldBlock(WRITE_EVENTS)
        except ssl.SSLWantReadError:
            raise WouldBlock(READ_EVENTS)

    def pending(self):
        """Decrypted bytes held inside the TLS layer."""
        return self.sock.pending()

    def shutdown_write(self):
        """Send close_notify (RFC 8446 §6.1) once, without waiting for the peer's, then FIN."""
        try:
            self.sock.unwrap()
        except (ssl.SSLError, OSError, ValueError):
            pass                        # SSLWantRead: ours went, theirs is not awaited
        self.sock.shutdown(socket.SHUT_WR)


HANDSHAKE = "handshake"           # TLS: waiting for the handshake to finish
READING_HEAD = "reading-head"     # waiting for (more of) a request head; idle if empty
READING_BODY = "reading-body"     # streaming a request body into an upload sink
WRITING = "writing"               # sending a response
CLOSING = "closing"               # our side is shut; draining input, then close
CLOSED = "closed"


class Connection(object):
    """One client: buffers, the current request and response, one deadline.

    The loop calls on_readable/on_writable (or advance, for a connection
    with work left from an earlier turn).  advance() runs one bounded
    slice: at most one request handled, WRITE_BUDGET_BYTES sent and
    BODY_STEPS_PER_TURN generated pieces, so no client holds the loop.
    enter(state) is the one place a state begins: it arms that phase's
    deadline and tells the server to update the selector.
    """

    def __init__(self, server, sock, addr):
        self.server = server
        self.ctx = server.ctx
        self.config = server.config
        self.sock = sock              # the selector's key
        self.transport = SocketTransport(sock)
        self.client = format_client(addr)
        self.state = None
        self.events = 0               # what the selector watches for now
        self.blocked = 0              # what the last transport call waited for
        self.inbuf = bytearray()
        self.out = bytearray()
        self.parts = collections.deque()
        self.peer_eof = False
        self.unparsed = False         # inbuf may hold a request that has not had its turn
        self.request = None
        self.response = None
        self.reader = None            # the body reader chosen from the request's framing
        self.sink = None
        self.body_received = 0
        self.chunked_out = False
        self.close_after = False
        self.sent = 0                 # bytes of the current response sent
        self.answered = 0             # responses finished on this connection
        self.head_bytes = 0
        self.deadline = 0.0
        self.turn = -1                # the loop turn this connection last had a slice in
        self.budget = 0               # bytes it may still send in this slice
        self.steps = 0                # body pieces it may still generate in this slice
        self.enter(HANDSHAKE if server.tls_context is not None else READING_HEAD)

    # -- states and deadlines -------------------------------------------------

    def enter(self, state):
        """Begin a state: arm its phase's deadline and update the selector."""
        self.state = state
        config = self.config
        if state == HANDSHAKE:
            self.arm(config.head_timeout)         # a handshake is part of the first head
        elif state == READING_HEAD:
            if self.inbuf:
                self.arm(config.head_timeout)     # a pipelined head: its clock starts now
            else:
                self.arm(config.idle_timeout)
        elif state == READING_BODY:
            self.arm(config.body_timeout)
        elif state == WRITING:
            self.arm(config.write_timeout)
        elif state == CLOSING:
            self.arm(LINGER_S)
        self.server.update_events(self)

    def arm(self, seconds):
        """Set the one deadline this connection has."""
        self.deadline = time.monotonic() + seconds
        self.server.note_deadline(self.deadline)

    def wanted_events(self):
        """The selector events the current state waits for."""
        if self.state == WRITING:
            wanted = WRITE_EVENTS
        elif self.state == HANDSHAKE and self.blocked:
            return self.blocked
        elif self.state == READING_BODY and self.out:
            wanted = READ_EVENTS | WRITE_EVENTS   # a 100 Continue is on its way
        else:
            wanted = READ_EVENTS
        return wanted | self.blocked

    def has_turn_work(self):
        """Whether it has work that waits for the next turn, not for the socket."""
        if self.state == READING_HEAD:
            return self.unparsed or self.transport.pending() > 0
        if self.state == READING_BODY:
            if self.sink is not None and self.sink.pending:
                return True
            return self.transport.pending() > 0
        return False

    def is_idle(self):
        """Whether it is a keep-alive connection between requests.

        Only after a first answer: a connection just accepted may have its
        request waiting, unread, in the kernel; closing it would drop that.
        """
        return (self.state == READING_HEAD and self.answered and not self.inbuf
                and self.request is None)

    def on_deadline(self, now):
        """The phase's deadline passed: 408 for a slow head or body, else close."""
        if now < self.deadline or self.state == CLOSED:
            return
        if self.state == HANDSHAKE:
            self.close()
        elif self.state == READING_HEAD and self.inbuf.strip():
            self.fail(HTTPError(408, "The request head took too long."))
        elif self.state == READING_BODY:
            self.fail(HTTPError(408, "The request body stalled."))
        elif self.state == WRITING:
            self.abort("client stopped reading")
        else:
            self.close()

    # -- events from the loop -------------------------------------------------

    def on_readable(self):
        """Read what the socket has (a bounded amount) and run a slice."""
        if self.state == CLOSING:
            self.drain()
            return
        if self.state == HANDSHAKE:
            self.handshake()
            return
        backlogged = self.sink is not None and self.sink.pending
        if self.state in (READING_HEAD, READING_BODY) and not backlogged:
            try:
                data = self.transport.recv(RECV_BYTES)
            except WouldBlock:
                return
            except OSError:
                self.abort("connection reset")
                return
            if not data:
                self.peer_eof = True
            else:
                if self.state == READING_HEAD and not self.inbuf:
                    self.arm(self.config.head_timeout)   # from the first byte, not the last
                self.inbuf += data
        self.advance()

    def on_writable(self):
        """Run a slice (it sends what is pending)."""
        if self.state == HANDSHAKE:
            self.handshake()
        elif self.state in (READING_HEAD, READING_BODY) and not self.out:
            self.on_readable()            # TLS wanted to write in order to read
        else:
            self.advance()

    def handshake(self):
        """HANDSHAKE: refuse plain HTTP, then run the TLS handshake without blocking.

        The first byte of a ClientHello is 0x16; a letter means someone
        typed http:// for this port, and gets a short plain-text 400.
        """
        self.turn = self.server.turn
        self.blocked = 0
        if not isinstance(self.transport, TLSTransport):
            try:
                first = self.sock.recv(1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            if first != TLS_HANDSHAKE_RECORD:
                self.refuse_plain_http(first)
                return
            try:
                self.sock = self.server.tls_context.wrap_socket(
                    self.sock, server_side=True, do_handshake_on_connect=False)
            except (OSError, ValueError):
                self.close()
                return
            self.transport = TLSTransport(self.sock)
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.blocked = READ_EVENTS
        except ssl.SSLWantWriteError:
            self.blocked = WRITE_EVENTS
        except (ssl.SSLError, OSError, ValueError):
            self.close()                          # a botched handshake: nothing to answer
            return
        else:
            self.enter(READING_HEAD)              # has_turn_work sees a buffered request
        self.server.update_events(self)

    def refuse_plain_http(self, first):
        """Answer plain HTTP on the TLS port with a plain 400, then close."""
        if not first:
            self.close()
            return
        body = b"This port speaks HTTPS: use https:// in the address.\n"
        try:
            self.sock.send(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                           b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                           % (len(body), body))
        except OSError:
            self.close()
            return
        self.start_closing()

    def on_turn(self):
        """Run a slice for work left from an earlier turn (see has_turn_work)."""
        if self.transport.pending() and self.state in (READING_HEAD, READING_BODY):
            self.on_readable()                    # bytes inside the TLS layer
        else:
            self.advance()

    def drain(self):
        """CLOSING: read and drop input until the peer closes or the linger ends."""
        try:
            data = self.transport.recv(RECV_BYTES)
        except WouldBlock:
            return
        except OSError:
            data = b""
        if not data:
            self.close()

    # -- the state machine ------------------------------------------------------

    def advance(self):
        """One bounded slice: run states until one waits or the budget is spent."""
        self.turn = self.server.turn
        self.budget = WRITE_BUDGET_BYTES
        self.steps = BODY_STEPS_PER_TURN
        self.blocked = 0
        handled = False
        try:
            while True:
                state = self.state
                if state == READING_HEAD:
                    if handled:
                        break                 # one request a turn; the next waits
                    if not self.read_head():
                        break
                    handled = True
                elif state == READING_BODY:
                    if not self.read_body():
                        break
                elif state == WRITING:
                    if not self.write_response():
                        break
                else:
                    break
        except WouldBlock as exc:
            self.blocked = exc.events
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
            self.abort("client went away (%s)" % exc.__class__.__name__)
        except OSError as exc:
            self.abort("I/O error: %s" % exc)
        self.server.update_events(self)

    def read_head(self):
        """READING_HEAD: parse a head when one is complete.  Returns progress."""
        if not self.inbuf:
            if self.peer_eof:
                self.close()
            return False                  # nothing yet: the usual case after a response
        self.unparsed = False
        try:
            result = parse_request_head(self.inbuf)
        except HTTPError as exc:
            self.fail(exc)
            return True
        if result is None:
            if self.peer_eof:
                if bytes(self.inbuf).strip():
                    self.fail(HTTPError(400, "The request head ended early."))
                    return True
                self.close()
            return False
        request, consumed = result
        del self.inbuf[:consumed]
        request.client = self.client
        self.request = request
        self.begin_request(request)
        return True

    def begin_request(self, request):
        """Choose the body reader, dispatch, then answer or read the body."""
        try:
            length = parse_body_framing(request)
        except HTTPError as exc:
            self.respond_error(exc)
            return
        self.reader = ContentLengthReader(length) if length is not None else ChunkedDecoder()
        try:
            result = dispatch(request, self.ctx)
        except HTTPError as exc:
            self.respond_error(exc)
            return
        except Exception as exc:  # a bug must cost one request, not the server
            self.server.log_error("error handling %s: %r" % (request.request_line(), exc))
            self.respond_error(HTTPError(500, "Internal error."), close=True)
            return
        if isinstance(result, Response):
            self.respond(result)
            return
        self.sink = result
        self.body_received = 0
        self.enter(READING_BODY)
        if "100-continue" in request.header_tokens("expect") and request.version == "HTTP/1.1":
            self.out += b"HTTP/1.1 100 Continue\r\n\r\n"

    def read_body(self):
        """READING_BODY: pass body bytes through the reader to the sink.

        Returns progress.  A sink with work left from this turn (pending)
        is given b"" on the next turn, before more is read.
        """
        if self.out:                          # a pending 100 Continue
            try:
                self.send_out()
            except WouldBlock:
                pass
        try:
            if self.sink.pending:
                self.sink.write(b"")
            elif not self.reader.done:
                if not self.inbuf:
                    if self.peer_eof:
                        self.abort("client went away during the body")
                    return False
                data = bytes(self.inbuf)
                del self.inbuf[:]
                payload = self.reader.feed(data)
                if self.reader.done:
                    self.inbuf += self.reader.unused
                if payload:
                    self.body_received += len(payload)
                    limit = self.config.max_upload
                    if limit is not None and self.body_received > limit:
                        raise HTTPError(413, "The upload is larger than %d bytes." % limit)
                    self.sink.write(payload)
                self.arm(self.config.body_timeout)
            if self.sink.pending:
                return False
            if not self.reader.done:
                if self.peer_eof:
                    self.abort("client went away during the body")
                return False
            response = self.sink.finish()
        except HTTPError as exc:
            self.fail(exc)
            return True
        except Exception as exc:
            self.server.log_error("error storing upload: %r" % (exc,))
            self.fail(HTTPError(500, "The upload could not be stored."))
            return True
        self.sink = None
        response.log_extra = " upload=%d" % self.body_received
        self.respond(response)
        return True

    def respond_error(self, error, close=False):
        """Answer an HTTPError (logging the detail of a 5xx)."""
        if error.status >= 500 and error.detail:
            self.server.log_error(error.detail)
        response = error_response(error, self.request or _PSEUDO_REQUEST, self.ctx)
        response.close = close
        self.respond(response)

    def respond(self, response):
        """Queue a response's head and body, decide on closing, enter WRITING."""
        request = self.request
        self.drop_sink()
        self.response = response
        bodyless = response.status in (204, 304) or response.status < 200
        length = None if bodyless else response.body_length()
        body_unread = self.reader is not None and not self.reader.done
        peer_done = self.peer_eof and not bytes(self.inbuf).strip()
        self.close_after = response.close or decide_close(
            request, response.status, bodyless or length is not None, body_unread,
            self.server.stopping, peer_done)
        headers = [("Date", self.server.http_date()), ("Server", SERVER_NAME)]
        headers += response.headers
        headers += cors_headers(request, self.config)
        headers += SECURITY_HEADERS
        self.chunked_out = False
        if bodyless:
            response.close_files()
            response.body = []
        elif length is not None:
            headers.append(("Content-Length", str(length)))
        elif request is not None and request.version == "HTTP/1.1":
            headers.append(("Transfer-Encoding", "chunked"))
            self.chunked_out = True
        if self.close_after:
            headers.append(("Connection", "close"))
        elif request.version == "HTTP/1.0":
            headers.append(("Connection", "keep-alive"))
        head = format_response_head("HTTP/1.1", response.status, headers)
        self.out += head
        self.head_bytes = len(head)
        self.sent = 0
        self.parts = collections.deque()
        if request is not None and request.method == "HEAD":
            self.chunked_out = False
            response.close_files()
        else:
            self.parts.extend(response.body)
            if self.chunked_out:
                self.parts.append(_CHUNKED_END)
        self.enter(WRITING)

    def drop_sink(self):
        """Abort the upload in progress, if any: it leaves nothing behind."""
        if self.sink is not None:
            self.sink.abort()
            self.sink = None

    def fail(self, error):
        """Answer an error to a request we cannot go on with, then close."""
        self.drop_sink()
        if self.state == WRITING and self.sent:
            self.abort("error after the response began: %s" % error.message)
            return
        self.respond_error(error, close=True)

    def send_out(self):
        """Send from the output buffer within the budget.  True when it is empty."""
        data = self.out if len(self.out) <= self.budget else self.out[:max(self.budget, 1)]
        n = self.transport.send(data)
        del self.out[:n]
        self.sent += n
        self.budget -= n
        if n:
            self.arm(self.config.write_timeout if self.state == WRITING
                     else self.config.body_timeout)
        return not self.out

    def write_response(self):
        """WRITING: move body parts to the socket within the budget.  Returns progress."""
        while True:
            # Fill the buffer first, so a head and a small body leave in one
            # send (with TCP_NODELAY, two sends would cost two packets).
            while self.parts and len(self.out) < SEND_BUFFER_BYTES and self.steps > 0:
                if not self.fill_from(self.parts[0]):
                    break
            if self.out:
                if self.budget <= 0 or not self.send_out():
                    return False
                continue
            if not self.parts:
                break
            if self.budget <= 0 or self.steps <= 0:
                return False              # the rest on the next turn
            self.send_region(self.parts[0])
        self.finish_response()
        return self.state != CLOSED

    def fill_from(self, part):
        """Move bytes of the first body part into the buffer (one step).

        Returns False when the part is a file region for sendfile, which
        goes out only once the buffer is empty.
        """
        if part is _CHUNKED_END:
            self.parts.popleft()
            self.out += b"0\r\n\r\n"
            return True
        if isinstance(part, bytes):
            self.parts.popleft()
            self.queue_payload(part)
            return True
        self.steps -= 1
        if isinstance(part, FileRegion):
            if part.length <= 0:
                self.parts.popleft()
            elif (self.transport.can_sendfile and not self.chunked_out
                  and part.length > SMALL_FILE_BYTES):
                self.steps += 1
                return False
            else:
                part.file.seek(part.offset)
                data = part.file.read(min(part.length, FILE_CHUNK_BYTES))
                if not data:
                    raise OSError("file shrank while being sent")
                part.offset += len(data)
                part.length -= len(data)
                self.queue_payload(data)
        else:
            data = next(part, None)
            if data is None:
                self.parts.popleft()
            else:
                self.queue_payload(data)
        return True

    def queue_payload(self, data):
        """Add body bytes to the output buffer, framed when chunked."""
        if not data:
            return                           # an empty chunk would end the body
        if self.chunked_out:
            self.out += b"%x\r\n" % len(data)
            self.out += data
            self.out += b"\r\n"
        else:
            self.out += data

    def send_region(self, part):
        """Send a file region with sendfile, within the budget."""
        self.steps -= 1
        n = self.transport.sendfile(part.file, part.offset,
                                    min(part.length, FILE_CHUNK_BYTES, self.budget))
        if n is None:
            return                            # fill_from reads it from now on
        if n == 0:
            raise OSError("file shrank while being sent")
        part.offset += n
        part.length -= n
        self.sent += n
        self.budget -= n
        self.arm(self.config.write_timeout)

    def finish_response(self):
        """The response is out: log it, then wait for the next request or close."""
        self.answered += 1
        self.log_response()
        if self.response is not None:
            self.response.close_files()
        self.response = None
        self.request = None
        self.reader = None
        self.parts = collections.deque()
        if self.close_after or self.server.stopping:
            self.start_closing()
            return
        self.unparsed = bool(self.inbuf)
        self.enter(READING_HEAD)

    def log_response(self):
        """One Common Log Format line for the response just sent (or cut)."""
        if self.config.quiet or self.response is None:
            return
        request = self.request
        line = display_text(request.request_line()) if request is not None else "-"
        body_bytes = max(0, self.sent - self.head_bytes)
        extra = self.response.log_extra
        user = request.user if request is not None and request.user else "-"
        self.server.log('%s - %s [%s] "%s" %d %d%s' % (
            self.client.rsplit(":", 1)[0].strip("[]"),
            display_text(user).replace(" ", "_"), format_log_date(time.time()),
            line.replace('"', '\\"'), self.response.status, body_bytes, extra))

    def start_closing(self):
        """Shut our side so the client sees the end, then drain its input briefly."""
        if self.peer_eof or self.server.stopping:
            self.close()                      # no lingering while the server exits
            return
        try:
            self.transport.shutdown_write()
        except OSError:
            self.close()
            return
        self.enter(CLOSING)

    def abort(self, why):
        """Drop the connection at once (the client is gone or stuck)."""
        self.drop_sink()
        if self.response is not None and self.state == WRITING:
            if self.response.log_extra == "":
                self.response.log_extra = " (cut: %s)" % why
            self.log_response()
        self.close()

    def close(self):
        """Release the socket and any open files."""
        if self.state == CLOSED:
            return
        self.drop_sink()
        if self.response is not None:
            self.response.close_files()
            self.response = None
        self.state = CLOSED
        self.server.forget(self)
        self.transport.close()


_CHUNKED_END = object()             # marks where the last chunk goes
SECURITY_HEADERS = [("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer")]
_PSEUDO_REQUEST = Request("GET", "/", "HTTP/1.1", [])


def format_client(addr):
    """host:port of a peer, with IPv4-mapped IPv6 shown as IPv4."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = addr[0]
        if host.startswith("::ffff:") and "." in host:
            host = host[len("::ffff:"):]
        if ":" in host:
            return "[%s]:%d" % (host, addr[1])
        return "%s:%d" % (host, addr[1])
    return str(addr or "-")


# ---------------------------------------------------------------------------
# 13. Server and loop: listeners, one selector, deadlines, signals
# ---------------------------------------------------------------------------

class Server(object):
    """The event loop: accepts clients and gives each connection its slices.

    Each turn: apply the selector changes connections asked for, wait for
    events (not at all when a connection has work left from the last
    turn), give each ready connection one slice, then fire deadlines.
    Accepting pauses at max_connections (after closing the oldest idle
    connection fails to make room) and on running out of descriptors, as
    darkhttpd's `accepting` flag does; it resumes when a connection closes.
    """

    def __init__(self, config, listener, log_stream=None, tls_context=None):
        self.config = config
        self.ctx = Context(config)
        self.tls_context = tls_context
        self.listener = listener
        self.selector = selectors.DefaultSelector()
        self.connections = set()
        self.idle = collections.OrderedDict()   # idle connections, oldest first
        self.changed = set()                    # connections whose events may have changed
        self.ready = set()                      # connections with work for the next turn
        self.turn = 0
        self.stopping = False
        self.stop_deadline = None
        self.accepting = True
        self.accept_resume_at = None
        self.accept_errors = 0                  # failures since the last logged one
        self.accept_error_logged_at = None
        self.next_sweep = time.monotonic() + 1.0
        self.log_stream = log_stream or sys.stderr
        self._date_cache = (0, "")
        listener.setblocking(False)
        self.selector.register(listener, READ_EVENTS, None)
        self.wakeup = None

    # -- helpers for connections ----------------------------------------

    def http_date(self):
        """The Date header value, formatted once per second."""
        now = int(time.time())
        if self._date_cache[0] != now:
            self._date_cache = (now, format_http_date(now))
        return self._date_cache[1]

    def note_deadline(self, deadline):
        """Make sure the loop wakes up by this deadline."""
        if deadline < self.next_sweep:
            self.next_sweep = deadline

    def update_events(self, conn):
        """Note that a connection's wishes changed; applied once per turn."""
        self.changed.add(conn)

    def apply_changes(self):
        """Tell the selector what each changed connection waits for now."""
        for conn in self.changed:
            if conn.state == CLOSED:
                continue
            wanted = conn.wanted_events()
            if wanted != conn.events:
                self.selector.modify(conn.sock, wanted, conn)
                conn.events = wanted
            if conn.has_turn_work():
                self.ready.add(conn)
            if conn.is_idle():
                if conn not in self.idle:
                    self.idle[conn] = True
                    if not self.accepting and self.accept_resume_at is None:
                        self.resume_accepting()   # full, but now one can make room
            else:
                self.idle.pop(conn, None)
        self.changed.clear()

    def forget(self, conn):
        """Remove a closed connection from the loop; room to accept again."""
        if conn in self.connections:
            self.connections.discard(conn)
            self.idle.pop(conn, None)
            self.ready.discard(conn)
            try:
                self.selector.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
            self.resume_accepting()

    def log(self, line):
        """Write one access-log line."""
        try:
            self.log_stream.write(line + "\n")
            self.log_stream.flush()
        except (OSError, ValueError):
            pass

    def log_error(self, line):
        """Write one error line (even when quiet)."""
        try:
            self.log_stream.write("minihttpd: " + line + "\n")
            self.log_stream.flush()
        except (OSError, ValueError):
            pass

    # -- accepting --------------------------------------------------------

    def accept(self):
        """Accept waiting clients (a few per turn, to stay fair)."""
        for _ in range(ACCEPTS_PER_EVENT):
            if len(self.connections) >= self.config.max_connections \
                    and not self.close_oldest_idle():
                self.pause_accepting(None)    # the backlog holds them until one closes
                return
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.note_accept_error(exc)
                    self.close_oldest_idle()
                    self.pause_accepting(time.monotonic() + ACCEPT_BACKOFF_S)
                return                        # ECONNABORTED and the like: next turn
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            conn = Connection(self, sock, addr)
            self.connections.add(conn)
            conn.events = READ_EVENTS
            self.selector.register(sock, READ_EVENTS, conn)

    def close_oldest_idle(self):
        """Close the connection idle longest to make room.  Returns whether it could."""
        for conn in self.idle:
            if conn.is_idle():
                conn.close()
                return True
        return False

    def pause_accepting(self, resume_at):
        """Stop watching the listener until a connection closes (or resume_at)."""
        if self.accepting:
            try:
                self.selector.unregister(self.listener)
            except (KeyError, ValueError):
                pass
            self.accepting = False
        self.accept_resume_at = resume_at
        if resume_at is not None:
            self.note_deadline(resume_at)

    def resume_accepting(self):
        """Watch the listener again."""
        if not self.accepting and not self.stopping:
            self.selector.register(self.listener, READ_EVENTS, None)
            self.accepting = True
            self.accept_resume_at = None

    def note_accept_error(self, exc):
        """Log running out of descriptors, at most once per ACCEPT_ERROR_LOG_S."""
        now = time.monotonic()
        if self.accept_error_logged_at is not None and \
                now - self.accept_error_logged_at < ACCEPT_ERROR_LOG_S:
            self.accept_errors += 1
            return
        more = " (%d more since the last report)" % self.accept_errors \
            if self.accept_errors else ""
        self.log_error("cannot accept: %s; pausing (%d connections)%s"
                       % (exc.strerror, len(self.connections), more))
        self.accept_error_logged_at = now
        self.accept_errors = 0

    # -- the loop -------------------------------------------------------

    def sweep(self, now):
        """Fire the deadlines that passed; note when the next one is due."""
        self.next_sweep = now + 1.0
        if not self.accepting and self.accept_resume_at is not None:
            if now >= self.accept_resume_at:
                self.resume_accepting()
            else:
                self.next_sweep = min(self.next_sweep, self.accept_resume_at)
        for conn in list(self.connections):
            if conn.deadline <= now:
                conn.on_deadline(now)
            if conn.state != CLOSED and conn.deadline < self.next_sweep:
                self.next_sweep = conn.deadline

    def request_stop(self):
        """Stop accepting; let responses in flight finish for a while."""
        if self.stopping:
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + SHUTDOWN_GRACE_S
        if self.accepting:
            try:
                self.selector.unregister(self.listener)
            except (KeyError, ValueError):
                pass
        self.listener.close()
        for conn in list(self.connections):
            if conn.state in (HANDSHAKE, CLOSING) or (
                    conn.state == READING_HEAD and not conn.inbuf and conn.request is None):
                conn.close()                  # nothing asked: nothing to finish

    def run_slice(self, conn, step):
        """Run one event handler of a connection; a bug closes it, not the loop."""
        try:
            step()
        except Exception as exc:  # one connection's bug never stops the loop
            self.log_error("closing %s after an internal error: %r" % (conn.client, exc))
            conn.close()

    def serve(self, should_stop):
        """Run until should_stop() turns true and the connections are done."""
        while True:
            if should_stop() and not self.stopping:
                self.request_stop()
            if self.stopping:
                if not self.connections or time.monotonic() >= self.stop_deadline:
                    break
            self.apply_changes()
            if self.ready:
                timeout = 0
            else:
                timeout = max(0.0, min(self.next_sweep - time.monotonic(), 0.5))
            events = self.selector.select(timeout)
            self.turn += 1
            for key, mask in events:
                conn = key.data
                if conn is None:
                    if key.fileobj is self.listener:
                        self.accept()
                    else:
                        drain_wakeup(key.fileobj)
                    continue
                if mask & READ_EVENTS and conn.state != CLOSED:
                    self.run_slice(conn, conn.on_readable)
                if mask & WRITE_EVENTS and conn.state != CLOSED and conn.turn != self.turn:
                    self.run_slice(conn, conn.on_writable)
            ready, self.ready = self.ready, set()
            for conn in ready:
                if conn.state != CLOSED and conn.turn != self.turn:
                    self.run_slice(conn, conn.on_turn)
            now = time.monotonic()
            if now >= self.next_sweep:
                self.sweep(now)
        for conn in list(self.connections):
            conn.abort("server stopping")
        self.selector.close()


def drain_wakeup(sock):
    """Empty the signal wake-up socket."""
    try:
        while sock.recv(512):
            pass
    except OSError:
        pass


# ---------------------------------------------------------------------------
# 14. Command line
# ---------------------------------------------------------------------------

def port_number(text):
    """argparse type: a TCP port, 0 to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a port number: %r" % text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("port out of range 0-65535: %d" % port)
    return port


def positive_seconds(text):
    """argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number of seconds: %r" % text)
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError("must be more than 0 seconds: %r" % text)
    return value


def positive_int(text):
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a whole number: %r" % text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1: %d" % value)
    return value


def raise_open_file_limit():
    """Raise the soft descriptor limit toward the hard one (as Go and nginx do).

    Returns the soft limit in force, or None where there is none to read.
    """
    if resource is None:
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = MAX_OPEN_FILES_DEFAULT if hard == resource.RLIM_INFINITY \
            else min(hard, MAX_OPEN_FILES_DEFAULT)
        for limit in (want, 10240, 4096):      # macOS refuses more than OPEN_MAX (10240)
            if soft == resource.RLIM_INFINITY or soft >= limit:
                break
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
                soft = limit
                break
            except (ValueError, OSError):
                continue
        return MAX_OPEN_FILES_DEFAULT if soft == resource.RLIM_INFINITY else soft
    except (ValueError, OSError):
        return None


def default_max_connections(open_files):
    """Connections that fit in the descriptor limit with room for their files.

    Each connection may hold its socket, a file it sends and an upload
    temporary; 32 are kept for the listener, logs and the selector.
    """
    if open_files is None:
        return CONNECTIONS_WITHOUT_RLIMIT
    return max(8, (open_files - 32) // 2)


def describe_default_connections():
    """The default --max-connections as --help shows it."""
    if resource is None:
        return "%d here" % CONNECTIONS_WITHOUT_RLIMIT
    return "(limit - 32) / 2"


def default_ports():
    """The ports tried without -p: 8000, then 8080, then any free port.

    MINIHTTPD_DEFAULT_PORTS="P1,P2" replaces the first two; it exists for
    tests, which cannot rely on 8000 and 8080 being free.
    """
    text = os.environ.get("MINIHTTPD_DEFAULT_PORTS")
    if text:
        try:
            return [port_number(p.strip()) for p in text.split(",") if p.strip()] + [0]
        except argparse.ArgumentTypeError:
            pass
    return [DEFAULT_PORT, FALLBACK_PORT, 0]


def size_argument(text):
    """argparse type: a size like 500K or 2G."""
    try:
        return parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "not a size: %r (use bytes, or a K, M, G or T suffix)" % text)


def route_prefix(text):
    """argparse type: a route prefix like /files."""
    prefix = "/" + text.strip("/")
    if prefix == "/" or "//" in prefix or any(s in (".", "..") for s in prefix.split("/")):
        raise argparse.ArgumentTypeError("not a usable route prefix: %r" % text)
    return prefix


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a mistake is one line on stderr and exit 2."""

    def error(self, message):
        """Print "minihttpd: error: MESSAGE (see --help)" and exit 2."""
        self.exit(2, "%s: error: %s (see --help)\n" % (self.prog, message))


def build_arg_parser():
    """The command-line interface."""
    parser = ArgumentParser(
        prog="minihttpd",
        description="Serve a folder over HTTP/1.1: keep-alive, ranges, listings, "
                    "gzip and (with -u) uploads. One file, standard library only.",
        epilog="Made for trusted networks: anyone who can reach the port can read "
               "the folder (and write to it with -u).")
    parser.add_argument("-d", "--directory", default=".", metavar="DIR",
                        help="folder to serve (default: the current folder)")
    parser.add_argument("-p", "--port", type=port_number, default=None, metavar="PORT",
                        help="port to listen on (default %d, falling back to %d, then any "
                             "free port; 0 picks a free port)" % (DEFAULT_PORT, FALLBACK_PORT))
    parser.add_argument("-b", "--bind", default=None, metavar="ADDR",
                        help="address to listen on (default: all interfaces, IPv6 and IPv4)")
    parser.add_argument("--no-listing", action="store_true",
                        help="answer 403 for folders without index.html instead of listing them")
    parser.add_argument("--no-archive", action="store_true",
                        help="do not offer folders as zip or tar downloads")
    parser.add_argument("--hidden", action="store_true",
                        help="serve and list dotfiles (hidden by default: 404, unlisted)")
    parser.add_argument("--follow-symlinks", action="store_true",
                        help="serve symlinks that point outside the folder (404 by default)")
    parser.add_argument("-u", "--upload", action="store_true",
                        help="accept uploads: PUT/POST to a file URL, or a browser form "
                             "posted to a folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="let uploads replace existing files (atomically; 409 otherwise)")
    parser.add_argument("--max-upload", type=size_argument, default=None, metavar="SIZE",
                        help="largest upload accepted, in bytes or with K, M, G suffix "
                             "(binary: 2G = 2*2^30); larger ones get 413")
    parser.add_argument("--echo", action="store_true",
                        help="turn on the diagnostic endpoints GET /echo/TEXT, "
                             "/user-agent and /request")
    parser.add_argument("--route-prefix", type=route_prefix, default=None, metavar="/PREFIX",
                        help="serve the folder under /PREFIX/ instead of /")
    parser.add_argument("--no-gzip", action="store_true",
                        help="never compress responses")
    parser.add_argument("--precompressed", action="store_true",
                        help="serve NAME.gz for NAME to gzip clients even with -u (on by "
                             "default without -u; off with it, so an upload never changes "
                             "what another URL serves)")
    parser.add_argument("--timeout", type=positive_seconds, default=TIMEOUT_S,
                        metavar="SECONDS",
                        help="base of every deadline (default %g): a request head must "
                             "arrive within it, a body may pause for it; idle keep-alive "
                             "connections close after %g times it, a client that stops "
                             "reading a response is cut after %g times it"
                             % (TIMEOUT_S, IDLE_TIMEOUT_FACTOR, WRITE_TIMEOUT_FACTOR))
    parser.add_argument("--idle-timeout", type=positive_seconds, default=None,
                        metavar="SECONDS",
                        help="close keep-alive connections idle this long "
                             "(default: %g times --timeout)" % IDLE_TIMEOUT_FACTOR)
    parser.add_argument("--request-timeout", type=positive_seconds, default=None,
                        metavar="SECONDS",
                        help="408 when a request head takes longer from its first byte, "
                             "or an upload pauses longer (default: --timeout)")
    parser.add_argument("--max-connections", type=positive_int, default=None, metavar="N",
                        help="clients served at once; more wait until one leaves, and "
                             "idle keep-alive connections make room first (default: from "
                             "the open-file limit, %s)" % describe_default_connections())
    parser.add_argument("--auth", action="append", default=[], metavar="USER:PASS",
                        help="ask for this user name and password (HTTP Basic) on every "
                             "request; repeat for more users (also: MINIHTTPD_AUTH)")
    parser.add_argument("--auth-file", metavar="FILE",
                        help="users from a file: lines of user:password or "
                             "user:sha256:HEX; # starts a comment")
    parser.add_argument("--auth-writes", action="store_true",
                        help="ask for credentials only for writes (uploads); reading stays open")
    parser.add_argument("--tls-cert", metavar="FILE",
                        help="serve HTTPS with this PEM certificate (chain) ...")
    parser.add_argument("--tls-key", metavar="FILE",
                        help="... and this PEM private key")
    parser.add_argument("--cors", action="append", nargs="?", const="*", default=[],
                        metavar="ORIGIN",
                        help="let web pages of other sites use this server: alone, any site "
                             "may read; with ORIGIN (repeatable), that site may read and write")
    parser.add_argument("--host", action="append", default=[], metavar="NAME",
                        help="also answer to this name in Host (repeatable). Names other than "
                             "IP addresses, localhost and this machine's name get 421, which "
                             "stops DNS rebinding; '*' allows any")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no access log on stderr")
    parser.add_argument("--version", action="version", version="minihttpd " + __version__)
    return parser


def password_digest(password):
    """What is kept of a password: its SHA-256."""
    return hashlib.sha256(password.encode("utf-8", "surrogateescape")).digest()


def load_users(args, environ):
    """The {user: digest} table from --auth, MINIHTTPD_AUTH and --auth-file.

    Returns None when no source is given.  Raises ValueError with a
    one-line reason (naming the file and line) for a malformed source.
    """
    users = {}
    sources = [("--auth", value) for value in args.auth]
    if environ.get("MINIHTTPD_AUTH"):
        sources.append(("MINIHTTPD_AUTH", environ["MINIHTTPD_AUTH"]))
    for where, value in sources:
        user, sep, password = value.partition(":")
        if not sep or not user:
            raise ValueError("%s wants USER:PASSWORD" % where)
        users[user] = password_digest(password)
    if args.auth_file:
        try:
            with open(args.auth_file, "r", encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError("cannot read --auth-file %s: %s"
                             % (args.auth_file, getattr(exc, "strerror", None) or exc))
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, secret = line.partition(":")
            if not sep or not user:
                raise ValueError("%s:%d: expected user:password or user:sha256:HEX"
                                 % (args.auth_file, number))
            kind, sep, hexdigest = secret.partition(":")
            if kind == "sha256" and sep and re.match(r"\A[0-9a-fA-F]{64}\Z", hexdigest):
                users[user] = bytes.fromhex(hexdigest)
            else:
                users[user] = password_digest(secret)
        if not users:
            raise ValueError("--auth-file %s names no user" % args.auth_file)
    return users or None


def make_tls_context(cert, key):
    """An SSLContext for TLS 1.2 and up with this certificate and key.

    Raises ValueError with a one-line reason that names the file.
    """
    if ssl is None:
        raise ValueError("this Python has no ssl module, so it cannot serve HTTPS")
    for what, path in (("--tls-cert", cert), ("--tls-key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError("cannot read %s %s: %s" % (what, path, exc.strerror or exc))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if hasattr(context, "minimum_version"):
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    else:                                   # 3.6
        context.options |= ssl.OP_NO_TLSv1 | ssl.OP_NO_TLSv1_1
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        with open(cert, "rb") as f:
            cert_ok = b"-----BEGIN CERTIFICATE-----" in f.read()
        with open(key, "rb") as f:
            key_ok = b"PRIVATE KEY-----" in f.read()
        if not cert_ok:
            raise ValueError("--tls-cert %s holds no PEM certificate (%s)" % (cert, reason))
        if not key_ok:
            raise ValueError("--tls-key %s holds no PEM private key (%s)" % (key, reason))
        raise ValueError("--tls-key %s does not fit --tls-cert %s (%s)" % (key, cert, reason))
    return context


def tls_warnings(cert, key, root):
    """Warnings about where the key lies and who can read it; the private paths."""
    warnings = []
    private = set()
    try:
        if not IS_WINDOWS and os.stat(key).st_mode & 0o077:
            warnings.append("the key file %s is readable by other users (chmod 600 it)" % key)
    except OSError:
        pass
    for what, path in (("certificate", cert), ("key", key)):
        real = os.path.realpath(path)
        if is_inside(real, root):        # private: never served, listed or replaced
            warnings.append("the %s file %s is inside the served folder; it will not be "
                            "served or replaced" % (what, path))
            private.add(real)
    return warnings, frozenset(private)


def allowed_host_names(names):
    """The names Host may carry besides IP literals and localhost; None for any."""
    if "*" in names:
        return None
    hostname = socket.gethostname().lower().rstrip(".")
    allowed = set([hostname, hostname + ".local", hostname.split(".")[0] + ".local"])
    allowed.update(n.strip().lower().rstrip(".") for n in names if n.strip())
    return frozenset(allowed)


class PortInUse(Exception):
    """The port asked for is taken."""


def open_listener(bind, port):
    """Create, bind and listen; raises PortInUse or OSError."""
    if bind is None:
        candidates = []
        if socket.has_ipv6:
            candidates.append((socket.AF_INET6, ("::", port), True))
        candidates.append((socket.AF_INET, ("0.0.0.0", port), False))
    else:
        infos = socket.getaddrinfo(bind, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        candidates = [(family, addr, False) for family, _, _, _, addr in infos[:1]]
    last_error = None
    for family, addr, dual in candidates:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            last_error = exc
            continue
        try:
            if IS_WINDOWS:
                if hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and dual:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(addr)
            sock.listen(LISTEN_BACKLOG)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE or getattr(exc, "winerror", None) == 10048:
                raise PortInUse(port)
            last_error = exc
    raise last_error or OSError("no address to listen on")


def lan_addresses():
    """IPv4 addresses of this machine other than loopback, best effort, no traffic."""
    found = []
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        infos = []
    for info in infos:
        addr = info[4][0]
        if not addr.startswith("127.") and addr not in found:
            found.append(addr)
    return found


def url_host(host):
    """A host for a URL: IPv6 addresses in brackets."""
    return "[%s]" % host if ":" in host else host


def main(argv=None):
    """Parse arguments, open the listener, serve until stopped.  Returns the exit code."""
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    root = os.path.abspath(args.directory)
    if not os.path.exists(root):
        parser.error("directory not found: %s" % args.directory)
    if not os.path.isdir(root):
        parser.error("not a directory: %s" % args.directory)
    if args.overwrite and not args.upload:
        parser.error("--overwrite needs -u/--upload")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    try:
        users = load_users(args, os.environ)
        tls_context = make_tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    except ValueError as exc:
        parser.error(str(exc))
    if args.auth_writes and users is None:
        parser.error("--auth-writes needs --auth, --auth-file or MINIHTTPD_AUTH")
    warnings, private = [], frozenset()
    if tls_context is not None:
        warnings, private = tls_warnings(args.tls_cert, args.tls_key, os.path.realpath(root))
    elif users is not None:
        warnings.append("passwords cross the network in clear text without --tls-cert")
    for warning in warnings:
        sys.stderr.write("minihttpd: warning: %s\n" % warning)
    open_files = raise_open_file_limit()
    request_timeout = args.request_timeout or args.timeout
    config = Config(root=os.path.realpath(root), listing=not args.no_listing,
                    hidden=args.hidden, follow_symlinks=args.follow_symlinks,
                    quiet=args.quiet, upload=args.upload, overwrite=args.overwrite,
                    max_upload=args.max_upload, echo=args.echo, prefix=args.route_prefix or "",
                    gzip=not args.no_gzip,
                    precompressed=args.precompressed or not args.upload,
                    head_timeout=request_timeout, body_timeout=request_timeout,
                    idle_timeout=args.idle_timeout or args.timeout * IDLE_TIMEOUT_FACTOR,
                    write_timeout=args.timeout * WRITE_TIMEOUT_FACTOR,
                    max_connections=args.max_connections or default_max_connections(open_files),
                    users=users, auth_writes=args.auth_writes, cors=tuple(args.cors),
                    hosts=allowed_host_names(args.host), tls=tls_context is not None,
                    private_files=private, archive=not args.no_archive)

    ports = [args.port] if args.port is not None else default_ports()
    listener = None
    for i, port in enumerate(ports):
        try:
            listener = open_listener(args.bind, port)
            break
        except PortInUse:
            if args.port is not None:
                sys.stderr.write("minihttpd: port %d is already in use\n" % port)
                return 1
            sys.stderr.write("minihttpd: port %d is in use, trying %s\n"
                             % (port, ports[i + 1] or "any free port"))
        except (OSError, UnicodeError) as exc:
            sys.stderr.write("minihttpd: cannot listen on %s port %d: %s\n"
                             % (args.bind or "all interfaces", port,
                                getattr(exc, "strerror", None) or exc))
            return 1
    host, port = listener.getsockname()[:2]
    scheme = "https" if config.tls else "http"
    # The first line is a contract: scripts and tests read the port from it.
    sys.stdout.write("Serving %s on %s://%s:%d/\n" % (root, scheme, url_host(host), port))
    if config.prefix:
        sys.stdout.write("  the folder is under %s/\n" % config.prefix)
    if host in ("::", "0.0.0.0"):
        sys.stdout.write("  on this machine: %s://127.0.0.1:%d%s/\n"
                         % (scheme, port, config.prefix))
        for addr in lan_addresses():
            sys.stdout.write("  on the network:  %s://%s:%d%s/\n"
                             % (scheme, addr, port, config.prefix))
    sys.stdout.flush()

    server = Server(config, listener, tls_context=tls_context)
    stop = {"requested": 0}

    def on_signal(signum, frame):
        stop["requested"] += 1
        if stop["requested"] > 1 and signum == signal.SIGINT:
            os._exit(130)                   # a second Ctrl+C: leave now

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    install_wakeup(server)
    try:
        server.serve(lambda: stop["requested"] > 0)
    except KeyboardInterrupt:
        return 130
    return 0


def install_wakeup(server):
    """Wake the selector at once when a signal arrives (best effort)."""
    try:
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno())
    except (AttributeError, OSError, ValueError):
        return
    server.wakeup = (reader, writer)
    server.selector.register(reader, READ_EVENTS, None)


if __name__ == "__main__":
    sys.exit(main())
