"""Which artifact a key serves, remembered for a while.

A hot artifact costs the read path one metadata query per memo life, not one
per request. Whatever changes what a key serves forgets it at once: a fill's
end (FillManager.finish), a delete, a quarantine on this host; on a store
other hosts share, their changes too, as the store hears of them
(Metadata.follow_changes: PostgreSQL LISTEN/NOTIFY). While the store is
heard, an answer is kept LISTENING_SECONDS; while it is not (SQLite needs
none; a lost listening connection), LOOKUP_SECONDS, which bounds what a
change elsewhere can leave stale. An answer whose query overlapped a forget
is not kept: it may predate the change.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from withcache.server.records import Artifact

LOOKUP_SECONDS = 1.0
LISTENING_SECONDS = 30.0
LOOKUP_KEYS = 4096


class Lookups:
    def __init__(self) -> None:
        # key -> scope -> (remembered until, artifact)
        self._recent: dict[str, dict[str, tuple[float, Artifact]]] = {}
        self._forgets = 0  # bumped by every forget: a query that overlapped one is not kept
        self._listening = False

    async def find(
        self, key: str, scope: str, query: Callable[[], Awaitable[Artifact | None]]
    ) -> Artifact | None:
        """The artifact (key, scope) serves: remembered, or what `query` finds."""
        now = time.monotonic()
        scopes = self._recent.get(key)
        remembered = scopes.get(scope) if scopes else None
        if remembered and remembered[0] > now:
            return remembered[1]
        forgets = self._forgets
        artifact = await query()
        if artifact is not None and forgets == self._forgets:
            if key not in self._recent and len(self._recent) >= LOOKUP_KEYS:
                self._recent.clear()
            life = LISTENING_SECONDS if self._listening else LOOKUP_SECONDS
            self._recent.setdefault(key, {})[scope] = (now + life, artifact)
        return artifact

    def forget(self, key: str) -> None:
        """`key` may serve something else now, in any scope."""
        self._forgets += 1
        self._recent.pop(key, None)

    # -- what the store says of changes made on other hosts (store.ChangeListener)

    def changed(self, key: str | None) -> None:
        """Another host changed what `key` serves (None: any key may have changed)."""
        if key is None:
            self._forgets += 1
            self._recent.clear()
        else:
            self.forget(key)

    def listening(self, on: bool) -> None:
        """The store's changes are heard (`on`) or not: either way, what was
        remembered may have changed unheard meanwhile."""
        self._listening = on
        self.changed(None)
