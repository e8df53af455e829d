"""Conditional and range requests (RFC 9110, sections 13-14), and the one
answer built from them: the status, the byte range and the headers.

Pure functions of the request headers and a Representation (a stored blob's,
or a fill's as it arrives), so that the rules (which header wins, when Range
is ignored, what is unsatisfiable, what a 304 carries) are tested on their
own and every answer of the read path follows them alike. Multi-range
requests are answered with the whole body, which the RFC allows.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime

_ETAG_RE = re.compile(r'\s*(W/)?("[^"]*")\s*(?:,|$)')
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


# What describes the body rather than the resource: not on a 304 or a 412,
# which have none (RFC 9110, 15.4.5).
CONTENT_HEADERS = ("Content-Type", "Content-Encoding", "Content-Disposition")


@dataclass(frozen=True)
class Representation:
    etag: str  # a strong entity tag, quoted (compared only: sent if it is in `headers`)
    last_modified: float | None  # seconds since the epoch, whole seconds
    size: int | None  # None: not known yet (a fill whose origin gave no length)
    headers: Mapping[str, str] = field(default_factory=dict)  # what a 200 carries


@dataclass(frozen=True)
class Answer:
    status: int  # 200, 206, 304, 412 or 416
    start: int = 0
    length: int = 0  # bytes of body to send (all there will be, if the size is unknown)
    headers: Mapping[str, str] = field(default_factory=dict)


def answer(method: str, request_headers: Mapping[str, str], rep: Representation) -> Answer:
    """The answer to a GET or HEAD for `rep`: its status and byte range
    (`evaluate`), and its headers: `rep`'s, with Accept-Ranges when the size
    is known, Content-Range on a 206 or a 416, and no content headers on a
    304 or a 412. A representation of unknown size is sent whole, as it comes."""
    headers = dict(rep.headers)
    if rep.size is None:
        return Answer(200, headers=headers)
    headers["Accept-Ranges"] = "bytes"
    decided = evaluate(method, request_headers, rep)
    if decided.status in (304, 412):
        for name in CONTENT_HEADERS:
            headers.pop(name, None)
    elif decided.status == 416:
        headers["Content-Range"] = f"bytes */{rep.size}"
    elif decided.status == 206:
        end = decided.start + decided.length - 1
        headers["Content-Range"] = f"bytes {decided.start}-{end}/{rep.size}"
    return replace(decided, headers=headers)


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
    """How to answer a GET or HEAD for `rep` (of known size) given the
    request's headers: the status and the byte range, no headers yet."""
    assert rep.size is not None
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
