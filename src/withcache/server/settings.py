"""The cache-host's configuration: one frozen object, built once at start.

Only the CLI builds it (from flags and `WITHCACHE_*` variables); everything
else receives a Settings and never reads argv or the environment itself. The
one exception is outside our code: the object-store libraries resolve their
own credentials (the AWS, Google and Azure chains read their variables and
files), as every tool of those clouds does.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def parse_size(text: str) -> int:
    """Bytes in a size such as `50G`, `1.5T`, `512MiB` or `1048576` (binary units)."""
    match = _SIZE_RE.fullmatch(text)
    if not match:
        raise ValueError("use a number with an optional K, M, G or T suffix")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.upper()])


_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as `30s`, `10m`, `1h`, `7d` or `90` (seconds)."""
    match = _DURATION_RE.fullmatch(text)
    if not match:
        raise ValueError("use a number with an optional s, m, h or d suffix, e.g. 10m")
    number, unit = match.groups()
    return float(number) * _DURATION_UNITS[unit.lower()]


@dataclass(frozen=True)
class RevalidateRule:
    """--revalidate GLOB[=MAX_AGE]: artifacts whose URL matches `glob` are
    checked with their origin again once older than `max_age` seconds."""

    glob: str
    max_age: float = 3600.0

    def matches(self, key: str) -> bool:
        return fnmatch.fnmatchcase(key, self.glob)

    def __str__(self) -> str:
        return f"{self.glob}={self.max_age:g}s"

    @classmethod
    def parse(cls, text: str) -> RevalidateRule:
        """`GLOB` or `GLOB=MAX_AGE`: the age follows the last `=` (a glob that
        holds one is written with its age)."""
        glob, sep, age = text.strip().rpartition("=")
        if not sep:
            glob = age
        if not glob:
            raise ValueError("give a URL glob, e.g. '*/latest/*' or '*SHA256SUMS*=10m'")
        max_age = parse_duration(age) if sep else cls.max_age
        if max_age <= 0:
            raise ValueError("the maximum age must be above 0")
        return cls(glob, max_age)


def format_size(n: int | float) -> str:
    """A human-readable binary size: 1.5 GiB, 12 KiB, 7 B."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """A human-readable duration: 0.4 s, 7 s, 2 min 05 s, 1 h 03 min."""
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@dataclass(frozen=True)
class MinFree:
    """The free space the data dir's disk must keep (--min-free): a size, a
    share of the disk, or the smaller of both. Below it no fill starts."""

    size: int | None = 1 << 30
    percent: float | None = 2.0

    def floor(self, disk_bytes: int) -> int:
        """The floor in bytes on a disk of `disk_bytes`."""
        parts = [self.size] if self.size is not None else []
        if self.percent is not None:
            parts.append(int(disk_bytes * self.percent / 100))
        return min(parts)

    def describe(self) -> str:
        if self.size is not None and self.percent is not None:
            return f"the smaller of {format_size(self.size)} and {self.percent:g}% of the disk"
        if self.percent is not None:
            return f"{self.percent:g}% of the disk"
        return format_size(self.size or 0)

    def __str__(self) -> str:
        return self.describe()

    @classmethod
    def parse(cls, text: str) -> MinFree:
        """`1G`, `500M`, `0` or `5%`."""
        text = text.strip()
        try:
            if not text.endswith("%"):
                return cls(size=parse_size(text), percent=None)
            percent = float(text[:-1])
        except ValueError:
            raise ValueError("use a size such as 1G, or a share of the disk such as 2%") from None
        if not 0 <= percent < 100:
            raise ValueError("a share of the disk is from 0% to below 100%")
        return cls(size=None, percent=percent)


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("data")
    host: str = "0.0.0.0"
    port: int = 3000
    workers: int = 4
    curate: bool = False
    max_bytes: int | None = None
    min_free: MinFree = MinFree()
    keep_query: bool = False
    no_stream_fills: bool = False
    allow_origins: tuple[str, ...] = ()
    plain_http_registries: tuple[str, ...] = ()  # oras:// registries reached over http
    allow_private_origins: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Retention of the miss list and the event log, so junk can't fill the disk.
    miss_retention_days: float = 30.0
    max_misses: int = 10_000
    event_retention_days: float = 90.0
    max_events: int = 100_000
    # Fills: attempts per fill (first try included) and the first retry delay,
    # doubled on each retry; the origin may stay silent this long mid-transfer.
    fill_attempts: int = 5
    retry_delay: float = 1.0
    origin_timeout: float = 60.0
    # Fills that misses may have queued or running, in all and per origin (a
    # client waiting for the bytes gets twice the room; operators pass).
    max_queued_fills: int = 1000
    max_queued_fills_per_host: int = 100
    # Client connections: the headers of a request must arrive within this
    # many seconds (from connecting, or from the end of the last answer), and
    # one client address may hold at most this many connections at once.
    header_timeout: float = 20.0
    max_client_connections: int = 256
    # Each blob is re-hashed once in this many days (0: never), gently.
    scrub_every: float = 30.0
    # Mutable URLs: artifacts matching a rule are checked with their origin
    # again once older than its maximum age (none: every URL is immutable).
    revalidate: tuple[RevalidateRule, ...] = ()
    # An origin's 404 or 410 is believed for this many seconds.
    negative_ttl: float = 300.0
    # Eviction (opt-in): "lru" deletes the least recently used unpinned
    # artifacts when a fill needs room; evict_unused deletes unpinned artifacts
    # not hit for that many days, once a day.
    evict: str | None = None
    evict_unused: float | None = None
    log_format: str = "kv"  # "kv" (key=value) or "json", one line per event either way
    private_metrics: bool = False  # /metrics wants a bearer token
    # Scale-out: several cache-hosts sharing PostgreSQL and an object store
    # (s3://, gs:// or az://; unset: SQLite and files in the data dir). The
    # metadata URL may carry a password, so it is never shown. S3 credentials
    # come from the standard AWS chain unless given here.
    metadata_url: str | None = field(default=None, repr=False)
    blobs_url: str | None = None
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_addressing: str = "auto"  # "path", "virtual", or auto: virtual on AWS, else path
    s3_access_key_id: str | None = field(default=None, repr=False)
    s3_secret_access_key: str | None = field(default=None, repr=False)
    s3_session_token: str | None = field(default=None, repr=False)
    redirect_hits: bool = False
    # With --blobs: this host's copies of hot blobs, at most this many bytes
    # (None: auto, half the data dir's free space above --min-free; 0: none).
    local_copies: int | None = None
    # A host must renew its claim on its fills this often, or another takes them over.
    fill_lease: float = 30.0
    # Where the other hosts of the store reach this one for the bytes of its
    # fills in progress (None: http(s)://<its --host, or host name>:<port>).
    peer_url: str | None = None
    admin_password: str | None = field(default=None, repr=False)
    session_secret: str | None = field(default=None, repr=False)

    @property
    def mode(self) -> str:
        return "curate" if self.curate else "auto"

    def revalidate_after(self, key: str) -> float | None:
        """The maximum age of the artifact under `key`, if it is revalidated
        (the first matching rule's); None: it is immutable."""
        for rule in self.revalidate:
            if rule.matches(key):
                return rule.max_age
        return None

    @property
    def stream_fills(self) -> bool:
        """Serve a miss's client from its fill as the bytes arrive (auto mode only)."""
        return not (self.curate or self.no_stream_fills)
