"""Several cache-hosts on one PostgreSQL and one SeaweedFS: one origin
download across hosts, takeover when a host dies, hits anywhere, redirects."""

import hashlib
import os

import pytest
from clients import finish, start_curls, wait_until
from conftest import curl
from page_client import PageClient
from test_deploy import stop_cleanly
from test_fills import miss, wait_fill_state

pytestmark = pytest.mark.parametrize("backend", ["scale"], indirect=True)
BODY = os.urandom(3_000_000)


def test_eight_clients_on_two_hosts_cost_one_origin_download(origin, cache_host, tmp_path):
    url = origin.add("/scale/eight.bin", BODY, rate=4_000_000)
    hosts = [cache_host(name="a"), cache_host(name="b")]
    procs = start_curls(
        *[["-f", "-o", str(tmp_path / f"c{n}"), hosts[n % 2].blob_url(url)] for n in range(8)]
    )
    for code, _, err in finish(procs):
        assert code == 0, err
    for n in range(8):
        assert (tmp_path / f"c{n}").read_bytes() == BODY
    assert origin.gets("/scale/eight.bin") == 1
    assert origin.body_bytes["/scale/eight.bin"] == len(BODY)
    # Every client streamed from the fill: it may be stored just after they end.
    hosts[1].wait_cached(url)
    assert hosts[0].rows("SELECT count(*), sum(size) FROM artifacts") == [(1, len(BODY))]


def test_a_host_that_filled_and_served_exits_0_on_sigterm(origin, cache_host):
    """As systemd and podman stop it: the object store's runtime (obstore)
    must not abort the process while Python finalizes."""
    host = cache_host()
    url = host.cached(origin, "/scale/stopping.bin", BODY)
    assert curl("-f", host.blob_url(url)).stdout == BODY
    stop_cleanly(host, 10)


def test_a_probe_on_another_host_during_a_fill_answers_with_the_length(origin, cache_host):
    url = origin.add("/scale/probe.bin", BODY, rate=1_000_000)
    a, b = cache_host(name="a"), cache_host(name="b")
    miss(a, url)
    wait_until(lambda: a.rows("SELECT total FROM fills") == [(len(BODY),)], what="saved total")
    head = curl("-I", b.blob_url(url)).stdout.decode().lower()
    assert head.startswith("http/1.1 200")
    assert f"content-length: {len(BODY)}" in head
    assert "withcache-fill: in-progress" in head and "etag:" not in head
    assert origin.gets("/scale/probe.bin") == 1


def test_kill_9_of_the_filling_host_the_other_finishes(origin, cache_host, tmp_path):
    url = origin.add("/scale/killed.bin", BODY, rate=600_000)
    a, b = cache_host(name="a"), cache_host(name="b")
    (on_a,) = start_curls(["-o", str(tmp_path / "got-a"), a.blob_url(url)])
    wait_until(lambda: (tmp_path / "got-a").exists() and (tmp_path / "got-a").stat().st_size > 0,
               what="bytes on a's client")  # fmt: skip
    on_b = start_curls(*[["-f", "-o", str(tmp_path / f"b{n}"), b.blob_url(url)] for n in range(3)])
    # b's clients stream a's fill through b (peer streams)...
    wait_until(lambda: all((tmp_path / f"b{n}").exists() and (tmp_path / f"b{n}").stat().st_size
                           for n in range(3)), what="bytes on b's clients")  # fmt: skip
    a.kill()
    origin.resources["/scale/killed.bin"].rate = None
    ended = finish([on_a, *on_b])
    # ...so each saw the filling host die, as a's own client did: closed short,
    # never a clean end with bytes missing, and never bytes of another transfer.
    for code, _, err in ended:
        assert code == 18, err + b.log()[-3000:].encode()
    for name in ("got-a", "b0", "b1", "b2"):
        got = (tmp_path / name).read_bytes()
        assert 0 < len(got) < len(BODY) and BODY.startswith(got), name
    # b took the fill over after a's lease ran out, and started it afresh.
    assert curl("-f", b.blob_url(url)).stdout == BODY
    assert b.rows("SELECT state FROM fills") == [("done",)]
    assert origin.gets("/scale/killed.bin") == 2
    assert b.blob_names() == [hashlib.sha256(BODY).hexdigest()]


def test_a_hit_on_host_2_for_a_blob_filled_by_host_1(origin, cache_host):
    url = origin.add("/scale/shared.bin", BODY)
    a, b = cache_host(name="a"), cache_host(name="b")
    miss(a, url)
    a.wait_cached(url)
    assert curl("-f", b.blob_url(url)).stdout == BODY
    assert curl("-f", "-r", "1000-1999", b.blob_url(url)).stdout == BODY[1000:2000]
    head = curl("-I", b.blob_url(url)).stdout.decode().lower()
    assert f'etag: "{hashlib.sha256(BODY).hexdigest()}"' in head
    assert origin.gets("/scale/shared.bin") == 1


def redirected(origin, cache_host, path, body, **add):
    """A --redirect-hits host with `body` stored at `path`: (host, URL, the
    status and location a hit is answered with)."""
    url = origin.add(path, body, **add)
    host = cache_host("--redirect-hits")
    miss(host, url)
    host.wait_cached(url)
    plain = curl("-sS", "-o", os.devnull, "-w", "%{http_code} %{redirect_url}", host.blob_url(url))
    status, location = plain.stdout.decode().split(" ", 1)
    return host, url, status, location


def test_redirect_mode_with_curl_location_and_range(origin, cache_host, backend):
    host, url, status, location = redirected(
        origin,
        cache_host,
        "/scale/redirect.bin",
        BODY,
        headers={"Content-Type": "application/x-tar"},
    )
    assert status == "302" and location.startswith(backend.endpoint)
    assert "X-Amz-Signature=" in location and "X-Amz-Expires=300" in location
    full = curl("-f", "-L", "-D", "-", "-o", str(host.data_dir.parent / "full"), host.blob_url(url))
    assert full.returncode == 0, full.stderr
    assert (host.data_dir.parent / "full").read_bytes() == BODY
    assert b"content-type: application/x-tar" in full.stdout.lower()  # the origin's, replayed
    part = curl("-f", "-L", "-r", "100-199", host.blob_url(url))
    assert part.stdout == BODY[100:200]
    # Probes are answered by the host itself, so the shims still see a hit.
    head = curl("-I", host.blob_url(url)).stdout.decode().lower()
    assert head.startswith("http/1.1 200") and "etag:" in head
    # The presigned URL is signed: changing it gets nothing.
    assert curl("-f", location.replace("X-Amz-Expires=300", "X-Amz-Expires=301")).returncode == 22


def test_a_credentialed_fill_runs_only_on_the_host_with_the_credentials(origin, cache_host):
    secret = "Bearer only-on-b"
    busy = origin.add("/scale/busy.bin", BODY, rate=1_000_000)
    private = origin.add("/scale/private.bin", BODY, require_auth=secret)
    a, b = cache_host(name="a"), cache_host("--workers", "1", name="b")
    miss(b, busy)  # b's only worker is busy for 3 s: each of a's idle ones looks meanwhile
    wait_fill_state(b, "running")
    got = curl("-f", "-H", f"Authorization: {secret}", b.blob_url(private))
    assert got.stdout == BODY, got.stderr
    hits = [h for h in origin.hits if h.path == "/scale/private.bin"]
    assert [h.headers.get("Authorization") for h in hits] == [secret]  # a never tried
    assert "s3cr" not in a.log() + b.log() and secret not in a.log() + b.log()


def test_cancel_on_one_host_stops_the_fill_on_the_other(origin, cache_host):
    url = origin.add("/scale/cancel.bin", BODY, rate=300_000)
    a, b = cache_host(name="a"), cache_host(name="b")
    miss(a, url)
    wait_fill_state(a, "running")
    ((fill_id,),) = b.rows("SELECT id FROM fills")
    ui = PageClient(b.url)  # b's operator UI (open: no password set)
    reply = ui.post(f"/downloads/{fill_id}/cancel", {"csrf": ui.csrf()})
    assert reply.status == 303, reply.text
    wait_fill_state(a, "cancelled")
    wait_until(lambda: "event=fill.lost" in a.log(), what="a dropping the fill")
    assert a.rows("SELECT count(*) FROM artifacts") == [(0,)]
