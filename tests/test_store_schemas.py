"""Databases an earlier withcache made, opened by this one: each store reads
back every row of a dump (tests/schemas, written by dump.py from a released
checkout), writes on, and ends with the schema a new database gets."""

import re
import sqlite3
from pathlib import Path

import pytest

from withcache.server.digests import Digest
from withcache.server.records import FillState, TokenScope
from withcache.server.store import Lease
from withcache.server.store.sqlite import SQLiteMetadata

SCHEMAS = Path(__file__).parent / "schemas"
LEASE = Lease("host-a", 2e9)  # the holder dump.py's fills were claimed by
A, NEW = "a" * 64, "n" * 64


async def reads_back_and_writes_on(meta, secret: bytes) -> None:
    """What dump.py stored is there, as the records it was, and the store works on."""
    assert await meta.secret("session") == secret
    (found,) = await meta.find_artifacts("https://h/a.bin")
    assert (found.sha256, found.size, found.hits, found.last_hit, found.etag) == (
        A, 100, 3, 18.0, '"e1"',
    )  # fmt: skip
    assert found.headers == {"Content-Type": "application/x-a"}
    assert not found.pinned and not found.imported and found.validated_at is None
    assert await meta.totals() == (1, 100)
    assert await meta.find_blob_object(A) == "uploads/1"
    miss = await meta.get_miss("https://h/b.bin")
    assert (miss.count, miss.reason) == (1, "queued")
    fills = {f.key: f for f in (await meta.list_fills()).rows}
    assert fills["https://h/a.bin"].state is FillState.DONE
    assert fills["https://h/a.bin"].expected == Digest("sha256", A)
    assert (fills["https://h/b.bin"].state, fills["https://h/b.bin"].error) == (
        FillState.FAILED, "origin answered 404",
    )  # fmt: skip
    queued = fills["https://h/c.bin"]
    assert (queued.state, queued.scope, queued.credentialed) == (FillState.QUEUED, "s1", True)
    (listed,) = (await meta.list_lists()).rows
    assert (listed.source, listed.kind, listed.created_by) == ("rebuild.txt", "urls", "api:ops")
    tally = await meta.tally_list(listed.id)
    assert tally.counts == {"done": 1, "cached": 1}
    assert tally.bytes_done == {"done": 100, "cached": 7}
    (event,) = (await meta.list_events()).rows
    assert (event.kind, event.detail) == ("fill_done", {"bytes": 100})
    token = await meta.find_token("d" * 64)
    assert (token.name, token.scope, token.created_by) == ("ci", TokenScope("read"), "op")
    assert await meta.session_ended("n1")

    # Writing on: a new artifact, the queued fill claimed, a pin, a prune.
    await meta.requeue_interrupted()
    claimed = await meta.claim_fill(20.0, LEASE, queued.id)
    assert claimed.id == queued.id
    await meta.note_upload("uploads/2", 20.0)
    stored = await meta.commit_artifact(
        claimed, NEW, 5, {}, claimed.url, 21.0, LEASE.holder, location="uploads/2"
    )
    assert stored.sha256 == NEW and stored.id != found.id
    assert await meta.totals() == (2, 105)
    assert (await meta.set_pinned(found.id, True)).pinned
    assert [c.id for c in await meta.eviction_candidates(10)] == [stored.id]
    await meta.prune(now=1e9, miss_max_age=1.0, max_misses=10, event_max_age=1.0, max_events=10)
    assert (await meta.list_misses()).total == 0 and (await meta.list_events()).total == 0
    assert (await meta.list_lists()).total == 0


# -- SQLite


def sqlite_schema(path: Path) -> set[tuple]:
    """A SQLite database's tables, indexes and triggers, as far as they decide
    what it stores and answers: each column by its type affinity (INTEGER and
    NUMERIC behave the same but in CAST, so BOOLEAN counts as INTEGER), an
    index or trigger by its text without layout."""
    db = sqlite3.connect(path)
    found: set[tuple] = set()
    for kind, name, table, sql in db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"):
        if kind == "table":
            for _, column, declared, notnull, default, pk in db.execute(
                f"PRAGMA table_info({name})"
            ):
                default = {"false": "0", "true": "1"}.get(str(default).lower(), default)
                found.add((name, column, affinity(declared), notnull, default, pk))
        else:
            found.add((kind, name, table, sql and re.sub(r"[\s()]", "", sql).lower()))
    db.close()
    return found


def affinity(declared: str) -> str:
    """SQLite's rules (datatype3.html, 3.1), INTEGER and NUMERIC as one."""
    declared = declared.upper()
    if "INT" in declared:
        return "INTEGER"
    if any(word in declared for word in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in declared or not declared:
        return "BLOB"
    if any(word in declared for word in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "INTEGER"


async def test_a_sqlite_database_made_before_opens_and_works_on(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript((SCHEMAS / "sqlite-v9.dump").read_text())
    secret = db.execute("SELECT value FROM secrets WHERE name = 'session'").fetchone()[0]
    db.close()
    meta = SQLiteMetadata(path)
    try:
        await reads_back_and_writes_on(meta, secret)
    finally:
        await meta.close()
    fresh = tmp_path / "new.db"
    await SQLiteMetadata(fresh).close()
    assert sqlite_schema(path) == sqlite_schema(fresh)


# -- PostgreSQL

PG_SCHEMA = {
    "columns": "SELECT table_name, column_name, ordinal_position, data_type, is_nullable, "
    "column_default, is_identity FROM information_schema.columns WHERE table_schema = 'public'",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
    "triggers": "SELECT tgname, tgrelid::regclass::text, pg_get_triggerdef(oid) FROM pg_trigger "
    "WHERE NOT tgisinternal",
    "functions": "SELECT proname, prosrc FROM pg_proc WHERE pronamespace = 'public'::regnamespace",
}


def postgres_schema(url: str) -> dict[str, set[tuple]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return {part: set(conn.execute(sql).fetchall()) for part, sql in PG_SCHEMA.items()}


@pytest.mark.slow
async def test_a_postgres_database_made_before_opens_and_works_on(scale_stores):
    import psycopg

    from withcache.server.store.postgres import PostgresMetadata

    postgres, _ = scale_stores
    url = postgres.new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute((SCHEMAS / "postgres-v7.dump").read_text())
    with psycopg.connect(url) as conn:
        secret = conn.execute("SELECT value FROM secrets WHERE name = 'session'").fetchone()[0]
    meta = await PostgresMetadata.connect(url)
    try:
        await reads_back_and_writes_on(meta, bytes(secret))
    finally:
        await meta.close()
    fresh = postgres.new_database()
    await (await PostgresMetadata.connect(fresh)).close()
    assert postgres_schema(url) == postgres_schema(fresh)
