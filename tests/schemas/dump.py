"""Write what a database made by this checkout holds, as SQL, for the
migration tests: `python tests/schemas/dump.py` in a checkout of a released
withcache writes sqlite-vN.dump and postgres-vN.dump beside this file (N, the
schema version; a throwaway PostgreSQL is started for it). A few rows of every
table come with the schema, so a test can read them back through the code
that opens the old database."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

from services import Postgres  # noqa: E402

from withcache.server.digests import Digest  # noqa: E402
from withcache.server.records import FillState, ItemState, ListItem, TokenScope  # noqa: E402
from withcache.server.store import Lease  # noqa: E402
from withcache.server.store.postgres import MIGRATIONS, PostgresMetadata  # noqa: E402
from withcache.server.store.sqlite import SQLiteMetadata  # noqa: E402

LEASE = Lease("host-a", 2e9)


async def populate(meta) -> None:
    """One or two rows of each table, in the states a running cache leaves."""
    await meta.secret("session")
    fill, _ = await meta.enqueue_fill("https://h/a.bin", "", "https://h/a.bin", "operator", 10.0,
                                      expected=Digest("sha256", "a" * 64))  # fmt: skip
    claimed = await meta.claim_fill(11.0, LEASE, fill.id)
    await meta.note_upload("uploads/1", 11.0)
    await meta.commit_artifact(claimed, "a" * 64, 100, {"Content-Type": "application/x-a"},
                               "https://h/a.bin", 12.0, LEASE.holder, etag='"e1"',
                               location="uploads/1")  # fmt: skip
    await meta.record_miss("https://h/b.bin", "https://h/b.bin", "queued", 13.0)
    failed, _ = await meta.enqueue_fill("https://h/b.bin", "", "https://h/b.bin", "miss", 13.0)
    await meta.finish_fill(failed.id, FillState.FAILED, "origin answered 404", failed.url, 14.0)
    await meta.enqueue_fill("https://h/c.bin", "s1", "https://h/c.bin", "miss", 15.0,
                            credentialed=True, lease=LEASE)  # fmt: skip
    list_id = await meta.add_list("rebuild.txt", "urls", "api:ops", 16.0)
    await meta.add_list_items(
        list_id,
        [
            ListItem(1, "https://h/a.bin", "queued", fill.id),
            ListItem(2, "https://h/old", ItemState.CACHED, total=7),
        ],
    )
    await meta.add_event("fill_done", "https://h/a.bin", "operator", {"bytes": 100}, 12.0)
    await meta.add_token("ci", TokenScope("read"), "d" * 64, "op", 17.0)
    await meta.end_session("n1", 2e9)
    await meta.add_hits({1: (3, 18.0)})


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cache.db"
        meta = SQLiteMetadata(path)
        await populate(meta)
        await meta.close()
        with sqlite3.connect(path) as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            text = "\n".join(db.iterdump())
        (HERE / f"sqlite-v{version}.dump").write_text(f"PRAGMA user_version = {version};\n{text}\n")
    postgres = Postgres().start()
    try:
        url = postgres.new_database()
        meta = await PostgresMetadata.connect(url)
        await populate(meta)
        await meta.close()
        dump = subprocess.run(
            [*postgres._as, str(postgres.bin / "pg_dump"), "--inserts", "--no-owner",
             "--no-privileges", url],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        # Without pg_dump's comments and psql's own commands (\restrict): plain
        # SQL, which psycopg runs as one script.
        kept = [line for line in dump.splitlines()
                if line and not line.startswith(("--", "\\"))]  # fmt: skip
        (HERE / f"postgres-v{len(MIGRATIONS)}.dump").write_text("\n".join(kept) + "\n")
    finally:
        postgres.stop()


if __name__ == "__main__":
    asyncio.run(main())
