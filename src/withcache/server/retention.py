"""How much of the metadata store the cache-host's visitors can fill.

Anyone who can reach the read path writes rows: each miss is one, each
refusal and fill one or more events. The bounds (`--max-misses`,
`--max-events`, which finished fills follow, and their retention days) are
enforced as the rows are written (ended sessions at each prune, once
their cookies expire): after a tenth of a bound's worth of
writes (at most PRUNE_EVERY) the store is pruned, so a table never holds
more than a tenth over its bound, and the space freed is given back
(SQLite's incremental vacuum; PostgreSQL's autovacuum reuses it). The
ten-minute prune still runs for the retention days. What one row may hold
is capped too (a miss's key, see store.miss_key; its reason; an event's URL
and texts). Refusals are events at most once a minute per URL and
REFUSAL_EVENTS a minute in all, so junk can't push the audit trail out of
its bound: the miss rows still count every request.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Any

from withcache.server import log
from withcache.server.settings import Settings
from withcache.server.store import Metadata

DAY = 86400.0
PRUNE_EVERY = 1000  # writes to a table at most between prunes
MAX_REASON = 500  # characters of a miss's reason
MAX_EVENT_TEXT = 1000  # characters of an event's URL, and of each text in its detail
REFUSAL_EVENT_SECONDS = 60.0  # one refusal event per URL this often...
REFUSAL_EVENTS = 60  # ...and at most this many in all in that time
REFUSALS_REMEMBERED = 10_000
# Logged-out sessions kept until their cookies expire (12 h); past this many,
# the ones expiring first are forgotten (each took a login with the password).
MAX_ENDED_SESSIONS = 100_000


def clip(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters (marked with an ellipsis) if longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clip_detail(detail: Mapping[str, Any]) -> dict[str, Any]:
    return {k: clip(v, MAX_EVENT_TEXT) if isinstance(v, str) else v for k, v in detail.items()}


class Retention:
    def __init__(self, settings: Settings, metadata: Metadata) -> None:
        self._settings = settings
        self._metadata = metadata
        self._miss_writes = 0
        self._event_writes = 0
        self._miss_slack = _slack(settings.max_misses)
        self._event_slack = _slack(settings.max_events)
        self._pruning = False
        self._refused: OrderedDict[str, float] = OrderedDict()  # key -> last event
        self._refusal_times: deque[float] = deque(maxlen=REFUSAL_EVENTS)

    async def wrote(self, misses: int = 0, events: int = 0) -> None:
        """Rows were written (or counted); prune when a bound's slack is used up."""
        self._miss_writes += misses
        self._event_writes += events
        due = self._miss_writes >= self._miss_slack or self._event_writes >= self._event_slack
        if due and not self._pruning:
            await self.prune()

    async def prune(self) -> None:
        """Drop what is past its bound or age, and give the space back."""
        self._pruning = True
        self._miss_writes = self._event_writes = 0
        s = self._settings
        try:
            now = time.time()
            await self._metadata.prune(
                now, s.miss_retention_days * DAY, s.max_misses, s.event_retention_days * DAY,
                s.max_events,
            )  # fmt: skip
            await self._metadata.prune_sessions(now, MAX_ENDED_SESSIONS)
        except Exception:
            log.error("prune.failed", exc_info=True)
        finally:
            self._pruning = False

    def refusal_worth_an_event(self, key: str) -> bool:
        """Whether a refused miss for `key` should be an event: not if one was
        written for it, or REFUSAL_EVENTS for any, in REFUSAL_EVENT_SECONDS."""
        now = time.monotonic()
        recent = self._refusal_times
        if len(recent) == REFUSAL_EVENTS and now - recent[0] < REFUSAL_EVENT_SECONDS:
            return False
        last = self._refused.pop(key, None)
        if last is not None and now - last < REFUSAL_EVENT_SECONDS:
            self._refused[key] = last
            return False
        self._refused[key] = now
        recent.append(now)
        while len(self._refused) > REFUSALS_REMEMBERED:
            self._refused.popitem(last=False)
        return True


def _slack(bound: int) -> int:
    return max(1, min(PRUNE_EVERY, bound // 10))
