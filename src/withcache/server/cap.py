"""Room for fills, decided in one place: `--max-bytes` and `--min-free`.

Every path that may start a fill (a miss; an operator's add, approve or
retry) asks `Cap.refusal()` first, and a running transfer claims its room
through its `Room` once its length is known and again as its bytes arrive.
One formula decides --max-bytes everywhere (`fits`): `size` more bytes fit
if the bytes stored, plus what is reserved for running fills, plus `size`,
stay within the cap. The metadata store's reservation statement applies the
same inequality in one serialized step, so it holds across fills and hosts.
--min-free: the data dir's disk keeps its floor free after the bytes every
fill running here still has to write. With --evict lru a claim that doesn't
fit has eviction (reclaim.py) free the bytes it lacks first, and is refused
only if it still doesn't fit; the disk's floor counts eviction only when the
blobs live on that disk.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from withcache.server.disk import Disk
from withcache.server.fill.fill import Fill, FillError
from withcache.server.settings import Settings, format_size
from withcache.server.store import Metadata

# A fill of unknown length claims room this far ahead of its bytes: one
# reservation in the store per step, not one per chunk.
RESERVE_STEP = 4 << 20
FULL = "the cache is full (--max-bytes)"


def fits(taken: int, size: int, cap: int) -> bool:
    """The --max-bytes formula: `size` more bytes fit beside the `taken` ones
    (stored, plus reserved for other running fills)."""
    return taken + size <= cap


# --evict lru: frees at least the bytes asked, least recently used first; the bytes freed.
Evict = Callable[[int], Awaitable[int]]


class Cap:
    def __init__(
        self, settings: Settings, metadata: Metadata, evict: Evict | None = None,
        evict_frees_disk: bool = False,
    ) -> None:  # fmt: skip
        self.max_bytes = settings.max_bytes
        self._metadata = metadata
        self._disk = Disk(settings.data_dir, settings.min_free)
        self._rooms: set[Room] = set()
        self._evict = evict
        self._evict_frees_disk = evict_frees_disk  # deleting blobs makes room on the disk

    def low(self) -> str | None:
        """Why no fill may start on this host's disk now, if it is below its floor."""
        return self._disk.low()

    async def refusal(self) -> str | None:
        """Why no fill may start now: the disk below --min-free, or not one
        byte of room left under --max-bytes (unless eviction may make room:
        the fill's claim evicts, or is refused)."""
        low = self._disk.low()
        if low and not (self._evict and self._evict_frees_disk):
            return low
        if self._evict is not None:
            return None
        if self.max_bytes is not None and not fits(await self._taken(), 1, self.max_bytes):
            return FULL
        return None

    async def _taken(self, reserved_here: int = 0) -> int:
        """Bytes stored plus reserved, less `reserved_here` (the asker's own)."""
        _, stored = await self._metadata.totals()
        return stored + await self._metadata.reserved_bytes() - reserved_here

    def room(self, fill: Fill, holder: str) -> Room:
        """The room a fill this host runs claims (close it when the transfer ends)."""
        room = Room(self, fill, holder)
        self._rooms.add(room)
        return room

    def _promised(self, asking: Room) -> int:
        """The bytes the other fills running here still have to write to the disk."""
        return sum(
            max(0, room.fill.total - room.fill.bytes_done)
            for room in self._rooms
            if room is not asking and room.fill.total is not None
        )


class Room:
    """One running fill's share of the cap (its reservation) and of the disk."""

    def __init__(self, cap: Cap, fill: Fill, holder: str) -> None:
        self._cap = cap
        self.fill = fill
        self._holder = holder
        self.reserved = 0  # bytes of --max-bytes the store has promised this fill

    async def claim(self, total: int | None, received: int = 0) -> None:
        """Claim room for the whole artifact (`total`), else for the bytes
        `received` so far and a step ahead; a refusing FillError if it doesn't fit."""
        await self._reserve_cap(total, received)
        await self.claim_disk(total, received)

    async def grew(self, received: int) -> None:
        """A body of unknown length grew to `received` bytes."""
        if self._cap.max_bytes is not None and received > self.reserved:
            await self._reserve_cap(None, received)

    async def claim_disk(self, total: int | None, written: int) -> None:
        """check_disk, evicting first (when that makes room on the disk) if it
        would fail."""
        cap = self._cap
        if cap._evict is not None and cap._evict_frees_disk:
            due = max(0, total - written) if total is not None else 0
            short = cap._disk.shortfall(due, cap._promised(self))
            if short:
                await cap._evict(short)
        self.check_disk(total, written)

    def check_disk(self, total: int | None, written: int) -> None:
        """A FillError if the rest of the artifact (`total` less the `written`
        bytes) would take the disk below --min-free (a refusal if nothing was
        written yet)."""
        due = max(0, total - written) if total is not None else 0
        refused = self._cap._disk.refuse(due, self._cap._promised(self))
        if refused:
            raise FillError(refused, refused=written == 0)

    async def _reserve_cap(self, total: int | None, received: int) -> None:
        cap = self._cap.max_bytes
        size = received if total is None else total
        if cap is None or size <= self.reserved:
            return
        ahead = size if total is not None else size + RESERVE_STEP
        if await self._reserve(ahead, cap) or (ahead != size and await self._reserve(size, cap)):
            return
        taken = await self._cap._taken(self.reserved)
        evict = self._cap._evict
        if evict is not None and await evict(taken + size - cap) and await self._reserve(size, cap):
            return
        taken = await self._cap._taken(self.reserved)
        what = "is" if total is not None else "grew past"
        raise FillError(
            f"artifact {what} {format_size(size)}; with {format_size(taken)} stored or "
            f"reserved it would exceed --max-bytes {format_size(cap)}",
            refused=True,
        )

    async def _reserve(self, size: int, cap: int) -> bool:
        # The store checks fits(stored + others, size, cap) and records it in one step.
        if await self._cap._metadata.reserve_bytes(self.fill.id, self._holder, size, cap):
            self.reserved = size
            return True
        return False

    def close(self) -> None:
        self._cap._rooms.discard(self)
