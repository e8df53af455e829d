"""The client library: for tools that know their URLs and want the cache first.

Stdlib only. The URL scheme, the probe and the cache-host address come from
the same code the shims use, so a client and the cache-host never disagree.
Nothing here raises for a cache that is down, slow or missing an artifact:
`is_cached` and `serve_url` answer False/None, and `fetch` falls back to the
origin. Only `fetch` failing at the origin too raises (FetchError).

    from withcache import client

    # "use the cache when it's warm, the origin otherwise"
    url = client.serve_url("http://cache:3000", origin) or origin

    # or let the library download, verified and written atomically
    got = client.fetch("http://cache:3000", origin, "cuda.run")
    print(got.source, got.sha256)

A probe of a missing artifact also warms the cache: the cache-host records
the miss and, in auto mode, fetches it in the background.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from time import monotonic, sleep

from withcache import cachehost, keys
from withcache.record import Record
from withcache.shim import probe

PROBE_SECONDS = probe.BUDGET
COMMIT_WAIT = 5.0  # seconds a streamed fill may take to be stored after its last byte
_SHA256_HEX = frozenset("0123456789abcdef")


class FetchError(OSError):
    """Neither the cache nor the origin delivered the file; the message says why."""


class Fetched(Record):
    """What `fetch` wrote: where the bytes came from and their SHA-256."""

    source: str  # "cache" or "origin"
    sha256: str
    size: int
    note: str = ""  # why not from the cache, when it came from the origin


def cache_base(server: str) -> str:
    """The cache-host's base URL from a setting like WITHCACHE_SERVER.

    >>> cache_base("cache:3000")
    'http://cache:3000'
    >>> cache_base(" https://cache.lab/withcache/ ")
    'https://cache.lab/withcache'
    """
    return cachehost.parse(server).base


def blob_url(server: str, origin: str) -> str:
    """The `/blob?url=` form of the cache URL for `origin`.

    >>> blob_url("cache:3000", "https://vendor.example/a b.run?x=1")
    'http://cache:3000/blob?url=https%3A%2F%2Fvendor.example%2Fa%20b.run%3Fx%3D1'
    """
    from urllib.parse import quote

    return f"{cache_base(server)}/blob?url={quote(origin, safe='')}"


def cache_url(server: str, origin: str) -> str:
    """The `/b/<token>/<name>` URL that serves `origin` from this cache-host.

    >>> cache_url("cache:3000", "https://vendor.example/cuda.run")
    'http://cache:3000/b/aHR0cHM6Ly92ZW5kb3IuZXhhbXBsZS9jdWRhLnJ1bg/cuda.run'
    """
    return cache_base(server) + keys.serve_path(origin)


def is_cached(
    server: str, origin: str, headers: dict[str, str] | None = None, timeout: float = PROBE_SECONDS
) -> bool:
    """Whether the cache-host holds `origin` for a request with these headers.

    A HEAD that gives up after `timeout` seconds in all (DNS included); any
    failure (unreachable, slow, bad setting) is False. `headers` go with it:
    an `Authorization` makes credential-scoped artifacts visible, as it does
    for the download itself. Example:

        if not client.is_cached("http://cache:3000", origin):
            print("cold: this run downloads from the origin, and warms the cache")
    """
    try:
        host = cachehost.parse(server)
        extra = dict(headers or {})
        authorization = extra.pop("Authorization", None)
        request = probe.Request(
            origin, host.prefix + keys.serve_path(origin), authorization, probe.Trust(), 0,
            tuple(extra.items()),
        )  # fmt: skip
    except (cachehost.BadCacheHost, ValueError):
        return False
    return probe.probe(host, [request], timeout)[0].state == probe.HIT


def serve_url(
    server: str, origin: str, headers: dict[str, str] | None = None, timeout: float = PROBE_SECONDS
) -> str | None:
    """The cache URL for `origin` when the cache-host holds it, else None. Example:

    url = client.serve_url("http://cache:3000", origin) or origin
    """
    if is_cached(server, origin, headers, timeout):
        return cache_url(server, origin)
    return None


def fetch(
    server: str | None,
    origin: str,
    dest: str | os.PathLike[str],
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Fetched:
    """Download `origin` to `dest`: from the cache when it holds it, else from the origin.

    The bytes go to a temporary file beside `dest` and are renamed into place
    once complete and fsynced, so `dest` is never a partial file. From the
    cache, their SHA-256 must match the ETag the cache-host sent; a mismatch,
    a short body or any other cache failure falls back to the origin. `headers`
    go to both. `timeout` bounds each connect and read, in seconds. Raises
    FetchError only when the origin fails too. Example:

        got = client.fetch("http://cache:3000", "https://vendor.example/cuda.run", "cuda.run")
        got.source, got.sha256  # ('cache', '9f86d0…') on a hit
    """
    import urllib.error
    import urllib.request

    target = Path(dest)
    sent = dict(headers or {})
    note = "no cache-host set"
    if server:
        started = monotonic()
        try:
            # Straight to the cache-host, as the shims go: proxies are for the origin.
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            request = urllib.request.Request(cache_url(server, origin), headers=sent)
            with direct.open(request, timeout=timeout) as response:
                expected: str | Callable[[], str | None] | None
                expected = _sha256_etag(response.headers)
                if expected is None and response.headers.get("Withcache-Fill"):
                    # Streamed from a fill in progress: its SHA-256 exists once it is whole.
                    expected = partial(_committed_sha256, direct, request, timeout)
                if expected is None:
                    raise ValueError("the cache sent no SHA-256 ETag")
                return _keep(response, target, "cache", expected)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                note = "not cached"
            else:  # a 4xx says why in a line
                note = f"the cache answered {err.code}"
                if err.code < 500:
                    note += f": {err.read(500).decode('utf-8', 'replace').strip()}"
        except Exception as err:  # whatever went wrong, the origin is the fallback
            note = f"cache failed after {monotonic() - started:.1f} s: {err}"
    if keys.is_reference(origin):
        try:
            response, layer_sha256 = _from_registry(origin, sent.get("Authorization"), timeout)
            with response:
                return _keep(response, target, "origin", layer_sha256, note)
        except Exception as err:
            raise FetchError(f"{origin}: {err} (and from the cache: {note})") from err
    try:
        with urllib.request.urlopen(
            urllib.request.Request(origin, headers=sent), timeout=timeout
        ) as response:
            return _keep(response, target, "origin", None, note)
    except Exception as err:
        raise FetchError(f"{origin}: {err} (and from the cache: {note})") from err


def _from_registry(reference: str, credential: str | None, timeout: float) -> tuple[object, str]:
    """The layer an oras:// reference names, straight from its registry (the
    origin, when the cache can't serve it): the open response and the SHA-256
    it must have. The token dance as the cache-host does it (withcache.oras
    reads the challenge and the manifest); credentials never follow a redirect."""
    import hashlib
    import json
    import urllib.error
    import urllib.request
    from urllib.parse import urlencode

    from withcache import oras

    ref = oras.parse(reference)
    bearer = credential is not None and credential[:7].lower() == "bearer "
    sent = {"authorization": credential if bearer else None}

    def get(url: str, accept: str | None, authorization: str | None) -> object:
        request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
        if authorization:
            request.add_unredirected_header("Authorization", authorization)
        return urllib.request.urlopen(request, timeout=timeout)

    def authorized(url: str, accept: str | None) -> object:
        try:
            return get(url, accept, sent["authorization"])
        except urllib.error.HTTPError as err:
            if err.code != 401:
                raise
            scheme, params = oras.parse_challenge(err.headers.get("WWW-Authenticate", ""))
        if scheme == "bearer" and params.get("realm"):
            realm = params["realm"]
            query = urlencode(oras.token_query(params, ref))
            with get(f"{realm}{'&' if '?' in realm else '?'}{query}", None, credential) as answer:
                token = json.load(answer)  # type: ignore[arg-type]
            sent["authorization"] = f"Bearer {token.get('token') or token['access_token']}"
        else:
            sent["authorization"] = credential
        return get(url, accept, sent["authorization"])

    with authorized(ref.url(f"manifests/{ref.manifest_ref}"), oras.ACCEPT) as answer:  # type: ignore[attr-defined]
        body = answer.read(4 << 20)
        media_type = answer.headers.get_content_type()
    digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
    if ref.digest and digest != ref.digest:
        raise ValueError(f"the registry's manifest {ref.digest} hashes to {digest}")
    layer = oras.choose(ref, oras.layers(json.loads(body), media_type))
    return authorized(ref.url(f"blobs/{layer.digest}"), None), layer.digest[7:]


def _sha256_etag(headers: object) -> str | None:
    tag = headers.get("ETag", "").strip('"')  # type: ignore[attr-defined]
    return tag if len(tag) == 64 and _SHA256_HEX.issuperset(tag) else None


def _committed_sha256(opener: object, request: object, timeout: float) -> str | None:
    """The SHA-256 the cache-host reports once the fill just streamed is stored."""
    import urllib.request

    head = urllib.request.Request(request.full_url, headers=request.headers, method="HEAD")  # type: ignore[attr-defined]
    deadline = monotonic() + COMMIT_WAIT
    while monotonic() < deadline:
        try:
            with opener.open(head, timeout=timeout) as response:  # type: ignore[attr-defined]
                if sha256 := _sha256_etag(response.headers):
                    return sha256
        except OSError:
            pass
        sleep(0.05)
    return None


def _keep(
    response: object,
    target: Path,
    source: str,
    expected: str | Callable[[], str | None] | None,
    note: str = "",
) -> Fetched:
    """Stream a response into `target` atomically; check the SHA-256 when one is
    expected (a callable gives it once the body is read: a streamed fill's)."""
    import hashlib
    import tempfile

    digest = hashlib.sha256()
    size = 0
    fd, temp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := response.read(1 << 20):  # type: ignore[attr-defined]
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        sha256 = digest.hexdigest()
        if callable(expected):
            expected = expected() or "unknown: the fill was not stored"
        if expected is not None and sha256 != expected:
            raise ValueError(f"SHA-256 mismatch: got {sha256}, the cache said {expected}")
        os.replace(temp, target)
    except BaseException:
        os.unlink(temp)
        raise
    return Fetched(source, sha256, size, note)
