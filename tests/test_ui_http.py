"""The operator UI over plain HTTP, as a browser without JavaScript (or an
attacker) sees it: login, sessions, CSRF, and bad input getting a 4xx."""

from __future__ import annotations

import re
import time

import pytest
from conftest import curl
from page_client import PageClient

PASSWORD = "s3cret pass-phrase"
LOCKED = {"WITHCACHE_ADMIN_PASSWORD": PASSWORD}


def _miss(host, url: str) -> None:
    """Probe like a shim: a curated host answers 404; an auto one starts the
    fill and may answer 200 already."""
    expected = (b"404",) if "--curate" in host.flags else (b"200", b"404")
    assert _head_status(host.blob_url(url)) in expected


def _head_status(url: str) -> bytes:
    return curl("-I", "-o", "/dev/null", "-w", "%{http_code}", url).stdout


def test_pages_need_a_login_and_the_read_path_does_not(origin, cache_host):
    url = origin.add("/http/open-read.bin", b"r" * 1000)
    host = cache_host(env=LOCKED)
    client = PageClient(host.url)
    for path in ("/", "/misses", "/downloads", "/downloads/table", "/cached", "/add", "/events"):
        reply = client.get(path)
        assert reply.status == 303, path
        assert reply.location.startswith("/login?next="), reply.location
    assert client.get("/login").status == 200
    # htmx's background polls get a 401 that sends the whole page to the login form.
    polled = client.get("/downloads/table", headers={"HX-Request": "true"})
    assert polled.status == 401 and polled.headers["HX-Redirect"].startswith("/login")
    # The read path stays open without any session.
    _miss(host, url)
    host.wait_cached(url)
    assert _head_status(host.blob_url(url)) == b"200"
    assert client.get("/healthz").status == 200


def test_login_sets_a_strict_httponly_expiring_cookie_and_logout_ends_it(cache_host):
    host = cache_host(env=LOCKED)
    client = PageClient(host.url)
    reply = client.post("/login", {"password": PASSWORD, "next": "/events?kind=login.succeeded"})
    assert reply.status == 303 and reply.location == "/events?kind=login.succeeded"
    (cookie,) = reply.set_cookies
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "max-age", "path"} <= attributes
    assert "samesite=strict" in cookie.lower()
    page = client.get("/events?kind=login.succeeded")
    assert page.status == 200 and "login.succeeded" in page.text and "Log out" in page.text
    stolen = dict(client.cookies)
    assert client.post("/logout", {"csrf": client.csrf()}).status == 303
    assert client.get("/").status == 303
    # The old cookie is no longer accepted either (a copy kept elsewhere is void).
    thief = PageClient(host.url)
    thief.cookies = stolen
    assert thief.get("/").status == 303


def test_wrong_passwords_are_refused_logged_and_then_slowed_down(cache_host):
    host = cache_host(env=LOCKED)
    client = PageClient(host.url)
    for _ in range(3):
        reply = client.post("/login", {"password": "guess"})
        assert reply.status == 403 and "Wrong password" in reply.text
        assert not reply.set_cookies
    # After a few tries, the next one must wait, even with the right password.
    throttled = client.post("/login", {"password": PASSWORD})
    assert throttled.status == 429
    assert int(throttled.headers["Retry-After"]) >= 1
    assert not throttled.set_cookies
    time.sleep(float(throttled.headers["Retry-After"]) + 0.1)
    client.login(PASSWORD)
    events = client.get("/events?kind=login.failed").text
    assert events.count('<td><span class="kind">login.failed</span></td>') == 3
    # The password never reaches the log or the pages.
    assert PASSWORD not in host.log() and "guess" not in host.log()
    assert PASSWORD not in events


def test_open_ui_warns_and_still_requires_csrf(origin, cache_host):
    host = cache_host("--curate")
    client = PageClient(host.url)
    page = client.get("/")
    assert "level=warning event=ui.open" in host.log()  # logged right after "listening"
    assert page.status == 200 and 'id="open-ui-warning"' in page.text
    url = origin.add("/http/open.iso", b"o" * 100)
    _miss(host, url)
    assert client.post("/misses", {"dismiss": url}).status == 403
    assert url in client.get("/misses").text
    reply = client.post("/misses", {"dismiss": url, "csrf": client.csrf(), "next": "/misses"})
    assert reply.status == 303
    assert url not in client.get("/misses").text


@pytest.fixture
def stocked(origin, cache_host):
    """A locked cache-host with one artifact, one miss and one failed fill."""
    cached = origin.add("/http/cached.tar", b"c" * 5000)
    missed = origin.add("/http/missed.tar", b"m" * 5000)
    host = cache_host("--curate", env=LOCKED)
    client = PageClient(host.url)
    client.login(PASSWORD)
    token = client.csrf()
    assert client.post("/add", {"url": cached, "csrf": token}).status == 303
    host.wait_cached(cached)
    bad = origin.url("/http/not-there")
    assert client.post("/add", {"url": bad, "csrf": token}).status == 303
    _miss(host, missed)
    deadline = time.monotonic() + 10
    while "failed</span>" not in client.get("/downloads").text:
        assert time.monotonic() < deadline, "the fill of a missing file did not fail"
        time.sleep(0.05)
    return host, client, cached, missed


def _state(client):
    """What an action could change: misses, fills, artifacts, and the blob."""
    cached = client.get("/cached").text
    rows = re.findall(r'<tr id="artifact-\d+">', cached)
    return (
        client.get("/misses").text.count('name="key"'),
        re.findall(r'data-state="(\w+)"', client.get("/downloads").text),
        len(rows),
    )


def test_every_action_without_session_or_csrf_is_refused_and_changes_nothing(stocked):
    host, client, cached, missed = stocked
    artifact_id = re.search(r'id="artifact-(\d+)"', client.get("/cached").text)[1]
    fill_id = re.search(r'id="fill-(\d+)" data-state="failed"', client.get("/downloads").text)[1]
    before = _state(client)
    token = client.csrf()
    other = PageClient(host.url)
    other.login(PASSWORD)
    other_token = other.csrf()
    actions = [
        ("/misses", {"download": missed}),
        ("/misses", {"dismiss": missed}),
        ("/misses", {"bulk": "dismiss", "key": missed}),
        (f"/downloads/{fill_id}/retry", {}),
        ("/downloads/clear", {}),
        (f"/cached/{artifact_id}/delete", {}),
        ("/add", {"url": origin_url(cached, "/http/other.tar")}),
        ("/logout", {}),
    ]
    tampered = dict(client.cookies)
    name, value = next(iter(tampered.items()))
    tampered[name] = value[:-1] + ("0" if value[-1] != "0" else "1")
    for path, form in actions:
        anonymous = PageClient(host.url)
        forged = PageClient(host.url)
        forged.cookies = tampered
        attempts = [
            (anonymous, {**form, "csrf": token}),  # no session
            (forged, {**form, "csrf": token}),  # a forged session
            (client, form),  # no token
            (client, {**form, "csrf": ""}),
            (client, {**form, "csrf": "0" * 64}),
            (client, {**form, "csrf": other_token}),  # another session's token
        ]
        for who, sent in attempts:
            reply = who.post(path, sent)
            assert reply.status == 403, (path, sent, reply.status, reply.text[:200])
        header = client.post(path, form, headers={"X-CSRF-Token": "wrong"})
        assert header.status == 403
    assert _state(client) == before
    assert _head_status(host.blob_url(cached)) == b"200"
    assert client.get("/").status == 200  # still logged in: /logout was refused too


def origin_url(sibling: str, path: str) -> str:
    return sibling.split("/http/")[0] + path


def test_the_csrf_header_works_as_well_as_the_form_field(stocked):
    _, client, _, missed = stocked
    reply = client.post("/misses", {"dismiss": missed}, headers={"X-CSRF-Token": client.csrf()})
    assert reply.status == 303
    assert missed not in client.get("/misses").text


BAD_PAGES = [
    "/cached?page=0",
    "/cached?page=-1",
    "/cached?page=abc",
    "/cached?page=99999999999999999999999",
    "/cached?sort=password",
    "/cached?sort=key%3BDROP%20TABLE%20artifacts",
    "/cached?order=sideways",
    "/cached?q=" + "x" * 9000,
    "/misses?page=1e3",
    "/misses?page=%C2%B2",
    "/events?page=%D9%A1",
    "/downloads?state=exploded",
    "/downloads/table?limit=100000",
    "/events?kind=no.such.kind",
    "/cached/99999999999999999999999/delete",
]


def test_bad_input_gets_a_4xx_never_a_5xx(stocked):
    host, client, cached, missed = stocked
    for path in BAD_PAGES:
        reply = client.get(path)
        assert 400 <= reply.status < 500, (path, reply.status, reply.text[:200])
    # Odd-but-valid listings still answer.
    for path in ("/cached?page=100000", "/cached?q=%25_%5C", "/events?q=%27%22<script>"):
        reply = client.get(path)
        assert reply.status == 200, path
        assert "<script>" not in reply.text.split("</head>")[1]
    token = client.csrf()
    bad_forms = [
        ("/add", {}),
        ("/add", {"url": "ftp://example.com/x"}),
        ("/add", {"url": "not a url"}),
        ("/add", {"url": cached, "sha256": "abc"}),
        ("/add", {"url": "http://" + "a" * 9000 + ".com/"}),
        ("/misses", {}),
        ("/misses", {"bulk": "explode"}),
        ("/misses", {"bulk": "download"}),
        ("/misses", {"dismiss": "http://never.missed/x"}),
        ("/downloads/999999/cancel", {}),
        ("/downloads/999999/retry", {}),
        ("/downloads/1/explode", {}),
        ("/cached/999999/delete", {}),
        ("/cached/abc/delete", {}),
    ]
    for path, form in bad_forms:
        reply = client.post(path, {**form, "csrf": token})
        assert 400 <= reply.status < 500, (path, form, reply.status, reply.text[:200])
    junk = client.request(
        "POST", "/add", body=b"\xff\xfe" * 100,
        headers={"Content-Type": "multipart/form-data; boundary=zz", "X-CSRF-Token": token},
    )  # fmt: skip
    assert 400 <= junk.status < 500, junk.status
    # Redirects after an action stay on this host.
    reply = client.post("/misses", {"dismiss": missed, "csrf": token, "next": "//evil.example/"})
    assert reply.status == 303 and reply.location == "/misses"
    assert "Traceback" not in host.log()


def test_add_with_a_wrong_expected_sha256_fails_the_fill_and_keeps_nothing(origin, cache_host):
    url = origin.add("/http/pinned.iso", b"p" * 20000)
    host = cache_host(env=LOCKED)
    client = PageClient(host.url)
    client.login(PASSWORD)
    reply = client.post("/add", {"url": url, "sha256": "ab" * 32, "csrf": client.csrf()})
    assert reply.status == 303 and reply.location == "/downloads"
    deadline = time.monotonic() + 10
    while 'data-state="failed"' not in (page := client.get("/downloads")).text:
        assert time.monotonic() < deadline, page.text
        time.sleep(0.05)
    assert "SHA-256 mismatch" in page.text
    assert "Nothing cached" in client.get("/cached").text
    assert _head_status(host.blob_url(url)) == b"404"


def test_sessions_survive_a_restart_and_the_secret_can_come_from_the_environment(cache_host):
    host = cache_host(env=LOCKED)
    client = PageClient(host.url)
    client.login(PASSWORD)
    host.restart()
    client.port = host.port
    assert client.get("/").status == 200
    # With WITHCACHE_SESSION_SECRET set, that secret signs instead: old cookies are void.
    host.env = {**host.env, "WITHCACHE_SESSION_SECRET": "from-the-environment"}
    host.restart()
    client.port = host.port
    assert client.get("/").status == 303


def _urls_in_order(html: str, urls: list[str]) -> list[str]:
    return sorted((u for u in urls if u in html), key=html.index)


def test_misses_can_be_downloaded_and_dismissed_in_bulk(origin, cache_host):
    urls = [origin.add(f"/http/bulk-{n}.bin", bytes([n]) * 3000) for n in range(3)]
    host = cache_host("--curate", env=LOCKED)
    client = PageClient(host.url)
    client.login(PASSWORD)
    for url in urls:
        _miss(host, url)
    token = client.csrf()
    form = [("csrf", token), ("bulk", "download"), ("key", urls[0]), ("key", urls[1])]
    reply = client.post("/misses", [*form, ("next", "/misses")])
    assert reply.status == 303 and reply.location == "/downloads"
    for url in urls[:2]:
        host.wait_cached(url)
    assert _head_status(host.blob_url(urls[2])) == b"404"  # not ticked: still a miss
    form = [("csrf", token), ("bulk", "dismiss"), ("key", urls[2]), ("next", "/misses")]
    assert client.post("/misses", form).status == 303
    assert "No misses" in client.get("/misses").text
    assert "miss.dismissed" in client.get("/events?kind=miss.dismissed").text


def test_cached_artifacts_filter_sort_and_page(origin, cache_host):
    sizes = {"small": 1000, "large": 30000, "medium": 9000}
    urls = {name: origin.add(f"/http/sort/{name}.bin", b"s" * n) for name, n in sizes.items()}
    host = cache_host(env=LOCKED)
    client = PageClient(host.url)
    client.login(PASSWORD)
    for url in urls.values():
        _miss(host, url)
        host.wait_cached(url)
    everything = list(urls.values())
    by_size = client.get("/cached?sort=size&order=asc").text
    assert _urls_in_order(by_size, everything) == [urls["small"], urls["medium"], urls["large"]]
    by_size = client.get("/cached?sort=size&order=desc").text
    assert _urls_in_order(by_size, everything) == [urls["large"], urls["medium"], urls["small"]]
    assert 'aria-sort="descending"' in by_size
    by_url = client.get("/cached?sort=key").text  # URLs sort A-Z first
    assert _urls_in_order(by_url, everything) == sorted(everything)
    found = client.get("/cached?q=medi").text
    assert _urls_in_order(found, everything) == [urls["medium"]]
    sha = re.search(r'title="([0-9a-f]{64})"', found)[1]
    assert _urls_in_order(client.get(f"/cached?q={sha}").text, everything) == [urls["medium"]]
    assert _urls_in_order(client.get("/cached?page=2").text, everything) == []
    assert "Nothing cached matches" in client.get("/cached?q=nothing-like-it").text


def test_ui_and_api_answer_the_same_status_for_a_missing_thing(cache_host):
    host = cache_host(env=LOCKED)
    client = PageClient(host.url)
    client.login(PASSWORD)
    token = client.csrf()
    assert client.post("/downloads/999/retry", {"csrf": token}).status == 404
    assert client.post("/downloads/999/cancel", {"csrf": token}).status == 404
    assert client.post("/cached/999/delete", {"csrf": token}).status == 404


def test_pin_unpin_unblock_and_what_eviction_takes_next(origin, cache_host, free_port):
    old = origin.add("/http/evict-old.bin", b"o" * 5000)
    new = origin.add("/http/evict-new.bin", b"n" * 7000)
    host = cache_host("--evict-unused", "30", env=LOCKED)
    client = PageClient(host.url)
    client.login(PASSWORD)
    for url in (old, new):
        _miss(host, url)
        host.wait_cached(url)
    assert curl("-f", "-o", "/dev/null", host.blob_url(new)).returncode == 0  # new: hit later
    time.sleep(2.5)  # hits reach the store in batches
    page = client.get("/cached").text
    section = page[page.index('id="eviction-next"') :]
    assert "--evict-unused 30" in section
    assert section.index("evict-old.bin") < section.index("evict-new.bin")
    (old_id,) = host.rows(f"SELECT id FROM artifacts WHERE key = '{old}'")[0]
    pinned = client.post(f"/cached/{old_id}/pin", {"csrf": client.csrf(), "next": "/cached"})
    assert pinned.status == 303 and pinned.location == "/cached"
    page = client.get("/cached").text
    assert 'class="pinned"' in page and "Unpin" in page
    assert "evict-old.bin" not in page[page.index('id="eviction-next"') :]
    assert client.post(f"/cached/{old_id}/unpin", {"csrf": client.csrf()}).status == 303
    assert host.rows(f"SELECT pinned FROM artifacts WHERE id = {old_id}") == [(0,)]
    # A forged form (no CSRF token) changes nothing.
    assert client.post(f"/cached/{old_id}/pin", {"csrf": "forged"}).status == 403
    assert host.rows(f"SELECT pinned FROM artifacts WHERE id = {old_id}") == [(0,)]
    assert client.post("/cached/999999/pin", {"csrf": client.csrf()}).status == 404
    # An origin that refuses connections is listed on Downloads with Unblock.
    down = f"http://127.0.0.1:{free_port}"
    _miss(host, f"{down}/x.bin")
    deadline = time.monotonic() + 20
    while "unhealthy-origins" not in (page := client.get("/downloads").text):
        assert time.monotonic() < deadline, page
        time.sleep(0.1)
    assert down in page and "origin unreachable" in page
    unblocked = client.post("/downloads/origins/unblock", {"csrf": client.csrf(), "origin": down})
    assert unblocked.status == 303
    assert "unhealthy-origins" not in client.get("/downloads").text
    again = client.post("/downloads/origins/unblock", {"csrf": client.csrf(), "origin": down})
    assert again.status == 404 and "is not marked unhealthy" in again.text
