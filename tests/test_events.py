"""The audit events on their own: typed, complete where they are made, one
kind each, and never carrying a secret; recorded through the core."""

from __future__ import annotations

import dataclasses
import json
import logging
import re

import pytest

from withcache.server import events

CLASSES = events._all_subclasses(events.Event)
SECRET_WORDS = re.compile(r"authorization|password|cookie|secret|token$|credential")


def example(cls: type[events.Event]) -> events.Event:
    """An instance with every field given."""
    values = {str: "x", int: 1, float: 0.5, "str": "x", "int": 1, "float": 0.5}
    given = {}
    for f in dataclasses.fields(cls):
        kind = f.type.split(" | ")[0] if isinstance(f.type, str) else f.type
        given[f.name] = values.get(kind, "x")
    return cls(**given)


def test_kinds_are_one_per_class_and_named_subject_dot_verb():
    kinds = [cls.kind for cls in CLASSES]
    assert len(kinds) == len(set(kinds)) == len(events.kinds())
    assert all(re.fullmatch(r"[a-z]+\.[a-z]+", kind) for kind in kinds)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.kind)
def test_every_field_is_given_by_keyword_and_none_left_out(cls):
    event = example(cls)
    with pytest.raises(TypeError):
        cls("https://h/x")  # no positional arguments
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    assert set(required) >= {f.name for f in dataclasses.fields(cls)} - {"url", "actor"}
    for name in required:
        given = {f.name: getattr(event, f.name) for f in dataclasses.fields(cls)}
        del given[name]
        with pytest.raises(TypeError, match=name):
            cls(**given)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.url = "changed"  # type: ignore[misc]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.kind)
def test_detail_is_the_rest_as_json_and_names_no_secret(cls):
    event = example(cls)
    detail = event.detail()
    assert set(detail) == {f.name for f in dataclasses.fields(cls)} - {"url", "actor"}
    assert json.loads(json.dumps(detail)) == detail
    assert not [name for name in detail if SECRET_WORDS.search(name)]


async def test_the_core_records_an_event_in_the_store_and_the_log(core, caplog):
    caplog.set_level(logging.INFO, logger="withcache")
    await core.record(events.TokenCreated(actor="api:ci", name="nightly", scope="read"))
    (stored,) = (await core.list_events(kind="token.created")).rows
    assert (stored.kind, stored.actor, dict(stored.detail)) == (
        "token.created", "api:ci", {"name": "nightly", "scope": "read"},
    )  # fmt: skip
    (line,) = [r for r in caplog.records if r.getMessage() == "token.created"]
    assert line.fields == {"url": None, "actor": "api:ci", "name": "nightly", "scope": "read"}
