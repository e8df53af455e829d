"""Which misses may start a fill: bounds on the queue, and memory of failures.

A miss is cheap to send and a fill is not, so anyone who can reach the
cache-host could otherwise fill the queue with junk (hosts that don't
resolve, origins that never answer) and starve everyone else. Misses may
have at most `--max-queued-fills` fills queued or running at once, and at
most `--max-queued-fills-per-host` for one origin (scheme, host and port).
A client that waits for the bytes (a GET served from its fill) may go up to
twice the bounds (each holds a connection, which --max-client-connections
bounds too), and everything an operator asks for is let in: the bounds keep
room for both. In a shared store each cache-host counts its own.

Failures are remembered so that asking again doesn't multiply origin
traffic: a URL the origin says is not there (404, 410) is not fetched by
misses for --negative-ttl (negative.py); one whose fill failed for good
otherwise is not fetched for a minute; one whose fill failed for now (the
origin broke off) waits out a backoff that doubles with each failure in a
row; and an origin that is failing itself (unreachable, silent, answering
5xx) turns away misses for every URL it serves while it is unhealthy
(origins.py). Operators' fills ignore all of it. Nothing here is stored: a
restart forgets.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from urllib.parse import urlsplit

from withcache.server.negative import NEGATIVE_STATUSES, NegativeCache
from withcache.server.origins import OriginHealth, Unhealthy
from withcache.server.settings import Settings, format_duration

PERMANENT_SECONDS = 60.0  # a fill that failed for good (4xx, policy, cap)
BACKOFF_SECONDS = 15.0  # the first wait after a temporary failure...
MAX_BACKOFF_SECONDS = 600.0  # ...doubled per failure in a row, up to this
MEMORY_ENTRIES = 10_000  # URLs and origins remembered each; the oldest go first
WAITING_ROOM = 2  # a client waiting for the bytes may take the bounds this far


@dataclass(frozen=True)
class _Failure:
    until: float  # time.monotonic() when misses may try again
    error: str
    streak: int  # temporary failures in a row


class _Memory:
    """Failures by name, each until its time runs out; bounded, oldest first."""

    def __init__(self) -> None:
        self._entries: OrderedDict[object, _Failure] = OrderedDict()

    def get(self, name: object, now: float) -> _Failure | None:
        found = self._entries.get(name)
        return found if found and found.until > now else None

    def remember(self, name: object, error: str, transient: bool, now: float) -> None:
        previous = self._entries.pop(name, None)
        if transient:
            streak = previous.streak + 1 if previous else 1
            seconds = min(BACKOFF_SECONDS * 2 ** (streak - 1), MAX_BACKOFF_SECONDS)
        else:
            streak, seconds = 0, PERMANENT_SECONDS
        self._entries[name] = _Failure(now + seconds, error, streak)
        while len(self._entries) > MEMORY_ENTRIES:
            self._entries.popitem(last=False)

    def forget(self, name: object) -> None:
        self._entries.pop(name, None)


def origin_of(url: str) -> str:
    """scheme://host[:port] of a URL or key: what the per-host bound counts."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower().rpartition('@')[2]}"


class Admission:
    def __init__(self, settings: Settings) -> None:
        self._max_fills = settings.max_queued_fills
        self._max_host_fills = settings.max_queued_fills_per_host
        self._counted: dict[int, str] = {}  # fill id -> its origin, for fills misses started
        self._per_origin: Counter[str] = Counter()
        self._urls = _Memory()  # (key, scope) -> the last fill's failure
        self.absent = NegativeCache(settings.negative_ttl)  # the origin's 404s and 410s
        self.origins = OriginHealth()

    def refusal(self, key: str, scope: str, waiting: bool) -> str | None:
        """Why a miss may not start a fill for (key, scope) now, or None.
        `waiting`: a client waits for the bytes (it has more room)."""
        now = time.monotonic()
        absent = self.absent.get(key, scope)
        if absent:
            return absent.describe()
        failed = self._urls.get((key, scope), now)
        if failed:
            return f"the last fill failed: {failed.error}{_retry_note(failed, now)}"
        origin = origin_of(key)
        down = self.origins.blocked(origin)
        if down:
            wait = format_duration(max(1.0, down.until - time.time()))
            return (
                f"{origin} is failing: {down.error} (misses try it again in {wait}, "
                "or when an operator unblocks it)"
            )
        room = WAITING_ROOM if waiting else 1
        if len(self._counted) >= self._max_fills * room:
            return f"{len(self._counted)} fills are queued or running already (--max-queued-fills)"
        if self._per_origin[origin] >= self._max_host_fills * room:
            return (
                f"{self._per_origin[origin]} fills from {origin} are queued or running already "
                "(--max-queued-fills-per-host)"
            )
        return None

    def count(self, fill_id: int, key: str) -> None:
        """A miss started this fill: it counts against the bounds until released."""
        if fill_id not in self._counted:
            origin = self._counted[fill_id] = origin_of(key)
            self._per_origin[origin] += 1

    def release(self, fill_id: int) -> None:
        origin = self._counted.pop(fill_id, None)
        if origin is not None:
            self._per_origin[origin] -= 1
            if not self._per_origin[origin]:
                del self._per_origin[origin]

    def failed(
        self, key: str, scope: str, error: str, transient: bool, origin_fault: bool = False,
        status: int | None = None,
    ) -> Unhealthy | None:  # fmt: skip
        """Remember a fill's failure; `origin_fault`: the origin itself is failing
        (unreachable, silent, a 5xx), so its other URLs would fail too; `status`:
        the origin's answer, if it gave one. The origin's new state, if it
        was marked unhealthy."""
        if status in NEGATIVE_STATUSES:
            self.absent.remember(key, scope, status)
            return None
        self._urls.remember((key, scope), error, transient, time.monotonic())
        if origin_fault:
            return self.origins.failed(origin_of(key), error)
        return None

    def succeeded(self, key: str, scope: str) -> None:
        self.forget(key, scope)
        self.origins.succeeded(origin_of(key))

    def forget(self, key: str, scope: str) -> None:
        """Forget what failures said of the URL (an operator asks again)."""
        self._urls.forget((key, scope))
        self.absent.forget(key, scope)


def _retry_note(failure: _Failure, now: float) -> str:
    return f" (misses try again in {format_duration(max(1.0, failure.until - now))})"
