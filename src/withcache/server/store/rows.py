"""Rows of the SQL stores as records: SQLite and PostgreSQL keep the same
tables with the same column order, so one mapping serves both."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from withcache.server.digests import Digest
from withcache.server.records import (
    Artifact,
    EvictionCandidate,
    FillRecord,
    FillState,
    ListItem,
    ListRecord,
    ListTally,
    TokenRecord,
    TokenScope,
)

ARTIFACT_SORTS = {"key", "size", "hits", "misses", "fetched_at", "last_hit", "sha256"}
ARTIFACT_COLUMNS = (
    "id, key, scope, sha256, size, headers, fetched_at, hits, misses, last_hit, imported, "
    "pinned, validated_at, etag"
)
TOKEN_COLUMNS = "id, name, scope, created_at, last_used, created_by"
FILL_COLUMNS = (
    "id, key, scope, url, state, requested_by, expected_digest, credentialed, "
    "bytes_done, total, error, created_at, started_at, finished_at, holder, resume"
)
LIST_COLUMNS = "id, source, kind, created_at, created_by"
# A list's items joined with their fills (`i` and `f`): while the fill's row is
# there, its state and progress; once it is gone, what the item kept of it.
ITEM_COLUMNS = (
    "i.line AS line, i.url AS url, CASE WHEN f.id IS NULL THEN i.state ELSE f.state END AS state, "
    "i.fill_id AS fill_id, CASE WHEN f.id IS NOT NULL THEN f.bytes_done "
    "WHEN i.state IN ('done', 'cached') THEN coalesce(i.size, 0) ELSE 0 END AS bytes_done, "
    "CASE WHEN f.id IS NULL THEN i.size ELSE f.total END AS total, "
    "coalesce(f.error, i.note) AS note"
)
ITEMS_JOINED = "list_items i LEFT JOIN fills f ON f.id = i.fill_id"
ITEM_FIELDS = "line, url, state, fill_id, bytes_done, total, note"
# Per state: items, bytes received, bytes in all (of the sized ones), sized ones.
TALLY_COLUMNS = "state, count(*), sum(bytes_done), sum(coalesce(total, 0)), count(total)"


def as_artifact(row: Sequence[Any]) -> Artifact:
    return Artifact(
        id=row[0], key=row[1], scope=row[2], sha256=row[3], size=row[4],
        headers=json.loads(row[5]), fetched_at=row[6], hits=row[7], misses=row[8],
        last_hit=row[9], imported=bool(row[10]), pinned=bool(row[11]), validated_at=row[12],
        etag=row[13],
    )  # fmt: skip


def as_candidate(row: Sequence[Any]) -> EvictionCandidate:
    return EvictionCandidate(*row)


def as_fill(row: Sequence[Any]) -> FillRecord:
    return FillRecord(
        id=row[0], key=row[1], scope=row[2], url=row[3], state=FillState(row[4]),
        requested_by=row[5], expected=Digest.parse(row[6]) if row[6] else None,
        credentialed=bool(row[7]),  # SQLite: 0/1
        bytes_done=row[8], total=row[9], error=row[10], created_at=row[11],
        started_at=row[12], finished_at=row[13], holder=row[14],
        resume=json.loads(row[15]) if row[15] else None,
    )  # fmt: skip


def as_list(row: Sequence[Any]) -> ListRecord:
    return ListRecord(*row)


def as_item(row: Sequence[Any]) -> ListItem:
    return ListItem(*row)


def tally(rows: Sequence[Sequence[Any]], running: Sequence[int]) -> ListTally:
    """A ListTally from TALLY_COLUMNS rows and the ids of the running fills."""
    return ListTally(
        counts={r[0]: r[1] for r in rows}, bytes_done={r[0]: int(r[2] or 0) for r in rows},
        totals={r[0]: int(r[3] or 0) for r in rows}, sized={r[0]: r[4] for r in rows},
        running=list(running),
    )  # fmt: skip


def item_values(list_id: int, item: ListItem) -> tuple[Any, ...]:
    """An item's row for `INSERT INTO list_items (list_id, line, url, state,
    fill_id, size, note)`."""
    return (list_id, item.line, item.url, item.state, item.fill_id, item.total, item.note)


def as_token(row: Sequence[Any]) -> TokenRecord:
    return TokenRecord(
        id=row[0], name=row[1], scope=TokenScope(row[2]), created_at=row[3], last_used=row[4],
        created_by=row[5],
    )  # fmt: skip
