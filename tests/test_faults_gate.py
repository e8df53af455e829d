"""Faults at the cache-host's gate (issue 13, part B): who gets in, what is
fetched for them, and what bad input does. Each test reproduces a fault found
in the code before it was mended (said in its docstring) against a real
server, real origin, real browser or real sockets, then holds.

Floods (the fill queue, the metadata store, connections) are in
test_faults_floods.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import socket
import time
from urllib.parse import quote, urlsplit

import pytest
from api_client import Api
from backends import run_async
from conftest import curl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from page_client import PageClient
from test_api import LOCKED, PASSWORD, start
from test_fills import rows, wait_fill_state
from test_policy import start_strict

from withcache import keys
from withcache.server.policy import carried_ipv4, is_public_address
from withcache.server.web import auth

BODY = os.urandom(20_000)
HIT_PATH = "/gate/hit.bin"


def raw_http(port: int, request: bytes, source: str | None = None, timeout: float = 10) -> bytes:
    """Send bytes as they are (no client library to tidy them) and read the answer."""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None
    ) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def header(answer: bytes, name: str) -> str | None:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def get(path: str, *headers: str) -> bytes:
    """A GET; a surrogate-escaped character in a header stands for that raw byte."""
    lines = "".join(f"{h}\r\n" for h in headers)
    text = f"GET {path} HTTP/1.1\r\nHost: x\r\n{lines}Connection: close\r\n\r\n"
    return text.encode("utf-8", "surrogateescape")


# -- 4. redirect targets: only paths on this site, as browsers read them

# Each of these was answered `303 Location: <another site>` (or a 500, for
# the CR LF one) before; a browser strips tabs and newlines, reads "\" as "/".
OFF_SITE = [
    "/%09/evil.example/phish",
    "/%0a/evil.example/phish",
    "/%0d%0a/evil.example/phish",
    "%09//evil.example/phish",
    "%20//evil.example/phish",
    "/%5Cevil.example/phish",
    "%5C%5Cevil.example/phish",
    "/%5C/evil.example/phish",
    "%00//evil.example/phish",
    "https://evil.example/phish",
    "//evil.example/phish",
]


def _as_a_browser_reads(location: str) -> str:
    """The WHATWG URL parser's first steps on a Location value."""
    cleaned = location.strip("".join(map(chr, range(0x21))))
    return re.sub(r"[\t\n\r]", "", cleaned).replace("\\", "/")


@pytest.mark.parametrize("target", OFF_SITE)
def test_login_next_never_sends_a_browser_to_another_site(cache_host, target):
    host = cache_host()  # open UI: /login redirects at once
    answer = raw_http(host.port, get(f"/login?next={target}"))
    assert status_of(answer) == 303, answer[:300]
    read = _as_a_browser_reads(header(answer, "Location") or "")
    assert read.startswith("/") and not read.startswith("//"), read


def test_action_next_and_links_stay_on_the_site(origin, cache_host):
    """Every UI form's `next`, and the delete page's way back, had the same hole."""
    url = origin.add("/gate/redirect/a.bin", BODY)
    host = cache_host()
    curl("-f", "-o", os.devnull, host.blob_url(url))
    host.wait_cached(url)
    (artifact_id,) = rows(host, "SELECT id FROM artifacts")[0]
    ui = PageClient(host.url)
    csrf = ui.csrf("/downloads")
    for target in ("/\t/evil.example/x", "/\\evil.example/x", " //evil.example/x"):
        reply = ui.post("/downloads/clear", {"csrf": csrf, "next": target})
        assert reply.status == 303
        read = _as_a_browser_reads(reply.location or "")
        assert read.startswith("/") and not read.startswith("//"), read
        page = ui.get(f"/cached/{artifact_id}/delete?next={quote(target)}")
        (back,) = re.findall(r'<a href="([^"]*)" role="button" class="secondary', page.text)
        assert not _as_a_browser_reads(back).startswith("//"), back
    assert ui.post("/downloads/clear", {"csrf": csrf, "next": "/cached?q=a"}).location == (
        "/cached?q=a"
    )


def test_a_browser_logging_in_with_a_crafted_next_stays_here(origin, cache_host, page):
    """The real thing: chromium follows the login's redirect. The crafted
    target is another local server (the origin), so nothing leaves the box."""
    host = cache_host(env=LOCKED)
    away = f"/%09/127.0.0.1:{origin.port}/phish"
    page.goto(f"{host.url}/login?next={away}")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_load_state()
    assert urlsplit(page.url).port == host.port, page.url
    assert origin.gets("/phish") == 0
    # Once logged in, /login redirects at once: the same target, the same answer.
    page.goto(f"{host.url}/login?next={away}")
    assert urlsplit(page.url).port == host.port, page.url


# -- 9. login throttling: bounded, newest offenders kept, a global last resort


async def _post_logins(port: int, sources: list[str], password: str) -> list[int]:
    body = f"password={password}".encode()
    request = (
        b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )
    gate = asyncio.Semaphore(64)

    async def one(source: str) -> int:
        async with gate:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(source, 0)
            )
            writer.write(request)
            line = await reader.readline()
            await reader.read()
            writer.close()
            return int(line.split()[1])

    return await asyncio.gather(*(one(s) for s in sources))


def test_many_addresses_cannot_buy_unlimited_password_guesses(cache_host):
    """Before: once 10,000 addresses had failed within 120 s, every new address
    had its guesses checked without limit (here: 10 of 10 checked)."""
    host = cache_host(env=LOCKED)
    sources = [f"127.0.{a}.{b}" for a in range(1, 41) for b in range(1, 255)][:10_050]
    started = time.monotonic()
    flood = run_async(lambda: _post_logins(host.port, sources, "guess"))
    seconds = time.monotonic() - started
    assert set(flood) <= {403, 429}
    checked = flood.count(403)  # a 429 means the password was not even looked at
    assert checked <= auth.FLOOD_FAILURES + seconds / auth.FLOOD_WAIT + 5, (checked, seconds)
    fresh = run_async(lambda: _post_logins(host.port, ["127.0.200.1"] * 10, "guess"))
    assert fresh.count(403) <= 2, fresh
    assert "Traceback" not in host.log()


def test_the_throttle_table_forgets_the_quietest_address_not_the_newest():
    gate = auth.Auth("secret", b"k" * 32)
    now = 1_000_000.0
    for n in range(auth._MAX_TRACKED):
        gate.login_failed(f"old-{n}", now=now - 1000 + n * 0.01)
    for _ in range(auth.FREE_LOGIN_TRIES):
        gate.login_failed("newest", now=now)
    assert gate.login_wait("newest", now=now) > 0  # before: not tracked at all
    assert len(gate._failures) == auth._MAX_TRACKED
    assert "old-0" not in gate._failures and "old-1" in gate._failures
    assert not gate.flooded(now)
    # A hundred failures from as many addresses in a second: everyone waits.
    for n in range(auth.FLOOD_FAILURES):
        gate.login_failed(f"flood-{n}", now=now + n / auth.FLOOD_FAILURES)
    assert gate.flooded(now + 1)
    assert 0 < gate.login_wait("never-seen", now=now + 1) <= auth.FLOOD_WAIT


# -- 10. bad input from an operator's token (or anyone): a 4xx, never a 5xx


@pytest.fixture(scope="module")
def locked_host(tmp_path_factory, ca_file, origin):
    """A password-protected host holding one artifact (HIT_PATH), and an admin token."""
    from conftest import TEST_FLAGS, CacheHost

    host = CacheHost(
        tmp_path_factory.mktemp("gate") / "data", (*TEST_FLAGS, "--header-timeout", "2"),
        {**os.environ, "SSL_CERT_FILE": str(ca_file), **LOCKED},
    )  # fmt: skip
    host.start()
    token = Api(host.url).create_token("gate", "admin", PASSWORD)
    url = origin.add(HIT_PATH, BODY)
    curl("-f", "-o", os.devnull, host.blob_url(url))
    host.wait_cached(url)
    yield host, token
    host.stop()


def _with_session(host) -> tuple[str, str]:
    """A logged-in session's Cookie header and its CSRF token."""
    ui = PageClient(host.url)
    ui.login(PASSWORD)
    return "; ".join(f"{k}={v}" for k, v in ui.cookies.items()), ui.csrf()


def _post(path: str, body: bytes, *headers: str, kind: str = "application/json") -> bytes:
    """A POST; headers as in get()."""
    lines = "".join(f"{h}\r\n" for h in headers)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\n{lines}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("utf-8", "surrogateescape") + body


FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data; boundary=b"


# Each of these got a 500 (and a traceback in the log) before.
def _crashers(token: str, cookie: str, csrf: str) -> list[tuple[str, bytes]]:
    bearer = f"Authorization: Bearer {token}"
    session = f"Cookie: {cookie}"
    deep = b'{"url": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    no_sha = b'{"url": "https://a/b", "sha256": "\\udfff"}'
    multipart = (
        b'--b\r\nContent-Disposition: form-data; name="password"\r\n'
        b"Content-Type: text/plain; charset=bogus\r\n\r\nx\r\n--b--\r\n"
    )
    chunked = (
        _post("/api/v1/fills", b"", bearer).replace(
            b"Content-Length: 0", b"Transfer-Encoding: chunked"
        )
        + b"zz\r\n{}\r\n0\r\n\r\n"
    )
    crlf_next = f"csrf={csrf}&next=/a%0d%0aSet-Cookie:%20x=1".encode()
    fills, tokens, approve, clear = (
        "/api/v1/fills",
        "/api/v1/tokens",
        "/api/v1/misses/approve",
        "/downloads/clear",
    )
    return [
        ("a lone surrogate in a url", _post(fills, b'{"url": "https://a/\\ud800"}', bearer)),
        ("JSON nested 100,000 deep", _post(fills, deep, bearer)),
        ("a lone surrogate in sha256", _post(fills, no_sha, bearer)),
        ("a lone surrogate in a token name", _post(tokens, b'{"name": "\\ud83d"}', bearer)),
        ("a lone surrogate in a miss", _post(approve, b'{"url": "https://a/\\udc80"}', bearer)),
        ("raw bytes in Authorization", get("/blob?url=http://a.example/", "Authorization: \udcff")),
        ("bad Authorization, by digest", get("/sha256/" + "ab" * 32, "Authorization: \udcff")),
        ("a non-ASCII session cookie", get("/", "Cookie: withcache_session=1.a.\udcc3\udca9")),
        ("non-ASCII Basic credentials", get(tokens, "Authorization: Basic \udcc3\udca9")),
        ("an unknown form charset", _post("/login", b"password=x", kind=f"{FORM}; charset=bogus")),
        ("an unknown multipart charset", _post("/login", multipart, kind=MULTIPART)),
        ("a non-ASCII CSRF header", _post(clear, b"", session, "X-CSRF-Token: \udcc3", kind=FORM)),
        ("a non-ASCII CSRF field", _post(clear, "csrf=é".encode(), session, kind=FORM)),
        ("CR LF in next", _post(clear, crlf_next, session, kind=FORM)),
        ("a broken chunked body", chunked),
        ("bad UTF-8 in a search", get("/api/v1/misses?q=%ED%A0%80", bearer)),
        ("bad UTF-8 in a UI search", get("/misses?q=%ED%A0%80", session)),
        ("bad UTF-8 in a path", get(f"{tokens}/%ED%A0%80", bearer).replace(b"GET", b"DELETE")),
    ]  # fmt: skip


def test_bad_input_gets_a_4xx_never_a_500(locked_host):
    host, token = locked_host
    cookie, csrf = _with_session(host)
    before = len(host.log())
    for what, request in _crashers(token, cookie, csrf):
        answer = raw_http(host.port, request)
        assert answer, what
        assert status_of(answer) < 500, (what, answer[:400])
        if status_of(answer) == 303:
            assert "\n" not in (header(answer, "Location") or ""), what
    log = host.log()[before:]
    assert "Traceback" not in log and "level=error" not in log, log[-3000:]
    assert host.health()["status"] == "ok"


def test_a_body_that_comes_too_slowly_gets_a_408(locked_host):
    """Before: a POST whose body trickled in held its handler as long as it trickled."""
    host, token = locked_host
    head = _post("/api/v1/fills", b"", f"Authorization: Bearer {token}").replace(
        b"Content-Length: 0", b"Content-Length: 100"
    )
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", host.port), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        for _ in range(40):
            try:
                sock.sendall(b"{")
            except OSError:
                break
            sock.settimeout(0.2)
            try:
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            if answer:
                break
    assert answer and status_of(answer) == 408, answer[:300]
    assert time.monotonic() - started < 5


# What schemathesis can't send: it makes only valid Unicode, and only for the
# API's documented inputs. Here each text slot of the UI, the read path and
# the API (a query parameter, a header, a form field or its charset, a JSON
# field) gets raw bytes, lone surrogates and controls, in a logged-in session.
_NASTY = st.one_of(
    st.binary(max_size=40),
    st.text(st.characters(codec=None, categories=["Cs", "Cc", "Zs", "Lo", "Nd"]), max_size=20).map(
        lambda t: t.encode("utf-8", "surrogatepass")
    ),
    st.sampled_from([b"%ED%A0%80", b"%FF", b"%00", b"\xff\xfe", b"%0d%0a", b"\\", b"9" * 30]),
)
_PAGES = [
    "/", "/misses", "/downloads", "/downloads/table", "/cached", "/events", "/tokens", "/add",
    "/login", "/blob", "/api/v1/artifacts", "/api/v1/misses", "/api/v1/fills", "/api/v1/events",
    "/api/v1/fills/1", "/api/v1/status", "/api/v1/tokens", "/healthz", "/metrics",
    "/sha256/" + "ab" * 32, "/https/vendor.example/x.run", "/https://vendor.example/x.run",
]  # fmt: skip
_QUERY_NAMES = ["q", "page", "state", "kind", "sort", "order", "limit", "offset", "url", "next"]
# Each header's value starts as a client would start it, so the rest reaches the parsing.
_HEADERS = {
    b"Cookie": b"withcache_session=1.a.", b"Authorization": b"Basic ", b"X-CSRF-Token": b"",
    b"HX-Current-URL": b"http://x/", b"Range": b"bytes=", b"If-None-Match": b'"',
    b"If-Range": b"", b"If-Modified-Since": b"",
}  # fmt: skip
_ACTIONS = ["/login", "/add", "/misses", "/downloads/clear", "/tokens", "/downloads/1/retry",
            "/cached/1/delete", "/tokens/x/revoke"]  # fmt: skip
_FIELDS = [b"csrf", b"next", b"url", b"sha256", b"password", b"name", b"scope", b"key", b"bulk",
           b"download", b"dismiss"]  # fmt: skip
_JSON_PATHS = ["/api/v1/fills", "/api/v1/tokens", "/api/v1/misses/approve", "/api/v1/verify"]
_JSON_FIELDS = [b"url", b"sha256", b"name", b"scope", b"quarantine"]


@pytest.fixture(scope="module")
def session(locked_host) -> tuple[bytes, bytes]:
    cookie, csrf = _with_session(locked_host[0])
    return cookie.encode(), csrf.encode()


def _request(method: bytes, target: bytes, headers: dict[bytes, bytes], body: bytes = b"") -> bytes:
    lines = b"".join(k + b": " + v + b"\r\n" for k, v in headers.items())
    if body or method == b"POST":
        lines += b"Content-Length: " + str(len(body)).encode() + b"\r\n"
    return (
        method
        + b" "
        + target
        + b" HTTP/1.1\r\nHost: x\r\n"
        + lines
        + b"Connection: close\r\n\r\n"
        + body
    )


@settings(
    max_examples=200, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)  # fmt: skip
@given(data=st.data(), where=st.sampled_from(["query", "header", "form", "charset", "json"]),
       value=_NASTY)  # fmt: skip
def test_fuzzed_input_anywhere_is_never_a_500(locked_host, session, origin, data, where, value):
    host, token = locked_host
    pages = [*_PAGES, keys.serve_path(origin.url(HIT_PATH))]  # a hit: Range, If-* on a blob
    cookie, csrf = session
    headers = {b"Cookie": cookie, b"Authorization": b"Bearer " + token.encode()}
    form = b"application/x-www-form-urlencoded"
    if where == "query":
        name = data.draw(st.sampled_from(_QUERY_NAMES)).encode()
        target = data.draw(st.sampled_from(pages)).encode() + b"?" + name + b"="
        request = _request(b"GET", target + quote(value, safe="%/\\").encode(), headers)
    elif where == "header":
        name = data.draw(st.sampled_from(sorted(_HEADERS)))
        headers[name] = _HEADERS[name] + value.replace(b"\r", b"").replace(b"\n", b"")
        method, target = data.draw(st.sampled_from(
            [(b"GET", page.encode()) for page in pages]
            + [(b"POST", action.encode()) for action in _ACTIONS]
        ))  # fmt: skip
        headers[b"Content-Type"] = form
        request = _request(method, target, headers, b"csrf=" + csrf if method == b"POST" else b"")
    elif where in ("form", "charset"):
        target = data.draw(st.sampled_from(_ACTIONS)).encode()
        field = data.draw(st.sampled_from(_FIELDS))
        body = b"csrf=" + csrf + b"&" + field + b"=" + (value if where == "form" else b"x")
        charset = value.replace(b"\r", b"").replace(b"\n", b"").replace(b";", b"")
        headers[b"Content-Type"] = form + (b"; charset=" + charset if where == "charset" else b"")
        request = _request(b"POST", target, headers, body)
    else:
        target = data.draw(st.sampled_from(_JSON_PATHS)).encode()
        field = data.draw(st.sampled_from(_JSON_FIELDS))
        body = b'{"' + field + b'": ' + _json_text(value) + b"}"
        headers[b"Content-Type"] = b"application/json"
        request = _request(b"POST", target, headers, body)
    answer = raw_http(host.port, request)
    assert answer and status_of(answer) < 500, (request[:300], answer[:300])


def _json_text(raw: bytes) -> bytes:
    """`raw` as a JSON string, surrogates and controls escaped (what json.dumps does)."""
    return json.dumps(raw.decode("utf-8", "surrogateescape")).encode()


def test_no_fuzzed_request_left_a_traceback(locked_host):
    """Runs after the fuzz above (same module, same server)."""
    host, _ = locked_host
    log = host.log()
    assert "Traceback" not in log and "api.crashed" not in log, log[-3000:]
    assert host.health()["status"] == "ok"


# -- 11. the private-address guard reads every embedded-IPv4 form


def _public(v4: ipaddress.IPv4Address) -> bool:
    return is_public_address(str(v4))


_V4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
_BITS = st.integers(0, 2**16 - 1)


@given(_V4)
def test_mapped_compatible_translated_and_nat64_forms_are_judged_by_their_ipv4(v4):
    n = int(v4)
    for form in (
        (0xFFFF << 32) | n,  # ::ffff:a.b.c.d, mapped
        n,  # ::a.b.c.d, compatible
        (0xFFFF << 48) | n,  # ::ffff:0:a.b.c.d, translated
        (0x0064FF9B << 96) | n,  # 64:ff9b::a.b.c.d, NAT64 well-known prefix
    ):
        ip = ipaddress.IPv6Address(form)
        assert is_public_address(str(ip)) is _public(v4), ip


@given(_V4, _BITS, st.integers(0, 2**64 - 1))
def test_6to4_is_judged_by_its_ipv4(v4, subnet, interface):
    ip = ipaddress.IPv6Address((0x2002 << 112) | (int(v4) << 80) | (subnet << 64) | interface)
    assert is_public_address(str(ip)) is _public(v4), ip


@given(_V4, _V4, _BITS, _BITS)
def test_teredo_is_judged_by_its_server_and_its_client(server, client, flags, port):
    ip = ipaddress.IPv6Address(
        (0x20010000 << 96) | (int(server) << 64) | (flags << 48) | (port << 32)
        | (int(client) ^ 0xFFFFFFFF)
    )  # fmt: skip
    assert carried_ipv4(ip) == (server, client)
    assert is_public_address(str(ip)) is (_public(server) and _public(client)), ip


@given(_V4, st.sampled_from([48, 56, 64, 96]))
def test_local_nat64_prefixes_of_every_length_carry_their_ipv4(v4, length):
    """RFC 8215's local-use prefix may be cut at any of RFC 6052's lengths,
    each putting the IPv4 bytes elsewhere: every well-formed reading counts,
    so a private address is refused however it is written."""
    packed = bytearray(ipaddress.IPv6Address("64:ff9b:1::").packed)
    places = {48: (6, 7, 9, 10), 56: (7, 9, 10, 11), 64: (9, 10, 11, 12), 96: (12, 13, 14, 15)}
    for place, byte in zip(places[length], v4.packed, strict=True):
        packed[place] = byte
    ip = ipaddress.IPv6Address(bytes(packed))
    assert v4 in carried_ipv4(ip)
    if not _public(v4):
        assert not is_public_address(str(ip)), ip
    assert is_public_address("64:ff9b:1::8.8.8.8")


ONE_TWO_SEVEN = [
    "[::127.0.0.1]", "[::ffff:0:7f00:1]", "[64:ff9b::7f00:1]", "[64:ff9b:1::7f00:1]",
    "[2002:7f00:1::]", "[2001:0:4136:e378:8000:63bf:80ff:fffe]",
]  # fmt: skip


@pytest.mark.parametrize("host_form", ONE_TWO_SEVEN)
def test_ipv6_forms_of_loopback_are_refused(origin, cache_host, host_form):
    """Before: each was taken as public and queued (`::127.0.0.1` and
    `::ffff:0:7f00:1` in the issue; NAT64, 6to4 and Teredo forms too)."""
    host = start_strict(cache_host)
    answer = curl(host.blob_url(f"http://{host_form}:{origin.port}/gate/v6.bin")).stdout
    assert b"is not public" in answer, answer
    assert rows(host, "SELECT count(*) FROM fills") == [(0,)]


def test_fullwidth_digits_do_not_reach_loopback(origin, cache_host):
    """Before: the guard saw 127.0.0.1 written in fullwidth digits (no IP
    literal) while the HTTP client connected to 127.0.0.1: the loopback
    origin was fetched."""
    path = "/gate/fullwidth.bin"
    origin.add(path, BODY)
    host = start_strict(cache_host)
    wide = "".join(chr(ord(c) + 0xFEE0) if c.isdigit() else c for c in "127.0.0.1")
    answer = curl(host.blob_url(f"http://{wide}:{origin.port}{path}")).stdout
    assert b"address 127.0.0.1 is not public" in answer, answer
    assert origin.gets(path) == 0


# -- 12. non-canonical numeric hosts: refused as policy, at once, on every hop

NON_CANONICAL = ["127.1", "2130706433", "017700000001", "127.0.0.1.", "0x7f.1", "0177.0.0.1"]


@pytest.mark.parametrize("name", NON_CANONICAL)
def test_non_canonical_hosts_are_refused_without_a_fill(origin, cache_host, name):
    """Before: the HTTP client's refusal was taken as a temporary failure: a
    fill tried 5 times while the client waited (with the loopback allowed)."""
    host = cache_host()
    started = time.monotonic()
    answer = curl(host.blob_url(f"http://{name}:{origin.port}/gate/nc.bin")).stdout
    assert b"not a canonical IPv4 address" in answer, answer
    assert time.monotonic() - started < 3
    assert rows(host, "SELECT count(*) FROM fills") == [(0,)]


def test_a_redirect_to_a_non_canonical_host_is_asked_once(origin, cache_host):
    """Before: the origin saw 5 requests for the redirecting URL."""
    target = f"http://127.1:{origin.port}/gate/nc-target.bin"
    url = origin.add("/gate/nc-hop.bin", redirect=target)
    host = cache_host()
    curl("-I", host.blob_url(url))
    (error,) = wait_fill_state(host, "failed")[0]
    assert "not a canonical IPv4 address" in error
    assert origin.gets("/gate/nc-hop.bin") == 1
    assert "fill.retrying" not in host.log()


def test_an_operator_gets_the_same_refusal(cache_host):
    _, api = start(cache_host)
    refused = api.post("/fills", {"url": "http://2130706433/x.bin"})
    assert refused.status == 409 and "not a canonical IPv4 address" in refused.error
