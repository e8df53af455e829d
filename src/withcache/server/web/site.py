"""Where the cache-host listens, and how many connections one client may hold.

aiohttp accepts every connection and has no per-client limit, so one address
could hold every file descriptor the process has. `BoundedSite` listens like
aiohttp's TCPSite but counts open connections per client address; one more
than `--max-client-connections` is closed at once, unanswered (an error page
would be saved as the artifact by a curl without -f; a closed connection
makes every tool fail loudly). The header timeout is aiohttp's own
`keepalive_timeout`, set by run.py: it runs from the moment a connection is
made (and again after each answer), so a client dripping its headers is cut
off when it runs out, however many bytes it has sent; a TLS handshake gets
the same time.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from collections.abc import Callable

from aiohttp import web

from withcache.server import log

WARN_SECONDS = 60.0  # an address's refused connections are logged once in this time


class ConnectionLimit:
    """Open connections per client address, at most `per_address` each."""

    def __init__(self, per_address: int) -> None:
        self.per_address = per_address
        self._open: Counter[str] = Counter()
        self._warned: dict[str, float] = {}  # address -> when its refusals were last logged

    def admit(self, address: str) -> bool:
        if self._open[address] >= self.per_address:
            now = time.monotonic()
            if now - self._warned.get(address, -WARN_SECONDS) >= WARN_SECONDS:
                self._warned[address] = now
                log.warning(
                    "connections.refused", peer=address, open=self._open[address],
                    reason="--max-client-connections reached: further connections are closed",
                )  # fmt: skip
            return False
        self._open[address] += 1
        return True

    def release(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]
            self._warned.pop(address, None)


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the limit's count: every
    call is passed on, unless the connection was closed at once."""

    def __init__(self, limit: ConnectionLimit, inner: asyncio.Protocol) -> None:
        self._limit = limit
        self._inner = inner
        self._address: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else "unknown"
        if not self._limit.admit(address):
            transport.abort()
            return
        self._address = address
        self._inner.connection_made(transport)
        # Admitted: the transport calls aiohttp's own methods, one call less a read.
        self.data_received = self._inner.data_received  # type: ignore[method-assign]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._address is None:
            return  # never admitted: aiohttp never saw it
        self._limit.release(self._address)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class BoundedSite(web.BaseSite):
    """A TCP site whose connections go through a ConnectionLimit."""

    __slots__ = ("_handshake_timeout", "_host", "_limit", "_port")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, limit: ConnectionLimit,
        handshake_timeout: float, *, ssl_context: ssl.SSLContext | None = None,
        backlog: int = 128,
    ) -> None:  # fmt: skip
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._limit = limit
        self._handshake_timeout = handshake_timeout

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        make: Callable[[], asyncio.Protocol] = server
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Counted(self._limit, make()), self._host, self._port,
            ssl=self._ssl_context, backlog=self._backlog,
            ssl_handshake_timeout=self._handshake_timeout if self._ssl_context else None,
        )  # fmt: skip
