"""Rows of the SQL stores as records: SQLite and PostgreSQL keep the same
tables with the same column order, so one mapping serves both."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from withcache.server.records import Artifact, FillRecord, FillState, TokenRecord, TokenScope

ARTIFACT_SORTS = {"key", "size", "hits", "misses", "fetched_at", "last_hit", "sha256"}
ARTIFACT_COLUMNS = "id, key, scope, sha256, size, headers, fetched_at, hits, misses, last_hit"
TOKEN_COLUMNS = "id, name, scope, created_at, last_used, created_by"
FILL_COLUMNS = (
    "id, key, scope, url, state, requested_by, expected_sha256, credentialed, "
    "bytes_done, total, error, created_at, started_at, finished_at, holder, resume"
)


# --max-bytes: promise a running fill `size` bytes only if the bytes stored and
# every running fill's promise stay within `cap` (the stores run it so that no
# other reservation or commit comes in between; see Metadata.reserve_bytes).
_RESERVE = (
    "UPDATE fills SET reserved = {size} WHERE id = {id} AND holder = {holder} "
    "AND state = 'running' AND (SELECT bytes FROM totals) + {size} + (SELECT "
    "coalesce(sum(reserved), 0) FROM fills WHERE state = 'running' AND id <> {id}) <= {cap}"
)
RESERVED = "SELECT coalesce(sum(reserved), 0) FROM fills WHERE state = 'running'"


def reserve_sql(mark: str) -> str:
    """The reservation, its parameters written as the driver names them:
    `mark` is ":{}" for sqlite3, "%({})s" for psycopg."""
    return _RESERVE.format(**{name: mark.format(name) for name in ("size", "id", "holder", "cap")})


def as_artifact(row: Sequence[Any]) -> Artifact:
    return Artifact(
        id=row[0], key=row[1], scope=row[2], sha256=row[3], size=row[4],
        headers=json.loads(row[5]), fetched_at=row[6], hits=row[7], misses=row[8],
        last_hit=row[9],
    )  # fmt: skip


def as_fill(row: Sequence[Any]) -> FillRecord:
    return FillRecord(
        id=row[0], key=row[1], scope=row[2], url=row[3], state=FillState(row[4]),
        requested_by=row[5], expected_sha256=row[6], credentialed=bool(row[7]),  # SQLite: 0/1
        bytes_done=row[8], total=row[9], error=row[10], created_at=row[11],
        started_at=row[12], finished_at=row[13], holder=row[14],
        resume=json.loads(row[15]) if row[15] else None,
    )  # fmt: skip


def as_token(row: Sequence[Any]) -> TokenRecord:
    return TokenRecord(
        id=row[0], name=row[1], scope=TokenScope(row[2]), created_at=row[3], last_used=row[4],
        created_by=row[5],
    )  # fmt: skip


def like_pattern(text: str) -> str:
    """A LIKE pattern (with ESCAPE '\\') that finds `text` anywhere, literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
