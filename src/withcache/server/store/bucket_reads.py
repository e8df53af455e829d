"""Reading a range of an object for a hit streamed through the host (the
bucket store's reader), as fast as the store lets one host, in flat memory.

One GET streams the range, pulled ahead of the client by a task holding up
to READ_AHEAD chunks of READ_CHUNK bytes, so the store's answer and the
client's copy overlap. A store that is slow per connection (S3, GCS and
Azure over a network answer one stream at tens of MB/s, and many in
parallel at far more) shows it over the first PROBE_BYTES: if the store sent
them slower than PARALLEL_BELOW, the rest is read as ranged GETs of
READ_PART bytes, PARTS_AHEAD at a time, each conditional on the first
answer's ETag (every part is of the same object, or the read fails) and
checked for its length. On SeaweedFS here one stream is the faster
(parallel GETs cost the store more CPU per byte), and it stays one stream;
the probe is long enough that a busy moment of the host's is not taken for
a slow store.

Memory per read is flat, whatever the size of the range or the speed of the
client: READ_AHEAD + 2 chunks while streaming (those waiting, the one being
pulled, the one being sent), 16 MiB; PARTS_AHEAD parts once parallel, 32 MiB.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import obstore

from withcache.server.store.bucket_access import BucketError, bucket_error

READ_CHUNK = 4 << 20  # fewer, larger chunks: less host CPU per GiB than 1 MiB
READ_AHEAD = 2
READ_PART = 8 << 20
PARTS_AHEAD = 4
PROBE_BYTES = 32 << 20
PARALLEL_BELOW = 100e6  # bytes a second from the store, over the first PROBE_BYTES


class _Ahead:
    """An answer's stream pulled up to `depth` chunks ahead of its reader,
    timing how long the store took to send them (not how long the reader
    kept the puller waiting)."""

    _END = object()

    def __init__(self, stream: Any, depth: int) -> None:
        self.fetched = 0  # bytes the store has sent
        self.store_seconds = 0.0  # time spent waiting for them
        self._queue: asyncio.Queue[Any] = asyncio.Queue(depth)
        self._task = asyncio.ensure_future(self._pull(stream))

    async def _pull(self, stream: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            asked = loop.time()
            async for chunk in stream:
                self.store_seconds += loop.time() - asked
                self.fetched += len(chunk)
                await self._queue.put(chunk)
                asked = loop.time()
        except obstore.exceptions.BaseError as err:
            await self._queue.put(bucket_error(err))
        except Exception as err:  # handed to the reader, who raises it
            await self._queue.put(err)
        else:
            await self._queue.put(self._END)

    def rate(self) -> float:
        return self.fetched / max(self.store_seconds, 1e-6)

    async def next(self) -> Any:
        """The next chunk; None at the end."""
        item = await self._queue.get()
        if item is self._END:
            return None
        if isinstance(item, Exception):
            raise item
        return item

    async def stop(self) -> list[Any]:
        """Stop pulling; the chunks pulled and not read yet."""
        self._task.cancel()
        await asyncio.wait([self._task])  # (a cancel of the caller's still propagates)
        kept = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not self._END and not isinstance(item, Exception):
                kept.append(item)
        return kept


async def read_range(store: Any, key: str, answer: Any, start: int, end: int) -> AsyncIterator[Any]:
    """Bytes [start, end) of the object as buffers, `answer` being a GET of
    that range whose headers were read (and its size checked) already."""
    ahead = _Ahead(answer.stream(min_chunk_size=READ_CHUNK), READ_AHEAD)
    position = start
    try:
        while (chunk := await ahead.next()) is not None:
            position += len(chunk)
            yield memoryview(chunk)  # the library's buffer, not copied
            slow = ahead.fetched >= PROBE_BYTES and ahead.rate() < PARALLEL_BELOW
            if slow and end - position > READ_PART:
                break
        else:
            if position != end:
                sent = position - start
                raise BucketError(f"the object store sent {sent} of {end - start} bytes")
            return
    finally:
        pulled = await ahead.stop()
    for chunk in pulled:
        position += len(chunk)
        yield memoryview(chunk)
    async for part in _parts(store, key, answer.meta.get("e_tag"), position, end):
        yield part


async def _parts(
    store: Any, key: str, etag: str | None, start: int, end: int
) -> AsyncIterator[memoryview]:
    """Bytes [start, end) as ranged GETs of READ_PART, PARTS_AHEAD at a time."""
    spans = deque((s, min(s + READ_PART, end)) for s in range(start, end, READ_PART))
    in_flight: deque[asyncio.Future[Any]] = deque()

    def launch() -> None:
        if spans:
            in_flight.append(asyncio.ensure_future(_part(store, key, etag, *spans.popleft())))

    try:
        for _ in range(PARTS_AHEAD - 1):
            launch()
        while spans or in_flight:
            launch()  # the next part, while this one goes out: PARTS_AHEAD in all
            data = memoryview(await in_flight.popleft())
            for offset in range(0, len(data), READ_CHUNK):
                yield data[offset : offset + READ_CHUNK]
    finally:
        for waiting in in_flight:
            waiting.cancel()


async def _part(store: Any, key: str, etag: str | None, start: int, end: int) -> Any:
    options: dict[str, Any] = {"range": (start, end)}
    if etag is not None:
        options["if_match"] = etag  # the same object as the first answer, or an error
    try:
        data = await (await obstore.get_async(store, key, options=options)).bytes_async()
    except obstore.exceptions.BaseError as err:
        raise bucket_error(err) from None
    if len(data) != end - start:
        raise BucketError(f"the object store sent {len(data)} of bytes {start}-{end - 1}")
    return data
