"""Reading lists and vendor checksum files line by line (server/checksums.py)
and the digests they give (server/digests.py): every format sha256sum,
sha512sum, md5sum, `--tag` and openssl write, bad lines with their numbers,
names resolved against the checksum file's URL."""

from __future__ import annotations

import hashlib
import string
import subprocess
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from withcache.server import checksums
from withcache.server.checksums import BadLine, Entry
from withcache.server.digests import BadDigest, Digest, mismatch

BODY = b"the bytes of a vendor file\n"


def digest_of(algorithm: str) -> str:
    return hashlib.new(algorithm, BODY).hexdigest()


@pytest.mark.parametrize("tool", ["sha256sum", "sha512sum", "md5sum", "sha1sum"])
@pytest.mark.parametrize("flags", [[], ["-b"], ["--tag"]], ids=["text", "binary", "bsd"])
def test_the_coreutils_output_is_read_as_written(tmp_path, tool, flags):
    """The real tools' output, not a hand-made imitation of it."""
    for name in ("plain.run", "with space.tgz", "back\\slash.bin"):
        (tmp_path / name).write_bytes(BODY)
    written = subprocess.run(
        [tool, *flags, "plain.run", "with space.tgz", "back\\slash.bin"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    algorithm = tool.removesuffix("sum")
    read = list(checksums.read(written))
    assert [e.name for e in read] == ["plain.run", "with space.tgz", "back\\slash.bin"]
    assert {e.digest for e in read} == {Digest(algorithm, digest_of(algorithm))}


def test_openssl_style_crlf_comments_and_blank_lines():
    sha = digest_of("sha256")
    text = (
        f"# SHA-256 of the 12.4 release\r\n\r\nSHA2-256(a.iso)= {sha}\r\n"
        f"SHA256 (b.iso) = {sha.upper()}\r\n   \r\n{sha}\t*c.iso\r\n"
    )
    read = list(checksums.read(text))
    assert [(e.line, e.name) for e in read] == [(3, "a.iso"), (4, "b.iso"), (6, "c.iso")]
    assert all(e.digest == Digest("sha256", sha) for e in read)


def test_bad_lines_say_their_number_and_why_and_the_rest_still_read():
    sha = digest_of("sha256")
    text = "\n".join([
        f"{sha}  good.run", "abc123  short.run", f"{sha}  ",
        f"{sha[:-1]}g  not-hex.run", "MD5 (x.bin) = 1234", "https://vendor.example/plain.iso",
        "latin-1 \udce9 name",
    ])  # fmt: skip
    read = list(checksums.read(text))
    assert isinstance(read[0], Entry) and read[0].name == "good.run"
    bad = {b.line: b.reason for b in read if isinstance(b, BadLine)}
    assert bad[2] == "a digest of 6 hex digits is of no known algorithm"
    assert bad[3] == "no file name or URL after the digest"
    assert bad[5] == "MD5 must be 32 hex digits"
    assert bad[7] == "not UTF-8 text"
    # A bare line is a name without a digest (a list's URL); so is one a digest can't start.
    names = {e.line: (e.name, e.digest) for e in read if isinstance(e, Entry)}
    assert names[6] == ("https://vendor.example/plain.iso", None)
    assert names[4] == (f"{sha[:-1]}g  not-hex.run", None)


def test_names_resolve_against_the_checksum_files_url():
    base = "https://dl.vendor.example/cuda/12.4/SHA256SUMS"
    resolve = checksums.resolve
    assert resolve(base, "cuda.run") == "https://dl.vendor.example/cuda/12.4/cuda.run"
    assert resolve(base, "./linux/x.run") == "https://dl.vendor.example/cuda/12.4/linux/x.run"
    assert resolve(base, "../12.3/old.run") == "https://dl.vendor.example/cuda/12.3/old.run"
    # Characters a URL would read otherwise are escaped: the name stays a file name.
    assert resolve(base, "v1:a b#c?d%.tar") == (
        "https://dl.vendor.example/cuda/12.4/v1%3Aa%20b%23c%3Fd%25.tar"
    )
    for foreign in ("https://elsewhere.example/x.run", "/etc/passwd", "//evil.example/x"):
        with pytest.raises(ValueError, match="not a path relative to the checksum file"):
            resolve(base, foreign)
    for folder in (".", "..", "linux/", "a/.."):
        with pytest.raises(ValueError, match="names a directory"):
            resolve(base, folder)


@given(st.text(alphabet=string.printable.replace("\n", "").replace("\r", ""), min_size=1))
def test_any_relative_name_stays_on_the_checksum_files_host(name):
    base = "https://dl.vendor.example/a/b/SHA256SUMS"
    try:
        url = checksums.resolve(base, name)
    except ValueError:
        return
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.query, parts.fragment) == (
        "https",
        "dl.vendor.example",
        "",
        "",
    )
    assert unquote(parts.path).endswith(name.removeprefix("./").rsplit("/", 1)[-1])


def test_match_takes_the_name_or_its_last_segment():
    assert checksums.matches("./linux/cuda_12.4.run", "*.run")
    assert checksums.matches("linux/cuda_12.4.run", "cuda_*")
    assert checksums.matches("linux/cuda_12.4.run", "linux/*")
    assert not checksums.matches("linux/cuda_12.4.run", "*.deb")


def test_digests_check_their_algorithm_and_length():
    assert Digest.from_hex("A" * 32) == Digest("md5", "a" * 32)
    assert Digest.parse("sha512:" + "b" * 128).label == "SHA-512"
    assert Digest.of("SHA-384", "c" * 96).extra == ("sha384",)
    assert Digest.sha256("d" * 64).extra == ()  # nothing hashed besides the blob's own
    for bad in ("md5:" + "a" * 31, "crc32:abcd1234", "sha256:" + "z" * 64):
        with pytest.raises(BadDigest):
            Digest.parse(bad)

    class Written:
        def hexdigest(self, algorithm="sha256"):
            return hashlib.new(algorithm, BODY).hexdigest()

    assert mismatch(Digest("md5", digest_of("md5")), Written()) is None
    assert mismatch(None, Written()) is None
    assert mismatch(Digest("md5", "0" * 32), Written()) == (
        f"MD5 mismatch: expected {'0' * 32}, got {digest_of('md5')}"
    )
