"""Reaching the bucket (store/bucket_access.py) on a real SeaweedFS: AWS
credentials from a profile file rather than the environment, path-style and
virtual-hosted URLs, and the clean-up of what a killed host left behind."""

import hashlib
import os
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import obstore
import pytest
from services import BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY

from withcache.server.settings import Settings
from withcache.server.store import Lease, StoreError
from withcache.server.store import bucket as bucket_module
from withcache.server.store.bucket import PART_SIZE, BucketBlobs
from withcache.server.store.bucket_access import open_bucket
from withcache.server.store.sqlite import SQLiteMetadata

_prefixes = iter(range(1, 1_000_000))
HOLDER = Lease("host-a", 1e12)


@pytest.fixture
def no_aws_environment(monkeypatch, tmp_path):
    """No AWS variables, no ~/.aws, no instance metadata: only what a test adds."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _settings(tmp_path, endpoint, **kw):
    return Settings(
        data_dir=tmp_path, blobs_url=f"s3://{BUCKET}/access{next(_prefixes)}", s3_endpoint=endpoint,
        **kw,
    )  # fmt: skip


async def record(objects, sha, size, location):
    """Commit an artifact whose blob is at `location`, as a fill would."""
    fill, _ = await objects.enqueue_fill(f"https://h/{sha}", "", f"https://h/{sha}", "miss", 1.0)
    claimed = await objects.claim_fill(1.0, HOLDER)
    assert claimed.id == fill.id
    return await objects.commit_artifact(
        claimed, sha, size, {}, "u", 1.0, HOLDER.holder, location=location
    )


def _objects(tmp_path):
    """Where the bucket's blobs are recorded: an SQLite metadata store."""
    return SQLiteMetadata(tmp_path / "objects.db")


def _profile(tmp_path, monkeypatch, secret):
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[lab]\naws_access_key_id = {S3_ACCESS_KEY}\naws_secret_access_key = {secret}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "lab")


async def test_credentials_come_from_a_profile_file(scale_stores, tmp_path, monkeypatch,
                                                    no_aws_environment):  # fmt: skip
    _, seaweed = scale_stores
    _profile(tmp_path, monkeypatch, S3_SECRET_KEY)
    blobs = await BucketBlobs.connect(_settings(tmp_path, seaweed.endpoint), _objects(tmp_path))
    writer = blobs.begin()
    await writer.write(b"from a profile")
    sha = writer.hexdigest()
    await writer.commit()
    reader = await blobs.open(sha, 14)
    assert await reader.read(0, 14) == b"from a profile"
    assert sha == hashlib.sha256(b"from a profile").hexdigest()


async def test_a_wrong_secret_is_one_line_at_connect(scale_stores, tmp_path, monkeypatch,
                                                    no_aws_environment):  # fmt: skip
    _, seaweed = scale_stores
    _profile(tmp_path, monkeypatch, "not-the-secret")
    with pytest.raises(StoreError, match=r"^cannot use s3://withcache/access\d+: ") as caught:
        await BucketBlobs.connect(_settings(tmp_path, seaweed.endpoint), _objects(tmp_path))
    assert "\n" not in str(caught.value) and "not-the-secret" not in str(caught.value)


async def test_a_missing_profile_is_one_line_at_connect(tmp_path, monkeypatch,
                                                      no_aws_environment):  # fmt: skip
    monkeypatch.setenv("AWS_PROFILE", "nowhere")
    with pytest.raises(StoreError, match="The config profile \\(nowhere\\) could not be found"):
        await BucketBlobs.connect(_settings(tmp_path, "http://127.0.0.1:9"), _objects(tmp_path))


@pytest.mark.parametrize(
    ("addressing", "endpoint", "host", "path"),
    [
        ("auto", "http://127.0.0.1:9", "127.0.0.1:9", "/withcache/p/blobs/x"),
        ("virtual", "https://s3.lab:9000", "withcache.s3.lab:9000", "/p/blobs/x"),
        ("auto", None, "withcache.s3.amazonaws.com", "/p/blobs/x"),
        ("path", None, "s3.amazonaws.com", "/withcache/p/blobs/x"),
    ],
)
def test_presigned_urls_follow_the_addressing_style(tmp_path, addressing, endpoint, host, path):
    settings = Settings(
        data_dir=tmp_path, blobs_url=f"s3://{BUCKET}/p", s3_endpoint=endpoint,
        s3_addressing=addressing, s3_access_key_id="k", s3_secret_access_key="s",
    )  # fmt: skip
    bucket = open_bucket(settings)
    url = urlsplit(bucket.presign("blobs/x", 60, {"Content-Type": "application/x-tar"}))
    assert (url.netloc, url.path) == (host, path)
    query = parse_qs(url.query)
    assert query["response-content-type"] == ["application/x-tar"]
    assert query["X-Amz-Expires"] == ["60"]
    # The library's own requests are addressed the same way.
    own = urlsplit(obstore.sign(bucket.store, "GET", "blobs/x", timedelta(seconds=60)))
    assert own.netloc.startswith("withcache.") is host.startswith("withcache.")
    assert own.path == path


def test_virtual_hosted_requests_need_a_host_name(tmp_path):
    settings = Settings(
        data_dir=tmp_path, blobs_url=f"s3://{BUCKET}/p", s3_endpoint="http://127.0.0.1:9",
        s3_addressing="virtual", s3_access_key_id="k", s3_secret_access_key="s",
    )  # fmt: skip
    with pytest.raises(OSError, match="virtual-hosted requests need a host name"):
        open_bucket(settings)


async def test_clean_temp_removes_what_was_never_recorded_once_a_day_old(
    scale_stores, tmp_path, monkeypatch
):
    _, seaweed = scale_stores
    settings = _settings(
        tmp_path, seaweed.endpoint, s3_access_key_id=S3_ACCESS_KEY,
        s3_secret_access_key=S3_SECRET_KEY,
    )  # fmt: skip
    objects = _objects(tmp_path)
    blobs = await BucketBlobs.connect(settings, objects)
    store = blobs.bucket.store
    killed = BucketBlobs(blobs.bucket, tmp_path / "killed", objects).begin()  # mid-upload
    await killed.write(os.urandom(PART_SIZE + 1))
    unrecorded = blobs.begin()  # uploaded, then its host died before the record
    await unrecorded.write(os.urandom(PART_SIZE + 2))
    orphan = await unrecorded.commit()
    kept = blobs.begin()  # uploaded and recorded: a blob
    await kept.write(body := os.urandom(PART_SIZE + 3))
    await record(objects, kept.hexdigest(), kept.size, await kept.commit())
    old = hashlib.sha256(b"from before records").hexdigest()
    await obstore.put_async(store, f"blobs/{old}", b"from before records")
    await obstore.put_async(store, "tmp/left-behind", b"x")  # a host that committed by copy
    assert await blobs.clean_temp() == 0  # all younger than a day: another host's, maybe
    assert blobs.bucket.stale_uploads(2e9, ["uploads/"])  # the upload is there
    monkeypatch.setattr(bucket_module, "STALE_UPLOAD_SECONDS", -60.0)  # everything is old now
    # The multipart upload, both records of objects never recorded, the temporary object.
    assert await blobs.clean_temp() == 4
    assert blobs.bucket.stale_uploads(2e9, ["uploads/", "tmp/"]) == []
    keys = {meta["path"] for meta in obstore.list(store).collect()}
    assert keys == {f"blobs/{old}", await objects.find_blob_object(kept.hexdigest())}
    assert orphan not in keys
    for sha, data in ((kept.hexdigest(), body), (old, b"from before records")):
        reader = await blobs.open(sha, len(data))
        assert await reader.read(0, len(data)) == data
    await killed.abort()  # its upload is gone already: nothing to complain about
    assert await blobs.clean_temp() == 0
    await objects.close()
