"""AWS Signature Version 4 for S3: signed headers, and presigned URLs.

Pure functions over the request's parts (stdlib only), so they are checked
against AWS's published examples. Object keys are path-encoded once, as S3
expects (not twice, as other AWS services do).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED = "UNSIGNED-PAYLOAD"


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str = "us-east-1"
    service: str = "s3"


def _encode(text: str, safe: str = "") -> str:
    # RFC 3986 unreserved characters stay as they are; everything else is %XX.
    return quote(text, safe="-_.~" + safe)


def canonical_query(query: Mapping[str, str]) -> str:
    pairs = sorted((_encode(k), _encode(v)) for k, v in query.items())
    return "&".join(f"{k}={v}" for k, v in pairs)


def _scope(creds: Credentials, stamp: str) -> str:
    return f"{stamp[:8]}/{creds.region}/{creds.service}/aws4_request"


def _signing_key(creds: Credentials, day: str) -> bytes:
    key = ("AWS4" + creds.secret_access_key).encode()
    for part in (day, creds.region, creds.service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _signature(
    creds: Credentials,
    stamp: str,
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    payload_sha256: str,
) -> tuple[str, str]:
    """(signed header names, signature) of one request."""
    named = sorted((k.lower(), " ".join(v.split())) for k, v in headers.items())
    signed = ";".join(k for k, _ in named)
    canonical = "\n".join(
        [
            method,
            _encode(path, safe="/"),
            canonical_query(query),
            "".join(f"{k}:{v}\n" for k, v in named),
            signed,
            payload_sha256,
        ]
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    to_sign = "\n".join([ALGORITHM, stamp, _scope(creds, stamp), digest])
    signature = hmac.new(
        _signing_key(creds, stamp[:8]), to_sign.encode(), hashlib.sha256
    ).hexdigest()
    return signed, signature


def amz_date(now: float | None = None) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))


def sign_headers(
    creds: Credentials,
    method: str,
    host: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    payload_sha256: str = UNSIGNED,
    now: float | None = None,
) -> dict[str, str]:
    """The request's headers plus Host, X-Amz-Date, X-Amz-Content-SHA256 and
    Authorization. With a payload hash, S3 refuses a body that doesn't match it."""
    stamp = amz_date(now)
    out = dict(headers)
    out["Host"] = host
    out["X-Amz-Date"] = stamp
    out["X-Amz-Content-SHA256"] = payload_sha256
    if creds.session_token:
        out["X-Amz-Security-Token"] = creds.session_token
    signed, signature = _signature(creds, stamp, method, path, query, out, payload_sha256)
    out["Authorization"] = (
        f"{ALGORITHM} Credential={creds.access_key_id}/{_scope(creds, stamp)}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    return out


def presign_query(
    creds: Credentials,
    method: str,
    host: str,
    path: str,
    seconds: int,
    query: Mapping[str, str] | None = None,
    now: float | None = None,
) -> str:
    """The query string of a presigned URL (the signature covers `query` too)."""
    stamp = amz_date(now)
    params = dict(query or {})
    params.update(
        {
            "X-Amz-Algorithm": ALGORITHM,
            "X-Amz-Credential": f"{creds.access_key_id}/{_scope(creds, stamp)}",
            "X-Amz-Date": stamp,
            "X-Amz-Expires": str(seconds),
            "X-Amz-SignedHeaders": "host",
        }
    )
    if creds.session_token:
        params["X-Amz-Security-Token"] = creds.session_token
    _, signature = _signature(creds, stamp, method, path, params, {"host": host}, UNSIGNED)
    params["X-Amz-Signature"] = signature
    return canonical_query(params)
