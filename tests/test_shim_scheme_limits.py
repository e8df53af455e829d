"""curl --proto / --proto-redir and wget --https-only, with both shims, the real
tools and real cache-hosts: a hit is served when the cache-host's scheme meets
the limit (and, for --proto, the URL's own scheme does too, or curl would
refuse it), and the command runs as written when it doesn't. The grammar of
every --proto spelling is compared between the shims in test_native_differential.
"""

from __future__ import annotations

import pytest
from conftest import BIN, shim

BODY = bytes(range(256)) * 200


@pytest.fixture(scope="module")
def hosts(origin, tmp_path_factory, ca_file, tls_files):
    """An http and an https cache-host, both holding an http and an https origin URL."""
    import os

    from conftest import TEST_FLAGS, CacheHost

    chain, key = tls_files
    env = {**os.environ, "SSL_CERT_FILE": str(ca_file)}
    folder = tmp_path_factory.mktemp("limits")
    plain = CacheHost(folder / "plain", TEST_FLAGS, env).start()
    tls_flags = (*TEST_FLAGS, "--tls-cert", str(chain), "--tls-key", str(key))
    secure = CacheHost(folder / "tls", tls_flags, env).start()
    origin.add("/limits/x.run", BODY)
    urls = {"http": origin.url("/limits/x.run"), "https": origin.url("/limits/x.run", tls=True)}
    for host in (plain, secure):
        for url in urls.values():
            host.wait_cached(url)
    yield {"http": plain.url, "https": secure.url.replace("127.0.0.1", "localhost")}, urls
    plain.stop()
    secure.stop()


@pytest.fixture(params=["python", "native"])
def shims(request):
    return BIN if request.param == "python" else request.getfixturevalue("native_shim")


def notes(result, tool):
    return [line for line in result.stderr.splitlines() if line.startswith(f"withcache: {tool}:")]


def test_rustups_installer_line_is_served_by_an_https_cache_host(hosts, shims, ca_file, tmp_path):
    servers, urls = hosts
    # rustup-init.sh and the rustup.rs page: curl --proto '=https' --tlsv1.2 -sSf
    args = ["--proto", "=https", "--tlsv1.2", "-sSf", "--cacert", str(ca_file), "-o", "out"]
    result = shim("curl", *args, urls["https"], server=servers["https"], cwd=tmp_path, shims=shims)
    assert result.returncode == 0, result.stderr
    assert notes(result, "curl")[0].startswith(f"withcache: curl: hit {urls['https']} -> https://")
    assert (tmp_path / "out").read_bytes() == BODY


@pytest.mark.parametrize(
    ("limit", "cache", "url", "served"),
    [
        ("=https", "https", "https", True),
        ("=https", "http", "https", False),  # the cache-host's scheme is not allowed
        ("=https", "https", "http", False),  # curl refuses the URL as written: so must we
        ("-all,https,+http", "http", "http", True),
        ("=http,https", "https", "http", True),
        ("-https", "https", "http", False),
        ("-https", "http", "http", True),
    ],
)
def test_curl_proto(hosts, shims, ca_file, tmp_path, limit, cache, url, served):
    servers, urls = hosts
    args = ["--proto", limit, "-sS", "--cacert", str(ca_file), "-o", "out", urls[url]]
    result = shim("curl", *args, server=servers[cache], cwd=tmp_path, shims=shims)
    direct = shim("curl", *args[:-2], "direct", urls[url], cwd=tmp_path, shims=shims)
    assert result.returncode == direct.returncode  # what curl itself makes of the limit
    (note,) = notes(result, "curl")
    if served:
        assert note.startswith(f"withcache: curl: hit {urls[url]}"), note
        assert (tmp_path / "out").read_bytes() == BODY
    else:
        assert note.startswith(f"withcache: curl: passed through {urls[url]} (--proto"), note


def test_curl_proto_redir_limits_only_the_cache_host(hosts, shims, ca_file, tmp_path):
    servers, urls = hosts
    args = ["--proto-redir", "=https", "-sS", "--cacert", str(ca_file), "-o", "out", urls["http"]]
    over_tls = shim("curl", *args, server=servers["https"], cwd=tmp_path, shims=shims)
    assert notes(over_tls, "curl")[0].startswith(f"withcache: curl: hit {urls['http']}")
    plain = shim("curl", *args, server=servers["http"], cwd=tmp_path, shims=shims)
    assert "(--proto-redir does not allow http, the cache-host's scheme)" in plain.stderr
    assert (tmp_path / "out").read_bytes() == BODY


@pytest.mark.parametrize("url", ["http", "https"])
def test_wget_https_only_is_never_downgraded(hosts, shims, ca_file, tmp_path, url):
    servers, urls = hosts
    args = ["-q", "--https-only", f"--ca-certificate={ca_file}", "-O", "out", urls[url]]
    over_tls = shim("wget", *args, server=servers["https"], cwd=tmp_path, shims=shims)
    assert over_tls.returncode == 0, over_tls.stderr
    assert notes(over_tls, "wget")[0].startswith(f"withcache: wget: hit {urls[url]} -> https://")
    plain = shim("wget", *args, server=servers["http"], cwd=tmp_path, shims=shims)
    assert plain.returncode == 0, plain.stderr
    assert notes(plain, "wget") == [
        f"withcache: wget: passed through {urls[url]} "
        "(--https-only does not allow http, the cache-host's scheme)"
    ]
    assert (tmp_path / "out").read_bytes() == BODY
