"""Turning the UI's data into HTML: the Jinja2 environment, its filters, the
vendored static files, and the headers every UI response carries.

Templates get display data only (display URLs, sizes, times); nothing here
reads the stores, and no template ever sees a password, cookie or full URL.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from withcache.server.settings import format_duration, format_size

SERVER = Path(__file__).resolve().parent.parent
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript"}

# The UI loads nothing from elsewhere and may not be framed (clickjacking).
# Pico's icons are inline SVG data URIs, hence `img-src data:`.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # pages carry CSRF tokens and live state
}


def when(timestamp: float | None) -> str:
    if not timestamp:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def duration(seconds: float | None) -> str:
    return "?" if seconds is None else format_duration(seconds)


def size(n: int | float | None) -> str:
    return "?" if n is None else format_size(n)


# Event detail fields that hold a byte count or a number of seconds (events.py).
SIZE_FIELDS = frozenset({"size", "resume_from"})
SECONDS_FIELDS = frozenset({"seconds"})


def detail(value: Any, name: str) -> str:
    """An event detail's value as a person reads it: sizes and durations in
    units (the exact number stays in the page as the title)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if name in SIZE_FIELDS:
            return format_size(value)
        if name in SECONDS_FIELDS:
            return format_duration(value)
    return str(value)


def percent(ratio: float | None) -> str:
    """A ratio as a whole percentage (one decimal under 10 %); a dash for none."""
    if ratio is None:
        return "\N{EN DASH}"
    return f"{ratio * 100:.1f} %" if 0 < ratio < 0.1 else f"{ratio * 100:.0f} %"


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(SERVER / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, duration=duration, size=size, detail=detail, percent=percent)
    return env


class StaticFiles:
    """The vendored Pico.css, htmx and our stylesheet, held in memory.

    URLs carry a hash of the files, so browsers may cache them for good."""

    def __init__(self, folder: Path = SERVER / "static") -> None:
        self.files = {
            path.name: path.read_bytes()
            for path in sorted(folder.iterdir())
            if path.suffix in STATIC_TYPES
        }
        digest = hashlib.sha256()
        for name, body in self.files.items():
            digest.update(name.encode() + b"\0" + body)
        self.version = digest.hexdigest()[:12]

    async def serve(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = self.files.get(name)
        if body is None:
            raise web.HTTPNotFound(text="no such static file\n")
        return web.Response(
            body=body,
            content_type=STATIC_TYPES[Path(name).suffix],
            headers={"Cache-Control": "public, max-age=31536000, immutable"},
        )


def html(text: str, status: int = 200, started: float | None = None) -> web.Response:
    headers = dict(SECURITY_HEADERS)
    if started is not None:
        # How long the server took, for the benchmark and the browser's dev tools.
        elapsed = (time.perf_counter() - started) * 1000
        headers["Server-Timing"] = f"app;dur={elapsed:.1f}"
    return web.Response(text=text, status=status, content_type="text/html", headers=headers)


def render(env: jinja2.Environment, name: str, context: dict[str, Any]) -> str:
    return env.get_template(name).render(context)
