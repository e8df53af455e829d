"""Read-through benchmark: eight clients at once on one uncached artifact.

    python bench/readthrough.py [--size-mib 256] [--rounds 3] [--seed-venv DIR]

Needs nginx and curl. For an unlimited loopback origin and one limited to
20 MB/s (nginx `limit_rate`), it measures one plain origin download, then
eight simultaneous downloads of the same uncached artifact (a new one each
round; medians over the rounds). A third case has the eight clients fetch
eight different artifacts of an eighth of the size from the limited origin:
more fills at once than the cache-host has workers.

- withcache: eight `curlwithcache` runs against a fresh cache-host, with the
  Python shim and, if built (`make shim`), the native one;
- the seed, withcache 0.4.0 (its server and native shim), if --seed-venv
  points at a venv holding it (`python -m venv D && D/bin/pip install
  withcache==0.4.0`, used only for this comparison);
- nginx as a reverse proxy with `proxy_cache_lock on` in front of the origin.

For each: bytes the origin sent (from its access log) over the artifacts'
size, whether all eight files are byte-exact, and wall time over one plain
download. Eight plain downloads at once (no cache) are the floor this machine
sets for eight clients each writing the whole artifact. Prints a table and
writes bench/results/readthrough.json.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Server, free_port, start_nginx, wait_cached, write_results

CLIENTS = 8
RATE_LIMIT = "20m"  # nginx: 20 MB/s per connection
# (name, rate-limited origin, eight different artifacts). The last keeps more
# fills running than the cache-host has --workers (4).
CASES = [
    ("unlimited origin", False, False),
    ("20 MB/s origin", True, False),
    ("20 MB/s origin, eight different artifacts", True, True),
]


class Origin:
    """nginx serving the artifact twice: at full speed and rate-limited; it
    logs the body bytes of every response, so we can count what it sent."""

    def __init__(self, work: Path, files: Path) -> None:
        self.fast, self.slow, self.proxy = free_port(), free_port(), free_port()
        self.log = work / "origin-bytes.log"
        cache = work / "proxy-cache"
        self.nginx = start_nginx(
            work / "nginx",
            files,
            self.fast,
            http=f"log_format sent '$body_bytes_sent'; access_log {self.log} sent;"
            f"proxy_cache_path {cache} keys_zone=bench:10m max_size=4g inactive=1h;",
            servers=f"""
  server {{ listen 127.0.0.1:{self.slow}; root {files}; limit_rate {RATE_LIMIT}; }}
  server {{
    listen 127.0.0.1:{self.proxy};
    access_log off;
    location /fast/ {{ proxy_pass http://127.0.0.1:{self.fast}/; include {work}/cache.conf; }}
    location /slow/ {{ proxy_pass http://127.0.0.1:{self.slow}/; include {work}/cache.conf; }}
  }}""",
        )
        self.cache_dir = cache

    def sent(self) -> int:
        if not self.log.exists():
            return 0
        return sum(int(line) for line in self.log.read_text().split() if line.isdigit())

    def url(self, limited: bool, name: str) -> str:
        return f"http://127.0.0.1:{self.slow if limited else self.fast}/{name}"

    def proxy_url(self, limited: bool, name: str) -> str:
        return f"http://127.0.0.1:{self.proxy}/{'slow' if limited else 'fast'}/{name}"


def proxy_cache_conf(work: Path) -> None:
    (work / "cache.conf").write_text(
        "proxy_cache bench; proxy_cache_valid 200 1h; proxy_cache_lock on;"
        "proxy_cache_lock_timeout 10m; proxy_cache_lock_age 10m;\n"
    )


def run_clients(commands: list[list[str]], env: dict[str, str]) -> float:
    started = time.monotonic()
    procs = [subprocess.Popen(c, env=env, stderr=subprocess.DEVNULL) for c in commands]
    codes = [p.wait(3600) for p in procs]
    wall = time.monotonic() - started
    if any(codes):
        raise RuntimeError(f"client exit codes: {codes}")
    return wall


def clients(
    origin: Origin,
    wanted: list[tuple[str, str]],
    out: Path,
    shim: Path | None = None,
    server: Server | None = None,
) -> dict:
    """One client per (URL, SHA-256), all at once; origin bytes (counted once
    the cache-host has stored everything, so background fills count too),
    byte-exactness and wall time."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    env = {**os.environ, "WITHCACHE_SERVER": server.url} if server else dict(os.environ)
    tool = str(shim) if shim else "curl"
    before = origin.sent()
    wall = run_clients(
        [[tool, "-fsS", "-o", str(out / f"c{n}"), url] for n, (url, _) in enumerate(wanted)], env
    )
    if server:  # count the cache-host's background fills too
        for url in {url for url, _ in wanted}:
            wait_cached(server.blob_url(url))
    time.sleep(0.5)  # let the origin's access log catch up with late closes
    exact = all(
        hashlib.sha256((out / f"c{n}").read_bytes()).hexdigest() == sha
        for n, (_, sha) in enumerate(wanted)
    )
    return {"wall_s": wall, "origin_bytes": origin.sent() - before, "exact": exact}


def _summary(runs: list[dict]) -> dict:
    """Median wall time; the most origin bytes any round cost; exact in every round."""
    summary = {"wall_s": statistics.median(r["wall_s"] for r in runs), "rounds": runs}
    if "exact" in runs[0]:
        summary["origin_bytes"] = max(r["origin_bytes"] for r in runs)
        summary["exact"] = all(r["exact"] for r in runs)
    return summary


def plain(url: str) -> float:
    started = time.monotonic()
    subprocess.run(["curl", "-fsS", "-o", os.devnull, url], check=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each case (median)")
    parser.add_argument("--seed-venv", type=Path, help="a venv with withcache==0.4.0")
    args = parser.parse_args()
    bindir = Path(sys.executable).parent
    size = args.size_mib << 20

    work = Path(tempfile.mkdtemp(prefix="withcache-rt-"))
    os.chmod(work, 0o755)
    files = work / "files"
    files.mkdir()
    body = os.urandom(size)
    expected = hashlib.sha256(body).hexdigest()
    proxy_cache_conf(work)
    native = _native_shim(work)
    server_bin = bindir / "withcache-server"
    contenders = [("withcache, Python shim", server_bin, bindir / "curlwithcache")]
    if native:
        contenders.append(("withcache, native shim", server_bin, native))
    if args.seed_venv:
        seed = args.seed_venv / "bin"
        contenders.append(("seed 0.4.0", seed / "withcache-server", seed / "curlwithcache"))
    (files / "body.bin").write_bytes(body)
    results: dict[str, dict] = {}
    origin = Origin(work, files)
    try:
        for c, (case, limited, distinct) in enumerate(CASES):
            runs: dict[str, list[dict]] = {}
            for r in range(args.rounds):
                # New names each round: every contender, nginx too, starts uncached.
                names = _artifacts(files, f"{c}-{r}", distinct, body, expected)
                wanted = [(origin.url(limited, name), sha) for name, sha in names]
                runs.setdefault("plain", []).append({"wall_s": plain(wanted[0][0])})
                runs.setdefault("eight plain, no cache", []).append(
                    clients(origin, wanted, work / "out")
                )
                for n, (label, binary, shim) in enumerate(contenders):
                    data = work / f"data-{n}-{c}-{r}"
                    flags = ("--allow-private-origins",) if label.startswith("withcache") else ()
                    with Server(data, *flags, binary=binary) as server:
                        runs.setdefault(label, []).append(
                            clients(origin, wanted, work / "out", shim, server)
                        )
                proxied = [(origin.proxy_url(limited, name), sha) for name, sha in names]
                runs.setdefault("nginx proxy_cache_lock", []).append(
                    clients(origin, proxied, work / "out")
                )
            results[case] = {label: _summary(got) for label, got in runs.items()}
    finally:
        origin.nginx.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"{CLIENTS} clients at once, one uncached {args.size_mib} MiB artifact"
        f" (or eight of {args.size_mib / CLIENTS:g} MiB)"
    )
    for case, row in results.items():
        one = row["plain"]["wall_s"]
        print(f"\n{case}: one plain origin download {one:.2f} s")
        print(f"  {'':<26}{'origin bytes':>14}{'byte-exact':>12}{'wall':>9}{'vs plain':>10}")
        for label, r in row.items():
            if label == "plain":
                continue
            print(
                f"  {label:<26}{r['origin_bytes'] / size:>13.2f}x{r['exact']!s:>12}"
                f"{r['wall_s']:>8.2f}s{r['wall_s'] / one:>9.2f}x"
            )
    write_results("readthrough", {"size_bytes": size, "clients": CLIENTS, **results})


def _artifacts(
    files: Path, prefix: str, distinct: bool, body: bytes, sha: str
) -> list[tuple[str, str]]:
    """(name, SHA-256) for each of the eight clients: the one artifact for all,
    or eight different ones of an eighth of its size."""
    if not distinct:
        os.link(files / "body.bin", files / f"{prefix}.bin")
        return [(f"{prefix}.bin", sha)] * CLIENTS
    names = []
    for n in range(CLIENTS):
        part = os.urandom(len(body) // CLIENTS)
        (files / f"{prefix}-{n}.bin").write_bytes(part)
        names.append((f"{prefix}-{n}.bin", hashlib.sha256(part).hexdigest()))
    return names


def _native_shim(work: Path) -> Path | None:
    """The native shim (`make shim`), linked under the name that makes it curl."""
    built = Path(__file__).parent.parent / "zig-out/bin/withcache-shim-x86_64-linux-musl"
    if not built.exists():
        print("no native shim (make shim): measuring the Python shim only", file=sys.stderr)
        return None
    link = work / "native" / "curlwithcache"
    link.parent.mkdir()
    link.symlink_to(built.resolve())
    return link


if __name__ == "__main__":
    main()
