"""`withcache-server`: flags and `WITHCACHE_*` variables into Settings, then run.

Every flag has an environment twin (`--max-bytes` <-> `WITHCACHE_MAX_BYTES`);
a flag beats its variable. Bad values end the program with one line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from withcache import __version__
from withcache.server.log import FORMATS as LOG_FORMATS
from withcache.server.settings import (
    MinFree,
    RevalidateRule,
    Settings,
    parse_duration,
    parse_size,
)

PROG = "withcache-server"


class UsageError(Exception):
    """A bad flag or variable value; the message is shown as is."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("not a whole number") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("not a number") from None


def _port(text: str) -> int:
    port = _int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1-65535 (0 picks a free one)")
    return port


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise ValueError(f"{value} is not a positive number")
    return value


def _non_negative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise ValueError(f"{value} is negative")
    return value


def _log_format(text: str) -> str:
    if text not in LOG_FORMATS:
        raise ValueError("use kv or json")
    return text


def _positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise ValueError(f"{value} is not a positive number")
    return value


def _duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError("it must be above 0")
    return value


def _evict(text: str) -> str:
    if text != "lru":
        raise ValueError("the one policy is lru")
    return text


def _metadata_url(text: str) -> str:
    # Not wrapped by _typed: the message must not repeat a URL that may hold a password.
    if not re.match(r"postgres(ql)?://", text):
        raise argparse.ArgumentTypeError(
            "invalid --metadata URL: use postgresql://user@host:port/database"
        )
    return text


# Bucket (S3, GCS) and container (Azure) names: 3-63 lowercase letters,
# digits, dots and hyphens (Azure takes no dots; it says so itself).
_BLOBS_URL_RE = re.compile(r"(s3|gs|az)://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^?#]*)?")


def _blobs_url(text: str) -> str:
    if not _BLOBS_URL_RE.fullmatch(text):
        raise ValueError("use s3://bucket/prefix, gs://bucket/prefix or az://container/prefix")
    return text.rstrip("/")


def _local_copies(text: str) -> int | str:
    return "auto" if text.strip().lower() == "auto" else parse_size(text)


def _s3_addressing(text: str) -> str:
    if text not in ("auto", "path", "virtual"):
        raise ValueError("use auto, path or virtual")
    return text


def _http_url(text: str) -> str:
    if not re.match(r"https?://[^/?#]+/?$", text):
        raise ValueError("use http(s)://host[:port]")
    return text.rstrip("/")


def _typed(convert: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """Wrap a converter so argparse reports `invalid <what>: <reason>`."""

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: {err}") from None

    parse.__name__ = what
    return parse


def env_name(dest: str) -> str:
    return "WITHCACHE_" + dest.upper()


class Option(NamedTuple):
    dest: str
    convert: Any  # a converter, or "flag" for booleans, or "list" for repeatable
    default: Any
    metavar: str | None
    help: str


_OPTIONS = [
    Option(
        "data_dir", Path, Settings.data_dir, "DIR", "where blobs and the metadata database live"
    ),
    Option("host", str, Settings.host, "ADDR", "address to listen on"),
    Option(
        "port", _typed(_port, "port"), Settings.port, "PORT", "port to listen on (0: any free port)"
    ),
    Option(
        "workers", _typed(_positive_int, "count"), Settings.workers, "N",
        "background origin downloads at a time (a fill a client waits for starts at once)",
    ),
    Option("curate", "flag", False, None, "fetch nothing until an operator approves the miss"),
    Option(
        "max_bytes", _typed(parse_size, "size"), None, "SIZE",
        "cap on stored bytes, e.g. 500G; fills that would cross it are refused (unless "
        "--evict lru makes room)",
    ),
    Option(
        "min_free", _typed(MinFree.parse, "size"), Settings.min_free, "SIZE|N%",
        "free space the data dir's disk must keep, e.g. 5G or 3%; below it no fill starts, "
        "fills that would cross it are refused, and /healthz says degraded",
    ),
    Option("keep_query", "flag", False, None, "make the query string part of the cache key"),
    Option(
        "no_stream_fills", "flag", False, None,
        "answer a miss with 404 and fill in the background (withcache 0.4's way) instead of "
        "streaming the fill to its first clients",
    ),
    Option(
        "allow_origin", "list", (), "GLOB",
        "only fill from hosts matching this glob, e.g. '*.nvidia.com' (repeatable; "
        "the variable takes a comma-separated list)",
    ),
    Option(
        "plain_http_registry", "list", (), "HOST[:PORT]",
        "reach this OCI registry of oras:// references over plain http, not https, e.g. a "
        "lab's own (repeatable; the variable takes a comma-separated list)",
    ),
    Option(
        "allow_private_origins", "flag", False, None,
        "allow fills from loopback, link-local and private addresses",
    ),
    Option("tls_cert", Path, None, "FILE", "serve HTTPS with this certificate chain (PEM)"),
    Option("tls_key", Path, None, "FILE", "private key for --tls-cert (PEM)"),
    Option(
        "miss_retention_days", _typed(_non_negative_float, "number of days"),
        Settings.miss_retention_days, "DAYS", "forget misses not seen for this many days",
    ),
    Option(
        "max_misses", _typed(_positive_int, "count"), Settings.max_misses, "N",
        "keep at most this many misses (the oldest go first)",
    ),
    Option(
        "event_retention_days", _typed(_non_negative_float, "number of days"),
        Settings.event_retention_days, "DAYS", "forget events older than this many days",
    ),
    Option(
        "max_events", _typed(_positive_int, "count"), Settings.max_events, "N",
        "keep at most this many events (the oldest go first)",
    ),
    Option(
        "fill_attempts", _typed(_positive_int, "count"), Settings.fill_attempts, "N",
        "tries per fill before it fails (transient errors only)",
    ),
    Option(
        "retry_delay", _typed(_non_negative_float, "number of seconds"), Settings.retry_delay,
        "SECONDS", "seconds before the first retry of a fill; doubled on each further retry",
    ),
    Option(
        "origin_timeout", _typed(_non_negative_float, "number of seconds"),
        Settings.origin_timeout, "SECONDS",
        "give up on an origin that sends nothing for this many seconds",
    ),
    Option(
        "max_queued_fills", _typed(_positive_int, "count"), Settings.max_queued_fills, "N",
        "fills that misses may have queued or running at once; further misses are recorded "
        "but not fetched (a client waiting for the bytes may go to twice this; operators' "
        "fills always are)",
    ),
    Option(
        "max_queued_fills_per_host", _typed(_positive_int, "count"),
        Settings.max_queued_fills_per_host, "N",
        "the same, for the URLs of one origin (scheme, host and port)",
    ),
    Option(
        "header_timeout", _typed(_positive_float, "number of seconds"), Settings.header_timeout,
        "SECONDS", "close a client connection whose request headers have not all arrived "
        "this long after it connected (or after the last answer on it)",
    ),
    Option(
        "max_client_connections", _typed(_positive_int, "count"),
        Settings.max_client_connections, "N",
        "open connections one client address may have; more are closed unanswered",
    ),
    Option(
        "scrub_every", _typed(_non_negative_float, "number of days"), Settings.scrub_every,
        "DAYS", "re-hash every stored blob once in this many days, at a gentle pace, and "
        "quarantine rotten ones (0: never)",
    ),
    Option(
        "revalidate", "list", (), "GLOB[=MAX_AGE]",
        "check artifacts whose URL matches GLOB (e.g. '*/latest/*') with their origin "
        "again once older than MAX_AGE (30s, 10m, 1h, 7d; default 1h), by a conditional "
        "GET; meanwhile and if the origin is down the cached bytes are served (repeatable; "
        "the variable takes a comma-separated list; unset: every URL is immutable)",
    ),
    Option(
        "negative_ttl", _typed(_duration, "duration"), Settings.negative_ttl, "DURATION",
        "believe an origin's 404 or 410 this long (30s, 5m, 1h): misses of that URL are "
        "answered 404 at once (an operator's retry forgets it)",
    ),
    Option(
        "evict", _typed(_evict, "eviction policy"), None, "lru",
        "when a fill needs room under --max-bytes or --min-free, delete the least recently "
        "used artifacts that are not pinned, oldest hit first (unset: no eviction, the "
        "fill is refused)",
    ),
    Option(
        "evict_unused", _typed(_positive_float, "number of days"), None, "DAYS",
        "delete artifacts not hit for this many days (pins excepted), once a day",
    ),
    Option(
        "log_format", _typed(_log_format, "log format"), Settings.log_format, "kv|json",
        "log lines as key=value pairs or as JSON objects",
    ),
    Option(
        "private_metrics", "flag", False, None,
        "/metrics answers only requests with an API token (any scope)",
    ),
    Option(
        "metadata", _metadata_url, None, "URL",
        "scale-out: keep metadata in this PostgreSQL database (postgresql://user@host/db), "
        "shared by several cache-hosts; unset: SQLite in the data dir",
    ),
    Option(
        "blobs", _typed(_blobs_url, "URL"), None, "URL",
        "scale-out: keep blobs in this bucket, shared by several cache-hosts: "
        "s3://bucket/prefix (S3-compatible; credentials from the standard AWS chain), "
        "gs://bucket/prefix or az://container/prefix (credentials from the usual GOOGLE_* "
        "or AZURE_STORAGE_* variables); unset: files in the data dir",
    ),
    Option(
        "s3_endpoint", _typed(_http_url, "URL"), None, "URL",
        "the S3-compatible store's endpoint, e.g. http://127.0.0.1:8333 (else "
        "AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, or AWS S3 in the region)",
    ),
    Option(
        "s3_region", str, None, "REGION",
        "the S3 store's region (else AWS_REGION, AWS_DEFAULT_REGION, or us-east-1)",
    ),
    Option(
        "s3_addressing", _typed(_s3_addressing, "addressing"), Settings.s3_addressing,
        "auto|path|virtual", "S3 requests to <endpoint>/<bucket> (path) or "
        "<bucket>.<endpoint> (virtual); auto: virtual on AWS, path with --s3-endpoint",
    ),
    Option(
        "redirect_hits", "flag", False, None,
        "answer hits with a 302 to a short-lived presigned URL of the object store, so the "
        "bytes don't pass through the cache-host (needs --blobs)",
    ),
    Option(
        "local_copies", _typed(_local_copies, "size"), "auto", "SIZE|auto",
        "with --blobs: keep verified copies of the hot blobs in the data dir, at most this "
        "many bytes (e.g. 50G; the least recently hit go first; 0: none), and send hits "
        "from them by sendfile instead of streaming them from the object store; auto: half "
        "the data dir's free space above --min-free, as found at start (none with "
        "--redirect-hits)",
    ),
    Option(
        "fill_lease", _typed(_positive_float, "number of seconds"), Settings.fill_lease,
        "SECONDS", "a cache-host renews its claim on its fills within this time, or another "
        "host sharing the store takes them over",
    ),
    Option(
        "peer_url", _typed(_http_url, "URL"), None, "URL",
        "scale-out: the address at which the other cache-hosts sharing the store reach this "
        "one, to stream its fills in progress to their clients (unset: http://<--host, or "
        "this machine's name if --host is a wildcard>:<--port>, https with --tls-cert)",
    ),
]  # fmt: skip
# Flags whose Settings field has another name.
_FIELDS = {"allow_origin": "allow_origins", "metadata": "metadata_url", "blobs": "blobs_url",
           "plain_http_registry": "plain_http_registries"}  # fmt: skip
# The usual AWS variables, read when neither the flag nor its WITHCACHE_ twin is set.
_AWS_FALLBACKS = {
    "s3_endpoint": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "s3_region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="The withcache cache-host: serves cached artifacts by origin URL "
        "and fills misses from the origin.",
        epilog="Also read from the environment: WITHCACHE_ADMIN_PASSWORD (operator "
        "password; unset leaves the UI open), WITHCACHE_SESSION_SECRET, and with --blobs "
        "the object store's own variables (AWS_*, GOOGLE_*, AZURE_STORAGE_*).",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    for opt in _OPTIONS:
        flag = "--" + opt.dest.replace("_", "-")
        shown = f"{opt.default}" if opt.default not in (None, (), False) else "unset"
        help_text = f"{opt.help} (default: {shown}; env {env_name(opt.dest)})"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        common = {"dest": opt.dest, "default": None, "help": help_text}
        if opt.convert == "flag":
            parser.add_argument(flag, action="store_true", **common)
        elif opt.convert == "list":
            parser.add_argument(flag, action="append", metavar=opt.metavar, **common)
        else:
            parser.add_argument(flag, type=opt.convert, metavar=opt.metavar, **common)
    return parser


def _parse_bool(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise UsageError(f"{name}={text!r} is not a boolean (use 1 or 0)")


def settings_from(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Settings from command-line flags over `WITHCACHE_*` variables over defaults."""
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    for dest, convert, default, _, _ in _OPTIONS:
        value = getattr(args, dest)
        name = env_name(dest)
        if name not in environ:
            name = next((n for n in _AWS_FALLBACKS.get(dest, ()) if environ.get(n)), name)
        if value is None and name in environ:
            raw = environ[name]
            if convert == "flag":
                value = _parse_bool(name, raw)
            elif convert == "list":
                value = [part.strip() for part in raw.split(",") if part.strip()]
            else:
                try:
                    value = convert(raw)
                except (ValueError, argparse.ArgumentTypeError) as err:
                    raise UsageError(f"{name}: {err}") from None
        if value is None:
            value = default
        values[_FIELDS.get(dest, dest)] = value
    values["allow_origins"] = tuple(values["allow_origins"])
    values["plain_http_registries"] = tuple(
        host.lower().removesuffix(":443") for host in values["plain_http_registries"]
    )
    values["revalidate"] = tuple(_rule(text) for text in values["revalidate"])
    values["s3_region"] = values["s3_region"] or Settings.s3_region
    if (values["tls_cert"] is None) != (values["tls_key"] is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if values["redirect_hits"] and not values["blobs_url"]:
        raise UsageError("--redirect-hits needs --blobs s3://…: local blobs have no URL to send")
    if values["local_copies"] == "auto":
        # Redirected hits don't pass through the host, whose copies would be
        # only its own fills': an operator who wants those sent from here says so.
        values["local_copies"] = 0 if values["redirect_hits"] else None
    elif values["local_copies"] and not values["blobs_url"]:
        raise UsageError("--local-copies needs --blobs s3://…: local blobs are local already")
    return Settings(
        **values,
        admin_password=environ.get("WITHCACHE_ADMIN_PASSWORD") or None,
        session_secret=environ.get("WITHCACHE_SESSION_SECRET") or None,
    )


def _rule(text: str) -> RevalidateRule:
    try:
        return RevalidateRule.parse(text)
    except ValueError as err:
        raise UsageError(f"invalid --revalidate {text!r}: {err}") from None


def fail(message: str) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> None:
    try:
        settings = settings_from(sys.argv[1:] if argv is None else argv, os.environ)
    except UsageError as err:
        fail(str(err))
    # Imported here so that `--help` and bad flags answer without loading aiohttp.
    from withcache.server.run import StartupError, serve

    try:
        serve(settings)
    except StartupError as err:
        fail(str(err))
    except KeyboardInterrupt:
        pass
