"""The cache-host's JSON API as the `withcache` command calls it (stdlib only).

Every way a call can go wrong becomes a CommandError with a one-line message
and the exit status that says what kind of trouble it was.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

PREFIX = "/api/v1"
# A cache-host answers the API in milliseconds; these bound one that doesn't
# (a dead address, or a process that accepts and never answers).
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 15.0
SEND_BLOCK = 1 << 20  # an upload goes out in blocks of this size (cli.imports)

# Exit statuses (the README lists them).
FAILED = 1  # the cache-host refused, or the job it ran failed
USAGE = 2  # bad command line or settings
UNREACHABLE = 3  # no cache-host answered (or not one with this API)
DENIED = 4  # no token, a wrong or revoked one, or one without the scope


class ConnectTimeout(TimeoutError):
    """No connection (or TLS handshake) within the connect timeout."""


class _TimedConnection:
    """Connect within `connect_timeout`, then wait at most `read_timeout` for
    each read (urllib has one timeout for both)."""

    connect_timeout = CONNECT_TIMEOUT
    read_timeout = READ_TIMEOUT

    def connect(self) -> None:
        self.timeout = self.connect_timeout  # type: ignore[attr-defined]
        try:
            super().connect()  # type: ignore[misc]
        except TimeoutError:
            raise ConnectTimeout() from None
        self.sock.settimeout(self.read_timeout)  # type: ignore[attr-defined]


class _HTTPHandler(urllib.request.HTTPHandler):
    connection: type = http.client.HTTPConnection

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    connection: type = http.client.HTTPSConnection

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.connection, req, context=self._context)  # type: ignore[attr-defined]


class CommandError(Exception):
    def __init__(self, message: str, status: int = FAILED) -> None:
        super().__init__(message)
        self.status = status


class Api:
    def __init__(
        self, base: str, authorization: str | None, connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:  # fmt: skip
        self.base = base
        self._authorization = authorization  # sent, never shown
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        timeouts = {"connect_timeout": connect_timeout, "read_timeout": read_timeout}
        plain, tls = _HTTPHandler(), _HTTPSHandler()
        plain.connection = type("HTTP", (_TimedConnection, http.client.HTTPConnection), timeouts)
        tls.connection = type("HTTPS", (_TimedConnection, http.client.HTTPSConnection), timeouts)
        self._opener = urllib.request.build_opener(plain, tls)
        self.status = 0  # of the latest answer

    @classmethod
    def with_token(cls, base: str, token: str, **timeouts: float) -> Api:
        return cls(base, f"Bearer {token}", **timeouts)

    @classmethod
    def with_password(cls, base: str, password: str, **timeouts: float) -> Api:
        basic = base64.b64encode(f"operator:{password}".encode()).decode()
        return cls(base, f"Basic {basic}", **timeouts)

    def patient(self, read_timeout: float) -> Api:
        """The same API, waiting at least `read_timeout` for each answer (an
        upload's, which comes once the cache-host has stored the bytes)."""
        waiting = max(self.read_timeout, read_timeout)
        return Api(self.base, self._authorization, self.connect_timeout, waiting)

    def get(self, path: str, **query: Any) -> Any:
        return self.call("GET", path + _query(query))

    def post(self, path: str, body: Any = None) -> Any:
        return self.call("POST", path, body)

    def delete(self, path: str) -> Any:
        return self.call("DELETE", path)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """The answer's JSON (None for 204), or CommandError."""
        data = None if body is None else json.dumps(body).encode()
        kind = {} if body is None else {"Content-Type": "application/json"}
        with self._open(method, path, data, kind) as response:
            try:
                raw = response.read()
                return json.loads(raw) if raw else None
            except (OSError, ValueError) as err:
                raise self._unreachable(err) from None

    def upload(self, path: str, body: Iterable[Any], size: int, **query: Any) -> Any:
        """PUT the `size` bytes `body` yields; the answer's JSON."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        with self._open("PUT", path + _query(query), body, headers) as response:
            try:
                return json.loads(response.read())
            except (OSError, ValueError) as err:
                raise self._unreachable(err) from None

    def stream(self, path: str, **query: Any) -> http.client.HTTPResponse:
        """A GET whose body the caller reads as it comes (and closes)."""
        return self._open("GET", path + _query(query), None, {})

    def _open(
        self, method: str, path: str, data: Any, headers: dict[str, str]
    ) -> http.client.HTTPResponse:
        headers = {"Accept": "application/json", **headers}
        if self._authorization:
            headers["Authorization"] = self._authorization
        request = urllib.request.Request(self.base + PREFIX + path, data, headers, method=method)
        try:
            response = self._opener.open(request)
        except urllib.error.HTTPError as err:
            raise self._refusal(err) from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise self._unreachable(err) from None
        self.status = response.status
        return response

    def _unreachable(self, err: BaseException) -> CommandError:
        return CommandError(
            f"cannot reach the cache-host at {self.base}: {self._reason(err)}", UNREACHABLE
        )

    def _reason(self, err: BaseException) -> str:
        reason = getattr(err, "reason", err)
        if isinstance(reason, ConnectTimeout):
            return (
                f"no connection within {self.connect_timeout:g} s "
                "(--connect-timeout, WITHCACHE_CONNECT_TIMEOUT)"
            )
        if isinstance(reason, TimeoutError):
            return (
                f"connected, but no answer within {self.read_timeout:g} s "
                "(--timeout, WITHCACHE_TIMEOUT)"
            )
        return _reason(err)

    def _refusal(self, err: urllib.error.HTTPError) -> CommandError:
        try:
            message = json.loads(err.read())["error"]
        except (ValueError, KeyError, TypeError, OSError):
            return CommandError(
                f"{self.base} answered {err.code} {err.reason} without a JSON error: is it a "
                "withcache cache-host (0.5 or later)?", UNREACHABLE,
            )  # fmt: skip
        if err.code in (401, 403, 429):
            return CommandError(f"the cache-host refused: {message}", DENIED)
        return CommandError(message, FAILED)


def _query(query: dict[str, Any]) -> str:
    given = {k: v for k, v in query.items() if v is not None}
    return f"?{urlencode(given)}" if given else ""


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", err)
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror})"
    if isinstance(reason, ssl.SSLError):
        return f"TLS: {reason.reason or reason}"
    if isinstance(err, ValueError):
        return f"the answer is not JSON ({err})"
    return str(reason)
