"""`withcache import` and `withcache export`: artifacts moved without their
origin (stdlib only).

    import FILE --url URL [--sha256 HEX]   one local file
    import DIR --manifest FILE             lines `<sha256>  <url>  <relative path>`
    import BUNDLE                          a bundle from `withcache export` (- for stdin)
    export -o FILE|- [filters]             a bundle of cached artifacts

An import first tells the cache-host what it has (POST /imports/offer): what
is cached already is skipped, what the cache-host holds the bytes of is
stored without sending them, and only the rest is uploaded (PUT /imports),
streamed with its expected SHA-256, so nothing that doesn't match is kept. An
interrupted import done again sends only what is still missing. A bundle in a
file is checked whole before anything is sent (withcache.bundle says what is
refused); a bundle on stdin is checked as it streams, up to its first fault.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import mimetypes
import os
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import IO, Any, BinaryIO

from withcache import bundle
from withcache.bundle import BadBundle, Item, Manifest
from withcache.cli.api import FAILED, SEND_BLOCK, UNREACHABLE, USAGE, Api, CommandError
from withcache.cli.commands import check_sha256, check_url, print_json, result
from withcache.cli.progress import Bar, Meter
from withcache.server.digests import SHA256_RE
from withcache.server.settings import format_size

UPLOAD_ANSWER_SECONDS = 600.0  # the answer comes once the bytes are stored (fsync, copy)
OFFER_BATCH = 1000
READ_BLOCK = 1 << 20
# What a compressed bundle starts with: it is read as a stream (no seeking back).
COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz: what tarfile reads


@dataclass
class Piece:
    """One artifact to import: what it must be, and where its bytes are."""

    url: str
    sha256: str | None
    size: int
    headers: dict[str, str] = field(default_factory=dict)
    scope: str = ""
    where: str = ""  # for messages: the file, or the manifest line


@dataclass
class Tally:
    """What an import did, artifact by artifact."""

    added: list[dict[str, Any]] = field(default_factory=list)  # uploaded
    stored: list[dict[str, Any]] = field(default_factory=list)  # from bytes the host had
    skipped: list[dict[str, Any]] = field(default_factory=list)  # cached already
    failed: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, where: str, url: str, error: str) -> None:
        self.failed.append({"where": where, "url": url, "error": error})
        print(f"withcache: error: {where}: {error}" + (f": {url}" if url else ""),
              file=sys.stderr)  # fmt: skip

    def summary(self) -> str:
        stored = f" ({len(self.stored)} from bytes the cache-host had)" if self.stored else ""
        return (
            f"imported {len(self.added) + len(self.stored)}{stored}, skipped "
            f"{len(self.skipped)} (cached already), failed {len(self.failed)}"
        )

    def as_json(self) -> dict[str, Any]:
        return {"added": self.added, "stored": self.stored, "skipped": self.skipped,
                "failed": self.failed}  # fmt: skip


# -- checks before any call (exit 2)


def check(args: argparse.Namespace) -> None:
    if args.url is not None and args.manifest is not None:
        raise CommandError("give --url (one file) or --manifest (a directory), not both", USAGE)
    if args.sha256 is not None and args.url is None:
        raise CommandError("--sha256 goes with --url (a manifest gives each file's)", USAGE)
    check_sha256(args.sha256)
    if args.url is not None:
        check_url(args.url)
        if not os.path.isfile(args.path):
            raise CommandError(f"{args.path} is not a file", USAGE)
    elif args.manifest is not None:
        if not os.path.isdir(args.path):
            raise CommandError(f"{args.path} is not a directory", USAGE)
        if not os.path.isfile(args.manifest):
            raise CommandError(f"no manifest {args.manifest}", USAGE)
    elif args.path != "-" and not os.path.isfile(args.path):
        raise CommandError(f"{args.path} is not a bundle file (give - for stdin)", USAGE)


def check_export(args: argparse.Namespace) -> None:
    if args.json and args.output == "-":
        raise CommandError("--json prints on stdout, where -o - writes the bundle", USAGE)
    args.since_time = _since(args.since) if args.since else None
    args.id_list = _ids(args.ids or [])
    if args.output != "-":
        folder = os.path.dirname(os.path.abspath(args.output))
        if os.path.isdir(args.output) or not os.access(folder, os.W_OK):
            raise CommandError(f"can't write {args.output}: no such folder, or not writable",
                               USAGE)  # fmt: skip


def _since(text: str) -> float:
    try:
        return datetime.datetime.fromisoformat(text).timestamp()  # no zone: local time
    except ValueError:
        raise CommandError(
            f"bad --since {text!r}: give a date (2025-05-01) or a date and time "
            "(2025-05-01T08:00, optionally with +02:00)", USAGE,
        ) from None  # fmt: skip


def _ids(given: list[str]) -> list[str]:
    ids = [part for text in given for part in text.split(",") if part]
    bad = [part for part in ids if not (part.isascii() and part.isdigit())]
    if bad:
        raise CommandError(f"bad --ids {bad[0]!r}: give artifact ids (withcache ls)", USAGE)
    return ids


# -- import


def run(api: Api, args: argparse.Namespace) -> int:
    tally = Tally()
    patient = api.patient(UPLOAD_ANSWER_SECONDS)
    if args.url is not None:
        return _one_file(patient, args)
    if args.manifest is not None:
        pieces, paths = _directory(args.path, args.manifest, tally)
        _send_files(patient, pieces, paths, tally, args.refresh)
    else:
        _bundle(patient, args.path, tally, args.refresh)
    if args.json:
        print_json(tally.as_json())
    else:
        print(tally.summary())
    return FAILED if tally.failed else 0


def _one_file(api: Api, args: argparse.Namespace) -> int:
    piece = _file_piece(args.path, args.url, args.sha256.lower() if args.sha256 else None)
    tally = Tally()
    if piece.sha256 is None and not args.refresh:
        cached = [a for a in api.get("/artifacts", url=args.url)["items"] if not a["scoped"]]
        if cached:
            print(f"already cached: {args.url} (not compared with {args.path}: give --sha256 "
                  "to compare it, --refresh to replace it)", file=sys.stderr)  # fmt: skip
            print_json(cached[0]) if args.json else result(cached[0])
            return 0
    _send_files(api, [piece], [args.path], tally, args.refresh)
    done = tally.added or tally.stored or tally.skipped
    if done:
        if tally.skipped:
            print(f"already cached: {args.url}", file=sys.stderr)
        print_json(done[0]) if args.json else result(done[0])
        return 0
    return FAILED


def _file_piece(path: str, url: str, sha256: str | None, where: str = "") -> Piece:
    stat = os.stat(path)
    headers = {"Last-Modified": formatdate(stat.st_mtime, usegmt=True)}
    kind, encoding = mimetypes.guess_type(url, strict=False)
    if kind and not encoding:  # a .tar.gz is sent as it is: never claim an encoding
        headers["Content-Type"] = kind
    return Piece(url, sha256, stat.st_size, headers, where=where or path)


def _directory(folder: str, manifest: str, tally: Tally) -> tuple[list[Piece], list[str]]:
    """The pieces a directory's manifest lists, and their files; bad lines go to `tally`."""
    root = os.path.realpath(folder)
    pieces, paths = [], []
    try:
        with open(manifest, encoding="utf-8", errors="surrogateescape") as file:
            lines = file.read().split("\n")
    except OSError as err:
        raise CommandError(f"can't read {manifest}: {err.strerror}", USAGE) from None
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{manifest}, line {number}"
        parts = line.split(None, 2)
        if len(parts) != 3:
            tally.fail(where, "", "not '<sha256>  <url>  <relative path>'")
            continue
        sha256, url, relative = parts
        try:
            check_url(url)
        except CommandError as err:
            tally.fail(where, "", str(err))
            continue
        path = os.path.realpath(os.path.join(root, relative))
        if not SHA256_RE.fullmatch(sha256):
            tally.fail(where, url, f"{sha256[:70]!r} is not a SHA-256 (64 hex digits)")
        elif os.path.commonpath([root, path]) != root:
            tally.fail(where, url, f"{relative} is outside {folder}")
        elif not os.path.isfile(path):
            tally.fail(where, url, f"{relative}: no such file in {folder}")
        else:
            pieces.append(_file_piece(path, url, sha256.lower(), where))
            paths.append(path)
    return pieces, paths


def _send_files(
    api: Api, pieces: list[Piece], paths: list[str], tally: Tally, refresh: bool
) -> None:
    groups = _by_bytes(pieces, _offer(api, pieces, tally, refresh, None))
    sender = _Sender(api, sum(pieces[group[0]].size for group in groups), len(groups))
    try:
        for first, *rest in groups:
            try:
                with open(paths[first], "rb") as file:
                    sent = sender.send(pieces[first], file, tally, refresh, None)
            except OSError as err:
                tally.fail(pieces[first].where, pieces[first].url, f"can't read it: {err.strerror}")
                continue
            if sent and rest:  # the same bytes under other URLs: stored from those just sent
                _offer(api, [pieces[n] for n in rest], tally, refresh, None)
    finally:
        sender.close()


def _by_bytes(pieces: list[Piece], chosen: list[int]) -> list[list[int]]:
    """The chosen pieces grouped by SHA-256 (unknown ones each alone), in order."""
    groups: dict[object, list[int]] = {}
    for n in chosen:
        groups.setdefault(pieces[n].sha256 or n, []).append(n)
    return list(groups.values())


def _offer(
    api: Api, pieces: list[Piece], tally: Tally, refresh: bool, scope_key: str | None
) -> list[int]:
    """Offer the pieces whose SHA-256 is known; the indexes of those the
    cache-host lacks (and of those without a SHA-256)."""
    missing = [n for n, piece in enumerate(pieces) if piece.sha256 is None]
    known = [n for n, piece in enumerate(pieces) if piece.sha256 is not None]
    for start in range(0, len(known), OFFER_BATCH):
        batch = known[start : start + OFFER_BATCH]
        body: dict[str, Any] = {"artifacts": [_offered(pieces[n]) for n in batch]}
        if scope_key:
            body["scope_key"] = scope_key
        if refresh:
            body["refresh"] = True
        outcomes = api.post("/imports/offer", body)["items"]
        for n, outcome in zip(batch, outcomes, strict=True):
            state = outcome["state"]
            if state == "missing":
                missing.append(n)
            elif state == "cached":
                tally.skipped.append(outcome["artifact"])
            elif state == "stored":
                tally.stored.append(outcome["artifact"])
            else:
                tally.fail(pieces[n].where, pieces[n].url, outcome["note"])
    return sorted(missing)


def _offered(piece: Piece) -> dict[str, Any]:
    offered: dict[str, Any] = {"url": piece.url, "sha256": piece.sha256, "size": piece.size,
                               "headers": piece.headers}  # fmt: skip
    if piece.scope:
        offered["scope"] = piece.scope
    return offered


class _Sender:
    """Uploads pieces one after another, with one bar for them all."""

    def __init__(self, api: Api, total: int, count: int) -> None:
        self._api = api
        self._meter = Meter(total)
        self._bar = Bar(sys.stderr)
        self._count = count
        self._sent = 0

    def send(
        self, piece: Piece, body: IO[bytes], tally: Tally, refresh: bool, scope_key: str | None
    ) -> bool:
        """Upload one piece; False (and `tally` says why) if the cache-host refused it."""
        query: dict[str, Any] = {"url": piece.url, "sha256": piece.sha256}
        for name, value in piece.headers.items():  # Content-Type -> content_type=
            query[name.lower().replace("-", "_")] = value
        if piece.scope:
            query.update(scope=piece.scope, scope_key=scope_key)
        if refresh:
            query["refresh"] = "true"
        counted = _Counted(body, self)
        try:
            artifact = self._api.upload("/imports", counted, piece.size, **query)
        except CommandError as err:
            if err.status == UNREACHABLE and counted.error is not None:
                raise counted.error from None  # the bytes could not be read: say so
            if err.status != FAILED:
                raise
            self.draw()
            tally.fail(piece.where, piece.url, str(err))
            return False
        finally:
            self._sent += 1
        tally.added.append(artifact)
        return True

    def moved(self, count: int) -> None:
        if self._meter.add(count):
            self.draw()

    def skip(self, size: int) -> None:
        """A piece that needs no sending: its bytes count as done."""
        self._sent += 1
        self.moved(size)

    def draw(self) -> None:
        m = self._meter
        self._bar.show(m.done, m.total, m.rate, m.eta, f"{self._sent} of {self._count} artifacts")

    def close(self) -> None:
        self._bar.close()


class _Counted:
    """A body being uploaded, block by block into one buffer (each is sent
    before the next is read), counted for the bar; it keeps what went wrong
    reading it (urllib would only say the send failed)."""

    def __init__(self, body: IO[bytes], sender: _Sender) -> None:
        self._body = body
        self._sender = sender
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[memoryview]:
        block = memoryview(bytearray(SEND_BLOCK))
        while True:
            try:
                count = self._body.readinto(block)  # type: ignore[attr-defined]
            except (OSError, tarfile.TarError, EOFError) as err:
                self.error = err
                raise OSError(f"reading the bytes failed: {err}") from None
            if not count:
                return
            self._sender.moved(count)
            yield block[:count]


# -- bundles


def _bundle(api: Api, path: str, tally: Tally, refresh: bool) -> None:
    if path == "-":
        stream = True
        source: BinaryIO = sys.stdin.buffer
    else:
        source = open(path, "rb")  # noqa: SIM115 (closed below)
        stream = source.read(6).startswith(COMPRESSED)
        source.seek(0)
    try:
        with _open_tar(source, stream) as tar:
            if stream:
                manifest = _first_manifest(tar)
                members: Iterator[tuple[tarfile.TarInfo, list[Item]]] = _streamed(tar, manifest)
            else:
                manifest, scanned = _scan(tar, path)
                members = iter(scanned)
            _send_bundle(api, tar, manifest, members, tally, refresh, checked=not stream)
    except BadBundle as err:
        raise CommandError(f"{path}: {err}") from None
    finally:
        if source is not sys.stdin.buffer:
            source.close()


def _open_tar(source: BinaryIO, stream: bool) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=source, mode="r|*" if stream else "r:")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise BadBundle(f"not a tar file ({err})") from None


def _manifest(tar: tarfile.TarFile, first: tarfile.TarInfo | None) -> Manifest:
    if first is None or first.name != bundle.MANIFEST or not first.isreg():
        raise BadBundle(f"not a bundle: its first member is not {bundle.MANIFEST}")
    if first.size > bundle.MAX_MANIFEST:
        raise BadBundle(f"{bundle.MANIFEST} is larger than {format_size(bundle.MAX_MANIFEST)}")
    data = tar.extractfile(first)
    assert data is not None
    return bundle.read_manifest(data.read())


def _first_manifest(tar: tarfile.TarFile) -> Manifest:
    try:
        return _manifest(tar, tar.next())
    except (tarfile.TarError, EOFError) as err:
        raise BadBundle(f"cut short or damaged ({err})") from None


def _scan(
    tar: tarfile.TarFile, path: str
) -> tuple[Manifest, list[tuple[tarfile.TarInfo, list[Item]]]]:
    """Check the whole archive before anything is sent."""
    try:
        found = tar.getmembers()
        manifest = _manifest(tar, found[0] if found else None)
    except (tarfile.TarError, EOFError) as err:
        raise BadBundle(f"cut short or damaged ({err})") from None
    expected, length = manifest.by_path(), os.path.getsize(path)
    scanned, seen = [], set()
    for info in found[1:]:
        if info.offset_data + info.size > length:
            raise BadBundle(f"cut short in member {info.name[:200]!r}")
        if info.name == bundle.SUMS:
            bundle.check_extra(info)
            continue
        items = _member(info, expected, seen)
        scanned.append((info, items))
    _check_complete(manifest, seen)
    return manifest, scanned


def _member(info: tarfile.TarInfo, expected: dict[str, list[Item]], seen: set[str]) -> list[Item]:
    items = bundle.check_member(info, expected)
    if info.name in seen:
        raise BadBundle(f"member {info.name[:200]!r} is in the archive twice")
    seen.add(info.name)
    return items


def _check_complete(manifest: Manifest, seen: set[str]) -> None:
    lacking = bundle.missing_members(manifest, seen)
    if lacking:
        raise BadBundle(
            f"{bundle.MANIFEST} lists {len(lacking)} member(s) the archive doesn't hold "
            f"(first: {lacking[0]}): cut short?"
        )


def _streamed(
    tar: tarfile.TarFile, manifest: Manifest
) -> Iterator[tuple[tarfile.TarInfo, list[Item]]]:
    """The members as they stream by, each checked before it is used."""
    expected, seen = manifest.by_path(), set()
    try:
        # next(), not iteration: that would start again with the manifest.
        while (info := tar.next()) is not None:
            if info.name == bundle.SUMS:
                bundle.check_extra(info)
                continue
            yield info, _member(info, expected, seen)
    except (tarfile.TarError, EOFError) as err:
        raise BadBundle(f"cut short or damaged ({err})") from None
    _check_complete(manifest, seen)


def _send_bundle(
    api: Api, tar: tarfile.TarFile, manifest: Manifest,
    members: Iterator[tuple[tarfile.TarInfo, list[Item]]], tally: Tally, refresh: bool,
    checked: bool,
) -> None:  # fmt: skip
    """Offer, then send what is missing, member by member. A bundle `checked`
    whole is offered at once; a streamed one a member at a time, once that
    member proved sound, so a bad archive stores nothing past its fault."""
    pieces = [
        Piece(i.url, i.sha256, i.size, i.headers, i.scope, where=f"{i.path} ({i.url})")
        for i in manifest.items
    ]
    index = {id(item): n for n, item in enumerate(manifest.items)}
    key = manifest.scope_key
    missing = set(_offer(api, pieces, tally, refresh, key)) if checked else set()
    sizes = {item.path: item.size for item in manifest.items}
    sender = _Sender(api, sum(sizes.values()), len(sizes))
    try:
        for info, items in members:
            numbers = [index[id(item)] for item in items]
            if checked:
                lacking = [n for n in numbers if n in missing]
            else:
                offered = _offer(api, [pieces[n] for n in numbers], tally, refresh, key)
                lacking = [numbers[k] for k in offered]
            if not lacking:  # cached already, or stored from bytes the host had
                sender.skip(info.size)
                continue
            data = tar.extractfile(info)
            assert data is not None
            first, *rest = lacking
            try:
                sent = sender.send(pieces[first], data, tally, refresh, key)
            except (OSError, tarfile.TarError, EOFError) as err:
                shown = info.name[:200]
                raise BadBundle(f"cut short or damaged in member {shown!r} ({err})") from None
            if sent and rest:  # the same bytes under other URLs: stored from those just sent
                _offer(api, [pieces[n] for n in rest], tally, refresh, key)
    finally:
        sender.close()


# -- export


def export(api: Api, args: argparse.Namespace) -> int:
    query = {
        "match": args.match, "since": args.since_time, "ids": ",".join(args.id_list) or None,
        "include_scoped": "true" if args.include_scoped else None,
    }  # fmt: skip
    with api.stream("/export", **query) as response:
        total = int(response.headers.get("Content-Length") or 0)
        count = response.headers.get("Withcache-Artifacts", "0")
        if args.output == "-":
            _copy(response, sys.stdout.buffer, total)
            sys.stdout.buffer.flush()
        else:
            _write_bundle(response, args.output, total)
    where = "stdout" if args.output == "-" else args.output
    print(f"exported {count} artifacts ({format_size(total)} bundle) to {where}",
          file=sys.stderr)  # fmt: skip
    if args.json:
        print_json({"artifacts": int(count), "size": total, "output": args.output})
    return 0


def _write_bundle(response: http.client.HTTPResponse, output: str, total: int) -> None:
    """Into `output` only once it is whole: a broken export leaves no bundle
    that could pass for one."""
    partial = f"{output}.part"
    try:
        with open(partial, "wb") as out:
            _copy(response, out, total)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, output)
    except OSError as err:
        raise CommandError(f"can't write {output}: {err.strerror or err}") from None
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _copy(response: http.client.HTTPResponse, out: BinaryIO, total: int) -> None:
    meter, bar = Meter(total), Bar(sys.stderr)
    block = memoryview(bytearray(READ_BLOCK))  # one buffer: no allocation per block
    try:
        while count := _read_into(response, block):
            out.write(block[:count])
            if meter.add(count):
                bar.show(meter.done, total, meter.rate, meter.eta)
    finally:
        bar.close()
    if meter.done != total:
        raise CommandError(
            f"the export broke off after {meter.done} of {total} bytes (the cache-host's log "
            "says why)"
        )


def _read_into(response: http.client.HTTPResponse, block: memoryview) -> int:
    try:
        return response.readinto(block)
    except (OSError, http.client.HTTPException) as err:
        raise CommandError(f"the export broke off: {err or type(err).__name__}") from None
