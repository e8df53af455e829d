"""Changes to artifacts, heard across cache-hosts through PostgreSQL LISTEN/NOTIFY.

A trigger on `artifacts` (postgres.py's migrations) sends the key of every
row a transaction inserts, deletes or changes on CHANNEL, delivered only if
that transaction commits. Each host keeps one dedicated connection that
LISTENs and tells its lookup memo (a ChangeListener) of each key, so a
delete, quarantine or new blob on one host stops the others serving what
they remembered within milliseconds. If the connection drops, or stops
answering a health query, the listener is told it no longer hears (the memo
falls back to its short life) and the connection is made again with a
doubling backoff; once it listens again the memo starts afresh, since what
changed meanwhile went unheard.
"""

from __future__ import annotations

import asyncio

import psycopg

from withcache.server import log
from withcache.server.store import ChangeListener

CHANNEL = "withcache_artifacts"
APPLICATION = "withcache-changes"  # the connection's name in pg_stat_activity
HEALTH_SECONDS = 5.0  # a quiet connection is asked to answer this often
CONNECT_SECONDS = 10
FIRST_RETRY = 0.1  # seconds before reconnecting; doubles up to LAST_RETRY
LAST_RETRY = 5.0


async def follow(url: str, listener: ChangeListener) -> None:
    """Tell `listener` of every change to an artifact until cancelled."""
    retry = FIRST_RETRY
    while True:
        heard = False
        try:
            async with await psycopg.AsyncConnection.connect(
                url, autocommit=True, connect_timeout=CONNECT_SECONDS,
                application_name=APPLICATION,
            ) as conn:  # fmt: skip
                await conn.execute(f"LISTEN {CHANNEL}")
                listener.listening(True)
                heard, retry = True, FIRST_RETRY
                log.info("changes.listening", channel=CHANNEL)
                while True:
                    async for notice in conn.notifies(timeout=HEALTH_SECONDS):
                        listener.changed(notice.payload or None)
                    await asyncio.wait_for(conn.execute("SELECT 1"), HEALTH_SECONDS)
        except Exception as err:  # psycopg.Error, OSError, TimeoutError: all mean the same
            if heard:
                listener.listening(False)
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            log.warning("changes.unheard", error=reason, retry_in=retry)
        await asyncio.sleep(retry)
        retry = min(retry * 2, LAST_RETRY)
