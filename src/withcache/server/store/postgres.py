"""Metadata in PostgreSQL, shared by several cache-hosts (the scale-out store).

The same tables and meaning as store.sqlite: totals kept by triggers, one
active fill per (key, scope) by a partial unique index, the same retention.
What sharing adds: the schema is migrated under an advisory lock, so hosts
starting together don't race; fills are claimed with `FOR UPDATE SKIP
LOCKED` under a lease that their host renews; blob commits and deletes take
an advisory lock per blob, so they exclude each other across hosts.

Imported only when `--metadata postgresql://…` is given (psycopg is in the
`scale` extra); connections come from a small pool, each statement on its own
unless it is one of the transactions below.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import conninfo
from psycopg_pool import AsyncConnectionPool

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
from withcache.server.store import MAX_LISTS, ChangeListener, Lease, StoreError, changes
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

# Advisory lock keys: one bigint for migrations; (class, blob) int pairs for
# blobs (the two forms never collide).
MIGRATION_LOCK = 0x77C_5C4E_0001
BLOB_LOCK_CLASS = 0x77C5
KEY_LOCK_CLASS = 0x77C6  # a key's commit against a miss's enqueue (hashed: may be shared)
POOL_SIZE = 10
CONNECT_SECONDS = 10

# Each entry upgrades the schema by one version (table withcache_schema).
MIGRATIONS = [
    """
    CREATE TABLE secrets (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
    CREATE TABLE artifacts (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        key TEXT NOT NULL,
        scope TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size BIGINT NOT NULL,
        headers TEXT NOT NULL,
        fetched_at DOUBLE PRECISION NOT NULL,
        hits BIGINT NOT NULL DEFAULT 0,
        misses BIGINT NOT NULL DEFAULT 0,
        last_hit DOUBLE PRECISION,
        UNIQUE (key, scope)
    );
    CREATE INDEX artifacts_sha256 ON artifacts (sha256);
    CREATE INDEX artifacts_fetched_at ON artifacts (fetched_at);
    CREATE TABLE misses (
        key TEXT PRIMARY KEY,
        url TEXT,
        count BIGINT NOT NULL,
        first_seen DOUBLE PRECISION NOT NULL,
        last_seen DOUBLE PRECISION NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX misses_last_seen ON misses (last_seen);
    CREATE TABLE fills (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        key TEXT NOT NULL,
        scope TEXT NOT NULL,
        url TEXT NOT NULL,
        state TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        expected_sha256 TEXT,
        credentialed BOOLEAN NOT NULL DEFAULT false,
        bytes_done BIGINT NOT NULL DEFAULT 0,
        total BIGINT,
        error TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        holder TEXT,
        lease_until DOUBLE PRECISION
    );
    CREATE UNIQUE INDEX fills_one_active ON fills (key, scope)
        WHERE state IN ('queued', 'running');
    CREATE INDEX fills_state ON fills (state, id);
    CREATE INDEX fills_finished_at ON fills (finished_at);
    CREATE INDEX fills_holder ON fills (holder) WHERE state IN ('queued', 'running');
    CREATE TABLE events (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL,
        url TEXT,
        actor TEXT,
        detail TEXT NOT NULL
    );
    CREATE INDEX events_at ON events (at);
    -- API tokens: only the SHA-256 of each token is kept.
    CREATE TABLE tokens (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        scope TEXT NOT NULL,
        digest TEXT NOT NULL UNIQUE,
        created_at DOUBLE PRECISION NOT NULL,
        last_used DOUBLE PRECISION,
        created_by TEXT
    );
    -- Totals kept by triggers, so the header strip, /healthz and the cap
    -- check cost one row read instead of a scan of every artifact.
    CREATE TABLE blob_refs (
        sha256 TEXT PRIMARY KEY,
        size BIGINT NOT NULL,
        refs BIGINT NOT NULL
    );
    CREATE TABLE totals (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        artifacts BIGINT NOT NULL,
        bytes BIGINT NOT NULL
    );
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
    # Bytes promised to running fills under --max-bytes; where an interrupted
    # fill resumes from; when each blob was last re-hashed (the scrub's order).
    """
    ALTER TABLE fills ADD COLUMN reserved BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE fills ADD COLUMN resume TEXT;
    ALTER TABLE artifacts ADD COLUMN checked_at DOUBLE PRECISION NOT NULL DEFAULT 0;
    CREATE INDEX artifacts_checked_at ON artifacts (checked_at);
    """,
    # Pre-seeded and air-gapped labs: a fill's expected digest names its
    # algorithm; imported artifacts say so; lists group the fills added together.
    """
    ALTER TABLE fills RENAME COLUMN expected_sha256 TO expected_digest;
    UPDATE fills SET expected_digest = 'sha256:' || lower(expected_digest)
        WHERE expected_digest IS NOT NULL;
    ALTER TABLE artifacts ADD COLUMN imported BOOLEAN NOT NULL DEFAULT false;
    CREATE TABLE lists (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        source TEXT NOT NULL,
        kind TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        created_by TEXT
    );
    CREATE INDEX lists_created_at ON lists (created_at);
    CREATE TABLE list_items (
        list_id BIGINT NOT NULL,
        line INTEGER NOT NULL,
        url TEXT NOT NULL,
        state TEXT NOT NULL,
        fill_id BIGINT,
        size BIGINT,
        note TEXT,
        PRIMARY KEY (list_id, line)
    );
    CREATE INDEX list_items_fill ON list_items (fill_id) WHERE fill_id IS NOT NULL;
    """,
    # Mutable URLs and a full cache: pins, when the origin last vouched for an
    # artifact's bytes and who is asking it now, the origin's ETag to ask
    # with, eviction's order; when a fill for an unhealthy origin may run.
    """
    ALTER TABLE artifacts ADD COLUMN pinned BOOLEAN NOT NULL DEFAULT false;
    ALTER TABLE artifacts ADD COLUMN validated_at DOUBLE PRECISION;
    ALTER TABLE artifacts ADD COLUMN revalidating_until DOUBLE PRECISION;
    ALTER TABLE artifacts ADD COLUMN etag TEXT;
    ALTER TABLE fills ADD COLUMN not_before DOUBLE PRECISION;
    CREATE INDEX artifacts_last_used ON artifacts (pinned, (coalesce(last_hit, fetched_at)), id);
    """,
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
    # Operator sessions ended (logged out) before their cookie expires, on any host.
    """
    CREATE TABLE ended_sessions (nonce TEXT PRIMARY KEY, expires DOUBLE PRECISION NOT NULL);
    CREATE INDEX ended_sessions_expires ON ended_sessions (expires);
    """,
    BLOB_OBJECTS_TABLE,
    # Where the host running a fill serves its bytes to the other hosts (fill/peers.py).
    "ALTER TABLE fills ADD COLUMN peer_url TEXT;",
]

_MISS_COLUMNS = "key, url, count, first_seen, last_seen, reason"
RESERVE = reserve_sql("%({})s")
OBJECTS = BlobObjectStatements("%({})s")
ACTIVE = "state IN ('queued', 'running')"
KEY_LOCK = "SELECT pg_advisory_xact_lock(%s, hashtext(%s))"
QUEUE_FILL = (
    "INSERT INTO fills (key, scope, url, state, requested_by, expected_digest, credentialed, "
    "created_at, started_at, holder, lease_until) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    f"ON CONFLICT (key, scope) WHERE {ACTIVE} DO NOTHING RETURNING {FILL_COLUMNS}"
)
FIND_STORED = (
    f"SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE key = %s AND scope = ANY(%s) "
    "ORDER BY scope DESC, id DESC LIMIT 1"
)


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


class PostgresMetadata:
    """The Metadata interface over a PostgreSQL database."""

    shared = True
    # Disk full, server gone, pool exhausted: psycopg's OperationalError family.
    unavailable = (psycopg.OperationalError,)

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

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

    async def _one(self, sql: str, args: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
        async with self._pool.connection() as conn:
            return await (await conn.execute(sql, args)).fetchone()

    async def _all(self, sql: str, args: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        async with self._pool.connection() as conn:
            return await (await conn.execute(sql, args)).fetchall()

    async def _run(self, sql: str, args: Sequence[Any] | Mapping[str, Any] = ()) -> int:
        async with self._pool.connection() as conn:
            return (await conn.execute(sql, args)).rowcount

    async def close(self) -> None:
        await self._pool.close()

    async def follow_changes(self, listener: ChangeListener) -> None:
        await changes.follow(self._pool.conninfo, listener)

    async def secret(self, name: str) -> bytes:
        await self._run(
            "INSERT INTO secrets (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
            (name, secrets.token_bytes(32)),
        )
        return bytes((await self._one("SELECT value FROM secrets WHERE name = %s", (name,)))[0])

    # -- artifacts

    async def find_artifact(self, key: str, scopes: Sequence[str]) -> Artifact | None:
        return await self._find_artifact("key", key, scopes)

    async def find_artifact_by_sha256(self, sha256: str, scopes: Sequence[str]) -> Artifact | None:
        return await self._find_artifact("sha256", sha256, scopes)

    async def _find_artifact(
        self, column: str, value: str, scopes: Sequence[str]
    ) -> Artifact | None:
        """The artifact whose `column` is `value` in the first of `scopes` that has one."""
        row = await self._one(
            f"SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE {column} = %s AND scope = ANY(%s) "
            "ORDER BY scope DESC, id DESC LIMIT 1",
            (value, list(scopes)),
        )
        return as_artifact(row) if row else None

    async def get_artifact(self, artifact_id: int) -> Artifact | None:
        row = await self._one(
            f"SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE id = %s", (artifact_id,)
        )
        return as_artifact(row) if row else None

    async def add_hits(self, counts: Mapping[int, tuple[int, float]]) -> None:
        async with self._pool.connection() as conn, conn.cursor() as cursor:
            await cursor.executemany(
                "UPDATE artifacts SET hits = hits + %s, "
                "last_hit = GREATEST(coalesce(last_hit, 0), %s) WHERE id = %s",
                [(n, last, artifact_id) for artifact_id, (n, last) in sorted(counts.items())],
            )

    async def find_artifacts(self, key: str) -> list[Artifact]:
        rows = await self._all(
            f"SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE key = %s ORDER BY id", (key,)
        )
        return [as_artifact(r) for r in rows]

    async def delete_artifact(self, artifact_id: int, unpinned: bool = False) -> Artifact | None:
        row = await self._one(
            f"DELETE FROM artifacts WHERE id = %s AND NOT (%s AND pinned) "
            f"RETURNING {ARTIFACT_COLUMNS}",
            (artifact_id, unpinned),
        )
        return as_artifact(row) if row else None

    async def sha_in_use(self, sha256: str) -> bool:
        return await self._one("SELECT 1 FROM blob_refs WHERE sha256 = %s", (sha256,)) is not None

    async def totals(self) -> tuple[int, int]:
        row = await self._one("SELECT artifacts, bytes FROM totals")
        return row[0], row[1]

    async def blobs_to_check(self, before: float, limit: int) -> list[tuple[str, int]]:
        rows = await self._all(
            "SELECT sha256, max(size) FROM artifacts WHERE checked_at < %s "
            "GROUP BY sha256 ORDER BY min(checked_at), sha256 LIMIT %s",
            (before, limit),
        )
        return [(row[0], row[1]) for row in rows]

    async def unchecked_totals(self, before: float) -> tuple[int, int]:
        row = await self._one(
            "SELECT count(*), coalesce(sum(size), 0) FROM "
            "(SELECT max(size) AS size FROM artifacts WHERE checked_at < %s GROUP BY sha256) b",
            (before,),
        )
        return row[0], int(row[1])

    async def mark_checked(
        self, sha256: str, now: float, unless_since: float | None = None
    ) -> bool:
        marked = await self._run(
            "UPDATE artifacts SET checked_at = %(now)s WHERE sha256 = %(sha)s "
            "AND (%(since)s::float8 IS NULL OR checked_at < %(since)s)",
            {"now": now, "sha": sha256, "since": unless_since},
        )
        return marked > 0

    async def list_artifacts(
        self, search: str = "", sort: str = "fetched_at", descending: bool = True,
        offset: int = 0, limit: int = 50, pinned: bool = False,
    ) -> Page:  # fmt: skip
        if sort not in ARTIFACT_SORTS:
            raise ValueError(f"cannot sort by {sort!r}")
        clauses, args = [], []
        if search:
            clauses.append("(key LIKE %s ESCAPE '\\' OR sha256 = %s)")
            args += [like_pattern(search), search]
        if pinned:
            clauses.append("pinned")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        nulls = "NULLS LAST" if descending else "NULLS FIRST"  # where SQLite puts them
        order = f"{sort} {'DESC' if descending else 'ASC'} {nulls}, id DESC"
        rows = await self._all(
            f"SELECT {ARTIFACT_COLUMNS} FROM artifacts {where} ORDER BY {order} LIMIT %s OFFSET %s",
            (*args, limit, offset),
        )
        total = (await self._one(f"SELECT count(*) FROM artifacts {where}", args))[0]
        return Page([as_artifact(r) for r in rows], total)

    async def set_pinned(self, artifact_id: int, pinned: bool) -> Artifact | None:
        row = await self._one(
            f"UPDATE artifacts SET pinned = %s WHERE id = %s RETURNING {ARTIFACT_COLUMNS}",
            (pinned, artifact_id),
        )
        return as_artifact(row) if row else None

    async def eviction_candidates(
        self, limit: int, used_before: float | None = None
    ) -> list[EvictionCandidate]:
        rows = await self._all(
            f"SELECT {CANDIDATE_COLUMNS} FROM {CANDIDATES} "
            f"AND (%(before)s::float8 IS NULL OR {LAST_USED} < %(before)s) "
            f"{CANDIDATE_ORDER} LIMIT %(limit)s",
            {"before": used_before, "limit": limit},
        )
        return [as_candidate(r) for r in rows]

    async def claim_revalidation(self, artifact_id: int, now: float, until: float) -> bool:
        # One statement: the row lock makes hosts racing for it take turns.
        claimed = await self._run(
            "UPDATE artifacts SET revalidating_until = %s WHERE id = %s "
            "AND coalesce(revalidating_until, 0) < %s",
            (until, artifact_id, now),
        )
        return claimed == 1

    async def end_revalidation(self, artifact_id: int, validated_at: float | None) -> None:
        await self._run(
            "UPDATE artifacts SET revalidating_until = NULL, "
            "validated_at = coalesce(%s, validated_at) WHERE id = %s",
            (validated_at, artifact_id),
        )

    # -- misses

    async def record_miss(self, key: str, url: str | None, reason: str, now: float) -> None:
        await self._run(
            f"INSERT INTO misses ({_MISS_COLUMNS}) VALUES (%s, %s, 1, %s, %s, %s) "
            "ON CONFLICT (key) DO UPDATE SET url = excluded.url, count = misses.count + 1, "
            "last_seen = excluded.last_seen, reason = excluded.reason",
            (miss_key(key), url, now, now, reason),
        )

    async def set_miss_reason(self, key: str, reason: str) -> None:
        await self._run("UPDATE misses SET reason = %s WHERE key = %s", (reason, miss_key(key)))

    async def get_miss(self, key: str) -> Miss | None:
        row = await self._one(
            f"SELECT {_MISS_COLUMNS} FROM misses WHERE key = %s", (miss_key(key),)
        )
        return Miss(*row) if row else None

    async def delete_miss(self, key: str) -> Miss | None:
        row = await self._one(
            f"DELETE FROM misses WHERE key = %s RETURNING {_MISS_COLUMNS}", (miss_key(key),)
        )
        return Miss(*row) if row else None

    async def list_misses(self, search: str = "", offset: int = 0, limit: int = 50) -> Page:
        where, args = ("", [])
        if search:
            where, args = "WHERE key LIKE %s ESCAPE '\\'", [like_pattern(search)]
        rows = await self._all(
            f"SELECT {_MISS_COLUMNS} FROM misses {where} "
            "ORDER BY last_seen DESC LIMIT %s OFFSET %s",
            (*args, limit, offset),
        )
        total = (await self._one(f"SELECT count(*) FROM misses {where}", args))[0]
        return Page([Miss(*r) for r in rows], total)

    async def count_misses(self, reason: str) -> int:
        return (await self._one("SELECT count(*) FROM misses WHERE reason = %s", (reason,)))[0]

    # -- fills

    async def enqueue_fill(
        self, key: str, scope: str, url: str, requested_by: str, now: float,
        expected: Digest | None = None, credentialed: bool = False,
        lease: Lease | None = None, start: bool = False, unless_stored: Sequence[str] = (),
    ) -> tuple[FillRecord | Artifact, bool]:  # fmt: skip
        values = (key, scope, url, "running" if start else "queued", requested_by,
                  expected and str(expected), credentialed, now, now if start else None,
                  lease and lease.holder, lease and lease.until)  # fmt: skip
        # Another host may queue the same fill at the same moment: the unique
        # index lets one insert win, and the other then reads the winner's row.
        for _ in range(3):
            async with self._pool.connection() as conn, conn.transaction():
                if unless_stored:
                    # The key's lock, which commit_artifact takes too: a commit
                    # on any host is wholly before this look, or after this queues or joins.
                    await conn.execute(KEY_LOCK, (KEY_LOCK_CLASS, key))
                    found = await (
                        await conn.execute(FIND_STORED, (key, list(unless_stored)))
                    ).fetchone()
                    if found:
                        return as_artifact(found), False
                row = await (await conn.execute(QUEUE_FILL, values)).fetchone()
                if row:
                    return as_fill(row), True
                row = await (
                    await conn.execute(
                        f"SELECT {FILL_COLUMNS} FROM fills WHERE key = %s AND scope = %s "
                        f"AND {ACTIVE}",
                        (key, scope),
                    )
                ).fetchone()
                if row:
                    return as_fill(row), False
        raise StoreError("could not queue the fill: it kept ending as it was queued")

    async def claim_fill(
        self, now: float, lease: Lease, fill_id: int | None = None
    ) -> FillRecord | None:
        row = await self._one(
            "UPDATE fills SET state = 'running', started_at = %(now)s, bytes_done = 0, "
            "total = NULL, reserved = 0, holder = %(holder)s, lease_until = %(until)s, "
            "peer_url = %(peer)s WHERE id = (SELECT id FROM fills WHERE "
            "((state = 'queued' AND (holder IS NULL OR holder = %(holder)s) "
            "AND (not_before IS NULL OR not_before <= %(now)s)) OR "
            "(state = 'running' AND lease_until < %(now)s AND NOT credentialed "
            "AND holder <> %(holder)s)) "
            "AND (%(id)s::bigint IS NULL OR id = %(id)s) "
            "ORDER BY requested_by <> 'operator', id LIMIT 1 FOR UPDATE SKIP LOCKED) "
            f"RETURNING {FILL_COLUMNS}",
            {"now": now, "holder": lease.holder, "until": lease.until, "id": fill_id,
             "peer": lease.peer_url},
        )  # fmt: skip
        return as_fill(row) if row else None

    async def defer_fill(self, fill_id: int, holder: str, until: float) -> bool:
        deferred = await self._run(
            f"UPDATE fills SET {DEFER.format('%s')} "
            "WHERE id = %s AND holder = %s AND state = 'running'",
            (until, fill_id, holder),
        )
        return deferred == 1

    async def undefer_fills(self, origin: str) -> int:
        return await self._run(
            "UPDATE fills SET not_before = NULL WHERE state = 'queued' "
            "AND not_before IS NOT NULL AND key LIKE %s ESCAPE '\\'",
            (like_prefix(origin + "/"),),
        )

    async def renew_lease(self, lease: Lease) -> set[int]:
        rows = await self._all(
            f"UPDATE fills SET lease_until = %s WHERE holder = %s AND {ACTIVE} RETURNING id",
            (lease.until, lease.holder),
        )
        return {row[0] for row in rows}

    async def orphaned_fills(self, now: float) -> list[FillRecord]:
        rows = await self._all(
            f"SELECT {FILL_COLUMNS} FROM fills WHERE {ACTIVE} AND credentialed "
            "AND lease_until < %s ORDER BY id",
            (now,),
        )
        return [as_fill(r) for r in rows]

    async def get_fill(self, fill_id: int) -> FillRecord | None:
        row = await self._one(f"SELECT {FILL_COLUMNS} FROM fills WHERE id = %s", (fill_id,))
        return as_fill(row) if row else None

    async def fill_peer(self, fill_id: int) -> tuple[str, str] | None:
        row = await self._one(
            "SELECT holder, peer_url FROM fills WHERE id = %s AND state = 'running' "
            "AND peer_url IS NOT NULL",
            (fill_id,),
        )
        return (row[0], row[1]) if row else None

    async def save_progress(
        self, fill_id: int, bytes_done: int, total: int | None,
        resume: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        await self._run(
            "UPDATE fills SET bytes_done = %s, total = %s, resume = coalesce(%s, resume) "
            "WHERE id = %s",
            (bytes_done, total, resume and json.dumps(dict(resume)), fill_id),
        )

    async def reserve_bytes(self, fill_id: int, holder: str, size: int, cap: int) -> bool:
        async with self._pool.connection() as conn, conn.transaction():
            # The totals row is the one lock every reservation and every commit
            # (its trigger) takes: reservations across hosts happen one at a time.
            await conn.execute("SELECT bytes FROM totals FOR UPDATE")
            done = await conn.execute(
                RESERVE, {"size": size, "id": fill_id, "holder": holder, "cap": cap}
            )
            return done.rowcount == 1

    async def reserved_bytes(self) -> int:
        return int((await self._one(RESERVED))[0])

    async def finish_fill(
        self, fill_id: int, state: FillState, error: str | None, display_url: str, now: float,
        holder: str | None = None,
    ) -> FillRecord | None:  # fmt: skip
        row = await self._one(
            "UPDATE fills SET state = %(state)s, error = %(error)s, url = %(url)s, "
            f"finished_at = %(now)s WHERE id = %(id)s AND {ACTIVE} "
            "AND (%(holder)s::text IS NULL OR holder = %(holder)s) "
            f"RETURNING {FILL_COLUMNS}",
            {"state": state.value, "error": error, "url": display_url, "now": now,
             "id": fill_id, "holder": holder},
        )  # fmt: skip
        return as_fill(row) if row else None

    async def commit_artifact(
        self, fill: FillRecord, sha256: str, size: int, headers: Mapping[str, str],
        display_url: str, now: float, holder: str, etag: str | None = None,
        location: str | None = None,
    ) -> Artifact | None:  # fmt: skip
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(KEY_LOCK, (KEY_LOCK_CLASS, fill.key))  # see enqueue_fill
            done = await conn.execute(
                "UPDATE fills SET state = 'done', error = NULL, url = %s, finished_at = %s, "
                "bytes_done = %s, total = %s WHERE id = %s AND state = 'running' AND holder = %s",
                (display_url, now, size, size, fill.id, holder),
            )
            if done.rowcount != 1:
                return None
            if location is not None:
                found = await conn.execute(OBJECTS.record, {"sha": sha256, "location": location})
                if found.rowcount != 1:
                    raise StoreError(UPLOAD_ABANDONED)
            miss = await (
                await conn.execute(
                    "DELETE FROM misses WHERE key = %s RETURNING count", (miss_key(fill.key),)
                )
            ).fetchone()
            values = (
                fill.key, fill.scope, sha256, size, json.dumps(dict(headers)), now,
                miss[0] if miss else 0, now, fill.requested_by == IMPORTED, etag,
            )  # fmt: skip
            # Hashed as it arrived: the blob counts as checked now.
            row = await (
                await conn.execute(
                    "INSERT INTO artifacts (key, scope, sha256, size, headers, fetched_at, misses, "
                    "checked_at, imported, etag) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (key, scope) DO UPDATE SET sha256 = excluded.sha256, "
                    "size = excluded.size, headers = excluded.headers, "
                    "fetched_at = excluded.fetched_at, checked_at = excluded.checked_at, "
                    "misses = artifacts.misses + excluded.misses, imported = excluded.imported, "
                    "etag = excluded.etag, validated_at = NULL, revalidating_until = NULL "
                    f"RETURNING {ARTIFACT_COLUMNS}",
                    values,
                )
            ).fetchone()
            return as_artifact(row)

    async def requeue_interrupted(self) -> int:
        return 0  # other hosts' fills are running: leases decide what moves on

    # -- objects of an object store's blobs

    async def note_upload(self, location: str, now: float) -> None:
        await self._run(OBJECTS.note, {"location": location, "now": now})

    async def find_blob_object(self, sha256: str) -> str | None:
        row = await self._one(OBJECTS.find, {"sha": sha256})
        return row[0] if row else None

    async def abandon_upload(self, location: str) -> bool:
        return await self._one(OBJECTS.abandon_upload, {"location": location}) is not None

    async def abandon_blob(self, sha256: str) -> str | None:
        row = await self._one(OBJECTS.abandon_blob, {"sha": sha256})
        return row[0] if row else None

    async def abandoned_uploads(self, started_before: float) -> list[str]:
        rows = await self._all(OBJECTS.abandon_stale, {"before": started_before})
        return [row[0] for row in rows]

    async def forget_upload(self, location: str) -> None:
        await self._run(OBJECTS.forget, {"location": location})

    @asynccontextmanager
    async def blob_lock(self, sha256: str) -> AsyncIterator[None]:
        blob = int(sha256[:8], 16) - (1 << 31)  # int4 range
        async with self._pool.connection() as conn:
            await conn.execute("SELECT pg_advisory_lock(%s, %s)", (BLOB_LOCK_CLASS, blob))
            try:
                yield
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (BLOB_LOCK_CLASS, blob))

    async def clear_finished_fills(self) -> int:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(SETTLE_ITEMS)
            return (await conn.execute(f"DELETE FROM fills WHERE NOT {ACTIVE}")).rowcount

    async def list_fills(
        self, states: Sequence[FillState] = (), offset: int = 0, limit: int = 50
    ) -> Page:
        wanted = [s.value for s in (states or list(FillState))]
        order = "CASE state WHEN 'running' THEN 0 WHEN 'queued' THEN 1 ELSE 2 END, id DESC"
        rows = await self._all(
            f"SELECT {FILL_COLUMNS} FROM fills WHERE state = ANY(%s) "
            f"ORDER BY {order} LIMIT %s OFFSET %s",
            (wanted, limit, offset),
        )
        total = (await self._one("SELECT count(*) FROM fills WHERE state = ANY(%s)", (wanted,)))[0]
        return Page([as_fill(r) for r in rows], total)

    # -- lists

    async def add_list(self, source: str, kind: str, created_by: str | None, now: float) -> int:
        row = await self._one(
            "INSERT INTO lists (source, kind, created_at, created_by) VALUES (%s, %s, %s, %s) "
            "RETURNING id",
            (source, kind, now, created_by),
        )
        return row[0]

    async def add_list_items(self, list_id: int, items: Sequence[ListItem]) -> None:
        async with self._pool.connection() as conn, conn.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO list_items (list_id, line, url, state, fill_id, size, note) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [item_values(list_id, item) for item in items],
            )

    async def get_list(self, list_id: int) -> ListRecord | None:
        row = await self._one(f"SELECT {LIST_COLUMNS} FROM lists WHERE id = %s", (list_id,))
        return as_list(row) if row else None

    async def list_lists(self, offset: int = 0, limit: int = 50) -> Page:
        rows = await self._all(
            f"SELECT {LIST_COLUMNS} FROM lists ORDER BY id DESC LIMIT %s OFFSET %s",
            (limit, offset),
        )
        total = (await self._one("SELECT count(*) FROM lists"))[0]
        return Page([as_list(r) for r in rows], total)

    async def tally_list(self, list_id: int) -> ListTally:
        rows = await self._all(
            f"SELECT {TALLY_COLUMNS} FROM (SELECT {ITEM_COLUMNS} FROM {ITEMS_JOINED} "
            "WHERE i.list_id = %s) AS items GROUP BY state",
            (list_id,),
        )
        running = await self._all(
            "SELECT f.id FROM list_items i JOIN fills f ON f.id = i.fill_id "
            "WHERE i.list_id = %s AND f.state = 'running'",
            (list_id,),
        )
        return tally(rows, [r[0] for r in running])

    async def list_items(
        self, list_id: int, states: Sequence[str] = (), offset: int = 0, limit: int = 50
    ) -> Page:
        wanted = list(states) or None
        inner = (
            f"SELECT {ITEM_FIELDS} FROM (SELECT {ITEM_COLUMNS} FROM {ITEMS_JOINED} "
            "WHERE i.list_id = %(id)s) AS items "
            "WHERE (%(states)s::text[] IS NULL OR state = ANY(%(states)s))"
        )
        args = {"id": list_id, "states": wanted, "limit": limit, "offset": offset}
        rows = await self._all(f"{inner} ORDER BY line LIMIT %(limit)s OFFSET %(offset)s", args)
        total = (await self._one(f"SELECT count(*) FROM ({inner}) AS found", args))[0]
        return Page([as_item(r) for r in rows], total)

    # -- events

    async def add_event(
        self, kind: str, url: str | None, actor: str | None, detail: Mapping[str, Any],
        now: float,
    ) -> None:  # fmt: skip
        await self._run(
            "INSERT INTO events (at, kind, url, actor, detail) VALUES (%s, %s, %s, %s, %s)",
            (now, kind, url, actor, json.dumps(dict(detail))),
        )

    async def list_events(
        self, kind: str = "", search: str = "", offset: int = 0, limit: int = 50
    ) -> Page:
        clauses: list[str] = []
        args: list[Any] = []
        if kind:
            clauses.append("kind = %s")
            args.append(kind)
        if search:
            clauses.append("(url LIKE %s ESCAPE '\\' OR detail LIKE %s ESCAPE '\\')")
            args += [like_pattern(search), like_pattern(search)]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._all(
            f"SELECT id, at, kind, url, actor, detail FROM events {where} "
            "ORDER BY id DESC LIMIT %s OFFSET %s",
            (*args, limit, offset),
        )
        total = (await self._one(f"SELECT count(*) FROM events {where}", args))[0]
        return Page([EventRecord(*r[:5], detail=json.loads(r[5])) for r in rows], total)

    async def prune(
        self, now: float, miss_max_age: float, max_misses: int, event_max_age: float,
        max_events: int,
    ) -> None:  # fmt: skip
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("DELETE FROM misses WHERE last_seen < %s", (now - miss_max_age,))
            await conn.execute(
                "DELETE FROM misses WHERE key IN "
                "(SELECT key FROM misses ORDER BY last_seen DESC OFFSET %s)",
                (max_misses,),
            )
            await conn.execute("DELETE FROM events WHERE at < %s", (now - event_max_age,))
            await conn.execute(
                "WITH gone AS (DELETE FROM lists WHERE created_at < %s OR id <= (SELECT id "
                "FROM lists ORDER BY id DESC LIMIT 1 OFFSET %s) RETURNING id) "
                "DELETE FROM list_items WHERE list_id IN (SELECT id FROM gone)",
                (now - event_max_age, MAX_LISTS),
            )
            await conn.execute(SETTLE_ITEMS)
            await conn.execute(
                "DELETE FROM events WHERE id <= "
                "(SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET %s)",
                (max_events,),
            )
            await conn.execute(
                f"DELETE FROM fills WHERE finished_at < %s AND NOT {ACTIVE}",
                (now - event_max_age,),
            )
            await conn.execute(
                "DELETE FROM fills WHERE id IN (SELECT id FROM fills "
                f"WHERE NOT {ACTIVE} ORDER BY id DESC OFFSET %s)",
                (max_events,),
            )

    # -- API tokens

    async def add_token(
        self, name: str, scope: TokenScope, digest: str, created_by: str | None, now: float
    ) -> TokenRecord | None:
        row = await self._one(
            "INSERT INTO tokens (name, scope, digest, created_at, created_by) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING "
            f"RETURNING {TOKEN_COLUMNS}",
            (name, scope.value, digest, now, created_by),
        )
        return as_token(row) if row else None

    async def find_token(self, digest: str) -> TokenRecord | None:
        row = await self._one(f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE digest = %s", (digest,))
        return as_token(row) if row else None

    async def list_tokens(self) -> list[TokenRecord]:
        rows = await self._all(f"SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY name")
        return [as_token(r) for r in rows]

    async def delete_token(self, name: str) -> TokenRecord | None:
        row = await self._one(
            f"DELETE FROM tokens WHERE name = %s RETURNING {TOKEN_COLUMNS}", (name,)
        )
        return as_token(row) if row else None

    async def token_used(self, token_id: int, now: float) -> None:
        await self._run("UPDATE tokens SET last_used = %s WHERE id = %s", (now, token_id))

    # -- operator sessions

    async def end_session(self, nonce: str, expires: float) -> None:
        await self._run(
            "INSERT INTO ended_sessions (nonce, expires) VALUES (%s, %s) "
            "ON CONFLICT (nonce) DO NOTHING",
            (nonce, expires),
        )

    async def session_ended(self, nonce: str) -> bool:
        found = await self._one("SELECT 1 FROM ended_sessions WHERE nonce = %s", (nonce,))
        return found is not None

    async def prune_sessions(self, now: float, keep: int) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("DELETE FROM ended_sessions WHERE expires <= %s", (now,))
            await conn.execute(
                "DELETE FROM ended_sessions WHERE nonce IN (SELECT nonce FROM ended_sessions "
                "ORDER BY expires DESC OFFSET %s)",
                (keep,),
            )
