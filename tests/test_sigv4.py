"""SigV4 against the worked examples in AWS's S3 documentation (their
example keys, bucket and date; the signatures are the documented ones)."""

from __future__ import annotations

import calendar
import hashlib
import time
from urllib.parse import parse_qs

from withcache.server.store import sigv4

CREDS = sigv4.Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
HOST = "examplebucket.s3.amazonaws.com"
EMPTY_BODY = hashlib.sha256(b"").hexdigest()
NOW = calendar.timegm(time.strptime("20130524T000000Z", "%Y%m%dT%H%M%SZ"))


def test_a_ranged_get_is_signed_in_its_headers_as_documented():
    headers = sigv4.sign_headers(
        CREDS, "GET", HOST, "/test.txt", {}, {"Range": "bytes=0-9"}, EMPTY_BODY, NOW
    )
    assert headers["X-Amz-Date"] == "20130524T000000Z"
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def test_a_presigned_get_carries_the_documented_signature():
    query = parse_qs(sigv4.presign_query(CREDS, "GET", HOST, "/test.txt", 86400, now=NOW))
    assert query["X-Amz-Credential"] == ["AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request"]
    assert query["X-Amz-Expires"] == ["86400"]
    assert query["X-Amz-SignedHeaders"] == ["host"]
    assert query["X-Amz-Signature"] == [
        "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
    ]


def test_a_session_token_is_signed_too():
    with_token = sigv4.Credentials(CREDS.access_key_id, CREDS.secret_access_key, "token/+=")
    headers = sigv4.sign_headers(with_token, "GET", HOST, "/test.txt", {}, {}, now=NOW)
    assert headers["X-Amz-Security-Token"] == "token/+="
    assert "x-amz-security-token" in headers["Authorization"].split("SignedHeaders=")[1]
    query = parse_qs(sigv4.presign_query(with_token, "GET", HOST, "/test.txt", 60, now=NOW))
    assert query["X-Amz-Security-Token"] == ["token/+="]
