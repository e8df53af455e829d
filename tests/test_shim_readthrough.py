"""The shims over read-through fills: a script's first download of an
uncached artifact is already served by the cache, from the one fill."""

import os
import subprocess

from conftest import BIN, shim, shim_env

BODY = os.urandom(4_000_000)


def test_eight_curls_at_once_cost_one_origin_download(origin, cache_host, tmp_path):
    url = origin.add("/srt/eight.run", BODY, rate=8_000_000)
    host = cache_host()
    procs = [
        subprocess.Popen(
            [str(BIN / "curlwithcache"), "-fsS", "-o", str(tmp_path / f"c{n}"), url],
            env=shim_env(host.url),
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(8)
    ]
    for proc in procs:
        assert proc.wait(60) == 0, proc.stderr.read()
        assert proc.stderr.read().startswith(f"withcache: curl: hit {url}")
    for n in range(8):
        assert (tmp_path / f"c{n}").read_bytes() == BODY
    assert origin.gets("/srt/eight.run") == 1
    assert origin.body_bytes["/srt/eight.run"] == len(BODY)


def test_wget_first_download_reads_through(origin, cache_host, tmp_path):
    url = origin.add("/srt/first.iso", BODY, rate=8_000_000)
    host = cache_host()
    result = shim("wget", "-q", url, server=host.url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(f"withcache: wget: hit {url}")
    assert (tmp_path / "first.iso").read_bytes() == BODY
    assert origin.gets("/srt/first.iso") == 1


def test_origin_dying_mid_fill_fails_the_shimmed_curl(origin, cache_host, tmp_path):
    url = origin.add(
        "/srt/dies.run", BODY, rate=8_000_000, die_after=1_000_000, die_times=100, ranges=False
    )
    host = cache_host("--fill-attempts", "1")
    result = shim("curl", "-sS", "-o", str(tmp_path / "out"), url, server=host.url)
    assert result.returncode == 18  # never a silently short file
    out = tmp_path / "out"
    assert not out.exists() or len(out.read_bytes()) < len(BODY)
