"""Floods the cache-host must survive (issue 13, part B): junk that fills the
fill queue, failures asked for again and again, junk that fills the metadata
store, and connections that never finish. Each test reproduces a fault found
in the code before it was mended (said in its docstring) against a real
server, real origin, real wget or real sockets, then holds.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from backends import run_async
from conftest import curl
from test_api import start, wait_fill
from test_fills import rows, wait_fill_state, wait_rows

from withcache.server.admission import origin_of
from withcache.server.records import MISS_KEY_CHARS
from withcache.server.store import sqlite as sqlite_store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from floods import ask_all  # the bench's flood client

BODY = os.urandom(200_000)


def probe_all(host, urls: list[str], method: str = "HEAD") -> list[int]:
    return run_async(lambda: ask_all(host.port, urls, method))


@pytest.fixture
def silent_origins() -> Iterator[list[str]]:
    """Forty origins that accept connections and never answer (each its own
    loopback address, so each is another origin to the cache-host)."""
    socks = []
    try:
        for n in range(40):
            sock = socket.socket()
            sock.bind((f"127.0.1.{n + 1}", 0))
            sock.listen(128)
            socks.append(sock)
        yield [f"http://{s.getsockname()[0]}:{s.getsockname()[1]}" for s in socks]
    finally:
        for sock in socks:
            sock.close()


def junk_host() -> str:
    """A host name that resolves nowhere, at once (RFC 6761's .invalid)."""
    return f"nosuch-{uuid.uuid4().hex[:12]}.invalid"


# -- 5. the fill queue: bounded, DNS failures fast, room for clients and operators


def test_a_name_that_does_not_resolve_fails_at_once_and_is_remembered(cache_host):
    """Before: a DNS failure was a temporary one: five tries over ~15 s (at
    the default --retry-delay), and every other URL on the host the same."""
    host = cache_host("--retry-delay", "1")
    name = junk_host()
    started = time.monotonic()
    curl(host.blob_url(f"http://{name}/a.bin"))
    (error,) = wait_fill_state(host, "failed")[0]
    assert "Name or service not known" in error or "not known" in error.lower(), error
    assert time.monotonic() - started < 5
    assert "fill.retrying" not in host.log()
    answer = curl(host.blob_url(f"http://{name}/b.bin")).stdout
    assert b"is failing: origin unreachable" in answer, answer
    assert rows(host, "SELECT count(*) FROM fills") == [(1,)]


def test_a_flood_of_probes_leaves_room_for_a_client_that_gets(origin, cache_host, silent_origins):
    """Before: probes for origins that never answer took every one of the 32
    fills clients may start and every worker; a GET from a real client then
    waited 30 s and got a 404 (the issue: 2,548 HEADs, then a starved GET)."""
    url = origin.add("/floods/wanted.bin", BODY)
    host = cache_host("--retry-delay", "1")
    junk = [f"{o}/x{n}.bin" for o in silent_origins for n in range(2)]
    junk += [f"http://{junk_host()}/y.bin" for _ in range(200)]
    statuses = probe_all(host, junk)
    assert set(statuses) == {404}
    started = time.monotonic()
    got = curl("-f", "-m", "20", host.blob_url(url))
    assert got.returncode == 0 and got.stdout == BODY, got.stderr
    assert time.monotonic() - started < 10


def test_queue_bounds_per_origin_and_in_all_keep_room_for_operators(
    origin, cache_host, silent_origins
):
    """Before: nothing bounded what misses could queue: 63 probes, 63 fills."""
    host, api = start(
        cache_host, "--max-queued-fills", "20", "--max-queued-fills-per-host", "5",
        "--no-stream-fills",
    )  # fmt: skip

    def reasons() -> set[str]:
        return {r for (r,) in rows(host, "SELECT reason FROM misses")}

    assert set(probe_all(host, [f"{silent_origins[0]}/z{n}.bin" for n in range(8)])) == {404}
    assert rows(host, "SELECT count(*) FROM fills") == [(5,)]
    assert any("(--max-queued-fills-per-host)" in r for r in reasons()), reasons()
    junk = [f"{o}/z{n}.bin" for o in silent_origins[1:12] for n in range(5)]
    assert set(probe_all(host, junk)) == {404}
    assert rows(host, "SELECT count(*) FROM fills") == [(20,)]
    per_origin = Counter(origin_of(key) for (key,) in rows(host, "SELECT key FROM fills"))
    assert max(per_origin.values()) <= 5, per_origin
    assert any("(--max-queued-fills)" in r for r in reasons()), reasons()
    # An operator is let in past the bounds.
    made = api.post("/fills", {"url": origin.add("/floods/operator.bin", BODY)})
    assert made.status == 201, made


def test_an_operators_fill_runs_before_the_misses_queued_ahead_of_it(
    origin, cache_host, silent_origins
):
    """Before: one queue in arrival order: behind eight misses for an origin
    that never answers (a second each), an operator waited eight seconds."""
    host, api = start(
        cache_host, "--workers", "1", "--origin-timeout", "1", "--fill-attempts", "1",
        "--no-stream-fills",
    )  # fmt: skip
    probe_all(host, [f"{o}/w.bin" for o in silent_origins[:8]])
    made = api.post("/fills", {"url": origin.add("/floods/first.bin", BODY)})
    assert made.status == 201
    started = time.monotonic()
    assert wait_fill(api, made.body["id"])["state"] == "done"
    assert time.monotonic() - started < 4
    queued = rows(host, "SELECT count(*) FROM fills WHERE state = 'queued'")[0][0]
    assert queued >= 4


# -- 12 (second half). failures are remembered, so asking again costs nothing


def test_wget_retrying_an_origin_that_always_breaks_off_costs_one_fill(
    origin, cache_host, tmp_path
):
    """Before: each of wget's 20 tries was a new fill of 5 tries: 50 origin GETs."""
    url = origin.add(
        "/floods/breaks.bin", BODY, die_after=20_000, die_times=10_000, rate=2_000_000,
        etag='"b1"',
    )  # fmt: skip
    host = cache_host()
    done = subprocess.run(
        ["wget", "-q", "-t", "20", "--waitretry=0", "-O", str(tmp_path / "out"),
         host.blob_url(url)],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert origin.gets("/floods/breaks.bin") <= 5, origin.gets("/floods/breaks.bin")
    assert rows(host, "SELECT count(*) FROM fills") == [(1,)]


def test_an_origin_that_refuses_connections_turns_its_other_urls_away(cache_host, free_port):
    """Before: every URL on an origin that is down was a fill of its own."""
    host = cache_host()
    curl(host.blob_url(f"http://127.0.0.1:{free_port}/a.bin"))
    wait_fill_state(host, "failed")
    answer = curl(host.blob_url(f"http://127.0.0.1:{free_port}/b.bin")).stdout
    assert b"is failing: origin unreachable" in answer, answer
    assert rows(host, "SELECT count(*) FROM fills") == [(1,)]


def test_a_credentialed_fill_cut_by_a_restart_starts_again_when_asked(origin, cache_host):
    """Before: its failure ("credentials are not kept across a restart; ask
    again") was remembered, so asking again got a 404 for a minute."""
    secret = "Bearer restart-token"
    url = origin.add("/floods/credentialed.bin", BODY, require_auth=secret, rate=100_000)
    host = cache_host()
    auth = ("-H", f"Authorization: {secret}")
    curl("-I", *auth, host.blob_url(url))
    wait_rows(host, "SELECT id FROM fills WHERE state = 'running'")
    host.restart()
    (error,) = wait_fill_state(host, "failed")[0]
    assert "credentials are not kept" in error
    got = curl("-f", *auth, host.blob_url(url))
    assert got.returncode == 0 and got.stdout == BODY, got.stderr


# -- 6. the metadata store stays within its bounds, and gives space back


def _db_bytes(host) -> int:
    return sum(p.stat().st_size for p in host.data_dir.glob("cache.db*"))


def _junk_urls(count: int, path_bytes: int = 1500) -> list[str]:
    return [f"https://junk.example/{n:06d}/{'p' * path_bytes}" for n in range(count)]


def test_junk_misses_stay_within_the_bounds_as_they_arrive(cache_host):
    """Before: 5,000 refused junk URLs with 1.5 KB paths made 5,000 misses and
    5,000 events (the bounds held only at the 10-minute prune): ~40 MB."""
    host = cache_host(
        "--allow-origin", "nothing.invalid", "--max-misses", "500", "--max-events", "500"
    )
    probe_all(host, _junk_urls(5000))
    (misses,) = rows(host, "SELECT count(*) FROM misses")[0]
    (events,) = rows(host, "SELECT count(*) FROM events")[0]
    assert misses <= 550 and events <= 550, (misses, events)
    (longest,) = rows(host, "SELECT max(length(key)) FROM misses")[0]
    assert longest <= MISS_KEY_CHARS
    assert _db_bytes(host) < 6 << 20, _db_bytes(host)


def test_a_long_miss_is_filed_short_and_still_approved_by_its_url(origin, cache_host):
    """A miss row keeps at most MISS_KEY_CHARS of its key; in curate mode the
    full URL it keeps is what an approval fetches."""
    long_path = "/floods/" + "l" * 1500 + ".bin"
    url = origin.add(long_path, BODY)
    host, api = start(cache_host, "--curate")
    curl("-I", host.blob_url(url))
    (key,) = rows(host, "SELECT key FROM misses")[0]
    assert len(key) == MISS_KEY_CHARS and key != url
    approved = api.post("/misses/approve", {"url": url})
    assert approved.status == 200, approved
    assert wait_fill(api, approved.body["id"])["state"] == "done"
    host.wait_cached(url)
    assert rows(host, "SELECT count(*) FROM misses") == [(0,)]  # settled by the fill


def test_one_url_refused_again_and_again_is_one_event(cache_host):
    """Before: every request for a refused URL was an event, so one script in a
    loop could push the whole audit trail out of --max-events."""
    host = cache_host("--allow-origin", "nothing.invalid")
    probe_all(host, ["https://junk.example/same.bin"] * 300)
    assert rows(host, "SELECT count(*) FROM events WHERE kind = 'fill.refused'") == [(1,)]
    assert rows(host, "SELECT count FROM misses") == [(300,)]


def test_a_bloated_database_shrinks_when_the_host_starts(cache_host, tmp_path):
    """Before: pruning deleted rows but the file never shrank (no vacuum)."""
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / "cache.db") as db:  # as an older withcache made it
        db.execute("PRAGMA journal_mode=WAL")
        for number, script in enumerate(sqlite_store.MIGRATIONS, start=1):
            db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
        now = time.time()
        db.executemany(
            "INSERT INTO misses VALUES (?, NULL, 1, ?, ?, 'refused')",
            [(url, now + n, now + n) for n, url in enumerate(_junk_urls(8000))],
        )
    bloated = (data / "cache.db").stat().st_size
    assert bloated > 30 << 20
    host = cache_host("--max-misses", "100")
    assert rows(host, "SELECT count(*) FROM misses") == [(100,)]
    assert _db_bytes(host) < 4 << 20, (bloated, _db_bytes(host))


# -- 14. connections: a header timeout, and a bound per client address


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_connections_dripping_headers_are_closed_after_the_header_timeout(cache_host):
    """Before: 200 connections sending a header byte now and then stayed open."""
    host = cache_host("--header-timeout", "1")
    drips = [_connect(host.port) for _ in range(50)]
    try:
        for sock in drips:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        deadline = time.monotonic() + 4
        open_ = list(drips)
        while open_ and time.monotonic() < deadline:
            for sock in list(open_):
                try:
                    sock.sendall(b"X")
                except OSError:
                    open_.remove(sock)
                    continue
                if _closed_by_server(sock, 0.01):
                    open_.remove(sock)
            time.sleep(0.2)
        assert not open_, f"{len(open_)} of {len(drips)} still open"
    finally:
        for sock in drips:
            sock.close()
    assert host.health()["status"] == "ok"


def test_a_tls_handshake_that_never_starts_is_closed_after_the_header_timeout(
    cache_host, tls_files
):
    """Before: asyncio's own handshake timeout held such a connection for 60 s."""
    chain, key = tls_files
    host = cache_host("--tls-cert", str(chain), "--tls-key", str(key), "--header-timeout", "1")
    silent = _connect(host.port)
    try:
        assert _closed_by_server(silent, 3), "still open after 3 s"
    finally:
        silent.close()


def test_one_address_may_hold_only_so_many_connections(cache_host):
    """Before: no bound: one address could hold every descriptor the host has."""
    host = cache_host("--max-client-connections", "5")
    held = [_connect(host.port) for _ in range(5)]
    try:
        extra = _connect(host.port)
        assert _closed_by_server(extra, 2), "the sixth connection was not closed"
        extra.close()
        for sock in held:
            assert not _closed_by_server(sock, 0.05)
        # Another address is not affected, and a freed slot is usable again.
        other = _connect(host.port, source="127.0.0.2")
        other.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert other.recv(100).startswith(b"HTTP/1.1 200")
        other.close()
        held.pop().close()
        time.sleep(0.2)
        assert host.health()["status"] == "ok"  # from 127.0.0.1 again
    finally:
        for sock in held:
            sock.close()
    assert "connections.refused" in host.log()
