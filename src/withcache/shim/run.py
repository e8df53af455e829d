"""Rewrite one curl/wget command for the cache: plan with the real probe, report.

Called by `entry` only when a cache-host is set. Any failure in here leaves
the command as written: a shim bug must never break the user's curl.
"""

from __future__ import annotations

import os

from withcache.shim import plan, probe

TYPE_CHECKING = False  # typing and collections.abc cost milliseconds at start-up
if TYPE_CHECKING:
    from collections.abc import Mapping


def rewrite(tool: str, args: list[str], env: Mapping[str, str]) -> list[str]:
    """The argv to exec; with WITHCACHE_DEBUG set, one line per URL on stderr."""
    seconds = probe.budget(env)

    def ask(server: plan.cachehost.CacheHost, requests: list[probe.Request]) -> list[probe.Answer]:
        return probe.probe(server, requests, seconds)

    try:
        result = plan.plan(tool, args, env, ask)
    except Exception as err:
        result = plan.Plan(list(args), [f"passed through: shim error: {err!r}"])
    if env.get("WITHCACHE_DEBUG", "0") not in ("", "0"):
        lines = "".join(f"withcache: {tool}: {note}\n" for note in result.notes)
        os.write(2, lines.encode("utf-8", "replace"))
    return result.argv
