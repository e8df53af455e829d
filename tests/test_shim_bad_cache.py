"""A cache-host that fails: one that accepts the connection and never answers
costs at most the probe budget, and one that isn't a cache-host at all is
never taken for a hit; either way the command runs against the origin."""

import http.server
import threading
import time

import pytest
from conftest import shim, shim_env

BODY = b"patience" * 1000


def test_curl_waits_at_most_the_default_budget(origin, silent_port, tmp_path):
    url = origin.add("/budget/curl.bin", BODY)
    started = time.monotonic()
    result = shim("curl", "-fsS", "-o", "out", url, server=f"127.0.0.1:{silent_port}", cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out").read_bytes() == BODY
    assert "unreachable" in result.stderr
    assert 1.9 < elapsed < 2.0 + 1.0  # the 2 s budget, plus start-up and the download


def test_several_urls_share_one_budget(origin, silent_port, tmp_path):
    urls = [origin.add(f"/budget/many-{n}.bin", BODY) for n in range(12)]
    env = shim_env(f"127.0.0.1:{silent_port}", WITHCACHE_PROBE_TIMEOUT="0.4")
    args = [word for url in urls for word in ("-O", url)]
    started = time.monotonic()
    result = shim("curl", "-fsS", *args, env=env, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("unreachable") == 12
    assert elapsed < 0.4 + 1.0


def test_wget_budget_from_the_environment(origin, silent_port, tmp_path):
    url = origin.add("/budget/wget.bin", BODY)
    env = shim_env(f"127.0.0.1:{silent_port}", WITHCACHE_PROBE_TIMEOUT="0.3")
    started = time.monotonic()
    result = shim("wget", "-q", url, env=env, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "wget.bin").read_bytes() == BODY
    assert elapsed < 0.3 + 1.0


@pytest.fixture
def yes_server():
    """A web server that answers 200 to any request, as a captive portal might."""

    class Yes(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Yes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_a_server_that_is_not_a_cache_host_is_never_a_hit(origin, yes_server, tmp_path):
    url = origin.add("/budget/not-a-cache.bin", BODY)
    result = shim("curl", "-fsS", "-o", "out", url, server=yes_server, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "withcache: curl: refused" in result.stderr and "SHA-256 ETag" in result.stderr
    assert (tmp_path / "out").read_bytes() == BODY
