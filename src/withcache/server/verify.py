"""Re-hash stored blobs and take the bad ones out of service: `verify`, the
background scrub, and the read path's findings all end here.

A blob is checked against what was recorded when it was committed: its size
and its SHA-256 (which is also its name). Reading and hashing run in a worker
thread, one blob at a time, so the event loop keeps serving while a big cache
is checked. A blob found bad is checked again under its blob lock before
anything is done (a fill may have stored the same bytes afresh meanwhile).
Quarantine takes a bad blob out of service: its artifacts are deleted (the
next request is a miss and fills afresh) and the file is moved aside.

The scrub (--scrub-every DAYS) re-hashes every blob once per period, those
checked longest ago first, at a pace that spreads a whole pass over half the
period; hosts sharing a store share the work (each blob is claimed in the
store before it is read). Each pass is a Verification like `verify`'s, so
"the last verification" means either, whichever ended last.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from withcache.server import events, log
from withcache.server.records import Artifact
from withcache.server.store import BlobDamaged, BlobGone, Blobs, Metadata

Emit = Callable[[events.Event], Awaitable[None]]

READ_BYTES = 1 << 20
LIST_PAGE = 1000
SCRUB_ACTOR = "scrub"
SCRUB_MIN_RATE = 1 << 20  # bytes a second: the gentlest pace, however long the period
SCRUB_BATCH = 100  # blobs listed per query
# A pass takes in every blob due within this share of the period, so that
# passes (and their events) come a few times a period, not one per blob.
SCRUB_SLACK = 0.1
SCRUB_IDLE_MAX = 3600.0  # longest sleep between looks for due blobs


@dataclass
class Corrupt:
    """One bad blob and the artifacts that pointed at it."""

    sha256: str
    problem: str
    artifacts: list[Artifact]
    quarantined: bool = False


class Pace:
    """Spreads reads over time: at most `rate` bytes a second (None: full
    speed). `stopped` tells a reading thread to give up (the run was cancelled)."""

    def __init__(self, rate: float | None = None) -> None:
        self.rate = rate
        self.stopped = False
        self._start = time.monotonic()
        self._done = 0

    def wait(self, nbytes: int) -> float:
        """Seconds to wait after reading `nbytes` more, to keep to the rate."""
        self._done += nbytes
        if self.rate is None:
            return 0.0
        return max(0.0, self._start + self._done / self.rate - time.monotonic())


class _Stopped(Exception):
    """The run was cancelled while a thread was reading a blob."""


@dataclass(eq=False)
class Verification:
    """One run of `verify` or one scrub pass: its progress while it runs,
    its findings after."""

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
    pace: Pace = field(default_factory=Pace, repr=False)

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    async def run(self, verifier: Verifier) -> None:
        """Check every stored blob (what `verify` does)."""
        started = time.monotonic()
        try:
            by_blob = await _artifacts_by_blob(verifier)
            self.blobs = len(by_blob)
            self.bytes_total = sum(found[0].size for found in by_blob.values())
            for sha256, artifacts in by_blob.items():
                await self.check(verifier, sha256, artifacts[0].size)
        except Exception as err:
            log.error("verify.crashed", exc_info=True)
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.finished_at = time.time()
        await self.report(verifier, started)

    async def check(self, verifier: Verifier, sha256: str, size: int, marked: bool = False) -> None:
        """Check one blob; mark it checked in the store (unless `marked` already)."""
        done_before = self.bytes_checked

        def progress(n: int) -> None:
            self.bytes_checked = done_before + n

        problem = await _inspect(verifier.blobs, sha256, size, progress, self.pace)
        await _inspect_copy(verifier.blobs, sha256, size, self.pace)
        self.bytes_checked = done_before + size
        self.checked += 1
        if problem is None:
            if not marked:
                try:
                    await verifier.metadata.mark_checked(sha256, time.time())
                except verifier.metadata.unavailable as err:  # only the scrub's order suffers
                    log.warning("verify.unmarked", sha256=sha256, error=str(err))
            return
        corrupt = await verifier.confirm(sha256, size, self.actor, self.quarantine)
        if corrupt is not None:
            self.corrupt.append(corrupt)

    async def report(self, verifier: Verifier, started: float) -> None:
        await verifier.emit(
            events.VerifyFinished(
                actor=self.actor, blobs=self.checked, corrupt=len(self.corrupt),
                quarantined=sum(c.quarantined for c in self.corrupt),
                seconds=round(time.monotonic() - started, 3),
            )
        )  # fmt: skip


class Verifier:
    """What every check shares: the stores, the audit trail, and the lookup
    memo's `forget` (a quarantined artifact's key serves nothing now)."""

    def __init__(
        self, metadata: Metadata, blobs: Blobs, emit: Emit, forget: Callable[[str], None]
    ) -> None:
        self.metadata = metadata
        self.blobs = blobs
        self.emit = emit
        self._forget = forget

    async def confirm(
        self, sha256: str, size: int, actor: str | None, quarantine: bool = True
    ) -> Corrupt | None:
        """Check a blob found bad again, under its blob lock, and (if it still
        is, and `quarantine`) take it out of service; what was found, or None."""
        await _inspect_copy(self.blobs, sha256, size, Pace())
        async with self.metadata.blob_lock(sha256):
            problem = await _inspect(self.blobs, sha256, size, lambda n: None, Pace())
            if problem is None:
                return None  # stored afresh meanwhile, or a read that broke off
            found = await self.metadata.list_artifacts(search=sha256, limit=LIST_PAGE)
            corrupt = Corrupt(sha256, problem, [a for a in found.rows if a.sha256 == sha256])
            log.warning(
                "verify.corrupt", sha256=sha256, problem=problem,
                artifacts=len(corrupt.artifacts), by=actor,
            )  # fmt: skip
            if quarantine:
                await self._quarantine(corrupt, actor)
            return corrupt

    async def _quarantine(self, corrupt: Corrupt, actor: str | None) -> None:
        for artifact in corrupt.artifacts:
            if await self.metadata.delete_artifact(artifact.id) is None:
                continue
            self._forget(artifact.key)
            await self.emit(
                events.ArtifactQuarantined(
                    url=artifact.key, actor=actor, sha256=corrupt.sha256,
                    problem=corrupt.problem,
                )
            )  # fmt: skip
        await self.blobs.quarantine(corrupt.sha256)
        corrupt.quarantined = True


class Scrub:
    """The background scrub: passes over the blobs due for a check."""

    def __init__(self, period: float) -> None:
        self.period = period  # seconds
        self.current: Verification | None = None  # the pass under way
        self.last: Verification | None = None  # the last pass that ended
        self.stored_bytes: int | None = None  # as of the last look for due blobs
        self.unchecked_bytes = 0  # stored bytes not checked within the period

    def checked_ratio(self) -> float | None:
        """The share of stored bytes re-hashed within the last period."""
        if self.stored_bytes is None:
            return None  # not looked yet
        if not self.stored_bytes:
            return 1.0
        return max(0.0, 1 - self.unchecked_bytes / self.stored_bytes)

    async def run(self, verifier: Verifier) -> None:
        idle = min(max(self.period * SCRUB_SLACK, 1.0), SCRUB_IDLE_MAX)
        while True:
            try:
                if await self._pass(verifier):
                    continue
            except Exception:
                log.error("scrub.failed", exc_info=True)
            await asyncio.sleep(idle)

    async def _pass(self, verifier: Verifier) -> bool:
        """Check the blobs that are due, if any; whether it checked some and
        may go on at once (not after an error: the store may be unwritable)."""
        now = time.time()
        due_before = now - self.period * (1 - SCRUB_SLACK)
        _, self.stored_bytes = await verifier.metadata.totals()
        _, self.unchecked_bytes = await verifier.metadata.unchecked_totals(now - self.period)
        blobs, size = await verifier.metadata.unchecked_totals(due_before)
        if not blobs:
            return False
        rate = max(2 * (self.stored_bytes or 0) / self.period, SCRUB_MIN_RATE)
        run = Verification(
            quarantine=True, actor=SCRUB_ACTOR, blobs=blobs, bytes_total=size, pace=Pace(rate)
        )
        self.current, started = run, time.monotonic()
        try:
            while batch := await verifier.metadata.blobs_to_check(due_before, SCRUB_BATCH):
                for sha256, blob_size in batch:
                    # Claimed first: a host sharing the store takes other blobs.
                    if await verifier.metadata.mark_checked(sha256, time.time(), due_before):
                        await run.check(verifier, sha256, blob_size, marked=True)
                        self.unchecked_bytes = max(0, self.unchecked_bytes - blob_size)
        except Exception as err:
            log.error("scrub.crashed", exc_info=True)
            run.error = f"{type(err).__name__}: {err}"
        finally:
            run.finished_at = time.time()
            self.current, self.last = None, run
        if run.checked:
            await run.report(verifier, started)
        return bool(run.checked) and run.error is None


async def _artifacts_by_blob(verifier: Verifier) -> dict[str, list[Artifact]]:
    """Every artifact, grouped by blob; read whole first, so that deletes
    made while blobs are hashed can't shift the pages."""
    found: dict[str, list[Artifact]] = {}
    offset = 0
    while True:
        page = await verifier.metadata.list_artifacts(
            sort="sha256", descending=False, offset=offset, limit=LIST_PAGE
        )
        for artifact in page.rows:
            found.setdefault(artifact.sha256, []).append(artifact)
        offset += LIST_PAGE
        if offset >= page.total or not page.rows:
            return found


async def _inspect(
    blobs: Blobs, sha256: str, size: int, progress: Callable[[int], None], pace: Pace
) -> str | None:
    """What is wrong with the store's blob (not this host's copy), or None."""
    try:
        reader = await blobs.open(sha256, size, copy=False)
    except BlobGone:
        return "missing: the blob file is gone"
    except BlobDamaged as err:
        return err.problem
    try:
        if reader.file is not None:
            return await asyncio.to_thread(_inspect_file, reader.file, sha256, size, progress, pace)
        digest = hashlib.sha256()
        done = 0
        async for chunk in reader.chunks(0, size):
            await asyncio.to_thread(digest.update, chunk)  # hashlib releases the GIL
            done += len(chunk)
            progress(done)
            await asyncio.sleep(pace.wait(len(chunk)))
        return _compare(digest.hexdigest(), sha256)
    except BlobGone:
        return "missing: the blob is gone"
    except BlobDamaged as err:
        return err.problem
    except OSError as err:
        return f"unreadable: {err.strerror or err}"
    except asyncio.CancelledError:
        pace.stopped = True  # the thread gives up at its next block
        raise
    finally:
        with contextlib.suppress(Exception):
            await reader.close()


async def _inspect_copy(blobs: Blobs, sha256: str, size: int, pace: Pace) -> None:
    """Re-hash this host's copy of the blob, if it keeps one; drop it if bad
    (the store's own blob is another matter: a bad copy is no bad blob)."""
    copy = blobs.copies.open(sha256, size, hit=False) if blobs.copies is not None else None
    if copy is None:
        return
    try:
        assert copy.file is not None
        problem = await asyncio.to_thread(
            _inspect_file, copy.file, sha256, size, lambda n: None, pace
        )
    except OSError as err:
        problem = f"unreadable: {err.strerror or err}"
    except asyncio.CancelledError:
        pace.stopped = True
        raise
    finally:
        await copy.close()
    if problem is not None and blobs.copies is not None:
        log.warning("local_copy.bad", sha256=sha256, problem=problem)
        blobs.copies.drop(sha256)


def _inspect_file(
    blob: BinaryIO, sha256: str, size: int, progress: Callable[[int], None], pace: Pace
) -> str | None:
    stat = os.fstat(blob.fileno())
    if stat.st_size != size:
        return f"size: {stat.st_size} bytes, recorded {size}"
    digest = hashlib.sha256()
    done = 0
    while chunk := blob.read(READ_BYTES):
        if pace.stopped:
            raise _Stopped()
        digest.update(chunk)
        done += len(chunk)
        progress(done)
        time.sleep(pace.wait(len(chunk)))
    return _compare(digest.hexdigest(), sha256)


def _compare(actual: str, sha256: str) -> str | None:
    return f"content: the bytes hash to {actual}" if actual != sha256 else None
