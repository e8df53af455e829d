"""OCI artifacts by reference (oras://), pulled through a real cache-host from
a real registry (Debian's docker-registry) and from one of ours for the token
dance, expiring blob redirects and a registry that lies (tests/registries.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import curl
from registries import DOCKER_MANIFEST, Distribution, Registry, artifact, digest, index
from test_api import PASSWORD
from test_withcache_cli import withcache

from withcache import client, keys

FW = os.urandom(300_000)
OTHER = os.urandom(200_000)


@pytest.fixture(scope="module")
def tls_pair(ca, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("registry-tls")
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(folder / "cert.pem"), append=True)
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture(scope="module")
def distribution(tmp_path_factory, tls_pair, ca_file):
    assert shutil.which("docker-registry"), "needs Debian's docker-registry (make test installs it)"
    cert, key = tls_pair
    registry = Distribution(tmp_path_factory.mktemp("distribution"), ca_file, cert, key).start()
    yield registry
    registry.stop()


@pytest.fixture
def registry(ca):
    """Ours: a fresh one per test (its counts and tokens are the test's)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    server = Registry(context)
    server.start()
    yield server
    server.stop()


def get(host, reference: str, headers: dict[str, str] | None = None, method: str = "GET"):
    """(status, headers, body) of the cache-host's /b/ URL for `reference`."""
    request = urllib.request.Request(
        host.url + keys.serve_path(reference), headers=headers or {}, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def operator_env(host) -> dict[str, str]:
    """What `withcache` needs to add to this cache-host (started with PASSWORD)."""
    env = {"WITHCACHE_SERVER": host.url, "WITHCACHE_ADMIN_PASSWORD": PASSWORD}
    made = withcache("token", "create", "ops", "--scope", "admin", env=env)
    assert made.returncode == 0, made.stderr
    return {"WITHCACHE_SERVER": host.url, "WITHCACHE_TOKEN": made.stdout.strip()}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


# -- a real registry


@pytest.mark.backends
def test_tag_and_digest_references_from_a_real_registry(cache_host, distribution, tmp_path):
    manifest, blobs = artifact([("fw.bin", FW)])
    manifest_digest = distribution.push("lab/fw", "1.0", manifest, blobs)
    host = cache_host()
    by_tag = f"oras://{distribution.host}/lab/fw:1.0"
    out = tmp_path / "fw.bin"
    done = curl("-fsS", host.url + keys.serve_path(by_tag), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == FW
    host.wait_cached(by_tag)
    status, headers, _ = get(host, by_tag, method="HEAD")
    assert status == 200 and headers["ETag"] == f'"{sha(FW)}"'
    assert headers["Withcache-Manifest-Digest"] == manifest_digest
    assert headers["Content-Disposition"] == 'attachment; filename="fw.bin"'
    # The same layer by the manifest's digest: another key, the same blob.
    by_digest = f"oras://{distribution.host}/lab/fw@{manifest_digest}"
    status, _, body = get(host, by_digest)
    assert (status, body) == (200, FW)
    host.wait_cached(by_digest)
    assert host.blob_names() == [sha(FW)]


def test_a_docker_v2_manifest_and_the_mirror_and_blob_forms(cache_host, distribution):
    manifest, blobs = artifact([("tool.tar", OTHER)], DOCKER_MANIFEST)
    distribution.push("lab/tool", "v2", manifest, blobs, DOCKER_MANIFEST)
    host = cache_host()
    reference = f"oras://{distribution.host}/lab/tool:v2"
    # The prefix form: no client sends a fragment, so a layer's name comes as %23.
    prefixed = curl("-fsS", f"{host.url}/{reference}%23tool.tar")
    assert prefixed.returncode == 0, prefixed.stderr
    assert prefixed.stdout == OTHER
    # As docs/oci.md shows it: curl -G --data-urlencode on /blob.
    blob = curl("-fsSG", "--data-urlencode", f"url={reference}", f"{host.url}/blob")
    assert blob.returncode == 0 and blob.stdout == OTHER, blob.stderr


def test_several_layers_need_a_name_and_bad_references_are_refused(cache_host, distribution):
    manifest, blobs = artifact([("a.bin", FW), ("b.bin", OTHER), (None, b"untitled")])
    distribution.push("lab/kit", "2", manifest, blobs)
    host = cache_host()
    reference = f"oras://{distribution.host}/lab/kit:2"
    status, _, body = get(host, reference)
    text = body.decode()
    assert status == 400, text
    assert "3 layers" in text and "a.bin" in text and "b.bin" in text and sha(OTHER) in text
    assert get(host, reference + "#b.bin")[::2] == (200, OTHER)
    assert get(host, f"{reference}#sha256:{sha(FW)}")[::2] == (200, FW)
    status, _, body = get(host, reference + "#c.bin")
    assert status == 404 and "no layer is 'c.bin'" in body.decode() and "a.bin" in body.decode()
    status, _, body = get(host, f"oras://{distribution.host}/lab/kit:nosuch")
    assert status == 404 and "no manifest nosuch" in body.decode()
    for bad, reason in [
        (f"oras://{distribution.host}/Lab/kit:2", "not a repository name"),
        (f"oras://{distribution.host}/lab/kit", "names no tag or digest"),
        (f"oras://{distribution.host}/lab/kit@sha512:{'a' * 128}", "only sha256"),
        (f"oras://{distribution.host}/lab/kit:2#", "nothing after '#'"),
    ]:
        answer = curl("-sS", host.blob_url(bad))
        assert answer.stdout.decode().startswith("bad url: ") and reason in answer.stdout.decode()
        token = curl("-sS", f"{host.url}/b/{keys.encode_token(bad)}/kit")
        assert token.stdout.decode().startswith("bad token: ") and reason in token.stdout.decode()
    assert host.health()["status"] == "ok"
    assert sorted(host.blob_names()) == sorted([sha(FW), sha(OTHER)])


def test_an_image_index_is_refused_by_name(cache_host, distribution):
    amd, amd_blobs = artifact([("x", b"amd64 bytes")])
    arm, arm_blobs = artifact([("x", b"arm64 bytes")])
    distribution.push("lab/multi", digest(amd), amd, amd_blobs)
    distribution.push("lab/multi", digest(arm), arm, arm_blobs)
    listing = index([(amd, "amd64"), (arm, "arm64")])
    distribution.push("lab/multi", "latest", listing, {}, "application/vnd.oci.image.index.v1+json")
    host = cache_host()
    status, _, body = get(host, f"oras://{distribution.host}/lab/multi:latest")
    assert status == 400
    assert "image index" in body.decode() and f"linux/arm64 {digest(arm)}" in body.decode()
    by_digest = f"oras://{distribution.host}/lab/multi@{digest(arm)}"
    assert get(host, by_digest)[::2] == (200, b"arm64 bytes")


def test_a_plain_http_registry_is_reached_only_when_named(cache_host, ca_file, tmp_path):
    lab = Distribution(tmp_path / "lab", ca_file).start()
    try:
        manifest, blobs = artifact([("netboot.img", FW)])
        lab.push("lab/netboot", "1", manifest, blobs)
        reference = f"oras://{lab.host}/lab/netboot:1"
        named = cache_host("--plain-http-registry", lab.host.upper(), name="named")
        assert get(named, reference)[::2] == (200, FW)
        unnamed = cache_host("--fill-attempts", "1", name="unnamed")
        status, _, body = get(unnamed, reference)
        # Over https to a plain-http port: the fill failed, and the 404 says how.
        assert status == 404 and b"fill failed: origin unreachable" in body, body
        assert unnamed.blob_names() == []
    finally:
        lab.stop()


# -- a registry of our own


def test_a_moved_tag_keeps_its_blob_until_refreshed_and_probes_never_ask(
    cache_host, registry, tmp_path
):
    first, first_blobs = artifact([("fw.bin", FW)])
    first_digest = registry.put("lab/fw", "stable", first, first_blobs)
    host = cache_host(env={"WITHCACHE_ADMIN_PASSWORD": PASSWORD})
    reference = f"oras://{registry.host}/lab/fw:stable"
    assert get(host, reference)[::2] == (200, FW)
    host.wait_cached(reference)
    second, second_blobs = artifact([("fw.bin", OTHER)])
    second_digest = registry.put("lab/fw", "stable", second, second_blobs)
    asked = len(registry.hits)
    for _ in range(3):  # probes and hits of a cached tag are answered without the registry
        assert get(host, reference, method="HEAD")[0] == 200
        assert get(host, reference)[::2] == (200, FW)
    assert len(registry.hits) == asked
    env = operator_env(host)
    added = withcache("add", "--refresh", "--wait", reference, env=env)
    assert added.returncode == 0, added.stderr
    status, headers, body = get(host, reference)
    assert (status, body) == (200, OTHER)
    assert headers["Withcache-Manifest-Digest"] == second_digest
    # The old layer is still there by the manifest's digest.
    assert get(host, f"oras://{registry.host}/lab/fw@{first_digest}")[::2] == (200, FW)


def test_a_token_gated_repository(cache_host, registry):
    manifest, blobs = artifact([("fw.bin", FW)])
    registry.put("vendor/fw", "1", manifest, blobs, credentials="ci:s3cret")
    host = cache_host()
    reference = f"oras://{registry.host}/vendor/fw:1"
    status, _, body = get(host, reference)
    assert status == 403 and "refuses anonymous access to vendor/fw" in body.decode()
    wrong = {"Authorization": basic("ci:wrong")}
    status, _, body = get(host, reference, wrong)
    assert status == 403 and "refuses the credentials sent" in body.decode()
    right = {"Authorization": basic("ci:s3cret")}
    # As docs/oci.md shows it: curl -u, the prefix form.
    pulled = curl("-fsS", "-u", "ci:s3cret", f"{host.url}/{reference}%23fw.bin")
    assert pulled.returncode == 0 and pulled.stdout == FW, pulled.stderr
    host.wait_cached(reference + "#fw.bin", headers=right)
    assert get(host, reference, right)[::2] == (200, FW)
    asked = registry.token_requests[-1]
    assert asked["scope"] == "repository:vendor/fw:pull" and asked["service"] == registry.host
    assert asked["authorization"] == right["Authorization"]
    # The registry got the token, the signed URL it redirected to got no credentials.
    blob_gets = [h for h in registry.hits if "/blobs/" in h.path]
    assert blob_gets and blob_gets[-1].headers["Authorization"].startswith("Bearer t")
    cdn = [h for h in registry.hits if h.path.startswith("/cdn/")]
    assert cdn and all("Authorization" not in h.headers for h in cdn)
    # Scoped to the credential, as for any URL: without it, no hit.
    status, _, body = get(host, reference)
    assert status == 404 and "refuses anonymous access" in body.decode(), body  # remembered
    assert get(host, reference, {"Authorization": basic("someone:else")})[0] == 403


def test_a_resume_asks_the_registry_again_for_an_expired_redirect(cache_host, ca, registry):
    body = os.urandom(2_000_000)
    manifest, blobs = artifact([("big.img", body)])
    registry.put("lab/img", "1", manifest, blobs, credentials="ci:pw")
    registry.token_seconds = 0.3  # the token expires before the resume, too
    registry.add(registry.cdn(digest(body)), body, etag=f'"{digest(body)}"', die_after=700_000,
                 rate=2_000_000)  # fmt: skip
    host = cache_host()
    reference = f"oras://{registry.host}/lab/img:1"
    status, _, got = get(host, reference, {"Authorization": basic("ci:pw")})
    assert status == 200 and got == body
    cdn = [h for h in registry.hits if h.path.startswith("/cdn/")]
    assert len(cdn) == 2, cdn  # died once, then resumed
    assert cdn[0].query != cdn[1].query  # a fresh signed URL: the first works once only
    assert cdn[1].headers["Range"] == "bytes=700000-"
    assert len(registry.token_requests) == 2  # the expired token was asked for again
    host.wait_cached(reference, headers={"Authorization": basic("ci:pw")})


@pytest.mark.backends
def test_a_lying_registry_gets_nothing_stored_and_the_client_fails(
    cache_host, registry, tmp_path, ca_file, monkeypatch
):
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # for the client library's fallback
    manifest, blobs = artifact([("fw.bin", FW)])
    registry.put("lab/liar", "1", manifest, blobs)
    lie = bytes(b ^ 1 for b in FW)  # as long as the layer, other bytes
    # Trickled, so the client keeps up with the fill and is there for its last byte.
    registry.add(registry.cdn(digest(FW)), lie, etag=f'"{digest(FW)}"', rate=1_000_000)
    host = cache_host()
    reference = f"oras://{registry.host}/lab/liar:1"
    out = tmp_path / "fw.bin"
    done = curl("-fsS", host.url + keys.serve_path(reference), "-o", str(out))
    assert done.returncode != 0
    assert host.blob_names() == []
    assert host.rows("SELECT count(*) FROM artifacts") == [(0,)]
    failed = host.rows("SELECT error FROM fills WHERE state = 'failed'")
    assert failed and "SHA-256 mismatch" in failed[0][0] and sha(FW) in failed[0][0]
    # The client library falls back to the registry, and checks the layer's digest too.
    with pytest.raises(client.FetchError, match="SHA-256 mismatch"):
        client.fetch(host.url, reference, tmp_path / "again.bin")
    assert not (tmp_path / "again.bin").exists()


def test_the_client_library_and_withcache_add(cache_host, registry, tmp_path):
    manifest, blobs = artifact([("fw.bin", FW), ("notes.txt", b"release notes\n")])
    registry.put("org/fw", "1.2", manifest, blobs)
    host = cache_host(env={"WITHCACHE_ADMIN_PASSWORD": PASSWORD})
    reference = f"oras://{registry.host}/org/fw:1.2#fw.bin"
    got = client.fetch(host.url, reference, tmp_path / "fw.bin")
    assert (tmp_path / "fw.bin").read_bytes() == FW and got.sha256 == sha(FW)
    assert got.source == "cache"
    notes = f"oras://{registry.host}/org/fw:1.2#notes.txt"
    env = operator_env(host)
    added = withcache("add", "--wait", "--json", notes, env=env)
    assert added.returncode == 0, added.stderr
    assert client.is_cached(host.url, notes)
    listed = tmp_path / "list.txt"
    listed.write_text(f"# firmware\noras://{registry.host}/org/fw:1.2#sha256:{sha(FW)}\n")
    from_list = withcache("add", "-f", str(listed), env=env)
    assert from_list.returncode == 0, from_list.stderr
    host.wait_cached(f"oras://{registry.host}/org/fw:1.2#sha256:{sha(FW)}")
    refused = withcache("add", f"oras://{registry.host}/org/fw:1.2", "--wait", env=env)
    assert refused.returncode != 0 and "2 layers" in refused.stderr
    pinned = withcache("add", "--sha256", sha(OTHER), "--wait", notes, "--refresh", env=env)
    assert pinned.returncode != 0 and f"not the expected SHA-256 {sha(OTHER)}" in pinned.stderr
    bad = withcache("add", "oras://ghcr.io/Org/fw:1", env=env)
    assert bad.returncode == 2 and "not a repository name" in bad.stderr
    assert json.loads(added.stdout)


def test_the_client_library_falls_back_to_the_registry(registry, ca_file, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # urllib's trust, as the cache-host's
    manifest, blobs = artifact([("fw.bin", FW), ("notes.txt", b"notes\n")])
    registry.put("vendor/fw", "3", manifest, blobs, credentials="ci:pw")
    reference = f"oras://{registry.host}/vendor/fw:3#fw.bin"
    secret = {"Authorization": basic("ci:pw")}
    got = client.fetch(None, reference, tmp_path / "fw.bin", headers=secret)
    assert (got.source, got.sha256, got.note) == ("origin", sha(FW), "no cache-host set")
    assert (tmp_path / "fw.bin").read_bytes() == FW
    assert registry.token_requests[-1]["authorization"] == secret["Authorization"]
    cdn = [h for h in registry.hits if h.path.startswith("/cdn/")]
    assert cdn and all("Authorization" not in h.headers for h in cdn)
    down = client.fetch("http://127.0.0.1:9", reference, tmp_path / "again.bin", headers=secret)
    assert down.source == "origin" and "cache failed" in down.note
    with pytest.raises(client.FetchError, match="2 layers"):
        client.fetch(None, reference.partition("#")[0], tmp_path / "which.bin", headers=secret)
    with pytest.raises(client.FetchError, match="HTTP Error 401"):
        client.fetch(None, reference, tmp_path / "anonymous.bin")


def test_a_tag_under_revalidate_follows_its_registry(cache_host, registry):
    """A moved tag is found by one manifest request once the artifact is due
    (before: only `add --refresh` saw it); a digest reference is never asked."""
    manifest, blobs = artifact([("fw.bin", FW)])
    first_digest = registry.put("lab/tool", "latest", manifest, blobs)
    host = cache_host("--revalidate", "oras://*=1s")
    tag = f"oras://{registry.host}/lab/tool:latest"
    pinned = f"oras://{registry.host}/lab/tool@{first_digest}"
    for reference in (tag, pinned):
        assert get(host, reference)[::2] == (200, FW)
        host.wait_cached(reference)
    moved, moved_blobs = artifact([("fw.bin", OTHER)])
    second_digest = registry.put("lab/tool", "latest", moved, moved_blobs)
    time.sleep(1.1)
    asked = len(registry.hits)
    # Due: the hit is answered from the old layer at once; the registry is asked behind it.
    assert get(host, tag)[::2] == (200, FW)
    assert get(host, pinned)[::2] == (200, FW)
    deadline = time.monotonic() + 20
    while (found := get(host, tag))[2] != OTHER:
        assert time.monotonic() < deadline, "the moved tag was never followed"
        time.sleep(0.1)
    assert found[1]["Withcache-Manifest-Digest"] == second_digest
    manifests = [h for h in registry.hits[asked:] if "/manifests/" in h.path]
    assert manifests and all("latest" in h.path for h in manifests)  # never the digest's
    assert get(host, pinned)[::2] == (200, FW)
