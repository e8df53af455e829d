"""The core's operator calls (what the UI and API put buttons on), run
in-process against real SQLite, real files and the real origin."""

import asyncio
import hashlib
import os

import pytest

from withcache.server import fills
from withcache.server.cache import ActionError, Cache
from withcache.server.download import FillError
from withcache.server.fills import FillCancelled
from withcache.server.store import FillState

pytestmark = pytest.mark.backends
BODY = os.urandom(300_000)


@pytest.fixture
async def cache(tmp_path, ca_file, monkeypatch, backend):
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    settings = backend.settings(
        data_dir=tmp_path, allow_private_origins=True, retry_delay=0.05, curate=True
    )
    core = await Cache.open(settings)
    await core.start()
    yield core
    await core.stop()


async def test_add_by_url_fills_and_verifies(cache, origin):
    url = origin.add("/core/add.bin", BODY)
    record = await cache.add(url, hashlib.sha256(BODY).hexdigest(), actor="operator")
    assert record.requested_by == "operator"
    artifact = await cache.fills.live(record.id).result()
    assert artifact.sha256 == hashlib.sha256(BODY).hexdigest()
    assert await cache.lookup(cache.key(url), None) == artifact
    (queued,) = (await cache.metadata.list_events(kind="fill.queued")).rows
    assert queued.actor == "operator"


async def test_add_with_wrong_sha256_keeps_nothing(cache, origin, backend):
    url = origin.add("/core/wrong.bin", BODY)
    record = await cache.add(url, "0" * 64)
    with pytest.raises(FillError, match="SHA-256 mismatch"):
        await cache.fills.live(record.id).result()
    assert await cache.lookup(cache.key(url), None) is None
    assert backend.blob_names(cache.settings.data_dir) == []
    assert (await cache.metadata.get_fill(record.id)).state is FillState.FAILED


@pytest.mark.parametrize(
    ("url", "sha", "message"),
    [
        ("ftp://h/x", None, "not an http"),
        ("https://h/x", "xyz", "64 hex digits"),
        ("", None, "empty URL"),
    ],
)
async def test_add_refuses_bad_input(cache, url, sha, message):
    with pytest.raises(ActionError, match=message):
        await cache.add(url, sha)


async def test_add_twice_while_running_is_refused(cache, origin):
    url = origin.add("/core/twice.bin", BODY, rate=500_000)
    await cache.add(url)
    with pytest.raises(ActionError, match="already queued or running"):
        await cache.add(url)


async def test_approve_a_curated_miss(cache, origin):
    url = origin.add("/core/approve.bin", BODY)
    outcome = await cache.miss(url + "?token=t", cache.key(url), None)
    assert outcome.fill is None
    record = await cache.approve(cache.key(url), actor="operator")
    await cache.fills.live(record.id).result()
    assert origin.hits[-1].path == "/core/approve.bin"
    assert await cache.metadata.get_miss(cache.key(url)) is None  # settled by the fill
    artifact = await cache.lookup(cache.key(url), None)
    assert artifact.misses == 1


async def test_dismiss(cache, origin):
    url = origin.add("/core/dismiss.bin", BODY)
    await cache.miss(url, cache.key(url), None)
    await cache.dismiss(cache.key(url), actor="operator")
    assert await cache.metadata.get_miss(cache.key(url)) is None
    with pytest.raises(ActionError, match="no such miss"):
        await cache.dismiss(cache.key(url))
    events = (await cache.metadata.list_events(kind="miss.dismissed")).rows
    assert events[0].actor == "operator"


async def test_cancel_a_running_fill_keeps_nothing(cache, origin):
    url = origin.add("/core/cancel.bin", BODY * 10, rate=1_000_000)
    record = await cache.add(url)
    fill = cache.fills.live(record.id)
    while fill.bytes_done == 0:
        await fill.progressed()
    await cache.cancel(record.id, actor="operator")
    # Ended, recorded and cleaned up by the time cancel returns: the page an
    # operator sees next must not still show the fill running.
    assert fill.finished
    assert (await cache.metadata.get_fill(record.id)).state is FillState.CANCELLED
    assert list((cache.settings.data_dir / "tmp").iterdir()) == []
    (cancelled,) = (await cache.metadata.list_events(kind="fill.cancelled")).rows
    assert cancelled.actor == "operator"
    with pytest.raises(FillCancelled):
        await fill.result()
    with pytest.raises(ActionError):
        await cache.cancel(record.id)


async def test_cancel_a_queued_fill(cache, origin):
    for n in range(cache.settings.workers):  # keep every worker busy
        await cache.add(origin.add(f"/core/busy{n}.bin", BODY, rate=300_000))
    fifth = await cache.add(origin.add("/core/fifth.bin", BODY))
    assert (await cache.metadata.get_fill(fifth.id)).state is FillState.QUEUED
    await cache.cancel(fifth.id)
    assert (await cache.metadata.get_fill(fifth.id)).state is FillState.CANCELLED
    assert origin.gets("/core/fifth.bin") == 0


async def test_a_fill_a_client_waits_for_starts_beside_busy_workers(cache, origin, monkeypatch):
    monkeypatch.setattr(fills, "CLIENT_FILLS", 1)
    for n in range(cache.settings.workers):
        await cache.add(origin.add(f"/core/busy{n}.bin", BODY, rate=300_000))
    first, second = [
        (await cache.fills.request(url, cache.key(url), "", None, "miss"))[0]
        for url in (origin.add(f"/core/client{n}.bin", BODY) for n in range(2))
    ]
    await cache.fills.start_for_client(first)
    await cache.fills.start_for_client(first)  # already running: nothing more
    await cache.fills.start_for_client(second)  # over CLIENT_FILLS: waits for a worker
    assert (await first.result()).size == len(BODY)
    assert (await cache.metadata.get_fill(second.id)).state is FillState.QUEUED
    assert origin.gets("/core/client0.bin") == 1
    assert origin.gets("/core/client1.bin") == 0


async def test_retry_a_failed_fill(cache, origin):
    url = origin.add("/core/retry.bin", BODY, status=404)
    record = await cache.add(url)
    with pytest.raises(FillError):
        await cache.fills.live(record.id).result()
    with pytest.raises(ActionError, match="not failed or cancelled"):
        await cache.retry((await cache.add(origin.add("/core/ok.bin", BODY))).id)
    origin.resources["/core/retry.bin"].status = 200
    again = await cache.retry(record.id)
    await cache.fills.live(again.id).result()
    assert await cache.lookup(cache.key(url), None) is not None


async def test_delete_removes_row_and_unshared_blob(cache, origin, backend):
    a = origin.add("/core/del-a.bin", BODY)
    b = origin.add("/core/del-b.bin", BODY)
    for url in (a, b):
        await cache.fills.live((await cache.add(url)).id).result()
    blob = hashlib.sha256(BODY).hexdigest()
    first = await cache.lookup(cache.key(a), None)
    await cache.delete(first.id, actor="operator")
    assert await cache.lookup(cache.key(a), None) is None
    assert backend.blob_names(cache.settings.data_dir) == [blob]  # still used by b
    await cache.delete((await cache.lookup(cache.key(b), None)).id)
    assert backend.blob_names(cache.settings.data_dir) == []
    with pytest.raises(ActionError, match="no such artifact"):
        await cache.delete(first.id)


async def test_single_flight_joins_the_running_fill(cache, origin):
    url = origin.add("/core/join.bin", BODY, rate=1_000_000)
    key = cache.key(url)
    first, created = await cache.fills.request(url, key, "", None, "miss")
    second, joined_created = await cache.fills.request(url, key, "", None, "miss")
    assert created and not joined_created and first is second
    results = await asyncio.gather(first.result(), second.result())
    assert results[0] == results[1]
    assert origin.gets("/core/join.bin") == 1


async def test_a_fresh_fill_replaces_what_lookups_return_at_once(cache, origin):
    url = origin.add("/core/refill.bin", b"first version")
    await cache.fills.live((await cache.add(url)).id).result()
    first = await cache.lookup(cache.key(url), None)
    assert first.sha256 == hashlib.sha256(b"first version").hexdigest()
    origin.resources["/core/refill.bin"].body = b"second version"
    await cache.fills.live((await cache.add(url)).id).result()
    second = await cache.lookup(cache.key(url), None)  # not the remembered first
    assert second.sha256 == hashlib.sha256(b"second version").hexdigest()
