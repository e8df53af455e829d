"""The Metadata both SQL stores share: every query that means the same on
SQLite and PostgreSQL, written once, and run by each store through its own
connections (store.sqlite: the one connection on the event loop's thread;
store.postgres: a pool). What differs for real stays with each store: how a
transaction keeps other writers out (SQLite has one writer; PostgreSQL takes
advisory and row locks), blob locks, fills interrupted at start, start-up and
the schema's first versions.

Queries are written as sqlite3 takes them, `?` and `:name` for parameters;
PostgreSQL's store hands psycopg the same text marked its way (`for_psycopg`).
Where the two SQL dialects part, the text asks its `Dialect`. The same tables
(rows.py's columns) make the same records on both.
"""

from __future__ import annotations

import json
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

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
from withcache.server.store import MAX_LISTS, Lease, StoreError
from withcache.server.store.rows import (
    ARTIFACT_COLUMNS,
    ARTIFACT_SORTS,
    FILL_COLUMNS,
    ITEM_COLUMNS,
    ITEM_FIELDS,
    ITEMS_JOINED,
    LIST_COLUMNS,
    TALLY_COLUMNS,
    TOKEN_COLUMNS,
    as_artifact,
    as_candidate,
    as_fill,
    as_item,
    as_list,
    as_token,
    item_values,
    tally,
)

Row = Sequence[Any]
Args = Sequence[Any] | Mapping[str, Any]

MISS_COLUMNS = "key, url, count, first_seen, last_seen, reason"
ACTIVE = "state IN ('queued', 'running')"
# Before finished fills are forgotten, their lists' items keep how they ended.
SETTLE_ITEMS = (
    "UPDATE list_items SET (state, size, note, fill_id) = (SELECT f.state, f.total, f.error, "
    "CAST(NULL AS BIGINT) FROM fills f WHERE f.id = list_items.fill_id) "
    f"WHERE fill_id IN (SELECT id FROM fills WHERE NOT {ACTIVE})"
)
UPLOAD_ABANDONED = "the blob's upload was abandoned before it was recorded (it was a day old)"
# The fills a holder may claim: queued and not held by another host, or
# running under a lease that ran out (a credentialed one never moves).
CLAIMABLE = (
    "(state = 'queued' AND (holder IS NULL OR holder = :holder) "
    "AND (not_before IS NULL OR not_before <= :now)) OR "
    "(state = 'running' AND lease_until < :now AND NOT credentialed AND holder <> :holder)"
)


@dataclass(frozen=True)
class Dialect:
    """What the same query says differently on each database."""

    greatest: str  # the larger of two values
    no_limit: str  # a LIMIT that keeps every row (before an OFFSET)
    skip_locked: str  # what makes hosts claiming at once take different rows


SQLITE = Dialect(greatest="max", no_limit="LIMIT -1", skip_locked="")
POSTGRES = Dialect(greatest="GREATEST", no_limit="LIMIT ALL", skip_locked="FOR UPDATE SKIP LOCKED")


@lru_cache(maxsize=1024)
def for_psycopg(sql: str) -> str:
    """The query with its parameters marked as psycopg marks them (`?` as
    `%s`, `:name` as `%(name)s`; a `%` of its own doubled); `::` casts stay."""
    marked = sql.replace("%", "%%").replace("?", "%s")
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", marked)


class Database(Protocol):
    """Runs one query at a time: on its own, or in the transaction it is part of."""

    async def one(self, sql: str, args: Args = ()) -> Row | None:
        """The first row the query gives, or None."""
        ...

    async def all(self, sql: str, args: Args = ()) -> list[Row]: ...

    async def run(self, sql: str, args: Args = ()) -> int:
        """Run the query; the number of rows it changed."""
        ...

    async def many(self, sql: str, rows: Sequence[Args]) -> None:
        """Run the query once for each of `rows`."""
        ...


class SQLMetadata(ABC):
    """The Metadata interface's shared part; each store supplies `_sql` (each
    query on its own), `_transaction()` and `_dialect`, and the rest."""

    _sql: Database
    _dialect: Dialect

    @abstractmethod
    def _transaction(self) -> AbstractAsyncContextManager[Database]:
        """`async with` block = one transaction, its queries run through what it gives."""

    @abstractmethod
    async def _hold_key(self, db: Database, key: str) -> None:
        """In a transaction: until it ends, no commit of the key's artifact on
        any host comes in between (enqueue_fill's look against commit_artifact)."""

    @abstractmethod
    async def _hold_totals(self, db: Database) -> None:
        """In a transaction: until it ends, no other byte reservation or commit
        on any host comes in between (reserve_bytes' sum and its update)."""

    async def secret(self, name: str) -> bytes:
        await self._sql.run(
            "INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
            (name, secrets.token_bytes(32)),
        )
        row = await self._sql.one("SELECT value FROM secrets WHERE name = ?", (name,))
        assert row is not None
        return bytes(row[0])

    # -- artifacts

    async def find_artifact(self, key: str, scopes: Sequence[str]) -> Artifact | None:
        return await self._find_artifact("key", key, scopes)

    async def find_artifact_by_sha256(self, sha256: str, scopes: Sequence[str]) -> Artifact | None:
        return await self._find_artifact("sha256", sha256, scopes)

    async def _find_artifact(
        self, column: str, value: str, scopes: Sequence[str], db: Database | None = None
    ) -> Artifact | None:
        """The artifact whose `column` is `value` in the first of `scopes` that
        has one (through `db`, a transaction's, if given)."""
        if not scopes:
            return None  # (`IN ()` is no SQL to PostgreSQL)
        marks = ",".join("?" * len(scopes))
        row = await (db or self._sql).one(
            f"SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE {column} = ? AND scope IN ({marks}) "
            "ORDER BY scope DESC, id DESC LIMIT 1",
            (value, *scopes),
        )
        return as_artifact(row) if row else None

    async def get_artifact(self, artifact_id: int) -> Artifact | None:
        row = await self._sql.one(
            f"SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE id = ?", (artifact_id,)
        )
        return as_artifact(row) if row else None

    async def add_hits(self, counts: Mapping[int, tuple[int, float]]) -> None:
        # In the order of their ids: hosts adding at once lock rows alike.
        async with self._transaction() as db:
            await db.many(
                "UPDATE artifacts SET hits = hits + ?, "
                f"last_hit = {self._dialect.greatest}(coalesce(last_hit, 0), ?) WHERE id = ?",
                [(n, last, artifact_id) for artifact_id, (n, last) in sorted(counts.items())],
            )

    async def find_artifacts(self, key: str) -> list[Artifact]:
        rows = await self._sql.all(
            f"SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE key = ? ORDER BY id", (key,)
        )
        return [as_artifact(r) for r in rows]

    async def delete_artifact(self, artifact_id: int, unpinned: bool = False) -> Artifact | None:
        row = await self._sql.one(
            "DELETE FROM artifacts WHERE id = ? AND NOT (? AND pinned) "
            f"RETURNING {ARTIFACT_COLUMNS}",
            (artifact_id, unpinned),
        )
        return as_artifact(row) if row else None

    async def sha_in_use(self, sha256: str) -> bool:
        found = await self._sql.one("SELECT 1 FROM blob_refs WHERE sha256 = ?", (sha256,))
        return found is not None

    async def totals(self) -> tuple[int, int]:
        row = await self._sql.one("SELECT artifacts, bytes FROM totals")
        assert row is not None
        return row[0], row[1]

    async def blobs_to_check(self, before: float, limit: int) -> list[tuple[str, int]]:
        rows = await self._sql.all(
            "SELECT sha256, max(size) FROM artifacts WHERE checked_at < ? "
            "GROUP BY sha256 ORDER BY min(checked_at), sha256 LIMIT ?",
            (before, limit),
        )
        return [(row[0], row[1]) for row in rows]

    async def unchecked_totals(self, before: float) -> tuple[int, int]:
        row = await self._sql.one(
            "SELECT count(*), coalesce(sum(size), 0) FROM "
            "(SELECT max(size) AS size FROM artifacts WHERE checked_at < ? GROUP BY sha256) b",
            (before,),
        )
        assert row is not None
        return row[0], int(row[1])

    async def mark_checked(
        self, sha256: str, now: float, unless_since: float | None = None
    ) -> bool:
        marked = await self._sql.run(
            "UPDATE artifacts SET checked_at = :now WHERE sha256 = :sha "
            "AND (CAST(:since AS DOUBLE PRECISION) IS NULL OR checked_at < :since)",
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
            clauses.append("(key LIKE ? ESCAPE '\\' OR sha256 = ?)")
            args += [like_pattern(search), search]
        if pinned:
            clauses.append("pinned")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        # A missing value sorts as the least (SQLite's way, which PostgreSQL's isn't).
        nulls = "NULLS LAST" if descending else "NULLS FIRST"
        order = f"{sort} {'DESC' if descending else 'ASC'} {nulls}, id DESC"
        rows = await self._sql.all(
            f"SELECT {ARTIFACT_COLUMNS} FROM artifacts {where} ORDER BY {order} LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        total = await self._sql.one(f"SELECT count(*) FROM artifacts {where}", args)
        assert total is not None
        return Page([as_artifact(r) for r in rows], total[0])

    async def set_pinned(self, artifact_id: int, pinned: bool) -> Artifact | None:
        row = await self._sql.one(
            f"UPDATE artifacts SET pinned = ? WHERE id = ? RETURNING {ARTIFACT_COLUMNS}",
            (pinned, artifact_id),
        )
        return as_artifact(row) if row else None

    async def eviction_candidates(
        self, limit: int, used_before: float | None = None
    ) -> list[EvictionCandidate]:
        # Unpinned artifacts by their last use (the last hit, else when
        # stored), each with the number of artifacts sharing its blob.
        # (`= FALSE`, not `NOT`: SQLite then walks the artifacts_last_used index.)
        last_used = "coalesce(a.last_hit, a.fetched_at)"
        rows = await self._sql.all(
            f"SELECT a.id, a.key, a.sha256, a.size, {last_used}, r.refs "
            "FROM artifacts a JOIN blob_refs r ON r.sha256 = a.sha256 WHERE a.pinned = FALSE "
            f"AND (CAST(:before AS DOUBLE PRECISION) IS NULL OR {last_used} < :before) "
            f"ORDER BY {last_used}, a.id LIMIT :limit",
            {"before": used_before, "limit": limit},
        )
        return [as_candidate(r) for r in rows]

    async def claim_revalidation(self, artifact_id: int, now: float, until: float) -> bool:
        # One statement: the row's lock makes hosts racing for it take turns.
        claimed = await self._sql.run(
            "UPDATE artifacts SET revalidating_until = ? WHERE id = ? "
            "AND coalesce(revalidating_until, 0) < ?",
            (until, artifact_id, now),
        )
        return claimed == 1

    async def end_revalidation(self, artifact_id: int, validated_at: float | None) -> None:
        await self._sql.run(
            "UPDATE artifacts SET revalidating_until = NULL, "
            "validated_at = coalesce(?, validated_at) WHERE id = ?",
            (validated_at, artifact_id),
        )

    # -- misses

    async def record_miss(self, key: str, url: str | None, reason: str, now: float) -> None:
        await self._sql.run(
            f"INSERT INTO misses ({MISS_COLUMNS}) VALUES (?, ?, 1, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET url = excluded.url, count = misses.count + 1, "
            "last_seen = excluded.last_seen, reason = excluded.reason",
            (miss_key(key), url, now, now, reason),
        )

    async def set_miss_reason(self, key: str, reason: str) -> None:
        await self._sql.run("UPDATE misses SET reason = ? WHERE key = ?", (reason, miss_key(key)))

    async def get_miss(self, key: str) -> Miss | None:
        row = await self._sql.one(
            f"SELECT {MISS_COLUMNS} FROM misses WHERE key = ?", (miss_key(key),)
        )
        return Miss(*row) if row else None

    async def delete_miss(self, key: str) -> Miss | None:
        row = await self._sql.one(
            f"DELETE FROM misses WHERE key = ? RETURNING {MISS_COLUMNS}", (miss_key(key),)
        )
        return Miss(*row) if row else None

    async def list_misses(self, search: str = "", offset: int = 0, limit: int = 50) -> Page:
        where, args = ("", [])
        if search:
            where, args = "WHERE key LIKE ? ESCAPE '\\'", [like_pattern(search)]
        rows = await self._sql.all(
            f"SELECT {MISS_COLUMNS} FROM misses {where} ORDER BY last_seen DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        return Page([Miss(*r) for r in rows], await self._count(f"misses {where}", args))

    async def count_misses(self, reason: str) -> int:
        return await self._count("misses WHERE reason = ?", (reason,))

    async def _count(self, rows: str, args: Args = ()) -> int:
        """How many rows `rows` (a FROM clause) holds."""
        found = await self._sql.one(f"SELECT count(*) FROM {rows}", args)
        assert found is not None
        return found[0]

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
            async with self._transaction() as db:
                if unless_stored:
                    await self._hold_key(db, key)  # a commit is wholly before, or after
                    found = await self._find_artifact("key", key, unless_stored, db)
                    if found:
                        return found, False
                row = await db.one(
                    "INSERT INTO fills (key, scope, url, state, requested_by, expected_digest, "
                    "credentialed, created_at, started_at, holder, lease_until) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    f"ON CONFLICT (key, scope) WHERE {ACTIVE} DO NOTHING RETURNING {FILL_COLUMNS}",
                    values,
                )
                if row:
                    return as_fill(row), True
                row = await db.one(
                    f"SELECT {FILL_COLUMNS} FROM fills WHERE key = ? AND scope = ? AND {ACTIVE}",
                    (key, scope),
                )
                if row:
                    return as_fill(row), False
        raise StoreError("could not queue the fill: it kept ending as it was queued")

    async def claim_fill(
        self, now: float, lease: Lease, fill_id: int | None = None
    ) -> FillRecord | None:
        row = await self._sql.one(
            "UPDATE fills SET state = 'running', started_at = :now, bytes_done = 0, total = NULL, "
            "reserved = 0, holder = :holder, lease_until = :until, peer_url = :peer "
            f"WHERE id = (SELECT id FROM fills WHERE ({CLAIMABLE}) "
            "AND (CAST(:id AS BIGINT) IS NULL OR id = :id) "
            f"ORDER BY requested_by <> 'operator', id LIMIT 1 {self._dialect.skip_locked}) "
            f"RETURNING {FILL_COLUMNS}",
            {"now": now, "holder": lease.holder, "until": lease.until, "id": fill_id,
             "peer": lease.peer_url},
        )  # fmt: skip
        return as_fill(row) if row else None

    async def defer_fill(self, fill_id: int, holder: str, until: float) -> bool:
        # Back in the queue until then; one a client's credentials came with
        # stays with the host that has them.
        deferred = await self._sql.run(
            "UPDATE fills SET state = 'queued', not_before = ?, started_at = NULL, "
            "holder = CASE WHEN credentialed THEN holder ELSE NULL END "
            "WHERE id = ? AND holder = ? AND state = 'running'",
            (until, fill_id, holder),
        )
        return deferred == 1

    async def undefer_fills(self, origin: str) -> int:
        return await self._sql.run(
            "UPDATE fills SET not_before = NULL WHERE state = 'queued' "
            "AND not_before IS NOT NULL AND key LIKE ? ESCAPE '\\'",
            (like_prefix(origin + "/"),),
        )

    async def renew_lease(self, lease: Lease) -> set[int]:
        rows = await self._sql.all(
            f"UPDATE fills SET lease_until = ? WHERE holder = ? AND {ACTIVE} RETURNING id",
            (lease.until, lease.holder),
        )
        return {row[0] for row in rows}

    async def orphaned_fills(self, now: float) -> list[FillRecord]:
        rows = await self._sql.all(
            f"SELECT {FILL_COLUMNS} FROM fills WHERE {ACTIVE} AND credentialed "
            "AND lease_until < ? ORDER BY id",
            (now,),
        )
        return [as_fill(r) for r in rows]

    async def get_fill(self, fill_id: int) -> FillRecord | None:
        row = await self._sql.one(f"SELECT {FILL_COLUMNS} FROM fills WHERE id = ?", (fill_id,))
        return as_fill(row) if row else None

    async def fill_peer(self, fill_id: int) -> tuple[str, str] | None:
        row = await self._sql.one(
            "SELECT holder, peer_url FROM fills WHERE id = ? AND state = 'running' "
            "AND peer_url IS NOT NULL",
            (fill_id,),
        )
        return (row[0], row[1]) if row else None

    async def save_progress(
        self, fill_id: int, bytes_done: int, total: int | None,
        resume: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        await self._sql.run(
            "UPDATE fills SET bytes_done = ?, total = ?, resume = coalesce(?, resume) WHERE id = ?",
            (bytes_done, total, resume and json.dumps(dict(resume)), fill_id),
        )

    async def reserve_bytes(self, fill_id: int, holder: str, size: int, cap: int) -> bool:
        # --max-bytes: promise a running fill `size` bytes only if the bytes
        # stored and every running fill's promise stay within `cap`.
        async with self._transaction() as db:
            await self._hold_totals(db)
            reserved = await db.run(
                "UPDATE fills SET reserved = :size WHERE id = :id AND holder = :holder "
                "AND state = 'running' AND (SELECT bytes FROM totals) + :size + (SELECT "
                "coalesce(sum(reserved), 0) FROM fills WHERE state = 'running' AND id <> :id) "
                "<= :cap",
                {"size": size, "id": fill_id, "holder": holder, "cap": cap},
            )
            return reserved == 1

    async def reserved_bytes(self) -> int:
        row = await self._sql.one(
            "SELECT coalesce(sum(reserved), 0) FROM fills WHERE state = 'running'"
        )
        assert row is not None
        return int(row[0])

    async def finish_fill(
        self, fill_id: int, state: FillState, error: str | None, display_url: str, now: float,
        holder: str | None = None,
    ) -> FillRecord | None:  # fmt: skip
        row = await self._sql.one(
            "UPDATE fills SET state = :state, error = :error, url = :url, finished_at = :now "
            f"WHERE id = :id AND {ACTIVE} "
            "AND (CAST(:holder AS TEXT) IS NULL OR holder = :holder) "
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
        async with self._transaction() as db:
            await self._hold_key(db, fill.key)  # see enqueue_fill
            done = await db.run(
                "UPDATE fills SET state = 'done', error = NULL, url = ?, finished_at = ?, "
                "bytes_done = ?, total = ? WHERE id = ? AND state = 'running' AND holder = ?",
                (display_url, now, size, size, fill.id, holder),
            )
            if done != 1:
                return None
            if location is not None:
                # A commit records only an object that nobody abandoned meanwhile.
                recorded = await db.run(
                    "UPDATE blob_objects SET sha256 = :sha WHERE location = :location "
                    "AND NOT abandoned AND (sha256 IS NULL OR sha256 = :sha)",
                    {"sha": sha256, "location": location},
                )
                if recorded != 1:
                    raise StoreError(UPLOAD_ABANDONED)
            miss = await db.one(
                "DELETE FROM misses WHERE key = ? RETURNING count", (miss_key(fill.key),)
            )
            # Hashed as it arrived: the blob counts as checked now.
            row = await db.one(
                "INSERT INTO artifacts (key, scope, sha256, size, headers, fetched_at, misses, "
                "checked_at, imported, etag) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (key, scope) DO UPDATE SET sha256 = excluded.sha256, "
                "size = excluded.size, headers = excluded.headers, "
                "fetched_at = excluded.fetched_at, checked_at = excluded.checked_at, "
                "misses = artifacts.misses + excluded.misses, imported = excluded.imported, "
                "etag = excluded.etag, validated_at = NULL, revalidating_until = NULL "
                f"RETURNING {ARTIFACT_COLUMNS}",
                (fill.key, fill.scope, sha256, size, json.dumps(dict(headers)), now,
                 miss[0] if miss else 0, now, fill.requested_by == IMPORTED, etag),
            )  # fmt: skip
            assert row is not None
            return as_artifact(row)

    async def clear_finished_fills(self) -> int:
        async with self._transaction() as db:
            await db.run(SETTLE_ITEMS)
            return await db.run(f"DELETE FROM fills WHERE NOT {ACTIVE}")

    async def list_fills(
        self, states: Sequence[FillState] = (), offset: int = 0, limit: int = 50
    ) -> Page:
        states = states or list(FillState)
        where = f"WHERE state IN ({','.join('?' * len(states))})"
        args = [s.value for s in states]
        # Active fills first, then the most recent. The page's ids are chosen
        # from the (state, id) index alone, so finished fills piling up cost a
        # sort of small keys, not of whole rows (SQLite: 4x faster with 10,000).
        order = "CASE state WHEN 'running' THEN 0 WHEN 'queued' THEN 1 ELSE 2 END, id DESC"
        rows = await self._sql.all(
            f"SELECT {FILL_COLUMNS} FROM fills WHERE id IN "
            f"(SELECT id FROM fills {where} ORDER BY {order} LIMIT ? OFFSET ?) ORDER BY {order}",
            (*args, limit, offset),
        )
        return Page([as_fill(r) for r in rows], await self._count(f"fills {where}", args))

    # -- objects of an object store's blobs

    async def note_upload(self, location: str, now: float) -> None:
        await self._sql.run(
            "INSERT INTO blob_objects (location, started_at) VALUES (?, ?)", (location, now)
        )

    async def find_blob_object(self, sha256: str) -> str | None:
        row = await self._sql.one("SELECT location FROM blob_objects WHERE sha256 = ?", (sha256,))
        return row[0] if row else None

    async def abandon_upload(self, location: str) -> bool:
        row = await self._sql.one(
            "UPDATE blob_objects SET abandoned = true "
            "WHERE location = ? AND sha256 IS NULL RETURNING location",
            (location,),
        )
        return row is not None

    async def abandon_blob(self, sha256: str) -> str | None:
        row = await self._sql.one(
            "UPDATE blob_objects SET sha256 = NULL, abandoned = true "
            "WHERE sha256 = ? RETURNING location",
            (sha256,),
        )
        return row[0] if row else None

    async def abandoned_uploads(self, started_before: float) -> list[str]:
        rows = await self._sql.all(
            "UPDATE blob_objects SET abandoned = true "
            "WHERE sha256 IS NULL AND (abandoned OR started_at < ?) RETURNING location",
            (started_before,),
        )
        return [row[0] for row in rows]

    async def forget_upload(self, location: str) -> None:
        await self._sql.run(
            "DELETE FROM blob_objects WHERE location = ? AND abandoned", (location,)
        )

    # -- lists

    async def add_list(self, source: str, kind: str, created_by: str | None, now: float) -> int:
        row = await self._sql.one(
            "INSERT INTO lists (source, kind, created_at, created_by) VALUES (?, ?, ?, ?) "
            "RETURNING id",
            (source, kind, now, created_by),
        )
        assert row is not None
        return row[0]

    async def add_list_items(self, list_id: int, items: Sequence[ListItem]) -> None:
        async with self._transaction() as db:
            await db.many(
                "INSERT INTO list_items (list_id, line, url, state, fill_id, size, note) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [item_values(list_id, item) for item in items],
            )

    async def get_list(self, list_id: int) -> ListRecord | None:
        row = await self._sql.one(f"SELECT {LIST_COLUMNS} FROM lists WHERE id = ?", (list_id,))
        return as_list(row) if row else None

    async def list_lists(self, offset: int = 0, limit: int = 50) -> Page:
        rows = await self._sql.all(
            f"SELECT {LIST_COLUMNS} FROM lists ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset)
        )
        return Page([as_list(r) for r in rows], await self._count("lists"))

    async def tally_list(self, list_id: int) -> ListTally:
        rows = await self._sql.all(
            f"SELECT {TALLY_COLUMNS} FROM (SELECT {ITEM_COLUMNS} FROM {ITEMS_JOINED} "
            "WHERE i.list_id = ?) AS items GROUP BY state",
            (list_id,),
        )
        running = await self._sql.all(
            "SELECT f.id FROM list_items i JOIN fills f ON f.id = i.fill_id "
            "WHERE i.list_id = ? AND f.state = 'running'",
            (list_id,),
        )
        return tally(rows, [r[0] for r in running])

    async def list_items(
        self, list_id: int, states: Sequence[str] = (), offset: int = 0, limit: int = 50
    ) -> Page:
        where, args = "", []
        if states:
            where, args = f"WHERE state IN ({','.join('?' * len(states))})", list(states)
        inner = f"SELECT {ITEM_COLUMNS} FROM {ITEMS_JOINED} WHERE i.list_id = ?"
        rows = await self._sql.all(
            f"SELECT {ITEM_FIELDS} FROM ({inner}) AS items {where} ORDER BY line LIMIT ? OFFSET ?",
            (list_id, *args, limit, offset),
        )
        total = await self._count(f"({inner}) AS items {where}", (list_id, *args))
        return Page([as_item(r) for r in rows], total)

    # -- events

    async def add_event(
        self, kind: str, url: str | None, actor: str | None, detail: Mapping[str, Any],
        now: float,
    ) -> None:  # fmt: skip
        await self._sql.run(
            "INSERT INTO events (at, kind, url, actor, detail) VALUES (?, ?, ?, ?, ?)",
            (now, kind, url, actor, json.dumps(dict(detail))),
        )

    async def list_events(
        self, kind: str = "", search: str = "", offset: int = 0, limit: int = 50
    ) -> Page:
        clauses: list[str] = []
        args: list[Any] = []
        if kind:
            clauses.append("kind = ?")
            args.append(kind)
        if search:
            clauses.append("(url LIKE ? ESCAPE '\\' OR detail LIKE ? ESCAPE '\\')")
            args += [like_pattern(search), like_pattern(search)]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._sql.all(
            f"SELECT id, at, kind, url, actor, detail FROM events {where} "
            "ORDER BY id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        events = [EventRecord(*r[:5], detail=json.loads(r[5])) for r in rows]
        return Page(events, await self._count(f"events {where}", args))

    async def prune(
        self, now: float, miss_max_age: float, max_misses: int, event_max_age: float,
        max_events: int,
    ) -> None:  # fmt: skip
        all_after = self._dialect.no_limit
        # Lists made before the event age or beyond the newest MAX_LISTS, with their items.
        old_lists = (
            "SELECT id FROM lists WHERE created_at < ? OR id <= "
            "(SELECT id FROM lists ORDER BY id DESC LIMIT 1 OFFSET ?)"
        )
        async with self._transaction() as db:
            await db.run("DELETE FROM misses WHERE last_seen < ?", (now - miss_max_age,))
            await db.run(
                "DELETE FROM misses WHERE key IN (SELECT key FROM misses "
                f"ORDER BY last_seen DESC {all_after} OFFSET ?)",
                (max_misses,),
            )
            await db.run("DELETE FROM events WHERE at < ?", (now - event_max_age,))
            lists = (now - event_max_age, MAX_LISTS)
            await db.run(f"DELETE FROM list_items WHERE list_id IN ({old_lists})", lists)
            await db.run(f"DELETE FROM lists WHERE id IN ({old_lists})", lists)
            await db.run(SETTLE_ITEMS)
            await db.run(
                "DELETE FROM events WHERE id <= "
                "(SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (max_events,),
            )
            await db.run(
                f"DELETE FROM fills WHERE finished_at < ? AND NOT {ACTIVE}",
                (now - event_max_age,),
            )
            await db.run(
                "DELETE FROM fills WHERE id IN (SELECT id FROM fills "
                f"WHERE NOT {ACTIVE} ORDER BY id DESC {all_after} OFFSET ?)",
                (max_events,),
            )

    # -- API tokens

    async def add_token(
        self, name: str, scope: TokenScope, digest: str, created_by: str | None, now: float
    ) -> TokenRecord | None:
        row = await self._sql.one(
            "INSERT INTO tokens (name, scope, digest, created_at, created_by) "
            f"VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING RETURNING {TOKEN_COLUMNS}",
            (name, scope.value, digest, now, created_by),
        )
        return as_token(row) if row else None

    async def find_token(self, digest: str) -> TokenRecord | None:
        row = await self._sql.one(f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE digest = ?", (digest,))
        return as_token(row) if row else None

    async def list_tokens(self) -> list[TokenRecord]:
        rows = await self._sql.all(f"SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY name")
        return [as_token(r) for r in rows]

    async def delete_token(self, name: str) -> TokenRecord | None:
        row = await self._sql.one(
            f"DELETE FROM tokens WHERE name = ? RETURNING {TOKEN_COLUMNS}", (name,)
        )
        return as_token(row) if row else None

    async def token_used(self, token_id: int, now: float) -> None:
        await self._sql.run("UPDATE tokens SET last_used = ? WHERE id = ?", (now, token_id))

    # -- operator sessions

    async def end_session(self, nonce: str, expires: float) -> None:
        await self._sql.run(
            "INSERT INTO ended_sessions (nonce, expires) VALUES (?, ?) "
            "ON CONFLICT (nonce) DO NOTHING",
            (nonce, expires),
        )

    async def session_ended(self, nonce: str) -> bool:
        found = await self._sql.one("SELECT 1 FROM ended_sessions WHERE nonce = ?", (nonce,))
        return found is not None

    async def prune_sessions(self, now: float, keep: int) -> None:
        async with self._transaction() as db:
            await db.run("DELETE FROM ended_sessions WHERE expires <= ?", (now,))
            await db.run(
                "DELETE FROM ended_sessions WHERE nonce IN (SELECT nonce FROM ended_sessions "
                f"ORDER BY expires DESC {self._dialect.no_limit} OFFSET ?)",
                (keep,),
            )


def like_prefix(text: str) -> str:
    """A LIKE pattern (with ESCAPE '\\') that finds what starts with `text`, literally."""
    return like_pattern(text)[1:]


def like_pattern(text: str) -> str:
    """A LIKE pattern (with ESCAPE '\\') that finds `text` anywhere, literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
