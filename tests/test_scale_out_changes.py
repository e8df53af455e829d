"""Two cache-hosts on one PostgreSQL and one bucket see each other's changes:
what one deletes, quarantines or fills afresh, the other stops serving from
its lookup memo at once (LISTEN/NOTIFY), long before the memo would expire."""

import asyncio
import os
import time

import pytest

from withcache.server import lookup
from withcache.server.store import changes

pytestmark = pytest.mark.parametrize("backend", ["scale"], indirect=True)
BODY = os.urandom(100_000)
MEMO = 60.0  # the memo's life here: a host that hears nothing serves stale this long
HEARD = 10.0  # a change is heard well within this (it takes milliseconds)


@pytest.fixture
def long_memo(monkeypatch):
    monkeypatch.setattr(lookup, "LOOKUP_SECONDS", MEMO)
    monkeypatch.setattr(lookup, "LISTENING_SECONDS", MEMO, raising=False)


def listeners(backend, tmp_path) -> int:
    """Connections that LISTEN: the listener's first query is its LISTEN, so
    any query shown means it has run (the one shown is its health check's
    once it has been quiet for changes.HEALTH_SECONDS)."""
    (count,) = backend.rows(
        tmp_path,
        f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{changes.APPLICATION}' "
        "AND datname = current_database() AND query <> ''",
    )[0]
    return count


async def eventually(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := await check()):
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        await asyncio.sleep(0.02)
    return found


async def two_hosts(make_core, backend, tmp_path):
    a = await make_core(data_dir=tmp_path / "a")
    b = await make_core(data_dir=tmp_path / "b")
    # Both listen before the test acts (a host that doesn't would fail it anyway).
    deadline = time.monotonic() + 10
    while listeners(backend, tmp_path) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return a, b


async def stored_on(a, b, url):
    """Fill `url` on a; b looks it up (and remembers it)."""
    added = await a.add(url)
    await a.live_fill(added.fill.id).result()
    artifact = await b.lookup(b.key(url), None)
    assert artifact is not None
    return artifact


async def deleted_on(a, b, artifact, url, what: str) -> None:
    """Delete `artifact` on a; b's lookup of `url` misses within HEARD."""
    await a.delete(artifact.id)

    async def gone():
        return await b.lookup(b.key(url), None) is None

    await eventually(gone, HEARD, what)


async def test_a_delete_on_one_host_stops_hits_on_the_other(
    make_core, backend, tmp_path, origin, long_memo
):
    url = origin.add("/changes/deleted.bin", BODY)
    a, b = await two_hosts(make_core, backend, tmp_path)
    artifact = await stored_on(a, b, url)
    await deleted_on(a, b, artifact, url, "miss on the other host")


async def test_a_new_blob_on_one_host_is_served_by_the_other(
    make_core, backend, tmp_path, origin, long_memo
):
    url = origin.add("/changes/replaced.bin", BODY)
    a, b = await two_hosts(make_core, backend, tmp_path)
    old = await stored_on(a, b, url)
    newer = os.urandom(50_000)
    origin.add("/changes/replaced.bin", newer)
    added = await a.add(url, refresh=True)
    await a.live_fill(added.fill.id).result()

    async def replaced():
        found = await b.lookup(b.key(url), None)
        return found is not None and found.sha256 != old.sha256

    await eventually(replaced, HEARD, "new blob on the other host")
    assert (await b.lookup(b.key(url), None)).size == len(newer)


async def test_a_quarantine_on_one_host_stops_hits_on_the_other(
    make_core, backend, tmp_path, origin, long_memo
):
    url = origin.add("/changes/rotten.bin", BODY)
    a, b = await two_hosts(make_core, backend, tmp_path)
    artifact = await stored_on(a, b, url)
    backend.replace_blob(tmp_path, artifact.sha256, os.urandom(len(BODY)))
    run = await a.verify(quarantine=True)

    async def quarantined():
        return run.finished and await b.lookup(b.key(url), None) is None

    await eventually(quarantined, HEARD + 10, "quarantine seen on the other host")
    assert len(run.corrupt) == 1


async def test_the_listener_reconnects_after_its_connection_drops(
    make_core, backend, tmp_path, origin, long_memo
):
    url = origin.add("/changes/reconnected.bin", BODY)
    a, b = await two_hosts(make_core, backend, tmp_path)
    assert listeners(backend, tmp_path) == 2
    backend.rows(
        tmp_path,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE application_name = '{changes.APPLICATION}' AND datname = current_database()",
    )

    async def back():
        return listeners(backend, tmp_path) == 2

    await eventually(back, 10, "listeners back")
    artifact = await stored_on(a, b, url)
    await deleted_on(a, b, artifact, url, "miss on the other host after the reconnect")


async def test_changes_are_heard_after_the_listener_has_been_quiet(
    make_core, backend, tmp_path, origin, long_memo
):
    """A quiet listener asks its connection a health query every
    HEALTH_SECONDS; it goes on listening after it."""
    url = origin.add("/changes/after-quiet.bin", BODY)
    a, b = await two_hosts(make_core, backend, tmp_path)
    artifact = await stored_on(a, b, url)
    await asyncio.sleep(changes.HEALTH_SECONDS + 1)
    assert listeners(backend, tmp_path) == 2
    await deleted_on(a, b, artifact, url, "miss on the other host after a quiet while")
