"""Blobs in an object-store bucket (S3-compatible, Google Cloud Storage or
Azure Blob), shared by several cache-hosts, over obstore.

Every byte is written to the store once. A fill uploads as the bytes arrive,
and its object stays where it was uploaded:

- The bytes go to a spool file in `<data>/tmp`, which clients of the fill on
  this host read (read-through), exactly as with local blobs. Once it holds
  8 MiB, a sender task reads the spool back as it grows and uploads it,
  every 8 MiB one part of a multipart upload to a key of its own,
  `<prefix>/uploads/<random>` (the library's writer, 4 parts in flight): the
  download never waits for the store, so read-through clients get the
  origin's pace however slowly the store takes the parts, and memory holds
  only the parts in flight. On S3 each part is signed with its own SHA-256,
  so the store refuses any byte that differs from what was hashed here; GCS
  and Azure take the parts without a digest of ours (TLS guards them in
  transit). Either way the blob's SHA-256 is computed here, from the bytes
  as they arrive, and checked, with the length, before commit, which waits
  for the sender to finish.
- The object is noted in the metadata store (BlobObjects) before its first
  part goes up. Commit, under the blob's lock, first looks for the blob: if
  another URL brought the same bytes, the new upload is dropped. Otherwise it
  completes the upload, and the metadata commit records the object with the
  blob's SHA-256, in the transaction that makes the artifact visible. Only a
  recorded object is ever read, so nothing half-written or unverified is
  visible; an object whose record is never written (a host killed between
  the two) is deleted by start-up cleaning once its record is a day old, as
  a stale multipart upload is aborted (S3; elsewhere a lifecycle rule does it).
- A blob smaller than one part skips all that: one PUT of the spool, at
  commit, under its name, `<prefix>/blobs/<sha256>` (on S3 signed with the SHA-256 that names
  it). Blobs stored before records existed are there too: a blob without a
  record is under its name, so such a bucket is served as it is.
- A fill that resumes after a restart (from its spool file) starts a new
  upload and sends the spooled bytes again as its first parts.

Reads are ranged GETs streamed through the host, or presigned URLs. Each
answer says the object's whole size, which is checked against the recorded
one before any byte is used. With local copies (store/local_copies.py) a
blob this host keeps a copy of is read from that file instead (sendfile),
a fill's spool becomes its copy at commit, and a read of a whole blob
writes one beside the client, its last chunk held back until the bytes
hash to the blob's SHA-256.
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

from withcache.server.disk import Disk
from withcache.server.store import BlobDamaged, BlobGone, BlobObjects, Metadata, StoreError
from withcache.server.store.bucket_access import Bucket, BucketError, bucket_error, open_bucket
from withcache.server.store.bucket_reads import read_range
from withcache.server.store.files import (
    CHUNK,
    LocalBlobReader,
    Spool,
    empty_dir,
    partial_name,
    reopen,
)
from withcache.server.store.local_copies import LocalCopies

if TYPE_CHECKING:
    from withcache.server.settings import Settings

PART_SIZE = 8 << 20  # S3 wants at least 5 MiB in every part but the last
PARTS_IN_FLIGHT = 4
STALE_UPLOAD_SECONDS = 86400.0
NAMED = "blobs/"  # blobs under their SHA-256: small ones, and those from before records
UPLOADS = "uploads/"  # blobs where they were uploaded, found through their records
COPIED_UPLOADS = "tmp/"  # the temporary keys of hosts that committed by copy


class BucketBlobWriter(Spool):
    def __init__(
        self, blobs: BucketBlobs, resume: tuple[str, int] | None = None,
        also: Collection[str] = (),
    ) -> None:  # fmt: skip
        super().__init__(blobs.spool_dir, resume, also)
        self._blobs = blobs
        self._start_over()

    async def absorb(self, block: Callable[[bytes], Awaitable[None]] | None = None) -> None:
        await super().absorb()
        await self._spooled()  # the spooled bytes go up again, to a new object

    def _start_over(self) -> None:
        self._key = f"{UPLOADS}{os.urandom(12).hex()}"
        self._writer: Any = None  # the library's writer, once the spool holds a part
        self._noted = False  # the object has a record (BlobObjects)
        self._sender: asyncio.Task[None] | None = None  # uploads the spool as it grows
        self._grown = asyncio.Event()
        self._ended = False  # every byte is in the spool: the sender finishes

    async def write(self, data: bytes) -> None:
        await super().write(data)
        await self._spooled()

    async def _spooled(self) -> None:
        """The spool grew: wake the sender (started once the spool holds a
        part), or raise what stopped it."""
        sender = self._sender
        if sender is None and self.size >= PART_SIZE:
            # Noted before the first part goes up (and before there is a sender
            # to cancel): whatever happens next, the object is either recorded
            # or found by start-up cleaning.
            await self._blobs.objects.note_upload(self._key, time.time())
            self._noted = True
            self._sender = asyncio.ensure_future(self._send())
        elif sender is not None and sender.done() and not sender.cancelled():
            raise sender.exception() or BucketError("the upload ended early")
        self._grown.set()

    async def _send(self) -> None:
        """Upload the spool's bytes as they arrive, read back from the file: the
        download never waits for the store (read-through clients get the
        origin's pace) and memory holds only the parts in flight."""
        sent = 0
        try:
            self._writer = obstore.open_writer_async(
                self._blobs.bucket.store, self._key,
                buffer_size=PART_SIZE, max_concurrency=PARTS_IN_FLIGHT,
            )  # fmt: skip
            while True:
                if sent < self.size:
                    data = await self._read_back(sent, min(CHUNK, self.size - sent))
                    await self._writer.write(data)
                    sent += len(data)
                elif self._ended:
                    return
                else:
                    self._grown.clear()
                    await self._grown.wait()
        except obstore.exceptions.BaseError as err:
            raise bucket_error(err) from None

    async def _read_back(self, offset: int, length: int) -> bytes:
        read: list[bytes] = []
        await self._in_thread(lambda: read.append(os.pread(self._fd, length, offset)))
        if len(read[0]) != length:
            raise OSError(f"{self.path.name} ended at byte {offset + len(read[0])}")
        return read[0]

    async def _drop_upload(self) -> None:
        """Stop the sender, abort the multipart upload (the library does so on
        an error exit) or delete the object it made, and abandon the object's
        record; what fails here is left for start-up cleaning."""
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            await asyncio.wait([sender])
            if not sender.cancelled():
                sender.exception()  # retrieved: it is dropped with the upload
        upload, self._writer = self._writer, None
        if upload is not None:
            with contextlib.suppress(Exception):
                await upload.__aexit__(BucketError, BucketError("aborted"), None)
        noted, self._noted = self._noted, False
        with contextlib.suppress(Exception):
            if noted and await self._blobs.objects.abandon_upload(self._key):
                # (Also when the upload was not completed, or not known to be.)
                await self._blobs.remove(self._key)
                await self._blobs.objects.forget_upload(self._key)

    async def restart(self) -> None:
        await self._drop_upload()
        self._start_over()
        await super().restart()

    async def commit(self) -> str | None:
        sha = self.hexdigest()
        blobs = self._blobs
        try:
            key, location = await blobs.locate(sha)
            found = await blobs.size(key)
            if found == self.size:  # another URL brought the same bytes: keep those
                await self._drop_upload()
                self._keep_copy(sha)
                await self._discard()
                return location
            if found is not None or location is not None:
                await blobs.delete(sha)  # not what was recorded: replaced by these bytes
            if self._sender is None:  # smaller than a part: one PUT, under its name
                data = await self._read_back(0, self.size)
                await obstore.put_async(blobs.bucket.store, blobs.key(sha), data)
                location = None
            else:
                self._ended = True
                self._grown.set()
                await self._sender  # the rest of the spool goes up (or its error is raised)
                self._sender = None
                await self._writer.close()  # completes the upload: no copy, no second write
                self._writer = None
                location = self._key
        except obstore.exceptions.BaseError as err:
            raise bucket_error(err) from None
        self._keep_copy(sha)
        await self._discard()
        return location

    def _keep_copy(self, sha256: str) -> None:
        """The spool, whole and hashed, stays as this host's copy of the blob."""
        if self._blobs.copies is not None:
            self._blobs.copies.keep(self.path, sha256, self.size)

    async def abort(self) -> None:
        await self._drop_upload()
        await self._discard()

    async def suspend(self) -> None:
        # The parts sent so far belong to an upload nobody will complete: the
        # spool keeps the bytes, and a resume sends them again to a new object.
        await self._drop_upload()
        await super().suspend()


class BucketBlobReader:
    file = None  # nothing local to sendfile: bytes are streamed from the store
    # No way to tell a changed object apart without a request: a small blob is
    # hashed on every read (the round trip costs more than the hash).
    stamp = None

    def __init__(self, blobs: BucketBlobs, key: str, sha256: str, size: int) -> None:
        self._blobs = blobs
        self._copies = blobs.copies
        self._store = blobs.bucket.store
        self._key = key
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
            raise BlobGone(self._sha256) from None
        except obstore.exceptions.BaseError as err:
            # A range past a cut-short object's end is refused: say so, if that's why.
            await self._check_size(await self._blobs.size(self._key))
            raise bucket_error(err) from None
        await self._check_size(answer.meta["size"])
        chunks = read_range(self._store, self._key, answer, start, start + length)
        copy = None
        if self._copies is not None and (start, length) == (0, self._size):
            copy = self._copies.begin(self._sha256, self._size)
        if copy is None:
            async for chunk in chunks:
                yield chunk
            return
        # The whole blob: a copy is written beside it, and the last chunk held
        # back until the bytes are known to be the blob's (else the client fails).
        held = None
        try:
            async for chunk in chunks:
                await copy.add(chunk)
                if held is not None:
                    yield held
                held = chunk
            problem = await copy.finish()
        except BaseException:
            copy.abandon()
            raise
        if problem is not None:
            raise BlobDamaged(self._sha256, problem)
        if held is not None:
            yield held

    async def _check_size(self, found: int | None) -> None:
        if found is None:
            raise BlobGone(self._sha256)
        if found != self._size:
            raise BlobDamaged(self._sha256, f"size: {found} bytes, recorded {self._size}")

    def unchanged(self) -> bool:
        return True  # each GET answers with one version of the object, whole

    async def close(self) -> None:
        pass


class BucketBlobs:
    """The Blobs interface over `s3://`, `gs://` or `az://bucket/prefix`; the
    metadata store's BlobObjects say where each blob is."""

    def __init__(
        self, bucket: Bucket, spool_dir: Path, objects: BlobObjects,
        copies: LocalCopies | None = None,
    ) -> None:  # fmt: skip
        self.bucket = bucket
        self.spool_dir = spool_dir
        self.objects = objects
        self.copies = copies  # this host's copies of hot blobs (--local-copies)
        spool_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    async def connect(cls, settings: Settings, metadata: Metadata) -> BucketBlobs:
        """Reach the bucket, read this host's local copies back; StoreError if
        it can't be used."""
        try:
            bucket = await asyncio.to_thread(open_bucket, settings)
            copies = None
            if settings.local_copies != 0:
                disk = Disk(settings.data_dir, settings.min_free)
                copies = LocalCopies(settings.data_dir / "copies", settings.local_copies, disk)
            blobs = cls(bucket, settings.data_dir / "tmp", metadata, copies)
            async for _ in obstore.list(bucket.store, prefix="blobs/", chunk_size=1):
                break
        except (obstore.exceptions.BaseError, OSError, ValueError) as err:
            reason = bucket_error(err) if isinstance(err, obstore.exceptions.BaseError) else err
            raise StoreError(f"cannot use {settings.blobs_url}: {reason}") from None
        if copies is not None:
            await copies.start(metadata.sha_in_use)
        return blobs

    def key(self, sha256: str) -> str:
        """The key of a blob stored under its name (small, or from before records)."""
        return f"{NAMED}{sha256}"

    async def locate(self, sha256: str) -> tuple[str, str | None]:
        """The key of the blob's object, and its recorded location (None if
        the blob is under its name)."""
        location = await self.objects.find_blob_object(sha256)
        return location or self.key(sha256), location

    async def size(self, key: str) -> int | None:
        """The object's size, or None if there is no such object."""
        try:
            return (await obstore.head_async(self.bucket.store, key))["size"]
        except FileNotFoundError:
            return None

    async def remove(self, key: str) -> None:
        """Delete the object, if it is there."""
        with contextlib.suppress(FileNotFoundError):
            await obstore.delete_async(self.bucket.store, key)

    def begin(self, also: Collection[str] = ()) -> BucketBlobWriter:
        return BucketBlobWriter(self, also=also)

    async def resume(
        self, name: str, size: int, also: Collection[str] = ()
    ) -> BucketBlobWriter | None:
        resumed = await reopen(
            lambda: BucketBlobWriter(self, (name, size), also), self.spool_dir, name
        )
        return resumed  # type: ignore[return-value]

    async def open(
        self, sha256: str, size: int, copy: bool = True
    ) -> BucketBlobReader | LocalBlobReader:
        if copy and self.copies is not None:
            local = self.copies.open(sha256, size)
            if local is not None:
                return local
        key, _ = await self.locate(sha256)
        return BucketBlobReader(self, key, sha256, size)

    async def presign(self, sha256: str, seconds: int, headers: Mapping[str, str]) -> str | None:
        if self.copies is not None and self.copies.holds(sha256):
            return None  # sent from here by sendfile: faster than the redirect and its GET
        key, _ = await self.locate(sha256)
        return self.bucket.presign(key, seconds, headers)

    async def delete(self, sha256: str) -> None:
        if self.copies is not None:
            self.copies.drop(sha256)
        location = await self.objects.abandon_blob(sha256)
        try:
            if location is not None:
                await self.remove(location)
            await self.remove(self.key(sha256))  # a copy under its name, if any
        except obstore.exceptions.BaseError as err:
            raise bucket_error(err) from None
        if location is not None:
            await self.objects.forget_upload(location)

    async def quarantine(self, sha256: str) -> None:
        if self.copies is not None:
            self.copies.drop(sha256)
        store = self.bucket.store
        location = await self.objects.abandon_blob(sha256)
        key = location or self.key(sha256)
        try:
            if await self.size(key) is not None:
                await obstore.copy_async(store, key, f"quarantine/{sha256}")
                await self.remove(key)
        except obstore.exceptions.BaseError as err:
            raise bucket_error(err) from None
        if location is not None:
            await self.objects.forget_upload(location)

    async def discard_partial(self, name: str) -> None:
        if partial_name(name):
            (self.spool_dir / name).unlink(missing_ok=True)

    async def clean_temp(self, keep: Collection[str] = ()) -> int:
        cleaned = empty_dir(self.spool_dir, keep)
        # Other hosts may be uploading right now: only what is a day old goes.
        stale = time.time() - STALE_UPLOAD_SECONDS
        store = self.bucket.store
        try:
            folders = (UPLOADS, COPIED_UPLOADS)
            for key, upload in await asyncio.to_thread(self.bucket.stale_uploads, stale, folders):
                await asyncio.to_thread(self.bucket.abort_upload, key, upload)
                cleaned += 1
            # Objects never recorded: a killed host's, or a failed clean-up's.
            for location in await self.objects.abandoned_uploads(stale):
                await self.remove(location)
                await self.objects.forget_upload(location)
                cleaned += 1
            # Temporary objects of the commit by copy (hosts before records).
            async for batch in obstore.list(store, prefix=COPIED_UPLOADS):
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
        if self.copies is not None:
            await self.copies.close()
