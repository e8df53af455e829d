"""The curl/wget shims: find the URLs in a command, ask the cache, exec the tool.

Stdlib only. `entry` is what the console scripts run and imports nothing
until a cache is configured; `plan.plan()` is the whole decision as a pure
function (argv in, argv out); `curl` and `wget` hold each tool's options as
plain data; `scan` reads a command line with them; `probe` asks the
cache-host; `cli` is the `withcache-shims` command.
"""
