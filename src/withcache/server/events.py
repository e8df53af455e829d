"""The audit trail's vocabulary: one typed record per thing that happened.

An event says who did what to which URL; it is appended to the metadata
store's event log and written as one log line. URLs in events are always the
display form (no query unless --keep-query), and no event ever carries an
Authorization value, a password or a cookie.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str]
    url: str | None = None
    actor: str | None = None  # "operator", "api:<token name>", a client address, ...

    def detail(self) -> dict[str, Any]:
        fields = asdict(self)
        fields.pop("url")
        fields.pop("actor")
        return fields


@dataclass(frozen=True)
class FillQueued(Event):
    kind: ClassVar[str] = "fill.queued"
    requested_by: str = "miss"


@dataclass(frozen=True)
class FillStarted(Event):
    kind: ClassVar[str] = "fill.started"
    fill_id: int = 0
    resume_from: int = 0  # bytes of a partial file it goes on from (after a restart)


@dataclass(frozen=True)
class FillRetrying(Event):
    kind: ClassVar[str] = "fill.retrying"
    fill_id: int = 0
    error: str = ""
    attempt: int = 0
    resume_from: int = 0


@dataclass(frozen=True)
class FillFinished(Event):
    kind: ClassVar[str] = "fill.finished"
    fill_id: int = 0
    sha256: str = ""
    size: int = 0
    seconds: float = 0.0
    imported: bool = False  # the bytes were uploaded, not fetched from the origin


@dataclass(frozen=True)
class FillFailed(Event):
    kind: ClassVar[str] = "fill.failed"
    fill_id: int = 0
    error: str = ""


@dataclass(frozen=True)
class FillCancelled(Event):
    kind: ClassVar[str] = "fill.cancelled"
    fill_id: int = 0


@dataclass(frozen=True)
class FillRefused(Event):
    """The policy or the cap kept a fill from starting."""

    kind: ClassVar[str] = "fill.refused"
    reason: str = ""


@dataclass(frozen=True)
class ArtifactDeleted(Event):
    kind: ClassVar[str] = "artifact.deleted"
    sha256: str = ""
    size: int = 0


@dataclass(frozen=True)
class ArtifactImported(Event):
    """Bytes uploaded by an operator (`withcache import`) became the artifact
    of a URL, without its origin: `how` is "upload", or "stored" when the
    cache-host had those bytes already (under another URL)."""

    kind: ClassVar[str] = "artifact.imported"
    sha256: str = ""
    size: int = 0
    how: str = "upload"
    scoped: bool = False


@dataclass(frozen=True)
class ArtifactsExported(Event):
    """A bundle of artifacts was streamed out (`withcache export`)."""

    kind: ClassVar[str] = "artifacts.exported"
    artifacts: int = 0
    size: int = 0
    scoped: int = 0  # credential-scoped artifacts included (--include-scoped)
    selection: str = ""


@dataclass(frozen=True)
class ListAdded(Event):
    """Artifacts were added together from a list or a checksum file."""

    kind: ClassVar[str] = "list.added"
    list_id: int = 0
    lines: int = 0
    queued: int = 0
    cached: int = 0
    refused: int = 0


@dataclass(frozen=True)
class MissDismissed(Event):
    kind: ClassVar[str] = "miss.dismissed"


@dataclass(frozen=True)
class FillsCleared(Event):
    kind: ClassVar[str] = "fills.cleared"
    count: int = 0


@dataclass(frozen=True)
class LoginSucceeded(Event):
    kind: ClassVar[str] = "login.succeeded"


@dataclass(frozen=True)
class LoginFailed(Event):
    kind: ClassVar[str] = "login.failed"


@dataclass(frozen=True)
class TokenCreated(Event):
    """An API token was made (its value is never recorded)."""

    kind: ClassVar[str] = "token.created"
    name: str = ""
    scope: str = ""


@dataclass(frozen=True)
class TokenRevoked(Event):
    kind: ClassVar[str] = "token.revoked"
    name: str = ""
    scope: str = ""


@dataclass(frozen=True)
class ArtifactQuarantined(Event):
    """The artifact's blob was found corrupt or missing (by `verify
    --quarantine`, the scrub, or a read) and taken out of service."""

    kind: ClassVar[str] = "artifact.quarantined"
    sha256: str = ""
    problem: str = ""


@dataclass(frozen=True)
class VerifyFinished(Event):
    """A verification run ended: `verify`, or a pass of the scrub (actor "scrub")."""

    kind: ClassVar[str] = "verify.finished"
    blobs: int = 0
    corrupt: int = 0
    quarantined: int = 0
    seconds: float = 0.0


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


# Events after which an artifact's key no longer serves what it did.
ARTIFACT_REMOVED = (ArtifactDeleted, ArtifactQuarantined, ArtifactEvicted)


def kinds() -> list[str]:
    """Every event kind, for filters in the UI and the API."""
    return sorted(cls.kind for cls in _all_subclasses(Event))


def _all_subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found
