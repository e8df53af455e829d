"""Rows of the SQL stores as records: SQLite and PostgreSQL keep the same
tables with the same column order, so one mapping serves both."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from withcache.server.store import Artifact, FillRecord, FillState, TokenRecord, TokenScope

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


# Where an object store keeps each blob it left where it was uploaded (see
# store.BlobObjects): pending while sha256 is NULL and it is not abandoned.
# The same text is valid SQL for SQLite and PostgreSQL.
BLOB_OBJECTS_TABLE = """
    CREATE TABLE blob_objects (
        location TEXT PRIMARY KEY,
        sha256 TEXT UNIQUE,
        started_at DOUBLE PRECISION NOT NULL,
        abandoned BOOLEAN NOT NULL DEFAULT false
    );
    CREATE INDEX blob_objects_pending ON blob_objects (started_at) WHERE sha256 IS NULL;
"""


UPLOAD_ABANDONED = "the blob's upload was abandoned before it was recorded (it was a day old)"


class BlobObjectStatements:
    """The statements on blob_objects, the parameters written as the driver
    names them (`mark`, as for reserve_sql)."""

    def __init__(self, mark: str) -> None:
        names = {name: mark.format(name) for name in ("location", "sha", "now", "before")}

        def sql(text: str) -> str:
            return text.format(**names)

        self.note = sql(
            "INSERT INTO blob_objects (location, started_at) VALUES ({location}, {now})"
        )
        self.find = sql("SELECT location FROM blob_objects WHERE sha256 = {sha}")
        # A commit records only an object that nobody abandoned meanwhile.
        self.record = sql(
            "UPDATE blob_objects SET sha256 = {sha} WHERE location = {location} "
            "AND NOT abandoned AND (sha256 IS NULL OR sha256 = {sha})"
        )
        self.abandon_upload = sql(
            "UPDATE blob_objects SET abandoned = true "
            "WHERE location = {location} AND sha256 IS NULL RETURNING location"
        )
        self.abandon_blob = sql(
            "UPDATE blob_objects SET sha256 = NULL, abandoned = true "
            "WHERE sha256 = {sha} RETURNING location"
        )
        self.abandon_stale = sql(
            "UPDATE blob_objects SET abandoned = true "
            "WHERE sha256 IS NULL AND (abandoned OR started_at < {before}) RETURNING location"
        )
        self.forget = sql("DELETE FROM blob_objects WHERE location = {location} AND abandoned")


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
