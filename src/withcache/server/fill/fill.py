"""The Fill: one artifact on its way from its origin, shared by all who wait on it.

A Fill has two sides. The writer side (`claimed`, `start`, `restart`,
`advance`, `end`) is called by the fill package alone: the manager when it
claims and ends a fill, the transfer as the origin answers and bytes land in
the partial file. Everyone else uses the reader side: how far it got, the
origin's headers, waiting for more, its result, and a FillReader that reads
the bytes written so far at its own pace.

How a fill ends is an Outcome (done, failed, cancelled, lost, stopped,
ended elsewhere); the manager's `finish` takes it from there, and the Fill
hands its readers the artifact or the error it carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar

from withcache.server import events
from withcache.server.records import Artifact, FillRecord, FillState


class FillError(Exception):
    """A fill went wrong; `transient` says whether another try may succeed."""

    def __init__(
        self, message: str, transient: bool = False, refused: bool = False,
        unreachable: bool = False, delivered: bool = False, status: int | None = None,
        timed_out: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.transient = transient
        self.refused = refused  # the policy or the cap said no: nothing was fetched
        self.unreachable = unreachable  # no connection to the origin at all
        self.status = status  # the origin's answer, when it answered with an error
        # The origin itself is failing (not this URL): unreachable, silent, or a 5xx.
        self.origin_fault = unreachable or timed_out or (status or 0) >= 500
        # The whole body, as far as the origin said, was received; only storing
        # it was refused: clients of the fill get all of it, as from the origin.
        self.delivered = delivered


class CancelledByOperator(Exception):
    """The fill was cancelled by an operator (here or on another host)."""


# -- how a fill ended


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How a fill ended: what its waiters get, what the store records, which
    events say so and what admission learns. FillManager.finish applies it."""

    # The state to write to the fill's row; None: nothing to write here (the
    # commit wrote it, another host did, or the row must stay as it is).
    state: ClassVar[FillState | None] = None
    # The row says so already (a cancel or an orphan's end, written first
    # because whether it could be written decides whether it happened).
    written: bool = False

    @property
    def artifact(self) -> Artifact | None:
        return None

    @property
    def error(self) -> BaseException | None:
        return None

    @property
    def row_error(self) -> str | None:
        """The error the fill's row keeps."""
        return None if self.error is None else str(self.error)

    def events(self, fill: Fill, display: str) -> list[events.Event]:
        return []

    def miss_reason(self) -> str | None:
        """What the fill's miss says afterwards, if this changes it."""
        return None


@dataclass(frozen=True, kw_only=True)
class Done(Outcome):
    """Stored: the commit wrote the blob, the artifact and the fill's end."""

    stored: Artifact

    @property
    def artifact(self) -> Artifact:
        return self.stored

    def events(self, fill: Fill, display: str) -> list[events.Event]:
        return [
            events.FillFinished(
                url=display, fill_id=fill.id, sha256=self.stored.sha256, size=self.stored.size,
                seconds=round(time.monotonic() - (fill.started or time.monotonic()), 3),
                imported=fill.record.imported,
            )
        ]  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Failed(Outcome):
    state: ClassVar[FillState | None] = FillState.FAILED
    failure: FillError
    # Whether admission keeps the URL's failure in mind (not when a restart
    # lost the request's credentials: that says nothing of the URL).
    remembered: bool = True

    @property
    def error(self) -> FillError:
        return self.failure

    def events(self, fill: Fill, display: str) -> list[events.Event]:
        text = str(self.failure)
        refused = [events.FillRefused(url=display, reason=text)] if self.failure.refused else []
        return [*refused, events.FillFailed(url=display, fill_id=fill.id, error=text)]

    def miss_reason(self) -> str:
        return f"fill failed: {self.failure}"


@dataclass(frozen=True, kw_only=True)
class Cancelled(Outcome):
    state: ClassVar[FillState | None] = FillState.CANCELLED
    actor: str | None

    @property
    def error(self) -> CancelledByOperator:
        return CancelledByOperator("cancelled by an operator")

    @property
    def row_error(self) -> str:
        return "cancelled"

    def events(self, fill: Fill, display: str) -> list[events.Event]:
        return [events.FillCancelled(url=display, actor=self.actor, fill_id=fill.id)]

    def miss_reason(self) -> str:
        return "fill cancelled by an operator"


@dataclass(frozen=True, kw_only=True)
class Lost(Outcome):
    """Another host holds the fill now (it took it over, or it was cancelled
    there): that host records its end."""

    cancelled: bool

    @property
    def error(self) -> BaseException:
        if self.cancelled:
            return CancelledByOperator("cancelled by an operator")
        return FillError("another cache-host took the fill over", transient=True)


@dataclass(frozen=True, kw_only=True)
class Stopped(Outcome):
    """This host is shutting down: the row stays running, and the fill goes on
    from its partial file at the next start (or on another host)."""

    @property
    def error(self) -> FillError:
        return FillError("the cache-host is shutting down", transient=True)


@dataclass(frozen=True, kw_only=True)
class EndedElsewhere(Outcome):
    """Another host ran the fill and recorded its end (`record`; None: the
    row is gone from the store)."""

    record: FillRecord | None
    stored: Artifact | None  # what it stored, if it is still there

    @property
    def artifact(self) -> Artifact | None:
        done = self.record is not None and self.record.state is FillState.DONE
        return self.stored if done else None

    @property
    def error(self) -> BaseException | None:
        if self.record is None:
            return FillError("the fill vanished from the store")
        if self.record.state is FillState.DONE:
            if self.stored is None:
                return FillError("the artifact was deleted as soon as it was stored")
            return None
        if self.record.state is FillState.CANCELLED:
            return CancelledByOperator("cancelled by an operator")
        return FillError(self.record.error or "the fill failed")


# -- the fill


def _new_future() -> asyncio.Future:  # type: ignore[type-arg]
    return asyncio.get_running_loop().create_future()


class Fill:
    """A fill queued or running in this process, shared by all who wait on it."""

    def __init__(self, record: FillRecord, authorization: str | None = None) -> None:
        self._record = record
        # The request's credentials, in memory only, for the fill's duration.
        self.authorization = authorization
        self._total = record.total  # known already if another host runs it
        self._bytes_done = 0
        self._headers: Mapping[str, str] | None = None
        self._generation = 0
        self._path: Path | None = None
        self._here = False  # its transfer runs in this process
        self._mirrored = False  # its bytes are copied here from the host running it
        self._pinned = False  # the origin named the bytes' digest (an OCI layer's)
        self._started: float | None = None
        self._clients = 0
        self._rate = 0.0
        self._rate_mark = (0.0, 0)
        self._outcome: Outcome | None = None
        self._result: asyncio.Future[Artifact] = _new_future()
        self._progressed: asyncio.Future[None] = _new_future()

    def __repr__(self) -> str:
        return f"<Fill {self.id} {self._record.state} {self._bytes_done}/{self._total}>"

    # -- the reader side

    @property
    def id(self) -> int:
        return self._record.id

    @property
    def record(self) -> FillRecord:
        """The fill's row as this host last read or wrote it."""
        return self._record

    @property
    def bytes_done(self) -> int:
        """Bytes written to the partial file so far, readable by others."""
        return self._bytes_done

    @property
    def total(self) -> int | None:
        """The artifact's length, once the origin said it."""
        return self._total

    @property
    def headers(self) -> Mapping[str, str] | None:
        """The origin's headers replayed to clients, once it answered."""
        return self._headers

    @property
    def generation(self) -> int:
        """Bumped each time the transfer starts over from byte 0."""
        return self._generation

    @property
    def path(self) -> Path | None:
        """The partial file, once the transfer runs here."""
        return self._path

    @property
    def started(self) -> float | None:
        """When this host claimed it (time.monotonic())."""
        return self._started

    @property
    def clients(self) -> int:
        """Requests reading this fill's bytes now."""
        return self._clients

    @property
    def rate(self) -> float:
        """Bytes per second, smoothed."""
        return self._rate

    @property
    def elsewhere(self) -> bool:
        """Running on another cache-host: its bytes can't be read here."""
        return not self._here and self._record.state is FillState.RUNNING

    @property
    def readable(self) -> bool:
        """Its bytes can be read here as they arrive: its transfer runs here,
        or they are mirrored from the host that runs it (fill/peers.py)."""
        return self._path is not None and (self._here or self._mirrored)

    @property
    def finished(self) -> bool:
        return self._result.done()

    @property
    def checked_at_end(self) -> bool:
        """Its bytes must match a digest, known only once all have arrived
        (an expected one, or the OCI layer's): no client may have all of them
        before."""
        return self._record.expected is not None or self._pinned

    @property
    def error(self) -> BaseException | None:
        """Why the fill ended badly; None while it runs and once it succeeded."""
        return self._result.exception() if self._result.done() else None

    @property
    def outcome(self) -> Outcome | None:
        """How the fill ended; None while it runs."""
        return self._outcome

    async def result(self) -> Artifact:
        """Wait for the fill; the artifact, or the error it ended with."""
        return await asyncio.shield(self._result)

    async def progressed(self) -> None:
        """Wait until more bytes are readable or the fill ended."""
        await asyncio.shield(self._progressed)

    async def wait_started(self, timeout: float) -> bool:
        """Wait until the origin answered (True), or the fill ended, runs on
        another host, or the time ran out."""
        deadline = time.monotonic() + timeout
        while self._headers is None and not self.finished and not self.elsewhere:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progressed(), remaining)
        return self._headers is not None and self.error is None

    def reader(self, counted: Callable[[int], None], local: bool = True) -> FillReader:
        """A reader of this fill's bytes for one client (close it when done);
        `local`: open the partial file now, to read the bytes as they come."""
        return FillReader(self, counted, local)

    # -- the writer side (the fill package only)

    def claimed(self, record: FillRecord) -> None:
        """This host has claimed the fill and runs its transfer now."""
        self._record, self._here, self._pinned = record, True, False
        self._total, self._started = None, time.monotonic()
        self._mirrored = False

    def observed(self, record: FillRecord) -> None:
        """What the store says of a fill not running here (watched)."""
        changed = (record.state, record.total) != (self._record.state, self._total)
        self._record, self._total = record, record.total
        if changed:
            self._wake()

    def spooling(self, path: Path, size: int, total: int | None) -> None:
        """The transfer writes to `path`, which holds `size` bytes already (a resume)."""
        self._path, self._total = path, total
        self.advance(size)

    def mirroring(
        self, path: Path, headers: Mapping[str, str], total: int | None, pinned: bool
    ) -> None:
        """Its bytes (none yet) are copied into `path` from the host running it,
        whose transfer answered with these headers and length."""
        self._path, self._mirrored, self._pinned = path, True, pinned
        self.start(headers, total)
        self.advance(0)

    def unmirrored(self) -> None:
        """The copy from the host running it broke off: its readers here have
        bytes of a transfer that may never end (a new generation), and the
        bytes can't be read here any more."""
        self._path, self._mirrored, self._headers = None, False, None
        self.restart()

    def pin(self) -> None:
        """The origin named the digest the bytes must have (checked at the end)."""
        self._pinned = True

    def start(self, headers: Mapping[str, str], total: int | None) -> None:
        """The origin answered: its headers and the length it gave, if any."""
        self._headers, self._total = headers, total
        self._wake()

    def restart(self) -> None:
        """The bytes so far are dropped: the transfer starts over from byte 0."""
        self._generation += 1
        self.advance(0)

    def advance(self, bytes_done: int) -> None:
        self._bytes_done = bytes_done
        now = time.monotonic()
        mark_time, mark_bytes = self._rate_mark
        if now - mark_time >= 1.0:
            if mark_time:
                sample = (bytes_done - mark_bytes) / (now - mark_time)
                self._rate = sample if not self._rate else 0.5 * self._rate + 0.5 * sample
            self._rate_mark = (now, bytes_done)
        self._wake()

    def end(self, outcome: Outcome) -> None:
        """Hand everyone waiting the outcome's artifact or error."""
        if not self._result.done():
            self._outcome = outcome
            error = outcome.error
            if error is None:
                self._result.set_result(outcome.artifact)  # type: ignore[arg-type]
            else:
                self._result.set_exception(error)
                self._result.exception()  # nobody waiting is fine: don't warn
        self._wake()

    def _wake(self) -> None:
        waiting, self._progressed = self._progressed, _new_future()
        waiting.set_result(None)


class FillReader:
    """One client's view of a fill: the origin's headers and length as they
    were when it joined, the bytes written since, and waiting for more. It
    reads the partial file itself, at its own pace, never the fill's buffers.

    `file` is the partial file, opened when the reader was (None if the bytes
    are not on this host, or the fill ended just then and its file moved into
    the store): a client can then only wait for the artifact (`stored`)."""

    def __init__(self, fill: Fill, counted: Callable[[int], None], local: bool) -> None:
        self._fill = fill
        self._counted = counted
        self.headers: Mapping[str, str] = dict(fill.headers or {})
        self.total = fill.total
        self._generation = fill.generation
        self.file: BinaryIO | None = None
        if local and fill.readable:
            with contextlib.suppress(FileNotFoundError):
                self.file = open(fill.path, "rb")  # noqa: SIM115 (close() closes it)
        fill._clients += 1
        self._open = True

    def __enter__(self) -> FillReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def available(self, end: int | None = None) -> int:
        """How far the bytes written so far go (up to `end`). Of a fill
        checked at its end, the last byte waits for the check: a client must
        not have every byte of one that fails it."""
        fill = self._fill
        done = fill.bytes_done
        if end is None:
            return done
        if fill.checked_at_end and not fill.finished:
            return min(done, end - 1)
        return min(done, end)

    @property
    def broken(self) -> bool:
        """The bytes this client got may not be the artifact's: the fill
        started over, or failed (unless it received the whole body and only
        storing it was refused). Its client must fail."""
        fill = self._fill
        error = fill.error
        if fill.generation != self._generation:
            return True
        return error is not None and not (isinstance(error, FillError) and error.delivered)

    @property
    def finished(self) -> bool:
        return self._fill.finished

    def read(self, pos: int, length: int) -> bytes:
        """Bytes [pos, pos + length) of the partial file (at most what is written)."""
        assert self.file is not None
        return os.pread(self.file.fileno(), min(length, self.available() - pos), pos)

    async def more(self) -> None:
        """Wait until more bytes are written or the fill ended."""
        await self._fill.progressed()

    def sent(self, nbytes: int) -> None:
        """This many bytes of the fill went to the client."""
        self._counted(nbytes)

    async def stored(self) -> Artifact | None:
        """Wait for the fill to be stored: its artifact, or None if it failed."""
        try:
            return await self._fill.result()
        except Exception:
            return None

    def close(self) -> None:
        if self._open:
            self._open = False
            self._fill._clients -= 1
            if self.file is not None:
                self.file.close()
