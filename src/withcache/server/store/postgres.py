"""Metadata in PostgreSQL, shared by several cache-hosts (the scale-out store).

The same tables and meaning as store.sqlite, and the same queries (store.sql's,
given to psycopg with its marks): totals kept by triggers, one active fill per
(key, scope) by a partial unique index, the same retention. What sharing
adds: the schema is migrated under an advisory lock, so hosts starting
together don't race; fills are claimed with `FOR UPDATE SKIP LOCKED` under a
lease that their host renews; blob commits and deletes take an advisory lock
per blob, so they exclude each other across hosts.

Imported only when `--metadata postgresql://…` is given (psycopg is in the
`scale` extra); connections come from a small pool, each statement on its own
unless it is one of the transactions below.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import conninfo
from psycopg_pool import AsyncConnectionPool

from withcache.server.store import ChangeListener, StoreError, changes, schema
from withcache.server.store.sql import (
    POSTGRES,
    Args,
    Database,
    Row,
    SQLMetadata,
    for_psycopg,
)

# Advisory lock keys: one bigint for migrations; (class, blob) int pairs for
# blobs (the two forms never collide).
MIGRATION_LOCK = 0x77C_5C4E_0001
BLOB_LOCK_CLASS = 0x77C5
KEY_LOCK_CLASS = 0x77C6  # a key's commit against a miss's enqueue (hashed: may be shared)
POOL_SIZE = 10
CONNECT_SECONDS = 10

IDENTITY = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"

# Each entry upgrades the schema by one version (table withcache_schema).
MIGRATIONS = [
    # What SQLite's first four versions made, at once, and the totals' triggers.
    "CREATE TABLE secrets (name TEXT PRIMARY KEY, value BYTEA NOT NULL);"
    + schema.FIRST_TABLES.format(identity=IDENTITY)
    + schema.TOKENS.format(identity=IDENTITY)
    + schema.LEASES
    + schema.COUNTS
    + """
    CREATE INDEX fills_finished_at ON fills (finished_at);
    CREATE INDEX fills_holder ON fills (holder) WHERE state IN ('queued', 'running');
    INSERT INTO totals VALUES (1, 0, 0);
    CREATE FUNCTION withcache_count_blobs() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        left_refs BIGINT;
        new_refs BIGINT;
        count_change BIGINT := 0;
        bytes_change BIGINT := 0;
    BEGIN
        IF TG_OP IN ('DELETE', 'UPDATE') THEN
            UPDATE blob_refs SET refs = refs - 1 WHERE sha256 = OLD.sha256
                RETURNING refs INTO left_refs;
            IF left_refs = 0 THEN
                DELETE FROM blob_refs WHERE sha256 = OLD.sha256;
                bytes_change := bytes_change - OLD.size;
            END IF;
            count_change := count_change - 1;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            INSERT INTO blob_refs VALUES (NEW.sha256, NEW.size, 1)
                ON CONFLICT (sha256) DO UPDATE SET refs = blob_refs.refs + 1
                RETURNING refs INTO new_refs;
            IF new_refs = 1 THEN
                bytes_change := bytes_change + NEW.size;
            END IF;
            count_change := count_change + 1;
        END IF;
        UPDATE totals SET artifacts = artifacts + count_change, bytes = bytes + bytes_change;
        RETURN NULL;
    END $$;
    CREATE TRIGGER artifact_counted AFTER INSERT OR DELETE ON artifacts
        FOR EACH ROW EXECUTE FUNCTION withcache_count_blobs();
    CREATE TRIGGER artifact_replaced AFTER UPDATE OF sha256 ON artifacts
        FOR EACH ROW WHEN (OLD.sha256 IS DISTINCT FROM NEW.sha256)
        EXECUTE FUNCTION withcache_count_blobs();
    """,
    schema.RESERVATIONS,
    schema.LISTS.format(identity=IDENTITY),
    schema.PINS,
    # Every host's lookup memo hears what changes what a key serves (changes.py):
    # the key of each artifact row inserted, deleted or changed, sent in the
    # changing transaction (so only once it commits); hit counts, scrub marks
    # and revalidation claims change nothing a lookup answers. A key too long for a notice
    # (8000 bytes) is sent as '': every key.
    """
    CREATE FUNCTION withcache_artifact_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND (to_jsonb(OLD) - 'hits' - 'last_hit' - 'checked_at'
                - 'revalidating_until')
                = (to_jsonb(NEW) - 'hits' - 'last_hit' - 'checked_at' - 'revalidating_until') THEN
            RETURN NULL;
        END IF;
        IF TG_OP <> 'INSERT' THEN
            PERFORM pg_notify('withcache_artifacts',
                CASE WHEN octet_length(OLD.key) < 7900 THEN OLD.key ELSE '' END);
        END IF;
        IF TG_OP <> 'DELETE' THEN
            PERFORM pg_notify('withcache_artifacts',
                CASE WHEN octet_length(NEW.key) < 7900 THEN NEW.key ELSE '' END);
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER artifact_changed AFTER INSERT OR UPDATE OR DELETE ON artifacts
        FOR EACH ROW EXECUTE FUNCTION withcache_artifact_changed();
    """,
    schema.ENDED_SESSIONS,
    schema.BLOB_OBJECTS,
    schema.PEER_URLS,
]


def describe(url: str) -> str:
    """Where a PostgreSQL URL points, without its password: for messages."""
    try:
        parts = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "an unreadable PostgreSQL URL"
    host = parts.get("host") or "localhost"
    return f"postgresql://{host}:{parts.get('port') or 5432}/{parts.get('dbname') or ''}"


async def _migrate(conn: psycopg.AsyncConnection[Any]) -> None:
    """Create or upgrade the schema; hosts starting at once queue on the lock."""
    async with conn.transaction():
        # Hosts starting at once queue here; each sees the others' work done.
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS withcache_schema (version INTEGER)")
        row = await (await conn.execute("SELECT max(version) FROM withcache_schema")).fetchone()
        version = row[0] if row and row[0] is not None else 0
        if version > len(MIGRATIONS):
            raise StoreError(
                f"the database has schema version {version}, newer than this withcache "
                f"({len(MIGRATIONS)}): upgrade withcache"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await conn.execute(script)
            await conn.execute("INSERT INTO withcache_schema VALUES (%s)", (number,))


class PostgresMetadata(SQLMetadata):
    """The Metadata interface over a PostgreSQL database."""

    _dialect = POSTGRES

    shared = True
    # Disk full, server gone, pool exhausted: psycopg's OperationalError family.
    unavailable = (psycopg.OperationalError,)

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool
        self._sql = _Pooled(pool)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Database]:
        async with self._pool.connection() as conn, conn.transaction():
            yield _Connection(conn)

    @classmethod
    async def connect(cls, url: str) -> PostgresMetadata:
        """Connect, and create or migrate the schema; StoreError if that fails."""
        try:
            # One plain connection first: its error says what is wrong (the
            # pool's would only say that it timed out).
            async with await psycopg.AsyncConnection.connect(
                url, autocommit=True, connect_timeout=CONNECT_SECONDS
            ) as conn:
                await _migrate(conn)
        except (psycopg.Error, OSError) as err:
            reason = str(err).strip().splitlines()[0] if str(err) else type(err).__name__
            raise StoreError(f"cannot use {describe(url)}: {reason}") from None
        pool = AsyncConnectionPool(
            url, min_size=1, max_size=POOL_SIZE, open=False, kwargs={"autocommit": True}
        )
        await pool.open(wait=True, timeout=CONNECT_SECONDS)
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()

    async def follow_changes(self, listener: ChangeListener) -> None:
        await changes.follow(self._pool.conninfo, listener)

    async def _hold_key(self, db: Database, key: str) -> None:
        await db.run("SELECT pg_advisory_xact_lock(?, hashtext(?))", (KEY_LOCK_CLASS, key))

    async def _hold_totals(self, db: Database) -> None:
        # The totals row is the one lock every reservation and every commit
        # (its trigger) takes: reservations across hosts happen one at a time.
        await db.run("SELECT bytes FROM totals FOR UPDATE")

    async def requeue_interrupted(self) -> int:
        return 0  # other hosts' fills are running: leases decide what moves on

    @asynccontextmanager
    async def blob_lock(self, sha256: str) -> AsyncIterator[None]:
        blob = int(sha256[:8], 16) - (1 << 31)  # int4 range
        async with self._pool.connection() as conn:
            await conn.execute("SELECT pg_advisory_lock(%s, %s)", (BLOB_LOCK_CLASS, blob))
            try:
                yield
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (BLOB_LOCK_CLASS, blob))


class _Connection:
    """The Database over one connection (a transaction's)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def one(self, sql: str, args: Args = ()) -> Row | None:
        return await (await self._conn.execute(for_psycopg(sql), args)).fetchone()

    async def all(self, sql: str, args: Args = ()) -> list[Row]:
        return await (await self._conn.execute(for_psycopg(sql), args)).fetchall()

    async def run(self, sql: str, args: Args = ()) -> int:
        return (await self._conn.execute(for_psycopg(sql), args)).rowcount

    async def many(self, sql: str, rows: Sequence[Args]) -> None:
        async with self._conn.cursor() as cursor:
            await cursor.executemany(for_psycopg(sql), rows)


class _Pooled:
    """The Database over the pool: each query on a connection of its own
    (in autocommit: a transaction of its own)."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def one(self, sql: str, args: Args = ()) -> Row | None:
        async with self._pool.connection() as conn:
            return await _Connection(conn).one(sql, args)

    async def all(self, sql: str, args: Args = ()) -> list[Row]:
        async with self._pool.connection() as conn:
            return await _Connection(conn).all(sql, args)

    async def run(self, sql: str, args: Args = ()) -> int:
        async with self._pool.connection() as conn:
            return await _Connection(conn).run(sql, args)

    async def many(self, sql: str, rows: Sequence[Args]) -> None:
        async with self._pool.connection() as conn:
            await _Connection(conn).many(sql, rows)
