"""Export: the artifacts a selection names, streamed out as a bundle (the
format is withcache.bundle's), for a cache-host without a network.

Nothing is copied first: the manifest comes from the metadata store, then
each blob is read from the blob store straight into the answer, so its length
is known before the first byte and a bundle of any size costs a few MiB here.
Credential-scoped artifacts stay out unless asked for; then each keeps its
scope, and the manifest this host's scope key (see imports.py for what that
means on another host).
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from withcache import bundle
from withcache.server import events
from withcache.server.actions import ActionError, NotFound
from withcache.server.policy import Policy
from withcache.server.records import Artifact
from withcache.server.store import BlobDamaged, BlobGone, Blobs, Metadata

if TYPE_CHECKING:
    from withcache.server.cache import Cache

PAGE = 1000  # artifacts read per query while choosing


@dataclass(frozen=True)
class Selection:
    """Which artifacts go: all of them, or those every given filter keeps."""

    match: str | None = None  # a glob on the URL
    since: float | None = None  # fetched at or after this Unix time
    ids: tuple[int, ...] = ()
    include_scoped: bool = False

    def keeps(self, artifact: Artifact) -> bool:
        return (
            (self.include_scoped or not artifact.scoped)
            and (self.since is None or artifact.fetched_at >= self.since)
            and (self.match is None or fnmatch.fnmatchcase(artifact.key, self.match))
        )

    def describe(self) -> str:
        parts = [f"match={self.match}"] if self.match else []
        if self.since is not None:
            parts.append(f"since={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.since))}")
        if self.ids:
            parts.append("ids=" + ",".join(map(str, self.ids)))
        if self.include_scoped:
            parts.append("include_scoped")
        return " ".join(parts) or "all"


class Export:
    """A bundle ready to stream: its items, and its exact length."""

    def __init__(
        self, cache: Cache, store: Blobs, scope_key: str | None, artifacts: list[Artifact],
        selection: Selection,
    ) -> None:  # fmt: skip
        self._cache = cache
        self._store = store
        self.selection = selection
        self.artifacts = artifacts
        paths: dict[str, str] = {}
        self.items = [
            bundle.Item(
                url=cache.display(a.key), key=a.key, sha256=a.sha256, size=a.size,
                path=paths.setdefault(a.sha256, bundle.member_name(a.sha256, a.key)),
                headers=dict(a.headers), fetched_at=a.fetched_at, scope=a.scope,
            )
            for a in artifacts
        ]  # fmt: skip
        now = time.time()
        self.scoped = sum(1 for a in artifacts if a.scoped)
        manifest = bundle.manifest_bytes(self.items, now, scope_key if self.scoped else None)
        sums = bundle.sums_bytes(self.items)
        self._head = b"".join(
            bundle.header(name, len(data), now) + data + bundle.padding(len(data))
            for name, data in ((bundle.MANIFEST, manifest), (bundle.SUMS, sums))
        )
        # Each distinct blob once, in the order the manifest first names it.
        self._blobs: list[tuple[bytes, str, int]] = []
        length = len(self._head)
        seen: set[str] = set()
        for item in self.items:
            if item.sha256 in seen:
                continue
            seen.add(item.sha256)
            head = bundle.header(item.path, item.size, item.fetched_at)
            self._blobs.append((head, item.sha256, item.size))
            length += len(head) + item.size + len(bundle.padding(item.size))
        self._trailer = bundle.trailer(length)
        self.size = length + len(self._trailer)

    @property
    def bytes(self) -> int:
        return sum(size for _, _, size in self._blobs)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The bundle's bytes; OSError (the answer must then be cut short) if
        a blob went missing or changed meanwhile."""
        yield self._head
        for head, sha256, size in self._blobs:
            yield head
            try:
                reader = await self._store.open(sha256, size)
            except (BlobGone, BlobDamaged) as err:
                raise OSError(f"blob {sha256} can't be read: {err}") from None
            try:
                sent = 0
                async for chunk in reader.chunks(0, size):
                    sent += len(chunk)
                    yield chunk
                if sent != size or not reader.unchanged():
                    raise OSError(f"blob {sha256} changed or ended while it was read")
            finally:
                await reader.close()
            yield bundle.padding(size)
        yield self._trailer

    async def record(self, actor: str | None) -> None:
        await self._cache.record(
            events.ArtifactsExported(
                actor=actor, artifacts=len(self.items), size=self.bytes, scoped=self.scoped,
                selection=self.selection.describe(),
            )
        )  # fmt: skip


async def prepare_export(
    cache: Cache, md: Metadata, store: Blobs, policy: Policy, selection: Selection
) -> Export:
    """The bundle of the artifacts `selection` keeps, oldest first (`Cache.export`)."""
    chosen: dict[int, Artifact] = {}
    if selection.ids:
        for artifact_id in selection.ids:
            artifact = await md.get_artifact(artifact_id)
            if artifact is None:
                raise NotFound(f"no artifact {artifact_id}")
            if artifact.scoped and not selection.include_scoped:
                raise ActionError(
                    f"artifact {artifact_id} is credential-scoped: export it with include_scoped"
                )
            if selection.keeps(artifact):
                chosen[artifact.id] = artifact
    else:
        offset = 0
        while True:
            page = await md.list_artifacts(
                sort="fetched_at", descending=False, offset=offset, limit=PAGE
            )
            for artifact in page.rows:
                if selection.keeps(artifact):
                    chosen[artifact.id] = artifact
            offset += PAGE
            if offset >= page.total or not page.rows:
                break
    ordered = sorted(chosen.values(), key=lambda a: (a.fetched_at, a.id))
    return Export(cache, store, policy.scope_key(), ordered, selection)
