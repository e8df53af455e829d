"""Log lines: one per event, key=value or JSON (--log-format), never a secret,
library messages (aiohttp's) in the same one-line format."""

from __future__ import annotations

import json
import socket

import pytest
from api_client import Api
from conftest import curl
from page_client import PageClient
from test_api import LOCKED, PASSWORD


def stir(host) -> str:
    """Things that get logged: a bad login, a token, a refused API call, a
    miss, a malformed request; returns the token, which must not be logged."""
    PageClient(host.url).post("/login", {"password": "not " + PASSWORD})
    api = Api(host.url)
    token = api.create_token("logged", "read", PASSWORD)
    assert api.with_token(token).post("/fills", {"url": "http://h/x"}).status == 403
    assert api.with_token(token + "x").get("/status").status == 401
    curl("-o", "/dev/null", host.blob_url("http://127.0.0.1:9/nothing"))
    with socket.create_connection(("127.0.0.1", host.port), timeout=5) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nAuthorization: Bearer {token}\x01\r\n\r\n".encode())
        sock.recv(4096)
    return token


def test_json_log_lines(cache_host):
    host = cache_host("--log-format", "json", env=LOCKED)
    token = stir(host)
    host.stop()
    lines = host.log().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "event"} <= set(r) for r in records)
    events = {r["event"] for r in records}
    assert {"listening", "login.failed", "token.created", "request.refused", "stopping"} <= events
    listening = next(r for r in records if r["event"] == "listening")
    assert isinstance(listening["port"], int) and listening["mode"] == "auto"
    # The malformed request is bad input, not a server error: one info line.
    assert any(r["event"] == "request.refused" and r.get("status") == 400 for r in records)
    assert not any(r["level"] == "error" for r in records)
    text = host.log()
    assert token not in text and PASSWORD not in text and token[:20] not in text


def test_key_value_log_lines_by_default(cache_host):
    host = cache_host(env=LOCKED)
    token = stir(host)
    host.stop()
    lines = host.log().splitlines()
    assert all(" level=" in line and " event=" in line for line in lines)
    assert any("event=token.created" in line and "name=logged" in line for line in lines)
    text = host.log()
    assert token not in text and PASSWORD not in text and token[:20] not in text


@pytest.mark.parametrize("value", ["xml", "JSON", ""])
def test_bad_log_format_is_refused(tmp_path, value):
    from test_cli import run

    result = run("--data-dir", str(tmp_path), "--log-format", value)
    assert result.returncode == 2
    assert "invalid log format" in result.stderr
