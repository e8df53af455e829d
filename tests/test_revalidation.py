"""Mutable URLs under --revalidate (issue 16), against a real server, a real
origin and real curl, on both store pairs: the 304 path (a plain hit, one
conditional GET), the changed path (a client mid-download of the old blob
gets all of it; the key then serves the new bytes; the old blob stays while
another artifact uses it), the origin-down path (stale served and said so),
one revalidation at a time (across hosts on the shared store), pins, and
`withcache refresh`."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time

import pytest
from conftest import curl
from port_origin import PortOrigin
from test_api import start
from test_metrics import scrape
from test_withcache_cli import env_for, withcache

V1 = os.urandom(1 << 20)
V2 = os.urandom(3 << 20)
BIG = os.urandom(24 << 20)  # big enough that a rate-limited curl is still reading it


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def conditional_gets(origin, path: str) -> int:
    return sum(
        1 for h in origin.hits
        if h.path == path and h.method == "GET"
        and ("If-None-Match" in h.headers or "If-Modified-Since" in h.headers)
    )  # fmt: skip


def head(host, url: str) -> tuple[dict[str, str], float]:
    started = time.monotonic()
    out = curl("-sS", "-I", host.blob_url(url), check=True).stdout.decode()
    seconds = time.monotonic() - started
    lines = out.strip().splitlines()[1:]
    return {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)
    }, seconds


def revalidations(api, outcome: str | None = None, timeout: float = 20.0) -> list[dict]:
    """The artifact.revalidated events (waiting for one with `outcome`)."""
    deadline = time.monotonic() + timeout
    while True:
        found = api.get("/events", kind="artifact.revalidated").body["items"]
        if outcome is None or any(e["detail"]["outcome"] == outcome for e in found):
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.05)


@pytest.mark.backends
def test_a_fresh_artifact_stays_a_plain_hit_after_one_conditional_get(origin, cache_host):
    """Before: --revalidate did not exist; a cached URL was immutable forever."""
    path = "/reval/fresh/latest/tool.run"
    url = origin.add(path, V2, etag='"v1"', delay=0.5)
    host, api = start(cache_host, "--revalidate", "*/latest/*=1s")
    assert curl("-f", host.blob_url(url)).stdout == V2
    host.wait_cached(url)
    time.sleep(1.1)
    # Due now: the probe is a plain hit at once; the origin is asked in the background.
    headers, seconds = head(host, url)
    assert headers["etag"] == f'"{sha(V2)}"' and "withcache-stale" not in headers
    assert seconds < 0.4, seconds  # the origin takes 0.5 s to answer
    (event,) = revalidations(api, "fresh")
    assert event["detail"]["sha256"] == event["detail"]["previous"] == sha(V2)
    asked = [h for h in origin.hits if h.path == path and "If-None-Match" in h.headers]
    assert [h.headers["If-None-Match"] for h in asked] == ['"v1"']
    assert "If-Modified-Since" in asked[0].headers
    assert origin.body_bytes[path] == len(V2)  # the 304 sent no body
    # Fresh again for a second: more hits ask nobody.
    for _ in range(5):
        assert curl("-f", host.blob_url(url)).stdout == V2
    assert conditional_gets(origin, path) == 1
    (artifact,) = api.get("/artifacts", url=url).body["items"]
    assert artifact["validated_at"] > artifact["fetched_at"]
    assert scrape(host)["withcache_revalidations_total{outcome=fresh}"] == 1


@pytest.mark.backends
def test_changed_bytes_are_fetched_while_a_client_streams_the_old_ones(
    origin, cache_host, tmp_path
):
    path, twin = "/reval/changed/latest/driver.run", "/reval/changed/12.4/driver.run"
    url = origin.add(path, BIG, etag='"v1"')
    same = origin.add(twin, BIG)  # another URL with the same bytes: their blob is shared
    host, api = start(cache_host, "--revalidate", "*/latest/*=1s")
    for u in (url, same):
        assert curl("-f", "-o", os.devnull, host.blob_url(u)).returncode == 0
        host.wait_cached(u)
    time.sleep(1.1)
    # A slow client starts on the old bytes (it is due: a revalidation finds
    # them fresh still); then the origin publishes new ones.
    out = tmp_path / "old.run"
    slow = subprocess.Popen(
        ["curl", "-sSf", "--limit-rate", "2M", "-o", str(out), host.blob_url(url)],
        stderr=subprocess.PIPE,
    )
    revalidations(api, "fresh")
    origin.add(path, V2, etag='"v2"')
    time.sleep(1.1)
    head(host, url)  # due again: the revalidation finds other bytes (answered from the old blob)
    changed = [e for e in revalidations(api, "changed") if e["detail"]["outcome"] == "changed"]
    assert changed[0]["detail"] == {
        "outcome": "changed", "sha256": sha(V2), "previous": sha(BIG), "error": None}  # fmt: skip
    assert curl("-f", host.blob_url(url)).stdout == V2
    # The old blob stays: the other URL still uses it; and once no artifact
    # does, it stays until the slow client's read of it ends.
    assert curl("-f", "-r", "0-99", host.blob_url(same)).stdout == BIG[:100]
    (twin_artifact,) = api.get("/artifacts", url=same).body["items"]
    assert api.delete(f"/artifacts/{twin_artifact['id']}").status == 200
    assert slow.poll() is None, "the slow client should still be reading"
    assert sha(BIG) in host.blob_names() and sha(V2) in host.blob_names()
    assert slow.wait(60) == 0, slow.stderr.read()
    assert out.read_bytes() == BIG  # every byte of the old version, none of the new
    deadline = time.monotonic() + 10
    while sha(BIG) in host.blob_names():
        assert time.monotonic() < deadline, "the old blob outlived its last read"
        time.sleep(0.05)
    assert host.blob_names() == [sha(V2)]


@pytest.mark.backends
def test_an_origin_gone_down_leaves_the_stale_bytes_served_and_said_so(cache_host, free_port):
    url = f"http://127.0.0.1:{free_port}/latest/firmware.bin"
    host, api = start(cache_host, "--revalidate", "*/latest/*=1s")
    with PortOrigin(free_port, V2, etag='"once"'):  # then it goes away
        assert curl("-f", host.blob_url(url)).stdout == V2
        host.wait_cached(url)
    time.sleep(1.1)
    head(host, url)  # due: the revalidation finds the origin down
    (event,) = revalidations(api, "stale-served")
    assert event["detail"]["error"].startswith("origin unreachable")
    headers, _ = head(host, url)
    assert headers["withcache-stale"].startswith("revalidation failed: origin unreachable")
    got = curl("-sSf", "-D", "-", host.blob_url(url)).stdout
    assert got.endswith(V2) and b"Withcache-Stale: revalidation failed" in got
    (artifact,) = api.get("/artifacts", url=url).body["items"]
    assert artifact["stale"].startswith("revalidation failed: origin unreachable")
    # The origin is marked unhealthy, so no host asks it again for a while.
    assert [o["origin"] for o in api.get("/origins").body["items"]] == [
        f"http://127.0.0.1:{free_port}"
    ]
    time.sleep(0.5)
    head(host, url)
    assert len(revalidations(api)) == 1


@pytest.mark.parametrize("backend", ["scale"], indirect=True)
def test_one_revalidation_at_a_time_across_hosts(origin, cache_host):
    path = "/reval/race/latest/sums.txt"
    url = origin.add(path, V2, etag='"r1"', delay=1.0)
    a, api = start(cache_host, "--revalidate", "*/latest/*=1s")
    b = cache_host("--revalidate", "*/latest/*=1s", name="b")
    assert curl("-f", a.blob_url(url)).stdout == V2
    a.wait_cached(url)
    b.wait_cached(url)
    time.sleep(1.1)
    probes = [
        subprocess.Popen(["curl", "-sSf", "-I", "-o", os.devnull, h.blob_url(url)])
        for _ in range(4) for h in (a, b)
    ]  # fmt: skip
    assert [p.wait(20) for p in probes] == [0] * 8
    revalidations(api, "fresh")
    time.sleep(1.5)  # a second one, had it started, would have asked by now
    assert conditional_gets(origin, path) == 1


@pytest.mark.backends
def test_pins_hold_their_bytes_until_an_operator_refreshes(origin, cache_host):
    path = "/reval/pinned/latest/keyring.deb"
    url = origin.add(path, V2, etag='"k1"')
    host, api = start(cache_host, "--revalidate", "*/latest/*=1s")
    assert curl("-f", host.blob_url(url)).stdout == V2
    host.wait_cached(url)
    (artifact,) = api.get("/artifacts", url=url).body["items"]
    assert api.post(f"/artifacts/{artifact['id']}/pin").status == 200
    origin.add(path, V1, etag='"k2"')
    time.sleep(1.1)
    for _ in range(3):
        assert curl("-f", host.blob_url(url)).stdout == V2
    time.sleep(0.5)
    assert conditional_gets(origin, path) == 0 and revalidations(api) == []
    # withcache refresh asks now, pinned or not; a second one finds it fresh.
    token = api.post("/tokens", {"name": "cli", "scope": "admin"}).body["token"]
    env = env_for(host, token)
    done = withcache("refresh", url, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"changed: {sha(V1)}  {len(V1)}  {url}")
    assert curl("-f", host.blob_url(url)).stdout == V1
    again = withcache("refresh", str(artifact["id"]), env=env)
    assert again.returncode == 0 and again.stdout.startswith("fresh: ")
    (after,) = api.get("/artifacts", url=url).body["items"]
    assert after["pinned"] and after["id"] == artifact["id"]
    assert withcache("refresh", "999999", env=env).returncode == 1
