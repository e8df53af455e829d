"""Local blob files on their own: content addressing, restart, abort."""

import asyncio
import hashlib
import os

import pytest

from withcache.server.store.files import LocalBlobs


async def test_commit_names_the_blob_by_its_sha256(tmp_path):
    blobs = LocalBlobs(tmp_path)
    writer = blobs.begin()
    await writer.write(b"hello ")
    await writer.write(b"world")
    sha = await writer.commit()
    assert sha == hashlib.sha256(b"hello world").hexdigest()
    assert blobs.path(sha).read_bytes() == b"hello world"
    assert list(blobs.tmp_dir.iterdir()) == []


async def test_restart_drops_what_was_written(tmp_path):
    blobs = LocalBlobs(tmp_path)
    writer = blobs.begin()
    await writer.write(b"stale bytes")
    await writer.restart()
    await writer.write(b"fresh")
    assert writer.size == 5
    assert await writer.commit() == hashlib.sha256(b"fresh").hexdigest()


async def test_abort_after_a_cancelled_write_leaves_nothing(tmp_path):
    blobs = LocalBlobs(tmp_path)
    writer = blobs.begin()
    task = asyncio.create_task(writer.write(os.urandom(64 << 20)))
    await asyncio.sleep(0.01)  # the write is running in its thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await writer.abort()  # waits for the thread before closing its descriptor
    assert list(blobs.tmp_dir.iterdir()) == []
    assert writer._busy.done() and writer._busy.exception() is None


async def test_clean_temp_removes_leftovers(tmp_path):
    blobs = LocalBlobs(tmp_path)
    (blobs.tmp_dir / "fill-crashed").write_bytes(b"partial")
    assert await blobs.clean_temp() == 1
    assert list(blobs.tmp_dir.iterdir()) == []
