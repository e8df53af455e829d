"""Hits streamed through a scale-out host (store/bucket_reads.py): one GET
pulled ahead of the client on a fast store, parallel ranged GETs of the same
object on a store that is slow per connection, memory flat per client
whatever the blob's size or the client's speed. On PostgreSQL + SeaweedFS,
with real hosts and curl; a proxy in front of the store slows each answer
and notes what the host asked. The hosts keep no local copies (those are
test_local_copies.py's): every hit here streams."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time

import obstore
import pytest
from clients import wait_until
from conftest import curl
from services import StoreTap
from test_fills import miss

from withcache.server.store.bucket_reads import PARTS_AHEAD, PROBE_BYTES, READ_PART

pytestmark = pytest.mark.parametrize("backend", ["scale"], indirect=True)

RATE = 25e6  # bytes a second, each answer of the slow store
PER_CLIENT = 32 << 20  # the most a streamed hit holds (bucket_reads.py, README)
STREAMED = ("--local-copies", "0")


def stored(origin, host, path: str, body: bytes) -> str:
    url = origin.add(path, body)
    miss(host, url)
    host.wait_cached(url)
    return url


def parts_asked(tap: StoreTap) -> list[dict[str, object]]:
    """The GETs after the first (which streams): the parts."""
    return [r for r in tap.requests if r["method"] == "GET"][1:]


def test_a_store_slow_per_connection_is_read_in_parallel_parts(origin, tapped):
    host, tap = tapped(*STREAMED, rate=RATE)
    body = os.urandom(PROBE_BYTES + 5 * READ_PART + 12345)
    url = stored(origin, host, "/reads/slow.bin", body)
    tap.clear()
    assert curl("-f", host.blob_url(url)).stdout == body
    # Each part takes the store 0.3 s: all that may be asked at once were.
    assert tap.most_gets >= PARTS_AHEAD
    parts = parts_asked(tap)
    assert len(parts) >= 3 and all(r["range"] for r in parts), tap.requests
    assert len({r["if_match"] for r in parts}) == 1 and parts[0]["if_match"]  # one object
    # A range, from the middle, is read the same way.
    start, end = READ_PART // 2, PROBE_BYTES + 4 * READ_PART + 999
    got = curl("-f", "-r", f"{start}-{end}", host.blob_url(url)).stdout
    assert got == body[start : end + 1]


def test_a_blob_replaced_while_it_is_read_fails_the_client(origin, backend, tapped, tmp_path):
    host, tap = tapped(*STREAMED, rate=RATE)
    body = os.urandom(PROBE_BYTES + 6 * READ_PART)  # parts after the first answer's stream
    url = stored(origin, host, "/reads/replaced.bin", body)
    key = backend.blob_key(hashlib.sha256(body).hexdigest())
    store = backend._store()
    obstore.put(store, f"{key}.other", os.urandom(len(body)))  # same size, other bytes
    tap.clear()
    saved = tmp_path / "replaced.bin"
    reading = subprocess.Popen(
        ["curl", "-sS", "-f", "-o", str(saved), host.blob_url(url)], stderr=subprocess.PIPE
    )
    wait_until(lambda: [r for r in tap.requests if r["method"] == "GET"], timeout=30)
    # Replaced while the first answer is still streaming (the tap holds its bytes).
    obstore.copy(store, f"{key}.other", key)
    _, err = reading.communicate(timeout=60)
    # Never a mix of two objects: the parts asked after it fail, and the transfer, short.
    assert [r for r in parts_asked(tap) if r.get("status") == 412], tap.requests
    assert reading.returncode != 0, err
    out = saved.read_bytes()
    assert len(out) < len(body) and body.startswith(out)
    assert curl("-f", f"{host.url}/healthz").returncode == 0


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_memory_stays_flat_per_client_however_slow_it_reads(origin, cache_host, backend):
    host = cache_host(*STREAMED)
    body = os.urandom(12 * READ_PART)  # 96 MiB: far more than a client may hold
    url = stored(origin, host, "/reads/big.bin", body)
    assert curl("-f", "-o", os.devnull, host.blob_url(url)).returncode == 0  # warm
    before = _rss_kib(host.proc.pid)
    path = host.blob_url(url).split(str(host.port), 1)[1]
    clients = []
    for _ in range(3):
        client = socket.create_connection(("127.0.0.1", host.port))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert client.recv(1 << 16).startswith(b"HTTP/1.1 200")
        clients.append(client)
    time.sleep(3)  # the clients read nothing more: the host must not read on for them
    grown = (_rss_kib(host.proc.pid) - before) << 10
    for client in clients:
        client.close()
    assert grown < 3 * PER_CLIENT, grown >> 20
    assert curl("-f", host.blob_url(url)).stdout == body
