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
        (["--revalidate", "*/latest/*=soon"], {}, "invalid --revalidate '*/latest/*=soon'"),
        (["--revalidate", "=1h"], {}, "give a URL glob"),
        (["--revalidate", "*=0s"], {}, "the maximum age must be above 0"),
        ([], {"WITHCACHE_REVALIDATE": "*SUMS*,*x=2w"}, "invalid --revalidate '*x=2w'"),
        (["--negative-ttl", "5 minutes"], {}, "invalid duration '5 minutes'"),
        (["--negative-ttl", "0"], {}, "it must be above 0"),
        (["--evict", "lfu"], {}, "invalid eviction policy 'lfu': the one policy is lru"),
        (["--evict-unused", "0"], {}, "not a positive number"),
        (["--local-copies", "5G"], {}, "--local-copies needs --blobs"),
        (["--blobs", "s3://bucket/prefix", "--local-copies", "lots"], {}, "invalid size 'lots'"),
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


def test_durations_and_revalidation_rules():
    from withcache.server.settings import RevalidateRule, parse_duration

    assert [parse_duration(t) for t in ("30s", "10m", "1h", "7d", "90", "1.5h", " 2D ")] == [
        30, 600, 3600, 7 * 86400, 90, 5400, 2 * 86400]  # fmt: skip
    for bad in ("", "m", "10w", "-5s", "1h30m"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert RevalidateRule.parse("*/latest/*") == RevalidateRule("*/latest/*", 3600.0)
    assert RevalidateRule.parse("*SUMS*=10m") == RevalidateRule("*SUMS*", 600.0)
    # The age follows the last `=`: a glob holding one is written with its age.
    assert RevalidateRule.parse("*?v=1=30s") == RevalidateRule("*?v=1", 30.0)
    with pytest.raises(ValueError, match="use a number"):
        RevalidateRule.parse("*?v=stable")


def test_revalidation_and_eviction_settings_from_flags_and_env():
    default = settings_from([], {})
    assert default.revalidate == () and default.negative_ttl == 300.0
    assert default.evict is None and default.evict_unused is None
    assert default.revalidate_after("https://h/latest/x") is None
    env = {"WITHCACHE_REVALIDATE": "*SHA256SUMS*=10m, */latest/*",
           "WITHCACHE_NEGATIVE_TTL": "1m", "WITHCACHE_EVICT": "lru",
           "WITHCACHE_EVICT_UNUSED": "30"}  # fmt: skip
    s = settings_from([], env)
    assert [str(r) for r in s.revalidate] == ["*SHA256SUMS*=600s", "*/latest/*=3600s"]
    assert s.negative_ttl == 60.0 and s.evict == "lru" and s.evict_unused == 30.0
    assert s.revalidate_after("https://dl.example/cuda/SHA256SUMS.txt") == 600.0
    assert s.revalidate_after("https://dl.example/latest/x.run") == 3600.0
    assert s.revalidate_after("https://dl.example/12.4/x.run") is None
    # The flag (repeatable) beats the variable, in its order: the first match counts.
    s = settings_from(["--revalidate", "*.deb=7d", "--revalidate", "*=30s"], env)
    assert [r.max_age for r in s.revalidate] == [7 * 86400, 30]
    assert s.revalidate_after("https://h/a/cuda-keyring_1.1.deb") == 7 * 86400


def test_local_copies_sizes_auto_and_none():
    blobs = ("--blobs", "s3://bucket/prefix")
    assert settings_from([*blobs, "--local-copies", "50G"], {}).local_copies == 50 << 30
    assert settings_from([*blobs], {"WITHCACHE_LOCAL_COPIES": "0"}).local_copies == 0
    assert settings_from([*blobs], {}).local_copies is None  # auto
    assert settings_from([*blobs, "--local-copies", "auto"], {}).local_copies is None
    # Redirected hits pass no bytes through the host: no copies unless asked for.
    assert settings_from([*blobs, "--redirect-hits"], {}).local_copies == 0
    asked = [*blobs, "--redirect-hits", "--local-copies", "1G"]
    assert settings_from(asked, {}).local_copies == 1 << 30
    assert settings_from([], {}).local_copies is None  # (meaningless without --blobs)
