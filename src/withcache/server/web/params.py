"""Request input shared by the UI and the API, checked in one place, and
what an operator's refused action answers on either.

Bad input raises HTTPBadRequest with a one-line reason: the UI sends it as
text, the API wraps it in its JSON error body. Both read their search text,
fill-state filters and artifact sort order here, with the same defaults and
limits, and map the core's refusals (ActionError) to one status each. Never a 5xx for bad input:
text that isn't valid Unicode (a lone surrogate from a JSON escape), a body
that breaks off, arrives too slowly or names an unknown charset, and a
redirect target that a browser would read as another site are all refused
here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import quote

from aiohttp import web
from multidict import MultiDictProxy

from withcache.server.cache import ActionError, BadInput, NotFound
from withcache.server.records import ACTIVE_STATES, FillState
from withcache.server.web.read import CACHE_KEY, is_utf8

T = TypeVar("T")

MAX_PAGE = 1_000_000  # keeps offsets inside SQLite's integers
MAX_TEXT = 8192  # longest text (a URL) accepted from a form or a JSON body
ARTIFACT_SORTS = ("key", "size", "hits", "misses", "sha256", "fetched_at", "last_hit")
ASCENDING_FIRST = {"key", "sha256"}  # columns whose natural first order is A-Z
# The API pages by offset and limit; ids are SQLite's 64-bit integers.
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_OFFSET = 1_000_000_000
MAX_ID = 2**63 - 1
# Longest search text or URL filter in a query string: percent-encoded, even
# 1000 four-byte characters stay inside the server's 16 KiB request line.
MAX_SEARCH = 1000
# The fill listings' filters (absent or empty: every fill).
FILL_STATES = {"active": ACTIVE_STATES, **{state.value: (state,) for state in FillState}}
# What browsers do to a URL before they read it (WHATWG URL standard): strip
# C0 controls and spaces at both ends, drop tabs and newlines anywhere, and
# (for http and https) read a backslash as a slash.
_C0_AND_SPACE = "".join(map(chr, range(0x21)))
_TABS_AND_NEWLINES = dict.fromkeys(map(ord, "\t\n\r"))
_PATH_KEPT = "/?&=%#;:@!$'()*+,~-._"  # left as they are in a redirect; the rest is %-encoded


def number(text: str, what: str, low: int = 1, high: int = MAX_PAGE) -> int:
    if not (text.isascii() and text.isdecimal()) or not low <= int(text) <= high:
        raise web.HTTPBadRequest(text=f"bad {what}: give a whole number from {low} to {high}\n")
    return int(text)


def text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise web.HTTPBadRequest(text=f"bad {what}: expected text\n")
    if len(value) > MAX_TEXT:
        raise web.HTTPBadRequest(text=f"bad {what}: longer than {MAX_TEXT} characters\n")
    check_unicode(value, what)
    return value.strip()


def check_unicode(value: str, what: str) -> str:
    """`value`, if it can be stored and sent as UTF-8 (no lone surrogates)."""
    if not is_utf8(value):
        raise web.HTTPBadRequest(text=f"bad {what}: not valid Unicode text\n")
    return value


def search(request: web.Request, name: str = "q") -> str:
    """A query parameter that filters a listing (search text, a URL)."""
    value = request.query.get(name, "")
    if len(value) > MAX_SEARCH:
        raise web.HTTPBadRequest(text=f"bad {name}: longer than {MAX_SEARCH} characters\n")
    return text(value, name)


def fill_states(request: web.Request) -> tuple[str, tuple[FillState, ...]]:
    """The `state` filter of a fill listing: its name and the states it shows."""
    name = request.query.get("state") or ""
    if name and name not in FILL_STATES:
        shown = ", ".join(repr(state) for state in FILL_STATES)
        raise web.HTTPBadRequest(text=f"bad state: choose one of {shown}\n")
    return name, tuple(FILL_STATES.get(name, ()))


def artifact_order(request: web.Request) -> tuple[str, str]:
    """The artifact listing's `sort` column and `order` ("asc" or "desc"):
    newest first, unless the column reads best from A."""
    sort = choice(request, "sort", ARTIFACT_SORTS, "fetched_at")
    default = "asc" if sort in ASCENDING_FIRST else "desc"
    return sort, choice(request, "order", ("asc", "desc"), default)


def choice(request: web.Request, name: str, choices: Any, default: str) -> str:
    """The parameter's value, one of `choices`; `default` only when it is absent."""
    value = request.query.get(name)
    if value is None:
        return default
    if value not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise web.HTTPBadRequest(text=f"bad {name}: choose one of {shown}\n")
    return value


def local_path(target: Any, default: str) -> str:
    """`target` if a browser would read it as a path on this site, else
    `default`: "/\t/evil.example" and "/\\evil.example" leave the site."""
    if not isinstance(target, str):
        return default
    cleaned = target.strip(_C0_AND_SPACE).translate(_TABS_AND_NEWLINES).replace("\\", "/")
    if not cleaned.startswith("/") or cleaned.startswith("//"):
        return default
    return quote(cleaned, safe=_PATH_KEPT, errors="surrogatepass")


async def read_body(request: web.Request, limit: int = 0) -> bytes:
    """The request's body, in full: at most `limit` bytes if given (else the
    server's own limit), or a 413."""
    return await _receive(request, _bounded(request, limit) if limit else request.read())


async def _bounded(request: web.Request, limit: int) -> bytes:
    if (request.content_length or 0) > limit:
        raise web.HTTPRequestEntityTooLarge(limit, request.content_length or 0)
    data = bytearray()
    async for chunk in request.content.iter_any():
        data += chunk
        if len(data) > limit:
            raise web.HTTPRequestEntityTooLarge(limit, len(data))
    return bytes(data)


async def read_form(request: web.Request) -> MultiDictProxy[Any]:
    """The request's form fields (urlencoded or multipart)."""
    try:
        return await _receive(request, request.post())
    except (ValueError, LookupError):  # malformed, not UTF-8, or an unknown charset
        raise web.HTTPBadRequest(text="unreadable form body\n") from None


async def _receive(request: web.Request, reading: Awaitable[T]) -> T:
    """Wait for the body: a 408 if it comes slower than headers may
    (--header-timeout), a 400 if it breaks off."""
    seconds = request.config_dict[CACHE_KEY].settings.header_timeout
    try:
        async with asyncio.timeout(seconds):
            return await reading
    except TimeoutError:
        raise web.HTTPRequestTimeout(text="the request body came too slowly\n") from None
    except (ConnectionError, web.RequestPayloadError):
        raise web.HTTPBadRequest(text="the request body broke off\n") from None


def refusal_status(err: ActionError) -> int:
    """The HTTP status of an operator mistake the core refused, for every front end."""
    if isinstance(err, BadInput):
        return 400
    if isinstance(err, NotFound):
        return 404
    return 409
