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
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common import RESULTS, Server, static_origin, wait_cached

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ARTIFACT_BYTES = 64 * 1024
# With no variable a shim looks for a shims.conf first: none for the user here
# (and none in /etc on a bench machine). `off` (set empty) doesn't look.
NO_CONF = "XDG_CONFIG_HOME=/nonexistent"


@contextmanager
def hosts(folder: Path) -> Iterator[tuple[str, Server, Server]]:
    """A stdlib origin holding a 64 KiB artifact (its URL is yielded), an
    auto-mode cache-host that already holds it (every probe a hit) and a
    --curate one (every probe a miss, nothing ever fetched)."""
    with (
        static_origin(folder, "artifact.bin", os.urandom(ARTIFACT_BYTES)) as url,
        Server(folder / "auto", "--allow-private-origins") as hit,
        Server(folder / "curate", "--allow-private-origins", "--curate") as miss,
    ):
        wait_cached(hit.blob_url(url))
        yield url, hit, miss


def timing_args(doc: str) -> argparse.Namespace:
    """The command line of a hyperfine benchmark; checks that hyperfine is here."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="turns each command takes")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per command per round")
    args = parser.parse_args()
    if shutil.which("hyperfine") is None:
        raise SystemExit("needs hyperfine: apt-get install -y hyperfine")
    # An installed wheel ships compiled bytecode; an editable checkout may not have it yet.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "withcache")], check=True
    )
    return args


def commands(url: str, hit: Server, miss: Server) -> list[tuple[str, str]]:
    cached = hit.blob_url(url)
    hit_server, miss_server = hit.url, miss.url
    python = sys.executable
    shims = {tool: BIN / f"{tool}withcache" for tool in ("curl", "wget")}
    curl_args = f"-s -o /dev/null {url}"
    wget_args = f"-q -O /dev/null {url}"
    return [
        ("python -c pass", f"env {python} -c pass"),
        ("curl direct", f"env curl {curl_args}"),
        ("curl from cache", f"env curl -s -o /dev/null {cached}"),
        ("curl pass-through", f"env -u WITHCACHE_SERVER {NO_CONF} {shims['curl']} {curl_args}"),
        ("curl off", f"env WITHCACHE_SERVER= {shims['curl']} {curl_args}"),
        ("curl hit", f"env WITHCACHE_SERVER={hit_server} {shims['curl']} {curl_args}"),
        ("curl miss", f"env WITHCACHE_SERVER={miss_server} {shims['curl']} {curl_args}"),
        ("wget direct", f"env wget {wget_args}"),
        ("wget from cache", f"env wget -q -O /dev/null {cached}"),
        ("wget pass-through", f"env -u WITHCACHE_SERVER {NO_CONF} {shims['wget']} {wget_args}"),
        ("wget off", f"env WITHCACHE_SERVER= {shims['wget']} {wget_args}"),
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


def take_turns(named: list[tuple[str, str]], rounds: int, runs: int, label: str) -> dict:
    """Each command's run times (s) under hyperfine; the commands take turns
    over the rounds so load from elsewhere lands on all of them."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {name: [] for name, _ in named}
    for round_number in range(rounds):
        export = RESULTS / f"{label}-round{round_number}.json"
        hyperfine = ["hyperfine", "-N", "--warmup", "3", "--runs", str(runs)]
        hyperfine += ["--export-json", str(export)]
        for name, command in named:
            hyperfine += ["-n", name, command]
        subprocess.run(hyperfine, check=True, stdout=subprocess.DEVNULL)
        for result in json.loads(export.read_text())["results"]:
            times[result["command"]] += result["times"]
    return times


def main() -> None:
    args = timing_args(__doc__)
    with (
        tempfile.TemporaryDirectory(prefix="withcache-bench-") as scratch,
        hosts(Path(scratch)) as (url, hit, miss),
    ):
        times = take_turns(commands(url, hit, miss), args.rounds, args.runs, "shims")
    medians = {name: statistics.median(runs) * 1000 for name, runs in times.items()}
    lines = report(medians)
    (RESULTS / "shims.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
