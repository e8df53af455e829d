"""Scale-out with the blobs in Azure Blob storage (`--blobs az://…`), against
Azurite, Microsoft's emulator: the same library calls as on S3, reached with
Azure's own variables. One fill (committed without a copy), hits on another
host, redirects to a SAS URL."""

import hashlib
import os

import pytest
from conftest import curl
from test_fills import miss
from test_scale_out import redirected

pytestmark = pytest.mark.parametrize("backend", ["azure"], indirect=True)
BODY = os.urandom(20_000_000)  # three 8 MiB parts: a multipart upload (put block list)


def test_a_fill_on_one_host_is_a_hit_on_another(origin, cache_host, backend):
    url = origin.add("/azure/shared.bin", BODY)
    a, b = cache_host(name="a"), cache_host(name="b")
    miss(a, url)
    a.wait_cached(url)
    sha = hashlib.sha256(BODY).hexdigest()
    # The blob stayed where it was uploaded (block list committed, no copy), recorded.
    ((location,),) = a.rows(f"SELECT location FROM blob_objects WHERE sha256 = '{sha}'")
    assert backend.objects("") == [f"{backend.prefix}/{location}"]
    assert location.startswith("uploads/")
    assert curl("-f", b.blob_url(url)).stdout == BODY
    assert curl("-f", "-r", "9000000-9000999", b.blob_url(url)).stdout == BODY[9_000_000:9_001_000]
    assert origin.gets("/azure/shared.bin") == 1


def test_redirected_hits_go_to_a_sas_url(origin, cache_host, backend):
    host, url, status, location = redirected(origin, cache_host, "/azure/redirect.bin", BODY)
    assert status == "302" and location.startswith(backend.endpoint)
    assert "sig=" in location and "sp=r" in location  # a read-only shared access signature
    assert curl("-f", "-L", host.blob_url(url)).stdout == BODY
    assert curl("-f", "-L", "-r", "100-199", host.blob_url(url)).stdout == BODY[100:200]
    assert (
        curl("-f", location.replace("sp=r", "sp=rw")).returncode == 22
    )  # signed: can't be widened
