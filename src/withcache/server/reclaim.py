"""Reclaiming room: eviction runs (--evict lru, --evict-unused) and blob deletes
that wait for the reads in flight.

Eviction takes what eviction.choose picks from the store's candidates,
deletes each artifact with an event saying why, and hands its blob to
`Blobs` for deletion once no artifact uses it and no read on this host is
still streaming it (a deleted local file stays readable to open descriptors
anyway; an object store's read may not survive its delete, so the delete
waits for the last reader to close). A blob another artifact still uses, a
pinned one say, is never deleted.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

from withcache.server import events, log
from withcache.server.eviction import Choice, choose
from withcache.server.records import EvictionCandidate
from withcache.server.store import Blobs, Metadata

FIRST_BATCH = 1000  # candidates read for a choice; more if they don't free enough
UNUSED_BATCH = 500  # artifacts deleted per round of the unused pass

Record = Callable[[events.Event], Awaitable[None]]


class Reclaim:
    def __init__(self, metadata: Metadata, blobs: Blobs, record: Record) -> None:
        self._metadata = metadata
        self._blobs = blobs
        self._record = record
        self._reading: Counter[str] = Counter()  # sha256 -> reads in flight here
        self._doomed: set[str] = set()  # blobs to delete once their last read ends
        self._lock = asyncio.Lock()  # one eviction at a time on this host

    def opened(self, sha256: str) -> None:
        """A blob is being read for a client: its delete waits until closed()."""
        self._reading[sha256] += 1

    async def closed(self, sha256: str) -> None:
        """A read opened() ended: a delete that waited for it happens now."""
        self._reading[sha256] -= 1
        if not self._reading[sha256]:
            del self._reading[sha256]
            if sha256 in self._doomed:
                self._doomed.discard(sha256)
                await self.release(sha256)

    async def release(self, sha256: str) -> bool:
        """Delete the blob if no artifact uses it (now, or once the reads of
        it on this host end); whether it is gone or going."""
        async with self._metadata.blob_lock(sha256):
            if await self._metadata.sha_in_use(sha256):
                return False
            if self._reading[sha256]:
                self._doomed.add(sha256)
                return True
            await self._blobs.delete(sha256)
            return True

    async def plan(self, need: int) -> Choice:
        """What eviction would take to free `need` bytes (the UI shows it)."""
        limit = FIRST_BATCH
        while True:
            candidates = await self._metadata.eviction_candidates(limit)
            choice = choose(candidates, need)
            if choice.freed >= need or len(candidates) < limit:
                return choice
            limit *= 4

    async def make_room(self, need: int) -> int:
        """Evict the least recently used unpinned artifacts until `need` bytes
        are free (or nothing more can go); the bytes freed."""
        async with self._lock:
            choice = await self.plan(need)
            freed = 0
            for victim in choice.victims:
                freed += await self._evict(victim, "room") or 0
                await asyncio.sleep(0)
            if choice.victims:
                log.info("evict.room", need=need, artifacts=len(choice.victims), freed=freed)
            return freed

    async def evict_unused(self, before: float) -> int:
        """Evict every unpinned artifact not used since `before`; how many."""
        count = 0
        async with self._lock:
            while True:
                batch = await self._metadata.eviction_candidates(UNUSED_BATCH, before)
                if not batch:
                    return count
                for victim in batch:
                    count += await self._evict(victim, "unused") is not None
                    await asyncio.sleep(0)  # the embedded store's calls don't yield

    async def _evict(self, victim: EvictionCandidate, reason: str) -> int | None:
        """Delete the artifact unless it was pinned (or deleted) meanwhile;
        None if it stays, else the bytes its blob frees (0 while shared)."""
        gone = await self._metadata.delete_artifact(victim.id, unpinned=True)
        if gone is None:
            return None
        freed = gone.size if await self.release(gone.sha256) else 0
        await self._record(
            events.ArtifactEvicted(
                url=gone.key, sha256=gone.sha256, size=gone.size, last_used=gone.last_used,
                reason=reason,
            )
        )  # fmt: skip
        return freed
