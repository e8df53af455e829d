"""The records the core, its stores and the web layer pass around: artifacts,
fills, misses, events, tokens and lists as plain frozen values.

They hold no behaviour beyond reading themselves; how they are stored is
store/'s business, and the web layer reads them without importing store/.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from withcache.server.digests import Digest

PUBLIC = ""  # the scope of an artifact fetched without credentials
# A fill's `requested_by` when its bytes were uploaded to this host (an import),
# not fetched from the origin: no origin vouched for them.
IMPORTED = "import"
# A fill's `requested_by` when a revalidation found other bytes at the origin.
REVALIDATION = "revalidation"
# Response headers kept with an artifact and replayed on every hit.
REPLAYED_HEADERS = ("Content-Type", "Last-Modified", "Content-Disposition", "Content-Encoding")


def readable(scope: str) -> tuple[str, ...]:
    """The scopes a request in `scope` may read: its own, then the public one."""
    return (scope, PUBLIC) if scope != PUBLIC else (PUBLIC,)


@dataclass(frozen=True)
class Artifact:
    """A cached artifact: one origin URL key, in one credential scope."""

    id: int
    key: str
    scope: str
    sha256: str
    size: int
    headers: Mapping[str, str]  # origin response headers replayed on a hit
    fetched_at: float
    hits: int = 0
    misses: int = 0  # times it was asked for before it was cached
    last_hit: float | None = None
    imported: bool = False  # its bytes were uploaded (withcache import), not fetched
    pinned: bool = False  # never evicted, never revalidated but by an operator
    validated_at: float | None = None  # the origin last said these bytes are current
    etag: str | None = None  # the origin's ETag for these bytes (to revalidate with)

    @property
    def scoped(self) -> bool:
        return self.scope != PUBLIC

    @property
    def last_used(self) -> float:
        """When it was last hit, or else stored: what eviction orders by."""
        return self.last_hit if self.last_hit is not None else self.fetched_at

    @property
    def current_since(self) -> float:
        """When the origin last vouched for its bytes (fetched or revalidated)."""
        return self.validated_at if self.validated_at is not None else self.fetched_at


@dataclass(frozen=True)
class EvictionCandidate:
    """An unpinned artifact as eviction weighs it: its blob's bytes come free
    only once all `refs` artifacts that use the blob are gone."""

    id: int
    key: str
    sha256: str
    size: int
    last_used: float  # last hit, or when it was stored
    refs: int  # artifacts using its blob, pinned ones included


class FillState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATES = (FillState.QUEUED, FillState.RUNNING)


@dataclass(frozen=True)
class FillRecord:
    """A fill as the queue stores it. `url` is the full origin URL only while
    the fill is active; afterwards it is the display form (no query)."""

    id: int
    key: str
    scope: str
    url: str
    state: FillState
    requested_by: str  # "miss", "operator", REVALIDATION or IMPORTED (bytes uploaded)
    expected: Digest | None = None  # the bytes must hash to this, or the fill fails
    credentialed: bool = False  # the request's Authorization is forwarded
    bytes_done: int = 0
    total: int | None = None
    error: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    holder: str | None = None  # the cache-host running it (or keeping its credentials)
    # Where an interrupted transfer can go on from: the partial file's name, the
    # bytes in it known to be on disk, the origin's validator and total.
    resume: Mapping[str, Any] | None = None

    @property
    def imported(self) -> bool:
        return self.requested_by == IMPORTED


# A miss row holds at most this many characters of its key: a longer key is
# filed under its start and a digest of the whole (miss_key), so each long
# key still has a row of its own and the row's index entry fits in a page.
MISS_KEY_CHARS = 900
_DIGEST_CHARS = 20


def miss_key(key: str) -> str:
    """The key a miss for `key` is filed under (itself, unless too long)."""
    if len(key) <= MISS_KEY_CHARS:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_CHARS]
    return f"{key[: MISS_KEY_CHARS - _DIGEST_CHARS - 1]}…{digest}"


@dataclass(frozen=True)
class Miss:
    key: str  # the cache key, or its start and a digest (see miss_key)
    url: str | None  # full URL, kept only while a curated fill may need it
    count: int
    first_seen: float
    last_seen: float
    reason: str  # why it was not (yet) filled

    @property
    def clipped(self) -> bool:
        """The key was too long to keep whole: only `url`, if kept, names the artifact."""
        return len(self.key) == MISS_KEY_CHARS and self.key[-_DIGEST_CHARS - 1] == "…"


@dataclass(frozen=True)
class EventRecord:
    id: int
    at: float
    kind: str
    url: str | None
    actor: str | None
    detail: Mapping[str, Any] = field(default_factory=dict)


class TokenScope(StrEnum):
    READ = "read"  # list and look, change nothing
    ADMIN = "admin"  # everything an operator may do


@dataclass(frozen=True)
class TokenRecord:
    """An API token as stored: its SHA-256, never the token itself."""

    id: int
    name: str
    scope: TokenScope
    created_at: float
    last_used: float | None = None
    created_by: str | None = None


class ItemState(StrEnum):
    """How a list's line ended up without a fill of its own (else it has the
    state of the fill it joined or queued)."""

    CACHED = "cached"  # cached already: skipped
    REFUSED = "refused"  # a bad line, or the cache-host said no
    DUPLICATE = "duplicate"  # an earlier line named the same artifact


ITEM_STATES = (*(s.value for s in FillState), *(s.value for s in ItemState))


@dataclass(frozen=True)
class ListRecord:
    """Artifacts added together, from a file of URLs or a vendor's checksum
    file. Its items name their fills, so its progress is the store's to tell
    (after a restart, and on every host of a shared store)."""

    id: int
    source: str  # a file name, "-" for stdin, or the checksum file's URL
    kind: str  # "urls" or "sums"
    created_at: float
    created_by: str | None = None


@dataclass(frozen=True)
class ListItem:
    line: int  # in the list or checksum file, from 1
    url: str  # display form (for a bad line: the line as given, cut short)
    state: str  # an ItemState, or the state of its fill
    fill_id: int | None = None
    bytes_done: int = 0
    total: int | None = None
    note: str | None = None  # why it was refused or failed, or how it was added


@dataclass(frozen=True)
class ListTally:
    """What a list's items add up to: per state, how many, the bytes received
    and the total bytes (of the items whose size is known, and how many those are)."""

    counts: Mapping[str, int]
    bytes_done: Mapping[str, int]
    totals: Mapping[str, int]
    sized: Mapping[str, int]
    running: Sequence[int]  # ids of its fills running now


@dataclass(frozen=True)
class Page:
    """One page of a listing and the number of rows across all pages."""

    rows: Sequence[Any]
    total: int
