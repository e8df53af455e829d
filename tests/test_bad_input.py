"""Bad input on the read path: a 4xx with a short reason, logged once, never a
5xx or a traceback, and the server keeps serving."""

import base64
import socket
import time

import pytest
from conftest import curl

from withcache import keys


def raw_request(host, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", host.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def host(tmp_path_factory, ca_file):
    import os

    from conftest import TEST_FLAGS, CacheHost

    server = CacheHost(
        tmp_path_factory.mktemp("bad") / "data", TEST_FLAGS,
        {**os.environ, "SSL_CERT_FILE": str(ca_file)},
    )  # fmt: skip
    server.start()
    yield server
    server.stop()


BAD_PATHS = [
    ("/b/***/x", 400, "bad token"),
    ("/b/aGVsbG8=/x", 400, "bad token"),
    (f"/b/{b64('hello')}/x", 400, "not an http(s) URL"),
    (f"/b/{b64('file:///etc/passwd')}/passwd", 400, "not an http(s) URL"),
    (f"/b/{b64('ftp://h/x')}/x", 400, "not an http(s) URL"),
    (f"/b/{b64('gopher://h/x')}/x", 400, "not an http(s) URL"),
    (f"/b/{b64('https://u:p@h/x')}/x", 400, "credentials in the URL"),
    (f"/b/{b64('https://h/' + 'a' * 8200)}/x", 414, "longer than"),
    (f"/b/{b64('https://h/x')}/a%2Fb", 400, "bad file name"),
    (f"/b/{b64('https://h/x')}/a%5Cb", 400, "bad file name"),
    (f"/b/{b64('https://h/x')}/a%00b", 400, "bad file name"),
    (f"/b/{b64('https://h/x' + chr(0))}/x", 400, "control character"),
    ("/blob", 400, "exactly one url="),
    ("/blob?url=https://a/x&url=https://b/y", 400, "exactly one url="),
    ("/blob?url=file:///etc/passwd", 400, "not an http(s) URL"),
    ("/blob?url=https%3A%2F%2Fh%2Fa%00b", 400, "control character"),
    ("/blob?url=%ff%fe", 400, None),
    ("/blob?url=http://h:0/x", 400, "port 0"),
    # The mirror spellings: a prefix form that isn't an http(s) URL, a host that
    # isn't one, a digest that isn't 64 hex digits.
    ("/ftp://h/x", 400, "not an http(s) URL"),
    ("/file:///etc/passwd", 400, "not an http(s) URL"),
    ("/javascript:alert(1)", 400, "not an http(s) URL"),
    ("/https:", 400, "followed by //"),
    ("/https:///x", 400, "no host"),
    ("/https://u:p@h/x", 400, "credentials in the URL"),
    ("/https://h:0/x", 400, "port 0"),
    ("/https://h:99999/x", 400, "malformed URL"),
    ("/https:h/x", 400, "followed by //"),
    ("/https://h/" + "a" * 8200, 414, "longer than"),
    ("/ftp%3A%2F%2Fh%2Fx", 400, "not an http(s) URL"),
    ("/https/", 400, "no host"),
    ("/https/u:p@h/x", 400, "is not a host"),
    ("/https/h%2Fevil/x", 400, "is not a host"),
    ("/https/h%40evil/x", 400, "is not a host"),
    # The status comes from the error's type, not its words.
    ("/https/longer%20than/x", 400, "is not a host"),
    ("/http/h:0/x", 400, "port 0"),
    ("/https/h/" + "a" * 8200, 414, "longer than"),
    ("/sha256/abc", 400, "64 hex digits"),
    ("/sha256/" + "g" * 64, 400, "64 hex digits"),
    ("/sha256/" + "a" * 65, 400, "64 hex digits"),
    ("/sha256/" + "a" * 64 + "/a%2Fb", 400, "bad file name"),
    ("/sha256/" + "a" * 64 + "/..", 400, None),
    ("/_source-cache/archive/zz/" + "a" * 64 + ".tar.gz", 400, "first two hex digits"),
    ("/_source-cache/archive/aa/" + "a" * 63 + ".tar.gz", 400, "64 hex digits"),
]


@pytest.mark.parametrize(("path", "status", "reason"), BAD_PATHS)
def test_bad_read_requests_get_a_4xx_with_a_reason(host, path, status, reason):
    response = raw_request(
        host, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line.split()[1] == str(status).encode(), response[:300]
    if reason:
        assert reason.encode() in rest


@pytest.mark.parametrize(
    "path", ["/b/../../etc/passwd", "/b/x/../../../etc/passwd", "/b/%2e%2e/%2e%2e/etc/passwd"]
)
def test_dot_dot_paths_never_reach_files(host, path):
    response = raw_request(
        host, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert response.split()[1] in (b"400", b"404")
    assert b"root:" not in response


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405(host, method):
    url = host.url + keys.serve_path("https://example.com/x.run")
    result = curl("-X", method, "-o", "/dev/null", "-w", "%{http_code}", url)
    assert result.stdout == b"405"


def test_malformed_http_is_a_400(host):
    assert raw_request(host, b"GARBAGE\x00\r\n\r\n").split(b"\r\n")[0].endswith(b" 400 Bad Request")


def test_server_keeps_serving_and_never_logged_a_traceback(host):
    # Runs after the others in this module.
    for path, _, _ in BAD_PATHS:
        raw_request(host, f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert host.health()["status"] == "ok"
    log = host.log()
    assert "Traceback" not in log
    assert "level=error" not in log
    assert "request.refused" in log


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n",
        b"GET /b/" + b"A" * 20000 + b"/x HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cr3t\x01\r\n\r\n",
    ],
)
def test_malformed_requests_are_logged_as_refusals_not_errors(host, request_bytes):
    before = len(host.log())
    answer = raw_request(host, request_bytes)
    assert answer.split(b"\r\n")[0].split()[1] in (b"400", b"414", b"431")
    deadline = time.monotonic() + 5
    while "request.refused" not in host.log()[before:]:
        assert time.monotonic() < deadline, host.log()[before:]
        time.sleep(0.05)
    logged = host.log()[before:]
    assert "level=error" not in logged and "traceback" not in logged
    assert "s3cr3t" not in logged
