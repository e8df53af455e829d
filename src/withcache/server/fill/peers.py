"""Fills in progress across cache-hosts: the host running a fill serves its
bytes to the other hosts of the store as they arrive, and a host whose
client asks for a fill running elsewhere mirrors it from there into a spool
file of its own, which its clients read exactly as a local fill's.

A host announces where it serves (`--peer-url`) in the lease of each fill it
claims. A peer request names the fill, the holder it expects, the fill's
credential scope and an expiry, signed with HMAC-SHA256 under a key derived
from the session secret all hosts share (the secret itself never travels).
The filling host answers with the origin's headers, the length and the
transfer's generation, then the bytes as its own FillReader hands them out:
only bytes written, the last of a fill checked at its end only once checked,
and the connection cut short if the fill fails or starts over. So a mirror
that ends cleanly holds the fill's bytes, and one cut short breaks its
readers (a new generation: their clients fail short, never a clean end with
bytes missing), after which clients wait for the fill to be stored (taken
over elsewhere, if the filling host died).

Only clients that GET start a mirror, one per fill per host, however many
clients read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from withcache.server import log
from withcache.server.fill.fill import Fill, FillReader
from withcache.server.store import Metadata

TOKEN_SECONDS = 60  # a peer request's signature is good this long
MAX_AHEAD = 300  # ... and one valid longer than this is refused (clocks may differ a little)
CHUNK = 1 << 20
# Request headers: the signed token and the scope it was signed for.
TOKEN_HEADER = "Withcache-Peer-Token"
SCOPE_HEADER = "Withcache-Peer-Scope"
# Answer headers: the origin's headers (JSON), the generation, whether the
# bytes are checked against a digest at the end.
HEADERS_HEADER = "Withcache-Peer-Headers"
GENERATION_HEADER = "Withcache-Peer-Generation"
CHECKED_HEADER = "Withcache-Peer-Checked"
PATH = "/_peer/fills/{id}"


def peer_key(secret: bytes) -> bytes:
    """The key peer requests are signed with, derived from the session secret."""
    return hmac.new(secret, b"withcache peer streams 1", hashlib.sha256).digest()


def _signature(key: bytes, fill_id: int, holder: str, scope: str, expires: int) -> str:
    message = f"{fill_id}\n{holder}\n{scope}\n{expires}".encode("utf-8", "surrogatepass")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sign(key: bytes, fill_id: int, holder: str, scope: str, now: float) -> str:
    """A token for reading fill `fill_id` of `scope` from `holder` until a minute from now."""
    expires = int(now) + TOKEN_SECONDS
    return f"{expires}.{_signature(key, fill_id, holder, scope, expires)}"


def refusal(
    key: bytes, token: str, fill_id: int, holder: str, scope: str, now: float
) -> str | None:
    """Why a peer request's token is refused; None if it is good."""
    expires_text, _, signature = token.partition(".")
    if not expires_text.isdigit() or len(expires_text) > 12 or not signature:
        return "malformed peer token"
    expires = int(expires_text)
    expected = _signature(key, fill_id, holder, scope, expires)
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        return "bad peer signature"
    if expires < now:
        return "expired peer token"
    if expires > now + MAX_AHEAD:
        return "peer token valid too long"
    return None


@dataclass(frozen=True)
class PeerRequest:
    """What another host asks of a fill running here."""

    fill_id: int
    holder: str  # the holder it expects to be running the fill
    scope: str
    token: str
    offset: int = 0
    generation: int | None = None  # of the bytes it has, when it asks from an offset

    @classmethod
    def parse(
        cls, fill_id: int, headers: Mapping[str, str], query: Mapping[str, str]
    ) -> PeerRequest:
        """The request's parts; PeerRefused (400) if they are malformed."""
        numbers: dict[str, int | None] = {}
        for name in ("offset", "generation"):
            text = query.get(name)
            if text is not None and (not text.isdigit() or len(text) > 18):
                raise PeerRefused(400, f"{name} is not a whole number")
            numbers[name] = None if text is None else int(text)
        return cls(
            fill_id, query.get("holder", ""), headers.get(SCOPE_HEADER, ""),
            headers.get(TOKEN_HEADER, ""), numbers["offset"] or 0, numbers["generation"],
        )  # fmt: skip


class PeerRefused(Exception):
    """A peer request that can't be served: its HTTP status and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class PeerStream:
    """What the filling host sends another host: the answer's headers, then
    the reader's bytes from `offset`."""

    reader: FillReader
    offset: int
    generation: int
    checked: bool

    def headers(self) -> dict[str, str]:
        return {
            HEADERS_HEADER: json.dumps(dict(self.reader.headers)),
            GENERATION_HEADER: str(self.generation),
            CHECKED_HEADER: "1" if self.checked else "0",
            "Content-Type": "application/octet-stream",
        }


class _Broken(Exception):
    """The copy from the peer broke off (or never started)."""


class Mirror:
    """Copies one fill running on another host into a spool file here, for
    the clients of that fill on this host. `ready` says when they may read."""

    def __init__(
        self, fill: Fill, metadata: Metadata, session: aiohttp.ClientSession, key: bytes,
        spool_dir: Path,
    ) -> None:  # fmt: skip
        self._fill = fill
        self._metadata = metadata
        self._session = session
        self._key = key
        self._path = spool_dir / f"peer-{fill.id}-{secrets.token_hex(4)}"
        self._ready = asyncio.Event()  # mirroring, or given up
        self._done = 0  # bytes copied
        self._generation: int | None = None  # of the filling host's transfer, once it answered
        self.failed_holder: str | None = None  # the holder it could not copy from
        self._task = asyncio.create_task(self._run(), name=f"fill-mirror-{fill.id}")

    @property
    def done(self) -> bool:
        return self._task.done()

    async def ready(self, timeout: float) -> None:
        """Wait (up to `timeout` s) until the fill's bytes can be read here or the copy failed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)

    def stop(self) -> None:
        """This host takes the fill over, or stops: the copy's readers break now."""
        self._detach()
        self._task.cancel()

    def _detach(self) -> None:
        fill = self._fill
        # A fill that ended keeps its generation: its readers finish the bytes they have.
        if not fill.finished and fill.readable and fill.path == self._path:
            fill.unmirrored()
        self._ready.set()

    async def wait_stopped(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        fill = self._fill
        holder = None
        try:
            peer = await self._metadata.fill_peer(fill.id)
            if peer is None:  # not running, or its host announced no peer URL: clients wait
                self.failed_holder = fill.record.holder
                return
            holder, url = peer
            await self._copy(holder, url)
            with contextlib.suppress(Exception):
                await fill.result()  # its readers may open the file until it ends
        except _Broken as err:
            self.failed_holder = holder
            log.info("fill.peer_broken", fill_id=fill.id, holder=holder, reason=str(err))
        except Exception as err:  # never a traceback for a peer's fault
            self.failed_holder = holder
            log.warning("fill.peer_failed", fill_id=fill.id, holder=holder, error=repr(err))
        finally:
            self._detach()
            self._path.unlink(missing_ok=True)

    async def _copy(self, holder: str, url: str) -> None:
        """Copy the fill from `holder` at `url`; returns once every byte is here."""
        with open(self._path, "wb") as out:
            for attempt in range(2):  # a connection dropped once is picked up where it was
                try:
                    await self._receive(holder, url, out.fileno())
                    return
                except (aiohttp.ClientError, TimeoutError, ConnectionError) as err:
                    if self._generation is None or attempt:
                        raise _Broken(f"{type(err).__name__}: {err}") from None
                    log.info("fill.peer_resuming", fill_id=self._fill.id, offset=self._done)

    async def _receive(self, holder: str, url: str, fileno: int) -> None:
        fill = self._fill
        query = {"holder": holder, "offset": str(self._done)}
        if self._generation is not None:
            query["generation"] = str(self._generation)
        headers = {
            TOKEN_HEADER: sign(self._key, fill.id, holder, fill.record.scope, time.time()),
            SCOPE_HEADER: fill.record.scope,
        }
        target = url.rstrip("/") + PATH.format(id=fill.id)
        async with self._session.get(target, params=query, headers=headers) as response:
            if response.status != 200:
                reason = (await response.text())[:200].strip()
                raise _Broken(f"the filling host answered {response.status}: {reason}")
            if self._generation is None:
                self._generation = _parse_start(response, fill, self._path)
                self._ready.set()
            elif response.headers.get(GENERATION_HEADER) != str(self._generation):
                raise _Broken("the fill started over on its host")
            async for chunk in response.content.iter_chunked(CHUNK):
                os.pwrite(fileno, chunk, self._done)
                self._done += len(chunk)
                fill.advance(self._done)
        total = fill.total
        if total is not None and self._done != total:
            raise _Broken(f"the stream ended at {self._done} of {total} bytes")


def _parse_start(response: aiohttp.ClientResponse, fill: Fill, path: Path) -> int:
    """Begin the mirror from the filling host's answer: its headers, length, generation."""
    try:
        replayed: Mapping[str, str] = json.loads(response.headers[HEADERS_HEADER])
        generation = int(response.headers[GENERATION_HEADER])
    except (KeyError, ValueError) as err:
        raise _Broken(f"not a peer stream: {err}") from None
    checked = response.headers.get(CHECKED_HEADER) == "1"
    fill.mirroring(path, {str(k): str(v) for k, v in replayed.items()}, response.content_length,
                   checked)  # fmt: skip
    return generation
