"""The one definition of an origin URL's cache key, its /b/ token and its mirror spellings.

Stdlib only and import-light: the server, the shims and the client library all
use this module, so they can never disagree on which URL names which artifact.
The shims import it on every call, so its top level imports only `binascii`;
`urllib.parse` (which pulls in `re`, ~8 ms) is imported by the functions that
need a full parse, which the shims never call.

    >>> cache_key("HTTPS://Example.COM:443/a/./b/../cuda.run?sig=x#frag")
    'https://example.com/a/cuda.run'
    >>> serve_path("https://example.com/cuda.run")
    '/b/aHR0cHM6Ly9leGFtcGxlLmNvbS9jdWRhLnJ1bg/cuda.run'
"""

from __future__ import annotations

import binascii

TYPE_CHECKING = False  # not `from typing import ...`: typing imports re
if TYPE_CHECKING:
    from urllib.parse import SplitResult

SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_BYTES = 8192

_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
# Control characters and spaces are never part of a URL a tool would send.
_FORBIDDEN_CHARS = frozenset([*map(chr, range(0x21)), "\x7f"])
_HEX = frozenset("0123456789abcdef")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._:[]")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


class BadURL(ValueError):
    """The string can't be an artifact's origin URL; the message says why."""


class URLTooLong(BadURL):
    """The URL is longer than MAX_URL_BYTES (HTTP's 414, not a 400)."""


def check_origin(url: str) -> SplitResult:
    """Return the parts of an http(s) origin URL, or raise BadURL saying why."""
    if not url:
        raise BadURL("empty URL")
    try:
        size = len(url.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadURL("URL is not valid Unicode text (a lone surrogate)") from None
    if size > MAX_URL_BYTES:
        raise URLTooLong(f"URL longer than {MAX_URL_BYTES} bytes")
    if not _FORBIDDEN_CHARS.isdisjoint(url):
        raise BadURL("URL contains a control character or a space")
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise BadURL(f"malformed URL: {err}") from None
    scheme = parts.scheme.lower()
    if not scheme:
        raise BadURL("not an http(s) URL: it must start with http:// or https://")
    if scheme not in SCHEMES:
        raise BadURL(f"not an http(s) URL (scheme {scheme!r})")
    if not parts.hostname:
        raise BadURL("URL has no host")
    if parts.username is not None or parts.password is not None:
        raise BadURL("credentials in the URL are not supported; send an Authorization header")
    if port == 0:
        raise BadURL("URL has port 0")
    return parts


def cache_key(url: str, keep_query: bool = False) -> str:
    """The artifact's key: scheme://host[:port]/path, query kept only on request.

    Scheme and host are lowercased, a default port and the fragment dropped, and
    dot segments resolved the way curl resolves them before sending.
    """
    from urllib.parse import urlunsplit

    parts = check_origin(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.port is not None and parts.port != DEFAULT_PORTS[scheme]:
        host = f"{host}:{parts.port}"
    path = remove_dot_segments(parts.path) or "/"
    query = parts.query if keep_query else ""
    return urlunsplit((scheme, host, path, query, ""))


def display_url(url: str, keep_query: bool = False) -> str:
    """The form of a URL that may be shown or logged: no query unless kept.

    Query strings often carry signatures and tokens, so lists, events and logs
    use this rather than the URL as received.
    """
    try:
        return cache_key(url, keep_query)
    except BadURL:
        return "<invalid URL>"


def remove_dot_segments(path: str) -> str:
    """Resolve '.' and '..' path segments (RFC 3986, section 5.2.4)."""
    if "." not in path:
        return path
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/".join(out) if out != [""] else "/"


def prefix_origin(target: str) -> str:
    """The origin URL inside a prefix-form request target, `/<origin URL>`.

    `target` is the request target as received (raw path and query). A proxy
    that merges slashes turns `https://` into `https:/`, so one slash after
    the scheme stands for two. A target whose colon is percent-encoded
    (`/https%3A%2F%2Fhost%2Fx`) is one encoded URL and is decoded once.

        >>> prefix_origin("/HTTPS:/example.com/a%20b.run?sig=1")
        'https://example.com/a%20b.run?sig=1'
    """
    rest = target[1:] if target.startswith("/") else target
    head = rest.split("/", 1)[0]
    if ":" not in head and "%3a" in head.lower():
        from urllib.parse import unquote

        rest = unquote(rest)
    scheme, colon, after = rest.partition(":")
    lowered = scheme.lower()
    if not colon or lowered not in SCHEMES:
        raise BadURL(f"not an http(s) URL (scheme {lowered or 'missing'!r})")
    if not after.startswith("/"):
        raise BadURL(f"{lowered}: must be followed by // and the host")
    return f"{lowered}://{after[2:] if after.startswith('//') else after[1:]}"


def host_path_origin(scheme: str, rest: str) -> str:
    """The origin URL of a scheme/host/path request, `/<scheme>/<host>/<path>`.

    `rest` is the raw target after `/<scheme>/`. The host segment may come
    percent-encoded (bitbake's PREMIRRORS writes `host%3A8443`); the path and
    query are kept as sent. Extra slashes after the host (a mirror template
    like `/https/HOST/PATH` where PATH starts with one) count as one.

        >>> host_path_origin("https", "repo.example.com%3A8443//amdgpu/x.deb?a=1")
        'https://repo.example.com:8443/amdgpu/x.deb?a=1'
    """
    from urllib.parse import unquote

    host, slash, path = rest.partition("/")
    if not slash:
        host, question, query = host.partition("?")
        path = question + query
    host = unquote(host)
    if not host or not _HOST_CHARS.issuperset(host.lower()):
        raise BadURL(f"{host!r} is not a host[:port]" if host else "URL has no host")
    return f"{scheme}://{host}/{path.lstrip('/')}"


def parse_digest(text: str) -> str:
    """A SHA-256 as 64 lowercase hex digits; BadURL if `text` is not one."""
    if len(text) != 64 or not _HEX.issuperset(text.lower()):
        raise BadURL("not a SHA-256 digest: give 64 hex digits")
    return text.lower()


def encode_token(url: str) -> str:
    """The /b/ token: the origin URL as unpadded URL-safe base64."""
    encoded = binascii.b2a_base64(url.encode("utf-8"), newline=False)
    return encoded.rstrip(b"=").translate(_TO_URLSAFE).decode("ascii")


def decode_token(token: str) -> str:
    """The origin URL inside a /b/ token; BadURL if it is not a valid one."""
    if len(token) > (MAX_URL_BYTES + 2) // 3 * 4:
        raise URLTooLong(f"URL longer than {MAX_URL_BYTES} bytes")
    if not token or not _TOKEN_CHARS.issuperset(token):
        raise BadURL("token is not unpadded URL-safe base64")
    try:
        padded = (token + "=" * (-len(token) % 4)).encode("ascii")
        raw = binascii.a2b_base64(padded.translate(_FROM_URLSAFE))
        url = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise BadURL("token is not base64 of a UTF-8 URL") from None
    check_origin(url)
    return url


def basename(url: str) -> str:
    """The last path segment of the URL, as written (may be empty)."""
    return _path_and_query(url)[0].rsplit("/", 1)[-1]


def serve_path(url: str) -> str:
    """Path and query on the cache-host that serve this origin URL.

    `/b/<token>/<basename>`: the basename is cosmetic for the server but makes
    `curl -O` and wget name the file as the origin would; the origin's query is
    repeated for the same reason (wget keeps it in the file name).
    """
    path, query = _path_and_query(url)
    served = f"/b/{encode_token(url)}/{path.rsplit('/', 1)[-1]}"
    return f"{served}?{query}" if query else served


def _path_and_query(url: str) -> tuple[str, str]:
    """Path and query of an http(s) URL, split as `urlsplit` splits them.

    Written out rather than imported so that the shims can build a serve path
    without loading `urllib.parse`; test_keys checks it against `urlsplit`.
    """
    scheme_end = url.find("://")
    rest = url[scheme_end + 3 :] if scheme_end > 0 else url
    if scheme_end > 0:
        ends = [i for i in map(rest.find, "/?#") if i >= 0]
        rest = rest[min(ends) :] if ends else ""
    rest = rest.split("#", 1)[0]
    path, _, query = rest.partition("?")
    return path, query
