"""The mirror spellings of an artifact on the read path, with real curl and wget.

`/<origin URL>`, `/<scheme>/<host>/<path>` and the digest forms must behave
exactly like `/b/<token>/<name>`: the same key (one origin download whatever
form asked), read-through on a miss, curate, Range, conditionals, HEAD, the
SSRF guard and credential scope. Bad input is in test_bad_input.py; the URLs
that real tools build are in test_mirror_tools.py; routing in test_routes.py.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
from conftest import CacheHost, curl, wget
from services import free_ports

from withcache import keys

pytestmark = pytest.mark.backends
BODY = os.urandom(300_000)
SHA = hashlib.sha256(BODY).hexdigest()


def token_form(url: str) -> str:
    return keys.serve_path(url)


def prefix_form(url: str) -> str:
    return "/" + url


def collapsed_prefix_form(url: str) -> str:
    """What the prefix form becomes behind a proxy that merges slashes."""
    return "/" + url.replace("://", ":/", 1)


def host_path_form(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"/{scheme}/{rest}"


URL_FORMS = {
    "token": token_form,
    "prefix": prefix_form,
    "prefix-collapsed": collapsed_prefix_form,
    "host-path": host_path_form,
}
DIGEST_FORMS = {
    "sha256": lambda sha: f"/sha256/{sha}",
    "sha256-name": lambda sha: f"/sha256/{sha}/x.run",
    "spack": lambda sha: f"/_source-cache/archive/{sha[:2]}/{sha}.tar.gz",
}


def status(*args: str) -> str:
    return curl("-o", os.devnull, "-w", "%{http_code}", *args).stdout.decode()


@pytest.mark.parametrize("tool", ["curl", "wget"])
@pytest.mark.parametrize("form", URL_FORMS)
def test_a_miss_reads_through_then_hits(origin, cache_host, tmp_path, form, tool):
    path = f"/mf/through-{form}-{tool}/x.run"
    url = origin.add(path, BODY)
    host = cache_host()
    served = host.url + URL_FORMS[form](url)
    out = tmp_path / "x.run"
    for _ in range(2):
        out.unlink(missing_ok=True)
        if tool == "curl":
            result = curl("-f", "-o", str(out), served)
        else:
            result = wget("-O", str(out), served)
        assert result.returncode == 0, result.stderr
        assert out.read_bytes() == BODY
        host.wait_cached(url)
    assert origin.gets(path) == 1


def test_every_form_names_the_same_artifact(origin, cache_host):
    path = "/mf/same/x.run"
    url = origin.add(path, BODY)
    host = cache_host()
    curl("-f", "-o", os.devnull, host.url + token_form(url))
    host.wait_cached(url)
    served = [f(url) for f in URL_FORMS.values()] + [f(SHA) for f in DIGEST_FORMS.values()]
    for spelling in served:
        got = curl("-f", host.url + spelling)
        assert got.returncode == 0 and got.stdout == BODY, spelling
        head = curl("-fI", host.url + spelling).stdout.decode().lower()
        assert f'etag: "{SHA}"' in head and f"content-length: {len(BODY)}" in head, spelling
    assert origin.gets(path) == 1


@pytest.mark.parametrize("form", [*URL_FORMS, *DIGEST_FORMS])
def test_range_conditionals_and_head_on_each_form(origin, cache_host, tmp_path, form):
    url = origin.add(f"/mf/range-{form}/x.run", BODY)
    host = cache_host()
    curl("-f", "-o", os.devnull, host.blob_url(url))
    host.wait_cached(url)
    spelling = URL_FORMS[form](url) if form in URL_FORMS else DIGEST_FORMS[form](SHA)
    served = host.url + spelling
    assert curl("-f", "-r", "1000-1999", served).stdout == BODY[1000:2000]
    assert curl("-f", "-r", "-500", served).stdout == BODY[-500:]
    assert status("-r", f"{len(BODY)}-", served) == "416"
    assert status("-H", f'If-None-Match: "{SHA}"', served) == "304"
    assert status("-z", "2020-01-01", served) == "200"
    partial = tmp_path / "resume"
    partial.write_bytes(BODY[:123_456])
    assert curl("-f", "-C", "-", "-o", str(partial), served).returncode == 0
    assert partial.read_bytes() == BODY
    assert wget("-c", "-O", str(partial), served).returncode == 0  # already whole: 416 is fine
    assert partial.read_bytes() == BODY


def test_the_query_is_fetched_but_not_part_of_the_key(origin, cache_host):
    path = "/mf/query/x.run"
    url = origin.add(path, BODY)
    host = cache_host()
    signed = url + "?X-Amz-Signature=abc&X-Amz-Expires=60"
    for form in ("prefix", "host-path"):
        assert curl("-f", host.url + URL_FORMS[form](signed)).stdout == BODY
        host.wait_cached(url)
    assert [h.query for h in origin.hits if h.path == path] == [
        "X-Amz-Signature=abc&X-Amz-Expires=60"
    ]
    assert curl("-f", host.url + token_form(url)).stdout == BODY  # the key: no query


def test_percent_encoding_is_kept_as_sent(origin, cache_host):
    path = "/mf/enc/cuda toolkit+1.run"
    url = origin.url("/mf/enc/cuda%20toolkit%2B1.run")
    origin.add(path, BODY)
    host = cache_host()
    assert curl("-f", host.url + prefix_form(url)).stdout == BODY
    host.wait_cached(url)
    for form in URL_FORMS.values():
        assert curl("-f", host.url + form(url)).stdout == BODY
    assert origin.gets(path) == 1


def test_a_url_encoded_whole_is_decoded_once(origin, cache_host):
    from urllib.parse import quote

    path = "/mf/whole/x.run"
    url = origin.add(path, BODY)
    host = cache_host()
    assert curl("-f", f"{host.url}/{quote(url, safe='')}").stdout == BODY
    host.wait_cached(url)
    assert curl("-f", host.url + token_form(url)).stdout == BODY
    assert origin.gets(path) == 1


@pytest.mark.parametrize("form", URL_FORMS)
def test_curate_records_the_miss_under_the_key_with_the_full_url(origin, cache_host, form):
    url = origin.add(f"/mf/curate-{form}/x.run", BODY)
    host = cache_host("--curate")
    signed = url + "?sig=1"
    result = curl("-w", "%{http_code}", host.url + URL_FORMS[form](signed))
    assert result.stdout.endswith(b"404")
    assert b"recorded for an operator to approve" in result.stdout
    assert host.rows("SELECT key, url FROM misses") == [(keys.cache_key(url), signed)]
    assert origin.gets(f"/mf/curate-{form}/x.run") == 0


def test_a_digest_miss_is_a_404_and_fetches_nothing(origin, cache_host):
    host = cache_host()
    unknown = hashlib.sha256(b"nothing stored").hexdigest()
    for form in DIGEST_FORMS.values():
        result = curl("-w", "%{http_code}", host.url + form(unknown))
        assert result.stdout.endswith(b"404") and b"never fetched" in result.stdout
        assert status("-I", host.url + form(unknown)) == "404"
    assert host.rows("SELECT count(*) FROM misses") == [(0,)]
    assert host.rows("SELECT count(*) FROM fills") == [(0,)]


def test_the_ssrf_guard_holds_through_every_form(origin, tmp_path, ca_file, backend):
    path = "/mf/ssrf/x.run"
    url = origin.add(path, BODY)
    env = {**os.environ, "SSL_CERT_FILE": str(ca_file)}
    host = CacheHost(tmp_path / "guarded", ("--retry-delay", "0.05"), env, backend=backend)
    host.start()
    try:
        for form in URL_FORMS.values():
            result = curl("-w", "%{http_code}", host.url + form(url))
            assert result.stdout.endswith(b"404"), form
            assert b"address 127.0.0.1 is not public" in result.stdout
        assert origin.gets(path) == 0
    finally:
        host.stop()


@pytest.mark.parametrize("form", URL_FORMS)
def test_credential_scope_holds_through_every_form(origin, cache_host, form):
    path = f"/mf/secret-{form}/x.run"
    url = origin.add(path, BODY, require_auth="Bearer t0k")
    host = cache_host()
    served = host.url + URL_FORMS[form](url)
    auth = "Authorization: Bearer t0k"
    assert curl("-f", "-H", auth, served).stdout == BODY
    host.wait_cached(url, headers={"Authorization": "Bearer t0k"})
    for spelling in [
        *(f(url) for f in URL_FORMS.values()),
        *(f(SHA) for f in DIGEST_FORMS.values()),
    ]:
        served = host.url + spelling
        assert curl("-f", "-H", auth, served).stdout == BODY, spelling
        for other in ([], ["-H", "Authorization: Bearer other"]):
            result = curl(*other, served)
            assert BODY not in result.stdout, spelling
            assert status(*other, served) in ("401", "404", "502"), spelling


def test_nginx_in_front_that_merges_slashes(origin, cache_host, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from common import start_nginx

    path = "/mf/nginx/x.run"
    url = origin.add(path, BODY)
    host = cache_host()
    as_is, normalised, probe, web = free_ports(4)
    # Without a URI part nginx passes the request target as received; with one
    # (`/`) it passes its normalised URI, slashes merged: `https://` -> `https:/`.
    servers = f"""
      server {{ listen 127.0.0.1:{as_is}; merge_slashes on;
                location / {{ proxy_pass http://127.0.0.1:{host.port}; }} }}
      server {{ listen 127.0.0.1:{normalised}; merge_slashes on;
                location / {{ proxy_pass http://127.0.0.1:{host.port}/; }} }}
      server {{ listen 127.0.0.1:{probe}; merge_slashes on;
                location / {{ proxy_pass http://127.0.0.1:{origin.port}/; }} }}
    """
    (tmp_path / "www").mkdir()
    nginx = start_nginx(tmp_path / "nginx", tmp_path / "www", web, servers)
    try:
        # The second kind really merges: the origin sees one slash where two were sent.
        curl(f"http://127.0.0.1:{probe}/mf//merged")
        assert origin.hits[-1].path == "/mf/merged"
        for port in (as_is, normalised):
            front = f"http://127.0.0.1:{port}"
            for name, form in URL_FORMS.items():
                assert curl("-f", front + form(url)).stdout == BODY, (port, name)
                host.wait_cached(url)
                assert curl("-f", "-r", "10-19", front + form(url)).stdout == BODY[10:20]
                assert status("-I", front + form(url)) == "200"
                result = wget("-O", str(tmp_path / "w"), front + form(url))
                assert result.returncode == 0 and (tmp_path / "w").read_bytes() == BODY
            for form in DIGEST_FORMS.values():
                assert curl("-f", front + form(SHA)).stdout == BODY
        assert origin.gets(path) == 1
    finally:
        nginx.stop()
