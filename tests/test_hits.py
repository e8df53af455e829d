"""Hit serving on its own: an OpenHit over real blob files, the checks it
makes on what it reads, and the answer hit.py sends from it (in-process)."""

import hashlib
import os

import pytest
from aiohttp import web

from withcache.server.hits import SMALL_BLOB, HitLost, OpenHit, ReadChecks
from withcache.server.records import Artifact
from withcache.server.store import BlobGone
from withcache.server.store.files import LocalBlobs
from withcache.server.web.hit import send_blob


async def _stored(blobs: LocalBlobs, body: bytes) -> Artifact:
    writer = blobs.begin()
    await writer.write(body)
    await writer.commit()
    sha = writer.hexdigest()
    return Artifact(1, "http://o/x", "", sha, len(body), {"Content-Type": "x/y"}, 0.0)


class Opened:
    """OpenHits over one blob store, with what they counted and reported."""

    def __init__(self, blobs: LocalBlobs) -> None:
        self.blobs = blobs
        self.checks = ReadChecks()
        self.counted: list[int] = []
        self.damaged: list[str] = []
        self.closed: list[str] = []  # blobs whose answer is done with them

    async def open(self, artifact: Artifact) -> OpenHit:
        reader = await self.blobs.open(artifact.sha256, artifact.size)

        async def damaged(found: Artifact, problem: str) -> None:
            self.damaged.append(problem)

        async def closed(sha256: str) -> None:
            self.closed.append(sha256)

        def counted(found: Artifact, sent: int) -> None:
            self.counted.append(sent)

        return OpenHit(artifact, reader, self.checks, counted, damaged, closed)


@pytest.fixture
def opened(tmp_path):
    return Opened(LocalBlobs(tmp_path))


def _stamp(blobs: LocalBlobs, sha256: str) -> tuple[int, ...]:
    """What the read checks remember of a local blob file: it is another
    file, or was written, if any of these moved."""
    stat = os.stat(blobs.path(sha256))
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


async def test_a_small_blob_is_hashed_when_read_and_then_remembered(opened):
    body = os.urandom(64 << 10)
    artifact = await _stored(opened.blobs, body)
    assert opened.checks.due(artifact.sha256, _stamp(opened.blobs, artifact.sha256))
    hit = await opened.open(artifact)
    assert await hit.body(10, 100) == body[10:110]
    hit.sent(100)
    await hit.close()
    stamp = _stamp(opened.blobs, artifact.sha256)
    assert not opened.checks.due(artifact.sha256, stamp)  # hashed, file unchanged
    assert opened.checks.due(artifact.sha256, (stamp[0] + 1, *stamp[1:]))  # another file
    assert opened.counted == [100] and opened.damaged == []


async def test_a_small_blob_with_other_bytes_is_never_sent(opened):
    artifact = await _stored(opened.blobs, os.urandom(1000))
    path = opened.blobs.path(artifact.sha256)
    path.write_bytes(os.urandom(1000))  # rot of the same size, a new file
    hit = await opened.open(artifact)
    with pytest.raises(HitLost):
        await hit.body(0, 1000)
    await hit.close()
    assert opened.damaged == ["content: its SHA-256 differs from its name"]


async def test_a_blob_changed_while_open_is_not_sent(opened):
    body = os.urandom(SMALL_BLOB + 1)  # large: read in part, never hashed on the read path
    artifact = await _stored(opened.blobs, body)
    hit = await opened.open(artifact)
    assert hit.file is not None  # what a large hit sendfiles from
    assert await hit.body(0, 10) == body[:10]
    with open(opened.blobs.path(artifact.sha256), "r+b") as f:
        f.truncate(100)  # cut in place while the hit holds it open
    assert not hit.unchanged()
    with pytest.raises(HitLost):
        await hit.body(0, 10)
    await hit.close()
    assert opened.damaged == ["size: it changed while it was read"]


async def test_a_gone_blob_is_a_miss(opened):
    artifact = await _stored(opened.blobs, b"x" * 10)
    await opened.blobs.delete(artifact.sha256)
    with pytest.raises(BlobGone):
        await opened.open(artifact)


async def test_the_answers_hit_py_sends(core, origin, aiohttp_client):
    """send_blob over the real core, through a real aiohttp server: the whole
    blob, a range, a 304 without content headers, a HEAD that opens nothing."""
    body = os.urandom(300_000)
    url = origin.add("/hits/answers.bin", body, headers={"Content-Type": "x/y"})
    artifact = await core.fill_result((await core.add(url)).fill.id)

    async def handler(request: web.Request) -> web.StreamResponse:
        response = await send_blob(request, core, artifact)
        assert response is not None
        return response

    app = web.Application()
    app.router.add_route("*", "/", handler)
    client = await aiohttp_client(app)
    whole = await client.get("/")
    assert whole.status == 200 and await whole.read() == body
    assert whole.headers["Content-Type"] == "x/y"
    assert whole.headers["ETag"] == f'"{hashlib.sha256(body).hexdigest()}"'
    part = await client.get("/", headers={"Range": "bytes=100-199"})
    assert part.status == 206 and await part.read() == body[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(body)}"
    same = await client.get("/", headers={"If-None-Match": whole.headers["ETag"]})
    assert same.status == 304 and "Content-Type" not in same.headers
    probe = await client.head("/")
    assert probe.status == 200 and probe.headers["Content-Length"] == str(len(body))
    await core.flush_hits()
    (stored,) = (await core.list_artifacts()).rows
    assert stored.hits == 2  # the GETs that sent bytes; not the 304, not the HEAD
