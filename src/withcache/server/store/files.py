"""Blobs as local files named by their SHA-256, the embedded default.

A blob is written to `tmp/` inside the data dir (same filesystem, so the final
rename is atomic), hashed as it goes, fsynced, and only then renamed to
`blobs/<2 hex>/<sha256>`. A file under `blobs/` is therefore always whole;
anything under `tmp/` at start is a crash's leftover and is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Collection, Mapping
from pathlib import Path
from typing import BinaryIO

from withcache.server.store import BlobGone

CHUNK = 1 << 20


class Spool:
    """A fill's bytes in a temp file, hashed as they arrive; clients of the fill
    read the file as it grows (read-through). The base of every BlobWriter.

    SHA-256 always (it names the blob); `also` other algorithms (a fill that
    must match a vendor's MD5, say), from the same bytes in the same pass."""

    def __init__(self, folder: Path, also: Collection[str] = ()) -> None:
        fd, name = tempfile.mkstemp(dir=folder, prefix="fill-")
        self._fd = fd
        self.path = Path(name)
        self.size = 0
        self._also = tuple(also)
        self._new_hashes()
        self._busy: asyncio.Future[None] | None = None

    def _new_hashes(self) -> None:
        self._hash = hashlib.sha256()
        self._others = {algorithm: hashlib.new(algorithm) for algorithm in self._also}

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._hash.update(data)
        for other in self._others.values():
            other.update(data)

    async def write(self, data: bytes) -> None:
        # Hashing and writing off the loop: hashlib and os.write release the GIL.
        # Shielded, and awaited by _discard(): a cancelled caller must not leave
        # a thread writing to a descriptor that _discard() closes.
        self._busy = asyncio.ensure_future(asyncio.to_thread(self._write, data))
        await asyncio.shield(self._busy)
        self.size += len(data)

    async def restart(self) -> None:
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self.size = 0
        self._new_hashes()

    def hexdigest(self, algorithm: str = "sha256") -> str:
        return (self._hash if algorithm == "sha256" else self._others[algorithm]).hexdigest()

    async def _discard(self) -> None:
        """Close and remove the file, once no write is still running."""
        if self._busy is not None:
            await asyncio.wait([self._busy])
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class LocalBlobWriter(Spool):
    def __init__(self, blobs: LocalBlobs, also: Collection[str] = ()) -> None:
        super().__init__(blobs.tmp_dir, also)
        self._blobs = blobs

    def _commit(self) -> str:
        sha = self._hash.hexdigest()
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        final = self._blobs.path(sha)
        final.parent.mkdir(exist_ok=True)
        # If another URL already stored these bytes, replacing the file with an
        # identical one is harmless: open readers keep the old inode.
        os.replace(self.path, final)
        _fsync_dir(final.parent)
        return sha

    async def commit(self) -> str:
        return await asyncio.to_thread(self._commit)

    async def abort(self) -> None:
        await self._discard()


def empty_dir(folder: Path) -> int:
    """Remove everything in `folder` (a crash's partial blobs); return how many."""
    leftovers = list(folder.iterdir())
    for entry in leftovers:
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return len(leftovers)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobReader:
    """A committed blob file, open: the read path sendfiles from `file`."""

    def __init__(self, file: BinaryIO) -> None:
        self.file: BinaryIO | None = file

    async def read(self, start: int, length: int) -> bytes:
        assert self.file is not None
        return os.pread(self.file.fileno(), length, start)

    async def chunks(self, start: int, length: int) -> AsyncIterator[bytes]:
        assert self.file is not None
        end = start + length
        while start < end:
            # In a thread: reading a whole blob (an export) must not hold the loop.
            size = min(CHUNK, end - start)
            data = await asyncio.to_thread(os.pread, self.file.fileno(), size, start)
            if not data:
                raise OSError(f"blob ended at byte {start} of {end}")
            start += len(data)
            yield data

    async def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class LocalBlobs:
    """The Blobs interface over a directory tree."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs"
        self.tmp_dir = root / "tmp"
        self.quarantine_dir = root / "quarantine"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(exist_ok=True)

    def begin(self, also: Collection[str] = ()) -> LocalBlobWriter:
        return LocalBlobWriter(self, also)

    def path(self, sha256: str) -> Path:
        return self.blob_dir / sha256[:2] / sha256

    async def open(self, sha256: str) -> LocalBlobReader:
        try:
            return LocalBlobReader(open(self.path(sha256), "rb"))
        except FileNotFoundError:
            raise BlobGone(sha256) from None

    def presign(self, sha256: str, seconds: int, headers: Mapping[str, str]) -> str | None:
        return None

    async def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(sha256).unlink()

    async def quarantine(self, sha256: str) -> None:
        # Same filesystem: the rename is atomic, so readers see the blob or nothing.
        self.quarantine_dir.mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path(sha256), self.quarantine_dir / sha256)

    async def clean_temp(self) -> int:
        return empty_dir(self.tmp_dir)

    def free_bytes(self) -> int | None:
        return shutil.disk_usage(self.root).free

    async def close(self) -> None:
        pass
