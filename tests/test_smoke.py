"""The shortest path through the system: a miss read through its fill, then a hit."""

from conftest import curl


def test_miss_then_fill_then_hit(origin, cache_host, tmp_path):
    body = bytes(range(256)) * 4000
    url = origin.add("/smoke/tool.run", body)
    host = cache_host()
    first = curl("-f", "-o", str(tmp_path / "miss"), host.blob_url(url))
    assert first.returncode == 0, first.stderr  # read through, from the fill
    assert (tmp_path / "miss").read_bytes() == body
    host.wait_cached(url)
    second = curl("-f", "-o", str(tmp_path / "hit"), host.blob_url(url))
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "hit").read_bytes() == body
    assert origin.gets("/smoke/tool.run") == 1
