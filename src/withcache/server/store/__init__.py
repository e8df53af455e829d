"""The two narrow interfaces the cache-host stores through, and their records.

`Metadata` holds what is known about artifacts, misses, fills and events;
`Blobs` holds the bytes, named by their SHA-256 (an object store leaves a
fill's upload where it is and finds it again through the metadata store's
`BlobObjects` records, so no byte is written twice). The embedded default is
SQLite (store.sqlite) and local files (store.files); the scale-out pair is
PostgreSQL (store.postgres) and an object-store bucket (store.bucket: S3,
GCS or Azure), which several cache-hosts share. Nothing above this layer writes SQL or
touches blob files itself, and `open_stores` is the only place that picks a
pair, so the embedded default never imports the scale-out clients.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

if TYPE_CHECKING:
    from withcache.server.settings import Settings

PUBLIC = ""  # the scope of an artifact fetched without credentials


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

    @property
    def scoped(self) -> bool:
        return self.scope != PUBLIC


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
    requested_by: str  # "miss" or "operator"
    expected_sha256: str | None = None
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


@dataclass(frozen=True)
class Lease:
    """A cache-host's hold on fills: it must renew it before `until` (a Unix
    time) or another host may take its fills over."""

    holder: str
    until: float


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


@dataclass(frozen=True)
class Page:
    """One page of a listing and the number of rows across all pages."""

    rows: Sequence[Any]
    total: int


class BlobObjects(Protocol):
    """Where an object store keeps the blobs it left where they were uploaded
    (store.bucket: a fill's upload is not copied to a key named by its
    SHA-256, which would write every byte twice).

    Each such object has a record from the moment its upload starts: pending
    (no SHA-256 yet), then recorded, in the transaction that commits its
    artifact (Metadata.commit_artifact's `location`), or abandoned. Only a
    recorded object is ever read, so a blob is visible exactly when its
    artifact is; an object is deleted only after its record was abandoned,
    which a recorded one never is until its blob is deleted, so a crash at
    any point leaves either a blob that is whole and recorded or a record
    that start-up cleaning finishes."""

    async def note_upload(self, location: str, now: float) -> None:
        """Record, pending, an object whose upload begins."""
        ...

    async def find_blob_object(self, sha256: str) -> str | None:
        """The object the blob is recorded at; None if it has none (then it is
        under its SHA-256, as blobs stored before there were records are)."""
        ...

    async def abandon_upload(self, location: str) -> bool:
        """Abandon a pending object's record (its upload failed or was not
        needed); whether it was pending (or abandoned already), so that its
        object may be deleted. False for a recorded object: keep it."""
        ...

    async def abandon_blob(self, sha256: str) -> str | None:
        """Abandon the record of the blob's object (the blob is being deleted
        or quarantined, under its blob lock); the object, or None."""
        ...

    async def abandoned_uploads(self, started_before: float) -> list[str]:
        """Abandon the records of pending objects whose upload began before the
        time (their host is gone, or the upload is a day old); every abandoned
        object, those abandoned earlier included, for deletion."""
        ...

    async def forget_upload(self, location: str) -> None:
        """Drop an abandoned record once its object is deleted."""
        ...


class Metadata(BlobObjects, Protocol):
    """Everything the cache-host knows, except the bytes. All calls are atomic."""

    # Other cache-hosts may claim, run and end fills in this store.
    shared: bool
    # What the store raises when it can't be written just now (a full disk, a
    # server that is down): a write that failed so is worth trying again.
    unavailable: tuple[type[Exception], ...]

    async def close(self) -> None: ...

    async def secret(self, name: str) -> bytes:
        """A random secret shared by every host of this store, made on first use."""
        ...

    # -- artifacts
    async def find_artifact(self, key: str, scopes: Sequence[str]) -> Artifact | None: ...

    async def find_artifact_by_sha256(self, sha256: str, scopes: Sequence[str]) -> Artifact | None:
        """An artifact with this content in one of `scopes` (the first scope
        preferred, then the newest)."""
        ...

    async def get_artifact(self, artifact_id: int) -> Artifact | None: ...

    async def add_hits(self, counts: Mapping[int, tuple[int, float]]) -> None:
        """Add batched hit counts: artifact id -> (hits, time of the last)."""
        ...

    async def find_artifacts(self, key: str) -> list[Artifact]:
        """Every artifact stored under `key`, in any scope."""
        ...

    async def delete_artifact(self, artifact_id: int) -> Artifact | None: ...

    async def sha_in_use(self, sha256: str) -> bool: ...

    async def totals(self) -> tuple[int, int]:
        """(artifact count, bytes stored), counting shared blobs once."""
        ...

    async def blobs_to_check(self, before: float, limit: int) -> list[tuple[str, int]]:
        """(sha256, size) of blobs not re-hashed since `before`, longest unchecked first."""
        ...

    async def unchecked_totals(self, before: float) -> tuple[int, int]:
        """(blobs, bytes) not re-hashed since `before`."""
        ...

    async def mark_checked(
        self, sha256: str, now: float, unless_since: float | None = None
    ) -> bool:
        """Note that the blob was re-hashed at `now`; with `unless_since`, only if
        nobody did since then (so hosts sharing the store each take other blobs)."""
        ...

    async def list_artifacts(
        self,
        search: str = "",
        sort: str = "fetched_at",
        descending: bool = True,
        offset: int = 0,
        limit: int = 50,
    ) -> Page: ...

    # -- misses
    async def record_miss(self, key: str, url: str | None, reason: str, now: float) -> None:
        """Count a miss; remember `url` (or forget the stored one when None).
        Every miss call files `key` under miss_key(key)."""
        ...

    async def set_miss_reason(self, key: str, reason: str) -> None:
        """Say why a recorded miss is (still) not filled; no-op if there is none."""
        ...

    async def get_miss(self, key: str) -> Miss | None: ...

    async def delete_miss(self, key: str) -> Miss | None: ...

    async def list_misses(self, search: str = "", offset: int = 0, limit: int = 50) -> Page: ...

    async def count_misses(self, reason: str) -> int:
        """Recorded misses whose reason is exactly `reason` (e.g. awaiting approval)."""
        ...

    # -- fills
    async def enqueue_fill(
        self,
        key: str,
        scope: str,
        url: str,
        requested_by: str,
        now: float,
        expected_sha256: str | None = None,
        credentialed: bool = False,
        lease: Lease | None = None,
    ) -> tuple[FillRecord, bool]:
        """Queue a fill unless one is active for (key, scope); (fill, created).
        A credentialed fill is queued under the lease of the host that has the
        credentials: no other host can run it."""
        ...

    async def claim_fill(
        self, now: float, lease: Lease, fill_id: int | None = None
    ) -> FillRecord | None:
        """Mark running, under `lease`, the oldest fill this holder may run
        (an operator's before any a miss queued): a queued one (not held by
        another host), or a running one whose holder's lease ran out (taken
        over; never a credentialed one). With `fill_id`, that fill only, if it
        is one of those."""
        ...

    async def renew_lease(self, lease: Lease) -> set[int]:
        """Extend the holder's lease on its active fills; return their ids.
        A fill missing from the answer was cancelled or taken over elsewhere."""
        ...

    async def orphaned_fills(self, now: float) -> list[FillRecord]:
        """Active credentialed fills whose holder stopped renewing its lease:
        no other host has their credentials, so they can only fail."""
        ...

    async def get_fill(self, fill_id: int) -> FillRecord | None: ...

    async def save_progress(
        self,
        fill_id: int,
        bytes_done: int,
        total: int | None,
        resume: Mapping[str, Any] | None = None,
    ) -> None:
        """Note a running fill's progress, and with `resume` where it can go on from."""
        ...

    async def reserve_bytes(self, fill_id: int, holder: str, size: int, cap: int) -> bool:
        """Promise a running fill `size` bytes of the store (its whole artifact),
        if the bytes stored plus every running fill's promise, this one's
        included, stay within `cap`; False (and nothing changed) if not."""
        ...

    async def reserved_bytes(self) -> int:
        """The bytes promised to running fills, on every host."""
        ...

    async def finish_fill(
        self,
        fill_id: int,
        state: FillState,
        error: str | None,
        display_url: str,
        now: float,
        holder: str | None = None,
    ) -> FillRecord | None:
        """End an active fill (only if `holder` holds it, when given); the full
        URL is replaced by `display_url`."""
        ...

    async def commit_artifact(
        self,
        fill: FillRecord,
        sha256: str,
        size: int,
        headers: Mapping[str, str],
        display_url: str,
        now: float,
        holder: str,
        location: str | None = None,
    ) -> Artifact | None:
        """Atomically: store the artifact, finish the fill, settle its miss,
        and record the blob's object at `location` (what BlobWriter.commit
        returned), if any. None (and nothing changed) if `holder` no longer
        holds the fill; StoreError (and nothing changed) if that object's
        record was abandoned meanwhile (a cleaner found it a day old)."""
        ...

    async def requeue_interrupted(self) -> int:
        """At start: put fills left running by a crash back in the queue. A
        shared store does nothing here: its fills move on when leases expire."""
        ...

    def blob_lock(self, sha256: str) -> AbstractAsyncContextManager[None]:
        """Held while a blob is stored with its row, or checked unused and
        deleted, so a delete can't remove a blob that a finishing fill (with the
        same bytes) is about to reference; on a shared store, across hosts."""
        ...

    async def clear_finished_fills(self) -> int: ...

    async def list_fills(
        self, states: Sequence[FillState] = (), offset: int = 0, limit: int = 50
    ) -> Page: ...

    # -- events
    async def add_event(
        self,
        kind: str,
        url: str | None,
        actor: str | None,
        detail: Mapping[str, Any],
        now: float,
    ) -> None: ...

    async def list_events(
        self, kind: str = "", search: str = "", offset: int = 0, limit: int = 50
    ) -> Page: ...

    async def prune(
        self,
        now: float,
        miss_max_age: float,
        max_misses: int,
        event_max_age: float,
        max_events: int,
    ) -> None:
        """Drop misses, events and finished fills past their age or count limits
        (finished fills are the downloads history: they follow the events')."""
        ...

    # -- API tokens
    async def add_token(
        self, name: str, scope: TokenScope, digest: str, created_by: str | None, now: float
    ) -> TokenRecord | None:
        """Store a token by its digest; None if the name is taken."""
        ...

    async def find_token(self, digest: str) -> TokenRecord | None: ...

    async def list_tokens(self) -> list[TokenRecord]: ...

    async def delete_token(self, name: str) -> TokenRecord | None: ...

    async def token_used(self, token_id: int, now: float) -> None:
        """Note when a token was last used (callers limit how often)."""
        ...


class BlobWriter(Protocol):
    """A blob being written: hashed as it goes, invisible until committed."""

    size: int
    path: Path  # a local file holding the bytes written so far (read-through reads it)

    async def write(self, data: bytes) -> None: ...

    async def sync(self) -> None:
        """Make the bytes written so far durable: a point to resume from."""
        ...

    async def suspend(self) -> None:
        """Stop writing but keep the partial file, to resume (Blobs.resume) after a restart."""
        ...

    async def restart(self) -> None:
        """Drop everything written so far (the origin ignored a resume)."""
        ...

    def hexdigest(self) -> str: ...

    async def commit(self) -> str | None:
        """Make the bytes durable, as the blob named by their SHA-256; called
        under the blob's lock (Metadata.blob_lock), so a blob already stored
        is found and the new copy dropped. Return where the store keeps the
        blob if not by that name (the object Metadata.commit_artifact must
        record), or None. The blob is visible once its artifact is committed."""
        ...

    async def abort(self) -> None:
        """Drop everything written; after a commit whose artifact was not
        committed, drop what the commit stored, unless it was recorded."""
        ...


class BlobGone(Exception):
    """The blob is not in the store (deleted since its row was read)."""


class BlobDamaged(Exception):
    """The blob is there, but not as it was stored (cut short, rotten)."""

    def __init__(self, sha256: str, problem: str) -> None:
        super().__init__(f"blob {sha256}: {problem}")
        self.sha256 = sha256
        self.problem = problem  # "size: ...", "content: ..."


class BlobReader(Protocol):
    """A committed blob, opened. Reads raise BlobGone if the store finds no
    such blob and BlobDamaged if it is not the size recorded (before any
    byte), and OSError if it breaks off later."""

    file: BinaryIO | None  # a local file to sendfile from (zero-copy); else use `chunks`
    # What tells these bytes on disk apart from others later under the same
    # name (inode, size, modification time); None if the store can't say.
    stamp: tuple[int, ...] | None

    async def read(self, start: int, length: int) -> bytes:
        """Bytes [start, start + length): for small bodies."""
        ...

    def chunks(self, start: int, length: int) -> AsyncIterator[bytes]:
        """Bytes [start, start + length) as they come."""
        ...

    def unchanged(self) -> bool:
        """Whether the stored bytes are still the ones opened: a file cut or
        rewritten in place meanwhile may have sent zeros for what was cut."""
        ...

    async def close(self) -> None: ...


class Blobs(Protocol):
    """Content-addressed bytes: two URLs with the same bytes share one blob."""

    def begin(self) -> BlobWriter: ...

    async def resume(self, name: str, size: int) -> BlobWriter | None:
        """A writer going on from the first `size` bytes of the partial file
        `name` (a suspended or crashed writer's); None if that file is gone or
        shorter."""
        ...

    async def open(self, sha256: str, size: int) -> BlobReader:
        """The committed blob; BlobGone if it is known to be gone already,
        BlobDamaged if it is known not to be `size` bytes long."""
        ...

    async def presign(self, sha256: str, seconds: int, headers: Mapping[str, str]) -> str | None:
        """A URL that lets anyone GET the blob directly for `seconds`, answering
        with `headers` (Content-Type, Content-Disposition); None if this store
        can't hand out such URLs."""
        ...

    async def delete(self, sha256: str) -> None: ...

    async def quarantine(self, sha256: str) -> None:
        """Move a corrupt blob out of service, kept for inspection."""
        ...

    async def clean_temp(self, keep: Collection[str] = ()) -> int:
        """Remove partial blobs a crash left behind, except the partial files
        named in `keep` (fills may resume from them); return how many. On a
        shared store, only what no live host can still be writing."""
        ...

    async def discard_partial(self, name: str) -> None:
        """Remove a partial file kept for a resume that won't happen."""
        ...

    def free_bytes(self) -> int | None:
        """Room left for blobs; None if the store doesn't say (object stores)."""
        ...

    async def close(self) -> None: ...


class StoreError(Exception):
    """A store can't be opened or used as configured; the message says why."""


async def open_stores(settings: Settings) -> tuple[Metadata, Blobs]:
    """The stores the settings name; each backend's client is imported only
    when it is used."""
    metadata: Metadata
    blobs: Blobs
    if settings.metadata_url:
        from withcache.server.store.postgres import PostgresMetadata

        metadata = await PostgresMetadata.connect(settings.metadata_url)
    else:
        from withcache.server.store.sqlite import SQLiteMetadata

        metadata = SQLiteMetadata(settings.data_dir / "cache.db")
    try:
        if settings.blobs_url:
            from withcache.server.store.bucket import BucketBlobs

            blobs = await BucketBlobs.connect(settings, metadata)
        else:
            from withcache.server.store.files import LocalBlobs

            blobs = LocalBlobs(settings.data_dir)
    except BaseException:
        await metadata.close()
        raise
    return metadata, blobs
