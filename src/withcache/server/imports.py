"""Imports: bytes from an operator's machine made the artifact of a URL,
without touching its origin (`withcache import`: a file, a directory with a
manifest, a bundle exported by another cache-host).

An import is a fill whose bytes come from the upload instead of the origin
(a fill.manager.Source): the same blob writer (a temp file, hashed on the way), the
same expected-digest check, the same commit (fsync, rename, then the row),
the same room claimed under --max-bytes, the same progress on the Downloads
page. Only the host receiving the bytes runs it. Bytes the store holds
already, readable in the artifact's scope, are not sent again: the artifact
is committed over the stored blob. Each import is audited as
`artifact.imported` with its actor, and the artifact is marked imported,
since no origin vouched for it.

A credential-scoped artifact keeps its scope: an HMAC of the credential,
keyed by the store's scope secret. It means the same only where that secret
is the same, so such an import is taken only from a host with the same
`Policy.scope_key()`; anywhere else no credential could ever read it.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import StreamReader
from aiohttp.http_exceptions import HttpProcessingError

from withcache import keys
from withcache.server import events
from withcache.server.actions import ActionError, BadInput
from withcache.server.cap import Room
from withcache.server.digests import BLOB_ALGORITHM, Digest
from withcache.server.fill.fill import CancelledByOperator, Fill, FillError
from withcache.server.fill.manager import DigestMismatch, FillManager
from withcache.server.fill.transfer import Received, Transfers
from withcache.server.policy import Policy
from withcache.server.records import PUBLIC, REPLAYED_HEADERS, Artifact, readable
from withcache.server.store import Blobs, BlobWriter, Metadata

if TYPE_CHECKING:
    from withcache.server.cache import Cache

MAX_OFFERED = 1000  # artifacts offered in one call
MAX_HEADER_VALUE = 1000
CACHED, STORED, MISSING, REFUSED = "cached", "stored", "missing", "refused"


@dataclass(frozen=True)
class Offered:
    """One artifact an importer has the bytes of."""

    url: str
    sha256: str
    size: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    scope: str = PUBLIC


@dataclass(frozen=True)
class Outcome:
    """What became of an offered artifact: cached already (the same bytes),
    stored (over bytes the store had), missing (send them), or refused."""

    url: str
    state: str
    note: str | None = None
    artifact: Artifact | None = None


class Imports:
    """Imports through the core; the core makes one (`Cache.imports`)."""

    def __init__(
        self, cache: Cache, metadata: Metadata, policy: Policy, fills: FillManager
    ) -> None:
        self._cache = cache
        self._metadata = metadata
        self._policy = policy
        self._fills = fills

    async def upload(
        self, url: str, chunks: AsyncIterator[bytes], size: int | None, expected: Digest | None,
        headers: Mapping[str, str], actor: str | None, scope: str = PUBLIC,
        scope_key: str | None = None, refresh: bool = False,
    ) -> Artifact:  # fmt: skip
        """Store the bytes `chunks` bring as the artifact of `url` (committed
        only once all `size` of them arrived and match `expected`)."""
        key = self._check(url, headers, scope, scope_key)
        if not refresh:
            cached = await self._metadata.find_artifact(key, (scope,))
            if cached is not None:
                raise ActionError(
                    f"cached already (SHA-256 {cached.sha256}); send refresh to replace it"
                )
        upload = _Upload(chunks, size, headers)
        return await self._run(url, key, scope, upload, expected, actor, "upload")

    async def offer(
        self, offered: list[Offered], actor: str | None, scope_key: str | None = None,
        refresh: bool = False,
    ) -> list[Outcome]:  # fmt: skip
        """For each artifact an importer has: cached here already, stored now
        over the same bytes the store holds, or missing (the importer sends
        those with `upload`)."""
        if len(offered) > MAX_OFFERED:
            raise BadInput(f"offer at most {MAX_OFFERED} artifacts at once")
        outcomes = []
        for one in offered:
            try:
                outcomes.append(await self._offer(one, actor, scope_key, refresh))
            except ActionError as err:
                outcomes.append(Outcome(one.url, REFUSED, str(err)))
        return outcomes

    async def _offer(
        self, one: Offered, actor: str | None, scope_key: str | None, refresh: bool
    ) -> Outcome:
        key = self._check(one.url, one.headers, one.scope, scope_key)
        try:
            expected = Digest.sha256(one.sha256)
        except ValueError as err:
            raise BadInput(str(err)) from None
        md = self._metadata
        cached = await md.find_artifact(key, (one.scope,))
        if cached is not None and cached.sha256 == expected.hex:
            return Outcome(one.url, CACHED, artifact=cached)
        if cached is not None and not refresh:
            raise ActionError(
                f"cached already with other bytes (SHA-256 {cached.sha256}); refresh replaces it"
            )
        # Only bytes this scope may read already: a digest alone must never
        # hand out what a client's credentials guarded.
        scopes = readable(one.scope)
        stored = await md.find_artifact_by_sha256(expected.hex, scopes)
        if stored is None or (one.size is not None and stored.size != one.size):
            return Outcome(one.url, MISSING)
        source = _Stored(md, expected.hex, stored.size, one.headers, scopes)
        artifact = await self._run(one.url, key, one.scope, source, expected, actor, "stored")
        return Outcome(one.url, STORED, artifact=artifact)

    def _check(
        self, url: str, headers: Mapping[str, str], scope: str, scope_key: str | None
    ) -> str:
        """The cache key of an import of `url`; BadInput or ActionError if it can't be."""
        try:
            key = self._cache.key(url)
        except keys.BadURL as err:
            raise BadInput(f"bad url: {err}") from None
        problem = bad_headers(headers) or bad_scope(scope)
        if problem:
            raise BadInput(problem)
        if scope != PUBLIC and scope_key != self._policy.scope_key():
            raise ActionError(
                "credential-scoped, with another cache-host's scope secret: no credential "
                "could read it here"
            )
        return key

    async def _run(
        self, url: str, key: str, scope: str, source: _Upload | _Stored, expected: Digest | None,
        actor: str | None, how: str,
    ) -> Artifact:  # fmt: skip
        cache = self._cache
        fill = await self._fills.start_import(url, key, scope, source, expected, actor)
        if fill is None:
            raise ActionError("a fill for this URL is queued or running; wait for it or cancel it")
        try:
            artifact = await fill.result()
        except DigestMismatch as err:
            raise ActionError(f"{err}: nothing was stored") from None
        except (CancelledByOperator, FillError) as err:
            raise ActionError(f"not stored: {err}") from None
        await cache.record(
            events.ArtifactImported(
                url=cache.display(url), actor=actor, sha256=artifact.sha256, size=artifact.size,
                how=how, scoped=artifact.scoped,
            )
        )  # fmt: skip
        return artifact


def bad_headers(headers: Mapping[str, str]) -> str | None:
    """Why these can't be an artifact's replayed headers, or None."""
    for name, value in headers.items():
        if name not in REPLAYED_HEADERS:
            return f"header {name!r} is not kept (only {', '.join(REPLAYED_HEADERS)})"
        if not isinstance(value, str) or not value.isprintable() or len(value) > MAX_HEADER_VALUE:
            return f"bad value for header {name}"
    return None


def bad_scope(scope: str) -> str | None:
    if scope == PUBLIC or (len(scope) == 64 and set(scope) <= set("0123456789abcdef")):
        return None
    return "a scope is 64 lowercase hex digits"


async def uploaded(content: StreamReader, seconds: float) -> AsyncIterator[bytes]:
    """A request body's bytes as they arrive; TimeoutError if the uploader
    sends nothing for `seconds`."""
    while True:
        async with asyncio.timeout(seconds):
            chunk = await content.readany()
        if not chunk:
            return
        yield chunk


class _Upload:
    """An import's bytes from its request body."""

    def __init__(
        self, chunks: AsyncIterator[bytes], size: int | None, headers: Mapping[str, str]
    ) -> None:
        self._chunks = chunks
        self._size = size
        self._headers = dict(headers)

    def begin(self, blobs: Blobs, also: Collection[str]) -> BlobWriter:
        return blobs.begin(also)

    async def transfer(
        self, transfers: Transfers, fill: Fill, writer: BlobWriter, room: Room, display: str
    ) -> Received:
        try:
            received = await transfers.upload(
                fill, writer, room, display, self._chunks, self._size, self._headers
            )
        except (OSError, TimeoutError, HttpProcessingError) as err:
            reason = "the uploader went silent" if isinstance(err, TimeoutError) else str(err)
            raise FillError(f"the upload broke off after {writer.size} bytes ({reason})") from None
        if self._size is not None and writer.size != self._size:
            raise FillError(f"the upload ended after {writer.size} of {self._size} bytes")
        return received


class _Stored:
    """An import of bytes the store holds already: nothing to send."""

    def __init__(
        self, metadata: Metadata, sha256: str, size: int, headers: Mapping[str, str],
        scopes: tuple[str, ...],
    ) -> None:  # fmt: skip
        self._blob = _StoredBlob(metadata, sha256, size, scopes)
        self._headers = dict(headers)

    def begin(self, blobs: Blobs, also: Collection[str]) -> BlobWriter:
        return self._blob

    async def transfer(
        self, transfers: Transfers, fill: Fill, writer: BlobWriter, room: Room, display: str
    ) -> Received:
        return Received(dict(self._headers), unframed=False)


class _StoredBlob:
    """The BlobWriter of a blob stored already. Its commit, made under the
    blob's lock like every commit, checks that an artifact readable in the
    new one's scopes still holds those bytes: a delete meanwhile can't leave
    the new artifact pointing at nothing (or at bytes it may not read)."""

    path: Path | None = None  # nothing for read-through clients: it is stored in a moment

    def __init__(self, metadata: Metadata, sha256: str, size: int, scopes: tuple[str, ...]) -> None:
        self._metadata = metadata
        self._sha256 = sha256
        self._scopes = scopes
        self.size = size

    async def write(self, data: bytes) -> None:
        raise OSError(errno.EEXIST, "the blob is stored already")

    async def restart(self) -> None:
        pass

    async def sync(self) -> None:
        pass

    async def suspend(self) -> None:
        pass

    def hexdigest(self, algorithm: str = BLOB_ALGORITHM) -> str:
        if algorithm != BLOB_ALGORITHM:
            raise KeyError(algorithm)
        return self._sha256

    async def commit(self) -> str | None:
        holder = await self._metadata.find_artifact_by_sha256(self._sha256, self._scopes)
        if holder is None:
            raise OSError(errno.ENOENT, "the stored bytes were deleted meanwhile; send them")
        return None  # stored already, where it is: no new object to record

    async def abort(self) -> None:
        pass
