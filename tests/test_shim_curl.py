"""curlwithcache with the real curl, the real cache-host and a real origin."""

import os
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, shim, shim_env

BODY = bytes(range(256)) * 300  # 75 KiB


def debug_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("withcache: curl:")]


def test_unset_runs_curl_untouched(origin, tmp_path):
    url = origin.add("/curl/unset.bin", BODY)
    result = shim("curl", "-sS", "-o", str(tmp_path / "out"), url)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out").read_bytes() == BODY
    assert debug_lines(result) == ["withcache: curl: passed through: no cache-host set"]
    assert origin.gets("/curl/unset.bin") == 1


def test_miss_goes_to_origin_then_the_fill_makes_a_hit(origin, shared_cache_host, tmp_path):
    host = shared_cache_host
    url = origin.add("/curl/miss-hit.bin", BODY)
    first = shim("curl", "-fsS", "-o", str(tmp_path / "one"), url, server=host.url)
    assert first.returncode == 0, first.stderr
    assert debug_lines(first) == [f"withcache: curl: miss {url}"]
    assert (tmp_path / "one").read_bytes() == BODY
    host.wait_cached(url)  # the probe queued the fill
    gets = origin.gets("/curl/miss-hit.bin")
    second = shim("curl", "-fsS", "-o", str(tmp_path / "two"), url, server=host.url)
    assert second.returncode == 0, second.stderr
    assert debug_lines(second)[0].startswith(f"withcache: curl: hit {url} -> {host.url}/b/")
    assert (tmp_path / "two").read_bytes() == BODY
    assert origin.gets("/curl/miss-hit.bin") == gets  # served by the cache


def test_unreachable_cache_runs_curl_against_the_origin(origin, tmp_path, free_port):
    url = origin.add("/curl/unreachable.bin", BODY)
    result = shim("curl", "-fsS", "-o", str(tmp_path / "out"), url, server=f"127.0.0.1:{free_port}")
    assert result.returncode == 0, result.stderr
    assert debug_lines(result)[0].startswith(f"withcache: curl: unreachable {url} (cannot connect")
    assert (tmp_path / "out").read_bytes() == BODY


def test_url_looking_option_arguments_stay_put(origin, shared_cache_host, tmp_path):
    url = shared_cache_host.cached(origin, "/curl/forms.bin", BODY)
    result = shim(
        "curl", "-sSf", "-e", "https://referer.example/", "--referer", "https://r2.example/",
        "-H", "X-Mirror: https://mirror.example/x", "-x", "", "-A", "https://agent.example/",
        "--create-dirs", "-o", "https://odd-name", url,
        server=shared_cache_host.url, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [line.split()[2] for line in debug_lines(result)] == ["hit"]
    assert (tmp_path / "https:" / "odd-name").read_bytes() == BODY


def test_several_urls_hits_and_misses_keep_their_output_pairing(
    origin, shared_cache_host, tmp_path
):
    host = shared_cache_host
    one = host.cached(origin, "/curl/multi/one.bin", b"one" * 1000)
    two = origin.add("/curl/multi/two.bin", b"two" * 1000)
    three = host.cached(origin, "/curl/multi/three.bin", b"three" * 1000)
    result = shim(
        "curl", "-fsS", "-O", one, "-O", two, "-o", "third", "--url", three, "ftp://127.0.0.1:1/x",
        "--no-progress-meter", server=host.url, cwd=tmp_path,
    )  # fmt: skip
    # curl fails on the ftp URL (nothing listens) after fetching the rest.
    assert result.returncode != 0
    states = [line.split()[2] for line in debug_lines(result)]
    assert states == ["hit", "miss", "hit", "passed"]
    assert (tmp_path / "one.bin").read_bytes() == b"one" * 1000
    assert (tmp_path / "two.bin").read_bytes() == b"two" * 1000
    assert (tmp_path / "third").read_bytes() == b"three" * 1000


def test_globs_pass_through_unless_globoff(origin, shared_cache_host, tmp_path):
    host = shared_cache_host
    for n in (1, 2):
        host.cached(origin, f"/curl/glob/p{n}.bin", b"%d" % n * 100)
    base = origin.url("/curl/glob/")
    result = shim(
        "curl", "-fsS", "-o", "#1.out", base + "p[1-2].bin", server=host.url, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "curl glob" in debug_lines(result)[0]
    assert (tmp_path / "2.out").read_bytes() == b"2" * 100
    assert origin.gets("/curl/glob/p2.bin") == 2  # the fill and this curl


def outcome(folder: Path, result, mtimes: bool) -> tuple:
    """Exit status, files and (when the tool sets them from the server) their mtimes."""
    found = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in found}
    times = {p.name: int(p.stat().st_mtime) for p in found} if mtimes else {}
    return result.returncode, files, times


def compare(tmp_path, args, url, server, prepare=lambda folder: None):
    """Run the same curl command from the origin and through a hit; both must agree."""
    outcomes = []
    for name, setting in (("direct", None), ("cached", server)):
        folder = tmp_path / name
        folder.mkdir()
        prepare(folder)
        result = shim("curl", *args, url, server=setting, cwd=folder)
        if setting:
            assert [line.split()[2] for line in debug_lines(result)] == ["hit"], result.stderr
        outcomes.append(outcome(folder, result, "-R" in args))
    assert outcomes[0] == outcomes[1]
    return outcomes[0]


@pytest.mark.parametrize(
    "args",
    [
        ["-fsS", "-O"],
        ["-fsS", "--remote-name-all"],
        ["-fsS", "-OJ"],
        ["-fsSL", "-o", "out.bin"],
        ["-fsS", "--retry", "2", "-O"],
        ["-fsS", "-R", "-O"],
        ["-fsS", "--create-dirs", "--output-dir", "sub/dir", "-O"],
    ],
)
def test_a_hit_names_the_file_as_the_origin_does(origin, shared_cache_host, tmp_path, args):
    disposition = {"Content-Disposition": 'attachment; filename="named-by-origin.run"'}
    url = shared_cache_host.cached(origin, "/curl/names/tool-1.2.run", BODY, headers=disposition)
    returncode, files, _ = compare(tmp_path, args, url, shared_cache_host.url)
    assert returncode == 0 and BODY in files.values()


def test_resume_with_continue_at_dash(origin, shared_cache_host, tmp_path):
    url = shared_cache_host.cached(origin, "/curl/resume.bin", BODY)

    def partial(folder):
        (folder / "resume.bin").write_bytes(BODY[:1000])

    _, files, _ = compare(tmp_path, ["-fsS", "-C", "-", "-O"], url, shared_cache_host.url, partial)
    assert files == {"resume.bin": BODY}


def test_time_condition_skips_a_newer_local_file(origin, shared_cache_host, tmp_path):
    url = shared_cache_host.cached(origin, "/curl/timecond.bin", BODY)

    def newer(folder):
        (folder / "timecond.bin").write_bytes(b"local")

    _, files, _ = compare(
        tmp_path, ["-fsS", "-z", "timecond.bin", "-O"], url, shared_cache_host.url, newer
    )
    assert files == {"timecond.bin": b"local"}


def test_a_404_keeps_curl_exit_22_with_and_without_the_cache(origin, shared_cache_host, tmp_path):
    url = origin.url("/curl/not-there.bin")
    plain = shim("curl", "-fsS", "-o", str(tmp_path / "a"), url)
    through = shim("curl", "-fsS", "-o", str(tmp_path / "b"), url, server=shared_cache_host.url)
    assert plain.returncode == through.returncode == 22
    assert debug_lines(through) == [f"withcache: curl: miss {url}"]


def test_https_origin_with_cacert(origin, shared_cache_host, ca_file, tmp_path):
    origin.add("/curl/tls.bin", BODY)
    url = origin.url("/curl/tls.bin", tls=True)
    args = ["-fsS", "--cacert", str(ca_file), "-o", "out"]
    miss = shim("curl", *args, url, server=shared_cache_host.url, cwd=tmp_path)
    assert miss.returncode == 0, miss.stderr
    assert debug_lines(miss) == [f"withcache: curl: miss {url}"]
    shared_cache_host.wait_cached(url)
    hit = shim("curl", *args, url, server=shared_cache_host.url, cwd=tmp_path)
    assert hit.returncode == 0, hit.stderr
    assert debug_lines(hit)[0].startswith(f"withcache: curl: hit {url}")
    assert (tmp_path / "out").read_bytes() == BODY


def test_https_cache_host_trusts_what_curl_trusts(origin, cache_host, tls_files, ca_file, tmp_path):
    chain, key = tls_files
    host = cache_host("--tls-cert", str(chain), "--tls-key", str(key), "--no-stream-fills")
    url = origin.add("/curl/https-cache.bin", BODY)
    args = ["-fsS", "--cacert", str(ca_file), "-o", "out", url]
    first = shim("curl", *args, server=host.url, cwd=tmp_path)
    assert debug_lines(first) == [f"withcache: curl: miss {url}"], first.stderr
    host.wait_cached(url)
    hit = shim("curl", *args, server=host.url, cwd=tmp_path)
    assert hit.returncode == 0, hit.stderr
    assert debug_lines(hit)[0].startswith(f"withcache: curl: hit {url} -> https://")
    assert (tmp_path / "out").read_bytes() == BODY
    # Without the CA, the probe fails as curl would: the command runs against the origin.
    untrusted = shim("curl", "-fsS", "-o", "out2", url, server=host.url, cwd=tmp_path)
    assert untrusted.returncode == 0, untrusted.stderr
    assert "unreachable" in debug_lines(untrusted)[0]
    # curl reads SSL_CERT_FILE, so the probe does too...
    env = shim_env(host.url, SSL_CERT_FILE=str(ca_file))
    by_env = shim("curl", "-fsS", "-o", "out3", url, env=env, cwd=tmp_path)
    assert debug_lines(by_env)[0].startswith(f"withcache: curl: hit {url}"), by_env.stderr
    # ...and wget (GnuTLS) doesn't, so for wget it doesn't: the origin serves it.
    wget_env = shim("wget", "-q", "-O", "out4", url, env=env, cwd=tmp_path)
    assert wget_env.returncode == 0, wget_env.stderr
    assert "withcache: wget: unreachable" in wget_env.stderr
    wget_ca = shim(
        "wget",
        "-q",
        f"--ca-certificate={ca_file}",
        "-O",
        "out5",
        url,
        server=host.url,
        cwd=tmp_path,
    )
    assert "withcache: wget: hit" in wget_ca.stderr, wget_ca.stderr
    assert (tmp_path / "out5").read_bytes() == (tmp_path / "out4").read_bytes() == BODY


def test_credential_scoped_artifact_needs_the_same_authorization(
    origin, shared_cache_host, tmp_path
):
    host = shared_cache_host
    secret = "Bearer s3cret"
    url = origin.add("/curl/private.bin", BODY, require_auth=secret)
    auth = ["-H", f"Authorization: {secret}"]
    miss = shim("curl", "-fsS", *auth, "-o", "one", url, server=host.url, cwd=tmp_path)
    assert miss.returncode == 0, miss.stderr
    host.wait_cached(url, headers={"Authorization": secret})
    hit = shim("curl", "-fsS", *auth, "-o", "two", url, server=host.url, cwd=tmp_path)
    assert debug_lines(hit)[0].startswith(f"withcache: curl: hit {url}"), hit.stderr
    assert (tmp_path / "two").read_bytes() == BODY
    anonymous = shim("curl", "-fsS", "-o", "three", url, server=host.url, cwd=tmp_path)
    assert debug_lines(anonymous) == [f"withcache: curl: miss {url}"]
    assert anonymous.returncode == 22  # the origin wants credentials


def test_basic_credentials_from_user_option(origin, shared_cache_host, tmp_path):
    host = shared_cache_host
    url = origin.add("/curl/basic.bin", BODY, require_auth="Basic dXNlcjpwdw==")
    shim("curl", "-fsS", "-u", "user:pw", "-o", "one", url, server=host.url, cwd=tmp_path)
    host.wait_cached(url, headers={"Authorization": "Basic dXNlcjpwdw=="})
    hit = shim("curl", "-fsS", "-u", "user:pw", "-o", "two", url, server=host.url, cwd=tmp_path)
    assert debug_lines(hit)[0].startswith(f"withcache: curl: hit {url}"), hit.stderr
    assert (tmp_path / "two").read_bytes() == BODY


def test_per_tool_server_overrides(origin, shared_cache_host, tmp_path, free_port):
    url = shared_cache_host.cached(origin, "/curl/override.bin", BODY)
    dead = f"127.0.0.1:{free_port}"
    env = shim_env(dead, CURLWITHCACHE_SERVER=shared_cache_host.url)
    hit = shim("curl", "-fsS", "-o", "a", url, env=env, cwd=tmp_path)
    assert debug_lines(hit)[0].startswith("withcache: curl: hit"), hit.stderr
    env = shim_env(shared_cache_host.url, CURLWITHCACHE_SERVER="")
    off = shim("curl", "-fsS", "-o", "b", url, env=env, cwd=tmp_path)
    assert debug_lines(off) == ["withcache: curl: passed through: no cache-host set"]


def test_real_curl_pins_the_tool_and_a_shim_named_curl_never_loops(origin, tmp_path):
    url = origin.add("/curl/real.bin", BODY)
    wrapper = tmp_path / "my-curl"
    log = tmp_path / "ran"
    wrapper.write_text(f'#!/bin/sh\necho "$0" >> {log}\nexec /usr/bin/curl "$@"\n')
    wrapper.chmod(0o755)
    pinned = shim(
        "curl", "-fsS", "-o", "a", url, env=shim_env(REAL_CURL=str(wrapper)), cwd=tmp_path
    )
    assert pinned.returncode == 0, pinned.stderr
    assert log.read_text().strip() == str(wrapper)
    # A PATH whose first curl is the shim itself (set-up approach 2).
    links = tmp_path / "bin"
    links.mkdir()
    (links / "curl").symlink_to(BIN / "curlwithcache")
    env = shim_env(PATH=f"{links}:{os.environ['PATH']}")
    looped = shim("curl", "-fsS", "-o", "b", url, env=env, cwd=tmp_path)
    assert looped.returncode == 0, looped.stderr
    assert (tmp_path / "b").read_bytes() == BODY


def test_no_real_curl_exits_127(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = shim("curl", "--version", env=shim_env(PATH=str(empty)))
    assert result.returncode == 127
    assert "no real curl found" in result.stderr
    result = shim("curl", "--version", env=shim_env(REAL_CURL=str(BIN / "curlwithcache")))
    assert result.returncode == 127


def test_a_real_tool_path_that_is_not_utf8_still_exits_127():
    env = {**{k.encode(): v.encode() for k, v in shim_env().items()}}
    env[b"REAL_CURL"] = b"/nonexistent/curl-\xff"
    result = subprocess.run(
        [str(BIN / "curlwithcache"), "--version"], env=env, capture_output=True, timeout=30
    )
    assert result.returncode == 127
    assert result.stderr.startswith(b"curlwithcache: no real curl found")
    assert b"\xff" in result.stderr and b"Traceback" not in result.stderr
