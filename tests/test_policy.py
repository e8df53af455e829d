"""What the cache-host refuses to fetch, and who may read what it fetched."""

import os
import sqlite3

import pytest
from conftest import CacheHost, curl
from test_fills import miss, rows, wait_fill_state

from withcache.server.policy import is_public_address

BODY = os.urandom(50_000)


def start_strict(cache_host, *flags):
    """A server without the test suite's --allow-private-origins."""
    host: CacheHost = cache_host(*flags)
    host.stop()
    host.flags = tuple(f for f in host.flags if f != "--allow-private-origins")
    return host.start()


def body_of(host, url, *args):
    return curl(*args, host.blob_url(url)).stdout.decode()


def test_loopback_origin_is_refused_by_default(origin, cache_host):
    url = origin.add("/policy/local.bin", BODY)
    host = start_strict(cache_host)
    assert "address 127.0.0.1 is not public" in body_of(host, url)
    assert origin.gets("/policy/local.bin") == 0
    assert rows(host, "SELECT kind FROM events") == [("fill.refused",)]
    assert "refused" in rows(host, "SELECT reason FROM misses")[0][0]


def test_hostname_resolving_to_loopback_is_refused_at_connect(origin, cache_host):
    url = origin.url("/policy/by-name.bin", tls=True)  # https://localhost:<port>/...
    origin.add("/policy/by-name.bin", BODY)
    host = start_strict(cache_host)
    miss(host, url)
    (error,) = wait_fill_state(host, "failed")[0]
    assert "resolves to non-public address" in error
    assert origin.gets("/policy/by-name.bin") == 0


def test_every_redirect_hop_is_checked_by_the_policy(origin, cache_host):
    target = origin.add("/policy/internal.bin", BODY)
    url = origin.add("/policy/hop.bin", redirect=target.replace("127.0.0.1", "localhost"))
    host = cache_host("--allow-origin", "127.0.0.1")
    miss(host, url)
    (error,) = wait_fill_state(host, "failed")[0]
    assert "host localhost is not allowed by --allow-origin" in error
    assert origin.gets("/policy/hop.bin") == 1
    assert origin.gets("/policy/internal.bin") == 0


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:8.8.8.8", True),
    ],
)
def test_public_addresses(address, public):
    assert is_public_address(address) is public


def test_allow_origin_glob(origin, cache_host):
    url = origin.add("/policy/glob.bin", BODY)
    host = cache_host("--allow-origin", "*.example.com")
    assert "not allowed by --allow-origin" in body_of(host, url)
    assert origin.gets("/policy/glob.bin") == 0
    other = cache_host("--allow-origin", "127.0.0.*", name="other")
    miss(other, url)
    other.wait_cached(url)


def test_credentialed_fill_is_scoped_to_its_credentials(origin, cache_host):
    secret = "Bearer s3cr3t-token-value"
    url = origin.add("/policy/private.bin", BODY, require_auth=secret)
    host = cache_host()
    auth = ("-H", f"Authorization: {secret}")
    assert curl("-f", *auth, host.blob_url(url)).stdout == BODY  # read through its fill
    wait_fill_state(host, "done")
    assert curl("-f", *auth, host.blob_url(url)).stdout == BODY
    # Without credentials, or with others: the same 404 as if it were absent.
    code = ("-o", os.devnull, "-w", "%{http_code}")
    assert curl(*code, "-I", host.blob_url(url)).stdout == b"404"
    assert (
        curl(*code, "-H", "Authorization: Bearer other", "-I", host.blob_url(url)).stdout == b"404"
    )
    # The value is nowhere in the database, the log or the data dir.
    host.stop()
    for path in host.data_dir.rglob("*"):
        if path.is_file():
            assert b"s3cr3t" not in path.read_bytes(), path
    assert "s3cr3t" not in host.log()
    with sqlite3.connect(host.data_dir / "cache.db") as db:
        (scope,) = db.execute("SELECT scope FROM artifacts").fetchone()
    assert len(scope) == 64


def test_public_artifact_is_served_to_requests_with_credentials(origin, cache_host):
    url = origin.add("/policy/public.bin", BODY)
    host = cache_host()
    miss(host, url)
    host.wait_cached(url)
    assert curl("-f", "-H", "Authorization: Bearer any", host.blob_url(url)).stdout == BODY


def test_credentials_are_not_sent_to_another_host_on_redirect(origin, cache_host):
    target = origin.add("/policy/cdn.bin", BODY)
    url = origin.add("/policy/signed.bin", redirect=target.replace("127.0.0.1", "localhost"))
    host = cache_host()
    curl("-H", "Authorization: Bearer abc", "-o", os.devnull, host.blob_url(url))
    wait_fill_state(host, "done")
    first = next(h for h in origin.hits if h.path == "/policy/signed.bin")
    last = next(h for h in origin.hits if h.path == "/policy/cdn.bin")
    assert first.headers.get("Authorization") == "Bearer abc"
    assert "Authorization" not in last.headers
