"""Missing artifacts and failing origins (issue 16), against a real server, a
real origin and real curl, on both store pairs: an origin's 404 remembered
for --negative-ttl and forgotten by an operator's retry; an origin that
refuses connections marked unhealthy (misses answered at once, hits still
served, the UI/API/metrics showing it), then unblocked and filled from."""

from __future__ import annotations

import os
import re
import socket
import time

import pytest
from conftest import curl
from port_origin import PortOrigin
from test_api import start, wait_fill
from test_fills import rows, wait_fill_state, wait_rows
from test_metrics import scrape

from withcache.server.negative import NegativeCache
from withcache.server.origins import FIRST_BACKOFF, MAX_BACKOFF, MAX_REPORTED, OriginHealth

BODY = os.urandom(100_000)


def get(host, url: str) -> tuple[int, bytes]:
    done = curl("-s", "-w", "\n%{http_code}", host.blob_url(url))
    body, _, code = done.stdout.rpartition(b"\n")
    return int(code), body


def probe(host, url: str) -> tuple[int, float]:
    started = time.monotonic()
    code = curl("-s", "-I", "-o", os.devnull, "-w", "%{http_code}", host.blob_url(url)).stdout
    return int(code), time.monotonic() - started


@pytest.mark.backends
def test_an_origins_404_is_remembered_until_an_operator_retries(origin, cache_host):
    """Before: a 404 was remembered for a minute whatever the operator wanted,
    and the Misses page said only that the last fill failed, not until when."""
    path = "/negative/later.bin"
    url = origin.remove(path)
    host, api = start(cache_host, "--negative-ttl", "10m")
    code, _ = get(host, url)
    assert code == 404
    (error,) = wait_fill_state(host, "failed")[0]
    assert error.startswith("origin answered 404")
    assert origin.gets(path) == 1
    # The miss says what the origin said, and until when it is believed.
    reason = "SELECT reason FROM misses WHERE reason LIKE 'origin says%'"
    (said,) = wait_rows(host, reason)[0]
    assert re.fullmatch(r"origin says 404 \(until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)", said)
    # The origin publishes it; the cache-host still believes the 404, and asks nobody.
    origin.add(path, BODY)
    for _ in range(3):
        code, body = get(host, url)
        assert code == 404 and b"origin says 404 (until " in body, body
    assert probe(host, url)[0] == 404
    assert origin.gets(path) == 0  # (counts start afresh when a path is re-added)
    listed = api.get("/misses").body["items"]
    assert [m["reason"] for m in listed] == [f"not fetched: {said}"]
    # An operator's retry forgets it: the fill runs, and the URL is a hit.
    (fill_id,) = rows(host, "SELECT id FROM fills WHERE state = 'failed'")[0]
    retried = api.post(f"/fills/{fill_id}/retry")
    assert retried.status == 200, retried
    assert wait_fill(api, retried.body["id"])["state"] == "done"
    assert curl("-f", host.blob_url(url)).stdout == BODY
    assert origin.gets(path) == 1


def test_a_404_is_believed_only_for_the_negative_ttl(origin, cache_host):
    path = "/negative/soon.bin"
    url = origin.remove(path)
    host = cache_host("--negative-ttl", "2s")
    assert get(host, url)[0] == 404
    wait_fill_state(host, "failed")
    origin.add(path, BODY)
    assert get(host, url)[0] == 404 and origin.gets(path) == 0
    time.sleep(2.2)
    code, body = get(host, url)  # asked again: served from its fill
    assert (code, body) == (200, BODY)
    assert origin.gets(path) == 1


def test_a_410_is_remembered_and_other_4xx_only_for_a_minute_as_before(origin, cache_host):
    gone = origin.add("/negative/gone.bin", b"", status=410)
    host = cache_host("--negative-ttl", "1h")
    assert get(host, gone)[0] == 404
    wait_fill_state(host, "failed")
    code, body = get(host, gone)
    assert code == 404 and b"origin says 410 (until " in body


@pytest.mark.backends
def test_an_origin_that_refuses_connections_is_unhealthy_until_unblocked(
    origin, cache_host, free_port
):
    """Before: an origin that refused connections turned misses away for 15 s
    (doubling to 10 min), with no way for an operator to see it or let it
    be tried again, and nothing in /metrics."""
    down = f"http://127.0.0.1:{free_port}"
    cached = origin.add("/health/cached.bin", BODY)
    host, api = start(cache_host)
    assert curl("-f", host.blob_url(cached)).stdout == BODY  # a hit before the failures
    started = time.time()
    assert get(host, f"{down}/first.bin")[0] == 404
    (error,) = wait_fill_state(host, "failed")[0]
    assert error.startswith("origin unreachable")
    # Misses of any URL on it are answered at once, without a fill; hits still work.
    code, seconds = probe(host, f"{down}/other.bin")
    assert code == 404 and seconds < 1.0
    code, body = get(host, f"{down}/third.bin")
    assert code == 404 and f"{down} is failing: origin unreachable".encode() in body, body
    assert rows(host, "SELECT count(*) FROM fills") == [(2,)]
    assert curl("-f", host.blob_url(cached)).stdout == BODY
    (listed,) = api.get("/origins").body["items"]
    assert listed["origin"] == down and listed["blocked"] and listed["failures"] == 1
    assert listed["error"].startswith("origin unreachable")
    assert FIRST_BACKOFF - 1 <= listed["until"] - started <= FIRST_BACKOFF + 15
    m = scrape(host)
    assert m[f"withcache_origin_up{{host={down}}}"] == 0
    assert m[f"withcache_origin_up{{host={origin.url('')}}}"] == 1
    # The origin comes back; an operator unblocks it and misses fill from it again.
    with PortOrigin(free_port, BODY):
        assert get(host, f"{down}/fourth.bin")[0] == 404  # still blocked
        unblocked = api.post("/origins/unblock", {"origin": down})
        assert unblocked.status == 200 and unblocked.body["origin"] == down
        assert api.post("/origins/unblock", {"origin": down}).status == 404
        assert api.get("/origins").body["items"] == []
        code, body = get(host, f"{down}/fourth.bin")
        assert (code, body) == (200, BODY)
        assert scrape(host)[f"withcache_origin_up{{host={down}}}"] == 1
        kinds = [e["kind"] for e in api.get("/events").body["items"]]
        assert "origin.unhealthy" in kinds and "origin.unblocked" in kinds


def test_a_silent_origin_and_a_5xx_make_their_origin_unhealthy(origin, cache_host):
    busy = origin.add("/health/busy.bin", b"", status=503)
    host = cache_host("--fill-attempts", "2")
    assert get(host, busy)[0] == 404
    wait_fill_state(host, "failed")
    code, body = get(host, origin.add("/health/fine.bin", BODY))
    assert code == 404 and b"is failing: origin answered 503" in body, body
    # Another origin that takes connections and never answers (--origin-timeout).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        quiet = f"http://127.0.0.1:{silent.getsockname()[1]}"
        other = cache_host("--fill-attempts", "1", "--origin-timeout", "0.5", name="other")
        assert get(other, f"{quiet}/a.bin")[0] == 404
        wait_fill_state(other, "failed")
        code, body = get(other, f"{quiet}/b.bin")
        assert code == 404 and f"{quiet} is failing".encode() in body, body


def test_origin_health_backs_off_doubling_to_a_ceiling_and_stays_bounded():
    health = OriginHealth()
    waits = [health.failed("http://o", "down", now=1000.0).until - 1000.0 for _ in range(9)]
    assert waits == [30, 60, 120, 240, 480, 960, 1800, 1800, 1800]
    assert waits[0] == FIRST_BACKOFF and waits[-1] == MAX_BACKOFF
    assert health.blocked("http://o", now=2799.0) and not health.blocked("http://o", now=2801.0)
    (entry,) = health.unhealthy()
    assert entry.failures == 9 and entry.since == 1000.0
    health.succeeded("http://o")
    assert health.unhealthy() == [] and health.states() == {"http://o": True}
    for n in range(MAX_REPORTED + 50):
        health.failed(f"http://h{n}", "down")
    states = health.states()
    assert len(states) == MAX_REPORTED and not any(states.values())
    assert "http://o" not in states and f"http://h{MAX_REPORTED + 49}" in states


def test_the_negative_cache_holds_for_its_ttl_and_is_forgotten_on_request():
    absent = NegativeCache(ttl=300)
    entry = absent.remember("https://h/x", "", 404, now=1000.0)
    assert entry.until == 1300.0
    assert absent.get("https://h/x", "", now=1299.0) == entry
    assert absent.get("https://h/x", "other-scope", now=1000.0) is None
    assert absent.get("https://h/x", "", now=1300.0) is None
    absent.remember("https://h/x", "", 410, now=2000.0)
    assert absent.forget("https://h/x", "") and not absent.forget("https://h/x", "")


@pytest.mark.backends
def test_queued_fills_for_an_unhealthy_origin_wait_and_run_once_unblocked(cache_host, free_port):
    """Before: fills queued for an origin that had just failed were each run
    in turn against it, every one failing the same way."""
    # Slow to answer 503: the misses after the first queue fills meanwhile.
    with PortOrigin(free_port, BODY, status=503, delay=2.0) as server:
        flaky = server.url
        host, api = start(
            cache_host, "--workers", "1", "--fill-attempts", "1", "--no-stream-fills",
        )  # fmt: skip
        # Three misses queue three fills before the first has failed.
        for n in range(3):
            assert probe(host, f"{flaky}/q{n}.bin")[0] == 404
        wait_fill_state(host, "failed")
        time.sleep(1.0)  # the worker claims the others, and puts them back
        states = dict(rows(host, "SELECT key, state FROM fills"))
        assert sorted(states.values()) == ["failed", "queued", "queued"], states
        assert server.gets == 1  # only the first asked the failing origin
        assert "fill.deferred" in host.log()
        server.status, server.delay = 200, 0.0
        assert api.post("/origins/unblock", {"origin": flaky}).status == 200
        deadline = time.monotonic() + 20
        while sorted(s for _, s in rows(host, "SELECT key, state FROM fills")) != [
            "done", "done", "failed"]:  # fmt: skip
            assert time.monotonic() < deadline, rows(host, "SELECT key, state, error FROM fills")
            time.sleep(0.05)
        assert server.gets == 3
