"""The core's operator calls (what the UI and API put buttons on), run
in-process against real SQLite, real files and the real origin."""

import asyncio
import contextlib
import hashlib
import os

import pytest

from withcache.server.cache import ActionError, Cache
from withcache.server.fill import manager
from withcache.server.fill.fill import CancelledByOperator, FillError
from withcache.server.records import FillState

pytestmark = pytest.mark.backends
BODY = os.urandom(300_000)


async def test_add_by_url_fills_and_verifies(core, origin):
    url = origin.add("/core/add.bin", BODY)
    record = (await core.add(url, hashlib.sha256(BODY).hexdigest(), actor="operator")).fill
    assert record.requested_by == "operator"
    artifact = await core.fill_result(record.id)
    assert artifact.sha256 == hashlib.sha256(BODY).hexdigest()
    assert await core.lookup(core.key(url), None) == artifact
    (queued,) = (await core.list_events(kind="fill.queued")).rows
    assert queued.actor == "operator"


async def test_add_with_wrong_sha256_keeps_nothing(core, origin, backend):
    # Slow enough that the fill is still live when the test asks for it (on a
    # loaded machine a fast one failed inside add()'s own store round trips).
    url = origin.add("/core/wrong.bin", BODY, rate=len(BODY) * 2)
    record = (await core.add(url, "0" * 64)).fill
    with pytest.raises(FillError, match="SHA-256 mismatch"):
        await core.fill_result(record.id)
    assert await core.lookup(core.key(url), None) is None
    assert backend.blob_names(core.settings.data_dir) == []
    assert (await core.fill(record.id)).record.state is FillState.FAILED


@pytest.mark.parametrize(
    ("url", "sha", "message"),
    [
        ("ftp://h/x", None, "not an http"),
        ("https://h/x", "xyz", "64 hex digits"),
        ("", None, "empty URL"),
    ],
)
async def test_add_refuses_bad_input(core, url, sha, message):
    with pytest.raises(ActionError, match=message):
        await core.add(url, sha)


async def test_add_twice_while_running_joins_the_fill(core, origin):
    url = origin.add("/core/twice.bin", BODY, rate=500_000)
    first = await core.add(url)
    again = await core.add(url)
    assert first.created and not again.created and again.fill.id == first.fill.id
    with pytest.raises(ActionError, match="already queued or running"):
        await core.add(url, "ab" * 32)


async def test_add_of_a_cached_url_fetches_nothing_unless_refresh(core, origin):
    url = origin.add("/core/seeded.bin", BODY)
    await core.fill_result((await core.add(url)).fill.id)
    again = await core.add(url)
    assert again.artifact is not None and again.fill is None
    assert again.artifact.sha256 == hashlib.sha256(BODY).hexdigest()
    assert origin.gets("/core/seeded.bin") == 1
    assert (await core.add(url, hashlib.sha256(BODY).hexdigest())).artifact is not None
    with pytest.raises(ActionError, match="cached already with other bytes"):
        await core.add(url, "ab" * 32)
    fresh = await core.add(url, refresh=True)
    await core.fill_result(fresh.fill.id)
    assert origin.gets("/core/seeded.bin") == 2


async def test_approve_a_curated_miss(core, origin):
    url = origin.add("/core/approve.bin", BODY)
    outcome = await core.miss(url + "?token=t", core.key(url), None)
    assert outcome.fill is None
    record = await core.approve(core.key(url), actor="operator")
    await core.fill_result(record.id)
    assert origin.hits[-1].path == "/core/approve.bin"
    assert await core.get_miss(core.key(url)) is None  # settled by the fill
    artifact = await core.lookup(core.key(url), None)
    assert artifact.misses == 1


async def test_dismiss(core, origin):
    url = origin.add("/core/dismiss.bin", BODY)
    await core.miss(url, core.key(url), None)
    await core.dismiss(core.key(url), actor="operator")
    assert await core.get_miss(core.key(url)) is None
    with pytest.raises(ActionError, match="no such miss"):
        await core.dismiss(core.key(url))
    events = (await core.list_events(kind="miss.dismissed")).rows
    assert events[0].actor == "operator"


async def test_cancel_a_running_fill_keeps_nothing(core, origin):
    url = origin.add("/core/cancel.bin", BODY * 10, rate=1_000_000)
    record = (await core.add(url)).fill
    fill = core.live_fill(record.id)
    while fill.bytes_done == 0:
        await fill.progressed()
    await core.cancel(record.id, actor="operator")
    # Ended, recorded and cleaned up by the time cancel returns: the page an
    # operator sees next must not still show the fill running.
    assert fill.finished
    assert (await core.fill(record.id)).record.state is FillState.CANCELLED
    assert list((core.settings.data_dir / "tmp").iterdir()) == []
    (cancelled,) = (await core.list_events(kind="fill.cancelled")).rows
    assert cancelled.actor == "operator"
    with pytest.raises(CancelledByOperator):
        await fill.result()
    with pytest.raises(ActionError):
        await core.cancel(record.id)


async def test_cancel_a_queued_fill(core, origin):
    for n in range(core.settings.workers):  # keep every worker busy
        await core.add(origin.add(f"/core/busy{n}.bin", BODY, rate=300_000))
    fifth = (await core.add(origin.add("/core/fifth.bin", BODY))).fill
    assert (await core.fill(fifth.id)).record.state is FillState.QUEUED
    await core.cancel(fifth.id)
    assert (await core.fill(fifth.id)).record.state is FillState.CANCELLED
    assert origin.gets("/core/fifth.bin") == 0


async def test_a_fill_a_client_waits_for_starts_beside_busy_workers(auto_core, origin, monkeypatch):
    core = auto_core
    monkeypatch.setattr(manager, "CLIENT_FILLS", 1)
    for n in range(core.settings.workers):  # every worker busy for 3 s
        await core.add(origin.add(f"/core/busy{n}.bin", BODY, rate=100_000))
    first, second = [
        await core.miss(url, core.key(url), None, waiting=True)
        for url in (origin.add(f"/core/client{n}.bin", BODY, rate=300_000) for n in range(2))
    ]
    for _ in range(2):  # the second time it is running already: nothing more
        reader = await core.open_fill_reader(first, probe=False, wait=10)
        assert reader is not None and reader.total == len(BODY)
        reader.close()
    # Over CLIENT_FILLS: it waits for a worker (and its probe gives up meanwhile).
    assert await core.open_fill_reader(second, probe=True, wait=0.5) is None
    assert (await first.fill.result()).size == len(BODY)
    assert (await core.fill(second.fill.id)).record.state is FillState.QUEUED
    assert origin.gets("/core/client0.bin") == 1
    assert origin.gets("/core/client1.bin") == 0


async def test_retry_a_failed_fill(core, origin):
    url = origin.add("/core/retry.bin", BODY, status=404)
    record = (await core.add(url)).fill
    with pytest.raises(FillError):
        await core.fill_result(record.id)
    with pytest.raises(ActionError, match="not failed or cancelled"):
        await core.retry((await core.add(origin.add("/core/ok.bin", BODY))).fill.id)
    origin.resources["/core/retry.bin"].status = 200
    again = await core.retry(record.id)
    await core.fill_result(again.id)
    assert await core.lookup(core.key(url), None) is not None


async def test_a_failed_fill_can_be_retried_as_soon_as_its_waiters_know(core, origin, monkeypatch):
    """Waiters learn of a failure before its row is written (a slow or full
    store must not keep them): an operator acting at once still finds the
    fill failed, not running."""
    url = origin.add("/core/retry-at-once.bin", BODY, status=404, delay=0.3)
    store = core._metadata
    finish_fill = store.finish_fill

    async def slow_finish_fill(*args, **kwargs):
        await asyncio.sleep(0.5)
        return await finish_fill(*args, **kwargs)

    monkeypatch.setattr(store, "finish_fill", slow_finish_fill)
    record = (await core.add(url)).fill
    fill = core.live_fill(record.id)  # the origin answers in 0.3 s: still live
    with pytest.raises(FillError):
        await fill.result()  # told as soon as it failed, before its row is written
    origin.resources["/core/retry-at-once.bin"].status = 200
    again = await core.retry(record.id)
    await core.fill_result(again.id)
    assert await core.lookup(core.key(url), None) is not None


async def test_delete_removes_row_and_unshared_blob(core, origin, backend):
    a = origin.add("/core/del-a.bin", BODY)
    b = origin.add("/core/del-b.bin", BODY)
    for url in (a, b):
        await core.fill_result((await core.add(url)).fill.id)
    blob = hashlib.sha256(BODY).hexdigest()
    first = await core.lookup(core.key(a), None)
    await core.delete(first.id, actor="operator")
    assert await core.lookup(core.key(a), None) is None
    assert backend.blob_names(core.settings.data_dir) == [blob]  # still used by b
    await core.delete((await core.lookup(core.key(b), None)).id)
    assert backend.blob_names(core.settings.data_dir) == []
    with pytest.raises(ActionError, match="no such artifact"):
        await core.delete(first.id)


async def test_single_flight_joins_the_running_fill(auto_core, origin):
    core = auto_core
    url = origin.add("/core/join.bin", BODY, rate=1_000_000)
    key = core.key(url)
    first = await core.miss(url, key, None)
    second = await core.miss(url, key, None)
    assert first.reason.startswith("queued") and second.reason.startswith("being fetched")
    assert first.fill is second.fill
    results = await asyncio.gather(first.fill.result(), second.fill.result())
    assert results[0] == results[1]
    assert origin.gets("/core/join.bin") == 1


async def test_a_fresh_fill_replaces_what_lookups_return_at_once(core, origin):
    url = origin.add("/core/refill.bin", b"first version")
    await core.fill_result((await core.add(url)).fill.id)
    first = await core.lookup(core.key(url), None)
    assert first.sha256 == hashlib.sha256(b"first version").hexdigest()
    origin.resources["/core/refill.bin"].body = b"second version"
    await core.fill_result((await core.add(url, refresh=True)).fill.id)
    second = await core.lookup(core.key(url), None)  # not the remembered first
    assert second.sha256 == hashlib.sha256(b"second version").hexdigest()


async def test_stop_ends_a_background_task_that_swallowed_its_cancellation(backend, tmp_path):
    # Python 3.11's wait_for (inside the PostgreSQL pool) can swallow a
    # cancellation that races with its result: the task goes on looping.
    async def stubborn() -> None:
        swallowed = False
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed = True

    cache = await Cache.open(backend.settings(data_dir=tmp_path, curate=True))
    await cache.start()
    task = asyncio.create_task(stubborn())
    cache._tasks.append(task)
    await asyncio.wait_for(cache.stop(), 15)
    assert task.done()


async def test_a_miss_whose_fill_fails_at_once_says_why(backend, tmp_path, origin, monkeypatch):
    cache = await Cache.open(
        backend.settings(data_dir=tmp_path, allow_private_origins=True, retry_delay=0.05)
    )
    await cache.start()
    try:
        url = origin.add("/core/forbidden-at-once.bin", b"no", status=403)
        key, written = cache.key(url), cache._metadata.record_miss

        async def slow_write(*args):  # the fill ends before the miss is written
            await asyncio.sleep(0.5)
            await written(*args)

        monkeypatch.setattr(cache._metadata, "record_miss", slow_write)
        outcome = await cache.miss(url, key, None)
        with pytest.raises(FillError, match="403"):
            await outcome.fill.result()
        for _ in range(100):
            reason = (await cache.get_miss(key)).reason
            if reason != "being fetched":
                break
            await asyncio.sleep(0.05)
        assert reason == "fill failed: origin answered 403 Forbidden"
    finally:
        await cache.stop()


async def test_approve_asks_the_policy_a_miss_asked(core):
    url = "http://127.1/core/refused.bin"  # not a canonical address: the policy refuses it
    outcome = await core.miss(url, core.key(url), None)
    assert "not a canonical IPv4 address" in outcome.reason
    with pytest.raises(ActionError, match=r"not fetched: host 127\.1 is not a canonical"):
        await core.approve(core.key(url), actor="operator")
    assert (await core.list_fills()).total == 0


async def test_operators_ask_the_same_room_as_misses(make_core, origin):
    core = await make_core(max_bytes=len(BODY))
    failed = (await core.add(origin.add("/core/room-404.bin", BODY, status=404))).fill
    with pytest.raises(FillError):
        await core.fill_result(failed.id)
    await core.fill_result((await core.add(origin.add("/core/room-a.bin", BODY))).fill.id)
    # The store is at --max-bytes now: no operator's fill starts, as no miss's would.
    url = origin.add("/core/room-b.bin", BODY)
    await core.miss(url, core.key(url), None)
    for act in (
        lambda: core.add(origin.add("/core/room-c.bin", BODY)),
        lambda: core.retry(failed.id),
        lambda: core.approve(core.key(url)),
    ):
        with pytest.raises(ActionError, match=r"not fetched: the cache is full \(--max-bytes\)"):
            await act()
    assert (await core.list_fills()).total == 2
    assert origin.gets("/core/room-b.bin") == origin.gets("/core/room-c.bin") == 0


async def test_a_cancelled_fill_says_so_on_its_miss(auto_core, origin):
    url = origin.add("/core/cancelled-miss.bin", BODY * 10, rate=1_000_000)
    outcome = await auto_core.miss(url, auto_core.key(url), None)
    await auto_core.cancel(outcome.fill.id, actor="operator")
    (miss,) = (await auto_core.list_misses()).rows
    assert miss.reason == "fill cancelled by an operator"


async def test_a_cancel_that_lands_before_its_fill_first_runs_cancels_it(
    auto_core, origin, monkeypatch
):
    """A worker has claimed the fill and made its task, but the task has not
    run yet when the operator's cancel lands: the fill still ends cancelled,
    in the store and on its miss, before cancel returns."""
    url = origin.add("/core/cancelled-early.bin", BODY * 10, rate=1_000_000)
    manager = auto_core._fills
    launched = asyncio.Event()

    async def held_before_it_runs(handle):
        launched.set()
        await asyncio.Event().wait()  # the cancel lands here, before _run's first line

    monkeypatch.setattr(manager, "_run", held_before_it_runs)
    outcome = await auto_core.miss(url, auto_core.key(url), None)
    await asyncio.wait_for(launched.wait(), 10)
    await auto_core.cancel(outcome.fill.id, actor="operator")
    (miss,) = (await auto_core.list_misses()).rows
    assert miss.reason == "fill cancelled by an operator"
    assert (await auto_core.fill(outcome.fill.id)).record.state is FillState.CANCELLED


async def test_a_miss_that_joins_a_fill_as_it_fails_keeps_the_failure(
    auto_core, origin, monkeypatch
):
    """A miss joining a running fill notes "being fetched"; if the fill fails
    while that note is on its way to the store (a slow PostgreSQL), the note
    must not land over the reason the failure wrote."""
    core = auto_core
    # (A 403, not a 404: a 404 says "origin says 404 (until ...)", negative.py.)
    url = origin.add("/core/join-failing.bin", status=403, delay=0.5)
    key = core.key(url)
    first = await core.miss(url, key, None)
    store = core._metadata
    record_miss = store.record_miss

    async def slow_record_miss(*args, **kwargs):
        # The note waits until the fill has failed and said so on the miss.
        with contextlib.suppress(FillError):
            await first.fill.result()
        while not (await store.get_miss(key)).reason.startswith("fill failed"):
            await asyncio.sleep(0.01)
        await record_miss(*args, **kwargs)

    monkeypatch.setattr(store, "record_miss", slow_record_miss)
    joined = await core.miss(url, key, None)
    assert joined.fill is first.fill
    monkeypatch.setattr(store, "record_miss", record_miss)
    miss = await core.get_miss(key)
    assert miss.reason.startswith("fill failed: ") and "403" in miss.reason
