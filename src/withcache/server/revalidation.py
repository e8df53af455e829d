"""Revalidation of URLs that can change (--revalidate): is a cached artifact
still what its origin serves?

An artifact a rule matches is due once its bytes are older than the rule's
maximum age (since they were fetched, or since the origin last said they are
current). A hit never waits for it: the stored blob is served and, when the
artifact is due, a revalidation starts in the background (stale-while-
revalidate). At most one runs per artifact at a time, across hosts: the
metadata store's claim (claim_revalidation) decides who asks.

The origin is asked by its check (`OriginCheck`; by default a conditional
GET with If-None-Match: its ETag and If-Modified-Since: its Last-Modified):
304 means fresh again; a 200 means other bytes, so a fill fetches them while
clients go on getting the old blob, then the key points at the new one (and
the old blob is deleted once no artifact uses it); an error means the stale
blob goes on being served, every answer of this host saying so
(`Withcache-Stale`), and this host asks again only after RETRY_SECONDS (and
not while the origin is marked unhealthy). Pinned artifacts and credential-
scoped ones (their credentials are not kept) are revalidated only when an
operator asks (`refresh`). Each revalidation is an `artifact.revalidated`
event with its outcome: fresh, changed or stale-served.

Other ways of naming an origin (an OCI tag, say) plug in their own check
with `Revalidator.add_check`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import aiohttp

from withcache.server import events, log
from withcache.server.fill.fill import FillError
from withcache.server.records import Artifact
from withcache.server.settings import Settings
from withcache.server.store import Metadata

CLAIM_SECONDS = 120.0  # a host's hold on an artifact's revalidation (renewed by none)
RETRY_SECONDS = 60.0  # after a failed one, this host leaves the artifact alone this long
BUSY_SECONDS = 5.0  # after finding another host at it, hits here don't ask again for this long
MAX_FAILED = 10_000  # failed revalidations remembered (the oldest go first)
STALE_HEADER = "Withcache-Stale"
STALE_NOTE_CHARS = 200


class Verdict(StrEnum):
    FRESH = "fresh"  # the origin says the stored bytes are current
    CHANGED = "changed"  # the origin has other bytes now
    FAILED = "failed"  # the origin could not say


@dataclass(frozen=True)
class Check:
    verdict: Verdict
    error: str | None = None
    origin_fault: bool = False  # the origin itself is failing (see origins.py)


class OriginCheck(Protocol):
    async def __call__(self, artifact: Artifact) -> Check:
        """Ask the artifact's origin whether its stored bytes are current."""
        ...


Get = Callable[[str, str | None, dict[str, str]], Awaitable[aiohttp.ClientResponse]]


class ConditionalGet:
    """The default check: a conditional GET of the artifact's URL, its body
    never read (a 200 is fetched by a fill)."""

    def __init__(self, get: Get) -> None:
        self._get = get  # FillManager.open_get: redirects checked hop by hop

    async def __call__(self, artifact: Artifact) -> Check:
        headers = {"Accept-Encoding": "identity"}
        if artifact.etag:
            headers["If-None-Match"] = artifact.etag
        if "Last-Modified" in artifact.headers:
            headers["If-Modified-Since"] = artifact.headers["Last-Modified"]
        try:
            response = await self._get(artifact.key, None, headers)
        except FillError as err:
            return Check(Verdict.FAILED, str(err), err.origin_fault)
        try:
            status, etag = response.status, response.headers.get("ETag")
        finally:
            response.close()  # the body, if any, is the fill's to fetch
        if status == 304:
            return Check(Verdict.FRESH)
        if status == 200:
            # An origin that ignores the conditions but names the same version.
            same = artifact.etag is not None and etag == artifact.etag
            return Check(Verdict.FRESH if same else Verdict.CHANGED)
        return Check(Verdict.FAILED, f"origin answered {status}", status >= 500)


@dataclass(frozen=True)
class Outcome:
    """What a revalidation did (`outcome`: an ArtifactRevalidated outcome, or
    "busy": another one holds the artifact)."""

    outcome: str
    artifact: Artifact
    error: str | None = None


@dataclass(frozen=True)
class _Failed:
    error: str
    at: float  # Unix time


class Revalidator:
    def __init__(
        self,
        settings: Settings,
        metadata: Metadata,
        check: OriginCheck,
        refill: Callable[[Artifact], Awaitable[Artifact]],
        record: Callable[[events.Event], Awaitable[None]],
        forget: Callable[[str], None],
        origin_blocked: Callable[[str], bool],
        origin_failed: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self._settings = settings
        self._metadata = metadata
        self._checks: list[tuple[Callable[[str], bool], OriginCheck]] = []
        self._default = check
        self._refill = refill  # fetch the new bytes by a fill; the artifact they made
        self._record = record
        self._forget = forget  # the key's remembered lookup
        self._blocked = origin_blocked
        self._origin_failed = origin_failed
        self._running: dict[int, asyncio.Task[Outcome]] = {}
        self._failed: OrderedDict[int, _Failed] = OrderedDict()
        self._busy: dict[int, float] = {}  # artifact id -> until when another host has it
        self._max_age: dict[str, float | None] = {}  # key -> its rule's maximum age

    def add_check(self, matches: Callable[[str], bool], check: OriginCheck) -> None:
        """Ask the origins of the keys `matches` accepts with `check` instead
        of a conditional GET (the first match wins)."""
        self._checks.append((matches, check))

    def max_age(self, key: str) -> float | None:
        """The maximum age of the artifact under `key`, if a rule matches it."""
        if key not in self._max_age:
            if len(self._max_age) >= MAX_FAILED:
                self._max_age.clear()
            self._max_age[key] = self._settings.revalidate_after(key)
        return self._max_age[key]

    def due(self, artifact: Artifact, now: float | None = None) -> bool:
        """Whether the artifact is past its maximum age (a rule matches it)."""
        age = self.max_age(artifact.key)
        now = time.time() if now is None else now
        return age is not None and now - artifact.current_since >= age

    def stale(self, artifact: Artifact) -> str | None:
        """Why this host serves the artifact's bytes without its origin's word
        (its last revalidation failed), for the Withcache-Stale header and the UI."""
        failed = self._failed.get(artifact.id)
        if failed is None or not self.due(artifact):
            return None
        note = f"revalidation failed: {failed.error}"
        # A header value: printable ASCII, one line, short.
        return "".join(c if " " <= c <= "~" else "?" for c in note)[:STALE_NOTE_CHARS]

    def kick(self, artifact: Artifact) -> None:
        """On a hit: start a revalidation in the background if one is due
        (the hit never waits for it)."""
        if not self._settings.revalidate or artifact.pinned or artifact.scoped:
            return
        now = time.time()
        if artifact.id in self._running or not self.due(artifact, now):
            return
        failed = self._failed.get(artifact.id)
        if failed is not None and now - failed.at < RETRY_SECONDS:
            return
        if self._busy.get(artifact.id, 0.0) > now:
            return
        if self._blocked(artifact.key):
            return
        self._start(artifact, None)

    async def revalidate(self, artifact: Artifact, actor: str | None = None) -> Outcome:
        """Revalidate now (an operator's refresh; pinned or not): wait for the
        one running here, else run one, unless another host holds it."""
        running = self._running.get(artifact.id)
        if running is None:
            running = self._start(artifact, actor)
        return await asyncio.shield(running)

    def _start(self, artifact: Artifact, actor: str | None) -> asyncio.Task[Outcome]:
        task = asyncio.create_task(self._run(artifact, actor), name=f"revalidate-{artifact.id}")
        self._running[artifact.id] = task
        task.add_done_callback(lambda _: self._running.pop(artifact.id, None))
        return task

    async def stop(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, artifact: Artifact, actor: str | None) -> Outcome:
        now = time.time()
        if not await self._metadata.claim_revalidation(artifact.id, now, now + CLAIM_SECONDS):
            if len(self._busy) >= MAX_FAILED:
                self._busy.clear()
            self._busy[artifact.id] = now + BUSY_SECONDS
            return Outcome("busy", artifact)
        self._busy.pop(artifact.id, None)
        try:
            outcome = await self._ask(artifact)
        except BaseException:
            await self._metadata.end_revalidation(artifact.id, None)
            raise
        self._forget(artifact.key)
        event = events.ArtifactRevalidated(
            url=artifact.key, actor=actor, outcome=outcome.outcome,
            sha256=outcome.artifact.sha256, previous=artifact.sha256, error=outcome.error,
        )  # fmt: skip
        await self._record(event)
        return outcome

    async def _ask(self, artifact: Artifact) -> Outcome:
        check = next((c for matches, c in self._checks if matches(artifact.key)), self._default)
        answer = await check(artifact)
        if answer.verdict is Verdict.FRESH:
            await self._metadata.end_revalidation(artifact.id, time.time())
            self._failed.pop(artifact.id, None)
            return Outcome("fresh", artifact)
        if answer.verdict is Verdict.CHANGED:
            try:
                fresh = await self._refill(artifact)
            except Exception as err:  # the fill failed: the old bytes stay
                answer = Check(Verdict.FAILED, f"the fill of the new bytes failed: {err}")
            else:
                self._failed.pop(artifact.id, None)
                await self._metadata.end_revalidation(fresh.id, None)
                changed = fresh.sha256 != artifact.sha256
                return Outcome("changed" if changed else "fresh", fresh)
        error = answer.error or "no answer"
        await self._metadata.end_revalidation(artifact.id, None)
        self._failed.pop(artifact.id, None)
        self._failed[artifact.id] = _Failed(error, time.time())
        while len(self._failed) > MAX_FAILED:
            self._failed.popitem(last=False)
        if answer.origin_fault:
            await self._origin_failed(artifact.key, error)
        log.warning("revalidation.failed", url=artifact.key, error=error)
        return Outcome("stale-served", artifact, error)
