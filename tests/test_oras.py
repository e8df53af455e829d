"""oras:// references: the one parser (withcache.oras), as keys.py, the policy
and the registry client use it; which layer of a manifest a reference names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from withcache import keys, oras
from withcache.server.policy import Policy
from withcache.server.settings import Settings

DIGEST = "sha256:" + "ab" * 32
LAYER_A = oras.Layer("sha256:" + "a" * 64, 10, "application/x", "a.bin")
LAYER_B = oras.Layer("sha256:" + "b" * 64, 20, "application/x", "b.bin")


@pytest.mark.parametrize(
    ("text", "key", "name"),
    [
        ("oras://GHCR.io:443/org/fw:1.2#fw.bin", "oras://ghcr.io/org/fw:1.2#fw.bin", "fw.bin"),
        ("ORAS://ghcr.io/org/fw:1.2", "oras://ghcr.io/org/fw:1.2", "fw"),
        ("oras://localhost:5000/a/b-c/d__e:V1.0_rc-2", "oras://localhost:5000/a/b-c/d__e:V1.0_rc-2",
         "d__e"),
        (f"oras://r.io/x@{DIGEST.upper().replace('SHA256', 'sha256')}", f"oras://r.io/x@{DIGEST}",
         "x"),
        (f"oras://r.io/x:1#{LAYER_A.digest}", f"oras://r.io/x:1#{LAYER_A.digest}", "x"),
        ("oras://r.io/x:1#fw%20v2.bin", "oras://r.io/x:1#fw%20v2.bin", "fw v2.bin"),
    ],
)  # fmt: skip
def test_references_and_their_keys(text, key, name):
    reference = oras.parse(text)
    assert reference.key == key == keys.cache_key(text) == keys.cache_key(key)
    assert reference.name == name == keys.basename(text)
    assert keys.decode_token(keys.encode_token(text)) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("oras://", "names no registry"),
        ("oras://ghcr.io", "give oras://<registry>/<repository>:<tag>"),
        ("oras://ghcr.io/org/fw", "names no tag or digest"),
        ("oras://ghcr.io/Org/fw:1", "not a repository name"),
        ("oras://ghcr.io/a._b:1", "not a repository name"),
        ("oras://ghcr.io/a_-b:1", "not a repository name"),
        ("oras://ghcr.io//a:1", "not a repository name"),
        ("oras://ghcr.io/a:.x", "not a tag"),
        ("oras://ghcr.io/a:" + "x" * 129, "not a tag"),
        ("oras://ghcr.io/a@sha512:" + "a" * 128, "only sha256"),
        ("oras://ghcr.io/a@sha256:abc", "sha256:<64 hex digits>"),
        ("oras://ghcr.io/a:1#", "nothing after '#'"),
        ("oras://ghcr.io/a:1#x%2Fy", "may not be a path"),
        ("oras://ghcr.io/a:1#sha256:zz", "sha256:<64 hex digits>"),
        ("oras://gh cr.io/a:1", "control character or a space"),
        ("oras://ghcr.io:0/a:1", "not a port number"),
        ("oras://ghcr.io:\u00b2/a:1", "not a port number"),  # a digit to isdigit(), not to int()
        ("oras://user@ghcr.io/a:1", "not a registry host"),
        ("oras://[::1]:5000/a:1", "not a registry host"),
    ],
)
def test_bad_references_say_why(text, reason):
    with pytest.raises(keys.BadURL) as raised:
        keys.check_url(text)
    assert reason in str(raised.value)


def test_the_prefix_form_takes_the_layer_as_percent_23():
    assert keys.prefix_origin("/oras://r.io/x:1%23fw.bin") == "oras://r.io/x:1#fw.bin"
    assert keys.prefix_origin("/ORAS:/r.io/x:1%23A%2523b") == "oras://r.io/x:1#A%2523b"
    assert oras.parse(keys.prefix_origin("/oras:/r.io/x:1%23A%2523b")).selector == "A%23b"
    assert keys.serve_path("oras://r.io/x:1#fw%20v2.bin").endswith("/fw%20v2.bin")


@given(
    st.from_regex(r"[a-z0-9]{1,8}(\.[a-z0-9]{1,8}){0,2}", fullmatch=True),
    st.from_regex(r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*",
                  fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True),
    st.one_of(st.none(), st.text(min_size=1, max_size=12).filter(lambda s: "/" not in s)),
)  # fmt: skip
def test_a_key_is_its_own_canonical_form(host, repository, tag, selector):
    from urllib.parse import quote

    text = f"oras://{host}/{repository}:{tag}" + (f"#{quote(selector)}" if selector else "")
    try:
        reference = oras.parse(text)
    except keys.BadURL as err:  # a name too long, or a selector that decodes to a path
        assert "longer than" in str(err) or "path" in str(err) or "sha256" in str(err)
        return
    assert oras.parse(reference.key) == reference
    assert keys.decode_token(keys.encode_token(reference.key)) == reference.key


def test_which_layer():
    one = oras.parse("oras://r.io/x:1")
    assert oras.choose(one, [LAYER_A]) == LAYER_A
    with pytest.raises(oras.Unresolvable, match="2 layers: name one") as several:
        oras.choose(one, [LAYER_A, LAYER_B])
    assert several.value.status == 400 and "b.bin" in str(several.value)
    assert oras.choose(oras.parse("oras://r.io/x:1#b.bin"), [LAYER_A, LAYER_B]) == LAYER_B
    by_digest = oras.parse(f"oras://r.io/x:1#{LAYER_B.digest}")
    assert oras.choose(by_digest, [LAYER_A, LAYER_B]) == LAYER_B
    same_name = oras.Layer(LAYER_B.digest, 20, "application/x", "a.bin")
    with pytest.raises(oras.Unresolvable, match=r"2 layers are named 'a\.bin'"):
        oras.choose(oras.parse("oras://r.io/x:1#a.bin"), [LAYER_A, same_name])
    with pytest.raises(oras.Unresolvable, match=r"no layer is 'c\.bin'") as missing:
        oras.choose(oras.parse("oras://r.io/x:1#c.bin"), [LAYER_A])
    assert missing.value.status == 404
    with pytest.raises(oras.Unresolvable, match="no layers"):
        oras.choose(one, [])


def test_manifests_read():
    manifest = {
        "mediaType": oras.OCI_MANIFEST,
        "layers": [{"digest": LAYER_A.digest, "size": 10, "mediaType": "application/x",
                    "annotations": {oras.TITLE: "a.bin"}}],
    }  # fmt: skip
    assert oras.layers(manifest, "") == [LAYER_A]
    with pytest.raises(oras.Unresolvable, match="image index") as refused:
        oras.layers({"manifests": [{"digest": DIGEST, "platform": {"os": "linux",
                                    "architecture": "arm64"}}]}, oras.INDEXES[0])  # fmt: skip
    assert f"linux/arm64 {DIGEST}" in str(refused.value) and refused.value.status == 400
    for broken in [{"mediaType": "text/plain"}, {"mediaType": oras.OCI_MANIFEST},
                   {"mediaType": oras.OCI_MANIFEST, "layers": [{"digest": "md5:x", "size": 1}]},
                   {"mediaType": oras.OCI_MANIFEST, "layers": [{"digest": DIGEST}]}]:  # fmt: skip
        with pytest.raises(oras.Unresolvable) as bad:
            oras.layers(broken, "")
        assert bad.value.status == 502  # the registry's fault, not the reference's


def test_challenges():
    assert oras.parse_challenge('Basic realm="Registry Realm"') == (
        "basic", {"realm": "Registry Realm"})  # fmt: skip
    scheme, params = oras.parse_challenge(
        r'Bearer realm="https://auth.example/token",service="reg",scope="repository:a\"b:pull",x=1'
    )
    assert scheme == "bearer" and params["scope"] == 'repository:a"b:pull' and params["x"] == "1"
    reference = oras.parse("oras://r.io/lab/fw:1")
    assert oras.token_query({}, reference) == {"scope": "repository:lab/fw:pull"}


def test_the_policy_judges_a_reference_by_its_registry(tmp_path):
    strict = Policy(Settings(data_dir=tmp_path, allow_origins=("*.example.com",)), b"k")
    assert strict.refuse_reason("oras://reg.example.com/a:1") is None
    assert "not allowed by --allow-origin" in strict.refuse_reason("oras://ghcr.io/a:1")
    private = Policy(Settings(data_dir=tmp_path), b"k")
    assert "not public" in private.refuse_reason("oras://127.0.0.1:5000/a:1")
    assert "not a repository name" in private.refuse_reason("oras://ghcr.io/A:1")
