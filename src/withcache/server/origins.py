"""Origin health: which origin hosts keep failing, and until when misses leave them alone.

A fill that fails for good because of its origin (no connection, a timeout,
a 5xx answer after the fill's own retries) marks that origin (scheme, host
and port) unhealthy: misses for any of its URLs are answered at once, without
a fill, for 30 s, doubled with each failure in a row up to 30 min; a fill that
succeeds, or an operator's Unblock, makes it healthy again. Hits never ask.
Entries are bounded (the oldest go first), and so are the hosts reported to
/metrics. Nothing here is stored: each cache-host learns on its own, and a
restart forgets.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

FIRST_BACKOFF = 30.0  # seconds an origin is left alone after its first failure...
MAX_BACKOFF = 1800.0  # ...doubled per failure in a row, up to this
MAX_ORIGINS = 10_000  # unhealthy origins remembered
MAX_REPORTED = 200  # origins /metrics reports (the most recently filled from)


@dataclass(frozen=True)
class Unhealthy:
    origin: str
    error: str  # the last failure
    failures: int  # in a row
    since: float  # Unix time of the first of them
    until: float  # Unix time misses may try it again

    def blocking(self, now: float) -> bool:
        return self.until > now


class OriginHealth:
    def __init__(self) -> None:
        self._unhealthy: OrderedDict[str, Unhealthy] = OrderedDict()
        self._reported: OrderedDict[str, None] = OrderedDict()

    def failed(self, origin: str, error: str, now: float | None = None) -> Unhealthy:
        now = time.time() if now is None else now
        previous = self._unhealthy.pop(origin, None)
        failures = previous.failures + 1 if previous else 1
        wait = min(FIRST_BACKOFF * 2 ** (failures - 1), MAX_BACKOFF)
        entry = Unhealthy(origin, error, failures, previous.since if previous else now, now + wait)
        self._unhealthy[origin] = entry
        while len(self._unhealthy) > MAX_ORIGINS:
            self._unhealthy.popitem(last=False)
        self._report(origin)
        return entry

    def succeeded(self, origin: str) -> None:
        self._unhealthy.pop(origin, None)
        self._report(origin)

    def unblock(self, origin: str) -> Unhealthy | None:
        """Forget an origin's failures (an operator's word); what was known, if any."""
        return self._unhealthy.pop(origin, None)

    def blocked(self, origin: str, now: float | None = None) -> Unhealthy | None:
        """The origin's failures, while misses must leave it alone."""
        entry = self._unhealthy.get(origin)
        now = time.time() if now is None else now
        return entry if entry and entry.blocking(now) else None

    def unhealthy(self) -> list[Unhealthy]:
        """Every origin whose last fill failed, most recently failed first."""
        return sorted(self._unhealthy.values(), key=lambda u: u.until, reverse=True)

    def states(self, now: float | None = None) -> dict[str, bool]:
        """origin -> up, for the origins filled from most recently (bounded)."""
        now = time.time() if now is None else now
        return {origin: self.blocked(origin, now) is None for origin in self._reported}

    def _report(self, origin: str) -> None:
        self._reported.pop(origin, None)
        self._reported[origin] = None
        while len(self._reported) > MAX_REPORTED:
            self._reported.popitem(last=False)
