"""Blobs as local files named by their SHA-256, the embedded default.

A blob is written to `tmp/` inside the data dir (same filesystem, so the final
rename is atomic), hashed as it goes, fsynced, and only then renamed to
`blobs/<2 hex>/<sha256>`. A file under `blobs/` is therefore whole when it is
committed; opening one checks its size against the recorded one, so a file
cut short later (a disk fault, an operator's mistake) is never sent.
Anything under `tmp/` at start is a crash's leftover and is removed, unless
a fill can resume from it: its synced first bytes are then re-hashed and the
transfer goes on from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import BinaryIO

from withcache.server.store import BlobDamaged, BlobGone

CHUNK = 1 << 20
PARTIAL_PREFIX = "fill-"


class Spool:
    """A fill's bytes in a temp file, hashed as they arrive; clients of the fill
    read the file as it grows (read-through). The base of every BlobWriter.

    SHA-256 always (it names the blob); `also` other algorithms (a fill that
    must match a vendor's MD5, say), from the same bytes in the same pass.

    With `resume` (a partial file's name and a length), the spool goes on from
    that file's first bytes instead: call `absorb()` to hash them first."""

    def __init__(
        self, folder: Path, resume: tuple[str, int] | None = None, also: Collection[str] = ()
    ) -> None:
        if resume is None:
            fd, name = tempfile.mkstemp(dir=folder, prefix=PARTIAL_PREFIX)
            self.size = 0
        else:
            name, self.size = str(folder / resume[0]), resume[1]
            fd = os.open(name, os.O_RDWR)
            try:
                if os.fstat(fd).st_size < self.size:
                    raise FileNotFoundError(f"{name} is shorter than {self.size} bytes")
                os.ftruncate(fd, self.size)  # what follows the synced bytes may be garbage
                os.lseek(fd, self.size, os.SEEK_SET)
            except OSError:
                os.close(fd)
                raise
        self._fd = fd
        self.path = Path(name)
        self._also = tuple(also)
        self._new_hashes()
        self._jobs: set[asyncio.Future[None]] = set()

    def _new_hashes(self) -> None:
        self._hash = hashlib.sha256()
        self._others = [hashlib.new(algorithm) for algorithm in self._also]

    def _hash_block(self, data: bytes) -> None:
        self._hash.update(data)
        for other in self._others:
            other.update(data)

    async def _in_thread(self, job: Callable[..., None], *args: object) -> None:
        # Off the loop (hashlib, os.write and os.fsync release the GIL). Shielded,
        # and awaited by _discard(): a cancelled caller must not leave a thread
        # using a descriptor that _discard() closes.
        running = asyncio.ensure_future(asyncio.to_thread(job, *args))
        self._jobs.add(running)
        running.add_done_callback(self._jobs.discard)
        await asyncio.shield(running)

    async def _settle(self) -> None:
        if self._jobs:
            await asyncio.wait(list(self._jobs))

    async def absorb(self, block: Callable[[bytes], Awaitable[None]] | None = None) -> None:
        """Hash the bytes the spool resumed from (handing each block to `block`)."""
        done = 0
        while done < self.size:
            data = await asyncio.to_thread(os.pread, self._fd, min(CHUNK, self.size - done), done)
            if not data:
                raise OSError(f"{self.path.name} ended at byte {done} of {self.size}")
            await asyncio.to_thread(self._hash_block, data)
            done += len(data)
            if block is not None:
                await block(data)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._hash_block(data)

    async def write(self, data: bytes) -> None:
        await self._in_thread(self._write, data)
        self.size += len(data)

    async def sync(self) -> None:
        if self._fd >= 0:
            await self._in_thread(os.fsync, self._fd)

    async def suspend(self) -> None:
        await self._settle()
        self._close()

    async def restart(self) -> None:
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self.size = 0
        self._new_hashes()

    def hexdigest(self, algorithm: str = "sha256") -> str:
        if algorithm == "sha256":
            return self._hash.hexdigest()
        return self._others[self._also.index(algorithm)].hexdigest()

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    async def _discard(self) -> None:
        """Close and remove the file, once no write is still running."""
        await self._settle()
        self._close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class LocalBlobWriter(Spool):
    def __init__(
        self, blobs: LocalBlobs, resume: tuple[str, int] | None = None,
        also: Collection[str] = (),
    ) -> None:  # fmt: skip
        super().__init__(blobs.tmp_dir, resume, also)
        self._blobs = blobs

    def _commit(self) -> None:
        sha = self._hash.hexdigest()
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        final = self._blobs.path(sha)
        final.parent.mkdir(exist_ok=True)
        # If another URL already stored these bytes, replacing the file with an
        # identical one is harmless: open readers keep the old inode.
        os.replace(self.path, final)
        fsync_dir(final.parent)

    async def commit(self) -> None:
        await self._settle()
        await asyncio.to_thread(self._commit)  # under its name: nothing to record

    async def abort(self) -> None:
        await self._discard()


def empty_dir(folder: Path, keep: Collection[str] = ()) -> int:
    """Remove everything in `folder` (a crash's partial blobs) but the names in
    `keep`; return how many."""
    leftovers = [entry for entry in folder.iterdir() if entry.name not in keep]
    for entry in leftovers:
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return len(leftovers)


def partial_name(name: str) -> bool:
    """Whether `name` is a partial file's (never a path elsewhere)."""
    return name.startswith(PARTIAL_PREFIX) and "/" not in name and name not in (".", "..")


async def reopen(spool: Callable[[], Spool], folder: Path, name: str) -> Spool | None:
    """A spool resumed from the partial file `name`, its first bytes hashed;
    None (and the file removed) if that can't be done."""
    if not partial_name(name):
        return None
    try:
        writer = spool()
    except OSError:  # gone, shorter than its resume point, unreadable
        (folder / name).unlink(missing_ok=True)
        return None
    try:
        await writer.absorb()
    except OSError:
        await writer._discard()
        return None
    return writer


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stamp(stat: os.stat_result) -> tuple[int, ...]:
    # Not the change time: renaming or unlinking the name (a commit of the same
    # bytes, a delete) moves it, and leaves the bytes of an open file alone.
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class LocalBlobReader:
    """A committed blob file, open: the read path sendfiles from `file`."""

    def __init__(self, file: BinaryIO, sha256: str, stat: os.stat_result) -> None:
        self.file: BinaryIO | None = file
        self.sha256 = sha256
        self.stamp = _stamp(stat)

    async def read(self, start: int, length: int) -> bytes:
        return self._pread(start, length)

    def _pread(self, start: int, length: int) -> bytes:
        assert self.file is not None
        try:
            return os.pread(self.file.fileno(), length, start)
        except OSError as err:  # EIO: a bad sector
            raise BlobDamaged(self.sha256, f"unreadable: {err.strerror or err}") from None

    async def chunks(self, start: int, length: int) -> AsyncIterator[bytes]:
        end = start + length
        while start < end:
            # In a thread: reading a whole blob (an export) must not hold the loop.
            data = await asyncio.to_thread(self._pread, start, min(CHUNK, end - start))
            if not data:
                raise BlobDamaged(self.sha256, f"size: it ends at byte {start}, before {end}")
            start += len(data)
            yield data

    def unchanged(self) -> bool:
        assert self.file is not None
        stat = os.fstat(self.file.fileno())
        return _stamp(stat) == self.stamp

    async def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class LocalBlobs:
    """The Blobs interface over a directory tree."""

    copies = None  # the blobs are local files already

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs"
        self._blob_root = str(self.blob_dir)
        self.tmp_dir = root / "tmp"
        self.quarantine_dir = root / "quarantine"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(exist_ok=True)

    def begin(self, also: Collection[str] = ()) -> LocalBlobWriter:
        return LocalBlobWriter(self, also=also)

    async def resume(
        self, name: str, size: int, also: Collection[str] = ()
    ) -> LocalBlobWriter | None:
        resumed = await reopen(
            lambda: LocalBlobWriter(self, (name, size), also), self.tmp_dir, name
        )
        return resumed  # type: ignore[return-value]

    def path(self, sha256: str) -> Path:
        return self.blob_dir / sha256[:2] / sha256

    async def open(self, sha256: str, size: int, copy: bool = True) -> LocalBlobReader:
        # Every hit opens its blob: a str path and an unbuffered file (the bytes
        # go out by sendfile or pread) cost a third of pathlib and buffered open.
        path = f"{self._blob_root}/{sha256[:2]}/{sha256}"
        try:
            file = open(path, "rb", buffering=0)  # noqa: SIM115 (the reader closes it)
        except FileNotFoundError:
            raise BlobGone(sha256) from None
        except OSError as err:  # a directory in its place, no permission, a bad disk
            raise BlobDamaged(sha256, f"unreadable: {err.strerror or err}") from None
        stat = os.fstat(file.fileno())
        if stat.st_size != size:
            file.close()
            raise BlobDamaged(sha256, f"size: {stat.st_size} bytes, recorded {size}")
        return LocalBlobReader(file, sha256, stat)

    async def presign(self, sha256: str, seconds: int, headers: Mapping[str, str]) -> str | None:
        return None

    async def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(sha256).unlink()

    async def quarantine(self, sha256: str) -> None:
        # Same filesystem: the rename is atomic, so readers see the blob or nothing.
        self.quarantine_dir.mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path(sha256), self.quarantine_dir / sha256)

    async def clean_temp(self, keep: Collection[str] = ()) -> int:
        return empty_dir(self.tmp_dir, keep)

    async def discard_partial(self, name: str) -> None:
        if partial_name(name):
            (self.tmp_dir / name).unlink(missing_ok=True)

    def free_bytes(self) -> int | None:
        return shutil.disk_usage(self.root).free

    async def close(self) -> None:
        pass
