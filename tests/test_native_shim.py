"""The native shim as installed: by the name it runs as, on PATH beside the real
tools and the Python shims, within the probe budget, over read-through fills;
and the binaries themselves (static, small, both targets).

What it decides for a command line is checked against the Python shim in
test_native_differential.py.
"""

import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BIN, shim, shim_env

ROOT = Path(__file__).resolve().parent.parent
BODY = os.urandom(50_000)


def run(binary: Path, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(binary), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )


def test_acts_as_the_tool_it_is_named_after(native_shim, origin, shared_cache_host, tmp_path):
    url = origin.add("/native/named.bin", BODY)
    shared_cache_host.wait_cached(url)
    binary = (native_shim / "curlwithcache").resolve()
    links = tmp_path / "bin"
    links.mkdir()
    for name in ("curl", "wget", "curlwithcache", "wgetwithcache", "withcache-shim"):
        (links / name).symlink_to(binary)
    env = shim_env(shared_cache_host.url, PATH=f"{links}:{os.environ['PATH']}")
    for name, tool in (("curl", "curl"), ("curlwithcache", "curl")):
        got = run(links / name, "-fsS", "-o", f"{name}.out", url, env=env, cwd=tmp_path)
        assert got.stderr.startswith(f"withcache: {tool}: hit {url}"), got.stderr
        assert (tmp_path / f"{name}.out").read_bytes() == BODY
    for name in ("wget", "wgetwithcache"):
        got = run(links / name, "-q", "-O", f"{name}.out", url, env=env, cwd=tmp_path)
        assert got.stderr.startswith(f"withcache: wget: hit {url}"), got.stderr
        assert (tmp_path / f"{name}.out").read_bytes() == BODY
    other = run(links / "withcache-shim", "--version", env=env, cwd=tmp_path)
    assert other.returncode == 2 and "run me as curl, wget" in other.stderr


def test_skips_itself_and_the_python_shims_on_path(native_shim, origin, tmp_path):
    """First on PATH: a copy of the binary named curl, then the Python shim named
    curl, then the real one; the copy must run the real curl, once."""
    url = origin.add("/native/path.bin", BODY)
    copy, python = tmp_path / "copy", tmp_path / "python"
    copy.mkdir()
    python.mkdir()
    shutil.copy((native_shim / "curlwithcache").resolve(), copy / "curl")
    (python / "curl").symlink_to(BIN / "curlwithcache")
    env = shim_env(PATH=f"{copy}:{python}:{os.environ['PATH']}")
    got = run(copy / "curl", "-fsS", "-o", "out", url, env=env, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert got.stderr.count("passed through: no cache-host set") == 1  # no shim ran twice
    assert (tmp_path / "out").read_bytes() == BODY


def test_no_real_tool_exits_127(native_shim, tmp_path):
    got = shim("wget", "--version", env=shim_env(PATH=str(tmp_path)), shims=native_shim)
    assert got.returncode == 127
    assert got.stderr == "wgetwithcache: no real wget found (looked in PATH)\n"
    pinned = shim_env(REAL_CURL=str(native_shim / "curlwithcache"))
    got = shim("curl", "--version", env=pinned, shims=native_shim)
    assert got.returncode == 127, "a REAL_CURL that is the shim itself is no real curl"


def test_waits_at_most_the_default_budget(native_shim, origin, silent_port, tmp_path):
    url = origin.add("/native/budget.bin", BODY)
    server = f"127.0.0.1:{silent_port}"
    started = time.monotonic()
    got = shim("curl", "-fsS", "-o", "out", url, server=server, cwd=tmp_path, shims=native_shim)
    elapsed = time.monotonic() - started
    assert got.returncode == 0, got.stderr
    assert "unreachable" in got.stderr
    assert 1.9 < elapsed < 2.0 + 1.0
    assert (tmp_path / "out").read_bytes() == BODY


def test_several_urls_share_one_budget(native_shim, origin, silent_port, tmp_path):
    urls = [origin.add(f"/native/many-{n}.bin", BODY) for n in range(12)]
    env = shim_env(f"127.0.0.1:{silent_port}", WITHCACHE_PROBE_TIMEOUT="0.4")
    args = [word for url in urls for word in ("-O", url)]
    started = time.monotonic()
    got = shim("curl", "-fsS", *args, env=env, cwd=tmp_path, shims=native_shim)
    elapsed = time.monotonic() - started
    assert got.returncode == 0, got.stderr
    assert got.stderr.count("unreachable") == 12
    assert elapsed < 0.4 + 1.0


def test_first_download_reads_through_the_fill(native_shim, origin, cache_host, tmp_path):
    url = origin.add("/native/first.iso", BODY * 40, rate=8_000_000)
    host = cache_host()
    got = shim("curl", "-fsS", "-O", url, server=host.url, cwd=tmp_path, shims=native_shim)
    assert got.returncode == 0, got.stderr
    assert got.stderr.startswith(f"withcache: curl: hit {url}")  # Withcache-Fill counts
    assert (tmp_path / "first.iso").read_bytes() == BODY * 40
    assert origin.gets("/native/first.iso") == 1


def elf(path: Path) -> tuple[int, bool]:
    """(e_machine, has a program interpreter) of a little-endian ELF64 file."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2
    machine = int.from_bytes(data[18:20], "little")
    phoff, phsize, phnum = (
        int.from_bytes(data[32:40], "little"),
        int.from_bytes(data[54:56], "little"),
        int.from_bytes(data[56:58], "little"),
    )
    kinds = [
        int.from_bytes(data[phoff + i * phsize : phoff + i * phsize + 4], "little")
        for i in range(phnum)
    ]
    return machine, 3 in kinds  # PT_INTERP: a dynamic loader


@pytest.mark.parametrize(("target", "machine"), [("x86_64", 62), ("aarch64", 183)])
def test_binaries_are_static_and_small(target, machine, native_shim, tmp_path):
    if not target.startswith(platform.machine()):  # the host's was built for the session
        subprocess.run(
            [sys.executable, str(ROOT / "shim" / "build.py"), "--target", f"{target}-linux-musl"],
            check=True, stdout=subprocess.DEVNULL, timeout=600,
        )  # fmt: skip
    binary = ROOT / "zig-out" / "bin" / f"withcache-shim-{target}-linux-musl"
    assert elf(binary) == (machine, False)
    assert binary.stat().st_size <= 300 * 1024


def test_zig_unit_tests(native_shim):
    """The `test` blocks in shim/*.zig: Python's strip/repr/float rules, parsing."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "shim" / "build.py"), "--test"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.search(r"All \d+ tests passed", result.stderr + result.stdout), result.stderr
