"""verify.py on its own, through the core in this process, on both store pairs:
a blob that rotted, shrank or vanished is found; `verify` with quarantine
(and the background scrub) takes it out of service and keeps the good ones,
and without quarantine only reports it."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

pytestmark = pytest.mark.backends
GOOD = os.urandom(150_000)
BAD = os.urandom(150_000)


async def stored(core, origin, path: str, body: bytes):
    url = origin.add(path, body)
    return await core.fill_result((await core.add(url)).fill.id)


async def finished(run, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not run.finished:
        assert time.monotonic() < deadline, "the verification did not end"
        await asyncio.sleep(0.05)
    return run


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda data: bytes([data[0] ^ 1]) + data[1:], "content: the bytes hash to"),
        (lambda data: data[:1000], ""),  # shorter: its size, or its hash, says so
        (None, "missing"),
    ],
    ids=["rotted", "shrunk", "gone"],
)
async def test_verify_quarantines_a_bad_blob_and_keeps_the_good(
    core, origin, backend, damage, problem
):
    good = await stored(core, origin, "/verify/good.bin", GOOD)
    bad = await stored(core, origin, "/verify/bad.bin", BAD)
    data_dir = core.settings.data_dir
    if damage is None:
        _remove(backend, data_dir, bad.sha256)
    else:
        backend.replace_blob(data_dir, bad.sha256, damage(BAD))
    run = await finished(await core.verify(quarantine=True, actor="operator"))
    assert run.error is None and run.checked == 2
    (corrupt,) = run.corrupt
    assert corrupt.sha256 == bad.sha256 and corrupt.quarantined
    assert problem in corrupt.problem
    assert [a.id for a in corrupt.artifacts] == [bad.id]
    assert await core.lookup(bad.key, None) is None  # a miss now: it fills afresh
    assert await core.lookup(good.key, None) == good
    assert bad.sha256 not in backend.blob_names(data_dir)
    assert good.sha256 in backend.blob_names(data_dir)
    (event,) = (await core.list_events(kind="artifact.quarantined")).rows
    assert event.actor == "operator"
    (report,) = (await core.list_events(kind="verify.finished")).rows
    assert (report.detail["blobs"], report.detail["corrupt"], report.detail["quarantined"]) == (
        2, 1, 1,
    )  # fmt: skip


def _remove(backend, data_dir, sha256: str) -> None:
    if backend.name == "embedded":
        (data_dir / "blobs" / sha256[:2] / sha256).unlink()
    else:
        import obstore

        obstore.delete(backend._store(), backend.blob_key(sha256))


async def test_verify_without_quarantine_only_reports(core, origin, backend):
    bad = await stored(core, origin, "/verify/report.bin", BAD)
    backend.replace_blob(core.settings.data_dir, bad.sha256, bytes(len(BAD)))
    run = await finished(await core.verify(quarantine=False))
    (corrupt,) = run.corrupt
    assert not corrupt.quarantined and "content" in corrupt.problem
    assert await core.lookup(bad.key, None) == bad
    assert (await core.list_events(kind="artifact.quarantined")).rows == []


async def test_the_scrub_finds_a_rotted_blob_by_itself(make_core, origin, backend):
    """--scrub-every: each blob re-hashed once a period; a period of 2 s here."""
    core = await make_core(scrub_every=2 / 86400)
    bad = await stored(core, origin, "/verify/scrubbed.bin", BAD)
    backend.replace_blob(core.settings.data_dir, bad.sha256, bytes(len(BAD)))
    deadline = time.monotonic() + 30
    while await core.lookup(bad.key, None) is not None:
        assert time.monotonic() < deadline, "the scrub did not find the rotted blob"
        await asyncio.sleep(0.1)
    (event,) = (await core.list_events(kind="artifact.quarantined")).rows
    assert event.actor == "scrub"
