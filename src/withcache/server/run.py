"""Start the cache-host: check the data dir, open the stores, listen, serve.

Problems an operator can fix (unwritable data dir, port in use, bad TLS files)
become a StartupError with a one-line message; the CLI prints it.
"""

from __future__ import annotations

import asyncio
import os
import signal
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
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=settings.data_dir):
            pass
    except OSError as err:
        raise StartupError(
            f"data dir {settings.data_dir} is not writable: {err.strerror or err}"
        ) from None


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as err:
        raise StartupError(f"cannot load --tls-cert/--tls-key: {err}") from None
    return context


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
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise StartupError(f"cannot listen on {settings.host}:{settings.port}: {reason}") from None
    await cache.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    port = runner.addresses[0][1]
    scheme = "https" if tls else "http"
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
