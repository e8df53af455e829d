"""A cache that accepts the connection and never answers costs at most the probe
budget, and the command then runs against the origin as written."""

import time

from conftest import shim, shim_env

BODY = b"patience" * 1000


def test_curl_waits_at_most_the_default_budget(origin, silent_port, tmp_path):
    url = origin.add("/budget/curl.bin", BODY)
    started = time.monotonic()
    result = shim("curl", "-fsS", "-o", "out", url, server=f"127.0.0.1:{silent_port}", cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out").read_bytes() == BODY
    assert "unreachable" in result.stderr
    assert 1.9 < elapsed < 2.0 + 1.0  # the 2 s budget, plus start-up and the download


def test_several_urls_share_one_budget(origin, silent_port, tmp_path):
    urls = [origin.add(f"/budget/many-{n}.bin", BODY) for n in range(12)]
    env = shim_env(f"127.0.0.1:{silent_port}", WITHCACHE_PROBE_TIMEOUT="0.4")
    args = [word for url in urls for word in ("-O", url)]
    started = time.monotonic()
    result = shim("curl", "-fsS", *args, env=env, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("unreachable") == 12
    assert elapsed < 0.4 + 1.0


def test_wget_budget_from_the_environment(origin, silent_port, tmp_path):
    url = origin.add("/budget/wget.bin", BODY)
    env = shim_env(f"127.0.0.1:{silent_port}", WITHCACHE_PROBE_TIMEOUT="0.3")
    started = time.monotonic()
    result = shim("wget", "-q", url, env=env, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "wget.bin").read_bytes() == BODY
    assert elapsed < 0.3 + 1.0
