"""Re-hash every stored blob and report (or quarantine) the ones that are bad.

A blob is checked against what was recorded when it was committed: its size
and its SHA-256 (which is also its name). Reading and hashing run in a worker
thread, one blob at a time, so the event loop keeps serving while a big cache
is checked.
Quarantine takes a bad blob out of service: its artifacts are deleted (the
next request is a miss and fills afresh) and the file is moved aside.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from withcache.server import events, log
from withcache.server.store import Artifact, BlobGone, Blobs

if TYPE_CHECKING:
    from withcache.server.cache import Cache

READ_BYTES = 1 << 20
LIST_PAGE = 1000


@dataclass
class Corrupt:
    """One bad blob and the artifacts that pointed at it."""

    sha256: str
    problem: str
    artifacts: list[Artifact]
    quarantined: bool = False


@dataclass(eq=False)
class Verification:
    """One run of `verify`: its progress while it runs, its findings after."""

    quarantine: bool
    actor: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    blobs: int = 0
    bytes_total: int = 0
    checked: int = 0
    bytes_checked: int = 0
    corrupt: list[Corrupt] = field(default_factory=list)
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    async def run(self, cache: Cache) -> None:
        started = time.monotonic()
        try:
            by_blob = await _artifacts_by_blob(cache)
            self.blobs = len(by_blob)
            self.bytes_total = sum(found[0].size for found in by_blob.values())
            for sha256, artifacts in by_blob.items():
                await self._check(cache, sha256, artifacts)
                self.checked += 1
        except Exception as err:
            log.error("verify.crashed", exc_info=True)
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.finished_at = time.time()
        await cache.record(
            events.VerifyFinished(
                actor=self.actor, blobs=self.checked, corrupt=len(self.corrupt),
                quarantined=sum(c.quarantined for c in self.corrupt),
                seconds=round(time.monotonic() - started, 3),
            )
        )  # fmt: skip

    async def _check(self, cache: Cache, sha256: str, artifacts: list[Artifact]) -> None:
        size = artifacts[0].size
        done_before = self.bytes_checked

        def progress(n: int) -> None:
            self.bytes_checked = done_before + n

        # Held while the blob is read: no fill can store these bytes afresh
        # meanwhile, so the blob found bad is the one quarantined.
        async with cache.metadata.blob_lock(sha256):
            problem = await _inspect(cache.blobs, sha256, size, progress)
            self.bytes_checked = done_before + size
            if problem is None:
                return
            corrupt = Corrupt(sha256, problem, artifacts)
            self.corrupt.append(corrupt)
            log.warning("verify.corrupt", sha256=sha256, problem=problem, artifacts=len(artifacts))
            if self.quarantine:
                await self._quarantine(cache, corrupt)

    async def _quarantine(self, cache: Cache, corrupt: Corrupt) -> None:
        for artifact in corrupt.artifacts:
            if await cache.metadata.delete_artifact(artifact.id) is None:
                continue
            await cache.record(
                events.ArtifactQuarantined(
                    url=artifact.key, actor=self.actor, sha256=corrupt.sha256,
                    problem=corrupt.problem,
                )
            )  # fmt: skip
        await cache.blobs.quarantine(corrupt.sha256)
        corrupt.quarantined = True


async def _artifacts_by_blob(cache: Cache) -> dict[str, list[Artifact]]:
    """Every artifact, grouped by blob; read whole first, so that deletes
    made while blobs are hashed can't shift the pages."""
    found: dict[str, list[Artifact]] = {}
    offset = 0
    while True:
        page = await cache.metadata.list_artifacts(
            sort="sha256", descending=False, offset=offset, limit=LIST_PAGE
        )
        for artifact in page.rows:
            found.setdefault(artifact.sha256, []).append(artifact)
        offset += LIST_PAGE
        if offset >= page.total or not page.rows:
            return found


async def _inspect(
    blobs: Blobs, sha256: str, size: int, progress: Callable[[int], None]
) -> str | None:
    """What is wrong with the blob, or None."""
    try:
        reader = await blobs.open(sha256)
    except BlobGone:
        return "missing: the blob file is gone"
    try:
        if reader.file is not None:
            return await asyncio.to_thread(_inspect_file, reader.file, sha256, size, progress)
        digest = hashlib.sha256()
        done = 0
        async for chunk in reader.chunks(0, size):
            await asyncio.to_thread(digest.update, chunk)  # hashlib releases the GIL
            done += len(chunk)
            progress(done)
        return _compare(digest.hexdigest(), sha256)
    except BlobGone:
        return "missing: the blob is gone"
    except OSError as err:
        return f"unreadable: {err.strerror or err}"
    finally:
        await reader.close()


def _inspect_file(
    blob: BinaryIO, sha256: str, size: int, progress: Callable[[int], None]
) -> str | None:
    stat = os.fstat(blob.fileno())
    if stat.st_size != size:
        return f"size: {stat.st_size} bytes, recorded {size}"
    digest = hashlib.sha256()
    done = 0
    while chunk := blob.read(READ_BYTES):
        digest.update(chunk)
        done += len(chunk)
        progress(done)
    return _compare(digest.hexdigest(), sha256)


def _compare(actual: str, sha256: str) -> str | None:
    return f"content: the bytes hash to {actual}" if actual != sha256 else None
