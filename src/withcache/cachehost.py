"""The cache-host's address, as the shims and the client library read it.

`WITHCACHE_SERVER` may be `host:port`, `http://host:port` or
`https://host[:port]/prefix` (behind a reverse proxy). Stdlib only and
import-free, because the shims parse it on every call.

    >>> parse("cache:3000")
    CacheHost(scheme='http', host='cache', port=3000, base='http://cache:3000', prefix='')
    >>> parse("https://[::1]/withcache/").base
    'https://[::1]/withcache'
"""

from __future__ import annotations

from withcache.record import Record

DEFAULT_PORTS = {"http": 80, "https": 443}


class CacheHost(Record):
    scheme: str  # "http" or "https"
    host: str  # name or IP literal, without brackets
    port: int
    base: str  # scheme://netloc[/prefix], no trailing slash: serve paths are appended
    prefix: str  # "" or the path prefix ("/withcache"), the part of `base` after the host


class BadCacheHost(ValueError):
    """The setting can't name a cache-host; the message says why."""


def parse(text: str) -> CacheHost:
    """Read a cache-host setting; BadCacheHost if it is not one."""
    text = text.strip()
    if "://" not in text:
        text = "http://" + text
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise BadCacheHost(f"{scheme}:// is not http:// or https://")
    netloc, slash, prefix = rest.partition("/")
    if not netloc or any(c in netloc for c in "@?# \t"):
        raise BadCacheHost(f"{netloc!r} is not host[:port]")
    if any(c in prefix for c in "?# \t"):
        raise BadCacheHost("the cache-host URL can't have a query or fragment")
    if netloc.startswith("["):
        end = netloc.find("]")
        host, port_text = netloc[1:end], netloc[end + 1 :]
        if end < 0 or (port_text and not port_text.startswith(":")):
            raise BadCacheHost(f"{netloc!r} is not [address]:port")
        port_text = port_text[1:]
    else:
        host, _, port_text = netloc.partition(":")
    if not host:
        raise BadCacheHost("no host name")
    if port_text and not (port_text.isascii() and port_text.isdigit()):
        raise BadCacheHost(f"port {port_text!r} is not a number")
    port = int(port_text) if port_text else DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise BadCacheHost(f"port {port} is out of range")
    prefix = ("/" + prefix).rstrip("/") if slash else ""
    return CacheHost(scheme, host, port, f"{scheme}://{netloc}{prefix}", prefix)
