"""A scale-out host's local copies of hot blobs (--local-copies,
store/local_copies.py): a hit through a host sent from its own verified copy
by sendfile, not streamed from the object store; the filling host's spool
kept as its copy; the bound, least recently hit first; a copy changed on
disk never served, a rotten one found by verify; a key refreshed on another
host never served from the old copy; copies read back at a restart, strays
removed; a disk that fills up while a copy is written; the store sending
other bytes than the blob's. On PostgreSQL + SeaweedFS with real hosts and
curl; a proxy in front of the store notes what each host asks of it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time

import obstore
import pytest
from api_client import Api
from clients import wait_until
from conftest import CacheHost, curl
from services import StoreTap
from test_api import LOCKED, PASSWORD, wait_verify
from test_metrics import scrape

pytestmark = pytest.mark.parametrize("backend", ["scale"], indirect=True)
MIB = 1 << 20


def gets(tap: StoreTap) -> list[dict[str, object]]:
    """The GETs of objects (not listings) the host asked of the store."""
    return [r for r in tap.requests if r["method"] == "GET" and not r["query"]]


def copy_of(host, body: bytes):
    return host.data_dir / "copies" / hashlib.sha256(body).hexdigest()


def has_copy(host, body: bytes) -> None:
    """Wait until the host's copy of the blob has its name (it is made visible
    in the background, once synced)."""
    wait_until(lambda: copy_of(host, body).exists(), what="the local copy")


def copied(
    origin, cache_host, tapped, path: str, body: bytes, **start: object
) -> tuple[str, CacheHost, StoreTap]:
    """`body` stored through host a, then hit once on a tapped host b, which
    copied it: (URL, b, b's tap)."""
    url = cache_host(name="a").cached(origin, path, body)
    b, tap = tapped(**start)
    assert curl("-f", b.blob_url(url)).stdout == body
    has_copy(b, body)
    return url, b, tap


def copies(host) -> list[str]:
    return sorted(p.name for p in (host.data_dir / "copies").iterdir())


def test_a_second_hit_on_another_host_is_sent_from_its_local_copy(origin, cache_host, tapped):
    a = cache_host(name="a")
    body = os.urandom(20 * MIB)
    url = a.cached(origin, "/copies/second.bin", body)
    has_copy(a, body)  # the filling host kept its spool
    b, tap = tapped()
    assert curl("-f", b.blob_url(url)).stdout == body  # streamed, and copied beside
    assert len(gets(tap)) == 1
    has_copy(b, body)
    assert copy_of(b, body).read_bytes() == body
    tap.clear()
    for _ in range(2):
        assert curl("-f", b.blob_url(url)).stdout == body
    assert curl("-f", "-r", "5-104", b.blob_url(url)).stdout == body[5:105]
    assert gets(tap) == [], tap.requests  # not one byte asked of the store
    m = scrape(b)
    assert m["withcache_local_copy_hits_total"] == 3
    assert m["withcache_local_copy_bytes"] == len(body)
    assert m["withcache_local_copy_bound_bytes"] > len(body)
    # The filling host sends its hits from its kept spool too.
    assert curl("-f", a.blob_url(url)).stdout == body
    assert scrape(a)["withcache_local_copy_hits_total"] == 1


def test_copies_stay_within_their_bound_least_recently_hit_first(origin, cache_host, tapped):
    a = cache_host("--local-copies", "0", name="a")
    bodies = [os.urandom(2 * MIB) for _ in range(3)]
    urls = [a.cached(origin, f"/copies/bound{n}.bin", body) for n, body in enumerate(bodies)]
    assert not (a.data_dir / "copies").exists()  # --local-copies 0: none made
    b, tap = tapped("--local-copies", "5M")  # room for two of the three
    for n in (0, 1):
        assert curl("-f", b.blob_url(urls[n])).stdout == bodies[n]
        has_copy(b, bodies[n])
    assert curl("-f", b.blob_url(urls[0])).stdout == bodies[0]  # 0 is hit last: 1 goes first
    assert curl("-f", b.blob_url(urls[2])).stdout == bodies[2]
    has_copy(b, bodies[2])
    wanted = sorted(hashlib.sha256(bodies[n]).hexdigest() for n in (0, 2))
    assert copies(b) == wanted
    assert sum(p.stat().st_size for p in (b.data_dir / "copies").iterdir()) <= 5 * MIB
    assert scrape(b)["withcache_local_copy_bytes"] == 4 * MIB
    tap.clear()
    assert curl("-f", b.blob_url(urls[1])).stdout == bodies[1]  # from the store again
    assert len(gets(tap)) == 1


def test_a_copy_changed_on_disk_is_never_served(origin, cache_host, tapped):
    body = os.urandom(8 * MIB)
    url, b, tap = copied(origin, cache_host, tapped, "/copies/changed.bin", body)
    with open(copy_of(b, body), "r+b") as copy:  # a write to the copy's file
        copy.seek(4 * MIB)
        copy.write(bytes([body[4 * MIB] ^ 1]))
    tap.clear()
    assert curl("-f", b.blob_url(url)).stdout == body  # from the store, not the copy
    assert len(gets(tap)) == 1
    assert "event=local_copy.changed" in b.log()
    has_copy(b, body)  # made again, from those good bytes
    assert copy_of(b, body).read_bytes() == body
    # Cut short: the same.
    os.truncate(copy_of(b, body), 1000)
    assert curl("-f", b.blob_url(url)).stdout == body


def test_verify_removes_a_rotten_copy_and_keeps_the_blob(origin, cache_host, tapped):
    body = os.urandom(8 * MIB)
    url, b, tap = copied(origin, cache_host, tapped, "/copies/rotten.bin", body, env=LOCKED)
    path = copy_of(b, body)
    stat = path.stat()
    with open(path, "r+b") as copy:  # rot that leaves the file's times alone
        copy.seek(MIB)
        copy.write(bytes([body[MIB] ^ 0x40]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    api = Api(b.url)
    api = api.with_token(api.create_token("admin-test", "admin", PASSWORD))
    assert api.post("/verify", {"quarantine": True}).status == 202
    report = wait_verify(api)
    assert report["corrupt"] == []  # the store's blob is good: only the copy was bad
    assert not path.exists() and "event=local_copy.bad" in b.log()
    assert api.get("/artifacts").body["total"] == 1
    tap.clear()
    assert curl("-f", b.blob_url(url)).stdout == body
    assert len(gets(tap)) == 1


def test_a_key_refreshed_on_another_host_is_not_served_from_the_old_copy(
    origin, cache_host, tapped
):
    old, new = os.urandom(4 * MIB), os.urandom(4 * MIB)
    a = cache_host(env=LOCKED, name="a")
    url = a.cached(origin, "/copies/refreshed.bin", old)
    b, _ = tapped()
    assert curl("-f", b.blob_url(url)).stdout == old
    has_copy(b, old)
    origin.add("/copies/refreshed.bin", new, last_modified=1_800_000_000.0)  # changed
    api = Api(a.url)
    api = api.with_token(api.create_token("admin-test", "admin", PASSWORD))
    ((artifact_id,),) = a.rows("SELECT id FROM artifacts")
    assert api.post(f"/artifacts/{artifact_id}/refresh").status in (200, 202)
    new_sha = hashlib.sha256(new).hexdigest()
    wait_until(lambda: a.rows("SELECT sha256 FROM artifacts") == [(new_sha,)], what="refresh")
    # b hears of the change (LISTEN/NOTIFY; its memo lasts a second without it).
    time.sleep(1.2)
    got = curl("-f", "-D", "-", b.blob_url(url)).stdout
    assert got.endswith(new) and f'"{new_sha}"'.encode() in got
    has_copy(b, new)


def test_copies_are_read_back_at_a_restart_and_strays_removed(origin, cache_host, tapped):
    body, gone = os.urandom(4 * MIB), os.urandom(3 * MIB)
    a = cache_host(env=LOCKED, name="a")
    url = a.cached(origin, "/copies/restart.bin", body)
    gone_url = a.cached(origin, "/copies/gone.bin", gone)
    b, tap = tapped()
    for u, data in ((url, body), (gone_url, gone)):
        assert curl("-f", b.blob_url(u)).stdout == data
        has_copy(b, data)
    b.stop()
    # The other blob deleted meanwhile (on host a), and some strays in the folder.
    ((gone_id,),) = a.rows(f"SELECT id FROM artifacts WHERE size = {len(gone)}")
    api = Api(a.url)
    api = api.with_token(api.create_token("admin-test", "admin", PASSWORD))
    assert api.delete(f"/artifacts/{gone_id}").status == 200
    folder = b.data_dir / "copies"
    stray_sha = hashlib.sha256(b"never stored").hexdigest()
    (folder / stray_sha).write_bytes(b"never stored")  # not a stored blob
    (folder / "copy-half-written").write_bytes(b"x" * 1000)  # a crash's leftover
    (folder / "notes.txt").write_text("not a copy")
    b.start()
    assert copies(b) == [hashlib.sha256(body).hexdigest()]
    assert copy_of(b, body).read_bytes() == body
    tap.clear()
    assert curl("-f", b.blob_url(url)).stdout == body
    assert gets(tap) == [], tap.requests
    # A file put in a copy's place by hand (not verified here) is not trusted.
    b.stop()
    copy_of(b, body).unlink()
    copy_of(b, body).write_bytes(body)
    b.start()
    assert copies(b) == []


def test_a_disk_full_while_a_copy_is_written_drops_it_and_serves_the_client(
    origin, cache_host, tapped, tmpfs
):
    body = os.urandom(12 * MIB)
    url = cache_host(name="a").cached(origin, "/copies/full.bin", body)
    disk = tmpfs("24m")
    # (Its log is beside the data dir, off the RAM disk.)
    b, tap = tapped("--min-free", "0", "--local-copies", "20M", data_dir=disk, rate=4e6)
    saved = disk.parent / "full.bin"  # 3 s to stream
    reading = subprocess.Popen(["curl", "-sS", "-f", "-o", str(saved), b.blob_url(url)])
    folder = b.data_dir / "copies"
    wait_until(lambda: [p for p in folder.iterdir() if p.name.startswith("copy-")],
               what="a copy being written")  # fmt: skip
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fill, pytest.raises(OSError):  # full, for real
        while True:
            fill.write(b"\0" * MIB)
    assert reading.wait(60) == 0
    assert saved.read_bytes() == body
    wait_until(lambda: "event=local_copy.dropped" in b.log(), what="the copy dropped")
    assert copies(b) == []
    assert curl("-f", f"{b.url}/healthz").returncode == 0
    filler.unlink()
    tap.rate = None
    assert curl("-f", b.blob_url(url)).stdout == body
    has_copy(b, body)


def test_a_store_sending_other_bytes_fails_the_copying_client(origin, backend, cache_host, tapped):
    body = os.urandom(6 * MIB)
    url = cache_host("--local-copies", "0", name="a").cached(origin, "/copies/other.bin", body)
    sha = hashlib.sha256(body).hexdigest()
    obstore.put(backend._store(), backend.blob_key(sha), os.urandom(len(body)))  # same size
    b, _ = tapped()
    got = curl("-sS", "-f", b.blob_url(url))
    assert got.returncode != 0  # cut short before the last bytes: never a silent wrong file
    assert len(got.stdout) < len(body)
    assert copies(b) == []
    # The blob was found bad and quarantined: the next request fills afresh.
    wait_until(lambda: b.rows("SELECT count(*) FROM artifacts") == [(0,)], what="quarantine")
    assert curl("-f", b.blob_url(url)).stdout == body
