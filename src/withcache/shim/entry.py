"""What `curlwithcache` and `wgetwithcache` run: find the real tool and exec it.

This module is on every curl/wget call, so it imports nothing beyond `os`
and `sys` (already loaded by the interpreter). With no cache-host set it
execs the real tool at once: no parsing, no network. Where no variable
names one, a shims.conf may (`find_conf`, then `withcache.shim.conf`).
Otherwise `withcache.shim.run` rewrites the arguments first; a one-URL hit
runs as its child, and if the cache fails it, the command runs as written.
"""

import os
import sys

TYPE_CHECKING = False  # typing costs milliseconds at start-up
if TYPE_CHECKING:
    from collections.abc import Mapping

# Names a shim may be installed under (the native shim included); the real
# tool is never one of them, so a PATH that lists a shim as `curl` can't loop.
SHIM_NAMES = frozenset({"curlwithcache", "wgetwithcache", "withcache-shim"})
SYSTEM_CONF = "/etc/withcache/shims.conf"
CONF_LIMIT = 64 * 1024  # conf.MAX_BYTES: read one byte more, to know a file is longer


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
    if server_env not in env and "WITHCACHE_SERVER" not in env:
        found = find_conf(env)
        if found is not None:
            try:
                from withcache.shim import conf

                env = conf.apply(tool, env, *found)
            except Exception:  # a broken install must leave curl working
                pass
    setting = env[server_env] if server_env in env else env.get("WITHCACHE_SERVER", "")
    if setting.strip():
        try:
            from withcache.shim import run

            planned = run.rewrite(tool, args, env)
            if planned.fallback:  # returns only if the cache failed: then as written
                run.supervise(real, tool, planned, env)
            else:
                args = planned.argv
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


def find_conf(env: "Mapping[str, str]") -> tuple[str, bytes] | None:
    """The shims.conf in effect, (path, contents), or None if there is none.

    Looked for only when no cache-host variable is set: the first readable of
    $XDG_CONFIG_HOME (else ~/.config) /withcache/shims.conf and
    /etc/withcache/shims.conf. A miss costs an open() each, nothing more.
    """
    base = env.get("XDG_CONFIG_HOME", "")
    if not base.startswith("/"):
        home = env.get("HOME", "")
        base = home + "/.config" if home.startswith("/") else ""
    for path in (base + "/withcache/shims.conf" if base else "", SYSTEM_CONF):
        if not path:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            return path, os.read(fd, CONF_LIMIT + 1)  # a regular file reads whole
        except OSError:
            continue  # a folder, say
        finally:
            os.close(fd)
    return None


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
