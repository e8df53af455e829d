"""Stopping the cache-host's background tasks so that they really end."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from withcache.server import log

CANCEL_ROUNDS = 20
CANCEL_WAIT_SECONDS = 0.5


async def cancel_all(tasks: Iterable[asyncio.Task[None]], what: str) -> None:
    """Cancel the tasks and wait for them to end. A task that ignored it is
    cancelled again: Python 3.11's wait_for (used by the PostgreSQL pool) can
    swallow a cancellation that races with its result, and a loop that lost
    its cancellation would otherwise run, and keep its caller waiting, forever."""
    pending = list(tasks)
    for _ in range(CANCEL_ROUNDS):
        pending = [task for task in pending if not task.done()]
        if not pending:
            return
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=CANCEL_WAIT_SECONDS)
    log.error("tasks.stop_timeout", what=what, tasks=len(pending))
