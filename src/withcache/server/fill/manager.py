"""The fill manager: the queue of fills, the workers that run them, and the
one way every fill ends (`finish`).

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

The transfer itself is transfer.py's; here a fill's bytes are checked against
any expected digest and only then committed, blob first, then its row. A
body whose end can't be checked (no length, no chunked framing) is not
stored unless an expected digest vouches for it. Whatever goes wrong, a
failed or cancelled fill leaves neither blob nor row.

Every ending (done, failed, cancelled, lost to another host, stopped by a
shutdown, ended on another host) is an Outcome passed to `finish`, which
does everything an ending means in one order: no new request joins the
fill, admission learns how it went, everyone waiting learns at once, the
lookup memo forgets the key, and then the row, the events and the miss's
reason are written (through backlog.py: a store that can't be written just
now, a full disk, never keeps a client waiting).

A fill interrupted by a crash or a restart goes on from its partial file,
which start-up keeps (instead of removing it with the other leftovers) while
the fill's saved resume point names it.

An import is a fill whose bytes come from a `Source` in this process (an
upload) instead of its origin: the same writer, checks and commit. It runs on
the host that has its bytes, and fails if anything else ever claims it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from withcache import keys
from withcache.server import digests, events, log
from withcache.server.admission import Admission, origin_of
from withcache.server.backlog import Backlog
from withcache.server.cap import Cap, Room
from withcache.server.digests import Digest
from withcache.server.fill.fill import (
    Cancelled,
    Done,
    EndedElsewhere,
    Failed,
    Fill,
    FillError,
    Lost,
    Outcome,
    Stopped,
)
from withcache.server.fill.peers import (
    Mirror,
    PeerRefused,
    PeerRequest,
    PeerStream,
    peer_key,
    refusal,
)
from withcache.server.fill.transfer import Received, Transfers
from withcache.server.lookup import Lookups
from withcache.server.policy import Policy
from withcache.server.records import ACTIVE_STATES, IMPORTED, Artifact, FillRecord, FillState
from withcache.server.retention import MAX_REASON, clip
from withcache.server.settings import Settings
from withcache.server.store import Blobs, BlobWriter, Lease, Metadata
from withcache.server.tasks import cancel_all

WATCH_SECONDS = 0.25  # how often a fill running on another host is looked at
PEER_CONNECT_SECONDS = 5.0  # a filling host that doesn't take a connection by then is gone
QUEUE_POLL_SECONDS = 5.0  # idle workers look for fills other hosts queued this often
CANCEL_WAIT_SECONDS = 5.0  # a cancel waits this long for the transfer to wind down
CANCEL_RETRY_SECONDS = 0.2  # ... asking it again this often
# Fills a waiting client may start at once beside the --workers: each would
# otherwise be that client's own download from the origin. The bound keeps a
# flood of probes from opening origin connections without end; probes (HEAD)
# may take only half, so a flood of them leaves room for clients that GET.
CLIENT_FILLS = 32
PROBE_FILLS = CLIENT_FILLS // 2
ACTIVE_PAGE = 1000  # active fills read per query at start, for their resume points
UNFRAMED = (
    "the origin sent neither a length nor chunked framing, so a body cut short can't be "
    "told from a whole one: not stored (add the URL with its expected digest to cache it)"
)
CREDENTIALS_LOST = "the request's credentials are not kept across a restart; ask again"
ORPHANED = "the cache-host holding the request's credentials stopped; ask again"
IMPORT_CUT_OFF = (
    "the import was cut off (its bytes were on a cache-host that stopped); import it again"
)

Emit = Callable[[events.Event], Awaitable[None]]


class _Lost(Exception):
    """This host's lease on the fill is gone: another host took it over."""


class DigestMismatch(FillError):
    """The bytes are not the ones the fill expected."""


class Source(Protocol):
    """Where an import's bytes come from, instead of its origin."""

    def begin(self, blobs: Blobs, also: Collection[str]) -> BlobWriter:
        """The writer the bytes go to (`Blobs.begin`, unless they are stored already)."""
        ...

    async def transfer(
        self, transfers: Transfers, fill: Fill, writer: BlobWriter, room: Room, display: str
    ) -> Received:
        """Write the whole artifact into `writer`; the headers to replay on hits."""
        ...


@dataclass(eq=False)
class _Handle:
    """What the manager keeps beside a Fill: the task running it here, or the
    one following it through the store, and what the heartbeat found."""

    fill: Fill
    task: asyncio.Task[None] | None = None  # the transfer, when it runs on this host
    watcher: asyncio.Task[None] | None = None  # looks at the store while it doesn't
    cancel_requested: bool = False
    cancelled_by: str | None = None
    lost: bool = False  # the heartbeat found the lease gone
    ending: asyncio.Task[None] | None = None  # the ending of a task that never ran
    settled: bool = False  # committing or ending: the heartbeat leaves it alone
    source: Source | None = None  # an import's bytes (None: the origin's)
    mirror: Mirror | None = None  # copies its bytes here while another host runs it


class FillManager:
    def __init__(
        self, settings: Settings, metadata: Metadata, blobs: Blobs, policy: Policy, emit: Emit,
        backlog: Backlog, cap: Cap, lookups: Lookups,
        replaced: Callable[[str], Awaitable[object]],
    ) -> None:  # fmt: skip
        self._settings = settings
        # Called with the SHA-256 of a blob a key stopped serving (the core
        # deletes it once unused and unread).
        self._replaced = replaced
        self._metadata = metadata
        self._blobs = blobs
        self._emit = emit
        self._backlog = backlog
        self._cap = cap
        self._lookups = lookups
        self._by_key: dict[tuple[str, str], _Handle] = {}
        self._by_id: dict[int, _Handle] = {}
        # This process, as the holder of leases in a store other hosts may share.
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._transfers = Transfers(settings, metadata, policy, emit)
        self.admission = Admission(settings)
        self._wakeup = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._client_fills: set[asyncio.Task[None]] = set()
        self._probe_fills: set[asyncio.Task[None]] = set()
        self._ending: set[asyncio.Task[None]] = set()  # finishes a done-callback started
        # Fills whose finish has woken their waiters but not yet written their row.
        self._recording: dict[int, asyncio.Event] = {}
        self._kept: dict[str, int] = {}  # partial files kept at start -> their fill's id
        # Peer streams (peers.py), once open_peers has run: where this host
        # serves its fills, the key peer requests are signed with, the client.
        self._peer_url: str | None = None
        self._peer_key: bytes | None = None
        self._peer_session: aiohttp.ClientSession | None = None

    def _lease(self) -> Lease:
        return Lease(self.holder, time.time() + self._settings.fill_lease, self._peer_url)

    def open_peers(self, url: str | None, secret: bytes) -> None:
        """Serve this host's fills in progress to the other hosts of a shared
        store (announcing `url` in its leases), and read theirs; the key is
        derived from the hosts' shared `secret`."""
        self._peer_url, self._peer_key = url, peer_key(secret)
        # A filling host sends nothing while its origin sends nothing, and
        # cuts its stream once it gives up on the origin.
        silence = self._settings.origin_timeout or None
        timeout = aiohttp.ClientTimeout(
            sock_connect=PEER_CONNECT_SECONDS,
            sock_read=silence and silence + self._settings.fill_lease,
        )
        self._peer_session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)

    async def start(self) -> None:
        interrupted = await self._metadata.requeue_interrupted()
        self._kept = await self._resumable()
        cleaned = await self._blobs.clean_temp(self._kept)
        if interrupted or cleaned or self._kept:
            log.info(
                "fills.recovered", requeued=interrupted, partial_blobs_removed=cleaned,
                partial_blobs_kept=len(self._kept),
            )  # fmt: skip
        self._transfers.open()
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

    async def stop(self) -> None:
        """Stop the workers. Running fills stay `running` in the store and are
        queued again at the next start (or taken over when their lease ends),
        resuming from their partial files."""
        # The transfers too, not only through their workers: a cancellation a
        # transfer swallowed (see cancel) would hold its worker until it ends.
        tasks = [t for h in self._by_id.values() for t in (h.task, h.watcher) if t]
        mirrors = [h.mirror for h in self._by_id.values() if h.mirror]
        for mirror in mirrors:
            mirror.stop()
        await cancel_all([*self._workers, *self._client_fills, *tasks], "fills")
        for mirror in mirrors:
            await mirror.wait_stopped()
        if self._ending:  # endings a done-callback started, bounded like a cancel
            await asyncio.wait(self._ending, timeout=CANCEL_WAIT_SECONDS)
        await self._transfers.close()
        if self._peer_session is not None:
            await self._peer_session.close()
            self._peer_session = None

    # -- what the rest of the cache-host calls

    def active(self, key: str, scope: str) -> Fill | None:
        handle = self._by_key.get((key, scope))
        return handle.fill if handle else None

    def live(self, fill_id: int) -> Fill | None:
        handle = self._by_id.get(fill_id)
        return handle.fill if handle else None

    async def result(self, fill_id: int) -> Artifact:
        """Wait for a fill to end: its artifact, or the error it ended with
        (raised). A fill no longer live here is read from the store (it ended
        already, or runs on another host: followed until it ends)."""
        while True:
            fill = self.live(fill_id)
            if fill is not None:
                return await fill.result()
            await self.recorded(fill_id)
            record = await self._metadata.get_fill(fill_id)
            if record is None or record.state not in ACTIVE_STATES:
                break
            await asyncio.sleep(WATCH_SECONDS)
        stored = None
        if record is not None and record.state is FillState.DONE:
            stored = await self._metadata.find_artifact(record.key, (record.scope,))
        ended = EndedElsewhere(record=record, stored=stored)
        if ended.error is not None:
            raise ended.error
        assert ended.artifact is not None
        return ended.artifact

    async def request(
        self,
        url: str,
        key: str,
        scope: str,
        authorization: str | None,
        requested_by: str,
        expected: Digest | None = None,
        actor: str | None = None,
        unless_stored: Sequence[str] = (),
    ) -> tuple[Fill | Artifact, bool]:
        """Queue a fill for `url`, or join the one under way; (fill, created).
        With `unless_stored` (scopes): the artifact stored in one of them
        since the caller looked (a fill that ended meanwhile, here or on
        another host), if there is one, instead of a second download."""
        existing = self._by_key.get((key, scope))
        if existing:
            return existing.fill, False
        # Credentials live only in this process: only this host may run the fill.
        lease = self._lease() if authorization is not None else None
        record, created = await self._metadata.enqueue_fill(
            key, scope, url, requested_by, time.time(), expected=expected,
            credentialed=authorization is not None, lease=lease, unless_stored=unless_stored,
        )  # fmt: skip
        if isinstance(record, Artifact):
            return record, False
        handle = self._by_id.get(record.id)
        if handle is None:
            handle = self._adopt(record, authorization if created else None)
            if self._metadata.shared:
                # Until a worker here claims it, the fill may run (or end) elsewhere.
                handle.watcher = asyncio.create_task(
                    self._watch(handle), name=f"fill-watch-{record.id}"
                )
        if created:
            if requested_by == "miss":
                self.admission.count(record.id, key)
            self._wakeup.set()
            await self._emit(
                events.FillQueued(url=self._display(url), actor=actor, requested_by=requested_by)
            )
        return handle.fill, created

    async def fetch_small(self, url: str, limit: int) -> bytes:
        """A small document from an origin (a checksum file), fetched as fills are."""
        return await self._transfers.fetch_small(url, limit)

    async def open_get(
        self, url: str, authorization: str | None, extra: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """A GET of `url` as fills make them (the policy checked on every hop),
        for revalidation's conditional requests; the caller releases it."""
        return await self._transfers.get(url, authorization, extra)

    async def start_import(
        self, url: str, key: str, scope: str, source: Source, expected: Digest | None,
        actor: str | None,
    ) -> Fill | None:  # fmt: skip
        """Run an import now, on this host (its bytes are here): a fill that is
        running from the moment it is stored, so no worker claims it. None if
        a fill for (key, scope) is queued or running already."""
        record, created = await self._metadata.enqueue_fill(
            key, scope, url, IMPORTED, time.time(), expected=expected, lease=self._lease(),
            start=True,
        )  # fmt: skip
        if not created or not isinstance(record, FillRecord):
            return None
        handle = self._adopt(record)
        handle.source = source
        await self._emit(
            events.FillQueued(url=self._display(url), actor=actor, requested_by=IMPORTED)
        )
        self._launch(record)
        return handle.fill

    async def start_for_client(self, fill: Fill, probe: bool = False) -> None:
        """Start a queued fill now, without waiting for a worker, because a
        client is waiting for its bytes: if the fill waited, that client would
        fetch the artifact from the origin itself, a second download.
        `probe`: the client only asked whether it is there (HEAD)."""
        handle = self._by_id.get(fill.id)
        if handle is None or handle.task or fill.elsewhere or fill.finished:
            return  # ended, or running here or on another host
        if len(self._client_fills) >= CLIENT_FILLS:
            return  # too many already: it waits for a worker
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

    async def follow(self, fill: Fill, wait: float) -> None:
        """A client here waits for the bytes of `fill`, which runs on another
        host: copy them here from that host as they arrive, and wait (up to
        `wait` s) until they can be read (`fill.readable`). If they can't (the
        host announced no peer URL, or can't be reached), the client waits for
        the fill to be stored."""
        handle = self._by_id.get(fill.id)
        if handle is None or handle.task or not fill.elsewhere or self._peer_session is None:
            return
        assert self._peer_key is not None
        mirror = handle.mirror
        if mirror is None or (mirror.done and mirror.failed_holder != fill.record.holder):
            spool = self._settings.data_dir / "tmp"
            spool.mkdir(parents=True, exist_ok=True)
            mirror = handle.mirror = Mirror(
                fill, self._metadata, self._peer_session, self._peer_key, spool
            )
        await mirror.ready(wait)

    async def peer_stream(self, asked: PeerRequest, wait: float) -> PeerStream:
        """The bytes of a fill running here, for another host of the store,
        from an offset (of the transfer's generation the asker has); PeerRefused
        if the request is forged, expired, or names no fill running here."""
        if self._peer_key is None:
            raise PeerRefused(404, "this cache-host serves no peer streams")
        why = refusal(
            self._peer_key, asked.token, asked.fill_id, asked.holder, asked.scope, time.time()
        )
        if why is not None:
            raise PeerRefused(403, why)
        handle = self._by_id.get(asked.fill_id)
        # Another scope's fill is answered as no fill at all: nothing leaks.
        if (
            handle is None or handle.task is None or handle.fill.finished
            or asked.holder != self.holder or handle.fill.record.scope != asked.scope
        ):  # fmt: skip
            raise PeerRefused(404, "no such fill running on this cache-host")
        fill = handle.fill
        if not await fill.wait_started(wait):
            raise PeerRefused(404, "the fill ended or its origin has not answered")
        if asked.generation is not None and asked.generation != fill.generation:
            raise PeerRefused(409, "the fill started over since that generation")
        if asked.offset and asked.generation is None:
            raise PeerRefused(400, "an offset needs the generation it is of")
        if fill.total is not None and asked.offset > fill.total:
            raise PeerRefused(416, "offset out of range")
        reader = fill.reader(lambda _: None)  # bytes for a host, not a client: not tallied
        return PeerStream(reader, asked.offset, fill.generation, fill.checked_at_end)

    async def cancel(self, fill_id: int, actor: str | None = None) -> bool:
        await self.recorded(fill_id)  # ending here already: its row says how
        handle = self._by_id.get(fill_id)
        if handle and handle.task:
            handle.cancel_requested = True
            handle.cancelled_by = actor
            # Return once the fill has ended and its event is written, so the
            # page the operator sees next already shows it cancelled. Asked
            # again until the task ends: Python 3.11's wait_for (in the
            # PostgreSQL pool) can swallow a cancellation racing its result.
            task, deadline = handle.task, time.monotonic() + CANCEL_WAIT_SECONDS
            while not task.done() and (left := deadline - time.monotonic()) > 0:
                if not handle.settled:  # committing: it ends as stored
                    task.cancel()
                await asyncio.wait([task], timeout=min(CANCEL_RETRY_SECONDS, left))
            if handle.ending and (left := deadline - time.monotonic()) > 0:
                await asyncio.wait([handle.ending], timeout=left)
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
        cancelled = Cancelled(actor=actor, written=True)
        await self.finish(handle.fill if handle else Fill(ended), cancelled)
        return True

    # -- the one ending

    async def finish(self, fill: Fill, outcome: Outcome) -> None:
        """End `fill` as `outcome` says; every fill ends here, once."""
        if fill.finished:
            return
        record = fill.record
        self._forget(fill)
        unhealthy = None
        match outcome:
            case Done() if not record.imported:  # an import says nothing of its origin
                self.admission.succeeded(record.key, record.scope)
            case Failed(failure=err, remembered=True):
                unhealthy = self.admission.failed(
                    record.key,
                    record.scope,
                    str(err),
                    err.transient,
                    err.origin_fault,
                    err.status,
                )
        # Everyone waiting learns first: recording it may have to wait for the
        # store (a full disk), and a client must never hang on that.
        recorded = self._recording[fill.id] = asyncio.Event()
        fill.end(outcome)
        self._lookups.forget(record.key)
        try:
            await self._record(fill, outcome)
        finally:
            recorded.set()
            if self._recording.get(fill.id) is recorded:
                del self._recording[fill.id]
        if unhealthy is not None:
            await self._emit(
                events.OriginUnhealthy(
                    origin=unhealthy.origin, error=unhealthy.error, failures=unhealthy.failures,
                    seconds=round(unhealthy.until - time.time(), 1),
                )
            )  # fmt: skip

    async def recorded(self, fill_id: int) -> None:
        """Wait (a bounded while) until a fill this host is ending has its
        end written, so an operator's next action reads the row as it ends."""
        recording = self._recording.get(fill_id)
        if recording is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(recording.wait(), CANCEL_WAIT_SECONDS)

    async def _record(self, fill: Fill, outcome: Outcome) -> None:
        """Write a fill's end: its row (unless written already), its events,
        its miss's reason; now, or once the store takes writes again."""
        record = fill.record
        display = self._display(record.url)
        now = time.time()
        state = outcome.state
        if state is not None and not outcome.written:
            text = outcome.row_error

            async def write_end() -> None:
                await self._metadata.finish_fill(record.id, state, text, display, now, self.holder)

            await self._backlog.write(f"fill {record.id} {state}", write_end)
        for event in outcome.events(fill, display):
            await self._emit(event)
        await self._write_miss_reason(fill)

    async def noting(self, fill: Fill, note: Callable[[], Awaitable[None]]) -> None:
        """Run `note`, which writes that `fill`'s miss is being fetched. The
        fill's ending owns the miss's reason from then on: if the fill ended
        while the note was on its way (a slow store), the ending's reason is
        written again after it, so the note never lands over it."""
        await note()
        if fill.finished:
            await self._write_miss_reason(fill)

    async def _write_miss_reason(self, fill: Fill) -> None:
        """What the fill's miss says now it ended, if its outcome changes that."""
        reason = fill.outcome.miss_reason() if fill.outcome else None
        absent = self.admission.absent.get(fill.record.key, fill.record.scope)
        if isinstance(fill.outcome, Failed) and absent is not None:
            reason = absent.describe()  # the origin says it is not there, until when
        if reason is not None:
            key, clipped = fill.record.key, clip(reason, MAX_REASON)
            await self._backlog.write(
                "miss reason", lambda: self._metadata.set_miss_reason(key, clipped)
            )

    # -- workers

    def _adopt(self, record: FillRecord, authorization: str | None = None) -> _Handle:
        handle = _Handle(Fill(record, authorization))
        self._by_key[(record.key, record.scope)] = handle
        self._by_id[record.id] = handle
        return handle

    def _forget(self, fill: Fill) -> None:
        """No request joins the fill any more."""
        handle = self._by_key.get((fill.record.key, fill.record.scope))
        if handle is not None and handle.fill is fill:
            del self._by_key[(fill.record.key, fill.record.scope)]
        if (found := self._by_id.get(fill.id)) is not None and found.fill is fill:
            del self._by_id[fill.id]
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
            if await self._deferred(record):
                continue
            task = self._launch(record)
            try:
                await asyncio.wait([task])
            except asyncio.CancelledError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise

    async def _deferred(self, record: FillRecord) -> bool:
        """Put a fill a miss queued for an unhealthy origin back in the queue
        until the origin may be tried again (operators' fills run anyway)."""
        if record.requested_by == "operator":
            return False
        blocked = self.admission.origins.blocked(origin_of(record.key))
        if blocked is None:
            return False
        await self._metadata.defer_fill(record.id, self.holder, blocked.until)
        log.info("fill.deferred", fill_id=record.id, origin=blocked.origin, until=blocked.until)
        return True

    async def origin_unblocked(self, origin: str) -> None:
        """Queued fills that waited for `origin` may run now."""
        if await self._metadata.undefer_fills(origin):
            self._wakeup.set()

    def _launch(self, record: FillRecord) -> asyncio.Task[None]:
        """Run a fill this host has just claimed."""
        handle = self._by_id.get(record.id) or self._adopt(record)
        if handle.watcher:
            handle.watcher.cancel()
            handle.watcher = None
        if handle.mirror:  # the transfer starts afresh here: the copy's readers break
            handle.mirror.stop()
            handle.mirror = None
        handle.fill.claimed(record)
        task = handle.task = asyncio.create_task(self._run(handle), name=f"fill-{record.id}")
        task.add_done_callback(lambda task: self._ended(handle, task))
        return task

    def _ended(self, handle: _Handle, task: asyncio.Task[None]) -> None:
        """Whatever stopped a fill's task, no one may be left waiting on the fill."""
        if handle.fill.finished:
            return
        # Unfinished, the task never reached _run's own endings: it crashed,
        # or was cancelled before it first ran (by an operator, the heartbeat
        # or shutting down).
        if not task.cancelled() and task.exception() is not None:
            log.error("fill.crashed", exc_info=task.exception(), fill_id=handle.fill.id)
            failure = FillError("the fill stopped unexpectedly", transient=True)
            ending = self.finish(handle.fill, Failed(failure=failure))
        elif handle.lost:
            ending = self._lose(handle)
        elif handle.cancel_requested:
            ending = self.finish(handle.fill, Cancelled(actor=handle.cancelled_by))
        else:
            ending = self.finish(handle.fill, Stopped())
        handle.ending = self._spawn(ending)

    def _spawn(self, job: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(job)
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)
        return task

    async def _open_writer(
        self, fill: Fill, also: Collection[str]
    ) -> tuple[BlobWriter, Mapping[str, Any] | None]:
        """A writer going on from the fill's resume point (returned too), if
        this host kept the partial file it names; else a new one. Either
        hashes `also` too."""
        resume = fill.record.resume or {}
        name = str(resume.get("file", ""))
        if not resume.get("validator") or self._kept.pop(name, None) != fill.id:
            return self._blobs.begin(also), None
        writer = await self._blobs.resume(name, int(resume.get("bytes", 0)), also)
        if writer is None:
            return self._blobs.begin(also), None
        log.info("fill.resuming", fill_id=fill.id, resume_from=writer.size)
        return writer, resume

    async def _run(self, handle: _Handle) -> None:
        fill = handle.fill
        record = fill.record
        display = self._display(record.url)
        writer: BlobWriter | None = None
        room = self._cap.room(fill, self.holder)
        try:
            if record.credentialed and fill.authorization is None:
                raise FillError(CREDENTIALS_LOST)
            source = handle.source
            if record.imported and source is None:  # never fetch an import from its origin
                raise FillError(IMPORT_CUT_OFF)
            also = digests.extra(record.expected)
            if source is not None:
                writer, resume = source.begin(self._blobs, also), None
            else:
                writer, resume = await self._open_writer(fill, also)
            await self._emit(
                events.FillStarted(url=display, fill_id=record.id, resume_from=writer.size)
            )
            if source is not None:
                received = await source.transfer(self._transfers, fill, writer, room, display)
            else:
                received = await self._transfers.run(fill, writer, room, display, resume)
            pinned = received.pinned
            mismatch = digests.mismatch(record.expected, writer) or digests.mismatch(pinned, writer)
            if mismatch:
                raise DigestMismatch(mismatch)
            if received.unframed and not (record.expected or pinned):
                raise FillError(UNFRAMED, delivered=True)
            handle.settled = True
            artifact, replaced = await self._commit(fill, writer, received, display)
            writer = None
        except asyncio.CancelledError:
            if not (handle.lost or handle.cancel_requested):
                # Shutting down: the fill resumes from its partial file at the next start.
                if writer:
                    await writer.suspend()
                await self.finish(fill, Stopped())
                raise
            if writer:
                await writer.abort()
            if handle.lost:
                await self._lose(handle)
            else:
                await self.finish(fill, Cancelled(actor=handle.cancelled_by))
            return
        except _Lost:
            await self._lose(handle)
            return
        except Exception as err:
            handle.settled = True
            if writer:
                await writer.abort()
            if not isinstance(err, FillError):
                log.error("fill.crashed", exc_info=True, url=display, fill_id=record.id)
                err = FillError(f"internal error: {type(err).__name__}: {err}")
            # A fill that lost its credentials says nothing of the URL: the
            # client's next request, with them, starts afresh. An import's
            # failure says nothing of the origin.
            lost_credentials = record.credentialed and fill.authorization is None
            remembered = not (lost_credentials or record.imported)
            await self.finish(fill, Failed(failure=err, remembered=remembered))
            return
        finally:
            room.close()
        await self.finish(fill, Done(stored=artifact))
        if replaced is not None:
            await self._replaced(replaced)

    async def _commit(
        self, fill: Fill, writer: BlobWriter, received: Received, display: str
    ) -> tuple[Artifact, str | None]:
        """Store the blob, then its row; _Lost if another host holds the fill
        now. With the artifact, the blob the key served before, if it changed."""
        sha = writer.hexdigest()
        record = fill.record
        before = await self._metadata.find_artifact(record.key, (record.scope,))
        async with self._metadata.blob_lock(sha):
            try:
                location = await writer.commit()
            except OSError as err:
                raise FillError(f"cannot store the blob: {err.strerror or err}") from None
            try:
                artifact = await self._metadata.commit_artifact(
                    record, sha, writer.size, received.headers, display, time.time(),
                    self.holder, etag=received.etag, location=location,
                )  # fmt: skip
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
            raise _Lost()
        return artifact, before.sha256 if before and before.sha256 != sha else None

    async def _lose(self, handle: _Handle) -> None:
        """End a fill this host no longer holds, without touching its row."""
        fill = handle.fill
        self._forget(fill)  # before the store is asked: nothing new joins meanwhile
        record = await self._metadata.get_fill(fill.id)
        log.info("fill.lost", url=self._display(fill.record.url), fill_id=fill.id)
        cancelled = record is not None and record.state is FillState.CANCELLED
        await self.finish(fill, Lost(cancelled=cancelled))

    async def _keep_leases(self) -> None:
        """Renew this host's lease; drop transfers whose lease is gone; fail
        credentialed fills whose host vanished with their credentials."""
        every = self._settings.fill_lease / 3
        while True:
            await asyncio.sleep(every)
            try:
                running = [h for h in self._by_id.values() if h.task and not h.settled]
                held = await self._metadata.renew_lease(self._lease())
                for handle in running:
                    if handle.fill.id not in held and not handle.settled and handle.task:
                        handle.lost = True
                        handle.task.cancel()
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
        ended = await self._metadata.finish_fill(
            record.id, FillState.FAILED, ORPHANED, self._display(record.url), time.time(),
            record.holder,
        )  # fmt: skip
        if ended is not None:
            handle = self._by_id.get(record.id)
            failure = FillError(ORPHANED)
            outcome = Failed(failure=failure, remembered=False, written=True)
            await self.finish(handle.fill if handle else Fill(ended), outcome)

    async def _watch(self, handle: _Handle) -> None:
        """Follow a fill that is not running here until it ends or a worker here claims it."""
        fill = handle.fill
        while handle.task is None and not fill.finished:
            try:
                record = await self._metadata.get_fill(fill.id)
            except Exception:
                log.error("fill.watch_failed", exc_info=True, fill_id=fill.id)
                record = fill.record
            if handle.task is not None:
                return  # claimed here meanwhile
            if record is not None and record.state in ACTIVE_STATES:
                fill.observed(record)
                await asyncio.sleep(WATCH_SECONDS)
                continue
            stored = None
            if record is not None:
                fill.observed(record)
                if record.state is FillState.DONE:
                    stored = await self._metadata.find_artifact(record.key, (record.scope,))
            await self.finish(fill, EndedElsewhere(record=record, stored=stored))
            return

    def _display(self, url: str) -> str:
        return keys.display_url(url, self._settings.keep_query)
