"""Rewrite one curl/wget command for the cache: plan with the real probe, report;
and run a one-URL hit so that a cache failing after the probe costs nothing.

Called by `entry` only when a cache-host is set. Any failure in here leaves
the command as written: a shim bug must never break the user's curl.
"""

from __future__ import annotations

import os

from withcache.shim import plan, probe

TYPE_CHECKING = False  # typing and collections.abc cost milliseconds at start-up
if TYPE_CHECKING:
    from collections.abc import Mapping

# Signals the shim passes on to the tool it waits for (the terminal sends
# SIGINT to both; timeout(1), a CI runner or systemd may signal the shim alone).
_PASSED_ON = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")


def rewrite(tool: str, args: list[str], env: Mapping[str, str]) -> plan.Plan:
    """The plan to run; with WITHCACHE_DEBUG set, one line per URL on stderr."""
    seconds = probe.budget(env)

    def ask(server: plan.cachehost.CacheHost, requests: list[probe.Request]) -> list[probe.Answer]:
        return probe.probe(server, requests, seconds)

    try:
        result = plan.plan(tool, args, env, ask)
    except Exception as err:
        result = plan.Plan(list(args), [f"passed through: shim error: {err!r}"])
    if _debug(env):
        lines = "".join(f"withcache: {tool}: {note}\n" for note in result.notes)
        os.write(2, lines.encode("utf-8", "replace"))
    return result


def supervise(real: str, tool: str, planned: plan.Plan, env: Mapping[str, str]) -> None:
    """Run the planned hit as a child (its fail switch first); end as it ended,
    unless its exit status is one of `planned.fallback` (the cache failed
    before anything irrevocable was written): then return, and the caller
    runs the command as written."""
    import _signal  # `signal` imports enum (milliseconds); the C module is enough

    child: list[int] = []

    def pass_on(signum: int, _frame: object) -> None:
        if not child:  # before the spawn returned: the tool never saw it, so end now
            _signal.signal(signum, _signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        try:  # noqa: SIM105 (contextlib costs milliseconds at start-up)
            os.kill(child[0], signum)
        except OSError:  # it ended meanwhile
            pass

    # A handler is reset in the spawned tool; an ignored signal (a background
    # job's SIGINT) stays ignored there, as it would through exec.
    passed = [s for s in (getattr(_signal, n) for n in _PASSED_ON) if not _ignored(s)]
    for signum in passed:
        _signal.signal(signum, pass_on)
    child.append(os.posix_spawn(real, [tool, *planned.fail_switch, *planned.argv], os.environ))
    status = os.waitstatus_to_exitcode(os.waitpid(child[0], 0)[1])
    if status < 0:  # killed by a signal: the shim ends the same way
        _signal.signal(-status, _signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    if status not in planned.fallback:
        os._exit(status)  # as the tool exited, without the interpreter's clean-up
    for signum in passed:
        _signal.signal(signum, _signal.SIG_DFL)
    if _debug(env):
        note = (
            f"withcache: {tool}: the cache failed (exit {status}): running the command as written\n"
        )
        os.write(2, note.encode())


def _ignored(signum: int) -> bool:
    import _signal

    return _signal.getsignal(signum) == _signal.SIG_IGN


def _debug(env: Mapping[str, str]) -> bool:
    return env.get("WITHCACHE_DEBUG", "0") not in ("", "0")
