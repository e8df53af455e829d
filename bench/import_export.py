"""Import and export of one big artifact against cp and tar on the same disk.

Everything lives in one work directory (the cache-host's data dir, the file,
the bundles), so every copy reads and writes the same filesystem. Each run:

    import   withcache import FILE --url URL (upload, hashed, fsync, rename, row)
    cp       cp FILE COPY && sync COPY       (the bytes, made durable like a blob)
    sha256   sha256sum FILE                  (the hashing alone, for scale)
    export   withcache export --ids ID -o OUT (streamed from the store, fsync, rename)
    stream   withcache export --ids ID -o - > /dev/null (the same, without the disk)
    tar      tar cf OUT FILE && sync OUT

Medians over --runs, with the page cache warm (the file is read once first):
this measures withcache's own cost, not the disk's. The peak RSS of the
server and of the command over the imports is reported too.

    .venv/bin/python bench/import_export.py [--size-mib 1024] [--runs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import Server, peak_rss_mib, write_results

BIN = Path(sys.executable).parent
PASSWORD = "bench"


def token(server: Server) -> str:
    request = urllib.request.Request(
        f"{server.url}/api/v1/tokens", json.dumps({"name": "bench", "scope": "admin"}).encode(),
        {"Content-Type": "application/json", "Authorization": "Basic b3A6YmVuY2g="},  # op:bench
    )  # fmt: skip
    with urllib.request.urlopen(request) as answer:
        return json.load(answer)["token"]


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(path, "wb") as out:
        for n in range(size >> 20):
            chunk = n.to_bytes(8, "big") + block[8:]
            out.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


def timed(argv: list[str], env: dict[str, str], peak: list[float] | None = None) -> float:
    """Seconds `argv` takes; with `peak`, its peak RSS (MiB) is appended."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    most = 0.0
    while proc.poll() is None:
        with contextlib.suppress(OSError, TypeError):  # it exited meanwhile
            most = max(most, peak_rss_mib(proc.pid))
        time.sleep(0.02)
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {proc.stderr.read().decode()}")
    if peak is not None:
        peak.append(most)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="withcache-bench-") as work:
        root = Path(work)
        source = root / "artifact.run"
        sha = make_file(source, size)
        subprocess.run(["cat", str(source)], stdout=subprocess.DEVNULL, check=True)  # warm
        data = root / "data"
        server = Server(data, "--allow-private-origins", env={"WITHCACHE_ADMIN_PASSWORD": PASSWORD})
        try:
            env = {
                k: v for k, v in os.environ.items() if not k.startswith("WITHCACHE_")
            } | {"WITHCACHE_SERVER": server.url, "WITHCACHE_TOKEN": token(server)}  # fmt: skip
            names = ("import", "cp", "sha256", "export", "stream", "tar")
            samples: dict[str, list[float]] = {name: [] for name in names}
            cli_peaks: list[float] = []
            for run in range(args.runs):
                url = f"http://vendor.example/bench/{run}/artifact.run"
                samples["import"].append(timed(
                    [str(BIN / "withcache"), "import", str(source), "--url", url], env, cli_peaks
                ))  # fmt: skip
                copy = root / "copy.run"
                samples["cp"].append(timed(
                    ["sh", "-c", f"cp '{source}' '{copy}' && sync '{copy}'"], env
                ))  # fmt: skip
                copy.unlink()
                samples["sha256"].append(timed(["sha256sum", str(source)], env))
                listed = subprocess.run([str(BIN / "withcache"), "ls", "--json"], env=env,
                                        capture_output=True, check=True).stdout  # fmt: skip
                (artifact,) = json.loads(listed)["items"]
                assert artifact["sha256"] == sha and artifact["size"] == size
                bundle = root / "bundle.tar"
                samples["export"].append(timed(
                    [str(BIN / "withcache"), "export", "--ids", str(artifact["id"]), "-o",
                     str(bundle)], env,
                ))  # fmt: skip
                bundle.unlink()
                samples["stream"].append(timed(
                    ["sh", "-c", f"'{BIN / 'withcache'}' export --ids {artifact['id']} -o - "
                     "> /dev/null"], env,
                ))  # fmt: skip
                tarred = root / "plain.tar"
                samples["tar"].append(timed(
                    ["sh", "-c", f"tar cf '{tarred}' -C '{root}' artifact.run && sync '{tarred}'"],
                    env,
                ))  # fmt: skip
                tarred.unlink()
                subprocess.run([str(BIN / "withcache"), "rm", str(artifact["id"])], env=env,
                               check=True, capture_output=True)  # fmt: skip
            server_peak = peak_rss_mib(server.pid)
        finally:
            server.stop()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    mib_s = {name: args.size_mib / seconds for name, seconds in medians.items()}
    print(f"{args.size_mib} MiB, median of {args.runs} runs, warm page cache, one filesystem")
    print(f"{'':8} {'seconds':>8} {'MiB/s':>8}")
    for name in samples:
        print(f"{name:8} {medians[name]:8.2f} {mib_s[name]:8.0f}")
    print(f"import / cp: {medians['import'] / medians['cp']:.2f}x the time")
    print(f"export / tar: {medians['export'] / medians['tar']:.2f}x the time")
    print(f"peak RSS: server {server_peak:.0f} MiB, withcache import {max(cli_peaks):.0f} MiB")
    path = write_results("import_export", {
        "size_mib": args.size_mib, "runs": args.runs, "seconds": samples, "median": medians,
        "mib_per_second": mib_s, "server_peak_rss_mib": server_peak,
        "cli_peak_rss_mib": max(cli_peaks),
    })  # fmt: skip
    print(f"results: {path}")


if __name__ == "__main__":
    main()
