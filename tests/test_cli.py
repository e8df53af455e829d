"""`withcache-server` flags: every flag documented with its default, an env
twin for each, and bad values refused with one line and exit status 2."""

import os
import socket
import subprocess

import pytest
from conftest import BIN

from withcache.server.cli import _OPTIONS, env_name, settings_from

SERVER = str(BIN / "withcache-server")


def run(*args, env=None, timeout=20):
    return subprocess.run(
        [SERVER, *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_help_lists_every_flag_with_default_and_env():
    out = run("--help").stdout
    flat = " ".join(out.split())
    for option in _OPTIONS:
        flag = "--" + option.dest.replace("_", "-")
        assert flag in flat
        assert f"env {env_name(option.dest)}" in flat
    assert flat.count("(default:") == len(_OPTIONS)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--max-bytes", "5Q"], {}, "invalid size '5Q'"),
        (["--port", "70000"], {}, "port 70000 is outside"),
        (["--workers", "0"], {}, "not a positive number"),
        (["--retry-delay", "-1"], {}, "is negative"),
        (["--tls-cert", "x.pem"], {}, "--tls-cert and --tls-key go together"),
        (["--no-such-flag"], {}, "unrecognized arguments"),
        ([], {"WITHCACHE_PORT": "http"}, "WITHCACHE_PORT: invalid port"),
        ([], {"WITHCACHE_CURATE": "maybe"}, "WITHCACHE_CURATE='maybe' is not a boolean"),
        ([], {"WITHCACHE_MAX_BYTES": "lots"}, "WITHCACHE_MAX_BYTES: invalid size"),
    ],
)
def test_bad_values_exit_2_with_one_line(args, env, message):
    result = run(*args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("withcache-server: error: ")
    assert message in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data-dir", "{file}"], "data dir {file} is a file, not a folder"),
        (["--data-dir", "{file}/data"], "data dir {file}/data can't be made: {file} is a file"),
        (["--host", "nosuch.invalid"],
         "cannot listen on nosuch.invalid:0: no such address or host name 'nosuch.invalid'"),
        (["--tls-cert", "{tmp}/none.pem", "--tls-key", "{tmp}/none.key"],
         "cannot load --tls-cert {tmp}/none.pem: no such file"),
        (["--tls-cert", "{file}", "--tls-key", "{file}"],
         "cannot load --tls-cert/--tls-key: [SSL] PEM lib"),
    ],
)  # fmt: skip
def test_start_up_problems_say_what_to_fix(tmp_path, args, message):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    names = {"file": blocker, "tmp": tmp_path}
    args = [a.format(**names) for a in args]
    if "--data-dir" not in args:
        args += ["--data-dir", str(tmp_path / "data")]
    result = run(*args, "--port", "0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("withcache-server: error: " + message.format(**names))


def test_unwritable_data_dir(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    result = run("--data-dir", str(folder / "data"), "--port", "0")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "is not writable" in result.stderr


def test_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("--data-dir", str(tmp_path), "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"withcache-server: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def test_flags_beat_env_which_beats_defaults():
    env = {"WITHCACHE_PORT": "4000", "WITHCACHE_WORKERS": "7", "WITHCACHE_CURATE": "yes",
           "WITHCACHE_ALLOW_ORIGIN": "*.nvidia.com, repo.radeon.com",
           "WITHCACHE_MAX_BYTES": "1.5G"}  # fmt: skip
    settings = settings_from(["--port", "5000"], env)
    assert settings.port == 5000
    assert settings.workers == 7
    assert settings.curate is True
    assert settings.allow_origins == ("*.nvidia.com", "repo.radeon.com")
    assert settings.max_bytes == 3 * 2**29
    assert settings_from([], {}).port == 3000


def test_secrets_come_only_from_env_and_are_not_in_repr():
    settings = settings_from([], {"WITHCACHE_ADMIN_PASSWORD": "hunter2"})
    assert settings.admin_password == "hunter2"
    assert "hunter2" not in repr(settings)
