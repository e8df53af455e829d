"""What the cache-host may fetch, and who may read what it fetched.

Fetch policy (the SSRF guard): only http and https; by default never an
address that isn't globally routable, checked on the IP literal in a URL and
on every DNS answer at connect time (so every redirect hop and a DNS record
that changes between check and connect are covered); optionally only hosts
matching `--allow-origin` globs.

Read scope: an artifact fetched with a client's Authorization is served only
to requests presenting the same value. The value itself is never stored; the
scope is a keyed hash (HMAC-SHA256 with a secret kept in the metadata store).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from withcache.keys import SCHEMES
from withcache.server.settings import Settings
from withcache.server.store import PUBLIC


class OriginRefused(Exception):
    """The policy forbids this fetch; the message says why."""


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _ip_literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


class Policy:
    def __init__(self, settings: Settings, scope_secret: bytes) -> None:
        self._allow_private = settings.allow_private_origins
        self._allow_globs = tuple(g.lower() for g in settings.allow_origins)
        self._scope_secret = scope_secret

    # -- fetch policy

    def refuse_reason(self, url: str) -> str | None:
        """Why a fill from `url` is forbidden before any DNS lookup, or None."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in SCHEMES:
            return f"scheme {parts.scheme!r} is not fetched (http and https only)"
        host = (parts.hostname or "").lower()
        if self._allow_globs and not any(fnmatch.fnmatchcase(host, g) for g in self._allow_globs):
            return f"host {host} is not allowed by --allow-origin"
        literal = _ip_literal(host)
        if literal and not self._allow_private and not is_public_address(literal):
            return f"address {literal} is not public (see --allow-private-origins)"
        return None

    def resolver(self) -> AbstractResolver:
        return _GuardedResolver(DefaultResolver(), self._allow_private)

    # -- read scope

    def scope_of(self, authorization: str | None) -> str:
        """The scope a request with this Authorization may read (besides public)."""
        if not authorization:
            return PUBLIC
        digest = hmac.new(self._scope_secret, authorization.encode(), hashlib.sha256)
        return digest.hexdigest()

    def scope_key(self) -> str:
        """Names the scope secret without giving it away: hosts with the same
        key (sharing a store, or one made from a copy of the other's) scope a
        credential alike, so a scoped artifact may move between them."""
        return hmac.new(self._scope_secret, b"withcache scope key", hashlib.sha256).hexdigest()[:32]


class _GuardedResolver(AbstractResolver):
    """Resolves as usual, then drops addresses the policy forbids."""

    def __init__(self, inner: AbstractResolver, allow_private: bool) -> None:
        self._inner = inner
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        if self._allow_private:
            return answers
        public = [a for a in answers if is_public_address(a["host"])]
        if not public:
            shown = ", ".join(sorted({a["host"] for a in answers}))
            raise OriginRefused(
                f"host {host.rstrip('.')} resolves to non-public address {shown} "
                "(see --allow-private-origins)"
            )
        return public

    async def close(self) -> None:
        await self._inner.close()
