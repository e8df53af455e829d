"""One fill's transfer from its origin into a BlobWriter.

Redirects are followed here, with the policy checked on every hop (and on
every DNS answer, by its resolver). Transient errors are retried with
exponential backoff (no sooner than a 429's or 5xx's Retry-After) and
resumed with Range + If-Range where the origin honours it. A resume is
taken only if the 206 carries the first answer's validator and total; an
origin that ignores the resume, or whose content changed meanwhile, starts
the blob over (and the fill's generation with it, so read-through clients of
the old bytes fail).

The length is checked against Content-Length. Room is claimed through the
fill's cap.Room before the body where the length is known, else as it
grows. A body framed by neither a length nor chunked encoding is marked
unframed: its end can't be told from a break-off.

Bytes are hashed and written behind the transfer, one block in flight; about
every second the partial file is synced and its length saved with the
validator, so a fill interrupted by a crash resumes from there. What the
transfer learns it tells the Fill through its writer side (start, restart,
advance), so readers of the fill follow it.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import aiohttp

from withcache import __version__, keys
from withcache.server import events, log
from withcache.server.cap import Room
from withcache.server.fill.fill import Fill, FillError
from withcache.server.policy import OriginRefused, Policy
from withcache.server.records import REPLAYED_HEADERS
from withcache.server.settings import Settings, format_size
from withcache.server.store import BlobWriter, Metadata

if TYPE_CHECKING:
    from withcache.server.digests import Digest
    from withcache.server.registry import Blob

MAX_REDIRECTS = 10
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
# Statuses worth another try: the origin or something before it is struggling.
TRANSIENT_STATUSES = {408, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER = 60.0  # seconds: a longer Retry-After is waited for this long
FLUSH_BYTES = 1 << 20  # write to the partial blob in blocks of this size...
FLUSH_SECONDS = 0.2  # ...or at least this often, so readers of a slow fill see progress
PROGRESS_SECONDS = 1.0  # how often progress (and a resume point) is saved
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
# getaddrinfo's "no such host" answers (a lookup that timed out is EAI_AGAIN).
_NO_SUCH_HOST = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}

Emit = Callable[[events.Event], Awaitable[None]]


@dataclass(frozen=True)
class Received:
    """A whole body, as the origin sent it."""

    headers: Mapping[str, str]  # the replayed ones
    unframed: bool  # it ended where the origin closed: its end can't be checked
    # The digest the origin named for the bytes (an OCI layer's), checked like an expected one.
    pinned: Digest | None = None
    etag: str | None = None  # the origin's, kept with the artifact to revalidate with


@dataclass(eq=False)
class _Run:
    """One fill's transfer on this host: what it has learnt of the origin's answer."""

    fill: Fill
    writer: BlobWriter
    room: Room
    display: str
    validator: str | None = None  # the origin's ETag or Last-Modified, to resume against
    total: int | None = None
    headers: dict[str, str] | None = None
    etag: str | None = None  # the origin's ETag
    unframed: bool = False
    checkpoint: asyncio.Future[None] | None = field(default=None, repr=False)
    blob: Blob | None = None  # the layer an oras:// reference resolved to, pinned


class Transfers:
    """The origin side of the fills: one HTTP client session for them all."""

    def __init__(self, settings: Settings, metadata: Metadata, policy: Policy, emit: Emit) -> None:
        self._settings = settings
        self._metadata = metadata
        self._policy = policy
        self._emit = emit
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

    async def run(
        self, fill: Fill, writer: BlobWriter, room: Room, display: str,
        resume: Mapping[str, object] | None = None,
    ) -> Received:  # fmt: skip
        """Transfer the whole body into `writer` (going on from its bytes with
        `resume`, a saved resume point), retrying and resuming as needed."""
        run = _Run(fill, writer, room, display)
        if resume is not None:
            run.validator = str(resume["validator"])
            total = resume.get("total")
            run.total = int(total) if isinstance(total, int) else None
        fill.spooling(writer.path, writer.size, run.total)
        attempt = 1
        while True:
            try:
                await self._transfer(run)
                if run.checkpoint is not None:
                    await run.checkpoint  # no progress saved after the commit
                assert run.headers is not None
                pinned = run.blob.expected if run.blob else None
                return Received(run.headers, run.unframed, pinned, run.etag)
            except FillError as err:
                if not err.transient or attempt >= self._settings.fill_attempts:
                    raise
                delay = self._settings.retry_delay * 2 ** (attempt - 1)
                if isinstance(err, _ComeBackLater):
                    delay = max(delay, err.wait)
                await self._emit(
                    events.FillRetrying(
                        url=display, fill_id=fill.id, error=str(err), attempt=attempt,
                        resume_from=writer.size,
                    )
                )  # fmt: skip
                await asyncio.sleep(delay)
                attempt += 1

    async def _transfer(self, run: _Run) -> None:
        extra = {"Accept-Encoding": "identity"}
        writer = run.writer
        resuming = writer.size > 0 and run.validator is not None
        if resuming:
            extra["Range"] = f"bytes={writer.size}-"
            extra["If-Range"] = run.validator  # type: ignore[assignment]
        response = await self._request(run, extra)
        async with response:
            total = await self._accept(run, response, resuming)
            try:
                await self._receive(run, response.content.iter_any(), total)
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as err:
                raise FillError(
                    f"transfer broke off: {_describe(err)}", transient=True,
                    timed_out=isinstance(err, TimeoutError),
                ) from None  # fmt: skip
            except _Overlong as err:
                await self._start_over(run)
                raise FillError(str(err), transient=True) from None
            if total is not None and writer.size != total:
                raise FillError(f"origin sent {writer.size} of {total} bytes", transient=True)

    async def _request(self, run: _Run, extra: dict[str, str]) -> aiohttp.ClientResponse:
        """The one place a fill's URL becomes a request: an http(s) URL is
        asked as it is; an oras:// reference through its registry, resolved
        to one layer at the transfer's first try and pinned (registry.py)."""
        fill = run.fill
        if not keys.is_reference(fill.record.url):
            return await self.get(fill.record.url, fill.authorization, extra)
        from withcache.server import registry  # (it raises this package's FillError)

        if run.blob is None:
            run.blob = await registry.resolve(
                self.get, fill.record.url, fill.authorization, fill.record.expected,
                self._settings.plain_http_registries,
            )  # fmt: skip
            fill.pin()
        return await run.blob.open(extra)

    async def _accept(
        self, run: _Run, response: aiohttp.ClientResponse, resuming: bool
    ) -> int | None:
        """Check a response's status and size; return the artifact's total length."""
        status = response.status
        writer = run.writer
        if status == 206 and resuming:
            changed = _changed(run, writer.size, response)
            if changed:
                await self._start_over(run)
                raise FillError(f"{changed}: starting over from byte 0", transient=True)
            if run.headers is None:  # resumed after a restart: this answer describes it
                run.headers = _replayed(run, response)
                run.etag = response.headers.get("ETag")
            await run.room.claim(run.total, writer.size)
            run.fill.start(run.headers, run.total)
            return run.total
        if status != 200:
            message = f"origin answered {status} {response.reason or ''}".strip()
            wait = _retry_after(response.headers.get("Retry-After"))
            if status in TRANSIENT_STATUSES and wait is not None:
                raise _ComeBackLater(message, wait, status)
            raise FillError(message, status in TRANSIENT_STATUSES, status=status)
        if writer.size:
            # The origin ignored the resume (or the artifact changed): start over.
            await self._start_over(run)
        run.validator = _validator(response)
        run.etag = response.headers.get("ETag")
        run.total = response.content_length
        if run.blob and run.total not in (None, run.blob.layer.size):
            raise FillError(f"the registry sent {run.total} bytes for a layer of "
                            f"{run.blob.layer.size}")  # fmt: skip
        run.unframed = run.total is None and not _chunked(response)
        await run.room.claim(run.total)
        run.headers = _replayed(run, response)
        run.fill.start(run.headers, run.total)
        return run.total

    async def _start_over(self, run: _Run) -> None:
        await run.writer.restart()
        run.fill.restart()

    async def upload(
        self, fill: Fill, writer: BlobWriter, room: Room, display: str,
        chunks: AsyncIterator[bytes], total: int | None, headers: Mapping[str, str],
    ) -> Received:  # fmt: skip
        """Write an upload's `chunks` (an import) into `writer` as an origin's
        body would be: room claimed, progress saved, readers following."""
        run = _Run(fill, writer, room, display, total=total, headers=dict(headers))
        fill.spooling(writer.path, writer.size, total)
        await room.claim(total)
        fill.start(dict(headers), total)
        try:
            await self._receive(run, chunks, total)
        finally:
            if run.checkpoint is not None:
                await run.checkpoint
        return Received(dict(headers), unframed=False)

    async def fetch_small(self, url: str, limit: int) -> bytes:
        """The body of a small document (a vendor's checksum file), fetched as
        fills are (the policy checked on every hop), at most `limit` bytes."""
        response = await self.get(url, None, {"Accept-Encoding": "identity"})
        async with response:
            if response.status != 200:
                reason = f"{response.status} {response.reason or ''}".strip()
                raise FillError(f"origin answered {reason}")
            return await read_body(response, limit)

    async def _receive(self, run: _Run, chunks: AsyncIterator[bytes], total: int | None) -> None:
        """Write `chunks` (an origin's body, or an upload's) into the run's
        writer, behind the transfer, claiming room and saving progress."""
        writer = run.writer
        blocks = _WriteBehind(run.fill, writer)
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
                received += len(chunk)
                if total is not None and received > total:
                    raise _Overlong(f"origin sent more than the {total} bytes it announced")
                pieces.append(chunk)
                pending += len(chunk)
                if total is None:
                    await run.room.grew(received)
                now = time.monotonic()
                if pending >= FLUSH_BYTES or now - last_flush >= FLUSH_SECONDS:
                    await blocks.put(b"".join(pieces))
                    pieces.clear()
                    pending = 0
                    last_flush = now
                    if now - last_save >= PROGRESS_SECONDS:
                        await run.room.claim_disk(total, writer.size)
                        self._checkpoint(run, total)
                        last_save = now
        finally:
            # Bytes received before a break-off are good: keep them to resume from.
            if pieces:
                await blocks.put(b"".join(pieces))
            await blocks.drain()

    def _checkpoint(self, run: _Run, total: int | None) -> None:
        """Save progress, and (once the bytes so far are synced) a point the
        fill can resume from after a crash; in the background, one at a time."""
        if run.checkpoint is not None and not run.checkpoint.done():
            return
        fill, writer = run.fill, run.writer
        size, generation = writer.size, fill.generation
        resume = None
        if run.validator is not None:
            resume = {"file": writer.path.name, "bytes": size, "validator": run.validator,
                      "total": total}  # fmt: skip

        async def save() -> None:
            try:
                if resume is not None:
                    await writer.sync()
                if fill.generation == generation and not fill.finished:
                    await self._metadata.save_progress(fill.id, fill.bytes_done, total, resume)
            except Exception as err:  # the next checkpoint tries again
                log.warning("fill.checkpoint_failed", fill_id=fill.id, error=_describe(err))

        run.checkpoint = asyncio.ensure_future(save())

    async def get(
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


class _ComeBackLater(FillError):
    """A transient status with a Retry-After: the next try waits at least `wait` seconds."""

    def __init__(self, message: str, wait: float, status: int) -> None:
        super().__init__(message, transient=True, status=status)
        self.wait = wait


def _retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After asks for (delay-seconds or an HTTP date), at most
    MAX_RETRY_AFTER; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


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
        self._fill.advance(self._writer.size)


async def read_body(response: aiohttp.ClientResponse, limit: int, what: str = "it") -> bytes:
    """A small body whole, at most `limit` bytes (FillError beyond)."""
    body = bytearray()
    try:
        async for chunk in response.content.iter_any():
            body += chunk
            if len(body) > limit:
                raise FillError(f"{what} is larger than {format_size(limit)}", refused=True)
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as err:
        raise FillError(f"transfer broke off: {_describe(err)}", transient=True) from None
    return bytes(body)


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


def _replayed(run: _Run, response: aiohttp.ClientResponse) -> dict[str, str]:
    kept = {h: response.headers[h] for h in REPLAYED_HEADERS if h in response.headers}
    return {**kept, **run.blob.headers} if run.blob else kept


def _chunked(response: aiohttp.ClientResponse) -> bool:
    return "chunked" in response.headers.get("Transfer-Encoding", "").lower()


def _changed(run: _Run, size: int, response: aiohttp.ClientResponse) -> str | None:
    """Why a 206 can't continue the bytes received so far, if it can't: it
    must start where they end and carry the first answer's validator, total
    and encoding. (Sets the run's total if the first answer had none.)"""
    match = _CONTENT_RANGE_RE.fullmatch(response.headers.get("Content-Range", ""))
    if not match or match[3] == "*":
        return "the origin's resume has no usable Content-Range"
    if int(match[1]) != size:
        return f"the origin resumed at byte {match[1]}, not {size}"
    total, validator = int(match[3]), _validator(response)
    if run.total is not None and total != run.total:
        return f"the origin's content changed (its length, {run.total} -> {total})"
    if validator != run.validator:
        return f"the origin's content changed (its validator, {run.validator} -> {validator})"
    encoding = (run.headers or {}).get("Content-Encoding")
    if run.headers is not None and response.headers.get("Content-Encoding") != encoding:
        return "the origin's content changed (its Content-Encoding)"
    run.total = total
    return None


def _describe(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
