"""Every install path the README gives, run as written in a clean HOME: each
one puts every promised command on PATH, and each command starts (the server
serves its UI, so templates and static files were packaged). `make dist`
builds the wheel, the sdist and the native shim. A per-user install can't
serve other users, and `withcache-shims setup system` says so; one in a venv
under /opt-like folders with a Python everyone can run can."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, CacheHost

from withcache import __version__

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]  # installs, builds, runs

ROOT = Path(__file__).resolve().parent.parent
# What the README promises an install gives.
COMMANDS = ("withcache-server", "withcache", "withcache-shims", "curlwithcache", "wgetwithcache")
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
# Where the machine's package registries are configured; nothing else of this
# environment reaches the installs.
REGISTRY_SETTINGS = (
    "PIP_",
    "UV_INDEX",
    "UV_EXTRA_INDEX",
    "UV_FIND_LINKS",
    "SSL_CERT_",
    "PIPX_DEFAULT_PYTHON",
)


def clean_env(home: Path, bin_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(REGISTRY_SETTINGS)}
    env.update(
        HOME=str(home), PATH=f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        PIPX_HOME=str(home / ".local/share/pipx"), PIPX_BIN_DIR=str(bin_dir),
        UV_TOOL_DIR=str(home / ".local/share/uv/tools"), UV_TOOL_BIN_DIR=str(bin_dir),
    )  # fmt: skip
    return env


def sh(command: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, env=env, cwd=cwd, timeout=500
    )  # fmt: skip
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture
def opt() -> Iterator[Path]:
    """A folder like /opt or /home: every user may look in (pytest's tmp_path is private)."""
    folder = Path(tempfile.mkdtemp(prefix="withcache-install-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


@pytest.fixture
def home(opt: Path) -> Path:
    folder = opt / "home"
    folder.mkdir(mode=0o700)  # as Debian's adduser makes them: other users can't look in
    return folder


@pytest.fixture(scope="module")
def dist() -> Path:
    """`make dist`, as the README says."""
    subprocess.run(["make", "--no-print-directory", "dist"], cwd=ROOT, check=True,
                   capture_output=True, timeout=500)  # fmt: skip
    return ROOT / "dist"


def check_commands(bin_dir: Path, env: dict[str, str], tmp: Path) -> None:
    """Every promised command is on PATH, from this install, and starts."""
    for name in COMMANDS:
        found = shutil.which(name, path=env["PATH"])
        assert found == str(bin_dir / name), (name, found)
    for name in ("withcache-server", "withcache", "withcache-shims"):
        assert sh(f"{name} --version", env).stdout == f"{name} {__version__}\n"
    assert sh("curlwithcache --version", env).stdout.startswith("curl ")  # the real curl, through
    assert sh("wgetwithcache --version", env).stdout.startswith("GNU Wget")
    argv = [str(bin_dir / "withcache-server"), "--data-dir", str(tmp / "data"), "--host",
            "127.0.0.1", "--port", "0"]  # fmt: skip
    server = CacheHost(tmp / "data", (), env, argv=argv).start()
    try:
        assert server.health()["version"] == __version__
        with urllib.request.urlopen(server.url + "/") as page:
            assert b"withcache" in page.read()
        stylesheet = urllib.request.urlopen(server.url + "/static/ui.css")
        assert stylesheet.status == 200
    finally:
        server.stop()


def test_pipx_install_from_a_checkout(home, tmp_path):
    bin_dir = home / ".local/bin"
    env = clean_env(home, bin_dir)
    sh(f"{BIN}/pipx install .", env)
    check_commands(bin_dir, env, tmp_path)


def test_uv_tool_install_from_a_checkout(home, tmp_path):
    bin_dir = home / ".local/bin"
    env = clean_env(home, bin_dir)
    sh(f"{BIN}/uv tool install .", env)
    check_commands(bin_dir, env, tmp_path)


def test_make_dist_builds_the_wheel_the_sdist_and_the_native_shim(dist):
    names = sorted(path.name for path in dist.iterdir() if not path.name.startswith("."))
    version = __version__
    assert names == sorted([
        f"withcache-{version}-py3-none-any.whl", f"withcache-{version}.tar.gz",
        "withcache-shim-aarch64-linux-musl", "withcache-shim-x86_64-linux-musl", "SHA256SUMS",
    ])  # fmt: skip
    sh("sha256sum --check --quiet SHA256SUMS", dict(os.environ), cwd=dist)
    native = dist / "withcache-shim-x86_64-linux-musl"
    assert os.access(native, os.X_OK) and native.stat().st_size < 300 * 1024


def test_pip_install_of_the_wheel_with_the_scale_out_stores(dist, home, tmp_path):
    venv = home / "venv"
    env = clean_env(home, venv / "bin")
    sh(f"{sys.executable} -m venv {venv}", env)
    sh(f'{venv}/bin/pip install -q "$(echo dist/withcache-*.whl)[scale]"', env, cwd=dist.parent)
    check_commands(venv / "bin", env, tmp_path)
    sh(f"{venv}/bin/python -c 'import psycopg'", env)


def test_a_per_user_install_says_how_to_set_up_every_user(opt, home):
    bin_dir = home / ".local/bin"
    env = clean_env(home, bin_dir)
    sh(f"{BIN}/uv tool install .", env)
    setup = subprocess.run(["withcache-shims", "setup", "system", "--server", "http://c:3000"],
                           capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert setup.returncode == 1
    assert f"{home} is drwx------" in setup.stderr and setup.stderr.count("\n") == 1
    lines = setup.stdout.splitlines()
    assert all(line.startswith("#") for line in lines)  # nothing that would link a dead shim
    assert "#   /usr/bin/python3 -m venv /opt/withcache" in lines
    assert (
        "#   install -m 755 withcache-shim-x86_64-linux-musl /usr/local/bin/withcache-shim" in lines
    )
    public = opt / "bin"  # every user searches it, like /usr/local/bin
    public.mkdir(mode=0o755)
    refused = subprocess.run(["withcache-shims", "install", "--dir", str(public)],
                             capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert refused.returncode == 2 and "can't be run by other users" in refused.stderr
    assert list(public.iterdir()) == []
    if os.geteuid() == 0:  # what another user would meet with the links made anyway
        denied = subprocess.run([*NOBODY, str(bin_dir / "curlwithcache"), "--version"],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert denied.returncode != 0


@pytest.mark.skipif(not os.access(SYSTEM_PYTHON, os.X_OK), reason="no system Python")
def test_a_venv_under_opt_serves_every_user(dist, opt, home, tmp_path):
    venv = opt / "withcache"
    env = clean_env(home, venv / "bin")
    sh(f"{SYSTEM_PYTHON} -m venv {venv} && {venv}/bin/pip install -q dist/withcache-*.whl", env,
       cwd=dist.parent)  # fmt: skip
    check_commands(venv / "bin", env, tmp_path)
    setup = sh(f"{venv}/bin/withcache-shims setup system --server http://c:3000", env)
    assert f"ln -sf {venv}/bin/curlwithcache /usr/local/bin/curl" in setup.stdout
    public = opt / "bin"
    public.mkdir(mode=0o755)
    sh(f"{venv}/bin/withcache-shims install --dir {public}", env)
    assert os.readlink(public / "curl") == str(venv / "bin/curlwithcache")
    if os.geteuid() == 0:
        other = subprocess.run(
            [*NOBODY, str(public / "curl"), "--version"], capture_output=True, text=True,
            timeout=60, env={"PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert other.returncode == 0 and other.stdout.startswith("curl "), other.stderr
