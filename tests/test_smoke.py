"""The shortest path through the system: miss, auto-fill, hit with real curl."""

from conftest import curl


def test_miss_then_fill_then_hit(origin, cache_host, tmp_path):
    body = bytes(range(256)) * 4000
    url = origin.add("/smoke/tool.run", body)
    host = cache_host()
    first = curl("-o", str(tmp_path / "miss"), "-w", "%{http_code}", host.blob_url(url))
    assert first.stdout == b"404"
    host.wait_cached(url)
    second = curl("-f", "-o", str(tmp_path / "hit"), host.blob_url(url))
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "hit").read_bytes() == body
    assert origin.gets("/smoke/tool.run") == 1
