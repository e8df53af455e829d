"""`withcache-shims`: the set-up snippets work when a shell runs them, and
`status` tells what is in effect."""

import os
import subprocess

import pytest
from conftest import BIN, shim_env

from withcache import __version__
from withcache.shim import cli as cli_module

BODY = b"set-up" * 1000


def cli(*args, env):
    return subprocess.run(
        [str(BIN / "withcache-shims"), *args], capture_output=True, text=True, env=env, timeout=30
    )


def bash(script, env, cwd):
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, cwd=cwd, timeout=30
    )


@pytest.fixture
def home(tmp_path):
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


def test_env_snippet_shadows_curl_and_wget_in_this_shell(origin, shared_cache_host, home):
    url = origin.add("/cli/env.bin", BODY)
    shared_cache_host.wait_cached(url)
    env = shim_env(HOME=str(home))
    script = (
        f'eval "$({BIN}/withcache-shims env {shared_cache_host.url})"\n'
        "command -v curl; command -v wget\n"
        f"curl -fsS -o via-curl {url} && wget -q -O via-wget {url}\n"
    )
    result = bash(script, env, home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [f"{home}/.withcache/bin/curl", f"{home}/.withcache/bin/wget"]
    assert "withcache: curl: hit" in result.stderr and "withcache: wget: hit" in result.stderr
    assert (home / "via-curl").read_bytes() == (home / "via-wget").read_bytes() == BODY


def test_setup_prints_all_five_and_each_is_valid_shell(home):
    env = shim_env("http://cache.lab:3000", HOME=str(home))
    result = cli("setup", env=env)
    assert result.returncode == 0, result.stderr
    for number in range(1, 6):
        assert f"# {number}. " in result.stdout
    for name in ("by-name", "shell", "user", "direnv", "system"):
        one = cli("setup", name, "--server", "http://other:1", env=env)
        assert "export WITHCACHE_SERVER=http://other:1" in one.stdout
        assert bash(f"set -n\n{one.stdout}", env, home).returncode == 0


def test_user_snippet_persists_for_new_shells(origin, shared_cache_host, home):
    url = origin.add("/cli/user.bin", BODY)
    shared_cache_host.wait_cached(url)
    env = shim_env(HOME=str(home))
    (home / ".bashrc").write_text("alias ll='ls -l'\n")
    first = cli("setup", "user", "--server", "http://old.lab:3000", env=env).stdout
    assert bash(first, env, home).returncode == 0
    snippet = cli("setup", "user", "--server", shared_cache_host.url, env=env).stdout
    assert bash(snippet, env, home).returncode == 0
    assert bash(snippet, env, home).returncode == 0  # run again: still one block
    rc = (home / ".bashrc").read_text()
    assert rc.startswith("alias ll='ls -l'\n")  # what was there stays
    assert rc.count(cli_module.RC_BEGIN) == 1 and "old.lab" not in rc
    assert not (home / ".zshrc").exists()  # no zsh here: no .zshrc made
    later = bash(f". ~/.bashrc\n. ~/.bashrc\necho $PATH\ncurl -fsS -o out {url}", env, home)
    assert later.returncode == 0, later.stderr
    assert "withcache: curl: hit" in later.stderr
    assert later.stdout.count(f"{home}/.withcache/bin") == 1  # sourced twice, on PATH once


def test_user_snippet_covers_zsh(home):
    env = shim_env(HOME=str(home), SHELL="/usr/bin/zsh")
    snippet = cli("setup", "user", "--server", "http://cache.lab:3000", env=env).stdout
    for _ in range(2):
        assert bash(snippet, env, home).returncode == 0
    for rc in (".bashrc", ".zshrc"):
        text = (home / rc).read_text()
        assert text.count(cli_module.RC_BEGIN) == 1, rc
        assert "export WITHCACHE_SERVER=http://cache.lab:3000" in text


def test_setup_without_a_server_prints_the_lines_with_a_placeholder(home):
    for name in ("by-name", "user"):
        result = cli("setup", name, env=shim_env(HOME=str(home)))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("# No --server (nor WITHCACHE_SERVER): put your")
        assert f"export WITHCACHE_SERVER={cli_module.PLACEHOLDER}" in result.stdout


def test_version_and_usage_errors_are_one_line(home):
    env = shim_env(HOME=str(home))
    version = cli("--version", env=env)
    assert version.returncode == 0 and version.stdout == f"withcache-shims {__version__}\n"
    wrong = cli("frobnicate", env=env)
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1
    assert wrong.stderr.startswith("withcache-shims: argument command: invalid choice")


def test_install_and_uninstall_user_links(home):
    env = shim_env(HOME=str(home))
    result = cli("install", "--user", env=env)
    assert result.returncode == 0, result.stderr
    links = home / ".withcache" / "bin"
    assert os.readlink(links / "curl") == str(BIN / "curlwithcache")
    assert os.readlink(links / "wget") == str(BIN / "wgetwithcache")
    assert cli("install", "--user", env=env).returncode == 0  # again: idempotent
    (links / "curl").unlink()
    (links / "curl").write_text("not a link")
    refused = cli("install", "--user", env=env)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "not a link" in refused.stderr
    assert cli("uninstall", "--user", env=env).returncode == 0
    assert not (links / "wget").exists() and (links / "curl").read_text() == "not a link"


def test_status_says_which_tool_runs_and_whether_the_cache_answers(
    shared_cache_host, home, free_port
):
    env = shim_env(HOME=str(home))
    cli("install", "--user", env=env)
    shimmed = {**env, "PATH": f"{home}/.withcache/bin:{os.environ['PATH']}"}
    result = cli("status", env={**shimmed, "WITHCACHE_SERVER": shared_cache_host.url})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "curl: " in result.stdout
        and "is the withcache shim; it runs /usr/bin/curl" in result.stdout
    )
    assert (
        f"cache-host: {shared_cache_host.url} (from WITHCACHE_SERVER) answers (ok" in result.stdout
    )
    dead = cli("status", env={**env, "WGETWITHCACHE_SERVER": f"127.0.0.1:{free_port}"})
    assert dead.returncode == 1
    assert "wget: /usr/bin/wget (the real wget; not shimmed)" in dead.stdout
    assert "(from WGETWITHCACHE_SERVER) does not answer" in dead.stdout
    assert "none (WITHCACHE_SERVER unset)" in dead.stdout


def test_env_without_a_server_is_a_one_line_error(home):
    result = cli("env", env=shim_env(HOME=str(home)))
    assert result.returncode == 2
    assert result.stderr == "withcache-shims: give the cache-host URL (or set WITHCACHE_SERVER)\n"
    bad = cli("env", "ftp://cache", env=shim_env(HOME=str(home)))
    assert bad.returncode == 2 and "bad cache-host" in bad.stderr


def test_readme_documents_every_shim_setting_and_command():
    from pathlib import Path

    from withcache.shim import cli, curl, wget

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    wanted = {f"`{name}`" for name in cli.SETUPS}
    wanted |= {
        f"`{name}" for name in ("WITHCACHE_SERVER", "WITHCACHE_PROBE_TIMEOUT", "WITHCACHE_DEBUG")
    }
    wanted |= {f"`{t.server_env}`" for t in (curl.TOOL, wget.TOOL)}
    wanted |= {f"`{t.real_env}`" for t in (curl.TOOL, wget.TOOL)}
    subcommands = cli.build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    wanted |= {f"withcache-shims {name}" for name in subcommands}
    assert {text for text in wanted if text not in readme} == set()


def test_tables_dump_is_the_tables(home):
    import json

    from withcache.shim import curl, wget

    result = cli("tables", env=shim_env(HOME=str(home)))
    assert result.returncode == 0, result.stderr
    dumped = json.loads(result.stdout)
    for tool in (curl.TOOL, wget.TOOL):
        assert dumped[tool.name]["table"]["long"] == tool.table.long
        assert dumped[tool.name]["table"]["short"] == tool.table.short
        assert dumped[tool.name]["pass_through"] == tool.pass_through
        assert set(dumped[tool.name]) == set(tool._fields)
