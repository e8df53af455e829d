"""A real origin server for the tests: aiohttp on loopback, HTTP and HTTPS.

Each resource can misbehave on purpose (die mid-transfer, lie about its
length, ignore Range, demand credentials, redirect, trickle), or lie the way
broken origins do (publish a new version mid-transfer and still answer a
resume with 206, claim another total in Content-Range, send a body framed
only by closing the connection), and the origin counts the requests and body
bytes it sent, so tests can assert "one origin download".
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime

from aiohttp import web


@dataclass
class Resource:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    ranges: bool = True  # honour Range requests
    last_modified: float | None = 1_700_000_000.0
    etag: str | None = None
    die_after: int | None = None  # close the connection after this many body bytes...
    die_times: int = 1  # ...on this many requests, then behave
    chunked: bool = False  # no Content-Length
    rate: int | None = None  # bytes per second
    require_auth: str | None = None  # the Authorization value it demands
    redirect: str | None = None  # answer 302 to this location
    delay: float = 0.0  # seconds before answering
    conditional: bool = True  # answer If-None-Match / If-Modified-Since with 304
    # Lies and changes:
    if_range: bool = True  # honour If-Range (a liar answers 206 whatever the validator)
    range_total: int | None = None  # the total its 206 answers claim, if not the body's
    close_delimited: bool = False  # no length and no chunked framing: the body ends at close
    after_dying: dict[str, object] | None = None  # fields set once it has died die_times times


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    query: str = ""  # the query string as sent
    at: float = field(default_factory=time.monotonic)  # when it arrived


class Origin:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.resources: dict[str, Resource] = {}
        self.hits: list[Hit] = []
        self.body_bytes: Counter[str] = Counter()
        self._tls = tls
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0
        self.tls_port = 0

    # -- set-up

    def add(self, path: str, body: bytes = b"", **options: object) -> str:
        """(Re)define a resource; its counts start afresh (a test run on two
        backends adds the same paths twice)."""
        self.resources[path] = Resource(body=body, **options)  # type: ignore[arg-type]
        self.hits = [hit for hit in self.hits if hit.path != path]
        self.body_bytes.pop(path, None)
        return self.url(path)

    def remove(self, path: str) -> str:
        """Take a resource away (the origin answers 404 for it); its URL."""
        self.add(path)
        del self.resources[path]
        return self.url(path)

    def url(self, path: str, tls: bool = False) -> str:
        if tls:
            return f"https://localhost:{self.tls_port}{path}"
        return f"http://127.0.0.1:{self.port}{path}"

    def gets(self, path: str) -> int:
        """GET requests that reached `path`."""
        return sum(1 for h in self.hits if h.path == path and h.method == "GET")

    # -- serving

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        if self._tls:
            tls_site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._tls)
            await tls_site.start()
            self.tls_port = self._runner.addresses[1][1]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits.append(Hit(request.method, path, dict(request.headers), request.query_string))
        res = self.resources.get(path)
        if res is None:
            return web.Response(status=404, text="no such file at the origin\n")
        if res.delay:
            await asyncio.sleep(res.delay)
        if (
            res.require_auth is not None
            and request.headers.get("Authorization") != res.require_auth
        ):
            return web.Response(status=401, text="credentials required\n")
        if res.redirect:
            raise web.HTTPFound(res.redirect)
        headers = dict(res.headers)
        headers.setdefault("Content-Type", "application/octet-stream")
        if res.last_modified is not None:
            headers["Last-Modified"] = formatdate(res.last_modified, usegmt=True)
        if res.etag:
            headers["ETag"] = res.etag
        if res.conditional and res.status == 200 and _not_modified(request, res):
            return web.Response(status=304, headers=headers)
        start, body, status = 0, res.body, res.status
        if res.ranges:
            headers["Accept-Ranges"] = "bytes"
            wanted = request.headers.get("Range", "")
            valid = not res.if_range or request.headers.get("If-Range") in (
                None,
                res.etag,
                headers.get("Last-Modified"),
            )
            if wanted.startswith("bytes=") and wanted.endswith("-") and valid:
                start = int(wanted[6:-1])
                body = res.body[start:]
                status = 206
                total = len(res.body) if res.range_total is None else res.range_total
                headers["Content-Range"] = f"bytes {start}-{len(res.body) - 1}/{total}"
        response = web.StreamResponse(status=status, headers=headers)
        if res.close_delimited:
            # HTTP/1.0 style: aiohttp would otherwise chunk a body without a length.
            response._length_check = False
            response.force_close()
        elif not res.chunked:
            response.content_length = len(body)
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        await self._send(request, response, res, body)
        return response

    async def _send(
        self, request: web.Request, response: web.StreamResponse, res: Resource, body: bytes
    ) -> None:
        limit = len(body)
        dying = res.die_after is not None and res.die_times > 0
        if dying:
            res.die_times -= 1
            limit = min(limit, res.die_after or 0)
        step = 64 * 1024 if res.rate is None else max(1, res.rate // 20)
        for pos in range(0, limit, step):
            chunk = body[pos : min(pos + step, limit)]
            await response.write(chunk)
            self.body_bytes[request.path] += len(chunk)
            if res.rate:
                await asyncio.sleep(len(chunk) / res.rate)
        if dying:
            if res.die_times == 0 and res.after_dying:
                for name, value in res.after_dying.items():
                    setattr(res, name, value)  # the next request sees the new version
            # Flush what was written, then hang up before the body is complete.
            assert request.transport is not None
            request.transport.close()
            return
        await response.write_eof()


def _not_modified(request: web.Request, res: Resource) -> bool:
    """RFC 9110's order: If-None-Match if sent, else If-Modified-Since."""
    match = request.headers.get("If-None-Match")
    if match is not None:
        return res.etag is not None and res.etag in (t.strip() for t in match.split(","))
    since = request.headers.get("If-Modified-Since")
    if since is None or res.last_modified is None:
        return False
    try:
        return parsedate_to_datetime(since).timestamp() >= int(res.last_modified)
    except (TypeError, ValueError):
        return False
