"""Prometheus metrics: what the core counts, and its text exposition.

The read path only adds to plain integers here (no locks, no label lookups);
everything else is read when /metrics is scraped. Fill outcomes and durations
come from the audit events the core records, so no other module counts.
The figures an operator looks at first (hit ratio, bytes served against bytes
fetched) are kept since start and over the last day, from a snapshot of the
counts taken every minute: the read path pays nothing for the window.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, deque
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
MARK_SECONDS = 60.0  # how often the counts are snapshotted for the windowed figures
DAY = 86400.0
WINDOWS = {"1d": DAY, "start": None}  # the windows /metrics and the overview show


@dataclasses.dataclass(frozen=True)
class Figures:
    """What the cache did over a window: requests, and bytes each way."""

    since: float  # Unix time the window starts
    hits: int = 0
    misses: int = 0
    served_bytes: int = 0  # to clients, from stored blobs
    streamed_bytes: int = 0  # to clients, from fills as they arrived (read-through)
    origin_bytes: int = 0  # from origins, of fills that completed

    @property
    def requests(self) -> int:
        return self.hits + self.misses

    @property
    def hit_ratio(self) -> float | None:
        """Hits per request (None before any request)."""
        return self.hits / self.requests if self.requests else None

    @property
    def client_bytes(self) -> int:
        return self.served_bytes + self.streamed_bytes

    @property
    def saved_bytes(self) -> int:
        """Origin traffic the cache spared: what clients got, less what was fetched
        for them (negative while pre-seeded artifacts wait for their first client)."""
        return self.client_bytes - self.origin_bytes

    def minus(self, earlier: Figures) -> Figures:
        return Figures(
            since=earlier.since, hits=self.hits - earlier.hits,
            misses=self.misses - earlier.misses,
            served_bytes=self.served_bytes - earlier.served_bytes,
            streamed_bytes=self.streamed_bytes - earlier.streamed_bytes,
            origin_bytes=self.origin_bytes - earlier.origin_bytes,
        )  # fmt: skip


class Tally:
    """Counts kept by the core as things happen."""

    def __init__(self, now: float | None = None) -> None:
        self.started = time.time() if now is None else now
        self.hits = 0
        self.served_bytes = 0
        self.streamed_bytes = 0
        self.misses = 0
        self.origin_bytes = 0
        self.imported_bytes = 0  # uploaded by operators: no origin traffic
        # Snapshots, oldest first: the last day's figures are now minus the
        # oldest one no older than a day.
        self._marks: deque[Figures] = deque([Figures(self.started)])
        self.fills = dict.fromkeys(FILL_OUTCOMES, 0)
        self.quarantined = 0
        self.evicted: Counter[str] = Counter()  # by reason: room, unused
        self.revalidated: Counter[str] = Counter()  # by outcome: fresh, changed, stale-served
        self.fill_seconds = Histogram(
            "withcache_fill_duration_seconds",
            "Seconds from start to commit of each completed fill",
            buckets=FILL_SECONDS_BUCKETS,
            registry=None,
        )

    def hit(self, sent_bytes: int) -> None:
        self.hits += 1
        self.served_bytes += sent_bytes

    def now(self) -> Figures:
        """The counts since start, as Figures."""
        return Figures(
            self.started, self.hits, self.misses, self.served_bytes, self.streamed_bytes,
            self.origin_bytes,
        )  # fmt: skip

    def mark(self, now: float | None = None) -> None:
        """Snapshot the counts (every MARK_SECONDS); forget what the day no longer needs."""
        now = time.time() if now is None else now
        self._marks.append(dataclasses.replace(self.now(), since=now))
        while len(self._marks) > 1 and self._marks[1].since <= now - DAY:
            self._marks.popleft()

    def window(self, seconds: float | None, now: float | None = None) -> Figures:
        """The figures over the last `seconds` (to within MARK_SECONDS; None:
        since start). A window longer than the uptime starts at the start."""
        if seconds is None:
            return self.now()
        now = time.time() if now is None else now
        base = next((m for m in self._marks if m.since >= now - seconds), None)
        return self.now().minus(base or self._marks[-1])

    def observe(self, event: events.Event) -> None:
        """Count what an audit event says about fills."""
        if isinstance(event, events.FillFinished):
            self.fills["done"] += 1
            if event.imported:
                self.imported_bytes += event.size
            else:
                self.origin_bytes += event.size
            self.fill_seconds.observe(event.seconds)
        elif isinstance(event, events.FillFailed):
            self.fills["failed"] += 1
        elif isinstance(event, events.FillCancelled):
            self.fills["cancelled"] += 1
        elif isinstance(event, events.ArtifactQuarantined):
            self.quarantined += 1
        elif isinstance(event, events.ArtifactEvicted):
            self.evicted[event.reason] += 1
        elif isinstance(event, events.ArtifactRevalidated):
            self.revalidated[event.outcome] += 1


class _Snapshot(Collector):
    def __init__(
        self,
        tally: Tally,
        health: Mapping[str, Any],
        work: Mapping[str, Any],
        integrity: Mapping[str, Any],
        copies: Mapping[str, int] | None,
    ) -> None:
        self._tally = tally
        self._health = health
        self._work = work
        self._integrity = integrity
        self._copies = copies

    def collect(self) -> Iterator[Any]:
        t, h, w = self._tally, self._health, self._work
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
            "withcache_streamed_bytes", "Bytes sent to clients from fills as they arrived",
            t.streamed_bytes,
        )  # fmt: skip
        yield CounterMetricFamily(
            "withcache_origin_bytes", "Bytes of artifacts fetched whole from origins",
            t.origin_bytes,
        )  # fmt: skip
        yield CounterMetricFamily(
            "withcache_imported_bytes", "Bytes of artifacts imported (uploaded, not fetched)",
            t.imported_bytes,
        )  # fmt: skip
        yield from _windowed(t)
        fills = CounterMetricFamily(
            "withcache_fills", "Fills ended, by outcome", labels=["outcome"]
        )
        for outcome, count in t.fills.items():
            fills.add_metric([outcome], count)
        yield fills
        yield from t.fill_seconds.collect()
        evicted = CounterMetricFamily(
            "withcache_evicted_artifacts", "Artifacts eviction deleted, by reason (room, unused)",
            labels=["reason"],
        )  # fmt: skip
        for reason, count in sorted(t.evicted.items()):
            evicted.add_metric([reason], count)
        yield evicted
        revalidated = CounterMetricFamily(
            "withcache_revalidations",
            "Revalidations (--revalidate, refresh), by outcome (fresh, changed, stale-served)",
            labels=["outcome"],
        )
        for outcome, count in sorted(t.revalidated.items()):
            revalidated.add_metric([outcome], count)
        yield revalidated
        yield GaugeMetricFamily("withcache_artifacts", "Cached artifacts", h["artifacts"])
        yield GaugeMetricFamily(
            "withcache_stored_bytes", "Bytes stored (shared blobs counted once)", h["bytes_stored"]
        )
        if h["max_bytes"] is not None:
            yield GaugeMetricFamily("withcache_max_bytes", "The --max-bytes cap", h["max_bytes"])
        yield GaugeMetricFamily(
            "withcache_free_bytes", "Free bytes on the data dir's filesystem", h["free_bytes"]
        )
        yield from _work(w)
        yield GaugeMetricFamily(
            "withcache_degraded", "1 while fills are refused or the store can't record",
            int(h["status"] != "ok"),
        )  # fmt: skip
        yield from self._integrity_figures()
        if self._copies is not None:  # --blobs, with --local-copies
            yield from _copy_figures(self._copies)

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


def _copy_figures(c: Mapping[str, int]) -> Iterator[Any]:
    yield GaugeMetricFamily(
        "withcache_local_copy_bytes", "Bytes of this host's local copies of blobs", c["bytes"]
    )
    yield GaugeMetricFamily(
        "withcache_local_copy_bound_bytes", "The bound on them (--local-copies)", c["bound"]
    )
    yield CounterMetricFamily(
        "withcache_local_copy_hits",
        "Hits sent from this host's local copy of the blob, not streamed from the object store",
        c["hits"],
    )


def _windowed(tally: Tally) -> Iterator[Any]:
    """Hit ratio and bytes saved over the last day and since start."""
    ratio = GaugeMetricFamily(
        "withcache_hit_ratio", "Requests answered from stored blobs, per request",
        labels=["window"],
    )  # fmt: skip
    saved = GaugeMetricFamily(
        "withcache_saved_bytes",
        "Bytes sent to clients less bytes fetched from origins for them",
        labels=["window"],
    )
    for name, seconds in WINDOWS.items():
        figures = tally.window(seconds)
        if figures.hit_ratio is not None:  # no requests yet: no ratio
            ratio.add_metric([name], figures.hit_ratio)
        saved.add_metric([name], figures.saved_bytes)
    yield ratio
    yield saved


def _work(w: Mapping[str, Any]) -> Iterator[Any]:
    """The queue, the misses waiting for an operator, the latest verification."""
    yield GaugeMetricFamily("withcache_queued_fills", "Fills waiting for a worker",
                            w["queued_fills"])  # fmt: skip
    yield GaugeMetricFamily("withcache_running_fills", "Fills downloading now", w["running_fills"])
    yield GaugeMetricFamily(
        "withcache_misses_awaiting_approval", "Misses an operator has yet to approve (--curate)",
        w["awaiting_approval"],
    )  # fmt: skip
    yield GaugeMetricFamily("withcache_verify_running", "1 while blobs are being verified",
                            int(w["verify_running"]))  # fmt: skip
    up = GaugeMetricFamily(
        "withcache_origin_up",
        "1 if misses may fill from the origin, 0 while it is marked unhealthy (only the "
        "origins filled from lately, at most 200)", labels=["host"],
    )  # fmt: skip
    for origin, healthy in sorted(w["origins_up"].items()):
        up.add_metric([origin], int(healthy))
    yield up


def exposition(
    tally: Tally, health: Mapping[str, Any], work: Mapping[str, Any],
    integrity: Mapping[str, Any], copies: Mapping[str, int] | None = None,
) -> bytes:  # fmt: skip
    """The Prometheus text format of the counts, a health snapshot
    (Cache.health), what waits on the cache-host (Cache.work), the
    integrity figures (Cache.integrity) and the local copies' (Cache.local_copies)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(tally, health, work, integrity, copies))
    return generate_latest(registry)
