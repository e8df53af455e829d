"""Metadata in one SQLite database (WAL), the embedded default.

Queries are short and indexed, so they run on the event loop's thread; the
request path only reads (hit counts arrive batched through `add_hits`).
WAL with synchronous=NORMAL survives a killed process; every commit is a
single transaction, so a crash leaves each change either whole or absent.
The file gives back what pruning frees: it is kept in incremental
auto-vacuum mode (a file made before that is vacuumed once, at start), and
each prune ends with an incremental vacuum and a checkpoint that empties the
WAL (which is also cut back to WAL_SIZE_LIMIT after every checkpoint).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from withcache.server.store import ChangeListener, schema
from withcache.server.store.sql import SQLITE, Args, Database, Row, SQLMetadata

IDENTITY = "INTEGER PRIMARY KEY"  # an alias of the rowid, which SQLite makes up

# Each entry upgrades the schema by one version (PRAGMA user_version).
MIGRATIONS = [
    "CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);"
    + schema.FIRST_TABLES.format(identity=IDENTITY),
    # Counted from the artifacts already stored, and kept by triggers since.
    schema.COUNTS
    + """
    INSERT INTO blob_refs SELECT sha256, max(size), count(*) FROM artifacts GROUP BY sha256;
    INSERT INTO totals VALUES (
        1, (SELECT count(*) FROM artifacts), (SELECT coalesce(sum(size), 0) FROM blob_refs)
    );
    CREATE TRIGGER artifact_added AFTER INSERT ON artifacts BEGIN
        INSERT INTO blob_refs VALUES (NEW.sha256, NEW.size, 1)
            ON CONFLICT (sha256) DO UPDATE SET refs = refs + 1;
        UPDATE totals SET artifacts = artifacts + 1, bytes = bytes + CASE
            WHEN (SELECT refs FROM blob_refs WHERE sha256 = NEW.sha256) = 1 THEN NEW.size
            ELSE 0 END;
    END;
    CREATE TRIGGER artifact_removed AFTER DELETE ON artifacts BEGIN
        UPDATE blob_refs SET refs = refs - 1 WHERE sha256 = OLD.sha256;
        UPDATE totals SET artifacts = artifacts - 1, bytes = bytes - CASE
            WHEN (SELECT refs FROM blob_refs WHERE sha256 = OLD.sha256) = 0 THEN OLD.size
            ELSE 0 END;
        DELETE FROM blob_refs WHERE sha256 = OLD.sha256 AND refs = 0;
    END;
    CREATE TRIGGER artifact_replaced AFTER UPDATE OF sha256 ON artifacts
    WHEN OLD.sha256 != NEW.sha256 BEGIN
        UPDATE blob_refs SET refs = refs - 1 WHERE sha256 = OLD.sha256;
        UPDATE totals SET bytes = bytes - CASE
            WHEN (SELECT refs FROM blob_refs WHERE sha256 = OLD.sha256) = 0 THEN OLD.size
            ELSE 0 END;
        DELETE FROM blob_refs WHERE sha256 = OLD.sha256 AND refs = 0;
        INSERT INTO blob_refs VALUES (NEW.sha256, NEW.size, 1)
            ON CONFLICT (sha256) DO UPDATE SET refs = refs + 1;
        UPDATE totals SET bytes = bytes + CASE
            WHEN (SELECT refs FROM blob_refs WHERE sha256 = NEW.sha256) = 1 THEN NEW.size
            ELSE 0 END;
    END;
    CREATE INDEX fills_finished_at ON fills (finished_at);
    """,
    schema.TOKENS.format(identity=IDENTITY),
    # The same model of leases as the shared store's.
    schema.LEASES,
    schema.RESERVATIONS,
    schema.LISTS.format(identity=IDENTITY),
    schema.PINS,
    schema.ENDED_SESSIONS,
    schema.BLOB_OBJECTS,
    schema.PEER_URLS,
]

WAL_SIZE_LIMIT = 4 << 20  # bytes the WAL file keeps after a checkpoint
_INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL


class SQLiteMetadata(SQLMetadata):
    """The Metadata interface over a single SQLite file."""

    _dialect = SQLITE

    shared = False
    # SQLITE_FULL, SQLITE_IOERR, SQLITE_BUSY...: the file can't be written now.
    unavailable = (sqlite3.OperationalError,)

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=5000")
        self._vacuum_incrementally()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        self._migrate()
        self._sql = _Connection(self._db)
        # One process owns the file, so in-process locks cover every writer.
        self._blob_locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def _vacuum_incrementally(self) -> None:
        """Put the file in incremental auto-vacuum mode: a new one just says so
        before its first table; an older one must be rebuilt once (VACUUM)."""
        self._db.execute(f"PRAGMA auto_vacuum={_INCREMENTAL}")
        if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] != _INCREMENTAL:
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            try:
                self._db.executescript(
                    f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;"
                )
            except sqlite3.Error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Database]:
        with _Transaction(self._db):
            yield self._sql

    async def close(self) -> None:
        self._db.close()

    async def follow_changes(self, listener: ChangeListener) -> None:
        return  # one host: its own changes are forgotten as it makes them

    # One writer at a time (BEGIN IMMEDIATE): a transaction holds the whole file.

    async def _hold_key(self, db: Database, key: str) -> None:
        return

    async def _hold_totals(self, db: Database) -> None:
        return

    async def requeue_interrupted(self) -> int:
        async with self._transaction() as db:
            requeued = await db.run(
                "UPDATE fills SET state = 'queued', started_at = NULL WHERE state = 'running'"
            )
            # This process is the file's only host: whatever a previous one held
            # is free now (a credentialed fill then fails, its credentials gone).
            await db.run(
                "UPDATE fills SET holder = NULL, lease_until = NULL WHERE state = 'queued'"
            )
            return requeued

    @asynccontextmanager
    async def blob_lock(self, sha256: str) -> AsyncIterator[None]:
        lock, users = self._blob_locks.get(sha256) or (asyncio.Lock(), 0)
        self._blob_locks[sha256] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._blob_locks[sha256]
            if users == 1:
                del self._blob_locks[sha256]
            else:
                self._blob_locks[sha256] = (lock, users - 1)

    async def prune(
        self, now: float, miss_max_age: float, max_misses: int, event_max_age: float,
        max_events: int,
    ) -> None:  # fmt: skip
        await super().prune(now, miss_max_age, max_misses, event_max_age, max_events)
        self._give_back()

    def _give_back(self) -> None:
        """Hand freed pages back to the file system, the WAL's too."""
        # executescript steps the pragma to its end (execute would free one page).
        self._db.executescript("PRAGMA incremental_vacuum;")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


class _Connection:
    """The Database over the one connection: each query runs to its end before
    the event loop goes on (they are short and indexed)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    async def one(self, sql: str, args: Args = ()) -> Row | None:
        return self._db.execute(sql, args).fetchone()

    async def all(self, sql: str, args: Args = ()) -> list[Row]:
        return self._db.execute(sql, args).fetchall()

    async def run(self, sql: str, args: Args = ()) -> int:
        return self._db.execute(sql, args).rowcount

    async def many(self, sql: str, rows: Sequence[Args]) -> None:
        self._db.executemany(sql, rows)


class _Transaction:
    """`with` block = BEGIN IMMEDIATE ... COMMIT (or ROLLBACK); nests as a no-op."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._outer = False

    def __enter__(self) -> sqlite3.Connection:
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
            self._outer = True
        return self._db

    def __exit__(self, kind: object, *_: object) -> None:
        if self._outer:
            self._db.execute("ROLLBACK" if kind else "COMMIT")
