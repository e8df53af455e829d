"""The cost of eviction over 100,000 artifacts in the embedded store (SQLite).

    .venv/bin/python bench/eviction.py

Fills a fresh metadata store with N artifacts (each its own blob, a tenth
of them pinned, a fifth sharing a blob with another, last hits spread over a
year) and times, as the cache-host runs them (store.sqlite, reclaim.py,
eviction.py; blob files are absent, so a delete is only the unlink call):

- the choice for a fill that needs a tenth of the stored bytes (what the
  Cached page's "would take next" and --evict lru compute first);
- --evict lru making that room: the choice, then each artifact deleted
  with its event;
- the daily --evict-unused pass over the same store, deleting every
  unpinned artifact not hit for 180 days.

Medians of --runs, each on a fresh copy of the store; writes
bench/results/eviction.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import write_results

from withcache.server.events import Event
from withcache.server.reclaim import Reclaim
from withcache.server.store.files import LocalBlobs
from withcache.server.store.sqlite import SQLiteMetadata

DAY = 86400.0
NOW = 1_800_000_000.0


def build(path: Path, count: int) -> int:
    """A store of `count` artifacts; the bytes stored."""
    meta = SQLiteMetadata(path)
    rng = random.Random(16)
    rows = []
    for n in range(count):
        blob = n - 1 if n % 5 == 1 else n  # a fifth share the previous one's blob
        size = rng.randrange(1 << 20, 64 << 20)
        last_hit = NOW - rng.uniform(0, 365) * DAY if n % 3 else None
        rows.append((f"https://dl.example/{n}/artifact.run", f"{blob:064x}", size,
                     NOW - 400 * DAY, last_hit, n % 10 == 0))  # fmt: skip
    db = meta._db  # the bench fills the tables directly: the API's commit is per fill
    db.execute("BEGIN")
    sizes: dict[str, int] = {}
    for key, sha, size, fetched, last_hit, pinned in rows:
        size = sizes.setdefault(sha, size)
        db.execute(
            "INSERT INTO artifacts (key, scope, sha256, size, headers, fetched_at, last_hit, "
            "pinned) VALUES (?, '', ?, ?, '{}', ?, ?, ?)",
            (key, sha, size, fetched, last_hit, pinned),
        )
    db.execute("COMMIT")
    stored = db.execute("SELECT bytes FROM totals").fetchone()[0]
    asyncio.run(meta.close())
    return stored


async def _noop(event: Event) -> None:
    pass


async def timed(path: Path, job: str, need: int) -> tuple[float, int]:
    """Seconds `job` takes on the store at `path`, and what it counts: the
    artifacts chosen ("choice"), left ("make_room") or evicted ("evict_unused")."""
    meta = SQLiteMetadata(path)
    try:
        reclaim = Reclaim(meta, LocalBlobs(path.parent / "data"), _noop)
        started = time.perf_counter()
        if job == "choice":
            count = len((await reclaim.plan(need)).victims)
        elif job == "make_room":
            freed = await reclaim.make_room(need)
            assert freed >= need, (freed, need)
        else:
            count = await reclaim.evict_unused(NOW - 180 * DAY)
        seconds = time.perf_counter() - started
        if job == "make_room":
            count = (await meta.totals())[0]
        return seconds, count
    finally:
        await meta.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-eviction-") as tmp:
        folder = Path(tmp)
        (folder / "data").mkdir()
        template = folder / "template.db"
        stored = build(template, args.artifacts)
        need = stored // 10
        figures: dict[str, list[float]] = {"choice": [], "make_room": [], "evict_unused": []}
        details: dict[str, int] = {}
        for run in range(args.runs):
            for name in figures:
                copy = folder / f"run{run}-{name}.db"
                shutil.copy(template, copy)
                seconds, count = asyncio.run(timed(copy, name, need))
                figures[name].append(seconds)
                details[name] = count
                copy.unlink()
    medians = {name: statistics.median(times) for name, times in figures.items()}
    print(f"{args.artifacts} artifacts, {stored / 2**40:.1f} TiB stored; medians of {args.runs}:")
    print(f"  choice for a tenth of the bytes: {medians['choice'] * 1000:8.1f} ms "
          f"({details['choice']} artifacts chosen)")  # fmt: skip
    print(f"  --evict lru making that room:    {medians['make_room'] * 1000:8.1f} ms "
          f"({args.artifacts - details['make_room']} evicted)")  # fmt: skip
    print(f"  --evict-unused pass (180 days):  {medians['evict_unused'] * 1000:8.1f} ms "
          f"({details['evict_unused']} evicted)")  # fmt: skip
    write_results("eviction", {
        "artifacts": args.artifacts, "runs": args.runs,
        "median_seconds": medians, "counts": details,
    })  # fmt: skip


if __name__ == "__main__":
    main()
