"""The cache fails between the shim's probe and the tool's GET: the user still
gets the origin's bytes, never the cache's error page with exit 0.

The shim's HEAD finds a hit, so it re-points the URL; then, at the moment the
real tool runs, the artifact is deleted (on a --curate host the GET is then a
miss awaiting approval: a 404) or the cache-host is killed. REAL_CURL and
REAL_WGET name a wrapper that does that once and then execs the real tool, so
the race is forced every time, against the real server. Both the Python shim
and the native one are run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from api_client import PREFIX, Api
from conftest import BIN, shim, shim_env

from withcache import client

PASSWORD = "fails pass-phrase 3"
BODY = os.urandom(300_000)


@pytest.fixture
def curated(cache_host):
    """A --curate host (a GET of what it doesn't hold is a 404) and an admin API."""
    host = cache_host("--curate", env={"WITHCACHE_ADMIN_PASSWORD": PASSWORD})
    api = Api(host.url)
    return host, api.with_token(api.create_token("fails", "admin", PASSWORD))


@pytest.fixture(params=["python", "native"])
def shims(request) -> Path:
    return BIN if request.param == "python" else request.getfixturevalue("native_shim")


def stored(host, api: Api, origin, path: str, body: bytes = BODY) -> tuple[str, int]:
    """An origin URL the host holds (fetched by an operator's add), and its artifact id."""
    url = origin.add(path, body)
    assert api.post("/fills", {"url": url}).status == 201
    host.wait_cached(url)
    (artifact,) = api.get("/artifacts", url=url).body["items"]
    return url, artifact["id"]


def at_get(tmp_path: Path, tool: str, action: str) -> dict[str, str]:
    """Env naming a stand-in real tool that runs `action` (a shell command) the
    first time it is started, then execs the real tool."""
    folder = tmp_path / "real"
    folder.mkdir(exist_ok=True)
    wrapper = folder / tool
    wrapper.write_text(
        "#!/bin/sh\n"
        'if mkdir "$0.done" 2>/dev/null; then sh -c "$AT_GET"; fi\n'
        f'exec /usr/bin/{tool} "$@"\n'
    )
    wrapper.chmod(0o755)
    return {f"REAL_{tool.upper()}": str(wrapper), "AT_GET": action}


def delete(host, api: Api, artifact_id: int) -> str:
    return (
        f"curl -sf -o /dev/null -X DELETE -H 'Authorization: Bearer {api.token}' "
        f"{host.url}{PREFIX}/artifacts/{artifact_id}"
    )


def kill(host) -> str:
    """Kill the host and wait until its port refuses connections."""
    return (
        f"kill -9 {host.proc.pid}; "
        f"while /usr/bin/curl -s -o /dev/null {host.url}/healthz; do sleep 0.01; done"
    )


def run(shims: Path, tool: str, *args: str, host, env: dict[str, str], cwd: Path):
    return shim(tool, *args, env=shim_env(host.url, **env), cwd=cwd, shims=shims)


def raw(shims: Path, tool: str, *args: str, env: dict[str, str], cwd: Path):
    """A shim's run with its stdout as bytes."""
    return subprocess.run(
        [str(shims / f"{tool}withcache"), *args], capture_output=True, env=env, cwd=cwd,
        timeout=60,
    )  # fmt: skip


# -- the artifact is gone at the GET: the cache answers 404


def test_curl_to_a_file_gets_the_origins_bytes(curated, origin, tmp_path, shims):
    host, api = curated
    url, artifact = stored(host, api, origin, "/fails/curl-file.run")
    before = origin.gets("/fails/curl-file.run")
    env = at_get(tmp_path, "curl", delete(host, api, artifact))
    result = run(shims, "curl", "-sS", "-o", "x.run", url, host=host, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"hit {url}" in result.stderr
    assert (tmp_path / "x.run").read_bytes() == BODY  # not "not cached: awaiting approval"
    assert "the cache failed (exit 22): running the command as written" in result.stderr
    assert origin.gets("/fails/curl-file.run") == before + 1


def test_curl_to_stdout_writes_the_origins_bytes_once(curated, origin, tmp_path, shims):
    host, api = curated
    url, artifact = stored(host, api, origin, "/fails/curl-stdout.run")
    env = at_get(tmp_path, "curl", delete(host, api, artifact))
    result = raw(shims, "curl", "-sS", url, env=shim_env(host.url, **env), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == BODY


def test_curl_with_its_own_fail_gets_the_origins_bytes(curated, origin, tmp_path, shims):
    host, api = curated
    url, artifact = stored(host, api, origin, "/fails/curl-fail.run")
    env = at_get(tmp_path, "curl", delete(host, api, artifact))
    result = run(shims, "curl", "-fsSL", "-O", url, host=host, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "curl-fail.run").read_bytes() == BODY


@pytest.mark.parametrize("output", [("-O", "y.run"), ()], ids=["output-document", "own-name"])
def test_wget_gets_the_origins_bytes(curated, origin, tmp_path, shims, output):
    host, api = curated
    url, artifact = stored(host, api, origin, "/fails/y.run")
    env = at_get(tmp_path, "wget", delete(host, api, artifact))
    (tmp_path / "work").mkdir()
    result = run(shims, "wget", "-q", *output, url, host=host, env=env, cwd=tmp_path / "work")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "work" / "y.run").read_bytes() == BODY
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["y.run"]  # no y.run.1


# -- the cache-host is gone at the GET


@pytest.mark.parametrize("tool", ["curl", "wget"])
def test_a_cache_host_killed_before_the_get(curated, origin, tmp_path, shims, tool):
    host, api = curated
    url, _ = stored(host, api, origin, f"/fails/killed-{tool}.run")
    env = at_get(tmp_path, tool, kill(host))
    output = "-o" if tool == "curl" else "-O"
    result = run(shims, tool, "-q" if tool == "wget" else "-sS", output, "z.run", url,
                 host=host, env=env, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "z.run").read_bytes() == BODY


# -- what is not run again


def test_a_local_failure_is_not_taken_for_the_caches(curated, origin, tmp_path, shims):
    """curl can't write its output (exit 23): the real tool would fail the same
    way, so the origin is not asked for the bytes."""
    host, api = curated
    url, _ = stored(host, api, origin, "/fails/local.run")
    before = origin.gets("/fails/local.run")
    result = shim(
        "curl", "-sS", "-o", "/nonexistent/dir/x.run", url, server=host.url, cwd=tmp_path,
        shims=shims,
    )  # fmt: skip
    assert result.returncode == 23, result.stderr
    assert origin.gets("/fails/local.run") == before


def test_a_hit_that_works_runs_once(curated, origin, tmp_path, shims):
    host, api = curated
    url, _ = stored(host, api, origin, "/fails/once.run")
    before = origin.gets("/fails/once.run")
    env = at_get(tmp_path, "curl", "echo ran >> runs")
    result = run(shims, "curl", "-sS", "-o", "x.run", url, host=host, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "x.run").read_bytes() == BODY
    assert origin.gets("/fails/once.run") == before
    assert "running the command as written" not in result.stderr


def test_a_body_cut_off_on_stdout_fails_loudly_and_is_not_repeated(curated, origin, tmp_path):
    """Bytes already written to stdout can't be taken back: curl's own failure
    stands (non-zero), and the output is never the body twice over."""
    host, api = curated
    body = BODY * 64  # 19 MB: more than loopback's socket buffers hold
    url, _ = stored(host, api, origin, "/fails/cut.run", body)
    before = origin.gets("/fails/cut.run")
    proc = subprocess.Popen(
        [str(BIN / "curlwithcache"), "-sS", url], env=shim_env(host.url), cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    first = proc.stdout.read(1 << 20)  # the hit is flowing (the pipe holds it back)...
    host.kill()  # ...when the cache-host dies
    rest, stderr = proc.communicate(timeout=30)
    assert proc.returncode in (18, 56), stderr
    assert len(first) + len(rest) < len(body)
    assert b"running the command as written" not in stderr
    assert origin.gets("/fails/cut.run") == before


def test_the_shim_passes_a_signal_on_and_dies_of_it(curated, origin, tmp_path):
    """SIGTERM to the shim (timeout(1), a CI runner) ends the tool it runs, and
    the shim ends as the tool did, not by running the command again."""
    host, api = curated
    url, _ = stored(host, api, origin, "/fails/term.run", BODY * 64)
    proc = subprocess.Popen(
        [str(BIN / "curlwithcache"), "-sS", url], env=shim_env(host.url), cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout.read(1 << 16)  # curl is writing (and now blocks on the full pipe)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == -signal.SIGTERM
    assert b"running the command as written" not in proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()


# -- the client library (no probe: its GET is the question)


def test_client_fetch_after_a_delete_gets_the_origins_bytes(curated, origin, tmp_path):
    host, api = curated
    url, artifact = stored(host, api, origin, "/fails/client.run")
    assert api.delete(f"/artifacts/{artifact}").status == 200
    got = client.fetch(host.url, url, tmp_path / "c.run")
    assert (got.source, got.note) == ("origin", "not cached")
    assert (tmp_path / "c.run").read_bytes() == BODY


def test_client_fetch_when_the_cache_dies_mid_body(cache_host, origin, tmp_path):
    """The cache streams a fill and is killed halfway: the fetch falls back to
    the origin, and no partial file is left beside the destination."""
    host = cache_host()
    url = origin.add("/fails/client-cut.run", BODY, rate=400_000)
    (tmp_path / "out").mkdir()
    killer = threading.Timer(0.3, host.kill)
    killer.start()
    try:
        got = client.fetch(host.url, url, tmp_path / "out" / "c.run")
    finally:
        killer.join()
    assert got.source == "origin" and "cache failed" in got.note, got
    assert (tmp_path / "out" / "c.run").read_bytes() == BODY
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["c.run"]


def test_an_ignored_signal_stays_ignored_in_the_tool(curated, origin, tmp_path, shims):
    """A background job's SIGINT is ignored (sh does that for `cmd &`): the tool
    the shim runs for a hit ignores it too, as it would if the shim exec'd it."""
    host, api = curated
    url, _ = stored(host, api, origin, "/fails/ignored.run")
    env = at_get(tmp_path, "curl", "grep SigIgn /proc/$$/status > sigign")
    command = f"trap '' INT; exec {shims / 'curlwithcache'} -sS -o x.run {url}"
    result = subprocess.run(
        ["sh", "-c", command], env=shim_env(host.url, **env), cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"hit {url}" in result.stderr
    ignored = int((tmp_path / "sigign").read_text().split()[1], 16)
    assert ignored & (1 << (signal.SIGINT - 1))
