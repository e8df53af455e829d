"""The operator UI in a real browser (Debian's chromium, driven by Playwright),
against a real cache-host, a real origin and real curl."""

from __future__ import annotations

import os
import re

from conftest import curl
from playwright.sync_api import expect
from port_origin import PortOrigin

PASSWORD = "browser pass"
LOCKED = {"WITHCACHE_ADMIN_PASSWORD": PASSWORD}
# A folder (docs) to save the README's screenshots in: ui.png (Downloads), ui-overview.png.
SCREENSHOTS = os.environ.get("WITHCACHE_UI_SCREENSHOTS")


def _submit_password(page, host, password: str) -> None:
    page.goto(host.url + "/")
    expect(page).to_have_url(re.compile(r"/login\?next=/$"))
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def _log_in(page, host) -> None:
    _submit_password(page, host, PASSWORD)
    # The click does not wait for the answer that sets the cookie: a goto before
    # it lands would cancel the login.
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


def _row(page, text: str):
    return page.locator("tr", has_text=text)


def test_operator_downloads_a_miss_watches_it_fill_then_deletes_it(origin, cache_host, page):
    body = bytes(range(256)) * 2400  # 600 KiB at 300 KiB/s: the bar has time to move
    url = origin.add("/vendor/driver-550.54.run", body, rate=300_000)
    host = cache_host("--curate", env=LOCKED)
    _log_in(page, host)
    expect(page).to_have_url(host.url + "/")

    assert curl("-o", "/dev/null", "-w", "%{http_code}", host.blob_url(url)).stdout == b"404"
    page.get_by_role("link", name="Misses", exact=True).first.click()
    miss = _row(page, url)
    expect(miss).to_contain_text("awaiting approval")
    # Mark the document: a full reload would lose this; htmx swaps keep it.
    page.evaluate("window.sameDocument = true")
    miss.get_by_role("button", name="Download").click()

    expect(page).to_have_url(host.url + "/downloads")
    fill = _row(page, url)
    expect(fill.locator(".state")).to_have_text("running", timeout=10_000)
    seen = int(fill.locator("progress").get_attribute("value") or 0)
    assert seen < 100
    expect(fill.locator(".state")).to_have_text("done", timeout=20_000)
    # Finished: no bar, but how long it took and how fast it went.
    expect(fill.locator("progress")).to_have_count(0)
    expect(fill.locator(".size")).to_have_text("600.0 KiB")
    expect(fill.locator(".duration")).to_have_text(re.compile(r"^\d+(\.\d)? s$"))
    expect(fill.locator(".rate")).to_have_text(re.compile(r"^\d+\.\d KiB/s$"))
    assert page.evaluate("window.sameDocument") is True
    assert origin.gets("/vendor/driver-550.54.run") == 1

    page.get_by_role("link", name="Cached", exact=True).click()
    artifact = _row(page, url)
    expect(artifact).to_contain_text("600.0 KiB")
    artifact.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("heading", name="Delete this artifact?")).to_be_visible()
    page.get_by_role("button", name="Delete for good").click()
    expect(page).to_have_url(re.compile(r"/cached"))
    expect(page.locator("table.artifacts")).to_contain_text("Nothing cached")
    gone = curl("-I", "-o", "/dev/null", "-w", "%{http_code}", host.blob_url(url))
    assert gone.stdout == b"404"
    page.get_by_role("link", name="Events", exact=True).click()
    expect(_row(page, "artifact.deleted")).to_contain_text(url)
    # Sizes and durations in units; the exact figure stays as the title.
    size = _row(page, "artifact.deleted").locator("code", has_text="KiB")
    expect(size).to_have_text("600.0 KiB")
    expect(size).to_have_attribute("title", str(len(body)))
    expect(_row(page, "fill.finished").locator("code", has_text=re.compile(r" s$"))).to_have_count(
        1
    )


def test_a_wrong_password_is_refused(cache_host, page):
    host = cache_host(env=LOCKED)
    _submit_password(page, host, "not the password")
    expect(page.get_by_role("alert")).to_have_text("Wrong password.")
    expect(page).to_have_url(re.compile(r"/login"))
    page.goto(host.url + "/cached")
    expect(page).to_have_url(re.compile(r"/login\?next=/cached$"))
    expect(page.get_by_role("button", name="Log out")).to_have_count(0)


def test_a_post_without_its_csrf_token_is_refused(origin, cache_host, page):
    url = origin.add("/vendor/keep-me.iso", b"k" * 1000)
    host = cache_host("--curate", env=LOCKED)
    _log_in(page, host)
    curl("-o", "/dev/null", host.blob_url(url))
    page.goto(host.url + "/misses")
    # A form as a hostile page would build it: the session cookie, no token.
    page.evaluate("document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())")
    response = page.request.post(host.url + "/misses", form={"dismiss": url})
    assert response.status == 403
    _row(page, url).get_by_role("button", name="Dismiss").click()
    expect(page.locator("body")).to_contain_text("CSRF")
    page.goto(host.url + "/misses")
    expect(_row(page, url)).to_be_visible()  # nothing changed


def test_the_open_ui_shows_its_warning_on_every_page(cache_host, page):
    host = cache_host()
    for path in ("/", "/misses", "/downloads", "/cached", "/add", "/events"):
        page.goto(host.url + path)
        expect(page.locator("#open-ui-warning")).to_contain_text("WITHCACHE_ADMIN_PASSWORD")
    expect(page.get_by_role("button", name="Log out")).to_have_count(0)


def test_progress_bars_move_without_a_reload_and_a_fill_can_be_cancelled(origin, cache_host, page):
    small = origin.add("/nvidia/doca-host_2.7.0-204000_amd64.deb", b"d" * 300_000)
    broken = origin.url("/rocm/6.1/rocm-dev-6.1.0.tar.gz")  # not at the origin: fails
    slow = origin.add("/nvidia/cuda_12.4.1_550.54.15_linux.run", b"c" * 4_000_000, rate=400_000)
    waiting = origin.add("/mellanox/MLNX_OFED_LINUX-24.04-x86_64.tgz", b"w" * 1000)
    host = cache_host("--workers", "1", "--max-bytes", "500G", env=LOCKED)
    _log_in(page, host)
    for url in (small, broken, slow, waiting):
        page.goto(host.url + "/add")
        page.get_by_label("URL", exact=True).fill(url)
        page.get_by_role("button", name="Fetch").click()
        expect(page).to_have_url(host.url + "/downloads")
    running = _row(page, slow)
    expect(running.locator(".state")).to_have_text("running", timeout=10_000)
    expect(_row(page, small).locator(".state")).to_have_text("done")
    expect(_row(page, broken).locator(".state")).to_have_text("failed")
    expect(_row(page, waiting).locator(".state")).to_have_text("queued")
    page.evaluate("window.sameDocument = true")
    first = int(running.locator("progress").get_attribute("value") or 0)
    expect(running.locator("progress")).not_to_have_attribute("value", str(first))
    expect(running).to_contain_text("ETA")
    assert page.evaluate("window.sameDocument") is True
    if SCREENSHOTS:
        page.screenshot(
            path=f"{SCREENSHOTS}/ui.png", clip={"x": 0, "y": 0, "width": 1280, "height": 460}
        )
    running.get_by_role("button", name="Cancel").click()
    expect(_row(page, slow).locator(".state")).to_have_text("cancelled")
    expect(_row(page, waiting).locator(".state")).to_have_text("done")
    _row(page, slow).get_by_role("button", name="Retry").click()
    expect(_row(page, slow).locator(".state").first).to_have_text(re.compile("queued|running"))
    page.get_by_role("button", name="Clear finished").click()
    expect(page.locator("#fills tbody tr")).to_have_count(1)


def test_the_overview_leads_with_hit_ratio_and_bytes_and_greets_an_empty_host(
    origin, cache_host, page
):
    body = b"o" * 200_000
    url = origin.add("/overview/firmware-2.1.bin", body)
    host = cache_host(env=LOCKED)
    _log_in(page, host)
    get_started = page.locator("#get-started")
    expect(get_started).to_contain_text(f"export WITHCACHE_SERVER={host.url}")
    expect(get_started).to_contain_text(f"withcache-shims setup user --server {host.url}")
    expect(page.locator("#figures-day .hit-ratio")).to_have_text("\N{EN DASH}")  # no request yet

    assert curl("-f", host.blob_url(url)).stdout == body  # a miss, streamed from its fill
    host.wait_cached(url)
    assert curl("-f", host.blob_url(url)).stdout == body  # a hit
    page.reload()
    expect(page.locator("#get-started")).to_have_count(0)
    expect(page.locator("#point-clients")).to_contain_text(f"WITHCACHE_SERVER={host.url}")
    for window in ("#figures-day", "#figures-start"):
        figures = page.locator(window)
        expect(figures.locator(".hit-ratio")).to_have_text("50 %")
        expect(figures).to_contain_text("1 of 2 requests")
        expect(figures.locator(".served")).to_have_text("390.6 KiB")  # streamed + hit
        expect(figures.locator(".fetched")).to_have_text("195.3 KiB")
        expect(figures.locator(".saved")).to_have_text("195.3 KiB")
    expect(page.locator("#work")).to_contain_text("0 downloading, 0 queued")
    if SCREENSHOTS:
        page.screenshot(path=f"{SCREENSHOTS}/ui-overview.png")


def test_pin_refresh_and_a_stale_artifact_on_the_cached_page(origin, cache_host, page, free_port):
    body = os.urandom(50_000)
    url = f"http://127.0.0.1:{free_port}/latest/notes.txt"
    host = cache_host("--revalidate", "*/latest/*=1s", "--evict", "lru", env=LOCKED)
    with PortOrigin(free_port, body, etag='"l1"'):  # then it goes away
        assert curl("-f", host.blob_url(url)).stdout == body
        host.wait_cached(url)
    _log_in(page, host)
    page.goto(host.url + "/cached")
    artifact = _row(page, url)
    expect(page.locator("#eviction-next")).to_contain_text(url)
    artifact.get_by_role("button", name="Pin").click()
    expect(_row(page, url).locator(".pinned")).to_have_text("pinned")
    expect(page.locator("#eviction-next")).to_contain_text("Nothing")
    # The origin is gone: Refresh says so, and the artifact is marked stale.
    _row(page, url).get_by_role("button", name="Refresh").click()
    expect(page.locator(".problem")).to_contain_text("the origin could not say")
    page.goto(host.url + "/cached")
    expect(_row(page, url).locator(".stale")).to_contain_text("stale")
    assert curl("-f", host.blob_url(url)).stdout == body  # still served
    _row(page, url).get_by_role("button", name="Unpin").click()
    expect(_row(page, url).locator(".pinned")).to_have_count(0)
