#!/usr/bin/env python3
"""bench_minihttpd: minihttpd side by side with other file servers, in one sitting.

    python3 bench_minihttpd.py                  # full run, about 10 minutes
    python3 bench_minihttpd.py --quick          # smoke run, under 2 minutes
    python3 bench_minihttpd.py --json out.json  # also write the results
    python3 bench_minihttpd.py --only nginx,loop --python python3.12

It builds a fixture tree in a temporary folder (a 1 KiB file, a large file,
a folder of 1000 entries), then starts each server in turn on 127.0.0.1 and
runs the same scenarios against it: minihttpd, `python3 -m http.server`
(always), nginx with one worker, Caddy and darkhttpd (when installed), and
two ceiling references written below and run with the same Python: a
minimal selectors loop answering a fixed 1 KiB response, and a minimal
`recv_into` + `os.write` upload sink.  The server runs pinned to one CPU
with `taskset`, the load (wrk, curl, this script) on another.  At the end
it prints one Markdown table: a row per scenario, a column per server, and
minihttpd's ratio to each (minihttpd / peer).

Needs Linux and `wrk` (Debian package wrk; without it the script says so
and exits 2, since most scenarios are wrk runs).  Uses `curl` for uploads
and `taskset` for pinning when present, and says so when they are missing.
Peers that are not installed are skipped and listed under the table.

Safe to run on a shared machine: every load goes only to 127.0.0.1 and is
bounded in count and time, and every process this script starts is killed
by its PID on exit, on Ctrl+C and on errors.  The access logs that cannot
be turned off (http.server, darkhttpd) go to /dev/null.

Map of this file:
   1. Constants
   2. Reference servers   (code strings run with the chosen Python)
   3. Processes           (start, pin, stop by PID, memory from /proc)
   4. Fixture tree
   5. Servers             (how to start each one and find its port)
   6. Load                (wrk, slowloris, curl uploads)
   7. Scenarios           (one server through every scenario)
   8. Report              (the table and the JSON)
   9. Command line
"""

import argparse
import ctypes
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import typing

try:
    import resource
except ImportError:                     # not on Windows: main() then says Linux is needed
    resource = None

# ---------------------------------------------------------------------------
# 1. Constants
# ---------------------------------------------------------------------------

HOST = "127.0.0.1"                      # every load goes here and nowhere else
HERE = os.path.dirname(os.path.abspath(__file__))
MINIHTTPD = os.path.join(HERE, "minihttpd.py")
SERVING_LINE = re.compile(r"Serving .* on http://[^ ]+:(\d+)/")   # minihttpd's start-up contract

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

SMALL_FILE_BYTES = 1 * KIB
LISTING_ENTRIES = 1000
KEEPALIVE_CONNS = 64
LARGE_CONNS = 4
LISTING_CONNS = 16
MANY_CONNS = 1000
WRK_TIMEOUT = "2s"                      # wrk's default, named so "timeouts" has a meaning
WRK_SLACK_S = 30                        # on top of -d before a wrk run is killed
SETTLE_S = 0.5                          # pause between runs so sockets and caches settle
IDLE_SETTLE_S = 1.0                     # after start-up, before idle memory is read
START_TIMEOUT_S = 15                    # a server that answers nothing by then has failed
STOP_GRACE_S = 3                        # SIGTERM, then this long, then SIGKILL
PROBE_INTERVAL_S = 0.002                # start-up probe period: 2 ms resolution
SLOWLORIS_CONNECT_BUDGET_S = 20         # opening the slow sockets stops after this
NORMAL_REQUEST_TIMEOUT_S = 5            # one normal request during slowloris
UPLOAD_RUNS = 5                         # rounds of uploads; each server's median counts
UPLOAD_SLACK_S = 120                    # on top of the time at 10 MiB/s before curl is cut
TOOL_TIMEOUT_S = 10                     # version queries and the like
WANTED_OPEN_FILES = 8192                # 1000 wrk sockets + 1000 server sockets + slack
WRITE_BLOCK_BYTES = 1 * MIB             # the large fixture is written in blocks of this
UPLOAD_OK = {"put": {200, 201, 204}, "form": {200, 201, 303}}   # 303: minihttpd's form reply


class Profile(typing.NamedTuple):
    """How big and how long: one for the full run, one for --quick."""
    wrk_seconds: int
    large_bytes: int
    upload_bytes: int
    slowloris_sockets: int
    normal_requests: int
    startup_runs: int                   # start-up is the median of this many starts


FULL = Profile(wrk_seconds=10, large_bytes=256 * MIB, upload_bytes=1 * GIB,
               slowloris_sockets=500, normal_requests=20, startup_runs=7)
QUICK = Profile(wrk_seconds=2, large_bytes=64 * MIB, upload_bytes=100 * MIB,
                slowloris_sockets=100, normal_requests=20, startup_runs=3)


class Metric(typing.NamedTuple):
    """One row of the table; `better` is "higher", "lower" or None (no ratio).
    A row only minihttpd has is compared with the peers' row `against`."""
    key: str
    label: str
    unit: str
    better: typing.Optional[str]
    against: typing.Optional[str] = None


def build_metrics(profile):
    """The table's rows, in order, labelled with this run's sizes."""
    return [
        Metric("small_keepalive", "1 KiB, keep-alive, %d conns" % KEEPALIVE_CONNS,
               "req/s", "higher"),
        Metric("small_close", "1 KiB, Connection: close, %d conns" % KEEPALIVE_CONNS,
               "req/s", "higher"),
        Metric("large", "%s file, %d conns" % (format_size(profile.large_bytes), LARGE_CONNS),
               "MiB/s", "higher"),
        Metric("listing", "%d-entry listing, %d conns" % (LISTING_ENTRIES, LISTING_CONNS),
               "req/s", "higher"),
        Metric("many", "1 KiB, %d keep-alive conns" % MANY_CONNS, "req/s", "higher"),
        Metric("many_errors", "  socket errors (connect+read+write)", "count", None),
        Metric("many_timeouts", "  timeouts (> %s)" % WRK_TIMEOUT, "count", None),
        Metric("slowloris_ok", "%d slowloris sockets: normal requests OK (of %d)"
               % (profile.slowloris_sockets, profile.normal_requests), "count", None),
        Metric("slowloris_median", "  median latency", "ms", "lower"),
        Metric("put", "upload %s by PUT (median of %d rounds)"
               % (format_size(profile.upload_bytes), UPLOAD_RUNS), "MiB/s", "higher"),
        Metric("put_peak", "  server peak memory", "MiB", "lower"),
        Metric("form", "upload %s as multipart form (median of %d rounds)"
               % (format_size(profile.upload_bytes), UPLOAD_RUNS), "MiB/s", "higher"),
        Metric("form_peak", "  server peak memory", "MiB", "lower"),
        Metric("startup", "start-up to first response (median of %d)" % profile.startup_runs,
               "ms", "lower"),
        Metric("startup_module", "  minihttpd as `python3 -m minihttpd`, bytecode cached",
               "ms", "lower", "startup"),
        Metric("idle_rss", "idle resident memory", "MiB", "lower"),
        Metric("idle_module", "  minihttpd as `python3 -m minihttpd`", "MiB", "lower",
               "idle_rss"),
        Metric("peak_rss", "peak resident memory (downloads, slowloris)", "MiB", "lower"),
    ]


def format_size(n):
    """1073741824 -> '1 GiB', 268435456 -> '256 MiB'."""
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= size and n % size == 0:
            return "%d %s" % (n // size, unit)
    return "%d B" % n


class BenchError(Exception):
    """A scenario or a server failed; the message goes under the table."""


# ---------------------------------------------------------------------------
# 2. Reference servers: the ceiling of the language and the loop
# ---------------------------------------------------------------------------

LOOP_SOURCE = r'''
"""Ceiling reference: one selectors loop answering every request with 1 KiB."""
import selectors, socket
BODY = b"x" * 1024
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
KEEP_ALIVE = HEAD + b"\r\n" + BODY
CLOSE = HEAD + b"Connection: close\r\n\r\n" + BODY
MAX_PENDING_BYTES = 64 * 1024

sel = selectors.DefaultSelector()
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(4096)
listener.setblocking(False)
sel.register(listener, selectors.EVENT_READ, None)
print("Serving loop on http://127.0.0.1:%d/" % listener.getsockname()[1], flush=True)

def drop(conn):
    sel.unregister(conn)
    conn.close()

while True:
    for key, _ in sel.select():
        if key.data is None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:         # BlockingIOError when drained; EMFILE waits a turn
                    break
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ, b"")
            continue
        conn = key.fileobj
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            data = b""
        if not data:
            drop(conn)
            continue
        pending = key.data + data if key.data else data
        replies, close = [], False
        while True:
            end = pending.find(b"\r\n\r\n")
            if end < 0:
                break
            head, pending = pending[:end].lower(), pending[end + 4:]
            if b"connection: close" in head:
                replies.append(CLOSE)
                close = True
                break
            replies.append(KEEP_ALIVE)
        if replies:
            reply = b"".join(replies)
            try:
                sent = conn.send(reply)
            except OSError:
                sent = -1
            # 1 KiB replies fit a loopback send buffer; a short send closes.
            if close or sent != len(reply):
                drop(conn)
                continue
        if len(pending) > MAX_PENDING_BYTES:
            drop(conn)
        elif pending != key.data:
            sel.modify(conn, selectors.EVENT_READ, pending)
'''

SINK_SOURCE = r'''
"""Ceiling reference: take each upload body with recv_into a reused buffer and os.write."""
import os, socket, sys
BUFFER_BYTES = 1 << 20
MAX_HEAD_BYTES = 64 * 1024
target = os.path.join(sys.argv[1], "sink.bin")
view = memoryview(bytearray(BUFFER_BYTES))
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(16)
print("Serving sink on http://127.0.0.1:%d/" % listener.getsockname()[1], flush=True)

def receive(conn):
    """Read one request head, then its Content-Length body into the target file."""
    head = b""
    while b"\r\n\r\n" not in head and len(head) < MAX_HEAD_BYTES:
        data = conn.recv(65536)
        if not data:
            return
        head += data
    head, _, rest = head.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, rest)
        left = length - len(rest)
        while left > 0:
            n = conn.recv_into(view, min(BUFFER_BYTES, left))
            if not n:
                return
            os.write(fd, view[:n])
            left -= n
    finally:
        os.close(fd)
    conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

while True:
    conn, _ = listener.accept()
    with conn:
        try:
            receive(conn)
        except OSError:
            pass
'''


# ---------------------------------------------------------------------------
# 3. Processes: start, pin, stop by PID, memory from /proc
# ---------------------------------------------------------------------------

try:
    LIBC = ctypes.CDLL(None, use_errno=True)
except (OSError, TypeError):            # TypeError: Windows loads no library by None
    LIBC = None
PR_SET_PDEATHSIG = 1                    # prctl(2): a signal for the child when its parent dies


def die_with_parent():
    """In the child before exec: SIGKILL it if this script dies without cleaning up."""
    if LIBC is not None:
        LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)    # survives exec, not nginx's fork


class ProcessRegistry(object):
    """Every process this script starts, so that each is killed by its PID."""

    def __init__(self):
        self.procs = []

    def start(self, argv, **kwargs):
        """Popen that is registered for cleanup."""
        proc = subprocess.Popen(argv, preexec_fn=die_with_parent, **kwargs)
        self.procs.append(proc)
        return proc

    def run(self, argv, timeout):
        """Run a bounded command; return (exit status, stdout+stderr text)."""
        proc = self.start(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, universal_newlines=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
            return proc.returncode, out
        except subprocess.TimeoutExpired:
            raise BenchError("%s ran longer than %d s and was killed"
                             % (os.path.basename(argv[0]), timeout))
        finally:
            self.stop(proc)

    def stop(self, proc):
        """SIGTERM the process, SIGKILL it after a grace period, then its children."""
        children = descendant_pids(proc.pid) if proc.poll() is None else []
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        for pid in children:            # nginx's worker, should its master not take it down
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass                    # gone already
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self):
        """Stop every process still registered (exit, Ctrl+C, errors)."""
        for proc in list(self.procs):
            try:
                self.stop(proc)
            except OSError:
                pass


def parent_pid(pid):
    """The parent PID from /proc/PID/stat, or None when the process is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])    # the name may hold spaces


def descendant_pids(pid):
    """PIDs of every process below `pid`, found by scanning /proc."""
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            ppid = parent_pid(int(name))
            if ppid is not None:
                parents.setdefault(ppid, []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def read_status_kib(pid, field):
    """A kB field (VmRSS, VmHWM) of /proc/PID/status, or 0 when the process is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory_mib(pid, field):
    """`field` summed over a server's processes (nginx: master and worker), in MiB."""
    return sum(read_status_kib(p, field) for p in [pid] + descendant_pids(pid)) / 1024.0


class Pinning(typing.NamedTuple):
    """Which CPU the server and the load run on, or None for no pinning."""
    server_cpu: typing.Optional[int]
    load_cpu: typing.Optional[int]
    note: str

    def prefix(self, cpu):
        """argv prefix that pins a command to `cpu`, or nothing."""
        return [] if cpu is None else ["taskset", "-c", str(cpu)]


def set_up_pinning():
    """Server on the first allowed CPU, load (and this script) on the second."""
    cpus = sorted(os.sched_getaffinity(0))
    if not shutil.which("taskset"):
        return Pinning(None, None, "taskset not found (apt-get install util-linux): nothing pinned")
    if len(cpus) < 2:
        return Pinning(None, None, "one CPU only: server and load share it")
    os.sched_setaffinity(0, {cpus[1]})  # this script's own load (slowloris) and its children
    return Pinning(cpus[0], cpus[1], "server on CPU %d, load on CPU %d (taskset)"
                   % (cpus[0], cpus[1]))


def raise_open_file_limit():
    """Raise the soft open-file limit (inherited by servers and wrk) for 1000 connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, WANTED_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------------------
# 4. Fixture tree
# ---------------------------------------------------------------------------

def make_fixture(tree, large_bytes):
    """Write small.bin (1 KiB), large.bin (real bytes) and dir1000/ (1000 entries)."""
    os.makedirs(os.path.join(tree, "dir1000"))
    with open(os.path.join(tree, "small.bin"), "wb") as f:
        f.write(os.urandom(SMALL_FILE_BYTES))
    block = os.urandom(WRITE_BLOCK_BYTES)
    with open(os.path.join(tree, "large.bin"), "wb") as f:
        for _ in range(large_bytes // WRITE_BLOCK_BYTES):
            f.write(block)
    for i in range(LISTING_ENTRIES):
        with open(os.path.join(tree, "dir1000", "file-%04d.txt" % i), "w") as f:
            f.write("entry %d\n" % i * (i % 7))


def make_upload_area(tmp):
    """A folder on tmpfs for the servers' inboxes and the upload source (None
    without /dev/shm)."""
    if not (os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK)):
        return None
    area = tempfile.mkdtemp(prefix="bench-minihttpd-", dir="/dev/shm")
    return area


def empty_folder(path):
    """Remove what an upload left in `path`, so tmpfs gives the memory back."""
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            os.unlink(full)


# ---------------------------------------------------------------------------
# 5. Servers: how to start each one and find its port
# ---------------------------------------------------------------------------

class Bench(typing.NamedTuple):
    """Everything a scenario needs, built once in main."""
    python: str
    profile: Profile
    tmp: str
    tree: str
    upload_area: typing.Optional[str]
    pinning: Pinning
    registry: ProcessRegistry
    wrk: str
    curl: typing.Optional[str]


class ServerSpec(typing.NamedTuple):
    """A server the bench can run: its name, what it can do and how to start it."""
    name: str
    program: typing.Optional[str]       # must be on PATH; None: the chosen Python
    kind: str                           # "files", "fixed" (the loop) or "sink"
    uploads: frozenset                  # of "put", "form"
    command: typing.Callable            # (bench, root, port, upload) -> argv
    prints_port: bool                   # prints minihttpd's start-up line; else given a port


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {open_files};
pid {home}/nginx.pid;
error_log {home}/error.log warn;
{user}
events {{ worker_connections {open_files}; }}
http {{
    access_log off;
    sendfile on;
    default_type application/octet-stream;
    client_max_body_size 0;
    client_body_temp_path {body_temp};
    proxy_temp_path {home}/proxy;
    fastcgi_temp_path {home}/fastcgi;
    uwsgi_temp_path {home}/uwsgi;
    scgi_temp_path {home}/scgi;
    server {{
        listen {host}:{port};
        root {root};
        autoindex on;
        {dav}
    }}
}}
"""


def minihttpd_command(bench, root, port, upload):
    """minihttpd as the issue runs it, plus -u --overwrite for uploads."""
    argv = [bench.python, MINIHTTPD, "-q", "-p", "0", "-b", HOST, "-d", root]
    return argv + (["-u", "--overwrite"] if upload else [])


def http_server_command(bench, root, port, upload):
    """python3 -m http.server; it serves its working folder (3.6 has no --directory)."""
    return [bench.python, "-m", "http.server", str(port), "--bind", HOST]


def nginx_command(bench, root, port, upload):
    """nginx with one worker and a config written into the temporary folder."""
    home = os.path.join(bench.tmp, "nginx-%d" % port)
    os.makedirs(home)
    body_temp = os.path.join(root, "..", "nginx-body-%d" % port) if upload else home + "/body"
    conf = NGINX_CONF.format(
        home=home, host=HOST, port=port, root=root, body_temp=os.path.normpath(body_temp),
        open_files=WANTED_OPEN_FILES,
        # As root, nginx drops its worker to "nobody", who may not read a 0700 temp dir.
        user="user root;" if os.geteuid() == 0 else "",
        # The body lands in a temporary on the same tmpfs and is renamed into place.
        dav="dav_methods PUT;" if upload else "")
    path = os.path.join(home, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    return ["nginx", "-p", home + "/", "-c", path]


def caddy_command(bench, root, port, upload):
    """caddy file-server --browse (its data and config folders go to the temp dir)."""
    return ["caddy", "file-server", "--browse", "--listen", "%s:%d" % (HOST, port), "--root", root]


def darkhttpd_command(bench, root, port, upload):
    """darkhttpd as its README runs it."""
    return ["darkhttpd", root, "--port", str(port), "--addr", HOST]


def loop_command(bench, root, port, upload):
    """The fixed-response selectors loop, with the chosen Python."""
    return [bench.python, "-c", LOOP_SOURCE]


def sink_command(bench, root, port, upload):
    """The upload sink, writing into `root`, with the chosen Python."""
    return [bench.python, "-c", SINK_SOURCE, root]


SERVERS = [
    ServerSpec("minihttpd", None, "files", frozenset(["put", "form"]), minihttpd_command, True),
    ServerSpec("http.server", None, "files", frozenset(), http_server_command, False),
    ServerSpec("nginx", "nginx", "files", frozenset(["put"]), nginx_command, False),
    ServerSpec("caddy", "caddy", "files", frozenset(), caddy_command, False),
    ServerSpec("darkhttpd", "darkhttpd", "files", frozenset(), darkhttpd_command, False),
    ServerSpec("loop", None, "fixed", frozenset(), loop_command, True),
    ServerSpec("sink", None, "sink", frozenset(["put", "form"]), sink_command, True),
]
PEER_NAMES = [spec.name for spec in SERVERS if spec.name != "minihttpd"]


def minihttpd_module_command(bench, root, port, upload):
    """minihttpd imported as a module (PYTHONPATH names the folder holding it)."""
    return [bench.python, "-m", "minihttpd", "-q", "-p", "0", "-b", HOST, "-d", root]


MODULE_SPEC = ServerSpec("minihttpd-module", None, "files", frozenset(),
                         minihttpd_module_command, True)
INSTALL_HINTS = {
    "nginx": "apt-get install nginx-light",
    "caddy": "apt-get install caddy",
    # Not packaged in Debian 12; it is one C file: cc -O2 -o darkhttpd darkhttpd.c
    "darkhttpd": "apt-get install darkhttpd where packaged, else build its one C file",
}


class Running(typing.NamedTuple):
    """A started server: its process, port and how long it took to answer."""
    proc: subprocess.Popen
    port: int
    startup_s: float
    log: str


def pick_free_port():
    """A port on 127.0.0.1 that was free a moment ago (for servers that need one given)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tail(path, lines=5):
    """The last lines of a log file, for an error message."""
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-lines:])
    except OSError:
        return ""


def start_server(bench, spec, root, upload=False, env_extra=None):
    """Start `spec` serving `root`, wait for its first response; return a Running."""
    port = None if spec.prints_port else pick_free_port()
    argv = spec.command(bench, root, port, upload)
    log = os.path.join(bench.tmp, "%s-%s.log" % (spec.name, "upload" if upload else "files"))
    env = dict(os.environ, **(env_extra or {}))
    if spec.name == "caddy":            # keep Caddy's storage out of $HOME
        for var in ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME"):
            env[var] = os.path.join(bench.tmp, "caddy-home")
    # http.server and darkhttpd always log every request: /dev/null is the cheapest sink.
    quiet = spec.name in ("http.server", "darkhttpd")
    started = time.monotonic()
    with open(log, "wb") as log_file:
        out = subprocess.DEVNULL if quiet else log_file
        proc = bench.registry.start(bench.pinning.prefix(bench.pinning.server_cpu) + argv,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    cwd=root, env=env)
    deadline = started + START_TIMEOUT_S
    if port is None:
        port = wait_for_port_line(proc, log, deadline)
    status = wait_for_response(proc, port, deadline, log)
    startup_s = time.monotonic() - started
    if spec.kind == "files" and not upload and status != 200:
        raise BenchError("GET /small.bin answered %d, not 200: %s" % (status, tail(log)))
    return Running(proc, port, startup_s, log)


def wait_for_port_line(proc, log, deadline):
    """Read the port from the start-up line `Serving DIR on http://HOST:PORT/`."""
    while time.monotonic() < deadline:
        with open(log, errors="replace") as f:
            match = SERVING_LINE.search(f.readline())
        if match:
            return int(match.group(1))
        if proc.poll() is not None:
            raise BenchError("exited with %s before serving: %s" % (proc.returncode, tail(log)))
        time.sleep(PROBE_INTERVAL_S)
    raise BenchError("no start-up line within %d s: %s" % (START_TIMEOUT_S, tail(log)))


def wait_for_response(proc, port, deadline, log):
    """Poll GET /small.bin until any HTTP response arrives; return its status."""
    request = ("GET /small.bin HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n"
               % (HOST, port)).encode()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError("exited with %s before answering: %s" % (proc.returncode, tail(log)))
        try:
            with socket.create_connection((HOST, port), timeout=1) as s:
                s.sendall(request)
                first = s.recv(64)
            if first.startswith(b"HTTP/1."):
                return int(first.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(PROBE_INTERVAL_S)
    raise BenchError("no response within %d s: %s" % (START_TIMEOUT_S, tail(log)))


def program_version(bench, spec):
    """A short version string for the table's heading."""
    queries = {
        None: [bench.python, "-c", "import platform; print('Python', platform.python_version())"],
        "nginx": ["nginx", "-v"],
        "caddy": ["caddy", "version"],
        "darkhttpd": ["darkhttpd"],     # no arguments: prints its banner and usage, exits
    }
    try:
        _, out = bench.registry.run(queries[spec.program], TOOL_TIMEOUT_S)
    except (OSError, BenchError):
        return "?"
    first = out.strip().splitlines()[0] if out.strip() else "?"
    return first.replace("nginx version: ", "").split(",")[0].split(" h1:")[0]


# ---------------------------------------------------------------------------
# 6. Load: wrk, slowloris, curl uploads
# ---------------------------------------------------------------------------

WRK_UNITS = {"B": 1, "KB": KIB, "MB": MIB, "GB": GIB, "TB": 1024 * GIB}   # wrk's are binary


class WrkResult(typing.NamedTuple):
    """What one wrk run reports."""
    requests_per_s: float
    bytes_per_s: float
    socket_errors: int
    timeouts: int
    non_2xx: int


def run_wrk(bench, port, path, conns, headers=()):
    """One wrk run, one thread, on the load CPU; return its parsed figures."""
    seconds = bench.profile.wrk_seconds
    argv = bench.pinning.prefix(bench.pinning.load_cpu) + [
        bench.wrk, "-t1", "-c%d" % conns, "-d%ds" % seconds, "--timeout", WRK_TIMEOUT]
    for header in headers:
        argv += ["-H", header]
    argv.append("http://%s:%d%s" % (HOST, port, path))
    status, out = bench.registry.run(argv, seconds + WRK_SLACK_S)
    return parse_wrk(out, status)


def parse_wrk(out, status=0):
    """Parse wrk's summary; raise BenchError when it has none."""
    rate = re.search(r"Requests/sec:\s*([\d.]+)", out)
    transfer = re.search(r"Transfer/sec:\s*([\d.]+)([KMGT]?B)", out)
    if status != 0 or not rate or not transfer:
        last_lines = " | ".join(out.strip().splitlines()[-3:])
        raise BenchError("wrk failed (%s): %s" % (status, last_lines))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    counts = [int(n) for n in errors.groups()] if errors else [0, 0, 0, 0]
    return WrkResult(float(rate.group(1)), float(transfer.group(1)) * WRK_UNITS[transfer.group(2)],
                     sum(counts[:3]), counts[3], int(non_2xx.group(1)) if non_2xx else 0)


def fetch_small(port, timeout):
    """One normal GET /small.bin on a new connection; True when all 1 KiB arrived."""
    request = ("GET /small.bin HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n"
               % (HOST, port)).encode()
    deadline = time.monotonic() + timeout
    chunks = []
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(request)
            while time.monotonic() < deadline:
                s.settimeout(max(0.001, deadline - time.monotonic()))
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
    except OSError:
        return False
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split(b" ")     # http.server answers HTTP/1.0
    return status[1:2] == [b"200"] and len(body) == SMALL_FILE_BYTES


def run_slowloris(bench, port):
    """Hold N half-sent requests open while a normal client makes M requests.

    Returns (sockets held, successes, median latency in ms or None).
    """
    half = ("GET /small.bin HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: slowloris\r\n"
            % (HOST, port)).encode()    # no blank line: the head never ends
    held = []
    try:
        deadline = time.monotonic() + SLOWLORIS_CONNECT_BUDGET_S
        for _ in range(bench.profile.slowloris_sockets):
            if time.monotonic() > deadline:
                break
            try:
                s = socket.create_connection((HOST, port), timeout=2)
                held.append(s)
                s.sendall(half)
            except OSError:
                pass
        latencies = []
        for _ in range(bench.profile.normal_requests):
            started = time.monotonic()
            if fetch_small(port, NORMAL_REQUEST_TIMEOUT_S):
                latencies.append((time.monotonic() - started) * 1000.0)
        median = statistics.median(latencies) if latencies else None
        return len(held), len(latencies), median
    finally:
        for s in held:
            s.close()


def make_upload_source(bench):
    """A sparse file of the upload size on tmpfs (reading holes costs no memory)."""
    source = os.path.join(bench.upload_area, "source.bin")
    if not os.path.exists(source):
        with open(source, "wb") as f:
            f.truncate(bench.profile.upload_bytes)
    return source


def run_upload(bench, port, kind):
    """curl one upload (PUT to /put.bin, or a form to /); return MiB/s."""
    source = make_upload_source(bench)
    timeout = bench.profile.upload_bytes // (10 * MIB) + UPLOAD_SLACK_S
    argv = bench.pinning.prefix(bench.pinning.load_cpu) + [
        bench.curl, "-sS", "-o", "/dev/null", "--max-time", str(timeout),
        "-H", "Expect:",                # no 100-continue round trip (the sink never sends one)
        "-w", "%{http_code} %{size_upload} %{time_total}"]
    if kind == "put":
        argv += ["-T", source, "http://%s:%d/put.bin" % (HOST, port)]
    else:
        argv += ["-F", "file=@%s;filename=form.bin;type=application/octet-stream" % source,
                 "http://%s:%d/" % (HOST, port)]
    status, out = bench.registry.run(argv, timeout + WRK_SLACK_S)
    fields = out.strip().split()[-3:]
    if status != 0 or len(fields) != 3 or int(fields[0]) not in UPLOAD_OK[kind]:
        raise BenchError("curl %s: exit %s, %s" % (kind, status, out.strip()[-200:]))
    sent, seconds = float(fields[1]), float(fields[2])
    if sent < bench.profile.upload_bytes:
        raise BenchError("curl %s sent only %d bytes" % (kind, sent))
    return sent / seconds / MIB


# ---------------------------------------------------------------------------
# 7. Scenarios: one server through every scenario
# ---------------------------------------------------------------------------

class Outcome(object):
    """One server's figures (metric key -> number) and notes (metric key -> text)."""

    def __init__(self, version):
        self.version = version
        self.values = {}
        self.notes = {}

    def record_wrk(self, key, result, measure):
        """Keep a wrk figure, noting errors and non-2xx answers beside it."""
        self.values[key] = measure(result)
        problems = []
        if result.non_2xx:
            problems.append("%d non-2xx answers" % result.non_2xx)
        if result.socket_errors or result.timeouts:
            problems.append("%d socket errors, %d timeouts"
                            % (result.socket_errors, result.timeouts))
        if problems:
            self.notes[key] = ", ".join(problems)


def say(text):
    """Progress on stderr; the table goes to stdout."""
    print(text, file=sys.stderr, flush=True)


def attempt(outcome, key, name, action):
    """Run one scenario; a failure becomes a note under the table, never the end of the run."""
    try:
        action()
    except (BenchError, OSError, ValueError) as exc:
        outcome.notes[key] = str(exc)
        say("  %s: %s failed: %s" % (name, key, exc))


def measure_startups(bench, spec, runs, env_extra=None):
    """Start and stop the server runs - 1 times; their start-up times in ms."""
    times = []
    for _ in range(runs - 1):
        server = start_server(bench, spec, bench.tree, env_extra=env_extra)
        bench.registry.stop(server.proc)
        times.append(server.startup_s * 1000.0)
        time.sleep(SETTLE_S)
    return times


def measure_module_start(bench, outcome):
    """minihttpd run as `python3 -m minihttpd` from a folder where Python has
    kept its bytecode: start-up and idle memory.  (Python compiles the script
    it runs on every start, but caches what it imports.)"""
    folder = os.path.join(bench.tmp, "module")
    os.makedirs(folder, exist_ok=True)
    shutil.copy(MINIHTTPD, os.path.join(folder, "minihttpd.py"))
    status, out = bench.registry.run(
        [bench.python, "-m", "py_compile", os.path.join(folder, "minihttpd.py")], TOOL_TIMEOUT_S)
    if status != 0:
        raise BenchError("py_compile failed: %s" % out.strip()[-200:])
    env = {"PYTHONPATH": folder}
    times = measure_startups(bench, MODULE_SPEC, bench.profile.startup_runs + 1, env)
    server = start_server(bench, MODULE_SPEC, bench.tree, env_extra=env)
    try:
        time.sleep(IDLE_SETTLE_S)
        outcome.values["idle_module"] = tree_memory_mib(server.proc.pid, "VmRSS")
    finally:
        bench.registry.stop(server.proc)
    outcome.values["startup_module"] = statistics.median(times)
    say("  minihttpd as a module: start-up %.1f ms, idle %.1f MiB"
        % (outcome.values["startup_module"], outcome.values["idle_module"]))


def measure_downloads(bench, spec, outcome):
    """Start the server on the fixture tree and run every download scenario."""
    try:
        startups = measure_startups(bench, spec, bench.profile.startup_runs)
        server = start_server(bench, spec, bench.tree)
    except BenchError as exc:
        outcome.notes["startup"] = str(exc)
        say("  %s: did not start: %s" % (spec.name, exc))
        return
    try:
        outcome.values["startup"] = statistics.median(startups + [server.startup_s * 1000.0])
        time.sleep(IDLE_SETTLE_S)
        outcome.values["idle_rss"] = tree_memory_mib(server.proc.pid, "VmRSS")
        say("  %s: start-up %.1f ms, idle %.1f MiB" % (spec.name, outcome.values["startup"],
                                                       outcome.values["idle_rss"]))
        runs = [
            ("small_keepalive", "/small.bin", KEEPALIVE_CONNS, (), "req/s"),
            ("small_close", "/small.bin", KEEPALIVE_CONNS, ("Connection: close",), "req/s"),
            ("large", "/large.bin", LARGE_CONNS, (), "MiB/s"),
            ("listing", "/dir1000/", LISTING_CONNS, (), "req/s"),
            ("many", "/small.bin", MANY_CONNS, (), "req/s"),
        ]
        for key, path, conns, headers, unit in runs:
            if spec.kind == "fixed" and key in ("large", "listing"):
                continue                # the loop has one fixed answer
            if server.proc.poll() is not None:
                outcome.notes[key] = "server exited with %s: %s" % (server.proc.returncode,
                                                                    tail(server.log))
                break
            time.sleep(SETTLE_S)
            attempt(outcome, key, spec.name,
                    lambda: run_wrk_scenario(bench, server, outcome, key, path, conns,
                                             headers, unit, spec.name))
        if server.proc.poll() is None:
            time.sleep(SETTLE_S)
            attempt(outcome, "slowloris_ok", spec.name,
                    lambda: slowloris_scenario(bench, server, outcome, spec.name))
        outcome.values["peak_rss"] = tree_memory_mib(server.proc.pid, "VmHWM") or None
    finally:
        bench.registry.stop(server.proc)


def run_wrk_scenario(bench, server, outcome, key, path, conns, headers, unit, name):
    """One wrk scenario into `outcome`; 1000 connections also keep errors and timeouts."""
    result = run_wrk(bench, server.port, path, conns, headers)
    if unit == "MiB/s":
        outcome.record_wrk(key, result, lambda r: r.bytes_per_s / MIB)
    else:
        outcome.record_wrk(key, result, lambda r: r.requests_per_s)
    if key == "many":
        outcome.values["many_errors"] = result.socket_errors
        outcome.values["many_timeouts"] = result.timeouts
    say("  %s: %-16s %10.1f %s%s" % (name, key, outcome.values[key], unit,
                                     "  (%s)" % outcome.notes[key] if key in outcome.notes else ""))


def slowloris_scenario(bench, server, outcome, name):
    """Slowloris sockets plus a normal client, into `outcome`."""
    held, ok, median = run_slowloris(bench, server.port)
    outcome.values["slowloris_ok"] = ok
    outcome.values["slowloris_median"] = median
    if held < bench.profile.slowloris_sockets:
        outcome.notes["slowloris_ok"] = "only %d of %d slow sockets connected" % (
            held, bench.profile.slowloris_sockets)
    say("  %s: slowloris: %d slow sockets, %d/%d OK, median %s ms"
        % (name, held, ok, bench.profile.normal_requests,
           "-" if median is None else "%.1f" % median))


def measure_uploads(bench, specs, outcomes):
    """Every upload kind on every server that takes it, each server a fresh
    instance with its own folder on tmpfs, all running at once.

    The timed runs go in rounds, one upload per server and kind a round,
    the order reversed every other round, and each server's median counts.
    On this shared VM the speed drifts by a fifth over minutes, so a
    server measured minutes after another was compared with a different
    machine; in rounds, every server sees the same drift.  Each upload
    goes into an empty folder: writing into tmpfs pages the guest has not
    used lately ran at a fifth of the speed of writing into pages just
    freed, for any server (and a server that writes a temporary beside
    the old file needs fresh pages).
    """
    takers = [spec for spec in specs if spec.uploads and spec.name in outcomes]
    if not takers:
        return
    if bench.upload_area is None or bench.curl is None:
        note = "skipped: %s" % (
            "no curl (apt-get install curl)" if bench.curl is None else "/dev/shm not writable")
        for spec in takers:
            for kind in spec.uploads:
                outcomes[spec.name].notes[kind] = note
        return
    say("uploads, %d rounds" % UPLOAD_RUNS)
    running = []
    try:
        for spec in takers:
            inbox = os.path.join(bench.upload_area, "inbox-" + spec.name)
            os.mkdir(inbox)
            try:
                running.append((spec, inbox, start_server(bench, spec, inbox, upload=True)))
            except BenchError as exc:
                for kind in spec.uploads:
                    outcomes[spec.name].notes[kind] = "did not start: %s" % exc
        for kind in ("put", "form"):
            speeds = {}
            for round_number in range(UPLOAD_RUNS):
                order = running if round_number % 2 == 0 else running[::-1]
                for spec, inbox, server in order:
                    if kind not in spec.uploads or kind in outcomes[spec.name].notes:
                        continue

                    def upload():
                        speeds.setdefault(spec.name, []).append(
                            run_upload(bench, server.port, kind))
                    attempt(outcomes[spec.name], kind, spec.name, upload)
                    empty_folder(inbox)
            for spec, inbox, server in running:
                if spec.name not in speeds or kind in outcomes[spec.name].notes:
                    continue
                outcome = outcomes[spec.name]
                outcome.values[kind] = statistics.median(speeds[spec.name])
                outcome.values[kind + "_peak"] = tree_memory_mib(server.proc.pid, "VmHWM")
                say("  %s: upload %-4s %8.1f MiB/s (runs: %s), peak %.1f MiB"
                    % (spec.name, kind, outcome.values[kind],
                       ", ".join("%.0f" % v for v in speeds[spec.name]),
                       outcome.values[kind + "_peak"]))
    finally:
        for spec, inbox, server in running:
            bench.registry.stop(server.proc)
            empty_folder(inbox)


def measure_server(bench, spec):
    """Every scenario this server can take; returns its Outcome."""
    outcome = Outcome(program_version(bench, spec))
    say("%s (%s)" % (spec.name, outcome.version))
    if spec.kind != "sink":
        measure_downloads(bench, spec, outcome)
    if spec.name == "minihttpd":
        attempt(outcome, "startup_module", spec.name, lambda: measure_module_start(bench, outcome))
    return outcome


# ---------------------------------------------------------------------------
# 8. Report: the table and the JSON
# ---------------------------------------------------------------------------

def format_value(value, unit):
    """A cell: thousands separators for rates, one decimal for ms and MiB."""
    if value is None:
        return "–"
    if unit == "count":
        return "%d" % value
    if unit in ("ms", "MiB") or value < 100:
        return "{:,.1f}".format(value)
    return "{:,.0f}".format(value)


def format_ratio(metric, mine, theirs):
    """minihttpd / peer, when both have a figure and the row has a direction."""
    if metric.better is None or mine is None or not theirs:
        return ""
    return "%.2f×" % (mine / theirs)


def build_table(metrics, outcomes):
    """Markdown table: a row per metric, a column per server and a ratio after each peer."""
    names = list(outcomes)
    header = ["scenario", "unit"]
    for name in names:
        header.append(name)
        if name != "minihttpd":
            header.append("mh/" + name)
    rows = [header]
    footnotes = []
    for metric in metrics:
        row = [metric.label, metric.unit + (" ↓" if metric.better == "lower" else "")]
        mine = outcomes["minihttpd"].values.get(metric.key) if "minihttpd" in outcomes else None
        for name in names:
            outcome = outcomes[name]
            value = outcome.values.get(metric.key)
            cell = format_value(value, metric.unit)
            if metric.key in outcome.notes:
                footnotes.append("%s, %s: %s" % (name, metric.label.strip(),
                                                 outcome.notes[metric.key]))
                cell += " [%d]" % len(footnotes)
            row.append(cell)
            if name != "minihttpd":
                theirs = outcome.values.get(metric.against) if metric.against else value
                row.append(format_ratio(metric, mine, theirs))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("| " + " | ".join(cells) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (widths[0] + 2) if i == 0 else
                                        "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|")
    return "\n".join(lines), footnotes


def describe_machine(bench, open_files):
    """CPU, cores, kernel, memory and tools, for the lines above the table."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    tools = {}
    for tool, argv in (("wrk", [bench.wrk, "-v"]), ("curl", [bench.curl or "curl", "--version"])):
        try:
            tools[tool] = bench.registry.run(argv, TOOL_TIMEOUT_S)[1].strip().splitlines()[0]
        except (OSError, BenchError, IndexError):
            tools[tool] = "missing"
    return {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
            "memory_gib": round(memory_gib, 1), "pinning": bench.pinning.note,
            "open_files": open_files, "tools": tools}


def print_report(bench, metrics, outcomes, machine, skipped):
    """The heading, the table, its footnotes and what was skipped."""
    print()
    print("minihttpd benchmark%s: %s, %d CPUs, %.0f GiB, Linux %s; %s"
          % (" (--quick)" if bench.profile is QUICK else "", machine["cpu"], machine["cpus"],
             machine["memory_gib"], machine["kernel"], machine["pinning"]))
    print("wrk: 1 thread, %d s a run, --timeout %s. Versions: %s"
          % (bench.profile.wrk_seconds, WRK_TIMEOUT,
             "; ".join("%s %s" % (name, o.version) for name, o in outcomes.items())))
    print("mh/X = minihttpd / X; ↓ = lower is better. MiB/s from wrk's Transfer/sec and curl's "
          "speed; memory is VmRSS / VmHWM summed over the server's processes.")
    print("– = not applicable: the loop has one fixed answer; http.server, Caddy and darkhttpd "
          "take no uploads; nginx takes PUT (dav module), not forms; the sink writes any body "
          "raw, so its form figure is the multipart bytes unparsed.")
    print()
    table, footnotes = build_table(metrics, outcomes)
    print(table)
    if footnotes:
        print()
        for n, text in enumerate(footnotes, 1):
            print("[%d] %s" % (n, text))
    if skipped:
        print()
        for name, reason in skipped.items():
            print("Skipped %s: %s" % (name, reason))


def write_json(path, bench, metrics, outcomes, machine, skipped):
    """All figures and notes as JSON."""
    data = {
        "quick": bench.profile is QUICK,
        "profile": bench.profile._asdict(),
        "machine": machine,
        "metrics": [m._asdict() for m in metrics],
        "servers": {name: {"version": o.version, "values": o.values, "notes": o.notes}
                    for name, o in outcomes.items()},
        "skipped": skipped,
    }
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, ensure_ascii=False)
        f.write("\n")


# ---------------------------------------------------------------------------
# 9. Command line
# ---------------------------------------------------------------------------

def build_arg_parser():
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="bench_minihttpd",
        description="Benchmark minihttpd against http.server, nginx, Caddy, darkhttpd and two "
                    "pure-Python ceiling references, on 127.0.0.1, in one sitting.")
    parser.add_argument("--quick", action="store_true",
                        help="short smoke run: %d s per wrk run, %s file, %s upload, "
                             "%d slowloris sockets (under ~2 minutes)"
                             % (QUICK.wrk_seconds, format_size(QUICK.large_bytes),
                                format_size(QUICK.upload_bytes), QUICK.slowloris_sockets))
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--python", metavar="PATH", default=sys.executable,
                        help="interpreter for minihttpd, http.server and the references "
                             "(default: this one)")
    parser.add_argument("--only", metavar="NAME,...",
                        help="run only these peers besides minihttpd: " + ",".join(PEER_NAMES))
    return parser


def choose_servers(only):
    """The specs to run, minihttpd first; raise ValueError for an unknown name."""
    if not only:
        return list(SERVERS)
    wanted = set(name.strip() for name in only.split(",") if name.strip())
    unknown = wanted - set(spec.name for spec in SERVERS)
    if unknown:
        raise ValueError("unknown server %s (known: %s)"
                         % (", ".join(sorted(unknown)), ",".join(PEER_NAMES)))
    return [spec for spec in SERVERS if spec.name == "minihttpd" or spec.name in wanted]


def on_terminate(signum, frame):
    """SIGTERM/SIGHUP: unwind like Ctrl+C so every started process is killed."""
    raise KeyboardInterrupt


def main(argv=None):
    """Run the benchmark; 0 when it ran, 2 when something it needs is missing."""
    args = build_arg_parser().parse_args(argv)
    wrk = shutil.which("wrk")
    if not wrk:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    if not sys.platform.startswith("linux"):
        print("bench_minihttpd needs Linux (/proc, taskset)", file=sys.stderr)
        return 2
    if not os.path.exists(MINIHTTPD):
        print("minihttpd.py not found beside this script: %s" % MINIHTTPD, file=sys.stderr)
        return 2
    try:
        specs = choose_servers(args.only)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    python = shutil.which(args.python) or args.python
    if not os.access(python, os.X_OK):
        print("--python %s: not an executable" % args.python, file=sys.stderr)
        return 2
    curl = shutil.which("curl")
    if not curl:
        say("curl not found: apt-get install curl (uploads are skipped)")

    signal.signal(signal.SIGTERM, on_terminate)
    signal.signal(signal.SIGHUP, on_terminate)
    registry = ProcessRegistry()
    tmp = tempfile.mkdtemp(prefix="bench-minihttpd-")
    upload_area = None
    try:
        open_files = raise_open_file_limit()
        if open_files < 2 * MANY_CONNS + 100:
            say("open-file limit is %d: the %d-connection runs may fail" % (open_files, MANY_CONNS))
        upload_area = make_upload_area(tmp)
        if upload_area is None:
            say("/dev/shm is not writable: uploads are skipped")
        profile = QUICK if args.quick else FULL
        bench = Bench(python=python, profile=profile, tmp=tmp, tree=os.path.join(tmp, "tree"),
                      upload_area=upload_area, pinning=set_up_pinning(), registry=registry,
                      wrk=wrk, curl=curl)
        say("fixture: %s (%s file) ... %s" % (bench.tree, format_size(profile.large_bytes),
                                             bench.pinning.note))
        make_fixture(bench.tree, profile.large_bytes)
        machine = describe_machine(bench, open_files)
        outcomes, skipped = {}, {}
        for spec in specs:
            if spec.program and not shutil.which(spec.program):
                skipped[spec.name] = "%s not found on PATH (%s)" % (
                    spec.program, INSTALL_HINTS[spec.name])
                say(skipped[spec.name])
                continue
            outcomes[spec.name] = measure_server(bench, spec)
        measure_uploads(bench, specs, outcomes)
        metrics = build_metrics(profile)
        print_report(bench, metrics, outcomes, machine, skipped)
        if args.json:
            write_json(args.json, bench, metrics, outcomes, machine, skipped)
        return 0
    except KeyboardInterrupt:
        say("interrupted: stopping every started process")
        return 130
    finally:
        registry.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
        if upload_area:
            shutil.rmtree(upload_area, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
