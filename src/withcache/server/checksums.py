"""Lines of checksum files and of lists of URLs, read into what they name.

Each line is one of:

    NAME                            a bare name (in a list: its URL)
    <hex> [ *]NAME                  sha256sum, sha512sum, md5sum... (GNU; `*`: binary mode)
    \\<hex> [ *]ESCAPED             GNU's form for a name holding a backslash or newline
    ALGORITHM (NAME) = <hex>        BSD style (`sha256sum --tag`, `openssl dgst`)

A digest's algorithm is named by the BSD tag, else told by its length (a
SHA-256 is 64 hex digits, an MD5 32). Blank lines and lines starting with `#`
are skipped. A line that can't be read is a BadLine with its number and the
reason; reading goes on with the next one. Pure: no I/O here.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote, urljoin

from withcache.server.digests import BadDigest, Digest

_BSD_RE = re.compile(r"([A-Za-z0-9-]+) ?\((.*)\) ?= ?([0-9A-Fa-f]+)")
_HEX = frozenset("0123456789abcdefABCDEF")
_UNESCAPES = {"\\\\": "\\", "\\n": "\n", "\\r": "\r"}
# What a name may keep as it is in a URL path; everything else is percent-encoded.
_PATH_SAFE = "/!$&'()*+,=@~"
SHOWN = 200  # characters of a bad line kept to show it


@dataclass(frozen=True)
class Entry:
    line: int  # from 1
    name: str
    digest: Digest | None


@dataclass(frozen=True)
class BadLine:
    line: int
    text: str  # the line, cut to SHOWN characters
    reason: str


def read(text: str) -> Iterator[Entry | BadLine]:
    """Every line that names something, in order."""
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            yield _entry(number, line)
        except ValueError as err:
            yield BadLine(number, line[:SHOWN], str(err))


def _entry(number: int, line: str) -> Entry:
    if any("\udc80" <= c <= "\udcff" for c in line):
        raise ValueError("not UTF-8 text")
    # GNU marks a line whose name holds a backslash or a newline with a leading
    # backslash, in either style, and escapes those in the name.
    escaped = line.startswith("\\")
    body = line.removeprefix("\\")
    bsd = _BSD_RE.fullmatch(body)
    if bsd:
        return Entry(number, _name(bsd[2], escaped), _digest(bsd[3], bsd[1]))
    head, separator, rest = body.partition(" ")
    if not separator:
        head, separator, rest = body.partition("\t")
    if head and set(head) <= _HEX and (separator or len(head) >= 32):
        if rest[:1] in (" ", "*"):  # the mode: text (space) or binary (*)
            rest = rest[1:]
        return Entry(number, _name(rest, escaped), _digest(head))
    return Entry(number, _name(line, False), None)


def _digest(value: str, algorithm: str | None = None) -> Digest:
    try:
        if algorithm is None:
            return Digest.from_hex(value)
        return Digest.of(algorithm.upper().replace("SHA2-", "SHA"), value)
    except BadDigest as err:
        raise ValueError(str(err)) from None


def _name(name: str, escaped: bool) -> str:
    if not name:
        raise ValueError("no file name or URL after the digest")
    if escaped:
        return re.sub(r"\\.", lambda m: _UNESCAPES.get(m[0], m[0]), name)
    return name


def matches(name: str, glob: str) -> bool:
    """Whether `glob` matches the name as listed or its last path segment."""
    bare = name.removeprefix("./")
    return fnmatch.fnmatchcase(bare, glob) or fnmatch.fnmatchcase(bare.rsplit("/", 1)[-1], glob)


def resolve(base: str, name: str) -> str:
    """The URL of the file `name` lists, relative to the checksum file at `base`;
    ValueError if the name is not a relative path."""
    if "://" in name or name.startswith(("/", "\\")):
        raise ValueError(f"{name[:SHOWN]!r} is not a path relative to the checksum file")
    if "\n" in name or "\r" in name:
        raise ValueError("a file name with a line break can't be part of a URL")
    if name.rsplit("/", 1)[-1] in ("", ".", ".."):
        raise ValueError(f"{name[:SHOWN]!r} names a directory, not a file")
    # "./" first, so a name like "v1:x.tar" is a path, never a scheme.
    return urljoin(base, "./" + quote(name.removeprefix("./"), safe=_PATH_SAFE))
