"""`withcache`: the operator's command line, over the cache-host's JSON API.

Stdlib only. The cache-host comes from WITHCACHE_SERVER (or --server), the
token from WITHCACHE_TOKEN; errors are one line on stderr and an exit status
that says what went wrong (see cli.api: 1 refused or failed, 2 usage,
3 unreachable, 4 not allowed).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from withcache import __version__
from withcache.cli import commands, imports
from withcache.cli.api import CONNECT_TIMEOUT, READ_TIMEOUT, USAGE, CommandError

PROG = "withcache"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CommandError(f"{message} (see {self.prog} --help)", USAGE)


def _limit(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"invalid limit {text!r}: give 1 to 1000")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(
            f"invalid number of seconds {text!r}: give more than 0, at most 3600"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Operate a withcache cache-host over its API.",
        epilog="Environment: WITHCACHE_SERVER (the cache-host's URL), WITHCACHE_TOKEN (an API "
        "token), WITHCACHE_ADMIN_PASSWORD (for `token` commands without a token), "
        "WITHCACHE_CONNECT_TIMEOUT, WITHCACHE_TIMEOUT. Exit status: 0 done, 1 refused or "
        "failed, 2 usage, 3 cache-host unreachable or silent, 4 not allowed (token missing, "
        "wrong, revoked or read-only).",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "--server", metavar="URL", help="the cache-host (default: $WITHCACHE_SERVER)"
    )
    parser.add_argument(
        "--connect-timeout", metavar="SECONDS", type=_seconds,
        help=f"give up on connecting after this long (default: $WITHCACHE_CONNECT_TIMEOUT, "
        f"else {CONNECT_TIMEOUT:g})",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", metavar="SECONDS", type=_seconds,
        help=f"give up on an answer after this long (default: $WITHCACHE_TIMEOUT, else "
        f"{READ_TIMEOUT:g})",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(
        name: str, run: commands.Command, help: str, parent: Any = sub, **kw: object
    ) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help, description=help, **kw)
        p.set_defaults(run=run)
        p.add_argument("--json", action="store_true", help="print the API's JSON answer")
        return p

    p = command("ls", commands.ls, "list cached artifacts, newest first")
    p.add_argument("query", nargs="?", help="only URLs containing this (or this SHA-256)")
    p.add_argument(
        "--sort", metavar="COLUMN",
        help="key, size, hits, misses, sha256, fetched_at (default) or last_hit",
    )  # fmt: skip
    order = p.add_mutually_exclusive_group()
    order.add_argument("--asc", action="store_true", help="ascending")
    order.add_argument("--desc", action="store_true", help="descending")
    p.add_argument("--limit", type=_limit, default=50, help="rows to show (default 50)")
    p.add_argument("--pinned", action="store_true", help="only pinned artifacts")

    p = command(
        "add", commands.add,
        "fetch a URL into the cache before anyone asks for it (a cached URL is not fetched "
        "again: 'already cached', exit 0); or every URL of a list (-f), or every file of a "
        "vendor's checksum file (--sums)",
    )  # fmt: skip
    p.add_argument("url", nargs="?", help="an http(s) URL, or an oras:// reference to an OCI "
                   "artifact's layer (docs/oci.md)")  # fmt: skip
    p.add_argument("--sha256", metavar="HEX", help="the expected SHA-256: other bytes fail")
    p.add_argument(
        "-f", "--file", metavar="FILE|-",
        help="add every URL in FILE (- for stdin): one a line, optionally after its digest as "
        "sha256sum writes it; blank lines and # comments are skipped",
    )  # fmt: skip
    p.add_argument(
        "--sums", metavar="URL",
        help="add every file a checksum file lists (sha256sum, sha512sum or md5sum output; "
        "BSD style too), relative to its URL, each checked against its digest",
    )  # fmt: skip
    p.add_argument("--match", metavar="GLOB", help="with --sums: only the files GLOB matches")
    p.add_argument("--wait", action="store_true",
                   help="wait for the fills (one progress bar on a terminal)")  # fmt: skip
    p.add_argument("--refresh", action="store_true", help="fetch it again even if it is cached")
    p.set_defaults(check=commands.check_add)

    p = command(
        "import", imports.run,
        "store local bytes as artifacts, without their origin: FILE --url URL, DIR "
        "--manifest FILE (lines '<sha256>  <url>  <path>'), or a bundle from `withcache "
        "export` (- for stdin)",
    )  # fmt: skip
    p.add_argument("path", metavar="FILE|DIR|BUNDLE")
    p.add_argument("--url", help="the URL FILE is the artifact of")
    p.add_argument("--sha256", metavar="HEX", help="what FILE must hash to: else nothing is kept")
    p.add_argument("--manifest", metavar="FILE",
                   help="what DIR holds: '<sha256>  <url>  <relative path>' lines")  # fmt: skip
    p.add_argument("--refresh", action="store_true",
                   help="replace artifacts cached with other bytes")  # fmt: skip
    p.set_defaults(check=imports.check)

    p = command(
        "export", imports.export,
        "write a bundle (a plain tar: the artifacts and their manifest) for a cache-host "
        "without a network; filters combine, none: every public artifact",
    )  # fmt: skip
    p.add_argument("-o", "--output", metavar="FILE|-", required=True,
                   help="the bundle (- for stdout)")  # fmt: skip
    p.add_argument("--match", metavar="GLOB", help="only URLs GLOB matches")
    p.add_argument(
        "--since",
        metavar="DATE",
        help="only artifacts fetched since DATE (2025-05-01, or with a time)",
    )
    p.add_argument("--ids", metavar="ID", nargs="+", help="only these artifact ids (1 2 or 1,2)")
    p.add_argument(
        "--include-scoped", action="store_true",
        help="credential-scoped artifacts too: the bundle then holds bytes that needed "
        "credentials, and their scopes (usable only on a host with this one's scope secret)",
    )  # fmt: skip
    p.set_defaults(check=imports.check_export)

    p = command("rm", commands.rm, "delete cached artifacts, by id or by URL")
    p.add_argument("targets", nargs="+", metavar="ID|URL")
    p.set_defaults(check=commands.check_targets)

    for name, run, text in (
        ("pin", commands.pin, "pin cached artifacts, by id or by URL: never evicted, never "
         "revalidated but when asked (withcache refresh)"),
        ("unpin", commands.unpin, "unpin cached artifacts, by id or by URL"),
        ("refresh", commands.refresh, "ask the origins of cached artifacts (by id or URL) now "
         "whether they changed, and fetch the new bytes if they did: fresh, changed or "
         "stale-served (exit 1)"),
    ):  # fmt: skip
        p = command(name, run, text)
        p.add_argument("targets", nargs="+", metavar="ID|URL")
        p.set_defaults(check=commands.check_targets)

    p = command("misses", commands.misses, "list URLs asked for and not cached")
    p.add_argument("query", nargs="?", help="only URLs containing this")
    p.add_argument("--limit", type=_limit, default=50, help="rows to show (default 50)")

    p = command("approve", commands.approve, "fetch recorded misses (under --curate)")
    p.add_argument("urls", nargs="+", metavar="URL")
    p.set_defaults(check=commands.check_urls)

    p = sub.add_parser("token", help="make, revoke and list API tokens")
    tokens = p.add_subparsers(dest="token_command", required=True, parser_class=_Parser)
    t = command(
        "create", commands.token_create,
        "make a token; it is shown once: on stdout, or written to -o FILE (mode 600)",
        parent=tokens,
    )  # fmt: skip
    t.add_argument("name", help="1-64 letters, digits, '.', '_', '-'")
    t.add_argument("--scope", choices=("read", "admin"), default="read",
                   help="read: look only (default); admin: change things too")  # fmt: skip
    t.add_argument("-o", "--output", metavar="FILE",
                   help="write the token to FILE, readable by you only (mode 600)")  # fmt: skip
    t.set_defaults(password_ok=True)
    t = command("revoke", commands.token_revoke, "revoke tokens: they stop working at once",
                parent=tokens)  # fmt: skip
    t.add_argument("names", nargs="+", metavar="NAME")
    t.set_defaults(password_ok=True)
    t = command("ls", commands.token_list, "list tokens (never their values)", parent=tokens)
    t.set_defaults(password_ok=True)

    p = command(
        "verify", commands.verify,
        "re-hash every blob on the cache-host; exit 1 if any is corrupt or missing",
    )  # fmt: skip
    p.add_argument("--quarantine", action="store_true",
                   help="take bad blobs out of service (their artifacts are deleted)")  # fmt: skip
    p.add_argument("--status", action="store_const", const=commands.verify_status, dest="run",
                   help="only show the latest verification")  # fmt: skip
    return parser


def run(argv: Sequence[str], env: Mapping[str, str]) -> int:
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "check", None):
            args.check(args)
        api = commands.connect(args, env, getattr(args, "password_ok", False))
        return args.run(api, args)
    except CommandError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.status
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> None:
    raise SystemExit(run(sys.argv[1:] if argv is None else argv, os.environ))
