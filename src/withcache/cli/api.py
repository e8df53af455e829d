"""The cache-host's JSON API as the `withcache` command calls it (stdlib only).

Every way a call can go wrong becomes a CommandError with a one-line message
and the exit status that says what kind of trouble it was.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

PREFIX = "/api/v1"
TIMEOUT = 30.0

# Exit statuses (the README lists them).
FAILED = 1  # the cache-host refused, or the job it ran failed
USAGE = 2  # bad command line or settings
UNREACHABLE = 3  # no cache-host answered (or not one with this API)
DENIED = 4  # no token, a wrong or revoked one, or one without the scope


class CommandError(Exception):
    def __init__(self, message: str, status: int = FAILED) -> None:
        super().__init__(message)
        self.status = status


class Api:
    def __init__(self, base: str, authorization: str | None) -> None:
        self.base = base
        self._authorization = authorization  # sent, never shown

    @classmethod
    def with_token(cls, base: str, token: str) -> Api:
        return cls(base, f"Bearer {token}")

    @classmethod
    def with_password(cls, base: str, password: str) -> Api:
        return cls(base, "Basic " + base64.b64encode(f"operator:{password}".encode()).decode())

    def get(self, path: str, **query: Any) -> Any:
        given = {k: v for k, v in query.items() if v is not None}
        return self.call("GET", path + (f"?{urlencode(given)}" if given else ""))

    def post(self, path: str, body: Any = None) -> Any:
        return self.call("POST", path, body)

    def delete(self, path: str) -> Any:
        return self.call("DELETE", path)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """The answer's JSON (None for 204), or CommandError."""
        headers = {"Accept": "application/json"}
        if self._authorization:
            headers["Authorization"] = self._authorization
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        url = self.base + PREFIX + path
        request = urllib.request.Request(url, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                raw = response.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            raise self._refusal(err) from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise CommandError(
                f"cannot reach the cache-host at {self.base}: {_reason(err)}", UNREACHABLE
            ) from None

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


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", err)
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError | socket.timeout):
        return f"no answer within {TIMEOUT:.0f} s"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror})"
    if isinstance(reason, ssl.SSLError):
        return f"TLS: {reason.reason or reason}"
    if isinstance(err, ValueError):
        return f"the answer is not JSON ({err})"
    return str(reason)
