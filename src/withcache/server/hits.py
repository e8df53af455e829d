"""A stored artifact's bytes, opened for one answer on the read path.

The core opens the blob (the store checks its size) and hands the web layer
what it sends from: a local file for sendfile, bytes read into memory, or
chunks streamed from an object store. What is read is checked: a small blob
is read whole and re-hashed, unless its file is unchanged since it was
hashed less than a minute ago (ReadChecks: hashing on every read cost a
third of a small hit), and every read is checked for its length and for the
file changing underneath. A blob found not as stored is quarantined
(verify.Verifier.confirm), and the answer gives up with HitLost: the request
goes on as a miss (filled afresh), or, if bytes went out already, its
connection is cut short.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import BinaryIO

from withcache.server.records import Artifact
from withcache.server.store import BlobDamaged, BlobGone, BlobReader

SMALL_BLOB = 256 * 1024  # read whole, and so checked, on every answer
# A small blob read again within this long, with its file unchanged, is not
# re-hashed: hashing 64 KiB costs a third of answering it.
READ_RECHECK_SECONDS = 60.0
READ_CHECKS = 4096  # blobs remembered as checked (the memo is cleared when full)


class HitLost(Exception):
    """The blob is gone, or not as stored (and quarantined): answer as a
    miss, or cut the connection short if bytes went out already."""


class ReadChecks:
    """Which small blobs the read path hashed lately, and their files then.

    A file changed since (another inode, a write: its size or modification
    time moves) is hashed again on its next read; an unchanged one once a
    minute, so rot that the page cache hid shows within a minute of reads
    (and the scrub finds it in any blob)."""

    def __init__(self) -> None:
        self._checked: dict[str, tuple[tuple[int, ...], float]] = {}

    def due(self, sha256: str, stamp: tuple[int, ...] | None) -> bool:
        if stamp is None:
            return True  # the store can't say whether the bytes changed
        found = self._checked.get(sha256)
        return found is None or found[0] != stamp or found[1] < time.monotonic()

    def passed(self, sha256: str, stamp: tuple[int, ...] | None) -> None:
        if stamp is None:
            return
        if len(self._checked) >= READ_CHECKS:
            self._checked.clear()
        self._checked[sha256] = (stamp, time.monotonic() + READ_RECHECK_SECONDS)


class OpenHit:
    """One answer's hold on a stored blob: read through it, then close it."""

    def __init__(
        self, artifact: Artifact, reader: BlobReader, checks: ReadChecks,
        count: Callable[[Artifact, int], None],
        damaged: Callable[[Artifact, str], Awaitable[None]],
        closed: Callable[[str], Awaitable[None]],
    ) -> None:  # fmt: skip
        self.artifact = artifact
        self._reader = reader
        self._checks = checks
        self._count = count
        self._damaged = damaged
        self._closed = closed  # told the blob's SHA-256 when the answer is done with it

    @property
    def file(self) -> BinaryIO | None:
        """The blob's local file, to sendfile from (zero-copy); None: use `chunks`."""
        return self._reader.file

    async def body(self, start: int, length: int) -> bytes:
        """Bytes [start, start + length) read into memory, checked; a small
        blob is read whole (and re-hashed when due)."""
        artifact, reader = self.artifact, self._reader
        try:
            if artifact.size <= SMALL_BLOB:
                blob = await reader.read(0, artifact.size)
                self._check_read(blob, artifact.size)
                if self._checks.due(artifact.sha256, reader.stamp):
                    if hashlib.sha256(blob).hexdigest() != artifact.sha256:
                        problem = "content: its SHA-256 differs from its name"
                        raise BlobDamaged(artifact.sha256, problem)
                    self._checks.passed(artifact.sha256, reader.stamp)
                return blob[start : start + length]
            body = await reader.read(start, length)
            self._check_read(body, length)
            return body
        except BlobGone:
            raise HitLost() from None
        except BlobDamaged as err:
            await self.damaged(err.problem)
            raise HitLost() from None

    def _check_read(self, data: bytes, length: int) -> None:
        if len(data) != length or not self._reader.unchanged():
            raise BlobDamaged(self.artifact.sha256, "size: it changed while it was read")

    async def chunks(self, start: int, length: int) -> AsyncIterator[bytes]:
        """Bytes [start, start + length) as the store sends them (HitLost if
        the blob is gone or damaged; OSError if the store breaks off)."""
        try:
            async with contextlib.aclosing(self._reader.chunks(start, length)) as chunks:
                async for chunk in chunks:
                    yield chunk
        except BlobGone:
            raise HitLost() from None
        except BlobDamaged as err:
            await self.damaged(err.problem)
            raise HitLost() from None

    def unchanged(self) -> bool:
        """Whether the stored bytes are still the ones opened (checked after a sendfile)."""
        return self._reader.unchanged()

    async def damaged(self, problem: str) -> None:
        """The blob was found not as stored: check it again and quarantine it."""
        await self._damaged(self.artifact, problem)

    def sent(self, nbytes: int) -> None:
        """Count the hit and the bytes it sent."""
        self._count(self.artifact, nbytes)

    async def close(self) -> None:
        try:
            await self._reader.close()
        finally:
            await self._closed(self.artifact.sha256)
