"""Bookkeeping writes that found the metadata store unwritable, kept in order
and tried again until they land.

A full disk or a PostgreSQL that is down must not wedge what the write was
about: a fill that failed still tells its clients at once, and the row and
events that record it follow as soon as the store takes writes again. Only
what a store says is worth retrying (Metadata.unavailable) waits here; any
other error is logged and dropped, so one bad write can't block the rest.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from withcache.server import log

MAX_WAITING = 10_000  # beyond this the oldest writes are dropped (and logged)

Write = Callable[[], Awaitable[Any]]


class Backlog:
    def __init__(self, unavailable: tuple[type[Exception], ...]) -> None:
        self._unavailable = unavailable
        self._waiting: deque[tuple[str, Write]] = deque()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._waiting)

    async def write(self, what: str, write: Write) -> None:
        """Run `write` now, or after the writes waiting before it."""
        if not self._waiting:
            try:
                await write()
                return
            except self._unavailable as err:
                log.warning("store.write_deferred", what=what, error=str(err))
            except Exception:
                log.error("store.write_failed", exc_info=True, what=what)
                return
        self._waiting.append((what, write))
        if len(self._waiting) > MAX_WAITING:
            lost, _ = self._waiting.popleft()
            self.dropped += 1
            log.error("store.write_dropped", what=lost, waiting=MAX_WAITING)

    async def flush(self) -> None:
        """Try the waiting writes again, in order, until one still can't land."""
        landed = 0
        while self._waiting:
            what, write = self._waiting[0]
            try:
                await write()
            except self._unavailable:
                break
            except Exception:
                log.error("store.write_failed", exc_info=True, what=what)
            self._waiting.popleft()
            landed += 1
        if landed:
            log.info("store.writes_recovered", written=landed, waiting=len(self._waiting))
