"""API bearer tokens: how they are made, named and recognised.

A token is shown once, when it is made; the store keeps only its SHA-256, so a
copy of the database gives no one access. Tokens are 256 random bits, so a
plain (unsalted, fast) hash is enough: there is nothing to guess from it.
"""

from __future__ import annotations

import hashlib
import re
import secrets

PREFIX = "wct_"  # makes a leaked token easy to recognise (and to grep for)
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_NAME_RE = re.compile(NAME_PATTERN)
_TOKEN_RE = re.compile(re.escape(PREFIX) + r"[A-Za-z0-9_-]{43}")


class BadTokenName(ValueError):
    pass


def check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise BadTokenName(
            "a token name is 1 to 64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return name


def new() -> tuple[str, str]:
    """A fresh token and the digest to store for it."""
    token = PREFIX + secrets.token_urlsafe(32)
    return token, digest(token)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_token(text: str) -> bool:
    return bool(_TOKEN_RE.fullmatch(text))
