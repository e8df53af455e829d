"""Expected digests: the algorithm and value a fill's bytes must hash to.

SHA-256 names every blob, so a blob writer always computes it. A fill asked
to match another algorithm (a vendor's md5sum.txt or SHA512SUMS) computes
that one as well, from the same bytes as they arrive, and nothing more: a fill
expecting SHA-256, or nothing, hashes once. MD5 and SHA-1 catch corruption,
not forgery; SHA-256 stays the key whatever was checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

BLOB_ALGORITHM = "sha256"
# Algorithm -> hex digits of its digest. Each length names one algorithm, so a
# sha256sum-style line says which it is by its length alone.
ALGORITHMS = {"md5": 32, "sha1": 40, "sha224": 56, "sha256": 64, "sha384": 96, "sha512": 128}
_BY_LENGTH = {length: name for name, length in ALGORITHMS.items()}
_HEX = frozenset("0123456789abcdef")
SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")  # a SHA-256 as a user may give it
LABELS = {"md5": "MD5", "sha1": "SHA-1", "sha224": "SHA-224", "sha256": "SHA-256",
          "sha384": "SHA-384", "sha512": "SHA-512"}  # fmt: skip


class BadDigest(ValueError):
    """Not a digest this cache-host can check; the message says why."""


@dataclass(frozen=True)
class Digest:
    algorithm: str  # a key of ALGORITHMS
    hex: str  # lowercase

    @classmethod
    def of(cls, algorithm: str, value: str) -> Digest:
        """The digest `value` (hex, any case) of `algorithm`; BadDigest if it can't be one."""
        algorithm = algorithm.lower().replace("-", "")
        if algorithm not in ALGORITHMS:
            raise BadDigest(f"unknown digest algorithm {algorithm!r}")
        value = value.lower()
        if len(value) != ALGORITHMS[algorithm] or not set(value) <= _HEX:
            raise BadDigest(f"{LABELS[algorithm]} must be {ALGORITHMS[algorithm]} hex digits")
        return cls(algorithm, value)

    @classmethod
    def sha256(cls, value: str) -> Digest:
        return cls.of(BLOB_ALGORITHM, value)

    @classmethod
    def from_hex(cls, value: str) -> Digest:
        """A digest whose algorithm is told by its length (as in sha256sum,
        sha512sum and md5sum output)."""
        algorithm = _BY_LENGTH.get(len(value))
        if algorithm is None:
            raise BadDigest(f"a digest of {len(value)} hex digits is of no known algorithm")
        return cls.of(algorithm, value)

    @classmethod
    def parse(cls, text: str) -> Digest:
        """The stored form, `<algorithm>:<hex>`."""
        algorithm, _, value = text.partition(":")
        return cls.of(algorithm, value)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @property
    def label(self) -> str:
        return LABELS[self.algorithm]

    @property
    def extra(self) -> tuple[str, ...]:
        """The algorithms a blob writer must compute besides SHA-256 to check it."""
        return () if self.algorithm == BLOB_ALGORITHM else (self.algorithm,)


class Hashed(Protocol):
    def hexdigest(self, algorithm: str = BLOB_ALGORITHM) -> str: ...


def extra(expected: Digest | None) -> tuple[str, ...]:
    """What a writer must hash besides SHA-256 for `expected` (nothing for none)."""
    return expected.extra if expected else ()


def mismatch(expected: Digest | None, written: Hashed) -> str | None:
    """Why the bytes written fail `expected`, or None if they match (or nothing was expected)."""
    if expected is None:
        return None
    got = written.hexdigest(expected.algorithm)
    if got == expected.hex:
        return None
    return f"{expected.label} mismatch: expected {expected.hex}, got {got}"
