"""wgetwithcache with the real wget, the real cache-host and a real origin."""

from pathlib import Path

import pytest
from conftest import shim, shim_env

BODY = bytes(range(256)) * 300


def debug_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("withcache: wget:")]


def states(result):
    return [line.split()[2] for line in debug_lines(result)]


def test_unset_runs_wget_untouched(origin, tmp_path):
    url = origin.add("/wget/unset.bin", BODY)
    result = shim("wget", "-q", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "unset.bin").read_bytes() == BODY
    assert debug_lines(result) == ["withcache: wget: passed through: no cache-host set"]


def test_miss_then_hit(origin, shared_cache_host, tmp_path):
    host = shared_cache_host
    url = origin.add("/wget/miss-hit.bin", BODY)
    first = shim("wget", "-q", "-O", "one", url, server=host.url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert states(first) == ["miss"]
    host.wait_cached(url)
    gets = origin.gets("/wget/miss-hit.bin")
    second = shim("wget", "-q", "-O", "two", url, server=host.url, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert states(second) == ["hit"]
    assert (tmp_path / "two").read_bytes() == BODY
    assert origin.gets("/wget/miss-hit.bin") == gets


def test_unreachable_cache_runs_wget_against_the_origin(origin, tmp_path, free_port):
    url = origin.add("/wget/unreachable.bin", BODY)
    result = shim("wget", "-q", url, server=f"http://127.0.0.1:{free_port}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert states(result) == ["unreachable"]
    assert (tmp_path / "unreachable.bin").read_bytes() == BODY


def outcome(folder: Path, result) -> tuple:
    files = {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }
    mtimes = {p.name: int(p.stat().st_mtime) for p in folder.rglob("*") if p.is_file()}
    return result.returncode, files, mtimes


def compare(tmp_path, args, url, server, prepare=lambda folder: None):
    """The same wget command from the origin and through a hit must leave the same files."""
    outcomes = []
    for name, setting in (("direct", None), ("cached", server)):
        folder = tmp_path / name
        folder.mkdir()
        prepare(folder)
        result = shim("wget", *args, url, server=setting, cwd=folder)
        if setting:
            assert states(result) == ["hit"], result.stderr
        outcomes.append(outcome(folder, result))
    assert outcomes[0] == outcomes[1]
    return outcomes[0]


@pytest.mark.parametrize(
    "args",
    [
        ["-q"],
        ["-q", "-O", "named.out"],
        ["-q", "-N"],
        ["-q", "--content-disposition"],
        ["-q", "-P", "prefix/dir"],
        ["-q", "-nc"],
        ["-qe", "robots=off", "--referer=https://referer.example/"],
        ["-q", "--header=X-Mirror: https://mirror.example/", "--tries", "2"],
    ],
)
def test_a_hit_names_the_file_as_the_origin_does(origin, shared_cache_host, tmp_path, args):
    disposition = {"Content-Disposition": 'attachment; filename="named-by-origin.run"'}
    url = shared_cache_host.cached(origin, "/wget/names/tool-1.2.run", BODY, headers=disposition)
    returncode, files, _ = compare(tmp_path, args, url, shared_cache_host.url)
    assert returncode == 0 and BODY in files.values()


def test_a_query_stays_in_the_default_file_name(origin, shared_cache_host, tmp_path):
    url = shared_cache_host.cached(origin, "/wget/query.tar", BODY) + "?version=3"
    shared_cache_host.wait_cached(url)
    _, files, _ = compare(tmp_path, ["-q"], url, shared_cache_host.url)
    assert list(files) == ["query.tar?version=3"]


def test_continue_resumes_a_partial_file(origin, shared_cache_host, tmp_path):
    url = shared_cache_host.cached(origin, "/wget/continue.bin", BODY)

    def partial(folder):
        (folder / "continue.bin").write_bytes(BODY[:1000])

    _, files, _ = compare(tmp_path, ["-q", "-c"], url, shared_cache_host.url, partial)
    assert files == {"continue.bin": BODY}


def test_a_404_keeps_wget_exit_8(origin, shared_cache_host, tmp_path):
    url = origin.url("/wget/not-there.bin")
    plain = shim("wget", "-q", url, cwd=tmp_path)
    through = shim("wget", "-q", url, server=shared_cache_host.url, cwd=tmp_path)
    assert plain.returncode == through.returncode == 8
    assert states(through) == ["miss"]


def test_input_list_urls_pass_through(origin, shared_cache_host, tmp_path):
    listed = shared_cache_host.cached(origin, "/wget/listed.bin", BODY)
    direct = shared_cache_host.cached(origin, "/wget/direct.bin", BODY)
    (tmp_path / "list.txt").write_text(listed + "\n")
    gets = origin.gets("/wget/listed.bin")
    result = shim(
        "wget", "-q", "-i", "list.txt", direct, server=shared_cache_host.url, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert states(result) == ["hit"]  # only the URL on the command line
    assert origin.gets("/wget/listed.bin") == gets + 1
    assert (tmp_path / "listed.bin").read_bytes() == (tmp_path / "direct.bin").read_bytes()


def test_https_origin_with_ca_certificate(origin, shared_cache_host, ca_file, tmp_path):
    origin.add("/wget/tls.bin", BODY)
    url = origin.url("/wget/tls.bin", tls=True)
    args = ["-q", f"--ca-certificate={ca_file}", "-O", "out", url]
    assert states(shim("wget", *args, server=shared_cache_host.url, cwd=tmp_path)) == ["miss"]
    shared_cache_host.wait_cached(url)
    hit = shim("wget", *args, server=shared_cache_host.url, cwd=tmp_path)
    assert hit.returncode == 0, hit.stderr
    assert states(hit) == ["hit"]
    assert (tmp_path / "out").read_bytes() == BODY


def test_credentials_sent_without_challenge_reach_the_probe(origin, shared_cache_host, tmp_path):
    host = shared_cache_host
    url = origin.add("/wget/basic.bin", BODY, require_auth="Basic dXNlcjpwdw==")
    args = ["-q", "--user=user", "--password=pw", "--auth-no-challenge"]
    assert shim("wget", *args, "-O", "one", url, server=host.url, cwd=tmp_path).returncode == 0
    host.wait_cached(url, headers={"Authorization": "Basic dXNlcjpwdw=="})
    hit = shim("wget", *args, "-O", "two", url, server=host.url, cwd=tmp_path)
    assert states(hit) == ["hit"], hit.stderr
    assert (tmp_path / "two").read_bytes() == BODY


def test_wget_server_override(origin, shared_cache_host, tmp_path, free_port):
    url = shared_cache_host.cached(origin, "/wget/override.bin", BODY)
    env = shim_env(f"127.0.0.1:{free_port}", WGETWITHCACHE_SERVER=shared_cache_host.url)
    result = shim("wget", "-q", url, env=env, cwd=tmp_path)
    assert states(result) == ["hit"], result.stderr


def test_no_real_wget_exits_127(tmp_path):
    result = shim("wget", "--version", env=shim_env(PATH=str(tmp_path)))
    assert result.returncode == 127
    assert "no real wget found" in result.stderr
