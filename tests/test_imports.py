"""`withcache import` against a real server: local bytes become the artifact
of a URL without its origin ever being asked. Streamed (a 1 GiB file with
the memory of the server and the command measured), verified (a wrong
--sha256 keeps nothing), committed like a fill (a killed import, on either
side, leaves nothing half-stored), marked imported and audited."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from api_client import Api
from clients import wait_until
from conftest import BIN
from page_client import PageClient
from test_api import LOCKED, PASSWORD
from test_withcache_cli import env_for, one_error_line, withcache

GIB = 1 << 30
# Peak resident memory, beyond what each process had before the import: the
# bytes stream through in 1 MiB blocks, so a GiB must not show up here.
SERVER_GROWTH_MIB = 64
CLI_PEAK_MIB = 64


def start(cache_host, *flags: str, name: str = "data"):
    host = cache_host(*flags, env=LOCKED, name=name)
    api = Api(host.url)
    return host, api.with_token(api.create_token(f"ops-{name}", "admin", PASSWORD))


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) / 1024


def write_file(path: Path, size: int, seed: bytes = b"") -> str:
    """`size` bytes that are not one repeated block; their SHA-256."""
    digest = hashlib.sha256()
    block = hashlib.sha512(seed).digest() * (1 << 14)  # 1 MiB
    with open(path, "wb") as out:
        for n in range(size // len(block)):
            chunk = n.to_bytes(8, "big") + block[8:]
            out.write(chunk)
            digest.update(chunk)
        tail = block[: size % len(block)]
        out.write(tail)
        digest.update(tail)
    return digest.hexdigest()


def no_leftovers(host) -> None:
    assert list((host.data_dir / "tmp").iterdir()) == []


def cli_env(host, token: str) -> dict[str, str]:
    """The environment `withcache` runs in (as tests/test_withcache_cli.py's)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WITHCACHE_")}
    return {**clean, **env_for(host, token)}


def test_a_1_gib_import_streams_with_flat_memory(origin, cache_host, tmp_path):
    host, api = start(cache_host)
    big = tmp_path / "cuda_12.4.1_linux.run"
    sha = write_file(big, GIB)
    url = origin.url("/import/cuda_12.4.1_linux.run")  # never defined: the origin must not be asked
    server_before = peak_rss_mib(host.proc.pid)
    command = [str(BIN / "withcache"), "import", str(big), "--url", url, "--sha256", sha]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=cli_env(host, api.token))  # fmt: skip
    cli_peak = 0.0
    while proc.poll() is None:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, TypeError):  # exited
            cli_peak = max(cli_peak, peak_rss_mib(proc.pid))
        time.sleep(0.05)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.decode() == f"{sha}  {GIB}  {url}\n"
    server_growth = peak_rss_mib(host.proc.pid) - server_before
    assert 0 < cli_peak < CLI_PEAK_MIB, cli_peak
    assert server_growth < SERVER_GROWTH_MIB, (server_before, server_growth)
    assert host.blob_names() == [sha]
    assert (host.data_dir / "blobs" / sha[:2] / sha).stat().st_size == GIB
    (artifact,) = api.get("/artifacts").body["items"]
    assert (artifact["imported"], artifact["size"], artifact["url"]) == (True, GIB, url)
    assert origin.gets("/import/cuda_12.4.1_linux.run") == 0
    head = subprocess.run(["curl", "-sSI", host.blob_url(url)], capture_output=True, text=True)
    assert f'ETag: "{sha}"' in head.stdout and f"Content-Length: {GIB}" in head.stdout
    no_leftovers(host)


def test_a_wrong_sha256_keeps_nothing(origin, cache_host, tmp_path):
    host, api = start(cache_host)
    path = tmp_path / "fw.bin"
    real = write_file(path, 3_000_000, b"fw")
    url = origin.url("/import/fw.bin")
    refused = withcache("import", str(path), "--url", url, "--sha256", "ab" * 32,
                        env=env_for(host, api.token))  # fmt: skip
    assert refused.returncode == 1
    assert one_error_line(refused) == (
        f"withcache: error: {path}: SHA-256 mismatch: expected {'ab' * 32}, got {real}: "
        f"nothing was stored: {url}"
    )
    assert host.blob_names() == [] and api.get("/artifacts").body["total"] == 0
    (fill,) = api.get("/fills").body["items"]
    assert (fill["state"], fill["requested_by"]) == ("failed", "import")
    no_leftovers(host)


def _running_import(api: Api) -> dict | None:
    for fill in api.get("/fills", state="running").body["items"]:
        if fill["bytes_done"] > 0:
            return fill
    return None


def test_a_killed_import_leaves_nothing_half_stored(origin, cache_host, tmp_path):
    host, api = start(cache_host)
    path = tmp_path / "big.iso"
    write_file(path, 512 << 20, b"killed")
    url = origin.url("/import/big.iso")
    env = cli_env(host, api.token)

    # The command killed mid-upload: the server sees the body stop short.
    cli = subprocess.Popen([str(BIN / "withcache"), "import", str(path), "--url", url], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_until(lambda: _running_import(api), 30, "the upload")
    cli.send_signal(signal.SIGKILL)
    cli.wait()
    failed = wait_until(lambda: [f for f in api.get("/fills", state="failed").body["items"]],
                       what="the import's failure")  # fmt: skip
    assert failed[0]["error"].startswith("the upload broke off after ")
    assert host.blob_names() == [] and api.get("/artifacts").body["total"] == 0
    no_leftovers(host)

    # The server killed mid-upload: after the restart the import fails, and the
    # origin is never asked for the URL in its stead.
    cli = subprocess.Popen([str(BIN / "withcache"), "import", str(path), "--url", url], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    wait_until(lambda: _running_import(api), 30, "the second upload")
    host.kill()
    assert cli.wait(60) == 3  # the cache-host went away
    host.start()
    api = Api(host.url).with_token(api.token)
    cut = wait_until(
        lambda: [f for f in api.get("/fills", state="failed").body["items"]
                 if "cut off" in (f["error"] or "")],
        what="the interrupted import failing",
    )  # fmt: skip
    assert cut[0]["error"] == (
        "the import was cut off (its bytes were on a cache-host that stopped); import it again"
    )
    assert origin.gets("/import/big.iso") == 0
    assert host.blob_names() == [] and api.get("/artifacts").body["total"] == 0
    no_leftovers(host)
    retried = api.post(f"/fills/{cut[0]['id']}/retry")
    assert retried.status == 409 and "import it again" in retried.error


def test_an_import_is_marked_audited_and_served_like_a_fetch(origin, cache_host, tmp_path):
    host, api = start(cache_host)
    path = tmp_path / "tools.tar.gz"
    sha = write_file(path, 2_000_000, b"tools")
    os.utime(path, (1_700_000_000, 1_700_000_000))
    url = origin.add("/import/tools.tar.gz", b"what the origin has")
    env = env_for(host, api.token)
    done = withcache("import", str(path), "--url", url, env=env)
    assert done.returncode == 0, done.stderr
    listed = withcache("ls", env=env).stdout.splitlines()
    assert listed[1].split()[-2:] == ["import", url]
    served = subprocess.run(["curl", "-sS", "-D", "-", "-o", str(tmp_path / "got"),
                             host.blob_url(url)], capture_output=True, text=True)  # fmt: skip
    assert hashlib.sha256((tmp_path / "got").read_bytes()).hexdigest() == sha
    assert "Last-Modified: Tue, 14 Nov 2023 22:13:20 GMT" in served.stdout
    assert "Content-Encoding" not in served.stdout  # a .tar.gz is not claimed to be encoded
    assert origin.gets("/import/tools.tar.gz") == 0
    (event,) = api.get("/events", kind="artifact.imported").body["items"]
    assert (event["actor"], event["url"], event["detail"]["sha256"]) == ("api:ops-data", url, sha)
    client = PageClient(host.url)
    client.login(PASSWORD)
    page = client.get("/cached").text
    assert "imported</small>" in page and url in page
    assert "imported" in client.get("/downloads").text

    again = withcache("import", str(path), "--url", url, env=env)
    assert again.returncode == 0 and "already cached" in again.stderr  # nothing sent again
    other = withcache("import", str(path), "--url", url, "--sha256", "cd" * 32, env=env)
    assert other.returncode == 1 and "cached already with other bytes" in one_error_line(other)
    # Fetched from the origin on purpose: then the origin vouches for it.
    assert withcache("add", url, "--refresh", "--wait", env=env).returncode == 0
    assert api.get("/artifacts").body["items"][0]["imported"] is False


def test_a_directory_with_a_manifest(origin, cache_host, tmp_path):
    host, api = start(cache_host)
    folder = tmp_path / "downloads"
    (folder / "fw").mkdir(parents=True)
    sizes = {"fw/a.bin": 300_000, "b.iso": 1_500_000, "c.run": 10}
    shas = {name: write_file(folder / name, size, name.encode()) for name, size in sizes.items()}
    (tmp_path / "outside.bin").write_bytes(b"not in the folder")
    base = origin.url("/dir")
    manifest = tmp_path / "MANIFEST"
    manifest.write_text("\n".join([
        "# sha256  url  path", f"{shas['fw/a.bin']}  {base}/a.bin  fw/a.bin",
        f"{shas['b.iso']}  {base}/b.iso  b.iso", f"{shas['b.iso']}  {base}/same-bytes.iso  b.iso",
        f"{shas['c.run']}  {base}/escape.bin  ../outside.bin", f"{'0' * 64}  {base}/c.run  c.run",
        f"{shas['c.run']}  {base}/gone.run  not-there.run", "only-two  fields",
        f"{shas['c.run']}  ftp://x/c.run  c.run",
    ]) + "\n")  # fmt: skip
    env = env_for(host, api.token)
    done = withcache("import", str(folder), "--manifest", str(manifest), env=env, tty=True)
    assert done.returncode == 1
    assert (
        done.stdout
        == "imported 3 (1 from bytes the cache-host had), skipped 0 (cached already), failed 5\n"
    )
    screen = done.stderr
    assert f"{manifest}, line 5: ../outside.bin is outside {folder}" in screen
    assert f"{manifest}, line 6: SHA-256 mismatch" in screen
    assert f"{manifest}, line 7: not-there.run: no such file in {folder}" in screen
    assert f"{manifest}, line 8: not '<sha256>  <url>  <relative path>'" in screen
    assert f"{manifest}, line 9: bad URL 'ftp://x/c.run'" in screen
    assert "of 3 artifacts" in screen  # one bar for what was sent (b.iso's bytes once)
    assert sorted(host.blob_names()) == sorted([shas["fw/a.bin"], shas["b.iso"]])
    again = withcache("import", str(folder), "--manifest", str(manifest), env=env)
    assert again.stdout.startswith("imported 0, skipped 3 (cached already), failed 5")


def test_import_input_checks(origin, cache_host, tmp_path):
    host, api = start(cache_host, "--max-bytes", "1M")
    path = tmp_path / "f.bin"
    write_file(path, 2_000_000, b"cap")
    url = origin.url("/checks/f.bin")
    env = env_for(host, api.token)
    capped = withcache("import", str(path), "--url", url, env=env)
    assert capped.returncode == 1 and "exceed --max-bytes" in one_error_line(capped)
    assert host.blob_names() == []
    not_a_bundle = withcache("import", str(path), env=env)
    assert not_a_bundle.returncode == 1 and "not a tar file" in one_error_line(not_a_bundle)
    for args, message in [
        ([str(tmp_path)], "is not a bundle file"),
        ([str(path), "--url", "ftp://x/y"], "bad URL 'ftp://x/y'"),
        ([str(path), "--url", url, "--sha256", "xyz"], "bad --sha256 'xyz'"),
        ([str(tmp_path), "--url", url], "is not a file"),
        ([str(path), "--url", url, "--manifest", str(path)], "not both"),
        ([str(path), "--sha256", "a" * 64], "--sha256 goes with --url"),
        (["-", "--url", url], "- is not a file"),
    ]:
        result = withcache("import", *args, env=env)
        assert result.returncode == 2 and message in one_error_line(result), (args, result)
    raw = api.with_token(api.token)
    assert raw.call("PUT", "/imports", headers={"Content-Length": "0"}).status == 400
    bad = raw.call("PUT", "/imports", query={"url": url, "sha256": "xyz"})
    assert bad.status == 400 and "bad sha256" in bad.error
    reader = api.with_token(api.create_token("reader", "read"))
    assert reader.call("PUT", "/imports", query={"url": url}).status == 403
    # Chunked (no Content-Length) is taken too: the end of the chunks is the end.
    chunked = subprocess.run(
        ["curl", "-sS", "-X", "PUT", "-H", f"Authorization: Bearer {api.token}",
         "-H", "Transfer-Encoding: chunked", "--data-binary", "@-",
         f"{host.url}/api/v1/imports?url={url}.small"],
        input=b"small bytes", capture_output=True,
    )  # fmt: skip
    assert b'"imported": true' in chunked.stdout, chunked
    assert api.get("/artifacts", url=url + ".small").body["items"][0]["size"] == 11


def test_a_client_reads_an_import_as_it_arrives_and_the_origin_never_hears_of_it(
    origin, cache_host, tmp_path
):
    host, api = start(cache_host)
    path = tmp_path / "stream.bin"
    sha = write_file(path, 6 << 20, b"stream")
    url = origin.url("/import/stream.bin")
    upload = subprocess.Popen(  # slowly, so the client comes while it arrives
        ["curl", "-sSf", "-T", str(path), "--limit-rate", "2M",
         "-H", f"Authorization: Bearer {api.token}",
         f"{host.url}/api/v1/imports?url={url}&sha256={sha}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    wait_until(lambda: _running_import(api), 30, "the upload")
    client = ["curl", "-sSf", "-D", "-", "-o", str(tmp_path / "got"), host.blob_url(url)]
    got = subprocess.run(client, capture_output=True, text=True, timeout=60)
    assert upload.wait(60) == 0, upload.stderr.read()
    assert got.returncode == 0, got.stderr
    assert "Withcache-Fill: in-progress" in got.stdout  # read from the import, not a hit
    assert hashlib.sha256((tmp_path / "got").read_bytes()).hexdigest() == sha
    assert origin.gets("/import/stream.bin") == 0


def test_a_failed_import_says_nothing_of_the_origin(origin, cache_host, tmp_path):
    """Misses of the URL still fetch it from its origin at once: the failure
    memory that spares a failing origin is for fills from that origin."""
    host, api = start(cache_host)
    path = tmp_path / "local.bin"
    write_file(path, 100_000, b"local")
    served = b"what the origin serves" * 1000
    url = origin.add("/import/both.bin", served)
    wrong = withcache("import", str(path), "--url", url, "--sha256", "ab" * 32,
                      env=env_for(host, api.token))  # fmt: skip
    assert wrong.returncode == 1
    got = subprocess.run(["curl", "-sSf", host.blob_url(url)], capture_output=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert got.stdout == served and origin.gets("/import/both.bin") == 1
