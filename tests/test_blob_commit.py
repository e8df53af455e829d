"""Committing a blob, with every byte written once (store/bucket.py): the
object a fill uploaded stays where it is and is recorded with its SHA-256 in
the artifact's own transaction; the same bytes from another URL, or from two
fills committing at once, keep one blob; a host killed between the upload
and the record leaves nothing visible, and its object is cleaned up; verify
and quarantine find blobs where they are; a bucket filled by hosts that
committed by copy is served as it is. On the embedded stores and on
PostgreSQL + SeaweedFS, with real hosts, curl and the API."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess

import obstore
import psycopg
import pytest
from api_client import Api
from backends import Scale
from clients import wait_until
from conftest import TEST_FLAGS, CacheHost, curl
from services import StoreTap
from test_api import LOCKED, PASSWORD, wait_verify
from test_fills import miss

from withcache.server.store import schema
from withcache.server.store.postgres import BLOB_LOCK_CLASS, MIGRATIONS

BIG = os.urandom(10_000_000)  # over one 8 MiB part: uploaded in parts, as large artifacts are
SHA = hashlib.sha256(BIG).hexdigest()
DAY = 86400


def with_api(cache_host, *flags: str, name: str = "data") -> tuple[object, Api]:
    """A host and an API client holding an admin token."""
    host = cache_host(*flags, env=LOCKED, name=name)
    api = Api(host.url)
    return host, api.with_token(api.create_token("admin-test", "admin", PASSWORD))


def recorded(host) -> list[tuple[str, str | None]]:
    """The bucket's object records: (location, SHA-256 or None while pending)."""
    return host.rows("SELECT location, sha256 FROM blob_objects ORDER BY location")


def served(host, url: str, body: bytes = BIG) -> None:
    assert curl("-f", host.blob_url(url)).stdout == body
    assert curl("-f", "-r", "9000000-9000099", host.blob_url(url)).stdout == body[9_000_000:][:100]


def fill(origin, host, path: str, body: bytes = BIG) -> str:
    url = origin.add(path, body)
    miss(host, url)
    host.wait_cached(url)
    return url


@pytest.mark.backends
def test_a_big_fill_is_stored_once_where_it_was_uploaded(origin, cache_host, backend):
    host = cache_host()
    url = fill(origin, host, "/commit/once.bin")
    assert host.blob_names() == [SHA]
    if backend.scale:
        ((location, sha),) = recorded(host)
        assert sha == SHA and location.startswith("uploads/")
        # One object, where it was uploaded: no copy under blobs/, no temporary key.
        assert backend.objects("") == [f"{backend.prefix}/{location}"]
    served(host, url)


@pytest.mark.parametrize("backend", ["scale"], indirect=True)
def test_a_fill_writes_each_byte_to_the_store_once(origin, backend, tmp_path, ca_file):
    tap = StoreTap(backend.endpoint).start()  # sees every request the host makes
    env = {**os.environ, "SSL_CERT_FILE": str(ca_file)}
    tapped = Scale(backend.metadata_url, tap.endpoint, backend.prefix)
    host = CacheHost(tmp_path / "tapped", TEST_FLAGS, env, backend=tapped)
    try:
        host.start()
        url = fill(origin, host, "/commit/tapped.bin")
        served(host, url)
    finally:
        host.stop()
        tap.stop()
    assert [r for r in tap.requests if r["copy_source"]] == []  # no server-side copy
    # The parts, once, and the few hundred bytes that complete the upload.
    assert len(BIG) <= tap.written() < len(BIG) + 4096, tap.requests


@pytest.mark.parametrize("backend", ["scale"], indirect=True)
def test_a_first_client_is_not_held_to_the_stores_pace(origin, backend, tmp_path, ca_file):
    body = os.urandom(96 << 20)  # far more than the upload's parts in flight
    tap = StoreTap(backend.endpoint).start()
    env = {**os.environ, "SSL_CERT_FILE": str(ca_file)}
    tapped = Scale(backend.metadata_url, tap.endpoint, backend.prefix)
    host = CacheHost(tmp_path / "tapped", TEST_FLAGS, env, backend=tapped)
    try:
        host.start()
        url = origin.add("/commit/paced.bin", body)
        tap.hold()  # the store takes no part for now
        # The first client reads through as the origin sends; the upload waits.
        assert curl("-f", "--max-time", "60", host.blob_url(url)).stdout == body
        assert "etag" not in curl("-sI", host.blob_url(url)).stdout.decode().lower()
        tap.release()
        host.wait_cached(url, timeout=60)
        served(host, url, body)
    finally:
        tap.release()
        host.stop()
        tap.stop()


@pytest.mark.backends
def test_the_same_bytes_from_another_url_keep_one_blob(origin, cache_host, backend):
    host, api = with_api(cache_host)
    first = fill(origin, host, "/commit/first.bin")
    second = fill(origin, host, "/commit/second.bin")
    assert host.blob_names() == [SHA]  # the second upload was dropped, not kept beside
    served(host, first)
    served(host, second)
    ids = {a["url"]: a["id"] for a in api.get("/artifacts").body["items"]}
    assert api.delete(f"/artifacts/{ids[first]}").status == 200
    served(host, second)  # still used by the second URL
    assert api.delete(f"/artifacts/{ids[second]}").status == 200
    assert host.blob_names() == []
    if backend.scale:
        assert recorded(host) == [] and backend.objects("") == []


def _advisory_key(sha256: str) -> int:
    return int(sha256[:8], 16) - (1 << 31)  # as PostgresMetadata.blob_lock takes it


@pytest.mark.backends
def test_two_fills_of_the_same_bytes_committing_at_once_keep_one_blob(
    origin, cache_host, backend, tmp_path
):
    urls = [origin.add(f"/commit/race{n}.bin", BIG, rate=8_000_000) for n in range(2)]
    if not backend.scale:
        hosts = [cache_host("--workers", "2")] * 2  # one host, both fills at once
        gate = None
    else:
        hosts = [cache_host(name="a"), cache_host(name="b")]  # one fill each
        # The commits meet at the blob's lock: the test holds it until both wait.
        gate = psycopg.connect(backend.metadata_url, autocommit=True)
        gate.execute("SELECT pg_advisory_lock(%s, %s)", (BLOB_LOCK_CLASS, _advisory_key(SHA)))
    procs = [
        subprocess.Popen(["curl", "-sSf", "-o", str(tmp_path / f"got{n}"), h.blob_url(u)])
        for n, (h, u) in enumerate(zip(hosts, urls, strict=True))
    ]
    if gate is not None:
        waiting = (
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND classid = %s AND objid = %s AND objsubid = 2"
        )
        args = (BLOB_LOCK_CLASS, _advisory_key(SHA) & 0xFFFFFFFF)
        wait_until(lambda: gate.execute(waiting, args).fetchone()[0] == 2, 30, "two commits")
        gate.close()  # both go: one after the other, as fast as the lock lets them
    for proc in procs:
        assert proc.wait(60) == 0
    for n, url in enumerate(urls):
        assert (tmp_path / f"got{n}").read_bytes() == BIG
        hosts[n].wait_cached(url)
        served(hosts[1 - n], url)
    assert hosts[0].blob_names() == [SHA]
    if backend.scale:
        ((_, sha),) = recorded(hosts[0])  # one object, recorded; no pending leftover
        assert sha == SHA
    assert origin.gets("/commit/race0.bin") == origin.gets("/commit/race1.bin") == 1


class RecordHeld:
    """Holds up the host's commit of the artifact, after the blob is stored:
    on PostgreSQL, the totals row (which only the commit's trigger writes);
    on SQLite, the whole database, taken near the end of the download (its
    writes wait, up to the host's busy timeout of 5 s)."""

    def __init__(self, host, backend) -> None:
        self.host, self.backend = host, backend

    def __enter__(self) -> RecordHeld:
        if self.backend.scale:
            self.conn = psycopg.connect(self.backend.metadata_url)
            self.conn.execute("SELECT bytes FROM totals FOR UPDATE")
        else:
            spool = self.host.data_dir / "tmp"
            wait_until(lambda: sum(f.stat().st_size for f in spool.iterdir()) > 0.85 * len(BIG),
                     20, "most of the download")  # fmt: skip
            self.conn = sqlite3.connect(self.host.data_dir / "cache.db", isolation_level=None)
            self.conn.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.rollback()
        self.conn.close()


@pytest.mark.backends
def test_a_kill_9_between_the_upload_and_the_record_leaves_nothing_visible(
    origin, cache_host, backend
):
    url = origin.add("/commit/killed.bin", BIG, rate=2_500_000)
    a = cache_host(name="a")
    miss(a, url)
    wait_until(lambda: a.rows("SELECT id FROM fills WHERE state = 'running'"), 10, "the fill")
    with RecordHeld(a, backend):
        # The rest at once: on SQLite every write of the host's (progress, its
        # lease) waits out the busy timeout meanwhile, and its loop with it.
        origin.resources["/commit/killed.bin"].rate = None
        if backend.scale:  # the upload is complete: the object is there
            wait_until(lambda: backend.objects("uploads/"), 20, "the uploaded object")
        else:
            blob = a.data_dir / "blobs" / SHA[:2] / SHA
            wait_until(blob.exists, 20, "the blob file")
        a.kill()
    assert a.rows("SELECT count(*) FROM artifacts") == [(0,)]
    if backend.scale:
        ((orphan, sha),) = recorded(a)
        assert sha is None  # pending: never read, whatever asks for the blob
        b = cache_host(name="b")  # takes the fill over once a's lease runs out
        head = curl("-sI", b.blob_url(url)).stdout.decode().lower()
        assert "etag" not in head  # not a hit: the fill is still to be done
        b.wait_cached(url, timeout=30)
        assert sorted(b.blob_names()) == sorted([SHA, orphan])  # the orphan, unrecorded
        # Start-up cleaning takes an object whose record is a day old (younger
        # ones may be another host's upload in progress).
        with psycopg.connect(backend.metadata_url) as conn:
            conn.execute("UPDATE blob_objects SET started_at = started_at - %s "
                         "WHERE sha256 IS NULL", (2 * DAY,))  # fmt: skip
        b.restart()
        assert b.blob_names() == [SHA]
        assert [sha for _, sha in recorded(b)] == [SHA]
        served(b, url)
    else:
        a.start()  # its fill is queued again, and fills afresh
        a.wait_cached(url, timeout=30)
        assert a.blob_names() == [SHA]  # the file it had stored, under the same name
        served(a, url)
    assert origin.gets("/commit/killed.bin") == 2


@pytest.mark.backends
def test_verify_and_quarantine_find_blobs_where_they_are(origin, cache_host, backend):
    host, api = with_api(cache_host)
    url = fill(origin, host, "/commit/verify.bin")
    assert api.post("/verify").status == 202
    report = wait_verify(api)
    assert (report["checked"], report["bytes_checked"], report["corrupt"]) == (1, len(BIG), [])
    rotten = bytearray(BIG)
    rotten[9_500_000] ^= 0x10
    host.backend.replace_blob(host.data_dir, SHA, bytes(rotten))
    assert api.post("/verify", {"quarantine": True}).status == 202
    report = wait_verify(api)
    ((corrupt,),) = [report["corrupt"]]
    assert corrupt["quarantined"] and corrupt["problem"].startswith("content")
    assert api.get("/artifacts").body["total"] == 0
    assert host.blob_names() == []
    if backend.scale:  # moved aside, kept for a look; its record gone
        assert backend.objects("") == [f"{backend.prefix}/quarantine/{SHA}"]
        assert recorded(host) == []
    else:
        assert (host.data_dir / "quarantine" / SHA).exists()
    # Never served: the next request is a miss, filled afresh and stored anew.
    assert curl("-f", host.blob_url(url)).stdout == BIG
    host.wait_cached(url)
    assert host.blob_names() == [SHA]
    served(host, url)


def _downgrade(metadata_url: str) -> None:
    """Make the database what a host that committed by copy left: no records."""
    records = MIGRATIONS.index(schema.BLOB_OBJECTS) + 1  # the version that made the table
    with psycopg.connect(metadata_url) as conn:
        conn.execute("DROP TABLE blob_objects")
        conn.execute("ALTER TABLE fills DROP COLUMN peer_url")  # the one version after it
        conn.execute("DELETE FROM withcache_schema WHERE version >= %s", (records,))


@pytest.mark.parametrize("backend", ["scale"], indirect=True)
def test_a_bucket_from_hosts_that_committed_by_copy_is_served_as_it_is(origin, cache_host, backend):
    host, api = with_api(cache_host, name="old")
    url = fill(origin, host, "/commit/before.bin")
    host.stop()
    # What a host before records left: the blob under its name, and no record.
    store = backend._store()
    ((location, _),) = recorded(host)
    obstore.copy(store, f"{backend.prefix}/{location}", f"{backend.prefix}/blobs/{SHA}")
    obstore.delete(store, f"{backend.prefix}/{location}")
    _downgrade(backend.metadata_url)
    host.start()  # migrates: the records' table is made, empty
    assert host.rows("SELECT max(version) FROM withcache_schema") == [(len(MIGRATIONS),)]
    served(host, url)
    redirect = cache_host("--redirect-hits", name="redirect")
    plain = curl("-o", os.devnull, "-w", "%{http_code} %{redirect_url}", redirect.blob_url(url))
    assert plain.stdout.decode().startswith("302 ") and f"/blobs/{SHA}?" in plain.stdout.decode()
    assert curl("-f", "-L", redirect.blob_url(url)).stdout == BIG
    assert api.post("/verify").status == 202
    assert wait_verify(api)["corrupt"] == []
    again = fill(origin, host, "/commit/after.bin")  # the same bytes, from a new URL
    served(host, again)
    # Neither served nor stored again by copy: the bucket is as it was.
    assert backend.objects("") == [f"{backend.prefix}/blobs/{SHA}"]
    assert recorded(host) == [] and origin.gets("/commit/before.bin") == 1
    for artifact in api.get("/artifacts").body["items"]:
        assert api.delete(f"/artifacts/{artifact['id']}").status == 200
    assert backend.objects("") == []


@pytest.mark.parametrize("backend", ["scale"], indirect=True)
def test_a_commit_refused_by_the_metadata_store_leaves_no_object(origin, cache_host, backend):
    url = origin.add("/commit/refused.bin", BIG, rate=2_500_000)
    host = cache_host()
    miss(host, url)
    wait_until(lambda: recorded(host), 10, "the upload's record")
    # Another host's cleaning took the upload for a day old: its record is
    # abandoned, so the commit that would record it is refused.
    with psycopg.connect(backend.metadata_url) as conn:
        conn.execute("UPDATE blob_objects SET abandoned = true WHERE sha256 IS NULL")
    wait_until(lambda: host.rows("SELECT state FROM fills WHERE state = 'failed'"), 20, "the end")
    assert host.rows("SELECT count(*) FROM artifacts") == [(0,)]
    assert backend.objects("") == [] and recorded(host) == []  # nothing left for a cleaner
