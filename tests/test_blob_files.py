"""Blob writers on their own, local files and S3 (a real SeaweedFS): content
addressing, restart, abort."""

import asyncio
import hashlib
import os

import pytest
from services import BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY

from withcache.server.store import sigv4
from withcache.server.store.files import LocalBlobs
from withcache.server.store.s3 import S3Blobs
from withcache.server.store.s3client import S3Client

_prefixes = iter(range(1, 1_000_000))


@pytest.fixture(params=["local", "s3"])
async def blobs(request, tmp_path):
    if request.param == "local":
        yield LocalBlobs(tmp_path)
        return
    _, seaweed = request.getfixturevalue("scale_stores")
    client = S3Client(seaweed.endpoint, BUCKET, sigv4.Credentials(S3_ACCESS_KEY, S3_SECRET_KEY))
    store = S3Blobs(client, f"blobfiles{next(_prefixes)}/", tmp_path / "tmp")
    yield store
    await store.close()


async def _stored(blobs, sha: str, size: int) -> bytes:
    reader = await blobs.open(sha, size)
    try:
        return await reader.read(0, size)
    finally:
        await reader.close()


async def test_commit_names_the_blob_by_its_sha256(blobs):
    writer = blobs.begin()
    await writer.write(b"hello ")
    await writer.write(b"world")
    sha = await writer.commit()
    assert sha == hashlib.sha256(b"hello world").hexdigest()
    assert await _stored(blobs, sha, 11) == b"hello world"
    assert list(writer.path.parent.iterdir()) == []


async def test_restart_drops_what_was_written(blobs):
    writer = blobs.begin()
    await writer.write(b"stale bytes")
    await writer.restart()
    await writer.write(b"fresh")
    assert writer.size == 5
    assert writer.path.read_bytes() == b"fresh"  # what read-through clients see
    assert await writer.commit() == hashlib.sha256(b"fresh").hexdigest()


async def test_abort_after_a_cancelled_write_leaves_nothing(blobs):
    writer = blobs.begin()
    task = asyncio.create_task(writer.write(os.urandom(64 << 20)))
    await asyncio.sleep(0.01)  # the write is running in its thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await writer.abort()  # waits for the thread before closing its descriptor
    assert list(writer.path.parent.iterdir()) == []
    assert not writer._jobs  # no thread still holds the descriptor


async def test_clean_temp_removes_leftovers(tmp_path):
    blobs = LocalBlobs(tmp_path)
    (blobs.tmp_dir / "fill-crashed").write_bytes(b"partial")
    assert await blobs.clean_temp() == 1
    assert list(blobs.tmp_dir.iterdir()) == []
