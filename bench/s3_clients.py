"""Which S3 client for the blob store: ours (SigV4 over aiohttp) against
aiobotocore and boto3 (in a thread), reading one 256 MiB object.

    python bench/s3_clients.py [--quick]

Run it in a scratch venv that has withcache's test extras plus
`pip install aiobotocore boto3` (they are not dependencies: this script is
how the choice was made). Starts a throwaway SeaweedFS; rounds interleave the
clients; prints medians of throughput and of the client's CPU seconds per
GiB, and each client's import time (aiohttp already loaded).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from services import BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY, SeaweedFS

from withcache.server.store import sigv4
from withcache.server.store.s3client import S3Client

SIZE = 256 << 20
KEY = "bench/object"


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def ours(endpoint: str) -> int:
    client = S3Client(endpoint, BUCKET, sigv4.Credentials(S3_ACCESS_KEY, S3_SECRET_KEY))
    try:
        response = await client.get(KEY, 0, SIZE)
        assert response is not None
        return sum([len(chunk) async for chunk in client.chunks(response, SIZE)])
    finally:
        await client.close()


async def aiobotocore(endpoint: str) -> int:
    from aiobotocore.session import get_session
    from botocore.config import Config

    config = Config(s3={"addressing_style": "path"})
    async with get_session().create_client(
        "s3", endpoint_url=endpoint, aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1", config=config,
    ) as client:  # fmt: skip
        body = (await client.get_object(Bucket=BUCKET, Key=KEY))["Body"]
        got = 0
        async with body:
            while chunk := await body.read(1 << 20):
                got += len(chunk)
        return got


async def boto3_thread(endpoint: str) -> int:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )  # fmt: skip

    def read() -> int:
        body = client.get_object(Bucket=BUCKET, Key=KEY)["Body"]
        return sum(len(chunk) for chunk in body.iter_chunks(1 << 20))

    return await asyncio.to_thread(read)


def import_ms(module: str) -> float:
    code = (
        f"import aiohttp, time; t = time.perf_counter(); import {module}; "
        "print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout) * 1000


async def measure(endpoint: str, rounds: int) -> dict[str, dict[str, float]]:
    client = S3Client(endpoint, BUCKET, sigv4.Credentials(S3_ACCESS_KEY, S3_SECRET_KEY))
    await client.put(KEY, os.urandom(SIZE))
    await client.close()
    readers = {"ours": ours, "aiobotocore": aiobotocore, "boto3 in a thread": boto3_thread}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in readers}
    for _ in range(rounds):
        for name, read in readers.items():
            started, used = time.monotonic(), cpu()
            assert await read(endpoint) == SIZE
            samples[name].append((time.monotonic() - started, cpu() - used))
    return {
        name: {
            "mb_per_s": round(statistics.median(SIZE / s / 1e6 for s, _ in runs)),
            "cpu_s_per_gib": round(statistics.median(c * (1 << 30) / SIZE for _, c in runs), 2),
        }
        for name, runs in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    rounds = 3 if parser.parse_args().quick else 7
    seaweed = SeaweedFS(Path(tempfile.mkdtemp(prefix="withcache-bench-s3-")))
    seaweed.start()
    time.sleep(1)  # weed mini creates its bucket just after S3 answers
    try:
        results = asyncio.run(measure(seaweed.endpoint, rounds))
    finally:
        seaweed.stop()
    modules = {"ours": "withcache.server.store.s3client", "aiobotocore": "aiobotocore.session",
               "boto3 in a thread": "boto3"}  # fmt: skip
    print(f"GET of a 256 MiB object from SeaweedFS, {rounds} rounds, medians")
    for name, figures in results.items():
        print(f"  {name:18} {figures['mb_per_s']:6} MB/s  {figures['cpu_s_per_gib']:5} s CPU/GiB"
              f"  import {import_ms(modules[name]):5.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
