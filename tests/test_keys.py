"""The cache key and the /b/ token: one definition, shared by every part."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from withcache import keys

hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,6}){1,2}", fullmatch=True)
paths = st.lists(st.from_regex(r"[A-Za-z0-9._~%-]{1,12}", fullmatch=True), max_size=5).map(
    lambda parts: "/" + "/".join(parts)
)
queries = st.from_regex(r"([a-z]{1,5}=[A-Za-z0-9%._-]{0,10}&?){0,3}", fullmatch=True)


def urls_on(host_names: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(
        lambda scheme, host, path, query: (
            f"{scheme}://{host}{path}" + (f"?{query}" if query else "")
        ),
        st.sampled_from(["http", "https"]),
        host_names,
        paths,
        queries,
    )


urls = urls_on(hosts)


@given(urls)
def test_token_round_trips_the_full_url(url):
    token = keys.encode_token(url)
    assert "=" not in token and "/" not in token and "+" not in token
    assert keys.decode_token(token) == url


@given(urls)
def test_cache_key_is_idempotent_and_drops_the_query(url):
    key = keys.cache_key(url)
    assert keys.cache_key(key) == key
    assert "?" not in key
    assert keys.cache_key(url, keep_query=True).startswith(key)


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("HTTPS://Example.COM:443/a/./b/../c.run?sig=1#f", "https://example.com/a/c.run"),
        ("http://example.com:80/x", "http://example.com/x"),
        ("http://example.com:8080/x", "http://example.com:8080/x"),
        ("http://example.com", "http://example.com/"),
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
        ("https://h/a/..", "https://h/"),
        ("https://h/%41.run", "https://h/%41.run"),
    ],
)
def test_cache_key_normalises(url, key):
    assert keys.cache_key(url) == key


def test_keep_query_keeps_it():
    assert keys.cache_key("https://h/x?a=1", keep_query=True) == "https://h/x?a=1"
    assert keys.display_url("https://h/x?token=secret") == "https://h/x"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://h/x",
        "file:///etc/passwd",
        "gopher://h/",
        "https:///nohost",
        "https://user:pw@h/x",
        "https://h/a b",
        "https://h/\x00",
        "https://h:99999/x",
        "https://h/" + "a" * 9000,
        "not a url",
    ],
)
def test_bad_origins_are_refused(url):
    with pytest.raises(keys.BadURL):
        keys.check_origin(url)


@pytest.mark.parametrize("token", ["", "***", "aGVsbG8=", "/etc", "_-_-_"])
def test_bad_tokens_are_refused(token):
    with pytest.raises(keys.BadURL):
        keys.decode_token(token)


def test_serve_path_keeps_basename_and_query():
    assert keys.serve_path("https://h/d/cuda.run?x=1").endswith("/cuda.run?x=1")
    assert keys.serve_path("https://h/d/").endswith("/")


hosts_with_ports = st.tuples(hosts, st.one_of(st.none(), st.integers(1, 65535))).map(
    lambda pair: pair[0] if pair[1] is None else f"{pair[0]}:{pair[1]}"
)
mirrored = urls_on(hosts_with_ports)


@given(mirrored)
def test_every_mirror_spelling_gives_back_the_url(url):
    scheme, rest = url.split("://", 1)
    host, _, tail = rest.partition("/")
    assert keys.prefix_origin("/" + url) == url
    assert keys.prefix_origin(f"/{scheme}:/{rest}") == url  # slashes merged by a proxy
    assert keys.host_path_origin(scheme, rest) == url
    encoded_host = host.replace(":", "%3A")  # as bitbake's PREMIRRORS writes it
    assert keys.host_path_origin(scheme, f"{encoded_host}//{tail}") == url
    assert keys.cache_key(keys.prefix_origin("/" + url)) == keys.cache_key(url)


@pytest.mark.parametrize(
    "target", ["/ftp://h/x", "/https", "/https:", "/https:h/x", "/javascript:x", "/h:80/x", "/"]
)
def test_bad_prefix_forms_are_refused(target):
    with pytest.raises(keys.BadURL):
        keys.check_origin(keys.prefix_origin(target))


@pytest.mark.parametrize("rest", ["", "/x", "u@h/x", "h%2Fx/y", "h%40x/y", "h x/y", "h\\x/y"])
def test_bad_hosts_in_the_host_path_form_are_refused(rest):
    with pytest.raises(keys.BadURL):
        keys.check_origin(keys.host_path_origin("https", rest))


def test_digests_are_64_hex_digits_lowercased():
    assert keys.parse_digest("AB" * 32) == "ab" * 32
    for bad in ("", "ab" * 31, "ab" * 33, "g" * 64, " " + "a" * 63):
        with pytest.raises(keys.BadURL):
            keys.parse_digest(bad)
