"""Server modes and limits: --curate, --max-bytes, --keep-query, retention,
--tls-cert."""

import os
import time

from conftest import curl
from test_fills import miss, rows, wait_fill_state

BODY = os.urandom(200_000)


def test_curate_records_misses_and_fetches_nothing(origin, cache_host):
    url = origin.add("/modes/curated.bin", BODY)
    host = cache_host("--curate")
    assert (
        "recorded for an operator to approve" in curl(host.blob_url(url + "?sig=1")).stdout.decode()
    )
    miss(host, url)
    time.sleep(0.3)
    assert origin.gets("/modes/curated.bin") == 0
    assert rows(host, "SELECT key, url, count, reason FROM misses") == [
        (url, url, 2, "awaiting approval")
    ]
    assert host.health()["mode"] == "curate"


def test_cap_refuses_a_fill_whose_length_would_cross_it(origin, cache_host):
    fits = origin.add("/modes/fits.bin", BODY)
    size = 30_000_000  # more than loopback socket buffers hold
    too_big = origin.add("/modes/too-big.bin", os.urandom(size))
    host = cache_host("--max-bytes", "1M")
    miss(host, fits)
    host.wait_cached(fits)
    miss(host, too_big)
    (error,) = wait_fill_state(host, "failed")[0]
    assert "artifact is 28.6 MiB" in error
    assert "would exceed --max-bytes 1.0 MiB" in error
    # Refused on its headers: the body was never read.
    assert origin.body_bytes["/modes/too-big.bin"] < size
    assert list((host.data_dir / "tmp").iterdir()) == []
    assert curl("-f", host.blob_url(fits)).stdout == BODY  # reads keep working
    assert ("fill.refused",) in rows(host, "SELECT kind FROM events")


def test_cap_stops_a_fill_without_length_when_it_crosses(origin, cache_host):
    size = 30_000_000
    url = origin.add("/modes/unsized.bin", os.urandom(size), chunked=True)
    host = cache_host("--max-bytes", "1M")
    miss(host, url)
    (error,) = wait_fill_state(host, "failed")[0]
    assert "grew past" in error
    assert origin.body_bytes["/modes/unsized.bin"] < size
    assert list((host.data_dir / "tmp").iterdir()) == []


def test_full_cache_refuses_misses_up_front(origin, cache_host):
    first = origin.add("/modes/full-a.bin", BODY)
    second = origin.add("/modes/full-b.bin", BODY)
    host = cache_host("--max-bytes", str(len(BODY)))
    miss(host, first)
    host.wait_cached(first)
    assert "the cache is full" in curl(host.blob_url(second)).stdout.decode()
    assert origin.gets("/modes/full-b.bin") == 0


def test_query_is_dropped_from_the_key_but_used_to_fetch(origin, cache_host):
    url = origin.add("/modes/signed.bin", BODY)
    host = cache_host()
    miss(host, url + "?X-Amz-Signature=abc123")
    host.wait_cached(url)
    assert origin.hits[-1].path == "/modes/signed.bin"
    hit = next(h for h in origin.hits if h.path == "/modes/signed.bin")
    assert hit is not None
    assert curl("-f", host.blob_url(url + "?X-Amz-Signature=other")).stdout == BODY
    # The signature is not kept: not in events, fills, misses or the log.
    host.stop()
    assert "abc123" not in host.log()
    for table in ("events", "fills", "misses"):
        assert "abc123" not in str(rows(host, f"SELECT * FROM {table}"))


def test_keep_query_makes_the_query_part_of_the_key(origin, cache_host):
    url = origin.add("/modes/versioned.bin", BODY)
    host = cache_host("--keep-query")
    miss(host, url + "?v=1")
    host.wait_cached(url + "?v=1")
    assert rows(host, "SELECT key FROM artifacts") == [(url + "?v=1",)]
    for other in (url + "?v=2", url):
        head = curl("-sI", host.blob_url(other)).stdout.decode().lower()
        assert "etag:" not in head  # not the ?v=1 artifact: a fill of its own


def test_miss_list_is_bounded(origin, cache_host):
    host = cache_host("--curate", "--max-misses", "5")
    for n in range(12):
        miss(host, f"https://junk.example/{n}.bin")
    host.restart()  # retention is applied at start (and every ten minutes)
    assert rows(host, "SELECT count(*) FROM misses") == [(5,)]
    kept = {key for (key,) in rows(host, "SELECT key FROM misses")}
    assert kept == {f"https://junk.example/{n}.bin" for n in range(7, 12)}


def test_event_log_is_bounded(origin, cache_host):
    host = cache_host("--max-events", "3", "--allow-origin", "nothing.example")
    for n in range(8):
        miss(host, f"https://junk.example/{n}.bin")  # each refusal is an event
    host.restart()
    assert rows(host, "SELECT count(*) FROM events") == [(3,)]


def test_tls_serving(origin, cache_host, ca, ca_file, tmp_path):
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    url = origin.add("/modes/tls-served.bin", BODY)
    host = cache_host("--tls-cert", str(cert_file), "--tls-key", str(key_file))
    assert host.url.startswith("https://")
    curl("--cacert", str(ca_file), "-o", os.devnull, host.blob_url(url))
    host.wait_cached(url)
    assert curl("-f", "--cacert", str(ca_file), host.blob_url(url)).stdout == BODY
    assert curl("-f", "-o", os.devnull, host.blob_url(url)).returncode != 0  # untrusted
