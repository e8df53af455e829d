"""The two narrow interfaces the cache-host stores through.

`Metadata` holds what is known about artifacts, misses, fills and events;
`Blobs` holds the bytes, named by their SHA-256 (an object store leaves a
fill's upload where it is and finds it again through the metadata store's
`BlobObjects` records, so no byte is written twice). The embedded default is
SQLite (store.sqlite) and local files (store.files); the scale-out pair is
PostgreSQL (store.postgres) and an object-store bucket (store.bucket: S3,
GCS or Azure), which several cache-hosts share. The records they take and
give are records.py's. Nothing above this layer writes SQL or touches blob
files itself, and `open_stores` is the only place that picks a pair, so the
embedded default never imports the scale-out clients.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from withcache.server.digests import Digest
from withcache.server.records import (
    Artifact,
    EvictionCandidate,
    FillRecord,
    FillState,
    ListItem,
    ListRecord,
    ListTally,
    Miss,
    Page,
    TokenRecord,
    TokenScope,
)

if TYPE_CHECKING:
    from withcache.server.settings import Settings
    from withcache.server.store.local_copies import LocalCopies

MAX_LISTS = 1000  # lists kept (older ones go first), besides their age limit


@dataclass(frozen=True)
class Lease:
    """A cache-host's hold on fills: it must renew it before `until` (a Unix
    time) or another host may take its fills over."""

    holder: str
    until: float
    # Where the other hosts of the store read this host's fills in progress
    # (fill/peers.py); None: nowhere (its fills are served once stored).
    peer_url: str | None = None


class ChangeListener(Protocol):
    """Told of changes to what keys serve that other hosts make (the lookup memo)."""

    def changed(self, key: str | None) -> None:
        """`key` may serve something else now (None: any key may)."""
        ...

    def listening(self, on: bool) -> None:
        """Changes are heard from now on (`on`), or no longer."""
        ...


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

    async def follow_changes(self, listener: ChangeListener) -> None:
        """Tell `listener` of every committed change to an artifact, on any
        host, until cancelled; a store only one host uses returns at once
        (every change is made, and forgotten, here)."""
        ...

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

    async def delete_artifact(self, artifact_id: int, unpinned: bool = False) -> Artifact | None:
        """Delete the artifact (with `unpinned`, only if it is not pinned); what was deleted."""
        ...

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
        pinned: bool = False,
    ) -> Page:
        """A page of artifacts (with `pinned`, pinned ones only)."""
        ...

    async def set_pinned(self, artifact_id: int, pinned: bool) -> Artifact | None:
        """Pin or unpin an artifact; None if there is no such artifact."""
        ...

    async def eviction_candidates(
        self, limit: int, used_before: float | None = None
    ) -> list[EvictionCandidate]:
        """Unpinned artifacts, least recently used first (oldest hit, else
        oldest stored; then lowest id); with `used_before`, only those not
        used since then."""
        ...

    async def claim_revalidation(self, artifact_id: int, now: float, until: float) -> bool:
        """Take the artifact's revalidation until `until`, unless another
        (on any host) holds it; False if one does."""
        ...

    async def end_revalidation(self, artifact_id: int, validated_at: float | None) -> None:
        """Give the revalidation up; with `validated_at`, the origin said the
        bytes are current then."""
        ...

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
        expected: Digest | None = None,
        credentialed: bool = False,
        lease: Lease | None = None,
        start: bool = False,
        unless_stored: Sequence[str] = (),
    ) -> tuple[FillRecord | Artifact, bool]:
        """Queue a fill unless one is active for (key, scope); (fill, created).
        A credentialed fill is queued under the lease of the host that has the
        credentials: no other host can run it. With `start`, the fill is
        running from the start, under `lease`: its holder runs it now, and no
        worker ever claims it. With `unless_stored` (scopes, the first
        preferred), an artifact stored under `key` in one of them is returned
        instead and nothing is queued: this call and commit_artifact exclude
        each other, so a fill committed (on any host) after the caller looked
        for the artifact is never fetched a second time."""
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

    async def defer_fill(self, fill_id: int, holder: str, until: float) -> bool:
        """Put a fill `holder` has just claimed back in the queue, not to be
        claimed before `until` (its origin is unhealthy); False if not held."""
        ...

    async def undefer_fills(self, origin: str) -> int:
        """Let the queued fills of `origin` (scheme://host[:port]) deferred
        until later be claimed now; how many."""
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

    async def fill_peer(self, fill_id: int) -> tuple[str, str] | None:
        """The holder of a running fill and the peer URL its lease announced;
        None if it isn't running or announced none (never in an unshared store)."""
        ...

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
        etag: str | None = None,
        location: str | None = None,
    ) -> Artifact | None:
        """Atomically: store the artifact (`etag`: the origin's, kept to
        revalidate with), finish the fill, settle its miss, and record the
        blob's object at `location` (what BlobWriter.commit returned), if any.
        None (and nothing changed) if `holder` no longer holds the fill;
        StoreError (and nothing changed) if that object's record was
        abandoned meanwhile (a cleaner found it a day old)."""
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

    async def clear_finished_fills(self) -> int:
        """Forget finished fills (their lists' items keep how they ended)."""
        ...

    async def list_fills(
        self, states: Sequence[FillState] = (), offset: int = 0, limit: int = 50
    ) -> Page: ...

    # -- lists
    async def add_list(self, source: str, kind: str, created_by: str | None, now: float) -> int:
        """A new, empty list; its id."""
        ...

    async def add_list_items(self, list_id: int, items: Sequence[ListItem]) -> None: ...

    async def get_list(self, list_id: int) -> ListRecord | None: ...

    async def list_lists(self, offset: int = 0, limit: int = 50) -> Page:
        """Lists, newest first."""
        ...

    async def tally_list(self, list_id: int) -> ListTally: ...

    async def list_items(
        self, list_id: int, states: Sequence[str] = (), offset: int = 0, limit: int = 50
    ) -> Page:
        """A list's items in line order, each with its fill's state and progress."""
        ...

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
        (finished fills are the downloads history: they follow the events', and
        so do lists, of which at most MAX_LISTS are kept)."""
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

    # -- operator sessions
    async def end_session(self, nonce: str, expires: float) -> None:
        """Note that the session `nonce` ended (a logout) before `expires`."""
        ...

    async def session_ended(self, nonce: str) -> bool:
        """Whether the session `nonce` was ended, on any host of this store."""
        ...

    async def prune_sessions(self, now: float, keep: int) -> None:
        """Forget ended sessions that have expired anyway, and all but the
        `keep` that expire last."""
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

    def hexdigest(self, algorithm: str = "sha256") -> str:
        """The digest of the bytes written: SHA-256, or one of the others the
        writer was begun with."""
        ...

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

    def chunks(self, start: int, length: int) -> AsyncGenerator[bytes, None]:
        """Bytes [start, start + length) as they come."""
        ...

    def unchanged(self) -> bool:
        """Whether the stored bytes are still the ones opened: a file cut or
        rewritten in place meanwhile may have sent zeros for what was cut."""
        ...

    async def close(self) -> None: ...


class Blobs(Protocol):
    """Content-addressed bytes: two URLs with the same bytes share one blob."""

    # This host's own copies of an object store's hot blobs (--local-copies),
    # which `open` answers from; None: the store keeps none.
    copies: LocalCopies | None

    def begin(self, also: Collection[str] = ()) -> BlobWriter:
        """A new blob; its writer computes SHA-256 and the algorithms `also`
        (hashlib names) from the bytes as they arrive."""
        ...

    async def resume(self, name: str, size: int, also: Collection[str] = ()) -> BlobWriter | None:
        """A writer going on from the first `size` bytes of the partial file
        `name` (a suspended or crashed writer's), those bytes hashed (with
        `also` too); None if that file is gone or shorter."""
        ...

    async def open(self, sha256: str, size: int, copy: bool = True) -> BlobReader:
        """The committed blob; BlobGone if it is known to be gone already,
        BlobDamaged if it is known not to be `size` bytes long. With `copy`
        False, the store's own bytes, never this host's copy (what verify checks)."""
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
