"""Faults the cache-host must survive: full disks, lying origins, rotten blobs,
kill -9. Each case runs the real server against the lying origin
(tests/origin.py), with real curl and wget, on a real tmpfs where a disk must
fill up; the soak at the end mixes them all under load (tests/soak.py).

New settings are given by environment variable where a test reproduces a
fault, so the same test also runs (and fails) against a server that predates
the setting.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import curl
from test_fills import miss, rows, wait_rows

MB = 1_000_000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def start(*argvs: list[str]) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for a in argvs]


def finish(procs: list[subprocess.Popen[bytes]], timeout: float) -> list[int]:
    """Exit codes; a client still running after `timeout` seconds fails the test."""
    deadline = time.monotonic() + timeout
    codes = []
    try:
        for proc in procs:
            codes.append(proc.wait(max(0.1, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"a client hung for over {timeout} s") from None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return codes


def clients(host, url: str, folder: Path, curls: int = 2, wgets: int = 1, *extra: str):
    """Two curls and a wget streaming `url` from the cache-host, as in the issue."""
    argvs = [["curl", "-sS", *extra, "-o", str(folder / f"curl{n}"), host.blob_url(url)]
             for n in range(curls)]  # fmt: skip
    argvs += [["wget", "-q", "-O", str(folder / f"wget{n}"), host.blob_url(url)]
              for n in range(wgets)]  # fmt: skip
    return start(*argvs)


def open_partials(pid: int) -> list[str]:
    """The partial blob files (deleted or not) the process still holds open."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if "/tmp/fill-" in target or target.endswith("(deleted)"):
            found.append(target)
    return found


def wait_for(check, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"no {what} after {timeout} s")


def events(host, kind: str) -> list[dict]:
    found = rows(host, f"SELECT actor, detail FROM events WHERE kind = '{kind}' ORDER BY id")
    return [{"actor": actor, **json.loads(detail)} for actor, detail in found]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class DiskFiller:
    """Keeps a disk full from a thread, as another process on the host would:
    whatever space is freed, it takes again, until stopped."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "filler"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True)
        self.full = threading.Event()

    def _fill(self) -> None:
        out = None
        while not self._stop.is_set():
            try:
                out = out or open(self.path, "ab")  # noqa: SIM115 (closed below)
                out.write(b"\0" * 65536)
                out.flush()
            except OSError:  # full (even too full to make the file, at first)
                self.full.set()
                time.sleep(0.02)
        if out is not None:
            with contextlib.suppress(OSError):
                out.close()

    def start(self) -> DiskFiller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.path.unlink(missing_ok=True)


# -- 1. a full disk


def test_disk_full_mid_fill_closes_every_client_and_frees_the_disk(
    origin, cache_host, tmpfs, tmp_path
):
    disk = tmpfs("20m")
    small_body = os.urandom(100_000)
    small = origin.add("/faults/full/small.bin", small_body)
    # No length: the fill can't be refused up front, so it runs into ENOSPC.
    url = origin.add("/faults/full/big.bin", os.urandom(30 * MB), chunked=True, rate=15 * MB)
    host = cache_host(name=f"{disk.name}/data", env={"WITHCACHE_MIN_FREE": "0"})
    miss(host, small)
    host.wait_cached(small)
    started = time.monotonic()
    codes = finish(clients(host, url, tmp_path), timeout=30)
    assert all(code != 0 for code in codes), codes  # closed short: every tool fails
    assert time.monotonic() - started < 15
    wait_for(lambda: not open_partials(host.proc.pid), 5, "closed partial files")
    (error,) = wait_rows(host, "SELECT error FROM fills WHERE state = 'failed'")[0]
    assert "No space left on device" in error
    assert [e["error"] for e in events(host, "fill.failed")] == [error]
    assert list((host.data_dir / "tmp").iterdir()) == []
    assert curl("-f", host.blob_url(small)).stdout == small_body
    stopping = time.monotonic()
    host.stop()
    assert host.proc.returncode == 0
    assert time.monotonic() - stopping < 5


def test_a_disk_kept_full_degrades_the_host_until_space_comes_back(
    origin, cache_host, tmpfs, tmp_path
):
    disk = tmpfs("20m")
    small_body = os.urandom(100_000)
    small = origin.add("/faults/kept-full/small.bin", small_body)
    body = os.urandom(8 * MB)
    url = origin.add("/faults/kept-full/big.bin", body, rate=2 * MB)
    host = cache_host(name=f"{disk.name}/data", env={"WITHCACHE_MIN_FREE": "1M"})
    miss(host, small)
    host.wait_cached(small)
    procs = clients(host, url, tmp_path)
    wait_rows(host, "SELECT id FROM fills WHERE state = 'running'")
    time.sleep(0.5)
    filler = DiskFiller(disk).start()  # another writer takes the rest of the disk
    try:
        assert filler.full.wait(10)
        codes = finish(procs, timeout=20)
        assert all(code != 0 for code in codes), codes
        # While the disk stays full: hits work, misses are a 404 saying why
        # (so shims go to the origin), and /healthz says degraded.
        for _ in range(3):
            assert curl("-f", host.blob_url(small)).stdout == small_body
        time.sleep(2.5)  # a flush of the hit counts fails meanwhile
        other = origin.add("/faults/kept-full/other.bin", b"x" * 1000)
        status, text = get(host.blob_url(other))
        assert status == 404 and b"disk" in text, (status, text)
        assert origin.gets("/faults/kept-full/other.bin") == 0
        health = host.health()
        assert health["status"] == "degraded"
        assert any("min-free" in problem for problem in health["problems"])
        wait_for(lambda: not open_partials(host.proc.pid), 5, "closed partial files")
    finally:
        filler.stop()
    # Space is back: the failure is recorded, and the host is healthy again.
    (error,) = wait_rows(host, "SELECT error FROM fills WHERE state = 'failed'")[0]
    assert "No space left on device" in error or "disk" in error
    wait_for(lambda: events(host, "fill.failed"), 10, "fill.failed event")
    assert wait_for(lambda: host.health()["status"] == "ok", 10, "healthy host")
    assert curl("-f", host.blob_url(other)).stdout == b"x" * 1000
    host.stop()  # flushes the hit counts: none was lost while they couldn't be written
    assert rows(host, f"SELECT hits FROM artifacts WHERE key = '{small}'") == [(3,)]


def test_min_free_refuses_fills_before_the_disk_is_full(origin, cache_host, tmpfs):
    disk = tmpfs("20m")
    host = cache_host("--min-free", "12M", name=f"{disk.name}/data")
    assert host.health()["status"] == "ok"
    # An artifact that would take the disk below the floor is refused as soon
    # as its length is known, before its body is read.
    body = os.urandom(10 * MB)
    url = origin.add("/faults/floor/big.bin", body, rate=2 * MB)
    assert curl("-o", os.devnull, "-w", "%{http_code}", host.blob_url(url)).stdout == b"404"
    (error,) = wait_rows(host, "SELECT error FROM fills WHERE state = 'failed'")[0]
    assert "--min-free" in error
    assert origin.body_bytes["/faults/floor/big.bin"] < 2 * MB
    assert list((host.data_dir / "tmp").iterdir()) == []
    # Below the floor (another writer), the host says so and fetches nothing.
    (disk / "filler").write_bytes(b"\0" * 9 * MB)
    health = host.health()
    assert health["status"] == "degraded" and health["problems"]
    # Still alive (hits are served): the container's health check passes, and says why.
    probe = subprocess.run(
        [sys.executable, "-m", "withcache.server.healthcheck"], capture_output=True, text=True,
        env={**os.environ, "WITHCACHE_HOST": "127.0.0.1", "WITHCACHE_PORT": str(host.port)},
    )  # fmt: skip
    assert probe.returncode == 0 and "degraded: the data dir's disk" in probe.stderr
    small = origin.add("/faults/floor/small.bin", b"y" * 1000)
    status, text = get(host.blob_url(small))
    assert status == 404 and b"--min-free" in text
    assert origin.gets("/faults/floor/small.bin") == 0
    (disk / "filler").unlink()
    assert host.health()["status"] == "ok"
    assert curl("-f", host.blob_url(small)).stdout == b"y" * 1000


def test_min_free_has_a_default_and_an_environment_twin():
    from withcache.server.cli import UsageError, settings_from

    assert settings_from([], {}).min_free.describe() == "the smaller of 1.0 GiB and 2% of the disk"
    assert settings_from([], {"WITHCACHE_MIN_FREE": "5%"}).min_free.floor(1000) == 50
    assert settings_from(["--min-free", "3M"], {}).min_free.floor(10**12) == 3 << 20
    with pytest.raises(UsageError, match="from 0% to below 100%"):
        settings_from(["--min-free", "100%"], {})
    with pytest.raises(UsageError, match="a share of the disk such as 2%"):
        settings_from([], {"WITHCACHE_MIN_FREE": "lots"})
    assert settings_from([], {"WITHCACHE_SCRUB_EVERY": "0"}).scrub_every == 0


# -- 2. a resume accepted although the origin's content changed


@pytest.mark.backends
@pytest.mark.parametrize("lie", ["other etag", "other total"])
def test_a_resume_with_changed_content_starts_over(origin, cache_host, tmp_path, lie):
    old = os.urandom(2 * MB)
    new = os.urandom(2 * MB) if lie == "other etag" else os.urandom(4 * MB)
    path = f"/faults/changed/{lie.replace(' ', '-')}.bin"
    # Breaks off at 1 MB; then a new version is out, and the liar still answers
    # the resume with 206 (other ETag, or the same ETag and another total).
    change = {"body": new, "etag": '"v2"' if lie == "other etag" else '"v1"'}
    url = origin.add(path, old, etag='"v1"', die_after=MB, if_range=False, after_dying=change,
                     rate=4 * MB)  # fmt: skip
    host = cache_host()
    procs = start(["curl", "-sS", "-o", str(tmp_path / "early"), host.blob_url(url)])
    (code,) = finish(procs, timeout=30)
    assert code != 0  # it got old bytes it can't be given the rest of
    host.wait_cached(url)
    assert host.blob_names() == [sha(new)]
    assert curl("-f", host.blob_url(url)).stdout == new
    retrying = events(host, "fill.retrying")
    assert any("changed" in e["error"] for e in retrying), retrying


def test_a_resume_longer_than_its_content_range_starts_over(origin, cache_host):
    body = os.urandom(2 * MB)
    # Chunked, so nothing but the Content-Range says where the resume ends.
    url = origin.add("/faults/changed/overlong.bin", body, chunked=True, etag='"o1"',
                     die_after=MB, range_total=int(1.5 * MB))  # fmt: skip
    host = cache_host()
    miss(host, url)
    host.wait_cached(url)
    assert curl("-f", host.blob_url(url)).stdout == body
    retrying = [e["error"] for e in events(host, "fill.retrying")]
    assert any("more than the 1500000 bytes it announced" in e for e in retrying), retrying


# -- 3. --max-bytes across fills (and hosts) without Content-Length


def test_max_bytes_holds_across_fills_without_a_length(origin, cache_host, tmp_path):
    fast = origin.add("/faults/cap/fast.bin", os.urandom(5 * MB), chunked=True)
    slow = [origin.add(f"/faults/cap/slow{n}.bin", os.urandom(4 * MB), chunked=True, rate=2 * MB)
            for n in range(2)]  # fmt: skip
    host = cache_host("--max-bytes", "10M")
    procs = start(*[["curl", "-sS", "-o", os.devnull, host.blob_url(u)] for u in [*slow, fast]])
    finish(procs, timeout=30)
    wait_for(lambda: not rows(host, "SELECT id FROM fills WHERE state IN ('queued', 'running')"),
             20, "fills to end")  # fmt: skip
    health = host.health()
    assert health["bytes_stored"] <= 10 << 20, health
    refused = rows(host, "SELECT error FROM fills WHERE state = 'failed'")
    assert refused and all("--max-bytes" in error for (error,) in refused)


@pytest.mark.parametrize("backend", ["scale"], indirect=True)
def test_max_bytes_holds_across_hosts_sharing_a_store(origin, cache_host, backend):
    urls = [origin.add(f"/faults/cap-hosts/{n}.bin", os.urandom(6 * MB), chunked=True, rate=3 * MB)
            for n in range(2)]  # fmt: skip
    hosts = [cache_host("--max-bytes", "10M", name=f"host{n}") for n in range(2)]
    argvs = [
        ["curl", "-sS", "-o", os.devnull, h.blob_url(u)] for h, u in zip(hosts, urls, strict=True)
    ]
    procs = start(*argvs)
    finish(procs, timeout=30)
    host = hosts[0]
    wait_for(lambda: not rows(host, "SELECT id FROM fills WHERE state IN ('queued', 'running')"),
             20, "fills to end")  # fmt: skip
    assert host.health()["bytes_stored"] <= 10 << 20
    (error,) = rows(host, "SELECT error FROM fills WHERE state = 'failed'")[0]
    assert "--max-bytes" in error


# -- 7. a blob cut short on disk; 8. a flipped byte


def stored(origin, cache_host, path: str, size: int, *flags: str):
    body = os.urandom(size)
    url = origin.add(path, body)
    host = cache_host(*flags)
    miss(host, url)
    host.wait_cached(url)
    return host, url, body


@pytest.mark.backends
@pytest.mark.parametrize(
    ("size", "cut", "extra"),
    [(300_000, 150_000, ()), (200_000, 100_000, ()), (300_000, 150_000, ("-r", "200000-"))],
    ids=["sendfile", "small", "range-past-the-cut"],
)
def test_a_truncated_blob_is_never_sent(origin, cache_host, backend, tmp_path, size, cut, extra):
    path = f"/faults/cut/{size}-{'-'.join(extra) or 'whole'}.bin"
    host, url, body = stored(origin, cache_host, path, size)
    host.backend.replace_blob(host.data_dir, sha(body), body[:cut])
    # No -f: a 500 page would be saved as the artifact with exit 0.
    result = curl("-m", "20", *extra, "-o", str(tmp_path / "got"), host.blob_url(url))
    assert result.returncode == 0, result.stderr
    wanted = body[200_000:] if extra else body
    assert (tmp_path / "got").read_bytes() == wanted  # refilled, streamed from the origin
    (found,) = events(host, "artifact.quarantined")
    assert found["sha256"] == sha(body) and "size" in found["problem"]
    host.wait_cached(url)
    assert curl("-f", host.blob_url(url)).stdout == body
    assert origin.gets(path) == 2


@pytest.mark.parametrize("rot", ["grown", "unreadable"])
def test_a_blob_grown_or_unreadable_is_never_sent(origin, cache_host, tmp_path, rot):
    host, url, body = stored(origin, cache_host, f"/faults/rot/{rot}.bin", 400_000)
    blob = host.data_dir / "blobs" / sha(body)[:2] / sha(body)
    if rot == "grown":
        with open(blob, "ab") as grown:
            grown.write(b"appended")
    else:
        blob.unlink()
        blob.mkdir()  # opening it fails: not a file
    result = curl("-m", "20", "-o", str(tmp_path / "got"), host.blob_url(url))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "got").read_bytes() == body
    (found,) = events(host, "artifact.quarantined")
    assert found["problem"].startswith("size" if rot == "grown" else "unreadable")


@pytest.mark.backends
def test_a_flipped_byte_in_a_small_blob_is_caught_on_read(origin, cache_host, backend):
    host, url, body = stored(origin, cache_host, "/faults/flip/small.bin", 100_000)
    rotten = bytearray(body)
    rotten[5000] ^= 0x01
    host.backend.replace_blob(host.data_dir, sha(body), bytes(rotten))
    assert curl("-f", host.blob_url(url)).stdout == body
    (found,) = events(host, "artifact.quarantined")
    assert "content" in found["problem"]


@pytest.mark.backends
def test_the_scrub_finds_a_flipped_byte_in_a_big_blob(origin, cache_host, backend):
    # A scrub period of 0.0001 days (8.6 s) at the lowest rate (1 MiB/s).
    host, url, body = stored(origin, cache_host, "/faults/flip/big.bin", 3 * MB,
                             "--scrub-every", "0.0001")  # fmt: skip
    rotten = bytearray(body)
    rotten[2 * MB] ^= 0x80
    host.backend.replace_blob(host.data_dir, sha(body), bytes(rotten))
    found = wait_for(lambda: events(host, "artifact.quarantined"), 30, "quarantine by the scrub")
    assert found[0]["actor"] == "scrub" and "content" in found[0]["problem"]
    finished = wait_for(lambda: [e for e in events(host, "verify.finished") if e["corrupt"]], 30,
                        "a scrub pass that found it")  # fmt: skip
    assert finished[0]["actor"] == "scrub"
    metrics = curl(host.url + "/metrics").stdout.decode()
    assert re.search(r"^withcache_verify_bad_blobs 1\.0$", metrics, re.M), metrics
    assert re.search(r"^withcache_quarantined_artifacts_total 1\.0$", metrics, re.M)
    assert "withcache_scrub_checked_ratio" in metrics
    overview = curl(host.url + "/").stdout.decode()
    assert "Integrity" in overview and "1 corrupt" in overview
    assert curl("-f", host.blob_url(url)).stdout == body  # a miss now: filled afresh


# -- 13. a close-delimited body cut short


def test_a_body_framed_by_close_is_streamed_but_not_stored(origin, cache_host, tmp_path):
    body = os.urandom(2 * MB)
    url = origin.add("/faults/close/cut.bin", body, close_delimited=True, die_after=MB,
                     die_times=100, rate=4 * MB)  # fmt: skip
    host = cache_host()
    got = curl("-f", "-o", str(tmp_path / "got"), host.blob_url(url))
    # What the origin itself would have given: the bytes up to the close.
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "got").read_bytes() == body[:MB]
    (error,) = wait_rows(host, "SELECT error FROM fills WHERE state = 'failed'")[0]
    assert "length" in error and "not stored" in error
    assert rows(host, "SELECT count(*) FROM artifacts") == [(0,)]
    (reason,) = rows(host, "SELECT reason FROM misses")[0]
    assert "not stored" in reason


async def test_an_expected_sha256_vouches_for_a_body_framed_by_close(core, origin):
    body = os.urandom(MB)
    whole = origin.add("/faults/close/whole.bin", body, close_delimited=True)
    cut = origin.add("/faults/close/vouched-cut.bin", body, close_delimited=True,
                     die_after=MB // 2, die_times=100)  # fmt: skip
    record = (await core.add(whole, expected=sha(body))).fill
    artifact = await core.live_fill(record.id).result()
    assert artifact.sha256 == sha(body)
    record = (await core.add(cut, expected=sha(body))).fill
    with pytest.raises(Exception, match="SHA-256 mismatch"):
        await core.live_fill(record.id).result()


# -- 12 (last part). kill -9 mid-fill: resume from the partial file


@pytest.mark.backends
@pytest.mark.parametrize("changed", [False, True], ids=["same", "changed"])
def test_a_fill_resumes_after_kill_9(origin, cache_host, backend, changed):
    body = os.urandom(4 * MB)
    path = f"/faults/kill9/{'changed' if changed else 'same'}.bin"
    url = origin.add(path, body, etag='"k1"', rate=1 * MB)
    host = cache_host()
    miss(host, url)
    # Wait until a resume point is saved (the partial is synced every second).
    wait_for(lambda: rows(host, "SELECT bytes_done FROM fills")[0][0] >= MB, 20, "progress")
    time.sleep(1.5)
    host.kill()
    new = os.urandom(3 * MB)
    resource = origin.resources[path]
    resource.rate = None
    if changed:
        resource.body, resource.etag = new, '"k2"'
    host.start()
    host.wait_cached(url, timeout=40)
    assert curl("-f", host.blob_url(url)).stdout == (new if changed else body)
    resumed = [h.headers for h in origin.hits if h.path == path][-1]
    assert re.fullmatch(r"bytes=\d+-", resumed.get("Range", "")), resumed
    assert int(resumed["Range"][6:-1]) >= MB
    assert resumed.get("If-Range") == '"k1"'
    if not changed:
        assert origin.body_bytes[path] < len(body) + MB  # not fetched twice
    assert list((host.data_dir / "tmp").iterdir()) == []


def test_sigterm_closes_streaming_clients_at_once_and_the_fill_resumes(
    origin, cache_host, tmp_path
):
    body = os.urandom(6 * MB)
    url = origin.add("/faults/sigterm/slow.bin", body, etag='"t1"', rate=MB)
    host = cache_host()
    (proc,) = start(["curl", "-sS", "-o", str(tmp_path / "got"), host.blob_url(url)])
    wait_for(lambda: (tmp_path / "got").exists() and (tmp_path / "got").stat().st_size > MB,
             20, "bytes streamed")  # fmt: skip
    time.sleep(1.2)  # a resume point is saved about every second
    stopping = time.monotonic()
    host.stop()
    assert time.monotonic() - stopping < 5  # not the server's 60 s shutdown timeout
    assert host.proc.returncode == 0
    assert finish([proc], timeout=5) != [0]  # closed short: it fails, loudly
    origin.resources["/faults/sigterm/slow.bin"].rate = None
    host.start()
    host.wait_cached(url)
    assert curl("-f", host.blob_url(url)).stdout == body
    resumed = [h.headers for h in origin.hits if h.path == "/faults/sigterm/slow.bin"][-1]
    assert int(resumed["Range"][6:-1]) >= MB and resumed["If-Range"] == '"t1"'


# -- under load


@pytest.mark.soak
def test_soak(origin, cache_host, tmpfs, tmp_path):
    """Mixed load with faults injected (tests/soak.py). WITHCACHE_SOAK_SECONDS=60
    for the full run; the suite's default is a short one."""
    from soak import FD_BOUND, RSS_BOUND_MIB, Soak

    seconds = float(os.environ.get("WITHCACHE_SOAK_SECONDS", "15"))
    disk = tmpfs("64m")
    host = cache_host("--min-free", "2M", "--fill-attempts", "3", "--scrub-every", "0.0002",
                      name=f"{disk.name}/data")  # fmt: skip
    clients = tmp_path / "clients"
    clients.mkdir()
    figures = Soak(origin, host, disk, clients, seconds).run()
    print("soak figures:", json.dumps(figures.summary()))
    assert figures.requests > seconds  # it did run under load
    assert not figures.wrong, figures.wrong[:5]
    assert figures.unsettled is None
    assert not figures.server_errors, figures.server_errors[:5]
    assert not figures.bad_stored, figures.bad_stored
    assert figures.fds[1] <= figures.fds[0] + FD_BOUND, figures.fds
    assert figures.rss_mib[1] - figures.rss_mib[0] < RSS_BOUND_MIB, figures.rss_mib
    assert host.health()["status"] == "ok"
