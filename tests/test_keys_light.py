"""keys.py stays import-light for the shims and agrees with the full parsers."""

import base64
import subprocess
import sys
from urllib.parse import urlsplit

from hypothesis import given
from hypothesis import strategies as st

from withcache import keys

segment = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FF), max_size=8)
urls = st.builds(
    lambda scheme, host, path, query, fragment: f"{scheme}://{host}{path}{query}{fragment}",
    st.sampled_from(["http", "https", "HTTP"]),
    st.sampled_from(["h", "h.example:8080", "[::1]:3000", "user@h"]),
    st.lists(segment, max_size=4).map(lambda parts: "".join("/" + p for p in parts)),
    st.one_of(st.just(""), segment.map(lambda q: "?" + q)),
    st.one_of(st.just(""), segment.map(lambda f: "#" + f)),
)


@given(urls)
def test_basename_and_query_split_as_urlsplit_does(url):
    parts = urlsplit(url)
    assert keys.basename(url) == parts.path.rsplit("/", 1)[-1]
    expected = f"/b/{keys.encode_token(url)}/{keys.basename(url)}"
    assert keys.serve_path(url) == (f"{expected}?{parts.query}" if parts.query else expected)


@given(st.text(max_size=200))
def test_token_is_urlsafe_base64_without_padding(text):
    token = keys.encode_token(text)
    assert token == base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_importing_keys_loads_neither_re_nor_urllib():
    code = "import sys, withcache.keys; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert not {"re", "urllib.parse", "base64", "typing"} & set(loaded.stdout.split())
