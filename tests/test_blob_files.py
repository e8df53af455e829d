"""Blob writers on their own, local files and a bucket (a real SeaweedFS):
content addressing, restart, abort, cleaning up."""

import asyncio
import hashlib
import os

import obstore
import pytest
from conftest import AZURE_CONTAINER
from services import BUCKET, s3_store

from withcache.server.settings import Settings
from withcache.server.store import BlobGone, Lease
from withcache.server.store.bucket import PART_SIZE, BucketBlobs
from withcache.server.store.bucket_access import Bucket, BucketURL, open_bucket
from withcache.server.store.files import LocalBlobs
from withcache.server.store.sqlite import SQLiteMetadata

_prefixes = iter(range(1, 1_000_000))


@pytest.fixture(params=["local", "s3", "az"])
async def blobs(request, tmp_path, monkeypatch):
    if request.param == "local":
        yield LocalBlobs(tmp_path)
        return
    prefix = f"blobfiles{next(_prefixes)}"
    if request.param == "s3":
        _, seaweed = request.getfixturevalue("scale_stores")
        bucket = Bucket(BucketURL("s3", BUCKET, f"{prefix}/"), s3_store(seaweed.endpoint, prefix))
    else:
        for name, value in request.getfixturevalue("azurite").env.items():
            monkeypatch.setenv(name, value)
        settings = Settings(data_dir=tmp_path, blobs_url=f"az://{AZURE_CONTAINER}/{prefix}")
        bucket = open_bucket(settings)
    objects = SQLiteMetadata(tmp_path / "objects.db")  # where the bucket's blobs are
    store = BucketBlobs(bucket, tmp_path / "tmp", objects)
    yield store
    await store.close()
    await objects.close()


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
    sha = writer.hexdigest()
    assert await writer.commit() is None  # a small blob is stored under its name
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
    assert writer.hexdigest() == hashlib.sha256(b"fresh").hexdigest()
    await writer.commit()
    assert await _stored(blobs, writer.hexdigest(), 5) == b"fresh"


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


async def _record(blobs, sha: str, size: int, location: str | None) -> None:
    """Commit an artifact with the blob, as a fill does after the blob's commit."""
    objects, holder = blobs.objects, Lease("host", 1e12)
    fill, _ = await objects.enqueue_fill(f"https://h/{sha}", "", "u", "miss", 1.0)
    claimed = await objects.claim_fill(1.0, holder)
    assert claimed.id == fill.id
    assert await objects.commit_artifact(
        claimed, sha, size, {}, "u", 1.0, "host", location=location
    )


def _keys(blobs) -> list[str]:
    return sorted(meta["path"] for meta in obstore.list(blobs.bucket.store).collect())


@pytest.mark.parametrize("blobs", ["s3", "az"], indirect=True)
async def test_a_big_blob_stays_where_it_was_uploaded_and_shows_once_recorded(blobs):
    body = os.urandom(PART_SIZE + 1000)  # two parts: a multipart upload
    writer = blobs.begin()
    await writer.write(body)
    sha = writer.hexdigest()
    location = await writer.commit()
    assert location.startswith("uploads/")
    assert _keys(blobs) == [location]  # no copy under its name, no temporary object
    with pytest.raises(BlobGone):  # not recorded yet: not a blob anyone can read
        await _stored(blobs, sha, len(body))
    await _record(blobs, sha, len(body), location)
    assert await _stored(blobs, sha, len(body)) == body
    again = blobs.begin()  # another URL with the same bytes
    await again.write(body)
    assert await again.commit() == location
    assert _keys(blobs) == [location]  # its upload was dropped
    assert await blobs.objects.abandoned_uploads(started_before=1e12) == []
    await blobs.delete(sha)
    assert _keys(blobs) == []
    assert await blobs.objects.find_blob_object(sha) is None


@pytest.mark.parametrize("blobs", ["s3", "az"], indirect=True)
async def test_an_abort_after_a_commit_keeps_the_blob_only_if_recorded(blobs):
    unrecorded, recorded = blobs.begin(), blobs.begin()
    await unrecorded.write(os.urandom(PART_SIZE + 1))
    await recorded.write(body := os.urandom(PART_SIZE + 2))
    lost = await unrecorded.commit()
    kept = await recorded.commit()
    await _record(blobs, recorded.hexdigest(), recorded.size, kept)
    await unrecorded.abort()  # the fill lost its lease: nothing points at its object
    await recorded.abort()  # the record went through after all: keep it
    assert _keys(blobs) == [kept] and lost != kept
    assert await _stored(blobs, recorded.hexdigest(), len(body)) == body


async def test_clean_temp_removes_leftovers(tmp_path):
    blobs = LocalBlobs(tmp_path)
    (blobs.tmp_dir / "fill-crashed").write_bytes(b"partial")
    assert await blobs.clean_temp() == 1
    assert list(blobs.tmp_dir.iterdir()) == []
