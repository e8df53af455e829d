"""The shape of what the shim knows about one tool, as plain data.

`curl.TOOL` and `wget.TOOL` fill it in; `plan` reads it. Everything is
names and strings so that a native port can carry the same tables (and a
test can compare them).
"""

from __future__ import annotations

from withcache.record import Record
from withcache.shim.scan import Table


class Tool(Record):
    name: str  # "curl" or "wget": the real tool's file name
    table: Table  # which options take an argument
    server_env: str  # per-tool override of WITHCACHE_SERVER
    real_env: str  # pins the real tool's path
    # Options whose argument is itself a URL to fetch (curl --url).
    url_options: frozenset[str]
    # Options that, when in effect, make the command more than a plain GET of
    # each URL (a body, another method, headers in the output, ...): the whole
    # command then runs as written. Option -> the reason shown in debug output.
    pass_through: dict[str, str]
    https_pass_through: dict[str, str]  # the same, only when the cache-host is https
    # Options limiting the schemes the tool may use, in curl's --proto grammar:
    # option -> the list a boolean option stands for, or "" when its argument is
    # the list. A URL is served only if each limit in effect allows the
    # cache-host's scheme; `url_protocol_options` also limit the URL as written
    # (the tool refuses it), so its own scheme must be allowed too.
    protocol_options: dict[str, str]
    url_protocol_options: frozenset[str]
    # Options naming the HTTP method: only GET and HEAD can be served by a cache.
    method_options: frozenset[str]
    next_option: str | None  # starts a new operation with fresh options (curl --next)
    globoff_option: str | None  # turns URL globbing off; None: the tool never globs http
    header_options: frozenset[str]  # "Name: value" request headers
    # Basic credentials: an option holding "user:password" (curl -u) or separate
    # user and password options (wget); `preemptive` says which options make
    # the tool send them before any challenge (the probe must never send more
    # credentials than the tool will).
    user_password_options: frozenset[str]
    user_options: frozenset[str]
    password_options: frozenset[str]
    preemptive: dict[str, bool]
    preemptive_default: bool
    family_options: dict[str, int]  # option -> the only IP version the tool will use
    # TLS trust, so that a probe of an https cache-host trusts what the tool will.
    ca_file_options: frozenset[str]
    ca_dir_options: frozenset[str]
    no_verify: dict[str, bool]  # option -> the on/off state that turns verification off
    # CA variables the tool reads when no option names a CA: (file, directory)
    # pairs, the first pair with either set wins; none: the system store only.
    ca_env: tuple[tuple[str, str], ...]
    # Proxies: the rewritten URL must reach the cache-host the way the probe did.
    # Options naming a proxy: a non-empty value routes through it; an empty one
    # turns the proxy variables off when the value here is True (curl -x "").
    proxy_options: dict[str, bool]
    proxy_switch: str | None  # boolean option: off ignores proxy variables (wget --no-proxy)
    no_proxy_option: str | None  # replaces the no_proxy variable (curl --noproxy)
    proxy_env: dict[str, tuple[str, ...]]  # cache-host scheme -> variables the tool reads
    no_proxy_env: tuple[str, ...]
    # wget -e 'command = value': commands map onto long options by name (case,
    # '-' and '_' ignored); these are the ones that don't, and unknown ones
    # pass the command through.
    execute_option: str | None
    execute_aliases: dict[str, str]  # wgetrc command -> long option
    execute_ignored: frozenset[str]  # commands that can't change what is fetched or how
    # A one-URL hit runs as a child, and when the cache fails before a byte of
    # the body is out, the command runs again as written (the real tool against
    # the origin). `fallback_statuses`: the tool's exit statuses that say so;
    # `fail_option`: a switch the shim adds so that an HTTP error from the cache
    # is one of them (curl --fail), unless the user set it or turned it off;
    # `unsupervised`: options that would put something of the failed try where
    # the second run can't take it back (stdout, a saved error body): with one
    # in effect the hit is exec'd as before. Option -> why.
    fallback_statuses: tuple[int, ...]
    fail_option: str | None
    unsupervised: dict[str, str]
    # When the body goes to a file the second run writes afresh, a failure
    # midway can be taken back too: `file_fallback_statuses` then count as well.
    # The file is named by an `output_options` argument (not "-": stdout) or
    # after the URL (`remote_name_options`), and no `keep_options` (resume, no
    # clobber) makes the second run keep what the first one wrote.
    file_fallback_statuses: tuple[int, ...]
    output_options: frozenset[str]
    remote_name_options: frozenset[str]
    keep_options: frozenset[str]
