"""The open read path: every spelling of an artifact's name, and `/healthz`.

An artifact is named by its origin URL, spelt one of four ways; each only
reads the URL out of the request, and all of them are answered by `_serve`
(the same cache key, policy, credential scope, hit, miss and fill):

    /b/<token>/<basename>      the shims' and the client library's form
    /blob?url=<origin URL>
    /<origin URL>              prefix form: HOMEBREW_ARTIFACT_DOMAIN, ADD, get_url
    /<scheme>/<host>/<path>    bitbake PREMIRRORS, Bazel rewrites, mise

or by its content, `/sha256/<hex>[/<name>]` (Nix hashed mirrors, pyenv) and
Spack's `/_source-cache/archive/<xx>/<hex>[.<ext>]`: a digest names no origin,
so it is a hit or a 404, never a fill. Each form has a first path segment of
its own (`b`, `blob`, one ending in `:`, `http`, `https`, `sha256`,
`_source-cache`) that no UI, API or static route uses, so none can shadow one.

Anyone may read; nothing here changes state except through the core's miss
and hit accounting, and nothing here waits for a disk write. A hit is sent by
web.hit (sendfile, stream from the store, or redirect); a miss is served from
its fill (web.readthrough); bad input gets a 4xx with a one-line reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from withcache import keys
from withcache.server import log
from withcache.server.cache import Cache
from withcache.server.records import Artifact
from withcache.server.web import readthrough
from withcache.server.web.hit import send_blob

CACHE_KEY = web.AppKey("cache", Cache)
_BAD_NAME_PARTS = ("/", "\\", "%2f", "%5c", "%00", "\x00")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bad_request(request: web.Request, reason: str, status: int = 400) -> web.Response:
    log.info("request.refused", status=status, reason=reason, peer=request.remote)
    return web.Response(status=status, text=f"{reason}\n")


# -- reading the name out of the request: each raises BadURL saying what is wrong


def _check_name(name: str) -> None:
    """A cosmetic file name may not smuggle in a path."""
    lowered = name.lower()
    if name in (".", "..") or any(part in lowered for part in _BAD_NAME_PARTS):
        raise keys.BadURL("bad file name in path")


def _token_url(request: web.Request) -> str:
    _check_name(request.match_info.get("name", ""))
    try:
        return keys.decode_token(request.match_info["token"])
    except keys.BadURL as err:
        raise type(err)(f"bad token: {err}") from None


def _query_url(request: web.Request) -> str:
    urls = request.query.getall("url", [])
    if len(urls) != 1:
        raise keys.BadURL("give exactly one url= parameter")
    return urls[0]


def _prefix_url(request: web.Request) -> str:
    return keys.prefix_origin(request.raw_path)


def _host_path_url(request: web.Request) -> str:
    scheme = request.match_info["scheme"]
    # The raw target: the path and query exactly as the tool sent them.
    return keys.host_path_origin(scheme, request.raw_path[len(scheme) + 2 :])


def _digest(request: web.Request) -> str:
    _check_name(request.match_info.get("name", ""))
    return keys.parse_digest(request.match_info["hex"])


def _source_cache_digest(request: web.Request) -> str:
    """Spack's mirror layout: `<first two hex digits>/<sha256>[.<extension>]`."""
    sha256 = keys.parse_digest(request.match_info["file"].split(".", 1)[0])
    if request.match_info["fan"].lower() != sha256[:2]:
        raise keys.BadURL("the folder is not the digest's first two hex digits")
    return sha256


def _status_for(err: keys.BadURL) -> int:
    return 414 if isinstance(err, keys.URLTooLong) else 400


# -- answering


def by_url(read_url: Callable[[web.Request], str]) -> Handler:
    """A handler for one spelling of an origin URL: read it, then `_serve` it."""

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            url = read_url(request)
        except keys.BadURL as err:
            return bad_request(request, str(err), _status_for(err))
        return await _serve(request, url)

    return handler


def by_digest(read_digest: Callable[[web.Request], str]) -> Handler:
    """A handler for one spelling of a SHA-256: a hit, or a 404 and no fill."""

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            sha256 = read_digest(request)
        except keys.BadURL as err:
            return bad_request(request, f"bad digest: {err}")
        cache = request.app[CACHE_KEY]
        authorization = request.headers.get("Authorization")
        if authorization is not None and not is_utf8(authorization):
            return _not_utf8(request)
        found = await cache.lookup_digest(sha256, authorization)
        response = await _send(request, cache, found)
        if response is not None:
            return response
        return web.Response(
            status=404,
            text="not cached: no artifact has this SHA-256 (a digest is never fetched)\n",
        )

    return handler


async def _serve(request: web.Request, url: str) -> web.StreamResponse:
    cache = request.app[CACHE_KEY]
    try:
        key = cache.key(url)
    except keys.BadURL as err:
        return bad_request(request, f"bad url: {err}", _status_for(err))
    authorization = request.headers.get("Authorization")
    if authorization is not None and not is_utf8(authorization):
        return _not_utf8(request)
    found = await cache.lookup(key, authorization)
    response = await _send(request, cache, found)
    if response is not None:
        return response
    # A row whose blob is gone is fetched again; else a fill stored since the
    # lookup (on any host) is served, not fetched a second time.
    outcome = await cache.miss(
        url, key, authorization, waiting=request.method == "GET", refill=found is not None
    )
    response = await _send(request, cache, outcome.stored)
    if response is not None:
        return response
    streamed = await readthrough.serve_from_fill(request, cache, outcome)
    if streamed is not None:
        # A probe answered from the fill is counted once, by the GET that follows it.
        if request.method == "GET":
            cache.count_miss()
        return streamed
    cache.count_miss()  # the client goes to the origin (or fails)
    error = outcome.fill.error if outcome.fill else None
    status = getattr(error, "client_status", None)
    if status is not None:  # the fill found the request can't be met as asked
        return bad_request(request, f"not fetched: {error}", status)
    reason = f"fill failed: {error}" if error is not None else outcome.reason
    return web.Response(status=404, text=f"not cached: {reason}\n")


async def _send(
    request: web.Request, cache: Cache, artifact: Artifact | None
) -> web.StreamResponse | None:
    """The hit's answer; None if not cached (or its blob vanished meanwhile)."""
    return await send_blob(request, cache, artifact) if artifact is not None else None


def _not_utf8(request: web.Request) -> web.Response:
    # It would be forwarded to the origin (or hashed into a scope) as UTF-8.
    return bad_request(request, "the Authorization header is not UTF-8 text")


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


# Route -> handler. A variable's pattern never lets a route reach past its own
# first segment: `{target}` must end its first segment with a colon (`https:`),
# which no other route's first segment has.
ROUTES: list[tuple[str, Handler]] = [
    ("/b/{token}/{name}", by_url(_token_url)),
    ("/b/{token}/", by_url(_token_url)),
    ("/blob", by_url(_query_url)),
    (r"/{target:[A-Za-z][A-Za-z0-9+.\-]*:.*}", by_url(_prefix_url)),
    ("/{scheme:https?}/{rest:.*}", by_url(_host_path_url)),
    ("/sha256/{hex}", by_digest(_digest)),
    ("/sha256/{hex}/{name}", by_digest(_digest)),
    ("/_source-cache/archive/{fan}/{file}", by_digest(_source_cache_digest)),
]


def add_routes(app: web.Application) -> None:
    for path, handler in ROUTES:
        for method in ("GET", "HEAD"):
            app.router.add_route(method, path, handler)
    app.router.add_get("/healthz", healthz)
