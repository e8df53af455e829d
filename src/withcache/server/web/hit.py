"""Answering from a stored blob: conditionals and ranges, then the bytes.

Where the bytes come from is the blob store's business: a local file goes out
by zero-copy sendfile, an object store's blob is streamed through this host,
or, with `--redirect-hits`, the client is sent to a short-lived presigned URL
of the object store so the bytes never pass through here. HEAD and the
conditional answers (304, 412, 416) never touch the store.

A blob that is not as stored is never sent: its size is checked when it is
opened, its file is checked unchanged after it was read or sent (a client of
a file cut meanwhile is reset), and a small blob is re-hashed when read,
unless its file is unchanged since it was hashed less than a minute ago
(verify.ReadChecks: hashing on every read cost a third of a small hit). A
bad one is quarantined and the request goes on as a miss (filled afresh);
one found bad after its headers were sent has its connection closed short.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import struct

from aiohttp import web

from withcache.server.cache import Cache
from withcache.server.store import Artifact, BlobDamaged, BlobGone, BlobReader
from withcache.server.web import conditional

SMALL_BODY = 256 * 1024
# Long enough for a client to follow the redirect (and a resuming client to come
# back through the cache-host for a fresh one), short enough to be no lasting key.
PRESIGN_SECONDS = 300


def _headers(artifact: Artifact) -> dict[str, str]:
    headers = dict(artifact.headers)
    headers.setdefault("Content-Type", "application/octet-stream")
    headers["ETag"] = f'"{artifact.sha256}"'
    headers["Accept-Ranges"] = "bytes"
    return headers


async def send_blob(
    request: web.Request, cache: Cache, artifact: Artifact
) -> web.StreamResponse | None:
    """Answer from a stored blob; None if the blob vanished (deleted
    meanwhile) or was found damaged before anything was sent."""
    headers = _headers(artifact)
    rep = conditional.Representation(
        etag=headers["ETag"],
        last_modified=conditional.http_date(headers.get("Last-Modified")),
        size=artifact.size,
    )
    answer = conditional.evaluate(request.method, request.headers, rep)
    if answer.status in (304, 412):
        for name in ("Content-Type", "Content-Encoding", "Content-Disposition"):
            headers.pop(name, None)
        return web.Response(status=answer.status, headers=headers)
    if answer.status == 416:
        headers["Content-Range"] = f"bytes */{artifact.size}"
        return web.Response(status=416, headers=headers)
    if answer.status == 206:
        end = answer.start + answer.length - 1
        headers["Content-Range"] = f"bytes {answer.start}-{end}/{artifact.size}"
    if request.method == "HEAD":
        response = web.StreamResponse(status=answer.status, headers=headers)
        response.content_length = answer.length
        return response
    # The store's ETag is not ours, so an If-Range would not hold there: such a
    # request is answered here, as evaluated above.
    if cache.settings.redirect_hits and "If-Range" not in request.headers:
        location = await cache.blobs.presign(artifact.sha256, PRESIGN_SECONDS, headers)
        if location is not None:
            cache.count_hit(artifact, answer.length)
            return web.Response(
                status=302, headers={"Location": location, "Cache-Control": "no-store"}
            )
    try:
        reader = await cache.blobs.open(artifact.sha256, artifact.size)
    except BlobGone:
        return None
    except BlobDamaged as err:
        await cache.blob_damaged(artifact, err.problem)
        return None
    try:
        return await _send(request, cache, artifact, reader, answer, headers)
    except BlobGone:
        return None
    except BlobDamaged as err:
        await cache.blob_damaged(artifact, err.problem)
        return None
    finally:
        await reader.close()


async def _send(
    request: web.Request,
    cache: Cache,
    artifact: Artifact,
    reader: BlobReader,
    answer: conditional.Answer,
    headers: dict[str, str],
) -> web.StreamResponse:
    if artifact.size <= SMALL_BODY:
        # The whole blob is read (it is small), so it can be checked.
        blob = await reader.read(0, artifact.size)
        if len(blob) != artifact.size or not reader.unchanged():
            raise BlobDamaged(artifact.sha256, "size: it changed while it was read")
        if cache.read_checks.due(artifact.sha256, reader.stamp):
            if hashlib.sha256(blob).hexdigest() != artifact.sha256:
                raise BlobDamaged(artifact.sha256, "content: its SHA-256 differs from its name")
            cache.read_checks.passed(artifact.sha256, reader.stamp)
        cache.count_hit(artifact, answer.length)
        body = blob[answer.start : answer.start + answer.length]
        return web.Response(status=answer.status, headers=headers, body=body)
    if answer.length <= SMALL_BODY:
        body = await reader.read(answer.start, answer.length)
        if len(body) != answer.length or not reader.unchanged():
            raise BlobDamaged(artifact.sha256, "size: it changed while it was read")
        cache.count_hit(artifact, answer.length)
        return web.Response(status=answer.status, headers=headers, body=body)
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away")
    response = web.StreamResponse(status=answer.status, headers=headers)
    response.content_length = answer.length
    if reader.file is None:
        chunks = reader.chunks(answer.start, answer.length)
        first = await anext(chunks)  # BlobGone before any header is sent
        await response.prepare(request)
        cache.count_hit(artifact, answer.length)
        try:
            await response.write(first)
            async for chunk in chunks:
                await response.write(chunk)
        except (OSError, BlobDamaged):
            transport.close()  # short of Content-Length: the client fails, loudly
            return response
        finally:
            await chunks.aclose()
        await response.write_eof()
        return response
    sock = transport.get_extra_info("socket")
    try:
        # Corked, the headers and the file leave in full-sized segments (like
        # nginx's tcp_nopush): a third of the kernel time per GiB on loopback.
        _cork(sock, True)
        await response.prepare(request)
        cache.count_hit(artifact, answer.length)
        try:
            problem = await _sendfile(transport, reader, answer.start, answer.length)
        except ConnectionError:
            return response  # the client left
        except OSError as err:  # EIO: a bad sector
            problem = f"unreadable: {err.strerror or err}"
    finally:
        _cork(sock, False)
    if problem is not None:  # damaged since it was opened
        _reset(transport)  # the client fails, loudly
        await cache.blob_damaged(artifact, problem)
        return response
    await response.write_eof()
    return response


async def _sendfile(
    transport: asyncio.Transport, reader: BlobReader, start: int, length: int
) -> str | None:
    """Send the bytes; what went wrong, if anything. A file cut in place while
    it is sent has the page at its new end zeroed under the bytes already
    queued (zero-copy): the check afterwards heals the store and resets the
    client, but one that already read every byte keeps them. Blobs are never
    changed in place by withcache itself (commit, quarantine and delete rename
    or unlink), so that takes another process editing a live blob."""
    assert reader.file is not None
    sent = await asyncio.get_running_loop().sendfile(transport, reader.file, start, length)
    if sent == length and reader.unchanged():
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
