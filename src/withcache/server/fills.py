"""The fill manager: the queue of fills and the workers that run them.

The queue lives in the metadata store, so queued and interrupted fills survive
a restart. `--workers` tasks claim fills one at a time. There is at most one
fill per (key, scope): a second request for a key being filled joins the
`Fill` already under way, so an artifact is pulled from its origin once.

Several cache-hosts may share one store. A host claims a fill under a lease
that a heartbeat renews; a fill whose host stopped renewing is taken over by
another (started afresh: the partial bytes were the dead host's). A host that
finds its lease gone (taken over, or cancelled elsewhere) drops its transfer,
and its commit is refused. In a shared store, a fill not running here is
watched through the store, so its waiters here learn when it ends.

The transfer itself is download.py's; here a fill's bytes are checked against
any expected SHA-256 and only then committed, blob first, then its row. A
body whose end can't be checked (no length, no chunked framing) is not
stored unless an expected SHA-256 vouches for it. Whatever goes wrong, a
failed or cancelled fill leaves neither blob nor row, and everyone waiting on
it learns at once; recording the failure may wait (backlog.py) for a store
that can't be written just now (a full disk).

A fill interrupted by a crash or a restart goes on from its partial file,
which start-up keeps (instead of removing it with the other leftovers) while
the fill's saved resume point names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from withcache import keys
from withcache.server import events, log
from withcache.server.admission import Admission
from withcache.server.backlog import Backlog
from withcache.server.download import Downloader, Emit, FillError
from withcache.server.policy import Policy
from withcache.server.settings import Settings
from withcache.server.store import (
    ACTIVE_STATES,
    Artifact,
    Blobs,
    BlobWriter,
    FillRecord,
    FillState,
    Lease,
    Metadata,
)

WATCH_SECONDS = 0.25  # how often a fill running on another host is looked at
QUEUE_POLL_SECONDS = 5.0  # idle workers look for fills other hosts queued this often
CANCEL_WAIT_SECONDS = 5.0  # a cancel waits this long for the transfer to wind down
# Fills a waiting client may start at once beside the --workers: each would
# otherwise be that client's own download from the origin. The bound keeps a
# flood of probes from opening origin connections without end; probes (HEAD)
# may take only half, so a flood of them leaves room for clients that GET.
CLIENT_FILLS = 32
PROBE_FILLS = CLIENT_FILLS // 2
ACTIVE_PAGE = 1000  # active fills read per query at start, for their resume points
UNFRAMED = (
    "the origin sent neither a length nor chunked framing, so a body cut short can't be "
    "told from a whole one: not stored (add the URL with its expected SHA-256 to cache it)"
)


class FillCancelled(Exception):
    """The fill was cancelled by an operator."""


class FillLost(Exception):
    """This host's lease on the fill is gone: another host took it over."""


@dataclass(eq=False)
class Fill:
    """A fill queued or running in this process, shared by all who wait on it."""

    record: FillRecord
    authorization: str | None = field(default=None, repr=False)
    bytes_done: int = 0  # bytes written to `path` so far, readable by others
    total: int | None = None
    path: Path | None = None  # the partial blob's local file, once the transfer runs
    headers: Mapping[str, str] | None = None  # the origin's replayed headers, once it answered
    generation: int = 0  # bumped when the transfer starts over from byte 0
    started: float | None = None
    clients: int = 0  # requests streaming from this fill (read-through)
    validator: str | None = None  # origin's ETag or Last-Modified, for resuming
    unframed: bool = False  # the body ends where the origin closes: its end can't be checked
    reserved: int = 0  # bytes of --max-bytes the store has promised this fill
    _checkpoint: asyncio.Future[None] | None = None  # saving a resume point
    _cancel_requested: bool = False
    _cancelled_by: str | None = None
    _lost: bool = False  # the heartbeat found the lease gone
    _settled: bool = False  # committing or ending: the heartbeat leaves it alone
    _task: asyncio.Task[None] | None = None  # the transfer, when it runs on this host
    _watcher: asyncio.Task[None] | None = None  # looks at the store while it doesn't
    _result: asyncio.Future[Artifact] = field(default_factory=lambda: _new_future())
    _progressed: asyncio.Future[None] = field(default_factory=lambda: _new_future())
    _rate_mark: tuple[float, int] = (0.0, 0)
    rate: float = 0.0  # bytes per second, smoothed

    @property
    def id(self) -> int:
        return self.record.id

    async def result(self) -> Artifact:
        """Wait for the fill; the artifact, or the FillError/FillCancelled it ended with."""
        return await asyncio.shield(self._result)

    async def progressed(self) -> None:
        """Wait until more bytes are readable or the fill ended."""
        await asyncio.shield(self._progressed)

    @property
    def finished(self) -> bool:
        return self._result.done()

    @property
    def elsewhere(self) -> bool:
        """Running on another cache-host: its bytes can't be read here."""
        return self._task is None and self.record.state is FillState.RUNNING

    @property
    def error(self) -> BaseException | None:
        """Why the fill ended badly; None while it runs and once it succeeded."""
        return self._result.exception() if self._result.done() else None

    async def wait_started(self, timeout: float) -> bool:
        """Wait until the origin answered (True), or the fill ended, runs on
        another host, or the time ran out."""
        deadline = time.monotonic() + timeout
        while self.headers is None and not self.finished and not self.elsewhere:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progressed(), remaining)
        return self.headers is not None and self.error is None

    def _advance(self, bytes_done: int) -> None:
        self.bytes_done = bytes_done
        now = time.monotonic()
        mark_time, mark_bytes = self._rate_mark
        if now - mark_time >= 1.0:
            if mark_time:
                sample = (bytes_done - mark_bytes) / (now - mark_time)
                self.rate = sample if not self.rate else 0.5 * self.rate + 0.5 * sample
            self._rate_mark = (now, bytes_done)
        self._wake()

    def _wake(self) -> None:
        waiting, self._progressed = self._progressed, _new_future()
        waiting.set_result(None)

    def _end(self, artifact: Artifact | None, error: BaseException | None) -> None:
        if not self._result.done():
            if error is None:
                self._result.set_result(artifact)  # type: ignore[arg-type]
            else:
                self._result.set_exception(error)
                self._result.exception()  # nobody waiting is fine: don't warn
        self._wake()


def _new_future() -> asyncio.Future:  # type: ignore[type-arg]
    return asyncio.get_running_loop().create_future()


class FillManager:
    def __init__(
        self, settings: Settings, metadata: Metadata, blobs: Blobs, policy: Policy, emit: Emit,
        backlog: Backlog,
    ) -> None:  # fmt: skip
        self._settings = settings
        self._metadata = metadata
        self._blobs = blobs
        self._policy = policy
        self._emit = emit
        self._backlog = backlog
        self._by_key: dict[tuple[str, str], Fill] = {}
        self._by_id: dict[int, Fill] = {}
        # This process, as the holder of leases in a store other hosts may share.
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.downloader = Downloader(settings, metadata, policy, emit, self.holder, self._promised)
        self.admission = Admission(settings)
        self._wakeup = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._client_fills: set[asyncio.Task[None]] = set()
        self._probe_fills: set[asyncio.Task[None]] = set()
        self._kept: dict[str, int] = {}  # partial files kept at start -> their fill's id

    def _lease(self) -> Lease:
        return Lease(self.holder, time.time() + self._settings.fill_lease)

    async def start(self) -> None:
        interrupted = await self._metadata.requeue_interrupted()
        self._kept = await self._resumable()
        cleaned = await self._blobs.clean_temp(self._kept)
        if interrupted or cleaned or self._kept:
            log.info(
                "fills.recovered", requeued=interrupted, partial_blobs_removed=cleaned,
                partial_blobs_kept=len(self._kept),
            )  # fmt: skip
        self.downloader.open()
        self._workers = [
            asyncio.create_task(self._work(), name=f"fill-worker-{n}")
            for n in range(self._settings.workers)
        ]
        self._workers.append(asyncio.create_task(self._keep_leases(), name="fill-leases"))

    async def _resumable(self) -> dict[str, int]:
        """The partial files active fills' resume points name."""
        found: dict[str, int] = {}
        offset = 0
        while True:
            page = await self._metadata.list_fills(ACTIVE_STATES, offset, ACTIVE_PAGE)
            for record in page.rows:
                if record.resume and record.resume.get("file"):
                    found[str(record.resume["file"])] = record.id
            offset += ACTIVE_PAGE
            if offset >= page.total or not page.rows:
                return found

    def _promised(self, fill: Fill) -> int:
        """The bytes the other fills running here still have to write to the disk."""
        return sum(
            max(0, other.total - other.bytes_done)
            for other in self._by_id.values()
            if other is not fill and other._task is not None and other.total is not None
        )

    async def stop(self) -> None:
        """Stop the workers. Running fills stay `running` in the store and are
        queued again at the next start (or taken over when their lease ends),
        resuming from their partial files."""
        watchers = [f._watcher for f in self._by_id.values() if f._watcher]
        await _cancel_all([*self._workers, *self._client_fills, *watchers])
        await self.downloader.close()

    # -- what the rest of the cache-host calls

    def active(self, key: str, scope: str) -> Fill | None:
        return self._by_key.get((key, scope))

    def live(self, fill_id: int) -> Fill | None:
        return self._by_id.get(fill_id)

    async def request(
        self,
        url: str,
        key: str,
        scope: str,
        authorization: str | None,
        requested_by: str,
        expected_sha256: str | None = None,
        actor: str | None = None,
    ) -> tuple[Fill, bool]:
        """Queue a fill for `url`, or join the one under way; (fill, created)."""
        existing = self._by_key.get((key, scope))
        if existing:
            return existing, False
        # Credentials live only in this process: only this host may run the fill.
        lease = self._lease() if authorization is not None else None
        record, created = await self._metadata.enqueue_fill(
            key, scope, url, requested_by, time.time(),
            expected_sha256=expected_sha256, credentialed=authorization is not None, lease=lease,
        )  # fmt: skip
        fill = self._by_id.get(record.id)
        if fill is None:
            fill = self._adopt(record)
            if self._metadata.shared:
                # Until a worker here claims it, the fill may run (or end) elsewhere.
                fill._watcher = asyncio.create_task(
                    self._watch(fill), name=f"fill-watch-{record.id}"
                )
        if created:
            fill.authorization = authorization
            if requested_by == "miss":
                self.admission.count(record.id, key)
            self._wakeup.set()
            await self._emit(
                events.FillQueued(url=self._display(url), actor=actor, requested_by=requested_by)
            )
        return fill, created

    async def start_for_client(self, fill: Fill, probe: bool = False) -> None:
        """Start a queued fill now, without waiting for a worker, because a
        client is waiting for its bytes: if the fill waited, that client would
        fetch the artifact from the origin itself, a second download.
        `probe`: the client only asked whether it is there (HEAD)."""
        if fill._task or fill.elsewhere or fill.finished or len(self._client_fills) >= CLIENT_FILLS:
            return  # running here or on another host, ended, or too many already
        if probe and len(self._probe_fills) >= PROBE_FILLS:
            return  # the rest is kept for clients that GET
        record = await self._metadata.claim_fill(time.time(), self._lease(), fill.id)
        if record is None:
            return  # claimed meanwhile (here or on another host), or ended
        task = self._launch(record)
        self._client_fills.add(task)
        task.add_done_callback(self._client_fills.discard)
        if probe:
            self._probe_fills.add(task)
            task.add_done_callback(self._probe_fills.discard)

    async def cancel(self, fill_id: int, actor: str | None = None) -> bool:
        fill = self._by_id.get(fill_id)
        if fill and fill._task:
            fill._cancel_requested = True
            fill._cancelled_by = actor
            fill._task.cancel()
            # Return once the fill has ended and its event is written, so the
            # page the operator sees next already shows it cancelled.
            await asyncio.wait([fill._task], timeout=CANCEL_WAIT_SECONDS)
            return True
        # Queued, or running on another host: that host sees it at its next heartbeat.
        record = await self._metadata.get_fill(fill_id)
        if record is None or record.state not in ACTIVE_STATES:
            return False
        ended = await self._metadata.finish_fill(
            fill_id, FillState.CANCELLED, "cancelled", self._display(record.url), time.time()
        )
        if ended is None:
            return False
        if fill:
            self._forget(fill)
            fill._end(None, FillCancelled("cancelled by an operator"))
        await self._emit(events.FillCancelled(url=ended.url, actor=actor, fill_id=fill_id))
        return True

    # -- workers

    def _adopt(self, record: FillRecord) -> Fill:
        fill = Fill(record, total=record.total)  # known if another host runs it
        self._by_key[(record.key, record.scope)] = fill
        self._by_id[record.id] = fill
        return fill

    def _forget(self, fill: Fill) -> None:
        if self._by_key.get((fill.record.key, fill.record.scope)) is fill:
            del self._by_key[(fill.record.key, fill.record.scope)]
        self._by_id.pop(fill.id, None)
        self.admission.release(fill.id)

    async def _work(self) -> None:
        poll = min(QUEUE_POLL_SECONDS, self._settings.fill_lease)
        while True:
            self._wakeup.clear()
            record = await self._metadata.claim_fill(time.time(), self._lease())
            if record is None:
                # Woken by a local enqueue; the timeout also picks up fills that
                # another host queued, or left behind when its lease ran out.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=poll)
                continue
            task = self._launch(record)
            try:
                await asyncio.wait([task])
            except asyncio.CancelledError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise

    def _launch(self, record: FillRecord) -> asyncio.Task[None]:
        """Run a fill this host has just claimed."""
        fill = self._by_id.get(record.id) or self._adopt(record)
        if fill._watcher:
            fill._watcher.cancel()
            fill._watcher = None
        fill.record = record
        fill.total, fill.reserved, fill.unframed = None, 0, False
        fill._task = asyncio.create_task(self._run(fill), name=f"fill-{record.id}")
        fill._task.add_done_callback(lambda task: self._ended(fill, task))
        return fill._task

    def _ended(self, fill: Fill, task: asyncio.Task[None]) -> None:
        """Whatever stopped a fill's task, no one may be left waiting on the fill."""
        if fill.finished:
            return
        if not task.cancelled() and task.exception() is not None:
            log.error("fill.crashed", exc_info=task.exception(), fill_id=fill.id)
        self._forget(fill)
        fill._end(None, FillError("the fill stopped unexpectedly", transient=True))

    async def _open_writer(self, fill: Fill) -> BlobWriter:
        """A writer going on from the fill's resume point, if this host kept
        the partial file it names; else a new one."""
        resume = fill.record.resume or {}
        name = str(resume.get("file", ""))
        if not resume.get("validator") or self._kept.pop(name, None) != fill.id:
            return self._blobs.begin()
        writer = await self._blobs.resume(name, int(resume.get("bytes", 0)))
        if writer is None:
            return self._blobs.begin()
        fill.validator, fill.total = str(resume["validator"]), resume.get("total")
        fill._advance(writer.size)
        log.info("fill.resuming", fill_id=fill.id, resume_from=writer.size)
        return writer

    async def _run(self, fill: Fill) -> None:
        record = fill.record
        display = self._display(record.url)
        fill.started = time.monotonic()
        writer: BlobWriter | None = None
        try:
            if record.credentialed and fill.authorization is None:
                raise FillError(
                    "the request's credentials are not kept across a restart; ask again"
                )
            writer = await self._open_writer(fill)
            fill.path = writer.path
            await self._emit(
                events.FillStarted(url=display, fill_id=record.id, resume_from=writer.size)
            )
            headers = await self.downloader.download(fill, writer, display)
            if record.expected_sha256 and writer.hexdigest() != record.expected_sha256.lower():
                raise FillError(
                    f"SHA-256 mismatch: expected {record.expected_sha256}, got {writer.hexdigest()}"
                )
            if fill.unframed and not record.expected_sha256:
                raise FillError(UNFRAMED, delivered=True)
            fill._settled = True
            artifact = await self._commit(fill, writer, headers, display)
            writer = None
        except asyncio.CancelledError:
            if fill._lost:
                if writer:
                    await writer.abort()
                await self._lose(fill)
                return
            if not fill._cancel_requested:  # shutting down: the fill resumes at next start
                if writer:
                    await writer.suspend()
                fill._end(None, FillError("the cache-host is shutting down", transient=True))
                raise
            if writer:
                await writer.abort()
            self._forget(fill)
            fill._end(None, FillCancelled("cancelled by an operator"))
            await self._record_end(
                record, FillState.CANCELLED, "cancelled", display,
                events.FillCancelled(url=display, actor=fill._cancelled_by, fill_id=record.id),
            )  # fmt: skip
            return
        except FillLost:
            await self._lose(fill)
            return
        except Exception as err:
            fill._settled = True
            if writer:
                await writer.abort()
            self._forget(fill)
            if not isinstance(err, FillError):
                log.error("fill.crashed", exc_info=True, url=display, fill_id=record.id)
                err = FillError(f"internal error: {type(err).__name__}: {err}")
            if not (record.credentialed and fill.authorization is None):
                # (A fill that lost its credentials says nothing of the URL:
                # the client's next request, with them, starts afresh.)
                self.admission.failed(
                    record.key, record.scope, str(err), err.transient, err.unreachable
                )
            # Everyone waiting learns first: recording it may have to wait for
            # the store (a full disk), and a client must never hang on that.
            fill._end(None, err)
            refused = [events.FillRefused(url=display, reason=str(err))] if err.refused else []
            await self._record_end(
                record, FillState.FAILED, str(err), display, *refused,
                events.FillFailed(url=display, fill_id=record.id, error=str(err)),
            )  # fmt: skip
            return
        self._forget(fill)
        self.admission.succeeded(record.key, record.scope)
        fill._end(artifact, None)
        await self._emit(
            events.FillFinished(
                url=display,
                fill_id=record.id,
                sha256=artifact.sha256,
                size=artifact.size,
                seconds=round(time.monotonic() - fill.started, 3),
            )
        )

    async def _record_end(
        self, record: FillRecord, state: FillState, error: str, display: str,
        *ended: events.Event,
    ) -> None:  # fmt: skip
        """Write a fill's end and its events, now or once the store takes writes."""
        now = time.time()

        async def finish() -> None:
            await self._metadata.finish_fill(record.id, state, error, display, now, self.holder)

        await self._backlog.write(f"fill {record.id} {state}", finish)
        for event in ended:
            await self._emit(event)

    async def _commit(
        self, fill: Fill, writer: BlobWriter, headers: Mapping[str, str], display: str
    ) -> Artifact:
        """Store the blob, then its row; FillLost if another host holds the fill now."""
        sha = writer.hexdigest()
        async with self._metadata.blob_lock(sha):
            try:
                location = await writer.commit()
            except OSError as err:
                raise FillError(f"cannot store the blob: {err.strerror or err}") from None
            try:
                artifact = await self._metadata.commit_artifact(
                    fill.record,
                    sha,
                    writer.size,
                    headers,
                    display,
                    time.time(),
                    self.holder,
                    location,
                )
            except Exception as err:
                with contextlib.suppress(Exception):  # no row points at it: don't keep it
                    if not await self._metadata.sha_in_use(sha):
                        await self._blobs.delete(sha)
                raise FillError(f"cannot record the artifact: {err}") from None
            if artifact is None:
                await writer.abort()  # what its commit stored, unrecorded
                if not await self._metadata.sha_in_use(sha):
                    await self._blobs.delete(sha)
        if artifact is None:
            raise FillLost()
        return artifact

    async def _lose(self, fill: Fill) -> None:
        """End a fill this host no longer holds, without touching its row."""
        self._forget(fill)
        record = await self._metadata.get_fill(fill.id)
        if record is not None and record.state is FillState.CANCELLED:
            fill._end(None, FillCancelled("cancelled by an operator"))
        else:
            fill._end(None, FillError("another cache-host took the fill over", transient=True))
        log.info("fill.lost", url=self._display(fill.record.url), fill_id=fill.id)

    async def _keep_leases(self) -> None:
        """Renew this host's lease; drop transfers whose lease is gone; fail
        credentialed fills whose host vanished with their credentials."""
        every = self._settings.fill_lease / 3
        while True:
            await asyncio.sleep(every)
            try:
                running = [f for f in self._by_id.values() if f._task and not f._settled]
                held = await self._metadata.renew_lease(self._lease())
                for fill in running:
                    if fill.id not in held and not fill._settled and fill._task:
                        fill._lost = True
                        fill._task.cancel()
                for record in await self._metadata.orphaned_fills(time.time()):
                    await self._fail_orphan(record)
                await self._drop_stale_partials()
            except Exception:
                log.error("fills.lease_failed", exc_info=True)

    async def _drop_stale_partials(self) -> None:
        """Remove partial files kept at start that no fill here will resume
        from: the fill ended, or resumes from another file (another host took
        it over and saved its own resume point)."""
        for name, fill_id in list(self._kept.items()):
            record = await self._metadata.get_fill(fill_id)
            if (
                record is None
                or record.state not in ACTIVE_STATES
                or (record.resume or {}).get("file") != name
            ) and self._kept.pop(name, None) is not None:
                await self._blobs.discard_partial(name)

    async def _fail_orphan(self, record: FillRecord) -> None:
        error = "the cache-host holding the request's credentials stopped; ask again"
        display = self._display(record.url)
        ended = await self._metadata.finish_fill(
            record.id, FillState.FAILED, error, display, time.time(), record.holder
        )
        if ended is not None:
            await self._emit(events.FillFailed(url=display, fill_id=record.id, error=error))

    async def _watch(self, fill: Fill) -> None:
        """Follow a fill that is not running here until it ends or a worker here claims it."""
        while fill._task is None and not fill.finished:
            try:
                record = await self._metadata.get_fill(fill.id)
            except Exception:
                log.error("fill.watch_failed", exc_info=True, fill_id=fill.id)
                record = fill.record
            if fill._task is not None:
                return  # claimed here meanwhile
            if record is None:
                self._forget(fill)
                fill._end(None, FillError("the fill vanished from the store"))
                return
            if record.state in ACTIVE_STATES:
                changed = (record.state, record.total) != (fill.record.state, fill.total)
                fill.record, fill.total = record, record.total
                if changed:
                    fill._wake()
                await asyncio.sleep(WATCH_SECONDS)
                continue
            self._forget(fill)
            fill.record = record
            if record.state is FillState.DONE:
                artifact = await self._metadata.find_artifact(record.key, (record.scope,))
                if artifact is None:
                    fill._end(None, FillError("the artifact was deleted as soon as it was stored"))
                else:
                    fill._end(artifact, None)
            elif record.state is FillState.CANCELLED:
                fill._end(None, FillCancelled("cancelled by an operator"))
            else:
                fill._end(None, FillError(record.error or "the fill failed"))
            return

    def _display(self, url: str) -> str:
        return keys.display_url(url, self._settings.keep_query)


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the tasks and wait for them to end. A task that ignored it is
    cancelled again: Python 3.11's wait_for (used by the connection pool) can
    swallow a cancellation that races with its result."""
    for _ in range(20):
        tasks = [task for task in tasks if not task.done()]
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=0.5)
    log.error("fills.stop_timeout", tasks=len(tasks))
