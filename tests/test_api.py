"""The JSON API against a real server, real origin and real SQLite: tokens and
their scopes, every operator action, verification, and bad input getting a
JSON 4xx. Every answer is checked against the server's OpenAPI document."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time

import pytest
from api_client import Api
from conftest import TEST_FLAGS, CacheHost, curl

PASSWORD = "op pass-phrase 7"
LOCKED = {"WITHCACHE_ADMIN_PASSWORD": PASSWORD}
BODY = os.urandom(300_000)


@pytest.fixture(scope="module")
def shared(tmp_path_factory, ca_file):
    """One server for the tests that change nothing."""
    host = CacheHost(
        tmp_path_factory.mktemp("api") / "data", TEST_FLAGS,
        {**os.environ, "SSL_CERT_FILE": str(ca_file), **LOCKED},
    )  # fmt: skip
    host.start()
    api = Api(host.url)
    yield host, api.with_token(api.create_token("shared", "admin", PASSWORD))
    host.stop()


def start(cache_host, *flags: str) -> tuple[object, Api]:
    """A password-protected server and an API client holding an admin token."""
    host = cache_host(*flags, env=LOCKED)
    api = Api(host.url)
    return host, api.with_token(api.create_token("admin-test", "admin", PASSWORD))


def wait_fill(api: Api, fill_id: int, until=("done", "failed", "cancelled"), timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fill = api.get(f"/fills/{fill_id}").body
        if fill["state"] in until:
            return fill
        time.sleep(0.05)
    raise AssertionError(f"fill {fill_id} still {fill['state']} after {timeout}s")


def wait_verify(api: Api, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.get("/verify").body
        if run["state"] != "running":
            return run
        time.sleep(0.05)
    raise AssertionError("verification still running")


def fill(api: Api, url: str, **extra) -> dict:
    answer = api.post("/fills", {"url": url, **extra})
    assert answer.status == 201, answer
    return wait_fill(api, answer.body["id"])


def test_tokens_are_shown_once_and_only_their_digest_is_kept(cache_host):
    host = cache_host(env=LOCKED)
    anonymous = Api(host.url)
    refused = anonymous.get("/status")
    assert refused.status == 401 and "Bearer" in refused.headers["WWW-Authenticate"]
    assert "API token" in refused.error
    wrong = anonymous.call("POST", "/tokens", {"name": "ci"}, password="guess")
    assert wrong.status == 401 and wrong.error == "wrong admin password"

    made = anonymous.call("POST", "/tokens", {"name": "ci", "scope": "admin"}, password=PASSWORD)
    assert made.status == 201
    token = made.body["token"]
    assert token.startswith("wct_") and made.body["scope"] == "admin"
    api = anonymous.with_token(token)
    assert api.get("/status").status == 200
    listed = api.get("/tokens").body["items"]
    assert [(t["name"], t["scope"]) for t in listed] == [("ci", "admin")]
    assert "token" not in listed[0]
    assert listed[0]["last_used"] is not None
    assert api.post("/tokens", {"name": "ci"}).status == 409

    with sqlite3.connect(host.data_dir / "cache.db") as db:
        stored = db.execute("SELECT * FROM tokens").fetchall()
    assert token not in repr(stored)
    assert stored[0][3] == hashlib.sha256(token.encode()).hexdigest()

    assert api.delete("/tokens/ci").status == 204
    assert api.get("/status").status == 401
    second = anonymous.with_token(anonymous.create_token("second", "read", PASSWORD))
    assert second.delete("/tokens/ci").status == 403  # a read token manages nothing
    assert anonymous.call("DELETE", "/tokens/ci", password=PASSWORD).status == 404
    events = Api(host.url).with_token(anonymous.create_token("ops", "admin", PASSWORD))
    kinds = [e["kind"] for e in events.get("/events", q="ci").body["items"]]
    assert kinds.count("token.created") == 1 and kinds.count("token.revoked") == 1
    log = host.log()
    assert token not in log and PASSWORD not in log


def test_read_tokens_look_and_only_admin_tokens_act(origin, cache_host):
    url = origin.add("/api/scopes.bin", BODY)
    _, admin = start(cache_host)
    reader = admin.with_token(admin.create_token("dashboard", "read", PASSWORD))
    for path in ("/status", "/artifacts", "/misses", "/fills", "/events"):
        assert reader.get(path).status == 200, path
    for method, path, body in [
        ("POST", "/fills", {"url": url}),
        ("POST", "/misses/approve", {"url": url}),
        ("POST", "/fills/clear-finished", None),
        ("POST", "/verify", None),
        ("DELETE", "/artifacts/1", None),
        ("GET", "/tokens", None),
    ]:
        answer = reader.call(method, path, body)
        assert answer.status == 403, (method, path)
        assert "read-only" in answer.error
    assert admin.get("/fills").body["total"] == 0
    assert origin.gets("/api/scopes.bin") == 0


def test_password_guessing_is_throttled_and_tokens_still_work(cache_host):
    host, admin = start(cache_host)
    anonymous = Api(host.url)
    for _ in range(3):
        assert anonymous.call("GET", "/tokens", password="guess").status == 401
    throttled = anonymous.call("GET", "/tokens", password=PASSWORD)
    assert throttled.status == 429 and int(throttled.headers["Retry-After"]) >= 1
    assert admin.get("/tokens").status == 200


def test_add_list_and_delete(origin, cache_host):
    url = origin.add("/api/add.bin", BODY)
    host, api = start(cache_host)
    sha = hashlib.sha256(BODY).hexdigest()
    added = api.post("/fills", {"url": url + "?sig=secret", "sha256": sha.upper()})
    assert added.status == 201
    assert added.headers["Location"] == f"/api/v1/fills/{added.body['id']}"
    assert "sig=secret" not in repr(added.body)  # a signed query is never shown
    done = wait_fill(api, added.body["id"])
    assert done["state"] == "done" and done["percent"] == 100 and done["bytes_done"] == len(BODY)
    cached = api.post("/fills", {"url": url})  # cached already: nothing is fetched
    assert cached.status == 200 and cached.body["sha256"] == sha
    assert cached.headers["Location"] == f"/api/v1/artifacts/{cached.body['id']}"
    assert origin.gets("/api/add.bin") == 1
    again = api.post("/fills", {"url": url, "refresh": True})  # unless asked to
    assert again.status == 201
    assert wait_fill(api, again.body["id"])["state"] == "done"
    assert origin.gets("/api/add.bin") == 2

    (artifact,) = api.get("/artifacts", url=url + "?other=query").body["items"]
    assert artifact["sha256"] == sha and artifact["size"] == len(BODY)
    assert curl("-f", host.url + artifact["serve_path"]).stdout == BODY
    assert api.get("/artifacts", q="add.bin").body["total"] == 1
    assert api.get("/artifacts", q=sha).body["total"] == 1
    assert api.get("/artifacts", q="nothing-like-it").body["total"] == 0
    assert api.get(f"/artifacts/{artifact['id']}").body == artifact
    status = api.get("/status").body
    assert status["artifacts"] == 1 and status["bytes_stored"] == len(BODY)

    deleted = api.delete(f"/artifacts/{artifact['id']}")
    assert deleted.status == 200 and deleted.body["id"] == artifact["id"]
    assert api.get(f"/artifacts/{artifact['id']}").status == 404
    assert api.delete(f"/artifacts/{artifact['id']}").status == 404
    (event,) = api.get("/events", kind="artifact.deleted").body["items"]
    assert event["actor"] == "api:admin-test" and event["url"] == url
    queued = api.get("/events", kind="fill.queued").body["items"]
    assert [e["actor"] for e in queued] == ["api:admin-test"] * 2


def test_add_with_the_wrong_sha256_keeps_nothing(origin, cache_host):
    url = origin.add("/api/wrong-sha.bin", BODY)
    _, api = start(cache_host)
    failed = fill(api, url, sha256="0" * 64)
    assert failed["state"] == "failed" and "SHA-256 mismatch" in failed["error"]
    assert api.get("/artifacts").body["total"] == 0
    assert api.get("/fills", state="failed").body["total"] == 1
    assert api.get("/fills", state="done").body["total"] == 0


def test_a_second_add_while_one_runs_joins_it(origin, cache_host):
    url = origin.add("/api/slow.bin", BODY, rate=200_000)
    _, api = start(cache_host)
    first = api.post("/fills", {"url": url}).body
    again = api.post("/fills", {"url": url})
    assert again.status == 202 and again.body["id"] == first["id"]
    pinned = api.post("/fills", {"url": url, "sha256": "ab" * 32})
    assert pinned.status == 409 and "already queued or running" in pinned.error
    assert api.post(f"/fills/{first['id']}/cancel").status == 204
    assert wait_fill(api, first["id"])["state"] == "cancelled"
    assert api.post(f"/fills/{first['id']}/cancel").status == 409
    retried = api.post(f"/fills/{first['id']}/retry")
    assert retried.status == 200 and retried.body["state"] in ("queued", "running")
    origin.resources["/api/slow.bin"].rate = None
    assert wait_fill(api, retried.body["id"])["state"] == "done"
    assert api.post(f"/fills/{retried.body['id']}/retry").status == 409
    assert api.post("/fills/clear-finished").body == {"cleared": 2}
    assert api.get("/fills").body["total"] == 0
    assert api.post("/fills/999/retry").status == 404


def test_curate_approve_and_dismiss(origin, cache_host):
    wanted = origin.add("/api/wanted.bin", BODY)
    junk = origin.add("/api/junk.bin", BODY)
    host, api = start(cache_host, "--curate")
    for url in (wanted, junk, wanted):
        assert curl("-o", "/dev/null", "-w", "%{http_code}", host.blob_url(url)).stdout == b"404"
    misses = api.get("/misses").body
    assert misses["total"] == 2
    assert {m["url"]: m["count"] for m in misses["items"]} == {wanted: 2, junk: 1}
    assert api.get("/misses", q="junk").body["total"] == 1

    approved = api.post("/misses/approve", {"url": wanted + "?token=abc"})
    assert approved.status == 200
    assert wait_fill(api, approved.body["id"])["state"] == "done"
    host.wait_cached(wanted)
    assert api.post("/misses/dismiss", {"url": junk}).status == 204
    assert api.post("/misses/dismiss", {"url": junk}).status == 404
    assert api.post("/misses/approve", {"url": junk}).status == 404
    assert api.get("/misses").body["total"] == 0
    assert origin.gets("/api/junk.bin") == 0


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "message"),
    [
        ("POST", "/fills", b'{"url": ', None, 400, "not valid JSON"),
        ("POST", "/fills", b"url=x", {"Content-Type": "application/x-www-form-urlencoded"},
         415, "Content-Type: application/json"),
        ("POST", "/fills", b'["http://h/x"]', {"Content-Type": "application/json"}, 400,
         "must be a JSON object"),
        ("POST", "/fills", b'{"url": "http://h/x", "mirror": 1}', None, 400, "unknown field"),
        ("POST", "/fills", b"{}", None, 400, "missing field 'url'"),
        ("POST", "/fills", b'{"url": true}', None, 400, "bad url: expected string"),
        ("POST", "/fills", b'{"url": "ftp://h/x"}', None, 400, "not an http(s) URL"),
        ("POST", "/fills", b'{"url": "http://h/x", "sha256": "abc"}', None, 400, "64 hex digits"),
        ("POST", "/fills", b'{"url": "http://\\u0000/"}', None, 400, "control character"),
        ("POST", "/verify", b'{"quarantine": "yes"}', None, 400, "expected boolean"),
        ("POST", "/tokens", b'{"name": "../x"}', None, 400, "a token name is"),
        ("POST", "/tokens", b'{"name": "x", "scope": "root"}', None, 400, "bad scope"),
        ("POST", "/tokens", b'{"name": "x", "scope": ""}', None, 400, "bad scope"),
        ("GET", "/fills/abc", None, None, 404, "Not Found"),
        ("GET", "/fills/0", None, None, 400, "bad id"),
        ("GET", "/fills/99999999999999999999", None, None, 400, "bad id"),
        ("GET", "/fills?limit=0", None, None, 400, "bad limit"),
        ("GET", "/fills?offset=-1", None, None, 400, "bad offset"),
        ("GET", "/fills?state=sleeping", None, None, 400, "bad state"),
        ("GET", "/artifacts?sort=size;drop", None, None, 400, "bad sort"),
        ("GET", "/artifacts?url=gopher://h/", None, None, 400, "bad url"),
        ("GET", "/artifacts?q=" + "x" * 1001, None, None, 400, "longer than 1000"),
        ("GET", "/events?kind=", None, None, 400, "bad kind"),
        ("GET", "/nothing/here", None, None, 404, "Not Found"),
        ("PUT", "/fills", b"{}", None, 405, "Method Not Allowed"),
        ("GET", "/verify", None, None, 404, "no verification has run"),
    ],
)  # fmt: skip
def test_bad_input_gets_a_json_4xx(shared, method, path, body, headers, status, message):
    host, api = shared
    sent = {"Authorization": f"Bearer {api.token}", "Content-Type": "application/json"}
    answer = api.raw(method, "/api/v1" + path, body, {**sent, **(headers or {})})
    assert answer.status == status, answer
    assert message in answer.body["error"], answer.body
    if status == 405:
        assert answer.headers["Allow"] == "GET,POST"
    assert "Traceback" not in host.log()


def test_verify_reports_then_quarantines_bad_blobs(origin, cache_host):
    good, flipped, gone = (os.urandom(200_000) for _ in range(3))
    urls = {
        name: origin.add(f"/api/verify-{name}.bin", body)
        for name, body in (("good", good), ("flipped", flipped), ("gone", gone))
    }
    host, api = start(cache_host)
    for url in urls.values():
        assert fill(api, url)["state"] == "done"
    blob = {name: host.data_dir / "blobs" / sha[:2] / sha for name, sha in (
        ("good", hashlib.sha256(good).hexdigest()),
        ("flipped", hashlib.sha256(flipped).hexdigest()),
        ("gone", hashlib.sha256(gone).hexdigest()),
    )}  # fmt: skip
    with open(blob["flipped"], "r+b") as f:  # one bit of rot in the middle
        f.seek(100_000)
        byte = f.read(1)
        f.seek(100_000)
        f.write(bytes([byte[0] ^ 1]))
    blob["gone"].unlink()

    started = api.post("/verify")
    assert started.status == 202 and started.body["quarantine"] is False
    report = wait_verify(api)
    assert report["state"] == "done" and report["blobs"] == 3 and report["checked"] == 3
    assert report["bytes_checked"] == report["bytes_total"] == 600_000
    problems = {c["artifacts"][0]["url"]: c for c in report["corrupt"]}
    assert set(problems) == {urls["flipped"], urls["gone"]}
    assert problems[urls["flipped"]]["problem"].startswith("content: the bytes hash to")
    assert problems[urls["gone"]]["problem"].startswith("missing")
    assert not any(c["quarantined"] for c in report["corrupt"])
    assert blob["flipped"].exists() and api.get("/artifacts").body["total"] == 3

    assert api.post("/verify", {"quarantine": True}).status == 202
    report = wait_verify(api)
    assert all(c["quarantined"] for c in report["corrupt"]) and len(report["corrupt"]) == 2
    assert [a["url"] for a in api.get("/artifacts").body["items"]] == [urls["good"]]
    assert not blob["flipped"].exists()
    kept = host.data_dir / "quarantine" / blob["flipped"].name
    assert kept.exists()  # kept aside for a look, never served
    # The rotten bytes are never served: the next request is a miss that fills afresh.
    assert curl("-f", host.blob_url(urls["flipped"])).stdout == flipped
    host.wait_cached(urls["flipped"])
    assert origin.gets("/api/verify-flipped.bin") == 2
    assert curl("-f", host.blob_url(urls["flipped"])).stdout == flipped
    kinds = [e["kind"] for e in api.get("/events").body["items"]]
    assert kinds.count("artifact.quarantined") == 2 and kinds.count("verify.finished") == 2
    assert api.post("/verify").status == 202
    assert wait_verify(api)["corrupt"] == []
