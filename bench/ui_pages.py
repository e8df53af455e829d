"""How fast the operator UI's pages render with a big store behind them.

Seeds a fresh data dir through the Metadata interface with 10,000 cached
artifacts (each committed by a fill, so 10,000 finished fills too), 10,000
misses and 30,000 events, starts a real `withcache-server` on 127.0.0.1, logs
in, and fetches each page's first screen repeatedly over one keep-alive
connection. Reports the median and worst of the server's own render time (the
Server-Timing header) and of the whole request as the client saw it, against
the target: under 200 ms median.

    .venv/bin/python bench/ui_pages.py [--rows 10000] [--runs 21]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import random
import re
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

from common import Server

from withcache.server.records import Artifact
from withcache.server.store import Lease
from withcache.server.store.sqlite import SQLiteMetadata

TARGET_MS = 200.0
PASSWORD = "bench"
VENDORS = ("developer.download.nvidia.com/compute/cuda", "repo.radeon.com/rocm/apt",
           "content.mellanox.com/doca", "downloads.intel.com/firmware")  # fmt: skip
PAGES = [
    ("overview", "/"),
    ("misses", "/misses"),
    ("downloads", "/downloads"),
    ("downloads, live table", "/downloads/table?state=&page=1&limit=50"),
    ("cached", "/cached"),
    ("cached by size", "/cached?sort=size&order=desc"),
    ("cached by URL", "/cached?sort=key&order=asc"),
    ("cached by hits", "/cached?sort=hits&order=desc"),
    ("cached, filtered", "/cached?q=cuda"),
    ("cached, last page", "/cached?page=200"),
    ("events", "/events"),
    ("events of a kind", "/events?kind=fill.finished"),
    ("add from URL", "/add"),
]


async def store_artifact(
    metadata: SQLiteMetadata, url: str, sha256: str, size: int, now: float
) -> tuple[Artifact, int]:
    """An artifact as a fill would leave it (queued, claimed, committed); its fill's id."""
    lease = Lease("bench", now + 60)
    fill, _ = await metadata.enqueue_fill(url, "", url, "miss", now)
    claimed = await metadata.claim_fill(now, lease)
    assert claimed is not None and claimed.id == fill.id
    artifact = await metadata.commit_artifact(claimed, sha256, size, {}, url, now, lease.holder)
    assert artifact is not None
    return artifact, fill.id


async def seed(data_dir: Path, rows: int) -> None:
    rng = random.Random(8)
    metadata = SQLiteMetadata(data_dir / "cache.db")
    now = time.time()
    for n in range(rows):
        url = f"https://{VENDORS[n % len(VENDORS)]}/{n // 100}/artifact-{n}.tar.gz"
        size = rng.randrange(1 << 20, 1 << 34)
        artifact, fill_id = await store_artifact(metadata, url, f"{n:064x}", size, now - n)
        await metadata.add_hits({artifact.id: (rng.randrange(500), now - rng.randrange(86400))})
        for kind in ("fill.queued", "fill.started", "fill.finished"):
            await metadata.add_event(kind, url, None, {"fill_id": fill_id}, now - n)
    for n in range(rows):
        url = f"https://{VENDORS[n % len(VENDORS)]}/missed/{n}/driver-{n}.run"
        await metadata.record_miss(url, url, "awaiting approval", now - n)
    await metadata.close()


class Client:
    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.cookie = ""

    def request(self, method: str, path: str, body: str | None = None) -> tuple[int, float, str]:
        headers = {"Cookie": self.cookie}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        response.read()
        cookie = response.headers.get("Set-Cookie")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        timing = re.search(r"dur=([\d.]+)", response.headers.get("Server-Timing", ""))
        return response.status, float(timing[1]) if timing else float("nan"), path


def measure(port: int, runs: int) -> list[tuple[str, list[float], list[float]]]:
    client = Client(port)
    status, _, _ = client.request("POST", "/login", urlencode({"password": PASSWORD}))
    assert status == 303 and client.cookie, "login failed"
    results = []
    for name, path in PAGES:
        client.request("GET", path)  # warm: templates compiled, pages in SQLite's cache
        server_ms, client_ms = [], []
        for _ in range(runs):
            started = time.perf_counter()
            status, rendered, _ = client.request("GET", path)
            client_ms.append((time.perf_counter() - started) * 1000)
            assert status == 200, (path, status)
            server_ms.append(rendered)
        results.append((name, server_ms, client_ms))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000, help="artifacts, and misses")
    parser.add_argument("--runs", type=int, default=21, help="requests per page")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="withcache-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        started = time.perf_counter()
        asyncio.run(seed(data_dir, args.rows))
        print(f"seeded {args.rows} artifacts, {args.rows} fills, {args.rows} misses and "
              f"{3 * args.rows} events in {time.perf_counter() - started:.1f} s")  # fmt: skip
        env = {"WITHCACHE_ADMIN_PASSWORD": PASSWORD}
        with Server(data_dir, "--max-bytes", "100T", env=env) as server:
            results = measure(server.port, args.runs)
    print(f"\n{'page':24} {'server median':>14} {'max':>8} {'client median':>14} {'max':>8}")
    slow = []
    for name, server_ms, client_ms in results:
        server_median, client_median = statistics.median(server_ms), statistics.median(client_ms)
        print(f"{name:24} {server_median:11.1f} ms {max(server_ms):5.1f} ms "
              f"{client_median:11.1f} ms {max(client_ms):5.1f} ms")  # fmt: skip
        if client_median >= TARGET_MS:
            slow.append(name)
    verdict = f"over the {TARGET_MS:.0f} ms target: {', '.join(slow)}" if slow else "all under"
    print(f"\n{args.runs} requests per page; medians {verdict}"
          f"{'' if slow else f' the {TARGET_MS:.0f} ms target'}.")  # fmt: skip
    raise SystemExit(1 if slow else 0)


if __name__ == "__main__":
    main()
