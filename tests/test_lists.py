"""Lists and vendor checksum files against a real server, a real origin and
the real `withcache` command: good, bad and repeated lines; a checksum file
in each format with one wrong digest (that file fails and nothing of it is
kept); one progress bar for the whole list; the list's progress kept by the
store (after a restart, on every host of a shared store); the UI's form."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time

import pytest
from api_client import Api
from conftest import BIN
from page_client import PageClient
from test_api import LOCKED, PASSWORD
from test_withcache_cli import env_for, withcache

pytestmark = pytest.mark.backends


def body(n: int, size: int = 150_000) -> bytes:
    return hashlib.sha256(str(n).encode()).digest() * (size // 32)


def sha(data: bytes, algorithm: str = "sha256") -> str:
    return hashlib.new(algorithm, data).hexdigest()


def start(cache_host, *flags: str, name: str = "data"):
    host = cache_host(*flags, env=LOCKED, name=name)
    api = Api(host.url)
    return host, api.with_token(api.create_token(f"ops-{name}", "admin", PASSWORD))


def wait_list(api: Api, list_id: int, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = api.get(f"/lists/{list_id}").body
        if found["finished"]:
            return found
        time.sleep(0.05)
    raise AssertionError(f"list {list_id} not finished: {found}")


def items(api: Api, list_id: int) -> dict[int, dict]:
    return {i["line"]: i for i in api.get(f"/lists/{list_id}/items", limit=1000).body["items"]}


def test_a_list_with_good_bad_and_repeated_lines(origin, cache_host, tmp_path, backend):
    host, api = start(cache_host)
    good, pinned, wrong = body(1), body(2), body(3)
    a = origin.add(f"/lists/{backend.name}/a.run", good)
    b = origin.add(f"/lists/{backend.name}/b.run", pinned)
    c = origin.add(f"/lists/{backend.name}/c.run", wrong)
    gone = origin.add(f"/lists/{backend.name}/gone.run", status=404)
    listing = tmp_path / "next-install.txt"
    listing.write_text("\n".join([
        "# what the rebuild needs", a, "", "not a url", f"{sha(pinned)}  {b}",
        f"{a}", f"{'0' * 64}  {c}", gone, f"abc123  {c}", f"{sha(pinned)} *{b}",
    ]) + "\n")  # fmt: skip
    env = env_for(host, api.token)
    done = withcache("add", "-f", str(listing), "--wait", env=env)
    assert done.returncode == 1, done  # a bad line and a failed fill
    errors = done.stderr
    assert "line 4: URL contains a control character or a space: not a url" in errors
    assert "line 9: a digest of 6 hex digits is of no known algorithm" in errors
    assert "line 7: failed: SHA-256 mismatch: expected " + "0" * 64 in errors
    assert "line 8: failed: origin answered 404" in errors
    assert (
        done.stdout
        == "list 1: 2 of 4 artifacts cached (2 fetched, 0 already), 2 failed, 2 refused\n"
    )
    lines = items(api, 1)
    assert {n: i["state"] for n, i in lines.items()} == {
        2: "done", 4: "refused", 5: "done", 6: "duplicate", 7: "failed", 8: "failed",
        9: "refused", 10: "duplicate",
    }  # fmt: skip
    assert lines[6]["note"] == "as on line 2"
    assert origin.gets(f"/lists/{backend.name}/a.run") == 1  # a repeated line fetches nothing
    assert sha(wrong) not in host.blob_names()  # the wrong bytes were not kept
    assert sorted(host.blob_names()) == sorted([sha(good), sha(pinned)])

    # The same list again, from stdin: what is cached is skipped.
    again = subprocess.run(
        [str(BIN / "withcache"), "add", "-f", "-", "--json"],
        input=listing.read_text(), capture_output=True, text=True, timeout=60,
        env={**os.environ, **env},
    )  # fmt: skip
    assert again.returncode == 1, again
    answer = json.loads(again.stdout)
    assert answer["counts"]["cached"] == 2 and answer["source"] == "-"
    refused = {p["line"] for p in answer["problems"] if p["state"] == "refused"}
    assert refused == {4, 9}  # the failed ones are fetched anew (and may have failed again)
    assert origin.gets(f"/lists/{backend.name}/a.run") == 1


def test_one_bar_for_the_whole_list_on_a_terminal(origin, cache_host, tmp_path, backend):
    host, api = start(cache_host, "--workers", "2")
    urls = [origin.add(f"/lists/{backend.name}/slow-{n}.bin", body(n, 400_000), rate=200_000)
            for n in range(3)]  # fmt: skip
    (tmp_path / "slow.txt").write_text("\n".join(urls))
    shown = withcache("add", "-f", str(tmp_path / "slow.txt"), "--wait",
                      env=env_for(host, api.token), tty=True)  # fmt: skip
    assert shown.returncode == 0, shown
    bar = shown.stderr
    assert bar.count("\r[") >= 3, bar  # one line, redrawn in place
    assert "of 3 artifacts" in bar and "3 of 3 artifacts" in bar and "/s" in bar
    assert bar.endswith("\r\n")
    assert (
        shown.stdout
        == "list 1: 3 of 3 artifacts cached (3 fetched, 0 already), 0 failed, 0 refused\n"
    )


SUMS_FORMATS = {
    "sha256sum": (["sha256sum"], "sha256", "SHA256SUMS"),
    "sha512sum -b": (["sha512sum", "-b"], "sha512", "SHA512SUMS"),
    "md5sum": (["md5sum"], "md5", "md5sum.txt"),
    "sha256sum --tag": (["sha256sum", "--tag"], "sha256", "CHECKSUMS"),
    "sha1sum --tag": (["sha1sum", "--tag"], "sha1", "sha1.txt"),
}


@pytest.mark.parametrize("form", list(SUMS_FORMATS))
def test_a_checksum_file_in_each_format_with_one_wrong_digest(origin, cache_host, tmp_path,
                                                              backend, form):  # fmt: skip
    tool, algorithm, sums_name = SUMS_FORMATS[form]
    host, api = start(cache_host)
    folder = tmp_path / "release"
    (folder / "linux").mkdir(parents=True)
    files = {"driver.run": body(10), "linux/tools.tgz": body(11), "firmware.bin": body(12)}
    base = f"/sums/{backend.name}/{form.replace(' ', '_')}"
    for name, data in files.items():
        (folder / name).write_bytes(data)
    written = subprocess.run([*tool, *files], cwd=folder, capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    good = hashlib.new(algorithm, files["firmware.bin"]).hexdigest()
    lying = written.replace(good, good[::-1])  # the vendor's file says other bytes
    assert lying != written
    for name, data in files.items():
        origin.add(f"{base}/{name}", data)
    sums_url = origin.add(f"{base}/{sums_name}", lying.encode())
    done = withcache("add", "--sums", sums_url, "--wait", env=env_for(host, api.token))
    assert done.returncode == 1, done
    label = {"sha256": "SHA-256", "sha512": "SHA-512", "md5": "MD5", "sha1": "SHA-1"}[algorithm]
    assert f"failed: {label} mismatch: expected {good[::-1]}, got {good}" in done.stderr
    assert f"{origin.url(base)}/firmware.bin" in done.stderr
    assert "2 of 3 artifacts cached (2 fetched" in done.stdout
    cached = {a["url"]: a["sha256"] for a in api.get("/artifacts", limit=100).body["items"]}
    kept = ("driver.run", "linux/tools.tgz")
    assert cached == {f"{origin.url(base)}/{n}": sha(files[n]) for n in kept}
    assert sha(files["firmware.bin"]) not in host.blob_names()
    assert origin.gets(f"{base}/firmware.bin") == 1  # fetched and refused, not left half-stored

    # --match adds only the files it fits, and what is cached is skipped.
    matched = withcache("add", "--sums", sums_url, "--match", "*.tgz", "--json",
                        env=env_for(host, api.token))  # fmt: skip
    assert matched.returncode == 0, matched
    assert json.loads(matched.stdout)["counts"] == {"cached": 1}


def test_the_checksum_file_is_fetched_under_the_fetch_policy(origin, cache_host, backend):
    sums = origin.add(f"/policy/{backend.name}/SHA256SUMS", f"{'a' * 64}  x.run\n".encode())
    host, api = start(cache_host, "--allow-origin", "vendor.invalid")
    refused = withcache("add", "--sums", sums, env=env_for(host, api.token))
    assert refused.returncode == 1
    assert refused.stderr == (
        "withcache: error: checksum file not fetched: host 127.0.0.1 is not allowed by "
        "--allow-origin\n"
    )
    assert origin.gets(f"/policy/{backend.name}/SHA256SUMS") == 0
    # Redirected to a host the policy forbids: refused at that hop, before it is asked.
    elsewhere = origin.url(f"/policy/{backend.name}/SHA256SUMS").replace("127.0.0.1", "localhost")
    hop = origin.add(f"/policy/{backend.name}/hop", redirect=elsewhere)
    _, guarded = start(cache_host, "--allow-origin", "127.0.0.1", name="guarded")
    answer = guarded.post("/lists", {"sums": hop})
    assert answer.status == 409, answer
    assert answer.error == (
        f"cannot fetch the checksum file {hop}: host localhost is not allowed by --allow-origin"
    )
    assert origin.gets(f"/policy/{backend.name}/SHA256SUMS") == 0


def test_a_lists_progress_is_the_stores(origin, cache_host, backend):
    """After a restart, and on every host sharing the store, a list is what it was."""
    first, api = start(cache_host, "--workers", "1")
    urls = [origin.add(f"/kept/{backend.name}/{n}.bin", body(20 + n, 200_000), rate=400_000)
            for n in range(3)]  # fmt: skip
    made = api.post("/lists", {"text": "\n".join(urls), "source": "rebuild.txt"})
    assert made.status == 201 and made.headers["Location"] == "/api/v1/lists/1"
    assert made.body["wanted"] == 3 and made.body["active"] == 3
    if backend.scale:  # a second host of the same store sees the list and its progress
        _, other = start(cache_host, name="other")
        seen = other.get("/lists/1").body
        assert seen["source"] == "rebuild.txt" and seen["wanted"] == 3
    first.restart()
    api = Api(first.url).with_token(api.token)
    finished = wait_list(api, 1)
    assert (finished["ready"], finished["failed"], finished["bytes_done"]) == (3, 0, 600_000)
    assert finished["bytes_total"] == 600_000 and finished["unsized"] == 0
    # Clearing the Downloads list forgets the fills, not how the list's lines ended.
    assert api.post("/fills/clear-finished").status == 200
    assert {i["state"] for i in items(api, 1).values()} == {"done"}
    assert api.get("/lists/1").body["ready"] == 3
    assert [
        e["detail"]["list_id"] for e in api.get("/events", kind="list.added").body["items"]
    ] == [1]


def test_lists_from_the_ui(origin, cache_host, backend):
    host, api = start(cache_host)
    url = origin.add(f"/ui-list/{backend.name}/one.iso", body(30))
    client = PageClient(host.url)
    client.login(PASSWORD)
    token = client.csrf()
    reply = client.post("/add/list", {"lines": f"{url}\nnonsense here\n", "csrf": token})
    assert reply.status == 303 and reply.location == "/lists/1"
    wait_list(api, 1)
    page = client.get("/lists/1")
    assert page.status == 200 and url in page.text and "nonsense here" in page.text
    assert "1 of 1 artifacts cached" in page.text and "1 refused" in page.text
    problems = client.get("/lists/1?state=problems").text
    assert "nonsense here" in problems and url not in problems
    downloads = client.get("/downloads")
    assert 'id="list-1"' in downloads.text and "the Add page" in downloads.text
    assert client.get("/downloads/lists").status == 200
    for form, message in [
        ({}, "give the URLs to add, or a checksum file"),
        ({"lines": url, "sums": url}, "give the list or a checksum file"),
        ({"sums": "ftp://x/SUMS"}, "bad checksum file URL"),
        ({"lines": "# only a comment\n"}, "the list names no URL"),
    ]:
        bad = client.post("/add/list", {**form, "csrf": token})
        assert bad.status == 400 and message in bad.text, (form, bad.status, bad.text[-400:])
    assert client.get("/lists/99").status == 404
    assert client.post("/add/list", {"lines": url}).status == 403  # no CSRF token


def test_an_md5_is_checked_over_every_byte_of_a_fill_that_resumed(origin, cache_host):
    """A fill killed mid-way resumes from its partial file (issue 13): the
    MD5 it must match is computed over the bytes kept as well as the rest."""
    data = os.urandom(4 << 20)
    url = origin.add("/resumed/vendor.iso", data, etag='"v1"', rate=1 << 20)
    host, api = start(cache_host)
    made = api.post("/lists", {"text": f"{sha(data, 'md5')}  {url}\n"}).body
    deadline = time.monotonic() + 20
    while host.rows("SELECT bytes_done FROM fills")[0][0] < 1 << 20:
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)
    time.sleep(1.5)  # a resume point is saved about every second
    host.kill()
    origin.resources["/resumed/vendor.iso"].rate = None
    host.start()
    api = Api(host.url).with_token(api.token)
    finished = wait_list(api, made["id"])
    assert (finished["ready"], finished["failed"]) == (1, 0), items(api, made["id"])
    resumed = [h.headers for h in origin.hits if h.path == "/resumed/vendor.iso"][-1]
    assert int(resumed["Range"][6:-1]) >= 1 << 20  # it went on, not over
    assert host.blob_names() == [sha(data)]
