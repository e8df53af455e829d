"""The open read path: `/b/<token>/<basename>`, `/blob?url=`, `/healthz`.

Anyone may read; nothing here changes state except through the core's miss
and hit accounting, and nothing here waits for a disk write. A hit is sent by
web.hit (sendfile, stream from the store, or redirect); a miss is served from
its fill (web.readthrough); bad input gets a 4xx with a one-line reason.
"""

from __future__ import annotations

from aiohttp import web

from withcache import keys
from withcache.server import log
from withcache.server.cache import Cache
from withcache.server.web import readthrough
from withcache.server.web.hit import send_blob

CACHE_KEY = web.AppKey("cache", Cache)
_BAD_NAME_PARTS = ("/", "\\", "%2f", "%5c", "%00", "\x00")


def bad_request(request: web.Request, reason: str, status: int = 400) -> web.Response:
    log.info("request.refused", status=status, reason=reason, peer=request.remote)
    return web.Response(status=status, text=f"{reason}\n")


async def serve_token(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("name", "")
    lowered = name.lower()
    if name in (".", "..") or any(part in lowered for part in _BAD_NAME_PARTS):
        return bad_request(request, "bad file name in path")
    try:
        url = keys.decode_token(request.match_info["token"])
    except keys.BadURL as err:
        return bad_request(request, f"bad token: {err}", _status_for(err))
    return await _serve(request, url, "bad token")


async def serve_query(request: web.Request) -> web.StreamResponse:
    urls = request.query.getall("url", [])
    if len(urls) != 1:
        return bad_request(request, "give exactly one url= parameter")
    return await _serve(request, urls[0], "bad url")


def _status_for(err: keys.BadURL) -> int:
    return 414 if "longer than" in str(err) else 400


async def _serve(request: web.Request, url: str, what: str) -> web.StreamResponse:
    cache = request.app[CACHE_KEY]
    try:
        key = cache.key(url)
    except keys.BadURL as err:
        return bad_request(request, f"{what}: {err}", _status_for(err))
    authorization = request.headers.get("Authorization")
    if authorization is not None and not is_utf8(authorization):
        # It would be forwarded to the origin, which the HTTP client can't do.
        return bad_request(request, "the Authorization header is not UTF-8 text")
    artifact = await cache.lookup(key, authorization)
    if artifact is not None:
        response = await send_blob(request, cache, artifact)
        if response is not None:
            return response
    outcome = await cache.miss(url, key, authorization, waiting=request.method == "GET")
    if outcome.fill is not None and cache.settings.stream_fills:
        streamed = await readthrough.serve_from_fill(request, cache, outcome.fill)
        if streamed is not None:
            return streamed
    return web.Response(status=404, text=f"not cached: {outcome.reason}\n")


def is_utf8(text: str) -> bool:
    """Whether `text` can be sent or stored as UTF-8: aiohttp hands on header
    bytes that aren't UTF-8 as lone surrogates, JSON may escape one."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def healthz(request: web.Request) -> web.Response:
    cache = request.app[CACHE_KEY]
    return web.json_response(await cache.health())


def add_routes(app: web.Application) -> None:
    for method in ("GET", "HEAD"):
        app.router.add_route(method, "/b/{token}/{name}", serve_token)
        app.router.add_route(method, "/b/{token}/", serve_token)
        app.router.add_route(method, "/blob", serve_query)
    app.router.add_get("/healthz", healthz)
