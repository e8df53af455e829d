"""The audit trail's vocabulary: one typed record per thing that happened.

An event says who did what to which URL; it is appended to the metadata
store's event log and written as one log line. Every field an event has is
given where it is made (keyword arguments only, none defaulted but `actor`
on what the cache-host does by itself), so an event can't be recorded half
filled in. URLs in events are always the display form (no query unless
--keep-query), and no event ever carries an Authorization value, a password
or a cookie. The events record what happened; nothing reads them back to
decide what to do (the metrics count them, as an observer).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, kw_only=True)
class Event:
    kind: ClassVar[str]
    url: str | None = None  # an event about one artifact says which (its display URL)
    # Who did it: "ui:<address>", "api:<token name>", "scrub"...; None: the
    # cache-host on its own (a fill a miss started, a retry).
    actor: str | None = None

    def detail(self) -> dict[str, Any]:
        fields = asdict(self)
        fields.pop("url")
        fields.pop("actor")
        return fields


@dataclass(frozen=True, kw_only=True)
class FillQueued(Event):
    kind: ClassVar[str] = "fill.queued"
    url: str
    actor: str | None
    requested_by: str  # "miss" or "operator"


@dataclass(frozen=True, kw_only=True)
class FillStarted(Event):
    kind: ClassVar[str] = "fill.started"
    url: str
    fill_id: int
    resume_from: int  # bytes of a partial file it goes on from (after a restart)


@dataclass(frozen=True, kw_only=True)
class FillRetrying(Event):
    kind: ClassVar[str] = "fill.retrying"
    url: str
    fill_id: int
    error: str
    attempt: int
    resume_from: int


@dataclass(frozen=True, kw_only=True)
class FillFinished(Event):
    kind: ClassVar[str] = "fill.finished"
    url: str
    fill_id: int
    sha256: str
    size: int
    seconds: float
    imported: bool  # the bytes were uploaded, not fetched from the origin


@dataclass(frozen=True, kw_only=True)
class FillFailed(Event):
    kind: ClassVar[str] = "fill.failed"
    url: str
    fill_id: int
    error: str


@dataclass(frozen=True, kw_only=True)
class FillCancelled(Event):
    kind: ClassVar[str] = "fill.cancelled"
    url: str
    actor: str | None
    fill_id: int


@dataclass(frozen=True, kw_only=True)
class FillRefused(Event):
    """The policy or the cap kept a fill from starting."""

    kind: ClassVar[str] = "fill.refused"
    url: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class ArtifactDeleted(Event):
    kind: ClassVar[str] = "artifact.deleted"
    url: str
    actor: str | None
    sha256: str
    size: int


@dataclass(frozen=True, kw_only=True)
class ArtifactImported(Event):
    """Bytes uploaded by an operator (`withcache import`) became the artifact
    of a URL, without its origin: `how` is "upload", or "stored" when the
    cache-host had those bytes already (under another URL)."""

    kind: ClassVar[str] = "artifact.imported"
    url: str
    actor: str | None
    sha256: str
    size: int
    how: str
    scoped: bool


@dataclass(frozen=True, kw_only=True)
class ArtifactsExported(Event):
    """A bundle of artifacts was streamed out (`withcache export`)."""

    kind: ClassVar[str] = "artifacts.exported"
    actor: str | None
    artifacts: int
    size: int
    scoped: int  # credential-scoped artifacts included (--include-scoped)
    selection: str


@dataclass(frozen=True, kw_only=True)
class ListAdded(Event):
    """Artifacts were added together from a list or a checksum file."""

    kind: ClassVar[str] = "list.added"
    actor: str | None
    list_id: int
    lines: int
    queued: int
    cached: int
    refused: int


@dataclass(frozen=True, kw_only=True)
class ArtifactQuarantined(Event):
    """The artifact's blob was found corrupt or missing (by `verify
    --quarantine`, the scrub, or a read) and taken out of service."""

    kind: ClassVar[str] = "artifact.quarantined"
    url: str
    actor: str | None
    sha256: str
    problem: str


@dataclass(frozen=True, kw_only=True)
class MissDismissed(Event):
    kind: ClassVar[str] = "miss.dismissed"
    url: str
    actor: str | None


@dataclass(frozen=True, kw_only=True)
class FillsCleared(Event):
    kind: ClassVar[str] = "fills.cleared"
    actor: str | None
    count: int


@dataclass(frozen=True, kw_only=True)
class LoginSucceeded(Event):
    kind: ClassVar[str] = "login.succeeded"
    actor: str


@dataclass(frozen=True, kw_only=True)
class LoginFailed(Event):
    kind: ClassVar[str] = "login.failed"
    actor: str


@dataclass(frozen=True, kw_only=True)
class TokenCreated(Event):
    """An API token was made (its value is never recorded)."""

    kind: ClassVar[str] = "token.created"
    actor: str | None
    name: str
    scope: str


@dataclass(frozen=True, kw_only=True)
class TokenRevoked(Event):
    kind: ClassVar[str] = "token.revoked"
    actor: str | None
    name: str
    scope: str


@dataclass(frozen=True, kw_only=True)
class VerifyFinished(Event):
    """A verification run ended: `verify`, or a pass of the scrub (actor "scrub")."""

    kind: ClassVar[str] = "verify.finished"
    actor: str | None
    blobs: int
    corrupt: int
    quarantined: int
    seconds: float


@dataclass(frozen=True, kw_only=True)
class ArtifactPinned(Event):
    """An operator pinned the artifact: never evicted, never revalidated on its own."""

    kind: ClassVar[str] = "artifact.pinned"
    url: str
    actor: str | None
    artifact_id: int


@dataclass(frozen=True, kw_only=True)
class ArtifactUnpinned(Event):
    kind: ClassVar[str] = "artifact.unpinned"
    url: str
    actor: str | None
    artifact_id: int


@dataclass(frozen=True, kw_only=True)
class ArtifactEvicted(Event):
    """Eviction deleted the artifact: `reason` "room" (a fill needed the room,
    --evict lru) or "unused" (not hit for --evict-unused days)."""

    kind: ClassVar[str] = "artifact.evicted"
    url: str
    sha256: str
    size: int
    last_used: float
    reason: str


@dataclass(frozen=True, kw_only=True)
class ArtifactRevalidated(Event):
    """The origin was asked whether a cached artifact is current (--revalidate,
    or an operator's refresh): `outcome` fresh (304), changed (new bytes
    stored: `sha256`, where they were `previous`) or stale-served (the origin
    could not say, `error`: the old bytes go on being served)."""

    kind: ClassVar[str] = "artifact.revalidated"
    url: str
    actor: str | None
    outcome: str
    sha256: str
    previous: str
    error: str | None


@dataclass(frozen=True, kw_only=True)
class OriginUnhealthy(Event):
    """Fills from an origin kept failing: misses leave it alone for a while."""

    kind: ClassVar[str] = "origin.unhealthy"
    origin: str
    error: str
    failures: int
    seconds: float  # how long misses leave it alone


@dataclass(frozen=True, kw_only=True)
class OriginUnblocked(Event):
    kind: ClassVar[str] = "origin.unblocked"
    actor: str | None
    origin: str


def kinds() -> list[str]:
    """Every event kind, for filters in the UI and the API."""
    return sorted(cls.kind for cls in _all_subclasses(Event))


def _all_subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found
