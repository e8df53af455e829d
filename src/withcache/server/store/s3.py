"""Blobs in an S3-compatible bucket, shared by several cache-hosts.

A blob is the object `<prefix>/blobs/<sha256>`, and such an object is only
ever written with bytes known to hash to its name:

- A fill uploads as the bytes arrive: every 8 MiB (more for huge blobs) goes
  up as one part of a multipart upload to a temporary key, each part signed
  with its own SHA-256 so the store refuses any byte that differs. The same
  bytes also go to a spool file in `<data>/tmp`, which clients of the fill on
  this host read (read-through), exactly as with local blobs.
- Only after the length and SHA-256 checks does commit complete the upload
  and copy it, server-side, to the blob's key, then delete the temporary
  object. Until then nothing exists under `blobs/`; a failed or abandoned
  fill leaves only a temporary upload, which start-up cleaning (or a bucket
  lifecycle rule) aborts once it is a day old.
- A blob smaller than one part skips all that: one PUT to its final key,
  signed with the SHA-256 that names it.
- A fill that resumes after a restart (from its spool file) starts a new
  upload and sends the spooled bytes again as its first parts.

Reads are ranged GETs streamed through the host, or presigned URLs. Each
answer says the object's whole size (Content-Range), which is checked
against the recorded one before any byte is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from withcache.server.store import BlobDamaged, BlobGone, StoreError, sigv4
from withcache.server.store.files import Spool, empty_dir, partial_name, reopen
from withcache.server.store.s3client import S3Client, S3Error

if TYPE_CHECKING:
    from withcache.server.settings import Settings

PART_SIZE = 8 << 20  # S3 wants at least 5 MiB in every part but the last
PARTS_PER_STEP = 1000  # parts grow by PART_SIZE every this many (10,000 parts at most)
PARTS_IN_FLIGHT = 4
STALE_UPLOAD_SECONDS = 86400.0
# Response headers a presigned GET can be told to answer with.
PRESIGNED_HEADERS = {
    "Content-Type": "response-content-type",
    "Content-Disposition": "response-content-disposition",
    "Content-Encoding": "response-content-encoding",
}


class S3BlobWriter(Spool):
    def __init__(self, blobs: S3Blobs, resume: tuple[str, int] | None = None) -> None:
        super().__init__(blobs.spool_dir, resume)
        self._blobs = blobs
        self._pending = bytearray()  # bytes not yet sent as a part
        self._start_over()

    async def absorb(self, block: Callable[[bytes], Awaitable[None]] | None = None) -> None:
        await super().absorb(self._upload_later)  # the spooled bytes go up again

    async def _upload_later(self, data: bytes) -> None:
        self._pending += data
        await self._send_full_parts()

    def _start_over(self) -> None:
        self._key = f"{self._blobs.prefix}tmp/{os.urandom(12).hex()}"
        self._upload: str | None = None
        self._parts: list[asyncio.Task[tuple[int, str]]] = []

    async def write(self, data: bytes) -> None:
        await super().write(data)
        self._pending += data
        await self._send_full_parts()

    async def _send_full_parts(self) -> None:
        part = PART_SIZE * (1 + len(self._parts) // PARTS_PER_STEP)
        while len(self._pending) >= part:
            await self._send_part(bytes(self._pending[:part]))
            del self._pending[:part]
            part = PART_SIZE * (1 + len(self._parts) // PARTS_PER_STEP)

    async def _send_part(self, data: bytes) -> None:
        client = self._blobs.client
        if self._upload is None:
            self._upload = await client.create_upload(self._key)
        running = [t for t in self._parts if not t.done()]
        if len(running) >= PARTS_IN_FLIGHT:
            await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for task in self._parts:
            if task.done():
                task.result()  # a failed part fails the fill now
        number = len(self._parts) + 1
        self._parts.append(asyncio.create_task(self._part(self._upload, number, data)))

    async def _part(self, upload: str, number: int, data: bytes) -> tuple[int, str]:
        return number, await self._blobs.client.upload_part(self._key, upload, number, data)

    async def _drop_upload(self) -> None:
        for task in self._parts:
            task.cancel()
        await asyncio.gather(*self._parts, return_exceptions=True)
        if self._upload is not None:
            with contextlib.suppress(OSError):
                await self._blobs.client.abort_upload(self._key, self._upload)

    async def restart(self) -> None:
        await self._drop_upload()
        self._start_over()
        await super().restart()
        self._pending.clear()

    async def commit(self) -> str:
        sha = self.hexdigest()
        client = self._blobs.client
        final = self._blobs.key(sha)
        if self._upload is None:
            await client.put(final, bytes(self._pending))  # signed with `sha` itself
        else:
            if self._pending:
                await self._send_part(bytes(self._pending))
            parts = [await task for task in self._parts]
            await client.complete_upload(self._key, self._upload, parts)
            self._upload = None
            try:
                # Another URL may have brought the same bytes: then they are there.
                if await client.head(final) != self.size:
                    await client.copy(self._key, final, self.size)
            finally:
                await client.delete(self._key)
        await self._discard()
        return sha

    async def abort(self) -> None:
        await self._drop_upload()
        await self._discard()

    async def suspend(self) -> None:
        # The parts sent so far belong to an upload nobody will complete: the
        # spool keeps the bytes, and a resume sends them again.
        await self._drop_upload()
        await super().suspend()


class S3BlobReader:
    file = None  # nothing local to sendfile: bytes are streamed from the store
    # No way to tell a changed object apart without a request: a small blob is
    # hashed on every read (the round trip costs more than the hash).
    stamp = None

    def __init__(self, client: S3Client, key: str, sha256: str, size: int) -> None:
        self._client = client
        self._key = key
        self._sha256 = sha256
        self._size = size

    async def read(self, start: int, length: int) -> bytes:
        return b"".join([chunk async for chunk in self.chunks(start, length)])

    async def chunks(self, start: int, length: int) -> AsyncIterator[bytes]:
        response = await self._client.get(self._key, start, length)
        if response is None:
            raise BlobGone(self._key)
        found = _object_size(response.headers.get("Content-Range"), response.content_length)
        if response.status == 416 or found != self._size:
            response.release()
            size = f"{found} bytes" if found is not None else f"under {start + 1} bytes"
            raise BlobDamaged(self._sha256, f"size: {size}, recorded {self._size}")
        async for chunk in self._client.chunks(response, length):
            yield chunk

    def unchanged(self) -> bool:
        return True  # each GET answers with one version of the object, whole

    async def close(self) -> None:
        pass


def _object_size(content_range: str | None, content_length: int | None) -> int | None:
    """The whole object's size, from a ranged GET's answer."""
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        return int(total) if total.isdigit() else None
    return content_length

    async def close(self) -> None:
        pass


class S3Blobs:
    """The Blobs interface over `s3://bucket/prefix`."""

    def __init__(self, client: S3Client, prefix: str, spool_dir: Path) -> None:
        self.client = client
        self.prefix = prefix  # "" or ending in "/"
        self.spool_dir = spool_dir
        spool_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    async def connect(cls, settings: Settings) -> S3Blobs:
        """Reach the bucket; StoreError if it can't be used."""
        assert settings.blobs_url and settings.s3_access_key_id and settings.s3_secret_access_key
        url = urlsplit(settings.blobs_url)
        prefix = url.path.strip("/")
        endpoint = settings.s3_endpoint or f"https://s3.{settings.s3_region}.amazonaws.com"
        creds = sigv4.Credentials(
            settings.s3_access_key_id, settings.s3_secret_access_key,
            settings.s3_session_token, settings.s3_region,
        )  # fmt: skip
        client = S3Client(endpoint, url.netloc, creds)
        blobs = cls(client, f"{prefix}/" if prefix else "", settings.data_dir / "tmp")
        try:
            await client.list_objects(f"{blobs.prefix}blobs/")
        except OSError as err:
            await client.close()
            raise StoreError(f"cannot use {settings.blobs_url} at {endpoint}: {err}") from None
        return blobs

    def key(self, sha256: str) -> str:
        return f"{self.prefix}blobs/{sha256}"

    def begin(self) -> S3BlobWriter:
        return S3BlobWriter(self)

    async def resume(self, name: str, size: int) -> S3BlobWriter | None:
        resumed = await reopen(lambda: S3BlobWriter(self, (name, size)), self.spool_dir, name)
        return resumed  # type: ignore[return-value]

    async def open(self, sha256: str, size: int) -> S3BlobReader:
        return S3BlobReader(self.client, self.key(sha256), sha256, size)

    def presign(self, sha256: str, seconds: int, headers: Mapping[str, str]) -> str | None:
        query = {q: headers[h] for h, q in PRESIGNED_HEADERS.items() if h in headers}
        return self.client.presigned_get(self.key(sha256), seconds, query)

    async def delete(self, sha256: str) -> None:
        await self.client.delete(self.key(sha256))

    async def quarantine(self, sha256: str) -> None:
        size = await self.client.head(self.key(sha256))
        if size is not None:
            await self.client.copy(self.key(sha256), f"{self.prefix}quarantine/{sha256}", size)
            await self.client.delete(self.key(sha256))

    async def discard_partial(self, name: str) -> None:
        if partial_name(name):
            (self.spool_dir / name).unlink(missing_ok=True)

    async def clean_temp(self, keep: Collection[str] = ()) -> int:
        cleaned = empty_dir(self.spool_dir, keep)
        # Other hosts may be uploading right now: only what is a day old goes.
        stale = time.time() - STALE_UPLOAD_SECONDS
        try:
            for key, upload, started in await self.client.list_uploads(f"{self.prefix}tmp/"):
                if started < stale:
                    await self.client.abort_upload(key, upload)
                    cleaned += 1
            for key, _, modified in await self.client.list_objects(f"{self.prefix}tmp/"):
                if modified < stale:
                    await self.client.delete(key)
                    cleaned += 1
        except S3Error as err:
            raise StoreError(f"cannot clean up the object store: {err}") from None
        return cleaned

    def free_bytes(self) -> int | None:
        return None

    async def close(self) -> None:
        await self.client.close()
