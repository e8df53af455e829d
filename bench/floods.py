"""What floods from anyone who can reach the cache-host cost it (issue 13).

Two cases, each against a fresh `withcache-server` on 127.0.0.1:

- junk: --junk refused URLs with 1.5 KB paths (HEAD /blob?url=..., 50 at a
  time; `--allow-origin nothing.invalid` refuses them all), default bounds.
  Reports the time, cache.db's size (with its WAL) before and after, the
  rows kept, and /healthz latency (median, p99) measured beside the flood.
- probes: --probes HEADs for names that don't resolve plus 80 for origins
  that accept and never answer, then one GET of a real 1 MiB artifact from a
  local origin: how long that client waited and what it got.

    .venv/bin/python bench/floods.py [--junk 20000] [--probes 2500]

`--pythonpath DIR` runs the server from another source tree, to compare:
`git archive <commit> src | tar -x -C /tmp/old` then `--pythonpath /tmp/old/src`.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import os
import socket
import sqlite3
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import quote

from common import Server, write_results

ARTIFACT = os.urandom(1 << 20)


async def ask_all(port: int, urls: list[str], method: str = "HEAD") -> list[int]:
    """Ask for many URLs at once (50 at a time), as a flood of shim probes
    would; the statuses (0: no answer). tests/test_faults_floods.py uses it too."""
    gate = asyncio.Semaphore(50)

    async def one(url: str) -> int:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"{method} /blob?url={quote(url, safe='')} HTTP/1.1\r\nHost: x\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            line = await reader.readline()
            await reader.read()
            writer.close()
            return int(line.split()[1]) if line else 0

    return await asyncio.gather(*(one(u) for u in urls))


def _db_bytes(data: Path) -> int:
    return sum(p.stat().st_size for p in data.glob("cache.db*"))


def _rows(data: Path, table: str) -> int:
    with sqlite3.connect(f"file:{data / 'cache.db'}?mode=ro", uri=True) as db:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def junk(work: Path, count: int, env: dict[str, str]) -> dict[str, float]:
    data = work / "junk"
    with Server(data, "--allow-origin", "nothing.invalid", env=env) as server:
        before = _db_bytes(data)
        latencies: list[float] = []
        done = threading.Event()

        def ping() -> None:
            while not done.is_set():
                started = time.perf_counter()
                urllib.request.urlopen(f"{server.url}/healthz", timeout=30).read()
                latencies.append(time.perf_counter() - started)
                time.sleep(0.01)

        pinger = threading.Thread(target=ping)
        pinger.start()
        urls = [f"https://junk.example/{n:06d}/{'p' * 1500}" for n in range(count)]
        started = time.perf_counter()
        asyncio.run(ask_all(server.port, urls))
        seconds = time.perf_counter() - started
        done.set()
        pinger.join()
        latencies.sort()
        return {
            "urls": count, "seconds": round(seconds, 2), "db_bytes_before": before,
            "db_bytes_after": _db_bytes(data), "misses": _rows(data, "misses"),
            "events": _rows(data, "events"),
            "healthz_median_ms": round(statistics.median(latencies) * 1000, 1),
            "healthz_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        }  # fmt: skip


class _Artifact(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(ARTIFACT)))
        self.end_headers()
        self.wfile.write(ARTIFACT)

    def log_message(self, *args: object) -> None:
        pass


def probes(work: Path, count: int, env: dict[str, str]) -> dict[str, float]:
    origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Artifact)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    silent = []
    for n in range(40):
        sock = socket.socket()
        sock.bind((f"127.0.2.{n + 1}", 0))
        sock.listen(128)
        silent.append(sock)
    try:
        with Server(work / "probes", "--allow-private-origins", env=env) as server:
            urls = [f"http://nosuch-{uuid.uuid4().hex[:12]}.invalid/x" for _ in range(count)]
            for sock in silent:
                address, port = sock.getsockname()
                urls += [f"http://{address}:{port}/a", f"http://{address}:{port}/b"]
            started = time.perf_counter()
            asyncio.run(ask_all(server.port, urls))
            flood = time.perf_counter() - started
            wanted = f"http://127.0.0.1:{origin.server_port}/wanted.bin"
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(server.blob_url(wanted), timeout=60) as response:
                    got, status = response.read(), response.status
            except urllib.error.HTTPError as err:
                got, status = b"", err.code
            waited = time.perf_counter() - started
            fills = _rows(work / "probes", "fills")
    finally:
        for sock in silent:
            sock.close()
        origin.shutdown()
    return {
        "probes": len(urls), "flood_seconds": round(flood, 2), "fills": fills,
        "get_status": status, "get_seconds": round(waited, 2), "get_whole": got == ARTIFACT,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--junk", type=int, default=20_000)
    parser.add_argument("--probes", type=int, default=2_500)
    parser.add_argument("--pythonpath", help="run the server from this source tree")
    args = parser.parse_args()
    env = {"PYTHONPATH": args.pythonpath} if args.pythonpath else {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {"junk": junk(work, args.junk, env), "probes": probes(work, args.probes, env)}
    j, p = results["junk"], results["probes"]
    print(f"junk: {j['urls']} refused URLs (1.5 KB paths) in {j['seconds']} s")
    print(f"  cache.db {j['db_bytes_before'] / 1e6:.1f} MB -> {j['db_bytes_after'] / 1e6:.1f} MB, "
          f"{j['misses']} misses, {j['events']} events kept")  # fmt: skip
    print(f"  /healthz during the flood: median {j['healthz_median_ms']} ms, "
          f"p99 {j['healthz_p99_ms']} ms")  # fmt: skip
    print(f"probes: {p['probes']} in {p['flood_seconds']} s, {p['fills']} fills")
    print(f"  then a GET of a real artifact: {p['get_status']} after {p['get_seconds']} s, "
          f"{'whole' if p['get_whole'] else 'NOT the artifact'}")  # fmt: skip
    write_results("floods", results)


if __name__ == "__main__":
    main()
