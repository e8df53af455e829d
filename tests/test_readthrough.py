"""Read-through fills: the clients of a miss get their bytes from the one
origin download, as it arrives, and never a wrong or silently short file."""

import os
import subprocess
import time

import pytest
from aiohttp import web
from conftest import curl
from test_fills import rows, wait_fill_state

from withcache.server.web import readthrough

pytestmark = pytest.mark.backends
BODY = os.urandom(3_000_000)


def start_curls(*args_lists, cwd=None):
    return [
        subprocess.Popen(["curl", "-sS", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for args in args_lists
    ]


def finish(procs, timeout=60):
    return [(p.wait(timeout), p.stdout.read(), p.stderr.read()) for p in procs]


def test_eight_clients_share_one_origin_download(origin, cache_host, tmp_path):
    url = origin.add("/rt/eight.bin", BODY, rate=6_000_000)
    host = cache_host()
    procs = start_curls(
        *[["-f", "-o", str(tmp_path / f"c{n}"), host.blob_url(url)] for n in range(8)]
    )
    for code, _, err in finish(procs):
        assert code == 0, err
    for n in range(8):
        assert (tmp_path / f"c{n}").read_bytes() == BODY
    assert origin.gets("/rt/eight.bin") == 1
    assert origin.body_bytes["/rt/eight.bin"] == len(BODY)
    host.wait_cached(url)


def test_probe_during_a_fill_answers_200_with_the_length(origin, cache_host):
    url = origin.add("/rt/probe.bin", BODY, rate=1_000_000, headers={"Content-Type": "x/y"})
    host = cache_host()
    head = curl("-I", host.blob_url(url)).stdout.decode().lower()
    assert head.startswith("http/1.1 200")
    assert f"content-length: {len(BODY)}" in head
    assert "content-type: x/y" in head
    assert "etag:" not in head  # no SHA-256 until the fill is whole
    assert rows(host, "SELECT state FROM fills") == [("running",)]


def test_probe_of_a_fill_without_length_is_a_miss(origin, cache_host):
    url = origin.add("/rt/unsized.bin", BODY, rate=1_000_000, chunked=True)
    host = cache_host()
    assert curl("-I", "-o", os.devnull, "-w", "%{http_code}", host.blob_url(url)).stdout == b"404"
    # ...but a GET streams it, chunked, from the same fill.
    assert curl("-f", host.blob_url(url)).stdout == BODY
    assert origin.gets("/rt/unsized.bin") == 1


def test_range_during_a_fill_waits_only_for_its_bytes(origin, cache_host):
    url = origin.add("/rt/range.bin", BODY, rate=500_000)
    host = cache_host()
    started = time.monotonic()
    part = curl("-f", "-r", "1000-1999", host.blob_url(url))
    assert part.stdout == BODY[1000:2000]
    assert time.monotonic() - started < 3  # the whole artifact takes 6 s
    assert rows(host, "SELECT state FROM fills") == [("running",)]


def test_origin_dying_fails_every_streaming_client(origin, cache_host, tmp_path):
    url = origin.add(
        "/rt/dies.bin", BODY, rate=3_000_000, die_after=1_000_000, die_times=100, ranges=False
    )
    host = cache_host("--fill-attempts", "1")
    procs = start_curls(*[["-o", str(tmp_path / f"c{n}"), host.blob_url(url)] for n in range(3)])
    for code, _, err in finish(procs):
        assert code in (18, 56), err  # partial file / connection closed: never exit 0
    for n in range(3):
        assert len((tmp_path / f"c{n}").read_bytes()) < len(BODY)
    wait_fill_state(host, "failed")
    assert rows(host, "SELECT count(*) FROM artifacts") == [(0,)]
    assert list((host.data_dir / "tmp").iterdir()) == []
    # Asking again at once is turned away for a backoff: the shims go to the origin.
    gets = origin.gets("/rt/dies.bin")
    again = curl("-w", "%{http_code}", host.blob_url(url)).stdout
    assert b"the last fill failed: transfer broke off" in again and again.endswith(b"404")
    assert origin.gets("/rt/dies.bin") == gets


def test_a_resumed_fill_keeps_its_clients(origin, cache_host):
    url = origin.add("/rt/resumes.bin", BODY, die_after=1_200_000, etag='"r1"', rate=4_000_000)
    host = cache_host()
    assert curl("-f", host.blob_url(url)).stdout == BODY
    ranges = [h.headers.get("Range") for h in origin.hits if h.path == "/rt/resumes.bin"]
    assert ranges == [None, "bytes=1200000-"]


def test_a_fill_that_starts_over_fails_clients_that_got_old_bytes(origin, cache_host, tmp_path):
    # No Range support: after the break the fill starts from byte 0 again, and
    # the new bytes need not be the old ones. A client part-way through must fail.
    url = origin.add("/rt/restart.bin", BODY, die_after=1_000_000, ranges=False, rate=3_000_000)
    host = cache_host("--retry-delay", "0.3")
    early = start_curls(["-o", str(tmp_path / "early"), host.blob_url(url)])
    ((code, _, _),) = finish(early)
    assert code != 0
    assert curl("-f", host.blob_url(url)).stdout == BODY
    assert origin.gets("/rt/restart.bin") == 2


def test_a_slow_client_does_not_slow_the_fill_or_others(origin, cache_host, tmp_path):
    # Bigger than loopback's socket buffers (several MB), which a rate-limited
    # curl could otherwise take in at once.
    body = BODY * 4
    url = origin.add("/rt/slow-client.bin", body, rate=20_000_000)
    host = cache_host()
    slow = start_curls(
        ["-f", "--limit-rate", "200K", "-o", str(tmp_path / "slow"), host.blob_url(url)]
    )
    time.sleep(0.2)
    started = time.monotonic()
    fast = curl("-f", host.blob_url(url))
    assert fast.stdout == body
    assert time.monotonic() - started < 5  # at 200 KB/s the slow one needs 60 s
    host.wait_cached(url, timeout=5)
    assert slow[0].poll() is None  # still crawling, and the fill is long done
    slow[0].kill()
    slow[0].wait()


def test_a_client_that_leaves_does_not_stop_the_fill(origin, cache_host):
    url = origin.add("/rt/leaves.bin", BODY, rate=3_000_000)
    host = cache_host()
    assert curl("--max-time", "0.3", "-o", os.devnull, host.blob_url(url)).returncode == 28
    host.wait_cached(url)
    assert curl("-f", host.blob_url(url)).stdout == BODY
    assert origin.gets("/rt/leaves.bin") == 1


def test_downloads_page_shows_how_many_clients_a_fill_serves(origin, cache_host, tmp_path):
    url = origin.add("/rt/watched.bin", BODY, rate=1_000_000)
    host = cache_host()  # no password: the UI is open
    procs = start_curls(*[["-o", os.devnull, host.blob_url(url)] for _ in range(3)])
    deadline = time.monotonic() + 10
    while "serving 3 clients" not in curl(host.url + "/downloads").stdout.decode():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for proc in procs:
        proc.kill()
        proc.wait()


def test_misses_are_served_at_once_while_every_worker_is_busy(origin, cache_host, tmp_path):
    urls = [origin.add(f"/rt/busy{n}.bin", BODY, rate=1_500_000) for n in range(3)]
    host = cache_host("--workers", "1")
    for url in urls:  # each takes 2 s: none could wait for the one worker
        head = curl("-I", "-o", os.devnull, "-w", "%{http_code}", host.blob_url(url))
        assert head.stdout == b"200"
    assert rows(host, "SELECT state FROM fills") == [("running",)] * 3
    procs = start_curls(
        *[["-f", "-o", str(tmp_path / f"c{n}"), host.blob_url(u)] for n, u in enumerate(urls)]
    )
    for code, _, err in finish(procs):
        assert code == 0, err
    for n in range(len(urls)):
        assert (tmp_path / f"c{n}").read_bytes() == BODY
        assert origin.gets(f"/rt/busy{n}.bin") == 1


async def test_a_get_that_joins_a_fill_as_it_is_stored_gets_the_blob(
    auto_core, origin, aiohttp_client
):
    """Once stored, a fill's partial file is gone (moved into the store): a GET
    that joined the fill just before is answered from the store, not a 404."""
    url = origin.add("/rt/just-stored.bin", BODY)
    outcome = await auto_core.miss(url, auto_core.key(url), None)
    await outcome.fill.result()
    assert not outcome.fill.path.exists()

    async def joined_late(request):
        return await readthrough.serve_from_fill(request, auto_core, outcome)

    app = web.Application()
    app.router.add_get("/", joined_late)
    response = await (await aiohttp_client(app)).get("/")
    assert response.status == 200
    assert await response.read() == BODY


def test_no_stream_fills_gives_the_seed_behaviour(origin, cache_host):
    url = origin.add("/rt/seed.bin", BODY)
    host = cache_host("--no-stream-fills")
    code = curl("-o", os.devnull, "-w", "%{http_code}", host.blob_url(url)).stdout
    assert code == b"404"
    host.wait_cached(url)


def test_curated_mode_never_streams(origin, cache_host):
    url = origin.add("/rt/curated.bin", BODY)
    host = cache_host("--curate")
    code = curl("-o", os.devnull, "-w", "%{http_code}", host.blob_url(url)).stdout
    assert code == b"404"
    assert origin.gets("/rt/curated.bin") == 0
