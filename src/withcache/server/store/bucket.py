"""Blobs in an object-store bucket (S3-compatible, Google Cloud Storage or
Azure Blob), shared by several cache-hosts, over obstore.

A blob is the object `<prefix>/blobs/<sha256>`, and such an object is only
ever written with bytes known to hash to its name:

- A fill uploads as the bytes arrive: every 8 MiB goes up as one part of a
  multipart upload to a temporary key (the library's writer, 4 parts in
  flight). On S3 each part is signed with its own SHA-256, so the store
  refuses any byte that differs from what was hashed here; GCS and Azure
  take the parts without a digest of ours (TLS guards them in transit). Either
  way the blob's SHA-256 is computed here, from the bytes as they arrive,
  and checked before commit. The same bytes also go to a spool file in
  `<data>/tmp`, which clients of the fill on this host read (read-through),
  exactly as with local blobs.
- Only after the length and SHA-256 checks does commit complete the upload
  and copy it, server-side, to the blob's key, then delete the temporary
  object. Until then nothing exists under `blobs/`; a failed fill aborts its
  upload, and a host killed mid-fill leaves one that start-up cleaning (S3)
  or a bucket lifecycle rule removes once it is a day old.
- A blob smaller than one part skips all that: one PUT to its final key
  (on S3, signed with the SHA-256 that names it).

- A fill that resumes after a restart (from its spool file) starts a new
  upload and sends the spooled bytes again as its first parts.

Reads are ranged GETs streamed through the host, or presigned URLs. Each
answer says the object's whole size, which is checked against the recorded
one before any byte is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import obstore

from withcache.server.store import BlobDamaged, BlobGone, StoreError
from withcache.server.store.bucket_access import Bucket, BucketError, bucket_error, open_bucket
from withcache.server.store.files import Spool, empty_dir, partial_name, reopen

if TYPE_CHECKING:
    from withcache.server.settings import Settings

PART_SIZE = 8 << 20  # S3 wants at least 5 MiB in every part but the last
PARTS_IN_FLIGHT = 4
READ_CHUNK = 1 << 20
STALE_UPLOAD_SECONDS = 86400.0
# S3's CopyObject takes at most 5 GiB: a larger blob is uploaded again from
# its spool file instead (the library has no multipart copy).
S3_COPY_LIMIT = 5 << 30


class BucketBlobWriter(Spool):
    def __init__(
        self, blobs: BucketBlobs, resume: tuple[str, int] | None = None,
        also: Collection[str] = (),
    ) -> None:  # fmt: skip
        super().__init__(blobs.spool_dir, resume, also)
        self._blobs = blobs
        self._start_over()

    async def absorb(self, block: Callable[[bytes], Awaitable[None]] | None = None) -> None:
        await super().absorb(self._upload)  # the spooled bytes go up again

    def _start_over(self) -> None:
        self._key = f"tmp/{os.urandom(12).hex()}"
        self._pending = bytearray()  # the first bytes, until they make a part
        self._writer: Any = None  # the library's writer, from the first full part on

    async def write(self, data: bytes) -> None:
        await super().write(data)
        await self._upload(data)

    async def _upload(self, data: bytes) -> None:
        try:
            if self._writer is not None:
                await self._writer.write(data)
                return
            self._pending += data
            if len(self._pending) >= PART_SIZE:
                self._writer = obstore.open_writer_async(
                    self._blobs.bucket.store, self._key,
                    buffer_size=PART_SIZE, max_concurrency=PARTS_IN_FLIGHT,
                )  # fmt: skip
                await self._writer.write(bytes(self._pending))
                self._pending = bytearray()
        except obstore.exceptions.BaseError as err:
            raise bucket_error(err) from None

    async def _drop_upload(self) -> None:
        """Abort the multipart upload (the library does so on an error exit)."""
        upload, self._writer = self._writer, None
        if upload is not None:
            with contextlib.suppress(Exception):
                await upload.__aexit__(BucketError, BucketError("aborted"), None)

    async def restart(self) -> None:
        await self._drop_upload()
        self._start_over()
        await super().restart()

    async def commit(self) -> str:
        sha = self.hexdigest()
        store = self._blobs.bucket.store
        final = self._blobs.key(sha)
        try:
            if self._writer is None:
                await obstore.put_async(store, final, bytes(self._pending))
            else:
                await self._writer.close()  # completes the multipart upload
                self._writer = None
                try:
                    # Another URL may have brought the same bytes: then they are there.
                    if await self._blobs.size(final) != self.size:
                        await self._copy_to(final)
                finally:
                    await obstore.delete_async(store, self._key)
        except obstore.exceptions.BaseError as err:
            raise bucket_error(err) from None
        await self._discard()
        return sha

    async def _copy_to(self, final: str) -> None:
        store = self._blobs.bucket.store
        if self._blobs.bucket.url.scheme == "s3" and self.size > S3_COPY_LIMIT:
            await obstore.put_async(
                store, final, self.path, chunk_size=PART_SIZE, max_concurrency=PARTS_IN_FLIGHT
            )
        else:
            await obstore.copy_async(store, self._key, final)

    async def abort(self) -> None:
        await self._drop_upload()
        await self._discard()

    async def suspend(self) -> None:
        # The parts sent so far belong to an upload nobody will complete: the
        # spool keeps the bytes, and a resume sends them again.
        await self._drop_upload()
        await super().suspend()


class BucketBlobReader:
    file = None  # nothing local to sendfile: bytes are streamed from the store
    # No way to tell a changed object apart without a request: a small blob is
    # hashed on every read (the round trip costs more than the hash).
    stamp = None

    def __init__(self, blobs: BucketBlobs, sha256: str, size: int) -> None:
        self._blobs = blobs
        self._store = blobs.bucket.store
        self._key = blobs.key(sha256)
        self._sha256 = sha256
        self._size = size

    async def read(self, start: int, length: int) -> bytes:
        return b"".join([chunk async for chunk in self.chunks(start, length)])

    async def chunks(self, start: int, length: int) -> AsyncIterator[bytes]:
        try:
            answer = await obstore.get_async(
                self._store, self._key, options={"range": (start, start + length)}
            )
        except FileNotFoundError:
            raise BlobGone(self._key) from None
        except obstore.exceptions.BaseError as err:
            # A range past a cut-short object's end is refused: say so, if that's why.
            await self._check_size(await self._blobs.size(self._key))
            raise bucket_error(err) from None
        await self._check_size(answer.meta["size"])
        got = 0
        try:
            async for chunk in answer.stream(min_chunk_size=READ_CHUNK):
                got += len(chunk)
                yield memoryview(chunk)  # type: ignore[misc]  # the library's buffer, not copied
        except obstore.exceptions.BaseError as err:
            raise bucket_error(err) from None
        if got != length:
            raise BucketError(f"the object store sent {got} of {length} bytes")

    async def _check_size(self, found: int | None) -> None:
        if found is None:
            raise BlobGone(self._key)
        if found != self._size:
            raise BlobDamaged(self._sha256, f"size: {found} bytes, recorded {self._size}")

    def unchanged(self) -> bool:
        return True  # each GET answers with one version of the object, whole

    async def close(self) -> None:
        pass


class BucketBlobs:
    """The Blobs interface over `s3://`, `gs://` or `az://bucket/prefix`."""

    def __init__(self, bucket: Bucket, spool_dir: Path) -> None:
        self.bucket = bucket
        self.spool_dir = spool_dir
        spool_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    async def connect(cls, settings: Settings) -> BucketBlobs:
        """Reach the bucket; StoreError if it can't be used."""
        try:
            bucket = await asyncio.to_thread(open_bucket, settings)
            blobs = cls(bucket, settings.data_dir / "tmp")
            async for _ in obstore.list(bucket.store, prefix="blobs/", chunk_size=1):
                break
        except (obstore.exceptions.BaseError, OSError, ValueError) as err:
            reason = bucket_error(err) if isinstance(err, obstore.exceptions.BaseError) else err
            raise StoreError(f"cannot use {settings.blobs_url}: {reason}") from None
        return blobs

    def key(self, sha256: str) -> str:
        return f"blobs/{sha256}"

    async def size(self, key: str) -> int | None:
        """The object's size, or None if there is no such object."""
        try:
            return (await obstore.head_async(self.bucket.store, key))["size"]
        except FileNotFoundError:
            return None

    def begin(self, also: Collection[str] = ()) -> BucketBlobWriter:
        return BucketBlobWriter(self, also=also)

    async def resume(
        self, name: str, size: int, also: Collection[str] = ()
    ) -> BucketBlobWriter | None:
        resumed = await reopen(
            lambda: BucketBlobWriter(self, (name, size), also), self.spool_dir, name
        )
        return resumed  # type: ignore[return-value]

    async def open(self, sha256: str, size: int) -> BucketBlobReader:
        return BucketBlobReader(self, sha256, size)

    def presign(self, sha256: str, seconds: int, headers: Mapping[str, str]) -> str | None:
        return self.bucket.presign(self.key(sha256), seconds, headers)

    async def delete(self, sha256: str) -> None:
        try:
            await obstore.delete_async(self.bucket.store, self.key(sha256))
        except obstore.exceptions.BaseError as err:
            raise bucket_error(err) from None

    async def quarantine(self, sha256: str) -> None:
        store = self.bucket.store
        try:
            if await self.size(self.key(sha256)) is not None:
                await obstore.copy_async(store, self.key(sha256), f"quarantine/{sha256}")
                await obstore.delete_async(store, self.key(sha256))
        except obstore.exceptions.BaseError as err:
            raise bucket_error(err) from None

    async def discard_partial(self, name: str) -> None:
        if partial_name(name):
            (self.spool_dir / name).unlink(missing_ok=True)

    async def clean_temp(self, keep: Collection[str] = ()) -> int:
        cleaned = empty_dir(self.spool_dir, keep)
        # Other hosts may be uploading right now: only what is a day old goes.
        stale = time.time() - STALE_UPLOAD_SECONDS
        store = self.bucket.store
        try:
            for key, upload in await asyncio.to_thread(self.bucket.stale_uploads, stale):
                await asyncio.to_thread(self.bucket.abort_upload, key, upload)
                cleaned += 1
            async for batch in obstore.list(store, prefix="tmp/"):
                for meta in batch:
                    if meta["last_modified"].timestamp() < stale:
                        await obstore.delete_async(store, meta["path"])
                        cleaned += 1
        except (obstore.exceptions.BaseError, BucketError) as err:
            reason = bucket_error(err) if isinstance(err, obstore.exceptions.BaseError) else err
            raise StoreError(f"cannot clean up the object store: {reason}") from None
        return cleaned

    def free_bytes(self) -> int | None:
        return None

    async def close(self) -> None:
        pass
