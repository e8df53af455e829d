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
import json
import secrets
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from withcache.server.digests import Digest
from withcache.server.records import (
    IMPORTED,
    Artifact,
    EventRecord,
    EvictionCandidate,
    FillRecord,
    FillState,
    ListItem,
    ListRecord,
    ListTally,
    Miss,
    Page,
    TokenRecord,
    TokenScope,
    miss_key,
)
from withcache.server.store import MAX_LISTS, ChangeListener, Lease, StoreError
from withcache.server.store.rows import (
    ARTIFACT_COLUMNS,
    ARTIFACT_SORTS,
    BLOB_OBJECTS_TABLE,
    CANDIDATE_COLUMNS,
    CANDIDATE_ORDER,
    CANDIDATES,
    DEFER,
    FILL_COLUMNS,
    ITEM_COLUMNS,
    ITEM_FIELDS,
    ITEMS_JOINED,
    LAST_USED,
    LIST_COLUMNS,
    RESERVED,
    SETTLE_ITEMS,
    TALLY_COLUMNS,
    TOKEN_COLUMNS,
    UPLOAD_ABANDONED,
    BlobObjectStatements,
    as_artifact,
    as_candidate,
    as_fill,
    as_item,
    as_list,
    as_token,
    item_values,
    like_pattern,
    like_prefix,
    reserve_sql,
    tally,
)

# Each entry upgrades the schema by one version (PRAGMA user_version).
MIGRATIONS = [
    """
    CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE TABLE artifacts (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        scope TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        headers TEXT NOT NULL,
        fetched_at REAL NOT NULL,
        hits INTEGER NOT NULL DEFAULT 0,
        misses INTEGER NOT NULL DEFAULT 0,
        last_hit REAL,
        UNIQUE (key, scope)
    );
    CREATE INDEX artifacts_sha256 ON artifacts (sha256);
    CREATE INDEX artifacts_fetched_at ON artifacts (fetched_at);
    CREATE TABLE misses (
        key TEXT PRIMARY KEY,
        url TEXT,
        count INTEGER NOT NULL,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX misses_last_seen ON misses (last_seen);
    CREATE TABLE fills (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        scope TEXT NOT NULL,
        url TEXT NOT NULL,
        state TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        expected_sha256 TEXT,
        credentialed INTEGER NOT NULL DEFAULT 0,
        bytes_done INTEGER NOT NULL DEFAULT 0,
        total INTEGER,
        error TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL
    );
    CREATE UNIQUE INDEX fills_one_active ON fills (key, scope)
        WHERE state IN ('queued', 'running');
    CREATE INDEX fills_state ON fills (state, id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        url TEXT,
        actor TEXT,
        detail TEXT NOT NULL
    );
    CREATE INDEX events_at ON events (at);
    """,
    # Totals kept by triggers, so the header strip, /healthz and the cap check
    # cost one row read instead of a scan of every artifact.
    """
    CREATE TABLE blob_refs (
        sha256 TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        refs INTEGER NOT NULL
    );
    CREATE TABLE totals (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        artifacts INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    );
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
    # API tokens: only the SHA-256 of each token is kept.
    """
    CREATE TABLE tokens (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        scope TEXT NOT NULL,
        digest TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        last_used REAL,
        created_by TEXT
    );
    """,
    # Leases: which host runs a fill (or keeps a credentialed fill's
    # credentials), and until when; the same model as the shared store's.
    """
    ALTER TABLE fills ADD COLUMN holder TEXT;
    ALTER TABLE fills ADD COLUMN lease_until REAL;
    """,
    # Bytes promised to running fills under --max-bytes; where an interrupted
    # fill resumes from; when each blob was last re-hashed (the scrub's order).
    """
    ALTER TABLE fills ADD COLUMN reserved INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE fills ADD COLUMN resume TEXT;
    ALTER TABLE artifacts ADD COLUMN checked_at REAL NOT NULL DEFAULT 0;
    CREATE INDEX artifacts_checked_at ON artifacts (checked_at);
    """,
    # Pre-seeded and air-gapped labs: a fill's expected digest names its
    # algorithm; imported artifacts say so; lists group the fills added together.
    """
    ALTER TABLE fills RENAME COLUMN expected_sha256 TO expected_digest;
    UPDATE fills SET expected_digest = 'sha256:' || lower(expected_digest)
        WHERE expected_digest IS NOT NULL;
    ALTER TABLE artifacts ADD COLUMN imported INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE lists (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        kind TEXT NOT NULL,
        created_at REAL NOT NULL,
        created_by TEXT
    );
    CREATE INDEX lists_created_at ON lists (created_at);
    CREATE TABLE list_items (
        list_id INTEGER NOT NULL,
        line INTEGER NOT NULL,
        url TEXT NOT NULL,
        state TEXT NOT NULL,
        fill_id INTEGER,
        size INTEGER,
        note TEXT,
        PRIMARY KEY (list_id, line)
    );
    CREATE INDEX list_items_fill ON list_items (fill_id) WHERE fill_id IS NOT NULL;
    """,
    # Mutable URLs and a full cache: pins, when the origin last vouched for an
    # artifact's bytes and who is asking it now, the origin's ETag to ask
    # with, eviction's order; when a fill for an unhealthy origin may run.
    """
    ALTER TABLE artifacts ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE artifacts ADD COLUMN validated_at REAL;
    ALTER TABLE artifacts ADD COLUMN revalidating_until REAL;
    ALTER TABLE artifacts ADD COLUMN etag TEXT;
    ALTER TABLE fills ADD COLUMN not_before REAL;
    CREATE INDEX artifacts_last_used ON artifacts (pinned, coalesce(last_hit, fetched_at), id);
    """,
    # Operator sessions ended (logged out) before their cookie expires.
    """
    CREATE TABLE ended_sessions (nonce TEXT PRIMARY KEY, expires REAL NOT NULL);
    CREATE INDEX ended_sessions_expires ON ended_sessions (expires);
    """,
    BLOB_OBJECTS_TABLE,
]

WAL_SIZE_LIMIT = 4 << 20  # bytes the WAL file keeps after a checkpoint
_INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL

RESERVE = reserve_sql(":{}")
OBJECTS = BlobObjectStatements(":{}")
# The fills a holder may claim: queued and not held by another host, or
# running under a lease that ran out (a credentialed one never moves).
CLAIMABLE = (
    "(state = 'queued' AND (holder IS NULL OR holder = :holder) "
    "AND (not_before IS NULL OR not_before <= :now)) OR "
    "(state = 'running' AND lease_until < :now AND NOT credentialed AND holder != :holder)"
)


class SQLiteMetadata:
    """The Metadata interface over a single SQLite file."""

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

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    async def close(self) -> None:
        self._db.close()

    async def follow_changes(self, listener: ChangeListener) -> None:
        return  # one host: its own changes are forgotten as it makes them

    async def secret(self, name: str) -> bytes:
        with self._transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)",
                (name, secrets.token_bytes(32)),
            )
            return self._db.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()[
                0
            ]

    # -- artifacts

    async def find_artifact(self, key: str, scopes: Sequence[str]) -> Artifact | None:
        return self._find_artifact("key", key, scopes)

    async def find_artifact_by_sha256(self, sha256: str, scopes: Sequence[str]) -> Artifact | None:
        return self._find_artifact("sha256", sha256, scopes)

    def _find_artifact(self, column: str, value: str, scopes: Sequence[str]) -> Artifact | None:
        """The artifact whose `column` is `value` in the first of `scopes` that has one."""
        marks = ",".join("?" * len(scopes))
        row = self._db.execute(
            f"SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE {column} = ? AND scope IN ({marks}) "
            "ORDER BY scope DESC, id DESC LIMIT 1",
            (value, *scopes),
        ).fetchone()
        return as_artifact(row) if row else None

    async def get_artifact(self, artifact_id: int) -> Artifact | None:
        row = self._db.execute(
            f"SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE id = ?", (artifact_id,)
        ).fetchone()
        return as_artifact(row) if row else None

    async def add_hits(self, counts: Mapping[int, tuple[int, float]]) -> None:
        with self._transaction():
            self._db.executemany(
                "UPDATE artifacts SET hits = hits + ?, last_hit = max(coalesce(last_hit, 0), ?) "
                "WHERE id = ?",
                [(n, last, artifact_id) for artifact_id, (n, last) in counts.items()],
            )

    async def find_artifacts(self, key: str) -> list[Artifact]:
        rows = self._db.execute(
            f"SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE key = ? ORDER BY id", (key,)
        ).fetchall()
        return [as_artifact(r) for r in rows]

    async def delete_artifact(self, artifact_id: int, unpinned: bool = False) -> Artifact | None:
        with self._transaction():
            found = await self.get_artifact(artifact_id)
            if found and not (unpinned and found.pinned):
                self._db.execute("DELETE FROM artifacts WHERE id = ?", (artifact_id,))
                return found
            return None

    async def sha_in_use(self, sha256: str) -> bool:
        row = self._db.execute("SELECT 1 FROM blob_refs WHERE sha256 = ?", (sha256,))
        return row.fetchone() is not None

    async def totals(self) -> tuple[int, int]:
        return self._db.execute("SELECT artifacts, bytes FROM totals").fetchone()

    async def blobs_to_check(self, before: float, limit: int) -> list[tuple[str, int]]:
        return self._db.execute(
            "SELECT sha256, max(size) FROM artifacts WHERE checked_at < ? "
            "GROUP BY sha256 ORDER BY min(checked_at), sha256 LIMIT ?",
            (before, limit),
        ).fetchall()

    async def unchecked_totals(self, before: float) -> tuple[int, int]:
        return self._db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM "
            "(SELECT max(size) AS size FROM artifacts WHERE checked_at < ? GROUP BY sha256)",
            (before,),
        ).fetchone()

    async def mark_checked(
        self, sha256: str, now: float, unless_since: float | None = None
    ) -> bool:
        cursor = self._db.execute(
            "UPDATE artifacts SET checked_at = :now WHERE sha256 = :sha "
            "AND (:since IS NULL OR checked_at < :since)",
            {"now": now, "sha": sha256, "since": unless_since},
        )
        return cursor.rowcount > 0

    async def list_artifacts(
        self, search: str = "", sort: str = "fetched_at", descending: bool = True,
        offset: int = 0, limit: int = 50, pinned: bool = False,
    ) -> Page:  # fmt: skip
        if sort not in ARTIFACT_SORTS:
            raise ValueError(f"cannot sort by {sort!r}")
        clauses, args = [], []
        if search:
            clauses.append("(key LIKE ? ESCAPE '\\' OR sha256 = ?)")
            args += [like_pattern(search), search]
        if pinned:
            clauses.append("pinned")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        order = f"{sort} {'DESC' if descending else 'ASC'}, id DESC"
        rows = self._db.execute(
            f"SELECT {ARTIFACT_COLUMNS} FROM artifacts {where} ORDER BY {order} LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
        total = self._db.execute(f"SELECT count(*) FROM artifacts {where}", args).fetchone()[0]
        return Page([as_artifact(r) for r in rows], total)

    async def set_pinned(self, artifact_id: int, pinned: bool) -> Artifact | None:
        self._db.execute("UPDATE artifacts SET pinned = ? WHERE id = ?", (pinned, artifact_id))
        return await self.get_artifact(artifact_id)

    async def eviction_candidates(
        self, limit: int, used_before: float | None = None
    ) -> list[EvictionCandidate]:
        rows = self._db.execute(
            f"SELECT {CANDIDATE_COLUMNS} FROM {CANDIDATES} "
            f"AND (:before IS NULL OR {LAST_USED} < :before) {CANDIDATE_ORDER} LIMIT :limit",
            {"before": used_before, "limit": limit},
        ).fetchall()
        return [as_candidate(r) for r in rows]

    async def claim_revalidation(self, artifact_id: int, now: float, until: float) -> bool:
        cursor = self._db.execute(
            "UPDATE artifacts SET revalidating_until = ? WHERE id = ? "
            "AND coalesce(revalidating_until, 0) < ?",
            (until, artifact_id, now),
        )
        return cursor.rowcount == 1

    async def end_revalidation(self, artifact_id: int, validated_at: float | None) -> None:
        self._db.execute(
            "UPDATE artifacts SET revalidating_until = NULL, "
            "validated_at = coalesce(?, validated_at) WHERE id = ?",
            (validated_at, artifact_id),
        )

    # -- misses

    async def record_miss(self, key: str, url: str | None, reason: str, now: float) -> None:
        key = miss_key(key)
        self._db.execute(
            "INSERT INTO misses (key, url, count, first_seen, last_seen, reason) "
            "VALUES (?, ?, 1, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
            "url = excluded.url, count = count + 1, last_seen = excluded.last_seen, "
            "reason = excluded.reason",
            (key, url, now, now, reason),
        )

    async def set_miss_reason(self, key: str, reason: str) -> None:
        self._db.execute("UPDATE misses SET reason = ? WHERE key = ?", (reason, miss_key(key)))

    async def get_miss(self, key: str) -> Miss | None:
        row = self._db.execute(
            "SELECT key, url, count, first_seen, last_seen, reason FROM misses WHERE key = ?",
            (miss_key(key),),
        ).fetchone()
        return Miss(*row) if row else None

    async def delete_miss(self, key: str) -> Miss | None:
        with self._transaction():
            found = await self.get_miss(key)
            self._db.execute("DELETE FROM misses WHERE key = ?", (miss_key(key),))
            return found

    async def list_misses(self, search: str = "", offset: int = 0, limit: int = 50) -> Page:
        where, args = ("", [])
        if search:
            where, args = "WHERE key LIKE ? ESCAPE '\\'", [like_pattern(search)]
        rows = self._db.execute(
            f"SELECT key, url, count, first_seen, last_seen, reason FROM misses {where} "
            "ORDER BY last_seen DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
        total = self._db.execute(f"SELECT count(*) FROM misses {where}", args).fetchone()[0]
        return Page([Miss(*r) for r in rows], total)

    async def count_misses(self, reason: str) -> int:
        return self._db.execute(
            "SELECT count(*) FROM misses WHERE reason = ?", (reason,)
        ).fetchone()[0]

    # -- fills

    async def enqueue_fill(
        self, key: str, scope: str, url: str, requested_by: str, now: float,
        expected: Digest | None = None, credentialed: bool = False,
        lease: Lease | None = None, start: bool = False, unless_stored: Sequence[str] = (),
    ) -> tuple[FillRecord | Artifact, bool]:  # fmt: skip
        with self._transaction():  # one writer at a time: a commit is before or after
            stored = self._find_artifact("key", key, unless_stored) if unless_stored else None
            if stored is not None:
                return stored, False
            row = self._db.execute(
                f"SELECT {FILL_COLUMNS} FROM fills WHERE key = ? AND scope = ? "
                "AND state IN ('queued', 'running')",
                (key, scope),
            ).fetchone()
            if row:
                return as_fill(row), False
            cursor = self._db.execute(
                "INSERT INTO fills (key, scope, url, state, requested_by, expected_digest, "
                "credentialed, created_at, started_at, holder, lease_until) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, scope, url, "running" if start else "queued", requested_by,
                 expected and str(expected), credentialed, now, now if start else None,
                 lease and lease.holder, lease and lease.until),
            )  # fmt: skip
            fill = await self.get_fill(cursor.lastrowid or 0)
            assert fill is not None
            return fill, True

    async def claim_fill(
        self, now: float, lease: Lease, fill_id: int | None = None
    ) -> FillRecord | None:
        row = self._db.execute(
            "UPDATE fills SET state = 'running', started_at = :now, bytes_done = 0, total = NULL, "
            "reserved = 0, holder = :holder, lease_until = :until "
            f"WHERE id = (SELECT id FROM fills WHERE ({CLAIMABLE}) "
            "AND (:id IS NULL OR id = :id) ORDER BY requested_by != 'operator', id LIMIT 1) "
            f"RETURNING {FILL_COLUMNS}",
            {"now": now, "holder": lease.holder, "until": lease.until, "id": fill_id},
        ).fetchone()
        return as_fill(row) if row else None

    async def defer_fill(self, fill_id: int, holder: str, until: float) -> bool:
        cursor = self._db.execute(
            f"UPDATE fills SET {DEFER.format('?')} WHERE id = ? AND holder = ? "
            "AND state = 'running'",
            (until, fill_id, holder),
        )
        return cursor.rowcount == 1

    async def undefer_fills(self, origin: str) -> int:
        cursor = self._db.execute(
            "UPDATE fills SET not_before = NULL WHERE state = 'queued' "
            "AND not_before IS NOT NULL AND key LIKE ? ESCAPE '\\'",
            (like_prefix(origin + "/"),),
        )
        return cursor.rowcount

    async def renew_lease(self, lease: Lease) -> set[int]:
        rows = self._db.execute(
            "UPDATE fills SET lease_until = ? WHERE holder = ? AND state IN ('queued', 'running') "
            "RETURNING id",
            (lease.until, lease.holder),
        ).fetchall()
        return {row[0] for row in rows}

    async def orphaned_fills(self, now: float) -> list[FillRecord]:
        rows = self._db.execute(
            f"SELECT {FILL_COLUMNS} FROM fills WHERE state IN ('queued', 'running') "
            "AND credentialed AND lease_until < ? ORDER BY id",
            (now,),
        ).fetchall()
        return [as_fill(r) for r in rows]

    async def get_fill(self, fill_id: int) -> FillRecord | None:
        row = self._db.execute(f"SELECT {FILL_COLUMNS} FROM fills WHERE id = ?", (fill_id,))
        found = row.fetchone()
        return as_fill(found) if found else None

    async def fill_peer(self, fill_id: int) -> tuple[str, str] | None:
        return None  # one host per SQLite file: no fill runs elsewhere

    async def save_progress(
        self, fill_id: int, bytes_done: int, total: int | None,
        resume: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self._db.execute(
            "UPDATE fills SET bytes_done = ?, total = ?, resume = coalesce(?, resume) WHERE id = ?",
            (bytes_done, total, resume and json.dumps(dict(resume)), fill_id),
        )

    async def reserve_bytes(self, fill_id: int, holder: str, size: int, cap: int) -> bool:
        # One statement: SQLite runs one writer at a time, so no other
        # reservation or commit can slip in between the sum and the update.
        cursor = self._db.execute(
            RESERVE, {"size": size, "id": fill_id, "holder": holder, "cap": cap}
        )
        return cursor.rowcount == 1

    async def reserved_bytes(self) -> int:
        return self._db.execute(RESERVED).fetchone()[0]

    async def finish_fill(
        self, fill_id: int, state: FillState, error: str | None, display_url: str, now: float,
        holder: str | None = None,
    ) -> FillRecord | None:  # fmt: skip
        row = self._db.execute(
            "UPDATE fills SET state = ?, error = ?, url = ?, finished_at = ? "
            "WHERE id = ? AND state IN ('queued', 'running') AND (? IS NULL OR holder = ?) "
            f"RETURNING {FILL_COLUMNS}",
            (state.value, error, display_url, now, fill_id, holder, holder),
        ).fetchone()
        return as_fill(row) if row else None

    async def commit_artifact(
        self, fill: FillRecord, sha256: str, size: int, headers: Mapping[str, str],
        display_url: str, now: float, holder: str, etag: str | None = None,
        location: str | None = None,
    ) -> Artifact | None:  # fmt: skip
        with self._transaction():
            done = self._db.execute(
                "UPDATE fills SET state = 'done', error = NULL, url = ?, finished_at = ?, "
                "bytes_done = ?, total = ? WHERE id = ? AND state = 'running' AND holder = ?",
                (display_url, now, size, size, fill.id, holder),
            )
            if done.rowcount != 1:
                return None
            if location is not None:
                found = self._db.execute(OBJECTS.record, {"sha": sha256, "location": location})
                if found.rowcount != 1:
                    raise StoreError(UPLOAD_ABANDONED)
            miss = await self.delete_miss(fill.key)
            # Hashed as it arrived: the blob counts as checked now.
            cursor = self._db.execute(
                "INSERT INTO artifacts (key, scope, sha256, size, headers, fetched_at, misses, "
                "checked_at, imported, etag) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (key, scope) DO UPDATE SET sha256 = excluded.sha256, "
                "size = excluded.size, headers = excluded.headers, "
                "fetched_at = excluded.fetched_at, misses = misses + excluded.misses, "
                "checked_at = excluded.checked_at, imported = excluded.imported, "
                "etag = excluded.etag, validated_at = NULL, revalidating_until = NULL "
                "RETURNING id",
                (fill.key, fill.scope, sha256, size, json.dumps(dict(headers)), now,
                 miss.count if miss else 0, now, fill.requested_by == IMPORTED, etag),
            )  # fmt: skip
            artifact_id = cursor.fetchone()[0]
            artifact = await self.get_artifact(artifact_id)
            assert artifact is not None
            return artifact

    async def requeue_interrupted(self) -> int:
        with self._transaction():
            cursor = self._db.execute(
                "UPDATE fills SET state = 'queued', started_at = NULL WHERE state = 'running'"
            )
            # This process is the file's only host: whatever a previous one held
            # is free now (a credentialed fill then fails, its credentials gone).
            self._db.execute(
                "UPDATE fills SET holder = NULL, lease_until = NULL WHERE state = 'queued'"
            )
            return cursor.rowcount

    # -- objects of an object store's blobs

    async def note_upload(self, location: str, now: float) -> None:
        self._db.execute(OBJECTS.note, {"location": location, "now": now})

    async def find_blob_object(self, sha256: str) -> str | None:
        row = self._db.execute(OBJECTS.find, {"sha": sha256}).fetchone()
        return row[0] if row else None

    async def abandon_upload(self, location: str) -> bool:
        row = self._db.execute(OBJECTS.abandon_upload, {"location": location}).fetchone()
        return row is not None

    async def abandon_blob(self, sha256: str) -> str | None:
        row = self._db.execute(OBJECTS.abandon_blob, {"sha": sha256}).fetchone()
        return row[0] if row else None

    async def abandoned_uploads(self, started_before: float) -> list[str]:
        rows = self._db.execute(OBJECTS.abandon_stale, {"before": started_before}).fetchall()
        return [row[0] for row in rows]

    async def forget_upload(self, location: str) -> None:
        self._db.execute(OBJECTS.forget, {"location": location})

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

    async def clear_finished_fills(self) -> int:
        with self._transaction():
            self._db.execute(SETTLE_ITEMS)
            cursor = self._db.execute("DELETE FROM fills WHERE state NOT IN ('queued', 'running')")
            return cursor.rowcount

    async def list_fills(
        self, states: Sequence[FillState] = (), offset: int = 0, limit: int = 50
    ) -> Page:
        states = states or list(FillState)
        marks = ",".join("?" * len(states))
        where = f"WHERE state IN ({marks})"
        args = [s.value for s in states]
        # Active fills first, then the most recent. The page's ids are chosen
        # from the (state, id) index alone, so finished fills piling up cost a
        # sort of small keys, not of whole rows (4x faster with 10,000).
        order = "CASE state WHEN 'running' THEN 0 WHEN 'queued' THEN 1 ELSE 2 END, id DESC"
        rows = self._db.execute(
            f"SELECT {FILL_COLUMNS} FROM fills WHERE id IN "
            f"(SELECT id FROM fills {where} ORDER BY {order} LIMIT ? OFFSET ?) ORDER BY {order}",
            (*args, limit, offset),
        ).fetchall()
        total = self._db.execute(f"SELECT count(*) FROM fills {where}", args).fetchone()[0]
        return Page([as_fill(r) for r in rows], total)

    # -- lists

    async def add_list(self, source: str, kind: str, created_by: str | None, now: float) -> int:
        cursor = self._db.execute(
            "INSERT INTO lists (source, kind, created_at, created_by) VALUES (?, ?, ?, ?)",
            (source, kind, now, created_by),
        )
        return cursor.lastrowid or 0

    async def add_list_items(self, list_id: int, items: Sequence[ListItem]) -> None:
        with self._transaction():
            self._db.executemany(
                "INSERT INTO list_items (list_id, line, url, state, fill_id, size, note) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [item_values(list_id, item) for item in items],
            )

    async def get_list(self, list_id: int) -> ListRecord | None:
        row = self._db.execute(
            f"SELECT {LIST_COLUMNS} FROM lists WHERE id = ?", (list_id,)
        ).fetchone()
        return as_list(row) if row else None

    async def list_lists(self, offset: int = 0, limit: int = 50) -> Page:
        rows = self._db.execute(
            f"SELECT {LIST_COLUMNS} FROM lists ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset)
        ).fetchall()
        total = self._db.execute("SELECT count(*) FROM lists").fetchone()[0]
        return Page([as_list(r) for r in rows], total)

    async def tally_list(self, list_id: int) -> ListTally:
        rows = self._db.execute(
            f"SELECT {TALLY_COLUMNS} FROM (SELECT {ITEM_COLUMNS} FROM {ITEMS_JOINED} "
            "WHERE i.list_id = ?) GROUP BY state",
            (list_id,),
        ).fetchall()
        running = self._db.execute(
            "SELECT f.id FROM list_items i JOIN fills f ON f.id = i.fill_id "
            "WHERE i.list_id = ? AND f.state = 'running'",
            (list_id,),
        ).fetchall()
        return tally(rows, [r[0] for r in running])

    async def list_items(
        self, list_id: int, states: Sequence[str] = (), offset: int = 0, limit: int = 50
    ) -> Page:
        where, args = "", []
        if states:
            where, args = f"WHERE state IN ({','.join('?' * len(states))})", list(states)
        inner = f"SELECT {ITEM_COLUMNS} FROM {ITEMS_JOINED} WHERE i.list_id = ?"
        rows = self._db.execute(
            f"SELECT {ITEM_FIELDS} FROM ({inner}) {where} ORDER BY line LIMIT ? OFFSET ?",
            (list_id, *args, limit, offset),
        ).fetchall()
        total = self._db.execute(
            f"SELECT count(*) FROM ({inner}) {where}", (list_id, *args)
        ).fetchone()[0]
        return Page([as_item(r) for r in rows], total)

    # -- events

    async def add_event(
        self, kind: str, url: str | None, actor: str | None, detail: Mapping[str, Any],
        now: float,
    ) -> None:  # fmt: skip
        self._db.execute(
            "INSERT INTO events (at, kind, url, actor, detail) VALUES (?, ?, ?, ?, ?)",
            (now, kind, url, actor, json.dumps(dict(detail))),
        )

    async def list_events(
        self, kind: str = "", search: str = "", offset: int = 0, limit: int = 50
    ) -> Page:
        clauses, args = [], []
        if kind:
            clauses.append("kind = ?")
            args.append(kind)
        if search:
            clauses.append("(url LIKE ? ESCAPE '\\' OR detail LIKE ? ESCAPE '\\')")
            args += [like_pattern(search), like_pattern(search)]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.execute(
            f"SELECT id, at, kind, url, actor, detail FROM events {where} "
            "ORDER BY id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
        total = self._db.execute(f"SELECT count(*) FROM events {where}", args).fetchone()[0]
        return Page([EventRecord(*r[:5], detail=json.loads(r[5])) for r in rows], total)

    async def prune(
        self, now: float, miss_max_age: float, max_misses: int, event_max_age: float,
        max_events: int,
    ) -> None:  # fmt: skip
        with self._transaction():
            self._db.execute("DELETE FROM misses WHERE last_seen < ?", (now - miss_max_age,))
            self._db.execute(
                "DELETE FROM misses WHERE key IN (SELECT key FROM misses "
                "ORDER BY last_seen DESC LIMIT -1 OFFSET ?)",
                (max_misses,),
            )
            self._db.execute("DELETE FROM events WHERE at < ?", (now - event_max_age,))
            gone = self._db.execute(
                "DELETE FROM lists WHERE created_at < ? OR id <= (SELECT id FROM lists "
                "ORDER BY id DESC LIMIT 1 OFFSET ?) RETURNING id",
                (now - event_max_age, MAX_LISTS),
            ).fetchall()
            self._db.executemany("DELETE FROM list_items WHERE list_id = ?", gone)
            self._db.execute(SETTLE_ITEMS)
            self._db.execute(
                "DELETE FROM events WHERE id <= (SELECT id FROM events "
                "ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (max_events,),
            )
            self._db.execute(
                "DELETE FROM fills WHERE finished_at < ? AND state NOT IN ('queued', 'running')",
                (now - event_max_age,),
            )
            self._db.execute(
                "DELETE FROM fills WHERE id IN (SELECT id FROM fills "
                "WHERE state NOT IN ('queued', 'running') ORDER BY id DESC LIMIT -1 OFFSET ?)",
                (max_events,),
            )
        self._give_back()

    def _give_back(self) -> None:
        """Hand freed pages back to the file system, the WAL's too."""
        # executescript steps the pragma to its end (execute would free one page).
        self._db.executescript("PRAGMA incremental_vacuum;")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- API tokens

    async def add_token(
        self, name: str, scope: TokenScope, digest: str, created_by: str | None, now: float
    ) -> TokenRecord | None:
        row = self._db.execute(
            "INSERT INTO tokens (name, scope, digest, created_at, created_by) "
            f"VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING RETURNING {TOKEN_COLUMNS}",
            (name, scope.value, digest, now, created_by),
        ).fetchone()
        return as_token(row) if row else None

    async def find_token(self, digest: str) -> TokenRecord | None:
        row = self._db.execute(
            f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE digest = ?", (digest,)
        ).fetchone()
        return as_token(row) if row else None

    async def list_tokens(self) -> list[TokenRecord]:
        rows = self._db.execute(f"SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY name").fetchall()
        return [as_token(r) for r in rows]

    async def delete_token(self, name: str) -> TokenRecord | None:
        row = self._db.execute(
            f"DELETE FROM tokens WHERE name = ? RETURNING {TOKEN_COLUMNS}", (name,)
        ).fetchone()
        return as_token(row) if row else None

    async def token_used(self, token_id: int, now: float) -> None:
        self._db.execute("UPDATE tokens SET last_used = ? WHERE id = ?", (now, token_id))

    # -- operator sessions

    async def end_session(self, nonce: str, expires: float) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO ended_sessions (nonce, expires) VALUES (?, ?)", (nonce, expires)
        )

    async def session_ended(self, nonce: str) -> bool:
        row = self._db.execute("SELECT 1 FROM ended_sessions WHERE nonce = ?", (nonce,))
        return row.fetchone() is not None

    async def prune_sessions(self, now: float, keep: int) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM ended_sessions WHERE expires <= ?", (now,))
            self._db.execute(
                "DELETE FROM ended_sessions WHERE nonce IN (SELECT nonce FROM ended_sessions "
                "ORDER BY expires DESC LIMIT -1 OFFSET ?)",
                (keep,),
            )


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
