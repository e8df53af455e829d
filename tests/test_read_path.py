"""The open read path with real curl and wget: hits, headers, ranges,
conditional requests, and many clients at once."""

import hashlib
import os
import subprocess

import pytest
from conftest import curl, wget

from withcache import keys

pytestmark = pytest.mark.backends
BODY = os.urandom(300_000)


def cached(origin, cache_host, path, body=BODY, **options):
    """A fresh cache-host holding `path`: (host, url)."""
    host = cache_host()
    return host, host.cached(origin, path, body, **options)


def headers_of(result: subprocess.CompletedProcess) -> dict[str, str]:
    lines = result.stdout.decode().split("\r\n")
    return {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:] if line)}


def test_hit_replays_origin_headers(origin, cache_host):
    disposition = 'attachment; filename="d.run"'
    host, url = cached(
        origin, cache_host, "/read/driver.run",
        headers={"Content-Type": "application/x-sh", "Content-Disposition": disposition},
    )  # fmt: skip
    head = curl("-I", host.url + keys.serve_path(url))
    assert head.stdout.startswith(b"HTTP/1.1 200")
    h = headers_of(head)
    assert h["content-length"] == str(len(BODY))
    assert h["content-type"] == "application/x-sh"
    assert h["etag"] == f'"{hashlib.sha256(BODY).hexdigest()}"'
    assert h["last-modified"] == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert h["accept-ranges"] == "bytes"
    assert h["content-disposition"] == disposition


def test_basename_is_cosmetic_and_token_route_serves(origin, cache_host, tmp_path):
    host, url = cached(origin, cache_host, "/read/a.tar")
    token = keys.encode_token(url)
    for name in ("a.tar", "other-name.bin", ""):
        out = tmp_path / f"out{name}"
        assert curl("-f", "-o", str(out), f"{host.url}/b/{token}/{name}").returncode == 0
        assert out.read_bytes() == BODY


def test_range_requests_with_curl(origin, cache_host):
    host, url = cached(origin, cache_host, "/read/range.bin")
    part = curl("-f", "-r", "1000-1999", host.blob_url(url))
    assert part.stdout == BODY[1000:2000]
    tail = curl("-f", "-r", "-500", host.blob_url(url))
    assert tail.stdout == BODY[-500:]
    beyond = curl("-r", f"{len(BODY)}-", "-o", os.devnull, "-w", "%{http_code}", host.blob_url(url))
    assert beyond.stdout == b"416"


def test_resume_with_curl_continue(origin, cache_host, tmp_path):
    host, url = cached(origin, cache_host, "/read/resume.bin")
    out = tmp_path / "resume.bin"
    out.write_bytes(BODY[:123_456])
    assert curl("-f", "-C", "-", "-o", str(out), host.blob_url(url)).returncode == 0
    assert out.read_bytes() == BODY


def test_conditional_requests(origin, cache_host, tmp_path):
    host, url = cached(origin, cache_host, "/read/cond.bin")
    etag = f'"{hashlib.sha256(BODY).hexdigest()}"'
    code = ["-o", os.devnull, "-w", "%{http_code}"]
    assert curl(*code, "-H", f"If-None-Match: {etag}", host.blob_url(url)).stdout == b"304"
    assert curl(*code, "-H", 'If-None-Match: "nope"', host.blob_url(url)).stdout == b"200"
    # curl -z with a local file dated like the origin: not modified, nothing written.
    ref = tmp_path / "ref"
    ref.write_bytes(b"old")
    os.utime(ref, (1_700_000_000, 1_700_000_000))
    assert curl(*code, "-z", str(ref), host.blob_url(url)).stdout == b"304"
    assert curl(*code, "-z", "2020-01-01", host.blob_url(url)).stdout == b"200"
    ranged = curl(*code, "-r", "0-9", "-H", 'If-Range: "stale"', host.blob_url(url))
    assert ranged.stdout == b"200"


def test_wget_timestamping_does_not_download_again(origin, cache_host, tmp_path):
    host, url = cached(origin, cache_host, "/read/wget-n.bin")
    serve = host.url + keys.serve_path(url)
    assert wget("-N", serve, cwd=tmp_path).returncode == 0
    saved = tmp_path / "wget-n.bin"
    assert saved.read_bytes() == BODY
    assert saved.stat().st_mtime == 1_700_000_000
    again = subprocess.run(["wget", "-N", serve], cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0
    assert "not retrieving" in again.stderr or "304 Not Modified" in again.stderr


def test_head_probes_do_not_count_as_hits_but_gets_do(origin, cache_host):
    host, url = cached(origin, cache_host, "/read/count.bin")
    for _ in range(3):
        curl("-I", host.blob_url(url))
    for _ in range(2):
        curl("-o", os.devnull, host.blob_url(url))
    host.stop()  # flushes the batched hit counts
    ((hits, last_hit),) = host.rows("SELECT hits, last_hit FROM artifacts")
    assert hits == 2
    assert last_hit is not None


def test_64_concurrent_gets_are_all_byte_exact(origin, cache_host, tmp_path):
    body = os.urandom(2_000_000)
    host, url = cached(origin, cache_host, "/read/many.bin", body)
    args = ["-f", "--parallel", "--parallel-max", "64"]
    for n in range(64):
        args += ["-o", str(tmp_path / f"c{n}"), host.blob_url(url)]
    assert curl(*args).returncode == 0
    for n in range(64):
        assert (tmp_path / f"c{n}").read_bytes() == body


def test_vanished_blob_is_filled_again_read_through(origin, cache_host):
    host, url = cached(origin, cache_host, "/read/vanish.bin")
    host.backend.delete_blobs(host.data_dir)
    result = curl("-f", host.blob_url(url))  # what a shim's GET after its probe sees
    assert result.stdout == BODY
    assert origin.gets("/read/vanish.bin") == 2


def test_healthz(origin, cache_host):
    host, _ = cached(origin, cache_host, "/read/health.bin")
    health = host.health()
    assert health["status"] == "ok"
    assert health["artifacts"] == 1
    assert health["bytes_stored"] == len(BODY)
    # An object store doesn't say how much room it has left.
    assert health["free_bytes"] is None if host.backend.scale else health["free_bytes"] > 0
    assert health["version"]
