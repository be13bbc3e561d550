"""Tests for issue 8, "safe on a shared network": auth, cross-site writes, Host check, CORS, page headers.

Run with:  python3 -m unittest -v test_new_security

Every helper that starts a server, builds a request, reads a response or
asks whether a connection closed comes from test_minihttpd; this file adds
only what issue 8 needs on top (a Basic credential, a CSP parser, a
connection from a second loopback address).  TLS is tested elsewhere.
"""

import base64
import hashlib
import os
import re
import socket
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from test_minihttpd import (  # noqa: E402
    IO_TIMEOUT_S, SERVING_RE, SHORT_IO_TIMEOUT_S, Server, ServerTestCase, SharedServerTestCase,
    build_multipart, build_request, get, is_closed, list_tree, make_tree, open_request,
    parse_response, post_multipart, read_file, read_final_response, read_one_response,
    read_response, read_text, request, run_cli, send_raw, spawn_server, start_server,
    upload_temps, wait_for)

WWW_AUTHENTICATE = 'Basic realm="minihttpd", charset="UTF-8"'
AUTH_FAILURES_BEFORE_LOCKOUT = 10     # spec: the 11th attempt within 60 s gets 429
CLI_TIMEOUT_S = 5                     # a command line that should exit 2 at once
IS_LINUX = sys.platform.startswith("linux")


# ---------------------------------------------------------------------------
# Helpers for this file (everything generic comes from test_minihttpd)
# ---------------------------------------------------------------------------

def basic(user, password, encoding="utf-8"):
    """An Authorization value for HTTP Basic: "Basic " + base64(user:password)."""
    token = ("%s:%s" % (user, password)).encode(encoding)
    return "Basic " + base64.b64encode(token).decode("ascii")


def creds(user, password, encoding="utf-8"):
    """A header dict carrying Basic credentials."""
    return {"Authorization": basic(user, password, encoding)}


def sha256_hex(text):
    """The SHA-256 of text's UTF-8 bytes as 64 lower-case hex digits (the auth-file form)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def start_server_env(testcase, root, env, *args):
    """start_server with extra environment variables for the child.

    start_server takes no env, so this follows its pattern on top of
    spawn_server (which does): same command line, same start-up check.
    """
    cmd = ["-p", "0", "-d", root, "-b", "127.0.0.1"] + list(args)
    proc, line, errpath = spawn_server(testcase, cmd, env=env)
    m = SERVING_RE.match(line)
    if not m:
        proc.kill()
        proc.wait(timeout=10)
        testcase.fail("server did not start: first line %r, stderr %r" % (line, read_text(errpath)))
    server = Server(proc, int(m.group(3)), root, line, errpath)
    testcase.addCleanup(server.stop)
    return server


def request_with_host(port, method, path, host, headers=None, body=b"", version="HTTP/1.1"):
    """request() with a chosen Host value (False: no Host at all); returns the Response."""
    data = build_request(method, path, headers, body, version, host=host, close=True)
    return parse_response(send_raw(port, data), head_request=(method == "HEAD"))


def request_from(source_ip, port, method, path, headers=None):
    """request() over a connection whose source address is source_ip (another loopback).

    Linux routes all of 127/8 to lo, so a client bound to 127.0.0.2 reaches
    a server bound to 127.0.0.1 and the server sees a different peer.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S,
                                    source_address=(source_ip, 0))
    try:
        sock.sendall(build_request(method, path, headers, host="127.0.0.1:%d" % port, close=True))
        return read_response(sock, head_request=(method == "HEAD"))
    finally:
        sock.close()


def cli_failure(testcase, *args):
    """Run minihttpd with args, expecting exit 2 and exactly one line on stderr; return that line."""
    argv = ["-p", "0", "-b", "127.0.0.1"] + list(args)
    try:
        r = run_cli(*argv, timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        testcase.fail("server started instead of rejecting %r" % (args,))
    testcase.assertEqual(r.returncode, 2, r.stderr)
    testcase.assertNotIn("Traceback", r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    testcase.assertEqual(len(lines), 1, "expected one line, got %r" % r.stderr)
    return lines[0]


def access_control_headers(resp):
    """Names (lower case) of every Access-Control-* header in resp."""
    return sorted(k.strip().lower() for k, _ in resp.header_list
                  if k.strip().lower().startswith("access-control-"))


def header_tokens(resp, name):
    """A comma-separated header's values, stripped and lower-cased."""
    return [v.strip().lower() for v in resp.headers.get(name, "").split(",") if v.strip()]


def csp_directives(value):
    """Parse a Content-Security-Policy value into {directive: [source, ...]}."""
    out = {}
    for part in value.split(";"):
        tokens = part.split()
        if tokens:
            out.setdefault(tokens[0].lower(), tokens[1:])
    return out


def inline_element_texts(page, tag):
    """The exact text inside every inline <tag>...</tag> (no src) of an HTML page (str)."""
    texts = []
    for m in re.finditer(r"<%s(\s[^>]*)?>(.*?)</%s\s*>" % (tag, tag), page, re.S | re.I):
        if m.group(1) and re.search(r"\bsrc\s*=", m.group(1), re.I):
            continue
        texts.append(m.group(2))
    return texts


def csp_hash(text):
    """The CSP source expression a browser matches an inline element's text against."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-%s'" % base64.b64encode(digest).decode("ascii")


def put_status(port, path, body, headers=None):
    """PUT body to path with Connection: close; return the status."""
    return request(port, "PUT", path, headers=headers, body=body).status


# ---------------------------------------------------------------------------
# Auth
# ---------------------------------------------------------------------------

class TestAuth(ServerTestCase):

    FILES = {"f.txt": b"file body\n", "dir/inner.txt": b"inner\n"}

    def auth_server(self, *args):
        """A server with uploads, echo probes and alice:secret; returns (root, server)."""
        root = make_tree(self, self.FILES)
        return root, self.serve(root, "-u", "--echo", "--auth", "alice:secret", *args)

    def test_every_kind_of_request_needs_credentials(self):
        root, s = self.auth_server()
        boundary = b"authBoundary"
        form = build_multipart(boundary, [("file", "form.txt", b"form")])
        cases = [
            ("file", "GET", "/f.txt", {}, b""),
            ("head", "HEAD", "/f.txt", {}, b""),
            ("listing", "GET", "/", {}, b""),
            ("sub listing", "GET", "/dir/", {}, b""),
            ("json listing", "GET", "/", {"Accept": "application/json"}, b""),
            ("missing file", "GET", "/nope.txt", {}, b""),
            ("echo probe", "GET", "/echo/x", {}, b""),
            ("options", "OPTIONS", "/f.txt", {}, b""),
            ("options with only an origin", "OPTIONS", "/f.txt", {"Origin": "http://127.0.0.1"}, b""),
            ("put", "PUT", "/put.txt", {}, b"data"),
            ("post raw", "POST", "/post.txt", {}, b"data"),
            ("post form", "POST", "/", {"Content-Type": "multipart/form-data; boundary=authBoundary"},
             form),
        ]
        for name, method, path, headers, body in cases:
            with self.subTest(name):
                r = request(s.port, method, path, headers=headers, body=body)
                self.assertEqual(r.status, 401, r)
                self.assertEqual(r.headers.get("www-authenticate"), WWW_AUTHENTICATE)
        self.assertEqual(list_tree(root), ["dir", "dir/inner.txt", "f.txt"])

    def test_missing_malformed_and_wrong_credentials_get_the_same_401(self):
        _, s = self.auth_server()
        missing = get(s.port, "/f.txt")
        self.assertEqual(missing.status, 401, missing)
        self.assertEqual(missing.headers.get("www-authenticate"), WWW_AUTHENTICATE)
        self.assertNotIn(b"file body", missing.body)
        cases = [                       # 8 failures: below the lockout of 10
            ("bad base64", "Basic !!!"),
            ("bearer", "Bearer x"),
            ("no colon", "Basic " + base64.b64encode(b"alicesecret").decode("ascii")),
            ("empty basic", "Basic"),
            ("not utf-8", "Basic " + base64.b64encode(b"alice:\xff\xfe").decode("ascii")),
            ("wrong user", basic("mallory", "secret")),
            ("wrong password", basic("alice", "wrong")),
            ("user case", basic("Alice", "secret")),
        ]
        for name, value in cases:
            with self.subTest(name):
                r = get(s.port, "/f.txt", {"Authorization": value})
                self.assertEqual(r.status, 401, r)
                self.assertEqual(r.headers.get("www-authenticate"), WWW_AUTHENTICATE)
                self.assertEqual(r.body, missing.body)

    def test_right_credentials_get_normal_answers(self):
        root, s = self.auth_server()
        ok = creds("alice", "secret")
        r = get(s.port, "/f.txt", ok)
        self.assertEqual((r.status, r.body), (200, b"file body\n"))
        self.assertEqual(get(s.port, "/dir/", ok).status, 200)
        r = get(s.port, "/echo/x", ok)
        self.assertEqual((r.status, r.body), (200, b"x"))
        self.assertEqual(request(s.port, "OPTIONS", "/f.txt", headers=ok).status, 204)
        self.assertEqual(put_status(s.port, "/put.txt", b"put", ok), 201)
        self.assertEqual(read_file(os.path.join(root, "put.txt")), b"put")
        boundary = b"okBoundary"
        r = post_multipart(s.port, "/dir/", boundary,
                           build_multipart(boundary, [("file", "form.txt", b"form")]), extra=ok)
        self.assertEqual(r.status, 303, r)
        self.assertEqual(read_file(os.path.join(root, "dir", "form.txt")), b"form")

    def test_keep_alive_requests_each_carry_credentials(self):
        _, s = self.auth_server()
        sock = open_request(s.port, "GET", "/f.txt", creds("alice", "secret"))
        try:
            first = read_response(sock)
            sock.sendall(build_request("GET", "/f.txt"))
            second = read_response(sock)
        finally:
            sock.close()
        self.assertEqual((first.status, second.status), (200, 401))

    def test_several_users_and_a_colon_in_the_password(self):
        _, s = self.auth_server("--auth", "bob:pa:ss:word")
        cases = [
            ("first user", "alice", "secret", 200),
            ("colon password", "bob", "pa:ss:word", 200),
            ("colon password cut short", "bob", "pa", 401),
            ("passwords not shared", "bob", "secret", 401),
        ]
        for name, user, password, status in cases:
            with self.subTest(name):
                self.assertEqual(get(s.port, "/f.txt", creds(user, password)).status, status)

    def test_non_ascii_password_is_utf8(self):
        password = "p\u00e4ssw\u00f6rd"
        _, s = self.auth_server("--auth", "carol:" + password, "--auth", "\u00e9mile:\u2713 ok")
        self.assertEqual(get(s.port, "/f.txt", creds("carol", password)).status, 200)
        self.assertEqual(get(s.port, "/f.txt", creds("\u00e9mile", "\u2713 ok")).status, 200)
        # The same letters as Latin-1 bytes are other bytes: they must not match.
        self.assertEqual(get(s.port, "/f.txt", creds("carol", password, "latin-1")).status, 401)

    def test_auth_writes_protects_only_writes(self):
        root = make_tree(self, self.FILES)
        s = self.serve(root, "-u", "--auth", "alice:secret", "--auth-writes")
        ok = creds("alice", "secret")
        open_cases = [("get", "GET", "/f.txt", 200), ("head", "HEAD", "/f.txt", 200),
                      ("listing", "GET", "/", 200), ("options", "OPTIONS", "/f.txt", 204)]
        for name, method, path, status in open_cases:
            with self.subTest(name):
                self.assertEqual(request(s.port, method, path).status, status)
        for method in ("PUT", "POST"):
            with self.subTest(method=method):
                r = request(s.port, method, "/w-%s.txt" % method, body=b"w")
                self.assertEqual(r.status, 401, r)
                self.assertEqual(r.headers.get("www-authenticate"), WWW_AUTHENTICATE)
        for method in ("DELETE", "PATCH"):
            with self.subTest(method=method):
                self.assertEqual(request(s.port, method, "/f.txt").status, 401)
        boundary = b"awBoundary"
        form = build_multipart(boundary, [("file", "form.txt", b"form")])
        self.assertEqual(post_multipart(s.port, "/", boundary, form).status, 401)
        self.assertEqual(list_tree(root), ["dir", "dir/inner.txt", "f.txt"])
        self.assertEqual(put_status(s.port, "/w.txt", b"w", ok), 201)
        self.assertEqual(read_file(os.path.join(root, "w.txt")), b"w")
        self.assertEqual(post_multipart(s.port, "/", boundary, form, extra=ok).status, 303)
        self.assertEqual(read_file(os.path.join(root, "form.txt")), b"form")

    def test_environment_variable(self):
        root = make_tree(self, self.FILES)
        s = start_server_env(self, root, {"MINIHTTPD_AUTH": "erin:env:pw"})
        self.servers.append(s)
        self.assertEqual(get(s.port, "/f.txt").status, 401)
        self.assertEqual(get(s.port, "/f.txt", creds("erin", "env:pw")).status, 200)
        self.assertEqual(get(s.port, "/f.txt", creds("erin", "env")).status, 401)

    def test_auth_file_plain_and_sha256_lines(self):
        root = make_tree(self, self.FILES)
        hashed = "hashed:pw \u00fc"
        lines = [
            "# users of the test server",
            "",
            "alice:plain:pw",
            "",
            "# note: carol:pw",            # a comment with a colon is still a comment
            "bob:sha256:%s" % sha256_hex(hashed),
            "",
        ]
        work = make_tree(self, {"users.txt": "\n".join(lines).encode("utf-8")})
        s = self.serve(root, "--auth-file", os.path.join(work, "users.txt"))
        self.assertEqual(get(s.port, "/f.txt").status, 401)
        cases = [
            ("plain", "alice", "plain:pw", 200),
            ("sha256 of a utf-8 password", "bob", hashed, 200),
            ("the hash is not a password", "bob", sha256_hex(hashed), 401),
            ("nor is the sha256 form", "bob", "sha256:" + sha256_hex(hashed), 401),
            ("wrong plain", "alice", "plain", 401),
            ("comment is not a user", "# note", " carol:pw", 401),
        ]
        for name, user, password, status in cases:
            with self.subTest(name):
                self.assertEqual(get(s.port, "/f.txt", creds(user, password)).status, status)

    def test_bad_auth_options_exit_2_with_one_line(self):
        root = make_tree(self, self.FILES)
        work = make_tree(self, {"bad.txt": b"# ok\nalice:pw\nno colon on line three\n",
                                "users.txt": b"alice:pw\n"})
        missing = os.path.join(work, "no-such-file.txt")
        line = cli_failure(self, "-d", root, "--auth-file", missing)
        self.assertIn(missing, line)
        bad = os.path.join(work, "bad.txt")
        line = cli_failure(self, "-d", root, "--auth-file", bad)
        self.assertIn(bad, line)
        self.assertRegex(line.replace(bad, ""), r"(?<![\d.])3(?!\d)", "line number 3 not named")
        with self.subTest("--auth without a colon"):
            cli_failure(self, "-d", root, "--auth", "alicesecret")
        with self.subTest("--auth-writes alone"):
            cli_failure(self, "-d", root, "-u", "--auth-writes")

    def test_expect_100_continue_with_bad_credentials_gets_401_only(self):
        root, s = self.auth_server()
        for name, headers in (("wrong", creds("alice", "wrong")), ("missing", {})):
            with self.subTest(name):
                headers = dict(headers, **{"Content-Length": "4", "Expect": "100-continue"})
                sock = open_request(s.port, "PUT", "/e-%s.txt" % name, headers)
                try:
                    resp, interim, _ = read_final_response(sock)
                    self.assertEqual((resp.status, interim), (401, []))
                    self.assertEqual(resp.headers.get("www-authenticate"), WWW_AUTHENTICATE)
                    self.assertTrue(is_closed(sock), "connection kept open with an unread body")
                finally:
                    sock.close()
        self.assertEqual(list_tree(root), ["dir", "dir/inner.txt", "f.txt"])
        self.assertEqual(upload_temps(root), [])

    def test_expect_100_continue_with_right_credentials(self):
        root, s = self.auth_server()
        headers = dict(creds("alice", "secret"), **{"Content-Length": "4", "Expect": "100-continue"})
        sock = open_request(s.port, "PUT", "/c.txt", headers)
        try:
            first, rest = read_one_response(sock)
            self.assertEqual(first.status, 100, first)
            sock.sendall(b"body")
            final, interim, _ = read_final_response(sock, rest)
        finally:
            sock.close()
        self.assertEqual((final.status, interim), (201, []))
        self.assertEqual(read_file(os.path.join(root, "c.txt")), b"body")

    def test_429_after_ten_failures(self):
        _, s = self.auth_server()
        ok = creds("alice", "secret")
        for i in range(12):                         # missing credentials do not count
            self.assertEqual(get(s.port, "/f.txt").status, 401, "missing #%d" % i)
        self.assertEqual(get(s.port, "/f.txt", ok).status, 200)
        bad = [creds("alice", "wrong%d" % i) for i in range(5)] + [{"Authorization": "Basic !!!"}] * 5
        self.assertEqual(len(bad), AUTH_FAILURES_BEFORE_LOCKOUT)
        for i, headers in enumerate(bad):
            self.assertEqual(get(s.port, "/f.txt", headers).status, 401, "failure #%d" % (i + 1))
        r = get(s.port, "/f.txt", ok)
        self.assertEqual(r.status, 429, r)
        self.assertNotIn(b"file body", r.body)
        self.assertRegex(r.headers.get("retry-after", ""), r"^\d+$")
        self.assertTrue(0 < int(r.headers["retry-after"]) <= 60, r.headers)
        self.assertEqual(get(s.port, "/f.txt").status, 429)
        self.assertEqual(put_status(s.port, "/locked.txt", b"x", ok), 429)
        with self.subTest("another address is unaffected"):
            if not IS_LINUX:
                self.skipTest("127.0.0.2 reaches 127.0.0.1 only on Linux")
            try:
                other = request_from("127.0.0.2", s.port, "GET", "/f.txt", ok)
            except OSError as e:
                self.skipTest("cannot connect from 127.0.0.2: %s" % e)
            self.assertEqual((other.status, other.body), (200, b"file body\n"))

    def test_startup_warns_that_passwords_travel_in_clear(self):
        root = make_tree(self, self.FILES)
        s = self.serve(root, "--auth", "alice:secret")
        self.assertTrue(wait_for(lambda: "clear" in s.stderr_text(), timeout=SHORT_IO_TIMEOUT_S),
                        "no warning containing 'clear': %r" % s.stderr_text())

    def test_access_log_names_the_user(self):
        _, s = self.auth_server()
        self.assertEqual(get(s.port, "/f.txt", creds("alice", "secret")).status, 200)
        line_re = re.compile(r'^127\.0\.0\.1 - alice \[[^\]]+\] "GET /f\.txt HTTP/1\.1" 200 ', re.M)
        self.assertTrue(wait_for(lambda: line_re.search(s.stderr_text()), timeout=SHORT_IO_TIMEOUT_S),
                        "no access-log line naming alice: %r" % s.stderr_text())


# ---------------------------------------------------------------------------
# Cross-site writes
# ---------------------------------------------------------------------------

class TestCrossSiteWrites(ServerTestCase):

    def upload_server(self, *args):
        """A server with uploads on and one file; returns (root, server)."""
        root = make_tree(self, {"keep.txt": b"keep"})
        return root, self.serve(root, "-u", *args)

    def assert_refused_and_nothing_stored(self, root, resp):
        """resp is a 403 and the tree still holds only keep.txt, no temporaries."""
        self.assertEqual(resp.status, 403, resp)
        self.assertEqual(list_tree(root), ["keep.txt"])
        self.assertEqual(read_file(os.path.join(root, "keep.txt")), b"keep")

    def test_foreign_origins_refused(self):
        root, s = self.upload_server()
        port = s.port
        origins = [
            ("other site", "http://evil.example"),
            ("null", "null"),
            ("https instead of http", "https://127.0.0.1:%d" % port),
            ("other port", "http://127.0.0.1:%d" % (port + 1 if port < 65535 else port - 1)),
            ("no port", "http://127.0.0.1"),
            ("other name for this host", "http://localhost:%d" % port),
            ("suffix", "http://127.0.0.1:%d.evil.example" % port),
        ]
        for name, origin in origins:
            for method in ("PUT", "POST"):
                with self.subTest(name, method=method):
                    r = request(port, method, "/new.html", headers={"Origin": origin},
                                body=b"<script>pwn()</script>")
                    self.assert_refused_and_nothing_stored(root, r)

    def test_cors_simple_text_plain_post_refused(self):
        # The attack from the issue: a text/plain POST is a CORS "simple" request, no preflight.
        root, s = self.upload_server()
        r = request(s.port, "POST", "/pwn.html",
                    headers={"Origin": "http://evil.example", "Content-Type": "text/plain"},
                    body=b"<script>pwn()</script>")
        self.assert_refused_and_nothing_stored(root, r)

    def test_foreign_form_post_refused(self):
        root, s = self.upload_server()
        boundary = b"xsBoundary"
        body = build_multipart(boundary, [("file", "pwn.html", b"<script>pwn()</script>")])
        r = post_multipart(s.port, "/", boundary, body, extra={"Origin": "http://evil.example"})
        self.assert_refused_and_nothing_stored(root, r)

    def test_foreign_delete_refused(self):
        root, s = self.upload_server()
        r = request(s.port, "DELETE", "/keep.txt", headers={"Origin": "http://evil.example"})
        self.assert_refused_and_nothing_stored(root, r)

    def test_sec_fetch_site(self):
        root, s = self.upload_server()
        r = request(s.port, "PUT", "/cross.txt", headers={"Sec-Fetch-Site": "cross-site"}, body=b"x")
        self.assert_refused_and_nothing_stored(root, r)
        allowed = [("same-origin", {"Sec-Fetch-Site": "same-origin"}),
                   ("none", {"Sec-Fetch-Site": "none"}),
                   ("neither header (curl)", {})]
        for i, (name, headers) in enumerate(allowed):
            with self.subTest(name):
                self.assertEqual(put_status(s.port, "/ok%d.txt" % i, b"ok", headers), 201)
                self.assertEqual(read_file(os.path.join(root, "ok%d.txt" % i)), b"ok")

    def test_origin_null(self):
        # Origin: null alone is refused.  But our own pages send Referrer-Policy: no-referrer,
        # and under it a browser sends "Origin: null" for a same-origin POST (Fetch standard,
        # "append a request Origin header"), so null with Sec-Fetch-Site: same-origin is our
        # own upload form and must pass; null with any other Sec-Fetch-Site stays refused.
        root, s = self.upload_server()
        for site in ("cross-site", "same-site"):
            with self.subTest(site):
                r = request(s.port, "POST", "/null.txt",
                            headers={"Origin": "null", "Sec-Fetch-Site": site}, body=b"n")
                self.assert_refused_and_nothing_stored(root, r)
        boundary = b"nullBoundary"
        body = build_multipart(boundary, [("file", "own-form.txt", b"own")])
        r = post_multipart(s.port, "/", boundary, body, accept_json=True,
                           extra={"Origin": "null", "Sec-Fetch-Site": "same-origin"})
        self.assertEqual(r.status, 201, r)
        self.assertEqual(read_file(os.path.join(root, "own-form.txt")), b"own")

    def test_same_origin_writes_accepted(self):
        root, s = self.upload_server()
        port = s.port
        r = request(port, "PUT", "/same.txt", headers={"Origin": "http://127.0.0.1:%d" % port},
                    body=b"same")
        self.assertEqual(r.status, 201, r)
        self.assertEqual(read_file(os.path.join(root, "same.txt")), b"same")
        r = request_with_host(port, "PUT", "/same-localhost.txt", "localhost:%d" % port,
                              {"Origin": "http://localhost:%d" % port}, b"l")
        self.assertEqual(r.status, 201, r)
        boundary = b"sameBoundary"
        body = build_multipart(boundary, [("file", "form.txt", b"form")])
        r = post_multipart(port, "/", boundary, body,
                           extra={"Origin": "http://127.0.0.1:%d" % port, "Sec-Fetch-Site": "same-origin"})
        self.assertEqual(r.status, 303, r)
        self.assertEqual(read_file(os.path.join(root, "form.txt")), b"form")

    def test_named_cors_origin_may_write(self):
        root, s = self.upload_server("--cors", "https://app.example")
        r = request(s.port, "PUT", "/app.txt", headers={"Origin": "https://app.example"}, body=b"a")
        self.assertEqual(r.status, 201, r)
        self.assertEqual(read_file(os.path.join(root, "app.txt")), b"a")
        r = request(s.port, "PUT", "/evil.txt", headers={"Origin": "http://evil.example"}, body=b"e")
        self.assertEqual(r.status, 403, r)
        self.assertFalse(os.path.exists(os.path.join(root, "evil.txt")))

    def test_wildcard_cors_does_not_open_writes(self):
        root, s = self.upload_server("--cors")
        for origin in ("https://app.example", "http://evil.example"):
            with self.subTest(origin=origin):
                r = request(s.port, "PUT", "/w.txt", headers={"Origin": origin}, body=b"w")
                self.assert_refused_and_nothing_stored(root, r)
        r = get(s.port, "/keep.txt", {"Origin": "http://evil.example"})
        self.assertEqual((r.status, r.body), (200, b"keep"))

    def test_refused_even_with_right_credentials(self):
        root, s = self.upload_server("--auth", "alice:secret")
        headers = dict(creds("alice", "secret"), Origin="http://evil.example")
        r = request(s.port, "PUT", "/pwn.html", headers=headers, body=b"x")
        self.assert_refused_and_nothing_stored(root, r)


# ---------------------------------------------------------------------------
# DNS rebinding: the Host check
# ---------------------------------------------------------------------------

class TestHostCheck(SharedServerTestCase):

    @classmethod
    def set_up_shared(cls, fixture):
        cls.root = make_tree(fixture, {"f.txt": b"file body\n"})
        cls.srv = start_server(fixture, cls.root, "-u")
        cls.named = start_server(fixture, cls.root, "--host", "files.lan", "--host", "nas.home")
        cls.anything = start_server(fixture, cls.root, "--host", "*")

    def status_for(self, server, host, method="GET", path="/f.txt", version="HTTP/1.1"):
        """The status of method path sent with Host: host."""
        return request_with_host(server.port, method, path, host, version=version).status

    def test_allowed_names(self):
        port = self.port
        hostname = socket.gethostname()
        hosts = [
            "127.0.0.1", "127.0.0.1:%d" % port, "192.168.1.20:8000", "10.0.0.7",
            "[::1]", "[::1]:%d" % port, "[2001:db8::1]:8080",
            "localhost", "localhost:%d" % port, "sub.localhost", "a.b.localhost:%d" % port,
            hostname, "%s:%d" % (hostname, port), hostname.upper(), hostname + ".",
            "%s.:%d" % (hostname, port), hostname + ".local", "%s.local:%d" % (hostname, port),
        ]
        for host in hosts:
            with self.subTest(host=host):
                self.assertEqual(self.status_for(self.srv, host), 200)

    def test_foreign_names_get_421_naming_the_option(self):
        port = self.port
        hostname = socket.gethostname()
        hosts = [
            "evil.example", "evil.example:%d" % port, "localhost.evil.example",
            "notlocalhost", "127.0.0.1.nip.io", "%s.evil.example" % hostname,
            "evil%s" % hostname, "files.lan",
        ]
        for host in hosts:
            for path in ("/f.txt", "/"):
                with self.subTest(host=host, path=path):
                    r = request_with_host(port, "GET", path, host)
                    self.assertEqual(r.status, 421, r)
                    self.assertIn(b"--host", r.body)
                    self.assertNotIn(b"file body", r.body)

    def test_write_with_foreign_host_refused(self):
        r = request_with_host(self.port, "PUT", "/rebound.txt", "evil.example:%d" % self.port,
                              body=b"x")
        self.assertEqual(r.status, 421, r)
        self.assertFalse(os.path.exists(os.path.join(self.root, "rebound.txt")))

    def test_http10(self):
        self.assertEqual(self.status_for(self.srv, False, version="HTTP/1.0"), 200)
        self.assertEqual(self.status_for(self.srv, "evil.example", version="HTTP/1.0"), 421)

    def test_host_option(self):
        p = self.named.port
        cases = [("files.lan", 200), ("files.lan:%d" % p, 200), ("FILES.Lan:%d" % p, 200),
                 ("nas.home", 200), ("other.lan", 421), ("sub.files.lan", 421),
                 ("127.0.0.1:%d" % p, 200), ("localhost", 200)]
        for host, status in cases:
            with self.subTest(host=host):
                self.assertEqual(self.status_for(self.named, host), status)

    def test_host_star_turns_the_check_off(self):
        for host in ("evil.example", "evil.example:1234", "localhost.evil.example"):
            with self.subTest(host=host):
                self.assertEqual(self.status_for(self.anything, host), 200)


# ---------------------------------------------------------------------------
# CORS
# ---------------------------------------------------------------------------

class TestCORS(SharedServerTestCase):

    APP = "https://app.example"
    OTHER_APP = "https://other.example"

    @classmethod
    def set_up_shared(cls, fixture):
        cls.root = make_tree(fixture, {"f.txt": b"file body\n"})
        cls.srv = start_server(fixture, cls.root)
        cls.wild = start_server(fixture, cls.root, "--cors")
        cls.named = start_server(fixture, cls.root, "-u", "--cors", cls.APP, "--cors", cls.OTHER_APP)
        cls.wild_auth = start_server(fixture, cls.root, "--cors", "--auth", "alice:secret")
        cls.named_auth = start_server(fixture, cls.root, "--cors", cls.APP, "--auth", "alice:secret")

    def preflight(self, server, origin, method="GET", req_headers=None):
        """Send a CORS preflight (no credentials); return the Response."""
        headers = {"Origin": origin, "Access-Control-Request-Method": method}
        if req_headers:
            headers["Access-Control-Request-Headers"] = req_headers
        return request(server.port, "OPTIONS", "/f.txt", headers=headers)

    def assert_good_preflight(self, r, origin_value, method="GET"):
        """r is a 204 preflight answer allowing method from origin_value."""
        self.assertEqual(r.status, 204, r)
        self.assertEqual(r.headers.get("access-control-allow-origin"), origin_value)
        self.assertIn(method.lower(), header_tokens(r, "access-control-allow-methods"))
        self.assertRegex(r.headers.get("access-control-max-age", ""), r"^[1-9]\d*$")

    def test_without_cors_no_access_control_headers(self):
        cases = [("get", "GET", "/f.txt", {"Origin": self.APP}),
                 ("not found", "GET", "/missing.txt", {"Origin": self.APP}),
                 ("preflight", "OPTIONS", "/f.txt",
                  {"Origin": self.APP, "Access-Control-Request-Method": "GET"})]
        for name, method, path, headers in cases:
            with self.subTest(name):
                r = request(self.srv.port, method, path, headers=headers)
                self.assertEqual(access_control_headers(r), [], r)

    def test_wildcard_allows_any_origin_to_read(self):
        cases = [("no origin", "/f.txt", {}, 200), ("origin", "/f.txt", {"Origin": self.APP}, 200),
                 ("listing", "/", {"Origin": "http://evil.example"}, 200),
                 ("not found", "/missing.txt", {"Origin": self.APP}, 404)]
        for name, path, headers, status in cases:
            with self.subTest(name):
                r = get(self.wild.port, path, headers)
                self.assertEqual(r.status, status)
                self.assertEqual(r.headers.get("access-control-allow-origin"), "*")
                self.assertNotIn("access-control-allow-credentials", r.headers)

    def test_wildcard_preflight(self):
        r = self.preflight(self.wild, self.APP, "GET", "X-Custom, Range")
        self.assert_good_preflight(r, "*")
        allowed = header_tokens(r, "access-control-allow-headers")
        self.assertIn("x-custom", allowed)
        self.assertIn("range", allowed)

    def test_named_origin(self):
        for origin in (self.APP, self.OTHER_APP):
            with self.subTest(origin=origin):
                r = get(self.named.port, "/f.txt", {"Origin": origin})
                self.assertEqual(r.status, 200)
                self.assertEqual(r.headers.get("access-control-allow-origin"), origin)
                self.assertIn("origin", header_tokens(r, "vary"))
                self.assertNotIn("access-control-allow-credentials", r.headers)
        for name, headers in (("other origin", {"Origin": "http://evil.example"}), ("no origin", {})):
            with self.subTest(name):
                r = get(self.named.port, "/f.txt", headers)
                self.assertEqual(r.status, 200)
                self.assertNotIn("access-control-allow-origin", r.headers)

    def test_named_origin_preflight_for_a_write(self):
        r = self.preflight(self.named, self.APP, "PUT", "Content-Type")
        self.assert_good_preflight(r, self.APP, "PUT")
        self.assertIn("content-type", header_tokens(r, "access-control-allow-headers"))
        self.assertIn("origin", header_tokens(r, "vary"))
        r = self.preflight(self.named, "http://evil.example", "PUT")
        self.assertNotIn("access-control-allow-origin", r.headers)

    def test_preflight_needs_no_credentials(self):
        self.assert_good_preflight(self.preflight(self.wild_auth, self.APP), "*")
        self.assert_good_preflight(self.preflight(self.named_auth, self.APP), self.APP)

    def test_credentials_only_for_a_named_origin(self):
        ok = creds("alice", "secret")
        r = get(self.named_auth.port, "/f.txt", dict(ok, Origin=self.APP))
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers.get("access-control-allow-origin"), self.APP)
        self.assertEqual(r.headers.get("access-control-allow-credentials"), "true")
        r = get(self.wild_auth.port, "/f.txt", dict(ok, Origin=self.APP))
        self.assertEqual(r.status, 200)
        self.assertNotIn("access-control-allow-credentials", r.headers)
        r = get(self.wild_auth.port, "/f.txt")
        self.assertEqual(r.status, 401)


# ---------------------------------------------------------------------------
# Page headers: Content-Security-Policy and Referrer-Policy
# ---------------------------------------------------------------------------

class TestPageHeaders(SharedServerTestCase):

    @classmethod
    def set_up_shared(cls, fixture):
        cls.root = make_tree(fixture, {"f.txt": b"0123456789", "dir/inner.txt": b"inner"})
        cls.srv = start_server(fixture, cls.root, "-u", "--echo")
        cls.auth = start_server(fixture, cls.root, "--auth", "alice:secret")
        cls.auth_free_readonly = start_server(fixture, cls.root)

    def assert_csp_allows_only_own_inline(self, resp):
        """resp is an HTML page whose CSP blocks everything but its own inline script and style."""
        self.assertTrue(resp.headers.get("content-type", "").startswith("text/html"), resp.headers)
        csp = resp.headers.get("content-security-policy", "")
        self.assertIn("default-src 'none'", csp)
        self.assertNotIn("'unsafe-inline'", csp)
        self.assertNotIn("'unsafe-eval'", csp)
        directives = csp_directives(csp)
        page = resp.body.decode("utf-8")
        for tag, directive in (("script", "script-src"), ("style", "style-src")):
            for text in inline_element_texts(page, tag):
                with self.subTest(tag=tag, start=text[:40]):
                    self.assertIn(csp_hash(text), directives.get(directive, []),
                                  "inline <%s> not allowed by %s in %r" % (tag, directive, csp))
        # A hash allows an element's text, never a style="" or onclick="" attribute.
        self.assertIsNone(re.search(r"<[^>]+\s(style|on[a-z]+)\s*=", page), "inline attribute")
        return directives

    def test_listing_page_csp(self):
        r = get(self.port, "/")
        self.assertEqual(r.status, 200)
        page = r.body.decode("utf-8")
        self.assertEqual(len(inline_element_texts(page, "script")), 1, "upload script expected")
        self.assertEqual(len(inline_element_texts(page, "style")), 1)
        directives = self.assert_csp_allows_only_own_inline(r)
        # The upload script POSTs with XMLHttpRequest: default-src 'none' would block it.
        self.assertIn("'self'", directives.get("connect-src", []))

    def test_error_pages_csp(self):
        cases = [("not found", self.srv, build_request("GET", "/missing.txt", close=True), 404),
                 ("bad request", self.srv, build_request("GET", "no-slash", close=True), 400),
                 ("method not allowed", self.auth_free_readonly,
                  build_request("PUT", "/f.txt", body=b"x", close=True), 405)]
        for name, server, data, status in cases:
            with self.subTest(name):
                r = parse_response(send_raw(server.port, data))
                self.assertEqual(r.status, status, r)
                self.assert_csp_allows_only_own_inline(r)
        # 401 and 421 may be plain text; when they are HTML pages, the same policy holds.
        cases = [("misdirected", self.srv, build_request("GET", "/", host="evil.example", close=True), 421),
                 ("unauthorized", self.auth, build_request("GET", "/", close=True), 401)]
        for name, server, data, status in cases:
            with self.subTest(name):
                r = parse_response(send_raw(server.port, data))
                self.assertEqual(r.status, status, r)
                if r.headers.get("content-type", "").startswith("text/html"):
                    self.assert_csp_allows_only_own_inline(r)

    def test_referrer_policy_on_every_response(self):
        etag = get(self.port, "/f.txt").headers.get("etag", "")
        self.assertTrue(etag, "no ETag on a file")
        boundary = b"rpBoundary"
        form = build_multipart(boundary, [("file", "rp-form.txt", b"f")])
        form_headers = {"Content-Type": "multipart/form-data; boundary=rpBoundary"}
        cases = [
            ("file", self.srv, "GET", "/f.txt", {}, b"", True, 200),
            ("head", self.srv, "HEAD", "/f.txt", {}, b"", True, 200),
            ("range", self.srv, "GET", "/f.txt", {"Range": "bytes=0-3"}, b"", True, 206),
            ("not modified", self.srv, "GET", "/f.txt", {"If-None-Match": etag}, b"", True, 304),
            ("listing", self.srv, "GET", "/dir/", {}, b"", True, 200),
            ("folder redirect", self.srv, "GET", "/dir", {}, b"", True, 301),
            ("json listing", self.srv, "GET", "/", {"Accept": "application/json"}, b"", True, 200),
            ("echo", self.srv, "GET", "/echo/x", {}, b"", True, 200),
            ("options", self.srv, "OPTIONS", "/f.txt", {}, b"", True, 204),
            ("put", self.srv, "PUT", "/rp-put.txt", {}, b"p", True, 201),
            ("form", self.srv, "POST", "/", form_headers, form, True, 303),
            ("not found", self.srv, "GET", "/missing.txt", {}, b"", True, 404),
            ("misdirected", self.srv, "GET", "/f.txt", {}, b"", "evil.example", 421),
            ("unauthorized", self.auth, "GET", "/f.txt", {}, b"", True, 401),
            ("authorized", self.auth, "GET", "/f.txt", creds("alice", "secret"), b"", True, 200),
        ]
        for name, server, method, path, headers, body, host, status in cases:
            with self.subTest(name):
                if host is True:
                    host = "127.0.0.1:%d" % server.port
                r = request_with_host(server.port, method, path, host, headers, body)
                self.assertEqual(r.status, status, r)
                self.assertEqual(r.headers.get("referrer-policy"), "no-referrer", r.headers)
        with self.subTest("bad request"):
            r = parse_response(send_raw(self.port, b"NOT HTTP AT ALL\r\n\r\n"))
            self.assertEqual(r.status, 400, r)
            self.assertEqual(r.headers.get("referrer-policy"), "no-referrer", r.headers)


if __name__ == "__main__":
    unittest.main()
