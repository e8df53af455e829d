"""Nothing lost across a crash: kill -9 during a fill, restarts, a full disk."""

import os
import subprocess
import time

import pytest
from conftest import curl
from test_fills import blob_files, miss, rows, temp_files, wait_fill_state

pytestmark = pytest.mark.backends
BODY = os.urandom(2_000_000)


def test_kill_9_during_a_fill_then_restart(origin, cache_host):
    url = origin.add("/dur/slow.bin", BODY, rate=1_000_000)
    host = cache_host()
    miss(host, url)
    wait_fill_state(host, "running")
    deadline = time.monotonic() + 10
    while not any(p.stat().st_size for p in temp_files(host)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    host.kill()
    assert temp_files(host)  # the crash left a partial blob...
    assert rows(host, "SELECT count(*) FROM artifacts") == [(0,)]
    origin.resources["/dur/slow.bin"].rate = None
    host.start()
    host.wait_cached(url)  # ...the fill carried on by itself after the restart...
    assert curl("-f", host.blob_url(url)).stdout == BODY
    assert temp_files(host) == []  # ...and the partial blob is gone.
    assert len(blob_files(host)) == 1


def test_artifacts_misses_and_queue_survive_a_restart(origin, cache_host):
    url = origin.add("/dur/kept.bin", BODY)
    host = cache_host("--curate")
    miss(host, url)
    miss(host, url)
    host.restart()
    assert rows(host, "SELECT key, count FROM misses") == [(url, 2)]
    host.stop()
    host.flags = tuple(f for f in host.flags if f != "--curate")
    host.start()
    miss(host, url)
    host.wait_cached(url)
    host.kill()
    host.start()
    assert curl("-f", host.blob_url(url)).stdout == BODY


def test_queued_fills_survive_kill_9(origin, cache_host):
    urls = [origin.add(f"/dur/q{n}.bin", BODY, rate=400_000) for n in range(3)]
    # Without streaming no client's fill starts at once: they queue for the worker.
    host = cache_host("--workers", "1", "--no-stream-fills")
    for url in urls:
        miss(host, url)
    wait_fill_state(host, "running")
    assert rows(host, "SELECT count(*) FROM fills WHERE state = 'queued'") == [(2,)]
    host.kill()
    for n in range(3):
        origin.resources[f"/dur/q{n}.bin"].rate = None
    host.start()
    for url in urls:
        host.wait_cached(url)


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)])
    if result.returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_disk_full_fails_the_fill_cleanly_and_keeps_serving(origin, cache_host, small_disk):
    small = origin.add("/dur/fits.bin", BODY[:500_000])
    big = origin.add("/dur/too-big.bin", os.urandom(5_000_000))
    host = cache_host(name="small/data")
    miss(host, small)
    host.wait_cached(small)
    miss(host, big)
    (error,) = wait_fill_state(host, "failed")[0]
    # Refused as soon as its length is known (a fill of unknown length runs
    # into ENOSPC instead: tests/test_faults.py).
    assert "would not fit on the data dir's disk" in error
    assert temp_files(host) == []
    assert len(blob_files(host)) == 1
    assert curl("-f", host.blob_url(small)).stdout == BODY[:500_000]
    assert host.health()["status"] == "ok"
