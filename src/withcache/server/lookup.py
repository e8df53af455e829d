"""Which artifact a key serves, remembered for a second.

A hot artifact costs the read path one metadata query a second, not one per
request. Whatever changes what a key serves forgets it at once: a fill's end
(FillManager.finish), a delete, a quarantine. The short life bounds what
another host's change to a shared store can leave stale.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from withcache.server.records import Artifact

LOOKUP_SECONDS = 1.0
LOOKUP_KEYS = 4096


class Lookups:
    def __init__(self) -> None:
        # key -> scope -> (remembered until, artifact)
        self._recent: dict[str, dict[str, tuple[float, Artifact]]] = {}

    async def find(
        self, key: str, scope: str, query: Callable[[], Awaitable[Artifact | None]]
    ) -> Artifact | None:
        """The artifact (key, scope) serves: remembered, or what `query` finds."""
        now = time.monotonic()
        scopes = self._recent.get(key)
        remembered = scopes.get(scope) if scopes else None
        if remembered and remembered[0] > now:
            return remembered[1]
        artifact = await query()
        if artifact is not None:
            if key not in self._recent and len(self._recent) >= LOOKUP_KEYS:
                self._recent.clear()
            self._recent.setdefault(key, {})[scope] = (now + LOOKUP_SECONDS, artifact)
        return artifact

    def forget(self, key: str) -> None:
        """`key` may serve something else now, in any scope."""
        self._recent.pop(key, None)
