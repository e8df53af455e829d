"""A logout is kept in the metadata store: the logged-out cookie is refused by
every cache-host sharing the store, and after a restart, until it expires."""

import pytest
from page_client import PageClient

pytestmark = pytest.mark.backends
PASSWORD = "s3cret pass-phrase"
LOCKED = {"WITHCACHE_ADMIN_PASSWORD": PASSWORD}


def with_cookies(host, cookies):
    client = PageClient(host.url)
    client.cookies = dict(cookies)
    return client


def test_a_logout_holds_on_every_host_and_after_a_restart(cache_host, backend):
    a = cache_host(env=LOCKED, name="a")
    # On the scale-out stores another host shares a's store; SQLite has one host.
    b = cache_host(env=LOCKED, name="b") if backend.scale else a
    browser = PageClient(a.url)
    browser.login(PASSWORD)
    copied = dict(browser.cookies)
    elsewhere = with_cookies(b, copied)
    assert elsewhere.get("/").status == 200  # the session is good on b too
    csrf = elsewhere.csrf()
    assert browser.post("/logout", {"csrf": browser.csrf()}).status == 303
    assert elsewhere.get("/").status == 303  # to the login form
    refused = elsewhere.post("/downloads/clear", {"csrf": csrf})
    assert refused.status == 403
    b.restart()
    assert with_cookies(b, copied).get("/").status == 303
    # A new login is not affected.
    fresh = PageClient(b.url)
    fresh.login(PASSWORD)
    assert fresh.get("/").status == 200
