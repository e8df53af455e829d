"""Start the cache-host: check the data dir, open the stores, listen, serve.

Problems an operator can fix (unwritable data dir, port in use, bad TLS files)
become a StartupError with a one-line message; the CLI prints it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import ssl
import tempfile

from aiohttp import web

from withcache.server import log
from withcache.server.cache import Cache
from withcache.server.settings import Settings
from withcache.server.store import StoreError
from withcache.server.web import auth, make_app
from withcache.server.web.site import BoundedSite, ConnectionLimit

# Room for a /b/ token of the longest URL we accept (8 KiB, base64-encoded).
MAX_REQUEST_LINE = 16384
LISTEN_BACKLOG = 1024


class StartupError(Exception):
    """The cache-host can't start; the message says what to fix."""


def _check_data_dir(settings: Settings) -> None:
    path = settings.data_dir
    # The first part of the path that exists must be a folder, or mkdir says only "File exists".
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        what = "is a file" if existing == path else f"can't be made: {existing} is a file"
        raise StartupError(f"data dir {path} {what}, not a folder (--data-dir, WITHCACHE_DATA_DIR)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise StartupError(f"data dir {path} is not writable: {err.strerror or err}") from None


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    for flag, path in (("--tls-cert", settings.tls_cert), ("--tls-key", settings.tls_key)):
        if not os.access(path, os.R_OK):
            reason = "no such file" if not path.exists() else "not readable"
            raise StartupError(f"cannot load {flag} {path}: {reason}")
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as err:
        raise StartupError(
            f"cannot load --tls-cert/--tls-key: {err} (a PEM certificate chain and its "
            "private key?)"
        ) from None
    return context


def _listen_problem(host: str, port: int, err: OSError) -> str:
    """Why the cache-host can't listen, in words an operator can act on."""
    if isinstance(err, socket.gaierror):
        return f"no such address or host name {host!r} (--host takes an address of this machine)"
    reason = os.strerror(err.errno) if err.errno else str(err)
    if err.errno == errno.EADDRNOTAVAIL:
        return f"{reason} ({host} is not an address of this machine)"
    if err.errno == errno.EACCES and port < 1024:
        return f"{reason} (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    return reason


def default_peer_url(scheme: str, host: str, port: int) -> str:
    """Where other hosts reach this one unless --peer-url says: the address it
    listens on, or this machine's name when it listens on every address."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def serve(settings: Settings) -> None:
    """Run the cache-host until SIGTERM or SIGINT."""
    log.setup(format=settings.log_format)
    _check_data_dir(settings)
    tls = _tls_context(settings)
    asyncio.run(_serve(settings, tls))


async def _serve(settings: Settings, tls: ssl.SSLContext | None) -> None:
    try:
        cache = await Cache.open(settings)
    except StoreError as err:
        raise StartupError(str(err)) from None
    runner = web.AppRunner(
        make_app(cache), access_log=None, handle_signals=False, max_line_size=MAX_REQUEST_LINE,
        keepalive_timeout=settings.header_timeout,
    )  # fmt: skip
    await runner.setup()
    limit = ConnectionLimit(settings.max_client_connections)
    site = BoundedSite(
        runner, settings.host, settings.port, limit, settings.header_timeout, ssl_context=tls,
        backlog=LISTEN_BACKLOG,
    )  # fmt: skip
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        await cache.close()
        reason = _listen_problem(settings.host, settings.port, err)
        raise StartupError(f"cannot listen on {settings.host}:{settings.port}: {reason}") from None
    port = runner.addresses[0][1]
    scheme = "https" if tls else "http"
    await cache.start(settings.peer_url or default_peer_url(scheme, settings.host, port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info(
        "listening",
        url=f"{scheme}://{settings.host}:{port}",
        port=port,
        mode=settings.mode,
        data_dir=settings.data_dir,
    )
    auth.warn_if_open(settings.admin_password)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await runner.cleanup()
        await cache.stop()
