"""The docs keep up with the code: every server flag, every environment
variable the code reads, every API route and every `withcache` subcommand
appears in README.md or docs/*.md, every event kind (with its detail) in
docs/architecture.md, and the OpenAPI document describes exactly the routes
the server has."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace

from aiohttp import web

from withcache.cli import build_parser as cli_parser
from withcache.server import events
from withcache.server.cli import _OPTIONS, env_name
from withcache.server.web import api, openapi

ROOT = Path(__file__).resolve().parent.parent
# Environment variables as the code spells them (string literals in src/ and scripts/).
ENV_RE = re.compile(r"\b(?:[A-Z]+)?WITHCACHE_[A-Z][A-Z0-9_]*\b|\bREAL_(?:CURL|WGET)\b")
# Read by the tests or benchmarks only, not by anything a user runs.
NOT_USER_FACING = {"WITHCACHE_UI_SCREENSHOTS"}


def docs(root: Path = ROOT) -> str:
    texts = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    return "\n".join(path.read_text() for path in texts)


def code_env_names(root: Path = ROOT) -> set[str]:
    sources = [*(root / "src").rglob("*.py"), *(root / "scripts").glob("*")]
    found = {name for path in sources for name in ENV_RE.findall(path.read_text())}
    found |= {env_name(option.dest) for option in _OPTIONS}
    return found - NOT_USER_FACING


def undocumented_env(root: Path = ROOT) -> list[str]:
    text = docs(root)
    return sorted(name for name in code_env_names(root) if not re.search(rf"\b{name}\b", text))


def test_every_server_flag_and_its_variable_is_documented():
    text = docs()
    missing = [
        f"--{o.dest.replace('_', '-')} / {env_name(o.dest)}"
        for o in _OPTIONS
        if f"--{o.dest.replace('_', '-')}" not in text or env_name(o.dest) not in text
    ]
    assert not missing, f"document these in README.md: {missing}"


def test_every_environment_variable_is_documented():
    assert {"WITHCACHE_SERVER", "WITHCACHE_TOKEN", "WITHCACHE_ADMIN_PASSWORD"} <= code_env_names()
    missing = undocumented_env()
    assert not missing, f"document these in README.md: {missing}"


def test_an_undocumented_variable_is_caught(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.py").write_text('os.environ.get("WITHCACHE_NOT_A_SETTING")')
    (tmp_path / "scripts").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("WITHCACHE_DATA_DIR and nothing else")
    missing = undocumented_env(tmp_path)
    assert "WITHCACHE_NOT_A_SETTING" in missing and "WITHCACHE_DATA_DIR" not in missing


def test_every_api_route_is_documented():
    text = " ".join(docs().split())
    routes = [f"{r.method} {api.PREFIX}{r.path}" for r in api.ROUTES]
    routes += ["GET /metrics", "/healthz"]
    missing = [route for route in routes if route not in text]
    assert not missing, f"document these in README.md: {missing}"


def test_every_withcache_subcommand_is_documented():
    text = docs()
    parser = cli_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    (tokens,) = [a for a in commands.choices["token"]._actions if a.dest == "token_command"]
    names = [f"withcache {c}" for c in commands.choices if c != "token"]
    names += [f"withcache token {c}" for c in tokens.choices]
    missing = [name for name in names if name not in text]
    assert not missing, f"document these in README.md: {missing}"


def test_openapi_describes_exactly_the_routes_the_server_has():
    app = web.Application()
    api.add_routes(app, SimpleNamespace(settings=SimpleNamespace(private_metrics=False)))
    served = set()
    for resource in app.router.resources():
        sub = resource.get_info().get("app")
        if sub is not None:  # the /api/v1 sub-application
            for route in sub.router.routes():
                path = route.resource.canonical.removeprefix(api.PREFIX)
                served.add((route.method, path.replace("{id:[0-9]+}", "{id}")))
    document = openapi.document(api.ROUTES)
    described = {(m.upper(), path) for path, ops in document["paths"].items() for m in ops}
    assert served == described
    assert len(described) == len(api.ROUTES)


def documented_events(root: Path = ROOT) -> dict[str, set[str]]:
    """kind -> its detail fields, from the table in docs/architecture.md."""
    text = (root / "docs" / "architecture.md").read_text()
    section = text.split("## The audit trail", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z.]+)` \|[^|]*\|([^|]*)\|$", section, re.M)
    return {kind: set(re.findall(r"`(\w+)`", fields)) for kind, fields in rows}


def test_every_event_kind_and_its_detail_is_documented():
    documented = documented_events()
    assert sorted(documented) == events.kinds()
    for cls in events._all_subclasses(events.Event):
        names = {f.name for f in dataclasses.fields(cls)} - {"url", "actor"}
        assert documented[cls.kind] == names, cls.kind
