"""Routing: the read path's many spellings never shadow a UI, API or static
route, and each spelling reaches the read path (resolved by the app's own
router, for every route it has)."""

from __future__ import annotations

import re

from aiohttp.test_utils import make_mocked_request

from withcache.server.web import api, make_app, read

SAMPLES = {"id": "1", "verb": "retry", "name": "x", "token": "aHR0cHM6Ly9oL3g"}
SHA = "ab" * 32
READ_PATHS = [
    "/b/aHR0cHM6Ly9oL3g/x",
    "/b/aHR0cHM6Ly9oL3g/",
    "/blob?url=https://h/x",
    "/https://h/x.run",
    "/https:/h/x.run",
    "/http:/h/api/v1/status",
    "/HTTPS://h/static/pico.min.css",
    "/https%3A%2F%2Fh%2Fx",
    "/ftp://h/x",
    "/https/h/x",
    "/http/h/misses",
    "/https/api/v1/status",
    f"/sha256/{SHA}",
    f"/sha256/{SHA}/x.run",
    f"/_source-cache/archive/ab/{SHA}.tar.gz",
]


def _sample(path: str) -> str:
    return re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: SAMPLES.get(m[1], "x"), path)


async def _handler(app, method: str, path: str):
    match = await app.router.resolve(make_mocked_request(method, path, app=app))
    return match.http_exception, match.handler


async def test_no_ui_api_or_static_path_reaches_the_read_path(core):
    app = make_app(core)
    readers = {handler for _, handler in read.ROUTES}
    paths = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if path and route.handler not in readers:
            paths.append((route.method, _sample(path)))
    paths += [(r.method, api.PREFIX + _sample(r.path)) for r in api.ROUTES]
    assert len(paths) > 30 and ("GET", "/static/x") in paths
    for method, path in paths:
        error, handler = await _handler(app, method, path)
        assert error is None, (method, path, error)
        assert handler not in readers, (method, path)


async def test_every_spelling_reaches_the_read_path(core):
    app = make_app(core)
    readers = {handler for _, handler in read.ROUTES}
    for path in READ_PATHS:
        for method in ("GET", "HEAD"):
            error, handler = await _handler(app, method, path)
            assert error is None and handler in readers, (method, path)
