"""fill/transfer.py on its own: the origin GET under the policy (redirects,
credentials, limits, failures told apart) against the real origin over HTTP
and HTTPS (trustme), and a fill's transfer (retries, resume, encodings,
timeouts) through the core in this process."""

from __future__ import annotations

import gzip
import os
import socket
import ssl
import time
from email.utils import formatdate

import aiohttp.connector
import pytest

from withcache.server.fill.fill import FillError
from withcache.server.fill.transfer import MAX_REDIRECTS, Transfers
from withcache.server.policy import Policy
from withcache.server.settings import Settings

BODY = os.urandom(200_000)


@pytest.fixture
async def transfers(tmp_path, ca_file, monkeypatch):
    """Factory: a Transfers (its own client session) under the given settings,
    trusting the origin's trustme CA as a server started with SSL_CERT_FILE
    does (aiohttp reads the variable once, when it is imported)."""
    trusted = ssl.create_default_context(cafile=str(ca_file))
    monkeypatch.setattr(aiohttp.connector, "_SSL_CONTEXT_VERIFIED", trusted)
    made: list[Transfers] = []

    async def emit(event: object) -> None:
        pass

    def make(**options: object) -> Transfers:
        settings = Settings(data_dir=tmp_path, **{"allow_private_origins": True, **options})
        made.append(Transfers(settings, None, Policy(settings, b"k" * 32), emit))  # type: ignore[arg-type]
        made[-1].open()
        return made[-1]

    yield make
    for transfer in made:
        await transfer.close()


async def body_of(transfer: Transfers, url: str, authorization: str | None = None) -> bytes:
    response = await transfer.get(url, authorization, {})
    async with response:
        assert response.status == 200, response.status
        return await response.read()


# -- Transfers.get: redirects, credentials, the policy on every hop


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_redirects_are_followed(transfers, origin, tls):
    target = origin.add("/transfer/target.bin", BODY)
    first = origin.add("/transfer/hop1", redirect=origin.url("/transfer/hop2", tls=tls))
    origin.add("/transfer/hop2", redirect=origin.url("/transfer/target.bin", tls=tls))
    assert await body_of(transfers(), origin.url("/transfer/hop1", tls=tls)) == BODY
    assert first and target
    assert [h.path for h in origin.hits if h.path.startswith("/transfer/")][-3:] == [
        "/transfer/hop1", "/transfer/hop2", "/transfer/target.bin",
    ]  # fmt: skip


async def test_credentials_stay_with_their_host(transfers, origin):
    """Like curl without --location-trusted: a redirect to another host (here
    the same address by another name) gets no Authorization."""
    origin.add("/transfer/secret.bin", BODY)
    same = origin.add("/transfer/same", redirect="/transfer/secret.bin")
    other = origin.url("/transfer/secret.bin").replace("127.0.0.1", "localhost")
    away = origin.add("/transfer/away", redirect=other)
    transfer = transfers()
    assert await body_of(transfer, same, "Bearer s3cret") == BODY
    assert origin.hits[-1].headers.get("Authorization") == "Bearer s3cret"
    assert await body_of(transfer, away, "Bearer s3cret") == BODY
    assert origin.hits[-2].headers.get("Authorization") == "Bearer s3cret"  # the first hop
    assert "Authorization" not in origin.hits[-1].headers


async def test_a_redirect_loop_ends(transfers, origin):
    loop = origin.add("/transfer/loop", redirect="/transfer/loop")
    before = len(origin.hits)
    with pytest.raises(FillError, match=f"more than {MAX_REDIRECTS} redirects"):
        await transfers().get(loop, None, {})
    assert len(origin.hits) - before == MAX_REDIRECTS + 1


async def test_a_redirect_to_another_scheme_is_refused(transfers, origin):
    url = origin.add("/transfer/ftp", redirect="ftp://127.0.0.1/x.bin")
    with pytest.raises(FillError, match="bad redirect") as raised:
        await transfers().get(url, None, {})
    assert not raised.value.transient


async def test_the_policy_is_asked_on_every_hop(transfers, origin):
    """A redirect to a host --allow-origin doesn't name is not followed."""
    other = origin.url("/transfer/target.bin").replace("127.0.0.1", "localhost")
    url = origin.add("/transfer/elsewhere", redirect=other)
    origin.add("/transfer/target.bin", BODY)
    before = len(origin.hits)
    with pytest.raises(FillError, match="not allowed by --allow-origin") as raised:
        await transfers(allow_origins=("127.0.0.1",)).get(url, None, {})
    assert raised.value.refused
    assert len(origin.hits) - before == 1  # only the first hop was asked


async def test_a_private_address_is_refused_before_any_request(transfers, origin):
    url = origin.add("/transfer/private.bin", BODY)
    before = len(origin.hits)
    with pytest.raises(FillError, match="not public") as raised:
        await transfers(allow_private_origins=False).get(url, None, {})
    assert raised.value.refused and len(origin.hits) == before


# -- Transfers.get: failures told apart


async def test_a_refused_connection_is_unreachable_and_worth_another_try(transfers):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(FillError, match="origin unreachable") as raised:
        await transfers().get(f"http://127.0.0.1:{port}/x.bin", None, {})
    assert raised.value.transient and raised.value.unreachable and raised.value.origin_fault


async def test_no_such_host_is_an_answer_not_a_glitch(transfers):
    with pytest.raises(FillError, match="origin unreachable") as raised:
        await transfers().get("http://nosuch.invalid/x.bin", None, {})
    assert raised.value.unreachable and not raised.value.transient


async def test_an_untrusted_certificate_is_refused_for_good(transfers, origin, monkeypatch):
    url = origin.add("/transfer/tls.bin", BODY)
    monkeypatch.setattr(aiohttp.connector, "_SSL_CONTEXT_VERIFIED", ssl.create_default_context())
    transfer = transfers()
    with pytest.raises(FillError, match="TLS certificate refused") as raised:
        await transfer.get(origin.url("/transfer/tls.bin", tls=True), None, {})
    assert not raised.value.transient
    assert url  # the same resource over http stays fetchable
    assert await body_of(transfer, url) == BODY


async def test_a_silent_origin_times_out(transfers, origin):
    url = origin.add("/transfer/silent.bin", BODY, delay=3.0)
    started = time.monotonic()
    with pytest.raises(FillError) as raised:
        await transfers(origin_timeout=0.3).get(url, None, {})
    assert time.monotonic() - started < 2.5
    assert raised.value.transient and raised.value.origin_fault


# -- fetch_small: a checksum file, at most so many bytes


async def test_fetch_small_returns_a_small_body(transfers, origin):
    url = origin.add("/transfer/SHA256SUMS", b"ab" * 32 + b"  x.run\n")
    assert await transfers().fetch_small(url, 1000) == b"ab" * 32 + b"  x.run\n"


async def test_fetch_small_refuses_a_large_body(transfers, origin):
    url = origin.add("/transfer/huge-sums", BODY, chunked=True)
    with pytest.raises(FillError, match="larger than") as raised:
        await transfers().fetch_small(url, 1000)
    assert raised.value.refused


async def test_fetch_small_says_what_the_origin_answered(transfers, origin):
    with pytest.raises(FillError, match="origin answered 404"):
        await transfers().fetch_small(origin.url("/transfer/no-such-sums"), 1000)


async def test_fetch_small_broken_off(transfers, origin):
    url = origin.add("/transfer/cut-sums", BODY, die_after=10_000)
    with pytest.raises(FillError, match="transfer broke off") as raised:
        await transfers().fetch_small(url, len(BODY) * 2)
    assert raised.value.transient


# -- a fill's transfer, through the core


async def test_a_gzip_body_is_stored_as_sent(core, origin):
    """auto_decompress is off and Accept-Encoding is identity-only: the bytes
    stored are the origin's, and its Content-Encoding is kept to replay."""
    packed = gzip.compress(BODY)
    url = origin.add("/transfer/packed.tar", packed, headers={"Content-Encoding": "gzip"})
    artifact = await core.fill_result((await core.add(url)).fill.id)
    assert artifact.size == len(packed)
    assert artifact.headers.get("Content-Encoding") == "gzip"
    assert origin.hits[-1].headers.get("Accept-Encoding") == "identity"


async def test_a_body_cut_off_resumes_where_it_broke(core, origin):
    url = origin.add("/transfer/resume.bin", BODY, die_after=50_000)
    artifact = await core.fill_result((await core.add(url)).fill.id)
    assert artifact.size == len(BODY)
    gets = [h for h in origin.hits if h.path == "/transfer/resume.bin"]
    assert [h.headers.get("Range") for h in gets] == [None, "bytes=50000-"]
    assert origin.body_bytes["/transfer/resume.bin"] == len(BODY)  # nothing sent twice


async def test_a_5xx_is_retried(core, origin):
    url = origin.add(
        "/transfer/busy.bin", BODY, status=503, die_after=0, die_times=2,
        after_dying={"status": 200},
    )  # fmt: skip
    artifact = await core.fill_result((await core.add(url)).fill.id)
    assert artifact.size == len(BODY)
    retries = (await core.list_events(kind="fill.retrying")).rows
    assert len(retries) == 2


async def test_a_404_is_not_retried(core, origin):
    url = origin.remove("/transfer/gone.bin")
    with pytest.raises(FillError, match="origin answered 404"):
        await core.fill_result((await core.add(url)).fill.id)
    assert len([h for h in origin.hits if h.path == "/transfer/gone.bin"]) == 1


@pytest.mark.parametrize("form", ["seconds", "date"])
async def test_a_retry_after_is_waited_for(core, origin, form):
    """A 503 or 429 that says when to come back is asked again no sooner (the
    test's --retry-delay is 0.05 s, doubling: without it, 0.15 s in all)."""
    wait = "1" if form == "seconds" else formatdate(time.time() + 2.5, usegmt=True)
    url = origin.add(
        f"/transfer/later-{form}.bin", BODY, status=503, headers={"Retry-After": wait},
        die_after=0, die_times=2, after_dying={"status": 200, "headers": {}},
    )  # fmt: skip
    artifact = await core.fill_result((await core.add(url)).fill.id)
    assert artifact.size == len(BODY)
    times = [h.at for h in origin.hits if h.path == f"/transfer/later-{form}.bin"]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.9
    if form == "seconds":  # (the date is the same one on both answers)
        assert times[2] - times[1] >= 0.9
