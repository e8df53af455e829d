"""Shared fixtures: a real origin (HTTP + HTTPS with a trustme CA) and real
`withcache-server` processes on loopback, driven by real curl and wget.

A module marked `pytestmark = pytest.mark.backends` runs each of its tests
twice: on the embedded stores and on the scale-out ones (a real PostgreSQL and
a real SeaweedFS, started once per session; see services.py, backends.py).
"""

from __future__ import annotations

import inspect
import os
import platform
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))

from backends import AzureScale, Backend, Embedded, Scale
from origin import Origin
from services import Azurite, Postgres, SeaweedFS, terminate

from withcache.server.cache import Cache

BIN = Path(sys.executable).parent
# Fast retries, and the loopback origin must be reachable.
TEST_FLAGS = ("--allow-private-origins", "--retry-delay", "0.05")


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def origin(ca: trustme.CA) -> Iterator[Origin]:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    server = Origin(tls=context)
    server.start()
    yield server
    server.stop()


# The suite runs on busy shared boxes (2 cores, other suites beside it): a
# property's examples are checked for what they return, never for how fast.
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backends: run on the embedded and the scale-out stores")
    config.addinivalue_line("markers", "soak: the fault-injection soak (WITHCACHE_SOAK_SECONDS)")
    config.addinivalue_line(
        "markers", "slow: starts servers, browsers, builds or benchmarks (`make test-fast` skips)"
    )


# What makes a test slow: the scale-out stores, and code (the test's or a
# fixture's) that starts processes: cache-hosts, curl and wget, the shims,
# browsers, builds, benchmarks. `make test-fast` leaves such tests out.
SLOW_PARAMS = {"scale", "postgres", "s3", "az", "native"}
SLOW_WORDS = (
    "subprocess", "Popen", "curl(", "wget(", "shim(", "cache_host", "native_shim", "run_bench",
    "chromium", "tmpfs", "Postgres(", "SeaweedFS(", "Azurite(",
)  # fmt: skip
_slow_code: dict[object, bool] = {}


def _starts_processes(func: object, depth: int = 1) -> bool:
    """Whether `func`, or a function of its module it calls, starts processes."""
    if func not in _slow_code:
        try:
            source = inspect.getsource(func)  # type: ignore[arg-type]
        except (OSError, TypeError):
            source = ""
        _slow_code[func] = any(word in source for word in SLOW_WORDS)
    if _slow_code[func] or depth == 0 or not inspect.isfunction(func):
        return _slow_code[func]
    module = sys.modules.get(func.__module__)
    called = (getattr(module, name, None) for name in func.__code__.co_names)
    return any(inspect.isfunction(f) and _starts_processes(f, depth - 1) for f in called)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = {str(v) for v in callspec.params.values()} if callspec else set()
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info else ()
        fixtures = [d.func for found in defs for d in found]
        code = [getattr(item, "function", None), *fixtures]
        if params & SLOW_PARAMS or any(_starts_processes(f) for f in code if f is not None):
            item.add_marker(pytest.mark.slow)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("backends"):
        metafunc.parametrize("backend", ["embedded", "scale"], indirect=True)


@pytest.fixture(scope="session")
def scale_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Postgres, SeaweedFS]]:
    """One PostgreSQL and one SeaweedFS for the session (each test gets its own
    database and bucket prefix)."""
    root = tmp_path_factory.mktemp("stores")
    postgres = Postgres()
    seaweed = SeaweedFS(root / "weed")
    try:
        postgres.start()
        seaweed.start()
        yield postgres, seaweed
    finally:
        seaweed.stop()
        postgres.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite's blob service for the session, with the container AZURE_CONTAINER."""
    server = Azurite(tmp_path_factory.mktemp("azurite"))
    try:
        yield server.start(AZURE_CONTAINER)
    finally:
        server.stop()


AZURE_CONTAINER = "withcache"


_prefixes = iter(range(1, 1_000_000))


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Backend:
    """The stores this test's cache-hosts use (embedded unless parametrized)."""
    if getattr(request, "param", "embedded") == "embedded":
        return Embedded()
    postgres, seaweed = request.getfixturevalue("scale_stores")
    if request.param == "azure":
        url = f"az://{AZURE_CONTAINER}/t{next(_prefixes)}"
        return AzureScale(postgres.new_database(), request.getfixturevalue("azurite").env, url)
    return Scale(postgres.new_database(), seaweed.endpoint, f"t{next(_prefixes)}")


@pytest.fixture
async def make_core(
    tmp_path: Path, ca_file: Path, monkeypatch: pytest.MonkeyPatch, backend: Backend
):
    """Factory: `await make_core(curate=False, max_bytes=...)` starts the cache-host's
    core in this process on the test's stores (curate mode unless said; the
    test's tmp_path as data dir unless `data_dir` says); all stop at teardown."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    made: list[Cache] = []

    async def make(**settings: object) -> Cache:
        settings = {"curate": True, "data_dir": tmp_path, **settings}
        Path(settings["data_dir"]).mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
        cache = await Cache.open(
            backend.settings(allow_private_origins=True, retry_delay=0.05, **settings)
        )
        made.append(cache)
        await cache.start()
        return cache

    yield make
    for cache in made:
        await cache.stop()


@pytest.fixture
async def core(make_core):
    """The cache-host's core in this process (curate mode: nothing fills unasked)."""
    return await make_core()


@pytest.fixture
async def auto_core(make_core):
    """The core in auto mode: a miss starts its fill (and its client may stream it)."""
    return await make_core(curate=False)


class CacheHost:
    """One `withcache-server` process with its own data dir."""

    def __init__(
        self,
        data_dir: Path,
        flags: tuple[str, ...],
        env: dict[str, str],
        argv: list[str] | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.backend = backend or Embedded()
        self.flags = (*flags, *self.backend.flags)
        self.argv = argv  # a command line of its own (deploy files'), instead of the flags
        self.env = {**env, **self.backend.env}
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.scheme = "https" if "--tls-cert" in flags else "http"
        self.tls = ssl.create_default_context(cafile=env.get("SSL_CERT_FILE"))

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> CacheHost:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child keeps it)
        argv = self.argv or [
            str(BIN / "withcache-server"), "--data-dir", str(self.data_dir), "--host",
            "127.0.0.1", "--port", str(self.port), *self.flags,
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=self.env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            match = re.search(
                r'event=listening .*?port=(\d+)|"event": "listening".*?"port": (\d+)', text
            )
            if match:
                self.port = int(match[1] or match[2])
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"withcache-server exited {self.proc.returncode}:\n{text}")
            time.sleep(0.02)
        raise RuntimeError("withcache-server did not start:\n" + self.log())

    def stop(self) -> None:
        if self.proc:
            terminate(self.proc)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> CacheHost:
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rows(self, sql: str) -> list[tuple]:
        """Rows of a query on this host's metadata store."""
        return self.backend.rows(self.data_dir, sql)

    def blob_names(self) -> list[str]:
        """The SHA-256 names of the blobs in this host's blob store."""
        return self.backend.blob_names(self.data_dir)

    def cached(self, origin: Origin, path: str, body: bytes, **options: object) -> str:
        """An origin URL this host holds: `origin.add(path, body, **options)`,
        fetched once through the host, then waited for until it is stored."""
        url = origin.add(path, body, **options)
        try:
            with urllib.request.urlopen(self.blob_url(url), timeout=60, context=self.tls) as got:
                got.read()
        except urllib.error.HTTPError:
            pass  # a probe-only miss (a fill that can't stream): wait_cached says
        self.wait_cached(url)
        return url

    def blob_url(self, origin_url: str) -> str:
        from urllib.parse import quote

        return f"{self.url}/blob?url={quote(origin_url, safe='')}"

    def health(self) -> dict:
        import json

        with urllib.request.urlopen(f"{self.url}/healthz", timeout=5, context=self.tls) as response:
            return json.load(response)

    def wait_cached(
        self, origin_url: str, timeout: float = 20.0, headers: dict[str, str] | None = None
    ) -> None:
        """Poll with HEAD (which does not count as a hit) until the URL is a
        stored hit: a fill in progress answers 200 too, but without an ETag.

        `headers` (an Authorization) scopes the lookup as the server scopes it.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            request = urllib.request.Request(
                self.blob_url(origin_url), method="HEAD", headers=headers or {}
            )
            try:
                with urllib.request.urlopen(request, timeout=5, context=self.tls) as response:
                    if response.headers.get("ETag"):
                        return
            except urllib.error.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{origin_url} not cached after {timeout}s:\n{self.log()[-3000:]}")


@pytest.fixture
def cache_host(tmp_path: Path, ca_file: Path, backend: Backend) -> Iterator[callable]:  # type: ignore[valid-type]
    """Factory: cache_host("--curate", ...) starts a server; all stop at teardown.
    The hosts of one test share the test's `backend` (on `scale`, one store)."""
    hosts: list[CacheHost] = []

    def start(*flags: str, env: dict[str, str] | None = None, name: str = "data") -> CacheHost:
        full_env = {**os.environ, "SSL_CERT_FILE": str(ca_file), **(env or {})}
        host = CacheHost(tmp_path / name, (*TEST_FLAGS, *flags), full_env, backend=backend)
        hosts.append(host)
        return host.start()

    yield start
    for host in hosts:
        host.stop()


@pytest.fixture
def tapped(backend: Backend, tmp_path: Path, ca_file: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    """Factory (scale-out only): tapped(*flags, rate=, name=, data_dir=, env=) starts a
    host whose every call to the object store goes through a StoreTap of its
    own (it notes the requests; with `rate`, each answer comes at that many
    bytes a second); (host, tap). All stop at teardown."""
    from services import StoreTap

    started: list[tuple[CacheHost, StoreTap]] = []

    def start(
        *flags: str, rate: float | None = None, name: str | None = None,
        data_dir: Path | None = None, env: dict[str, str] | None = None,
    ) -> tuple[CacheHost, StoreTap]:  # fmt: skip
        assert isinstance(backend, Scale)
        tap = StoreTap(backend.endpoint, rate).start()
        full_env = {**os.environ, "SSL_CERT_FILE": str(ca_file), **(env or {})}
        through = Scale(backend.metadata_url, tap.endpoint, backend.prefix)
        folder = data_dir or tmp_path / (name or f"tapped{len(started)}")
        host = CacheHost(folder, (*TEST_FLAGS, *flags), full_env, backend=through)
        started.append((host, tap))
        host.start()
        return host, tap

    yield start
    for host, tap in started:
        host.stop()
        tap.stop()


@pytest.fixture(scope="module")
def shared_cache_host(
    tmp_path_factory: pytest.TempPathFactory, ca_file: Path
) -> Iterator[CacheHost]:
    """One auto-fill cache-host for a whole test module (each start costs ~0.3 s).

    Tests that share it use their own origin paths, so they can't see each
    other's artifacts. It fills in the background (`--no-stream-fills`), so a
    client's first request for a URL is always a miss; read-through is tested
    in test_readthrough.py and test_shim_readthrough.py.
    """
    env = {**os.environ, "SSL_CERT_FILE": str(ca_file)}
    flags = (*TEST_FLAGS, "--no-stream-fills")
    host = CacheHost(tmp_path_factory.mktemp("shared") / "data", flags, env)
    yield host.start()
    host.stop()


@pytest.fixture(scope="session")
def tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A certificate chain and key for 127.0.0.1/localhost, signed by the test CA."""
    cert = ca.issue_cert("localhost", "127.0.0.1")
    folder = tmp_path_factory.mktemp("tls")
    chain, key = folder / "chain.pem", folder / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return chain, key


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    """Factory: tmpfs("20m") mounts a RAM disk of that size (a disk that fills
    up for real) and returns its folder; all are unmounted at teardown."""
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"tmpfs{len(mounts)}"
        folder.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
        )
        if result.returncode != 0:
            pytest.skip("needs root to mount a tmpfs")
        mounts.append(folder)
        return folder

    yield mount
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture
def free_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


# What a user's environment must not leak into a shim under test (CA variables
# included: which CAs curl trusts is part of what the tests set).
_SHIM_ENV_PREFIXES = ("WITHCACHE_", "CURLWITHCACHE_", "WGETWITHCACHE_", "REAL_", "SSL_CERT_")
_SHIM_ENV_NAMES = {"CURL_CA_BUNDLE"}


def shim_env(server: str | None = None, **extra: str) -> dict[str, str]:
    """A clean environment for running a shim: no proxies, no withcache settings
    (nor a shims.conf in the user's ~/.config)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_SHIM_ENV_PREFIXES)
        and k not in _SHIM_ENV_NAMES
        and not k.lower().endswith("_proxy")
    }
    env["WITHCACHE_DEBUG"] = "1"
    # No shims.conf of the user's: tests that want one set XDG_CONFIG_HOME or HOME.
    env["XDG_CONFIG_HOME"] = "/nonexistent/withcache-tests"
    if server is not None:
        env["WITHCACHE_SERVER"] = server
    env.update(extra)
    return env


def shim(
    tool: str,
    *args: str,
    server: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
    shims: Path = BIN,
) -> subprocess.CompletedProcess[str]:
    """Run curlwithcache or wgetwithcache as a user would (WITHCACHE_DEBUG on);
    `shims` is the folder they are in (the native shim's, for its tests)."""
    return subprocess.run(
        [str(shims / f"{tool}withcache"), *args], capture_output=True, text=True,
        env=env if env is not None else shim_env(server), cwd=cwd, timeout=timeout,
    )  # fmt: skip


def curl(*args: str, check: bool = False, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", *args], capture_output=True, check=check, timeout=60, **kw
    )  # type: ignore[call-overload]


def wget(*args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["wget", "-q", *args], capture_output=True, timeout=60, **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="session")
def native_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The native shim for this machine, built once per session (Zig from PyPI), in a
    folder of its own as `curlwithcache` and `wgetwithcache` (links to the binary)."""
    root = Path(__file__).resolve().parent.parent
    try:
        import ziglang  # noqa: F401 (only whether `make shim` installed it)
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "ziglang"], check=True)
    target = f"{platform.machine()}-linux-musl"
    subprocess.run(
        [sys.executable, str(root / "shim" / "build.py"), "--target", target],
        check=True, stdout=subprocess.DEVNULL, timeout=600,
    )  # fmt: skip
    binary = root / "zig-out" / "bin" / f"withcache-shim-{target}"
    folder = tmp_path_factory.mktemp("native")
    for tool in ("curl", "wget"):
        (folder / f"{tool}withcache").symlink_to(binary)
    return folder


# Debian's chromium, driven by Playwright; never a browser that Playwright downloads.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    "--disable-dev-shm-usage",
]  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless chromium per test module (starting one takes about a second)."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    """A fresh browser context (no cookies) and page for each test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()
