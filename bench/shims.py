"""Time the curl/wget shims against running the tools directly (one run, medians).

    apt-get install -y hyperfine     # Debian's package
    .venv/bin/python bench/shims.py

Starts a real cache-host (auto mode, pre-warmed: every probe is a hit), a
second one in --curate mode (every probe is a miss, nothing is ever
fetched) and a stdlib HTTP origin, all on 127.0.0.1, then has hyperfine
time each command below with the same venv's python. Every command runs
through `env` so they all pay the same exec. The commands take turns in
several rounds, so a burst of load from elsewhere on the machine lands on
all of them; the medians are over every run of every round. Prints them side
by side with the issue's budgets; writes hyperfine's JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ARTIFACT_BYTES = 64 * 1024


def start_cache_host(data: Path, *flags: str) -> tuple[subprocess.Popen[bytes], str]:
    log = data.with_suffix(".log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "withcache-server"), "--data-dir", str(data), "--host", "127.0.0.1",
             "--port", "0", "--allow-private-origins", *flags],
            stdout=out, stderr=out,
        )  # fmt: skip
    for _ in range(300):
        match = re.search(r"event=listening .*?port=(\d+)", log.read_text(errors="replace"))
        if match:
            return proc, f"http://127.0.0.1:{match[1]}"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"withcache-server did not start:\n{log.read_text(errors='replace')}")


def start_origin(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0", "--directory",
         str(folder)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    match = re.search(r"port (\d+)", line)
    if not match:
        raise SystemExit(f"origin did not start: {line!r}")
    return proc, f"http://127.0.0.1:{match[1]}"


def wait_cached(server: str, url: str) -> None:
    from urllib.parse import quote

    for _ in range(400):
        request = urllib.request.Request(f"{server}/blob?url={quote(url, safe='')}", method="HEAD")
        try:
            urllib.request.urlopen(request, timeout=5).close()
            return
        except urllib.error.HTTPError:
            time.sleep(0.05)
    raise SystemExit(f"{url} never became a hit")


def commands(origin: str, hit_server: str, miss_server: str) -> list[tuple[str, str]]:
    from urllib.parse import quote

    url = f"{origin}/artifact.bin"
    cached = f"{hit_server}/blob?url={quote(url, safe='')}"
    python = sys.executable
    shims = {tool: BIN / f"{tool}withcache" for tool in ("curl", "wget")}
    curl_args = f"-s -o /dev/null {url}"
    wget_args = f"-q -O /dev/null {url}"
    return [
        ("python -c pass", f"env {python} -c pass"),
        ("curl direct", f"env curl {curl_args}"),
        ("curl from cache", f"env curl -s -o /dev/null {cached}"),
        ("curl pass-through", f"env -u WITHCACHE_SERVER {shims['curl']} {curl_args}"),
        ("curl hit", f"env WITHCACHE_SERVER={hit_server} {shims['curl']} {curl_args}"),
        ("curl miss", f"env WITHCACHE_SERVER={miss_server} {shims['curl']} {curl_args}"),
        ("wget direct", f"env wget {wget_args}"),
        ("wget from cache", f"env wget -q -O /dev/null {cached}"),
        ("wget pass-through", f"env -u WITHCACHE_SERVER {shims['wget']} {wget_args}"),
        ("wget hit", f"env WITHCACHE_SERVER={hit_server} {shims['wget']} {wget_args}"),
        ("wget miss", f"env WITHCACHE_SERVER={miss_server} {shims['wget']} {wget_args}"),
    ]


def report(medians: dict[str, float]) -> list[str]:
    start = medians["python -c pass"]
    lines = [f"{'command (ms)':<20} {'median':>9} {'vs direct':>10}"]
    for name, median in medians.items():
        tool = name.split()[0]
        direct = medians.get(f"{tool} direct")
        extra = f"{median - direct:+9.1f}" if direct and name != f"{tool} direct" else ""
        lines.append(f"{name:<20} {median:8.1f}  {extra:>9}")
    lines.append("")
    lines.append(f"budgets (interpreter start = {start:.1f} ms):")
    for tool in ("curl", "wget"):
        direct = medians[f"{tool} direct"]
        for case, allowed in (("pass-through", 5), ("hit", 10), ("miss", 10)):
            added = medians[f"{tool} {case}"] - direct
            verdict = "ok" if added <= start + allowed else "OVER"
            lines.append(
                f"  {tool} {case:<12} adds {added:5.1f} ms; allowed start + {allowed} "
                f"= {start + allowed:5.1f} ms: {verdict}"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="turns each command takes")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per command per round")
    args = parser.parse_args()
    if shutil.which("hyperfine") is None:
        raise SystemExit("needs hyperfine: apt-get install -y hyperfine")
    # An installed wheel ships compiled bytecode; an editable checkout may not have it yet.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "withcache")], check=True
    )
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="withcache-bench-") as scratch:
        folder = Path(scratch)
        (folder / "origin").mkdir()
        (folder / "origin" / "artifact.bin").write_bytes(os.urandom(ARTIFACT_BYTES))
        try:
            origin_proc, origin = start_origin(folder / "origin")
            procs.append(origin_proc)
            hit_proc, hit_server = start_cache_host(folder / "auto")
            procs.append(hit_proc)
            miss_proc, miss_server = start_cache_host(folder / "curate", "--curate")
            procs.append(miss_proc)
            wait_cached(hit_server, f"{origin}/artifact.bin")
            named = commands(origin, hit_server, miss_server)
            times: dict[str, list[float]] = {name: [] for name, _ in named}
            for round_number in range(args.rounds):
                export = results / f"shims-round{round_number}.json"
                hyperfine = ["hyperfine", "-N", "--warmup", "3", "--runs", str(args.runs)]
                hyperfine += ["--export-json", str(export)]
                for name, command in named:
                    hyperfine += ["-n", name, command]
                subprocess.run(hyperfine, check=True, stdout=subprocess.DEVNULL)
                for result in json.loads(export.read_text())["results"]:
                    times[result["command"]] += result["times"]
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
    medians = {name: statistics.median(runs) * 1000 for name, runs in times.items()}
    lines = report(medians)
    (results / "shims.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
