"""plan(): which words of a curl/wget command are URLs, and what becomes of each.

The probe is plan()'s input (the only way it reaches the network), so these
tests drive it with a table of answers; test_shim_curl.py and
test_shim_wget.py run the same forms through the real tools and server.
"""

import pytest

from withcache import keys
from withcache.shim.plan import plan
from withcache.shim.probe import HIT, MISS, Answer

CACHE = "http://cache:3000"
U1 = "https://vendor.example/cuda/cuda_12.run"
U2 = "https://vendor.example/rocm/rocm.tar.gz?sig=abc"
U3 = "http://mirror.example/fw.bin"
ENV = {"WITHCACHE_SERVER": CACHE}


class Recorder:
    """A probe answering from a set of cached URLs, remembering what it was asked."""

    def __init__(self, cached=(U1, U2, U3)):
        self.cached = set(cached)
        self.asked = []

    def __call__(self, server, requests):
        self.asked.extend(requests)
        return [Answer(HIT if r.url in self.cached else MISS) for r in requests]


def served(url, base=CACHE):
    return base + keys.serve_path(url)


def run(tool, *argv, env=ENV, cached=(U1, U2, U3)):
    probe = Recorder(cached)
    result = plan(tool, list(argv), env, probe)
    return result, probe


@pytest.mark.parametrize(
    ("argv", "urls_at"),
    [
        (["-e", "https://referer.example/", U1], [2]),
        (["--referer", "https://referer.example/", U1], [2]),
        (["-x", "", U1], [2]),
        (["-H", "X-Mirror: https://other.example/x", U1], [2]),
        (["--header", "X: https://other.example/x", U1], [2]),
        (["-o", "https://odd-name", U1], [2]),
        (["-sSLo", "file", U1], [2]),
        (["-sSLofile", U1], [1]),
        (["-A", "https://agent", "--url", U1], [3]),
        (["--url", U1, "--url", U2], [1, 3]),
        (["-O", U1, "-O", U2, "-o", "f3", U3], [1, 3, 6]),
        (["--verb", U1], [1]),  # curl takes unique prefixes of long names
        (["--no-progress-meter", U1], [1]),
        ([U1, "-o", "out"], [0]),
        (["--", "-dash-file", U1], [2]),
        (["-w", "%{url_effective}", "-K", "/dev/null", U1], []),  # -K passes all through
    ],
)
def test_curl_finds_exactly_the_urls(argv, urls_at):
    result, _ = run("curl", *argv)
    expected = list(argv)
    for i in urls_at:
        expected[i] = served(argv[i])
    assert result.argv == expected


@pytest.mark.parametrize(
    ("argv", "urls_at"),
    [
        (["--referer=https://referer.example/", U1], [1]),
        (["--referer", "https://referer.example/", U1], [2]),
        (["-e", "robots=off", U1], [2]),
        (["-O", "https://odd-name", U1], [2]),
        (["-qO", "file", U1], [2]),
        (["-qOfile", U1], [1]),
        (["--header=X: https://other.example/", U1, U2], [1, 2]),
        (["-nv", U1], [1]),
        ([U1, "-O", "out"], [0]),  # getopt permutes: options may follow URLs
        (["--output-doc=x", U1], [1]),  # unique prefix with =value
        (["--tries", "3", U1], [2]),
        (["-B", "https://base.example/", "-i", "list.txt", U1], [4]),
        (["--", U1, "-O"], [1]),
        (["--timestamping=on", U1], [1]),
    ],
)
def test_wget_finds_exactly_the_urls(argv, urls_at):
    result, _ = run("wget", *argv)
    expected = list(argv)
    for i in urls_at:
        expected[i] = served(argv[i])
    assert result.argv == expected


def test_posixly_correct_stops_wget_options_at_the_first_url():
    result, _ = run("wget", U1, "-O", "out", env={**ENV, "POSIXLY_CORRECT": "1"})
    # With POSIXLY_CORRECT, "-O" and "out" are URLs to wget: neither is http(s).
    assert result.argv == [served(U1), "-O", "out"]


def test_hits_and_misses_mix_and_pairing_is_kept():
    result, probe = run("curl", "-O", U1, "-o", "two", U2, "--url", U3, cached=(U1, U3))
    assert result.argv == ["-O", served(U1), "-o", "two", U2, "--url", served(U3)]
    assert [r.url for r in probe.asked] == [U1, U2, U3]
    assert result.notes[1] == f"miss {U2}"
    assert result.notes[0].startswith(f"hit {U1} -> ")


def test_a_url_given_twice_is_probed_once():
    result, probe = run("curl", "-O", U1, "-O", U1)
    assert result.argv == ["-O", served(U1), "-O", served(U1)]
    assert len(probe.asked) == 1


@pytest.mark.parametrize(
    "url", ["file:///etc/hostname", "ftp://h/x", "sftp://h/x", "example.com/x", "HTTPX://h/"]
)
def test_non_http_urls_pass_through_unprobed(url):
    result, probe = run("curl", "-O", url, U1)
    assert result.argv == ["-O", url, served(U1)]
    assert [r.url for r in probe.asked] == [U1]


def test_uppercase_scheme_is_http():
    url = "HTTPS://vendor.example/x"
    result, _ = run("curl", url, cached=(url,))
    assert result.argv == [served(url)]


def test_curl_globs_pass_through_unless_globoff():
    glob = "https://vendor.example/part[1-3].bin"
    braces = "https://vendor.example/{a,b}.bin"
    result, probe = run("curl", "-O", glob, "-O", braces, cached=(glob, braces))
    assert result.argv == ["-O", glob, "-O", braces]
    assert not probe.asked
    result, _ = run("curl", "-g", "-O", glob, cached=(glob,))
    assert result.argv == ["-g", "-O", served(glob)]
    result, _ = run("curl", "--globoff", "--no-globoff", glob, cached=(glob,))
    assert result.argv == ["--globoff", "--no-globoff", glob]


def test_wget_never_globs_http():
    url = "https://vendor.example/file[1].bin"
    result, _ = run("wget", url, cached=(url,))
    assert result.argv == [served(url)]


def test_globoff_belongs_to_its_curl_operation():
    glob = "https://vendor.example/p[1-2]"
    result, _ = run("curl", "-g", U1, "--next", glob, cached=(U1, glob))
    assert result.argv == ["-g", served(U1), "--next", glob]


@pytest.mark.parametrize(
    "argv",
    [
        ["-d", "url=https://x", U1],
        ["--data-binary", "@f", U1],
        ["--json", "{}", U1],
        ["-F", "a=b", U1],
        ["-T", "file", U1],
        ["-X", "POST", U1],
        ["-X", "get", U1],
        ["--request", "PUT", U1],
        ["-i", U1],
        ["--resolve", "vendor.example:443:10.0.0.1", U1],
        ["--connect-to", "::10.0.0.1:", U1],
        ["--unix-socket", "/run/x.sock", U1],
        ["--xattr", U1],
        ["--pinnedpubkey", "sha256//x", U1],
        ["-x", "http://proxy:3128", U1],
        ["--proxy", "http://proxy:3128", U1],
        ["--socks5", "127.0.0.1:1080", U1],
        ["--url-query", "a=b", U1],
        ["--http2-prior-knowledge", U1],
        ["-K", "urls.cfg", U1],
        ["--config", "urls.cfg", U1],
        ["-h", U1],
        ["--version"],
        ["--bogus-option", U1],
        ["-%", U1],
        ["--outp", "x", U1],  # ambiguous: --output, --output-dir
        ["--url=" + U1],  # curl has no --name=value
        ["-o"],
        ["-u", "user:pw", "--aws-sigv4", "aws:amz", U1],
    ],
)
def test_curl_commands_that_pass_through_whole(argv):
    result, probe = run("curl", *argv)
    assert result.argv == argv
    assert not probe.asked


def test_include_turned_off_again_does_not_block():
    result, _ = run("curl", "-i", "--no-include", U1)
    assert result.argv == ["-i", "--no-include", served(U1)]


@pytest.mark.parametrize(
    "argv",
    [
        ["--post-data=a=b", U1],
        ["--method=PUT", U1],
        ["--body-data", "x", "--method", "POST", U1],
        ["-r", U1],
        ["-m", U1],
        ["-p", U1],
        ["-x", U1],
        ["--force-directories", U1],
        ["--save-headers", U1],
        ["--trust-server-names", U1],
        ["-e", "recursive=on", U1],
        ["-e", "dirstruct = on", U1],
        ["-e", "http_proxy=http://proxy:3128", U1],
        ["-e", "nonsense", U1],
        ["--config=wgetrc", U1],
        ["--unknown-thing", U1],
        ["--o=x", U1],  # ambiguous: --output-document, --output-file
        ["--quiet=maybe", "--tries=3=3", "--spider=on", "--bogus", U1],
        ["-O"],
    ],
)
def test_wget_commands_that_pass_through_whole(argv):
    result, probe = run("wget", *argv)
    assert result.argv == argv
    assert not probe.asked


@pytest.mark.parametrize(
    "argv", [["-r", "--no-recursive", U1], ["--recursive=off", U1], ["-e", "recursive=off", U1]]
)
def test_wget_switches_turned_off_do_not_block(argv):
    result, _ = run("wget", *argv)
    assert result.argv[-1] == served(U1)


def test_credentials_in_the_url_are_never_sent_to_the_cache():
    url = "https://user:secret@vendor.example/x"
    result, probe = run("curl", url, cached=(url,))
    assert result.argv == [url]
    assert not probe.asked


@pytest.mark.parametrize(
    ("tool", "argv", "authorization"),
    [
        ("curl", ["-H", "Authorization: Bearer t0k"], "Bearer t0k"),
        ("curl", ["--header", "authorization:Bearer t0k"], "Bearer t0k"),
        ("curl", ["-u", "user:pw"], "Basic dXNlcjpwdw=="),
        ("curl", ["-u", "user:pw", "--basic"], "Basic dXNlcjpwdw=="),
        ("curl", ["-u", "user:pw", "--digest"], None),  # sent only after a challenge
        ("curl", ["-u", "user:pw", "--anyauth"], None),
        ("curl", ["-u", "user"], None),  # curl would prompt for the password
        ("curl", ["-H", "Authorization: A", "-H", "Authorization: B"], None),
        ("curl", ["-H", "X-Other: y"], None),
        ("curl", ["-u", "user:pw", "-H", "Authorization;"], None),  # sent empty, not Basic
        ("wget", ["--header=Authorization: Bearer t0k"], "Bearer t0k"),
        ("wget", ["-e", "header = Authorization: Bearer t0k"], "Bearer t0k"),
        ("wget", ["--header=Authorization: x", "--header="], None),  # --header= clears
        ("wget", ["--user=user", "--password=pw"], None),  # wget waits for a challenge
        ("wget", ["--user=user", "--password=pw", "--auth-no-challenge"], "Basic dXNlcjpwdw=="),
        # two different users: which one wget sends depends on its precedence rules
        ("wget", ["--http-user=a", "--user=b", "--password=pw", "--auth-no-challenge"], None),
    ],
)
def test_the_probe_carries_exactly_the_authorization_the_tool_sends(tool, argv, authorization):
    _, probe = run(tool, *argv, U1)
    assert [r.authorization for r in probe.asked] == [authorization]


def test_authorization_belongs_to_its_curl_operation():
    _, probe = run("curl", "-H", "Authorization: A", U1, "--next", U2)
    assert [(r.url, r.authorization) for r in probe.asked] == [(U1, "A"), (U2, None)]


@pytest.mark.parametrize(
    ("env", "argv", "passes"),
    [
        ({"http_proxy": "http://proxy:3128"}, [], True),
        ({"HTTP_PROXY": "http://proxy:3128"}, [], False),  # curl ignores the uppercase one
        ({"ALL_PROXY": "http://proxy:3128"}, [], True),
        ({"http_proxy": "http://p:1", "no_proxy": "localhost,cache"}, [], False),
        ({"http_proxy": "http://p:1", "NO_PROXY": ".cache"}, [], False),
        ({"http_proxy": "http://p:1", "no_proxy": "*"}, [], False),
        ({"http_proxy": "http://p:1", "no_proxy": "other"}, [], True),
        ({"http_proxy": "http://p:1"}, ["--noproxy", "cache"], False),
        ({"http_proxy": "http://p:1"}, ["-x", ""], False),
        ({"https_proxy": "http://p:1"}, [], False),  # the cache-host is http
    ],
)
def test_curl_passes_through_when_a_proxy_would_carry_the_cache_request(env, argv, passes):
    result, _ = run("curl", *argv, U1, env={**ENV, **env})
    assert (result.argv[-1] == U1) is passes


@pytest.mark.parametrize(
    ("env", "argv", "passes"),
    [
        ({"http_proxy": "http://p:1"}, [], True),
        ({"http_proxy": "http://p:1"}, ["--no-proxy"], False),
        ({"http_proxy": "http://p:1"}, ["-e", "use_proxy=off"], False),
        ({"http_proxy": "http://p:1", "no_proxy": "cache"}, [], False),
    ],
)
def test_wget_passes_through_when_a_proxy_would_carry_the_cache_request(env, argv, passes):
    result, _ = run("wget", *argv, U1, env={**ENV, **env})
    assert (result.argv[-1] == U1) is passes


def test_per_tool_server_setting_wins_even_when_empty():
    result, _ = run(
        "curl", U1, env={"WITHCACHE_SERVER": "http://dead:1", "CURLWITHCACHE_SERVER": CACHE}
    )
    assert result.argv == [served(U1)]
    result, probe = run("curl", U1, env={"WITHCACHE_SERVER": CACHE, "CURLWITHCACHE_SERVER": ""})
    assert result.argv == [U1] and not probe.asked
    result, _ = run("wget", U1, env={"WITHCACHE_SERVER": CACHE, "CURLWITHCACHE_SERVER": ""})
    assert result.argv == [served(U1)]


@pytest.mark.parametrize("server", ["", "ftp://cache", "http://user:pw@cache", "http://cache:x"])
def test_no_or_bad_server_passes_through(server):
    result, probe = run("curl", U1, env={"WITHCACHE_SERVER": server})
    assert result.argv == [U1] and not probe.asked
    assert len(result.notes) == 1


def test_server_prefix_and_scheme_are_kept():
    result, probe = run("curl", U1, env={"WITHCACHE_SERVER": "https://cache.lab/withcache/"})
    assert result.argv == [served(U1, "https://cache.lab/withcache")]
    assert probe.asked[0].path.startswith("/withcache/b/")


def test_https_cache_probe_trusts_what_the_tool_trusts():
    env = {"WITHCACHE_SERVER": "https://cache.lab", "CURL_CA_BUNDLE": "/env/ca.pem"}
    _, probe = run("curl", "--cacert", "/my/ca.pem", U1, "--next", "-k", U2, env=env)
    assert [tuple(r.trust) for r in probe.asked] == [
        (True, "/my/ca.pem", None),
        (False, "/env/ca.pem", None),
    ]
    _, probe = run("wget", "--no-check-certificate", "--ca-directory=/d", U1, env=env)
    assert tuple(probe.asked[0].trust) == (False, None, "/d")


@pytest.mark.parametrize(
    ("tool", "env", "trust"),
    [
        ("curl", {"CURL_CA_BUNDLE": "/b.pem", "SSL_CERT_FILE": "/f.pem"}, (True, "/b.pem", None)),
        ("curl", {"SSL_CERT_FILE": "/f.pem", "SSL_CERT_DIR": "/d"}, (True, "/f.pem", "/d")),
        ("curl", {}, (True, None, None)),
        ("wget", {"SSL_CERT_FILE": "/f.pem", "CURL_CA_BUNDLE": "/b.pem"}, (True, None, None)),
    ],
)
def test_ca_variables_count_only_for_the_tool_that_reads_them(tool, env, trust):
    _, probe = run(tool, U1, env={"WITHCACHE_SERVER": "https://cache.lab", **env})
    assert tuple(probe.asked[0].trust) == trust


def test_tls_limits_pass_through_only_for_an_https_cache():
    assert run("curl", "--tls-max", "1.1", U1)[0].argv[-1] == served(U1)
    https = {"WITHCACHE_SERVER": "https://cache.lab"}
    assert run("curl", "--tls-max", "1.1", U1, env=https)[0].argv[-1] == U1


def test_ip_version_limits_reach_the_probe():
    _, probe = run("curl", "-4", U1, "--next", "--ipv6", U2)
    assert [r.family for r in probe.asked] == [4, 6]
    _, probe = run("wget", "-6", U1)
    assert [r.family for r in probe.asked] == [6]


def test_notes_say_why_for_every_url():
    result, _ = run("curl", "-O", "ftp://h/x", "-O", U1, "-O", U2, cached=(U1,))
    assert result.notes == [
        "passed through ftp://h/x (not an http(s) URL)",
        f"hit {U1} -> {served(U1)}",
        f"miss {U2}",
    ]


def test_a_url_that_is_not_utf8_passes_through():
    url = "https://vendor.example/\udcff.bin"  # how Python holds a non-UTF-8 argv byte
    result, _ = run("curl", url, U1, cached=(url, U1))
    assert result.argv == [url, served(U1)]
    assert result.notes[0] == f"passed through {url} (not valid UTF-8)"
