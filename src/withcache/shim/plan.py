"""The shim's whole decision, as one pure function: argv in, argv out.

`plan(tool, argv, env, probe)` reads the command with the tool's option
table, finds every URL it will fetch, asks `probe` about those that the
cache may serve, and returns the argv to exec: each hit's URL token replaced
by its serve URL on the cache-host, every other word unchanged. Whatever is
uncertain (an unknown option, a request body, a proxy in the way, a curl
glob) leaves the URL, or the whole command, as written. `probe` is the only
way out to the network, so tests and a native port's differential test can
drive this with a table of answers.
"""

from __future__ import annotations

import binascii
import os

from withcache import cachehost, keys
from withcache.record import Record
from withcache.shim import curl, wget
from withcache.shim.probe import HIT, Answer, Request, Trust
from withcache.shim.scan import ARG, Token, Unreadable, scan
from withcache.shim.tool import Tool

TYPE_CHECKING = False  # typing and collections.abc cost milliseconds at start-up
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    Probe = Callable[[cachehost.CacheHost, list[Request]], list[Answer]]

TOOLS = {"curl": curl.TOOL, "wget": wget.TOOL}

_OFF = ("off", "no", "0", "false")
_GLOB_CHARS = frozenset("[]{}")


class Plan(Record):
    argv: list[str]  # what to exec, without argv[0]
    notes: list[str]  # one line per URL (or one for the command) for WITHCACHE_DEBUG
    # A one-URL hit runs as a child with `fail_switch` (if any) before argv;
    # after one of the `fallback` exit statuses the command runs again as
    # written: the cache failed before it delivered anything that can't be
    # taken back. Empty: exec argv and be done.
    fallback: tuple[int, ...] = ()
    fail_switch: tuple[str, ...] = ()


def server_setting(tool: Tool, env: Mapping[str, str]) -> str:
    """The cache-host setting for this tool; a set per-tool variable wins, even empty."""
    if tool.server_env in env:
        return env[tool.server_env].strip()
    return env.get("WITHCACHE_SERVER", "").strip()


def plan(tool_name: str, argv: Sequence[str], env: Mapping[str, str], probe: Probe) -> Plan:
    """The argv to exec for `tool_name argv...`, and why, given the cache's answers."""
    tool = TOOLS[tool_name]
    args = list(argv)
    setting = server_setting(tool, env)
    if not setting:
        return Plan(args, [f"passed through: {tool.server_env} and WITHCACHE_SERVER unset"])
    try:
        server = cachehost.parse(setting)
    except cachehost.BadCacheHost as err:
        return Plan(args, [f"passed through: bad cache-host {setting!r}: {err}"])
    try:
        tokens = scan(tool.table, args, "POSIXLY_CORRECT" in env)
        command = _read(tool, tokens)
    except Unreadable as err:
        return Plan(args, [f"passed through: {err}"])
    if not command.urls:
        return Plan(args, ["passed through: no URL on the command line"])
    blockers = command.blockers(tool, server)
    notes: list[str] = []
    wanted: dict[int, Request] = {}
    for position, (index, url, op) in enumerate(command.urls):
        reason = (
            _url_reason(tool, url, index, op)
            or blockers
            or op.protocol_reason(tool, server.scheme, url)
            or op.proxy_reason(tool, server, env)
        )
        if reason:
            notes.append(f"passed through {url} ({reason})")
            continue
        wanted[position] = Request(
            url, server_path(server, url), op.authorization(tool), op.trust(tool, env), op.family
        )
        notes.append("")  # filled in from the answer below
    answers = _ask(probe, server, list(wanted.values()))
    for position, answer in zip(wanted, answers, strict=True):
        index, url, _ = command.urls[position]
        if answer.state == HIT:
            args[index] = server.base + keys.serve_path(url)
            notes[position] = f"hit {url} -> {args[index]}"
        else:
            detail = f" ({answer.detail})" if answer.detail else ""
            notes[position] = f"{answer.state} {url}{detail}"
    one_hit = len(command.urls) == len(command.ops) == 1 and [a.state for a in answers] == [HIT]
    if not one_hit or command.fail is False or any(command.unsupervised.values()):
        return Plan(args, notes)
    fail_switch = ("--" + tool.fail_option,) if tool.fail_option and command.fail is None else ()
    return Plan(args, notes, _fallback(tool, command), fail_switch)


def _fallback(tool: Tool, command: _Command) -> tuple[int, ...]:
    """The exit statuses after which a one-URL hit runs again as written (see
    Tool.fallback_statuses): more when its body goes to a file written afresh."""
    named = command.outputs or any(command.remote_name.values())
    if named and "-" not in command.outputs and not any(command.keep.values()):
        return tool.fallback_statuses + tool.file_fallback_statuses
    return tool.fallback_statuses


def server_path(server: cachehost.CacheHost, url: str) -> str:
    """Path and query that serve `url` on this cache-host (prefix included)."""
    return server.prefix + keys.serve_path(url)


def _ask(probe: Probe, server: cachehost.CacheHost, requests: list[Request]) -> list[Answer]:
    """Probe each distinct request once, in one call (the probe runs them concurrently)."""
    if not requests:
        return []
    distinct = list(dict.fromkeys(requests))
    answers = probe(server, distinct)
    by_request = dict(zip(distinct, answers, strict=True))
    return [by_request[request] for request in requests]


def _url_reason(tool: Tool, url: str, index: int, op: _Operation) -> str:
    """Why this URL can't be served from the cache whatever the cache holds ('' if it can)."""
    lowered = url[:8].lower()
    if not (lowered.startswith("http://") or lowered.startswith("https://")):
        return "not an http(s) URL"
    if index < 0:
        return "shares a word with its option"
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    authority = url.split("://", 1)[1]
    for end in "/?#":
        authority = authority.split(end, 1)[0]
    if "@" in authority:
        return "credentials in the URL"
    if tool.globoff_option and not op.globoff and not _GLOB_CHARS.isdisjoint(url):
        return "a curl glob; add -g to fetch it literally and cache it"
    return ""


def _enabled(token: Token) -> bool:
    """Whether a boolean option turns its setting on (wget also takes =on/=off)."""
    if token.negated:
        return False
    return token.value is None or token.value.strip().lower() not in _OFF


class _Operation:
    """What one curl operation (options up to --next) or a wget command asks for."""

    def __init__(self) -> None:
        self.globoff = False
        self.header_authorization: list[str] = []
        self.user_password: str | None = None
        self.users: set[str] = set()
        self.passwords: set[str] = set()
        self.preemptive: bool | None = None
        self.challenge_first = False
        self.family = 0
        self.verify = True
        self.ca_file: str | None = None
        self.ca_dir: str | None = None
        self.proxy: str | None = None
        self.env_proxies = True
        self.no_proxy: str | None = None
        self.protocols: dict[str, str | None] = {}  # limit option -> its list (None: off)

    def authorization(self, tool: Tool) -> str | None:
        """The Authorization the tool sends on its first request, if certain; else None."""
        if self.header_authorization:
            if len(set(self.header_authorization)) > 1:
                return None
            value = self.header_authorization[-1]
            return value if value and "\r" not in value and "\n" not in value else None
        preemptive = tool.preemptive_default if self.preemptive is None else self.preemptive
        if not preemptive or self.challenge_first:
            return None
        if self.user_password is not None and ":" in self.user_password:
            credentials = self.user_password
        elif len(self.users) == 1 and len(self.passwords) == 1:
            credentials = f"{next(iter(self.users))}:{next(iter(self.passwords))}"
        else:
            return None
        encoded = binascii.b2a_base64(os.fsencode(credentials), newline=False)
        return "Basic " + encoded.decode("ascii")

    def trust(self, tool: Tool, env: Mapping[str, str]) -> Trust:
        """The CAs the tool will check the cache-host against (None, None: the system's)."""
        if self.ca_file or self.ca_dir:
            return Trust(self.verify, self.ca_file, self.ca_dir)
        for file_name, dir_name in tool.ca_env:
            ca_file, ca_dir = env.get(file_name) or None, env.get(dir_name) or None
            if ca_file or ca_dir:
                return Trust(self.verify, ca_file, ca_dir)
        return Trust(self.verify)

    def protocol_reason(self, tool: Tool, server_scheme: str, url: str) -> str:
        """Why a scheme limit (curl --proto, wget --https-only) keeps this URL
        from the cache ('' if none does)."""
        url_scheme = "https" if url[:6].lower() == "https:" else "http"
        for name, value in self.protocols.items():
            if value is None:
                continue
            allowed = allowed_schemes(value)
            if allowed is None:
                return f"--{name} {value!r} is not a protocol list"
            if server_scheme not in allowed:
                return f"--{name} does not allow {server_scheme}, the cache-host's scheme"
            if name in tool.url_protocol_options and url_scheme not in allowed:
                return f"--{name} does not allow {url_scheme}, the URL's scheme"
        return ""

    def proxy_reason(self, tool: Tool, server: cachehost.CacheHost, env: Mapping[str, str]) -> str:
        """Why the tool would reach the cache-host through a proxy ('' if it won't)."""
        if self.proxy:
            return "a proxy is set on the command line"
        if not self.env_proxies:
            return ""
        proxy = next((env[n] for n in tool.proxy_env[server.scheme] if env.get(n)), "")
        if not proxy:
            return ""
        no_proxy = self.no_proxy
        if no_proxy is None:
            no_proxy = next((env[n] for n in tool.no_proxy_env if n in env), "")
        if _bypasses(no_proxy, server.host):
            return ""
        return "a proxy applies to the cache-host; add it to no_proxy"


def allowed_schemes(protocols: str) -> set[str] | None:
    """Which of http and https a curl --proto list leaves allowed, as curl 7.85+
    reads it (tool_paramhlp.c, proto2num): comma-separated names, each after
    modifiers `+` (allow, the default), `-` (deny) or `=` (only this); `all`
    stands for every protocol; an unknown name is ignored, except that `=`
    before one allows nothing. None when curl refuses the list outright.
    """
    allowed = {"http", "https"}
    for token in protocols.split(","):
        if not token:
            continue
        action = "+"
        while token and not (token[0].isascii() and token[0].isalnum()):
            if token[0] not in "+-=":
                return None
            action, token = token[0], token[1:]
        if not token:
            return None
        name = token.lower() if token.isascii() else token
        named = {"http", "https"} if name == "all" else {name} & {"http", "https"}
        if action == "-":
            allowed -= named
        elif action == "=":
            allowed = named
        else:
            allowed |= named
    return allowed


def _bypasses(no_proxy: str, host: str) -> bool:
    """Whether a no_proxy list exempts `host` (exact name, domain suffix or '*')."""
    host = host.lower().rstrip(".")
    for entry in no_proxy.split(","):
        entry = entry.strip().lower().lstrip(".").rstrip(".")
        if entry.startswith("[") and entry.endswith("]"):
            entry = entry[1:-1]
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return True
    return False


class _Command:
    def __init__(self) -> None:
        self.ops = [_Operation()]
        self.urls: list[tuple[int, str, _Operation]] = []
        self.switches: dict[str, bool] = {}  # pass-through options: in effect or not
        self.methods: list[str] = []
        # What decides the fallback (Tool.fallback_statuses): the fail switch as
        # given (None: not given), options in effect or not, the output files.
        self.fail: bool | None = None
        self.unsupervised: dict[str, bool] = {}
        self.outputs: list[str] = []
        self.remote_name: dict[str, bool] = {}
        self.keep: dict[str, bool] = {}

    def blockers(self, tool: Tool, server: cachehost.CacheHost) -> str:
        """Why the whole command passes through ('' if nothing does)."""
        reasons = dict(tool.pass_through)
        if server.scheme == "https":
            reasons.update(tool.https_pass_through)
        for name, on in self.switches.items():
            if on and name in reasons:
                return f"--{name} {reasons[name]}"
        for method in self.methods:
            if method not in ("GET", "HEAD"):
                return f"uses the HTTP method {method!r}"
        return ""


def _read(tool: Tool, tokens: list[Token]) -> _Command:
    command = _Command()
    for token in tokens:
        if token.name == tool.execute_option and token.value is not None:
            token = _execute(tool, token)
        _apply(tool, command, token)
    return command


def _execute(tool: Tool, token: Token) -> Token:
    """wget -e 'command = value' as the long option it stands for."""
    assert token.value is not None
    command, equals, value = token.value.partition("=")
    key = command.strip().lower().replace("-", "").replace("_", "")
    if not equals or not key:
        raise Unreadable(f"-e {token.value!r} is not 'command = value'")
    if key in tool.execute_ignored:
        return Token(token.index, "", None, -1)
    name = tool.execute_aliases.get(key)
    if name is None:
        names = {n.replace("-", ""): n for n in tool.table.long}
        name = names.get(key)
    if name is None:
        raise Unreadable(f"-e {command.strip()}: not a command the shim reads")
    return Token(token.index, name, value.strip(), -1)


def _apply(tool: Tool, command: _Command, token: Token) -> None:
    op = command.ops[-1]
    name = token.name
    if not name:  # an operand: a URL to the tool (or nothing, from an ignored -e)
        if token.value is not None:
            command.urls.append((token.value_index, token.value, op))
        return
    is_arg = tool.table.long.get(name) == ARG
    value = token.value if is_arg else None
    on = is_arg or _enabled(token)
    if name in tool.url_options and value is not None:
        command.urls.append((token.value_index, value, op))
    elif name == tool.next_option:
        command.ops.append(_Operation())
    elif name in tool.pass_through or name in tool.https_pass_through:
        command.switches[name] = on
    elif name == tool.fail_option:
        command.fail = on
    elif name in tool.unsupervised:
        command.unsupervised[name] = on
    elif name in tool.output_options and value is not None:
        command.outputs.append(value)
    elif name in tool.remote_name_options:
        command.remote_name[name] = on
    elif name in tool.keep_options:
        command.keep[name] = on
    elif name in tool.method_options and value is not None:
        command.methods.append(value)
    elif name == tool.globoff_option:
        op.globoff = on
    elif name in tool.header_options and value is not None:
        _header(op, value)
    elif name in tool.user_password_options:
        op.user_password = value
    elif name in tool.user_options and value is not None:
        op.users.add(value)
    elif name in tool.password_options and value is not None:
        op.passwords.add(value)
    elif name in tool.preemptive:
        if tool.preemptive[name]:
            op.preemptive = on
        elif on:
            op.challenge_first = True
    elif name in tool.family_options:
        op.family = tool.family_options[name] if on else 0
    elif name in tool.ca_file_options:
        op.ca_file = value
    elif name in tool.ca_dir_options:
        op.ca_dir = value
    elif name in tool.no_verify:
        op.verify = on != tool.no_verify[name]
    elif name in tool.proxy_options:
        if value:
            op.proxy = value
        elif tool.proxy_options[name]:
            op.env_proxies = False
    elif name == tool.proxy_switch:
        op.env_proxies = on
    elif name == tool.no_proxy_option:
        op.no_proxy = value
    elif name in tool.protocol_options:
        op.protocols[name] = (value if is_arg else tool.protocol_options[name]) if on else None


def _header(op: _Operation, header: str) -> None:
    if not header.strip():
        op.header_authorization.clear()  # wget --header= clears the headers given before
        return
    name, colon, value = header.partition(":")
    if not colon and name.rstrip().endswith(";"):
        name, value = name.rstrip()[:-1], ""  # curl's "Name;" sends the header empty
    elif not colon:
        return
    if name.strip().lower() == "authorization":
        op.header_authorization.append(value.strip())
