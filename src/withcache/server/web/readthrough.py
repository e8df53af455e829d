"""Read-through: the clients of a miss are served from its fill as it arrives.

Every client of a key joins the one fill and reads the partial blob as it
grows, so a miss costs one origin download however many ask. Each client
reads at its own pace from the file, never from the fill's buffers: a slow
client can't slow the fill or the others, and one that leaves doesn't stop it.

Never a wrong or silently short byte: a client gets only bytes already
written (and, of a fill checked against a digest, the last one only once
they matched); if the fill fails, or starts over with bytes that may differ, every
client that got part of the old ones has its connection closed before the
announced length, so curl and wget exit non-zero. The one exception is a
body the origin framed only by closing the connection: it is not stored (its
end can't be checked), but its clients get all of it, as from the origin.

A fill running on another cache-host (several hosts sharing one store) has
its bytes there, not here. A probe is answered as for a local fill (200 with
the length, once the filling host has saved it); a GET waits until the blob
is stored and is then answered like a hit (streamed from the store, or
redirected). Waiting survives the filling host dying: another host takes the
fill over. If the fill fails, the connection is closed with no answer, so the
client fails rather than save an error page as the artifact.
"""

from __future__ import annotations

import asyncio
import os
from typing import BinaryIO

from aiohttp import web

from withcache.server.cache import Cache
from withcache.server.fills import Fill
from withcache.server.web import conditional
from withcache.server.web.hit import send_blob

# A probe (HEAD) waits this long for the fill to reach the origin: well inside
# the shims' probe budget. A GET waits longer, since its client asked the
# cache for the bytes. A client's fill starts at once, beside the --workers,
# unless CLIENT_FILLS are running already; then it waits for a worker, and if
# none is free by then the client gets the miss's 404.
PROBE_WAIT = 1.0
GET_WAIT = 30.0
# No SHA-256 yet, so no strong validator: this tag never matches a client's.
_FILLING_ETAG = '"withcache-fill-in-progress"'
CHUNK = 1 << 20
FILL_HEADER = "Withcache-Fill"


async def serve_from_fill(
    request: web.Request, cache: Cache, fill: Fill
) -> web.StreamResponse | None:
    """Answer from a running fill; None if it can't (caller answers the miss)."""
    await cache.fills.start_for_client(fill, probe=request.method == "HEAD")
    wait = PROBE_WAIT if request.method == "HEAD" else GET_WAIT
    if not await fill.wait_started(wait) and not fill.elsewhere:
        return None
    headers = dict(fill.headers or {})
    headers.setdefault("Content-Type", "application/octet-stream")
    # No ETag until the fill is whole; this tells the shims it's still a hit.
    headers[FILL_HEADER] = "in-progress"
    total, generation = fill.total, fill.generation
    if total is None:
        if request.method == "HEAD":
            return None  # the shim would have no length to promise: let it go to the origin
        answer = conditional.Answer(200)
    else:
        headers["Accept-Ranges"] = "bytes"
        rep = conditional.Representation(
            _FILLING_ETAG, conditional.http_date(headers.get("Last-Modified")), total
        )
        answer = conditional.evaluate(request.method, request.headers, rep)
    if answer.status in (304, 412, 416):
        if answer.status == 416:
            headers["Content-Range"] = f"bytes */{total}"
        return web.Response(status=answer.status, headers=headers)
    if answer.status == 206:
        headers["Content-Range"] = (
            f"bytes {answer.start}-{answer.start + answer.length - 1}/{total}"
        )
    response = web.StreamResponse(status=answer.status, headers=headers)
    if total is not None:
        response.content_length = answer.length
    if request.method == "HEAD":
        return response
    if fill.elsewhere:
        return await _when_stored(request, cache, fill)
    end = answer.start + answer.length if total is not None else None
    assert fill.path is not None
    try:
        partial = open(fill.path, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        # The fill ended just now: stored (the partial file was moved into the
        # store), or failed. Never a 404 body that a curl without -f would save.
        return await _when_stored(request, cache, fill)
    fill.clients += 1
    try:
        await response.prepare(request)
        await _copy(request, cache, response, fill, partial, answer.start, end, generation)
    except ConnectionError:
        pass  # the client left; the fill goes on
    finally:
        fill.clients -= 1
        partial.close()
    return response


async def _when_stored(request: web.Request, cache: Cache, fill: Fill) -> web.StreamResponse:
    """Wait for a fill whose bytes can't be read here to be stored, then
    answer like a hit; if it fails, close the connection without an answer."""
    fill.clients += 1
    try:
        artifact = await fill.result()
    except Exception:
        artifact = None
    finally:
        fill.clients -= 1
    response = await send_blob(request, cache, artifact) if artifact else None
    if response is None:
        if request.transport is not None:
            request.transport.close()  # no answer at all: the client fails loudly
        return web.Response(status=502)
    return response


async def _copy(
    request: web.Request,
    cache: Cache,
    response: web.StreamResponse,
    fill: Fill,
    partial: BinaryIO,
    pos: int,
    end: int | None,
    generation: int,
) -> None:
    """Send bytes [pos, end) of the partial blob as the fill writes them."""
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away")
    while end is None or pos < end:
        if transport.is_closing():
            return  # the client left
        error = fill.error
        if fill.generation != generation or (error is not None and not _delivered(error)):
            transport.close()  # short of Content-Length (or the last chunk): the client fails
            return
        available = fill.bytes_done if end is None else min(fill.bytes_done, end)
        if end is not None and fill.checked_at_end and not fill.finished:
            available = min(available, end - 1)  # the last byte waits for the digest check
        if available > pos:
            if end is None:
                # Unknown length goes out chunked, which sendfile would bypass.
                data = os.pread(partial.fileno(), min(available - pos, CHUNK), pos)
                await response.write(data)
                sent = len(data)
            else:
                sent = await asyncio.get_running_loop().sendfile(
                    transport, partial, pos, available - pos
                )
            pos += sent
            cache.tally.streamed_bytes += sent
            continue
        if fill.finished:
            if end is not None:  # can't happen: a finished fill has written every byte
                transport.close()
            return
        await fill.progressed()


def _delivered(error: BaseException) -> bool:
    """The fill received the whole body as the origin sent it, but won't store it."""
    return getattr(error, "delivered", False)
