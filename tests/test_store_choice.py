"""Choosing the stores: the embedded default loads no scale-out client, the
scale-out flags are checked, and a store that can't be reached is one clear
line at start, without the password."""

import subprocess
import sys

import pytest
from conftest import BIN
from services import free_ports

EMBEDDED_START = """
import asyncio, sys
from pathlib import Path
from withcache.server.cache import Cache
from withcache.server.settings import Settings
from withcache.server.web import make_app

async def main():
    cache = await Cache.open(Settings(data_dir=Path(sys.argv[1])))
    await cache.start()
    make_app(cache)
    await cache.stop()

asyncio.run(main())
loaded = [m for m in sys.modules if m.split(".")[0] in ("psycopg", "psycopg_pool", "obstore",
          "botocore") or m.startswith(("withcache.server.store.postgres",
          "withcache.server.store.bucket"))]
print(",".join(loaded))
"""


def test_the_embedded_default_imports_no_scale_out_client(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", EMBEDDED_START, str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def server(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "withcache-server"), *args], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metadata", "mysql://u:hunter2@h/db"], "use postgresql://"),
        (["--blobs", "s3://B"], "use s3://bucket"),
        (["--blobs", "http://x/y"], "use s3://bucket"),
        (["--blobs", "gs://b/p"], "or az://container/prefix"),
        (["--s3-addressing", "dns"], "use auto, path or virtual"),
        (["--redirect-hits"], "--redirect-hits needs --blobs"),
        (["--s3-endpoint", "ftp://x"], "use http(s)://host"),
        (["--fill-lease", "0"], "not a positive number"),
    ],
)
def test_bad_scale_out_settings_are_one_line(args, message):
    result = server(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "hunter2" not in result.stderr


def test_no_s3_credentials_anywhere_is_one_line(tmp_path):
    # Nothing in the environment, no ~/.aws files, no instance metadata.
    result = server(
        "--data-dir", str(tmp_path / "data"), "--port", "0", "--blobs", "s3://bucket/p",
        env={"HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "cannot use s3://bucket/p: no AWS credentials found" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unreachable_database_is_one_line_without_the_password(tmp_path):
    (port,) = free_ports(1)
    url = f"postgresql://withcache:hunter2@127.0.0.1:{port}/cache?connect_timeout=2"
    result = server("--data-dir", str(tmp_path), "--port", "0", "--metadata", url)
    assert result.returncode == 2
    assert f"cannot use postgresql://127.0.0.1:{port}/cache" in result.stderr
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_object_store_is_one_line(tmp_path):
    (port,) = free_ports(1)
    result = server(
        "--data-dir", str(tmp_path), "--port", "0", "--blobs", "s3://bucket/p",
        "--s3-endpoint", f"http://127.0.0.1:{port}",
        env={"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "hunter2"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "cannot use s3://bucket/p" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr
