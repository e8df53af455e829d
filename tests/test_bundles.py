"""Bundles for sites without a network: `withcache export` on one cache-host,
`withcache import` on another (on both store pairs), byte-exact and then
interrupted and resumed; what a bundle may hold (no links, devices, paths
outside its layout, members the manifest doesn't describe, a manifest that
lies or lists more than the archive holds) refused with a clear error and
nothing stored; credential-scoped artifacts only when asked for, and then
only into a host with the exporter's scope secret."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from api_client import Api
from backends import Embedded, Scale
from conftest import BIN, TEST_FLAGS, CacheHost, curl
from test_api import LOCKED, PASSWORD
from test_imports import cli_env, no_leftovers
from test_withcache_cli import env_for, one_error_line, withcache

from withcache import bundle


def body(n: int, size: int) -> bytes:
    return hashlib.sha512(str(n).encode()).digest() * (size // 64)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def admin(host: CacheHost) -> Api:
    api = Api(host.url)
    return api.with_token(api.create_token("ops", "admin", PASSWORD))


@pytest.fixture
def second_host(tmp_path, ca_file, backend, request):
    """A cache-host with stores of its own (a fresh database and bucket prefix
    on the scale-out pair), as at the site without a network."""
    hosts = []

    def start(name: str = "site") -> CacheHost:
        if backend.scale:
            postgres, seaweed = request.getfixturevalue("scale_stores")
            own = Scale(postgres.new_database(), seaweed.endpoint, f"{backend.prefix}-{name}")
        else:
            own = Embedded()
        env = {**os.environ, "SSL_CERT_FILE": str(ca_file), **LOCKED}
        host = CacheHost(tmp_path / name, TEST_FLAGS, env, backend=own)
        hosts.append(host)
        return host.start()

    yield start
    for host in hosts:
        host.stop()


def exported(host: CacheHost, api: Api, out: Path, *args: str) -> subprocess.CompletedProcess:
    result = withcache("export", "-o", str(out), *args, env=env_for(host, api.token))
    assert result.returncode == 0, result.stderr
    return result


def import_piped(host: CacheHost, token: str, path: Path) -> subprocess.CompletedProcess:
    """`withcache import -` reading the bundle from a pipe."""
    with open(path, "rb") as source:
        return subprocess.run([str(BIN / "withcache"), "import", "-"], stdin=source,
                              capture_output=True, text=True, env=cli_env(host, token))  # fmt: skip


def fetched(host: CacheHost, url: str, headers: dict | None = None) -> bytes:
    argv = ["-f", host.blob_url(url)]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    got = curl(*argv)
    assert got.returncode == 0, got.stderr
    return got.stdout


@pytest.mark.backends
def test_export_then_import_elsewhere_byte_exact_then_interrupted_and_resumed(
    origin, cache_host, second_host, tmp_path, backend
):
    here = cache_host(env=LOCKED)
    api = admin(here)
    bodies = {f"/bundle/{backend.name}/{n}.run": body(n, 2_000_000) for n in range(4)}
    bodies[f"/bundle/{backend.name}/again.run"] = bodies[f"/bundle/{backend.name}/0.run"]
    for path, data in bodies.items():
        url = origin.add(path, data, headers={"Content-Type": "application/x-makeself"})
        assert withcache("add", url, "--wait", env=env_for(here, api.token)).returncode == 0
    out = tmp_path / "site.tar"
    done = exported(here, api, out)
    assert (
        done.stderr
        == f"exported 5 artifacts ({out.stat().st_size / 1048576:.1f} MiB bundle) to {out}\n"
    )

    # A plain tar: standard tools read it and check it.
    listing = subprocess.run(["tar", "tf", str(out)], capture_output=True, text=True, check=True)
    names = listing.stdout.split()
    assert names[:2] == ["manifest.json", "SHA256SUMS"] and len(names) == 2 + 4  # blobs once
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "xf", str(out), "-C", str(unpacked)], check=True)
    checked = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=unpacked,
                             capture_output=True, text=True)  # fmt: skip
    assert checked.returncode == 0 and checked.stdout.count(": OK") == 4
    manifest = json.loads((unpacked / "manifest.json").read_text())
    entry = manifest["artifacts"][0]
    assert set(entry) == {"url", "key", "sha256", "size", "headers", "fetched_at", "scope", "path"}
    assert entry["headers"]["Content-Type"] == "application/x-makeself"
    assert "Last-Modified" in entry["headers"] and manifest["scope_key"] is None

    # Into a cache-host of its own, in a pipe: every byte as it was, the origin not asked.
    there = second_host()
    far = admin(there)
    asked = {path: origin.gets(path) for path in bodies}
    piped = import_piped(there, far.token, out)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == (
        "imported 5 (1 from bytes the cache-host had), skipped 0 (cached already), failed 0\n"
    )
    for path, data in bodies.items():
        assert fetched(there, origin.url(path)) == data
    head = curl("-I", there.blob_url(origin.url(f"/bundle/{backend.name}/1.run"))).stdout
    assert b"Content-Type: application/x-makeself" in head and b"Last-Modified: " in head
    assert {path: origin.gets(path) for path in bodies} == asked
    assert all(a["imported"] for a in far.get("/artifacts").body["items"])

    # Interrupted: a site that got half the bundle before its import was killed...
    site = second_host("resumed")
    resumed = admin(site)
    feeding = subprocess.Popen([str(BIN / "withcache"), "import", "-"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=cli_env(site, resumed.token))  # fmt: skip
    whole = out.read_bytes()
    feeding.stdin.write(whole[: len(whole) // 2])  # the first blob whole, then part of one
    feeding.stdin.flush()
    deadline = time.monotonic() + 30
    while resumed.get("/artifacts").body["total"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    feeding.kill()
    feeding.wait()
    before = resumed.get("/artifacts").body["total"]
    assert 2 <= before < 5
    uploads_before = _uploads(resumed)
    # ...done again: it sends only what is missing.
    again = withcache("import", str(out), env=env_for(site, resumed.token))
    assert again.returncode == 0, again.stderr
    assert f"skipped {before} (cached already), failed 0" in again.stdout
    assert resumed.get("/artifacts").body["total"] == 5
    assert _uploads(resumed) - uploads_before <= 5 - before
    for path, data in bodies.items():
        assert fetched(site, origin.url(path)) == data
    if not backend.scale:
        no_leftovers(site)


def _uploads(api: Api) -> int:
    found = api.get("/events", kind="artifact.imported", limit=1000).body["items"]
    return sum(1 for e in found if e["detail"]["how"] == "upload")


def test_export_filters_and_stdout(origin, cache_host, tmp_path):
    host = cache_host(env=LOCKED)
    api = admin(host)
    urls = [origin.add(f"/filters/{name}", body(n, 10_000))
            for n, name in enumerate(["a.iso", "b.run", "c.run"])]  # fmt: skip
    for url in urls:
        assert withcache("add", url, "--wait", env=env_for(host, api.token)).returncode == 0
    ids = {a["url"]: a["id"] for a in api.get("/artifacts").body["items"]}

    def members(*args: str) -> list[str]:
        out = tmp_path / "f.tar"
        exported(host, api, out, *args)
        with tarfile.open(out) as tar:
            return sorted(m.name.rsplit("/", 1)[-1] for m in tar.getmembers()[2:])

    assert members("--match", "*.run") == ["b.run", "c.run"]
    assert members("--ids", str(ids[urls[0]]), f"{ids[urls[2]]}") == ["a.iso", "c.run"]
    assert members("--match", "*.run", "--ids", str(ids[urls[0]])) == []
    assert members("--since", "2000-01-01") == ["a.iso", "b.run", "c.run"]
    assert members("--since", "2999-01-01T00:00+00:00") == []
    piped = subprocess.run(
        f"{BIN / 'withcache'} export -o - --match '*a.iso' | tar tf -", shell=True,
        capture_output=True, text=True, env=cli_env(host, api.token),
    )  # fmt: skip
    assert piped.returncode == 0 and piped.stdout.endswith("/a.iso\n"), piped
    for args, status, message in [
        (["--since", "yesterday"], 2, "bad --since 'yesterday'"),
        (["--ids", "1,x"], 2, "bad --ids 'x'"),
        (["--ids", "999"], 1, "no artifact 999"),
        (["--json", "-o", "-"], 2, "--json prints on stdout"),
    ]:
        cmd = ["export", *args] if "-o" in args else ["export", "-o", str(tmp_path / "x"), *args]
        result = withcache(*cmd, env=env_for(host, api.token))
        assert result.returncode == status and message in one_error_line(result), result
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()
    events = api.get("/events", kind="artifacts.exported").body["items"]
    assert events[0]["actor"] == "api:ops"
    answer = api.get("/export", match="*a.iso")  # checked against the OpenAPI document
    assert answer.status == 200 and answer.headers["Withcache-Artifacts"] == "1"
    with tarfile.open(fileobj=io.BytesIO(answer.body)) as tar:
        assert tar.getnames()[:2] == [bundle.MANIFEST, bundle.SUMS]


def test_an_export_whose_blob_vanished_breaks_off_and_leaves_no_bundle(origin, cache_host,
                                                                       tmp_path):  # fmt: skip
    host = cache_host(env=LOCKED)
    api = admin(host)
    url = origin.add("/vanish/x.bin", body(1, 300_000))
    assert withcache("add", url, "--wait", env=env_for(host, api.token)).returncode == 0
    for blob in (host.data_dir / "blobs").rglob("*"):
        if blob.is_file():
            blob.unlink()
    out = tmp_path / "broken.tar"
    result = withcache("export", "-o", str(out), env=env_for(host, api.token))
    assert result.returncode == 1 and "the export broke off" in one_error_line(result)
    assert not out.exists() and not Path(f"{out}.part").exists()
    assert "export.broke_off" in host.log()
    assert curl("-f", f"{host.url}/healthz").returncode == 0


# -- bad bundles: each refused with a clear error, nothing stored


def _bundle(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _manifest(items: list[dict]) -> tuple[tarfile.TarInfo, bytes]:
    document = {"format": bundle.FORMAT, "version": bundle.VERSION, "exported_at": 0,
                "scope_key": None, "artifacts": items}  # fmt: skip
    return _file(bundle.MANIFEST, json.dumps(document).encode())


def _item(url: str, data: bytes, path: str | None = None, **more) -> dict:
    return {"url": url, "key": url, "sha256": sha(data), "size": len(data),
            "path": path or bundle.member_name(sha(data), url), "headers": {},
            "fetched_at": 0, "scope": "", **more}  # fmt: skip


DATA = b"the bytes of a firmware image\n" * 1000
URL = "https://vendor.example/fw/image.bin"
GOOD_PATH = bundle.member_name(sha(DATA), URL)


def _special(kind: bytes, name: str = GOOD_PATH) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = "/etc/shadow" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    return info, None


BAD = {
    "not a tar": (b"this is no archive\n" * 100, "not a tar file"),
    "manifest not first": (
        _bundle([_file(GOOD_PATH, DATA), _manifest([_item(URL, DATA)])]),
        "its first member is not manifest.json",
    ),
    "not a bundle's manifest": (
        _bundle([_file(bundle.MANIFEST, b'{"format": "zip"}')]), "does not describe a"),
    "a newer version": (
        _bundle([_file(bundle.MANIFEST, json.dumps(
            {"format": bundle.FORMAT, "version": 99, "artifacts": []}).encode())]),
        "bundle version 99: this withcache reads version 1",
    ),
    "path traversal in the archive": (
        _bundle([_manifest([_item(URL, DATA)]), _file("../../../tmp/owned", DATA)]),
        "member '../../../tmp/owned' is not a bundle path",
    ),
    "an absolute path": (
        _bundle([_manifest([_item(URL, DATA)]), _file("/etc/cron.d/owned", DATA)]),
        "member '/etc/cron.d/owned' is not a bundle path",
    ),
    "path traversal in the manifest": (
        _bundle([_manifest([_item(URL, DATA, path=f"blobs/{sha(DATA)}/..")])]),
        "is not blobs/<its sha256>/<name>",
    ),
    "a symbolic link": (
        _bundle([_manifest([_item(URL, DATA)]), _special(tarfile.SYMTYPE)]),
        "is a symbolic link: a bundle holds regular files only",
    ),
    "a hard link": (
        _bundle([_manifest([_item(URL, DATA)]), _special(tarfile.LNKTYPE)]),
        "is a hard link: a bundle holds regular files only",
    ),
    "a device": (
        _bundle([_manifest([_item(URL, DATA)]), _special(tarfile.CHRTYPE)]),
        "is a device: a bundle holds regular files only",
    ),
    "a FIFO": (
        _bundle([_manifest([_item(URL, DATA)]), _special(tarfile.FIFOTYPE)]),
        "is a FIFO: a bundle holds regular files only",
    ),
    "a member the manifest doesn't list": (
        _bundle([_manifest([]), _file(GOOD_PATH, DATA)]), "is not in manifest.json"),
    "a manifest lying about a size": (
        _bundle([_manifest([_item(URL, DATA, size=len(DATA) + 1)]), _file(GOOD_PATH, DATA)]),
        f"holds {len(DATA)} bytes; manifest.json says {len(DATA) + 1}",
    ),
    "cut short at a member's end": (
        _bundle([_manifest([_item(URL, DATA), _item(URL + "2", DATA[:-1])]),
                 _file(GOOD_PATH, DATA)]),
        "lists 1 member(s) the archive doesn't hold",
    ),
}  # fmt: skip
BAD["cut short in a member"] = (
    _bundle([_manifest([_item(URL, DATA)]), _file(GOOD_PATH, DATA)])[:2048],
    "cut short",
)


@pytest.mark.parametrize("how", ["file", "stdin"])
@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_bundle_is_refused_and_nothing_is_stored(tmp_path, case, how, bad_bundle_host):
    host, api = bad_bundle_host
    data, message = BAD[case]
    path = tmp_path / "bad.tar"
    path.write_bytes(data)
    if how == "file":
        result = withcache("import", str(path), env=env_for(host, api.token))
    else:
        result = import_piped(host, api.token, path)
    assert result.returncode == 1, result
    line = one_error_line(result)
    assert message in line, (case, line)
    assert not Path("/tmp/owned").exists()
    stored = api.get("/artifacts").body["items"]
    if how == "stdin" and case == "cut short at a member's end":
        # A pipe can't be read twice: the whole members before the fault are
        # kept, each checked against its SHA-256 (an import done again goes on).
        assert [(a["url"], a["sha256"]) for a in stored] == [(URL, sha(DATA))]
        assert api.delete(f"/artifacts/{stored[0]['id']}").status == 200
    else:
        assert stored == [] and host.blob_names() == []


@pytest.fixture(scope="module")
def bad_bundle_host(tmp_path_factory, ca_file):
    env = {**os.environ, "SSL_CERT_FILE": str(ca_file), **LOCKED}
    host = CacheHost(tmp_path_factory.mktemp("bad") / "data", TEST_FLAGS, env).start()
    yield host, admin(host)
    host.stop()


def test_a_manifest_that_lies_about_the_bytes_stores_none_of_them(cache_host, tmp_path):
    host = cache_host(env=LOCKED)
    api = admin(host)
    lie = _item(URL, DATA, sha256="ab" * 32, path=bundle.member_name("ab" * 32, URL))
    path = tmp_path / "lying.tar"
    path.write_bytes(_bundle([_manifest([lie]), _file(lie["path"], DATA)]))
    result = withcache("import", str(path), env=env_for(host, api.token))
    assert result.returncode == 1
    assert f"SHA-256 mismatch: expected {'ab' * 32}, got {sha(DATA)}" in result.stderr
    assert result.stdout == "imported 0, skipped 0 (cached already), failed 1\n"
    assert api.get("/artifacts").body["total"] == 0 and host.blob_names() == []
    no_leftovers(host)


# -- credential-scoped artifacts


def test_scoped_artifacts_go_only_when_asked_and_only_where_their_scope_means_the_same(
    origin, cache_host, second_host, tmp_path
):
    secret = "Bearer lab-token-7"
    here = cache_host(env=LOCKED)
    api = admin(here)
    private = origin.add("/scoped/licensed.run", body(5, 100_000), require_auth=secret)
    public = origin.add("/scoped/open.run", body(6, 100_000))
    assert curl("-f", "-o", "/dev/null", "-H", f"Authorization: {secret}",
                here.blob_url(private)).returncode == 0  # fmt: skip
    here.wait_cached(private, headers={"Authorization": secret})
    assert withcache("add", public, "--wait", env=env_for(here, api.token)).returncode == 0

    plain, scoped = tmp_path / "plain.tar", tmp_path / "scoped.tar"
    exported(here, api, plain)
    exported(here, api, scoped, "--include-scoped")
    with tarfile.open(plain) as tar:
        assert json.load(tar.extractfile(bundle.MANIFEST))["artifacts"][0]["url"] == public
    with tarfile.open(scoped) as tar:
        manifest = json.load(tar.extractfile(bundle.MANIFEST))
    assert len(manifest["artifacts"]) == 2 and manifest["scope_key"]
    assert {bool(a["scope"]) for a in manifest["artifacts"]} == {True, False}

    # Another cache-host's secret: the scope would mean nothing there, so it is refused.
    other = second_host("other")
    refused = withcache("import", str(scoped), env=env_for(other, admin(other).token))
    assert refused.returncode == 1
    assert "with another cache-host's scope secret: no credential could read it here" in (
        refused.stderr
    )
    assert refused.stdout.startswith("imported 1,")  # the public one

    # A host made from a copy of this one's data dir has the same secret: the
    # artifact keeps its scope, readable with the credential only.
    here.stop()
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(here.data_dir / "cache.db", copy / "cache.db")
    clone = CacheHost(copy, TEST_FLAGS, here.env).start()
    try:
        cloned = Api(clone.url).with_token(api.token)  # the copy has the tokens too
        for artifact in cloned.get("/artifacts").body["items"]:
            assert cloned.delete(f"/artifacts/{artifact['id']}").status == 200
        done = withcache("import", str(scoped), env=env_for(clone, api.token))
        assert done.returncode == 0, done.stderr
        assert fetched(clone, private, {"Authorization": secret}) == body(5, 100_000)
        assert curl("-f", "-o", "/dev/null", clone.blob_url(private)).returncode != 0
        assert curl("-f", "-o", "/dev/null", "-H", "Authorization: Bearer other",
                    clone.blob_url(private)).returncode != 0  # fmt: skip
    finally:
        clone.stop()
