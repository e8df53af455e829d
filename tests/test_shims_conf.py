"""shims.conf where the environment is scrubbed, for the Python and the native shim.

sudo (env_reset), cron, systemd units, Homebrew's `env -i` and bitbake drop
WITHCACHE_SERVER. Each test runs a shim installed as `curl`/`wget` first on
PATH under `env -i`, as another user where it matters (runuser: what sudo
without -E leaves), and checks that it finds the cache-host through the
file: a hit costs the origin nothing. /etc/withcache is replaced only inside
a private mount namespace, so no other process on the machine sees the file.
How each line of a file is read is in test_native_differential.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import BIN

BODY = os.urandom(100_000)
SYSTEM_DIR = Path("/etc/withcache")


@pytest.fixture(params=["python", "native"])
def installed(request):
    """A world-readable folder with `curl` and `wget` linked to one kind of shim."""
    folder = Path(tempfile.mkdtemp(prefix="withcache-conf-"))
    folder.chmod(0o755)
    bin_dir = folder / "bin"
    bin_dir.mkdir(mode=0o755)
    if request.param == "native":  # a copy: the build tree may be private to its owner
        native = request.getfixturevalue("native_shim")
        shutil.copy(native / "curlwithcache", folder / "withcache-shim")
    for tool in ("curl", "wget"):
        python = BIN / f"{tool}withcache"
        (bin_dir / tool).symlink_to(
            python if request.param == "python" else folder / "withcache-shim"
        )
    work = folder / "work"
    work.mkdir()
    work.chmod(0o777)  # another user writes its download here
    yield folder
    shutil.rmtree(folder)


@pytest.fixture(scope="module")
def cached(origin, shared_cache_host):
    """A URL the cache-host holds, and a function: GETs the origin has served for it."""
    path = "/conf/cuda.run"
    url = shared_cache_host.cached(origin, path, BODY)
    return url, lambda: origin.gets(path)


def scrubbed(folder: Path, *command: str, keep: dict[str, str] | None = None, user: str = ""):
    """`command` as `env -i` leaves it (PATH, and `keep`), run in `folder`/work,
    as `user` if given (what sudo's env_reset does when it switches user)."""
    env = [f"PATH={folder / 'bin'}:/usr/bin:/bin", *(f"{k}={v}" for k, v in (keep or {}).items())]
    argv = ["env", "-i", *env, *command]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, cwd=folder / "work", capture_output=True, text=True, timeout=60)


def write_conf(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    for folder in (path, *path.parents):
        if folder == Path("/tmp") or folder == Path("/"):
            break
        folder.chmod(0o755 if folder.is_dir() else 0o644)
    return path


def in_namespace_with_system_conf(conf_dir: Path, argv: list[str]) -> list[str]:
    """`argv` in a private mount namespace where /etc/withcache is `conf_dir`."""
    mount = f'mount --bind {conf_dir} {SYSTEM_DIR} && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh", *argv]


@pytest.fixture
def system_dir():
    """/etc/withcache as a mount point. Made (empty) if missing and left there:
    tests in other workers may be using it, and an empty folder changes nothing."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private /etc/withcache")
    SYSTEM_DIR.mkdir(exist_ok=True)
    return SYSTEM_DIR


@pytest.mark.parametrize("tool", ["curl", "wget"])
def test_env_i_finds_the_cache_host_in_the_users_file(installed, cached, shared_cache_host, tool):
    url, origin_gets = cached
    home = installed / "home"
    write_conf(home / ".config/withcache/shims.conf", f"server = {shared_cache_host.url}\n")
    before = origin_gets()
    args = ["-fsS", "-o", "out", url] if tool == "curl" else ["-q", "-O", "out", url]
    result = scrubbed(installed, tool, *args, keep={"HOME": str(home), "WITHCACHE_DEBUG": "1"})
    assert result.returncode == 0, result.stderr
    assert f"withcache: {tool}: hit {url}" in result.stderr
    assert (installed / "work/out").read_bytes() == BODY
    assert origin_gets() == before  # served by the cache-host


def test_xdg_config_home_wins_over_home(installed, cached, shared_cache_host):
    url, _ = cached
    home, xdg = installed / "home", installed / "xdg"
    write_conf(home / ".config/withcache/shims.conf", "server = 127.0.0.1:1\n")
    write_conf(xdg / "withcache/shims.conf", f"server = {shared_cache_host.url}\n")
    keep = {"HOME": str(home), "XDG_CONFIG_HOME": str(xdg), "WITHCACHE_DEBUG": "1"}
    result = scrubbed(installed, "curl", "-fsS", "-o", "out", url, keep=keep)
    assert f"settings from {xdg}/withcache/shims.conf" in result.stderr
    assert f"hit {url}" in result.stderr


def test_the_empty_variable_still_turns_the_shim_off(installed, cached, shared_cache_host):
    url, origin_gets = cached
    home = installed / "home"
    write_conf(home / ".config/withcache/shims.conf", f"server = {shared_cache_host.url}\n")
    before = origin_gets()
    keep = {"HOME": str(home), "WITHCACHE_SERVER": "", "WITHCACHE_DEBUG": "1"}
    result = scrubbed(installed, "curl", "-fsS", "-o", "out", url, keep=keep)
    assert result.returncode == 0
    assert result.stderr == "withcache: curl: passed through: no cache-host set\n"
    assert origin_gets() == before + 1  # curl went to the origin, as written


def test_a_broken_file_never_fails_the_command(installed, cached):
    url, origin_gets = cached
    home = installed / "home"
    write_conf(home / ".config/withcache/shims.conf", "server = ftp://x\n[section]\nserver\n")
    before = origin_gets()
    result = scrubbed(installed, "curl", "-fsS", "-o", "out", url, keep={"HOME": str(home)})
    assert result.returncode == 0 and result.stderr == ""  # warnings only under WITHCACHE_DEBUG
    assert (installed / "work/out").read_bytes() == BODY
    assert origin_gets() == before + 1


@pytest.mark.parametrize("tool", ["curl", "wget"])
def test_another_user_without_its_environment_finds_the_system_file(
    installed, cached, shared_cache_host, system_dir, tool
):
    """What `sudo -u nobody curl ...` leaves (env_reset): no WITHCACHE_SERVER and
    a home without a file; /etc/withcache/shims.conf names the cache-host."""
    url, origin_gets = cached
    python = (installed / "bin/curl").resolve().parent == BIN.resolve()
    if (
        python
        and subprocess.run(["runuser", "-u", "nobody", "--", sys.executable, "-c", ""]).returncode
    ):
        pytest.skip(f"this venv's Python ({sys.executable}) can't be run by another user")
    conf_dir = Path(tempfile.mkdtemp(prefix="withcache-etc-"))
    try:
        write_conf(conf_dir / "shims.conf", f"# lab cache\nserver = {shared_cache_host.url}\n")
        before = origin_gets()
        args = ["-fsS", "-o", "out", url] if tool == "curl" else ["-q", "-O", "out", url]
        env = [f"PATH={installed / 'bin'}:/usr/bin:/bin", "HOME=/nonexistent", "WITHCACHE_DEBUG=1"]
        argv = ["runuser", "-u", "nobody", "--", "env", "-i", *env, tool, *args]
        result = subprocess.run(
            in_namespace_with_system_conf(conf_dir, argv), cwd=installed / "work",
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "settings from /etc/withcache/shims.conf" in result.stderr
        assert f"hit {url}" in result.stderr
        assert (installed / "work/out").read_bytes() == BODY
        assert (installed / "work/out").stat().st_uid != 0  # nobody wrote it
        assert origin_gets() == before
    finally:
        shutil.rmtree(conf_dir)
    assert not (SYSTEM_DIR / "shims.conf").exists()  # nobody else ever saw the file


def test_the_users_file_wins_over_the_system_file(installed, cached, shared_cache_host, system_dir):
    url, _ = cached
    conf_dir = Path(tempfile.mkdtemp(prefix="withcache-etc-"))
    try:
        write_conf(conf_dir / "shims.conf", "server = 127.0.0.1:1\n")
        home = installed / "home"
        write_conf(home / ".config/withcache/shims.conf", f"server = {shared_cache_host.url}\n")
        env = [f"PATH={installed / 'bin'}:/usr/bin:/bin", f"HOME={home}", "WITHCACHE_DEBUG=1"]
        argv = ["env", "-i", *env, "curl", "-fsS", "-o", "out", url]
        result = subprocess.run(
            in_namespace_with_system_conf(conf_dir, argv), cwd=installed / "work",
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert f"hit {url}" in result.stderr, result.stderr
        assert "/etc/withcache" not in result.stderr
    finally:
        shutil.rmtree(conf_dir)
