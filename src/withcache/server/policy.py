"""What the cache-host may fetch, and who may read what it fetched.

Fetch policy (the SSRF guard): only http and https; by default never an
address that isn't globally routable, checked on the IP literal in a URL and
on every DNS answer at connect time (so every redirect hop and a DNS record
that changes between check and connect are covered); optionally only hosts
matching `--allow-origin` globs. The host is judged as the HTTP client will
connect to it (yarl's IDNA/NFKC form: fullwidth digits are ASCII ones), an IPv6
address that carries an IPv4 one (mapped, NAT64, 6to4, Teredo, ...) by that
IPv4 address, and a numeric host in any form but a.b.c.d (`127.1`,
`2130706433`, `0x7f.1`, `127.0.0.1.`) is refused outright: tools disagree on
what such hosts mean.

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

import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from withcache.keys import SCHEMES
from withcache.server.records import PUBLIC
from withcache.server.settings import Settings


class OriginRefused(Exception):
    """The policy forbids this fetch; the message says why."""


Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765 (SIIT)
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215, local use
# RFC 6052 section 2.2: where a prefix of each length puts the IPv4 bytes.
_RFC6052_PLACES = {48: (6, 7, 9, 10), 56: (7, 9, 10, 11), 64: (9, 10, 11, 12), 96: (12, 13, 14, 15)}


def carried_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...] | None:
    """The IPv4 addresses a packet to `ip` ends up at, if `ip` embeds any.

    Teredo names two (its server and its client). A local-use NAT64 prefix
    may be any of RFC 6052's lengths, so every well-formed reading counts;
    none is an empty tuple (nothing a translator would accept)."""
    if ip.ipv4_mapped:
        return (ip.ipv4_mapped,)
    if ip.teredo:
        return ip.teredo
    if ip.sixtofour:
        return (ip.sixtofour,)
    last32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _COMPATIBLE or ip in _TRANSLATED or ip in _NAT64_WELL_KNOWN:
        return (last32,)
    if ip in _NAT64_LOCAL:
        packed = ip.packed
        readings = []
        for length, places in _RFC6052_PLACES.items():
            # Well-formed for this length: the bytes after the prefix that
            # don't hold the IPv4 address (byte 8, the suffix) are zero.
            if not any(packed[i] for i in range(length // 8, 16) if i not in places):
                readings.append(ipaddress.IPv4Address(bytes(packed[i] for i in places)))
        return tuple(readings)
    return None


def is_public_address(address: str) -> bool:
    """Globally routable and unicast; an IPv6 address carrying IPv4 ones is
    public only if each of those is."""
    ip: Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        carried = carried_ipv4(ip)
        if carried is not None:
            return bool(carried) and all(_public(v4) for v4 in carried)
    return _public(ip)


def _public(ip: Address) -> bool:
    return ip.is_global and not ip.is_multicast


def _ip_literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def _numeric_host_problem(host: str) -> str | None:
    """Why a host that ends in a number (which tools read as an IPv4 address,
    each its own way) is not the one canonical form, a.b.c.d; None if it's fine."""
    if ":" in host:
        return None  # IPv6: ipaddress reads it, and so does every tool
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()
    last = labels[-1]
    numeric = last.isascii() and (
        last.isdigit() or (last[:2] == "0x" and all(c in "0123456789abcdef" for c in last[2:]))
    )
    if not numeric:
        return None
    try:
        if str(ipaddress.IPv4Address(host)) == host:
            return None
    except ValueError:
        pass
    return f"host {host} is not a canonical IPv4 address (write it as a.b.c.d)"


def _connect_host(url: str) -> str:
    """The host the HTTP client will connect to for `url`, lowercased
    (yarl applies IDNA and NFKC: fullwidth digits become ASCII ones);
    OriginRefused if it can't make one."""
    try:
        host = yarl.URL(url).host
    except (ValueError, UnicodeError) as err:  # (the URL may hold a secret: not shown)
        raise OriginRefused(f"the host can't be written as a DNS name: {err}") from None
    if not host:
        raise OriginRefused("URL has no host")
    return host.lower()


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
        try:
            host = _connect_host(url)
        except OriginRefused as err:
            return str(err)
        problem = _numeric_host_problem(host)
        if problem:
            return problem
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
