"""The cache-host's aiohttp application: routes mapped onto the core's calls."""

from __future__ import annotations

from aiohttp import web

from withcache.server.cache import Cache
from withcache.server.web import api, peer, read, ui


def make_app(cache: Cache) -> web.Application:
    app = web.Application()
    app[read.CACHE_KEY] = cache
    read.add_routes(app)
    ui.add_routes(app, cache)
    api.add_routes(app, cache)
    peer.add_routes(app)

    async def end_fills(app: web.Application) -> None:
        # Before the server waits for open requests to end: a client streaming
        # a fill is closed short now (its fill resumes at the next start), not
        # after the shutdown timeout.
        await cache.stop_fills()

    app.on_shutdown.append(end_fills)
    return app
