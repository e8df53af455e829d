"""The benchmarks in bench/ still run against today's code: each once, at its
smallest size (the figures themselves are for a quiet machine, not for CI).

Not here: native_shim.py (it rebuilds zig-out/bin/, which other tests run),
scale_out.py (26 s); s3_clients.py runs with the store's own client only
(the others are not dependencies).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_bench(tmp_path: Path, script: str, *args: str) -> str:
    env = {**os.environ, "WITHCACHE_BENCH_RESULTS": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_ui_pages(tmp_path):
    out = run_bench(tmp_path, "ui_pages.py", "--rows", "50", "--runs", "2")
    assert "cached, last page" in out
    assert "2 requests per page; medians " in out  # the verdict: its figure is for a quiet box


def test_api(tmp_path):
    out = run_bench(
        tmp_path, "api.py", "--rows", "50", "--runs", "2", "--verify-mib", "8", "--cli-runs", "2"
    )
    assert "GET /api/v1/status" in out
    assert "verify: 8 MiB in 8 blobs" in out


def test_shims(tmp_path):
    out = run_bench(tmp_path, "shims.py", "--rounds", "1", "--runs", "2")
    assert "curl hit" in out and "wget miss" in out
    assert (tmp_path / "shims-round0.json").exists()


def test_s3_clients(tmp_path):
    out = run_bench(
        tmp_path, "s3_clients.py", "--quick", "--clients", "obstore", "--size-mib", "16"
    )
    row = next(line for line in out.splitlines() if line.startswith("obstore "))
    assert float(row.split()[1]) > 0  # upload MB/s


def test_read_path(tmp_path):
    out = run_bench(tmp_path, "read_path.py", "--quick")
    errors = next(line for line in out.splitlines() if line.startswith("errors at c=200"))
    assert errors.split()[3:5] == ["0.00", "0.00"]  # withcache, nginx
    assert (tmp_path / "read_path.json").exists()


@pytest.mark.timeout(180)
def test_readthrough(tmp_path):
    out = run_bench(tmp_path, "readthrough.py", "--size-mib", "8", "--rounds", "1")
    rows = [line for line in out.splitlines() if line.startswith("  withcache")]
    native = (BENCH.parent / "zig-out/bin/withcache-shim-x86_64-linux-musl").exists()
    assert len(rows) == 3 * (1 + native)  # three cases (see bench.readthrough.CASES) by shim
    for row in rows:
        ratio, exact = row.split()[-4:-2]
        assert (ratio, exact) == ("1.00x", "True"), row  # one origin download, byte-exact


def test_floods(tmp_path):
    out = run_bench(tmp_path, "floods.py", "--junk", "300", "--probes", "50")
    assert "then a GET of a real artifact: 200" in out and "whole" in out
    assert (tmp_path / "floods.json").exists()


def test_import_export(tmp_path):
    out = run_bench(tmp_path, "import_export.py", "--size-mib", "8", "--runs", "1",
                    "--dir", str(tmp_path))  # fmt: skip
    assert "import / cp:" in out and "export / tar:" in out
    table = [line.split() for line in out.splitlines()]
    rows = {row[0]: float(row[2]) for row in table
            if len(row) == 3 and row[0] in ("import", "export", "stream", "cp", "tar")}  # fmt: skip
    assert all(mib_s > 0 for mib_s in rows.values()) and len(rows) == 5
    assert (tmp_path / "import_export.json").exists()


def test_revalidation(tmp_path):
    out = run_bench(tmp_path, "revalidation.py", "--rounds", "1", "--probes", "20")
    rows = [line for line in out.splitlines() if "median" in line]
    assert len(rows) == 3 and rows[0].split()[-1] == "1.00x"
    assert (tmp_path / "revalidation.json").exists()


def test_eviction(tmp_path):
    out = run_bench(tmp_path, "eviction.py", "--artifacts", "1000", "--runs", "1")
    assert "--evict lru making that room" in out and "--evict-unused pass" in out
    assert (tmp_path / "eviction.json").exists()


def test_invalidation(tmp_path):
    out = run_bench(tmp_path, "invalidation.py", "--rounds", "3")
    # The bench fails a round in which b serves a deleted artifact for 5 s.
    row = next(line for line in out.splitlines() if line.startswith("from the DELETE sent"))
    assert len([float(figure) for figure in row.split()[-3:]]) == 3
    assert "the 100 ms target" in out
