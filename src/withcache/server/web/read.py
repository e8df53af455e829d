"""The open read path: `/b/<token>/<basename>`, `/blob?url=`, `/healthz`.

Anyone may read; nothing here changes state except through the core's miss
and hit accounting, and nothing here waits for a disk write. A hit is sent
with zero-copy sendfile; bad input gets a 4xx with a one-line reason.
"""

from __future__ import annotations

import contextlib
import os
import socket

from aiohttp import web

from withcache import keys
from withcache.server import log
from withcache.server.cache import Cache
from withcache.server.store import Artifact
from withcache.server.web import conditional, readthrough

CACHE_KEY = web.AppKey("cache", Cache)
SMALL_BODY = 256 * 1024
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
    artifact = await cache.lookup(key, authorization)
    if artifact is not None:
        response = await send_blob(request, cache, artifact)
        if response is not None:
            return response
    outcome = await cache.miss(url, key, authorization)
    if outcome.fill is not None and cache.settings.stream_fills:
        streamed = await readthrough.serve_from_fill(request, outcome.fill)
        if streamed is not None:
            return streamed
    return web.Response(status=404, text=f"not cached: {outcome.reason}\n")


def _headers(artifact: Artifact) -> dict[str, str]:
    headers = dict(artifact.headers)
    headers.setdefault("Content-Type", "application/octet-stream")
    headers["ETag"] = f'"{artifact.sha256}"'
    headers["Accept-Ranges"] = "bytes"
    return headers


async def send_blob(
    request: web.Request, cache: Cache, artifact: Artifact
) -> web.StreamResponse | None:
    """Answer from a stored blob; None if the blob vanished (deleted meanwhile)."""
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
    if answer.length <= SMALL_BODY:
        try:
            with open(cache.blob_path(artifact), "rb") as small:
                body = os.pread(small.fileno(), answer.length, answer.start)
        except FileNotFoundError:
            return None
        cache.count_hit(artifact, answer.length)
        return web.Response(status=answer.status, headers=headers, body=body)
    try:
        blob = open(cache.blob_path(artifact), "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        return None
    transport = request.transport
    if transport is None:
        blob.close()
        raise ConnectionResetError("client went away")
    sock = transport.get_extra_info("socket")
    try:
        # Corked, the headers and the file leave in full-sized segments (like
        # nginx's tcp_nopush): a third of the kernel time per GiB on loopback.
        _cork(sock, True)
        response = web.StreamResponse(status=answer.status, headers=headers)
        response.content_length = answer.length
        await response.prepare(request)
        cache.count_hit(artifact, answer.length)
        await request.loop.sendfile(transport, blob, answer.start, answer.length)
        await response.write_eof()
        return response
    finally:
        _cork(sock, False)
        blob.close()


def _cork(sock: socket.socket | None, on: bool) -> None:
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, on)


async def healthz(request: web.Request) -> web.Response:
    cache = request.app[CACHE_KEY]
    return web.json_response(await cache.health())


def add_routes(app: web.Application) -> None:
    for method in ("GET", "HEAD"):
        app.router.add_route(method, "/b/{token}/{name}", serve_token)
        app.router.add_route(method, "/b/{token}/", serve_token)
        app.router.add_route(method, "/blob", serve_query)
    app.router.add_get("/healthz", healthz)
