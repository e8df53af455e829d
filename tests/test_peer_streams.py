"""A fill in progress is streamed by every host of a shared store: a client
of host b reads a fill that runs on host a as its bytes arrive (b mirrors
them from a, signed peer requests), with Range, one origin download, and a
short close if a dies; forged or expired peer requests get nothing."""

import hashlib
import os
import time

import pytest
from clients import finish, start_curls, wait_until
from conftest import curl
from page_client import PageClient

from withcache.server.fill import peers

pytestmark = pytest.mark.parametrize("backend", ["scale"], indirect=True)
BODY = os.urandom(3_000_000)
SECRET = "peer-test-session-secret"
ENV = {"WITHCACHE_SESSION_SECRET": SECRET}


def two_hosts(cache_host):
    return cache_host(env=ENV, name="a"), cache_host(env=ENV, name="b")


def size(path) -> int:
    return path.stat().st_size if path.exists() else 0


def fill_state(host) -> list[tuple]:
    return host.rows("SELECT state FROM fills")


def running_on_a(a, tmp_path, url):
    """Start a client of `url` on host a and wait until its fill runs there."""
    (client,) = start_curls(["-f", "-o", str(tmp_path / "on-a"), a.blob_url(url)])
    wait_until(lambda: size(tmp_path / "on-a") > 0, what="bytes on a's client")
    return client


def test_a_client_on_b_streams_a_fill_running_on_a(origin, cache_host, tmp_path):
    url = origin.add("/peer/stream.bin", BODY, rate=1_000_000)
    a, b = two_hosts(cache_host)
    on_a = running_on_a(a, tmp_path, url)
    started = time.monotonic()
    (on_b,) = start_curls(["-f", "-o", str(tmp_path / "on-b"), b.blob_url(url)])
    wait_until(lambda: size(tmp_path / "on-b") > 0, what="bytes on b's client")
    first_byte = time.monotonic() - started
    # Its first bytes came while the origin was still sending: not the stored blob.
    assert fill_state(a) == [("running",)], first_byte
    assert origin.body_bytes["/peer/stream.bin"] < len(BODY)
    for code, _, err in finish([on_a, on_b]):
        assert code == 0, err + b.log()[-2000:].encode()
    assert (tmp_path / "on-b").read_bytes() == BODY
    assert origin.gets("/peer/stream.bin") == 1
    b.wait_cached(url)
    assert b.blob_names() == [hashlib.sha256(BODY).hexdigest()]


def test_eight_clients_on_two_hosts_all_stream_from_the_first_bytes(origin, cache_host, tmp_path):
    url = origin.add("/peer/eight.bin", BODY, rate=1_500_000)
    hosts = two_hosts(cache_host)
    outputs = [tmp_path / f"c{n}" for n in range(8)]
    procs = start_curls(
        *[["-f", "-o", str(out), hosts[n % 2].blob_url(url)] for n, out in enumerate(outputs)]
    )
    wait_until(lambda: all(size(out) > 0 for out in outputs), what="bytes on every client")
    assert fill_state(hosts[0]) == [("running",)]  # all eight read the fill, none waited
    for code, _, err in finish(procs):
        assert code == 0, err
    for out in outputs:
        assert out.read_bytes() == BODY
    assert origin.gets("/peer/eight.bin") == 1
    assert origin.body_bytes["/peer/eight.bin"] == len(BODY)


def test_a_range_on_b_is_answered_during_the_fill(origin, cache_host, tmp_path):
    url = origin.add("/peer/range.bin", BODY, rate=800_000)
    a, b = two_hosts(cache_host)
    on_a = running_on_a(a, tmp_path, url)
    got = curl("-f", "-D", "-", "-r", "100000-299999", b.blob_url(url))
    assert got.returncode == 0, got.stderr
    assert fill_state(a) == [("running",)]
    head, _, body = got.stdout.partition(b"\r\n\r\n")
    assert head.lower().startswith(b"http/1.1 206")
    assert b"content-range: bytes 100000-299999/3000000" in head.lower()
    assert body == BODY[100000:300000]
    finish([on_a])
    assert origin.gets("/peer/range.bin") == 1


def test_a_fill_checked_against_a_digest_holds_its_last_byte_on_b_too(origin, cache_host, tmp_path):
    body = os.urandom(1_000_000)
    url = origin.add("/peer/pinned.bin", body, rate=400_000)
    a, b = two_hosts(cache_host)
    sha = hashlib.sha256(body).hexdigest()
    ui = PageClient(a.url)  # a's operator UI (open: no password set)
    added = ui.post("/add", {"csrf": ui.csrf(), "url": url, "sha256": sha})
    assert added.status == 303, added.text
    wait_until(lambda: fill_state(a) == [("running",)], what="the fill running on a")
    (on_b,) = start_curls(["-f", "-o", str(tmp_path / "on-b"), b.blob_url(url)])
    wait_until(lambda: size(tmp_path / "on-b") > 0, what="bytes on b's client")
    assert fill_state(a) == [("running",)]
    # The bytes all came from the origin, but b's client has all but the last
    # until a checked them: then all.
    wait_until(lambda: origin.body_bytes["/peer/pinned.bin"] == len(body), what="the whole body")
    ((code, _, err),) = finish([on_b])
    assert code == 0, err
    assert (tmp_path / "on-b").read_bytes() == body


def peer_request(host, fill_id, holder, scope, token, **query):
    params = "&".join(f"{k}={v}" for k, v in {"holder": holder, **query}.items())
    return curl(
        "-sS", "-o", "-", "-w", "\n%{http_code}",
        "-H", f"{peers.TOKEN_HEADER}: {token}", "-H", f"{peers.SCOPE_HEADER}: {scope}",
        f"{host.url}/_peer/fills/{fill_id}?{params}",
    )  # fmt: skip


def answer(result) -> tuple[int, bytes]:
    body, _, status = result.stdout.rpartition(b"\n")
    return int(status), body


def test_forged_expired_or_misdirected_peer_requests_get_nothing(origin, cache_host, tmp_path):
    url = origin.add("/peer/forged.bin", BODY, rate=800_000)
    a, _b = two_hosts(cache_host)
    on_a = running_on_a(a, tmp_path, url)
    ((fill_id, scope, holder),) = a.rows("SELECT id, scope, holder FROM fills")
    key = peers.peer_key(SECRET.encode())
    now = time.time()
    good = peers.sign(key, fill_id, holder, scope, now)
    refused = {
        "no token": "",
        "forged": f"{int(now) + 60}.{'0' * 64}",
        "signed with another key": peers.sign(b"k" * 32, fill_id, holder, scope, now),
        "expired": peers.sign(key, fill_id, holder, scope, now - 120),
        "another fill's": peers.sign(key, fill_id + 1, holder, scope, now),
    }
    for what, token in refused.items():
        status, body = answer(peer_request(a, fill_id, holder, scope, token))
        assert status == 403, (what, status, body)
        assert BODY[:64] not in body and len(body) < 200, what
    # Signed, but for another scope (another credential's bytes) or another holder.
    other = peers.sign(key, fill_id, holder, "other-scope", now)
    status, body = answer(peer_request(a, fill_id, holder, "other-scope", other))
    assert (status, len(body) < 200) == (404, True)
    elsewhere = peers.sign(key, fill_id, "another-host", scope, now)
    assert answer(peer_request(a, fill_id, "another-host", scope, elsewhere))[0] == 404
    assert answer(peer_request(a, fill_id, holder, scope, good, offset="x"))[0] == 400
    # A good one gets the bytes, from an offset too (of the generation it has).
    generation = "0"
    status, body = answer(peer_request(a, fill_id, holder, scope, good, offset="1000",
                                       generation=generation))  # fmt: skip
    assert status == 200 and body == BODY[1000:]
    finish([on_a])
    assert a.health()["status"] == "ok"


def test_a_credentialed_fill_streams_to_the_same_credentials_on_b_only(
    origin, cache_host, tmp_path
):
    secret = "Bearer peer-private"
    url = origin.add("/peer/private.bin", BODY, rate=1_000_000, require_auth=secret)
    a, b = two_hosts(cache_host)
    as_owner = ["-f", "-H", f"Authorization: {secret}"]
    (on_a,) = start_curls([*as_owner, "-o", str(tmp_path / "on-a"), a.blob_url(url)])
    wait_until(lambda: size(tmp_path / "on-a") > 0, what="bytes on a's client")
    (on_b,) = start_curls([*as_owner, "-o", str(tmp_path / "on-b"), b.blob_url(url)])
    wait_until(lambda: size(tmp_path / "on-b") > 0, what="bytes on b's client")
    assert fill_state(a) == [("running",)]  # b's client reads a's fill, with a's credentials
    stranger = curl("-f", "-H", "Authorization: Bearer someone-else", b.blob_url(url))
    assert stranger.returncode == 22 and BODY[:1000] not in stranger.stdout
    for code, _, err in finish([on_a, on_b]):
        assert code == 0, err
    assert (tmp_path / "on-b").read_bytes() == BODY
    sent = [h.headers.get("Authorization") for h in origin.hits if h.path == "/peer/private.bin"]
    assert sent.count(secret) == 1


def test_a_client_that_waited_for_the_stored_blob_counts_as_a_miss_not_a_hit(
    origin, cache_host, tmp_path
):
    """Where b can't mirror a's fill (a's peer URL unreachable), b's client
    waits and is answered from the stored blob: one request, one miss."""
    url = origin.add("/peer/unreachable.bin", BODY, rate=3_000_000)
    a = cache_host("--peer-url", "http://127.0.0.1:9", env=ENV, name="a")
    b = cache_host(env=ENV, name="b")
    on_a = running_on_a(a, tmp_path, url)
    on_b = curl("-f", "-o", str(tmp_path / "on-b"), b.blob_url(url))
    assert on_b.returncode == 0, on_b.stderr
    assert (tmp_path / "on-b").read_bytes() == BODY
    assert finish([on_a])[0][0] == 0
    for host in (a, b):
        host.stop()  # flushes the batched hit counts
    assert a.rows("SELECT hits FROM artifacts") == [(0,)]
