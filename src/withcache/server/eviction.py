"""Which artifacts eviction takes to make room: a pure choice over candidates.

The candidates come from the metadata store, least recently used first, and
none is pinned. Deleting an artifact frees its blob's bytes only when every
artifact that uses the blob is gone (two URLs with the same bytes share one
blob; a pinned one among them keeps it), so the choice goes by blobs: a blob
is taken once its last user has been reached in the order, and the artifacts
of blobs that would stay anyway are left alone. Nothing here touches a store.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from withcache.server.records import EvictionCandidate


@dataclass(frozen=True)
class Choice:
    """What eviction would delete, and the bytes that frees."""

    victims: list[EvictionCandidate]
    freed: int


def choose(candidates: Iterable[EvictionCandidate], need: int) -> Choice:
    """The fewest candidates, in their order, whose blobs free at least
    `need` bytes (all whose blobs can be freed, if that is not enough).
    `need` <= 0 takes nothing."""
    seen: dict[str, list[EvictionCandidate]] = {}
    victims: list[EvictionCandidate] = []
    freed = 0
    for candidate in candidates:
        if freed >= need:
            break
        users = seen.setdefault(candidate.sha256, [])
        users.append(candidate)
        if len(users) == candidate.refs:  # the blob's last user: its bytes come free
            victims.extend(users)
            freed += candidate.size
    return Choice(victims, freed)
