"""One fill's download from its origin into a BlobWriter.

Redirects are followed here, with the policy checked on every hop (and on
every DNS answer, by its resolver). Transient errors are retried with
exponential backoff and resumed with Range + If-Range where the origin
honours it. A resume is taken only if the 206 carries the first answer's
validator and total; an origin that ignores the resume, or whose content
changed meanwhile, starts the blob over (and the fill's generation with it,
so read-through clients of the old bytes fail).

The length is checked against Content-Length. Room is claimed before the
body where the length is known, else as it grows: --max-bytes through the
metadata store's reservations (so it holds across fills and hosts), and the
disk's --min-free floor. A body framed by neither a length nor chunked
encoding is marked unframed: its end can't be told from a break-off.

Bytes are hashed and written behind the transfer, one block in flight; about
every second the partial file is synced and its length saved with the
validator, so a fill interrupted by a crash resumes from there.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import aiohttp

from withcache import __version__, keys
from withcache.server import events, log
from withcache.server.disk import Disk
from withcache.server.policy import OriginRefused, Policy
from withcache.server.settings import Settings, format_size
from withcache.server.store import BlobWriter, Metadata

if TYPE_CHECKING:
    from withcache.server.fills import Fill

MAX_REDIRECTS = 10
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
# Statuses worth another try: the origin or something before it is struggling.
TRANSIENT_STATUSES = {408, 425, 429, 500, 502, 503, 504}
# Response headers kept with the artifact and replayed on every hit.
REPLAYED_HEADERS = ("Content-Type", "Last-Modified", "Content-Disposition", "Content-Encoding")
FLUSH_BYTES = 1 << 20  # write to the partial blob in blocks of this size...
FLUSH_SECONDS = 0.2  # ...or at least this often, so readers of a slow fill see progress
PROGRESS_SECONDS = 1.0  # how often progress (and a resume point) is saved
# A fill of unknown length claims --max-bytes room this far ahead of its bytes:
# one reservation in the store per step, not one per chunk.
RESERVE_STEP = 4 << 20
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
# getaddrinfo's "no such host" answers (a lookup that timed out is EAI_AGAIN).
_NO_SUCH_HOST = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}

Emit = Callable[[events.Event], Awaitable[None]]


class FillError(Exception):
    """A fill went wrong; `transient` says whether another try may succeed."""

    def __init__(
        self, message: str, transient: bool = False, refused: bool = False,
        unreachable: bool = False,
        delivered: bool = False,
        status: int | None = None,
        timed_out: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.transient = transient
        self.refused = refused  # the policy or the cap said no: nothing was fetched
        self.unreachable = unreachable  # no connection to the origin at all
        self.status = status  # the origin's answer, when it answered with an error
        # The origin itself is failing (not this URL): unreachable, silent, or a 5xx.
        self.origin_fault = unreachable or timed_out or (status or 0) >= 500
        # The whole body, as far as the origin said, was received; only storing
        # it was refused: clients of the fill get all of it, as from the origin.
        self.delivered = delivered


class Downloader:
    """The origin side of the fills: one HTTP client session, and the room
    each fill claims (the cap's reservations, the disk's floor)."""

    def __init__(
        self, settings: Settings, metadata: Metadata, policy: Policy, emit: Emit,
        holder: str, promised: Callable[[Fill], int],
    ) -> None:  # fmt: skip
        self._settings = settings
        self._metadata = metadata
        self._policy = policy
        self._emit = emit
        self._holder = holder
        self._promised = promised  # bytes other fills here will still write to the disk
        self.disk = Disk(settings.data_dir, settings.min_free)
        # --evict lru: frees at least the bytes asked (least recently used first);
        # the bytes it freed. Set by the core; None: a fill that doesn't fit is refused.
        self.evict: Callable[[int], Awaitable[int]] | None = None
        # Whether deleting blobs frees room on the data dir's disk (local blobs).
        self.evict_frees_disk = False
        self._session: aiohttp.ClientSession | None = None

    def open(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=30, sock_read=self._settings.origin_timeout or None
        )
        connector = aiohttp.TCPConnector(resolver=self._policy.resolver(), limit=0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": f"withcache/{__version__}"},
        )

    async def close(self) -> None:
        if self._session:
            await self._session.close()

    async def download(self, fill: Fill, writer: BlobWriter, display: str) -> dict[str, str]:
        """Transfer the whole body into `writer`, retrying and resuming as needed."""
        attempt = 1
        while True:
            try:
                headers = await self._transfer(fill, writer)
                await self.settled(fill)
                return headers
            except FillError as err:
                if not err.transient or attempt >= self._settings.fill_attempts:
                    raise
                await self._emit(
                    events.FillRetrying(
                        url=display, fill_id=fill.id, error=str(err), attempt=attempt,
                        resume_from=writer.size,
                    )
                )  # fmt: skip
                await asyncio.sleep(self._settings.retry_delay * 2 ** (attempt - 1))
                attempt += 1

    async def _transfer(self, fill: Fill, writer: BlobWriter) -> dict[str, str]:
        extra = {"Accept-Encoding": "identity"}
        resuming = writer.size > 0 and fill.validator is not None
        if resuming:
            extra["Range"] = f"bytes={writer.size}-"
            extra["If-Range"] = fill.validator  # type: ignore[assignment]
        response = await self.open_get(fill.record.url, fill.authorization, extra)
        async with response:
            total = await self._accept(fill, writer, response, resuming)
            try:
                await self.receive(fill, writer, response.content.iter_any(), total)
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as err:
                raise FillError(
                    f"transfer broke off: {_describe(err)}", transient=True,
                    timed_out=isinstance(err, TimeoutError),
                ) from None  # fmt: skip
            except _Overlong as err:
                await self._start_over(fill, writer)
                raise FillError(str(err), transient=True) from None
            if total is not None and writer.size != total:
                raise FillError(f"origin sent {writer.size} of {total} bytes", transient=True)
            assert fill.headers is not None
            return dict(fill.headers)

    async def _accept(
        self, fill: Fill, writer: BlobWriter, response: aiohttp.ClientResponse, resuming: bool
    ) -> int | None:
        """Check a response's status and size; return the artifact's total length."""
        status = response.status
        if status == 206 and resuming:
            changed = _changed(fill, writer.size, response)
            if changed:
                await self._start_over(fill, writer)
                raise FillError(f"{changed}: starting over from byte 0", transient=True)
            if fill.headers is None:  # resumed after a restart: this answer describes it
                fill.headers = _replayed(response)
                fill.etag = response.headers.get("ETag")
            await self.claim_room(fill, writer, fill.total, writer.size)
            fill._wake()
            return fill.total
        if status != 200:
            transient = status in TRANSIENT_STATUSES
            raise FillError(
                f"origin answered {status} {response.reason or ''}".strip(), transient,
                status=status,
            )  # fmt: skip
        if writer.size:
            # The origin ignored the resume (or the artifact changed): start over.
            await self._start_over(fill, writer)
        fill.validator = _validator(response)
        fill.etag = response.headers.get("ETag")
        fill.total = response.content_length
        fill.unframed = fill.total is None and not _chunked(response)
        await self.claim_room(fill, writer, fill.total)
        fill.headers = _replayed(response)
        fill._wake()
        return fill.total

    async def _start_over(self, fill: Fill, writer: BlobWriter) -> None:
        await writer.restart()
        fill.generation += 1
        fill._advance(0)

    async def claim_room(
        self, fill: Fill, writer: BlobWriter, total: int | None, received: int = 0
    ) -> None:
        """Refuse a fill whose bytes (`total`, else the `received` so far) would
        take the store past --max-bytes, or the disk below --min-free (unless
        eviction can make the room)."""
        await self._claim_cap(fill, total, received)
        await self._claim_disk(fill, writer, total)

    async def _claim_cap(self, fill: Fill, total: int | None, received: int) -> None:
        cap = self._settings.max_bytes
        size = received if total is None else total
        if cap is None or size <= fill.reserved:
            return
        ahead = size if total is not None else size + RESERVE_STEP
        if await self._reserve(fill, ahead, cap):
            return
        if ahead != size and await self._reserve(fill, size, cap):
            return
        _, stored = await self._metadata.totals()
        others = await self._metadata.reserved_bytes() - fill.reserved
        if self.evict is not None and await self.evict(stored + others + size - cap):
            if await self._reserve(fill, size, cap):
                return
            _, stored = await self._metadata.totals()
            others = await self._metadata.reserved_bytes() - fill.reserved
        what = "is" if total is not None else "grew past"
        raise FillError(
            f"artifact {what} {format_size(size)}; with {format_size(stored + others)} "
            f"stored or reserved it would exceed --max-bytes {format_size(cap)}",
            refused=True,
        )

    async def _claim_disk(self, fill: Fill, writer: BlobWriter, total: int | None) -> None:
        """The disk check, evicting first (with local blobs) if it would fail."""
        due = max(0, total - writer.size) if total is not None else 0
        if self.evict is not None and self.evict_frees_disk:
            short = self.disk.shortfall(due, self._promised(fill))
            if short:
                await self.evict(short)
        self._check_disk(fill, writer, total)

    def _check_disk(self, fill: Fill, writer: BlobWriter, total: int | None) -> None:
        due = max(0, total - writer.size) if total is not None else 0
        refused = self.disk.refuse(due, self._promised(fill))
        if refused:
            raise FillError(refused, refused=writer.size == 0)

    async def _reserve(self, fill: Fill, size: int, cap: int) -> bool:
        if await self._metadata.reserve_bytes(fill.id, self._holder, size, cap):
            fill.reserved = size
            return True
        return False

    async def receive(
        self, fill: Fill, writer: BlobWriter, chunks: AsyncIterator[bytes], total: int | None
    ) -> None:
        """Write `chunks` (an origin's body, or an upload's) into `writer`,
        behind the transfer, claiming room and saving progress as it goes."""
        blocks = _WriteBehind(fill, writer)
        pieces: list[bytes] = []
        pending = 0
        last_flush = time.monotonic()
        # The first flush saves progress too: other hosts answer probes for this
        # fill with its length once they see it. (Not before reading: aiohttp
        # drops what it buffered if the origin hangs up before it is read.)
        last_save = 0.0
        received = writer.size
        capped = self._settings.max_bytes is not None
        try:
            async for chunk in chunks:
                received += len(chunk)
                if total is not None and received > total:
                    raise _Overlong(f"origin sent more than the {total} bytes it announced")
                pieces.append(chunk)
                pending += len(chunk)
                if total is None and capped and received > fill.reserved:
                    await self._claim_cap(fill, None, received)
                now = time.monotonic()
                if pending >= FLUSH_BYTES or now - last_flush >= FLUSH_SECONDS:
                    await blocks.put(b"".join(pieces))
                    pieces.clear()
                    pending = 0
                    last_flush = now
                    if now - last_save >= PROGRESS_SECONDS:
                        await self._claim_disk(fill, writer, total)
                        self._checkpoint(fill, writer, total)
                        last_save = now
        finally:
            # Bytes received before a break-off are good: keep them to resume from.
            if pieces:
                await blocks.put(b"".join(pieces))
            await blocks.drain()

    async def settled(self, fill: Fill) -> None:
        """Wait for the fill's last progress save: none may land after its commit."""
        if fill._checkpoint is not None:
            await fill._checkpoint

    def _checkpoint(self, fill: Fill, writer: BlobWriter, total: int | None) -> None:
        """Save progress, and (once the bytes so far are synced) a point the
        fill can resume from after a crash; in the background, one at a time."""
        if fill._checkpoint is not None and not fill._checkpoint.done():
            return
        size, generation = writer.size, fill.generation
        resume = None
        if fill.validator is not None:
            resume = {"file": writer.path.name, "bytes": size, "validator": fill.validator,
                      "total": total}  # fmt: skip

        async def save() -> None:
            try:
                if resume is not None:
                    await writer.sync()
                if fill.generation == generation and not fill._settled:
                    await self._metadata.save_progress(fill.id, fill.bytes_done, total, resume)
            except Exception as err:  # the next checkpoint tries again
                log.warning("fill.checkpoint_failed", fill_id=fill.id, error=_describe(err))

        fill._checkpoint = asyncio.ensure_future(save())

    async def fetch_small(self, url: str, limit: int) -> bytes:
        """The body of a small document (a vendor's checksum file), fetched as
        fills are (the policy checked on every hop), at most `limit` bytes."""
        response = await self.open_get(url, None, {"Accept-Encoding": "identity"})
        async with response:
            if response.status != 200:
                reason = f"{response.status} {response.reason or ''}".strip()
                raise FillError(f"origin answered {reason}")
            body = bytearray()
            try:
                async for chunk in response.content.iter_any():
                    body += chunk
                    if len(body) > limit:
                        raise FillError(f"it is larger than {format_size(limit)}", refused=True)
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as err:
                raise FillError(f"transfer broke off: {_describe(err)}", transient=True) from None
            return bytes(body)

    async def open_get(
        self, url: str, authorization: str | None, extra: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """GET `url`, following redirects with the policy checked on each hop
        (a FillError if it can't be asked); the caller reads and releases it."""
        assert self._session is not None
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            reason = self._policy.refuse_reason(url)
            if reason:
                raise FillError(reason, refused=True)
            headers = dict(extra)
            # Like curl without --location-trusted: credentials stay with their host.
            if authorization and _origin(url) == origin:
                headers["Authorization"] = authorization
            try:
                response = await self._session.get(url, headers=headers, allow_redirects=False)
            except OriginRefused as err:
                raise FillError(str(err), refused=True) from None
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                raise _not_reached(err) from None
            location = response.headers.get("Location")
            if response.status not in REDIRECT_STATUSES or not location:
                return response
            response.release()
            url = urljoin(url, location)
            try:
                keys.check_origin(url)
            except keys.BadURL as err:
                raise FillError(f"bad redirect: {err}") from None
        raise FillError(f"more than {MAX_REDIRECTS} redirects")


class _Overlong(Exception):
    """The origin sent more bytes than its Content-Range said."""


class _WriteBehind:
    """Writes received blocks to the blob while the next block arrives: one
    write in flight at a time, so order is kept and memory bounded."""

    def __init__(self, fill: Fill, writer: BlobWriter) -> None:
        self._fill = fill
        self._writer = writer
        self._pending: asyncio.Future[None] | None = None

    async def put(self, data: bytes) -> None:
        await self.drain()
        self._pending = asyncio.ensure_future(self._write(data))

    async def drain(self) -> None:
        """Wait for the write in flight; raise its FillError if it failed."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending

    async def _write(self, data: bytes) -> None:
        try:
            await self._writer.write(data)
        except OSError as err:
            raise FillError(f"cannot write the blob: {err.strerror or err}") from None
        self._fill._advance(self._writer.size)


def _not_reached(err: BaseException) -> FillError:
    """Why the request never got an answer, and whether another try may help."""
    text = _describe(err)
    if isinstance(err, aiohttp.InvalidURL):  # the client can't use it: another try won't either
        return FillError(f"bad URL: {text}")
    if isinstance(err, aiohttp.ClientConnectorCertificateError):
        return FillError(f"origin's TLS certificate refused: {text}")
    if isinstance(err, aiohttp.ClientConnectorDNSError):
        # No such name (or no address for it) is an answer, not a glitch.
        definite = getattr(err.os_error, "errno", None) in _NO_SUCH_HOST
        return FillError(f"origin unreachable: {text}", transient=not definite, unreachable=True)
    unreachable = isinstance(err, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError))
    return FillError(
        f"origin unreachable: {text}", transient=True, unreachable=unreachable,
        timed_out=isinstance(err, TimeoutError),
    )  # fmt: skip


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.hostname, parts.port


def _validator(response: aiohttp.ClientResponse) -> str | None:
    """A strong validator to resume against with If-Range, if the origin gave one."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _replayed(response: aiohttp.ClientResponse) -> dict[str, str]:
    return {h: response.headers[h] for h in REPLAYED_HEADERS if h in response.headers}


def _chunked(response: aiohttp.ClientResponse) -> bool:
    return "chunked" in response.headers.get("Transfer-Encoding", "").lower()


def _changed(fill: Fill, size: int, response: aiohttp.ClientResponse) -> str | None:
    """Why a 206 can't continue the bytes received so far, if it can't: it
    must start where they end and carry the first answer's validator, total
    and encoding. (Sets the fill's total if the first answer had none.)"""
    match = _CONTENT_RANGE_RE.fullmatch(response.headers.get("Content-Range", ""))
    if not match or match[3] == "*":
        return "the origin's resume has no usable Content-Range"
    if int(match[1]) != size:
        return f"the origin resumed at byte {match[1]}, not {size}"
    total, validator = int(match[3]), _validator(response)
    if fill.total is not None and total != fill.total:
        return f"the origin's content changed (its length, {fill.total} -> {total})"
    if validator != fill.validator:
        return f"the origin's content changed (its validator, {fill.validator} -> {validator})"
    encoding = (fill.headers or {}).get("Content-Encoding")
    if fill.headers is not None and response.headers.get("Content-Encoding") != encoding:
        return "the origin's content changed (its Content-Encoding)"
    fill.total = total
    return None


def _describe(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
