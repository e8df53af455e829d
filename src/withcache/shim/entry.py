"""What `curlwithcache` and `wgetwithcache` run: find the real tool and exec it.

This module is on every curl/wget call, so it imports nothing beyond `os`
and `sys` (already loaded by the interpreter). With no cache-host set it
execs the real tool at once: no parsing, no network. Otherwise
`withcache.shim.run` rewrites the arguments first.
"""

import os
import sys

# Names a shim may be installed under (the native shim included); the real
# tool is never one of them, so a PATH that lists a shim as `curl` can't loop.
SHIM_NAMES = frozenset({"curlwithcache", "wgetwithcache", "withcache-shim"})


def curl() -> None:
    main("curl", "CURLWITHCACHE_SERVER", "REAL_CURL")


def wget() -> None:
    main("wget", "WGETWITHCACHE_SERVER", "REAL_WGET")


def main(tool: str, server_env: str, real_env: str) -> None:
    env = os.environ
    real = find_real_tool(tool, env.get(real_env, ""), env.get("PATH", os.defpath))
    if real is None:
        where = f"{real_env}={env[real_env]}" if env.get(real_env) else "PATH"
        os.write(
            2,
            f"{tool}withcache: no real {tool} found (looked in {where})\n".encode(
                errors="surrogateescape"
            ),
        )
        raise SystemExit(127)
    args = sys.argv[1:]
    setting = env[server_env] if server_env in env else env.get("WITHCACHE_SERVER", "")
    if setting.strip():
        try:
            from withcache.shim import run

            args = run.rewrite(tool, args, env)
        except Exception as err:  # even a broken install must leave curl working
            if env.get("WITHCACHE_DEBUG", "0") not in ("", "0"):
                os.write(
                    2,
                    f"withcache: {tool}: passed through: shim error: {err!r}\n".encode(
                        errors="surrogateescape"
                    ),
                )
    elif env.get("WITHCACHE_DEBUG", "0") not in ("", "0"):
        os.write(
            2,
            f"withcache: {tool}: passed through: no cache-host set\n".encode(
                errors="surrogateescape"
            ),
        )
    try:
        os.execv(real, [tool, *args])
    except OSError as err:
        os.write(
            2,
            f"{tool}withcache: cannot run {real}: {err.strerror}\n".encode(
                errors="surrogateescape"
            ),
        )
        raise SystemExit(126) from None


def find_real_tool(tool: str, pinned: str, path: str) -> str | None:
    """The real tool: `pinned` (REAL_CURL) if set, else the first on PATH that isn't a shim."""
    me = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if "/" in pinned:
        return pinned if _is_real(pinned, me) else None
    for directory in path.split(os.pathsep):
        candidate = os.path.join(directory or ".", pinned or tool)
        if _is_real(candidate, me):
            return candidate
    return None


def _is_real(candidate: str, me: str) -> bool:
    if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
        return False
    target = os.path.realpath(candidate)
    return target != me and os.path.basename(target) not in SHIM_NAMES
