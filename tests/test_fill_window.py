"""A fill that ends between a miss's lookup and its enqueue (here, or on
another host sharing the store) is served to that miss, never fetched again:
the enqueue and the commit see each other."""

import os

import pytest

pytestmark = pytest.mark.backends
BODY = os.urandom(200_000)


async def test_a_miss_that_looked_before_a_commit_gets_the_artifact(
    make_core, backend, tmp_path, origin
):
    url = origin.add("/window/committed.bin", BODY)
    a = await make_core(curate=False, data_dir=tmp_path / "a")
    # On the scale-out stores the miss is on another host; SQLite has one.
    b = await make_core(curate=False, data_dir=tmp_path / "b") if backend.scale else a
    key = b.key(url)
    assert await b.lookup(key, None) is None  # b's read path looks: not stored
    # Here b's request is held, between its lookup and its miss, while a's fill commits.
    added = await a.add(url)
    stored = await a.live_fill(added.fill.id).result()
    outcome = await b.miss(url, key, None, waiting=True)
    assert outcome.fill is None  # nothing queued: no second download
    assert (await b.list_fills()).total == 1
    assert origin.gets("/window/committed.bin") == 1
    assert outcome.stored.sha256 == stored.sha256
