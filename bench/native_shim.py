"""Time the native shim against curl/wget run directly and the Python shim (one run, medians).

    apt-get install -y hyperfine     # Debian's package
    make shim && .venv/bin/python bench/native_shim.py

Same set-up as bench/shims.py: a pre-warmed auto-mode cache-host (every probe
a hit), a --curate one (every probe a miss), a refused port (a dead cache-host)
and a stdlib HTTP origin, all on 127.0.0.1; a 64 KiB artifact. Every command
runs through `env` so they all pay the same exec, and they take turns over
several rounds so load from elsewhere lands on all of them. The pass-through
rows look for a shims.conf first (there is none); the `off` rows
(WITHCACHE_SERVER set empty) don't, so the difference is what looking costs,
and `conf hit` finds the cache-host in one. Also builds the
shim with `--probe tool` (it asks the cache-host by running the real tool,
as the seed's shim did) to time that choice against the socket probe, and
reports the binaries' sizes. Prints the medians beside the issue's targets
and the seed's figures; writes hyperfine's JSON to bench/results/.
"""

from __future__ import annotations

import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import RESULTS, free_port
from shims import hosts, take_turns, timing_args

from withcache import keys

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# The pass-through rows look for a shims.conf: none for the user, none in /etc here.
NO_CONF = "XDG_CONFIG_HOME=/nonexistent"
SEED = {"curl direct": 5.0, "curl pass-through": 4.9, "curl hit": 12.5}  # ms, measured here
TARGETS = {"pass-through": 1.0, "hit": 2.0, "dead": 2.0}  # ms added to the direct run
MAX_BYTES = 300 * 1024


def build(folder: Path, probe: str) -> Path:
    """The host's binary, linked as curlwithcache/wgetwithcache in `folder`."""
    target = f"{platform.machine()}-linux-musl"
    out = ROOT / "zig-out" / ("bin" if probe == "socket" else f"bench-{probe}")
    subprocess.run(
        [sys.executable, str(ROOT / "shim" / "build.py"), "--target", target, "--out", str(out),
         "--probe", probe],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    folder.mkdir()
    for tool in ("curl", "wget"):
        (folder / f"{tool}withcache").symlink_to(out / f"withcache-shim-{target}")
    return folder


def commands(url: str, hit: str, miss: str, dead: str, native: Path, by_tool: Path, conf: Path):
    """`conf` is an XDG_CONFIG_HOME whose shims.conf names the `hit` cache-host."""
    python = {tool: BIN / f"{tool}withcache" for tool in ("curl", "wget")}
    args = {"curl": f"-s -o /dev/null {url}", "wget": f"-q -O /dev/null {url}"}
    rows = []
    for tool in ("curl", "wget"):
        a = args[tool]
        rows.append((f"{tool} direct", f"env {tool} {a}"))
        served = f"{hit}{keys.serve_path(url)}"  # what a hit fetches: the probe's cost is the rest
        rows.append((f"{tool} from cache", f"env {tool} {a.replace(url, served)}"))
        for shim, where in (("python", python[tool]), ("native", native / f"{tool}withcache")):
            rows += [
                # No variable: the shim looks for a shims.conf (there is none) first.
                (f"{tool} {shim} pass-through", f"env -u WITHCACHE_SERVER {NO_CONF} {where} {a}"),
                (f"{tool} {shim} off", f"env WITHCACHE_SERVER= {where} {a}"),  # no looking
                (
                    f"{tool} {shim} conf hit",
                    f"env -u WITHCACHE_SERVER XDG_CONFIG_HOME={conf} {where} {a}",
                ),
                (f"{tool} {shim} hit", f"env WITHCACHE_SERVER={hit} {where} {a}"),
                (f"{tool} {shim} miss", f"env WITHCACHE_SERVER={miss} {where} {a}"),
                (f"{tool} {shim} dead", f"env WITHCACHE_SERVER={dead} {where} {a}"),
            ]
        rows.append(
            (f"{tool} native hit, tool probe",
             f"env WITHCACHE_SERVER={hit} {by_tool / f'{tool}withcache'} {a}")
        )  # fmt: skip
    return rows


def report(medians: dict[str, float], sizes: dict[str, int]) -> list[str]:
    lines = [f"{'command (ms)':<30} {'median':>7} {'vs direct':>10} {'seed':>6}"]
    for name, median in medians.items():
        direct = medians[f"{name.split()[0]} direct"]
        extra = f"{median - direct:+9.1f}" if not name.endswith("direct") else ""
        seed_name = name.replace(" native", "")
        seed = f"{SEED[seed_name]:6.1f}" if " python" not in name and seed_name in SEED else ""
        lines.append(f"{name:<30} {median:7.1f}  {extra:>9} {seed:>6}")
    lines += ["", "looking for a shims.conf that isn't there (pass-through - off):"]
    for tool in ("curl", "wget"):
        for shim in ("python", "native"):
            cost = medians[f"{tool} {shim} pass-through"] - medians[f"{tool} {shim} off"]
            lines.append(f"  {tool} {shim:<7} {cost:+5.2f} ms")
    lines += ["", "native shim targets (added to the direct run):"]
    for tool in ("curl", "wget"):
        for case, allowed in TARGETS.items():
            added = medians[f"{tool} native {case}"] - medians[f"{tool} direct"]
            verdict = "ok" if added <= allowed else "OVER"
            lines.append(f"  {tool} {case:<13} adds {added:5.1f} ms (<= {allowed:.0f}): {verdict}")
    for target, size in sizes.items():
        verdict = "ok" if size <= MAX_BYTES else "OVER"
        lines.append(f"  {target} binary {size / 1024:.0f} KiB (<= 300): {verdict}")
    return lines


def main() -> None:
    args = timing_args(__doc__)
    subprocess.run([sys.executable, str(ROOT / "shim" / "build.py")], check=True)  # both targets
    sizes = {p.name: p.stat().st_size for p in sorted((ROOT / "zig-out" / "bin").iterdir())}
    with tempfile.TemporaryDirectory(prefix="withcache-native-bench-") as scratch:
        folder = Path(scratch)
        native, by_tool = build(folder / "native", "socket"), build(folder / "by-tool", "tool")
        with hosts(folder) as (url, hit, miss):
            dead = f"127.0.0.1:{free_port()}"  # nothing listens there
            conf = folder / "config"
            (conf / "withcache").mkdir(parents=True)
            (conf / "withcache" / "shims.conf").write_text(f"server = {hit.url}\n")
            named = commands(url, hit.url, miss.url, dead, native, by_tool, conf)
            times = take_turns(named, args.rounds, args.runs, "native-shim")
    medians = {name: statistics.median(runs) * 1000 for name, runs in times.items()}
    lines = report(medians, sizes)
    (RESULTS / "native_shim.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
