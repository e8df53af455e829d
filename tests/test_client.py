"""withcache.client against the real cache-host and origin."""

import hashlib
import os
import time
import urllib.request

import pytest

from withcache import client

BODY = bytes(range(256)) * 500


def test_blob_url_and_cache_url_reach_the_artifact(origin, shared_cache_host):
    url = origin.add("/client/urls.bin", BODY)
    shared_cache_host.wait_cached(url)
    for address in (client.blob_url, client.cache_url):
        with urllib.request.urlopen(address(shared_cache_host.url, url), timeout=5) as response:
            assert response.read() == BODY


def test_is_cached_and_serve_url_follow_the_cache(origin, shared_cache_host):
    host = shared_cache_host
    url = origin.add("/client/warm.bin", BODY)
    assert client.is_cached(host.url, url) is False  # ...and the probe queued the fill
    host.wait_cached(url)
    assert client.is_cached(host.url, url) is True
    served = client.serve_url(host.url, url)
    assert served == client.cache_url(host.url, url)
    with urllib.request.urlopen(served, timeout=5) as response:
        assert response.read() == BODY


def test_headers_scope_the_lookup(origin, shared_cache_host):
    secret = {"Authorization": "Bearer client-s3cret"}
    url = origin.add("/client/private.bin", BODY, require_auth=secret["Authorization"])
    assert not client.is_cached(shared_cache_host.url, url, headers=secret)
    shared_cache_host.wait_cached(url, headers=secret)
    assert client.is_cached(shared_cache_host.url, url, headers=secret)
    assert not client.is_cached(shared_cache_host.url, url)


@pytest.mark.parametrize("server", ["", "ftp://cache", "127.0.0.1:notaport"])
def test_bad_settings_are_not_cached(server):
    assert client.is_cached(server, "https://vendor.example/x") is False
    assert client.serve_url(server, "https://vendor.example/x") is None


def test_a_silent_cache_costs_at_most_the_timeout(silent_port):
    started = time.monotonic()
    assert not client.is_cached(f"127.0.0.1:{silent_port}", "https://vendor.example/x", timeout=0.3)
    assert time.monotonic() - started < 0.6


def test_fetch_from_origin_then_from_cache(origin, shared_cache_host, tmp_path):
    host = shared_cache_host
    url = origin.add("/client/fetch.bin", BODY)
    first = client.fetch(host.url, url, tmp_path / "one")
    assert (first.source, first.note) == ("origin", "not cached")
    assert first.sha256 == hashlib.sha256(BODY).hexdigest() and first.size == len(BODY)
    host.wait_cached(url)
    gets = origin.gets("/client/fetch.bin")
    second = client.fetch(host.url, url, tmp_path / "two")
    assert second.source == "cache" and second.sha256 == first.sha256
    assert (tmp_path / "two").read_bytes() == BODY
    assert origin.gets("/client/fetch.bin") == gets
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # no temp files left


def test_fetch_rejects_bytes_that_do_not_match_the_cache_etag(origin, cache_host, tmp_path):
    body = BODY * 3  # over 256 KiB: the cache-host re-hashes smaller blobs itself on read
    host = cache_host()
    url = origin.add("/client/corrupt.bin", body)
    host.wait_cached(url)
    sha = hashlib.sha256(body).hexdigest()
    blob = host.data_dir / "blobs" / sha[:2] / sha
    damaged = bytearray(blob.read_bytes())
    damaged[100] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(damaged))  # same length: only the hash can tell
    got = client.fetch(host.url, url, tmp_path / "out")
    assert got.source == "origin" and "SHA-256 mismatch" in got.note
    assert (tmp_path / "out").read_bytes() == body


def test_fetch_keeps_the_old_file_when_everything_fails(origin, free_port, tmp_path):
    dest = tmp_path / "kept"
    dest.write_bytes(b"old")
    with pytest.raises(client.FetchError, match="not-there"):
        client.fetch(f"127.0.0.1:{free_port}", origin.url("/client/not-there.bin"), dest)
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]


def test_fetch_without_a_cache_uses_the_origin(origin, tmp_path):
    url = origin.add("/client/nocache.bin", BODY)
    got = client.fetch(None, url, tmp_path / "out", headers={"X-Trace": "1"})
    assert got.source == "origin" and got.note == "no cache-host set"
    assert (tmp_path / "out").read_bytes() == BODY


def test_fetch_of_an_uncached_artifact_reads_through_and_checks_the_sha256(
    origin, cache_host, tmp_path
):
    host = cache_host()  # streams fills: the first fetch is served by the fill
    body = os.urandom(2_000_000)
    url = origin.add("/client/read-through.bin", body, rate=4_000_000)
    got = client.fetch(host.url, url, tmp_path / "out")
    assert got.source == "cache"
    assert got.sha256 == hashlib.sha256(body).hexdigest()
    assert (tmp_path / "out").read_bytes() == body
    assert origin.gets("/client/read-through.bin") == 1


def test_fetch_from_a_fill_that_fails_falls_back_to_the_origin(origin, cache_host, tmp_path):
    host = cache_host("--fill-attempts", "1")
    body = os.urandom(2_000_000)
    url = origin.add("/client/fill-dies.bin", body, rate=4_000_000, die_after=500_000, ranges=False)
    dest = tmp_path / "dest"
    dest.mkdir()
    got = client.fetch(host.url, url, dest / "out")
    assert got.source == "origin"
    assert (dest / "out").read_bytes() == body
    assert [p.name for p in dest.iterdir()] == ["out"]  # no partial file left behind
