"""The cache-host's aiohttp application: routes mapped onto the core's calls."""

from __future__ import annotations

from aiohttp import web

from withcache.server.cache import Cache
from withcache.server.web import api, read, ui


def make_app(cache: Cache) -> web.Application:
    app = web.Application()
    app[read.CACHE_KEY] = cache
    read.add_routes(app)
    ui.add_routes(app, cache)
    api.add_routes(app, cache)
    return app
