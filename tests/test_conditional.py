"""Conditional and range requests against a blob's validators (RFC 9110)."""

import pytest

from withcache.server.web.conditional import Answer, Representation, evaluate

LM = "Tue, 14 Nov 2023 22:13:20 GMT"  # 1_700_000_000
REP = Representation(etag='"abc"', last_modified=1_700_000_000.0, size=1000)


@pytest.mark.parametrize(
    ("headers", "answer"),
    [
        ({}, Answer(200, 0, 1000)),
        ({"Range": "bytes=0-99"}, Answer(206, 0, 100)),
        ({"Range": "bytes=900-"}, Answer(206, 900, 100)),
        ({"Range": "bytes=-10"}, Answer(206, 990, 10)),
        ({"Range": "bytes=-5000"}, Answer(206, 0, 1000)),
        ({"Range": "bytes=990-5000"}, Answer(206, 990, 10)),
        ({"Range": "bytes=1000-"}, Answer(416)),
        ({"Range": "bytes=-0"}, Answer(416)),
        ({"Range": "bytes=5-2"}, Answer(200, 0, 1000)),
        ({"Range": "bytes=0-1,5-6"}, Answer(200, 0, 1000)),
        ({"Range": "items=0-1"}, Answer(200, 0, 1000)),
        ({"If-None-Match": '"abc"'}, Answer(304)),
        ({"If-None-Match": 'W/"abc"'}, Answer(304)),
        ({"If-None-Match": '"x", "abc"'}, Answer(304)),
        ({"If-None-Match": "*"}, Answer(304)),
        ({"If-None-Match": '"other"'}, Answer(200, 0, 1000)),
        ({"If-Modified-Since": LM}, Answer(304)),
        ({"If-Modified-Since": "Mon, 13 Nov 2023 00:00:00 GMT"}, Answer(200, 0, 1000)),
        ({"If-Modified-Since": "garbage"}, Answer(200, 0, 1000)),
        # If-None-Match wins over If-Modified-Since.
        ({"If-None-Match": '"other"', "If-Modified-Since": LM}, Answer(200, 0, 1000)),
        ({"If-Match": '"abc"'}, Answer(200, 0, 1000)),
        ({"If-Match": '"other"'}, Answer(412)),
        ({"If-Match": 'W/"abc"'}, Answer(412)),
        ({"If-Unmodified-Since": "Mon, 13 Nov 2023 00:00:00 GMT"}, Answer(412)),
        ({"Range": "bytes=0-9", "If-Range": '"abc"'}, Answer(206, 0, 10)),
        ({"Range": "bytes=0-9", "If-Range": '"old"'}, Answer(200, 0, 1000)),
        ({"Range": "bytes=0-9", "If-Range": LM}, Answer(206, 0, 10)),
        ({"Range": "bytes=0-9", "If-Range": "Mon, 13 Nov 2023 00:00:00 GMT"}, Answer(200, 0, 1000)),
        ({"Range": "bytes=0-9", "If-Range": 'W/"abc"'}, Answer(200, 0, 1000)),
    ],
)
def test_get(headers, answer):
    assert evaluate("GET", headers, REP) == answer


def test_head_ignores_range():
    assert evaluate("HEAD", {"Range": "bytes=0-9"}, REP) == Answer(200, 0, 1000)


def test_no_last_modified_never_304_by_date():
    rep = Representation(etag='"abc"', last_modified=None, size=10)
    assert evaluate("GET", {"If-Modified-Since": LM}, rep) == Answer(200, 0, 10)


def test_empty_blob():
    rep = Representation(etag='"e"', last_modified=None, size=0)
    assert evaluate("GET", {}, rep) == Answer(200, 0, 0)
    assert evaluate("GET", {"Range": "bytes=0-"}, rep) == Answer(416)
