"""Lists: many artifacts added at once, from a file of URLs or a vendor's
checksum file (sha256sum, sha512sum or md5sum output, GNU or BSD style).

Each line becomes an item, added as `Cache.add` adds one URL: cached already
(skipped, unless refresh), a fill queued or joined with the line's digest as
its expected value, or refused with the reason. The list and its items are
stored, so its progress comes from the store (after a restart, on every host
sharing it); the rate is what this host's fills of it are doing now.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from withcache import keys
from withcache.server import checksums, events
from withcache.server.actions import ActionError, BadInput
from withcache.server.checksums import BadLine, Entry
from withcache.server.digests import BLOB_ALGORITHM, Digest
from withcache.server.fill.fill import FillError
from withcache.server.fill.manager import FillManager
from withcache.server.policy import Policy
from withcache.server.records import ItemState, ListItem, ListRecord, ListTally, Page
from withcache.server.store import Metadata

if TYPE_CHECKING:
    from withcache.server.cache import Cache

MAX_LINES = 10_000  # items in one list (split bigger ones): each is added at once
MAX_SUMS_BYTES = 4 << 20  # the largest checksum file fetched
SUMS_SECONDS = 60.0  # a checksum file must arrive within this
STORE_EVERY = 200  # items are stored in batches of this many...
YIELD_EVERY = 20  # ...and the loop is let go this often, so hits go on meanwhile
URLS, SUMS = "urls", "sums"
FETCHING = ("queued", "running", "done")  # items whose bytes count towards the total
WANTED_NOT = (ItemState.REFUSED, ItemState.DUPLICATE)


@dataclass(frozen=True)
class ListProgress:
    """A list as the UI and the API show it: its record and what its items add up to."""

    record: ListRecord
    tally: ListTally
    rate: float  # bytes per second, of its fills running on this host

    def count(self, *states: str) -> int:
        return sum(self.tally.counts.get(state, 0) for state in states)

    @property
    def items(self) -> int:
        return self.count(*self.tally.counts)

    @property
    def wanted(self) -> int:
        """The artifacts the list names (not its bad or repeated lines)."""
        return self.items - self.count(*WANTED_NOT)

    @property
    def ready(self) -> int:
        """Cached now: fetched for this list, or cached already."""
        return self.count("done", ItemState.CACHED)

    @property
    def failed(self) -> int:
        return self.count("failed", "cancelled")

    @property
    def active(self) -> int:
        return self.count("queued", "running")

    @property
    def finished(self) -> bool:
        return self.active == 0

    @property
    def refused(self) -> int:
        return self.count(ItemState.REFUSED)

    @property
    def bytes_done(self) -> int:
        return sum(self.tally.bytes_done.get(state, 0) for state in FETCHING)

    @property
    def bytes_total(self) -> int:
        """The bytes of the artifacts to fetch whose size is known (see `unsized`)."""
        return sum(self.tally.totals.get(state, 0) for state in FETCHING)

    @property
    def unsized(self) -> int:
        """Artifacts still to fetch whose size is not known yet."""
        return self.active - sum(self.tally.sized.get(s, 0) for s in ("queued", "running"))

    @property
    def percent(self) -> int | None:
        return min(100, self.ready * 100 // self.wanted) if self.wanted else None

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate; the artifacts of unknown size are
        taken to be as big as the average known one."""
        if self.finished or self.rate <= 0:
            return None
        sized = sum(self.tally.sized.get(state, 0) for state in FETCHING)
        guess = self.unsized * (self.bytes_total / sized) if sized else 0
        return max(0.0, (self.bytes_total + guess - self.bytes_done) / self.rate)


class Lists:
    """Adds lists through the core (each line as `Cache.add` adds one URL)
    and reports on them; the core makes one (`Cache.lists`)."""

    def __init__(
        self, cache: Cache, metadata: Metadata, policy: Policy, fills: FillManager
    ) -> None:
        self._cache = cache
        self._metadata = metadata
        self._policy = policy
        self._fills = fills

    async def add_text(
        self, text: str, source: str, actor: str | None = None, refresh: bool = False
    ) -> ListRecord:
        """A list of URLs, each optionally with its digest (`<hex>  <url>`)."""
        read = list(checksums.read(text))
        if not read:
            raise BadInput("the list names no URL (blank lines and # comments only)")
        return await self._add(read, source, URLS, None, actor, refresh)

    async def add_sums(
        self, url: str, match: str | None = None, actor: str | None = None, refresh: bool = False
    ) -> ListRecord:
        """Every file a vendor's checksum file at `url` lists (those `match`
        fits, if given), each with its digest as the expected value."""
        try:
            keys.check_origin(url)
        except keys.BadURL as err:
            raise BadInput(f"bad checksum file URL: {err}") from None
        refusal = self._policy.refuse_reason(url)
        if refusal:
            raise ActionError(f"checksum file not fetched: {refusal}")
        shown = self._cache.display(url)
        try:
            async with asyncio.timeout(SUMS_SECONDS):
                body = await self._fills.fetch_small(url, MAX_SUMS_BYTES)
        except FillError as err:
            raise ActionError(f"cannot fetch the checksum file {shown}: {err}") from None
        except TimeoutError:
            raise ActionError(
                f"the checksum file {shown} did not arrive within {SUMS_SECONDS:.0f} s"
            ) from None
        read = [
            found for found in checksums.read(body.decode("utf-8", "surrogateescape"))
            if match is None or isinstance(found, BadLine) or checksums.matches(found.name, match)
        ]  # fmt: skip
        if not any(isinstance(found, Entry) for found in read):
            what = f"no file matching {match!r}" if match else "no file"
            raise BadInput(f"the checksum file {shown} lists {what}")
        return await self._add(read, shown, SUMS, url, actor, refresh)

    async def _add(
        self, read: list[Entry | BadLine], source: str, kind: str, base: str | None,
        actor: str | None, refresh: bool,
    ) -> ListRecord:  # fmt: skip
        if len(read) > MAX_LINES:
            raise BadInput(f"a list may have at most {MAX_LINES} lines; this one has {len(read)}")
        md = self._metadata
        list_id = await md.add_list(source, kind, actor, time.time())
        items: list[ListItem] = []
        seen: dict[str, tuple[int, Digest | None]] = {}
        stored = 0
        for n, found in enumerate(read, start=1):
            items.append(await self._item(found, base, seen, actor, refresh))
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if len(items) - stored >= STORE_EVERY:
                await md.add_list_items(list_id, items[stored:])
                stored = len(items)
        await md.add_list_items(list_id, items[stored:])
        record = await md.get_list(list_id)
        assert record is not None
        states = [item.state for item in items]
        await self._cache.record(
            events.ListAdded(
                url=source if kind == SUMS else None, actor=actor, list_id=list_id,
                lines=len(items), cached=states.count(ItemState.CACHED),
                refused=states.count(ItemState.REFUSED),
                queued=len(items) - sum(states.count(s) for s in ItemState),
            )
        )  # fmt: skip
        return record

    async def _item(
        self, found: Entry | BadLine, base: str | None, seen: dict[str, tuple[int, Digest | None]],
        actor: str | None, refresh: bool,
    ) -> ListItem:  # fmt: skip
        if isinstance(found, BadLine):
            return ListItem(found.line, found.text, ItemState.REFUSED, note=found.reason)
        cache = self._cache
        try:
            url = found.name if base is None else checksums.resolve(base, found.name)
            key = cache.key(url)
        except (ValueError, keys.BadURL) as err:
            shown = found.name[: checksums.SHOWN]
            return ListItem(found.line, shown, ItemState.REFUSED, note=str(err))
        shown = cache.display(url)
        earlier = seen.get(key)
        if earlier is not None:
            line, digest = earlier
            if None not in (digest, found.digest) and digest != found.digest:
                note = f"line {line} names this artifact with another digest"
                return ListItem(found.line, shown, ItemState.REFUSED, note=note)
            return ListItem(found.line, shown, ItemState.DUPLICATE, note=f"as on line {line}")
        seen[key] = (found.line, found.digest)
        try:
            added = await cache.add(url, found.digest, actor, refresh)
        except ActionError as err:
            return ListItem(found.line, shown, ItemState.REFUSED, note=str(err))
        if added.artifact is not None:
            note = None
            if found.digest is not None and found.digest.algorithm != BLOB_ALGORITHM:
                note = (
                    f"cached already; its {found.digest.label} was not checked again "
                    "(refresh fetches and checks it)"
                )
            size = added.artifact.size
            return ListItem(found.line, shown, ItemState.CACHED, total=size, note=note)
        assert added.fill is not None
        note = None if added.created else "joined the fill under way"
        fill = added.fill
        return ListItem(found.line, shown, fill.state.value, fill.id, total=fill.total, note=note)

    async def listing(self, offset: int = 0, limit: int = 50) -> Page:
        """A page of lists, newest first."""
        return await self._metadata.list_lists(offset, limit)

    async def get(self, list_id: int) -> ListRecord | None:
        return await self._metadata.get_list(list_id)

    async def items(
        self, list_id: int, states: Sequence[str] = (), offset: int = 0, limit: int = 50
    ) -> Page:
        """A page of a list's items, in the states given (all if none)."""
        return await self._metadata.list_items(list_id, states, offset, limit)

    async def progress(self, record: ListRecord) -> ListProgress:
        tally = await self._metadata.tally_list(record.id)
        rate = 0.0
        for fill_id in tally.running:
            live = self._fills.live(fill_id)
            if live is not None and not live.elsewhere:
                rate += live.rate
        return ListProgress(record, tally, rate)
