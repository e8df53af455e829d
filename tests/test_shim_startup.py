"""What a shim imports before it execs curl or wget: the start-up budget.

With no cache-host the console script may load nothing beyond the interpreter's
own start-up and its three small modules; with one, it still must not load the
heavy stdlib modules (re, typing, socket.py, threading, http, urllib, ssl).
"""

import subprocess
import sys

from conftest import BIN, shim_env

# Stdlib modules that would cost milliseconds each on every curl call.
HEAVY = {
    "re", "typing", "enum", "functools", "collections", "socket", "selectors", "threading",
    "http.client", "urllib.parse", "urllib.request", "ssl", "email", "dataclasses", "json",
    "base64", "argparse", "shlex", "warnings", "inspect",
}  # fmt: skip


def imported(*argv, env):
    """Modules a Python command imports, in order, from -X importtime."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, env=env,
        timeout=30,
    )  # fmt: skip
    names = []
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.append(line.rsplit("|", 1)[1].strip())
    return [n for n in names if n != "imported package"], result


def test_pass_through_imports_only_the_entry_module(tmp_path):
    env = shim_env()
    baseline, _ = imported("-c", "pass", env=env)
    loaded, result = imported(str(BIN / "curlwithcache"), "--version", env=env)
    assert result.returncode == 0 and "curl" in result.stdout
    assert set(loaded) - set(baseline) == {"withcache", "withcache.shim", "withcache.shim.entry"}


def test_probing_path_imports_nothing_heavy(free_port):
    env = shim_env(f"http://127.0.0.1:{free_port}")
    loaded, result = imported(
        str(BIN / "wgetwithcache"), "-q", "-O", "/dev/null", "file:///dev/null",
        f"http://127.0.0.1:{free_port}/x", env=env,
    )  # fmt: skip
    assert "unreachable" in result.stderr  # it did probe
    assert "withcache.shim.probe" in loaded
    assert not HEAVY & set(loaded), sorted(HEAVY & set(loaded))


def test_a_shims_conf_costs_no_heavy_import(tmp_path, free_port):
    conf = tmp_path / "withcache" / "shims.conf"
    conf.parent.mkdir()
    conf.write_text(f"server = http://127.0.0.1:{free_port}\nbogus = 1\n")
    env = shim_env(XDG_CONFIG_HOME=str(tmp_path))
    loaded, result = imported(
        str(BIN / "curlwithcache"), "-s", "-o", "/dev/null", f"http://127.0.0.1:{free_port}/x",
        env=env,
    )  # fmt: skip
    assert "unreachable" in result.stderr and "unknown key 'bogus'" in result.stderr
    assert "withcache.shim.conf" in loaded
    assert not HEAVY & set(loaded), sorted(HEAVY & set(loaded))
