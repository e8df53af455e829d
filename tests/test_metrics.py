"""/metrics in Prometheus text format, read with prometheus-client's own
parser, against a real server that served real hits and ran real fills."""

from __future__ import annotations

import os
import time

from api_client import Api
from conftest import curl
from prometheus_client.parser import text_string_to_metric_families
from test_api import LOCKED, PASSWORD

from withcache.server import metrics

BODY = os.urandom(300_000)


def scrape(host, token: str | None = None) -> dict[str, float]:
    headers = ["-H", f"Authorization: Bearer {token}"] if token else []
    reply = curl("-f", "-D", "-", *headers, f"{host.url}/metrics", check=True).stdout.decode()
    head, _, text = reply.partition("\r\n\r\n")
    assert "content-type: text/plain" in head.lower()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_metrics_count_hits_misses_bytes_and_fills(origin, cache_host):
    url = origin.add("/metrics/a.bin", BODY)
    broken = origin.add("/metrics/broken.bin", status=404)
    host = cache_host("--max-bytes", "10M")
    before = scrape(host)
    assert before["withcache_hits_total"] == 0 and before["withcache_artifacts"] == 0
    assert before["withcache_max_bytes"] == 10 * 2**20
    curl("-o", "/dev/null", host.blob_url(url))  # a miss (served from its fill, or a 404)
    host.wait_cached(url)
    assert curl("-f", host.blob_url(url)).stdout == BODY
    assert curl("-f", "-r", "0-99", host.blob_url(url)).stdout == BODY[:100]
    curl("-o", "/dev/null", host.blob_url(broken))

    def settled() -> dict[str, float]:
        for _ in range(200):  # the failed fill ends in well under a second
            seen = scrape(host)
            if seen["withcache_fills_total{outcome=failed}"] == 1:
                return seen
        raise AssertionError(seen)

    m = settled()
    assert m["withcache_hits_total"] == 2
    assert m["withcache_served_bytes_total"] == len(BODY) + 100
    # The first GET (streamed from its fill) and the 404; HEAD polls answered from
    # the fill or the blob are not requests a client made elsewhere.
    assert m["withcache_misses_total"] == 2
    assert m["withcache_streamed_bytes_total"] == len(BODY)
    assert m["withcache_origin_bytes_total"] == len(BODY)
    for window in ("1d", "start"):
        assert m[f"withcache_hit_ratio{{window={window}}}"] == 0.5
        assert m[f"withcache_saved_bytes{{window={window}}}"] == len(BODY) + 100
    assert m["withcache_queued_fills"] == m["withcache_running_fills"] == 0
    assert m["withcache_misses_awaiting_approval"] == 0
    assert m["withcache_verify_running"] == 0
    assert "withcache_verify_bad_blobs" not in m  # no verification yet
    assert m["withcache_fills_total{outcome=done}"] == 1
    assert m["withcache_fills_total{outcome=cancelled}"] == 0
    assert m["withcache_fill_duration_seconds_count"] == 1
    assert 0 < m["withcache_fill_duration_seconds_sum"] < 30
    assert m["withcache_fill_duration_seconds_bucket{le=+Inf}"] == 1
    assert m["withcache_artifacts"] == 1 and m["withcache_stored_bytes"] == len(BODY)
    assert m["withcache_free_bytes"] > 0
    assert m["withcache_build_info{version=" + host.health()["version"] + "}"] == 1


def test_private_metrics_want_a_token(cache_host):
    host = cache_host("--private-metrics", env=LOCKED)
    refused = curl("-o", "/dev/null", "-w", "%{http_code}", f"{host.url}/metrics").stdout
    assert refused == b"401"
    token = Api(host.url).create_token("prometheus", "read", PASSWORD)
    assert scrape(host, token)["withcache_hits_total"] == 0
    assert token not in host.log()


def test_metrics_are_open_by_default(cache_host):
    host = cache_host(env=LOCKED)
    assert "withcache_hits_total 0.0" in curl("-f", f"{host.url}/metrics").stdout.decode()


def test_metrics_show_the_queue_misses_awaiting_approval_and_the_last_verify(origin, cache_host):
    slow = [origin.add(f"/metrics/slow{n}.bin", BODY, rate=100_000) for n in range(2)]
    curated = origin.add("/metrics/curated.bin", BODY)
    host = cache_host("--curate", "--workers", "1", env=LOCKED)
    api = Api(host.url).with_token(Api(host.url).create_token("ops", "admin", PASSWORD))
    empty = scrape(host)
    assert "withcache_hit_ratio{window=1d}" not in empty  # no request, no ratio
    assert empty["withcache_saved_bytes{window=1d}"] == 0
    curl("-o", "/dev/null", host.blob_url(curated))
    for url in slow:
        assert api.post("/fills", {"url": url}).status == 201
    m = scrape(host)
    assert m["withcache_misses_awaiting_approval"] == 1
    assert m["withcache_running_fills"] == 1 and m["withcache_queued_fills"] == 1
    assert m["withcache_hit_ratio{window=1d}"] == 0  # one request, a miss
    for url in slow:
        origin.resources[url.split(origin.url(""), 1)[1]].rate = None
    before = time.time()
    api.post("/verify", {})
    for _ in range(200):
        m = scrape(host)
        if "withcache_verify_last_run_timestamp_seconds" in m:
            break
        time.sleep(0.05)
    assert m["withcache_verify_last_run_timestamp_seconds"] >= before
    assert m["withcache_verify_bad_blobs"] == 0
    assert m["withcache_verify_checked_blobs"] >= 0


def test_the_last_day_is_a_sliding_window_and_the_marks_stay_bounded():
    tally = metrics.Tally(now=0.0)
    for minute in range(1, 1501):  # 25 hours, a hit a minute, marked each minute
        tally.hit(10)
        tally.mark(minute * 60.0)
    now = 1500 * 60.0
    day = tally.window(metrics.DAY, now)
    assert day.hits == 1440 and day.served_bytes == 14400
    assert day.since == now - metrics.DAY
    assert tally.window(None, now).hits == 1500 and tally.window(None, now).since == 0.0
    assert len(tally._marks) <= 1442
    early = metrics.Tally(now=0.0)
    early.hit(10)
    assert early.window(metrics.DAY, 60.0).hits == 1  # up an hour: the day is since start
