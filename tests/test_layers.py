"""The boundaries architecture.md draws, checked on the source: the web layer
talks to the core (`Cache` and the records it hands out) and never imports
the stores or the fill package; nothing outside fill/ writes a Fill."""

from __future__ import annotations

import ast
from pathlib import Path

SERVER = Path(__file__).resolve().parent.parent / "src" / "withcache" / "server"
FORBIDDEN_IN_WEB = ("withcache.server.store", "withcache.server.fill")
# A Fill's writer side: only the fill package calls it.
WRITER_SIDE = {
    "claimed", "observed", "spooling", "start", "restart", "advance", "end", "mirroring",
    "unmirrored",
}  # fmt: skip
# Attributes of aiohttp's own objects that a handler sets.
AIOHTTP_FIELDS = {"content_length", "content_type", "charset", "last_modified"}


def _imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def _names_a_fill(node: ast.expr) -> bool:
    """`fill`, `x.fill`, `fill_`...: what the code calls a fill."""
    name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")
    return name == "fill" or name.endswith("_fill")


def web_problems(source: str) -> list[str]:
    """Where a web/ module reaches past the core."""
    tree = ast.parse(source)
    problems = [f"imports {name}" for name in _imports(tree) if name.startswith(FORBIDDEN_IN_WEB)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            owner = node.value
            if not node.attr.startswith("__") and not (
                isinstance(owner, ast.Name) and owner.id in ("self", "cls")
            ):
                problems.append(f"line {node.lineno}: reads the private .{node.attr}")
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and target.attr not in AIOHTTP_FIELDS
                and not (isinstance(target.value, ast.Name) and target.value.id == "self")
            ):
                problems.append(f"line {node.lineno}: sets .{target.attr} of another object")
    return problems


def fill_writes(source: str) -> list[str]:
    """Where a module outside fill/ writes a Fill."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in WRITER_SIDE
            and _names_a_fill(node.func.value)
        ):
            problems.append(f"line {node.lineno}: calls the writer side .{node.func.attr}()")
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AugAssign):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Attribute) and _names_a_fill(target.value):
                problems.append(f"line {node.lineno}: sets a fill's .{target.attr}")
    return problems


def test_the_web_layer_talks_to_the_core_only():
    found = {
        path.name: problems
        for path in sorted((SERVER / "web").glob("*.py"))
        if (problems := web_problems(path.read_text()))
    }
    assert found == {}


def test_nothing_outside_the_fill_package_writes_a_fill():
    sources = [p for p in SERVER.rglob("*.py") if "fill" not in p.relative_to(SERVER).parts[:1]]
    assert SERVER / "cache.py" in sources and SERVER / "web" / "readthrough.py" in sources
    found = {
        str(path.relative_to(SERVER)): problems
        for path in sources
        if (problems := fill_writes(path.read_text()))
    }
    assert found == {}


def test_the_checks_see_what_they_look_for():
    offending = """
from withcache.server.store import BlobGone
import withcache.server.fill.manager
cache._metadata.find_artifact(key)
outcome.fill.generation += 1
reader.total = 3
response.content_length = 10
"""
    assert sorted(web_problems(offending)) == [
        "imports withcache.server.fill.manager",
        "imports withcache.server.store",
        "imports withcache.server.store.BlobGone",
        "line 4: reads the private ._metadata",
        "line 5: sets .generation of another object",
        "line 6: sets .total of another object",
    ]
    writes = "fill.advance(3)\nself.fill.end(done)\nfill.clients += 1\nx.start()"
    assert sorted(fill_writes(writes)) == [
        "line 1: calls the writer side .advance()",
        "line 2: calls the writer side .end()",
        "line 3: sets a fill's .clients",
    ]
