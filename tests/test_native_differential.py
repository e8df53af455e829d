"""The native shim against the Python shim: the same decisions on one corpus.

Both shims run every command line of the corpus (hand-written edge cases and
lines generated from the option tables) against the same real cache-host and
origin, with REAL_CURL/REAL_WGET set to a recorder that writes the argv it is
given and then runs the real tool. For every line the two must exec the same
argv, exit with the same code, leave the same files and write the same
WITHCACHE_DEBUG lines (only the errno wording of an unreachable cache may
differ: Python's and musl's texts aren't the same).

The cache-hosts run --curate once their artifacts are stored, so no answer
can change between the two runs of a line.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import BIN, TEST_FLAGS, CacheHost, shim_env

from withcache.shim import curl, wget

BODY = bytes(range(256)) * 40
DATE = re.compile(rb"(?im)^date: [^\r\n]*")

pytestmark = pytest.mark.slow  # builds the native shim, runs both on ~300 lines


@dataclass(frozen=True)
class Case:
    tool: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()  # on top of WITHCACHE_SERVER={HTTP}
    files: tuple[tuple[str, bytes], ...] = ()  # put in the working folder first
    # A shims.conf (placeholders filled in) in $XDG_CONFIG_HOME, or in ~/.config
    # with conf_in="home"; WITHCACHE_SERVER is then unset unless `env` sets it.
    conf: bytes | None = None
    conf_in: str = "xdg"


def case(
    tool: str,
    *args: str,
    env: dict[str, str] | None = None,
    conf: bytes | None = None,
    conf_in: str = "xdg",
    **files: bytes,
) -> Case:
    return Case(tool, args, tuple((env or {}).items()), tuple(files.items()), conf, conf_in)


SERVER_CONF = b"server = {HTTP}\n"
TLS_CACHE = {"WITHCACHE_SERVER": "{HTTPS}"}


# Placeholders, filled in from the `world` fixture: {H1} {H2} cached, {Q1} cached
# with a query, {CD} cached with a Content-Disposition, {M1} {M2} at the origin
# only, {NF} nowhere, {G} a curl glob over two files, {LIT} a cached URL with
# brackets, {AUTH} cached for "Bearer t0k" only, {TLS} a cached https origin,
# {DEAD} a refused port, {HTTP} {HTTPS} the cache-hosts, {SILENT} a cache-host
# that never answers, {CA} the test CA, {O} the origin's http://host:port.
C, W = "curl", "wget"
HAND_WRITTEN = [
    # URL-looking option arguments are never taken for URLs.
    case(C, "-fsS", "-O", "{H1}"),
    case(C, "-e", "{H2}", "-sSo", "out", "{H1}"),
    case(C, "--referer", "{H2}", "-sS", "-o", "out", "{H1}"),
    case(C, "-H", "X-Mirror: {H2}", "-sSO", "{H1}"),
    case(C, "-x", "", "-sSO", "{H1}"),
    case(C, "-A", "{H2}", "--url", "{H1}", "-sSo", "o"),
    case(C, "--create-dirs", "-o", "https://odd-name", "-sS", "{H1}"),
    case(C, "-o", "{H2}", "-sS", "{H1}"),
    case(C, "-sS", "-w", "{H2}", "-o", "o", "{H1}"),
    case(C, "-sSLofile", "{H1}"),
    case(C, "-sSLo", "file", "{H1}"),
    case(C, "-sS", "--output", "{H2}", "--create-dirs", "{H1}"),
    case(C, "-sS", "-D", "{H2}", "-o", "o", "{H1}"),
    case(C, "-sS", "--dump-header", "hdr", "-o", "o", "{H1}"),
    case(C, "-sS", "-b", "{H2}", "-o", "o", "{H1}"),
    # Several URLs: hits and misses mixed, pairing kept.
    case(C, "-sSf", "-O", "{H1}", "-O", "{M1}", "-o", "third", "--url", "{H2}"),
    case(C, "-sS", "--url", "{H1}", "--url", "{H2}", "-o", "a", "-o", "b"),
    case(C, "-sS", "--remote-name-all", "{H1}", "{M1}", "{H2}"),
    case(C, "-sS", "-o", "a", "{H1}", "-o", "b", "{H1}"),
    case(C, "-sS", "-O", "ftp://127.0.0.1:1/x", "-O", "{H1}"),
    case(C, "-sS", "-O", "file:///dev/null", "-O", "{H2}"),
    case(C, "-sS", "-o", "a", "{H1}", "--next", "-sS", "-o", "b", "{M1}"),
    case(C, "-sS", "-o", "a", "{M1}", "{M2}", "-o", "b"),
    case(C, "{H1}", "-o", "out", "-sS"),
    case(C, "-sS", "-o", "o", "--", "{H1}"),
    # Globs pass through unless -g; -g belongs to its operation.
    case(C, "-sS", "-o", "#1.out", "{G}"),
    case(C, "-sS", "-g", "-o", "lit", "{LIT}"),
    case(C, "-sS", "--globoff", "--no-globoff", "-o", "lit", "{LIT}"),
    case(C, "-sS", "-g", "-o", "a", "{H1}", "--next", "-o", "#1", "{G}"),
    case(C, "-sS", "-o", "lit", "{LIT}"),
    # URL forms.
    case(C, "-sS", "-o", "o", "{Q1}"),
    case(C, "-sS", "-o", "o", "{H1}#fragment"),
    case(C, "-sS", "-o", "o", "{UPPER}"),
    case(C, "-sS", "-o", "o", "{CREDS}"),
    case(C, "-sS", "-o", "o", "{NONUTF8}", "-o", "p", "{H1}"),
    case(C, "-sS", "-OJ", "{CD}"),
    case(C, "-sS", "-o", "o", "{TLS}", "--cacert", "{CA}"),
    # Long names by unique prefix, --no- booleans, bundles.
    case(C, "--verb", "-sS", "-o", "o", "{H1}"),
    case(C, "--no-progress-meter", "-O", "{H1}"),
    case(C, "-i", "--no-include", "-sSo", "o", "{H1}"),
    case(C, "-sS", "--outp", "x", "{H1}"),
    case(C, "--url={H1}"),
    case(C, "-sS", "--bogus-option", "{H1}"),
    case(C, "-sS%", "{H1}"),
    case(C, "-o"),
    case(C),
    case(C, "-", "{H1}"),
    case(C, "-sSo-", "{H1}"),
    case(C, "--version"),
    case(C, "--help"),
    # Commands that are more than a GET pass through whole.
    case(C, "-sS", "-d", "url={H1}", "-o", "o", "{H1}"),
    case(C, "-sS", "--json", "{{}}", "-o", "o", "{H1}"),
    case(C, "-sS", "-F", "a=b", "-o", "o", "{H1}"),
    case(C, "-sS", "-T", "/dev/null", "-o", "o", "{H1}"),
    case(C, "-sS", "-X", "POST", "-o", "o", "{H1}"),
    case(C, "-sS", "-X", "GET", "-o", "o", "{H1}"),
    case(C, "-sS", "--request", "get", "-o", "o", "{H1}"),
    case(C, "-sS", "-i", "-o", "o", "{H1}"),
    case(C, "-sS", "-I", "{H1}"),
    case(C, "-sS", "--resolve", "x:80:127.0.0.1", "-o", "o", "{H1}"),
    case(C, "-sS", "-K", "/dev/null", "-o", "o", "{H1}"),
    case(C, "-sS", "--url-query", "a=b", "-o", "o", "{H1}"),
    case(C, "-sS", "--path-as-is", "-o", "o", "{H1}"),
    case(C, "-sS", "-x", "http://127.0.0.1:1", "-o", "o", "{H1}"),
    case(C, "-sS", "--socks5", "127.0.0.1:1", "-o", "o", "{H1}"),
    # What the tool does with the file is the same from the cache.
    case(C, "-sS", "-C", "-", "-O", "{H1}", **{"a.bin": BODY[:1000]}),
    case(C, "-sS", "-z", "a.bin", "-O", "{H1}", **{"a.bin": b"local"}),
    case(C, "-sS", "-R", "-O", "{H1}"),
    case(C, "-fsS", "--retry", "1", "-O", "{H1}"),
    case(C, "-fsS", "-L", "--max-redirs", "3", "-O", "{H2}"),
    case(C, "-fsS", "-o", "o", "{NF}"),
    case(C, "-sS", "--max-time", "5", "-o", "o", "{DEAD}"),
    case(C, "-sS", "--create-dirs", "--output-dir", "sub/dir", "-O", "{H1}"),
    case(C, "-sS", "-r", "0-99", "-o", "o", "{H1}"),
    # Credentials go to the probe only when certain.
    case(C, "-sS", "-H", "Authorization: Bearer t0k", "-o", "o", "{AUTH}"),
    case(C, "-sS", "-o", "o", "{AUTH}"),
    case(C, "-sS", "-u", "user:pw", "-o", "o", "{H1}"),
    case(C, "-sS", "-u", "user:pw", "--digest", "-o", "o", "{H1}"),
    case(C, "-sS", "-H", "Authorization: A", "-H", "Authorization: B", "-o", "o", "{H1}"),
    case(C, "-sS", "-u", "user:pw", "-H", "Authorization;", "-o", "o", "{H1}"),
    case(C, "-sS", "-H", "Authorization: Bearer t0k", "{AUTH}", "--next", "-o", "o", "{AUTH}"),
    # IP versions, TLS options, proxies from the environment.
    case(C, "-sS", "-4", "-o", "o", "{H1}"),
    case(C, "-sS", "-6", "-o", "o", "{H1}"),
    case(C, "-sS", "--tls-max", "1.2", "-k", "-o", "o", "{H1}"),
    case(C, "-sS", "-o", "o", "{H1}", env={"http_proxy": "http://127.0.0.1:1"}),
    case(C, "-sS", "-o", "o", "{H1}", env={"HTTP_PROXY": "http://127.0.0.1:1"}),
    case(
        C,
        "-sS",
        "-o",
        "o",
        "{H1}",
        env={"http_proxy": "http://127.0.0.1:1", "no_proxy": "127.0.0.1"},
    ),
    case(C, "-sS", "--noproxy", "*", "-o", "o", "{H1}", env={"ALL_PROXY": "http://127.0.0.1:1"}),
    case(C, "-sS", "-o", "o", "{H1}", env={"http_proxy": "http://p:1", "NO_PROXY": ".0.0.1"}),
    # The cache-host setting.
    case(C, "-sS", "-o", "o", "{H1}", env={"WITHCACHE_SERVER": ""}),
    case(C, "-sS", "-o", "o", "{H1}", env={"CURLWITHCACHE_SERVER": ""}),
    case(C, "-sS", "-o", "o", "{H1}", env={"CURLWITHCACHE_SERVER": " {HTTP}/ "}),
    case(C, "-sS", "-o", "o", "{H1}", env={"WITHCACHE_SERVER": "{HTTPHOSTPORT}"}),
    case(C, "-sS", "-o", "o", "{H1}", env={"WITHCACHE_SERVER": "http://localhost:{HTTPPORT}"}),
    case(W, "-q", "{H1}", env={"WITHCACHE_SERVER": "LOCALHOST:{HTTPPORT}/"}),
    case(C, "-sS", "-o", "o", "{H1}", env={"WGETWITHCACHE_SERVER": "{DEADHOST}"}),
    case(C, "-sS", "-o", "o", "{H1}", env={"WITHCACHE_SERVER": "{DEADHOST}"}),
    case(C, "-sS", "-o", "o", "{H1}", env={"WITHCACHE_SERVER": "ftp://cache"}),
    case(C, "-sS", "-o", "o", "{H1}", env={"WITHCACHE_SERVER": "http://user@cache"}),
    case(C, "-sS", "-o", "o", "{H1}", env={"WITHCACHE_SERVER": "http://127.0.0.1:x"}),
    case(C, "-sS", "-o", "o", "{H1}", env={"WITHCACHE_SERVER": "http://127.0.0.1:099999"}),
    case(C, "-sS", "-o", "o", "{H1}", env={"WITHCACHE_SERVER": "[::1"}),
    case(C, "-sS", "-o", "o", "{H1}", env={"WITHCACHE_SERVER": "http://[::1]x"}),
    case(C, "-sS", "-o", "o", "{H1}", env={"WITHCACHE_SERVER": "http://127.0.0.1/p?q"}),
    case(
        C,
        "-sS",
        "-o",
        "o",
        "{H1}",
        env={"WITHCACHE_SERVER": "{SILENT}", "WITHCACHE_PROBE_TIMEOUT": "0.2"},
    ),
    case(C, "-sS", "-o", "o", "{H1}", env={"WITHCACHE_PROBE_TIMEOUT": "nonsense"}),
    case(C, "-sS", "-o", "o", "{H1}", env={"WITHCACHE_DEBUG": "0"}),
    case(C, "-sS", "-o", "o", "{H1}", env={"REAL_CURL": "/nonexistent/curl"}),
    case(C, "-sS", "-o", "o", "{H1}", env={"PATH": "/nonexistent", "REAL_CURL": ""}),
    # shims.conf, read only when no cache-host variable is set.
    case(C, "-sS", "-o", "o", "{H1}", conf=SERVER_CONF),
    case(W, "-q", "{H1}", "{M1}", conf=SERVER_CONF),
    case(C, "-sS", "-o", "o", "{H1}", conf=SERVER_CONF, conf_in="home"),
    case(C, "-sS", "-o", "o", "{H1}", conf=SERVER_CONF, env={"XDG_CONFIG_HOME": "rel"}),
    case(C, "-sS", "-o", "o", "{H1}", conf=SERVER_CONF, env={"WITHCACHE_SERVER": ""}),
    case(C, "-sS", "-o", "o", "{H1}", conf=SERVER_CONF, env={"CURLWITHCACHE_SERVER": ""}),
    case(C, "-sS", "-o", "o", "{H1}", conf=SERVER_CONF, env={"WGETWITHCACHE_SERVER": ""}),
    case(C, "-sS", "-o", "o", "{H1}", conf=SERVER_CONF, env={"WITHCACHE_DEBUG": "0"}),
    case(C, "-sS", "-o", "o", "{H1}", conf=b"server = {HTTP}\ncurl_server = {DEADHOST}\n"),
    case(W, "-q", "{H1}", conf=b"server = {HTTP}\ncurl_server = {DEADHOST}\n"),
    case(C, "-sS", "-o", "o", "{H1}", conf=b"server = {HTTP}\ncurl_server =\n"),
    case(W, "-q", "{H1}", conf=b"server={DEADHOST}\r\n  server   =   {HTTP}  \r\n"),
    case(
        C,
        "-sS",
        "-o",
        "o",
        "{H1}",
        conf=b"# the lab's cache\n\n  server = {HTTP}  # trailing words\nServer = x\n"
        b"bogus = 1\nno equals sign\n= value\n\xff\xfe = \xe9\nserver = ftp://cache\n"
        b"wget_server = http://u@h\nprobe_timeout = 0\nprobe_timeout = soon\n"
        b"probe_timeout = 601\ncurl_server = [::1\n",
    ),
    case(C, "-sS", "-o", "o", "{H1}", conf=b"server = {SILENT}\nprobe_timeout = 1_5e-1\n"),
    case(
        C,
        "-sS",
        "-o",
        "o",
        "{H1}",
        conf=b"server = {SILENT}\nprobe_timeout = 30\n",
        env={"WITHCACHE_PROBE_TIMEOUT": "0.2"},
    ),
    case(C, "-sS", "-o", "o", "{H1}", conf=b"server = {HTTP}\n" + b"#" * 70_000),
    case(C, "-sS", "-o", "o", "{H1}", conf="server = \u00a0{HTTP}\u3000\n".encode()),
    case(C, "-sS", "-o", "o", "{H1}", conf=b""),
    # An https cache-host: the probe trusts what curl trusts.
    case(C, "-sS", "--cacert", "{CA}", "-o", "o", "{H1}", env={"WITHCACHE_SERVER": "{HTTPS}"}),
    case(C, "-sS", "-o", "o", "{H1}", env={"WITHCACHE_SERVER": "{HTTPS}"}),
    case(C, "-sS", "-k", "-o", "o", "{H1}", env={"WITHCACHE_SERVER": "{HTTPS}"}),
    case(C, "-sS", "-o", "o", "{H1}", env={"WITHCACHE_SERVER": "{HTTPS}", "SSL_CERT_FILE": "{CA}"}),
    case(
        C, "-sS", "-o", "o", "{H1}", env={"WITHCACHE_SERVER": "{HTTPS}", "CURL_CA_BUNDLE": "{CA}"}
    ),
    case(
        C,
        "-sS",
        "--cacert",
        "{CA}",
        "-O",
        "{H1}",
        "-O",
        "{M1}",
        env={"WITHCACHE_SERVER": "{HTTPS}"},
    ),
    case(
        C,
        "-sS",
        "--cacert",
        "{CA}",
        "-H",
        "Authorization: Bearer t0k",
        "-o",
        "o",
        "{AUTH}",
        env={"WITHCACHE_SERVER": "{HTTPS}"},
    ),
    # makepkg's DLAGENTS line for https, as docs/mirrors.md sets it.
    case(C, "-qgb", "", "-fLC", "-", "--retry", "3", "--retry-delay", "3", "-o", "o", "{H1}"),
    # Scheme limits: served when the cache-host's scheme (and for --proto the
    # URL's) is allowed; curl's --proto grammar; wget --https-only.
    case(C, "-sS", "--proto", "=https", "--cacert", "{CA}", "-o", "o", "{TLS}", env=TLS_CACHE),
    case(C, "-sS", "--proto", "=https", "--cacert", "{CA}", "-o", "o", "{TLS}"),
    case(C, "-sS", "--proto", "=https", "--cacert", "{CA}", "-o", "o", "{H1}", env=TLS_CACHE),
    case(
        C,
        "-sS",
        "--proto",
        "-all,https,+http",
        "--cacert",
        "{CA}",
        "-o",
        "o",
        "{H1}",
        env=TLS_CACHE,
    ),
    case(C, "-sS", "--proto", "=http,https", "-o", "o", "{H1}"),
    case(C, "-sS", "--proto", "-https", "-o", "o", "{H1}"),
    case(C, "-sS", "--proto", "-https", "--cacert", "{CA}", "-o", "o", "{H1}", env=TLS_CACHE),
    case(C, "-sS", "--proto", ",,=HTTPS,", "--cacert", "{CA}", "-o", "o", "{TLS}", env=TLS_CACHE),
    case(C, "-sS", "--proto", "=", "-o", "o", "{H1}"),
    case(C, "-sS", "--proto", "*https", "-o", "o", "{H1}"),
    case(C, "-sS", "--proto", "x=https", "-o", "o", "{H1}"),
    case(C, "-sS", "--proto", "=bogus,+http", "-o", "o", "{H1}"),
    case(C, "-sS", "--proto", "=ftp", "-o", "o", "{H1}"),
    case(C, "-sS", "--proto", "=all,-http", "--cacert", "{CA}", "-o", "o", "{H1}", env=TLS_CACHE),
    case(C, "-sS", "--proto-redir", "=https", "-o", "o", "{H1}"),
    case(C, "-sS", "--proto-redir", "=https", "--cacert", "{CA}", "-o", "o", "{H1}", env=TLS_CACHE),
    case(C, "-sS", "--proto", "=https", "-o", "a", "{H1}", "--next", "-sS", "-o", "b", "{H2}"),
    case(C, "-sS", "--proto", "=https", "--proto", "all", "-o", "o", "{H1}"),
    case(W, "-q", "--https-only", "{H1}"),
    case(W, "-q", "--https-only", "--ca-certificate={CA}", "{H1}", env=TLS_CACHE),
    case(W, "-q", "--https-only", "--ca-certificate={CA}", "{TLS}", env=TLS_CACHE),
    case(W, "-q", "--https-only", "--no-https-only", "{H1}"),
    case(W, "-q", "--https-only=off", "{H1}"),
    case(W, "-q", "-e", "https_only = on", "{H1}"),
    case(W, "-q", "-e", "httpsonly=on", "--ca-certificate={CA}", "{H1}", env=TLS_CACHE),
    # Python's string rules: Unicode spaces, repr() in notes, undecodable bytes.
    case(C, "-sS", "-o", "o", "{H1}", env={"WITHCACHE_SERVER": "\u00a0{HTTP}\u3000\t"}),
    case(C, "-sS", "-o", "o", "{H1}", env={"WITHCACHE_SERVER": "http://ca'che\u00e9:1"}),
    case(C, "-sS", "-o", "o", "{H1}", env={"WITHCACHE_SERVER": "http://ca\"c'he\x01:1"}),
    case(C, "-sS", "-o", "o", "{H1}", env={"WITHCACHE_SERVER": "http://[::1]\u200b"}),
    case(C, "-sS", "-o", "o", "{H1}", env={"WITHCACHE_SERVER": "http://h:\u0661"}),
    case(C, "-sS", "-X", "GET'\\", "-o", "o", "{H1}"),
    case(C, "-sS", "-X", "G\u00c9T\n", "-o", "o", "{H1}"),
    case(C, "-sS\u00e9", "{H1}"),
    case(C, "-sS", "--\u00e9t\u00e9", "{H1}"),
    case(C, "-sS", "{BADOPTION}", "{H1}"),
    case(C, "-sS", "-H", "\u2003Authorization\u00a0: \u3000Bearer t0k ", "-o", "o", "{AUTH}"),
    case(
        C,
        "-sS",
        "-o",
        "o",
        "{H1}",
        env={"WITHCACHE_PROBE_TIMEOUT": " 1_5e-1 ", "WITHCACHE_SERVER": "{SILENT}"},
    ),
    case(W, "-q", "-e", "r\u00f6bots=off", "{H1}"),
    case(W, "-q", "-e", "\u00a0robots\u3000=off", "{H1}"),
    case(W, "-q", "-e", "'quoted'", "{H1}"),
    case(W, "-q", "--timestamping=\u00a0OFF\u2003", "{H1}"),
    # wget: getopt with =value, permutation, -e, -n letters.
    case(W, "-q", "{H1}"),
    case(W, "-q", "-O", "out", "{H1}"),
    case(W, "-qO", "out", "{H1}"),
    case(W, "-qOout", "{H1}"),
    case(W, "--referer={H2}", "-q", "{H1}"),
    case(W, "--referer", "{H2}", "-q", "{H1}"),
    case(W, "-e", "robots=off", "-q", "{H1}"),
    case(W, "-qe", "robots=off", "{H1}"),
    case(W, "-O", "{H2}", "-q", "{H1}"),
    case(W, "-q", "--header=X: {H2}", "{H1}", "{M1}"),
    case(W, "-nv", "{H1}"),
    case(W, "{H1}", "-q", "-O", "out"),
    case(W, "--output-doc=x", "-q", "{H1}"),
    case(W, "--tries", "2", "-q", "{H1}"),
    case(W, "-q", "-i", "list.txt", "{H1}", **{"list.txt": b"{H2}\n"}),
    case(W, "-q", "--", "{H1}"),
    case(W, "--timestamping=on", "-q", "{H1}"),
    case(W, "-N", "-q", "{H1}"),
    case(W, "-c", "-q", "{H1}", **{"a.bin": BODY[:1000]}),
    case(W, "-q", "--content-disposition", "{CD}"),
    case(W, "-q", "-P", "sub/dir", "{H1}"),
    case(W, "-q", "-nc", "{H1}", **{"a.bin": b"mine"}),
    case(W, "-q", "{Q1}"),
    case(W, "-q", "{LIT}"),
    case(W, "-q", "{H1}", "{M1}", "{H2}", "ftp://127.0.0.1:1/x"),
    case(W, "-q", "{NF}"),
    case(W, "-q", "--tries=1", "{DEAD}"),
    case(W, "-q", "-O", "-", "{H1}"),
    case(W, "-q", "-6", "{H1}"),
    case(W, "-q", "--spider", "{H1}"),
    case(W, "-S", "-O", "o", "{H1}"),
    case(W, "-q", "-r", "--no-recursive", "{H1}"),
    case(W, "-q", "--recursive=off", "{H1}"),
    case(W, "-q", "-e", "recursive=off", "{H1}"),
    case(W, "-q", "-r", "{H1}"),
    case(W, "-q", "--post-data=a=b", "-O", "o", "{H1}"),
    case(W, "-q", "--method=PUT", "-O", "o", "{H1}"),
    case(W, "-q", "--method", "GET", "-O", "o", "{H1}"),
    case(W, "-q", "-x", "{H1}"),
    case(W, "-q", "-e", "dirstruct = on", "{H1}"),
    case(W, "-q", "-e", "nonsense", "{H1}"),
    case(W, "-q", "-e", "=x", "{H1}"),
    case(W, "-q", "--config=/dev/null", "{H1}"),
    case(W, "-q", "--unknown-thing", "{H1}"),
    case(W, "-q", "--o=x", "{H1}"),
    case(W, "-q", "--quiet=maybe", "--tries=3=3", "{H1}"),
    case(W, "-q", "--no-check-certificate", "{H1}"),
    case(W, "-q", "--header=Authorization: Bearer t0k", "-O", "o", "{AUTH}"),
    case(W, "-q", "-e", "header = Authorization: Bearer t0k", "-O", "o", "{AUTH}"),
    case(W, "-q", "--header=Authorization: Bearer t0k", "--header=", "-O", "o", "{AUTH}"),
    case(W, "-q", "--user=user", "--password=pw", "--auth-no-challenge", "{H1}"),
    case(W, "-q", "--user=user", "--password=pw", "{H1}"),
    case(W, "--version"),
    case(W),
    case(W, "-q", "-O", "o", "{H1}", env={"POSIXLY_CORRECT": "1"}),
    case(W, "-q", "{H1}", "-O", "o", env={"POSIXLY_CORRECT": "1"}),
    case(W, "-q", "{H1}", env={"http_proxy": "http://127.0.0.1:1"}),
    case(W, "-q", "--no-proxy", "{H1}", env={"http_proxy": "http://127.0.0.1:1"}),
    case(W, "-q", "-e", "use_proxy=off", "{H1}", env={"http_proxy": "http://127.0.0.1:1"}),
    case(W, "-q", "{H1}", env={"WGETWITHCACHE_SERVER": "{DEADHOST}"}),
    case(W, "-q", "{H1}", env={"CURLWITHCACHE_SERVER": "{DEADHOST}"}),
    case(W, "-q", "{H1}", env={"REAL_WGET": "/nonexistent/wget"}),
    case(
        W, "-q", "{H1}", env={"WITHCACHE_SERVER": "{SILENT}", "WITHCACHE_PROBE_TIMEOUT": "1_0e-1"}
    ),
    case(W, "-q", "{H1}", env={"WITHCACHE_SERVER": "{HTTPS}"}),
    case(W, "-q", "--ca-certificate={CA}", "{H1}", env={"WITHCACHE_SERVER": "{HTTPS}"}),
    case(W, "-q", "{H1}", env={"WITHCACHE_SERVER": "{HTTPS}", "SSL_CERT_FILE": "{CA}"}),
    case(W, "-q", "--no-check-certificate", "{H1}", "{M1}", env={"WITHCACHE_SERVER": "{HTTPS}"}),
]

# Generated lines: options the tools may safely run here (no background, no
# waits, nothing read from stdin), with arguments that look like URLs above all.
VALUES = {
    "url": ["{H1}", "{H2}", "{M1}", "https://odd-name", "-"],
    "name": ["out", "https://odd-name", "{H2}", "-"],
    "dir": ["sub", "https://odd"],
    "header": ["X-Mirror: {H2}", "Authorization: Bearer t0k", "Accept: */*", ""],
    "proxy": ["", "http://127.0.0.1:1"],
    "noproxy": ["*", "127.0.0.1", "other"],
    "data": ["url={H1}", "a=b"],
    "method": ["GET", "POST", "get"],
    "user": ["user:pw", "user:"],
    "file": ["/nonexistent.pem", "{CA}"],
    "count": ["0", "1"],
    "time": ["5", "9"],
    "wout": ["%{{http_code}}", "{H1}"],
    "range": ["0-99"],
    "execute": ["robots=off", "tries=1", "useproxy=off", "recursive=off", "header=X: {H1}"],
    "no": ["v", "c", "d", "H"],
}
CURL_SAFE = {
    "output": "name", "remote-name": None, "remote-name-all": None, "output-dir": "dir",
    "create-dirs": None, "silent": None, "show-error": None, "fail": None, "location": None,
    "globoff": None, "header": "header", "referer": "url", "user-agent": "url",
    "proxy": "proxy", "noproxy": "noproxy", "data": "data", "request": "method", "url": "url",
    "user": "user", "basic": None, "digest": None, "insecure": None, "cacert": "file",
    "ipv4": None, "compressed": None, "include": None, "retry": "count", "max-time": "time",
    "connect-timeout": "time", "write-out": "wout", "range": "range", "remote-time": None,
    "next": None, "path-as-is": None, "remote-header-name": None, "max-redirs": "count",
    "tcp-nodelay": None, "http1.1": None, "buffer": None, "progress-bar": None,
}  # fmt: skip
WGET_SAFE = {
    "quiet": None, "no-verbose": None, "output-document": "name", "directory-prefix": "dir",
    "header": "header", "referer": "url", "user-agent": "url", "tries": "count",
    "timeout": "time", "no-proxy": None, "no-check-certificate": None, "ca-certificate": "file",
    "auth-no-challenge": None, "timestamping": None, "continue": None, "no-clobber": None,
    "content-disposition": None, "server-response": None, "execute": "execute",
    "method": "method", "post-data": "data", "inet4-only": None, "adjust-extension": None,
    "max-redirect": "count", "no-cache": None, "no-cookies": None, "save-headers": None,
    "force-directories": None, "no-host-directories": None, "cut-dirs": "count",
    "default-page": "name", "no": "no",
}  # fmt: skip
OPERANDS = ["{H1}", "{H2}", "{M1}", "{Q1}", "{CD}", "{LIT}", "ftp://127.0.0.1:1/x"]
CURL_OPERANDS = [*OPERANDS, "{G}", "file:///dev/null"]


def spellings(tool, name: str) -> list[str]:
    """`name` and every abbreviation the tool resolves to it."""
    others = [n for n in tool.table.long if n != name]
    return [name] + [
        name[:k] for k in range(1, len(name)) if not any(o.startswith(name[:k]) for o in others)
    ]


def generated_line(rng: random.Random, tool) -> Case:
    safe = CURL_SAFE if tool is curl.TOOL else WGET_SAFE
    shorts = {long: letter for letter, long in tool.table.short.items()}
    args: list[str] = []
    for _ in range(rng.randint(1, 7)):
        if rng.random() < 0.3:
            args.append(rng.choice(CURL_OPERANDS if tool is curl.TOOL else OPERANDS))
            continue
        name = rng.choice(sorted(safe))
        pool = VALUES[safe[name]] if safe[name] else None
        value = rng.choice(pool) if pool else None
        kind = tool.table.long[name]
        form = rng.random()
        if name in shorts and form < 0.4:
            letter = shorts[name]
            if value is None:
                flags = [shorts[n] for n in safe if n in shorts and safe[n] is None]
                args.append("-" + letter + "".join(rng.sample(flags, min(len(flags), 2))))
            elif value and form < 0.2:
                args.append(f"-{letter}{value}")
            else:
                args += [f"-{letter}", value]
        elif value is None:
            if kind == "bool" and form > 0.8:
                args.append(f"--no-{name}")
            elif kind == "optional" and form > 0.7:
                args.append(f"--{rng.choice(spellings(tool, name))}={rng.choice(['on', 'off'])}")
            else:
                args.append(f"--{rng.choice(spellings(tool, name))}")
        elif tool is wget.TOOL and form > 0.7:
            args.append(f"--{rng.choice(spellings(tool, name))}={value}")
        else:
            args += [f"--{rng.choice(spellings(tool, name))}", value]
    return Case(tool.name, tuple(args))


def generated(count: int) -> list[Case]:
    rng = random.Random(20250604)
    return [generated_line(rng, (curl.TOOL, wget.TOOL)[n % 2]) for n in range(count)]


CORPUS = HAND_WRITTEN + generated(120)


@dataclass
class World:
    values: dict[str, str]
    recorders: Path
    tally: Counter[str] = field(default_factory=Counter)
    ran: int = 0


def restart_curated(host: CacheHost) -> CacheHost:
    """The same data dir, now in --curate mode: a miss stays a miss."""
    host.stop()
    return CacheHost(host.data_dir, (*host.flags, "--curate"), host.env).start()


@pytest.fixture(scope="module")
def world(origin, tmp_path_factory, ca_file, tls_files, silent_port_module, free_port_module):
    folder = tmp_path_factory.mktemp("differential")
    paths = {
        "H1": "/diff/a.bin", "H2": "/diff/b.bin", "Q1": "/diff/c.tar.gz", "CD": "/diff/named.run",
        "LIT": "/diff/lit[1].bin", "M1": "/diff/miss-1.bin", "M2": "/diff/miss-2.bin",
        "AUTH": "/diff/private.bin", "P1": "/diff/p1.bin", "P2": "/diff/p2.bin",
    }  # fmt: skip
    urls = {}
    for key, path in paths.items():
        options: dict[str, object] = {}
        if key == "CD":
            options["headers"] = {"Content-Disposition": 'attachment; filename="by-origin.run"'}
        if key == "AUTH":
            options["require_auth"] = "Bearer t0k"
        urls[key] = origin.add(path, BODY + key.encode(), **options)
    origin.add("/diff/tls.bin", BODY)
    urls["TLS"] = origin.url("/diff/tls.bin", tls=True)
    urls["Q1"] += "?v=1"
    chain, key = tls_files
    env = {**os.environ, "SSL_CERT_FILE": str(ca_file)}
    plain = CacheHost(folder / "plain", (*TEST_FLAGS, "--no-stream-fills"), env).start()
    tls_flags = (*TEST_FLAGS, "--no-stream-fills", "--tls-cert", str(chain), "--tls-key", str(key))
    secure = CacheHost(folder / "tls", tls_flags, env).start()
    for host in (plain, secure):
        for name in ("H1", "H2", "Q1", "CD", "LIT", "P1", "TLS"):
            host.wait_cached(urls[name])
        host.wait_cached(urls["AUTH"], headers={"Authorization": "Bearer t0k"})
    plain, secure = restart_curated(plain), restart_curated(secure)
    recorders = folder / "recorders"
    recorders.mkdir()
    for tool in ("curl", "wget"):
        recorder = recorders / tool
        record = 'printf "%s\\0" "$@" > "$WITHCACHE_TEST_RECORD"'
        recorder.write_text(f'#!/bin/sh\n{record}\nexec /usr/bin/{tool} "$@"\n')
        recorder.chmod(0o755)
    values = {
        **{k: v for k, v in urls.items() if k not in ("P1", "P2")},
        "NF": origin.url("/diff/none.bin"),
        "G": origin.url("/diff/p[1-2].bin"),
        "UPPER": urls["H1"].replace("http://", "HTTP://"),
        "CREDS": urls["H1"].replace("http://", "http://user:pw@"),
        "NONUTF8": os.fsdecode(urls["H1"].encode() + b"\xff"),
        "BADOPTION": os.fsdecode(b"--\xe9t\xff"),
        "DEAD": f"http://127.0.0.1:{free_port_module}/x.bin",
        "DEADHOST": f"127.0.0.1:{free_port_module}",
        "SILENT": f"127.0.0.1:{silent_port_module}",
        "HTTP": plain.url,
        "HTTPHOSTPORT": f"127.0.0.1:{plain.port}",
        "HTTPPORT": str(plain.port),
        "HTTPS": secure.url.replace("127.0.0.1", "localhost"),
        "CA": str(ca_file),
        "O": origin.url(""),
    }
    yield World(values, recorders)
    plain.stop()
    secure.stop()


@pytest.fixture(scope="module")
def free_port_module():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def silent_port_module():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


def fill(text: str, values: dict[str, str]) -> str:
    return text.format(**values)


@dataclass
class Outcome:
    argv: list[bytes] | None  # what the real tool was given (None: it never ran)
    returncode: int
    files: dict[str, bytes]
    notes: list[str]


def run(shims: Path, line: Case, world: World, folder: Path) -> Outcome:
    folder.mkdir()
    for name, content in line.files:
        text = name.endswith(".txt")  # a list of URLs: fill in the placeholders
        (folder / name).write_bytes(
            fill(content.decode(), world.values).encode() if text else content
        )
    record = folder.with_suffix(".argv")
    env = shim_env(world.values["HTTP"])
    if line.conf is not None:
        del env["WITHCACHE_SERVER"]
        home = folder.parent / "home"  # the same for both shims: the notes name it
        env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "xdg"))
        if line.conf_in == "home":
            del env["XDG_CONFIG_HOME"]
        conf = home / ("xdg" if line.conf_in == "xdg" else ".config") / "withcache" / "shims.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_bytes(fill(line.conf.decode("latin-1"), world.values).encode("latin-1"))
    env.update(REAL_CURL=str(world.recorders / "curl"), REAL_WGET=str(world.recorders / "wget"))
    env["WITHCACHE_TEST_RECORD"] = str(record)
    env.update({name: fill(value, world.values) for name, value in line.env})
    args = [fill(arg, world.values) for arg in line.args]
    result = subprocess.run(
        [str(shims / f"{line.tool}withcache"), *args], env=env, cwd=folder, capture_output=True,
        stdin=subprocess.DEVNULL, timeout=60,
    )  # fmt: skip
    found = sorted(p for p in folder.rglob("*") if p.is_file())
    # Response heads saved in files (-i, -D) carry the time: the rest must match.
    files = {p.relative_to(folder).as_posix(): DATE.sub(b"Date: -", p.read_bytes()) for p in found}
    notes = []
    for line_text in result.stderr.decode("utf-8", "replace").splitlines():
        if line_text.startswith(("withcache: ", f"{line.tool}withcache: ")):
            state = line_text.split(": ", 2)[-1]
            if state.startswith("unreachable ") and " (" in state:
                line_text = line_text.partition(" (")[0] + " (…)"  # errno wording differs
            notes.append(line_text)
    argv = record.read_bytes().split(b"\0")[:-1] if record.exists() else None
    return Outcome(argv, result.returncode, files, notes)


@pytest.mark.parametrize("line", CORPUS, ids=[f"{n}-{c.tool}" for n, c in enumerate(CORPUS)])
def test_native_shim_does_what_the_python_shim_does(line, world, native_shim, tmp_path):
    with ThreadPoolExecutor(2) as pool:  # the two runs are independent: overlap them
        python, native = pool.map(
            lambda shims, name: run(shims, line, world, tmp_path / name),
            (BIN, native_shim), ("python", "native"),
        )  # fmt: skip
    assert native == python, " ".join(line.args)
    world.ran += 1
    for note in python.notes:
        words = note.split(": ", 2)[-1].split()
        world.tally[words[0] if words else note] += 1


def test_the_corpus_exercises_every_outcome(world):
    """Run after the corpus: it held enough of each answer for the comparison to mean much."""
    assert len(CORPUS) >= 200
    if world.ran < len(CORPUS):
        pytest.skip("only part of the corpus ran")
    assert world.tally["hit"] >= 60, world.tally
    assert world.tally["miss"] >= 20, world.tally
    assert world.tally["passed"] >= 60, world.tally
    assert world.tally["unreachable"] >= 8, world.tally
    assert world.tally["settings"] >= 12, world.tally  # a shims.conf was read
    warnings = sum(n for word, n in world.tally.items() if word.endswith("shims.conf:"))
    assert warnings >= 12, world.tally  # lines of a shims.conf skipped, with a warning
