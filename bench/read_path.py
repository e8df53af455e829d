"""Read-path benchmark: withcache-server against nginx, same files, same disk.

    python bench/read_path.py [--quick]

Needs nginx, hey, wrk and curl (Debian: apt-get install nginx-light hey wrk curl).
Seeds a 1 GiB and a 64 KiB artifact through a real fill, then points nginx
at the very blob files the cache-host serves and measures, in one run:

- 1 GiB hit with curl: throughput and server CPU seconds per GiB (median);
- HEAD probes per second (`hey -c 32`), 64 KiB GETs per second (`wrk -t2
  -c32`) and the server's CPU per GET, medians of interleaved runs;
- 200 concurrent clients: errors, and the cache-host's peak RSS.

Prints a table and writes bench/results/read_path.json.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    Server,
    cpu_seconds,
    free_port,
    hey,
    peak_rss_mib,
    start_nginx,
    wait_cached,
    write_results,
    wrk,
)


def curl_seconds(url: str) -> float:
    out = subprocess.run(
        ["curl", "-sf", "-o", os.devnull, "-w", "%{time_total}", url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout)


def big_hits(targets: dict[str, tuple[str, list[int]]], runs: int, size: int) -> dict:
    """Median throughput (MB/s) and server CPU seconds per GiB for each target,
    runs interleaved so that both see the same machine."""
    samples: dict[str, dict[str, list[float]]] = {}
    for url, _ in targets.values():
        curl_seconds(url)  # warm the page cache
    for _ in range(runs):
        for label, (url, pids) in targets.items():
            before = cpu_seconds(pids)
            seconds = curl_seconds(url)
            got = samples.setdefault(label, {"mb_per_s": [], "cpu_s_per_gib": []})
            got["cpu_s_per_gib"].append((cpu_seconds(pids) - before) * (1 << 30) / size)
            got["mb_per_s"].append(size / seconds / 1e6)
    return {
        label: {k: statistics.median(v) for k, v in got.items()} for label, got in samples.items()
    }


def small_hits(
    targets: dict[str, tuple[dict[str, str], list[int]]], results: dict, runs: int,
    requests: int, seconds: float,
) -> None:  # fmt: skip
    """Median HEAD probes per second (hey -c 32) and 64 KiB GETs per second
    (wrk -t2 -c32) with the server's CPU per GET, runs interleaved."""
    samples: dict[str, dict[str, list[float]]] = {}
    for _ in range(runs):
        for label, (urls, pids) in targets.items():
            got = samples.setdefault(
                label, {k: [] for k in ("head_per_s", "get_64k_per_s", "get_cpu_us")}
            )
            got["head_per_s"].append(hey(urls["small.bin"], requests, 32, method="HEAD")["rps"])
            before = cpu_seconds(pids)
            run = wrk(urls["small.bin"], seconds)
            got["get_cpu_us"].append((cpu_seconds(pids) - before) / run["requests"] * 1e6)
            got["get_64k_per_s"].append(run["rps"])
    for label, got in samples.items():
        results[label].update({k: statistics.median(v) for k, v in got.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    args = parser.parse_args()
    for tool in ("nginx", "hey", "wrk", "curl"):
        if not shutil.which(tool):
            sys.exit(f"read_path.py: {tool} not found (apt-get install nginx-light hey wrk curl)")
    runs, requests, get_seconds = (3, 3000, 1) if args.quick else (7, 20000, 5)
    big_size = (256 if args.quick else 1024) << 20

    work = Path(tempfile.mkdtemp(prefix="withcache-bench-"))
    files = work / "origin"
    files.mkdir()
    with open(files / "big.bin", "wb") as f:
        f.truncate(big_size)  # sparse at the origin; the blob is written for real
    (files / "small.bin").write_bytes(os.urandom(64 << 10))

    origin = start_nginx(work / "nginx-origin", files, free_port())
    server = Server(work / "data", "--allow-private-origins", "--workers", "2")
    results: dict[str, dict] = {}
    try:
        blob_urls = {}
        for name in ("big.bin", "small.bin"):
            url = f"http://127.0.0.1:{origin.port}/{name}"
            blob_urls[name] = server.blob_url(url)
            wait_cached(blob_urls[name])
        # nginx serves the same blob files, from the same disk.
        blobs = work / "data" / "blobs"
        plain = start_nginx(work / "nginx", blobs, free_port())
        sha = {name: _etag(blob_urls[name]) for name in blob_urls}
        nginx_urls = {n: f"http://127.0.0.1:{plain.port}/{sha[n][:2]}/{sha[n]}" for n in sha}

        targets = {
            "withcache": (blob_urls, [server.pid]),
            "nginx": (nginx_urls, plain.worker_pids()),
        }
        results = big_hits({k: (u["big.bin"], p) for k, (u, p) in targets.items()}, runs, big_size)
        small_hits(targets, results, runs, requests, get_seconds)
        for label, (urls, _) in targets.items():
            row = results[label]
            crowd = hey(urls["small.bin"], requests, 200)
            row["c200_errors"] = crowd["errors"]
            row["c200_per_s"] = crowd["rps"]
        results["withcache"]["peak_rss_mib"] = peak_rss_mib(server.pid)
    finally:
        server.stop()
        origin.stop()
        if "plain" in locals():
            plain.stop()
        shutil.rmtree(work, ignore_errors=True)

    w, n = results["withcache"], results["nginx"]
    lines = [
        f"{'metric':<28}{'withcache':>12}{'nginx':>12}{'ratio':>8}  target",
        _row("1 GiB hit, MB/s", w, n, "mb_per_s", ">= 0.9x"),
        _row("CPU s per GiB", w, n, "cpu_s_per_gib", "<= 1.5x"),
        _row("HEAD probes /s (c=32)", w, n, "head_per_s", ">= 0.5x"),
        _row("64 KiB GETs /s (wrk c=32)", w, n, "get_64k_per_s", ">= 0.3x"),
        _row("CPU us per 64 KiB GET", w, n, "get_cpu_us", ""),
        _row("64 KiB GETs /s (c=200)", w, n, "c200_per_s", ""),
        _row("errors at c=200", w, n, "c200_errors", "0"),
        f"{'withcache peak RSS, MiB':<28}{w['peak_rss_mib']:>12.1f}{'':>12}{'':>8}  < 100",
    ]
    print("\n".join(lines))
    write_results("read_path", {"big_file_bytes": big_size, "runs": runs, **results})


def _row(label: str, w: dict, n: dict, key: str, target: str) -> str:
    ratio = w[key] / n[key] if n[key] else float("nan")
    return f"{label:<28}{w[key]:>12.2f}{n[key]:>12.2f}{ratio:>7.2f}x  {target}"


def _etag(url: str) -> str:
    out = subprocess.run(["curl", "-sfI", url], capture_output=True, text=True, check=True)
    match = re.search(r'(?i)^etag: "([0-9a-f]{64})"', out.stdout, re.M)
    assert match, out.stdout
    return match[1]


if __name__ == "__main__":
    main()
