"""schemathesis against the running server: generated requests (valid and
invalid) for every operation in /api/v1/openapi.json, with every check it has
(no 5xx, only documented statuses, bodies and headers as documented, invalid
input refused, auth not ignored, 405 with a true Allow header).

Bounded: a fixed number of examples per operation and a fixed seed, so a run
takes seconds and fails the same way twice. The server may fetch nothing
(--allow-origin matches no real host), so generated URLs never leave the box.
"""

from __future__ import annotations

import subprocess

from api_client import Api
from conftest import BIN
from test_api import PASSWORD, start, wait_fill

EXAMPLES = "15"  # per operation and phase
SEED = "20261125"


def schemathesis(host, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "st"), "run", f"{host.url}/api/v1/openapi.json", "--checks", "all",
         "--max-examples", EXAMPLES, "--seed", SEED, "--workers", "1", "--no-color",
         "--request-timeout", "10", "--generation-database", "none",
         "--phases", "examples,coverage,fuzzing,stateful", *options],
        capture_output=True, text=True, timeout=300, cwd=host.data_dir.parent,
    )  # fmt: skip


def test_the_api_does_what_its_openapi_document_says(origin, cache_host):
    host, api = start(cache_host)
    # Something to find: an artifact, a failed fill and a miss.
    done = api.post("/fills", {"url": origin.add("/st/a.bin", b"a" * 5000)}).body
    failed = api.post("/fills", {"url": origin.add("/st/gone.bin", status=404)}).body
    for fill in (done, failed):
        wait_fill(api, fill["id"])
    host.stop()
    host.flags = (*host.flags, "--allow-origin", "nothing.invalid")
    host.start()
    Api(host.url).with_token(api.token).get("/misses")  # still valid after the restart
    # A token that generated DELETE /tokens/{name} calls can't guess.
    token = Api(host.url).create_token("schemathesis-0f3a9c71e2", "admin", PASSWORD)

    bearer = schemathesis(host, "--header", f"Authorization: Bearer {token}",
                          "--exclude-path-regex", "^/tokens")  # fmt: skip
    assert bearer.returncode == 0, bearer.stdout[-6000:]
    # Token management with the admin password, so revoking any token is harmless.
    password = schemathesis(host, "--auth", f"op:{PASSWORD}", "--include-path-regex", "^/tokens")
    assert password.returncode == 0, password.stdout[-6000:]
    for run in (bearer, password):
        assert " passed" in run.stdout and "Tested:" in run.stdout
    log = host.log()
    assert "api.crashed" not in log and token not in log and PASSWORD not in log
