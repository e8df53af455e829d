"""What the benchmarks share: a withcache-server process, nginx, hey, wrk,
and /proc readings (CPU time, peak RSS)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

# A smoke run (tests/test_bench.py) writes elsewhere, to keep real results.
RESULTS = Path(os.environ.get("WITHCACHE_BENCH_RESULTS") or Path(__file__).parent / "results")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A cache-host (this venv's withcache-server unless `binary` names another,
    such as the seed's) on a free loopback port, logging beside its data dir."""

    def __init__(
        self, data_dir: Path, *flags: str, binary: Path | None = None, env: dict | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        binary = binary or Path(sys.executable).parent / "withcache-server"
        self.log = open(data_dir.with_name(f"{data_dir.name}.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(binary), "--data-dir", str(data_dir), "--host", "127.0.0.1",
             "--port", str(self.port), *flags],
            stdout=self.log, stderr=self.log, env={**os.environ, **(env or {})},
        )  # fmt: skip
        self.pid = self.proc.pid
        wait_http(f"{self.url}/healthz")

    def blob_url(self, url: str) -> str:
        return f"{self.url}/blob?url={quote(url, safe='')}"

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(15)
        self.log.close()


class Nginx:
    def __init__(self, root: Path, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.root, self.port, self.proc = root, port, proc

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return [int(pid) for pid in children.split()]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)
        self.proc.wait(15)


def start_nginx(work: Path, root: Path, port: int, servers: str = "", http: str = "") -> Nginx:
    """nginx in the foreground, as Debian ships it, serving `root` on loopback.

    `servers` adds server blocks and `http` more directives to the http block.
    """
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    # Blobs are private to the cache-host's user (0600); let the workers read them.
    user = "user root;" if os.geteuid() == 0 else ""
    logging = "" if "access_log" in http else "access_log off;"
    conf.write_text(
        f"""
{user}
worker_processes auto;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ worker_connections 4096; }}
http {{
  {logging}
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  client_body_temp_path {work}/body;
  proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fastcgi;
  uwsgi_temp_path {work}/uwsgi;
  scgi_temp_path {work}/scgi;
  {http}
  server {{ listen 127.0.0.1:{port}; root {root}; }}
  {servers}
}}
"""
    )
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(work)])
    wait_http(f"http://127.0.0.1:{port}/", any_status=True)
    return Nginx(root, port, proc)


@contextmanager
def static_origin(folder: Path, name: str, data: bytes) -> Iterator[str]:
    """A stdlib HTTP origin on a free loopback port serving `data` as `name`
    (from folder/origin); yields its URL."""
    (folder / "origin").mkdir()
    (folder / "origin" / name).write_bytes(data)
    origin = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0", "--directory",
         str(folder / "origin")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert origin.stdout is not None
        line = origin.stdout.readline().decode()
        match = re.search(r"port (\d+)", line)
        if not match:
            raise SystemExit(f"origin did not start: {line!r}")
        yield f"http://127.0.0.1:{match[1]}/{name}"
    finally:
        origin.terminate()
        origin.wait(10)


def wait_http(url: str, any_status: bool = False, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            if any_status:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def wait_cached(blob_url: str, timeout: float = 600.0) -> None:
    """Poll with HEAD (the first one queues the fill) until the artifact is
    stored: a fill in progress answers 200 too, but with `Withcache-Fill`
    (the seed, which has no read-through, sends no ETag on a hit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(blob_url, method="HEAD")
            with urllib.request.urlopen(request) as response:
                if "Withcache-Fill" not in response.headers:
                    return
        except urllib.error.HTTPError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{blob_url} was not cached in {timeout}s")


def hey(url: str, requests: int, concurrency: int, method: str = "GET") -> dict[str, float]:
    """Requests per second and failed requests from one `hey` run."""
    out = subprocess.run(
        ["hey", "-n", str(requests), "-c", str(concurrency), "-m", method, "-t", "30", url],
        capture_output=True, text=True, timeout=600,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    ok = sum(int(n) for n in re.findall(r"\[200\]\s+(\d+) responses", out))
    return {"rps": rps, "errors": requests - ok}


def wrk(url: str, seconds: float, connections: int = 32, threads: int = 2) -> dict[str, float]:
    """Requests per second, requests and failed ones from one `wrk` run (GET
    only: wrk waits for a body after a HEAD's Content-Length)."""
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", url],
        capture_output=True, text=True, timeout=seconds + 60,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    requests = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        out)  # fmt: skip
    errors = (int(bad[1]) if bad else 0) + (sum(map(int, sockets.groups())) if sockets else 0)
    return {"rps": rps, "requests": requests, "errors": errors}


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLOCK_TICKS


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) / 1024  # type: ignore[index]


def write_results(name: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path.write_text(json.dumps({"measured_at": stamp, **data}, indent=2) + "\n")
    return path
