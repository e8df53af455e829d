"""Conditional and range requests on a stored blob (RFC 9110, sections 13-14).

A pure function of the request headers and the blob's validators, so that the
rules (which header wins, when Range is ignored, what is unsatisfiable) are
tested on their own. Multi-range requests are answered with the whole body,
which the RFC allows.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

_ETAG_RE = re.compile(r'\s*(W/)?("[^"]*")\s*(?:,|$)')
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass(frozen=True)
class Representation:
    etag: str  # a strong entity tag, quoted
    last_modified: float | None  # seconds since the epoch, whole seconds
    size: int


@dataclass(frozen=True)
class Answer:
    status: int  # 200, 206, 304, 412 or 416
    start: int = 0
    length: int = 0  # bytes of body to send


@functools.lru_cache(maxsize=1024)  # the same few Last-Modified values, on every hit
def http_date(value: str | None) -> float | None:
    """Seconds since the epoch of an HTTP date, or None if absent or invalid."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _etags(value: str) -> list[tuple[bool, str]] | None:
    """(weak, tag) pairs of an If-Match/If-None-Match list; None for `*`."""
    if value.strip() == "*":
        return None
    found, pos = [], 0
    while pos < len(value):
        match = _ETAG_RE.match(value, pos)
        if not match:
            break
        found.append((bool(match[1]), match[2]))
        pos = match.end()
    return found


def _matches(value: str, etag: str, weak_ok: bool) -> bool:
    tags = _etags(value)
    if tags is None:
        return True
    return any(tag == etag and (weak_ok or not weak) for weak, tag in tags)


def _range(value: str, size: int) -> tuple[int, int] | str | None:
    """(start, length) of a single byte range, "unsatisfiable", or None to ignore."""
    match = _RANGE_RE.fullmatch(value.strip())
    if not match:
        return None
    first, last = match.groups()
    if first:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            return None  # invalid: ignored like any malformed Range
        if start >= size:
            return "unsatisfiable"
        return start, end - start + 1
    if not last:
        return None
    suffix = int(last)
    if suffix == 0 or size == 0:
        return "unsatisfiable"
    start = max(size - suffix, 0)
    return start, size - start


def evaluate(method: str, headers: Mapping[str, str], rep: Representation) -> Answer:
    """How to answer a GET or HEAD for `rep` given the request's headers."""
    whole = Answer(200, 0, rep.size)
    if_match = headers.get("If-Match")
    if if_match is not None:
        if not _matches(if_match, rep.etag, weak_ok=False):
            return Answer(412)
    else:
        since = http_date(headers.get("If-Unmodified-Since"))
        if since is not None and rep.last_modified is not None and rep.last_modified > since:
            return Answer(412)
    if_none_match = headers.get("If-None-Match")
    if if_none_match is not None:
        if _matches(if_none_match, rep.etag, weak_ok=True):
            return Answer(304)
    else:
        since = http_date(headers.get("If-Modified-Since"))
        if since is not None and rep.last_modified is not None and rep.last_modified <= since:
            return Answer(304)
    range_header = headers.get("Range")
    if method != "GET" or range_header is None:
        return whole
    if_range = headers.get("If-Range")
    if if_range is not None and not _if_range_holds(if_range, rep):
        return whole
    wanted = _range(range_header, rep.size)
    if wanted is None:
        return whole
    if wanted == "unsatisfiable":
        return Answer(416)
    start, length = wanted  # type: ignore[misc]
    return Answer(206, start, length)


def _if_range_holds(value: str, rep: Representation) -> bool:
    value = value.strip()
    if value.startswith('"'):
        return value == rep.etag
    if value.startswith("W/"):
        return False  # weak tags never validate a range
    date = http_date(value)
    return date is not None and rep.last_modified is not None and date == rep.last_modified
