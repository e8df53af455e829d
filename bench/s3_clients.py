"""Which object-store client for the blob store: every call it makes, timed
with each candidate against a throwaway SeaweedFS, 256 MiB object. The store
uses obstore (store/bucket.py); aiobotocore was the second candidate.

    python bench/s3_clients.py [--quick] [--clients obstore,aiobotocore]

Run it in a venv that has withcache's test extras plus `pip install
aiobotocore` (not a dependency: this script is how the choice was made).
The hand-written client the store had before (SigV4 over aiohttp) was in
this comparison until it was removed; its figures, measured 2026-12-01 with
this script on the same machine, are in docs/scale-out.md.
Each round runs every client once, interleaved, each in a fresh process
(so memory is its own). Per client, medians of:

- upload: a multipart upload fed 1 MiB at a time as a fill writes, 8 MiB
  parts, 4 in flight, every part signed with its SHA-256: MB/s, process CPU
  (all threads) per GiB, peak RSS above the process's before the call;
- get: one ranged GET of the whole object, streamed in 1 MiB chunks;
- copy: today's commit, a server-side copy to another key (the store works,
  the client waits);
- head, presign, list (10 objects), delete: milliseconds per call;
- import: the client's import time with aiohttp already loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from services import BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY, SeaweedFS

from withcache.server.store.bucket import PART_SIZE, PARTS_IN_FLIGHT
from withcache.server.store.bucket_reads import READ_CHUNK
from withcache.server.store.files import CHUNK

SIZE = int(os.environ.get("S3_CLIENTS_MIB", "256")) << 20  # set by --size-mib for the children
WRITE = CHUNK  # what a fill uploads at a time (read back from its spool)
READ = READ_CHUNK  # what a hit reads at a time
PART = PART_SIZE  # the store's own part size and parallelism, for every client
IN_FLIGHT = PARTS_IN_FLIGHT
SMALL_CALLS = 20
IMPORTS = {
    "ours": "withcache.server.store.s3client",
    "obstore": "obstore",
    "aiobotocore": "aiobotocore.session",
}


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


async def parts_in_flight(data: memoryview, send: Callable[[int, bytes], Awaitable[str]]) -> list:
    """Feed `data` WRITE bytes at a time, sending each PART as it fills, IN_FLIGHT at once."""
    pending, tasks = bytearray(), []
    for start in range(0, len(data), WRITE):
        pending += data[start : start + WRITE]
        if len(pending) >= PART:
            while sum(not t.done() for t in tasks) >= IN_FLIGHT:
                await asyncio.wait([t for t in tasks if not t.done()],
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            tasks.append(asyncio.create_task(send(len(tasks) + 1, bytes(pending[:PART]))))
            del pending[:PART]
    if pending:
        tasks.append(asyncio.create_task(send(len(tasks) + 1, bytes(pending))))
    return [(n, await t) for n, t in enumerate(tasks, start=1)]


class Obstore:
    async def open(self, endpoint: str) -> None:
        from obstore.store import S3Store

        self.store = S3Store(
            BUCKET, endpoint=endpoint, access_key_id=S3_ACCESS_KEY,
            secret_access_key=S3_SECRET_KEY, region="us-east-1",
            virtual_hosted_style_request=False, client_options={"allow_http": True},
        )  # fmt: skip

    async def close(self) -> None:
        pass

    async def upload(self, key: str, data: memoryview) -> None:
        import obstore

        # The library's writer signs each part with its SHA-256 (x-amz-content-sha256).
        async with obstore.open_writer_async(
            self.store, key, buffer_size=PART, max_concurrency=IN_FLIGHT
        ) as writer:
            for start in range(0, len(data), WRITE):
                await writer.write(data[start : start + WRITE])

    async def get(self, key: str) -> int:
        import obstore

        result = await obstore.get_async(self.store, key, options={"range": (0, SIZE)})
        return sum([len(chunk) async for chunk in result.stream(min_chunk_size=READ)])

    async def head(self, key: str) -> int:
        import obstore

        return (await obstore.head_async(self.store, key))["size"]

    async def presign(self, key: str) -> str:
        import obstore

        return obstore.sign(self.store, "GET", key, datetime.timedelta(minutes=5))

    async def listing(self, prefix: str) -> int:
        import obstore

        return len(await obstore.list(self.store, prefix=prefix).collect_async())

    async def put(self, key: str, data: bytes) -> None:
        import obstore

        await obstore.put_async(self.store, key, data)

    async def delete(self, key: str) -> None:
        import obstore

        await obstore.delete_async(self.store, key)

    async def copy(self, source: str, target: str) -> None:
        import obstore

        await obstore.copy_async(self.store, source, target)


class Aiobotocore:
    async def open(self, endpoint: str) -> None:
        from aiobotocore.session import get_session
        from botocore.config import Config

        config = Config(s3={"addressing_style": "path"}, max_pool_connections=16)
        self._context = get_session().create_client(
            "s3", endpoint_url=endpoint, aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1", config=config,
        )  # fmt: skip
        self.client = await self._context.__aenter__()

    async def close(self) -> None:
        await self._context.__aexit__(None, None, None)

    async def upload(self, key: str, data: memoryview) -> None:
        c = self.client
        upload = (await c.create_multipart_upload(Bucket=BUCKET, Key=key))["UploadId"]

        async def send(number: int, part: bytes) -> str:
            # botocore signs the payload's SHA-256 over plain http.
            answer = await c.upload_part(Bucket=BUCKET, Key=key, UploadId=upload,
                                         PartNumber=number, Body=part)  # fmt: skip
            return answer["ETag"]

        parts = await parts_in_flight(data, send)
        await c.complete_multipart_upload(
            Bucket=BUCKET, Key=key, UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]},
        )  # fmt: skip

    async def get(self, key: str) -> int:
        answer = await self.client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes=0-{SIZE - 1}")
        got = 0
        async with answer["Body"] as body:
            while chunk := await body.read(READ):
                got += len(chunk)
        return got

    async def head(self, key: str) -> int:
        return (await self.client.head_object(Bucket=BUCKET, Key=key))["ContentLength"]

    async def presign(self, key: str) -> str:
        return await self.client.generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=300
        )

    async def listing(self, prefix: str) -> int:
        answer = await self.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return len(answer.get("Contents", []))

    async def put(self, key: str, data: bytes) -> None:
        await self.client.put_object(Bucket=BUCKET, Key=key, Body=data)

    async def delete(self, key: str) -> None:
        await self.client.delete_object(Bucket=BUCKET, Key=key)

    async def copy(self, source: str, target: str) -> None:
        await self.client.copy_object(
            Bucket=BUCKET, Key=target, CopySource={"Bucket": BUCKET, "Key": source}
        )


CLIENTS: dict[str, type] = {"obstore": Obstore, "aiobotocore": Aiobotocore}


async def one_round(name: str, endpoint: str, tag: str) -> dict[str, float]:
    """Every call once (the small ones SMALL_CALLS times) with one client; figures."""
    data = memoryview(os.urandom(SIZE))
    client = CLIENTS[name]()
    await client.open(endpoint)
    key, copied, small = f"bench/{tag}/object", f"bench/{tag}/copy", f"bench/{tag}/small/"
    out: dict[str, float] = {}

    async def timed(label: str, job: Callable[[], Awaitable[object]], size: int) -> object:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS
        before_rss, started, used = rss_kib("VmRSS"), time.monotonic(), cpu()
        result = await job()
        seconds = time.monotonic() - started
        out[f"{label}_mb_per_s"] = size / seconds / 1e6
        out[f"{label}_cpu_s_per_gib"] = (cpu() - used) * (1 << 30) / size
        out[f"{label}_peak_mib"] = (rss_kib("VmHWM") - before_rss) / 1024
        return result

    try:
        await timed("upload", lambda: client.upload(key, data), SIZE)
        assert await timed("get", lambda: client.get(key), SIZE) == SIZE
        await timed("copy", lambda: client.copy(key, copied), SIZE)
        for n in range(10):
            await client.put(f"{small}{n}", b"x" * 100)
        calls: dict[str, Callable[[int], Awaitable[object]]] = {
            "head": lambda n: client.head(key),
            "presign": lambda n: client.presign(key),
            "list": lambda n: client.listing(small),
            "delete": lambda n: client.delete(f"{small}{n % 10}"),
        }
        for label, call in calls.items():
            started = time.monotonic()
            for n in range(SMALL_CALLS):
                await call(n)
            out[f"{label}_ms"] = (time.monotonic() - started) / SMALL_CALLS * 1000
        assert hashlib.sha256(data).digest()  # the bytes stayed alive to the end
    finally:
        for k in (key, copied):
            await client.delete(k)
        await client.close()
    return out


def import_ms(module: str) -> float:
    code = (
        f"import aiohttp, time; t = time.perf_counter(); import {module}; "
        "print(time.perf_counter() - t)"
    )
    runs = []
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        runs.append(float(done.stdout) * 1000)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--size-mib", type=int, default=256, help="object size (default 256)")
    parser.add_argument(
        "--child", nargs=3, metavar=("CLIENT", "ENDPOINT", "TAG"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(one_round(*args.child))), flush=True)
        # obstore's runtime can abort (SIGABRT) while Python finalizes, after
        # the figures are out (1 run in 2-4 here): the child skips finalizing.
        os._exit(0)
    os.environ["S3_CLIENTS_MIB"] = str(args.size_mib)
    names = args.clients.split(",")
    rounds = 3 if args.quick else 7
    work = Path(tempfile.mkdtemp(prefix="withcache-bench-s3-"))
    seaweed = SeaweedFS(work)
    seaweed.start()
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    try:
        for n in range(rounds):
            for name in names:
                child = subprocess.run(
                    [sys.executable, __file__, "--child", name, seaweed.endpoint, f"{name}{n}"],
                    capture_output=True, text=True, timeout=600,
                )  # fmt: skip
                if child.returncode:
                    raise SystemExit(f"{name}: exit {child.returncode}: {child.stderr}")
                samples[name].append(json.loads(child.stdout))
    finally:
        seaweed.stop()
        shutil.rmtree(work, ignore_errors=True)
    results = {
        name: {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
        | {"import_ms": round(import_ms(IMPORTS[name]))}
        for name, runs in samples.items()
    }
    print(f"{args.size_mib} MiB object on SeaweedFS, {rounds} rounds interleaved, medians")
    print(json.dumps(results, indent=1))
    columns = ["upload_mb_per_s", "upload_cpu_s_per_gib", "upload_peak_mib", "get_mb_per_s",
               "get_cpu_s_per_gib", "get_peak_mib", "copy_mb_per_s", "head_ms", "presign_ms",
               "list_ms", "delete_ms", "import_ms"]  # fmt: skip
    print("client       " + " ".join(f"{c[:14]:>14}" for c in columns))
    for name, figures in results.items():
        print(f"{name:12} " + " ".join(f"{figures[c]:>14}" for c in columns))


if __name__ == "__main__":
    main()
