"""Every page of the operator UI at a phone's width (390x844) and a laptop's
(1280x800), in a real browser: nothing is wider than the screen, the
navigation is reachable (a menu on the phone), and every row's buttons are on
screen and work. Screenshots for docs/ come from here
(WITHCACHE_UI_SCREENSHOTS=docs)."""

from __future__ import annotations

import os
import re

import pytest
from api_client import Api
from conftest import TEST_FLAGS, CacheHost, curl
from playwright.sync_api import Page, expect

PASSWORD = "widths pass"
PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1280, "height": 800}
SCREENSHOTS = os.environ.get("WITHCACHE_UI_SCREENSHOTS")  # a folder, e.g. docs
LONG = "/nvidia/cuda/12.4.1/local_installers/cuda_12.4.1_550.54.15_linux-with-a-long-name"
# The buttons (and button-links) each page must show on screen, row actions included.
ACTIONS = {
    "/": ["Download", "Dismiss", "Cancel", "Delete", "Fetch"],
    "/misses": ["Download", "Dismiss", "Download selected", "Dismiss selected", "Filter"],
    "/downloads": ["Cancel", "Retry", "Clear finished"],
    "/cached": ["Delete", "Filter"],
    "/add": ["Fetch", "Add list"],
    "/lists/1": [],
    "/events": ["Filter"],
    "/tokens": ["Revoke", "Make token"],
}

# Visible elements reaching past either side of the screen (a table too wide,
# a header strip that doesn't wrap, a button pushed off to the right).
OVERFLOWING = """() => {
  const width = document.documentElement.clientWidth;
  const out = [];
  for (const e of document.querySelectorAll("body *")) {
    if (!e.checkVisibility()) continue;
    const r = e.getBoundingClientRect();
    if (r.width && r.height && (r.right > width + 0.5 || r.left < -0.5))
      out.push(`${e.tagName}.${e.className} [${Math.round(r.left)}, ${Math.round(r.right)}]`);
  }
  return {scroll: document.documentElement.scrollWidth, width, out: out.slice(0, 8)};
}"""


@pytest.fixture(scope="module")
def host(tmp_path_factory, origin, ca_file):
    """A curated cache-host with every kind of row: misses awaiting approval,
    a running, a queued and a failed fill, cached artifacts, a list with a bad
    line, a token."""
    env = {**os.environ, "SSL_CERT_FILE": str(ca_file), "WITHCACHE_ADMIN_PASSWORD": PASSWORD}
    flags = (*TEST_FLAGS, "--curate", "--workers", "1", "--max-bytes", "100G")
    server = CacheHost(tmp_path_factory.mktemp("widths") / "data", flags, env).start()
    api = Api(server.url).with_token(Api(server.url).create_token("ops", "admin", PASSWORD))
    for n in range(2):
        url = origin.add(f"{LONG}-{n}.run", bytes([n]) * 300_000)
        assert api.post("/fills", {"url": url}).status == 201
        server.wait_cached(url)
    lines = f"{origin.url(LONG)}-0.run\n{'not-a-url-' * 12}\n"
    assert api.post("/lists", {"text": lines, "source": f"rebuild{LONG}.txt"}).status == 201
    assert api.post("/fills", {"url": origin.url("/widths/not-there.iso")}).status == 201
    for n in range(2):
        curl("-o", "/dev/null", server.blob_url(origin.add(f"/widths/miss-{n}{LONG}.tgz", b"m")))
    slow = origin.add(f"/widths/slow{LONG}.tar.gz", b"s" * 50_000_000, rate=100_000)
    assert api.post("/fills", {"url": slow}).status == 201
    assert api.post("/fills", {"url": origin.add("/widths/queued.bin", b"q")}).status == 201
    yield server
    server.stop()


def log_in(page: Page, host: CacheHost) -> None:
    page.goto(host.url + "/login")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(host.url + "/")


def assert_fits(page: Page, where: str) -> None:
    found = page.evaluate(OVERFLOWING)
    assert found["scroll"] <= found["width"] and not found["out"], (where, found)


# Scrolled to and measured in one task: the progress table swaps itself in
# every second, which can detach a button between two separate steps.
SCROLL_AND_MEASURE = """e => {
  if (!e.isConnected) return null;
  e.scrollIntoView({block: "center", inline: "nearest"});
  const r = e.getBoundingClientRect();
  return {x: r.left, width: r.width};
}"""


def assert_on_screen(page: Page, name: str, where: str) -> None:
    button = page.get_by_role("button", name=name, exact=True).first
    box = None
    for _ in range(5):  # found again if a refresh swapped it out meanwhile
        expect(button).to_be_visible()
        box = button.evaluate(SCROLL_AND_MEASURE)
        if box:
            break
    width = page.viewport_size["width"]
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, (where, name, box)


def go(page: Page, section: str, phone: bool) -> None:
    """Reach a section as a person would: from the links, or the menu on a phone."""
    menu = page.get_by_text("Menu", exact=True)
    if phone:
        expect(page.locator(".strip .links")).to_be_hidden()
        menu.click()
    else:
        expect(menu).to_be_hidden()
    page.get_by_role("link", name=section, exact=True).click()


@pytest.mark.parametrize("size", [PHONE, LAPTOP], ids=["phone", "laptop"])
def test_every_page_fits_the_screen_and_its_actions_are_on_it(host, browser, size):
    context = browser.new_context(viewport=size)
    context.set_default_timeout(15_000)
    page = context.new_page()
    phone = size is PHONE
    try:
        page.goto(host.url + "/login")
        assert_fits(page, "/login")
        log_in(page, host)
        for path, names in ACTIONS.items():
            page.goto(host.url + path)
            assert_fits(page, path)
            for name in names:
                assert_on_screen(page, name, path)
        page.goto(host.url + "/cached")
        page.get_by_role("button", name="Delete").first.click()
        expect(page.get_by_role("heading", name="Delete this artifact?")).to_be_visible()
        assert_fits(page, "delete")
        assert_on_screen(page, "Delete for good", "delete")
        assert_on_screen(page, "Keep it", "delete")
        go(page, "Downloads", phone)
        expect(page).to_have_url(host.url + "/downloads")
        if SCREENSHOTS and phone:
            page.screenshot(path=f"{SCREENSHOTS}/ui-phone.png", full_page=True)
        go(page, "Events", phone)
        expect(page).to_have_url(host.url + "/events")
    finally:
        context.close()


def test_on_a_phone_every_row_action_works(host, origin, browser):
    context = browser.new_context(viewport=PHONE, has_touch=True, is_mobile=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        log_in(page, host)
        page.goto(host.url + "/misses")
        miss = page.locator("tr", has_text="/widths/miss-0")
        miss.get_by_role("button", name="Download").tap()
        expect(page).to_have_url(host.url + "/downloads")
        expect(page.locator("tr", has_text="/widths/miss-0").locator(".state")).to_have_text(
            re.compile("queued|running|done")
        )
        running = page.locator("tr", has_text="/widths/slow")
        running.get_by_role("button", name="Cancel").tap()
        expect(running.locator(".state")).to_have_text("cancelled")
        running.get_by_role("button", name="Retry").tap()
        # The retry is a new fill, listed first (active fills lead).
        expect(running.first.locator(".state")).to_have_text(re.compile("queued|running"))
        page.goto(host.url + "/misses")
        page.locator("tr", has_text="/widths/miss-1").get_by_role("button", name="Dismiss").tap()
        expect(page.locator("tr", has_text="/widths/miss-1")).to_have_count(0)
        page.goto(host.url + "/cached")
        page.locator("tr", has_text=f"{LONG}-1").get_by_role("button", name="Delete").tap()
        page.get_by_role("button", name="Delete for good").tap()
        expect(page.locator("tr", has_text=f"{LONG}-1")).to_have_count(0)
        assert_fits(page, "/cached after a delete")
    finally:
        context.close()
