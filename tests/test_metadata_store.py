"""The metadata stores on their own: migrations, totals, retention, leases.
Each test runs on SQLite and on PostgreSQL (a fresh database)."""

import asyncio
import sqlite3

import pytest

from withcache.server.digests import Digest
from withcache.server.records import FillState, ItemState, ListItem
from withcache.server.store import MAX_LISTS, Lease, StoreError
from withcache.server.store.sql import for_psycopg
from withcache.server.store.sqlite import MIGRATIONS, SQLiteMetadata

HOLDER = Lease("host-a", 1e12)


@pytest.fixture(params=["sqlite", "postgres"])
async def meta(request, tmp_path):
    if request.param == "sqlite":
        store = SQLiteMetadata(tmp_path / "m.db")
    else:
        from withcache.server.store.postgres import PostgresMetadata

        postgres, _ = request.getfixturevalue("scale_stores")
        store = await PostgresMetadata.connect(postgres.new_database())
    yield store
    await store.close()


async def add(meta, key, sha, size, now=1.0, location=None):
    fill, _ = await meta.enqueue_fill(key, "", key, "operator", now)
    claimed = await meta.claim_fill(now, HOLDER)
    assert claimed.id == fill.id
    return await meta.commit_artifact(
        claimed, sha, size, {}, key, now, HOLDER.holder, location=location
    )


def test_a_query_reaches_psycopg_with_its_marks():
    """The one text both stores run: sqlite3's `?` and `:name` become psycopg's,
    a `%` of the query's own is kept as one, a PostgreSQL cast stays."""
    assert for_psycopg(
        "SELECT a FROM t WHERE b = ? AND c = :c AND d::text LIKE '10%' AND e = :e_2 OR f = ?"
    ) == ("SELECT a FROM t WHERE b = %s AND c = %(c)s AND d::text LIKE '10%%' "
          "AND e = %(e_2)s OR f = %s")  # fmt: skip


async def test_totals_count_shared_blobs_once(meta):
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


async def test_migrating_a_sqlite_version_1_database_keeps_its_data(tmp_path):
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


async def test_an_expected_sha256_becomes_an_expected_digest_when_migrated(tmp_path):
    """Issue 17's migration: the fills' expected_sha256 names its algorithm now."""
    path = tmp_path / "v4.db"
    db = sqlite3.connect(path)
    db.executescript("".join(MIGRATIONS[:4]) + "; PRAGMA user_version = 4;")
    db.execute(
        "INSERT INTO fills (key, scope, url, state, requested_by, expected_sha256, created_at) "
        "VALUES ('https://h/a', '', 'https://h/a', 'queued', 'operator', ?, 1)",
        ("AB" * 32,),
    )
    db.commit()
    db.close()
    meta = SQLiteMetadata(path)
    (fill,) = (await meta.list_fills()).rows
    assert fill.expected == Digest("sha256", "ab" * 32)
    await meta.close()


async def test_a_list_keeps_how_its_lines_ended_once_their_fills_are_forgotten(meta):
    done, _ = await meta.enqueue_fill("https://h/done", "", "https://h/done", "operator", 1.0,
                                      expected=Digest("md5", "c" * 32))  # fmt: skip
    failed, _ = await meta.enqueue_fill("https://h/bad", "", "https://h/bad", "operator", 1.0)
    running, _ = await meta.enqueue_fill("https://h/run", "", "https://h/run", "operator", 1.0)
    assert done.expected == Digest("md5", "c" * 32)
    list_id = await meta.add_list("rebuild.txt", "urls", "api:ops", 1.0)
    await meta.add_list_items(list_id, [
        ListItem(1, "https://h/done", "queued", done.id),
        ListItem(2, "https://h/bad", "queued", failed.id),
        ListItem(3, "https://h/run", "queued", running.id),
        ListItem(4, "https://h/old", ItemState.CACHED, total=7),
        ListItem(5, "not a url", ItemState.REFUSED, note="not an http(s) URL"),
    ])  # fmt: skip
    claimed = await meta.claim_fill(2.0, HOLDER, done.id)
    await meta.commit_artifact(claimed, "a" * 64, 100, {}, "https://h/done", 3.0, HOLDER.holder)
    await meta.finish_fill(failed.id, FillState.FAILED, "origin answered 404", "https://h/bad", 3.0)
    await meta.claim_fill(2.0, HOLDER, running.id)
    await meta.save_progress(running.id, 40, 80)
    tally = await meta.tally_list(list_id)
    assert tally.counts == {"done": 1, "failed": 1, "running": 1, "cached": 1, "refused": 1}
    assert tally.bytes_done == {"done": 100, "failed": 0, "running": 40, "cached": 7,
                                "refused": 0}  # fmt: skip
    assert tally.running == [running.id]
    assert await meta.clear_finished_fills() == 2
    items = {i.line: i for i in (await meta.list_items(list_id)).rows}
    assert (items[1].state, items[1].total, items[1].fill_id) == ("done", 100, None)
    assert (items[2].state, items[2].note) == ("failed", "origin answered 404")
    assert (items[3].state, items[3].bytes_done, items[3].fill_id) == ("running", 40, running.id)
    assert await meta.tally_list(list_id) == tally  # nothing changed but where it is kept
    only = await meta.list_items(list_id, ("failed", "refused"), limit=1)
    assert only.total == 2 and [i.line for i in only.rows] == [2]


async def test_lists_follow_the_event_age_and_their_own_count(meta):
    for n in range(MAX_LISTS + 3):
        list_id = await meta.add_list(f"{n}.txt", "urls", None, float(n))
        await meta.add_list_items(list_id, [ListItem(1, f"https://h/{n}", ItemState.CACHED)])
    await meta.prune(now=MAX_LISTS + 10.0, miss_max_age=1e9, max_misses=10,
                     event_max_age=MAX_LISTS + 8.0, max_events=10)  # fmt: skip
    kept = await meta.list_lists(limit=MAX_LISTS + 3)
    # Age took lists 0 and 1 (made before 2); the count kept the newest MAX_LISTS.
    assert kept.total == MAX_LISTS and kept.rows[-1].source == "3.txt"
    assert (await meta.list_items(kept.rows[-1].id)).total == 1
    assert (await meta.list_items(1)).total == 0  # the items went with their list


async def test_finished_fills_follow_the_event_limits(meta):
    for n in range(6):
        fill, _ = await meta.enqueue_fill(f"https://h/{n}", "", f"https://h/{n}", "miss", n)
        await meta.finish_fill(fill.id, FillState.FAILED, "x", fill.url, now=100.0 + n)
    await meta.enqueue_fill("https://h/run", "", "https://h/run", "miss", 0)
    await meta.prune(now=110.0, miss_max_age=1e9, max_misses=10, event_max_age=8.0, max_events=3)
    kept = [f.key for f in (await meta.list_fills()).rows]
    # Age took 0 and 1 (finished before 102); the count kept the newest 3.
    assert kept == ["https://h/run", "https://h/5", "https://h/4", "https://h/3"]


async def test_no_scope_finds_nothing(meta):
    stored = await add(meta, "https://h/a", "a" * 64, 10)
    assert await meta.find_artifact("https://h/a", ()) is None
    assert await meta.find_artifact_by_sha256("a" * 64, []) is None
    assert (await meta.find_artifact_by_sha256("a" * 64, [""])).id == stored.id


async def test_one_active_fill_per_key_and_scope(meta):
    first, created = await meta.enqueue_fill("https://h/a", "", "https://h/a", "miss", 1.0)
    again, created_again = await meta.enqueue_fill("https://h/a", "", "https://h/a", "miss", 2.0)
    assert created and not created_again and again.id == first.id
    other, created_other = await meta.enqueue_fill("https://h/a", "s1", "https://h/a", "miss", 2.0)
    assert created_other and other.id != first.id  # another credential scope


async def test_a_lease_that_runs_out_lets_another_host_take_the_fill_over(meta):
    fill, _ = await meta.enqueue_fill("https://h/a", "", "https://h/a", "miss", 1.0)
    a, b = Lease("host-a", 10.0), Lease("host-b", 20.0)
    assert (await meta.claim_fill(5.0, a)).holder == "host-a"
    assert await meta.claim_fill(9.0, b) is None  # a's lease holds until 10
    assert await meta.renew_lease(Lease("host-a", 12.0)) == {fill.id}
    assert await meta.claim_fill(11.0, b) is None
    taken = await meta.claim_fill(13.0, b)  # a stopped renewing
    assert (taken.id, taken.holder, taken.state) == (fill.id, "host-b", FillState.RUNNING)
    assert await meta.renew_lease(Lease("host-a", 20.0)) == set()  # a learns it lost it
    assert await meta.commit_artifact(taken, "a" * 64, 1, {}, "u", 14.0, "host-a") is None
    assert await meta.finish_fill(fill.id, FillState.FAILED, "x", "u", 14.0, "host-a") is None
    assert await meta.commit_artifact(taken, "a" * 64, 1, {}, "u", 14.0, "host-b") is not None
    assert await meta.totals() == (1, 1)


async def test_a_credentialed_fill_runs_only_where_its_credentials_are(meta):
    a, b = Lease("host-a", 10.0), Lease("host-b", 10.0)
    fill, _ = await meta.enqueue_fill("https://h/c", "s", "https://h/c", "miss", 1.0,
                                      credentialed=True, lease=a)  # fmt: skip
    assert await meta.claim_fill(2.0, b) is None
    assert (await meta.claim_fill(2.0, a)).id == fill.id
    assert await meta.orphaned_fills(9.0) == []
    assert await meta.claim_fill(11.0, b) is None  # never taken over...
    (orphan,) = await meta.orphaned_fills(11.0)  # ...but known to be orphaned
    assert orphan.id == fill.id and orphan.holder == "host-a"


async def test_hosts_claiming_at_once_each_get_a_different_fill(meta):
    for n in range(6):
        await meta.enqueue_fill(f"https://h/{n}", "", f"https://h/{n}", "miss", 1.0)
    claims = await asyncio.gather(
        *[meta.claim_fill(2.0, Lease(f"host-{n}", 10.0)) for n in range(8)]
    )
    ids = [c.id for c in claims if c]
    assert len(ids) == 6 and len(set(ids)) == 6


async def test_hosts_migrating_a_new_database_at_once(scale_stores):
    from withcache.server.store.postgres import MIGRATIONS as PG_MIGRATIONS
    from withcache.server.store.postgres import PostgresMetadata

    postgres, _ = scale_stores
    url = postgres.new_database()
    stores = await asyncio.gather(*[PostgresMetadata.connect(url) for _ in range(4)])
    assert {await s.secret("scope") for s in stores} == {await stores[0].secret("scope")}
    for store in stores:
        await store.close()
    import psycopg

    with psycopg.connect(url) as conn:
        versions = conn.execute("SELECT version FROM withcache_schema ORDER BY 1").fetchall()
    assert versions == [(n,) for n in range(1, len(PG_MIGRATIONS) + 1)]


async def test_reservations_keep_stored_plus_promised_within_the_cap(meta):
    await add(meta, "https://h/stored", "s" * 64, 40)
    fills = []
    for name in ("a", "b"):
        await meta.enqueue_fill(f"https://h/{name}", "", f"https://h/{name}", "miss", 2.0)
        fills.append(await meta.claim_fill(2.0, HOLDER))
    a, b = fills
    assert await meta.reserve_bytes(a.id, HOLDER.holder, 30, cap=100)
    assert not await meta.reserve_bytes(b.id, HOLDER.holder, 31, cap=100)  # 40 + 30 + 31
    assert await meta.reserve_bytes(b.id, HOLDER.holder, 30, cap=100)
    assert await meta.reserved_bytes() == 60
    assert not await meta.reserve_bytes(a.id, "host-b", 10, cap=100)  # not its fill
    # A commit moves a fill's promise into the stored bytes, in one step.
    await meta.commit_artifact(a, "a" * 64, 30, {}, "https://h/a", 3.0, HOLDER.holder)
    assert await meta.reserved_bytes() == 30
    assert (await meta.totals())[1] == 70
    assert not await meta.reserve_bytes(b.id, HOLDER.holder, 31, cap=100)
    await meta.finish_fill(b.id, FillState.FAILED, "x", "https://h/b", 3.0)
    assert await meta.reserved_bytes() == 0


async def test_concurrent_reservations_never_pass_the_cap(meta):
    fills = []
    for n in range(8):
        await meta.enqueue_fill(f"https://h/{n}", "", f"https://h/{n}", "miss", 2.0)
        fills.append(await meta.claim_fill(2.0, HOLDER))
    granted = await asyncio.gather(
        *[meta.reserve_bytes(f.id, HOLDER.holder, 30, cap=100) for f in fills]
    )
    assert sum(granted) == 3
    assert await meta.reserved_bytes() == 90


async def test_blobs_due_for_a_check_oldest_first_and_claimed_once(meta):
    await add(meta, "https://h/a", "a" * 64, 10, now=5.0)
    await add(meta, "https://h/b", "b" * 64, 20, now=3.0)
    await add(meta, "https://h/b2", "b" * 64, 20, now=4.0)  # same blob, one check
    assert await meta.blobs_to_check(4.5, 10) == [("b" * 64, 20)]
    assert await meta.blobs_to_check(9.0, 10) == [("b" * 64, 20), ("a" * 64, 10)]
    assert await meta.unchecked_totals(9.0) == (2, 30)
    assert await meta.mark_checked("b" * 64, 10.0, unless_since=9.0)
    assert not await meta.mark_checked("b" * 64, 10.5, unless_since=9.0)  # taken already
    assert await meta.blobs_to_check(9.0, 10) == [("a" * 64, 10)]
    assert await meta.mark_checked("a" * 64, 11.0)  # verify: whatever was done before
    assert await meta.unchecked_totals(9.0) == (0, 0)


async def test_a_resume_point_outlives_a_claim(meta):
    fill, _ = await meta.enqueue_fill("https://h/r", "", "https://h/r", "miss", 1.0)
    await meta.claim_fill(1.0, HOLDER)
    resume = {"file": "fill-abc", "bytes": 1000, "validator": '"v"', "total": 5000}
    await meta.save_progress(fill.id, 1200, 5000, resume)
    await meta.save_progress(fill.id, 1300, 5000)  # progress alone keeps the point
    await meta.requeue_interrupted()
    record = await meta.get_fill(fill.id)
    assert record.resume == resume
    if record.state is FillState.QUEUED:  # SQLite: queued again at start
        assert (await meta.claim_fill(2.0, HOLDER)).resume == resume


async def test_pins_and_eviction_order_least_recently_used_first(meta):
    a = await add(meta, "https://h/a", "a" * 64, 10, now=1.0)
    b = await add(meta, "https://h/b", "b" * 64, 20, now=2.0)
    c = await add(meta, "https://h/c", "c" * 64, 30, now=3.0)
    d = await add(meta, "https://h/d", "b" * 64, 20, now=4.0)  # shares b's blob
    await meta.add_hits({a.id: (1, 9.0)})  # a was hit last: it goes last
    order = await meta.eviction_candidates(10)
    assert [x.id for x in order] == [b.id, c.id, d.id, a.id]
    assert [x.refs for x in order] == [2, 1, 2, 1]
    assert [x.last_used for x in order] == [2.0, 3.0, 4.0, 9.0]
    pinned = await meta.set_pinned(c.id, True)
    assert pinned.pinned and not (await meta.get_artifact(b.id)).pinned
    assert [x.id for x in await meta.eviction_candidates(10)] == [b.id, d.id, a.id]
    assert [x.id for x in await meta.eviction_candidates(10, used_before=4.0)] == [b.id]
    assert [x.id for x in await meta.eviction_candidates(1)] == [b.id]
    page = await meta.list_artifacts(pinned=True)
    assert [x.id for x in page.rows] == [c.id] and page.total == 1
    assert (await meta.list_artifacts(search="https://h/c", pinned=True)).total == 1
    assert (await meta.list_artifacts(search="https://h/a", pinned=True)).total == 0
    # A pinned artifact keeps its pin when it is fetched again with new bytes.
    again = await add(meta, "https://h/c", "e" * 64, 5, now=10.0)
    assert again.id == c.id and again.pinned and again.sha256 == "e" * 64
    assert (await meta.set_pinned(c.id, False)).pinned is False
    assert await meta.set_pinned(999_999, True) is None


async def test_one_revalidation_per_artifact_at_a_time(meta):
    a = await add(meta, "https://h/a", "a" * 64, 10, now=1.0)
    assert a.validated_at is None and a.current_since == 1.0
    assert await meta.claim_revalidation(a.id, now=5.0, until=35.0)
    assert not await meta.claim_revalidation(a.id, now=6.0, until=36.0)  # another host
    await meta.end_revalidation(a.id, validated_at=7.0)
    assert (await meta.get_artifact(a.id)).current_since == 7.0
    assert await meta.claim_revalidation(a.id, now=8.0, until=38.0)
    # A claim whose holder vanished runs out.
    assert await meta.claim_revalidation(a.id, now=39.0, until=69.0)
    await meta.end_revalidation(a.id, validated_at=None)  # the origin could not say
    assert (await meta.get_artifact(a.id)).current_since == 7.0
    # New bytes start afresh: fetched now, no claim held.
    again = await add(meta, "https://h/a", "b" * 64, 10, now=50.0)
    assert again.validated_at is None and again.current_since == 50.0
    assert await meta.claim_revalidation(a.id, now=51.0, until=81.0)


async def test_hosts_racing_for_one_revalidation_get_it_once(meta):
    a = await add(meta, "https://h/a", "a" * 64, 10)
    won = await asyncio.gather(*(meta.claim_revalidation(a.id, 5.0, 35.0) for _ in range(8)))
    assert sorted(won) == [False] * 7 + [True]


async def test_a_deferred_fill_waits_until_its_time_or_its_origin_is_unblocked(meta):
    fill, _ = await meta.enqueue_fill("https://h:8443/a", "", "https://h:8443/a", "miss", 1.0)
    other, _ = await meta.enqueue_fill("https://h2/b", "", "https://h2/b", "miss", 1.0)
    claimed = await meta.claim_fill(2.0, HOLDER)
    assert claimed.id == fill.id
    assert await meta.defer_fill(fill.id, HOLDER.holder, until=100.0)
    assert not await meta.defer_fill(fill.id, HOLDER.holder, until=100.0)  # queued now
    assert (await meta.get_fill(fill.id)).state is FillState.QUEUED
    assert (await meta.claim_fill(3.0, HOLDER)).id == other.id  # the deferred one waits
    assert await meta.claim_fill(4.0, HOLDER) is None
    assert (await meta.claim_fill(100.0, HOLDER, fill.id)).id == fill.id  # its time came
    assert await meta.defer_fill(fill.id, HOLDER.holder, until=1e9)
    assert await meta.undefer_fills("https://h") == 0  # another origin (no port)
    assert await meta.undefer_fills("https://h:8443") == 1
    assert (await meta.claim_fill(5.0, HOLDER)).id == fill.id


async def test_ended_sessions_are_kept_until_they_expire_and_bounded(meta):
    for n in range(5):
        await meta.end_session(f"nonce{n}", 100.0 + n)
    await meta.end_session("nonce0", 100.0)  # a second logout of the same session
    assert await meta.session_ended("nonce0") and not await meta.session_ended("other")
    await meta.prune_sessions(now=101.5, keep=10)  # nonce0 and nonce1 expired anyway
    assert [await meta.session_ended(f"nonce{n}") for n in range(5)] == [False, False] + [True] * 3
    await meta.prune_sessions(now=0.0, keep=2)  # the two that expire last are kept
    assert [await meta.session_ended(f"nonce{n}") for n in range(5)] == [False] * 3 + [True] * 2


async def test_a_blob_object_is_pending_then_recorded_then_abandoned(meta):
    await meta.note_upload("uploads/a", 1.0)
    assert await meta.find_blob_object("a" * 64) is None  # pending: nobody reads it
    assert await meta.abandoned_uploads(started_before=0.5) == []  # younger than that
    await add(meta, "https://h/a", "a" * 64, 10, location="uploads/a")
    assert await meta.find_blob_object("a" * 64) == "uploads/a"
    # Recorded: neither a failed fill's clean-up nor start-up cleaning may take it.
    assert not await meta.abandon_upload("uploads/a")
    assert await meta.abandoned_uploads(started_before=1e12) == []
    # Another URL with the same bytes records the same object.
    await add(meta, "https://h/a2", "a" * 64, 10, location="uploads/a")
    assert await meta.totals() == (2, 10)
    # The blob is deleted: its record is abandoned until the object is gone.
    assert await meta.abandon_blob("a" * 64) == "uploads/a"
    assert await meta.find_blob_object("a" * 64) is None
    assert await meta.abandoned_uploads(started_before=0.0) == ["uploads/a"]  # any age
    await meta.forget_upload("uploads/a")
    assert await meta.abandoned_uploads(started_before=1e12) == []
    assert await meta.abandon_blob("a" * 64) is None


async def test_a_pending_object_abandoned_once_is_cleaned_once(meta):
    await meta.note_upload("uploads/p", 1.0)
    await meta.note_upload("uploads/q", 5.0)
    assert await meta.abandon_upload("uploads/p")  # the fill failed: its host cleans up
    assert await meta.abandoned_uploads(started_before=2.0) == ["uploads/p"]
    assert sorted(await meta.abandoned_uploads(started_before=6.0)) == ["uploads/p", "uploads/q"]
    await meta.forget_upload("uploads/p")
    await meta.forget_upload("uploads/q")
    assert await meta.abandoned_uploads(started_before=1e12) == []


async def test_a_commit_whose_upload_was_abandoned_changes_nothing(meta):
    fill, _ = await meta.enqueue_fill("https://h/late", "", "https://h/late", "miss", 1.0)
    claimed = await meta.claim_fill(1.0, HOLDER)
    await meta.note_upload("uploads/late", 1.0)
    assert await meta.abandoned_uploads(started_before=2.0) == ["uploads/late"]  # a day old
    with pytest.raises(StoreError, match="abandoned before it was recorded"):
        await meta.commit_artifact(
            claimed, "l" * 64, 5, {}, "u", 3.0, HOLDER.holder, location="uploads/late"
        )
    assert (await meta.get_fill(fill.id)).state is FillState.RUNNING
    assert await meta.totals() == (0, 0)
    assert await meta.find_blob_object("l" * 64) is None
    # The same fill, with its bytes stored again, commits.
    await meta.note_upload("uploads/again", 3.0)
    found = await meta.commit_artifact(
        claimed, "l" * 64, 5, {}, "u", 4.0, HOLDER.holder, location="uploads/again"
    )
    assert found.sha256 == "l" * 64
    assert await meta.find_blob_object("l" * 64) == "uploads/again"
