"""The route other cache-hosts of a shared store read this host's fills in
progress from (the core's fill/peers.py says how): `GET /_peer/fills/<id>`,
signed, answered with the fill's bytes from an offset as they arrive, cut
short if the fill fails or starts over. A request that is forged, expired or
names no fill running here gets a 4xx and nothing of any fill."""

from __future__ import annotations

from aiohttp import web

from withcache.server.cache import PeerRefused
from withcache.server.web.read import CACHE_KEY, bad_request
from withcache.server.web.readthrough import copy_fill

PATH = r"/_peer/fills/{id:\d{1,18}}"


async def fill_stream(request: web.Request) -> web.StreamResponse:
    cache = request.app[CACHE_KEY]
    fill_id = int(request.match_info["id"])
    try:
        stream = await cache.open_peer_stream(fill_id, request.headers, request.query)
    except PeerRefused as err:
        return bad_request(request, err.reason, err.status)
    with stream.reader as reader:
        if reader.file is None:  # ended just now: the asking host serves it as stored
            return bad_request(request, "the fill ended", 404)
        response = web.StreamResponse(headers=stream.headers())
        end = reader.total
        if end is not None:
            response.content_length = end - stream.offset
        try:
            await response.prepare(request)
            await copy_fill(request, response, reader, stream.offset, end)
        except ConnectionError:
            pass  # the other host stopped reading
        return response


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, fill_stream, allow_head=False)
