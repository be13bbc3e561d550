"""Tests for HTTPS in minihttpd.py (issue 8): --tls-cert and --tls-key.

Run with:  python3 -m unittest -v test_new_tls

Every test starts minihttpd.py on port 0 with a test certificate and
speaks to it through the standard ssl module, the way a real client would.
The certificate is made with the openssl program when it is on PATH, else
the self-signed test certificate embedded below is used; the tests skip,
with a message, only when neither can be loaded.

The helpers of test_minihttpd are reused: build_request() makes every
request, read_response()/read_one_response() read every response (from an
SSLSocket as from a plain one), is_closed() is the one "is it closed"
check.  Only the start-up differs: test_minihttpd.start_server expects an
http:// start-up line, so start_tls_server() below wraps spawn_server the
same way for https://.
"""

import hashlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import warnings

from test_minihttpd import (
    IO_TIMEOUT_S, SHORT_IO_TIMEOUT_S, SMALL_BODY, ADVERSARY_POLL_S, ADVERSARY_START_S,
    FAIRNESS_P99_S, PROBE_REQUEST_TIMEOUT_S, PROBE_BUDGET_S,
    Adversary, Server, ServerTestCase,
    build_request, connect, exchange, fast_downloader, format_latencies, gunzip_body,
    is_closed, json_body, make_sparse, make_tree, percentile, read_response, read_text,
    run_cli, spawn_server, status_line, varied_text,
)

TLS_SERVING_RE = re.compile(r"^Serving (.+) on https://(\[[^\]]+\]|[^:/]+):(\d+)/$")
STALL_TIMEOUT_S = 1            # --timeout for the stalled-handshake test
STALLED_SECOND_CLIENT_S = 1.0  # spec: the second client is answered "well within 1 s"
STALL_CLOSED_AFTER_S = 0.5     # a stalled client is not dropped at once, but after the deadline ...
STALL_CLOSED_BY_S = 4.0        # ... which with --timeout 1 closes it within ~3 s (spec)
LARGE_FILE_BYTES = 8 * 1024 * 1024       # random: arrives intact through ssl
UPLOAD_BYTES = 3 * 1024 * 1024 + 17      # random: many TLS records, not a multiple of 16 KiB
TLS_DOWNLOAD_BYTES = 256 * 1024 * 1024   # sparse: the TLS fast downloader's file
TLS_PROBE_REQUESTS = 100                 # sequential probe GETs on one keep-alive TLS connection

# An OpenSSL configuration that lets TLS 1.0 and 1.1 through at the system
# level (Debian and others forbid them in /etc/ssl/openssl.cnf).  The server
# runs under it in the TLS 1.1 test, so the refusal must come from the
# server's own context (minimum_version), not from the machine's policy.
PERMISSIVE_OPENSSL_CONF = """\
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MinProtocol = TLSv1
CipherString = DEFAULT:@SECLEVEL=0
"""


# ---------------------------------------------------------------------------
# Helpers: test certificates
# ---------------------------------------------------------------------------

# TEST-ONLY KEY MATERIAL.  A self-signed certificate for CN=localhost with
# subjectAltName DNS:localhost, IP:127.0.0.1, valid 2000-01-01 to 2100-01-01,
# and its RSA 2048 private key.  Made for this test file only and published
# with it: it protects nothing and must never be used for anything else.
# It is the fallback when the openssl program is not on PATH.  Made with
# "openssl ca -selfsign -startdate 20000101000000Z" so that a machine whose
# clock is behind still accepts it.
EMBEDDED_TEST_CERT_PEM = """\
-----BEGIN CERTIFICATE-----
MIIDDzCCAfegAwIBAgIBATANBgkqhkiG9w0BAQsFADAUMRIwEAYDVQQDDAlsb2Nh
bGhvc3QwIBcNMDAwMTAxMDAwMDAwWhgPMjEwMDAxMDEwMDAwMDBaMBQxEjAQBgNV
BAMMCWxvY2FsaG9zdDCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBAIvo
tV3oL8hRITvArDZo2/LZ+6KA7AkrgVK8vaZIpe+FNAR5Zyk9WRyCvax6Ska3m7Ch
DlSNkebbcudF3QfsOY7f+SSDWbgviQoqrFg438JyRnmCrC0j+XTaqvvmkh17sovm
ff6NubAiRJyUBZoHSplostbcJ2lrxtKfTbsV/iEpAhqec3djKqF1V06Ouh3NDmo7
+/fxtms1OYHPBccoObqFMRIKv+bvcAIvvaOFiPsY/iAETprVpiRosRWNLVMn3B3k
DfDk63I4nsp5njQxrcTM8YvxgRt6y8JKaNpZyaAlzVUElyYmE8SNNdWL3dzbecIj
CDO/yTwy+Lk8buR6tZMCAwEAAaNqMGgwGgYDVR0RBBMwEYIJbG9jYWxob3N0hwR/
AAABMAkGA1UdEwQCMAAwCwYDVR0PBAQDAgWgMBMGA1UdJQQMMAoGCCsGAQUFBwMB
MB0GA1UdDgQWBBQwxLcbdk6tnPjprh5qKkOs0MaBpTANBgkqhkiG9w0BAQsFAAOC
AQEAhlXC/+2SRDlrKlIuWalqGfbvKc7dCK0MD0b7hl/s0qpNSlCtBtD3W09CxYkx
mYjW4fcN8+6mjaMU81aoBGOzKBXfBP6vUubvjH1IAv+46Drc05vu1zwXSpiZJ7vS
rycbyQt2xKHDkCbXfgKytq7wMrW2CziGpGrTsB/8BNEe4VcOilwgstuRJOr+NVac
YS9PQxjQhMhUMbWK52djJnJeGg4U8EGi+zw29Q9+v5yzMSFvLwtGXFecVhsY0tFE
U1ObMX97hHZ/umOFLr3DA7/QV4HHdAN2q0HTbWzmdtEbMhZbHdLBk9UrOsq//wb6
UC1fhQ2ehMPjUbrBkVXEL+Dv6g==
-----END CERTIFICATE-----
"""

EMBEDDED_TEST_KEY_PEM = """\
-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCL6LVd6C/IUSE7
wKw2aNvy2fuigOwJK4FSvL2mSKXvhTQEeWcpPVkcgr2sekpGt5uwoQ5UjZHm23Ln
Rd0H7DmO3/kkg1m4L4kKKqxYON/CckZ5gqwtI/l02qr75pIde7KL5n3+jbmwIkSc
lAWaB0qZaLLW3Cdpa8bSn027Ff4hKQIannN3YyqhdVdOjrodzQ5qO/v38bZrNTmB
zwXHKDm6hTESCr/m73ACL72jhYj7GP4gBE6a1aYkaLEVjS1TJ9wd5A3w5OtyOJ7K
eZ40Ma3EzPGL8YEbesvCSmjaWcmgJc1VBJcmJhPEjTXVi93c23nCIwgzv8k8Mvi5
PG7kerWTAgMBAAECggEAAgIpeKyZ408DdhTwa1TsGxZ/AYnafAv8Bz5hOwysx+mn
4dstEpkPqnbXtHHi+Z6HOSMWIhPoz7UE2dTaayxGTnvg2uutfRUhTa/xrTJjgmVb
L0FyZJ0xK4eKsnHkQXh7AX2rsKuIZ9Z38cIZw97LT3nHpBNInMljy7Z6bNayt0Yg
pwocZ9qPgTgr0NCwooKpwfWM/Y6ByjUNf8WkmbzlnL4MkP4xOwZIrZh66hYNbWfa
wmt7sE2bzJOgGOmWky27BthRKrNltFbD7Ktuftq8cECzhoUK1Ia+fS/50u5vC92H
mTqQvZvS2PkJePVlZjVtN+RfqylJn9kTySEnq9U1wQKBgQC+w7+mnBpfQCVFUW4r
QtydwfNRAeT4vvLwQ4O6g4xVQtnLcgw7OJJPtFpEDh3yZm98oKWGVW3NIImpOGUY
Okc+U/4yABSluyP6qw5rBoc49SUs9IsDQe5h9kmTR8G9A/0Z8zLEojumDED4jRBI
VfdG+i1y5SUqZPlzUWGT8E7fwQKBgQC7wN4tPodazF7JLtu9Nz+yWSnW2y9nKx0p
IU64M7OuBMlBUZaoxTotuO11nrpjf7TbpavXuWYv7yYbnNuHmjZeRefoPlCrbeG3
hdUxXP3Bnxvscn2T6eLVlzaypIOlttNfq57c7FBdiFrP3bd3Hd0fXUS6k32C1EVU
9M/TjtKqUwKBgQCTP4/AsEAfA+mA/yEV3Y9jamFBR0ARzXrCgKq+nmoFKgvpYQgV
8k3lniYK4Aa3o+Ash+gcr/aIXrRD3ZcTQ3DYqIbO24cUgkZ8Z+tCK5DXI0rlz4E6
K3sxPKWAPORL3TdR/4pRg5SdUFoaQPCvlUPBEr1gMYYlmjl+jPPP+K85QQKBgQCH
dteWw1e7nlsBQurOca9miciTOd/Qyx2mEF8QrlUEyHVAyJIwQOUCGjxSMez/XyPp
mnYLFrxw91aCc8E87HovuLZjLZrcpVJHLKuuiw6XhaoLBmwurYC5ZPnVGLfXd7q4
e0YK1gICCiCje7AkpIpnV87/4uya2XcQnfXZCWJb+wKBgAk9lbN/Itak/5ad7mi5
UBNc5Ib5+oUbdL5xa1d8smAIuDoBBsQ8U8H9Z3jop1by18k/HD+AKbf7XRwic7jg
y9gLn72RXvFXTNRc9yNpj0bUb6ouJH5+LZzz/ArdsN7fyPlShnOK4QrzGNd4kmxl
Ex4ITYyxGGwWDrEEAqiZwk2G
-----END PRIVATE KEY-----
"""

# TEST-ONLY KEY MATERIAL: an unrelated P-256 private key, made for this file.
# It is the key that does not fit the certificate in the mismatch test.
OTHER_TEST_KEY_PEM = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg5fWq1u4C2PL5dFVS
ZoIt/HnwagLtFq0L3I2Qd/EBbtGhRANCAARfNdOJcT4XpXAKHk2bdpkqhccbxo/v
oqad/R6E4wZQuH8kNPNEPSuGv+BkbvNzSFGVoTQQr3+2ME8jvqLEDztW
-----END PRIVATE KEY-----
"""

_certificate_cache = []        # [(cert PEM bytes, key PEM bytes)], filled once per run


def pair_loads(cert_path, key_path):
    """True when the ssl module can load this certificate and key as a server would."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError):
        return False
    return True


def write_file(path, data, mode=0o600):
    """Write bytes to path and give it mode (0o600: no key-mode warning by default)."""
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def openssl_certificate(folder):
    """(cert bytes, key bytes) made by the openssl program in folder, or None."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert_path = os.path.join(folder, "openssl-cert.pem")
    key_path = os.path.join(folder, "openssl-key.pem")
    cmd = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
           "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
           "-keyout", key_path, "-out", cert_path]
    try:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0 or not pair_loads(cert_path, key_path):
        return None             # e.g. an openssl without -addext (before 1.1.1)
    with open(cert_path, "rb") as f:
        cert = f.read()
    with open(key_path, "rb") as f:
        key = f.read()
    return cert, key


def cached_certificate_pems():
    """(cert bytes, key bytes) of the test pair, made once per run; SkipTest when nothing loads."""
    if not _certificate_cache:
        folder = tempfile.mkdtemp(prefix="minihttpd-tls-cert-")
        try:
            made = openssl_certificate(folder)
            if made is None:
                made = (EMBEDDED_TEST_CERT_PEM.encode("ascii"),
                        EMBEDDED_TEST_KEY_PEM.encode("ascii"))
                cert_path = write_file(os.path.join(folder, "embedded-cert.pem"), made[0])
                key_path = write_file(os.path.join(folder, "embedded-key.pem"), made[1])
                if not pair_loads(cert_path, key_path):
                    raise unittest.SkipTest("no test certificate: openssl is missing or failed, "
                                            "and ssl cannot load the embedded one")
        finally:
            shutil.rmtree(folder, True)
        _certificate_cache.append(made)
    return _certificate_cache[0]


def write_test_pair(cert_path, key_path, key_mode=0o600):
    """Write the test certificate (mode 0o644) and its key (key_mode) to these paths.

    The pair is made with openssl (once per run) when it is on PATH, else
    it is the embedded test-only pair.  Raises unittest.SkipTest only when
    neither loads.  Returns (cert_path, key_path).
    """
    cert, key = cached_certificate_pems()
    write_file(cert_path, cert, 0o644)
    write_file(key_path, key, key_mode)
    return cert_path, key_path


def make_test_certificate(folder, key_mode=0o600):
    """Write cert.pem and key.pem into folder; return (cert_path, key_path)."""
    return write_test_pair(os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem"),
                           key_mode)


def client_context(cert_path):
    """A client context that trusts only the test certificate and checks 127.0.0.1 against its SAN."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cert_path)
    context.check_hostname = True      # the IP SAN 127.0.0.1 matches on 3.6 too
    if ssl.OPENSSL_VERSION_INFO >= (3, 0):
        # A TCP close without close_notify is a close, as for browsers and curl
        # reading length-framed responses: the spec does not ask for the alert.
        # 3.10+ suppress it themselves; before that, OpenSSL 3 raises
        # "unexpected eof" from recv().  SSL_OP_IGNORE_UNEXPECTED_EOF is 1 << 7.
        context.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 1 << 7)
    return context


def legacy_client_context(cert_path):
    """A client context that offers TLS 1.0 and 1.1 only, at OpenSSL security level 0.

    None where this Python cannot set the versions (3.6).
    """
    if not hasattr(ssl, "TLSVersion"):
        return None
    context = client_context(cert_path)
    with warnings.catch_warnings():        # TLSv1/TLSv1_1 are deprecated names on 3.10+
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
        except (ValueError, ssl.SSLError):
            return None
    return context


def openssl_can_speak_tls11(cert_path, key_path, client):
    """True when client completes a TLS 1.1 handshake with an in-process server that allows it.

    Tells "this OpenSSL cannot offer TLS 1.1 at all" (skip) apart from
    "minihttpd refused it" (the point of the test).
    """
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            server_context.set_ciphers("DEFAULT:@SECLEVEL=0")
            server_context.minimum_version = ssl.TLSVersion.TLSv1
            server_context.load_cert_chain(cert_path, key_path)
        except (ValueError, ssl.SSLError):
            return False
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(client_in, client_out, server_hostname="127.0.0.1")
    s = server_context.wrap_bio(server_in, server_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):                    # a handshake takes a few flights, never 20
        for name, obj in (("c", c), ("s", s)):
            if done[name]:
                continue
            try:
                obj.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return False
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if done["c"] and done["s"]:
            return c.version() == "TLSv1.1"
    return False


def client_hello(context):
    """The bytes of the ClientHello context would send, made in memory (no socket)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


# ---------------------------------------------------------------------------
# Helpers: an HTTPS server and clients
# ---------------------------------------------------------------------------

def start_tls_server(testcase, root, cert_path, key_path, *args, **kwargs):
    """start_server for HTTPS: expects "Serving DIR on https://HOST:PORT/"; stopped at cleanup.

    test_minihttpd.start_server matches SERVING_RE (http:// only), so this
    follows its pattern on top of the shared spawn_server.  kwargs: env
    (extra environment variables).  Returns a test_minihttpd.Server.
    """
    cmd = ["-p", "0", "-b", "127.0.0.1", "-d", root,
           "--tls-cert", cert_path, "--tls-key", key_path] + list(args)
    proc, line, errpath = spawn_server(testcase, cmd, env=kwargs.get("env"))
    m = TLS_SERVING_RE.match(line)
    if not m:
        proc.kill()
        proc.wait(timeout=10)
        testcase.fail("HTTPS server did not start: first line %r, stderr %r"
                      % (line, read_text(errpath)))
    server = Server(proc, int(m.group(3)), root, line, errpath)
    testcase.addCleanup(server.stop)
    return server


def tls_connect(port, context, timeout=IO_TIMEOUT_S):
    """Connect to 127.0.0.1:port and complete a TLS handshake, bounded by timeout."""
    sock = connect(port, timeout)
    try:
        return context.wrap_socket(sock, server_hostname="127.0.0.1")
    except BaseException:
        sock.close()
        raise


def tls_request(port, context, method, path, headers=None, body=b"", timeout=IO_TIMEOUT_S):
    """One request with Connection: close on a new TLS connection; return the Response.

    timeout bounds the connect, the handshake and every read.
    """
    sock = tls_connect(port, context, timeout)
    try:
        sock.sendall(build_request(method, path, headers, body,
                                   host="127.0.0.1:%d" % port, close=True))
        return read_response(sock, head_request=(method == "HEAD"))
    finally:
        sock.close()


def tls_get(port, context, path, headers=None, timeout=IO_TIMEOUT_S):
    """GET path over TLS with Connection: close; return the Response."""
    return tls_request(port, context, "GET", path, headers, timeout=timeout)


def stderr_lines_naming(server, name):
    """Lines of the server's stderr that mention name, leaving out access-log lines."""
    return [line for line in server.stderr_text().splitlines()
            if name in line and '"GET ' not in line and '"HEAD ' not in line]


class TLSAdversary(Adversary):
    """An Adversary whose connections are TLS (test_minihttpd's bodies run on it unchanged)."""

    def __init__(self, name, body, context):
        Adversary.__init__(self, name, body)
        self.context = context

    def open(self, port):
        """A new TLS connection (the handshake bounded by IO_TIMEOUT_S) with short waits."""
        sock = tls_connect(port, self.context)
        sock.settimeout(ADVERSARY_POLL_S)
        return sock


def run_tls_probe(port, context, count=TLS_PROBE_REQUESTS):
    """test_minihttpd.run_probe over one keep-alive TLS connection.

    Returns (latencies in seconds, None) or, when the probe stopped early,
    (latencies, why).  The handshake is not part of any latency.
    """
    latencies = []
    sock = tls_connect(port, context)
    sock.settimeout(PROBE_REQUEST_TIMEOUT_S)
    end = time.monotonic() + PROBE_BUDGET_S
    try:
        for _ in range(count):
            if time.monotonic() >= end:
                return latencies, "probe budget of %.0f s spent" % PROBE_BUDGET_S
            start = time.monotonic()
            try:
                sock.sendall(build_request("GET", "/small.txt"))
                resp = read_response(sock)
            except (OSError, ValueError) as exc:
                latencies.append(time.monotonic() - start)
                return latencies, "probe request failed: %r" % (exc,)
            latencies.append(time.monotonic() - start)
            if resp.status != 200 or resp.body != SMALL_BODY:
                return latencies, "probe got %r" % (resp,)
    finally:
        sock.close()
    return latencies, None


# ---------------------------------------------------------------------------
# HTTPS
# ---------------------------------------------------------------------------

class TestTLS(ServerTestCase):
    """--tls-cert/--tls-key: HTTPS through the event loop, and its command line."""

    def setUp(self):
        ServerTestCase.setUp(self)
        self.tls_dir = make_tree(self)          # outside every served root
        self.cert, self.key = make_test_certificate(self.tls_dir)
        self.context = client_context(self.cert)

    def serve_tls(self, root, *args, **kwargs):
        """start_tls_server with the test certificate, checked in tearDown like serve()."""
        cert = kwargs.pop("cert", self.cert)
        key = kwargs.pop("key", self.key)
        server = start_tls_server(self, root, cert, key, *args, **kwargs)
        self.servers.append(server)
        return server

    # -- start-up and command line ------------------------------------------

    def test_startup_line_says_https(self):
        root = make_tree(self, {"a.txt": b"A"})
        server = self.serve_tls(root)
        self.assertEqual(server.first_line,
                         "Serving %s on https://127.0.0.1:%d/" % (os.path.abspath(root), server.port))
        self.assertNotEqual(server.port, 0)
        self.assertEqual(tls_get(server.port, self.context, "/a.txt").body, b"A")

    def test_cert_without_key_or_key_without_cert_exits_2(self):
        root = make_tree(self, {"a.txt": b"A"})
        cases = [
            # (arguments given, the option that is missing)
            (["--tls-cert", self.cert], "--tls-key"),
            (["--tls-key", self.key], "--tls-cert"),
        ]
        for given, missing in cases:
            with self.subTest(missing=missing):
                try:
                    r = run_cli("-d", root, "-p", "0", "-b", "127.0.0.1", *given, timeout=10)
                except subprocess.TimeoutExpired:
                    self.fail("server started without %s" % missing)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertNotIn("Traceback", r.stderr)
                self.assertEqual(r.stdout, "")
                lines = [l for l in r.stderr.splitlines() if l.strip()]
                self.assertEqual(len(lines), 1, "expected one line, got %r" % r.stderr)
                self.assertIn(missing, lines[0])

    def test_unloadable_certificate_or_key_exits_2_naming_the_file(self):
        root = make_tree(self, {"a.txt": b"A"})
        bad = make_tree(self)
        missing_cert = os.path.join(bad, "no-such-cert.pem")
        missing_key = os.path.join(bad, "no-such-key.pem")
        garbage_cert = write_file(os.path.join(bad, "garbage-cert.pem"),
                                  b"this is not a certificate\n", 0o644)
        garbage_key = write_file(os.path.join(bad, "garbage-key.pem"),
                                 b"-----BEGIN PRIVATE KEY-----\nnot base64!\n"
                                 b"-----END PRIVATE KEY-----\n")
        other_key = write_file(os.path.join(bad, "other-key.pem"),
                               OTHER_TEST_KEY_PEM.encode("ascii"))
        cases = [
            # (name, cert, key, the file the one line must name)
            ("missing certificate", missing_cert, self.key, missing_cert),
            ("missing key", self.cert, missing_key, missing_key),
            ("garbage certificate", garbage_cert, self.key, garbage_cert),
            ("garbage key", self.cert, garbage_key, garbage_key),
            ("key of another pair", self.cert, other_key, other_key),
        ]
        for name, cert, key, named in cases:
            with self.subTest(name):
                try:
                    r = run_cli("-d", root, "-p", "0", "-b", "127.0.0.1",
                                "--tls-cert", cert, "--tls-key", key, timeout=10)
                except subprocess.TimeoutExpired:
                    self.fail("server started with %s" % name)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertNotIn("Traceback", r.stderr)
                self.assertEqual(r.stdout, "")
                lines = [l for l in r.stderr.splitlines() if l.strip()]
                self.assertEqual(len(lines), 1, "expected one line, got %r" % r.stderr)
                self.assertIn(named, lines[0])
                self.assertNotIn("unrecognized arguments", lines[0])

    def test_key_readable_by_others_warns(self):
        root = make_tree(self, {"a.txt": b"A"})
        cases = [
            # (key file mode, a "readable" warning expected)
            (0o644, True),
            (0o600, False),
        ]
        for mode, warns in cases:
            with self.subTest(mode=oct(mode)):
                folder = make_tree(self)
                cert, key = make_test_certificate(folder, key_mode=mode)
                server = self.serve_tls(root, cert=cert, key=key)
                # Start-up warnings are written before the loop answers anything.
                self.assertEqual(tls_get(server.port, self.context, "/a.txt").status, 200)
                readable = [line for line in server.stderr_text().splitlines()
                            if "readable" in line]
                self.assertEqual(bool(readable), warns, server.stderr_text())

    def test_key_inside_served_folder_warns_and_is_never_served(self):
        cases = [
            # (name, certificate path, key path: relative to the root; None: outside it)
            ("both in tls/", "tls/server.crt", "tls/server.key"),
            ("only the key, at the top", None, "server.key"),
        ]
        for name, cert_rel, key_rel in cases:
            with self.subTest(name):
                root = make_tree(self, {"notes.txt": b"notes", "tls/readme.txt": b"readme"})
                inside = [rel for rel in (cert_rel, key_rel) if rel is not None]
                cert = (os.path.join(root, *cert_rel.split("/")) if cert_rel
                        else os.path.join(self.tls_dir, "outside.crt"))
                key = os.path.join(root, *key_rel.split("/"))
                write_test_pair(cert, key)
                key_name = os.path.basename(key)
                server = self.serve_tls(root, cert=cert, key=key)
                port = server.port
                self.assertEqual(tls_get(port, self.context, "/notes.txt").body, b"notes")
                warned = [line for rel in inside
                          for line in stderr_lines_naming(server, rel.rsplit("/", 1)[-1])]
                self.assertTrue(warned, "no warning naming %s: %r"
                                % (" or ".join(inside), server.stderr_text()))

                key_url = "/" + key_rel
                folder_url = key_url.rsplit("/", 1)[0] + "/"
                quoted = folder_url + "%" + "%02X" % ord(key_name[0]) + key_name[1:]
                for method, path, headers in [("GET", key_url, None),
                                              ("GET", quoted, None),
                                              ("HEAD", key_url, None),
                                              ("GET", key_url, {"Range": "bytes=0-9"})]:
                    with self.subTest(name, request="%s %s %r" % (method, path, headers)):
                        r = tls_request(port, self.context, method, path, headers)
                        self.assertEqual(r.status, 404)
                        self.assertNotIn(b"PRIVATE KEY", r.body)

                listed = "readme.txt" if folder_url == "/tls/" else "notes.txt"
                page = tls_get(port, self.context, folder_url).body.decode("utf-8")
                self.assertIn(listed, page)
                self.assertNotIn(key_name, page)
                doc = json_body(tls_get(port, self.context, folder_url + "?format=json"))
                names = [e["name"] for e in doc["entries"]]
                self.assertIn(listed, names)
                self.assertNotIn(key_name, names)

    def test_key_outside_served_folder_gives_no_warning(self):
        root = make_tree(self, {"a.txt": b"A"})
        server = self.serve_tls(root)
        self.assertEqual(tls_get(server.port, self.context, "/a.txt").status, 200)
        for path in (self.cert, self.key):
            with self.subTest(path=path):
                self.assertEqual(stderr_lines_naming(server, os.path.basename(path)), [])

    # -- requests over TLS ---------------------------------------------------

    def test_keep_alive_two_requests_on_one_connection(self):
        root = make_tree(self, {"a.txt": b"first file", "b.txt": b"second file"})
        server = self.serve_tls(root)
        for how in ("one after the other", "pipelined in one TLS record"):
            with self.subTest(how):
                sock = tls_connect(server.port, self.context, timeout=SHORT_IO_TIMEOUT_S)
                self.addCleanup(sock.close)
                first = build_request("GET", "/a.txt")
                second = build_request("GET", "/b.txt")
                if how == "one after the other":
                    sock.sendall(first)
                    r1 = read_response(sock)
                    sock.sendall(second)
                    r2 = read_response(sock)
                else:
                    # The second request then waits in OpenSSL's buffer, not the
                    # socket's: a loop that only asks the selector would hang here.
                    sock.sendall(first + second)
                    r1 = read_response(sock)
                    r2 = read_response(sock)
                self.assertEqual((r1.status, r1.body), (200, b"first file"))
                self.assertEqual((r2.status, r2.body), (200, b"second file"))
                # a third asks to close: the server then ends the TLS connection
                sock.sendall(build_request("GET", "/a.txt", close=True))
                self.assertEqual(read_response(sock).body, b"first file")
                self.assertTrue(is_closed(sock, SHORT_IO_TIMEOUT_S),
                                "open after a response to Connection: close")

    def test_large_random_file_arrives_intact(self):
        data = os.urandom(LARGE_FILE_BYTES)
        root = make_tree(self, {"big.bin": data})
        server = self.serve_tls(root)
        r = tls_get(server.port, self.context, "/big.bin")
        self.assertEqual(r.status, 200)
        self.assertEqual(int(r.headers["content-length"]), LARGE_FILE_BYTES)
        self.assertEqual(len(r.body), LARGE_FILE_BYTES)
        self.assertEqual(hashlib.sha256(r.body).hexdigest(), hashlib.sha256(data).hexdigest())

    def test_ranges(self):
        data = os.urandom(1024 * 1024)
        size = len(data)
        root = make_tree(self, {"r.bin": data})
        server = self.serve_tls(root)
        cases = [
            # (Range, first byte, last byte)
            ("bytes=0-99", 0, 99),
            ("bytes=700000-700099", 700000, 700099),
            ("bytes=1000000-", 1000000, size - 1),
            ("bytes=-500", size - 500, size - 1),
        ]
        for value, first, last in cases:
            with self.subTest(range=value):
                r = tls_get(server.port, self.context, "/r.bin", {"Range": value})
                self.assertEqual(r.status, 206)
                self.assertEqual(r.headers.get("content-range"),
                                 "bytes %d-%d/%d" % (first, last, size))
                self.assertEqual(r.body, data[first:last + 1])

    def test_gzip_response_decodes(self):
        text = varied_text(200 * 1024, "tls")
        root = make_tree(self, {"big.txt": text})
        server = self.serve_tls(root)
        r = tls_get(server.port, self.context, "/big.txt", {"Accept-Encoding": "gzip"})
        self.assertEqual(r.status, 200)
        self.assertEqual(gunzip_body(self, r), text)

    def test_put_upload(self):
        data = os.urandom(UPLOAD_BYTES)
        root = make_tree(self, {"up": None})
        server = self.serve_tls(root, "-u")
        r = tls_request(server.port, self.context, "PUT", "/up/put.bin", body=data)
        self.assertEqual(r.status, 201, r)
        with open(os.path.join(root, "up", "put.bin"), "rb") as f:
            stored = f.read()
        self.assertEqual(len(stored), len(data))
        self.assertEqual(hashlib.sha256(stored).hexdigest(), hashlib.sha256(data).hexdigest())

    # -- what is not TLS, or not TLS enough ----------------------------------

    def test_plain_http_to_tls_port_gets_plain_400_then_close(self):
        root = make_tree(self, {"a.txt": b"A"})
        server = self.serve_tls(root)
        start = time.monotonic()
        resp, closed = exchange(server.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        elapsed = time.monotonic() - start
        self.assertEqual(status_line(resp), "HTTP/1.1 400 Bad Request")
        self.assertTrue(resp.headers.get("content-type", "").startswith("text/plain"), resp)
        self.assertIn(b"https", resp.body.lower())
        self.assertTrue(closed, "the connection stayed open after the plain-text 400")
        self.assertLess(elapsed, SHORT_IO_TIMEOUT_S)
        # and the server still speaks TLS to the next client
        self.assertEqual(tls_get(server.port, self.context, "/a.txt").body, b"A")

    def test_stalled_handshakes_do_not_delay_others_and_are_closed(self):
        root = make_tree(self, {"a.txt": b"A"})
        server = self.serve_tls(root, "--timeout", str(STALL_TIMEOUT_S))
        hello = client_hello(self.context)
        self.assertEqual(hello[:1], b"\x16", "not a TLS handshake record: %r" % hello[:10])
        stalls = [
            # (name, bytes sent, then nothing)
            ("connect and send nothing", b""),
            ("3 bytes of a ClientHello", hello[:3]),
            ("half a ClientHello", hello[:len(hello) // 2]),
        ]
        stalled = []
        for name, data in stalls:
            sock = connect(server.port)
            self.addCleanup(sock.close)
            if data:
                sock.sendall(data)
            stalled.append((name, sock, time.monotonic()))

        start = time.monotonic()
        try:
            r = tls_get(server.port, self.context, "/a.txt", timeout=STALLED_SECOND_CLIENT_S * 2)
        except socket.timeout:
            r = None
        elapsed = time.monotonic() - start
        self.assertIsNotNone(r, "the second client got no answer within %.1f s behind stalled "
                                "handshakes" % elapsed)
        self.assertEqual((r.status, r.body), (200, b"A"))
        self.assertLess(elapsed, STALLED_SECOND_CLIENT_S,
                        "the second client waited %.2f s behind stalled handshakes" % elapsed)

        for name, sock, opened in stalled:
            with self.subTest(name):
                left = STALL_CLOSED_BY_S - (time.monotonic() - opened)
                # Bytes first (a TLS alert) are allowed: only the end must come in time.
                closed = is_closed(sock, max(left, 0), drain=True)
                waited = time.monotonic() - opened
                self.assertTrue(closed, "still open %.1f s after connecting" % waited)
                self.assertGreaterEqual(waited, STALL_CLOSED_AFTER_S,
                                        "closed %.2f s after connecting, before any deadline"
                                        % waited)

    def test_botched_handshake_closed_at_once(self):
        root = make_tree(self, {"a.txt": b"A"})
        server = self.serve_tls(root, "--timeout", "10")
        # A handshake record holding a HelloRequest, which a client never sends.
        sock = connect(server.port)
        self.addCleanup(sock.close)
        sock.sendall(b"\x16\x03\x01\x00\x04\x00\x00\x00\x00")
        start = time.monotonic()
        # An alert may come first; the close must come long before the 10 s deadline.
        self.assertTrue(is_closed(sock, SHORT_IO_TIMEOUT_S, drain=True),
                        "a botched handshake left open for %.1f s" % (time.monotonic() - start))
        self.assertEqual(tls_get(server.port, self.context, "/a.txt").body, b"A")

    def test_tls_1_1_refused_tls_1_2_accepted(self):
        legacy = legacy_client_context(self.cert)
        if legacy is None:
            self.skipTest("this Python (%d.%d) cannot limit a client to TLS 1.1"
                          % sys.version_info[:2])
        if not openssl_can_speak_tls11(self.cert, self.key, legacy):
            self.skipTest("the local OpenSSL (%s) cannot offer TLS 1.1 at all"
                          % ssl.OPENSSL_VERSION)
        root = make_tree(self, {"a.txt": b"A"})
        conf = write_file(os.path.join(self.tls_dir, "permissive-openssl.cnf"),
                          PERMISSIVE_OPENSSL_CONF.encode("ascii"), 0o644)
        server = self.serve_tls(root, env={"OPENSSL_CONF": conf})

        sock = connect(server.port, SHORT_IO_TIMEOUT_S)
        self.addCleanup(sock.close)
        outcome = None
        try:
            tls = legacy.wrap_socket(sock, server_hostname="127.0.0.1")
            outcome = "connected with %s" % tls.version()
            tls.close()
        except socket.timeout:
            outcome = "no answer to a TLS 1.1 ClientHello within %s s" % SHORT_IO_TIMEOUT_S
        except (ssl.SSLError, ConnectionError):
            pass                                # refused: a protocol_version alert or a reset
        self.assertIsNone(outcome)

        modern = client_context(self.cert)
        modern.maximum_version = ssl.TLSVersion.TLSv1_2
        sock = tls_connect(server.port, modern, SHORT_IO_TIMEOUT_S)
        self.addCleanup(sock.close)
        self.assertEqual(sock.version(), "TLSv1.2")
        sock.sendall(build_request("GET", "/a.txt"))
        self.assertEqual(read_response(sock).body, b"A")

    # -- fairness ------------------------------------------------------------

    def test_tls_download_does_not_stall_small_gets(self):
        root = make_tree(self, {"small.txt": SMALL_BODY})
        make_sparse(os.path.join(root, "huge.bin"), TLS_DOWNLOAD_BYTES)
        server = self.serve_tls(root)
        adv = TLSAdversary("a fast TLS downloader of a 256 MiB file",
                           fast_downloader(server.port, "/huge.bin"), self.context)
        self.addCleanup(adv.finish)
        adv.start()
        self.assertTrue(adv.started.wait(ADVERSARY_START_S),
                        "%s never got under way (error %r, answers %r)"
                        % (adv.name, adv.error, adv.answers[:5]))
        latencies, why = run_tls_probe(server.port, self.context)
        was_running = adv.is_running()
        summary = "beside %s: %s" % (adv.name, format_latencies(latencies))
        self.assertTrue(adv.finish(), "%s did not stop" % adv.name)
        self.assertIsNone(why, summary)
        self.assertEqual(len(latencies), TLS_PROBE_REQUESTS, summary)
        self.assertTrue(was_running, "%s ended before the probe did (error %r); %s"
                        % (adv.name, adv.error, summary))
        self.assertIsNone(adv.error, summary)
        self.assertLess(percentile(latencies, 99), FAIRNESS_P99_S, summary)
        for answer in adv.answers:
            self.assertEqual((answer["status"], answer["length"]), (200, TLS_DOWNLOAD_BYTES))
        self.assertGreater(sum(a["received"] for a in adv.answers), 0)


if __name__ == "__main__":
    unittest.main()
