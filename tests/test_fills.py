"""Fills from a real origin: redirects, retries, resume, verification, and
nothing visible unless it arrived whole."""

import hashlib
import os
import time

import pytest
from conftest import curl

pytestmark = pytest.mark.backends
BODY = os.urandom(1_500_000)


def miss(host, url):
    """Probe like a shim does (HEAD): a miss queues the fill, and the probe
    answers 200 only once the fill has reached an origin that sent a length."""
    return curl("-I", "-o", os.devnull, "-w", "%{http_code}", host.blob_url(url)).stdout


def fetch(host, url):
    result = curl("-f", host.blob_url(url))
    assert result.returncode == 0, result.stderr
    return result.stdout


def rows(host, sql):
    return host.rows(sql)


def wait_rows(host, sql, timeout=20.0):
    """The rows `sql` finds once it finds any."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = rows(host, sql)
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"nothing for {sql!r}:\n{host.log()[-2000:]}")


def wait_fill_state(host, state):
    return wait_rows(host, f"SELECT error FROM fills WHERE state = '{state}'")


def blob_files(host):
    return host.blob_names()


def temp_files(host):
    return list((host.data_dir / "tmp").iterdir())


def test_redirects_are_followed_and_keyed_by_the_first_url(origin, cache_host):
    final = origin.add("/fills/final.bin", BODY)
    url = origin.add("/fills/redirect.bin", redirect=final)
    host = cache_host()
    miss(host, url)
    host.wait_cached(url)
    assert fetch(host, url) == BODY
    assert rows(host, "SELECT key FROM artifacts") == [(url,)]  # the URL asked for


def test_origin_dying_mid_transfer_is_resumed_with_range(origin, cache_host):
    url = origin.add("/fills/dies.bin", BODY, die_after=400_000, die_times=2, etag='"v1"')
    host = cache_host()
    miss(host, url)
    host.wait_cached(url)
    assert fetch(host, url) == BODY
    ranges = [h.headers.get("Range") for h in origin.hits if h.path == "/fills/dies.bin"]
    assert ranges[1:] == ["bytes=400000-", "bytes=800000-"]
    if_ranges = {h.headers.get("If-Range") for h in origin.hits if h.path == "/fills/dies.bin"}
    assert '"v1"' in if_ranges
    assert origin.body_bytes["/fills/dies.bin"] == len(BODY)


def test_origin_without_range_support_restarts_cleanly(origin, cache_host):
    url = origin.add("/fills/norange.bin", BODY, die_after=300_000, ranges=False)
    host = cache_host()
    miss(host, url)
    host.wait_cached(url)
    assert fetch(host, url) == BODY
    assert origin.gets("/fills/norange.bin") == 2


def test_a_fill_that_never_completes_leaves_nothing(origin, cache_host):
    url = origin.add("/fills/always-dies.bin", BODY, die_after=1000, die_times=100, ranges=False)
    host = cache_host("--fill-attempts", "3")
    miss(host, url)
    (error,) = wait_fill_state(host, "failed")[0]
    assert "transfer broke off" in error
    assert origin.gets("/fills/always-dies.bin") == 3
    assert rows(host, "SELECT count(*) FROM artifacts") == [(0,)]
    assert blob_files(host) == [] and temp_files(host) == []
    assert rows(host, "SELECT reason FROM misses") == [(f"fill failed: {error}",)]
    # Asking again soon is turned away (a backoff), not another round of tries.
    again = curl(host.blob_url(url)).stdout.decode()
    assert "not fetched: the last fill failed: transfer broke off" in again
    assert rows(host, "SELECT count(*) FROM fills") == [(1,)]
    assert origin.gets("/fills/always-dies.bin") == 3


def test_chunked_response_without_length_is_cached(origin, cache_host):
    url = origin.add("/fills/chunked.bin", BODY, chunked=True)
    host = cache_host()
    miss(host, url)
    host.wait_cached(url)
    assert fetch(host, url) == BODY


def test_truncated_chunked_response_is_not_cached(origin, cache_host):
    url = origin.add(
        "/fills/chunked-dies.bin", BODY, chunked=True, die_after=5000, die_times=100, ranges=False
    )
    host = cache_host("--fill-attempts", "2")
    miss(host, url)
    wait_fill_state(host, "failed")
    assert rows(host, "SELECT count(*) FROM artifacts") == [(0,)]
    assert blob_files(host) == []


def test_origin_error_fails_the_fill_without_retrying(origin, cache_host):
    url = origin.add("/fills/forbidden.bin", b"no", status=403)
    host = cache_host()
    miss(host, url)
    (error,) = wait_fill_state(host, "failed")[0]
    assert error.startswith("origin answered 403")
    assert origin.gets("/fills/forbidden.bin") == 1
    # The miss learns why just after the fill ends.
    failed = "SELECT reason FROM misses WHERE reason LIKE 'fill failed:%'"
    assert wait_rows(host, failed) == [(f"fill failed: {error}",)]
    # Probing again soon doesn't make the cache-host ask the origin again.
    again = curl(host.blob_url(url)).stdout.decode()
    assert "the last fill failed: origin answered 403" in again
    assert origin.gets("/fills/forbidden.bin") == 1


def test_transient_origin_error_is_retried(origin, cache_host):
    url = origin.add("/fills/busy.bin", BODY, status=503)
    host = cache_host("--retry-delay", "0.5")
    miss(host, url)
    time.sleep(0.2)
    origin.resources["/fills/busy.bin"].status = 200
    host.wait_cached(url)
    assert fetch(host, url) == BODY


def test_https_origin_with_private_ca(origin, cache_host):
    url = origin.add("/fills/tls.bin", BODY)
    tls_url = origin.url("/fills/tls.bin", tls=True)
    host = cache_host()
    miss(host, tls_url)
    host.wait_cached(tls_url)
    assert fetch(host, tls_url) == BODY
    assert url != tls_url


def test_same_bytes_under_two_urls_share_one_blob(origin, cache_host):
    body = os.urandom(100_000)
    first = origin.add("/fills/twin-a.bin", body)
    second = origin.add("/fills/twin-b.bin", body)
    host = cache_host()
    for url in (first, second):
        miss(host, url)
        host.wait_cached(url)
    assert blob_files(host) == [hashlib.sha256(body).hexdigest()]
    assert host.health()["bytes_stored"] == len(body)


def test_content_encoding_bytes_are_kept_as_sent(origin, cache_host, tmp_path):
    import gzip

    packed = gzip.compress(BODY)
    url = origin.add("/fills/gz.bin", packed, headers={"Content-Encoding": "gzip"})
    host = cache_host()
    miss(host, url)
    host.wait_cached(url)
    raw = curl("-f", host.blob_url(url))
    assert raw.stdout == packed
    decoded = curl("-f", "--compressed", host.blob_url(url))
    assert decoded.stdout == BODY
