"""The cache-host's core: every call the read path, the UI and the API make.

It ties the stores, the policy, the cap and the fill manager together, and
keeps them to itself: the web layer maps requests onto these calls and
never reaches past them (it is handed records, an OpenHit to send a stored
blob from, a FillReader to stream a fill through, and listings). Operator
actions (add, approve, dismiss, cancel, retry, delete) are plain coroutines
here, so every front end offers the same actions with the same rules, and
every path that may start a fill asks the same gate first (`_refusal`: the
policy, admission for misses, the cap).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from withcache import __version__, keys
from withcache.server import events, log, metrics, tokens
from withcache.server.actions import ActionError, BadInput, NotFound
from withcache.server.admission import origin_of
from withcache.server.backlog import Backlog
from withcache.server.cap import Cap
from withcache.server.digests import BLOB_ALGORITHM, BadDigest, Digest
from withcache.server.export import Export, Selection, prepare_export
from withcache.server.fill.fill import Fill, FillReader
from withcache.server.fill.manager import FillManager
from withcache.server.fill.peers import PeerRefused, PeerRequest, PeerStream
from withcache.server.fill.progress import FillRow, fill_rows
from withcache.server.hits import OpenHit, ReadChecks
from withcache.server.imports import Imports
from withcache.server.lists import Lists
from withcache.server.lookup import Lookups
from withcache.server.origins import Unhealthy
from withcache.server.policy import Policy
from withcache.server.reclaim import Reclaim
from withcache.server.records import (
    PUBLIC,
    REVALIDATION,
    Artifact,
    EvictionCandidate,
    FillRecord,
    FillState,
    Miss,
    Page,
    TokenRecord,
    TokenScope,
    readable,
)
from withcache.server.registry import TagCheck
from withcache.server.retention import (
    DAY,
    MAX_EVENT_TEXT,
    MAX_REASON,
    Retention,
    clip,
    clip_detail,
)
from withcache.server.revalidation import (
    STALE_HEADER,
    ConditionalGet,
    Outcome,
    Revalidator,
)
from withcache.server.settings import Settings
from withcache.server.store import BlobDamaged, BlobGone, Blobs, Metadata, open_stores
from withcache.server.tasks import cancel_all
from withcache.server.verify import Scrub, Verification, Verifier

HIT_FLUSH_SECONDS = 2.0
PEER_WAIT_SECONDS = 30.0  # a peer's request waits this long for the fill's origin to answer
BACKLOG_SECONDS = 1.0  # how often writes waiting for the store are tried again
PRUNE_SECONDS = 600.0
TOKEN_USE_RESOLUTION = 60.0  # seconds; a token's last use is written at most this often
MAX_TOKENS = 1000
REFRESH_WAIT_SECONDS = 10.0  # an operator's refresh answers within this
AWAITING_APPROVAL = "awaiting approval"  # a curated miss's reason until an operator acts
FETCHING = "being fetched"  # a miss's reason while its fill runs (its ending then says)


# The web layer imports what it is handed from here (it never imports fill/ or store/).
__all__ = [
    "STALE_HEADER", "ActionError", "Added", "BadInput", "Cache", "EvictionCandidate",
    "FillReader", "FillRow", "MissOutcome", "NotFound", "Outcome", "PeerRefused", "PeerStream",
    "Unhealthy",
]  # fmt: skip


@dataclass(frozen=True)
class Added:
    """What Cache.add did: found the artifact cached, joined a fill, or made one."""

    artifact: Artifact | None = None
    fill: FillRecord | None = None
    created: bool = False


@dataclass(frozen=True)
class MissOutcome:
    """What happened to a miss, for the 404 body and the caller; `fill`: the
    fill it started or joined (Cache.open_fill_reader serves from it);
    `stored`: the artifact a fill committed after the lookup (serve it)."""

    reason: str
    fill: Fill | None = None
    stored: Artifact | None = None  # stored meanwhile (a fill that just ended): a hit


@dataclass(frozen=True)
class _Refusal:
    """Why no fill may start: `by` the policy, admission (a miss's bounds and
    memory of failures) or the room (cap.py)."""

    reason: str
    by: str


class Cache:
    def __init__(
        self, settings: Settings, metadata: Metadata, blobs: Blobs, policy: Policy
    ) -> None:
        self.settings = settings
        self._metadata = metadata
        self._blobs = blobs
        self._policy = policy
        self._backlog = Backlog(metadata.unavailable)
        self._lookups = Lookups()
        self._reclaim = Reclaim(metadata, blobs, self.record)
        # --evict lru: a fill that needs room has eviction make it (cap.py).
        evict = self._reclaim.make_room if settings.evict == "lru" else None
        # Local blobs live on the data dir's disk: deleting them makes room there.
        self._cap = Cap(settings, metadata, evict, blobs.free_bytes() is not None)
        self._fills = FillManager(
            settings, metadata, blobs, policy, self.record, self._backlog, self._cap,
            self._lookups, self._reclaim.release,
        )  # fmt: skip
        self._revalidator = Revalidator(
            settings, metadata, ConditionalGet(self._fills.open_get), self._refill,
            self.record, self._lookups.forget, self._origin_blocked, self._origin_failed,
        )  # fmt: skip
        # oras:// references: a tag asks its registry for the manifest it names now.
        tags = TagCheck(self._fills.open_get, settings.plain_http_registries)
        self._revalidator.add_check(keys.is_reference, tags)
        self._tally = metrics.Tally()
        self._retention = Retention(settings, metadata)
        self._verifier = Verifier(metadata, blobs, self.record, self._lookups.forget)
        self.verification: Verification | None = None  # the latest `verify` run
        self._verified: Verification | None = None  # the finished one before it
        days = settings.scrub_every
        self._scrub: Scrub | None = Scrub(days * DAY) if days > 0 else None
        self._read_checks = ReadChecks()  # small blobs the read path hashed lately
        self._hits: dict[int, tuple[int, float]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # The core's collaborators for work of many artifacts at once.
        self.lists = Lists(self, metadata, policy, self._fills)
        self.imports = Imports(self, metadata, policy, self._fills)

    @classmethod
    async def open(cls, settings: Settings) -> Cache:
        """The cache-host's core over the stores the settings name (by default
        SQLite and files in the data dir)."""
        metadata, blobs = await open_stores(settings)
        policy = Policy(settings, await metadata.secret("scope"))
        return cls(settings, metadata, blobs, policy)

    async def start(self, peer_url: str | None = None) -> None:
        """Start the background work. `peer_url`: where the other hosts of a
        shared store read this host's fills in progress (None: they can't)."""
        if self._metadata.shared:
            self._fills.open_peers(peer_url, await self.session_secret())
        await self._fills.start()
        await self._retention.prune()
        self._tasks = [
            asyncio.create_task(self._every(HIT_FLUSH_SECONDS, self.flush_hits)),
            asyncio.create_task(self._every(PRUNE_SECONDS, self._retention.prune)),
            asyncio.create_task(self._every(metrics.MARK_SECONDS, self._mark_tally)),
            asyncio.create_task(self._every(BACKLOG_SECONDS, self._backlog.flush)),
            # Other hosts' deletes, quarantines and commits reach the lookup memo.
            asyncio.create_task(self._metadata.follow_changes(self._lookups), name="changes"),
        ]
        if self._scrub is not None:
            self._tasks.append(asyncio.create_task(self._scrub.run(self._verifier), name="scrub"))
        if self.settings.evict_unused is not None:
            unused = self._every(DAY, self.evict_unused, at_start=True)
            self._tasks.append(asyncio.create_task(unused, name="evict-unused"))

    async def stop_fills(self) -> None:
        """Stop the fills (their clients are closed short, and the fills
        resume at the next start); the first step of stopping."""
        await self._fills.stop()

    async def stop(self) -> None:
        await cancel_all(self._tasks, "cache")
        await self._revalidator.stop()
        await self._fills.stop()
        await self.flush_hits()
        await self._backlog.flush()
        await self.close()

    async def close(self) -> None:
        await self._blobs.close()
        await self._metadata.close()

    async def _every(self, seconds: float, job: Any, at_start: bool = False) -> None:
        while True:
            if not at_start:
                await asyncio.sleep(seconds)
            at_start = False
            try:
                await job()
            except Exception:
                log.error("background.failed", exc_info=True, job=job.__name__)

    # -- the read path

    async def lookup(self, key: str, authorization: str | None) -> Artifact | None:
        """The artifact this request may read under `key`, if cached
        (remembered for a second: lookup.py)."""
        scope = self._policy.scope_of(authorization)
        artifact = await self._lookups.find(
            key, scope, lambda: self._metadata.find_artifact(key, readable(scope))
        )
        if artifact is not None:
            self._revalidator.kick(artifact)  # if due, in the background: the hit never waits
        return artifact

    def stale(self, artifact: Artifact) -> str | None:
        """Why this host serves the artifact without its origin's word (its
        revalidation failed), for the Withcache-Stale header; None if it doesn't."""
        return self._revalidator.stale(artifact)

    async def lookup_digest(self, sha256: str, authorization: str | None) -> Artifact | None:
        """An artifact with this SHA-256 that this request may read, if cached.

        A digest names no origin, so there is nothing to record or fill when
        none is: the caller answers 404. Credential scope holds as for a key.
        """
        scope = self._policy.scope_of(authorization)
        return await self._metadata.find_artifact_by_sha256(sha256, readable(scope))

    async def open_hit(self, artifact: Artifact, for_fill: bool = False) -> OpenHit | None:
        """The stored blob of `artifact`, opened to answer from; None if it is
        gone (deleted meanwhile) or found damaged (and quarantined): a miss.
        `for_fill`: the answer of a client that waited for the fill to be
        stored, counted as the miss it is (its bytes as streamed), not a hit."""
        try:
            reader = await self._blobs.open(artifact.sha256, artifact.size)
        except BlobGone:
            return None
        except BlobDamaged as err:
            await self._blob_damaged(artifact, err.problem)
            return None
        # Until the answer closes it, a delete or eviction of the blob waits (reclaim.py).
        self._reclaim.opened(artifact.sha256)
        count = self._count_fill_answer if for_fill else self._count_hit
        return OpenHit(
            artifact, reader, self._read_checks, count, self._blob_damaged, self._reclaim.closed
        )

    async def presign_hit(
        self, artifact: Artifact, seconds: int, headers: Mapping[str, str], length: int,
        for_fill: bool = False,
    ) -> str | None:  # fmt: skip
        """A URL the client may GET the blob from directly for `seconds`,
        answering with `headers`; None if the store has none to give. The hit
        (of `length` bytes) is counted when there is one (`for_fill`: as in open_hit)."""
        location = await self._blobs.presign(artifact.sha256, seconds, headers)
        if location is not None:
            (self._count_fill_answer if for_fill else self._count_hit)(artifact, length)
        return location

    def _count_hit(self, artifact: Artifact, sent_bytes: int) -> None:
        """Count a hit and the bytes it sent, in memory; counts reach the store
        in batches, so the read path never waits for a disk write."""
        count, _ = self._hits.get(artifact.id, (0, 0.0))
        self._hits[artifact.id] = (count + 1, time.time())
        self._tally.hit(sent_bytes)

    def _count_fill_answer(self, artifact: Artifact, sent_bytes: int) -> None:
        self._count_streamed(sent_bytes)

    def count_miss(self) -> None:
        """A client asked for what isn't stored and is not served from a fill
        (or is a GET served from one: the probe before it is not counted)."""
        self._tally.misses += 1

    async def flush_hits(self) -> None:
        if self._hits:
            batch, self._hits = self._hits, {}
            try:
                await self._metadata.add_hits(batch)
            except self._metadata.unavailable as err:
                for artifact_id, (count, last) in batch.items():  # kept for the next flush
                    newer, latest = self._hits.get(artifact_id, (0, 0.0))
                    self._hits[artifact_id] = (count + newer, max(last, latest))
                log.warning("hits.unflushed", artifacts=len(batch), error=str(err))

    async def _blob_damaged(self, artifact: Artifact, problem: str) -> None:
        """The read path found the artifact's blob not as stored (`problem`):
        check again and quarantine it, so the next request fills afresh."""
        log.warning("hit.damaged", url=artifact.key, sha256=artifact.sha256, problem=problem)
        await self._verifier.confirm(artifact.sha256, artifact.size, "read")

    async def miss(
        self, url: str, key: str, authorization: str | None, waiting: bool = False,
        refill: bool = False,
    ) -> MissOutcome:  # fmt: skip
        """Record a miss and, in auto mode, start or join its fill. `waiting`:
        the client waits for the bytes (a GET, served from the fill).
        Unless `refill` (the lookup found an artifact whose blob is gone), an
        artifact stored since the lookup is handed back instead (`stored`). The read
        path counts it in the tally: it knows whether the client comes back.
        The list of misses is bookkeeping: if the store can't be written (a
        full disk), the client still gets its answer."""
        scope = self._policy.scope_of(authorization)
        now = time.time()
        running = self._fills.active(key, scope)
        if running:
            await self._fills.noting(running, lambda: self._note_miss(key, None, FETCHING, now))
            return MissOutcome("being fetched now; ask again shortly", running)
        if self.settings.curate:
            refused = self._policy.refuse_reason(url)
            if refused is None:
                # Keep the full URL: the fill an operator may approve needs it.
                await self._note_miss(key, url, AWAITING_APPROVAL, now)
                return MissOutcome("recorded for an operator to approve")
            refusal: _Refusal | None = _Refusal(refused, "policy")
        else:
            waiting = waiting and self.settings.stream_fills
            refusal = await self._refusal(url, key, scope, waiting)
        if refusal is not None:
            noted = "not fetched" if refusal.by == "admission" else "refused"
            await self._note_miss(key, None, f"{noted}: {refusal.reason}", now)
            if refusal.by == "policy" and self._retention.refusal_worth_an_event(key):
                await self.record(events.FillRefused(url=self.display(url), reason=refusal.reason))
            return MissOutcome(f"not fetched: {refusal.reason}")
        try:
            # A fill may have ended since the lookup (here or on another host).
            fill, _ = await self._fills.request(
                url, key, scope, authorization, "miss",
                unless_stored=() if refill else readable(scope),
            )  # fmt: skip
        except self._metadata.unavailable as err:
            log.warning("miss.unqueued", url=self.display(url), error=str(err))
            return MissOutcome(f"not fetched: the cache can't queue a fill now: {err}")
        if isinstance(fill, Artifact):
            return MissOutcome("stored meanwhile", stored=fill)
        await self._fills.noting(fill, lambda: self._note_miss(key, None, FETCHING, now))
        return MissOutcome("queued for download; ask again shortly", fill)

    async def open_fill_reader(
        self, outcome: MissOutcome, probe: bool, wait: float
    ) -> FillReader | None:
        """A reader of the miss's fill for its client, once the origin has
        answered (waiting up to `wait` seconds; the fill starts now, beside
        the workers, if it can); None if there is nothing to serve from.
        `probe`: the client only asks whether it is there (HEAD)."""
        fill = outcome.fill
        if fill is None or not self.settings.stream_fills:
            return None
        await self._fills.start_for_client(fill, probe)
        if not await fill.wait_started(wait) and not fill.elsewhere:
            return None
        if fill.elsewhere and not probe:  # its bytes come here from the host running it
            await self._fills.follow(fill, wait)
        return fill.reader(self._count_streamed, local=not probe)

    async def open_peer_stream(
        self, fill_id: int, headers: Mapping[str, str], query: Mapping[str, str]
    ) -> PeerStream:
        """A fill running here, read by another host of the store for its
        clients (fill/peers.py), as that host's request asks; PeerRefused
        says why not."""
        asked = PeerRequest.parse(fill_id, headers, query)
        return await self._fills.peer_stream(asked, PEER_WAIT_SECONDS)

    def _count_streamed(self, nbytes: int) -> None:
        self._tally.streamed_bytes += nbytes

    async def _note_miss(self, key: str, url: str | None, reason: str, now: float) -> None:
        try:
            await self._metadata.record_miss(key, url, clip(reason, MAX_REASON), now)
            await self._retention.wrote(misses=1)
        except self._metadata.unavailable as err:
            log.warning("miss.unrecorded", url=self.display(key), error=str(err))

    async def _refusal(
        self, url: str, key: str, scope: str, waiting: bool | None = None
    ) -> _Refusal | None:
        """Why no fill may start for `url` now, or None; every path that may
        start one asks. The policy; for a miss (`waiting` given: whether its
        client waits for the bytes), admission's bounds and memory of
        failures, which operators pass; then the room (cap.py)."""
        reason = self._policy.refuse_reason(url)
        if reason:
            return _Refusal(reason, "policy")
        if waiting is not None:
            reason = self._fills.admission.refusal(key, scope, waiting)
            if reason:
                return _Refusal(reason, "admission")
        reason = await self._cap.refusal()
        return _Refusal(reason, "room") if reason else None

    async def _operator_fill(
        self, url: str, key: str, scope: str, expected: Digest | None, actor: str | None,
        unless_stored: Sequence[str] = (),
    ) -> tuple[Fill | Artifact, bool]:  # fmt: skip
        """Start (or join) a fill an operator asked for, if the gate lets it
        (with `unless_stored`, FillManager.request's)."""
        if self._fills.active(key, scope) is None:
            refusal = await self._refusal(url, key, scope)
            if refusal is not None:
                raise ActionError(f"not fetched: {refusal.reason}")
        return await self._fills.request(
            url, key, scope, None, "operator", expected, actor, unless_stored
        )

    async def _operator_fill_record(
        self, url: str, key: str, scope: str, expected: Digest | None, actor: str | None
    ) -> Fill:
        """_operator_fill for an action that fetches even if the key is stored."""
        fill, _ = await self._operator_fill(url, key, scope, expected, actor)
        assert isinstance(fill, Fill)  # nothing stored was looked for
        return fill

    # -- operator actions

    async def add(
        self,
        url: str,
        expected: Digest | str | None = None,
        actor: str | None = None,
        refresh: bool = False,
    ) -> Added:
        """Pre-seed an artifact by URL, optionally pinned to a digest (a Digest,
        or the hex of a SHA-256 as a user gave it).

        Idempotent: a URL cached already is not fetched again unless `refresh`
        (a nightly seeding script must not re-download everything), and a fill
        under way for it is joined. A cached artifact is checked against an
        expected SHA-256 (its blob's name); another algorithm's digest is not
        known for it without reading the whole blob, so it is not checked.
        """  # fmt: skip
        try:
            keys.check_url(url)
        except keys.BadURL as err:
            raise BadInput(str(err)) from None
        if isinstance(expected, str):
            try:
                expected = Digest.sha256(expected)
            except BadDigest as err:
                raise BadInput(f"expected {err}") from None
        refused = self._policy.refuse_reason(url)
        if refused:
            raise ActionError(f"not fetched: {refused}")
        key = self.key(url)
        if not refresh:
            cached = await self._metadata.find_artifact(key, (PUBLIC,))
            if (
                cached is not None
                and expected is not None
                and expected.algorithm == BLOB_ALGORITHM
                and expected.hex != cached.sha256
            ):
                raise ActionError(
                    f"cached already with other bytes (SHA-256 {cached.sha256}); "
                    "fetch it again with refresh"
                )
            if cached is not None:
                return Added(artifact=cached)
        fill, created = await self._operator_fill(
            url, key, PUBLIC, expected, actor, () if refresh else (PUBLIC,)
        )
        if isinstance(fill, Artifact):  # a fill ended since the look above
            return Added(artifact=fill)
        if not created and expected not in (None, fill.record.expected):
            raise ActionError(
                "a fill for this URL is already queued or running, without this expected "
                f"{expected.label}"  # type: ignore[union-attr]
            )
        return Added(fill=fill.record, created=created)

    async def approve(self, key: str, actor: str | None = None) -> FillRecord:
        """Fetch a recorded miss (what an operator does in curate mode)."""
        miss = await self._metadata.get_miss(key)
        if miss is None:
            raise NotFound("no such miss")
        if miss.clipped:  # filed under a shortened key: only its URL names the artifact
            if miss.url is None:
                raise BadInput("this miss's URL was too long to keep whole: add it by its URL")
            key = self.key(miss.url)
        fill = await self._operator_fill_record(miss.url or key, key, PUBLIC, None, actor)
        await self._fills.noting(
            fill, lambda: self._metadata.set_miss_reason(key, "approved; being fetched")
        )
        return fill.record

    async def dismiss(self, key: str, actor: str | None = None) -> None:
        miss = await self._metadata.delete_miss(key)
        if miss is None:
            raise NotFound("no such miss")
        await self.record(events.MissDismissed(url=self.display(key), actor=actor))

    async def cancel(self, fill_id: int, actor: str | None = None) -> None:
        if await self._fills.cancel(fill_id, actor):
            return
        record = await self._metadata.get_fill(fill_id)
        if record is None:
            raise NotFound("no such fill")
        raise ActionError(f"fill is {record.state}, not queued or running")

    async def retry(self, fill_id: int, actor: str | None = None) -> FillRecord:
        """Queue a failed or cancelled fill again (from its display URL: a
        query string that was not part of the key is not kept)."""
        await self._fills.recorded(fill_id)  # ending now: read the row it ends with
        record = await self._metadata.get_fill(fill_id)
        if record is None:
            raise NotFound("no such fill")
        if record.state not in (FillState.FAILED, FillState.CANCELLED):
            raise ActionError(f"fill is {record.state}, not failed or cancelled")
        if record.credentialed:
            raise ActionError("this fill used a client's credentials; the client must ask again")
        if record.imported:
            raise ActionError("an import's bytes came from its uploader: import it again")
        # Asked again: what the last failure said of the URL no longer holds.
        self._fills.admission.forget(record.key, record.scope)
        fill = await self._operator_fill_record(
            record.url, record.key, record.scope, record.expected, actor
        )
        return fill.record

    async def delete(self, artifact_id: int, actor: str | None = None) -> Artifact:
        artifact = await self._metadata.delete_artifact(artifact_id)
        if artifact is None:
            raise NotFound("no such artifact")
        self._lookups.forget(artifact.key)
        await self._reclaim.release(artifact.sha256)
        await self.record(
            events.ArtifactDeleted(
                url=artifact.key, actor=actor, sha256=artifact.sha256, size=artifact.size
            )
        )
        return artifact

    async def pin(self, artifact_id: int, pinned: bool, actor: str | None = None) -> Artifact:
        """Pin an artifact (never evicted, never revalidated but when an
        operator asks), or unpin it."""
        artifact = await self._metadata.set_pinned(artifact_id, pinned)
        if artifact is None:
            raise NotFound("no such artifact")
        self._lookups.forget(artifact.key)
        kind = events.ArtifactPinned if pinned else events.ArtifactUnpinned
        await self.record(kind(url=artifact.key, actor=actor, artifact_id=artifact.id))
        return artifact

    async def refresh(self, artifact_id: int, actor: str | None = None) -> Outcome:
        """Ask the artifact's origin now whether it changed (and fetch it if
        it did), pinned or not; what came of it, or "running" if the new bytes
        take longer than REFRESH_WAIT_SECONDS to fetch."""
        artifact = await self._metadata.get_artifact(artifact_id)
        if artifact is None:
            raise NotFound("no such artifact")
        if artifact.scoped:
            raise ActionError("a credential-scoped artifact is fetched only with its credentials")
        if artifact.imported:
            raise ActionError("an import has no origin to ask: import it again")
        try:
            outcome = await asyncio.wait_for(
                self._revalidator.revalidate(artifact, actor), REFRESH_WAIT_SECONDS
            )
        except TimeoutError:  # new bytes are being fetched: it goes on
            return Outcome("running", artifact)
        if outcome.outcome == "busy":
            raise ActionError("it is being revalidated already (here or by another host)")
        return outcome

    async def _refill(self, artifact: Artifact) -> Artifact:
        """Fetch the new bytes of a changed artifact (its commit hands the old
        blob to Reclaim.release: deleted once unused and unread)."""
        fill, _ = await self._fills.request(
            artifact.key, artifact.key, artifact.scope, None, REVALIDATION
        )
        return await fill.result()

    def origins(self) -> list[Unhealthy]:
        """The origins misses leave alone, or whose last fill failed."""
        return self._fills.admission.origins.unhealthy()

    async def unblock(self, origin: str, actor: str | None = None) -> Unhealthy:
        """Let misses (and the fills they queued) try an unhealthy origin again now."""
        found = self._fills.admission.origins.unblock(origin)
        if found is None:
            raise NotFound(f"{origin} is not marked unhealthy")
        await self._fills.origin_unblocked(origin)
        await self.record(events.OriginUnblocked(actor=actor, origin=origin))
        return found

    def _origin_blocked(self, key: str) -> bool:
        return self._fills.admission.origins.blocked(origin_of(key)) is not None

    async def _origin_failed(self, key: str, error: str) -> None:
        unhealthy = self._fills.admission.origins.failed(origin_of(key), error)
        await self.record(
            events.OriginUnhealthy(
                origin=unhealthy.origin, error=error, failures=unhealthy.failures,
                seconds=round(unhealthy.until - time.time(), 1),
            )
        )  # fmt: skip

    async def eviction_next(self, limit: int) -> list[EvictionCandidate]:
        """The unpinned artifacts eviction would take first (the least recently used)."""
        return await self._metadata.eviction_candidates(limit)

    async def evict_unused(self) -> int:
        """--evict-unused: evict unpinned artifacts not hit for that many days."""
        days = self.settings.evict_unused
        if days is None:
            return 0
        return await self._reclaim.evict_unused(time.time() - days * DAY)

    async def clear_finished(self, actor: str | None = None) -> int:
        count = await self._metadata.clear_finished_fills()
        await self.record(events.FillsCleared(actor=actor, count=count))
        return count

    async def verify(self, quarantine: bool, actor: str | None = None) -> Verification:
        """Start re-hashing every blob in the background (one run at a time)."""
        if self.verification and not self.verification.finished:
            raise ActionError("a verification is already running")
        self._verified = self.verification
        self.verification = Verification(quarantine=quarantine, actor=actor)
        task = asyncio.create_task(self.verification.run(self._verifier))
        self._tasks.append(task)  # so that stop() cancels a run in progress
        task.add_done_callback(self._tasks.remove)
        return self.verification

    # -- listings (what the UI's pages and the API's lists show)

    async def export(self, selection: Selection) -> Export:
        """The bundle of the artifacts `selection` keeps, ready to stream."""
        return await prepare_export(self, self._metadata, self._blobs, self._policy, selection)

    async def list_misses(self, search: str = "", offset: int = 0, limit: int = 50) -> Page:
        return await self._metadata.list_misses(search, offset, limit)

    async def list_fills(
        self, states: Sequence[FillState] = (), offset: int = 0, limit: int = 50
    ) -> Page:
        """A page of fills as FillRows: their records with live progress."""
        page = await self._metadata.list_fills(states, offset, limit)
        return Page(fill_rows(list(page.rows), self._fills.live, self.display), page.total)

    async def fill(self, fill_id: int) -> FillRow | None:
        record = await self._metadata.get_fill(fill_id)
        return self.fill_row(record) if record else None

    async def fill_result(self, fill_id: int) -> Artifact:
        """Wait for a fill to end: its artifact, or the error it ended with
        (FillError, CancelledByOperator); one that ended already is read back."""
        return await self._fills.result(fill_id)

    def live_fill(self, fill_id: int) -> Fill | None:
        """The fill queued or running in this process, to follow as it goes."""
        return self._fills.live(fill_id)

    def fill_row(self, record: FillRecord) -> FillRow:
        """A fill's record with its live progress, as listings show it."""
        return fill_rows([record], self._fills.live, self.display)[0]

    async def list_artifacts(
        self, search: str = "", sort: str = "fetched_at", descending: bool = True,
        offset: int = 0, limit: int = 50, pinned: bool = False,
    ) -> Page:  # fmt: skip
        return await self._metadata.list_artifacts(
            search, sort, descending, offset, limit, pinned=pinned
        )

    async def artifact(self, artifact_id: int) -> Artifact | None:
        return await self._metadata.get_artifact(artifact_id)

    async def artifacts_of(self, url: str) -> list[Artifact]:
        """Every artifact stored for `url`, in any scope (BadInput if it is no URL)."""
        try:
            key = self.key(url)
        except keys.BadURL as err:
            raise BadInput(f"bad url: {err}") from None
        return await self._metadata.find_artifacts(key)

    async def list_events(
        self, kind: str = "", search: str = "", offset: int = 0, limit: int = 50
    ) -> Page:
        return await self._metadata.list_events(kind, search, offset, limit)

    async def get_miss(self, key: str) -> Miss | None:
        return await self._metadata.get_miss(key)

    # -- API tokens

    async def list_tokens(self) -> list[TokenRecord]:
        return await self._metadata.list_tokens()

    async def create_token(
        self, name: str, scope: TokenScope, actor: str | None = None
    ) -> tuple[TokenRecord, str]:
        """A new API token: its record, and the token itself (shown once, never kept)."""
        try:
            tokens.check_name(name)
        except tokens.BadTokenName as err:
            raise BadInput(str(err)) from None
        if len(await self._metadata.list_tokens()) >= MAX_TOKENS:
            raise ActionError(f"there are {MAX_TOKENS} tokens already; revoke some first")
        secret, digest = tokens.new()
        record = await self._metadata.add_token(name, scope, digest, actor, time.time())
        if record is None:
            raise ActionError(f"a token named {name!r} exists already")
        await self.record(events.TokenCreated(actor=actor, name=name, scope=scope.value))
        return record, secret

    async def revoke_token(self, name: str, actor: str | None = None) -> TokenRecord:
        record = await self._metadata.delete_token(name)
        if record is None:
            raise NotFound("no such token")
        await self.record(events.TokenRevoked(actor=actor, name=name, scope=record.scope.value))
        return record

    async def authenticate(self, secret: str) -> TokenRecord | None:
        """The token record `secret` is the token of, if it is current."""
        if not tokens.looks_like_token(secret):
            return None
        record = await self._metadata.find_token(tokens.digest(secret))
        now = time.time()
        if record and (record.last_used or 0) < now - TOKEN_USE_RESOLUTION:
            await self._metadata.token_used(record.id, now)
        return record

    async def end_session(self, nonce: str, expires: float) -> None:
        """An operator logged out: the session `nonce` is refused on every
        host of the store from now on (until it would have expired anyway)."""
        await self._metadata.end_session(nonce, expires)

    async def session_ended(self, nonce: str) -> bool:
        return await self._metadata.session_ended(nonce)

    async def session_secret(self) -> bytes:
        """The secret UI sessions are signed with, unless the settings give one:
        made once, shared by every host of the store."""
        if self.settings.session_secret:
            return self.settings.session_secret.encode()
        return await self._metadata.secret("session")

    # -- state and bookkeeping

    async def health(self) -> dict[str, Any]:
        """The header strip's and /healthz's figures. `degraded`: hits are
        served, but fills are refused or the store can't record (`problems`)."""
        count, stored = await self._metadata.totals()
        problems = []
        low = self._cap.low()
        if low:
            problems.append(f"{low}: no fill starts")
        if self._backlog:
            problems.append(
                f"{len(self._backlog)} changes wait for the metadata store to take writes"
            )
        return {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "version": __version__,
            "mode": self.settings.mode,
            "artifacts": count,
            "bytes_stored": stored,
            "max_bytes": self.settings.max_bytes,
            "free_bytes": self._blobs.free_bytes(),
        }

    async def work(self) -> dict[str, Any]:
        """What waits on the cache-host (to alert on a stuck queue) and what
        the latest verification found (to alert on bit rot)."""
        md = self._metadata
        verified = self.last_verification
        return {
            "queued_fills": (await md.list_fills((FillState.QUEUED,), limit=0)).total,
            "running_fills": (await md.list_fills((FillState.RUNNING,), limit=0)).total,
            "awaiting_approval": await md.count_misses(AWAITING_APPROVAL),
            "verify_running": bool(self.verification and not self.verification.finished),
            "verified_at": verified.finished_at if verified else None,
            "verified_blobs": verified.checked if verified else None,
            "bad_blobs": len(verified.corrupt) if verified else None,
            "origins_up": self._fills.admission.origins.states(),
        }

    def local_copies(self) -> dict[str, int] | None:
        """This host's copies of the object store's blobs (--local-copies), if it keeps any."""
        copies = self._blobs.copies
        if copies is None:
            return None
        return {"bytes": copies.bytes, "bound": copies.bound, "hits": copies.hits,
                "copies": len(copies)}  # fmt: skip

    def integrity(self) -> dict[str, Any]:
        """The scrub's progress and the last verification's findings (UI, /metrics)."""
        scrub, last = self._scrub, self.last_verification
        running = scrub.current if scrub else None
        return {
            "scrub_every_days": self.settings.scrub_every if scrub else None,
            "checked_ratio": scrub.checked_ratio() if scrub else None,
            "pass": None if running is None else {
                "blobs": running.blobs, "checked": running.checked,
                "bytes_total": running.bytes_total, "bytes_checked": running.bytes_checked,
            },
            "last": None if last is None else {
                "by": last.actor or "operator", "finished_at": last.finished_at,
                "checked": last.checked, "corrupt": len(last.corrupt),
                "quarantined": sum(c.quarantined for c in last.corrupt), "error": last.error,
            },
        }  # fmt: skip

    @property
    def last_verification(self) -> Verification | None:
        """The verification that ended last: `verify`'s (the one before, while
        another runs), or the scrub's last pass. One still running has no
        findings yet."""
        runs = [self.verification, self._verified, self._scrub.last if self._scrub else None]
        ended = [run for run in runs if run is not None and run.finished]
        return max(ended, key=lambda run: run.finished_at or 0.0, default=None)

    @property
    def started(self) -> float:
        """When this cache-host started (a Unix time)."""
        return self._tally.started

    def figures(self) -> list[tuple[str, metrics.Figures]]:
        """What the cache did over the last day and since start (the overview's figures)."""
        return [
            ("Last 24 hours", self._tally.window(metrics.DAY)),
            ("Since start", self._tally.window(None)),
        ]

    async def metrics_text(self) -> bytes:
        """The Prometheus exposition of /metrics."""
        return metrics.exposition(
            self._tally,
            await self.health(),
            await self.work(),
            self.integrity(),
            self.local_copies(),
        )

    async def record(self, event: events.Event) -> None:
        """Append an event to the audit log (now, or once the store takes
        writes again) and write its log line."""
        detail = event.detail()
        self._tally.observe(event)
        log.info(event.kind, url=event.url, actor=event.actor, **detail)
        now, md = time.time(), self._metadata
        stored_url = clip(event.url, MAX_EVENT_TEXT) if event.url else event.url
        stored_detail = clip_detail(detail)

        async def add() -> None:
            await md.add_event(event.kind, stored_url, event.actor, stored_detail, now)
            await self._retention.wrote(events=1)

        await self._backlog.write(event.kind, add)

    @functools.lru_cache(maxsize=1024)  # noqa: B019 (one Cache per process)
    def key(self, url: str) -> str:
        """The cache key of `url` under this server's settings; BadURL if invalid."""
        return keys.cache_key(url, self.settings.keep_query)

    def display(self, url: str) -> str:
        return keys.display_url(url, self.settings.keep_query)

    async def _mark_tally(self) -> None:
        self._tally.mark()
