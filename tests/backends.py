"""The two store pairs a cache-host can run on, as the tests see them.

`embedded` is SQLite and files in the host's data dir; `scale` is a fresh
PostgreSQL database and a fresh prefix of a SeaweedFS bucket, shared by every
host a test starts (which is what several cache-hosts behind a load balancer
do). Tests read the store through these, so one test runs on both.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from services import BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY

from withcache.server.settings import Settings

# Leases short enough that a takeover happens within a test, long enough that
# a busy 2-core machine renews them in time.
TEST_LEASE = "3"
T = TypeVar("T")


def run_async(job: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to the end from sync code, even inside a running loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, job()).result(60)  # type: ignore[arg-type]


class Embedded:
    name = "embedded"
    scale = False
    flags: tuple[str, ...] = ()
    env: ClassVar[dict[str, str]] = {}

    def settings(self, **kw: Any) -> Settings:
        return Settings(**kw)

    def rows(self, data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(data_dir / "cache.db") as db:
            return db.execute(sql).fetchall()

    def blob_names(self, data_dir: Path) -> list[str]:
        return sorted(p.name for p in (data_dir / "blobs").rglob("*") if p.is_file())

    def delete_blobs(self, data_dir: Path) -> None:
        for blob in (data_dir / "blobs").rglob("*"):
            if blob.is_file():
                blob.unlink()

    def blob_bytes(self, data_dir: Path, sha256: str) -> bytes:
        return (data_dir / "blobs" / sha256[:2] / sha256).read_bytes()

    def replace_blob(self, data_dir: Path, sha256: str, data: bytes) -> None:
        """Rot a blob in place: new bytes under the old name (same inode)."""
        with open(data_dir / "blobs" / sha256[:2] / sha256, "r+b") as blob:
            blob.write(data)
            blob.truncate(len(data))


class Scale:
    name = "scale"
    scale = True

    def __init__(self, metadata_url: str, endpoint: str, prefix: str) -> None:
        self.metadata_url = metadata_url
        self.endpoint = endpoint
        self.prefix = prefix
        self.blobs_url = f"s3://{BUCKET}/{prefix}"
        self.flags = ("--metadata", metadata_url, "--blobs", self.blobs_url,
                      "--s3-endpoint", endpoint, "--fill-lease", TEST_LEASE)  # fmt: skip
        self.env = {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}

    def settings(self, **kw: Any) -> Settings:
        return Settings(
            metadata_url=self.metadata_url, blobs_url=self.blobs_url, s3_endpoint=self.endpoint,
            s3_access_key_id=S3_ACCESS_KEY, s3_secret_access_key=S3_SECRET_KEY,
            fill_lease=float(TEST_LEASE), **kw,
        )  # fmt: skip

    def rows(self, data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.metadata_url) as conn:
            return conn.execute(sql).fetchall()

    def _client(self) -> Any:
        from withcache.server.store import sigv4
        from withcache.server.store.s3client import S3Client

        return S3Client(self.endpoint, BUCKET, sigv4.Credentials(S3_ACCESS_KEY, S3_SECRET_KEY))

    def objects(self, under: str) -> list[str]:
        """Keys of the objects under `<prefix>/<under>`."""

        async def listing() -> list[str]:
            client = self._client()
            try:
                return [key for key, _, _ in await client.list_objects(f"{self.prefix}/{under}")]
            finally:
                await client.close()

        return run_async(listing)

    def blob_names(self, data_dir: Path) -> list[str]:
        return sorted(os.path.basename(key) for key in self.objects("blobs/"))

    def delete_blobs(self, data_dir: Path) -> None:
        async def delete(keys: list[str]) -> None:
            client = self._client()
            try:
                for key in keys:
                    await client.delete(key)
            finally:
                await client.close()

        keys = self.objects("blobs/")
        run_async(lambda: delete(keys))

    def _on_blob(self, job: Callable[[Any, str], Awaitable[T]], sha256: str) -> T:
        async def run() -> T:
            client = self._client()
            try:
                return await job(client, f"{self.prefix}/blobs/{sha256}")
            finally:
                await client.close()

        return run_async(run)

    def blob_bytes(self, data_dir: Path, sha256: str) -> bytes:
        async def read(client: Any, key: str) -> bytes:
            size = await client.head(key)
            response = await client.get(key, 0, size)
            return b"".join([chunk async for chunk in client.chunks(response, size)])

        return self._on_blob(read, sha256)

    def replace_blob(self, data_dir: Path, sha256: str, data: bytes) -> None:
        """Rot a blob in place: another object under the blob's key."""
        self._on_blob(lambda client, key: client.put(key, data), sha256)


Backend = Embedded | Scale
