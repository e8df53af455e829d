"""Answering from a stored blob: the conditional answer, then the bytes.

Where the bytes come from is the core's and the store's business (an
OpenHit): a local file goes out by zero-copy sendfile, an object store's
blob is streamed through this host, or, with `--redirect-hits`, the client
is sent to a short-lived presigned URL of the object store so the bytes
never pass through here. HEAD and the conditional answers (304, 412, 416)
never touch the store; the headers of an artifact's answers are built once
and kept while it is looked up.

A blob that is not as stored is never sent (the OpenHit checks what is
read): found before anything was sent, the request goes on as a miss (filled
afresh); found after its headers were sent, the connection is closed short
(reset, after a sendfile, so a client that has not read every byte fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import struct
from typing import BinaryIO

from aiohttp import web

from withcache.server.cache import STALE_HEADER, Cache
from withcache.server.hits import SMALL_BLOB, HitLost, OpenHit
from withcache.server.records import Artifact
from withcache.server.web import conditional

SMALL_BODY = SMALL_BLOB  # answers up to this long are read into memory (and checked)
# Long enough for a client to follow the redirect (and a resuming client to come
# back through the cache-host for a fresh one), short enough to be no lasting key.
PRESIGN_SECONDS = 300
REPRESENTATIONS = 4096  # artifacts whose answer headers are kept (cleared when full)
_representations: dict[tuple[int, str, float], conditional.Representation] = {}


def representation(artifact: Artifact) -> conditional.Representation:
    """The artifact as its answers describe it: the origin's replayed headers,
    its SHA-256 as the ETag, its size (built once per stored artifact)."""
    # (A refresh of the same bytes keeps the row's id and SHA-256, not its time.)
    stored = (artifact.id, artifact.sha256, artifact.fetched_at)
    found = _representations.get(stored)
    if found is None:
        headers = dict(artifact.headers)
        headers.setdefault("Content-Type", "application/octet-stream")
        etag = headers["ETag"] = f'"{artifact.sha256}"'
        last_modified = conditional.http_date(headers.get("Last-Modified"))
        found = conditional.Representation(etag, last_modified, artifact.size, headers)
        if len(_representations) >= REPRESENTATIONS:
            _representations.clear()
        _representations[stored] = found
    return found


async def send_blob(
    request: web.Request, cache: Cache, artifact: Artifact, for_fill: bool = False
) -> web.StreamResponse | None:
    """Answer from a stored blob; None if the blob vanished (deleted
    meanwhile) or was found damaged before anything was sent. `for_fill`:
    the client waited for its fill to be stored (Cache.open_hit)."""
    answer = conditional.answer(request.method, request.headers, representation(artifact))
    stale = cache.stale(artifact)
    if stale:  # served although its origin could not confirm it (stale-if-error)
        answer = dataclasses.replace(answer, headers={**answer.headers, STALE_HEADER: stale})
    if answer.status in (304, 412, 416):
        return web.Response(status=answer.status, headers=answer.headers)
    if request.method == "HEAD":
        response = web.StreamResponse(status=answer.status, headers=answer.headers)
        response.content_length = answer.length
        return response
    # The store's ETag is not ours, so an If-Range would not hold there: such a
    # request is answered here, as evaluated above.
    if cache.settings.redirect_hits and "If-Range" not in request.headers:
        location = await cache.presign_hit(
            artifact, PRESIGN_SECONDS, answer.headers, answer.length, for_fill
        )
        if location is not None:
            return web.Response(
                status=302, headers={"Location": location, "Cache-Control": "no-store"}
            )
    hit = await cache.open_hit(artifact, for_fill)
    if hit is None:
        return None
    try:
        return await _send(request, hit, answer)
    except HitLost:
        return None  # before anything was sent
    finally:
        await hit.close()


async def _send(
    request: web.Request, hit: OpenHit, answer: conditional.Answer
) -> web.StreamResponse:
    if hit.artifact.size <= SMALL_BLOB or answer.length <= SMALL_BODY:
        body = await hit.body(answer.start, answer.length)
        hit.sent(answer.length)
        return web.Response(status=answer.status, headers=answer.headers, body=body)
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away")
    response = web.StreamResponse(status=answer.status, headers=answer.headers)
    response.content_length = answer.length
    if hit.file is None:
        return await _stream(request, transport, response, hit, answer)
    sock = transport.get_extra_info("socket")
    try:
        # Corked, the headers and the file leave in full-sized segments (like
        # nginx's tcp_nopush): a third of the kernel time per GiB on loopback.
        _cork(sock, True)
        await response.prepare(request)
        hit.sent(answer.length)
        try:
            problem = await _sendfile(transport, hit, hit.file, answer.start, answer.length)
        except ConnectionError:
            return response  # the client left
        except OSError as err:  # EIO: a bad sector
            problem = f"unreadable: {err.strerror or err}"
    finally:
        _cork(sock, False)
    if problem is not None:  # damaged since it was opened
        _reset(transport)  # the client fails, loudly
        await hit.damaged(problem)
        return response
    await response.write_eof()
    return response


async def _stream(
    request: web.Request, transport: asyncio.Transport, response: web.StreamResponse,
    hit: OpenHit, answer: conditional.Answer,
) -> web.StreamResponse:  # fmt: skip
    """Send the bytes as the object store sends them."""
    async with contextlib.aclosing(hit.chunks(answer.start, answer.length)) as chunks:
        first = await anext(chunks)  # HitLost before any header is sent
        await response.prepare(request)
        hit.sent(answer.length)
        try:
            await response.write(first)
            async for chunk in chunks:
                await response.write(chunk)
        except (OSError, HitLost):
            transport.close()  # short of Content-Length: the client fails, loudly
            return response
    await response.write_eof()
    return response


async def _sendfile(
    transport: asyncio.Transport, hit: OpenHit, file: BinaryIO, start: int, length: int
) -> str | None:
    """Send the bytes; what went wrong, if anything. A file cut in place while
    it is sent has the page at its new end zeroed under the bytes already
    queued (zero-copy): the check afterwards heals the store and resets the
    client, but one that already read every byte keeps them. Blobs are never
    changed in place by withcache itself (commit, quarantine and delete rename
    or unlink), so that takes another process editing a live blob."""
    sent = await asyncio.get_running_loop().sendfile(transport, file, start, length)
    if sent == length and hit.unchanged():
        return None
    return "size: it changed while it was sent"


def _reset(transport: asyncio.BaseTransport) -> None:
    """Close with a reset, not an orderly close: what the kernel still holds
    for the client is dropped, so one that has not read every announced byte
    yet sees the transfer fail."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _cork(sock: socket.socket | None, on: bool) -> None:
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, on)
