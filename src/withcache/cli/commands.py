"""What each `withcache` subcommand does, over the cache-host's JSON API.

Results go to stdout (tables, or the API's JSON with --json); progress and
notes go to stderr, so `TOKEN=$(withcache token create ci)` and pipes get
only the result.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from withcache import cachehost, keys
from withcache.cli import lists, progress
from withcache.cli.api import CONNECT_TIMEOUT, DENIED, READ_TIMEOUT, USAGE, Api, CommandError
from withcache.cli.progress import Bar
from withcache.server.digests import SHA256_RE
from withcache.server.settings import format_size

FINISHED = ("done", "failed", "cancelled")


def _timeout(given: float | None, env: Mapping[str, str], name: str, default: float) -> float:
    if given is not None:
        return given
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise CommandError(
            f"{name}={text!r} is not a number of seconds (more than 0, at most 3600)", USAGE
        )
    return value


def connect(args: argparse.Namespace, env: Mapping[str, str], password_ok: bool = False) -> Api:
    """The API, authenticated with WITHCACHE_TOKEN (or, where `password_ok`,
    the admin password: WITHCACHE_ADMIN_PASSWORD or asked on the terminal)."""
    server = args.server or env.get("WITHCACHE_SERVER", "")
    if not server:
        raise CommandError("set WITHCACHE_SERVER (or --server) to the cache-host's URL", USAGE)
    try:
        base = cachehost.parse(server).base
    except cachehost.BadCacheHost as err:
        raise CommandError(f"bad cache-host URL {server!r}: {err}", USAGE) from None
    timeouts = {
        "connect_timeout": _timeout(
            args.connect_timeout, env, "WITHCACHE_CONNECT_TIMEOUT", CONNECT_TIMEOUT
        ),
        "read_timeout": _timeout(args.timeout, env, "WITHCACHE_TIMEOUT", READ_TIMEOUT),
    }
    token = env.get("WITHCACHE_TOKEN")
    if token:
        return Api.with_token(base, token, **timeouts)
    if password_ok:
        password = env.get("WITHCACHE_ADMIN_PASSWORD")
        if password is None and sys.stdin.isatty():
            password = getpass.getpass("withcache admin password: ")
        if password is not None:
            return Api.with_password(base, password, **timeouts)
        raise CommandError(
            "set WITHCACHE_TOKEN (an admin token) or WITHCACHE_ADMIN_PASSWORD", DENIED
        )
    raise CommandError(
        "set WITHCACHE_TOKEN to an API token (an operator makes one with `withcache token "
        "create NAME`)", DENIED,
    )  # fmt: skip


def check_url(url: str) -> None:
    try:
        keys.check_url(url)
    except keys.BadURL as err:
        raise CommandError(f"bad URL {url!r}: {err}", USAGE) from None


def check_add(args: argparse.Namespace) -> None:
    """Refuse, before any call, what the cache-host would refuse anyway (exit 2)."""
    given = [what for what, value in (("a URL", args.url), ("-f", args.file),
                                      ("--sums", args.sums)) if value is not None]  # fmt: skip
    if len(given) != 1:
        raise CommandError("give one of: a URL, -f FILE, --sums URL (see withcache add --help)",
                           USAGE)  # fmt: skip
    if args.match is not None and args.sums is None:
        raise CommandError("--match goes with --sums", USAGE)
    if args.sha256 is not None and args.url is None:
        raise CommandError("--sha256 goes with a URL (a list gives each line's digest)", USAGE)
    if args.url is not None:
        check_url(args.url)
    if args.sums is not None:
        check_url(args.sums)
    check_sha256(args.sha256)


def check_sha256(value: str | None) -> None:
    if value is not None and not SHA256_RE.fullmatch(value):
        raise CommandError(f"bad --sha256 {value!r}: give 64 hex digits", USAGE)


def check_urls(args: argparse.Namespace) -> None:
    for url in args.urls:
        check_url(url)


def check_targets(args: argparse.Namespace) -> None:
    """`rm` takes artifact ids and URLs, nothing else."""
    for target in args.targets:
        if not (target.isascii() and target.isdigit()):
            check_url(target)


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    """Left-aligned columns; the last column (a URL, usually) is never padded."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=False)]
        print("  ".join([*cells, str(row[-1])]))


def _when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else "-"


def _shown(listing: dict[str, Any], what: str) -> None:
    shown, total = len(listing["items"]), listing["total"]
    if shown < total:
        print(f"({shown} of {total} {what} shown; --limit for more)", file=sys.stderr)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


# -- commands


def ls(api: Api, args: argparse.Namespace) -> int:
    order = "asc" if args.asc else "desc" if args.desc else None
    listing = api.get(
        "/artifacts", q=args.query, sort=args.sort, order=order, limit=args.limit,
        pinned="true" if args.pinned else None,
    )  # fmt: skip
    if args.json:
        print_json(listing)
        return 0
    # FROM: "import" when the bytes were uploaded (withcache import): no origin vouched for them.
    rows = [
        (a["id"], format_size(a["size"]), a["hits"], _when(a["fetched_at"]),
         _when(a["last_hit"]), "pinned" if a["pinned"] else "-",
         "import" if a["imported"] else "origin", a["url"])
        for a in listing["items"]
    ]  # fmt: skip
    _table(rows, ("ID", "SIZE", "HITS", "FETCHED", "LAST HIT", "PIN", "FROM", "URL"))
    _shown(listing, "artifacts")
    return 0


def result(artifact: dict[str, Any]) -> None:
    """The line scripts read: SHA-256, size in bytes, URL (like sha256sum, plus the size)."""
    print(f"{artifact['sha256']}  {artifact['size']}  {artifact['url']}")


def add(api: Api, args: argparse.Namespace) -> int:
    if args.url is None:
        return lists.add(api, args)
    body: dict[str, Any] = {"url": args.url}
    if args.sha256:
        body["sha256"] = args.sha256
    if args.refresh:
        body["refresh"] = True
    answer = api.post("/fills", body)
    if api.status == 200:  # cached already: nothing fetched
        print(f"already cached: {answer['url']} (--refresh fetches it again)", file=sys.stderr)
        print_json(answer) if args.json else result(answer)
        return 0
    joined = " (it was being fetched already)" if api.status == 202 else ""
    print(f"fill {answer['id']} queued: {answer['url']}{joined}", file=sys.stderr)
    if not args.wait:
        if args.json:
            print_json(answer)
        return 0
    return _wait_fill(api, answer["id"], args.json)


def _wait_fill(api: Api, fill_id: int, as_json: bool) -> int:
    bar = Bar(sys.stderr)
    try:
        for pause in progress.pauses():
            fill = api.get(f"/fills/{fill_id}")
            if fill["state"] in FINISHED:
                break
            note = "queued" if fill["state"] == "queued" else ""
            bar.show(fill["bytes_done"], fill["total"], fill["rate"], fill["eta"], note)
            time.sleep(pause)
    except KeyboardInterrupt:
        bar.close()
        print(f"stopped waiting; fill {fill_id} goes on", file=sys.stderr)
        return 130
    if fill["state"] == "done":
        bar.show(fill["bytes_done"], fill["total"] or fill["bytes_done"])
    bar.close()
    if fill["state"] != "done":
        raise CommandError(f"fill {fill_id} {fill['state']}: {fill['error'] or fill['url']}")
    found = [a for a in api.get("/artifacts", url=fill["url"])["items"] if not a["scoped"]]
    if not found:
        raise CommandError(f"fill {fill_id} is done, but {fill['url']} is not cached (deleted?)")
    print_json(found[0]) if as_json else result(found[0])
    return 0


def rm(api: Api, args: argparse.Namespace) -> int:
    """Delete artifacts named by id or by URL (every credential scope of it)."""

    def delete(artifact_id: int) -> dict[str, Any]:
        gone = api.delete(f"/artifacts/{artifact_id}")
        if not args.json:
            print(f"deleted {gone['id']}: {gone['url']} ({gone['size']} bytes)")
        return gone

    return _each_artifact(api, args, delete)


def pin(api: Api, args: argparse.Namespace) -> int:
    return _pinning(api, args, True)


def unpin(api: Api, args: argparse.Namespace) -> int:
    return _pinning(api, args, False)


def _pinning(api: Api, args: argparse.Namespace, pinned: bool) -> int:
    def act(artifact_id: int) -> dict[str, Any]:
        path = f"/artifacts/{artifact_id}/pin"
        done = api.post(path, {}) if pinned else api.delete(path)
        if not args.json:
            print(f"{'pinned' if pinned else 'unpinned'} {done['id']}: {done['url']}")
        return done

    return _each_artifact(api, args, act)


def refresh(api: Api, args: argparse.Namespace) -> int:
    stale = []

    def refresh_one(artifact_id: int) -> dict[str, Any]:
        done = api.post(f"/artifacts/{artifact_id}/refresh", {})
        artifact, outcome = done["artifact"], done["outcome"]
        if outcome == "stale-served":
            stale.append(f"{artifact['url']} ({done['error']})")
        elif args.json:
            pass
        elif outcome == "running":
            print(f"changed, the new bytes are being fetched: {artifact['url']}")
        else:
            print(f"{outcome}: {artifact['sha256']}  {artifact['size']}  {artifact['url']}")
        return done

    _each_artifact(api, args, refresh_one)
    if stale:
        raise CommandError("the origin could not say, the cached bytes stay: " + ", ".join(stale))
    return 0


def _each_artifact(api: Api, args: argparse.Namespace, act: Callable[[int], dict[str, Any]]) -> int:
    """Act on the artifacts args.targets name, by id or by URL (every
    credential scope of it); exit 1 naming the targets that are not cached."""
    missing, done = [], []
    for target in args.targets:
        if target.isascii() and target.isdigit():
            found = [{"id": int(target)}]
        else:
            found = api.get("/artifacts", url=target)["items"]
            if not found:
                missing.append(target)
        for artifact in found:
            try:
                done.append(act(artifact["id"]))
            except CommandError as err:
                if err.status != 1:
                    raise
                missing.append(f"{target} ({err})")
    if args.json:
        print_json(done)
    if missing:
        raise CommandError("not cached: " + ", ".join(missing))
    return 0


def misses(api: Api, args: argparse.Namespace) -> int:
    listing = api.get("/misses", q=args.query, limit=args.limit)
    if args.json:
        print_json(listing)
        return 0
    rows = [(m["count"], _when(m["last_seen"]), m["reason"], m["url"]) for m in listing["items"]]
    _table(rows, ("COUNT", "LAST SEEN", "REASON", "URL"))
    _shown(listing, "misses")
    return 0


def approve(api: Api, args: argparse.Namespace) -> int:
    failed, fills = [], []
    for url in args.urls:
        try:
            fill = api.post("/misses/approve", {"url": url})
        except CommandError as err:
            if err.status != 1:
                raise
            failed.append(f"{url}: {err}")
            continue
        fills.append(fill)
        if not args.json:
            print(f"fill {fill['id']} queued: {fill['url']}")
    if args.json:
        print_json(fills)
    if failed:
        raise CommandError("; ".join(failed))
    return 0


def token_create(api: Api, args: argparse.Namespace) -> int:
    if args.output:
        _check_writable(args.output)
    made = api.post("/tokens", {"name": args.name, "scope": args.scope})
    where = "shown this once"
    if args.output:
        _write_private(args.output, made["token"] + "\n")
        where = f"written to {args.output} (mode 600), and shown nowhere else"
    elif not args.json:
        print(made["token"])
    if args.json:
        print_json({k: v for k, v in made.items() if k != "token" or not args.output})
    print(f"token {made['name']!r} ({made['scope']}): {where}; keep it somewhere safe",
          file=sys.stderr)  # fmt: skip
    return 0


def _check_writable(path: str) -> None:
    """Fail before a token is made that could not be saved (exit 2)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise CommandError(f"can't write the token to {path}: no such folder, or not writable",
                           USAGE)  # fmt: skip


def _write_private(path: str, text: str) -> None:
    """Write `text` to `path`, readable and writable by its owner only: a token
    file must never be world-readable, not even for a moment."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as file:
            os.fchmod(file.fileno(), 0o600)  # an existing file keeps its old mode otherwise
            file.write(text)
    except OSError as err:
        raise CommandError(f"can't write the token to {path}: {err.strerror}") from None


def token_revoke(api: Api, args: argparse.Namespace) -> int:
    for name in args.names:
        api.delete(f"/tokens/{name}")
        if not args.json:
            print(f"revoked {name}")
    if args.json:
        print_json({"revoked": args.names})
    return 0


def token_list(api: Api, args: argparse.Namespace) -> int:
    listing = api.get("/tokens")
    if args.json:
        print_json(listing)
        return 0
    rows = [
        (t["scope"], _when(t["created_at"]), _when(t["last_used"]), t["name"])
        for t in listing["items"]
    ]
    _table(rows, ("SCOPE", "CREATED", "LAST USED", "NAME"))
    return 0


def verify(api: Api, args: argparse.Namespace) -> int:
    run = api.post("/verify", {"quarantine": args.quarantine})
    bar = Bar(sys.stderr)
    try:
        waits = progress.pauses()
        while run["state"] == "running":
            note = f"{run['checked']} of {run['blobs']} blobs"
            bar.show(run["bytes_checked"], run["bytes_total"] or None, note=note)
            time.sleep(next(waits))
            run = api.get("/verify")
    except KeyboardInterrupt:
        bar.close()
        print("stopped waiting; the verification goes on (withcache verify --status)",
              file=sys.stderr)  # fmt: skip
        return 130
    bar.close()
    return _report(run, args.json)


def verify_status(api: Api, args: argparse.Namespace) -> int:
    return _report(api.get("/verify"), args.json)


def _report(run: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print_json(run)
    else:
        for bad in run["corrupt"]:
            urls = ", ".join(a["url"] for a in bad["artifacts"])
            action = "quarantined" if bad["quarantined"] else "corrupt"
            print(f"{action}  {bad['sha256']}  {bad['problem']}  {urls}")
        print(
            f"{run['state']}: {run['checked']} of {run['blobs']} blobs "
            f"({format_size(run['bytes_checked'])}) checked, {len(run['corrupt'])} bad",
            file=sys.stderr,
        )
    if run["error"]:
        raise CommandError(f"verification failed: {run['error']}")
    return 1 if run["corrupt"] or run["state"] == "running" else 0


Command = Callable[[Api, argparse.Namespace], int]
