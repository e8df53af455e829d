"""The probe latency of a hit under --revalidate, against one without it.

    .venv/bin/python bench/revalidation.py

Three cache-hosts on 127.0.0.1 hold the same 64 KiB artifact from a stdlib
origin: one without --revalidate, one whose rule matches it but whose
artifact is fresh (`*=1h`: it must stay a plain hit), and one whose rule
makes it due on every probe (`*=1s`: each probe is answered from the blob
while the origin is asked, at most once a second, in the background). Each
probe is what a shim sends: a new connection, `HEAD`, the status line and
headers read. The hosts take turns in rounds (so a burst of load from
elsewhere lands on all of them, probes interleaved); prints the medians in microseconds and the
ratios to the host without --revalidate, and writes bench/results/revalidation.json.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from common import Server, static_origin, wait_cached, write_results

ARTIFACT_BYTES = 64 * 1024
CASES = (
    ("no --revalidate", ()),
    ("--revalidate '*=1h' (fresh)", ("--revalidate", "*=1h")),
    ("--revalidate '*=1s' (due)", ("--revalidate", "*=1s")),
)


def probe(port: int, path: str) -> float:
    """Seconds for one HEAD on a new connection, as a shim sends it."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        request = f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    seconds = time.perf_counter() - started
    if not head.startswith(b"HTTP/1.1 200") or b"ETag:" not in head:
        raise SystemExit(f"not a plain hit: {head[:200]!r}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--probes", type=int, default=400, help="per host per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-revalidation-") as tmp:
        folder = Path(tmp)
        servers: list[Server] = []
        with static_origin(folder, "artifact.bin", os.urandom(ARTIFACT_BYTES)) as url:
            try:
                path = f"/blob?url={quote(url, safe='')}"
                for n, (_, flags) in enumerate(CASES):
                    server = Server(folder / f"host{n}", "--allow-private-origins", *flags)
                    servers.append(server)
                    wait_cached(server.blob_url(url))
                times: dict[str, list[float]] = {name: [] for name, _ in CASES}
                pairs = list(zip(CASES, servers, strict=True))
                for round_ in range(args.rounds):
                    # Probes interleaved, and each round starting with another host,
                    # so that no host always runs first or last.
                    turn = pairs[round_ % len(pairs) :] + pairs[: round_ % len(pairs)]
                    for _ in range(args.probes):
                        for (name, _), server in turn:
                            times[name].append(probe(server.port, path))
            finally:
                for server in servers:
                    server.stop()
    base = statistics.median(times[CASES[0][0]])
    results = {}
    print(f"HEAD probe of a 64 KiB hit, new connection each, {args.rounds} x {args.probes}:")
    for name, _ in CASES:
        median = statistics.median(times[name])
        results[name] = {"median_us": round(median * 1e6, 1), "ratio": round(median / base, 3)}
        print(f"  {name:32} median {median * 1e6:7.1f} us  {median / base:5.2f}x")
    write_results("revalidation", {"probes": results, "rounds": args.rounds,
                                   "per_round": args.probes})  # fmt: skip


if __name__ == "__main__":
    main()
