"""The cache-host's core: the calls the read path, the UI and the API make.

It ties the stores, the policy and the fill manager together. The web layer
maps requests onto these calls and never reaches past them. Operator actions
(add, approve, dismiss, cancel, retry, delete) are plain coroutines here, so
every front end offers the same actions with the same rules.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from typing import Any

from withcache import __version__, keys
from withcache.server import events, log, metrics, tokens, verify
from withcache.server.admission import origin_of
from withcache.server.backlog import Backlog
from withcache.server.digests import BLOB_ALGORITHM, BadDigest, Digest
from withcache.server.fills import Fill, FillManager
from withcache.server.origins import Unhealthy
from withcache.server.policy import Policy
from withcache.server.reclaim import Reclaim
from withcache.server.retention import (
    DAY,
    MAX_EVENT_TEXT,
    MAX_REASON,
    Retention,
    clip,
    clip_detail,
)
from withcache.server.revalidation import ConditionalGet, Outcome, Revalidator
from withcache.server.settings import Settings
from withcache.server.store import (
    PUBLIC,
    REVALIDATION,
    Artifact,
    Blobs,
    EvictionCandidate,
    FillRecord,
    FillState,
    Metadata,
    TokenRecord,
    TokenScope,
    open_stores,
)
from withcache.server.tasks import cancel_all
from withcache.server.verify import ReadChecks, Scrub, Verification

HIT_FLUSH_SECONDS = 2.0
BACKLOG_SECONDS = 1.0  # how often writes waiting for the store are tried again
LOOKUP_SECONDS = 1.0
LOOKUP_ENTRIES = 4096
PRUNE_SECONDS = 600.0
TOKEN_USE_RESOLUTION = 60.0  # seconds; a token's last use is written at most this often
MAX_TOKENS = 1000
REFRESH_WAIT_SECONDS = 10.0  # an operator's refresh answers within this
AWAITING_APPROVAL = "awaiting approval"  # a curated miss's reason until an operator acts


def readable(scope: str) -> tuple[str, ...]:
    """The scopes a request in `scope` may read: its own, then the public one."""
    return (scope, PUBLIC) if scope != PUBLIC else (PUBLIC,)


class ActionError(Exception):
    """An operator action that can't be done as asked; the message says why."""


class BadInput(ActionError):
    """The action was asked with input that can never work (a bad URL, say)."""


class NotFound(ActionError):
    """The action names something that does not exist (any more)."""


@dataclass(frozen=True)
class Added:
    """What Cache.add did: found the artifact cached, joined a fill, or made one."""

    artifact: Artifact | None = None
    fill: FillRecord | None = None
    created: bool = False


@dataclass(frozen=True)
class MissOutcome:
    """What happened to a miss, for the 404 body and the caller."""

    reason: str
    fill: Fill | None = None


class Cache:
    def __init__(
        self, settings: Settings, metadata: Metadata, blobs: Blobs, policy: Policy
    ) -> None:
        self.settings = settings
        self.metadata = metadata
        self.blobs = blobs
        self.policy = policy
        self.backlog = Backlog(metadata.unavailable)
        self.fills = FillManager(settings, metadata, blobs, policy, self.record, self.backlog)
        self.tally = metrics.Tally()
        self.retention = Retention(settings, metadata)
        self.verification: Verification | None = None  # the latest `verify` run
        self._verified: Verification | None = None  # the finished one before it
        days = settings.scrub_every
        self.scrub: Scrub | None = Scrub(days * DAY) if days > 0 else None
        self.read_checks = ReadChecks()  # small blobs the read path hashed lately
        self.reclaim = Reclaim(metadata, blobs, self.record)
        self.fills.replaced = self.reclaim.release
        if settings.evict == "lru":
            self.fills.downloader.evict = self.reclaim.make_room
            # Local blobs live on the data dir's disk: deleting them makes room there.
            self.fills.downloader.evict_frees_disk = blobs.free_bytes() is not None
        self.revalidator = Revalidator(
            settings, metadata, ConditionalGet(self.fills.downloader.open_get), self._refill,
            self.record, self._forget, self._origin_blocked, self._origin_failed,
        )  # fmt: skip
        self._hits: dict[int, tuple[int, float]] = {}
        # (key, scope) -> (remembered until, artifact): see lookup().
        self._recent: dict[tuple[str, str], tuple[float, Artifact]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(cls, settings: Settings) -> Cache:
        """The cache-host's core over the stores the settings name (by default
        SQLite and files in the data dir)."""
        metadata, blobs = await open_stores(settings)
        policy = Policy(settings, await metadata.secret("scope"))
        return cls(settings, metadata, blobs, policy)

    async def start(self) -> None:
        await self.fills.start()
        await self.retention.prune()
        self._tasks = [
            asyncio.create_task(self._every(HIT_FLUSH_SECONDS, self.flush_hits)),
            asyncio.create_task(self._every(PRUNE_SECONDS, self.retention.prune)),
            asyncio.create_task(self._every(metrics.MARK_SECONDS, self._mark_tally)),
            asyncio.create_task(self._every(BACKLOG_SECONDS, self.backlog.flush)),
        ]
        if self.scrub is not None:
            self._tasks.append(asyncio.create_task(self.scrub.run(self), name="scrub"))
        if self.settings.evict_unused is not None:
            unused = self._every(DAY, self.evict_unused, at_start=True)
            self._tasks.append(asyncio.create_task(unused, name="evict-unused"))

    async def stop(self) -> None:
        await cancel_all(self._tasks, "cache")
        await self.revalidator.stop()
        await self.fills.stop()
        await self.flush_hits()
        await self.backlog.flush()
        await self.close()

    async def close(self) -> None:
        await self.blobs.close()
        await self.metadata.close()

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
        """The artifact this request may read under `key`, if cached.

        Hits are remembered for LOOKUP_SECONDS: a hot artifact costs one query a
        second, not one per request. Whatever changes what a key resolves to
        passes through record() (fill finished, deleted, quarantined), which
        forgets the key; the short life bounds what another host's change
        to a shared store can leave stale.
        """
        scope = self.policy.scope_of(authorization)
        now = time.monotonic()
        remembered = self._recent.get((key, scope))
        if remembered and remembered[0] > now:
            return remembered[1]
        artifact = await self.metadata.find_artifact(key, readable(scope))
        if artifact is not None:
            if len(self._recent) >= LOOKUP_ENTRIES:
                self._recent.clear()
            self._recent[(key, scope)] = (now + LOOKUP_SECONDS, artifact)
            self.revalidator.kick(artifact)
        return artifact

    async def lookup_digest(self, sha256: str, authorization: str | None) -> Artifact | None:
        """An artifact with this SHA-256 that this request may read, if cached.

        A digest names no origin, so there is nothing to record or fill when
        none is: the caller answers 404. Credential scope holds as for a key.
        """
        scope = self.policy.scope_of(authorization)
        return await self.metadata.find_artifact_by_sha256(sha256, readable(scope))

    def _forget(self, key: str) -> None:
        for remembered in [k for k in self._recent if k[0] == key]:
            del self._recent[remembered]

    def count_hit(self, artifact: Artifact, sent_bytes: int | None = None) -> None:
        """Count a hit (and the bytes sent, all of the blob unless said) in
        memory; counts reach the store in batches, so the read path never
        waits for a disk write."""
        count, _ = self._hits.get(artifact.id, (0, 0.0))
        self._hits[artifact.id] = (count + 1, time.time())
        self.tally.hit(artifact.size if sent_bytes is None else sent_bytes)

    async def flush_hits(self) -> None:
        if self._hits:
            batch, self._hits = self._hits, {}
            try:
                await self.metadata.add_hits(batch)
            except self.metadata.unavailable as err:
                for artifact_id, (count, last) in batch.items():  # kept for the next flush
                    newer, latest = self._hits.get(artifact_id, (0, 0.0))
                    self._hits[artifact_id] = (count + newer, max(last, latest))
                log.warning("hits.unflushed", artifacts=len(batch), error=str(err))

    async def blob_damaged(self, artifact: Artifact, problem: str) -> None:
        """The read path found the artifact's blob not as stored (`problem`):
        check again and quarantine it, so the next request fills afresh."""
        log.warning("hit.damaged", url=artifact.key, sha256=artifact.sha256, problem=problem)
        await verify.confirm(self, artifact.sha256, artifact.size, "read")

    def integrity(self) -> dict[str, Any]:
        """The scrub's progress and the last verification's findings (UI, /metrics)."""
        scrub, last = self.scrub, self.last_verification
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
        runs = [self.verification, self._verified, self.scrub.last if self.scrub else None]
        ended = [run for run in runs if run is not None and run.finished]
        return max(ended, key=lambda run: run.finished_at or 0.0, default=None)

    async def miss(
        self, url: str, key: str, authorization: str | None, waiting: bool = False
    ) -> MissOutcome:
        """Record a miss and, in auto mode, start or join its fill. `waiting`:
        the client waits for the bytes (a GET, served from the fill). The read
        path counts it in the tally: it knows whether the client comes back.
        The list of misses is bookkeeping: if the store can't be written (a
        full disk), the client still gets its answer."""
        scope = self.policy.scope_of(authorization)
        now = time.time()
        running = self.fills.active(key, scope)
        if running:
            await self._note_miss(key, None, "being fetched", now)
            return MissOutcome("being fetched now; ask again shortly", running)
        refusal = self.policy.refuse_reason(url)
        if refusal:
            await self._note_miss(key, None, f"refused: {refusal}", now)
            if self.retention.refusal_worth_an_event(key):
                await self.record(events.FillRefused(url=self.display(url), reason=refusal))
            return MissOutcome(f"not fetched: {refusal}")
        if self.settings.curate:
            # Keep the full URL: the fill an operator may approve needs it.
            await self._note_miss(key, url, AWAITING_APPROVAL, now)
            return MissOutcome("recorded for an operator to approve")
        waiting = waiting and self.settings.stream_fills
        turned_away = self.fills.admission.refusal(key, scope, waiting)
        if turned_away:
            await self._note_miss(key, None, f"not fetched: {turned_away}", now)
            return MissOutcome(f"not fetched: {turned_away}")
        full = await self._no_room()
        if full:
            await self._note_miss(key, None, f"refused: {full}", now)
            return MissOutcome(f"not fetched: {full}")
        # Noted first: a fill that fails at once sets the miss's reason, and a
        # note written after that would hide why.
        await self._note_miss(key, None, "being fetched", now)
        try:
            fill, _ = await self.fills.request(url, key, scope, authorization, "miss")
        except self.metadata.unavailable as err:
            log.warning("miss.unqueued", url=self.display(url), error=str(err))
            return MissOutcome(f"not fetched: the cache can't queue a fill now: {err}")
        return MissOutcome("queued for download; ask again shortly", fill)

    async def _note_miss(self, key: str, url: str | None, reason: str, now: float) -> None:
        try:
            await self.metadata.record_miss(key, url, clip(reason, MAX_REASON), now)
            await self.retention.wrote(misses=1)
        except self.metadata.unavailable as err:
            log.warning("miss.unrecorded", url=self.display(key), error=str(err))

    async def _no_room(self) -> str | None:
        """Why no fill may start now: the disk below --min-free, or the store
        at --max-bytes (stored plus promised to running fills)."""
        downloader = self.fills.downloader
        low = downloader.disk.low()
        if low and not (downloader.evict and downloader.evict_frees_disk):
            return low
        cap = self.settings.max_bytes
        if cap is None or downloader.evict is not None:  # the fill evicts to fit, or is refused
            return None
        _, stored = await self.metadata.totals()
        if stored + await self.metadata.reserved_bytes() >= cap:
            return "the cache is full (--max-bytes)"
        return None

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
            keys.check_origin(url)
        except keys.BadURL as err:
            raise BadInput(str(err)) from None
        if isinstance(expected, str):
            try:
                expected = Digest.sha256(expected)
            except BadDigest as err:
                raise BadInput(f"expected {err}") from None
        refusal = self.policy.refuse_reason(url)
        if refusal:
            raise ActionError(f"not fetched: {refusal}")
        key = self.key(url)
        if not refresh:
            cached = await self.metadata.find_artifact(key, (PUBLIC,))
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
        fill, created = await self.fills.request(
            url, key, PUBLIC, None, "operator", expected, actor
        )
        if not created and expected not in (None, fill.record.expected):
            raise ActionError(
                "a fill for this URL is already queued or running, without this expected "
                f"{expected.label}"  # type: ignore[union-attr]
            )
        return Added(fill=fill.record, created=created)

    async def approve(self, key: str, actor: str | None = None) -> FillRecord:
        """Fetch a recorded miss (what an operator does in curate mode)."""
        miss = await self.metadata.get_miss(key)
        if miss is None:
            raise NotFound("no such miss")
        if miss.clipped:  # filed under a shortened key: only its URL names the artifact
            if miss.url is None:
                raise BadInput("this miss's URL was too long to keep whole: add it by its URL")
            key = self.key(miss.url)
        fill, _ = await self.fills.request(
            miss.url or key, key, PUBLIC, None, "operator", actor=actor
        )
        await self.metadata.set_miss_reason(key, "approved; being fetched")
        return fill.record

    async def dismiss(self, key: str, actor: str | None = None) -> None:
        miss = await self.metadata.delete_miss(key)
        if miss is None:
            raise NotFound("no such miss")
        await self.record(events.MissDismissed(url=self.display(key), actor=actor))

    async def cancel(self, fill_id: int, actor: str | None = None) -> None:
        if await self.fills.cancel(fill_id, actor):
            return
        record = await self.metadata.get_fill(fill_id)
        if record is None:
            raise NotFound("no such fill")
        raise ActionError(f"fill is {record.state}, not queued or running")

    async def retry(self, fill_id: int, actor: str | None = None) -> FillRecord:
        """Queue a failed or cancelled fill again (from its display URL: a
        query string that was not part of the key is not kept)."""
        record = await self.metadata.get_fill(fill_id)
        if record is None:
            raise NotFound("no such fill")
        if record.state not in (FillState.FAILED, FillState.CANCELLED):
            raise ActionError(f"fill is {record.state}, not failed or cancelled")
        if record.credentialed:
            raise ActionError("this fill used a client's credentials; the client must ask again")
        if record.imported:
            raise ActionError("an import's bytes came from its uploader: import it again")
        # Asked again: what the last failure said of the URL no longer holds.
        self.fills.admission.forget(record.key, record.scope)
        fill, _ = await self.fills.request(
            record.url, record.key, record.scope, None, "operator", record.expected, actor
        )
        return fill.record

    async def delete(self, artifact_id: int, actor: str | None = None) -> Artifact:
        artifact = await self.metadata.delete_artifact(artifact_id)
        if artifact is None:
            raise NotFound("no such artifact")
        await self.reclaim.release(artifact.sha256)
        await self.record(
            events.ArtifactDeleted(
                url=artifact.key, actor=actor, sha256=artifact.sha256, size=artifact.size
            )
        )
        return artifact

    async def pin(self, artifact_id: int, pinned: bool, actor: str | None = None) -> Artifact:
        """Pin an artifact (never evicted, never revalidated but when an
        operator asks), or unpin it."""
        artifact = await self.metadata.set_pinned(artifact_id, pinned)
        if artifact is None:
            raise NotFound("no such artifact")
        self._forget(artifact.key)
        kind = events.ArtifactPinned if pinned else events.ArtifactUnpinned
        await self.record(kind(url=artifact.key, actor=actor, artifact_id=artifact.id))
        return artifact

    def origins(self) -> list[Unhealthy]:
        """The origins misses leave alone, or whose last fill failed."""
        return self.fills.admission.origins.unhealthy()

    async def unblock(self, origin: str, actor: str | None = None) -> Unhealthy:
        """Let misses try an unhealthy origin again now."""
        found = self.fills.admission.origins.unblock(origin)
        if found is None:
            raise NotFound(f"{origin} is not marked unhealthy")
        await self.fills.origin_unblocked(origin)
        await self.record(events.OriginUnblocked(actor=actor, origin=origin))
        return found

    async def eviction_next(self, limit: int) -> list[EvictionCandidate]:
        """The unpinned artifacts eviction would take first (the least recently used)."""
        return await self.metadata.eviction_candidates(limit)

    async def refresh(self, artifact_id: int, actor: str | None = None) -> Outcome:
        """Ask the artifact's origin now whether it changed (and fetch it if
        it did), pinned or not; what came of it, or "running" if the new bytes
        take longer than REFRESH_WAIT_SECONDS to fetch."""
        artifact = await self.metadata.get_artifact(artifact_id)
        if artifact is None:
            raise NotFound("no such artifact")
        if artifact.scoped:
            raise ActionError("a credential-scoped artifact is fetched only with its credentials")
        if artifact.imported:
            raise ActionError("an import has no origin to ask: import it again")
        try:
            outcome = await asyncio.wait_for(
                self.revalidator.revalidate(artifact, actor), REFRESH_WAIT_SECONDS
            )
        except TimeoutError:  # new bytes are being fetched: it goes on
            return Outcome("running", artifact)
        if outcome.outcome == "busy":
            raise ActionError("it is being revalidated already (here or by another host)")
        return outcome

    async def _refill(self, artifact: Artifact) -> Artifact:
        """Fetch the new bytes of a changed artifact (the fill's commit has the
        old blob deleted once no artifact uses it and no read of it is in flight)."""
        fill, _ = await self.fills.request(
            artifact.key, artifact.key, artifact.scope, None, REVALIDATION
        )
        return await fill.result()

    def _origin_blocked(self, key: str) -> bool:
        return self.fills.admission.origins.blocked(origin_of(key)) is not None

    async def _origin_failed(self, key: str, error: str) -> None:
        unhealthy = self.fills.admission.origins.failed(origin_of(key), error)
        await self.record(
            events.OriginUnhealthy(
                origin=unhealthy.origin, error=error, failures=unhealthy.failures,
                seconds=round(unhealthy.until - time.time(), 1),
            )
        )  # fmt: skip

    async def evict_unused(self) -> int:
        """--evict-unused: evict unpinned artifacts not hit for that many days."""
        days = self.settings.evict_unused
        if days is None:
            return 0
        return await self.reclaim.evict_unused(time.time() - days * DAY)

    async def clear_finished(self, actor: str | None = None) -> int:
        count = await self.metadata.clear_finished_fills()
        await self.record(events.FillsCleared(actor=actor, count=count))
        return count

    async def verify(self, quarantine: bool, actor: str | None = None) -> Verification:
        """Start re-hashing every blob in the background (one run at a time)."""
        if self.verification and not self.verification.finished:
            raise ActionError("a verification is already running")
        self._verified = self.verification
        self.verification = Verification(quarantine=quarantine, actor=actor)
        task = asyncio.create_task(self.verification.run(self))
        self._tasks.append(task)  # so that stop() cancels a run in progress
        task.add_done_callback(self._tasks.remove)
        return self.verification

    # -- API tokens

    async def create_token(
        self, name: str, scope: TokenScope, actor: str | None = None
    ) -> tuple[TokenRecord, str]:
        """A new API token: its record, and the token itself (shown once, never kept)."""
        try:
            tokens.check_name(name)
        except tokens.BadTokenName as err:
            raise BadInput(str(err)) from None
        if len(await self.metadata.list_tokens()) >= MAX_TOKENS:
            raise ActionError(f"there are {MAX_TOKENS} tokens already; revoke some first")
        secret, digest = tokens.new()
        record = await self.metadata.add_token(name, scope, digest, actor, time.time())
        if record is None:
            raise ActionError(f"a token named {name!r} exists already")
        await self.record(events.TokenCreated(actor=actor, name=name, scope=scope.value))
        return record, secret

    async def revoke_token(self, name: str, actor: str | None = None) -> TokenRecord:
        record = await self.metadata.delete_token(name)
        if record is None:
            raise NotFound("no such token")
        await self.record(events.TokenRevoked(actor=actor, name=name, scope=record.scope.value))
        return record

    async def authenticate(self, secret: str) -> TokenRecord | None:
        """The token record `secret` is the token of, if it is current."""
        if not tokens.looks_like_token(secret):
            return None
        record = await self.metadata.find_token(tokens.digest(secret))
        now = time.time()
        if record and (record.last_used or 0) < now - TOKEN_USE_RESOLUTION:
            await self.metadata.token_used(record.id, now)
        return record

    # -- state and bookkeeping

    async def health(self) -> dict[str, Any]:
        """The header strip's and /healthz's figures. `degraded`: hits are
        served, but fills are refused or the store can't record (`problems`)."""
        count, stored = await self.metadata.totals()
        problems = []
        low = self.fills.downloader.disk.low()
        if low:
            problems.append(f"{low}: no fill starts")
        if self.backlog:
            problems.append(
                f"{len(self.backlog)} changes wait for the metadata store to take writes"
            )
        return {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "version": __version__,
            "mode": self.settings.mode,
            "artifacts": count,
            "bytes_stored": stored,
            "max_bytes": self.settings.max_bytes,
            "free_bytes": self.blobs.free_bytes(),
        }

    async def work(self) -> dict[str, Any]:
        """What waits on the cache-host (to alert on a stuck queue) and what
        the latest verification found (to alert on bit rot)."""
        md = self.metadata
        verified = self.last_verification
        return {
            "queued_fills": (await md.list_fills((FillState.QUEUED,), limit=0)).total,
            "running_fills": (await md.list_fills((FillState.RUNNING,), limit=0)).total,
            "awaiting_approval": await md.count_misses(AWAITING_APPROVAL),
            "verify_running": bool(self.verification and not self.verification.finished),
            "verified_at": verified.finished_at if verified else None,
            "verified_blobs": verified.checked if verified else None,
            "bad_blobs": len(verified.corrupt) if verified else None,
            "origins_up": self.fills.admission.origins.states(),
        }

    async def record(self, event: events.Event) -> None:
        """Append an event to the audit log (now, or once the store takes
        writes again) and write its log line."""
        detail = event.detail()
        self.tally.observe(event)
        # Before any await: whoever the event wakes must not read a stale memo.
        if isinstance(event, (events.FillFinished, *events.ARTIFACT_REMOVED)) and event.url:
            self._forget(self.key(event.url))
        log.info(event.kind, url=event.url, actor=event.actor, **detail)
        now, md = time.time(), self.metadata
        stored_url = clip(event.url, MAX_EVENT_TEXT) if event.url else event.url
        stored_detail = clip_detail(detail)

        async def add() -> None:
            await md.add_event(event.kind, stored_url, event.actor, stored_detail, now)
            await self.retention.wrote(events=1)

        await self.backlog.write(event.kind, add)
        if isinstance(event, events.FillFailed) and event.url:
            key = self.key(event.url)
            absent = self.fills.admission.absent.get(key, PUBLIC)
            said = absent.describe() if absent else f"fill failed: {event.error}"
            reason = clip(said, MAX_REASON)
            await self.backlog.write("miss reason", lambda: md.set_miss_reason(key, reason))

    @functools.lru_cache(maxsize=1024)  # noqa: B019 (one Cache per process)
    def key(self, url: str) -> str:
        """The cache key of `url` under this server's settings; BadURL if invalid."""
        return keys.cache_key(url, self.settings.keep_query)

    def display(self, url: str) -> str:
        return keys.display_url(url, self.settings.keep_query)

    async def _mark_tally(self) -> None:
        self.tally.mark()
