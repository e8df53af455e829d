"""--evict lru under --max-bytes (issue 16), against a real server, a real
origin and real curl, on both store pairs: the least recently used unpinned
artifacts go when a fill needs room, pins stay, a client streaming the
artifact being evicted gets every byte (its blob is deleted when the read
ends), and a fill that can't fit even then is refused as before."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time

import pytest
from conftest import curl
from test_api import start, wait_fill
from test_metrics import scrape

MIB = 1 << 20
SMALL = os.urandom(MIB)
OTHER = os.urandom(MIB)
BIG = os.urandom(24 * MIB)
MIDDLE = os.urandom(3 * MIB)
NEW = os.urandom(4 * MIB)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def add(api, url: str) -> dict:
    made = api.post("/fills", {"url": url})
    assert made.status == 201, made
    return wait_fill(api, made.body["id"])


@pytest.mark.backends
def test_eviction_takes_the_least_recently_used_unpinned_and_never_cuts_a_read(
    origin, cache_host, tmp_path
):
    """Before: a full cache refused every new fill until an operator deleted by hand."""
    urls = {
        name: origin.add(f"/evict/{name}.bin", body)
        for name, body in (("a", SMALL), ("b", OTHER), ("c", BIG), ("d", MIDDLE), ("e", NEW),
                           ("huge", os.urandom(31 * MIB)))
    }  # fmt: skip
    host, api = start(cache_host, "--max-bytes", "30M", "--evict", "lru")
    for name in ("a", "b", "c", "d"):
        assert add(api, urls[name])["state"] == "done"
    (a,) = api.get("/artifacts", url=urls["a"]).body["items"]
    assert api.post(f"/artifacts/{a['id']}/pin").status == 200
    # A slow client streams c; b and d are hit after it: c is the least recently used.
    out = tmp_path / "c.bin"
    slow = subprocess.Popen(
        ["curl", "-sSf", "--limit-rate", "2M", "-o", str(out), host.blob_url(urls["c"])],
        stderr=subprocess.PIPE,
    )
    time.sleep(0.3)
    for name in ("b", "d"):
        assert curl("-f", "-o", os.devnull, host.blob_url(urls[name])).returncode == 0
    time.sleep(2.5)  # hits reach the store in batches
    # e needs 3 MiB more than the cap leaves: eviction takes c (24 MiB), only c.
    assert add(api, urls["e"])["state"] == "done"
    kept = {a["url"] for a in api.get("/artifacts").body["items"]}
    assert kept == {urls["a"], urls["b"], urls["d"], urls["e"]}
    (evicted,) = api.get("/events", kind="artifact.evicted").body["items"]
    assert evicted["url"] == urls["c"] and evicted["detail"]["reason"] == "room"
    assert evicted["detail"]["size"] == len(BIG) and evicted["detail"]["sha256"] == sha(BIG)
    # The slow client goes on reading c's blob, which stays until its read ends.
    assert slow.poll() is None, "the slow client should still be reading"
    assert sha(BIG) in host.blob_names()
    assert slow.wait(60) == 0, slow.stderr.read()
    assert out.read_bytes() == BIG
    deadline = time.monotonic() + 10
    while sha(BIG) in host.blob_names():
        assert time.monotonic() < deadline, "the evicted blob outlived its last read"
        time.sleep(0.05)
    # What can't fit even after evicting every unpinned artifact is refused as
    # before, and only after eviction took what it could.
    huge = add(api, urls["huge"])
    assert huge["state"] == "failed" and "would exceed --max-bytes" in huge["error"], huge
    assert [a["url"] for a in api.get("/artifacts").body["items"]] == [urls["a"]]
    m = scrape(host)
    assert m["withcache_evicted_artifacts_total{reason=room}"] == 4
    assert m["withcache_stored_bytes"] == len(SMALL)
    assert curl("-f", host.blob_url(urls["a"])).stdout == SMALL  # the pinned one stayed


def test_without_evict_a_full_cache_refuses_as_before(origin, cache_host):
    first = origin.add("/evict/first.bin", BIG)
    second = origin.add("/evict/second.bin", NEW)
    _, api = start(cache_host, "--max-bytes", "26M")
    assert add(api, first)["state"] == "done"
    made = api.post("/fills", {"url": second})
    assert made.status == 409 or wait_fill(api, made.body["id"])["state"] == "failed"
    assert [a["url"] for a in api.get("/artifacts").body["items"]] == [first]
    assert api.get("/events", kind="artifact.evicted").body["items"] == []


def test_unused_artifacts_are_evicted_at_start_and_daily_pins_excepted(origin, cache_host):
    kept = origin.add("/evict/unused-pinned.bin", SMALL)
    gone = origin.add("/evict/unused.bin", OTHER)
    host, api = start(cache_host)
    for url in (kept, gone):
        assert add(api, url)["state"] == "done"
    (pinned,) = api.get("/artifacts", url=kept).body["items"]
    assert api.post(f"/artifacts/{pinned['id']}/pin").status == 200
    # Thirty days pass (the rows say so), then the host starts with --evict-unused 30.
    old = time.time() - 31 * 86400
    host.stop()
    host.rows(f"UPDATE artifacts SET fetched_at = {old} RETURNING id")
    host.flags = (*host.flags, "--evict-unused", "30")
    host.start()
    deadline = time.monotonic() + 10
    while len(api.get("/artifacts").body["items"]) != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (left,) = api.get("/artifacts").body["items"]
    assert left["url"] == kept and left["pinned"]
    (event,) = api.get("/events", kind="artifact.evicted").body["items"]
    assert event["url"] == gone and event["detail"]["reason"] == "unused"
    assert sha(OTHER) not in host.blob_names()


@pytest.mark.backends
def test_a_refetch_with_new_bytes_deletes_the_old_blob_once_unused(origin, cache_host):
    """Before: `withcache add --refresh` (and an import with refresh) pointed
    the key at the new blob and left the old one in the store for good."""
    path = "/evict/refetched.bin"
    url = origin.add(path, SMALL)
    host, api = start(cache_host)
    assert add(api, url)["state"] == "done"
    origin.add(path, OTHER)
    made = api.post("/fills", {"url": url, "refresh": True})
    assert made.status == 201 and wait_fill(api, made.body["id"])["state"] == "done"
    assert curl("-f", host.blob_url(url)).stdout == OTHER
    deadline = time.monotonic() + 10
    while host.blob_names() != [sha(OTHER)]:
        assert time.monotonic() < deadline, host.blob_names()
        time.sleep(0.05)
