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

from services import BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY, s3_store

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

    def rows(self, data_dir: Path | None, sql: str) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.metadata_url) as conn:
            return conn.execute(sql).fetchall()

    def _store(self) -> Any:  # an obstore store over the bucket
        return s3_store(self.endpoint)

    def objects(self, under: str) -> list[str]:
        """Keys of the objects under `<prefix>/<under>`."""
        import obstore

        listing = obstore.list(self._store(), prefix=f"{self.prefix}/{under}")
        return [meta["path"] for batch in listing for meta in batch]

    def blob_key(self, sha256: str) -> str:
        """The key of the blob's object: where its record says, else under its name."""
        found = self.rows(None, f"SELECT location FROM blob_objects WHERE sha256 = '{sha256}'")
        return f"{self.prefix}/{found[0][0] if found else f'blobs/{sha256}'}"

    def blob_names(self, data_dir: Path) -> list[str]:
        """The SHA-256 of each blob object; an object under uploads/ that is not
        recorded (a leftover) is listed by its key."""
        recorded = dict(self.rows(data_dir, "SELECT location, sha256 FROM blob_objects"))
        named = [os.path.basename(key) for key in self.objects("blobs/")]
        uploads = [key.split("/", 1)[1] for key in self.objects("uploads/")]
        return sorted(named + [recorded.get(key) or key for key in uploads])

    def delete_blobs(self, data_dir: Path) -> None:
        """Delete every blob object, and the host's local copies of them
        (--local-copies), which it would otherwise rightly serve."""
        import obstore

        obstore.delete(self._store(), self.objects("blobs/") + self.objects("uploads/"))
        for copy in (data_dir / "copies").glob("*"):
            copy.unlink()

    def blob_bytes(self, data_dir: Path, sha256: str) -> bytes:
        import obstore

        return bytes(obstore.get(self._store(), self.blob_key(sha256)).bytes())

    def replace_blob(self, data_dir: Path, sha256: str, data: bytes) -> None:
        """Rot a blob in place: another object under the blob's key (and no
        local copy of the host's to send instead)."""
        import obstore

        obstore.put(self._store(), self.blob_key(sha256), data)
        (data_dir / "copies" / sha256).unlink(missing_ok=True)


class AzureScale(Scale):
    """The scale-out pair with Azure Blob (Azurite) holding the blobs."""

    name = "azure"

    def __init__(self, metadata_url: str, azurite_env: dict[str, str], url: str) -> None:
        self.metadata_url = metadata_url
        self.endpoint = azurite_env["AZURE_STORAGE_ENDPOINT"]
        self.blobs_url = url
        self.prefix = url.split("/", 3)[3]
        self.flags = ("--metadata", metadata_url, "--blobs", url, "--fill-lease", TEST_LEASE)
        self.env = dict(azurite_env)

    def _store(self) -> Any:
        from obstore.store import AzureStore

        container = self.blobs_url.split("/")[2]
        return AzureStore(container, config={
            "account_name": self.env["AZURE_STORAGE_ACCOUNT_NAME"],
            "account_key": self.env["AZURE_STORAGE_ACCOUNT_KEY"], "endpoint": self.endpoint,
        }, client_options={"allow_http": True})  # fmt: skip


Backend = Embedded | Scale
