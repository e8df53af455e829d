"""`withcache add -f FILE` and `withcache add --sums URL`: many artifacts at
once, as one list the cache-host keeps (stdlib only).

The cache-host reads the lines (so the UI and the API read them alike): each
is added as `add URL` adds one, and a bad line is reported with its number
while the rest still go. `--wait` follows the whole list with one bar
(artifacts ready, bytes, rate, ETA), then prints a summary; exit status 1 if
any line was bad or any artifact failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from withcache.cli.api import USAGE, Api, CommandError
from withcache.cli.progress import Bar, figures, pauses
from withcache.server.settings import format_size

LIST_ANSWER_SECONDS = 300.0  # adding 10,000 lines, or fetching a checksum file, takes a while
PROBLEMS = ("refused", "failed", "cancelled")
PAGE = 1000


def read_list(path: str) -> tuple[str, str]:
    """The text of the list at `path` (- for stdin) and what to call it."""
    try:
        if path == "-":
            return sys.stdin.read(), "-"
        with open(path, encoding="utf-8", errors="surrogateescape") as file:
            return file.read(), os.path.basename(path)
    except OSError as err:
        raise CommandError(f"can't read the list {path}: {err.strerror}", USAGE) from None


def add(api: Api, args: argparse.Namespace) -> int:
    if args.file is not None:
        text, source = read_list(args.file)
        body: dict[str, Any] = {"text": text, "source": source}
    else:
        body = {"sums": args.sums}
        if args.match:
            body["match"] = args.match
    if args.refresh:
        body["refresh"] = True
    made = api.patient(LIST_ANSWER_SECONDS).post("/lists", body)
    for item in _items(api, made["id"], "refused"):
        print(f"line {item['line']}: {item['note']}: {item['url']}", file=sys.stderr)
    counts = made["counts"]
    print(
        f"list {made['id']}: {made['wanted']} artifacts ({counts.get('cached', 0)} cached "
        f"already, {made['active']} to fetch); {made['refused']} refused, "
        f"{counts.get('duplicate', 0)} repeated",
        file=sys.stderr,
    )
    if args.wait:
        made = _wait(api, made)
    if args.json:
        print(json.dumps({**made, "problems": _problems(api, made["id"])}, indent=2))
    elif args.wait:
        print(summary(made))
    # Without --wait, only the lines can be judged: the fills have just begun.
    return 1 if made["refused"] or (args.wait and made["failed"]) else 0


def _wait(api: Api, made: dict[str, Any]) -> dict[str, Any]:
    bar = Bar(sys.stderr)
    waits = pauses()
    try:
        while not made["finished"]:
            _draw(bar, made)
            time.sleep(next(waits))
            made = api.get(f"/lists/{made['id']}")
    except KeyboardInterrupt:
        bar.close()
        print(f"stopped waiting; list {made['id']} goes on", file=sys.stderr)
        raise
    _draw(bar, made)
    bar.close()
    for item in _items(api, made["id"], "failed", "cancelled"):
        print(f"line {item['line']}: {item['state']}: {item['note']}: {item['url']}",
              file=sys.stderr)  # fmt: skip
    return made


def _draw(bar: Bar, made: dict[str, Any]) -> None:
    wanted = made["wanted"]
    more = f" + {made['unsized']} of unknown size" if made["unsized"] else ""
    sizes = f"{format_size(made['bytes_done'])} of {format_size(made['bytes_total'])}{more}"
    parts = [f"{made['ready']} of {wanted} artifacts", sizes, *figures(made["rate"], made["eta"])]
    if made["failed"]:
        parts.append(f"{made['failed']} failed")
    bar.draw(made["ready"] / wanted if wanted else None, parts)


def summary(made: dict[str, Any]) -> str:
    counts = made["counts"]
    return (
        f"list {made['id']}: {made['ready']} of {made['wanted']} artifacts cached "
        f"({counts.get('done', 0)} fetched, {counts.get('cached', 0)} already), "
        f"{made['failed']} failed, {made['refused']} refused"
    )


def _items(api: Api, list_id: int, *states: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for state in states:
        offset = 0
        while True:
            page = api.get(f"/lists/{list_id}/items", state=state, offset=offset, limit=PAGE)
            found += page["items"]
            offset += PAGE
            if offset >= page["total"]:
                break
    return sorted(found, key=lambda item: item["line"])


def _problems(api: Api, list_id: int) -> list[dict[str, Any]]:
    return _items(api, list_id, *PROBLEMS)
