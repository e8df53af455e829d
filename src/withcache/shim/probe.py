"""Ask the cache-host whether it holds URLs: one HEAD each, concurrently, on a budget.

Built on the C modules `_socket` and `_thread`: `socket.py` and `threading`
each import enum or functools (~3-6 ms) and `http.client` ~25 ms, more than a
whole probe; `ssl` is imported only for an https cache-host. Every request
runs in a worker thread and the caller waits at most the budget, so even a
hung DNS lookup or a cache that accepts and never answers costs no more.
Never raises and never prints: every failure is an UNREACHABLE answer.
"""

from __future__ import annotations

import _socket
import _thread
import os
from time import monotonic

from withcache.cachehost import CacheHost
from withcache.record import Record

TYPE_CHECKING = False  # typing and collections.abc cost milliseconds at start-up
if TYPE_CHECKING:
    from collections.abc import Mapping

HIT = "hit"
MISS = "miss"
UNREACHABLE = "unreachable"
REFUSED = "refused"  # the cache-host answered something other than 200 or 404


class Trust(Record):
    """How the tool will check an https cache-host's certificate."""

    verify: bool = True
    ca_file: str | None = None
    ca_dir: str | None = None


class Request(Record):
    """One HEAD the probe sends: the same request the tool will make on a hit."""

    url: str  # the origin URL
    path: str  # path and query on the cache-host
    authorization: str | None  # only when certain the tool sends exactly this
    trust: Trust
    family: int  # 4 or 6 when the tool is limited to one IP version, else 0
    headers: tuple[tuple[str, str], ...] = ()  # more headers (the client library's)


class Answer(Record):
    state: str  # HIT, MISS, UNREACHABLE or REFUSED
    detail: str = ""


CONNECT_TIMEOUT = 1.0  # seconds for one TCP connect
BUDGET = 2.0  # seconds for the whole probe, all URLs together
MAX_PARALLEL = 8
_MAX_HEAD = 64 * 1024
_HEX = frozenset(b"0123456789abcdef")
_FAMILIES = {0: _socket.AF_UNSPEC, 4: _socket.AF_INET, 6: _socket.AF_INET6}


def budget(env: Mapping[str, str]) -> float:
    """The probe budget in seconds: WITHCACHE_PROBE_TIMEOUT if it is a sane number."""
    return seconds(env.get("WITHCACHE_PROBE_TIMEOUT", "")) or BUDGET


def seconds(text: str) -> float | None:
    """A probe budget from text: a number of seconds, more than 0 and at most 600."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 < value <= 600 else None


def probe(server: CacheHost, requests: list[Request], seconds: float = BUDGET) -> list[Answer]:
    """HEAD each request on the cache-host; answers in the same order, within `seconds`."""
    deadline = monotonic() + seconds
    answers: list[Answer | None] = [None] * len(requests)
    pending = list(range(len(requests)))
    guard = _thread.allocate_lock()
    finished = []
    for _ in range(min(MAX_PARALLEL, len(requests))):
        done = _thread.allocate_lock()
        done.acquire()
        work = (server, requests, answers, pending, guard, done, deadline)
        _thread.start_new_thread(_work, work)
        finished.append(done)
    for done in finished:
        done.acquire(timeout=max(0.0, deadline - monotonic()))
    late = Answer(UNREACHABLE, f"no answer within {seconds:g} s")
    return [answer or late for answer in answers]


def _work(
    server: CacheHost,
    requests: list[Request],
    answers: list[Answer | None],
    pending: list[int],
    guard: _thread.LockType,
    done: _thread.LockType,
    deadline: float,
) -> None:
    try:
        while True:
            with guard:
                if not pending:
                    return
                i = pending.pop(0)
            answers[i] = head(server, requests[i], deadline)
    finally:
        done.release()


def head(server: CacheHost, request: Request, deadline: float) -> Answer:
    """One HEAD of `request.path` on the cache-host, giving up at `deadline`."""
    try:
        sock = _connect(server, request.family, deadline)
    except Exception as err:  # any failure only means "use the origin"
        return Answer(UNREACHABLE, f"cannot connect: {_describe(err)}")
    try:
        if server.scheme == "https":
            sock = _tls(sock, server, request.trust, deadline)
        _settimeout(sock, deadline)
        sock.sendall(_request_bytes(server, request))
        status, head = _read_head(sock, deadline)
    except Exception as err:
        return Answer(UNREACHABLE, _describe(err))
    finally:
        sock.close()
    if status == 200 and (_has_sha256_etag(head) or _header(head, b"withcache-fill")):
        return Answer(HIT)  # stored, or being filled and streamed to whoever asks
    if status == 200:  # some other server answering 200 to anything: not a withcache hit
        return Answer(REFUSED, "200 without a SHA-256 ETag: is this a withcache cache-host?")
    if status == 404:
        return Answer(MISS)
    return Answer(REFUSED, f"the cache-host answered {status}")


def _describe(err: Exception) -> str:
    return str(err) or type(err).__name__


def _settimeout(sock: _socket.socket, deadline: float, most: float | None = None) -> None:
    remaining = deadline - monotonic()
    if remaining <= 0:
        raise TimeoutError("probe budget spent")
    sock.settimeout(remaining if most is None else min(remaining, most))


def _connect(server: CacheHost, family: int, deadline: float) -> _socket.socket:
    # An ASCII name goes as bytes: as str, getaddrinfo loads the idna codec (and re, ~7 ms).
    host = server.host.encode("ascii") if server.host.isascii() else server.host
    infos = _socket.getaddrinfo(host, server.port, _FAMILIES[family], _socket.SOCK_STREAM)
    error: Exception = OSError(f"no address for {server.host}")
    for af, kind, proto, _, address in infos:
        sock = _socket.socket(af, kind, proto)
        try:
            _settimeout(sock, deadline, CONNECT_TIMEOUT)
            sock.connect(address)
            return sock
        except OSError as err:
            sock.close()
            error = err
    raise error


def _tls(sock: _socket.socket, server: CacheHost, trust: Trust, deadline: float) -> _socket.socket:
    import ssl  # only an https cache-host pays for it

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not trust.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif trust.ca_file or trust.ca_dir:
        context.load_verify_locations(trust.ca_file, trust.ca_dir)
    else:
        # The system store as compiled in, not SSL_CERT_FILE/SSL_CERT_DIR: whether
        # those count is the tool's business (plan passes them on for curl).
        paths = ssl.get_default_verify_paths()
        cafile = paths.openssl_cafile if os.path.isfile(paths.openssl_cafile) else None
        capath = paths.openssl_capath if os.path.isdir(paths.openssl_capath) else None
        context.load_verify_locations(cafile, capath)
    _settimeout(sock, deadline)
    return context.wrap_socket(sock, server_hostname=server.host)  # type: ignore[arg-type]


def _request_bytes(server: CacheHost, request: Request) -> bytes:
    host = server.base.split("://", 1)[1].split("/", 1)[0]
    path = request.path.encode("utf-8", "surrogateescape")
    if not path.isascii() or b" " in path:
        path = b"".join(bytes([c]) if 0x20 < c < 0x7F else b"%%%02X" % c for c in path)
    lines = [b"HEAD " + path + b" HTTP/1.1", b"Host: " + host.encode("ascii")]
    lines += [b"User-Agent: withcache-shim", b"Accept: */*", b"Connection: close"]
    if request.authorization:
        lines.append(b"Authorization: " + os.fsencode(request.authorization))
    for name, value in request.headers:
        if "\r" in name + value or "\n" in name + value:
            raise ValueError(f"header {name!r} has a line break")
        lines.append(os.fsencode(f"{name}: {value}"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _read_head(sock: _socket.socket, deadline: float) -> tuple[int, bytes]:
    """The response's status code and head; reads it all so the close is clean."""
    received = b""
    while b"\r\n\r\n" not in received:
        _settimeout(sock, deadline)
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
        if len(received) > _MAX_HEAD:
            break
    version, _, rest = received.partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/") or not code.isdigit():
        raise ValueError("not an HTTP response")
    return int(code), received.split(b"\r\n\r\n", 1)[0]


def _has_sha256_etag(head: bytes) -> bool:
    """Whether a response head carries the cache-host's `ETag: "<sha256 hex>"`."""
    tag = (_header(head, b"etag") or b"").strip(b'"')
    return len(tag) == 64 and _HEX.issuperset(tag)


def _header(head: bytes, wanted: bytes) -> bytes | None:
    """The value of header `wanted` (lowercase) in a response head, if present."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == wanted:
            return value.strip()
    return None
