"""The bundle: artifacts carried to a cache-host without a network, as a
plain tar file any tar reads (stdlib only: the cache-host writes bundles, the
`withcache` command reads them).

    manifest.json                 what the bundle holds (first, so a stream can be checked)
    SHA256SUMS                    `sha256sum -c SHA256SUMS` checks an extracted bundle
    blobs/<sha256>/<name>         each distinct blob once; <name> is its first URL's

The manifest is one JSON object: `format`, `version`, `exported_at`,
`scope_key` (the exporting host's Policy.scope_key(), when credential-scoped
artifacts are in it) and `artifacts`, each with `url` (as displayed), `key`,
`sha256`, `size`, `headers` (Content-Type, Last-Modified and the other
replayed headers), `fetched_at`, `scope` ("" for public) and `path` (its
member). Reading refuses whatever a cache-host must not trust: a member that
is not a regular file (links, devices), a name outside the layout above (so no
path traversal), a member the manifest doesn't describe or describes with
another size, and a manifest listing members the archive doesn't hold (a
truncated archive can look whole to tar).
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

FORMAT = "withcache-bundle"
VERSION = 1
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
BLOCK = 512
RECORD = 20 * BLOCK  # tar pads the archive to whole records of this size
MAX_MANIFEST = 256 << 20
MAX_NAME = 100  # characters of a member's <name>
_MEMBER_RE = re.compile(rf"blobs/([0-9a-f]{{64}})/([^/\\\x00]{{1,{MAX_NAME}}})")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_SCOPE_RE = re.compile(r"|[0-9a-f]{64}")
_KINDS = {
    tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link",
    tarfile.DIRTYPE: "a directory", tarfile.CHRTYPE: "a device", tarfile.BLKTYPE: "a device",
    tarfile.FIFOTYPE: "a FIFO",
}  # fmt: skip


class BadBundle(Exception):
    """The archive is not a bundle this command can trust; the message says why."""


@dataclass(frozen=True)
class Item:
    """One artifact in a bundle."""

    url: str
    key: str
    sha256: str
    size: int
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    fetched_at: float = 0.0
    scope: str = ""


@dataclass(frozen=True)
class Manifest:
    items: list[Item]
    exported_at: float = 0.0
    scope_key: str | None = None

    def by_path(self) -> dict[str, list[Item]]:
        found: dict[str, list[Item]] = {}
        for item in self.items:
            found.setdefault(item.path, []).append(item)
        return found


def member_name(sha256: str, url: str) -> str:
    """The member holding a blob: named by its SHA-256, then its URL's file name."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    name = "".join(c if c.isprintable() and c not in "/\\" else "_" for c in name)
    if name in ("", ".", ".."):
        name = "artifact"
    return f"blobs/{sha256}/{name[-MAX_NAME:]}"


# -- writing


def manifest_bytes(items: Sequence[Item], exported_at: float, scope_key: str | None) -> bytes:
    document = {
        "format": FORMAT, "version": VERSION, "exported_at": exported_at,
        "scope_key": scope_key, "artifacts": [asdict(item) for item in items],
    }  # fmt: skip
    return (json.dumps(document, indent=1) + "\n").encode()


def sums_bytes(items: Iterable[Item]) -> bytes:
    lines = {f"{item.sha256}  {item.path}\n" for item in items}
    return "".join(sorted(lines)).encode()


def header(name: str, size: int, mtime: float) -> bytes:
    """The tar header of a regular file (pax, so long and non-ASCII names keep)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(mtime), 0o644
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def padding(size: int) -> bytes:
    """The zeros that take a member's data to a whole block."""
    return bytes(-size % BLOCK)


def trailer(length: int) -> bytes:
    """The end of an archive that is `length` bytes so far: two zero blocks,
    then zeros to a whole record."""
    end = length + 2 * BLOCK
    return bytes(2 * BLOCK + -end % RECORD)


# -- reading


def read_manifest(data: bytes) -> Manifest:
    try:
        document = json.loads(data)
    except ValueError:
        raise BadBundle(f"{MANIFEST} is not JSON") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BadBundle(f"{MANIFEST} does not describe a {FORMAT}")
    if document.get("version") != VERSION:
        raise BadBundle(
            f"bundle version {document.get('version')!r}: this withcache reads version {VERSION}"
        )
    artifacts = document.get("artifacts")
    if not isinstance(artifacts, list):
        raise BadBundle(f"{MANIFEST} has no list of artifacts")
    items = [_item(n, entry) for n, entry in enumerate(artifacts, start=1)]
    scope_key = document.get("scope_key")
    if scope_key is not None and not isinstance(scope_key, str):
        raise BadBundle(f"{MANIFEST}: scope_key is not text")
    exported = document.get("exported_at")
    return Manifest(items, exported if isinstance(exported, int | float) else 0.0, scope_key)


def _item(n: int, entry: Any) -> Item:
    where = f"{MANIFEST}, artifact {n}"
    if not isinstance(entry, dict):
        raise BadBundle(f"{where} is not an object")
    kinds = {"url": str, "key": str, "sha256": str, "size": int, "path": str, "headers": dict,
             "fetched_at": (int, float), "scope": str}  # fmt: skip
    for name, kind in kinds.items():
        if not isinstance(entry.get(name), kind) or isinstance(entry.get(name), bool):
            raise BadBundle(f"{where}: {name} missing or of the wrong type")
    if not _SHA256_RE.fullmatch(entry["sha256"]):
        raise BadBundle(f"{where}: sha256 is not 64 lowercase hex digits")
    if entry["size"] < 0:
        raise BadBundle(f"{where}: negative size")
    if not _SCOPE_RE.fullmatch(entry["scope"]):
        raise BadBundle(f"{where}: scope is not 64 lowercase hex digits")
    match = _MEMBER_RE.fullmatch(entry["path"])
    if not match or match[1] != entry["sha256"] or match[2] in (".", ".."):
        raise BadBundle(f"{where}: path {entry['path'][:200]!r} is not blobs/<its sha256>/<name>")
    headers = entry["headers"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise BadBundle(f"{where}: headers must be text")
    return Item(
        url=entry["url"], key=entry["key"], sha256=entry["sha256"], size=entry["size"],
        path=entry["path"], headers=dict(headers), fetched_at=float(entry["fetched_at"]),
        scope=entry["scope"],
    )  # fmt: skip


def check_member(info: tarfile.TarInfo, expected: dict[str, list[Item]]) -> list[Item]:
    """The manifest's items whose bytes the member holds; BadBundle if it is
    not a regular file the manifest describes, with the size it says."""
    shown = repr(info.name[:200])
    if not info.isreg():
        kind = _KINDS.get(info.type, "not a regular file")
        raise BadBundle(f"member {shown} is {kind}: a bundle holds regular files only")
    if not _MEMBER_RE.fullmatch(info.name) or ".." in info.name.split("/"):
        raise BadBundle(f"member {shown} is not a bundle path (blobs/<sha256>/<name>)")
    items = expected.get(info.name)
    if not items:
        raise BadBundle(f"member {shown} is not in {MANIFEST}")
    if info.size != items[0].size:
        raise BadBundle(f"member {shown} holds {info.size} bytes; {MANIFEST} says {items[0].size}")
    return items


def check_extra(info: tarfile.TarInfo) -> None:
    """The members besides the blobs: SHA256SUMS, a regular file."""
    if info.name != SUMS or not info.isreg():
        raise BadBundle(f"member {info.name[:200]!r} is not part of a bundle")


def missing_members(manifest: Manifest, seen: Iterable[str]) -> list[str]:
    """Members the manifest lists that the archive did not hold."""
    return sorted(set(manifest.by_path()) - set(seen))
