"""`withcache-shims`: set the shims up, and say what is in effect.

    eval "$(withcache-shims env http://cache:3000)"   # this shell only
    withcache-shims setup user --server URL | sh      # the lines for one set-up
    withcache-shims install --user                    # ~/.withcache/bin/{curl,wget}
    withcache-shims status                            # which curl/wget, does the cache answer
    withcache-shims tables                            # the option tables as JSON

The five set-ups are the seed's: call the shims by name; shadow curl/wget in
this shell; for your user; for one project (direnv); for the whole machine.
Errors are one line on stderr and exit status 2; `setup system` from an
installation other users can't run exits 1 and says how to install for all.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import stat
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NoReturn

import withcache
from withcache import cachehost
from withcache.shim import curl, entry, wget

PROG = "withcache-shims"
TOOLS = (curl.TOOL, wget.TOOL)
USER_BIN = "~/.withcache/bin"
SETUPS = ("by-name", "shell", "user", "direnv", "system")
# Printed where no cache-host was given, so the lines still show their shape.
PLACEHOLDER = "http://CACHE-HOST:3000"
# The lines `setup user` writes into each shell's start-up file; a second run
# replaces them rather than adding a second copy.
RC_BEGIN = "# >>> withcache >>>"
RC_END = "# <<< withcache <<<"


class UsageError(Exception):
    """A bad argument or an unusable setting; the message is shown as is."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {PROG} --help)")


def shim_path(tool: str) -> Path:
    """Where this installation's `<tool>withcache` script is."""
    name = f"{tool}withcache"
    here = Path(os.path.realpath(sys.argv[0])).parent / name
    if here.is_file():
        return here
    found = shutil.which(name)
    if found is None:
        raise UsageError(f"{name} is not installed next to withcache-shims nor on PATH")
    return Path(found)


def _server(given: str | None, placeholder: bool = False) -> str:
    server = given or os.environ.get("WITHCACHE_SERVER", "").strip()
    if not server and placeholder:
        return PLACEHOLDER
    if not server:
        raise UsageError("give the cache-host URL (or set WITHCACHE_SERVER)")
    try:
        return cachehost.parse(server).base
    except cachehost.BadCacheHost as err:
        raise UsageError(f"bad cache-host {server!r}: {err}") from None


def _links(folder: str) -> list[str]:
    lines = [f'mkdir -p "{folder}"']
    for tool in TOOLS:
        lines.append(f'ln -sf {shlex.quote(str(shim_path(tool.name)))} "{folder}/{tool.name}"')
    return lines


def snippet(setup: str, server: str) -> str:
    """The shell lines for one of the five set-ups."""
    home_bin = "$HOME/.withcache/bin"
    export = f"export WITHCACHE_SERVER={shlex.quote(server)}"
    if setup == "by-name":
        return "\n".join(
            [
                "# 1. No shadowing: call the shims by name.",
                export,
                "# curlwithcache -fsSL https://vendor.example/cuda.run -o cuda.run",
                "# wgetwithcache https://vendor.example/rocm.tar.gz",
            ]
        )
    if setup == "shell":
        return "\n".join(
            [
                "# 2. This shell only: curl and wget are the shims until the shell exits.",
                *_links(home_bin),
                export,
                f'case ":$PATH:" in *":{home_bin}:"*) ;; *) export PATH="{home_bin}:$PATH" ;; esac',
                "hash -r",
            ]
        )
    if setup == "user":
        return "\n".join(
            [
                "# 3. Your user: every new bash and zsh of yours. Run again to change the",
                f"#    cache-host (the block is replaced); undo: delete the {RC_BEGIN} block.",
                *_links(home_bin),
                'for rc in "$HOME/.bashrc" "$HOME/.zshrc"; do',
                "  case $rc in",
                '    *zshrc) [ -e "$rc" ] || [ "${SHELL##*/}" = zsh ] || continue ;;',
                "  esac",
                '  touch "$rc"',
                f"  sed -i '/^{RC_BEGIN}/,/^{RC_END}/d' \"$rc\"",
                "  cat >> \"$rc\" <<'EOF'",
                f"{RC_BEGIN} (from withcache-shims setup user)",
                export,
                f'case ":$PATH:" in *":{home_bin}:"*) ;; *) export PATH="{home_bin}:$PATH" ;; esac',
                RC_END,
                "EOF",
                "done",
            ]
        )
    if setup == "direnv":
        return "\n".join(
            [
                "# 4. One project: put these two lines in its .envrc, then `direnv allow`",
                "#    (the links come from `withcache-shims install --user`).",
                export,
                "PATH_add ~/.withcache/bin",
            ]
        )
    heading = "# 5. The whole machine: every user, every shell, build tools too (run as root)."
    blocked = why_not_for_all_users()
    if blocked:
        return "\n".join([heading, *(f"# {line}" for line in for_all_users(blocked, server))])
    return "\n".join(
        [
            heading,
            *(
                f"ln -sf {shlex.quote(str(shim_path(t.name)))} /usr/local/bin/{t.name}"
                for t in TOOLS
            ),
            f"echo {shlex.quote(export)} > /etc/profile.d/withcache.sh",
        ]
    )


def closed_to_others(path: str, need: int) -> str | None:
    """Why a user other than the owner can't use `path` (None if anyone can):
    every folder above it must let others through, and the file itself must
    grant them `need` (stat.S_IROTH, S_IXOTH)."""
    real = Path(os.path.realpath(path))
    for folder in reversed(real.parents):
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            return f"{folder} is {stat.filemode(mode)}"
    mode = real.stat().st_mode
    if mode & need != need:
        return f"{real} is {stat.filemode(mode)}"
    return None


def _interpreter(script: Path) -> str | None:
    with open(script, "rb") as file:
        first = file.readline()
    return first[2:].split()[0].decode() if first.startswith(b"#!") and first[2:].split() else None


def why_not_for_all_users() -> str | None:
    """Why other users can't run this installation's shims (None if they can):
    the scripts, the Python they name and the withcache package must all be
    open to them."""
    package = Path(withcache.__file__).parent
    needed = [(package, stat.S_IROTH | stat.S_IXOTH)]
    for tool in TOOLS:
        script = shim_path(tool.name)
        needed.append((script, stat.S_IROTH | stat.S_IXOTH))
        python = _interpreter(script)
        if python:
            needed.append((Path(python), stat.S_IXOTH))
    for path, need in needed:
        why = closed_to_others(str(path), need)
        if why:
            return (
                f"{path} can't be run by other users ({why}): they would get the real tool, "
                "or exit 126"
            )
    return None


def for_all_users(why: str, server: str) -> list[str]:
    """How to install the shims for every user, when this installation can't be."""
    arch = os.uname().machine
    export = shlex.quote(f"export WITHCACHE_SERVER={shlex.quote(server)}")
    return [
        f"Not from this installation: {why}.",
        "Install withcache where every user can run it, with a Python they can run too,",
        "then run this again from there:",
        "  /usr/bin/python3 -m venv /opt/withcache",
        "  /opt/withcache/bin/pip install withcache-*.whl   # from `make dist`, or a checkout",
        f"  /opt/withcache/bin/withcache-shims setup system --server {shlex.quote(server)}",
        "Or use the native shim (no Python; `make dist` or `make shim` builds it):",
        f"  install -m 755 withcache-shim-{arch}-linux-musl /usr/local/bin/withcache-shim",
        "  ln -sf withcache-shim /usr/local/bin/curl && ln -sf withcache-shim /usr/local/bin/wget",
        f"  echo {export} > /etc/profile.d/withcache.sh",
    ]


def cmd_env(args: argparse.Namespace) -> int:
    print(snippet("shell", _server(args.server)))
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    server = _server(args.server, placeholder=True)
    if server == PLACEHOLDER:
        print(f"# No --server (nor WITHCACHE_SERVER): put your cache-host's URL for {server}.")
    print("\n\n".join(snippet(name, server) for name in ([args.setup] if args.setup else SETUPS)))
    blocked = why_not_for_all_users() if args.setup == "system" else None
    if blocked:
        print(f"{PROG}: {blocked}; the lines above say how to install for every user",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _folder(args: argparse.Namespace) -> Path:
    if args.dir:
        return Path(args.dir)
    if args.user:
        return Path(os.path.expanduser(USER_BIN))
    raise UsageError("say where: --user (~/.withcache/bin) or --dir DIR")


def cmd_install(args: argparse.Namespace) -> int:
    folder = _folder(args)
    folder.mkdir(parents=True, exist_ok=True)
    # A folder every user searches (/usr/local/bin): links there must work for them too.
    public = not args.user and closed_to_others(str(folder), stat.S_IXOTH) is None
    blocked = why_not_for_all_users() if public else None
    if blocked:
        raise UsageError(
            f"not linking into {folder}: {blocked}; `{PROG} setup system` says how to install "
            "for every user"
        )
    for tool in TOOLS:
        link, target = folder / tool.name, shim_path(tool.name)
        if link.exists() and not link.is_symlink():
            raise UsageError(f"{link} exists and is not a link; not replacing it")
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target)
        print(f"{link} -> {target}")
    if args.user and str(folder) not in os.environ.get("PATH", "").split(os.pathsep):
        print(f'now put it first on PATH: export PATH="{folder}:$PATH"; hash -r')
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    folder = _folder(args)
    for tool in TOOLS:
        link = folder / tool.name
        if link.is_symlink() and os.path.basename(os.path.realpath(link)) in entry.SHIM_NAMES:
            link.unlink()
            print(f"removed {link}")
    return 0


def _health(base: str, timeout: float = 2.0) -> str:
    """'answers …' or 'does not answer: …' for the cache-host's /healthz."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    started = time.monotonic()
    try:
        with opener.open(f"{base}/healthz", timeout=timeout) as response:
            body = response.read(64 * 1024)
    except urllib.error.HTTPError as err:
        return f"does not answer: HTTP {err.code}"
    except (OSError, ValueError) as err:
        return f"does not answer: {getattr(err, 'reason', None) or err}"
    took = (time.monotonic() - started) * 1000
    try:
        health = json.loads(body)
        summary = f"{health['status']}, {health['mode']} mode, {health['artifacts']} artifacts"
    except (ValueError, KeyError, TypeError):
        summary = "not a withcache /healthz"
    return f"answers ({summary}, {took:.0f} ms)"


def cmd_status(args: argparse.Namespace) -> int:
    path = os.environ.get("PATH", os.defpath)
    failed = False
    for tool in TOOLS:
        in_effect = shutil.which(tool.name, path=path)
        if in_effect is None:
            print(f"{tool.name}: not on PATH")
        elif os.path.basename(os.path.realpath(in_effect)) in entry.SHIM_NAMES:
            real = entry.find_real_tool(tool.name, os.environ.get(tool.real_env, ""), path)
            print(f"{tool.name}: {in_effect} is the withcache shim; it runs {real or 'NOTHING'}")
            failed |= real is None
        else:
            print(f"{tool.name}: {in_effect} (the real {tool.name}; not shimmed)")
        setting = (
            os.environ[tool.server_env]
            if tool.server_env in os.environ
            else os.environ.get("WITHCACHE_SERVER", "")
        ).strip()
        source = tool.server_env if tool.server_env in os.environ else "WITHCACHE_SERVER"
        if not setting:
            print(f"  cache-host: none ({source} unset): the shim passes everything through")
            continue
        try:
            base = cachehost.parse(setting).base
        except cachehost.BadCacheHost as err:
            print(f"  cache-host: {setting!r} from {source} is unusable: {err}")
            failed = True
            continue
        health = _health(base)
        failed |= health.startswith("does not")
        print(f"  cache-host: {base} (from {source}) {health}")
    return 1 if failed else 0


def tables() -> dict[str, dict[str, object]]:
    """Both tools' tables and semantics as JSON-ready data (for a native port)."""

    def plain(value: object) -> object:
        if isinstance(value, frozenset | set):
            return sorted(value)
        if isinstance(value, tuple):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in sorted(value.items())}
        return value

    out: dict[str, dict[str, object]] = {}
    for tool in TOOLS:
        fields = dict(zip(tool._fields, tool, strict=True))
        table = fields.pop("table")
        fields["table"] = {"style": table.style, "long": table.long, "short": table.short}
        out[tool.name] = {key: plain(value) for key, value in fields.items()}
    return out


def cmd_tables(args: argparse.Namespace) -> int:
    print(json.dumps(tables(), indent=1, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Set up the withcache curl/wget shims.")
    parser.add_argument("--version", action="version", version=f"{PROG} {withcache.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    env = sub.add_parser("env", help='shell lines for this shell: eval "$(withcache-shims env)"')
    env.add_argument("server", nargs="?", help="cache-host URL (default: $WITHCACHE_SERVER)")
    env.set_defaults(run=cmd_env)
    setup = sub.add_parser("setup", help="the shell lines for one set-up, or all five")
    setup.add_argument("setup", nargs="?", choices=SETUPS)
    setup.add_argument("--server", help="cache-host URL (default: $WITHCACHE_SERVER)")
    setup.set_defaults(run=cmd_setup)
    for name, run, doing in (
        ("install", cmd_install, "make curl/wget links to the shims"),
        ("uninstall", cmd_uninstall, "remove those links"),
    ):
        command = sub.add_parser(name, help=doing)
        where = command.add_mutually_exclusive_group()
        where.add_argument("--user", action="store_true", help=f"in {USER_BIN}")
        where.add_argument("--dir", help="in this folder (e.g. /usr/local/bin)")
        command.set_defaults(run=run)
    status = sub.add_parser("status", help="which curl/wget is in effect; does the cache answer")
    status.set_defaults(run=cmd_status)
    dump = sub.add_parser("tables", help="the option tables as JSON (for a native port)")
    dump.set_defaults(run=cmd_tables)
    return parser


def main(argv: list[str] | None = None) -> None:
    try:
        args = build_parser().parse_args(argv)
        code = args.run(args)
    except UsageError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        code = 2
    except OSError as err:
        print(f"{PROG}: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        code = 2
    raise SystemExit(code)
