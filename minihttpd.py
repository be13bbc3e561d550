#!/usr/bin/env python3
"""minihttpd: a one-file HTTP/1.1 file server, standard library only.

Share a folder on a trusted network, receive uploads, or test an HTTP
client:

    python3 minihttpd.py -d .            # serve the current folder on :8000
    python3 minihttpd.py -d www -p 0     # any free port
    python3 minihttpd.py -u -d inbox     # also accept uploads (PUT, POST, forms)

What it is: keep-alive, pipelining, ranges (resumable downloads, video
seeking), conditional requests, directory listings in HTML and JSON,
gzip, uploads that never leave a half-written file, folders downloaded
as zip or tar, WebDAV (mount the share as a network drive), the address
to type (or a QR code) printed at start-up, many clients on one thread.  What it deliberately is not: a CGI host, a reverse proxy, or a
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

__version__ = "1.3.1"

import argparse
import base64
import binascii
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
import mmap
import operator
import os
import re
import selectors
import signal
import socket
import stat
import struct
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
    import fcntl                        # POSIX only: interface addresses at start-up
except ImportError:
    fcntl = None
ssl = None                              # imported by make_tls_context, only for HTTPS:
                                        # it costs every start-up 1 MB and a few ms


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
LISTING_FIRST_STEP_ENTRIES = 1024      # a folder up to this is listed in one turn (~3 ms),
                                       # with a length and no large-listing slot: 16
                                       # people on one folder of 1,000 photos got 503s
LISTING_NAMES_KEPT = 8192              # names whose quoted form and sort key are kept
                                       # (about 2 MiB)
LISTING_PAGES_KEPT = 8                 # listing pages kept with what they were made from ...
LISTING_PAGE_ENTRIES = 2048            # ... for folders of at most this many (~1 MiB each)
MAX_FORM_PARTS = 1000                  # parts in one form post; more get 413
FORM_PARTS_PER_TURN = 4                # part starts and ends (each end an fsync) per turn
MAX_RENAME_TRIES = 1000                # --rename: "name (1).ext" up to "(999)", one lstat
                                       # each; a part start per turn is bounded, so is this
MAX_CHUNK_LINE_BYTES = 4096            # a chunk-size line with its extensions
MAX_TRAILER_BYTES = 16 * 1024
MAX_PART_HEADER_BYTES = 16 * 1024      # one multipart part's header block
MULTIPART_SEARCH_BYTES = 64 * 1024     # a form's body is searched for its boundary in
                                       # copies this large (in the CPU's cache), and the
                                       # bytes between parts are buffered this much a step
TIMEOUT_S = 10.0                       # --timeout: the base of every phase deadline
IDLE_TIMEOUT_FACTOR = 1.5              # keep-alive connection with nothing to say: 15 s
WRITE_TIMEOUT_FACTOR = 6.0             # a reader that takes nothing for 60 s is gone
                                       # (the head: T from its first byte; a body pause: T)
LINGER_S = 2.0                         # read and drop input after our FIN so the
                                       # client sees our answer, not a reset
SHUTDOWN_GRACE_S = 5.0                 # in-flight responses may finish on SIGINT or SIGTERM
LISTEN_BACKLOG = 1024                  # socketserver's 5 drops SYNs under load
RECV_BYTES = 256 * 1024                # at most this much is read per connection per turn,
BODY_RECV_BYTES = 1024 * 1024          # or this much of a request body: a read and its write
                                       # to disk cost under a millisecond, and uploads ran at
                                       # 0.85x a bare recv_into/os.write loop with 256 KiB
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
TAR_BLOCK_BYTES = 512                  # POSIX tar's unit: headers, and data padded to it
TAR_OCTAL_LIMIT = 8 ** 11              # ustar's 11 octal digits hold less (8 GiB); pax beyond
ZIP64_LIMIT = 0xFFFFFFFF               # a 32-bit zip field at or past this is kept in ZIP64
ZIP_COUNT_LIMIT = 0xFFFF               # members the classic end record can count; more: ZIP64
MAX_ARCHIVE_DEPTH = MAX_PATH_SEGMENTS  # folders an archive descends (one open each); deeper
                                       # ones could not be reached by a URL either
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
ANSWER_CACHE_ENTRIES = 256             # repeated request heads whose whole answer is kept,
ANSWER_HEAD_BYTES = 2048               # if the head is at most this long
CORS_MAX_AGE_S = 600                   # how long a browser may cache a preflight answer
TLS_SEND_BYTES = 64 * 1024             # one TLS write: a retry after WANT_WRITE must
                                       # offer at least what the last try did
TLS_HANDSHAKE_RECORD = b"\x16"         # the first byte of a TLS ClientHello
MAX_XML_BODY_BYTES = 1024 * 1024       # a PROPFIND, PROPPATCH or LOCK body; more: 413
MAX_LOCK_TIMEOUT_S = 3600              # a lock lasts at most an hour unless refreshed
MAX_LOCKS = 1000                       # locks held at once; more: 503
MAX_LOCK_OWNER_BYTES = 4096            # the owner a client stores with a lock
MAX_DEAD_PROPERTIES_PER_RESOURCE = 100 # PROPPATCH past either: 507 (they live in memory)
MAX_DEAD_PROPERTY_BYTES = 16 * 1024 * 1024
COPY_STEP_BYTES = 1024 * 1024          # bytes a COPY moves per turn
MAX_PROPFIND_PROPERTIES = 256          # named in one PROPFIND: 1 MiB could name 40,000,
                                       # each answered for every member of a folder
PROPFIND_STEP_PROPERTIES = 4096        # properties answered per step of a Depth 1 PROPFIND
SIOCGIFFLAGS = 0x8913                  # Linux ioctls: an interface's flags ...
SIOCGIFADDR = 0x8915                   # ... and its IPv4 address (<linux/sockios.h>)
IFREQ_BYTES = 40                       # sizeof(struct ifreq) on 64-bit Linux (32 on 32-bit)
IFF_UP_RUNNING = 0x1 | 0x40            # up, and with a carrier: an unplugged or empty
                                       # bridge (docker0) has no one to reach us through
IFA_F_UNUSABLE = 0x08 | 0x40           # IPv6 duplicate address detection failed or pending
IFA_F_TRANSIENT = 0x01 | 0x20          # privacy (temporary) and deprecated IPv6: listed last
ROUTE_PROBES = (("192.0.2.1", 9), ("2001:db8::1", 9))   # RFC 5737 and 3849 documentation
                                       # addresses: connect() on UDP picks the source
                                       # address of the route there and sends nothing
QR_QUIET_MODULES = 4                   # ISO/IEC 18004 §6.3.8: 4 light modules around a symbol
QR_SVG_PX = 232                        # the listing's QR, in CSS px: 6 a module up to 42
                                       # bytes of URL, 3.5 at 213 (version 10)
QR_CACHE_ENTRIES = 64                  # listing URLs whose QR block is kept (encoding one
                                       # costs 2-15 ms; a page reloaded costs nothing)

# Methods that change the share: behind --auth-writes, refused cross-site.
WRITE_METHODS = frozenset(["PUT", "POST", "DELETE", "PATCH", "MKCOL", "COPY", "MOVE",
                           "PROPPATCH", "LOCK", "UNLOCK"])

CLOSING_STATUSES = frozenset([400, 408, 413, 414, 431, 501, 505])  # framing can't be trusted
READ_EVENTS = selectors.EVENT_READ
WRITE_EVENTS = selectors.EVENT_WRITE

# Methods this server knows; those not allowed for a resource get 405, others 501.
KNOWN_METHODS = frozenset(["GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE",
                           "PATCH", "TRACE", "CONNECT", "PROPFIND", "PROPPATCH", "MKCOL",
                           "COPY", "MOVE", "LOCK", "UNLOCK"])

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
    """A parsed request head.  `client` and `local` are filled in by the connection."""

    __slots__ = ("method", "target", "version", "headers", "client", "route", "user",
                 "_index", "local")

    def __init__(self, method, target, version, headers):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.client = None
        self.local = None             # host:port the client reached, as format_client shows it
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
    import calendar                     # here, not at the top: only conditional requests
    import email.utils                  # need them, and every start-up would pay
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
        """Consume data (bytes or a memoryview); return the payload in it, a
        slice of data (so a memoryview is not copied)."""
        if self.done:
            self.unused += bytes(data)
            return b""
        take = min(self.left, len(data))
        payload = data[:take]
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
    header names, ("data", bytes or memoryview) for part content, ("end", None) when a
    part ends.  .done turns true at the closing delimiter.  With max_parts,
    it stops after that many "part" and "end" events and sets .pending: the
    caller feeds b"" later to go on (a bound on per-turn work when a body
    packs thousands of tiny parts).  Beyond that, only a delimiter's length
    of bytes is ever held back, so memory stays flat for any upload size.

    A part's content is not copied: its "data" events are slices of the
    data fed (the server's read buffer), valid until the caller reads into
    it again.  Only what lies between parts (delimiter lines, part headers)
    goes through a buffer, MULTIPART_SEARCH_BYTES at a time.
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
        """Consume data (bytes or a memoryview); return a list of events.
        Raises HTTPError(400)."""
        events = []
        budget = max_parts
        self.pending = False
        while True:
            if budget is not None and self._state in ("headers", "body") and budget <= 0:
                self._buf += data
                self.pending = bool(self._buf)
                return events
            if self._state == "body":
                data = self._body(data, events)
                if data is None:              # the part goes on in the next data
                    return events
                events.append(("end", None))
                if budget is not None:
                    budget -= 1
                self._state = "after_delim"
            elif self._state == "epilogue":   # ignored
                del self._buf[:]
                return events
            else:
                if self._between_parts(events):
                    if self._state == "body" and budget is not None:
                        budget -= 1
                elif data:                    # it needs more bytes: a piece more
                    self._buf += data[:MULTIPART_SEARCH_BYTES]
                    data = data[MULTIPART_SEARCH_BYTES:]
                else:
                    return events

    def _between_parts(self, events):
        """One step of the framing between parts, in the buffer: through the
        preamble, a delimiter line, or a part's headers (then a "part" event
        and the state is "body").  Returns whether it went on; False when it
        needs more bytes."""
        buf = self._buf
        delim = self._delim
        if self._state == "preamble":
            pos = buf.find(delim)
            if pos < 0:
                keep = len(delim) - 1
                if len(buf) > keep:
                    del buf[:len(buf) - keep]
                return False
            del buf[:pos + len(delim)]
            self._state = "after_delim"
        elif self._state == "after_delim":
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self.done = True
                self._state = "epilogue"
                return True
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > 256:
                    raise HTTPError(400, "Malformed multipart delimiter.")
                return False
            if bytes(buf[:nl]).strip(b" \t\r"):
                raise HTTPError(400, "Malformed multipart delimiter.")
            del buf[:nl + 1]
            self._state = "headers"
        else:  # headers
            end, blank = _find_head_end(buf, 0)
            if buf[:2] == b"\r\n":
                headers_block = b""
                del buf[:2]
            elif buf[:1] == b"\n":
                headers_block = b""
                del buf[:1]
            elif end < 0:
                if len(buf) > MAX_PART_HEADER_BYTES:
                    raise HTTPError(400, "Multipart part headers too large.")
                return False
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
            self._state = "body"
        return True

    def _body(self, data, events):
        """Inside a part: emit its content in the buffer (what was held back)
        and data, up to the delimiter that ends the part.  Returns what
        follows the delimiter, a slice of data, or None when data ended
        inside the part: then a tail that could begin a delimiter is held
        back in the buffer."""
        delim = self._delim
        keep = len(delim) - 1
        held = self._buf
        pos = self._find_delimiter(data)    # in held + data
        if pos < 0:
            if len(data) >= keep:
                if held:
                    events.append(("data", bytes(held)))
                if len(data) > keep:
                    events.append(("data", data[:len(data) - keep]))
                self._buf = bytearray(data[len(data) - keep:])
            else:
                held += data
                if len(held) > keep:
                    events.append(("data", bytes(held[:len(held) - keep])))
                    del held[:len(held) - keep]
            return None
        if pos <= len(held):
            if pos:
                events.append(("data", bytes(held[:pos])))
        else:
            if held:
                events.append(("data", bytes(held)))
            events.append(("data", data[:pos - len(held)]))
        after = pos + len(delim)
        if after <= len(held):              # all in the buffer (fed after a pause)
            del held[:after]
            return data
        self._buf = bytearray()
        return data[after - len(held):]

    def _find_delimiter(self, data):
        """Where the first delimiter begins in the buffer followed by data, or -1.

        bytes.find needs bytes, so data is searched through copies of
        MULTIPART_SEARCH_BYTES (overlapping by a delimiter's length less one)
        that stay in the CPU's cache.  One copy of a whole 1 MiB read made a
        form's server 2 MiB larger; memoryview has no find, mmap's is bytewise
        before Python 3.11, and re over a view is 5x slower.
        """
        delim = self._delim
        keep = len(delim) - 1
        held = len(self._buf)
        pos = b"".join((self._buf, data[:keep])).find(delim)
        if pos >= 0:
            return pos
        for start in range(0, len(data), MULTIPART_SEARCH_BYTES):
            pos = bytes(data[start:start + MULTIPART_SEARCH_BYTES + keep]).find(delim)
            if pos >= 0:
                return held + start + pos
        return -1


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


def is_shown(entry, config):
    """Whether a folder's entry (from os.scandir) may be listed and served: the rule
    listings, archives, PROPFIND and COPY share.  Its name is visible, it is not a
    symlink that leads outside the root (unless follow_symlinks), nor a private file.

    Raises OSError when the entry cannot be looked at (a broken link, raced away).
    """
    if not is_visible(entry.name, config.hidden):
        return False
    if entry.is_symlink() and not is_confined(entry.path, config.root, config.follow_symlinks):
        return False
    return not is_private(entry.path, config)


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


@functools.lru_cache(maxsize=LISTING_NAMES_KEPT)
def entry_labels(name):
    """What a listing shows of a name: (its text, its href, its sort key).

    A pure function of the name, kept for the names seen last: quoting
    and the sort key were half the cost of reading a folder of 1,000.
    """
    shown = display_text(name)
    return shown, url_quote(name), natural_key(shown)


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
        try:
            if not is_shown(entry, config):
                continue
            st = entry.stat()
        except OSError:
            continue                   # broken link or raced away
        shown, href, key = entry_labels(name)
        if stat.S_ISDIR(st.st_mode):
            entries.append(Entry(shown, href + "/", "dir", 0, int(st.st_mtime), key))
        else:
            entries.append(Entry(shown, href, "file", st.st_size, int(st.st_mtime), key))
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

    __slots__ = ("status", "headers", "body", "files", "close", "log_extra", "source")

    def __init__(self, status, headers=None, body=b"", files=None):
        self.status = status
        self.headers = list(headers or [])
        self.body = [body] if isinstance(body, (bytes, FileRegion)) else list(body)
        self.files = list(files or [])
        self.close = False
        self.log_extra = ""
        # Set by handle_file for a small file's plain 200, whose answer may be
        # kept whole (see Answer): (fs_path, signature, whether a .gz sibling
        # was looked for).  None for every other answer.
        self.source = None

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

# QR codes (ISO/IEC 18004), only what sharing a URL needs: byte mode, error
# correction level M (15% of the symbol may be lost), versions 1 to 10.

# Table 9 at level M: (EC codewords per block, blocks in group 1, data
# codewords in each, blocks in group 2, data codewords in each), by version.
QR_BLOCKS_M = (None,
               (10, 1, 16, 0, 0), (16, 1, 28, 0, 0), (26, 1, 44, 0, 0), (18, 2, 32, 0, 0),
               (24, 2, 43, 0, 0), (16, 4, 27, 0, 0), (18, 4, 31, 0, 0), (22, 2, 38, 2, 39),
               (22, 3, 36, 2, 37), (26, 4, 43, 1, 44))
# Annex E: the rows and columns where alignment patterns are centred.
QR_ALIGNMENT = (None, (), (6, 18), (6, 22), (6, 26), (6, 30), (6, 34),
                (6, 22, 38), (6, 24, 42), (6, 26, 46), (6, 28, 50))
QR_MAX_VERSION = len(QR_BLOCKS_M) - 1
# §7.8.2: the data mask patterns, by row i and column j; True flips a module.
QR_MASKS = (
    lambda i, j: (i + j) % 2 == 0,
    lambda i, j: i % 2 == 0,
    lambda i, j: j % 3 == 0,
    lambda i, j: (i + j) % 3 == 0,
    lambda i, j: (i // 2 + j // 3) % 2 == 0,
    lambda i, j: (i * j) % 2 + (i * j) % 3 == 0,
    lambda i, j: ((i * j) % 2 + (i * j) % 3) % 2 == 0,
    lambda i, j: ((i + j) % 2 + (i * j) % 3) % 2 == 0,
)
QR_RUN_RE = re.compile(r"0{5,}|1{5,}")                     # penalty rule 1
# Penalty rule 3: dark-light-dark x3-light-dark with 4 light modules on either side
# (or both: counted once); the quiet zone is light.
QR_FINDER_LIKE_RE = re.compile(r"(?=(?<=0000)1011101|1011101(?=0000))")


def qr_gf_tables():
    """Powers and logarithms of GF(256) modulo x^8 + x^4 + x^3 + x^2 + 1 (§7.5.2)."""
    exp = [0] * 510
    log = [0] * 256
    value = 1
    for power in range(255):
        exp[power] = exp[power + 255] = value
        log[value] = power
        value <<= 1
        if value & 0x100:
            value ^= 0x11D
    return tuple(exp), tuple(log)


QR_GF_EXP, QR_GF_LOG = qr_gf_tables()


def qr_error_correction(data, degree):
    """The Reed-Solomon error correction codewords of one block (§7.5.2)."""
    exp, log = QR_GF_EXP, QR_GF_LOG
    generator = [1]                     # the product of (x - a^i) for i < degree
    for i in range(degree):
        product = generator + [0]
        for j, coefficient in enumerate(generator):
            if coefficient:
                product[j + 1] ^= exp[log[coefficient] + i]
        generator = product
    remainder = [0] * degree            # data * x^degree modulo the generator
    for byte in data:
        factor = byte ^ remainder[0]
        remainder = remainder[1:] + [0]
        if factor:
            for j in range(degree):
                if generator[j + 1]:
                    remainder[j] ^= exp[log[factor] + log[generator[j + 1]]]
    return remainder


def qr_fits(length, version):
    """Whether length bytes fit a symbol of this version at level M."""
    _, n1, k1, n2, k2 = QR_BLOCKS_M[version]
    count_bits = 8 if version < 10 else 16
    return 4 + count_bits + 8 * length <= 8 * (n1 * k1 + n2 * k2)


def qr_codewords(data, version):
    """Data and error correction codewords of bytes data, interleaved (§7.4, §7.6)."""
    ec, n1, k1, n2, k2 = QR_BLOCKS_M[version]
    capacity = n1 * k1 + n2 * k2
    bits = "0100" + format(len(data), "08b" if version < 10 else "016b")   # byte mode
    bits += "".join(format(byte, "08b") for byte in bytearray(data))
    bits += "0" * min(4, 8 * capacity - len(bits))                          # terminator
    bits += "0" * (-len(bits) % 8)
    codewords = [int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)]
    codewords += [0xEC, 0x11] * ((capacity - len(codewords)) // 2 + 1)
    codewords = codewords[:capacity]
    blocks = []
    start = 0
    for length in [k1] * n1 + [k2] * n2:
        blocks.append(codewords[start:start + length])
        start += length
    result = [block[i] for i in range(k2 or k1) for block in blocks if i < len(block)]
    ec_blocks = [qr_error_correction(block, ec) for block in blocks]
    result += [block[i] for i in range(ec) for block in ec_blocks]
    return result


def qr_format_bits(mask):
    """The 15 format bits for level M and a mask, BCH-protected and masked (§7.9)."""
    data = mask                          # level M is 00
    remainder = data
    for _ in range(10):
        remainder = (remainder << 1) ^ ((remainder >> 9) * 0x537)
    return ((data << 10) | remainder) ^ 0x5412


def qr_version_bits(version):
    """The 18 version information bits of versions 7 and up (§7.10)."""
    remainder = version
    for _ in range(12):
        remainder = (remainder << 1) ^ ((remainder >> 11) * 0x1F25)
    return (version << 12) | remainder


def qr_function_patterns(version):
    """(modules, reserved): the symbol's fixed patterns, and which modules hold no data."""
    size = 17 + 4 * version
    modules = [[False] * size for _ in range(size)]
    reserved = [[False] * size for _ in range(size)]

    def put(row, col, dark):
        modules[row][col] = dark
        reserved[row][col] = True

    for top, left in ((0, 0), (0, size - 7), (size - 7, 0)):   # finders and separators
        for r in range(-1, 8):
            for c in range(-1, 8):
                if 0 <= top + r < size and 0 <= left + c < size:
                    ring = max(abs(r - 3), abs(c - 3))
                    put(top + r, left + c, ring != 2 and ring != 4)
    centres = QR_ALIGNMENT[version]
    for row in centres:                 # before the timing patterns, which agree with them
        for col in centres:
            if reserved[row][col]:                               # under a finder
                continue
            for r in range(-2, 3):
                for c in range(-2, 3):
                    put(row + r, col + c, max(abs(r), abs(c)) != 1)
    for i in range(8, size - 8):                                 # timing patterns
        put(6, i, i % 2 == 0)
        put(i, 6, i % 2 == 0)
    for i in range(9):                                           # format areas
        reserved[8][i] = reserved[i][8] = True
    for i in range(8):
        reserved[8][size - 1 - i] = reserved[size - 1 - i][8] = True
    put(size - 8, 8, True)                                       # the dark module
    if version >= 7:
        bits = qr_version_bits(version)
        for i in range(18):
            dark = bool(bits >> i & 1)
            put(i // 3, size - 11 + i % 3, dark)
            put(size - 11 + i % 3, i // 3, dark)
    return modules, reserved


def qr_place_format(modules, mask):
    """Draw the format information of level M and this mask, both copies (§7.9.1)."""
    size = len(modules)
    bits = qr_format_bits(mask)
    for i in range(15):
        dark = bool(bits >> i & 1)
        if i < 6:
            modules[i][8] = dark
        elif i < 8:
            modules[i + 1][8] = dark
        elif i == 8:
            modules[8][7] = dark
        else:
            modules[8][14 - i] = dark
        if i < 8:
            modules[8][size - 1 - i] = dark
        else:
            modules[size - 15 + i][8] = dark


def qr_penalty(modules):
    """The mask evaluation score of a finished symbol (§7.8.3): lower is better."""
    size = len(modules)
    rows = ["".join("1" if m else "0" for m in row) for row in modules]
    score = 0
    for line in rows + ["".join(col) for col in zip(*rows)]:
        for run in QR_RUN_RE.finditer(line):
            score += len(run.group()) - 2                  # N1 = 3, plus 1 a module past 5
        score += 40 * len(QR_FINDER_LIKE_RE.findall("0000" + line + "0000"))
    full = (1 << size) - 1
    values = [int(line, 2) for line in rows]
    for upper, lower in zip(values, values[1:]):           # 2x2 blocks of one colour
        dark = upper & lower
        light = ~(upper | lower) & full
        score += 3 * (bin(dark & dark >> 1).count("1") + bin(light & light >> 1).count("1"))
    dark = sum(line.count("1") for line in rows)
    total = size * size
    score += 10 * (abs(20 * dark - 10 * total) // total)   # each 5% away from half dark
    return score


def qr_matrix(data, version=None, mask=None):
    """The QR code of bytes data as rows of booleans (True: dark), quiet zone not included.

    Byte mode, level M.  The smallest version that fits is used unless one
    is given, and the mask with the lowest penalty unless one is given.
    Raises ValueError when data does not fit version 10 (213 bytes) or
    the version given, or for a mask other than 0 to 7.
    """
    if mask is not None and mask not in range(8):
        raise ValueError("no QR mask %r" % (mask,))
    if version is None:
        version = next((v for v in range(1, QR_MAX_VERSION + 1) if qr_fits(len(data), v)),
                       None)
        if version is None:
            raise ValueError("%d bytes do not fit a QR code of version %d"
                             % (len(data), QR_MAX_VERSION))
    elif not 1 <= version <= QR_MAX_VERSION or not qr_fits(len(data), version):
        raise ValueError("%d bytes do not fit a QR code of version %r" % (len(data), version))
    modules, reserved = qr_function_patterns(version)
    size = len(modules)
    cells = []                          # data modules in placement order (§7.7.3)
    col = size - 1
    upward = True
    while col > 0:
        if col == 6:                    # the vertical timing pattern is skipped
            col = 5
        for row in (range(size - 1, -1, -1) if upward else range(size)):
            for c in (col, col - 1):
                if not reserved[row][c]:
                    cells.append((row, c))
        upward = not upward
        col -= 2
    bits = "".join(format(word, "08b") for word in qr_codewords(data, version))
    for (row, c), bit in zip(cells, bits):     # remainder bits stay light
        modules[row][c] = bit == "1"
    best = None
    for candidate in (range(8) if mask is None else [mask]):
        masked = [row[:] for row in modules]
        flip = QR_MASKS[candidate]
        for row, c in cells:
            if flip(row, c):
                masked[row][c] = not masked[row][c]
        qr_place_format(masked, candidate)
        if mask is not None:
            return masked
        score = qr_penalty(masked)
        if best is None or score < best[0]:
            best = (score, masked)
    return best[1]


def qr_terminal(matrix):
    """The symbol as text: two modules a character (half blocks), black on white.

    Every line sets its own colours (256-colour black on white, which
    themes rarely remap) and resets them at its end, so the code reads
    the same on a dark terminal.
    """
    quiet = QR_QUIET_MODULES
    width = len(matrix) + 2 * quiet
    blank = [False] * width
    rows = [blank] * quiet + [[False] * quiet + list(row) + [False] * quiet
                              for row in matrix] + [blank] * quiet
    if len(rows) % 2:
        rows.append(blank)
    chars = {(False, False): " ", (True, False): "\u2580", (False, True): "\u2584",
             (True, True): "\u2588"}
    return "".join("\x1b[38;5;16;48;5;231m%s\x1b[0m\n"
                   % "".join(chars[pair] for pair in zip(top, bottom))
                   for top, bottom in zip(rows[0::2], rows[1::2]))


def qr_svg(matrix, size_px=QR_SVG_PX):
    """The symbol as an inline <svg>: a white square and one path of the dark modules."""
    quiet = QR_QUIET_MODULES
    width = len(matrix) + 2 * quiet
    runs = []
    for y, row in enumerate(matrix):
        x = 0
        while x < len(row):
            if not row[x]:
                x += 1
                continue
            start = x
            while x < len(row) and row[x]:
                x += 1
            runs.append("M%d %dh%dv1h-%dz" % (start + quiet, y + quiet, x - start, x - start))
    return ('<svg viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="QR code" '
            'shape-rendering="crispEdges"><rect width="%d" height="%d" fill="#fff"/>'
            '<path d="%s" fill="#000"/></svg>'
            % (width, width, size_px, size_px, width, width, "".join(runs)))
# -- folder archives: zip and tar made as the tree is walked --------------

ArchiveMember = collections.namedtuple("ArchiveMember", [
    "name",       # relative to the folder, "/"-separated; a folder's ends in "/"
    "size",       # bytes (0 for a folder), fixed when its header is written
    "mtime_ns",   # modification time, Unix nanoseconds
    "mode",       # permission bits (no setuid, setgid or sticky bit)
])


def encode_member_name(name):
    """A member name's bytes, and whether they are UTF-8.

    A name the OS gave as bytes that are not UTF-8 holds surrogates; it
    keeps its exact bytes, and the archive does not call it UTF-8.
    """
    try:
        return name.encode("utf-8"), True
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape"), False


def format_dos_time(mtime_ns):
    """The (time, date) fields of a zip header for a Unix time, in local time.

    DOS dates run from 1980 to 2107 and count seconds in twos; times
    outside are clamped to those ends.
    """
    try:
        t = time.localtime(mtime_ns // 10 ** 9)
    except (OverflowError, OSError, ValueError):
        t = None
    if t is None or t.tm_year < 1980:
        return 0, (1 << 5) | 1                              # 1980-01-01 00:00:00
    if t.tm_year > 2107:
        return (23 << 11) | (59 << 5) | 29, (127 << 9) | (12 << 5) | 31
    return ((t.tm_hour << 11) | (t.tm_min << 5) | min(t.tm_sec, 59) // 2,
            ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday)


ZIP_MADE_BY = (3 << 8) | 63            # Unix attributes, APPNOTE 6.3 (UTF-8 names)
ZIP_FLAG_DESCRIPTOR = 0x0008           # bit 3: CRC and sizes follow the data
ZIP_FLAG_UTF8 = 0x0800                 # bit 11: the name is UTF-8


class ZipWriter(object):
    """Zip framing for a stream of members: stored, never compressed.

    A file's CRC-32 is known only once its bytes have gone by, so each
    file has a data descriptor (bit 3) after its data.  ZIP64 fields are
    used for a member of 4 GiB or more, for members that start past 4 GiB
    and for the end records of such an archive.  The central directory,
    which zip puts at the end, is the one thing kept: about 50 bytes and
    the name for each member.  The caller sends exactly member.size bytes
    between begin() and end(), passing them to update().
    """

    content_type = "application/zip"

    def __init__(self):
        self.offset = 0                 # bytes of the archive so far
        self.count = 0
        self.central = bytearray()
        self.crc = 0
        self.current = None             # what begin() worked out for end()

    def begin(self, member):
        """The local header of a member."""
        name, utf8 = encode_member_name(member.name)
        is_dir = member.name.endswith("/")
        zip64 = member.size >= ZIP64_LIMIT
        flags = (ZIP_FLAG_UTF8 if utf8 else 0) | (0 if is_dir else ZIP_FLAG_DESCRIPTOR)
        dos_time, dos_date = format_dos_time(member.mtime_ns)
        # A zip64 extra field in the local header says the descriptor's sizes are
        # 8 bytes (APPNOTE 4.3.9.2); with bit 3 its values, like the CRC, are 0.
        extra = struct.pack("<HHQQ", 1, 16, 0, 0) if zip64 else b""
        head = struct.pack("<IHHHHHIIIHH", 0x04034b50, 45 if zip64 else 20, flags, 0,
                           dos_time, dos_date, 0, 0, 0, len(name), len(extra)) + name + extra
        self.current = (name, flags, dos_time, dos_date, self.offset)
        self.crc = 0
        self.offset += len(head)
        return head

    def update(self, data):
        """Note bytes of the member's data as they go by."""
        self.crc = zlib.crc32(data, self.crc)

    def end(self, member):
        """The data descriptor after a file's data; its central record is kept."""
        name, flags, dos_time, dos_date, header_offset = self.current
        size = member.size
        descriptor = b""
        if flags & ZIP_FLAG_DESCRIPTOR:
            descriptor = struct.pack("<IIQQ" if size >= ZIP64_LIMIT else "<IIII",
                                     0x08074b50, self.crc, size, size)
        fields = [size, size] if size >= ZIP64_LIMIT else []
        if header_offset >= ZIP64_LIMIT:
            fields.append(header_offset)
        extra = struct.pack("<HH%dQ" % len(fields), 1, 8 * len(fields), *fields) \
            if fields else b""
        if member.name.endswith("/"):
            attributes = ((stat.S_IFDIR | member.mode) << 16) | 0x10   # 0x10: MS-DOS folder
        else:
            attributes = (stat.S_IFREG | member.mode) << 16
        self.central += struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014b50, ZIP_MADE_BY, 45 if fields else 20, flags, 0,
            dos_time, dos_date, self.crc, min(size, ZIP64_LIMIT), min(size, ZIP64_LIMIT),
            len(name), len(extra), 0, 0, 0, attributes, min(header_offset, ZIP64_LIMIT))
        self.central += name + extra
        self.count += 1
        self.offset += size + len(descriptor)
        self.current = None
        return descriptor

    def finish(self):
        """The rest of the archive: the central directory, then the end records."""
        cd_offset, cd_size, count = self.offset, len(self.central), self.count
        tail = b""
        if count >= ZIP_COUNT_LIMIT or cd_offset >= ZIP64_LIMIT or cd_size >= ZIP64_LIMIT:
            tail = struct.pack("<IQHHIIQQQQ", 0x06064b50, 44, ZIP_MADE_BY, 45, 0, 0, count,
                               count, cd_size, cd_offset)
            tail += struct.pack("<IIQI", 0x07064b50, 0, cd_offset + cd_size, 1)
        tail += struct.pack("<IHHHHIIH", 0x06054b50, 0, 0, min(count, ZIP_COUNT_LIMIT),
                            min(count, ZIP_COUNT_LIMIT), min(cd_size, ZIP64_LIMIT),
                            min(cd_offset, ZIP64_LIMIT), 0)
        return [self.central, tail]


def format_pax_record(key, value):
    """One pax extended header record, b"LEN key=value\\n" (LEN counts itself)."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(b"%d" % length) + len(body) != length:
        length = len(b"%d" % length) + len(body)
    return b"%d" % length + body


def format_ustar_block(name, mode, size, mtime, typeflag):
    """One 512-byte ustar header block (uid, gid and owner names left empty)."""
    block = (name.ljust(100, b"\0") + b"%07o\0" % mode + b"%07o\0" % 0 + b"%07o\0" % 0
             + b"%011o\0" % size + b"%011o\0" % mtime + b" " * 8 + typeflag
             + b"\0" * 100 + b"ustar\x0000" + b"\0" * 64 + b"%07o\0" % 0 + b"%07o\0" % 0)
    block = block.ljust(TAR_BLOCK_BYTES, b"\0")
    return block[:148] + b"%06o\0 " % sum(block) + block[156:]


def format_tar_header(member):
    """The header of one tar member (POSIX pax): a pax extended header first
    when ustar cannot hold the name (long, not ASCII), the size (8 GiB or
    more) or the mtime (fractions of a second, before 1970) exactly."""
    name, utf8 = encode_member_name(member.name)
    records = [] if utf8 else [format_pax_record(b"hdrcharset", b"BINARY")]
    if len(name) > 100 or max(name or b"\0") >= 0x80:
        records.append(format_pax_record(b"path", name))
        name = bytes(c if 0x20 <= c < 0x7f else 0x5f for c in name[:100])   # for old readers
    size = member.size
    if size >= TAR_OCTAL_LIMIT:
        records.append(format_pax_record(b"size", b"%d" % size))
        size = 0
    seconds, fraction = divmod(member.mtime_ns, 10 ** 9)
    if fraction or not 0 <= seconds < TAR_OCTAL_LIMIT:
        whole, nanos = divmod(abs(member.mtime_ns), 10 ** 9)
        text = (b"-" if member.mtime_ns < 0 else b"") + (b"%d.%09d" % (whole, nanos))
        records.append(format_pax_record(b"mtime", text.rstrip(b"0").rstrip(b".")))
        seconds = min(max(seconds, 0), TAR_OCTAL_LIMIT - 1)
    head = format_ustar_block(name, member.mode, size, seconds,
                              b"5" if member.name.endswith("/") else b"0")
    if not records:
        return head
    data = b"".join(records)
    return (format_ustar_block(b"././@PaxHeader", 0o644, len(data), 0, b"x") + data
            + b"\0" * (-len(data) % TAR_BLOCK_BYTES) + head)


class TarWriter(object):
    """POSIX pax (tar) framing for a stream of members; the same protocol
    as ZipWriter: begin, exactly member.size bytes to update, end, finish."""

    content_type = "application/x-tar"

    def begin(self, member):
        """The header blocks of a member."""
        return format_tar_header(member)

    def update(self, data):
        """Tar needs nothing from the data."""

    def end(self, member):
        """Zeros that pad the data to a whole block."""
        return b"\0" * (-member.size % TAR_BLOCK_BYTES)

    def finish(self):
        """Two zero blocks end a tar archive."""
        return [b"\0" * (2 * TAR_BLOCK_BYTES)]


ARCHIVE_WRITERS = {"zip": ZipWriter, "tar": TarWriter}


def format_attachment(filename):
    """A Content-Disposition for a download (RFC 6266): an ASCII filename=
    for old clients, and the exact name in filename*= (RFC 8187)."""
    shown = display_text(filename)
    fallback = "".join(c if " " <= c < "\x7f" and c not in '"\\%' else "_" for c in shown)
    return "attachment; filename=\"%s\"; filename*=UTF-8''%s" % (
        fallback, urllib.parse.quote(shown, safe="!#$&+^`|~"))


def quote_for_log(name):
    """A name for a log line: quoted, with line breaks and other controls escaped."""
    return json.dumps(display_text(name), ensure_ascii=False)


# Errors that say nothing about one file but that the server is short of
# something: an archive that went on without the file would look complete.
ARCHIVE_FATAL_ERRNOS = frozenset([errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EIO])


class FolderArchive(object):
    """A folder's tree as a zip or tar body, made in pieces as it is sent.

    The tree is walked depth first with an explicit stack of os.scandir
    iterators (one open folder per level, at most MAX_ARCHIVE_DEPTH) and
    one open file, so memory stays flat.  Each piece reads at most
    FILE_CHUNK_BYTES and looks at most at LISTING_STEP_ENTRIES entries.

    Members follow the listing's rules: visible names only (is_visible),
    no symlink leading out of the root unless follow_symlinks, no private
    file, and only regular files and folders.  A folder already open
    above (a symlink loop) is left out.  A file or folder that cannot be
    read is left out with a line to log; running out of descriptors or
    memory, or a read error, ends the transfer (an archive without them
    would look complete).

    A file's size is fixed when its header goes out: one that grows is
    cut there, one that shrinks is padded with zeros, each with one line
    to log, so the archive stays valid.  log(line) is how a generator,
    running long after its handler returned, reports; label names the
    archive in those lines.  close() releases every descriptor; closing
    the generator from pieces() runs it too.
    """

    def __init__(self, fs_dir, st, scandir_iter, config, writer, log, label):
        self.config = config
        self.writer = writer
        self.log = log
        self.label = label
        self.stack = [(scandir_iter, "", (st.st_dev, st.st_ino))]
        self.file = None                # the file being copied, its member and
        self.member = None              # the bytes of it still to send
        self.left = 0
        self.shrank = False
        self.tail = None                # the writer's last buffers, once the walk ends
        self.done = False

    def pieces(self):
        """Yield the archive piece by piece (a piece may be b"")."""
        try:
            while True:
                piece = self.next_piece()
                if piece is None:
                    return
                yield piece
        finally:
            self.close()

    def next_piece(self):
        """The next bounded piece of the archive, or None after its end."""
        if self.done:
            return None
        out = []
        read_budget = FILE_CHUNK_BYTES
        scan_budget = LISTING_STEP_ENTRIES
        while read_budget > 0 and scan_budget > 0:
            if self.file is not None:
                read_budget -= self.copy_file(out, read_budget)
            elif self.stack:
                scan_budget -= 1
                self.scan_entry(out)
            elif self.tail is None:
                self.tail = collections.deque(memoryview(b) for b in self.writer.finish())
            elif self.tail:
                part = self.tail.popleft()
                if len(part) > read_budget:
                    self.tail.appendleft(part[read_budget:])
                    part = part[:read_budget]
                out.append(bytes(part))
                read_budget -= len(part)
            else:
                self.done = True
                break
        return b"".join(out)

    def scan_entry(self, out):
        """Look at the next entry of the innermost open folder; a folder's
        header goes out at once, a file is opened to be copied next."""
        iterator, prefix, _ = self.stack[-1]
        entry = next(iterator, None)
        if entry is None:
            self.stack.pop()
            iterator.close()
            return
        try:
            if not is_shown(entry, self.config):
                return
            is_dir = entry.is_dir()
            is_file = not is_dir and entry.is_file()
        except OSError:
            return                      # a broken link, or raced away
        if is_dir:
            self.open_folder(entry.path, prefix + entry.name + "/", out)
        elif is_file:                   # not a FIFO, socket or device
            self.open_file(entry.path, prefix + entry.name, out)

    def open_folder(self, path, name, out):
        """Descend into a folder, after its header."""
        if len(self.stack) >= MAX_ARCHIVE_DEPTH:
            self.log("%s: %s left out: deeper than %d folders"
                     % (self.label, quote_for_log(name), MAX_ARCHIVE_DEPTH))
            return
        try:
            st = os.stat(path)
            key = (st.st_dev, st.st_ino)
            if any(key == k for _, _, k in self.stack):
                return                  # a symlink back to a folder above: a loop
            iterator = os.scandir(path)
        except OSError as exc:
            self.note_unreadable(name, exc)
            return
        self.stack.append((iterator, name, key))
        member = ArchiveMember(name, 0, st.st_mtime_ns, stat.S_IMODE(st.st_mode) & 0o777)
        out.append(self.writer.begin(member))
        out.append(self.writer.end(member))

    def open_file(self, path, name, out):
        """Open a file (non-blocking: a FIFO swapped in never waits) and send its header."""
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                         | getattr(os, "O_BINARY", 0))
        except OSError as exc:
            self.note_unreadable(name, exc)
            return
        f = os.fdopen(fd, "rb", buffering=0)
        try:
            st = os.fstat(fd)
        except OSError:
            f.close()
            raise
        if not stat.S_ISREG(st.st_mode):
            f.close()
            return
        self.member = ArchiveMember(name, st.st_size, st.st_mtime_ns,
                                    stat.S_IMODE(st.st_mode) & 0o777)
        self.file, self.left, self.shrank = f, st.st_size, False
        out.append(self.writer.begin(self.member))

    def copy_file(self, out, budget):
        """Copy up to budget bytes of the open file; returns how many went out.

        Past the file's end (it shrank) zeros stand in for the missing
        bytes.  At the size in the header the file is closed; bytes past
        it (it grew) are left out.
        """
        member = self.member
        want = min(self.left, budget)
        data = b""
        if want and not self.shrank:
            data = self.file.read(want)
            if not data:
                self.shrank = True
                self.log("%s: %s shrank while being sent; padded with zeros to the %d "
                         "bytes in its header" % (self.label, quote_for_log(member.name),
                                                   member.size))
        if want and not data:
            data = bytes(want)
        self.writer.update(data)
        out.append(data)
        self.left -= len(data)
        if self.left == 0:
            if not self.shrank and os.fstat(self.file.fileno()).st_size > member.size:
                self.log("%s: %s grew while being sent; cut at the %d bytes in its header"
                         % (self.label, quote_for_log(member.name), member.size))
            self.file.close()
            self.file = None
            out.append(self.writer.end(member))
        return len(data)

    def note_unreadable(self, name, exc):
        """A file or folder that cannot be opened is left out, with a line to log;
        one that vanished just now needs none.  Shortages end the transfer."""
        if exc.errno in ARCHIVE_FATAL_ERRNOS:
            raise exc
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            self.log("%s: %s left out: %s" % (self.label, quote_for_log(name),
                                              exc.strerror or exc))

    def close(self):
        """Close the open file and folders (again: nothing happens)."""
        self.done = True
        if self.file is not None:
            self.file.close()
            self.file = None
        while self.stack:
            self.stack.pop()[0].close()


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
td.n{grid-column:1/-1;padding-top:.5rem;width:auto}
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
details.qr summary{cursor:pointer}details.qr svg{display:block;max-width:100%;height:auto}
#dav{margin:0;display:flex;flex-wrap:wrap;gap:.4rem;align-items:center}
#dav button,td.act button{font:inherit;font-size:.85rem;min-height:2rem;padding:.2rem .6rem;
border:1px solid var(--line);border-radius:.4rem;background:var(--box);color:var(--link);
cursor:pointer}
td.act{white-space:nowrap;text-align:right;position:relative;z-index:1}
td.act button+button{margin-left:.3rem}
@media (max-width:40rem){td.act{grid-column:1/-1;text-align:left;padding:0 .5rem .5rem 2.15rem}
td.act:empty{display:none}}
"""

# The upload form's own rules, sent with the form (and the outcome page), so
# the listing's style can change without it.
UPLOAD_STYLE = """
.upload{margin:1rem 0;padding:1rem;border:2px dashed #bbb;border-radius:.5rem}
.upload.drag{border-color:#0550ae;background:rgba(5,80,174,.08)}
.upload .hint{margin:0 0 .6rem}.upload .limit{opacity:.7}
.upload .pick{display:flex;flex-wrap:wrap;gap:.5rem;align-items:center}
.upload input[type=file]{max-width:100%}
.upload button{min-height:2.75rem;padding:0 1.2rem;font:inherit}
.upload progress{width:100%;margin-top:.6rem}
.upload ul{list-style:none;margin:.6rem 0 0;padding:0}
.upload li{display:flex;flex-wrap:wrap;gap:.1rem .8rem;padding:.4rem 0;
border-top:1px solid rgba(128,128,128,.3)}
.upload li .name{flex:1 1 10rem;word-break:break-all}
.upload li .state{white-space:nowrap;font-variant-numeric:tabular-nums}
.upload li .why{flex-basis:100%;font-size:.9em;opacity:.85}
.upload li.ok .state{color:#1a7f37}.upload li.bad .state,.upload li.bad .why{color:#cf222e}
.upload .total,.upload .status{margin:.6rem 0 0}
.upload ul:empty,.upload .status:empty{display:none}
"""
FAVICON_URI = svg_data_uri(ICON_FOLDER)

UPLOAD_SCRIPT = """
(function(){
var f=document.getElementById('upload');
if(!f||!window.FormData||!window.Promise)return;
var input=f.querySelector('input[type=file]'),button=f.querySelector('button'),
bar=document.getElementById('progress'),totalLine=document.getElementById('upload-total'),
list=document.getElementById('upload-files'),msg=document.getElementById('upload-status'),
limit=+f.getAttribute('data-max')||0,keepHidden=f.getAttribute('data-hidden')==='1',busy=false;
function human(n){if(n<1024)return n+' B';var u=['KiB','MiB','GiB','TiB'],i=-1;
 do{n/=1024;i++;}while(n>=1024&&i<3);return n.toFixed(1)+' '+u[i];}
function el(tag,cls,text,parent){var e=document.createElement(tag);if(cls)e.className=cls;
 if(text!=null)e.textContent=text;if(parent)parent.appendChild(e);return e;}
function flat(lists){return [].concat.apply([],lists);}
function folderUrl(dir){var p=location.pathname;p=p.slice(0,p.lastIndexOf('/')+1);
 dir.split('/').forEach(function(s){if(s)p+=encodeURIComponent(s)+'/';});return p;}
function skipped(dir,name,why){return [{dir:dir,name:name,why:why}];}
function readAll(reader){return new Promise(function(ok,fail){var all=[];(function more(){
 reader.readEntries(function(batch){if(!batch.length)return ok(all);
 all=all.concat(Array.prototype.slice.call(batch));more();},fail);})();});}
function walk(entry,dir){
 if(entry.name.charAt(0)==='.'&&!keepHidden&&(dir||entry.isDirectory))
  return Promise.resolve(skipped(dir,entry.name+(entry.isDirectory?'/':''),
   'Hidden names are not kept by this server.'));
 if(entry.isFile)return new Promise(function(ok){entry.file(function(file){
  ok([{dir:dir,file:file}]);},function(){
  ok(skipped(dir,entry.name,'It could not be read.'));});});
 if(!entry.isDirectory)return Promise.resolve([]);
 return readAll(entry.createReader()).then(function(children){
  return Promise.all(children.map(function(c){return walk(c,dir+entry.name+'/');}));
 }).then(flat,function(){return skipped(dir,entry.name+'/','The folder could not be read.');});}
function collect(dt){var items=dt.items,found=[],loose=[];
 for(var i=0;items&&i<items.length;i++){if(items[i].kind!=='file')continue;
  var entry=items[i].webkitGetAsEntry&&items[i].webkitGetAsEntry();
  if(entry){found.push(walk(entry,''));continue;}
  var file=items[i].getAsFile();if(file)loose.push(file);}
 if(!found.length&&!loose.length)loose=Array.prototype.slice.call(dt.files||[]);
 return Promise.all(found).then(function(lists){
  return loose.map(function(file){return {dir:'',file:file};}).concat(flat(lists));});}
function row(it){var li=el('li',it.file?'':'bad',null,list);
 el('span','name',it.dir+(it.file?it.file.name:it.name),li);
 it.state=el('span','state',it.file?'waiting':'skipped',li);
 it.why=el('span','why',it.why||'',li);it.li=li;}
function settle(it,ok,state,why,url){it.li.className=ok?'ok':'bad';it.state.textContent='';
 if(url)el('a','',state,it.state).href=url;else it.state.textContent=state;
 it.why.textContent=why||'';}
function progress(group,run,e){var part=e.lengthComputable&&e.total?e.loaded/e.total:0,
 sent=part*group.bytes,at=0,speed=(run.done+sent)/Math.max(Date.now()-run.start,1)*1000;
 group.items.forEach(function(it){var size=it.file.size,mine=Math.min(Math.max(sent-at,0),size);
  at+=size;var pct=size?Math.floor(mine*100/size):(part>=1?100:0);
  it.state.textContent=pct+'%'+(pct>0&&pct<100?' \\u00b7 '+human(speed)+'/s':'');});
 bar.value=run.bytes?(run.done+sent)/run.bytes:0;
 totalLine.textContent=human(run.done+sent)+' of '+human(run.bytes)+' \\u00b7 '+
  Math.floor(bar.value*100)+'% \\u00b7 '+human(speed)+'/s';}
function answered(group,run,x){var j=null;try{j=JSON.parse(x.responseText);}catch(err){}
 var answers=j&&j.files||[];
 group.items.forEach(function(it,i){var a=answers[i];
  if(a&&a.name!==it.file.name)a=answers.filter(function(b){return b.name===it.file.name;})[0];
  if(a&&a.saved_as!=null){run.saved++;
   settle(it,true,a.outcome==='replaced'?'replaced':'saved',a.saved_as===a.name?'':
    'Saved as '+a.saved_as+(a.reason?'. '+a.reason:''),a.url);}
  else settle(it,false,a&&a.outcome==='exists'?'not saved: exists':'not saved',
   a&&a.reason||j&&j.message||'The server answered '+x.status+' '+x.statusText+'.');});
 if(x.status>=300&&j&&j.message&&run.notes.indexOf(j.message)<0)run.notes.push(j.message);}
function send(group,run){return new Promise(function(done){
 var data=new FormData(),x=new XMLHttpRequest();
 group.items.forEach(function(it){data.append('file',it.file,it.file.name);});
 x.open('POST',folderUrl(group.dir));x.setRequestHeader('Accept','application/json');
 x.upload.onprogress=function(e){progress(group,run,e);};
 x.onload=function(){answered(group,run,x);run.done+=group.bytes;done();};
 x.onerror=function(){group.items.forEach(function(it){
  settle(it,false,'not saved','The connection was lost.');});run.done+=group.bytes;done();};
 x.send(data);});}
function start(items){if(busy||!items.length)return;
 busy=button.disabled=input.disabled=true;list.textContent=msg.textContent='';
 var groups={},order=[],run={bytes:0,done:0,saved:0,notes:[],start:Date.now()},
 files=items.filter(function(it){return it.file;});
 items.forEach(row);
 files.forEach(function(it){var g=groups[it.dir];
  if(!g){g=groups[it.dir]={dir:it.dir,items:[],bytes:0};order.push(g);}
  g.items.push(it);g.bytes+=it.file.size;});
 order=order.filter(function(g){if(!limit||g.bytes<=limit){run.bytes+=g.bytes;return true;}
  g.items.forEach(function(it){settle(it,false,'not saved','Too large: '+human(g.bytes)+
   (g.dir?' in '+g.dir:'')+'; one upload may be at most '+human(limit)+'.');});});
 bar.hidden=totalLine.hidden=false;bar.value=0;totalLine.textContent='';
 order.reduce(function(p,g){return p.then(function(){return send(g,run);});},Promise.resolve())
 .then(function(){busy=button.disabled=input.disabled=false;input.value='';bar.hidden=true;
  totalLine.textContent='Saved '+run.saved+' of '+files.length+' file'+
   (files.length===1?'':'s')+(items.length>files.length?'; '+
   (items.length-files.length)+' skipped':'')+'.';
  run.notes.forEach(function(t){el('span','',t+' ',msg);});
  if(run.saved)el('a','','Reload to see them in the list.',msg).href=
   location.pathname+location.search;});}
f.addEventListener('submit',function(e){e.preventDefault();
 start(Array.prototype.map.call(input.files,function(file){return {dir:'',file:file};}));});
['dragenter','dragover'].forEach(function(t){document.addEventListener(t,function(e){
 e.preventDefault();f.classList.add('drag');});});
document.addEventListener('dragleave',function(){f.classList.remove('drag');});
document.addEventListener('drop',function(e){e.preventDefault();f.classList.remove('drag');
 if(busy){msg.textContent='Wait for the upload in progress to end.';return;}
 if(e.dataTransfer)collect(e.dataTransfer).then(start);});
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


# The listing's WebDAV actions, shown only when writes are allowed and script
# runs (without it the page stays as it is): "New folder" (MKCOL), and on each
# row "Rename" (MOVE with Overwrite: F, so nothing is replaced by accident)
# and, with --overwrite, "Delete" (DELETE, asked first).
DAV_SCRIPT = """
document.addEventListener('DOMContentLoaded',function(){
var bar=document.getElementById('dav');if(!bar||!window.fetch)return;
var del=bar.getAttribute('data-delete')=='1',say=document.getElementById('dav-status');
function fail(what,r,name){r.text().then(function(t){var m='';
 try{m=JSON.parse(t).message||'';}catch(e){}
 if(r.status==412)m='something named '+name+' is there already.';
 if(r.status==423)m='it is locked by another client.';
 say.textContent=what+' failed: '+r.status+' '+r.statusText+(m?' \\u2014 '+m:'');});}
function send(method,url,headers,what,ok,name){headers.Accept='application/json';
 fetch(url,{method:method,headers:headers,credentials:'same-origin'}).then(function(r){
  if(r.status==ok){location.reload();return;}
  if(r.status==207){say.textContent=what+': some items could not be changed.';return;}
  fail(what,r,name);},function(){say.textContent=what+' failed: the connection was lost.';});}
function bad(n){return !n||/[\\/\\\\]/.test(n)||n=='.'||n=='..';}
function ask(text,value){var n=prompt(text,value);return n===null?null:n.trim();}
document.getElementById('new-folder').addEventListener('click',function(){
 var n=ask('Name of the new folder:','');if(n===null)return;
 if(bad(n)){say.textContent='A name cannot be empty or hold / or \\\\.';return;}
 send('MKCOL',encodeURIComponent(n)+'/',{},'New folder',201,n);});
var head=document.querySelector('thead tr');
if(head)head.appendChild(document.createElement('th')).className='act';
[].forEach.call(document.querySelectorAll('tbody tr'),function(r){
 var cell=r.insertCell(-1),a=r.querySelector('td.n a');cell.className='act';
 if(!a||r.className=='up')return;
 var href=a.getAttribute('href').split('?')[0],dir=/\\/$/.test(href),
  name=a.textContent.replace(/\\/$/,'');
 function button(label,go){var b=cell.appendChild(document.createElement('button'));
  b.type='button';b.textContent=label;b.addEventListener('click',go);}
 button('Rename',function(){var n=ask('New name for '+name+':',name);
  if(n===null||n==name)return;
  if(bad(n)){say.textContent='A name cannot be empty or hold / or \\\\.';return;}
  var to=new URL(encodeURIComponent(n)+(dir?'/':''),location.href);
  send('MOVE',href,{'Destination':to.origin+to.pathname,'Overwrite':'F'},'Rename',201,n);});
 if(del)button('Delete',function(){
  if(!confirm('Delete '+name+(dir?' and everything in it':'')+'?'))return;
  send('DELETE',href,{},'Delete',204,name);});});
bar.removeAttribute('hidden');});
"""


def csp_hash(text):
    """The 'sha256-…' source a Content-Security-Policy uses to allow one inline text."""
    return "'sha256-%s'" % base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()
                                            ).decode("ascii")


# Our pages run only their own inline style and script (hashes, not 'unsafe-inline'),
# talk only to this server, and can't be framed by another site.
PAGE_CSP = ("default-src 'none'; style-src %s; script-src %s; img-src 'self' data:; "
            "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'self'"
            % (csp_hash(PAGE_STYLE) + " " + csp_hash(UPLOAD_STYLE),
               " ".join(csp_hash(script) for script in (UPLOAD_SCRIPT, FILTER_SCRIPT,
                                                         DAV_SCRIPT))))
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


def render_upload_form(config=None):
    """The upload form of a listing, with the script that sends it in the background.

    With config, it states the --max-upload limit and tells the script
    the limit and whether hidden names are kept (so that a dropped folder's
    dotfiles are skipped when the server would refuse them).
    """
    max_upload = config.max_upload if config is not None else None
    keep_hidden = config is not None and config.hidden
    limit = ""
    if max_upload is not None:
        limit = ' <span class="limit">(at most %s per upload)</span>' % html.escape(
            format_size(max_upload))
    return ('<style>%s</style>\n'
            '<form id="upload" class="upload" method="post" enctype="multipart/form-data"'
            ' data-max="%d" data-hidden="%d">\n'
            '<p class="hint"><strong>Drop files or folders here, or choose them</strong>%s</p>\n'
            '<div class="pick"><input type="file" name="file" multiple>\n'
            '<button type="submit">Upload</button></div>\n'
            '<progress id="progress" max="1" value="0" hidden></progress>\n'
            '<p id="upload-total" class="total" hidden></p>\n'
            '<ul id="upload-files"></ul>\n'
            '<p id="upload-status" class="status" role="status"></p>\n</form>\n'
            '<script>%s</script>\n'
            % (UPLOAD_STYLE, max_upload or 0, keep_hidden, limit, UPLOAD_SCRIPT))


UPLOAD_OUTCOME_LABELS = {"saved": "saved", "renamed": "saved", "replaced": "replaced",
                         "exists": "not saved: exists", "not saved": "not saved"}


def render_upload_outcome(status, message, files, folder_href):
    """The page a form post without script gets: what became of each file, and a way back.

    files are the dicts of a form answer (FormFile.answer); folder_href
    is the folder's URL, already quoted.
    """
    title = "Uploaded" if status < 300 else "%d %s" % (status, reason_phrase(status))
    rows = []
    for item in files:
        saved = item.get("saved_as") is not None
        label = html.escape(UPLOAD_OUTCOME_LABELS.get(item.get("outcome"), "not saved"))
        if saved and item.get("url"):
            label = '<a href="%s">%s</a>' % (html.escape(item["url"]), label)
        why = item.get("reason") or ""
        if saved and item["saved_as"] != item["name"]:
            why = "Saved as %s.%s" % (item["saved_as"], " " + why if why else "")
        rows.append('<li class="%s"><span class="name">%s</span><span class="state">%s</span>'
                    '<span class="why">%s</span></li>\n'
                    % ("ok" if saved else "bad", html.escape(display_name(item["name"])), label,
                       html.escape(display_name(why))))
    body = ('<h1>%s</h1>\n<section class="upload">\n<p>%s</p>\n%s'
            '<p><a href="%s">Back to the folder</a></p>\n</section>\n'
            % (html.escape(title), html.escape(message),
               "<ul>\n%s</ul>\n" % "".join(rows) if rows else "", html.escape(folder_href)))
    return html_page(title, body, "<style>%s</style>" % UPLOAD_STYLE)


def display_name(text):
    """A client-given name for a page: control characters shown as U+FFFD."""
    return re.sub(r"[\x00-\x1f\x7f]", "\ufffd", text)


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


def render_listing_top(url_path, sort, order, config, counts, qr_block=""):
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
    if config.upload:                   # DAV_SCRIPT shows it and fills in the row actions
        tools.append('<p id="dav" data-delete="%d" hidden><button type="button" id="new-folder">'
                     'New folder</button><span id="dav-status" role="status"></span></p>'
                     '<script>%s</script>' % (config.overwrite, DAV_SCRIPT))
    up = ""
    if url_path != config.prefix + "/":
        up = ('<tr class="up"><td class="n"><a class="up" href="../%s">../</a></td>'
              '<td class="size"></td><td class="time"></td></tr>\n' % html.escape(carry))
    # A sorted copy is the same folder again: robots, wget -r among them, need not
    # follow its links (the default order's page links to everything it does).
    robots = '\n<meta name="robots" content="noindex, nofollow">' if carry else ""
    return (page_head(title, robots) + "<header>\n%s%s</header>\n"
            '<div class="bar">\n%s\n</div>\n%s<p class="sortbar">Sort:%s</p>\n'
            "<table>\n<thead><tr>%s</tr></thead>\n<tbody>\n%s"
            % (render_breadcrumbs(url_path, config.prefix, carry), qr_block, "\n".join(tools),
               render_upload_form(config) if config.upload else "", "".join(links),
               "".join(headings), up))


def render_qr_block(url):
    """The listing's QR control: the page's URL as an inline SVG, shown on a click.

    <details> opens without script, so the page's CSP stays as it is.
    A URL too long for a QR code gets no control.
    """
    try:
        svg = qr_svg(qr_matrix(url.encode("utf-8")))
    except ValueError:
        return ""
    return '<details class="qr"><summary>QR</summary>%s</details>\n' % svg


def render_listing_bottom(left_out):
    """The listing page after its last row, with the filter box's script."""
    note = ""
    if left_out:
        note = "<p>%d more entries are not shown (a listing shows at most %d).</p>\n" % (
            left_out, MAX_LISTING_ENTRIES)
    return "</tbody>\n</table>\n%s<script>%s</script>%s" % (note, FILTER_SCRIPT, page_tail())


def listing_pieces(scandir_iter, config, url_path, sort, order, as_json, entries, exhausted,
                   qr_block="", pages=None):
    """Yield a folder's listing as HTML or JSON, in bounded pieces.

    entries were read already (exhausted: all of them).  Reading the rest
    (a stat per entry), sorting and rendering are each cut into steps of
    LISTING_STEP_ENTRIES, so a folder of 50,000 names never holds the
    loop; at most MAX_LISTING_ENTRIES are shown, and the page says how
    many were left out.

    pages (a dict, or None) keeps the pages of folders up to
    LISTING_PAGE_ENTRIES entries, each with what it was made from: the
    entries as read (names, sizes, times) and the count left out.  A
    folder read again with the same entries gets the same bytes without
    sorting and rendering; any change of a size or a time is a new page.
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
    key = (url_path, sort, order, as_json, qr_block)
    made_from = (tuple(entries), left_out)
    kept = pages.get(key) if pages is not None else None
    if kept is not None and kept[0] == made_from:
        yield kept[1]
        return
    made = [] if pages is not None and len(entries) <= LISTING_PAGE_ENTRIES else None
    for piece in render_listing(config, url_path, sort, order, as_json, entries, left_out,
                                qr_block):
        if made is not None:
            made.append(piece)
        yield piece
    if made is not None:
        pages.pop(key, None)
        pages[key] = (made_from, b"".join(made))
        while len(pages) > LISTING_PAGES_KEPT:
            pages.pop(next(iter(pages)))


def render_listing(config, url_path, sort, order, as_json, entries, left_out, qr_block):
    """Yield a listing's page (or JSON) from its entries, LISTING_STEP_ENTRIES rows a piece."""
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
    yield render_listing_top(url_path, sort, order, config, counts,
                             qr_block).encode("utf-8")
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
    "rename",           # a form's taken names are saved as "name (1).ext"
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


def write_log_line(stream, line):
    """Write one line to a log stream; a closed or broken one loses it, nothing more."""
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def log_to_stderr(line):
    """Write one error line to stderr, the way the Server's log_error does."""
    write_log_line(sys.stderr, "minihttpd: " + line)


class Context(object):
    """What every handler gets besides the request: settings and caches.

    One per server.  Caches live here rather than in module globals, so
    the module keeps no state that changes and two servers share nothing.
    """

    def __init__(self, config):
        self.config = config
        # log_error(line): how a body generator, running after its handler has
        # returned, reports (a file that changed size in an archive).  The
        # Server points it at its own log; alone, it writes to stderr.
        self.log_error = log_to_stderr
        self.swept_folders = {}         # folder -> when stale temporaries were last removed
        self.active_temps = set()       # this process's upload temporaries in progress
        self.auth_failures = collections.OrderedDict()   # address -> AuthFailures
        self.host_answers = {}          # Host value -> whether check_host lets it in
        self.file_cache = collections.OrderedDict()   # handle_file's small answers, LRU
        self.answers = {}               # request head bytes -> Answer, oldest first
        self.turn = 0                   # the loop's turn, which begins once select returns
        self.folders_read = (0, {})     # (turn, {folder: its entries as read in that turn})
        self.large_listings = 0         # large listings being sent (ListingSlot)
        self.listing_pages = collections.OrderedDict()   # listing_pieces' pages, oldest first
        self.dead_props = {}            # WebDAV: tree key -> {tag: XML}, for the process's life
        self.dead_bytes = 0             # WebDAV: the size of all dead properties
        self.locks = {}                 # WebDAV: lock token -> Lock
        self.lock_roots = {}            # WebDAV: tree key -> the locks rooted there
        self.qr_blocks = {}             # listing URL -> its QR control (render_qr_block)


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
    """Turn an HTTPError into an error response: JSON, a form's outcome page, or HTML.

    A client that asks for JSON (wants_json) gets {"status", "error",
    "message"}, plus "files" when a form upload's error carries them.  A
    browser's form post gets a page that says what became of its files
    and links back to the folder.  A 404 uses the root's 404.html when it
    is a regular file inside the root; it is streamed like any file, never
    read whole into memory.
    """
    files = getattr(error, "files", None)     # set by FormUpload for its errors
    message = error.message or reason_phrase(error.status)
    if wants_json(request, parse_query(request_query(request))):
        answer = collections.OrderedDict([("status", error.status),
                                          ("error", reason_phrase(error.status)),
                                          ("message", message)])
        if files is not None:
            answer["files"] = files
        return json_response(error.status, answer, error.headers)
    folder = form_folder(request, ctx.config, error.status)
    if folder is not None:
        return Response(error.status, PAGE_HEADERS + error.headers,
                        render_upload_outcome(error.status, message, files or [],
                                              url_quote(folder)))
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


def request_query(request):
    """The raw query of a request, also when it failed before it was routed."""
    if request.route is not None:
        return request.route.query
    return request.target.split("#", 1)[0].partition("?")[2]


def form_folder(request, config, status):
    """For a browser's form post, the URL path of the folder to go back to; else None.

    The folder the form was posted to, or its parent when that is what
    was not found (404).
    """
    if request.method != "POST":
        return None
    try:
        if parse_header_params(request.get_header("content-type") or "")[0] != \
                "multipart/form-data":
            return None
        path = parse_target(request.target)[0]
    except HTTPError:
        return None
    top = config.prefix + "/"
    if not path.startswith(top):
        return top
    path = path.rstrip("/") + "/"
    if status == 404 and path != top:
        path = path[:path.rstrip("/").rindex("/") + 1]
    return path


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
    """The methods allowed on files, for Allow headers: WebDAV's writes follow -u,
    and DELETE needs --overwrite too."""
    methods = ["GET", "HEAD", "OPTIONS", "PROPFIND"]
    if config.upload:
        methods += ["PUT", "POST", "MKCOL", "COPY", "MOVE", "PROPPATCH", "LOCK", "UNLOCK"]
        if config.overwrite:
            methods.append("DELETE")
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
        download = parse_query(query).get("download") if query else None
        if download is not None:
            if not config.archive:
                raise HTTPError(404, "Folder downloads are turned off (--no-archive).")
            return handle_archive(request, ctx, fs_path, path, download)
        index = os.path.join(fs_path, "index.html")
        try:
            index_st = os.stat(index)
        except OSError:
            index_st = None
        if index_st is not None and stat.S_ISREG(index_st.st_mode) \
                and is_confined(index, config.root, config.follow_symlinks) \
                and not is_private(index, config):   # a link that leads out is no index
            response = handle_file(request, ctx, index, index_st)
            response.source = None          # it depends on the folder too: not kept whole
            return response
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


# A Host value fit to put in a URL as it is: a name or IP literal and a port.
URL_HOST_RE = re.compile(r"\A(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?\Z")


def listing_url(request, ctx, url_path):
    """The absolute URL of a listing, by the name its client used to reach it."""
    host = (request.get_header("host") or "").strip()
    if not URL_HOST_RE.match(host):     # HTTP/1.0 may send none; --host '*' lets odd ones in
        host = request.local or "localhost"
    return "%s://%s%s" % ("https" if ctx.config.tls else "http", host, url_quote(url_path))


def listing_qr_block(request, ctx, url_path):
    """The QR control of a listing page, kept per URL (encoding one takes milliseconds)."""
    url = listing_url(request, ctx, url_path)
    block = ctx.qr_blocks.get(url)
    if block is None:
        if len(ctx.qr_blocks) >= QR_CACHE_ENTRIES:
            ctx.qr_blocks.clear()
        block = ctx.qr_blocks[url] = render_qr_block(url)
    return block


def handle_listing(request, ctx, fs_dir, path, query_text):
    """A folder's listing as HTML, or JSON on request.

    A folder of up to LISTING_FIRST_STEP_ENTRIES (the usual case) is read
    and rendered at once, with a Content-Length; a larger one is generated
    in pieces as it is sent (chunked), and HEAD then skips the work.
    """
    config = ctx.config
    query = parse_query(query_text)
    sort = query.get("sort", "name")
    sort = sort if sort in ("name", "size", "time") else "name"
    order = "desc" if query.get("order") == "desc" else "asc"
    as_json = wants_json(request, query)
    headers = ([("Content-Type", "application/json")] if as_json else PAGE_HEADERS) + \
        [("Cache-Control", "no-cache")]
    entries = folder_read_this_turn(ctx, fs_dir)
    if entries is not None:
        scandir_iter, exhausted = None, True
    else:
        try:
            scandir_iter = os.scandir(fs_dir)
        except OSError:
            raise HTTPError(403, "This folder cannot be read.")
        try:
            entries, exhausted = scan_directory(scandir_iter, config,
                                                LISTING_FIRST_STEP_ENTRIES)
        except OSError:
            scandir_iter.close()
            raise HTTPError(403, "This folder cannot be read.")
        if exhausted:
            scandir_iter.close()
            remember_folder_read(ctx, fs_dir, entries)
    qr_block = "" if as_json else listing_qr_block(request, ctx, config.prefix + path)
    pieces = listing_pieces(scandir_iter, config, config.prefix + path, sort, order, as_json,
                            entries, exhausted, qr_block, ctx.listing_pages)
    if exhausted:
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


def folder_read_this_turn(ctx, fs_dir):
    """The entries of a folder read in this loop turn, or None.

    A burst of requests for one listing (16 clients refreshing it) reads
    the folder once a turn, not once each, and is still never stale: a
    request handled in this turn had its first byte in the kernel before
    the turn began (select reported it, or it was buffered earlier), so it
    was sent after any change its client made; and a read from this turn
    began after that, so it sees the change.  A copy: the caller may add
    to its list.
    """
    turn, entries_of = ctx.folders_read
    if turn != ctx.turn:
        return None
    entries = entries_of.get(fs_dir)
    return list(entries) if entries is not None else None


def remember_folder_read(ctx, fs_dir, entries):
    """Keep a folder's entries (all of them) for the rest of this turn."""
    turn, entries_of = ctx.folders_read
    if turn != ctx.turn:
        entries_of = {}
        ctx.folders_read = (ctx.turn, entries_of)
    if len(entries_of) < LISTING_PAGES_KEPT:
        entries_of[fs_dir] = tuple(entries)


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


def handle_archive(request, ctx, fs_dir, path, kind):
    """GET or HEAD FOLDER/?download=zip|tar: the folder's tree as one archive.

    The body is made as the socket drains (FolderArchive), so its length
    is not known beforehand: chunked for HTTP/1.1, and for HTTP/1.0 the
    connection's end ends it.  Never gzipped.  400 for another kind; 403
    when listings are off (an archive lists the folder too) or it cannot
    be read.
    """
    config = ctx.config
    writer_class = ARCHIVE_WRITERS.get(kind)
    if writer_class is None:
        raise HTTPError(400, "download= takes zip or tar.")
    if not config.listing:
        raise HTTPError(403, "Directory listing is turned off, and so are folder downloads.")
    try:
        st = os.stat(fs_dir)
        scandir_iter = os.scandir(fs_dir)
    except OSError:
        raise HTTPError(403, "This folder cannot be read.")
    name = os.path.basename(fs_dir.rstrip(os.sep)) or "folder"
    headers = [("Content-Type", writer_class.content_type),
               ("Content-Disposition", format_attachment(name + "." + kind)),
               ("Cache-Control", "no-cache")]
    if request.method == "HEAD":
        scandir_iter.close()
        return Response(200, headers, [iter(())])
    archive = FolderArchive(fs_dir, st, scandir_iter, config, writer_class(), ctx.log_error,
                            "archive of %s" % quote_for_log(config.prefix + path))
    pieces = archive.pieces()           # the connection closes both when it ends
    return Response(200, headers, [pieces], files=[archive, pieces])


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
            response = Response(200, cached[1], cached[2])
            response.source = (fs_path, cached[0], key[1] and config.precompressed)
            return response
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
                file_signature(opened) == file_signature(st) and \
                remember_file(ctx.file_cache, key, file_signature(st), response):
            response.source = (fs_path, file_signature(st), key[1] and config.precompressed)
    except BaseException:
        f.close()
        raise
    if f not in response.files:
        f.close()
    return response


def remember_file(cache, key, signature, response):
    """Keep a small file's 200 with its body as bytes (read now, from the open file).

    Returns whether it was kept."""
    body = response.body
    if len(body) == 1 and isinstance(body[0], FileRegion):
        region = body[0]
        region.file.seek(region.offset)
        data = region.file.read(region.length)
        if len(data) != region.length:
            return False                    # changing under us: don't keep it
        response.body = [data]
        response.close_files()
    elif not all(isinstance(part, bytes) for part in body):
        return False
    data = b"".join(response.body)
    response.body = [data]                  # the very bytes kept: one copy in memory
    cache[key] = (signature, tuple(response.headers), data)
    cache.move_to_end(key)
    while len(cache) > FILE_CACHE_ENTRIES:
        cache.popitem(last=False)
    return True


class Answer(object):
    """A whole answer kept for a request head that comes again, byte for byte.

    What the full path answers to a GET or HEAD of a small file depends on
    the head's bytes, the settings and the file, nothing else (no password
    checked, no body).  So when such an answer came from the small-file
    cache, the connection keeps it whole, keyed by the head's bytes: a
    client that repeats its head (every browser, wrk, curl in a loop) is
    answered with one dict lookup and the checks handle_file and
    resolve_path would make (see holds: the file's signature, no link on
    its path that leads out, no new name.gz sibling), instead of parsing,
    routing and formatting again.  The bytes sent are those of the full path, with the
    current Date.  request is the parsed head, read only, for the log.
    """

    __slots__ = ("request", "head_length", "fs_path", "signature", "probe_gz", "folders",
                 "before_date", "after_date", "body", "close")

    def __init__(self, request, head_length, source, root, response_head, body, close):
        self.request = request
        self.head_length = head_length
        self.fs_path, self.signature, self.probe_gz = source
        self.folders = []               # those between the root and the file
        for name in self.fs_path[len(root):].strip(os.sep).split(os.sep)[:-1]:
            self.folders.append(os.path.join(self.folders[-1] if self.folders else root, name))
        date_at = response_head.index(b"\r\nDate: ") + len(b"\r\nDate: ")
        self.before_date = response_head[:date_at]
        self.after_date = response_head[response_head.index(b"\r\n", date_at):]
        self.body = body
        self.close = close

    def holds(self, config):
        """Whether the full path would give this answer now.

        With no link on the way (the usual case), an lstat of each folder
        below the root and of the file is what is_confined and the stat of
        handle_get learn, in one call fewer.
        """
        try:
            for folder in self.folders:
                if stat.S_ISLNK(os.lstat(folder).st_mode):
                    return self.holds_through_links(config)
            st = os.lstat(self.fs_path)
        except OSError:
            return False
        if stat.S_ISLNK(st.st_mode):
            return self.holds_through_links(config)
        return file_signature(st) == self.signature and not self.gz_sibling()

    def holds_through_links(self, config):
        """holds() for a path with a link on it: the checks of the full path."""
        try:
            st = os.stat(self.fs_path)
        except OSError:
            return False
        return (file_signature(st) == self.signature and not self.gz_sibling()
                and is_confined(self.fs_path, config.root, config.follow_symlinks))

    def gz_sibling(self):
        """Whether a name.gz appeared that the full path would look for."""
        return self.probe_gz and os.path.lexists(self.fs_path + ".gz")


def find_answer(ctx, data):
    """The kept Answer to the request head at the start of data, if it still holds."""
    end = data.find(b"\r\n\r\n", 0, ANSWER_HEAD_BYTES)
    if end < 0:
        return None
    head = bytes(data[:end + 4])
    answer = ctx.answers.get(head)
    if answer is None:
        return None
    if not answer.holds(ctx.config):
        del ctx.answers[head]           # the full path answers, and may keep a new one
        return None
    return answer


def remember_answer(ctx, head, answer):
    """Keep an answer under its head's bytes; the oldest goes when full.

    Not with private files (a TLS key inside the root): whether a path is
    one is decided by realpath, which Answer.holds does not repeat.
    """
    if ctx.config.private_files:
        return
    answers = ctx.answers
    if head not in answers and len(answers) >= ANSWER_CACHE_ENTRIES:
        del answers[next(iter(answers))]
    answers[head] = answer


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
    """OPTIONS: 204 with the allowed methods and the WebDAV classes (RFC 4918 §10.1)."""
    return Response(204, [("Allow", allowed_methods(ctx.config)), ("DAV", "1, 2"),
                          ("MS-Author-Via", "DAV")])


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

def split_extension(name):
    """Split a name into (stem, extension), keeping ".tar.gz" (".tar.xz"...) whole."""
    stem, ext = os.path.splitext(name)
    if stem.lower().endswith(".tar"):   # keep ".tar.gz" whole
        stem, ext = stem[:-4], stem[-4:] + ext
    if len(ext.encode("utf-8", "surrogateescape")) > 32:
        stem, ext = name, ""            # not an extension, just a long tail
    return stem, ext


def shorten_name(name, limit=MAX_NAME_BYTES, suffix=""):
    """Cut a name to at most limit bytes of UTF-8, keeping its extension.

    suffix (" (2)") goes between the stem and the extension, and is never cut.
    """
    if not suffix and len(name.encode("utf-8", "surrogateescape")) <= limit:
        return name
    stem, ext = split_extension(name)
    room = limit - len((suffix + ext).encode("utf-8", "surrogateescape"))
    stem = stem.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return stem + suffix + ext


CONTROL_CHARS_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
WINDOWS_INVALID_RE = re.compile(r'[<>:"|?*]')
WINDOWS_DEVICE_NAMES = frozenset(["CON", "PRN", "AUX", "NUL"] + [
    "%s%d" % (kind, i) for kind in ("COM", "LPT") for i in range(1, 10)])


def safe_upload_name(name, hidden=False):
    """Reduce a client-given file name to a safe base name; None only for None.

    Never refused, only reduced: folders are dropped (browsers send
    backslashes as they are), so are control characters, a leading dot
    unless hidden (".." included, repeatedly: "..x" becomes "x"), and on
    Windows the characters it cannot hold; a name too long for any file
    system is shortened keeping its extension.  What is left passes the
    visibility rule; an empty result becomes "upload-<hex>".
    """
    if name is None:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = CONTROL_CHARS_RE.sub("", name).strip()
    if IS_WINDOWS:                      # it would drop trailing dots and spaces silently
        name = WINDOWS_INVALID_RE.sub("", name).rstrip(". ")
        if split_extension(name)[0].upper() in WINDOWS_DEVICE_NAMES:
            name = "_" + name           # "NUL.txt" opens the null device
    if not hidden or name in (".", "..") or name.lstrip(".").startswith(UPLOAD_TMP_PREFIX[1:]):
        name = name.lstrip(". ").rstrip()
    name = shorten_name(name)
    if not is_visible(name, hidden):
        name = "upload-" + os.urandom(4).hex()
    return name


def numbered_name(name, number):
    """The --rename candidate number of a name: "a.txt", 2 -> "a (2).txt"; 0: the name itself.

    ".tar.gz" stays whole ("x (2).tar.gz"), and the result fits MAX_NAME_BYTES.
    """
    return shorten_name(name, suffix=" (%d)" % number) if number else name


def write_error(exc, path):
    """Map a write failure to an HTTPError: 507 for a full disk, 403 for a
    folder the server may not write (modes, a read-only disk), else 500.

    The 403 and the 500 carry the OS error and the path for the error log:
    the client is told what it can act on, the log tells the owner why.
    """
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EFBIG):
        return HTTPError(507, "Not enough space to store the upload.")
    detail = "cannot store %s: %s" % (path, exc)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return HTTPError(403, "The server cannot write into this folder.", detail=detail)
    return HTTPError(500, "The upload could not be stored.", detail=detail)


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
            else:
                link_new(self.path, target)
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

    def publish_first_free(self, folder, name, number=0):
        """Give the complete file the first free name of numbered_name(name, number),
        (number + 1), ... (0: name itself); returns the name given.

        Each try is atomic (link_new never replaces a file that appeared
        meanwhile).  Raises 409 after MAX_RENAME_TRIES taken names.
        """
        self.complete()
        target = None
        try:
            os.chmod(self.path, self.mode)
            for number in range(number, number + MAX_RENAME_TRIES):
                given = numbered_name(name, number)
                target = os.path.join(folder, given)
                try:
                    link_new(self.path, target)
                    return given
                except (FileExistsError, IsADirectoryError):
                    continue
            raise HTTPError(409, "No free name like %s is left." % display_text(name))
        except OSError as exc:
            raise write_error(exc, target or folder)
        finally:
            self.discard()

    def discard(self):
        """Close and delete the temporary (safe to call more than once)."""
        try:
            self.file.close()
        except OSError:
            pass
        discard_path(self.path)
        self.ctx.active_temps.discard(self.path)


def link_new(path, target):
    """Give the file at path the name target too, never replacing a file: FileExistsError."""
    if IS_WINDOWS:
        os.rename(path, target)         # fails if the target exists
        return
    try:
        os.link(path, target)           # atomic and never clobbers
    except OSError as exc:
        if exc.errno in (errno.EEXIST,):
            raise
        if os.path.lexists(target):     # no hard links here (FAT, some FUSE)
            raise FileExistsError(errno.EEXIST, "exists")
        os.rename(path, target)


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
        status, location = (200, []) if replaced else \
            (201, [("Location", url_quote(self.url_path))])
        message = "%s %s (%d bytes)" % ("Replaced" if replaced else "Created",
                                        display_text(self.url_path), self.received)
        if wants_json(self.request, parse_query(self.request.route.query)):
            name = display_text(os.path.basename(self.fs_path))
            folder = self.url_path[:self.url_path.rindex("/") + 1]
            return json_response(status, collections.OrderedDict([
                ("status", status), ("message", message), ("folder", url_quote(folder)),
                ("files", [collections.OrderedDict([
                    ("name", name), ("saved_as", name), ("size", self.received),
                    ("url", url_quote(self.url_path)),
                    ("outcome", "replaced" if replaced else "saved"), ("reason", None)])])]),
                headers=location)
        return text_response(status, message + "\n", headers=location)

    def abort(self):
        """The upload failed: leave nothing behind."""
        self.temp.discard()
        remove_folders(self.created)


class FormFile(object):
    """One file part of a form: what the client called it, the name it gets, what became of it."""

    __slots__ = ("name", "safe_name", "saved_as", "number", "size", "outcome", "reason",
                 "temp", "url")

    def __init__(self, name, safe_name):
        self.name = name                # as the client sent it
        self.safe_name = safe_name      # reduced by safe_upload_name
        self.saved_as = safe_name       # the name it is to get (numbered under --rename)
        self.number = 0                 # numbered_name's number for saved_as
        self.size = 0
        self.outcome = None             # None while pending; see FORM_OUTCOMES
        self.reason = None
        self.temp = None                # its complete (or growing) TempFile
        self.url = None

    def drop(self, outcome, reason):
        """This file will not be saved: say why and delete its temporary."""
        self.outcome, self.reason = outcome, reason
        if self.temp is not None:
            self.temp.discard()
            self.temp = None

    def answer(self):
        """The file as the JSON answer (and the outcome page) shows it."""
        saved = self.outcome in ("saved", "renamed", "replaced")
        return collections.OrderedDict([
            ("name", self.name), ("saved_as", self.saved_as if saved else None),
            ("size", self.size), ("url", self.url if saved else None),
            ("outcome", self.outcome), ("reason", self.reason)])


# What became of a form's file: saved under its (reduced) name, saved under a
# numbered one (--rename), replaced a file (--overwrite), refused because the
# name is taken, or not saved because something else refused the form.
FORM_OUTCOMES = ("saved", "renamed", "replaced", "exists", "not saved")
NOT_SAVED_REASON = "Not saved: a form is saved all or nothing."


class FormUpload(object):
    """Sink for a browser's multipart/form-data POST to a folder: all or nothing.

    Each file part goes to its own temporary, flushed to disk when the part
    ends.  Only when the closing delimiter has arrived and every part is
    accepted do the files get their names; if one fails, those already
    published are taken back (and replaced ones restored), so a form never
    half succeeds.  A taken name (without --overwrite or --rename) refuses
    the form, but the rest of the body is still parsed, its data dropped
    without temporaries, so that the answer names every file and what
    became of it (409).  Errors raised for the form carry .files, the same
    list, for error_response.
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
        self.files = []                 # a FormFile per file part, in the form's order
        self.current = None             # the FormFile being received
        self.names = {}                 # name to be given -> its FormFile
        self.refusal = None             # why the form is refused, once a name is taken
        self.pending = False
        self.created = make_folder(self.config.root, fs_folder)
        remove_stale_temporaries(fs_folder, ctx)

    def write(self, data):
        """Feed body bytes through the multipart parser to temporary files."""
        self.received += len(data)
        try:
            events = self.parser.feed(data, FORM_PARTS_PER_TURN)
            self.pending = self.parser.pending
            for kind, value in events:
                if kind == "part":
                    self.start_part(value)
                elif self.current is None:
                    continue                    # a field that is not a file
                elif kind == "data":
                    self.current.size += len(value)
                    if self.current.temp is not None:
                        self.current.temp.write(value)
                else:
                    self.end_part()
        except HTTPError as exc:
            raise self.with_files(exc)

    def start_part(self, headers):
        """A new part: a file part gets its name and a temporary, other fields are ignored."""
        self.current = None
        self.parts += 1
        if self.parts > MAX_FORM_PARTS:
            raise HTTPError(413, "A form may have at most %d parts." % MAX_FORM_PARTS)
        _, params = parse_header_params(headers.get("content-disposition", ""), unescape=False)
        if not params.get("filename"):
            return                              # a field, or an empty file input
        self.current = FormFile(params["filename"],
                                safe_upload_name(params["filename"], self.config.hidden))
        self.files.append(self.current)
        self.place(self.current)
        if self.refusal is None:                # after a refusal, data is only counted
            self.current.temp = TempFile(self.fs_folder, self.ctx)

    def taken(self, name):
        """Why name cannot be given to a file of this form, or None if it can."""
        target = os.path.join(self.fs_folder, name)
        if os.path.isdir(target):
            return "A folder named %s exists." % display_text(name)
        if self.config.overwrite:
            return None
        if name in self.names:
            return "Another file in this form is named %s." % display_text(name)
        if os.path.lexists(target):
            return "A file named %s exists." % display_text(name)
        return None

    def place(self, form_file):
        """Choose the name a file will get (the first free numbered one under
        --rename), or refuse the form because the name is taken."""
        reason = self.taken(form_file.safe_name)
        number = 0
        while reason is not None:
            if not self.config.rename or number + 1 >= MAX_RENAME_TRIES:
                form_file.drop("exists", reason)
                self.refuse(reason)
                return
            number += 1
            if self.taken(numbered_name(form_file.safe_name, number)) is None:
                form_file.reason = reason
                break
        form_file.number = number
        form_file.saved_as = numbered_name(form_file.safe_name, number)
        earlier = self.names.get(form_file.saved_as)
        if earlier is not None:                 # --overwrite: the last of a name wins
            earlier.drop("not saved", "A later file in this form has the same name.")
        self.names[form_file.saved_as] = form_file

    def refuse(self, reason):
        """A name is taken: nothing will be saved; drop what was received so far."""
        if self.refusal is None:
            self.refusal = reason
        for form_file in self.files:
            if form_file.outcome is None and form_file.temp is not None:
                form_file.temp.discard()
                form_file.temp = None

    def end_part(self):
        """A file part is complete: flush it; it waits for the whole form."""
        form_file, self.current = self.current, None
        if form_file.temp is not None:
            form_file.temp.complete()

    def finish(self):
        """The body is complete: publish every file; 201 (303 for a page), or 409
        naming every file when a name was taken."""
        try:
            if not self.parser.done:
                raise HTTPError(400, "The multipart body ended early.")
            if not self.files:
                raise HTTPError(400, "The form held no file.")
            if self.refusal is None:
                self.publish_all()
        except HTTPError as exc:
            raise self.with_files(exc)
        return self.answer()

    def publish_all(self):
        """Give every file its name; on a failure take back those already published.

        A name taken meanwhile refuses the form (it is not an error: the
        answer is the 409 that names the files), other failures raise.
        """
        published = []                          # (FormFile, target, backup or None)
        form_file = None
        try:
            for form_file in self.files:
                temp, form_file.temp = form_file.temp, None
                if temp is None:
                    continue                    # dropped: a later file took its name
                if self.config.rename:
                    form_file.saved_as = temp.publish_first_free(
                        self.fs_folder, form_file.safe_name, form_file.number)
                    target, backup = os.path.join(self.fs_folder, form_file.saved_as), None
                    form_file.outcome = "saved" if form_file.number == 0 and \
                        form_file.saved_as == form_file.safe_name else "renamed"
                else:
                    target = os.path.join(self.fs_folder, form_file.saved_as)
                    replaced = self.config.overwrite and os.path.lexists(target)
                    backup = temp.publish(target, self.config.overwrite)
                    form_file.outcome = "replaced" if replaced else "saved"
                published.append((form_file, target, backup))
        except HTTPError as exc:
            for done, target, backup in reversed(published):
                if backup is not None:
                    os.replace(backup, target)  # put the replaced file back
                else:
                    discard_path(target)
                done.outcome = None
            if exc.status != 409:
                raise
            form_file.drop("exists", exc.message)
            self.refuse(exc.message)
            return
        finally:
            for other in self.files:
                if other.temp is not None:
                    other.temp.discard()
                    other.temp = None
        for form_file, target, backup in published:
            discard_path(backup)
            if form_file.outcome == "renamed" and form_file.reason is None:
                form_file.reason = "A file named %s appeared meanwhile." % display_text(
                    form_file.safe_name)
            elif form_file.saved_as != form_file.name and form_file.reason is None:
                form_file.reason = "The name was reduced to a safe one."
            form_file.url = url_quote(self.url_folder + form_file.saved_as)

    def file_answers(self, reason):
        """Every file with its outcome; pending ones are "not saved", for reason."""
        for form_file in self.files:
            if form_file.outcome is None:
                form_file.drop("not saved", reason)
        return [form_file.answer() for form_file in self.files]

    def with_files(self, exc):
        """exc, carrying what became of each file (nothing is saved)."""
        exc.files = self.file_answers(exc.message or reason_phrase(exc.status))
        return exc

    def answer(self):
        """201 with every file (303 to the folder for a page), or 409 naming each file."""
        folder = url_quote(self.url_folder)
        if self.refusal is not None:
            taken = [f.safe_name for f in self.files if f.outcome == "exists"]
            files = self.file_answers(NOT_SAVED_REASON)
            remove_folders(self.created)        # only if nothing was saved into them
            status = 409
            message = ("Nothing was saved. %s%s To keep both, the server can be started "
                       "with --rename (it saves \"%s\"); to replace files, with --overwrite."
                       % (self.refusal, " %d names are taken." % len(taken) if len(taken) > 1
                          else "", numbered_name(taken[0] if taken else "name", 1)))
        else:
            files = self.file_answers(NOT_SAVED_REASON)
            status = 201
            saved = [f for f in files if f["saved_as"] is not None]
            moved = [f for f in saved if f["saved_as"] != f["name"]]
            message = "Saved %d file%s%s." % (len(saved), "" if len(saved) == 1 else "s",
                                              " (%d under another name)" % len(moved)
                                              if moved else "")
        if wants_json(self.request, parse_query(self.request.route.query)):
            answer = collections.OrderedDict([("status", status)])
            if status >= 400:
                answer["error"] = reason_phrase(status)
            answer.update([("message", message), ("folder", folder), ("files", files)])
            return json_response(status, answer)
        body = render_upload_outcome(status, message, files, folder)
        if status == 201:
            return Response(303, [("Location", folder)] + PAGE_HEADERS, body)
        return Response(status, PAGE_HEADERS, body)

    def abort(self):
        """The upload failed: remove every temporary; publish nothing."""
        for form_file in self.files:
            if form_file.temp is not None:
                form_file.temp.discard()
                form_file.temp = None
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

# -- WebDAV's pure parts: XML bodies, the If header, Depth, Timeout ----------

DAV_PREFIX = "{DAV:}"
LIVE_PROPERTIES = ("displayname", "getcontentlength", "getcontenttype", "getlastmodified",
                   "getetag", "creationdate", "resourcetype", "supportedlock", "lockdiscovery")
LIVE_PROPERTY_TAGS = frozenset(DAV_PREFIX + name for name in LIVE_PROPERTIES)
XML_CONTENT_TYPE = 'application/xml; charset="utf-8"'
XML_DECLARATION = '<?xml version="1.0" encoding="utf-8"?>\n'
NO_LOCK_TOKEN = "DAV:no-lock"          # RFC 4918 §10.4.8: a state token nothing has


def parse_xml_body(body):
    """Parse a WebDAV request body; None when it is empty.

    Raises HTTPError 400 for a DOCTYPE or an entity declaration (refused
    outright, so no entity is ever expanded: billion laughs, external
    entities), for NUL bytes (UTF-16 and UTF-32 are not taken) and for XML
    that is not well formed or binds a prefix to no namespace.
    """
    if not body.strip():
        return None
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body or b"\x00" in body:
        raise HTTPError(400, "DOCTYPE and entity declarations are not accepted.")
    import xml.etree.ElementTree as ElementTree   # WebDAV only: not at every start-up
    try:
        return ElementTree.fromstring(body)
    except (ElementTree.ParseError, ValueError, UnicodeError):
        raise HTTPError(400, "The XML body is not well formed.")


def expect_element(element, name):
    """Raise HTTPError 400 unless element is DAV:name."""
    if element is None or element.tag != DAV_PREFIX + name:
        raise HTTPError(400, "The body must be a DAV:%s element." % name)


def parse_propfind(root):
    """A PROPFIND body as ("allprop", []), ("propname", []) or ("prop", [tags]).

    An empty body (root None) asks for allprop (RFC 4918 §9.1).
    """
    if root is None:
        return "allprop", []
    expect_element(root, "propfind")
    for child in root:
        if child.tag == DAV_PREFIX + "allprop":
            return "allprop", []
        if child.tag == DAV_PREFIX + "propname":
            return "propname", []
        if child.tag == DAV_PREFIX + "prop":
            names = [prop.tag for prop in child]
            if len(names) > MAX_PROPFIND_PROPERTIES:
                raise HTTPError(400, "A PROPFIND may name at most %d properties."
                                % MAX_PROPFIND_PROPERTIES)
            return "prop", names
    raise HTTPError(400, "A propfind names allprop, propname or prop.")


def parse_propertyupdate(root):
    """A PROPPATCH body as [("set", element) or ("remove", element)], in document order."""
    expect_element(root, "propertyupdate")
    changes = []
    for action in root:
        if action.tag not in (DAV_PREFIX + "set", DAV_PREFIX + "remove"):
            continue
        for prop in action:
            if prop.tag != DAV_PREFIX + "prop":
                raise HTTPError(400, "set and remove hold DAV:prop elements.")
            for element in prop:
                changes.append((action.tag[len(DAV_PREFIX):], element))
    if not changes:
        raise HTTPError(400, "The propertyupdate changes nothing.")
    return changes


def parse_lockinfo(root):
    """A LOCK body as (scope, owner XML text); root None means a refresh (None)."""
    if root is None:
        return None
    expect_element(root, "lockinfo")
    scope, write, owner = None, False, ""
    for child in root:
        if child.tag == DAV_PREFIX + "lockscope":
            for value in child:
                if value.tag in (DAV_PREFIX + "exclusive", DAV_PREFIX + "shared"):
                    scope = value.tag[len(DAV_PREFIX):]
        elif child.tag == DAV_PREFIX + "locktype":
            write = any(value.tag == DAV_PREFIX + "write" for value in child)
        elif child.tag == DAV_PREFIX + "owner":
            owner = xml_fragment(child)
    if scope is None or not write:
        raise HTTPError(400, "A lock names its scope and the write type.")
    return scope, owner


def xml_fragment(element):
    """An element as XML text that stands alone (namespaces declared on it)."""
    import xml.etree.ElementTree as ElementTree   # WebDAV only: not at every start-up
    element.tail = None
    return ElementTree.tostring(element, encoding="unicode")


def xml_text(text):
    """Escape text for XML content."""
    return html.escape(text, quote=False)


def empty_element(tag):
    """An empty element for a tag in ElementTree's "{ns}name" form."""
    if tag.startswith(DAV_PREFIX):
        return "<D:%s/>" % tag[len(DAV_PREFIX):]
    if tag.startswith("{"):
        namespace, name = tag[1:].split("}", 1)
        return '<X:%s xmlns:X="%s"/>' % (name, html.escape(namespace))
    return '<%s xmlns=""/>' % tag


def parse_depth(value, default="infinity", allowed=("0", "1", "infinity")):
    """The Depth header: "0", "1" or "infinity"; 400 for another value."""
    if value is None:
        return default
    value = value.strip().lower()
    if value not in allowed:
        raise HTTPError(400, "Depth must be %s here." % " or ".join(allowed))
    return value


def parse_timeout(value):
    """Seconds a lock should last from a Timeout header, at most MAX_LOCK_TIMEOUT_S."""
    for item in (value or "").split(","):
        item = item.strip()
        if item.lower() == "infinite":
            return MAX_LOCK_TIMEOUT_S
        if item.lower().startswith("second-") and item[7:].isdigit() and len(item) < 20:
            return max(1, min(int(item[7:]), MAX_LOCK_TIMEOUT_S))
    return MAX_LOCK_TIMEOUT_S


def parse_if_header(value):
    """Parse an If header (RFC 4918 §10.4) into its lists.

    Returns [(resource tag or None, [(negated, "token" or "etag", text), ...]), ...]:
    the header holds when any one list holds, a list when all of its
    conditions do.  Raises HTTPError 400 when it is malformed.
    """
    lists = []
    tag = None
    tagged = None
    i, n = 0, len(value)
    while True:
        while i < n and value[i] in " \t":
            i += 1
        if i >= n:
            break
        if value[i] == "<":
            end = value.find(">", i)
            if end < 0 or tagged is False:
                raise HTTPError(400, "Malformed If header.")
            tagged, tag = True, value[i + 1:end]
            i = end + 1
            while i < n and value[i] in " \t":
                i += 1
            if i >= n or value[i] != "(":
                raise HTTPError(400, "Malformed If header.")
            continue
        if value[i] != "(":
            raise HTTPError(400, "Malformed If header.")
        tagged = bool(tagged)
        i += 1
        conditions = []
        while True:
            while i < n and value[i] in " \t":
                i += 1
            if i >= n:
                raise HTTPError(400, "Malformed If header.")
            if value[i] == ")":
                i += 1
                break
            negated = value[i:i + 3].lower() == "not"
            if negated:
                i += 3
                while i < n and value[i] in " \t":
                    i += 1
            if value[i:i + 1] == "<":
                end, kind = value.find(">", i), "token"
            elif value[i:i + 1] == "[":
                end, kind = value.find("]", i), "etag"
            else:
                raise HTTPError(400, "Malformed If header.")
            if end < 0:
                raise HTTPError(400, "Malformed If header.")
            conditions.append((negated, kind, value[i + 1:end].strip()))
            i = end + 1
        if not conditions:
            raise HTTPError(400, "Malformed If header.")
        lists.append((tag, conditions))
    if not lists:
        raise HTTPError(400, "Malformed If header.")
    return lists


def if_tokens(lists):
    """The state tokens an If header submits (RFC 4918 §10.4: lock tokens it names)."""
    return set(text for _, conditions in lists for _, kind, text in conditions
               if kind == "token")


def tree_key(path):
    """The canonical form of a path below the root: "/a/b", "/" for the root."""
    parts = []
    for segment in path.split("/"):
        if segment == "..":
            if parts:
                parts.pop()
        elif segment not in ("", "."):
            parts.append(segment)
    return "/" + "/".join(parts)


def key_parent(key):
    """The key of the folder holding key ("/" for a top-level name)."""
    return key.rsplit("/", 1)[0] or "/"


def key_within(key, root):
    """Whether key is root or below it."""
    return key == root or root == "/" or key.startswith(root + "/")


# -- WebDAV state: dead properties and locks, in memory ---------------------

class Lock(object):
    """A write lock (RFC 4918 §6): its token, the key it is rooted at, depth, scope."""

    __slots__ = ("token", "root", "depth", "scope", "owner", "timeout", "expires")

    def __init__(self, root, depth, scope, owner, timeout):
        import uuid                     # WebDAV locks only: not at every start-up
        self.token = "urn:uuid:%s" % uuid.uuid4()
        self.root = root
        self.depth = depth
        self.scope = scope
        self.owner = owner
        self.refresh(timeout)

    def refresh(self, timeout):
        """Start the lock's time again."""
        self.timeout = timeout
        self.expires = time.monotonic() + timeout

    def covers(self, key):
        """Whether the lock applies to the resource at key."""
        return key == self.root or (self.depth == "infinity" and key_within(key, self.root))


def add_lock(ctx, lock):
    """Hold a new lock."""
    ctx.locks[lock.token] = lock
    ctx.lock_roots.setdefault(lock.root, []).append(lock)


def drop_lock(ctx, lock):
    """Forget a lock (unlocked, expired, or its resource gone)."""
    ctx.locks.pop(lock.token, None)
    rooted = ctx.lock_roots.get(lock.root, [])
    if lock in rooted:
        rooted.remove(lock)
    if not rooted:
        ctx.lock_roots.pop(lock.root, None)


def sweep_locks(ctx, now):
    """Forget locks whose time ran out (the loop's deadline pass calls this)."""
    for lock in [lock for lock in ctx.locks.values() if lock.expires <= now]:
        drop_lock(ctx, lock)


def locks_covering(ctx, key):
    """The live locks that apply to key: rooted there, or Depth infinity above it.

    One lookup per ancestor, so a PROPFIND of a large folder pays nothing
    for the number of locks held elsewhere.
    """
    if not ctx.locks:
        return []
    now = time.monotonic()
    found = []
    ancestor = key
    while True:
        for lock in ctx.lock_roots.get(ancestor, ()):
            if lock.expires > now and (ancestor == key or lock.depth == "infinity"):
                found.append(lock)
        if ancestor == "/":
            return found
        ancestor = key_parent(ancestor)


def locks_below(ctx, key):
    """The live locks rooted strictly inside the folder at key (at most MAX_LOCKS)."""
    now = time.monotonic()
    return [lock for lock in ctx.locks.values()
            if lock.expires > now and lock.root != key and key_within(lock.root, key)]


def forget_resource(ctx, key):
    """A resource went away (DELETE, MOVE): its locks and dead properties go with it."""
    for lock in [lock for lock in ctx.locks.values() if key_within(lock.root, key)]:
        drop_lock(ctx, lock)
    for k in [k for k in ctx.dead_props if key_within(k, key)]:
        ctx.dead_bytes -= properties_size(ctx.dead_props.pop(k))


def properties_size(props):
    """What a resource's dead properties cost, in characters of XML."""
    return sum(len(tag) + len(value) for tag, value in props.items())


def carry_properties(ctx, source, target, move):
    """Dead properties follow a COPY (copied, within MAX_DEAD_PROPERTY_BYTES)
    or a MOVE (moved) to target."""
    for k in [k for k in ctx.dead_props if key_within(k, source)]:
        props = ctx.dead_props[k]
        if move:
            del ctx.dead_props[k]
        else:
            size = properties_size(props)
            if ctx.dead_bytes + size > MAX_DEAD_PROPERTY_BYTES:
                continue
            ctx.dead_bytes += size
            props = collections.OrderedDict(props)
        ctx.dead_props[target + k[len(source):] if k != source else target] = props


# -- WebDAV: reading a resource's properties --------------------------------

def dav_href(config, key, is_dir):
    """The href of a resource in a 207 body: quoted, under the route prefix."""
    path = config.prefix + key
    if is_dir and not path.endswith("/"):
        path += "/"
    return xml_text(url_quote(path))


def format_iso_date(timestamp):
    """An RFC 3339 date for creationdate."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def lock_xml(config, lock):
    """One DAV:activelock element."""
    left = max(0, int(lock.expires - time.monotonic()))
    return ("<D:activelock><D:locktype><D:write/></D:locktype><D:lockscope><D:%s/>"
            "</D:lockscope><D:depth>%s</D:depth>%s<D:timeout>Second-%d</D:timeout>"
            "<D:locktoken><D:href>%s</D:href></D:locktoken><D:lockroot><D:href>%s</D:href>"
            "</D:lockroot></D:activelock>"
            % (lock.scope, "infinity" if lock.depth == "infinity" else "0", lock.owner, left,
               xml_text(lock.token), dav_href(config, lock.root, False)))


SUPPORTED_LOCK_XML = ("<D:supportedlock><D:lockentry><D:lockscope><D:exclusive/></D:lockscope>"
                      "<D:locktype><D:write/></D:locktype></D:lockentry><D:lockentry>"
                      "<D:lockscope><D:shared/></D:lockscope><D:locktype><D:write/>"
                      "</D:locktype></D:lockentry></D:supportedlock>")


def live_property(ctx, name, key, fs_path, st):
    """A live property's element for a resource, or None where it has none."""
    is_dir = stat.S_ISDIR(st.st_mode)
    if name == "displayname":
        shown = display_text(key.rsplit("/", 1)[-1] or os.path.basename(ctx.config.root))
        return "<D:displayname>%s</D:displayname>" % xml_text(shown)
    if name == "resourcetype":
        return "<D:resourcetype><D:collection/></D:resourcetype>" if is_dir \
            else "<D:resourcetype/>"
    if name == "getlastmodified":
        return "<D:getlastmodified>%s</D:getlastmodified>" % format_http_date(st.st_mtime)
    if name == "creationdate":
        born = getattr(st, "st_birthtime", None) or min(st.st_ctime, st.st_mtime)
        return "<D:creationdate>%s</D:creationdate>" % format_iso_date(born)
    if name == "supportedlock":
        return SUPPORTED_LOCK_XML
    if name == "lockdiscovery":
        return "<D:lockdiscovery>%s</D:lockdiscovery>" % "".join(
            lock_xml(ctx.config, lock) for lock in locks_covering(ctx, key))
    if is_dir:
        return None
    if name == "getcontentlength":
        return "<D:getcontentlength>%d</D:getcontentlength>" % st.st_size
    if name == "getcontenttype":
        return "<D:getcontenttype>%s</D:getcontenttype>" % xml_text(
            guess_content_type(fs_path))
    if name == "getetag":
        return "<D:getetag>%s</D:getetag>" % xml_text(make_etag(st))
    return None


def propstat_xml(found, missing):
    """The propstat elements of one response: what was found, what was not."""
    out = ""
    if found:
        out += ("<D:propstat><D:prop>%s</D:prop><D:status>HTTP/1.1 200 OK</D:status>"
                "</D:propstat>" % "".join(found))
    if missing:
        out += ("<D:propstat><D:prop>%s</D:prop><D:status>HTTP/1.1 404 Not Found</D:status>"
                "</D:propstat>" % "".join(empty_element(tag) for tag in missing))
    return out


def resource_xml(ctx, key, fs_path, st, mode, names):
    """One DAV:response of a PROPFIND for a resource."""
    dead = ctx.dead_props.get(key, {})
    found, missing = [], []
    if mode == "prop":
        for tag in names:
            value = None
            if tag in LIVE_PROPERTY_TAGS:
                value = live_property(ctx, tag[len(DAV_PREFIX):], key, fs_path, st)
            elif tag in dead:
                value = dead[tag]
            if value is None:
                missing.append(tag)
            else:
                found.append(value)
    else:
        for name in LIVE_PROPERTIES:
            value = live_property(ctx, name, key, fs_path, st)
            if value is not None:
                found.append(value if mode == "allprop" else "<D:%s/>" % name)
        found.extend(dead.values() if mode == "allprop" else map(empty_element, dead))
    return "<D:response><D:href>%s</D:href>%s</D:response>\n" % (
        dav_href(ctx.config, key, stat.S_ISDIR(st.st_mode)), propstat_xml(found, missing))


def multistatus(parts):
    """A 207 Multi-Status body from DAV:response elements."""
    return (XML_DECLARATION + '<D:multistatus xmlns:D="DAV:">\n' + "".join(parts)
            + "</D:multistatus>\n").encode("utf-8")


def status_response_xml(config, key, is_dir, status):
    """A DAV:response that gives one member's status (a failure inside a 207)."""
    return "<D:response><D:href>%s</D:href><D:status>HTTP/1.1 %d %s</D:status></D:response>\n" \
        % (dav_href(config, key, is_dir), status, reason_phrase(status))


def stat_resource(config, key):
    """(fs_path, st) of the visible resource at key; 404 when there is none."""
    fs_path = resolve_path(config, key)
    try:
        return fs_path, os.stat(fs_path)
    except OSError:
        raise HTTPError(404, "Not found.")


def request_key(request):
    """The tree key the request's target names (/PREFIX without its slash: the root)."""
    if request.route.kind == "prefix_redirect":
        return "/"                      # WebDAV clients may leave the slash off a folder
    if request.route.kind != "tree":
        raise HTTPError(405, "WebDAV works on the served folder.",
                        [("Allow", "GET, HEAD, OPTIONS")])
    return tree_key(request.route.path)


def read_dav_body(request, ctx, then):
    """Read a small XML body (at most MAX_XML_BODY_BYTES), then answer with then()."""
    length = parse_body_framing(request)
    if length is not None and length > MAX_XML_BODY_BYTES:
        raise HTTPError(413, "An XML body may hold at most %d bytes." % MAX_XML_BODY_BYTES)
    if length == 0:
        return then(request, ctx, b"")
    return XMLBody(request, ctx, then)


class XMLBody(object):
    """Sink that keeps a small request body in memory, then runs its handler."""

    pending = False

    def __init__(self, request, ctx, then):
        self.request = request
        self.ctx = ctx
        self.then = then
        self.data = bytearray()

    def write(self, data):
        """Keep body bytes, up to the limit."""
        self.data += data
        if len(self.data) > MAX_XML_BODY_BYTES:
            raise HTTPError(413, "An XML body may hold at most %d bytes." % MAX_XML_BODY_BYTES)

    def finish(self):
        """The body is complete: run the handler on it (its refusal keeps the connection)."""
        try:
            return self.then(self.request, self.ctx, bytes(self.data))
        except HTTPError as exc:
            return dav_error_response(exc, self.request, self.ctx)

    def abort(self):
        """Nothing was stored."""
        self.data = bytearray()


def handle_propfind(request, ctx):
    """PROPFIND: properties of a resource and, at Depth 1, of its members."""
    key = request_key(request)
    depth = parse_depth(request.get_header("depth"))
    if depth == "infinity":
        raise DAVError(403, "PROPFIND with Depth: infinity is not supported; use 0 or 1.",
                       "propfind-finite-depth")
    stat_resource(ctx.config, key)                   # 404 before reading a body
    return read_dav_body(request, ctx, answer_propfind)


def answer_propfind(request, ctx, body):
    """The 207 of a PROPFIND, its body read: one step, or pieces for a large folder."""
    config = ctx.config
    key = request_key(request)
    mode, names = parse_propfind(parse_xml_body(body))
    fs_path, st = stat_resource(config, key)
    headers = [("Content-Type", XML_CONTENT_TYPE)]
    first = resource_xml(ctx, key, fs_path, st, mode, names)
    depth = parse_depth(request.get_header("depth"))
    if depth == "0" or not stat.S_ISDIR(st.st_mode):
        return Response(207, headers, multistatus([first]))
    try:
        scandir_iter = os.scandir(fs_path)
    except OSError:
        raise HTTPError(403, "This folder cannot be read.")
    try:
        parts, exhausted = propfind_members(ctx, key, scandir_iter, mode, names)
    except BaseException:
        scandir_iter.close()
        raise
    if exhausted:
        scandir_iter.close()
        return Response(207, headers, multistatus([first] + parts))
    if ctx.large_listings >= MAX_LARGE_LISTINGS:
        scandir_iter.close()
        raise HTTPError(503, "Other large folders are being listed; try again in a moment.",
                        [("Retry-After", "1")])
    head = multistatus([first] + parts)[:-len(MULTISTATUS_END)]
    pieces = propfind_pieces(ctx, key, scandir_iter, mode, names)
    return Response(207, headers, [head, pieces],
                    files=[scandir_iter, pieces, ListingSlot(ctx)])


MULTISTATUS_END = b"</D:multistatus>\n"


def propfind_members(ctx, key, scandir_iter, mode, names):
    """Responses for up to LISTING_STEP_ENTRIES members: (parts, exhausted).

    A step also ends after PROPFIND_STEP_PROPERTIES properties, so a
    request naming hundreds of them gets fewer members a step, not more work.
    """
    config = ctx.config
    parts = []
    cost = 0
    for entry in scandir_iter:
        try:
            if not is_shown(entry, config):
                continue
            st = entry.stat()
        except OSError:
            continue
        member = key.rstrip("/") + "/" + entry.name
        parts.append(resource_xml(ctx, member, entry.path, st, mode, names))
        cost += len(names) if mode == "prop" else \
            len(LIVE_PROPERTIES) + len(ctx.dead_props.get(member, ()))
        if len(parts) >= LISTING_STEP_ENTRIES or cost >= PROPFIND_STEP_PROPERTIES:
            return parts, False
    return parts, True


def propfind_pieces(ctx, key, scandir_iter, mode, names):
    """Yield the rest of a large folder's multistatus, one step of members a piece."""
    exhausted = False
    while not exhausted:
        parts, exhausted = propfind_members(ctx, key, scandir_iter, mode, names)
        yield "".join(parts).encode("utf-8")
    yield MULTISTATUS_END


# -- WebDAV: conditions, locks and errors of write methods -------------------

class DAVError(HTTPError):
    """An HTTPError that names a WebDAV precondition (RFC 4918 §16) in an XML body."""

    def __init__(self, status, message, condition, headers=None):
        HTTPError.__init__(self, status, message, headers)
        self.condition = condition


def dav_error_response(error, request, ctx):
    """The answer to an HTTPError of a WebDAV method; an XML body for a DAVError."""
    condition = getattr(error, "condition", None)
    if condition is None:
        return error_response(error, request, ctx)
    body = (XML_DECLARATION + '<D:error xmlns:D="DAV:"><D:%s/></D:error>\n' % condition)
    return Response(error.status, [("Content-Type", XML_CONTENT_TYPE)] + error.headers,
                    body.encode("utf-8"))


def require_writes(request, ctx):
    """405 with Allow unless uploads are on (WebDAV's writes follow -u)."""
    if not ctx.config.upload:
        handle_not_allowed(request, ctx)


def url_key(request, config, url):
    """The tree key a URL names on this server, or None when it names none.

    Raises HTTPError 502 for a URL on another host, 400 for a malformed one.
    """
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError:
        raise HTTPError(400, "Malformed URL %s." % url)
    if parts.scheme or parts.netloc:
        host = (request.get_header("host") or "").strip().lower()
        if parts.scheme.lower() not in ("http", "https") or parts.netloc.lower() != host:
            raise HTTPError(502, "%s is on another server." % url)
    path, _ = parse_target(parts.path or "/")
    if config.prefix:
        if path != config.prefix and not path.startswith(config.prefix + "/"):
            return None
        path = path[len(config.prefix):] or "/"
    depth = 0
    for segment in path.split("/"):
        if segment == "..":
            depth -= 1
            if depth < 0:
                return None
        elif segment not in ("", "."):
            depth += 1
            if not is_visible(segment, config.hidden):
                return None
    return tree_key(path)


def resource_etag(config, key):
    """The ETag of the resource at key (as GET sends it), or None when there is none."""
    try:
        return make_etag(os.stat(resolve_path(config, key)))
    except (HTTPError, OSError):
        return None


def check_if_header(request, ctx, key):
    """Evaluate the If header (RFC 4918 §10.4); 412 when no list holds.

    Returns the lock tokens it submits (empty without an If header).
    """
    value = request.get_header("if")
    if value is None:
        return set()
    lists = parse_if_header(value)
    for tag, conditions in lists:
        target = key
        if tag is not None:
            try:
                target = url_key(request, ctx.config, tag)
            except HTTPError:
                target = None
            if target is None:
                continue
        etag = resource_etag(ctx.config, target)
        tokens = set(lock.token for lock in locks_covering(ctx, target))
        if all(condition_holds(condition, etag, tokens) for condition in conditions):
            return if_tokens(lists)
    raise HTTPError(412, "The conditions of the If header do not hold.")


def condition_holds(condition, etag, tokens):
    """Whether one condition of an If list holds for a resource's ETag and lock tokens."""
    negated, kind, text = condition
    if kind == "token":
        holds = text in tokens
    else:
        holds = etag is not None and (text[2:] if text.startswith("W/") else text) == etag
    return holds != negated


def check_locks(ctx, tokens, key, member=False, subtree=False):
    """423 unless the request submits a token of each lock on what it changes.

    member: the resource is added to or removed from its folder, so the
    folder's locks count too; subtree: a folder's members change as well.
    """
    groups = [locks_covering(ctx, key)]
    if member and key != "/":
        groups.append(locks_covering(ctx, key_parent(key)))
    if subtree:
        groups.extend([lock] for lock in locks_below(ctx, key))
    for locks in groups:
        if locks and not any(lock.token in tokens for lock in locks):
            raise DAVError(423, "%s is locked; send its lock token in an If header."
                           % display_text(key), "lock-token-submitted")


def check_write(request, ctx, key, member=False, subtree=False):
    """The If header and the locks, for a write to key; returns the tokens submitted."""
    tokens = check_if_header(request, ctx, key)
    check_locks(ctx, tokens, key, member, subtree)
    return tokens


def os_error_status(exc):
    """The status of a member a write could not change."""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return 403
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return 507
    if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        return 409
    return 500


def member_key(key, fs_root, fs_path):
    """The tree key of fs_path, found below fs_root, the folder of key."""
    rel = os.path.relpath(fs_path, fs_root)
    return key if rel == "." else key.rstrip("/") + "/" + rel.replace(os.sep, "/")


# -- WebDAV: long file-system jobs in bounded steps --------------------------

class TreeJob(object):
    """Sink that runs a file-system job (DELETE, COPY, MOVE) in bounded steps.

    It has no body to take: it is pending until its steps are done, and
    the connection gives it one step a turn (write(b"")), so deleting or
    copying a large tree never holds the loop.  answer() makes the response.
    """

    def __init__(self, steps, answer):
        self.steps = steps
        self.answer = answer
        self.pending = True

    def write(self, data):
        """Run one step (a body, which these methods don't define, is ignored)."""
        if self.pending:
            try:
                next(self.steps)
            except StopIteration:
                self.pending = False

    def finish(self):
        """The steps are done: the response."""
        return self.answer()

    def abort(self):
        """The connection ends early (a deadline, the server stopping): stop where the
        job is; what is done stays done.  A client that merely hangs up does not
        stop it: the request it sent is carried out, as a sent DELETE should be."""
        self.steps.close()


def delete_steps(fs_path, failures):
    """Remove a folder tree, LISTING_STEP_ENTRIES entries a step, innermost first.

    Symlinks are removed, never followed.  What cannot go is added to
    failures as (path, OSError); its folders then stay, unreported.
    """
    try:
        stack = [(fs_path, os.scandir(fs_path))]
    except OSError as exc:
        failures.append((fs_path, exc))
        return
    try:
        while stack:
            path, entries = stack[-1]
            count = 0
            for entry in entries:
                count += 1
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, os.scandir(entry.path)))
                        break
                    os.unlink(entry.path)
                except OSError as exc:
                    failures.append((entry.path, exc))
                if count >= LISTING_STEP_ENTRIES:
                    break
            else:
                entries.close()
                stack.pop()
                try:
                    os.rmdir(path)
                except OSError as exc:
                    if not any(is_inside(failed, path) for failed, _ in failures):
                        failures.append((path, exc))
            yield
    finally:
        for _, entries in stack:
            entries.close()


def remove_steps(fs_path, failures):
    """Remove a file, a symlink or a folder tree (in steps)."""
    try:
        st = os.lstat(fs_path)
    except FileNotFoundError:
        return
    except OSError as exc:
        failures.append((fs_path, exc))
        return
    if stat.S_ISDIR(st.st_mode):
        for _ in delete_steps(fs_path, failures):
            yield
    else:
        try:
            os.unlink(fs_path)
        except OSError as exc:
            failures.append((fs_path, exc))


def copy_file_steps(ctx, source, target, failures):
    """Copy one file, COPY_STEP_BYTES a step, through a temporary: all or nothing."""
    try:
        f = open(source, "rb")
    except OSError as exc:
        failures.append((source, exc))
        return
    temp = None
    try:
        temp = TempFile(os.path.dirname(target), ctx)
        while True:
            data = f.read(COPY_STEP_BYTES)
            if not data:
                break
            temp.write(data)
            yield
        discard_path(temp.publish(target, True))
        yield       # the publish (an fsync) ends a step: a folder of empty files
                    # must not copy hundreds of them in one turn
    except HTTPError as exc:
        failures.append((target, OSError(errno.EIO, exc.message)))
    except OSError as exc:
        failures.append((target, exc))
    finally:
        f.close()
        if temp is not None:
            temp.discard()


def copy_steps(ctx, source, target, depth, failures):
    """Copy a file or a folder tree (depth "infinity") in steps.

    Members obey the listing's rules: names that are not visible, private
    files, and symlinks are left out, except symlinks to files inside the
    root, copied as files (a link to a folder could loop).
    """
    config = ctx.config
    if not os.path.isdir(source):
        for _ in copy_file_steps(ctx, source, target, failures):
            yield
        return
    try:
        os.mkdir(target)
    except OSError as exc:
        failures.append((target, exc))
        return
    if depth != "infinity":
        return
    stack = [(os.scandir(source), target)]
    try:
        while stack:
            entries, into = stack[-1]
            count = 0
            for entry in entries:
                count += 1
                destination = os.path.join(into, entry.name)
                try:
                    if not is_shown(entry, config) or (entry.is_symlink() and entry.is_dir()):
                        continue
                    if entry.is_dir():
                        os.mkdir(destination)
                        stack.append((os.scandir(entry.path), destination))
                        break
                    if entry.is_file():
                        for _ in copy_file_steps(ctx, entry.path, destination, failures):
                            yield
                except OSError as exc:
                    failures.append((destination, exc))
                if count >= LISTING_STEP_ENTRIES:
                    break
            else:
                entries.close()
                stack.pop()
            yield
    finally:
        for entries, _ in stack:
            entries.close()


def failures_response(config, key, fs_root, failures, status):
    """status when nothing failed, else a 207 naming each member that failed."""
    if not failures:
        return Response(status)
    parts = [status_response_xml(config, member_key(key, fs_root, path),
                                 os.path.isdir(path), os_error_status(exc))
             for path, exc in failures[:MAX_LISTING_ENTRIES]]
    return Response(207, [("Content-Type", XML_CONTENT_TYPE)], multistatus(parts))


# -- WebDAV: the methods -------------------------------------------------------

def handle_dav_put(request, ctx):
    """PUT: the If header and locks, then the upload as before."""
    if ctx.config.upload and request.route.kind == "tree":
        key = tree_key(request.route.path)
        fs_path = resolve_path(ctx.config, key)
        check_write(request, ctx, key, member=not os.path.lexists(fs_path))
    return handle_write(request, ctx)


def handle_dav_post(request, ctx):
    """POST: a form adds members to a folder, which its locks protect."""
    if ctx.config.upload and request.route.kind == "tree":
        check_write(request, ctx, tree_key(request.route.path), member=True)
    return handle_write(request, ctx)


def handle_proppatch(request, ctx):
    """PROPPATCH: set and remove dead properties, all or none (RFC 4918 §9.2)."""
    require_writes(request, ctx)
    key = request_key(request)
    stat_resource(ctx.config, key)
    check_write(request, ctx, key)
    return read_dav_body(request, ctx, answer_proppatch)


def answer_proppatch(request, ctx, body):
    """The 207 of a PROPPATCH, its body read."""
    key = request_key(request)
    changes = parse_propertyupdate(parse_xml_body(body))
    _, st = stat_resource(ctx.config, key)
    props = collections.OrderedDict(ctx.dead_props.get(key, ()))
    statuses = collections.OrderedDict()
    for action, element in changes:
        if element.tag in LIVE_PROPERTY_TAGS:
            statuses[element.tag] = 403          # protected: the file system keeps them
        elif action == "set":
            props[element.tag] = xml_fragment(element)
            statuses.setdefault(element.tag, 200)
        else:
            props.pop(element.tag, None)
            statuses.setdefault(element.tag, 200)
    growth = properties_size(props) - properties_size(ctx.dead_props.get(key, {}))
    if 403 not in statuses.values() and (len(props) > MAX_DEAD_PROPERTIES_PER_RESOURCE or
                                         ctx.dead_bytes + growth > MAX_DEAD_PROPERTY_BYTES):
        statuses = collections.OrderedDict((tag, 507) for tag in statuses)
    failed = any(status != 200 for status in statuses.values())
    if failed:
        statuses = collections.OrderedDict(
            (tag, 424 if status == 200 else status) for tag, status in statuses.items())
    else:
        ctx.dead_bytes += growth
        if props:
            ctx.dead_props[key] = props
        else:
            ctx.dead_props.pop(key, None)
    groups = collections.OrderedDict()
    for tag, status in statuses.items():
        groups.setdefault(status, []).append(empty_element(tag))
    propstats = "".join("<D:propstat><D:prop>%s</D:prop><D:status>HTTP/1.1 %d %s</D:status>"
                        "</D:propstat>" % ("".join(tags), status, reason_phrase(status))
                        for status, tags in groups.items())
    return Response(207, [("Content-Type", XML_CONTENT_TYPE)], multistatus([
        "<D:response><D:href>%s</D:href>%s</D:response>\n"
        % (dav_href(ctx.config, key, stat.S_ISDIR(st.st_mode)), propstats)]))


def handle_mkcol(request, ctx):
    """MKCOL: 201; 405 when the name exists, 409 without a parent, 415 with a body."""
    require_writes(request, ctx)
    key = request_key(request)
    if parse_body_framing(request) != 0:
        raise HTTPError(415, "MKCOL takes no body.")
    fs_path = resolve_path(ctx.config, key)
    if os.path.lexists(fs_path):
        raise HTTPError(405, "Something of that name exists.",
                        [("Allow", allowed_methods(ctx.config))])
    if not os.path.isdir(os.path.dirname(fs_path)):
        raise HTTPError(409, "The parent folder does not exist.")
    check_write(request, ctx, key, member=True)
    try:
        os.mkdir(fs_path)
    except FileExistsError:
        raise HTTPError(405, "Something of that name exists.",
                        [("Allow", allowed_methods(ctx.config))])
    except OSError as exc:
        raise HTTPError(os_error_status(exc), "The folder could not be made.",
                        detail="cannot make %s: %s" % (fs_path, exc))
    return text_response(201, "Created %s/\n" % display_text(ctx.config.prefix + key),
                         headers=[("Location", url_quote(ctx.config.prefix + key) + "/")])


def handle_delete(request, ctx):
    """DELETE: 204; a folder goes with all its members, in steps (207 for failures)."""
    config = ctx.config
    if not (config.upload and config.overwrite):
        handle_not_allowed(request, ctx)
    key = request_key(request)
    if key == "/":
        raise HTTPError(403, "The served folder itself cannot be deleted.")
    fs_path = resolve_path(config, key)
    try:
        is_dir = stat.S_ISDIR(os.lstat(fs_path).st_mode)
    except OSError:
        raise HTTPError(404, "Not found.")
    parse_depth(request.get_header("depth"), allowed=("infinity",) if is_dir
                else ("0", "infinity"))
    check_write(request, ctx, key, member=True, subtree=is_dir)
    failures = []

    def answer():
        if not os.path.lexists(fs_path):
            forget_resource(ctx, key)
        return failures_response(config, key, fs_path, failures, 204)
    return TreeJob(remove_steps(fs_path, failures), answer)


def resolve_destination(request, ctx, key):
    """The Destination of a COPY or MOVE: (key, fs_path).

    Raises 400 without one, 502 for another server, 403 for a target
    outside the tree, not visible, the source itself or inside it.
    """
    value = request.get_header("destination")
    if not value:
        raise HTTPError(400, "COPY and MOVE need a Destination header.")
    target = url_key(request, ctx.config, value)
    if target is None:
        raise HTTPError(403, "The Destination is outside the served folder.")
    if target == "/" or key_within(target, key) or key_within(key, target):
        raise HTTPError(403, "The Destination is the source, holds it or lies inside it.")
    try:
        return target, resolve_path(ctx.config, target)
    except HTTPError as exc:
        if exc.status == 404:
            raise HTTPError(403, "The Destination is outside the served folder.")
        raise


def handle_copy_move(request, ctx):
    """COPY and MOVE: 201 for a new target, 204 for a replaced one (RFC 4918 §9.8, 9.9)."""
    require_writes(request, ctx)
    config = ctx.config
    move = request.method == "MOVE"
    key = request_key(request)
    fs_path = resolve_path(config, key)
    try:
        st = os.lstat(fs_path) if move else os.stat(fs_path)
    except OSError:
        raise HTTPError(404, "Not found.")
    is_dir = stat.S_ISDIR(st.st_mode)
    depth = parse_depth(request.get_header("depth"), allowed=("infinity",) if move and is_dir
                        else ("0", "infinity"))
    overwrite = (request.get_header("overwrite") or "T").strip().upper()
    if overwrite not in ("T", "F"):
        raise HTTPError(400, "Overwrite must be T or F.")
    target, target_fs = resolve_destination(request, ctx, key)
    if not os.path.isdir(os.path.dirname(target_fs)):
        raise HTTPError(409, "The Destination's folder does not exist.")
    exists = os.path.lexists(target_fs)
    if exists and overwrite == "F":
        raise HTTPError(412, "The Destination exists (Overwrite: F).")
    if exists and not config.overwrite:
        raise HTTPError(409, "The Destination exists; the server was not started with "
                             "--overwrite.")
    tokens = check_if_header(request, ctx, key)
    if move:                            # a COPY leaves its source as it is, locked or not
        check_locks(ctx, tokens, key, member=True, subtree=is_dir)
    check_locks(ctx, tokens, target, member=True, subtree=exists)
    failures = []

    def answer():
        if not failures:
            forget_resource(ctx, target)
            carry_properties(ctx, key, target, move)
            if move:
                forget_resource(ctx, key)
        return failures_response(config, target, target_fs, failures, 204 if exists else 201)
    if move:
        steps = move_steps(ctx, fs_path, target_fs, exists, failures)
    else:
        steps = chain_steps(remove_steps(target_fs, failures) if exists else iter(()),
                            copy_steps(ctx, fs_path, target_fs, depth, failures), failures)
    return TreeJob(steps, answer)


def chain_steps(first, then, failures):
    """Run the steps of first, then, if nothing failed, those of then."""
    for _ in first:
        yield
    if not failures:
        for _ in then:
            yield


def move_steps(ctx, source, target, exists, failures):
    """MOVE in steps: a rename where it can; a reader sees the old target or the new.

    A file replaces a file in one os.replace.  Any other replacement puts
    the old target aside under a hidden name first, renames the source in,
    then removes the old one in steps.  Across file systems: copy, then delete.
    """
    aside = None
    try:
        if exists and not (os.path.isfile(source) and os.path.isfile(target)
                           and not os.path.islink(target)):
            aside = temp_name(os.path.dirname(target), "old-")
            os.rename(target, aside)
        os.replace(source, target)
    except OSError as exc:
        if aside is not None and not os.path.lexists(target):
            os.rename(aside, target)
            aside = None
        if exc.errno != errno.EXDEV:
            failures.append((source, exc))
            return
        for _ in chain_steps(remove_steps(target, failures) if exists else iter(()),
                             copy_steps(ctx, source, target, "infinity", failures), failures):
            yield
        if not failures:
            for _ in remove_steps(source, failures):
                yield
        return
    if aside is not None:
        leftovers = []
        for _ in remove_steps(aside, leftovers):
            yield
        for path, exc in leftovers[:1]:     # the move is done; say what stayed behind
            ctx.log_error("cannot remove %s after a move: %s" % (path, exc))


def lock_body(config, locks):
    """The body of a LOCK answer: the lockdiscovery of the given locks."""
    return (XML_DECLARATION + '<D:prop xmlns:D="DAV:"><D:lockdiscovery>%s</D:lockdiscovery>'
            '</D:prop>\n' % "".join(lock_xml(config, lock) for lock in locks)).encode("utf-8")


def handle_lock(request, ctx):
    """LOCK: take or refresh a write lock (its body is read first)."""
    require_writes(request, ctx)
    request_key(request)
    return read_dav_body(request, ctx, answer_lock)


def answer_lock(request, ctx, body):
    """LOCK with its body read: a refresh, or a new exclusive or shared lock.

    A LOCK on a name that does not exist creates an empty file (RFC 4918
    §7.3) and answers 201.
    """
    config = ctx.config
    key = request_key(request)
    info = parse_lockinfo(parse_xml_body(body))
    timeout = parse_timeout(request.get_header("timeout"))
    headers = [("Content-Type", XML_CONTENT_TYPE)]
    if info is None:
        value = request.get_header("if")
        if value is None:
            raise HTTPError(400, "A lock refresh names its lock token in an If header.")
        tokens = if_tokens(parse_if_header(value))
        locks = [lock for lock in locks_covering(ctx, key) if lock.token in tokens]
        if not locks:
            raise DAVError(412, "No lock on this resource has that token.",
                           "lock-token-matches-request-uri")
        for lock in locks:
            lock.refresh(timeout)
        return Response(200, headers, lock_body(config, locks))
    scope, owner = info
    if len(owner) > MAX_LOCK_OWNER_BYTES:
        raise HTTPError(400, "A lock's owner may hold at most %d bytes." % MAX_LOCK_OWNER_BYTES)
    depth = parse_depth(request.get_header("depth"), allowed=("0", "infinity"))
    fs_path = resolve_path(config, key)
    tokens = check_if_header(request, ctx, key)
    held = locks_covering(ctx, key) + (locks_below(ctx, key) if depth == "infinity" else [])
    if any(scope == "exclusive" or lock.scope == "exclusive" for lock in held):
        raise DAVError(423, "%s is locked already." % display_text(key),
                       "no-conflicting-lock")
    sweep_locks(ctx, time.monotonic())
    if len(ctx.locks) >= MAX_LOCKS:
        raise HTTPError(503, "Too many locks are held; try again later.",
                        [("Retry-After", "60")])
    created = False
    if not os.path.lexists(fs_path):
        if not os.path.isdir(os.path.dirname(fs_path)):
            raise HTTPError(409, "The parent folder does not exist.")
        check_locks(ctx, tokens, key, member=True)
        try:
            os.close(os.open(fs_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            created = True
        except FileExistsError:
            pass
        except OSError as exc:
            raise HTTPError(os_error_status(exc), "The file could not be made.",
                            detail="cannot make %s: %s" % (fs_path, exc))
    lock = Lock(key, depth, scope, owner, timeout)
    add_lock(ctx, lock)
    return Response(201 if created else 200, headers + [("Lock-Token", "<%s>" % lock.token)],
                    lock_body(config, [lock]))


def handle_unlock(request, ctx):
    """UNLOCK: 204 with the token of a lock on the resource, else 409."""
    require_writes(request, ctx)
    key = request_key(request)
    token = (request.get_header("lock-token") or "").strip()
    if not (token.startswith("<") and token.endswith(">")):
        raise HTTPError(400, "UNLOCK needs a Lock-Token header: <token>.")
    lock = ctx.locks.get(token[1:-1])
    if lock is None or lock.expires <= time.monotonic() or not lock.covers(key):
        raise DAVError(409, "No lock on this resource has that token.",
                       "lock-token-matches-request-uri")
    drop_lock(ctx, lock)
    return Response(204)


# -- dispatch: every method to its handler -----------------------------------

HANDLERS = {
    "GET": handle_get,
    "HEAD": handle_get,
    "OPTIONS": handle_options,
    "PUT": handle_dav_put,
    "POST": handle_dav_post,
    "PROPFIND": handle_propfind,
    "PROPPATCH": handle_proppatch,
    "MKCOL": handle_mkcol,
    "DELETE": handle_delete,
    "COPY": handle_copy_move,
    "MOVE": handle_copy_move,
    "LOCK": handle_lock,
    "UNLOCK": handle_unlock,
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
    if "#" in request.target and request.method in WRITE_METHODS:
        raise HTTPError(400, "A fragment (#) has no place in the target of a write.")
    if request.route.kind == "tree":
        check_path_limits(request.route.path)   # for every method, not only those that read
    try:
        return (handler or handle_not_allowed)(request, ctx)
    except DAVError as exc:
        return dav_error_response(exc, request, ctx)


# ---------------------------------------------------------------------------
# 12. Transport and connection: the per-client state machine
# ---------------------------------------------------------------------------

SENDFILE_UNSUPPORTED = frozenset([errno.EINVAL, errno.ENOSYS, errno.ENOTSUP,
                                  getattr(errno, "EOPNOTSUPP", errno.ENOTSUP),
                                  errno.ENOTSOCK])
# A client that closes or resets mid-response: a cancelled download, a video
# player that drops a connection to seek.  Browsers do it on purpose; no fault.
CLIENT_GONE_ERRNOS = frozenset([errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED,
                                errno.ENOTCONN, errno.ESHUTDOWN, errno.ETIMEDOUT,
                                errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN])


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

    def recv_into(self, buffer, size):
        """Up to size bytes into the start of buffer; the count, 0 when the
        peer has shut its side."""
        try:
            return self.sock.recv_into(buffer, size)
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

    def recv_into(self, buffer, size):
        """Up to size decrypted bytes into the start of buffer; the count, 0 at the end."""
        data = self.recv(size)
        buffer[:len(data)] = data
        return len(data)

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

    __slots__ = ("server", "ctx", "config", "sock", "transport", "client", "local", "state",
                 "events", "blocked", "inbuf", "fresh", "out", "parts", "peer_eof", "unparsed",
                 "request", "head", "response", "reader", "sink", "body_received",
                 "chunked_out", "close_after", "sent", "answered", "head_bytes", "deadline",
                 "turn", "budget", "steps")   # a thousand clients: no dict each

    def __init__(self, server, sock, addr):
        self.server = server
        self.ctx = server.ctx
        self.config = server.config
        self.sock = sock              # the selector's key
        self.transport = SocketTransport(sock)
        self.client = format_client(addr)
        self.local = format_client(sock.getsockname())   # a page naming its own URL needs it
        self.state = None
        self.events = 0               # what the selector watches for now
        self.blocked = 0              # what the last transport call waited for
        self.inbuf = bytearray()
        self.fresh = 0                # body bytes read into the server's buffer, not yet taken
        self.out = bytearray()
        self.parts = collections.deque()
        self.peer_eof = False
        self.unparsed = False         # inbuf may hold a request that has not had its turn
        self.request = None
        self.head = None              # the request head's bytes, while an Answer may be kept
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
        if self.state == READING_HEAD and len(self.inbuf) > MAX_HEADER_BYTES:
            backlogged = True                 # pipelined heads enough: TCP holds the rest
        if self.state in (READING_HEAD, READING_BODY) and not backlogged:
            buffer = self.server.read_buffer  # one for all: no new object per read
            try:
                n = self.transport.recv_into(
                    buffer, BODY_RECV_BYTES if self.state == READING_BODY else RECV_BYTES)
            except WouldBlock:
                return
            except OSError:
                self.abort("connection reset")
                return
            if not n:
                self.peer_eof = True
            else:
                if self.state == READING_HEAD and not self.inbuf:
                    self.arm(self.config.head_timeout)   # from the first byte, not the last
                if self.state == READING_BODY and not self.inbuf and not self.out:
                    self.fresh = n            # read_body takes it from there, in this slice
                else:
                    with memoryview(buffer) as view:
                        self.inbuf += view[:n]
        self.advance()
        if self.fresh:                        # not taken (the slice ended early): keep it
            with memoryview(self.server.read_buffer) as view:
                self.inbuf += view[:self.fresh]
            self.fresh = 0

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
        except OSError as exc:
            if is_client_gone(exc):
                self.abort("client closed")   # the access-log line says it, quietly
            else:                             # a file that failed: the owner should know
                during = display_text(self.request.request_line()) \
                    if self.request is not None else self.client
                self.server.log_error("cut %s: %s" % (during, describe_exception(exc)))
                self.abort("server error")
        self.server.update_events(self)

    def read_head(self):
        """READING_HEAD: parse a head when one is complete.  Returns progress."""
        if not self.inbuf:
            if self.peer_eof:
                self.close()
            return False                  # nothing yet: the usual case after a response
        self.unparsed = False
        if self.ctx.answers and not self.peer_eof and not self.server.stopping:
            answer = find_answer(self.ctx, self.inbuf)
            if answer is not None:
                self.answer_again(answer)
                return True
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
        if consumed <= ANSWER_HEAD_BYTES and self.inbuf.endswith(b"\r\n\r\n", 0, consumed):
            self.head = bytes(self.inbuf[:consumed])
        else:
            self.head = None
        del self.inbuf[:consumed]
        request.client = self.client
        request.local = self.local
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
            self.server.log_error("500 for %s: %s" % (display_text(request.request_line()),
                                                      describe_exception(exc)))
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
                self.arm(self.config.body_timeout)    # a long job is not a stalled body
            elif not self.reader.done:
                if self.fresh:                # just read, still in the server's buffer
                    source, self.fresh = memoryview(self.server.read_buffer)[:self.fresh], 0
                elif self.inbuf:
                    source = memoryview(self.inbuf)
                else:
                    if self.peer_eof:
                        self.abort("client went away during the body")
                    return False
                with source as view:          # the sink writes it out, uncopied
                    payload = self.reader.feed(view)
                    if payload:
                        self.body_received += len(payload)
                        limit = self.config.max_upload
                        if limit is not None and self.body_received > limit:
                            raise HTTPError(413, "The upload is larger than %d bytes." % limit)
                        self.sink.write(payload)
                    del payload
                del self.inbuf[:]
                if self.reader.done:
                    self.inbuf += self.reader.unused
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
            self.server.log_error("500 for %s: cannot store the upload: %s"
                                  % (display_text(self.request.request_line()),
                                     describe_exception(exc)))
            self.fail(HTTPError(500, "The upload could not be stored."))
            return True
        self.sink = None
        response.log_extra = " upload=%d" % self.body_received
        self.respond(response)
        return True

    def respond_error(self, error, close=False):
        """Answer an HTTPError (logging its detail: the OS error and path)."""
        if error.detail:
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
        if response.source is not None and self.head is not None and request.user is None \
                and self.reader.done and not self.server.stopping and not peer_done:
            # Nothing here depended on more than the head and the file: keep it.
            remember_answer(self.ctx, self.head, Answer(
                request, len(self.head), response.source, self.config.root, head,
                b"" if request.method == "HEAD" else b"".join(response.body), self.close_after))
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

    def answer_again(self, answer):
        """Send a kept Answer (see Answer): what respond() would queue for its head."""
        request = answer.request
        del self.inbuf[:answer.head_length]
        self.request = request
        self.response = Response(200)
        self.close_after = answer.close
        self.chunked_out = False
        head = answer.before_date + self.server.http_date().encode("ascii") + answer.after_date
        self.out += head
        self.out += answer.body
        self.head_bytes = len(head)
        self.sent = 0
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


def is_client_gone(exc):
    """Whether an OSError means the client closed or reset the connection."""
    if ssl is not None and isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return True
    return isinstance(exc, ConnectionError) or exc.errno in CLIENT_GONE_ERRNOS


def describe_exception(exc):
    """One log line's worth of an unexpected exception: for an OSError its
    class, errno, message and file name ("PermissionError: [Errno 13]
    Permission denied: '/srv/a'"), which repr() would leave out."""
    if isinstance(exc, OSError):
        return "%s: %s" % (exc.__class__.__name__, exc)
    return repr(exc)


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
        self.ctx.log_error = self.log_error
        self._date_cache = (0, "")
        # Every read lands here first.  Anonymous memory: a page counts in the
        # server's size only once a read has used it (a bytearray is zeroed).
        self.read_buffer = mmap.mmap(-1, max(RECV_BYTES, BODY_RECV_BYTES))
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
        write_log_line(self.log_stream, line)

    def log_error(self, line):
        """Write one error line (even when quiet)."""
        write_log_line(self.log_stream, "minihttpd: " + line)

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
        sweep_locks(self.ctx, now)
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

    def request_stop(self, signum=None):
        """Stop accepting; let responses in flight finish for a while.

        Says at once what it waits for, so a Ctrl+C that seems to do
        nothing for SHUTDOWN_GRACE_S is never a mystery.
        """
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
        in_flight = describe_in_flight(self.connections)
        if not in_flight:
            self.log("Stopping.")
            return
        again = "Ctrl+C again" if signum == signal.SIGINT else "send SIGTERM again"
        self.log("Stopping: finishing %s, up to %g s; %s to quit now."
                 % (in_flight, SHUTDOWN_GRACE_S, again))

    def begin_turn(self):
        """Count a new turn (select has returned): connections and handlers see it."""
        self.turn += 1
        self.ctx.turn = self.turn

    def run_slice(self, conn, step):
        """Run one event handler of a connection; a bug closes it, not the loop."""
        try:
            step()
        except Exception as exc:  # one connection's bug never stops the loop
            during = " (%s)" % display_text(conn.request.request_line()) \
                if conn.request is not None else ""
            self.log_error("closing %s after an internal error%s: %s"
                           % (conn.client, during, describe_exception(exc)))
            conn.close()

    def serve(self, signals):
        """Run until stopped; returns the exit code.

        signals is the list install_stop_signals appends to: the first
        signal stops gracefully (exit 0 once the connections are done or
        SHUTDOWN_GRACE_S has passed), a second quits at once (128 + its
        number, as a shell reports a process a signal ended).
        """
        exit_code = 0
        while True:
            if signals and not self.stopping:
                self.request_stop(signals[0])
            if len(signals) > 1:
                exit_code = 128 + signals[1]
                break
            if self.stopping:
                if not self.connections or time.monotonic() >= self.stop_deadline:
                    break
            self.apply_changes()
            if self.ready:
                timeout = 0
            else:
                timeout = max(0.0, min(self.next_sweep - time.monotonic(), 0.5))
            events = self.selector.select(timeout)
            self.begin_turn()
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
        unfinished = describe_in_flight(self.connections)
        for conn in list(self.connections):
            conn.abort("server stopping")
        if unfinished:
            self.log("Stopped %s: cut %s." % ("at once" if exit_code else "after %g s"
                                              % SHUTDOWN_GRACE_S, unfinished))
        self.selector.close()
        return exit_code


def describe_in_flight(connections):
    """What a stop waits for, e.g. "2 downloads and 1 upload"; "" for nothing.

    A request still arriving counts as a download: it will be answered.
    """
    downloads = uploads = 0
    for conn in connections:
        if conn.state == READING_BODY:
            uploads += 1
        elif conn.state in (READING_HEAD, WRITING):
            downloads += 1
    parts = []
    for count, word in ((downloads, "download"), (uploads, "upload")):
        if count:
            parts.append("%d %s%s" % (count, word, "" if count == 1 else "s"))
    return " and ".join(parts)


def install_stop_signals(signals):
    """Make SIGINT and SIGTERM append their number to signals (Server.serve reads it).

    The handler only takes note: the loop, woken by install_wakeup, acts
    at its next turn, where stopping is safe (an upload aborted there
    leaves no temporary).  A third signal means the loop is not reacting,
    and the handler leaves by itself.
    """
    def on_signal(signum, frame):
        """Note a request to stop."""
        signals.append(signum)
        if len(signals) > 2:
            os._exit(128 + signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


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

    def fail(self, message):
        """Print "minihttpd: error: MESSAGE" and exit 1: the arguments are well
        formed, but this machine cannot do what they ask (as a taken port)."""
        self.exit(1, "%s: error: %s\n" % (self.prog, message))


def build_arg_parser():
    """The command-line interface."""
    parser = ArgumentParser(
        prog="minihttpd",
        description="Serve a folder over HTTP/1.1: keep-alive, ranges, listings, "
                    "gzip, zip and tar of folders, WebDAV and (with -u) uploads. One file, "
                    "standard library only.",
        epilog="Made for trusted networks: anyone who can reach the port can read "
               "the folder (and write to it with -u).")
    parser.add_argument("-d", "--directory", default=".", metavar="DIR",
                        help="folder to serve (default: the current folder)")
    parser.add_argument("-p", "--port", type=port_number, default=None, metavar="PORT",
                        help="port to listen on (default %d, falling back to %d, then any "
                             "free port; 0 picks a free port)" % (DEFAULT_PORT, FALLBACK_PORT))
    parser.add_argument("-b", "--bind", default=None, metavar="ADDR",
                        help="address to listen on (default: all interfaces, IPv6 and IPv4)")
    parser.add_argument("--qr", action="store_true",
                        help="also print the address to type as a QR code, for a phone's camera")
    parser.add_argument("--no-listing", action="store_true",
                        help="answer 403 for folders without index.html instead of listing them")
    parser.add_argument("--hidden", action="store_true",
                        help="serve and list dotfiles (hidden by default: 404, unlisted)")
    parser.add_argument("--follow-symlinks", action="store_true",
                        help="serve symlinks that point outside the folder (404 by default)")
    parser.add_argument("-u", "--upload", action="store_true",
                        help="accept uploads: PUT/POST to a file URL, or a browser form "
                             "posted to a folder; and WebDAV writes (MKCOL, COPY, MOVE, "
                             "PROPPATCH, LOCK): the share can be mounted as a drive")
    parser.add_argument("--overwrite", action="store_true",
                        help="let uploads replace existing files (atomically; 409 otherwise), "
                             "and WebDAV clients delete and replace files and folders")
    parser.add_argument("--rename", action="store_true",
                        help="save a form's files whose names are taken as \"name (1).ext\", "
                             "\"name (2).ext\", ... (a PUT still names its target exactly)")
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
    parser.add_argument("--no-archive", action="store_true",
                        help="turn off folder downloads (FOLDER/?download=zip or tar, a whole "
                             "tree streamed as one archive); they then get 404. --no-listing "
                             "turns them off too (403)")
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


def check_folder(root, shown, upload):
    """Why the server cannot serve the folder root; None when it can.

    It must exist, be a folder, and be listable and enterable; with
    uploads, writable too.  shown is the folder as the user typed it.
    Checked at start-up so a mistake is one line now, not a 403 on a
    phone later.  os.access asks the kernel with this process's rights
    (root's included); it gives no errno, so a read-only file system is
    told apart with statvfs.
    """
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return "folder not found: %s" % shown
    except OSError as exc:
        return "cannot reach folder %s: %s" % (shown, exc.strerror or exc)
    if not stat.S_ISDIR(st.st_mode):
        return "not a folder: %s" % shown
    try:
        with os.scandir(root) as entries:
            next(entries, None)
    except OSError as exc:
        return "cannot list folder %s: %s" % (shown, exc.strerror or exc)
    if not os.access(root, os.X_OK):
        return "cannot enter folder %s: %s" % (shown, os.strerror(errno.EACCES))
    if upload and not os.access(root, os.W_OK | os.X_OK):
        reason = errno.EACCES
        try:
            if os.statvfs(root).f_flag & getattr(os, "ST_RDONLY", 1):
                reason = errno.EROFS
        except (AttributeError, OSError):    # no statvfs on Windows
            pass
        return "cannot write into folder %s (needed by -u): %s" % (shown, os.strerror(reason))
    return None


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
    global ssl
    try:
        import ssl                      # absent from some minimal Python builds
    except ImportError:
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


def parse_if_inet6(text, up=None):
    """Global IPv6 addresses in the text of Linux's /proc/net/if_inet6, stable ones first.

    A line holds the address (32 hex digits), the interface index, prefix
    length, scope, flags (all hex) and the interface name.  Kept: scope 0
    (global; loopback is 0x10, link-local 0x20), on an interface named in
    up (None: any), with duplicate detection passed.  Lines that do not
    parse are skipped.
    """
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 6 or len(fields[0]) != 32:
            continue
        try:
            addr = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
            scope, flags = int(fields[3], 16), int(fields[4], 16)
        except ValueError:
            continue
        if scope == 0 and not flags & IFA_F_UNUSABLE and (up is None or fields[5] in up):
            found.append((bool(flags & IFA_F_TRANSIENT), str(addr)))
    return [addr for _, addr in sorted(found, key=operator.itemgetter(0))]


def usable_lan_addresses(candidates, preferred=()):
    """The addresses others can reach this machine at: IPv4 first, preferred first.

    candidates and preferred are address strings (a "%zone" is ignored).
    Loopback, link-local, unspecified, multicast, IPv4-mapped, malformed
    and repeated ones are dropped; the others keep their order within
    their family, except that those in preferred (the default routes'
    source addresses) lead it.
    """
    def parse(text):
        try:
            return ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            return None
    leading = set(parse(text) for text in preferred)
    found = []
    for addr in map(parse, candidates):
        if addr is None or addr in found or addr.is_loopback or addr.is_link_local \
                or addr.is_unspecified or addr.is_multicast \
                or getattr(addr, "ipv4_mapped", None):
            continue
        found.append(addr)
    found.sort(key=lambda addr: (addr.version, addr not in leading))   # stable
    return [str(addr) for addr in found]


def interface_addresses():
    """(IPv4, IPv6) addresses of the interfaces that are up, from the Linux kernel.

    SIOCGIFFLAGS and SIOCGIFADDR for each name in if_nameindex(), and
    /proc/net/if_inet6; nothing is sent.  ([], []) elsewhere.
    """
    if fcntl is None or not sys.platform.startswith("linux"):
        return [], []
    ipv4, up = [], set()
    try:
        names = [name for _, name in socket.if_nameindex()]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return [], []
    with sock:
        for name in names:
            ifreq = os.fsencode(name)[:15].ljust(IFREQ_BYTES, b"\0")
            try:
                flags = int.from_bytes(fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, ifreq)[16:18],
                                       sys.byteorder)
                if flags & IFF_UP_RUNNING != IFF_UP_RUNNING:
                    continue
                up.add(name)
                ipv4.append(socket.inet_ntoa(
                    fcntl.ioctl(sock.fileno(), SIOCGIFADDR, ifreq)[20:24]))
            except OSError:             # gone since it was listed, or no IPv4 address
                continue
    try:
        with open("/proc/net/if_inet6", "r") as f:
            text = f.read()
    except OSError:
        text = ""
    return ipv4, parse_if_inet6(text, up)


def route_addresses():
    """The source addresses of the default routes, IPv4 and IPv6; sends nothing."""
    found = []
    for addr in ROUTE_PROBES:
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET,
                                 socket.SOCK_DGRAM)
        except OSError:
            continue
        try:
            sock.connect(addr)          # UDP: only chooses a route
            found.append(sock.getsockname()[0])
        except OSError:                 # no route that way
            pass
        finally:
            sock.close()
    return found


def lan_addresses():
    """Addresses other devices can reach this machine at, best first; sends no traffic.

    On Linux, every interface that is up; the default route's own address
    leads (before a container bridge, say).  Elsewhere, or when that finds
    none, the default routes' source addresses alone.
    """
    routes = route_addresses()
    ipv4, ipv6 = interface_addresses()
    return usable_lan_addresses(ipv4 + ipv6, routes) or usable_lan_addresses(routes)


def startup_hosts(bound, v6only, lan):
    """(host for the first line, other hosts for the network, loopback host or None).

    bound is the listener's address.  A wildcard names no machine one
    could type, so it is never shown: the first LAN address of the
    families it accepts stands for it, or loopback when there is none.
    """
    try:
        wildcard = ipaddress.ip_address(bound.split("%")[0]).is_unspecified
    except ValueError:
        wildcard = False
    if not wildcard:
        return bound, [], None
    if ":" not in bound:
        lan, loopback = [a for a in lan if ":" not in a], "127.0.0.1"
    elif v6only:
        lan, loopback = [a for a in lan if ":" in a], "::1"
    else:
        loopback = "127.0.0.1"
    if not lan:
        return loopback, [], None
    return lan[0], lan[1:], loopback


def startup_lines(root, scheme, port, prefix, hosts, wildcard):
    """What start-up prints: the contract line, then the other URLs to type, or a hint.

    hosts is what startup_hosts() returned; wildcard says whether the
    listener took every address (only then can no address be a problem).
    """
    host, others, loopback = hosts
    # The first line is a contract: scripts and tests read the port from it.
    lines = ["Serving %s on %s://%s:%d/" % (root, scheme, url_host(host), port)]
    if prefix:
        lines.append("  the folder is under %s/" % prefix)
    for addr in others:
        lines.append("  on the network:  %s://%s:%d%s/" % (scheme, url_host(addr), port, prefix))
    if loopback:
        lines.append("  on this machine: %s://%s:%d%s/"
                     % (scheme, url_host(loopback), port, prefix))
    elif wildcard:
        lines.append("  no network address found: other devices cannot reach it (not "
                     "connected to a network? a firewall may also block port %d)" % port)
    return lines


def is_v6only(sock):
    """Whether a listener takes IPv6 only (an IPv6 socket without IPv4-mapped clients)."""
    try:
        return sock.family == socket.AF_INET6 and \
            bool(sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
    except (OSError, AttributeError):
        return True


def write_terminal_text(text):
    """Write text to stdout, as UTF-8 where its encoding cannot hold it (3.6 in the C locale)."""
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:
        sys.stdout.flush()
        sys.stdout.buffer.write(text.encode("utf-8"))


def url_host(host):
    """A host for a URL: IPv6 addresses in brackets."""
    return "[%s]" % host if ":" in host else host


def main(argv=None):
    """Parse arguments, open the listener, serve until stopped.  Returns the exit code."""
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    root = os.path.abspath(args.directory)
    problem = check_folder(root, args.directory, args.upload)
    if problem:
        parser.fail(problem)
    if args.overwrite and not args.upload:
        parser.error("--overwrite needs -u/--upload")
    if args.rename and not args.upload:
        parser.error("--rename needs -u/--upload")
    if args.rename and args.overwrite:
        parser.error("--rename and --overwrite exclude each other: keep both files, or replace")
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
                    rename=args.rename,
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
    bound, port = listener.getsockname()[:2]
    wildcard = bound in ("::", "0.0.0.0")
    hosts = startup_hosts(bound, is_v6only(listener), lan_addresses() if wildcard else [])
    scheme = "https" if config.tls else "http"
    for line in startup_lines(root, scheme, port, config.prefix, hosts, wildcard):
        sys.stdout.write(line + "\n")
    if args.qr:                         # the first line's URL, into the folder
        url = "%s://%s:%d%s/" % (scheme, url_host(hosts[0]), port, config.prefix)
        try:
            write_terminal_text(qr_terminal(qr_matrix(url.encode("utf-8"))))
        except ValueError:
            sys.stderr.write("minihttpd: %s is too long for a QR code\n" % url)
    sys.stdout.flush()

    server = Server(config, listener, tls_context=tls_context)
    signals = []
    install_stop_signals(signals)
    install_wakeup(server)
    try:
        return server.serve(signals)
    except KeyboardInterrupt:
        return 130


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
