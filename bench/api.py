"""What the API, /metrics, verify and the `withcache` command cost.

Seeds a data dir like bench/ui_pages.py (10,000 artifacts, fills and misses,
30,000 events), starts a real `withcache-server` on 127.0.0.1, makes an API
token and times over one keep-alive connection: API listings, /status
against /healthz (the same work without the token check, so the difference
is what authentication costs), and a /metrics scrape. Then it stores real
blobs (--verify-mib in all) and times `verify`, and times the `withcache`
command with hyperfine. Medians throughout.

    .venv/bin/python bench/api.py [--rows 10000] [--runs 51] [--verify-mib 1024] [--cli-runs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

from common import Server
from ui_pages import seed, store_artifact

from withcache.server.metrics import Tally
from withcache.server.store.files import LocalBlobs
from withcache.server.store.sqlite import SQLiteMetadata

PASSWORD = "bench"
REQUESTS = [
    ("GET /healthz (no token)", "/healthz"),
    ("GET /api/v1/status", "/api/v1/status"),
    ("GET /metrics", "/metrics"),
    ("artifacts, first page", "/api/v1/artifacts"),
    ("artifacts by size", "/api/v1/artifacts?sort=size&order=desc"),
    ("artifacts, q=cuda", "/api/v1/artifacts?q=cuda"),
    ("artifacts, last page", "/api/v1/artifacts?offset=9950"),
    ("artifact by url", "/api/v1/artifacts?url=https://developer.download.nvidia.com/"
     "compute/cuda/7/artifact-700.tar.gz"),
    ("fills", "/api/v1/fills"),
    ("misses", "/api/v1/misses"),
    ("events", "/api/v1/events"),
    ("openapi.json", "/api/v1/openapi.json"),
]  # fmt: skip


class Client:
    def __init__(self, port: int, token: str | None = None) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def call(self, method: str, path: str, body: object = None, headers: dict | None = None):
        sent = {**self.headers, **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        self.connection.request(method, path, body=data, headers=sent)
        response = self.connection.getresponse()
        raw = response.read()
        return response.status, raw


def token(port: int) -> str:
    basic = base64.b64encode(f"op:{PASSWORD}".encode()).decode()
    status, raw = Client(port).call(
        "POST", "/api/v1/tokens", {"name": "bench", "scope": "admin"},
        {"Authorization": f"Basic {basic}"},
    )  # fmt: skip
    assert status == 201, raw
    return json.loads(raw)["token"]


def time_requests(client: Client, runs: int) -> list[tuple[str, float, float]]:
    results = []
    for name, path in REQUESTS:
        client.call("GET", path)  # warm
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            status, _ = client.call("GET", path)
            samples.append((time.perf_counter() - started) * 1000)
            assert status == 200, (path, status)
        results.append((name, statistics.median(samples), max(samples)))
    return results


async def store_blobs(data_dir: Path, total_mib: int, count: int = 8) -> None:
    """`count` real blobs of total_mib in all, committed as artifacts."""
    metadata = SQLiteMetadata(data_dir / "cache.db")
    blobs = LocalBlobs(data_dir)
    chunk = os.urandom(1 << 20)
    for n in range(count):
        writer = blobs.begin()
        for i in range(total_mib // count):
            shift = (i * 8 + n) % 4096  # every 1 MiB different, every blob different
            await writer.write(chunk[shift:] + chunk[:shift])
        size, sha = writer.size, writer.hexdigest()
        await writer.commit()
        url = f"https://bench.example/verify/{n}.bin"
        await store_artifact(metadata, url, sha, size, time.time())
    await metadata.close()


def time_verify(port: int, admin: str, runs: int) -> list[float]:
    client = Client(port, admin)
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        status, _ = client.call("POST", "/api/v1/verify")
        assert status == 202
        while True:
            status, raw = client.call("GET", "/api/v1/verify")
            run = json.loads(raw)
            if run["state"] != "running":
                assert run["blobs"] == 8 and not run["corrupt"], run
                break
            time.sleep(0.02)
        seconds.append(time.perf_counter() - started)
    return seconds


def time_cli(url: str, admin: str, work: Path, runs: int) -> dict[str, float]:
    """Medians (ms) of the `withcache` command over `runs`, by hyperfine."""
    withcache = Path(sys.executable).parent / "withcache"
    export = work / "cli.json"
    env = {**os.environ, "WITHCACHE_SERVER": url, "WITHCACHE_TOKEN": admin}
    subprocess.run(
        ["hyperfine", "-N", "--warmup", "3", "--runs", str(runs), "--export-json", str(export),
         "-n", "withcache --version", f"{withcache} --version",
         "-n", "withcache ls (first 50 rows)", f"{withcache} ls",
         "-n", "withcache misses", f"{withcache} misses"],
        check=True, env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return {r["command"]: r["median"] * 1000 for r in json.loads(export.read_text())["results"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=51, help="requests per URL")
    parser.add_argument("--verify-mib", type=int, default=1024, help="blob bytes to verify")
    parser.add_argument("--cli-runs", type=int, default=30, help="runs of each command")
    args = parser.parse_args()
    tally = Tally()
    per_hit = min(timeit.repeat(lambda: tally.hit(65536), number=100_000, repeat=5)) / 100_000
    print(f"Tally.hit (the read path's metrics work per hit): {per_hit * 1e9:.0f} ns")
    with tempfile.TemporaryDirectory(prefix="withcache-bench-") as tmp:
        listed, blobs = Path(tmp) / "listed" / "data", Path(tmp) / "blobs" / "data"
        for data_dir in (listed, blobs):
            data_dir.mkdir(parents=True)
        asyncio.run(seed(listed, args.rows))
        asyncio.run(store_blobs(blobs, args.verify_mib))
        os.environ["WITHCACHE_ADMIN_PASSWORD"] = PASSWORD
        server = Server(listed)
        try:
            admin = token(server.port)
            results = time_requests(Client(server.port, admin), args.runs)
            cli = {}
            if shutil.which("hyperfine"):
                cli = time_cli(server.url, admin, Path(tmp), args.cli_runs)
        finally:
            server.stop()
        server = Server(blobs)
        try:
            verify = time_verify(server.port, token(server.port), 3)
        finally:
            server.stop()
    print(f"\n{args.rows} artifacts, {args.runs} requests each, one keep-alive connection")
    print(f"{'request':34} {'median':>9} {'max':>9}")
    for name, median, worst in results:
        print(f"{name:34} {median:6.2f} ms {worst:6.2f} ms")
    medians = dict((name, median) for name, median, _ in results)
    auth = medians["GET /api/v1/status"] - medians["GET /healthz (no token)"]
    print(f"token check and JSON error middleware: {auth:+.2f} ms a request (status - healthz)")
    mib_s = args.verify_mib / statistics.median(verify)
    print(f"\nverify: {args.verify_mib} MiB in 8 blobs: median {statistics.median(verify):.2f} s "
          f"of 3, {mib_s:.0f} MiB/s")  # fmt: skip
    for name, ms in cli.items():
        print(f"{name:34} {ms:6.1f} ms (hyperfine median of {args.cli_runs})")


if __name__ == "__main__":
    main()
