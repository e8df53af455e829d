"""Request input shared by the UI and the API, checked in one place.

Bad input raises HTTPBadRequest with a one-line reason: the UI sends it as
text, the API wraps it in its JSON error body. Never a 5xx for bad input.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from withcache.server.cache import ActionError, BadInput, NotFound
from withcache.server.store import ACTIVE_STATES, FillState

MAX_PAGE = 1_000_000  # keeps offsets inside SQLite's integers
MAX_TEXT = 8192  # longest filter or URL accepted from a form or query
ARTIFACT_SORTS = ("key", "size", "hits", "misses", "sha256", "fetched_at", "last_hit")
ASCENDING_FIRST = {"key", "sha256"}  # columns whose natural first order is A-Z
# The API pages by offset and limit; ids are SQLite's 64-bit integers.
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_OFFSET = 1_000_000_000
MAX_ID = 2**63 - 1
# Longest search text or URL filter in an API query: percent-encoded, even 1000
# four-byte characters stay inside the server's 16 KiB request line.
MAX_SEARCH = 1000
FILL_STATES = {"active": ACTIVE_STATES, **{state.value: (state,) for state in FillState}}


def number(text: str, what: str, low: int = 1, high: int = MAX_PAGE) -> int:
    if not (text.isascii() and text.isdecimal()) or not low <= int(text) <= high:
        raise web.HTTPBadRequest(text=f"bad {what}: give a whole number from {low} to {high}\n")
    return int(text)


def text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise web.HTTPBadRequest(text=f"bad {what}: expected text\n")
    if len(value) > MAX_TEXT:
        raise web.HTTPBadRequest(text=f"bad {what}: longer than {MAX_TEXT} characters\n")
    return value.strip()


def query_text(request: web.Request, name: str) -> str:
    return text(request.query.get(name, ""), name)


def choice(request: web.Request, name: str, choices: Any, default: str) -> str:
    """The parameter's value, one of `choices`; `default` only when it is absent."""
    value = request.query.get(name)
    if value is None:
        return default
    if value not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise web.HTTPBadRequest(text=f"bad {name}: choose one of {shown}\n")
    return value


def refusal_status(err: ActionError) -> int:
    """The HTTP status of an operator mistake the core refused, for every front end."""
    if isinstance(err, BadInput):
        return 400
    if isinstance(err, NotFound):
        return 404
    return 409
