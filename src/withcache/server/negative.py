"""Negative caching: an origin's 404 or 410 for a URL, believed for --negative-ttl.

While it holds, misses of that URL are answered 404 at once, without asking
the origin; the Misses page says "origin says 404 (until …)". An operator's
retry, or a fill that succeeds, forgets it. Bounded (the oldest go first),
kept in memory only: each cache-host learns on its own, and a restart forgets.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

NEGATIVE_STATUSES = {404, 410}  # the origin says the URL names nothing
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Absent:
    status: int
    until: float  # Unix time

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.until))
        return f"origin says {self.status} (until {when})"


class NegativeCache:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: OrderedDict[tuple[str, str], Absent] = OrderedDict()

    def remember(self, key: str, scope: str, status: int, now: float | None = None) -> Absent:
        now = time.time() if now is None else now
        self._entries.pop((key, scope), None)
        entry = self._entries[(key, scope)] = Absent(status, now + self.ttl)
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)
        return entry

    def get(self, key: str, scope: str, now: float | None = None) -> Absent | None:
        entry = self._entries.get((key, scope))
        now = time.time() if now is None else now
        if entry is not None and entry.until <= now:
            del self._entries[(key, scope)]
            return None
        return entry

    def forget(self, key: str, scope: str) -> bool:
        return self._entries.pop((key, scope), None) is not None
