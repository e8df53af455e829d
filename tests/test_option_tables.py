"""The shims' option tables against the installed curl and wget.

First against their help (`curl --help all`, `wget --help`), then against
the tools' own parsers: every listed option is known to the tool and takes
an argument exactly when the table says so. A new curl or wget that adds,
drops or changes an option fails here instead of being misread silently.
"""

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from withcache.shim import curl, wget
from withcache.shim.scan import ARG, BOOL, FLAG, OPTIONAL

# Accepted by curl 7.88 but not in its help: kept so abbreviations resolve as curl's do.
CURL_HIDDEN = {"ftp-ssl", "ftp-ssl-reqd", "krb4", "test-event"}
# `--help <category>` is shown with an argument, but curl treats it as a switch
# that may eat a category; the shim passes any command with --help through anyway.
CURL_HELP_SAYS_ARG = {"help"}
# wget's help shows these two without their (required) argument, and these
# three with one that getopt takes only after '=' (`--backups 3` makes 3 a URL).
WGET_HELP_OMITS_ARG = {"max-redirect", "hsts-file"}
WGET_HELP_SHOWS_OPTIONAL = {"backups", "restrict-file-names", "report-speed"}


def run(*argv, cwd):
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL, cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "LC_ALL": "C"},
    )  # fmt: skip
    return result.stdout + result.stderr


def run_all(commands, cwd):
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda argv: run(*argv, cwd=cwd), commands))


def curl_help(cwd):
    """{name: (short letter or None, takes an argument)} from `curl --help all`."""
    found = {}
    pattern = re.compile(r"^ {1,5}(?:-(\S), )?--([a-z0-9.-]+)( [<\[])?")
    for line in run("curl", "--help", "all", cwd=cwd).splitlines():
        match = pattern.match(line)
        if match:
            found[match[2]] = (match[1], match[3] is not None)
    return found


def test_curl_table_matches_curl_help(tmp_path):
    table = curl.TABLE.long
    help_options = curl_help(tmp_path)
    assert len(help_options) > 200
    named = {}
    for name, (letter, takes) in help_options.items():
        # Help shows booleans that default on as --no-<name>; curl matches <name>.
        key = name[3:] if name.startswith("no-") and table.get(name[3:]) == BOOL else name
        named[key] = (letter, takes)
    assert set(named) == set(table) - CURL_HIDDEN
    wrong = {n for n, (_, takes) in named.items() if takes != (table[n] == ARG)}
    assert wrong == CURL_HELP_SAYS_ARG
    shorts = {letter: n for n, (letter, _) in named.items() if letter}
    assert shorts == curl.TABLE.short


def test_curl_parser_agrees_with_the_table(tmp_path):
    names = sorted(curl.TABLE.long)
    bare = run_all([["curl", "-q", f"--{n}"] for n in names], tmp_path)
    for name, out in zip(names, bare, strict=True):
        assert "is unknown" not in out and "ambiguous" not in out, name
        assert ("requires parameter" in out) == (curl.TABLE.long[name] == ARG), (name, out)
    switches = [n for n in names if curl.TABLE.long[n] != ARG]
    negated = run_all([["curl", "-q", f"--no-{n}"] for n in switches], tmp_path)
    for name, out in zip(switches, negated, strict=True):
        assert ("isn't a boolean" not in out) == (curl.TABLE.long[name] == BOOL), (name, out)


def test_curl_short_letters_agree_with_the_table(tmp_path):
    letters = [chr(c) for c in range(0x21, 0x7F) if chr(c) not in "-*$"]
    outs = run_all([["curl", "-q", f"-{c}"] for c in letters], tmp_path)
    for letter, out in zip(letters, outs, strict=True):
        name = curl.TABLE.short.get(letter)
        assert ("is unknown" in out) == (name is None), (letter, out)
        if name:
            assert ("requires parameter" in out) == (curl.TABLE.long[name] == ARG), letter


def wget_help(cwd):
    """{name: (short letters or None, takes an argument)} from `wget --help`."""
    found = {}
    pattern = re.compile(r"^ {2}(?:-(\w+), +)? *--([a-z0-9-]+)(=)?")
    for line in run("wget", "--help", cwd=cwd).splitlines():
        match = pattern.match(line)
        if match:
            found[match[2]] = (match[1], match[3] is not None)
    return found


def test_wget_table_matches_wget_help(tmp_path):
    table = wget.TABLE.long
    help_options = wget_help(tmp_path)
    assert len(help_options) > 150
    assert set(help_options) <= set(table)
    wrong = {n for n, (_, takes) in help_options.items() if takes != (table[n] == ARG)}
    assert wrong == WGET_HELP_OMITS_ARG | WGET_HELP_SHOWS_OPTIONAL
    assert {table[n] for n in WGET_HELP_SHOWS_OPTIONAL} == {OPTIONAL}
    for name, (letters, _) in help_options.items():
        if letters and len(letters) == 1:
            assert wget.TABLE.short[letters] == name
        elif letters:  # -nv, -nc, -nd, -nH, -np: -n with an argument
            assert letters[0] == "n" and wget.TABLE.short["n"] == "no"


def test_wget_table_lists_every_long_name_getopt_knows(tmp_path):
    # getopt answers an ambiguous prefix with every option it could mean.
    heads = "abcdefghijklmnopqrstuvwxyz0123456789"
    known = set()
    for head, out in zip(
        heads, run_all([["wget", f"--{h}"] for h in heads], tmp_path), strict=True
    ):
        listed = re.findall(r"'--([a-z0-9_-]+)'", out.split("possibilities:", 1)[-1])
        if "possibilities:" in out:
            known.update(listed)
        elif "unrecognized" not in out:
            known.update(n for n in wget.TABLE.long if n.startswith(head))  # one match
    assert known == set(wget.TABLE.long)


def test_wget_parser_agrees_with_the_table(tmp_path):
    names = sorted(wget.TABLE.long)
    bare = run_all([["wget", f"--{n}"] for n in names], tmp_path)
    valued = run_all([["wget", f"--{n}=on"] for n in names], tmp_path)
    for name, out, out_valued in zip(names, bare, valued, strict=True):
        kind = wget.TABLE.long[name]
        assert "unrecognized" not in out and "ambiguous" not in out, name
        assert ("requires an argument" in out) == (kind == ARG), (name, out)
        if kind != ARG:
            refused = "doesn't allow an argument" in out_valued
            assert refused == (kind == FLAG), (name, out_valued)
            assert kind in (FLAG, OPTIONAL)


@pytest.mark.parametrize("tool", [curl.TOOL, wget.TOOL])
def test_semantic_option_names_are_in_the_table(tool):
    named = (
        set(tool.pass_through) | set(tool.https_pass_through) | tool.url_options
        | tool.method_options | tool.header_options | tool.user_password_options
        | tool.user_options | tool.password_options | set(tool.preemptive)
        | set(tool.family_options) | tool.ca_file_options | tool.ca_dir_options
        | set(tool.no_verify) | set(tool.proxy_options) | set(tool.execute_aliases.values())
        | {tool.next_option, tool.globoff_option, tool.proxy_switch, tool.no_proxy_option}
        | {tool.execute_option}
    ) - {None}  # fmt: skip
    assert named <= set(tool.table.long)
    assert set(tool.table.short.values()) <= set(tool.table.long)
