"""Prometheus metrics: what the core counts, and its text exposition.

The read path only adds to plain integers here (no locks, no label lookups);
everything else is read when /metrics is scraped. Fill outcomes and durations
come from the audit events the core records, so no other module counts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from withcache import __version__
from withcache.server import events

CONTENT_TYPE = CONTENT_TYPE_LATEST
# From a small firmware file on a LAN to a multi-GB toolkit on a slow link.
FILL_SECONDS_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 7200)
FILL_OUTCOMES = ("done", "failed", "cancelled")


class Tally:
    """Counts kept by the core as things happen."""

    def __init__(self) -> None:
        self.hits = 0
        self.served_bytes = 0
        self.misses = 0
        self.origin_bytes = 0
        self.fills = dict.fromkeys(FILL_OUTCOMES, 0)
        self.quarantined = 0
        self.fill_seconds = Histogram(
            "withcache_fill_duration_seconds",
            "Seconds from start to commit of each completed fill",
            buckets=FILL_SECONDS_BUCKETS,
            registry=None,
        )

    def hit(self, sent_bytes: int) -> None:
        self.hits += 1
        self.served_bytes += sent_bytes

    def observe(self, event: events.Event) -> None:
        """Count what an audit event says about fills."""
        if isinstance(event, events.FillFinished):
            self.fills["done"] += 1
            self.origin_bytes += event.size
            self.fill_seconds.observe(event.seconds)
        elif isinstance(event, events.FillFailed):
            self.fills["failed"] += 1
        elif isinstance(event, events.FillCancelled):
            self.fills["cancelled"] += 1
        elif isinstance(event, events.ArtifactQuarantined):
            self.quarantined += 1


class _Snapshot(Collector):
    def __init__(
        self, tally: Tally, health: Mapping[str, Any], integrity: Mapping[str, Any]
    ) -> None:
        self._tally = tally
        self._health = health
        self._integrity = integrity

    def collect(self) -> Iterator[Any]:
        t, h = self._tally, self._health
        yield InfoMetricFamily(
            "withcache_build", "Version of this cache-host", {"version": __version__}
        )
        yield CounterMetricFamily("withcache_hits", "Requests answered from the cache", t.hits)
        yield CounterMetricFamily(
            "withcache_misses", "Requests for URLs the cache did not hold", t.misses
        )
        yield CounterMetricFamily(
            "withcache_served_bytes", "Bytes sent to clients from cached blobs", t.served_bytes
        )
        yield CounterMetricFamily(
            "withcache_origin_bytes", "Bytes of artifacts fetched whole from origins",
            t.origin_bytes,
        )  # fmt: skip
        fills = CounterMetricFamily(
            "withcache_fills", "Fills ended, by outcome", labels=["outcome"]
        )
        for outcome, count in t.fills.items():
            fills.add_metric([outcome], count)
        yield fills
        yield from t.fill_seconds.collect()
        yield GaugeMetricFamily("withcache_artifacts", "Cached artifacts", h["artifacts"])
        yield GaugeMetricFamily(
            "withcache_stored_bytes", "Bytes stored (shared blobs counted once)", h["bytes_stored"]
        )
        if h["max_bytes"] is not None:
            yield GaugeMetricFamily("withcache_max_bytes", "The --max-bytes cap", h["max_bytes"])
        yield GaugeMetricFamily(
            "withcache_free_bytes", "Free bytes on the data dir's filesystem", h["free_bytes"]
        )
        yield GaugeMetricFamily(
            "withcache_degraded", "1 while fills are refused or the store can't record",
            int(h["status"] != "ok"),
        )  # fmt: skip
        yield from self._integrity_figures()

    def _integrity_figures(self) -> Iterator[Any]:
        i, last = self._integrity, self._integrity["last"]
        yield CounterMetricFamily(
            "withcache_quarantined_artifacts",
            "Artifacts taken out of service because their blob was found corrupt or missing",
            self._tally.quarantined,
        )
        if last is not None:  # absent until a verification (verify, or a scrub pass) ended
            yield GaugeMetricFamily(
                "withcache_verify_last_run_timestamp_seconds",
                "When the latest verification of the blobs finished", last["finished_at"],
            )  # fmt: skip
            yield GaugeMetricFamily(
                "withcache_verify_checked_blobs", "Blobs the latest verification checked",
                last["checked"],
            )  # fmt: skip
            yield GaugeMetricFamily(
                "withcache_verify_bad_blobs",
                "Blobs the latest verification found corrupt or missing", last["corrupt"],
            )  # fmt: skip
        if i["checked_ratio"] is not None:
            yield GaugeMetricFamily(
                "withcache_scrub_checked_ratio",
                "Share of stored bytes the scrub re-hashed within its period (--scrub-every)",
                i["checked_ratio"],
            )


def exposition(tally: Tally, health: Mapping[str, Any], integrity: Mapping[str, Any]) -> bytes:
    """The Prometheus text format of the counts, a health snapshot
    (Cache.health) and the integrity figures (Cache.integrity)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(tally, health, integrity))
    return generate_latest(registry)
