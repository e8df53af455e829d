"""The object-store blob store (store/bucket.py) against a real SeaweedFS and
Azurite: ranged reads, an object missing or cut short, presigned URLs, a
multipart blob read across its parts and quarantined, a big fill resumed."""

from __future__ import annotations

import hashlib
import os
import urllib.request

import obstore
import pytest
from test_blob_files import _keys, _record, blobs  # noqa: F401 (blobs: the fixture)

from withcache.server.store import BlobDamaged, BlobGone
from withcache.server.store.bucket import PART_SIZE, BucketBlobs

# The bucket stores of test_blob_files' fixture (not its local files).
pytestmark = pytest.mark.parametrize("blobs", ["s3", "az"], indirect=True)
SMALL = os.urandom(100_000)


@pytest.fixture
def bucket_blobs(blobs):  # noqa: F811 (the imported fixture)
    assert isinstance(blobs, BucketBlobs)
    return blobs


async def store(bucket: BucketBlobs, data: bytes) -> tuple[str, str | None]:
    writer = bucket.begin()
    for at in range(0, len(data), 1 << 20):
        await writer.write(data[at : at + (1 << 20)])
    sha = writer.hexdigest()
    location = await writer.commit()
    await _record(bucket, sha, len(data), location)
    return sha, location


async def read(bucket: BucketBlobs, sha: str, size: int, start: int, length: int) -> bytes:
    reader = await bucket.open(sha, size)
    try:
        return await reader.read(start, length)
    finally:
        await reader.close()


async def test_a_ranged_read_gives_those_bytes(bucket_blobs):
    sha, _ = await store(bucket_blobs, SMALL)
    assert await read(bucket_blobs, sha, len(SMALL), 1000, 5000) == SMALL[1000:6000]
    assert await read(bucket_blobs, sha, len(SMALL), len(SMALL) - 10, 10) == SMALL[-10:]


async def test_a_missing_object_is_gone(bucket_blobs):
    with pytest.raises(BlobGone):
        await read(bucket_blobs, "ab" * 32, 10, 0, 10)


async def test_an_object_of_another_size_is_damaged(bucket_blobs):
    sha, _ = await store(bucket_blobs, SMALL)
    await obstore.put_async(bucket_blobs.bucket.store, bucket_blobs.key(sha), SMALL[:500])
    with pytest.raises(BlobDamaged, match="size: 500 bytes, recorded 100000"):
        await read(bucket_blobs, sha, len(SMALL), 0, 100)
    # A range past the cut-short end: refused by the store, then explained.
    with pytest.raises(BlobDamaged, match="size: 500 bytes"):
        await read(bucket_blobs, sha, len(SMALL), 90_000, 100)


async def test_a_presigned_url_serves_the_blob(bucket_blobs):
    sha, _ = await store(bucket_blobs, SMALL)
    url = await bucket_blobs.presign(sha, 60, {})
    if url is None:
        pytest.skip("this store presigns nothing")
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.read() == SMALL


async def test_a_multipart_blob_is_read_deleted_and_quarantined(bucket_blobs):
    big = os.urandom(PART_SIZE + 300_000)
    sha, location = await store(bucket_blobs, big)
    assert location is not None and location.startswith("uploads/")
    assert await read(bucket_blobs, sha, len(big), PART_SIZE - 5, 10) == big[PART_SIZE - 5 :][:10]
    await bucket_blobs.quarantine(sha)
    assert await bucket_blobs.size(location) is None
    assert await bucket_blobs.size(f"quarantine/{sha}") == len(big)
    assert await bucket_blobs.objects.find_blob_object(sha) is None
    with pytest.raises(BlobGone):
        await read(bucket_blobs, sha, len(big), 0, 10)


async def test_a_suspended_big_fill_resumes_to_a_new_object(bucket_blobs):
    big = os.urandom(PART_SIZE + (2 << 20))
    writer = bucket_blobs.begin()
    await writer.write(big[: PART_SIZE + 1000])
    name, size = writer.path.name, writer.size
    await writer.suspend()
    resumed = await bucket_blobs.resume(name, size)
    assert resumed is not None and resumed.size == size
    await resumed.write(big[size:])
    sha = resumed.hexdigest()
    location = await resumed.commit()
    await _record(bucket_blobs, sha, len(big), location)
    assert location in _keys(bucket_blobs)
    assert sha == hashlib.sha256(big).hexdigest()
    assert await read(bucket_blobs, sha, len(big), 0, len(big)) == big
