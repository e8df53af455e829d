"""shims.conf: the cache-host for shims that run where the environment is scrubbed.

sudo's env_reset, cron, systemd units, Homebrew (`env -i`) and bitbake drop
WITHCACHE_SERVER, so a shim installed as curl would silently pass through.
When neither WITHCACHE_SERVER nor the tool's own variable is set (set but
empty still turns the shim off), `entry` looks for the first readable of
`$XDG_CONFIG_HOME/withcache/shims.conf` (or `~/.config/...`) and
`/etc/withcache/shims.conf`, and this module reads it into the variables it
stands for:

    # the lab's cache (everything after a # is a comment)
    server = http://cache.lab:3000
    wget_server = https://cache.lab      # per tool, like WGETWITHCACHE_SERVER
    probe_timeout = 1.5                  # seconds, like WITHCACHE_PROBE_TIMEOUT

A line it can't use is skipped, with one warning on stderr under
WITHCACHE_DEBUG: a config file never fails a command. The native shim reads
the file the same way (shim/conf.zig); test_native_differential holds them
to it. Imported only when such a file exists.
"""

from __future__ import annotations

import os

from withcache import cachehost
from withcache.shim import probe

TYPE_CHECKING = False  # typing and collections.abc cost milliseconds at start-up
if TYPE_CHECKING:
    from collections.abc import Mapping

MAX_BYTES = 64 * 1024  # a longer file is not a shims.conf
VARIABLES = {
    "server": "WITHCACHE_SERVER",
    "curl_server": "CURLWITHCACHE_SERVER",
    "wget_server": "WGETWITHCACHE_SERVER",
    "probe_timeout": "WITHCACHE_PROBE_TIMEOUT",
}


def read(data: bytes) -> tuple[dict[str, str], list[str]]:
    """The variables a shims.conf sets, and a warning for each line it skips."""
    if len(data) > MAX_BYTES:
        return {}, [f"longer than {MAX_BYTES} bytes; not read"]
    found: dict[str, str] = {}
    warnings = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        line = raw.split(b"#", 1)[0].decode("utf-8", "surrogateescape").strip()
        if not line:
            continue
        key, equals, value = line.partition("=")
        key, value = key.strip(), value.strip()
        problem = _problem(key, value) if equals else "not 'key = value'"
        if problem:
            warnings.append(f"line {number}: {problem}; skipped")
        else:
            found[VARIABLES[key]] = value
    return found, warnings


def _problem(key: str, value: str) -> str:
    if key not in VARIABLES:
        return f"unknown key {key!r}"
    if key == "probe_timeout":
        if probe.seconds(value) is None:
            return f"bad probe_timeout {value!r}: give seconds, more than 0 and at most 600"
    elif value:  # empty: the shim is off for that tool, as with the variable
        try:
            cachehost.parse(value)
        except cachehost.BadCacheHost as err:
            return f"bad {key} {value!r}: {err}"
    return ""


def apply(tool: str, env: Mapping[str, str], path: str, data: bytes) -> dict[str, str]:
    """`env` with the file's variables added (a variable already set wins)."""
    found, warnings = read(data)
    if env.get("WITHCACHE_DEBUG", "0") not in ("", "0"):
        lines = [f"settings from {path}", *(f"{path}: {w}" for w in warnings)]
        text = "".join(f"withcache: {tool}: {line}\n" for line in lines)
        os.write(2, text.encode("utf-8", "replace"))
    return {**found, **env}
