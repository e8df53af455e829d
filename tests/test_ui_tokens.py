"""API tokens from the operator UI: made with the session and CSRF token,
shown once, listed without their values, revoked at once."""

from __future__ import annotations

import re

from api_client import Api
from page_client import PageClient
from test_api import LOCKED, PASSWORD

TOKEN_RE = re.compile(r"wct_[A-Za-z0-9_-]{43}")


def test_make_show_once_and_revoke_tokens_in_the_ui(cache_host):
    host = cache_host(env=LOCKED)
    browser = PageClient(host.url)
    assert browser.get("/tokens").status == 303  # a login first
    browser.login(PASSWORD)
    csrf = browser.csrf("/tokens")
    assert browser.post("/tokens", {"name": "ci", "scope": "admin"}).status == 403  # no CSRF

    made = browser.post("/tokens", {"csrf": csrf, "name": "ci", "scope": "admin"})
    assert made.status == 200 and made.headers["Cache-Control"] == "no-store"
    (token,) = set(TOKEN_RE.findall(made.text))
    api = Api(host.url).with_token(token)
    assert api.get("/tokens").body["items"][0]["created_by"].startswith("ui:")

    listed = browser.get("/tokens")
    assert "ci" in listed.text and token not in listed.text  # never shown again
    taken = browser.post("/tokens", {"csrf": csrf, "name": "ci", "scope": "read"})
    assert taken.status == 400 and "exists already" in taken.text
    bad = browser.post("/tokens", {"csrf": csrf, "name": "no spaces", "scope": "read"})
    assert bad.status == 400 and "a token name is" in bad.text
    assert browser.post("/tokens", {"csrf": csrf, "name": "x", "scope": "root"}).status == 400

    revoked = browser.post("/tokens/ci/revoke", {"csrf": csrf})
    assert revoked.status == 303 and revoked.location == "/tokens"
    assert api.get("/status").status == 401
    assert browser.post("/tokens/ci/revoke", {"csrf": csrf}).status == 404
    assert token not in host.log()
