"""Each tool's own mirror setting, against the real cache-host: the URL the tool
builds, taken from its source or docs (cited per test), fetched the way the
tool fetches it; the real tool itself where it installs here (Nix from
Debian's nix-bin, bitbake's fetcher from PyPI's bitbake-setup).

docs/mirrors.md gives the exact setting for each of these tools.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import urllib.request
from email.utils import parsedate_to_datetime

import pytest
from conftest import curl

BODY = os.urandom(200_000)
SHA = hashlib.sha256(BODY).hexdigest()


@pytest.fixture
def host(cache_host):
    return cache_host()


def test_homebrew_artifact_domain_prefixes_the_url(origin, host, tmp_path):
    """Homebrew's env_config.rb, HOMEBREW_ARTIFACT_DOMAIN: "will cause a formula
    with the URL https://example.com/foo.tar.gz to instead download from
    http://localhost:8080/https://example.com/foo.tar.gz" (the domain's trailing
    slash chomped). CurlDownloadStrategy asks with a HEAD first, then downloads
    with --location --remote-time."""
    url = host.cached(origin, "/tools/brew/foo-1.0.tar.gz", BODY)
    domain = host.url + "/"
    mirrored = f"{domain.rstrip('/')}/{url}"
    head = curl("--fail", "--location", "--head", "--silent", mirrored).stdout.decode().lower()
    assert "content-length: 200000" in head and "last-modified:" in head
    out = tmp_path / "foo-1.0.tar.gz.incomplete"
    result = curl("--fail", "--location", "--remote-time", "--output", str(out), mirrored)
    assert result.returncode == 0 and out.read_bytes() == BODY
    last_modified = re.search(r"last-modified: (.*)\r", head)[1]  # type: ignore[index]
    assert out.stat().st_mtime == parsedate_to_datetime(last_modified).timestamp()
    assert origin.gets("/tools/brew/foo-1.0.tar.gz") == 1


def test_bitbake_premirrors_with_bitbakes_own_fetcher(origin, host, tmp_path, ca_file):
    """bitbake's fetch2 (bb.fetch2.Fetch, uri_replace) with a PREMIRRORS line
    substituting TYPE, HOST and PATH, downloaded by its wget fetcher and checked
    against the recipe's sha256sum, for an http and an https origin."""
    import bb.data
    import bb.fetch2

    origin.add("/tools/bb/src-1.0.tar.gz", BODY)
    dl_dir = tmp_path / "downloads"
    d = bb.data.init()
    d.setVar("DL_DIR", str(dl_dir))
    d.setVar("PREMIRRORS", f"https?://.*/.* {host.url}/TYPE/HOST/PATH")
    d.setVar("FETCHCMD_wget", f"/usr/bin/env wget -t 1 -T 30 --ca-certificate={ca_file}")
    for url in (
        origin.url("/tools/bb/src-1.0.tar.gz"),
        origin.url("/tools/bb/src-1.0.tar.gz", tls=True),
    ):
        shutil.rmtree(dl_dir, ignore_errors=True)
        src_uri = f"{url};sha256sum={SHA}"
        fetcher = bb.fetch2.Fetch([src_uri], d)
        mirrors = bb.fetch2.mirror_from_string(d.getVar("PREMIRRORS"))
        (mirror_url, *_), _ = bb.fetch2.build_mirroruris(fetcher.ud[src_uri], mirrors, d)
        scheme, rest = url.split("://")
        host_part, path = rest.split("/", 1)
        # bitbake percent-encodes the host's colon: the cache-host decodes it.
        expected = f"{host.url}/{scheme}/{host_part.replace(':', '%3A')}/{path}"
        assert mirror_url.split(";")[0] == expected
        fetcher.download()  # the first is a miss: read through the cache-host's fill
        assert (dl_dir / "src-1.0.tar.gz").read_bytes() == BODY
        host.wait_cached(url)
    before = origin.gets("/tools/bb/src-1.0.tar.gz")
    shutil.rmtree(dl_dir)
    bb.fetch2.Fetch([f"{url};sha256sum={SHA}"], d).download()  # now a hit
    assert (dl_dir / "src-1.0.tar.gz").read_bytes() == BODY
    assert origin.gets("/tools/bb/src-1.0.tar.gz") == before
    assert before == 2  # one fill per origin URL (http and https are two keys)


def bazel_rewrite(pattern: str, replacement: str, url: str) -> str:
    """Bazel's UrlRewriter.applyRewriteRules: the pattern must match the whole
    URL without its scheme; the result keeps the original scheme."""
    scheme = url.split("://", 1)[0]
    without_scheme = url[len(scheme) + 3 :]
    match = re.fullmatch(pattern, without_scheme)
    assert match is not None
    java_groups = re.sub(r"\$(\d)", r"\\\1", replacement)  # Java's $1 is Python's \1
    return f"{scheme}://{match.expand(java_groups)}"


def test_bazel_downloader_rewrite_rule(origin, cache_host, tls_files, ca_file, tmp_path):
    """A downloader config line `rewrite (.*) cache:443/https/$1`: Bazel keeps the
    URL's scheme, so an https origin is asked of an https cache-host."""
    chain, key = tls_files
    host = cache_host("--tls-cert", str(chain), "--tls-key", str(key))
    origin.add("/tools/bazel/rules-1.0.tar.gz", BODY)
    url = origin.url("/tools/bazel/rules-1.0.tar.gz", tls=True)
    netloc = f"localhost:{host.port}"
    rewritten = bazel_rewrite("(.*)", f"{netloc}/https/$1", url)
    assert rewritten == f"https://{netloc}/https/{url.split('://')[1]}"
    for _ in range(2):  # a miss read through, then a hit
        out = curl("-f", "--cacert", str(ca_file), rewritten)
        assert out.returncode == 0 and out.stdout == BODY
        host.wait_cached(url)
    assert origin.gets("/tools/bazel/rules-1.0.tar.gz") == 1


def test_pyenv_python_build_mirror_url(origin, host, tmp_path):
    """python-build: mirror_url="${PYTHON_BUILD_MIRROR_URL}/$checksum", asked
    with `curl -qsILf` (http_head_curl) and then fetched with
    `curl -q -o FILE -sSLf` (http_get_curl); a failed HEAD falls back to the
    package's own URL. PYTHON_BUILD_MIRROR_URL=<cache-host>/sha256."""
    host.cached(origin, "/tools/pyenv/Python-3.12.0.tar.xz", BODY)
    mirror_url = f"{host.url}/sha256/{SHA}"
    assert subprocess.run(["curl", "-qsILf", mirror_url], capture_output=True).returncode == 0
    out = tmp_path / "Python-3.12.0.tar.xz"
    assert subprocess.run(["curl", "-q", "-o", str(out), "-sSLf", mirror_url]).returncode == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == SHA
    unknown = f"{host.url}/sha256/{hashlib.sha256(b'not here').hexdigest()}"
    assert subprocess.run(["curl", "-qsILf", unknown], capture_output=True).returncode == 22


def test_spack_source_cache_mirror(origin, host):
    """Spack's mirror layout (spack/mirrors/layout.py, default_mirror_layout, and
    URLFetchStrategy.mirror_id): `_source-cache/archive/<sha256[:2]>/<sha256>.<ext>`
    under the mirror's URL, which Spack fetches with urllib (or curl)."""
    host.cached(origin, "/tools/spack/zlib-1.3.tar.gz", BODY)
    url = f"{host.url}/_source-cache/archive/{SHA[:2]}/{SHA}.tar.gz"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == BODY
    assert curl("-fsSL", url).stdout == BODY
    without_extension = f"{host.url}/_source-cache/archive/{SHA[:2]}/{SHA}"
    assert curl("-fsSL", without_extension).stdout == BODY


def test_nix_hashed_mirrors_with_nix_itself(origin, host, tmp_path):
    """Nix's builtin:fetchurl (src/libstore/builtins/fetchurl.cc) tries each of
    `hashed-mirrors` first, as <mirror>/<hash type>/<base16 hash>, then the URL.
    The URL here is dead, so only the cache-host can answer; for a digest it
    does not hold, Nix goes on to the URL, and the cache-host fetches nothing."""
    assert shutil.which("nix-build"), "needs Debian's nix-bin (the test set-up installs it)"
    host.cached(origin, "/tools/nix/hello-2.12.tar.gz", BODY)
    expression = tmp_path / "fetch.nix"
    expression.write_text(
        f'import <nix/fetchurl.nix> {{ url = "http://127.0.0.1:1/gone/hello-2.12.tar.gz"; '
        f'sha256 = "{SHA}"; }}'
    )
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    store = tmp_path / "store"
    nix = [
        "nix-build", str(expression), "--no-out-link", "--store", str(store),
        "--option", "hashed-mirrors", host.url, "--option", "substituters", "",
        "--option", "sandbox", "false", "--option", "build-users-group", "",
    ]  # fmt: skip
    result = subprocess.run(nix, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout.strip().splitlines()[-1]
    assert (store / out.lstrip("/")).read_bytes() == BODY
    # A digest the cache-host doesn't hold: a 404, and Nix goes on to the URL.
    other = os.urandom(1000)
    origin.add("/tools/nix/other.tar.gz", other)
    expression.write_text(
        f'import <nix/fetchurl.nix> {{ url = "{origin.url("/tools/nix/other.tar.gz")}"; '
        f'sha256 = "{hashlib.sha256(other).hexdigest()}"; }}'
    )
    result = subprocess.run(nix, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert origin.gets("/tools/nix/other.tar.gz") == 1
    assert host.rows("SELECT count(*) FROM fills") == [(1,)]  # only the first artifact's
