"""Read-through: the clients of a miss are served from its fill as it arrives.

Every client of a key joins the one fill and reads the partial blob as it
grows, so a miss costs one origin download however many ask. Each client
reads through its own FillReader (Cache.open_fill_reader), at its own pace,
from the file, never from the fill's buffers: a slow client can't slow the
fill or the others, and one that leaves doesn't stop it.

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

from aiohttp import web

from withcache.server.cache import Cache, FillReader, MissOutcome
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
    request: web.Request, cache: Cache, outcome: MissOutcome
) -> web.StreamResponse | None:
    """Answer from the miss's fill; None if it can't (caller answers the miss)."""
    probe = request.method == "HEAD"
    reader = await cache.open_fill_reader(outcome, probe, PROBE_WAIT if probe else GET_WAIT)
    if reader is None:
        return None
    with reader:
        if reader.total is None and probe:
            return None  # the shim would have no length to promise: let it go to the origin
        headers = dict(reader.headers)
        headers.setdefault("Content-Type", "application/octet-stream")
        # No ETag until the fill is whole; this tells the shims it's still a hit.
        headers[FILL_HEADER] = "in-progress"
        last_modified = conditional.http_date(headers.get("Last-Modified"))
        rep = conditional.Representation(_FILLING_ETAG, last_modified, reader.total, headers)
        answer = conditional.answer(request.method, request.headers, rep)
        if answer.status in (304, 412, 416):
            return web.Response(status=answer.status, headers=answer.headers)
        response = web.StreamResponse(status=answer.status, headers=answer.headers)
        if reader.total is not None:
            response.content_length = answer.length
        if probe:
            return response
        if reader.file is None:
            # On another host, or ended just now (stored: its partial file was
            # moved into the store; or failed). Never a 404 body that a curl
            # without -f would save.
            return await _when_stored(request, cache, reader)
        end = answer.start + answer.length if reader.total is not None else None
        try:
            await response.prepare(request)
            await copy_fill(request, response, reader, answer.start, end)
        except ConnectionError:
            pass  # the client left; the fill goes on
        return response


async def _when_stored(
    request: web.Request, cache: Cache, reader: FillReader
) -> web.StreamResponse:
    """Wait for a fill whose bytes can't be read here to be stored, then
    answer like a hit; if it fails, close the connection without an answer."""
    artifact = await reader.stored()
    response = await send_blob(request, cache, artifact, for_fill=True) if artifact else None
    if response is None:
        if request.transport is not None:
            request.transport.close()  # no answer at all: the client fails loudly
        return web.Response(status=502)
    return response


async def copy_fill(
    request: web.Request, response: web.StreamResponse, reader: FillReader, pos: int,
    end: int | None,
) -> None:  # fmt: skip
    """Send bytes [pos, end) of the fill as it writes them."""
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away")
    assert reader.file is not None
    while end is None or pos < end:
        if transport.is_closing():
            return  # the client left
        if reader.broken:
            transport.close()  # short of Content-Length (or the last chunk): the client fails
            return
        available = reader.available(end)
        if available > pos:
            if end is None:
                # Unknown length goes out chunked, which sendfile would bypass.
                data = reader.read(pos, CHUNK)
                await response.write(data)
                sent = len(data)
            else:
                sent = await asyncio.get_running_loop().sendfile(
                    transport, reader.file, pos, available - pos
                )
            pos += sent
            reader.sent(sent)
            continue
        if reader.finished:
            if end is not None:  # can't happen: a finished fill has written every byte
                transport.close()
            return
        await reader.more()
