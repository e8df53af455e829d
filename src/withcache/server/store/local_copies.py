"""A scale-out host's own copies of the object store's hot blobs
(--local-copies), in `<data>/copies/<sha256>`, sent by sendfile as the
embedded store's hits are: the bytes a hit through a host streams from the
store cost the store far more CPU than a sendfile of a local file.

- What goes in: a fill's spool once its blob is committed (the bytes are on
  disk and hashed already: the copy is a hard link), and a whole blob a hit
  streams from the store, written and hashed beside the client's bytes. A
  copy gets its name only once its SHA-256 matched and its bytes are synced
  (written under a temporary name, then renamed), so no half-written or
  unverified copy is ever opened.
- Content-addressed: a copy is named by the blob's SHA-256, so it only ever
  holds that blob's bytes, and it is opened only for an artifact the
  metadata store's lookup found with that SHA-256 (Blobs.open). A blob
  deleted, replaced or quarantined on another host is never served from here
  once the lookup says so: no artifact names it any more (its copy goes with
  least-recent use, or at the next start).
- Trusted as hashed, with a stamp: a copy's modification time is set, once
  verified, to the time of its verification with MTIME_MARK nanoseconds. A
  write to the file (or a truncation) moves it, so opening checks the size
  and that stamp, and drops a copy that fails either. Bit rot that leaves
  the stamp alone is found by `withcache verify` and the scrub, which
  re-hash this host's copy of each blob they check (verify.py) besides the
  store's object.
- Bounded: the copies' bytes stay within the bound (least recently hit go
  first; a hit sets the file's access time, so the order survives a
  restart), and a copy is only made if the data dir's disk keeps its
  --min-free floor. A copy is unlinked even while a hit still sends it: on
  Linux the open file stays readable, its blocks freed at its last close (so
  the disk may briefly hold more than the bound). A disk that fills up while
  a copy is written drops that copy; the client's bytes go on regardless.
- At start the folder is read back: what is not a verified copy of a blob
  the metadata store holds is removed (a copy not the size of its blob is
  removed when a hit first opens it, as any copy that fails its check).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path

from withcache.server import log
from withcache.server.disk import Disk
from withcache.server.store.files import LocalBlobReader, fsync_dir

MTIME_MARK = 123_456_789  # the nanoseconds of a verified copy's modification time
TEMP_PREFIX = "copy-"
_NAME = re.compile(r"[0-9a-f]{64}")
AUTO_SHARE = 0.5  # auto bound: this share of the disk's free space (copies counted) above its floor

Stored = Callable[[str], Awaitable[bool]]  # whether the metadata store holds the blob


def _marked(stat: os.stat_result) -> bool:
    return stat.st_mtime_ns % 1_000_000_000 == MTIME_MARK


class CopyWriter:
    """One copy being written as a hit streams its blob: each chunk written
    and hashed in a thread while the client is sent the one before."""

    def __init__(self, copies: LocalCopies, sha256: str, size: int) -> None:
        self._copies = copies
        self.sha256 = sha256
        self.size = size
        self.path = copies.folder / f"{TEMP_PREFIX}{sha256}-{os.urandom(4).hex()}"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._hash = hashlib.sha256()
        self._written = 0
        self._job: asyncio.Future[None] | None = None
        self._failed = False

    def _write(self, chunk: memoryview | bytes) -> None:
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fd, view) :]
        self._hash.update(chunk)

    async def _wait(self) -> None:
        job, self._job = self._job, None
        if job is None:
            return
        try:
            await asyncio.shield(job)
        except OSError as err:  # ENOSPC, EIO: no copy; the client's bytes go on
            log.warning("local_copy.dropped", sha256=self.sha256, error=str(err))
            self._failed = True
            self._close()

    async def add(self, chunk: memoryview | bytes) -> None:
        """The next chunk: waits for the previous one's write, then starts this one's."""
        await self._wait()
        if self._failed:
            return
        self._written += len(chunk)
        self._job = asyncio.ensure_future(asyncio.to_thread(self._write, chunk))

    async def finish(self) -> str | None:
        """Every chunk was added: the problem if the bytes are not the blob's
        (then the store's object is not as stored), else None; a copy that
        matches is made visible in the background."""
        await self._wait()
        if self._failed:
            return None
        actual = self._hash.hexdigest()
        if self._written != self.size or actual != self.sha256:
            self.abandon()
            if self._written != self.size:
                return f"size: the store sent {self._written} bytes, recorded {self.size}"
            return f"content: the bytes hash to {actual}"
        self._copies.publish(self.sha256, self.size, self.path, self._fd)
        self._fd = -1
        return None

    def abandon(self) -> None:
        """Drop the copy (the read stopped short); a write still running closes it after."""
        self._failed = True
        job, self._job = self._job, None
        if job is not None and not job.done():
            job.add_done_callback(self._closed_after)
        else:
            self._close()

    def _closed_after(self, job: asyncio.Future[None]) -> None:
        if not job.cancelled():
            job.exception()  # retrieved: the copy is dropped whatever it was
        self._close()

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self.path.unlink(missing_ok=True)
            self._copies.ended(self.sha256, self.size)


class LocalCopies:
    def __init__(self, folder: Path, bound: int | None, disk: Disk) -> None:
        self.folder = folder
        self.bound = bound or 0  # None (auto) is worked out at start
        self._auto = bound is None
        self._disk = disk
        self._copies: OrderedDict[str, int] = OrderedDict()  # sha256 -> size, least recent first
        self._writing: dict[str, int] = {}  # copies being written: sha256 -> size
        self._tasks: set[asyncio.Task[None]] = set()
        self.bytes = 0
        self.hits = 0  # hits answered from a copy
        folder.mkdir(parents=True, exist_ok=True)

    async def start(self, stored: Stored) -> None:
        """Read the folder back; what is not a verified copy of a stored blob
        goes (one whose size is not the blob's goes when it is first opened)."""
        found = []
        for entry in os.scandir(self.folder):
            stat = entry.stat(follow_symlinks=False)
            copy = _NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)
            if copy and _marked(stat):
                found.append((stat.st_atime_ns, entry.name, stat.st_size))
            else:
                self._remove(entry.path)
        for _, sha256, size in sorted(found):
            if await stored(sha256):
                self._copies[sha256] = size
                self.bytes += size
            else:
                self._remove(self._path(sha256))
        if self._auto:
            free, floor = self._disk.room()
            self.bound = max(0, int((free + self.bytes - floor) * AUTO_SHARE))
        self._shrink(0)
        log.info("local_copies.ready", copies=len(self._copies), bytes=self.bytes, bound=self.bound)

    def _path(self, sha256: str) -> Path:
        return self.folder / sha256

    def _remove(self, path: str | Path) -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)  # nothing of ours is a folder
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def open(self, sha256: str, size: int, hit: bool = True) -> LocalBlobReader | None:
        """The blob's copy, if this host has a verified one of `size` bytes
        (a copy that is not is dropped); `hit`: a client's, which counts as use."""
        if sha256 not in self._copies:
            return None
        try:
            file = open(self._path(sha256), "rb", buffering=0)  # noqa: SIM115 (the reader closes it)
        except OSError:
            self.drop(sha256)
            return None
        stat = os.fstat(file.fileno())
        if stat.st_size != size or not _marked(stat):
            file.close()
            log.warning("local_copy.changed", sha256=sha256, size=stat.st_size)
            self.drop(sha256)
            return None
        if hit:
            self._copies.move_to_end(sha256)
            self.hits += 1
            with contextlib.suppress(OSError):  # the order of use, kept for a restart
                os.utime(file.fileno(), ns=(time.time_ns(), stat.st_mtime_ns))
        return LocalBlobReader(file, sha256, stat)

    def __len__(self) -> int:
        return len(self._copies)

    def holds(self, sha256: str) -> bool:
        return sha256 in self._copies

    def begin(self, sha256: str, size: int) -> CopyWriter | None:
        """A copy to write beside a hit's read of the whole blob; None if
        there is one already, one is being written, or no room can be made."""
        if sha256 in self._copies or sha256 in self._writing or not self._room(size):
            return None
        self._writing[sha256] = size
        try:
            return CopyWriter(self, sha256, size)
        except OSError as err:
            log.warning("local_copy.dropped", sha256=sha256, error=str(err))
            del self._writing[sha256]
            return None

    def keep(self, spool: Path, sha256: str, size: int) -> None:
        """A committed fill's spool file (whole and hashed) becomes the blob's
        copy, if there is room: linked, then made visible in the background."""
        if sha256 in self._copies or sha256 in self._writing or not self._room(size):
            return
        temp = self.folder / f"{TEMP_PREFIX}{sha256}-{os.urandom(4).hex()}"
        try:
            os.link(spool, temp)  # the data dir's tmp/ and copies/ share a filesystem
            fd = os.open(temp, os.O_WRONLY)
        except OSError as err:
            log.warning("local_copy.dropped", sha256=sha256, error=str(err))
            temp.unlink(missing_ok=True)
            return
        self._writing[sha256] = size
        self.publish(sha256, size, temp, fd)

    def _room(self, size: int) -> bool:
        """Whether a copy of `size` bytes fits in the bound and above the disk's
        floor, once least recently hit copies are dropped to make room."""
        writing = sum(self._writing.values())
        if size + writing > self.bound:
            return False
        self._shrink(size + writing)
        while self._disk.refuse(size, writing) and self._copies:
            self.drop(next(iter(self._copies)))
        return self._disk.refuse(size, writing) is None

    def _shrink(self, room: int) -> None:
        """Drop least recently hit copies until `room` more bytes fit in the bound."""
        while self._copies and self.bytes + room > self.bound:
            self.drop(next(iter(self._copies)))

    def publish(self, sha256: str, size: int, temp: Path, fd: int) -> None:
        """Sync a verified copy, stamp it, give it its name (in the background)."""
        task = asyncio.ensure_future(self._publish(sha256, size, temp, fd))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, sha256: str, size: int, temp: Path, fd: int) -> None:
        def sync() -> None:
            try:
                os.fsync(fd)
                now = time.time_ns()
                os.utime(fd, ns=(now, now - now % 1_000_000_000 + MTIME_MARK))
            finally:
                os.close(fd)

        try:
            await asyncio.shield(asyncio.to_thread(sync))
            # Named and listed in one step of the loop: a copy on disk is one hits open.
            os.replace(temp, self._path(sha256))
            if sha256 in self._copies:
                self.bytes -= self._copies.pop(sha256)
            self._copies[sha256] = size
            self.bytes += size
            await asyncio.to_thread(fsync_dir, self.folder)
        except OSError as err:
            log.warning("local_copy.dropped", sha256=sha256, error=str(err))
            temp.unlink(missing_ok=True)
        finally:
            self._writing.pop(sha256, None)

    def ended(self, sha256: str, size: int) -> None:
        """A copy being written was dropped."""
        if self._writing.get(sha256) == size:
            del self._writing[sha256]

    def drop(self, sha256: str) -> None:
        """Forget and remove the blob's copy, if any (a hit still sending it goes on)."""
        size = self._copies.pop(sha256, None)
        if size is not None:
            self.bytes -= size
            self._remove(self._path(sha256))

    async def close(self) -> None:
        """Let the copies being made visible finish (their threads hold descriptors)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks))
