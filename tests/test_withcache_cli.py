"""The `withcache` command against a real server: tokens, add --wait with its
progress bar on a real pseudo-terminal, ls/rm/misses/approve, verify, and
one-line errors with exit statuses that say what went wrong."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import socket
import stat
import subprocess
import time

import pytest
from api_client import Api
from conftest import BIN, TEST_FLAGS, CacheHost, curl
from test_api import LOCKED, PASSWORD

from withcache.cli import build_parser

BODY = os.urandom(400_000)


def withcache(*args: str, env: dict[str, str] | None = None, tty: bool = False):
    """Run `withcache`; with `tty`, its stderr is a pseudo-terminal (stdout stays a pipe)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WITHCACHE_")}
    full_env.update(env or {})
    command = [str(BIN / "withcache"), *args]
    if not tty:
        return subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=60)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=full_env
    )
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    stdout = proc.stdout.read().decode()
    proc.wait(10)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, screen.decode())


def env_for(host, token: str | None = None, **more: str) -> dict[str, str]:
    env = {"WITHCACHE_SERVER": host.url, **more}
    if token:
        env["WITHCACHE_TOKEN"] = token
    return env


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("withcache: error: "), lines
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def host(tmp_path_factory, ca_file):
    server = CacheHost(
        tmp_path_factory.mktemp("cli") / "data", TEST_FLAGS,
        {**os.environ, "SSL_CERT_FILE": str(ca_file), **LOCKED},
    )  # fmt: skip
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def admin(host) -> str:
    return Api(host.url).create_token("cli-admin", "admin", PASSWORD)


def test_token_create_prints_it_once_then_it_works_until_revoked(host):
    refused = withcache("token", "create", "nightly", env=env_for(host))
    assert refused.returncode == 4
    assert "WITHCACHE_ADMIN_PASSWORD" in one_error_line(refused)
    wrong = withcache(
        "token", "create", "nightly", env=env_for(host, WITHCACHE_ADMIN_PASSWORD="no")
    )
    assert wrong.returncode == 4 and "wrong admin password" in one_error_line(wrong)

    made = withcache(
        "token", "create", "nightly", "--scope", "admin",
        env=env_for(host, WITHCACHE_ADMIN_PASSWORD=PASSWORD),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert made.stdout == token + "\n" and token.startswith("wct_")
    assert "shown this once" in made.stderr and token not in made.stderr
    listed = withcache("token", "ls", env=env_for(host, token))
    assert "nightly" in listed.stdout and token not in listed.stdout
    assert withcache("ls", env=env_for(host, token)).returncode == 0
    assert withcache("token", "revoke", "nightly", env=env_for(host, token)).returncode == 0
    gone = withcache("ls", env=env_for(host, token))
    assert gone.returncode == 4 and "unknown or revoked" in one_error_line(gone)
    assert token not in host.log()


def test_add_wait_draws_a_bar_on_a_terminal(origin, host, admin):
    url = origin.add("/cli/slow.bin", BODY, rate=300_000)
    result = withcache("add", url, "--wait", env=env_for(host, admin), tty=True)
    assert result.returncode == 0, result.stderr
    sha = hashlib.sha256(BODY).hexdigest()
    assert result.stdout == f"{sha}  {len(BODY)}  {url}\n"  # scriptable: size in bytes
    bar = result.stderr
    assert bar.count("\r[") >= 2, bar  # redrawn in place as the fill advances
    assert "%" in bar and "KiB of 390.6 KiB" in bar
    assert bar.endswith("\r\n")  # the bar's line is ended before the command exits


def test_add_wait_in_a_pipe_prints_only_the_result(origin, host, admin):
    url = origin.add("/cli/piped.bin", BODY)
    result = withcache("add", url, "--wait", env=env_for(host, admin))
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and result.stderr.startswith("fill ")
    assert result.stdout.startswith(hashlib.sha256(BODY).hexdigest())


def test_add_wait_with_the_wrong_sha256_fails(origin, host, admin):
    url = origin.add("/cli/wrong.bin", BODY)
    result = withcache("add", url, "--sha256", "ab" * 32, "--wait", env=env_for(host, admin))
    assert result.returncode == 1
    assert "SHA-256 mismatch" in result.stderr.splitlines()[-1]


def test_misses_approve_ls_rm_under_curate(origin, cache_host):
    url = origin.add("/cli/curated.bin", BODY)
    server = cache_host("--curate", env=LOCKED)
    token = Api(server.url).create_token("ops", "admin", PASSWORD)
    env = env_for(server, token)
    curl("-o", "/dev/null", server.blob_url(url))
    listed = withcache("misses", env=env)
    assert listed.returncode == 0 and url in listed.stdout and "awaiting approval" in listed.stdout
    approved = withcache("approve", url, env=env)
    assert approved.returncode == 0 and approved.stdout.startswith("fill ")
    server.wait_cached(url)
    shown = withcache("ls", "curated", env=env)
    assert shown.stdout.splitlines()[0].split() == [
        "ID", "SIZE", "HITS", "FETCHED", "LAST", "HIT", "PIN", "FROM", "URL"]  # fmt: skip
    assert shown.stdout.splitlines()[1].split()[-3:] == ["-", "origin", url]
    assert withcache("ls", "--json", env=env).stdout.count('"sha256"') == 1
    # Pins, by URL or id; ls --pinned shows only them.
    assert withcache("ls", "--pinned", env=env).stdout.splitlines()[1:] == []
    pinned = withcache("pin", url, env=env)
    assert pinned.returncode == 0 and pinned.stdout.startswith("pinned ") and url in pinned.stdout
    (row,) = withcache("ls", "--pinned", env=env).stdout.splitlines()[1:]
    assert row.split()[-3:] == ["pinned", "origin", url]
    artifact_id = row.split()[0]
    unpinned = withcache("unpin", artifact_id, "--json", env=env)
    assert unpinned.returncode == 0 and json.loads(unpinned.stdout)[0]["pinned"] is False
    missing = withcache("pin", "999999", env=env)
    assert missing.returncode == 1 and "not cached: 999999" in one_error_line(missing)
    removed = withcache("rm", url, env=env)
    assert removed.returncode == 0 and removed.stdout.startswith("deleted ")
    again = withcache("rm", url, env=env)
    assert again.returncode == 1 and "not cached" in one_error_line(again)
    assert withcache("approve", url, env=env).returncode == 1  # the miss is settled


def test_verify_reports_quarantines_and_exits_1(origin, cache_host):
    url = origin.add("/cli/rot.bin", BODY)
    server = cache_host(env=LOCKED)
    env = env_for(server, Api(server.url).create_token("ops", "admin", PASSWORD))
    assert withcache("add", url, "--wait", env=env).returncode == 0
    sha = hashlib.sha256(BODY).hexdigest()
    (server.data_dir / "blobs" / sha[:2] / sha).write_bytes(b"rot" + BODY[3:])
    report = withcache("verify", env=env)
    assert report.returncode == 1
    assert report.stdout.startswith(f"corrupt  {sha}  content: ") and url in report.stdout
    assert "1 bad" in report.stderr
    fixed = withcache("verify", "--quarantine", env=env)
    assert fixed.returncode == 1 and fixed.stdout.startswith("quarantined")
    clean = withcache("verify", env=env)
    assert clean.returncode == 0 and clean.stdout == "" and "0 of 0 blobs" in clean.stderr
    assert withcache("verify", "--status", env=env).returncode == 0


@pytest.mark.parametrize(
    ("args", "env", "status", "message"),
    [
        (["ls"], {"WITHCACHE_SERVER": ""}, 2, "set WITHCACHE_SERVER"),
        (["ls"], {"WITHCACHE_SERVER": "ftp://cache"}, 2, "bad cache-host URL"),
        (["ls"], {"WITHCACHE_SERVER": "127.0.0.1:9", "WITHCACHE_TOKEN": "x"}, 3,
         "cannot reach the cache-host at http://127.0.0.1:9: connection refused"),
        (["ls"], {"WITHCACHE_TOKEN": "wct_not-a-real-one"}, 4, "unknown or revoked API token"),
        (["ls"], {}, 4, "set WITHCACHE_TOKEN"),
        (["add", "http://h/x"], {"read": "1"}, 4, "read-only"),
        (["add", "gopher://h/x"], {"admin": "1"}, 2, "not an http(s) URL"),
        (["add", "notaurl"], {}, 2,
         "bad URL 'notaurl': not an http(s) URL: it must start with http:// or https://"),
        (["add", "http://h/x", "--sha256", "abc"], {}, 2, "bad --sha256 'abc': give 64 hex"),
        (["approve", "http://h/x", "notaurl"], {}, 2, "bad URL 'notaurl': not an http(s) URL"),
        (["rm", "12", "garbage"], {}, 2, "bad URL 'garbage': not an http(s) URL"),
        ([], {}, 2, "arguments are required: command (see withcache --help)"),
        (["--timeout", "soon", "ls"], {}, 2, "invalid number of seconds 'soon'"),
        (["ls"], {"WITHCACHE_CONNECT_TIMEOUT": "-1", "admin": "1"}, 2,
         "WITHCACHE_CONNECT_TIMEOUT='-1' is not a number of seconds"),
        (["token", "create", "x", "-o", "/no/such/folder/t"], {"admin": "1"}, 2,
         "can't write the token to /no/such/folder/t"),
        (["rm", "12345"], {"admin": "1"}, 1, "not cached: 12345"),
        (["ls", "--sort", "colour"], {"admin": "1"}, 1, "bad sort"),
        (["ls", "--limit", "0"], {"admin": "1"}, 2, "invalid limit"),
        (["frobnicate"], {}, 2, "invalid choice"),
    ],
)  # fmt: skip
def test_errors_are_one_line_with_a_telling_exit_status(host, admin, args, env, status, message):
    env = dict(env)
    if env.pop("admin", None):
        env["WITHCACHE_TOKEN"] = admin
    if env.pop("read", None):
        env["WITHCACHE_TOKEN"] = (
            Api(host.url).with_token(admin).create_token(f"reader-{time.monotonic_ns()}", "read")
        )
    env.setdefault("WITHCACHE_SERVER", host.url)
    result = withcache(*args, env=env)
    assert result.returncode == status, result
    assert message in one_error_line(result)


def test_a_server_that_is_not_withcache(origin, admin):
    result = withcache("ls", env={"WITHCACHE_SERVER": origin.url(""), "WITHCACHE_TOKEN": admin})
    assert result.returncode == 3
    assert "is it a withcache cache-host" in one_error_line(result)


def test_add_of_a_cached_url_says_so_and_leaves_the_origin_alone(origin, host, admin):
    url = origin.add("/cli/seeded.bin", BODY)
    env = env_for(host, admin)
    first = withcache("add", url, "--wait", env=env)
    assert first.returncode == 0, first.stderr
    again = withcache("add", url, "--wait", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout  # the same result line, from the cache
    assert again.stderr == f"already cached: {url} (--refresh fetches it again)\n"
    assert origin.gets("/cli/seeded.bin") == 1
    refreshed = withcache("add", url, "--refresh", "--wait", env=env)
    assert refreshed.returncode == 0 and refreshed.stdout == first.stdout
    assert origin.gets("/cli/seeded.bin") == 2
    pinned = withcache("add", url, "--sha256", "ab" * 32, env=env)
    assert pinned.returncode == 1 and "cached already with other bytes" in one_error_line(pinned)


def test_every_subcommand_answers_json(origin, cache_host):
    url = origin.add("/cli/json.bin", BODY)
    server = cache_host("--curate", env=LOCKED)
    env = env_for(server, Api(server.url).create_token("ops", "admin", PASSWORD))
    curl("-o", "/dev/null", server.blob_url(url))

    def answer(*args: str):
        result = withcache(*args, "--json", env=env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    assert answer("misses")["items"][0]["url"] == url
    (fill,) = answer("approve", url)
    assert fill["url"] == url and fill["state"] in ("queued", "running", "done")
    server.wait_cached(url)
    artifact = answer("add", url)  # cached already: the artifact
    assert artifact["sha256"] == hashlib.sha256(BODY).hexdigest()
    assert artifact["size"] == len(BODY)
    assert answer("ls")["items"] == [{**artifact, "stale": None}]  # listings say if stale
    assert answer("verify")["state"] == "done"
    assert answer("verify", "--status")["corrupt"] == []
    made = answer("token", "create", "reader")
    assert made["name"] == "reader" and made["token"].startswith("wct_")
    assert {t["name"] for t in answer("token", "ls")["items"]} == {"ops", "reader"}
    assert answer("token", "revoke", "reader") == {"revoked": ["reader"]}
    (gone,) = answer("rm", str(artifact["id"]))
    assert gone["id"] == artifact["id"]
    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    (tokens,) = [a for a in commands.choices["token"]._actions if a.dest == "token_command"]
    every = [p for n, p in commands.choices.items() if n != "token"]
    for sub in [*every, *tokens.choices.values()]:
        assert "--json" in sub.format_help(), sub.prog


def test_token_create_writes_a_file_only_its_owner_can_read(host, tmp_path):
    target = tmp_path / "token"
    target.write_text("old")
    target.chmod(0o644)
    made = withcache(
        "token", "create", "filed", "-o", str(target),
        env=env_for(host, WITHCACHE_ADMIN_PASSWORD=PASSWORD),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout == ""  # the token is in the file and nowhere else
    token = target.read_text().strip()
    assert token.startswith("wct_") and token not in made.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert f"written to {target} (mode 600)" in made.stderr
    assert withcache("ls", env=env_for(host, token)).returncode == 0


def test_a_cache_host_that_never_answers_costs_the_timeout_and_exit_3(silent_port, admin):
    server = f"http://127.0.0.1:{silent_port}"
    started = time.monotonic()
    result = withcache("--timeout", "1", "ls", env={"WITHCACHE_SERVER": server,
                                                    "WITHCACHE_TOKEN": admin})  # fmt: skip
    took = time.monotonic() - started
    assert result.returncode == 3
    assert one_error_line(result) == (
        f"withcache: error: cannot reach the cache-host at {server}: connected, but no answer "
        "within 1 s (--timeout, WITHCACHE_TIMEOUT)"
    )
    assert took < 5
    by_env = withcache("ls", env={"WITHCACHE_SERVER": server, "WITHCACHE_TOKEN": admin,
                                  "WITHCACHE_TIMEOUT": "0.5"})  # fmt: skip
    assert by_env.returncode == 3 and "within 0.5 s" in by_env.stderr


def test_a_cache_host_that_takes_no_connection_costs_the_connect_timeout(admin):
    # A listener whose backlog is full: the kernel drops further SYNs, so connect() hangs.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        queued = [socket.socket() for _ in range(3)]
        for sock in queued:
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
        try:
            time.sleep(0.1)
            env = {"WITHCACHE_SERVER": f"127.0.0.1:{port}", "WITHCACHE_TOKEN": admin}
            result = withcache("--connect-timeout", "0.5", "ls", env=env)
        finally:
            for sock in queued:
                sock.close()
    assert result.returncode == 3
    assert one_error_line(result).endswith(
        ": no connection within 0.5 s (--connect-timeout, WITHCACHE_CONNECT_TIMEOUT)"
    )
