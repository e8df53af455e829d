"""The SQLite metadata store on its own: migrations, totals, retention."""

import sqlite3

from withcache.server.store import FillState
from withcache.server.store.sqlite import MIGRATIONS, SQLiteMetadata


async def add(meta, key, sha, size, now=1.0):
    fill, _ = await meta.enqueue_fill(key, "", key, "operator", now)
    return await meta.commit_artifact(fill, sha, size, {}, key, now)


async def test_totals_count_shared_blobs_once(tmp_path):
    meta = SQLiteMetadata(tmp_path / "m.db")
    assert await meta.totals() == (0, 0)
    a = await add(meta, "https://h/a", "a" * 64, 100)
    b = await add(meta, "https://h/b", "a" * 64, 100)  # same bytes as a
    await add(meta, "https://h/c", "c" * 64, 7)
    assert await meta.totals() == (3, 107)
    await meta.delete_artifact(a.id)
    assert await meta.totals() == (2, 107)
    assert await meta.sha_in_use("a" * 64)
    await meta.delete_artifact(b.id)
    assert await meta.totals() == (1, 7)
    assert not await meta.sha_in_use("a" * 64)
    # A re-fetch that brings new bytes under the same key replaces the blob.
    await add(meta, "https://h/c", "d" * 64, 50)
    assert await meta.totals() == (1, 50)
    assert not await meta.sha_in_use("c" * 64)
    await meta.close()


async def test_migrating_a_version_1_database_keeps_its_data(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    for key, sha, size in (("https://h/x", "x" * 64, 10), ("https://h/y", "x" * 64, 10),
                           ("https://h/z", "z" * 64, 5)):  # fmt: skip
        db.execute(
            "INSERT INTO artifacts (key, scope, sha256, size, headers, fetched_at) "
            "VALUES (?, '', ?, ?, '{}', 0)",
            (key, sha, size),
        )
    db.commit()
    db.close()
    meta = SQLiteMetadata(path)
    assert await meta.totals() == (3, 15)
    assert (await meta.list_artifacts()).total == 3
    await meta.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_finished_fills_follow_the_event_limits(tmp_path):
    meta = SQLiteMetadata(tmp_path / "m.db")
    for n in range(6):
        fill, _ = await meta.enqueue_fill(f"https://h/{n}", "", f"https://h/{n}", "miss", n)
        await meta.finish_fill(fill.id, FillState.FAILED, "x", fill.url, now=100.0 + n)
    await meta.enqueue_fill("https://h/run", "", "https://h/run", "miss", 0)
    await meta.prune(now=110.0, miss_max_age=1e9, max_misses=10, event_max_age=8.0, max_events=3)
    kept = [f.key for f in (await meta.list_fills()).rows]
    # Age took 0 and 1 (finished before 102); the count kept the newest 3.
    assert kept == ["https://h/run", "https://h/5", "https://h/4", "https://h/3"]
    await meta.close()
