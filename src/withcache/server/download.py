"""One fill's download from its origin into a BlobWriter.

Redirects are followed here, with the policy checked on every hop (and on
every DNS answer, by its resolver). Transient errors are retried with
exponential backoff and resumed with Range + If-Range where the origin
honours it; an origin that ignores the resume starts the blob over (and the
fill's generation with it, so read-through clients of the old bytes fail).
The length is checked against Content-Length, and --max-bytes is enforced
before the body (or, without a length, as it grows). Bytes are hashed and
written behind the transfer, one block in flight.
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
from withcache.server import events
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
PROGRESS_SECONDS = 1.0  # how often progress is saved to the metadata store
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
# getaddrinfo's "no such host" answers (a lookup that timed out is EAI_AGAIN).
_NO_SUCH_HOST = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}

Emit = Callable[[events.Event], Awaitable[None]]


class FillError(Exception):
    """A fill went wrong; `transient` says whether another try may succeed."""

    def __init__(
        self, message: str, transient: bool = False, refused: bool = False,
        unreachable: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.transient = transient
        self.refused = refused  # the policy or the cap said no: nothing was fetched
        self.unreachable = unreachable  # no connection to the origin at all


class Downloader:
    """The origin side of the fills: one HTTP client session, the cap's books."""

    def __init__(self, settings: Settings, metadata: Metadata, policy: Policy, emit: Emit) -> None:
        self._settings = settings
        self._metadata = metadata
        self._policy = policy
        self._emit = emit
        self._reserved: dict[int, int] = {}  # fill id -> bytes it will add to the store
        self._stored = 0  # bytes in the store when the last capped fill started
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

    def reserved_bytes(self) -> int:
        """Bytes that fills in progress here will add to the store."""
        return sum(self._reserved.values())

    def release(self, fill_id: int) -> None:
        """The fill ended: its bytes are stored or gone, no longer reserved."""
        self._reserved.pop(fill_id, None)

    async def download(self, fill: Fill, writer: BlobWriter, display: str) -> dict[str, str]:
        """Transfer the whole body into `writer`, retrying and resuming as needed."""
        attempt = 1
        while True:
            try:
                return await self._transfer(fill, writer)
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
        response = await self._open(fill.record.url, fill.authorization, extra)
        async with response:
            total = await self._accept(fill, writer, response, resuming)
            try:
                await self.receive(fill, writer, response.content.iter_any(), total)
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as err:
                raise FillError(f"transfer broke off: {_describe(err)}", transient=True) from None
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
            match = _CONTENT_RANGE_RE.fullmatch(response.headers.get("Content-Range", ""))
            if match and int(match[1]) == writer.size and match[3] != "*":
                return int(match[3])
            raise FillError("origin sent an unexpected range", transient=True)
        if status != 200:
            transient = status in TRANSIENT_STATUSES
            raise FillError(f"origin answered {status} {response.reason or ''}".strip(), transient)
        if writer.size:
            # The origin ignored the resume (or the artifact changed): start over.
            await writer.restart()
            fill.generation += 1
            fill._advance(0)
        fill.validator = _validator(response)
        fill.total = response.content_length
        await self.claim_room(fill, fill.total)
        fill.headers = {h: response.headers[h] for h in REPLAYED_HEADERS if h in response.headers}
        fill._wake()
        return fill.total

    async def claim_room(self, fill: Fill, total: int | None) -> None:
        """Refuse a fill whose `total` bytes (if known; else as they arrive, in
        `receive`) would take the store past --max-bytes."""
        if self._settings.max_bytes is not None:
            _, self._stored = await self._metadata.totals()
        self._check_cap(fill, total or 0, announced=total is not None)

    def _check_cap(self, fill: Fill, size: int, announced: bool) -> None:
        """Refuse a fill whose bytes would take the store past --max-bytes."""
        cap = self._settings.max_bytes
        if cap is None:
            return
        self._reserved.pop(fill.id, None)
        committed = self._stored + self.reserved_bytes()
        if committed + size > cap:
            what = "is" if announced else "grew past"
            raise FillError(
                f"artifact {what} {format_size(size)}; with {format_size(committed)} stored or "
                f"reserved it would exceed --max-bytes {format_size(cap)}",
                refused=True,
            )
        self._reserved[fill.id] = size

    async def receive(
        self, fill: Fill, writer: BlobWriter, chunks: AsyncIterator[bytes], total: int | None
    ) -> None:
        """Write `chunks` (an origin's body, or an upload's) into `writer`,
        behind the transfer, saving progress as it goes."""
        blocks = _WriteBehind(fill, writer)
        pieces: list[bytes] = []
        pending = 0
        last_flush = time.monotonic()
        # The first flush saves progress too: other hosts answer probes for this
        # fill with its length once they see it. (Not before reading: aiohttp
        # drops what it buffered if the origin hangs up before it is read.)
        last_save = 0.0
        received = writer.size
        try:
            async for chunk in chunks:
                pieces.append(chunk)
                pending += len(chunk)
                received += len(chunk)
                if total is None:
                    self._check_cap(fill, received, announced=False)
                now = time.monotonic()
                if pending >= FLUSH_BYTES or now - last_flush >= FLUSH_SECONDS:
                    await blocks.put(b"".join(pieces))
                    pieces.clear()
                    pending = 0
                    last_flush = now
                    if now - last_save >= PROGRESS_SECONDS:
                        await self._metadata.save_progress(fill.id, fill.bytes_done, total)
                        last_save = now
        finally:
            # Bytes received before a break-off are good: keep them to resume from.
            if pieces:
                await blocks.put(b"".join(pieces))
            await blocks.drain()

    async def fetch_small(self, url: str, limit: int) -> bytes:
        """The body of a small document (a vendor's checksum file), fetched as
        fills are (the policy checked on every hop), at most `limit` bytes."""
        response = await self._open(url, None, {"Accept-Encoding": "identity"})
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

    async def _open(
        self, url: str, authorization: str | None, extra: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """GET `url`, following redirects with the policy checked on each hop."""
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
    return FillError(f"origin unreachable: {text}", transient=True, unreachable=unreachable)


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.hostname, parts.port


def _validator(response: aiohttp.ClientResponse) -> str | None:
    """A strong validator to resume against with If-Range, if the origin gave one."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _describe(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
