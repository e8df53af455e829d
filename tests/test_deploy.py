"""deploy/: the Containerfile, compose.yml and the systemd unit, read as the
tools that consume them read them, and the server started with the exact
command line (and environment) each one gives it.

No container engine runs here, so the image is not built: the Containerfile
is linted (hadolint) and its ENTRYPOINT, ENV and HEALTHCHECK are run as the
image would run them. The compose file is checked by docker-compose itself,
the unit by systemd-analyze.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import BIN, CacheHost

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PASSWORD = "deploy pass-phrase"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthz(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
        return json.load(response)


def stop_cleanly(host: CacheHost, timeout: float) -> None:
    """SIGTERM, as `podman stop` and systemd send it: the server must exit 0 in time."""
    assert host.proc is not None
    host.proc.send_signal(signal.SIGTERM)
    assert host.proc.wait(timeout) == 0
    assert "event=stopping" in host.log()


# -- Containerfile


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    found, pending = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") and not pending:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_containerfile_passes_hadolint():
    result = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(DEPLOY / "Containerfile")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_containerfile_image_shape():
    steps = instructions(DEPLOY / "Containerfile")
    for word, args in steps:
        if word == "COPY" and "--from" not in args:
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    final = final_stage(steps)
    base = final[0][1]
    assert re.fullmatch(r"\S*python:3\.1[1-9]-slim\S*", base), base
    (user,) = [args for word, args in final if word == "USER"]
    assert user.split(":")[0] not in ("root", "0"), "the cache-host must not run as root"
    assert user.split(":")[0].isdigit()  # numeric: runAsNonRoot can check it
    volumes = [json.loads(args) for word, args in final if word == "VOLUME"]
    assert ["/data"] in volumes
    env = dict(kv.split("=", 1) for word, args in final if word == "ENV" for kv in args.split())
    assert env["WITHCACHE_DATA_DIR"] == "/data"
    assert [args for word, args in final if word == "EXPOSE"] == [env["WITHCACHE_PORT"]]
    (health,) = [args for word, args in final if word == "HEALTHCHECK"]
    assert "withcache.server.healthcheck" in health


def test_containerfile_entrypoint_serves_and_its_healthcheck_tells(tmp_path):
    """Start the server as the image does (ENTRYPOINT, ENV; /data, the listen
    address and the port moved to this test's), then run its HEALTHCHECK."""
    final = final_stage(instructions(DEPLOY / "Containerfile"))
    env = dict(kv.split("=", 1) for word, args in final if word == "ENV" for kv in args.split())
    port = free_port()
    env.update(
        WITHCACHE_DATA_DIR=str(tmp_path / "data"), WITHCACHE_HOST="127.0.0.1",
        WITHCACHE_PORT=str(port), WITHCACHE_ADMIN_PASSWORD=PASSWORD,
    )  # fmt: skip
    full_env = {"PATH": os.environ["PATH"], **env}
    (entrypoint,) = [json.loads(args) for word, args in final if word == "ENTRYPOINT"]
    assert entrypoint == ["withcache-server"]
    (health,) = [args for word, args in final if word == "HEALTHCHECK"]
    check = json.loads(health.split(" CMD ", 1)[1])
    assert check[0] == "python"
    check[0] = str(BIN / "python")

    def healthcheck() -> subprocess.CompletedProcess[str]:
        return subprocess.run(check, capture_output=True, text=True, env=full_env, timeout=30)

    down = healthcheck()
    assert down.returncode == 1 and down.stderr.startswith("unhealthy: ")
    host = CacheHost(tmp_path / "data", (), full_env, argv=[str(BIN / entrypoint[0])])
    host.start()
    try:
        assert host.port == port
        assert healthz(host.url)["status"] == "ok"
        assert healthcheck().returncode == 0
        assert (tmp_path / "data" / "cache.db").exists()
        stop_cleanly(host, timeout=10)
    finally:
        host.stop()
    assert healthcheck().returncode == 1


# -- compose.yml


def test_compose_file_builds_from_the_containerfile_and_keeps_the_password_out():
    compose = yaml.safe_load((DEPLOY / "compose.yml").read_text())
    service = compose["services"]["withcache"]
    context = (DEPLOY / service["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / service["build"]["dockerfile"]) == DEPLOY / "Containerfile"
    volume, target = service["volumes"][0].split(":")
    assert target == "/data" and volume in compose["volumes"]
    assert service["ports"] == ["3000:3000"]
    password = service["environment"]["WITHCACHE_ADMIN_PASSWORD"]
    assert password.startswith("${WITHCACHE_ADMIN_PASSWORD:?"), "the password comes from the env"
    assert service["restart"] == "unless-stopped"


def test_compose_file_is_valid_for_docker_compose():
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose is missing: apt-get install docker-compose (.ci/run does)"
    compose = str(DEPLOY / "compose.yml")
    base_env = {k: v for k, v in os.environ.items() if k != "WITHCACHE_ADMIN_PASSWORD"}
    missing = subprocess.run(
        [tool, "-f", compose, "config"], capture_output=True, text=True, timeout=60, env=base_env
    )
    assert missing.returncode != 0 and "set WITHCACHE_ADMIN_PASSWORD" in missing.stderr
    given = subprocess.run(
        [tool, "-f", compose, "config"], capture_output=True, text=True, timeout=60,
        env={**base_env, "WITHCACHE_ADMIN_PASSWORD": PASSWORD},
    )  # fmt: skip
    assert given.returncode == 0, given.stderr
    rendered = yaml.safe_load(given.stdout)["services"]["withcache"]
    assert rendered["environment"]["WITHCACHE_ADMIN_PASSWORD"] == PASSWORD


# -- withcache.service


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections of a systemd unit; a key given twice keeps both values, in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


def test_unit_is_hardened():
    service = unit(DEPLOY / "withcache.service")["Service"]

    def one(key: str) -> str:
        (value,) = service[key]
        return value

    assert one("DynamicUser") == "yes" or one("User") not in ("", "root")
    assert one("StateDirectory") == "withcache"
    assert one("ProtectSystem") == "strict" and one("ProtectHome") == "yes"
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "RestrictSUIDSGID"):
        assert one(key) == "yes", key
    assert one("CapabilityBoundingSet") == ""
    assert "${STATE_DIRECTORY}" in one("ExecStart")
    assert one("Restart") == "on-failure"


def test_unit_passes_systemd_analyze(tmp_path):
    """`verify` finds no problem (only the program's path is changed: it must
    exist), and `security` rates the sandbox well."""
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing (.ci/run installs systemd)"
    text = (DEPLOY / "withcache.service").read_text()
    program = shlex.split(unit(DEPLOY / "withcache.service")["Service"]["ExecStart"][0])[0]
    copy = tmp_path / "withcache.service"
    copy.write_text(text.replace(program, str(BIN / "withcache-server")))
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(copy)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout)
    assert match, security.stdout[-2000:] + security.stderr
    assert float(match[1]) <= 2.0, security.stdout  # systemd calls below 2.0 "OK"


@pytest.mark.timeout(60)
def test_unit_exec_start_serves(tmp_path):
    """The server started with the unit's exact ExecStart and Environment=, as
    systemd would: ${STATE_DIRECTORY} expanded, the env file's settings on
    top (here: listen on loopback, any free port); SIGTERM stops it in time."""
    service = unit(DEPLOY / "withcache.service")["Service"]
    env = {"PATH": os.environ["PATH"], "STATE_DIRECTORY": str(tmp_path / "state")}
    for assignment in service["Environment"]:
        key, _, value = assignment.partition("=")
        env[key] = value
    assert service["EnvironmentFile"] == ["-/etc/withcache/withcache.env"]
    env_file = {"WITHCACHE_HOST": "127.0.0.1", "WITHCACHE_PORT": "0",
                "WITHCACHE_ADMIN_PASSWORD": PASSWORD}  # fmt: skip
    env.update(env_file)
    (tmp_path / "state").mkdir(mode=0o700)
    (exec_start,) = service["ExecStart"]
    argv = [re.sub(r"\$\{(\w+)\}", lambda m: env[m[1]], word) for word in shlex.split(exec_start)]
    assert Path(argv[0]).name == "withcache-server"
    argv[0] = str(BIN / "withcache-server")
    host = CacheHost(tmp_path / "state", (), env, argv=argv)
    host.start()
    try:
        assert healthz(host.url)["status"] == "ok"
        assert (tmp_path / "state" / "cache.db").exists()
        stop_seconds = float(service["TimeoutStopSec"][0].rstrip("s"))
        stop_cleanly(host, timeout=stop_seconds)
    finally:
        host.stop()
