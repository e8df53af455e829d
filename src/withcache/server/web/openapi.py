"""The OpenAPI 3.1 document of the JSON API, served at /api/v1/openapi.json.

Built from the same route list as the router (api.ROUTES), so every operation
the server has is described and nothing else; the shapes here are what the
handlers in api.py send (tests check real answers against them, and run
schemathesis against the running server).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from withcache import __version__, keys
from withcache.server import events, tokens
from withcache.server.records import FillState, TokenScope
from withcache.server.web import params

if TYPE_CHECKING:
    from withcache.server.web.api import Route

JSON_TYPES = {str: "string", bool: "boolean", int: "integer"}
# What the server accepts as an origin URL, narrowed to a shape a generator can
# aim at: the server also takes IPv6 hosts and non-ASCII paths.
URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.-]+(:[1-9][0-9]{0,3})?(/[!-~]*)?$"
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **more: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **more}


def _object(properties: dict[str, Any], optional: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


def _listing(item: str, paged: bool = True) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "items": {"type": "array", "items": _ref(item)},
        "total": {"type": "integer", "minimum": 0, "description": "rows across all pages"},
    }
    if paged:
        properties["offset"] = {"type": "integer", "minimum": 0}
        properties["limit"] = {"type": "integer", "minimum": 1}
    return _object(properties)


TIME = {"type": "number", "description": "seconds since the Unix epoch"}
URL = {"type": "string", "minLength": 1, "maxLength": keys.MAX_URL_BYTES, "pattern": URL_PATTERN}
SHA256 = {"type": "string", "pattern": SHA256_PATTERN}
COUNT = {"type": "integer", "minimum": 0}

SCHEMAS: dict[str, Any] = {
    "Error": _object({"error": {"type": "string", "description": "what went wrong, one line"}}),
    "Status": _object({
        "status": {
            "type": "string", "enum": ["ok", "degraded"],
            "description": "degraded: hits are served, but no fill starts or the metadata "
            "store can't record (see problems)",
        },
        "problems": {"type": "array", "items": {"type": "string"}},
        "version": {"type": "string"},
        "mode": {"type": "string", "enum": ["auto", "curate"]},
        "artifacts": COUNT,
        "bytes_stored": COUNT,
        "max_bytes": _nullable("integer", description="the --max-bytes cap, if any"),
        "free_bytes": COUNT,
    }),
    "Artifact": _object({
        "id": {"type": "integer", "minimum": 1},
        "url": {"type": "string", "description": "the cache key (no query unless --keep-query)"},
        "sha256": SHA256,
        "size": COUNT,
        "fetched_at": TIME,
        "hits": COUNT,
        "misses": {**COUNT, "description": "times asked for before it was cached"},
        "last_hit": _nullable("number"),
        "scoped": {"type": "boolean", "description": "fetched with a client's credentials"},
        "serve_path": {"type": "string", "description": "where the cache-host serves it"},
    }),
    "Miss": _object({
        "url": {"type": "string"},
        "count": COUNT,
        "first_seen": TIME,
        "last_seen": TIME,
        "reason": {"type": "string", "description": "why it is not (yet) cached"},
    }),
    "Fill": _object({
        "id": {"type": "integer", "minimum": 1},
        "url": {"type": "string", "description": "display form: no query unless --keep-query"},
        "state": {"type": "string", "enum": [s.value for s in FillState]},
        "requested_by": {"type": "string", "enum": ["miss", "operator"]},
        "expected_sha256": _nullable("string", pattern=SHA256_PATTERN),
        "credentialed": {"type": "boolean"},
        "bytes_done": COUNT,
        "total": _nullable("integer", minimum=0),
        "percent": _nullable("integer", minimum=0, maximum=100),
        "rate": {"type": "number", "minimum": 0, "description": "bytes per second"},
        "eta": _nullable("number", minimum=0, description="seconds left"),
        "clients": {**COUNT, "description": "requests reading this fill as it arrives"},
        "error": _nullable("string"),
        "created_at": TIME,
        "started_at": _nullable("number"),
        "finished_at": _nullable("number"),
    }),
    "Event": _object({
        "id": {"type": "integer", "minimum": 1},
        "at": TIME,
        "kind": {"type": "string", "enum": events.kinds()},
        "url": _nullable("string"),
        "actor": _nullable("string"),
        "detail": {"type": "object"},
    }),
    "Token": _object({
        "id": {"type": "integer", "minimum": 1},
        "name": {"type": "string"},
        "scope": {"type": "string", "enum": [s.value for s in TokenScope]},
        "created_at": TIME,
        "last_used": _nullable("number", description="to within a minute"),
        "created_by": _nullable("string"),
    }),
    "Verification": _object({
        "state": {"type": "string", "enum": ["running", "done", "failed"]},
        "quarantine": {"type": "boolean"},
        "started_at": TIME,
        "finished_at": _nullable("number"),
        "blobs": COUNT,
        "checked": COUNT,
        "bytes_total": COUNT,
        "bytes_checked": COUNT,
        "error": _nullable("string"),
        "corrupt": {"type": "array", "items": _object({
            "sha256": SHA256,
            "problem": {"type": "string"},
            "quarantined": {"type": "boolean"},
            "artifacts": {"type": "array", "items": _object({
                "id": {"type": "integer"}, "url": {"type": "string"},
            })},
        })},
    }),
    "ArtifactList": _listing("Artifact"),
    "MissList": _listing("Miss"),
    "FillList": _listing("Fill"),
    "EventList": _listing("Event"),
    "TokenList": _listing("Token", paged=False),
}  # fmt: skip
SCHEMAS["NewToken"] = {
    **SCHEMAS["Token"],
    "properties": {
        **SCHEMAS["Token"]["properties"],
        "token": {"type": "string", "description": "the token; shown this once, never again"},
    },
    "required": [*SCHEMAS["Token"]["required"], "token"],
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}  # fmt: skip


def _path(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _paging() -> list[dict[str, Any]]:
    return [
        _query("offset", {"type": "integer", "minimum": 0, "maximum": params.MAX_OFFSET,
                          "default": 0}, "rows to skip"),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": params.MAX_LIMIT,
                         "default": params.DEFAULT_LIMIT}, "rows to return"),
    ]  # fmt: skip


def _search(what: str) -> dict[str, Any]:
    return _query(
        "q", {"type": "string", "maxLength": params.MAX_SEARCH}, f"only {what} containing this"
    )


def _body(properties: dict[str, Any], optional: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "required": not optional or len(optional) < len(properties),
        "content": {"application/json": {"schema": _object(properties, optional)}},
    }


def _links(value: str, *operations: str, parameter: str = "id") -> dict[str, Any]:
    """OpenAPI links: where the thing in this answer can be used next."""
    return {op: {"operationId": op, "parameters": {parameter: value}} for op in operations}


def _operations() -> dict[str, dict[str, Any]]:
    """Each operation's own part, by operation id: what it takes and what it answers."""
    object_id = _path("id", {"type": "integer", "minimum": 1, "maximum": params.MAX_ID})
    kinds = events.kinds()
    return {
        "get-openapi": {"summary": "This document", "ok": (200, {"type": "object"})},
        "get-status": {
            "summary": "Health: version, mode, stored bytes, cap, free disk",
            "ok": (200, _ref("Status")),
        },
        "list-artifacts": {
            "summary": "Cached artifacts, newest first unless sorted otherwise",
            "parameters": [
                _search("artifacts whose URL contains this (or whose SHA-256 is this)"),
                _query("url", {**URL, "maxLength": params.MAX_SEARCH},
                       "only artifacts cached under this URL's key (any scope)"),
                _query("sort", {"type": "string", "enum": list(params.ARTIFACT_SORTS)},
                       "column to sort by (default fetched_at)"),
                _query("order", {"type": "string", "enum": ["asc", "desc"]},
                       "sort order (default: desc, asc for key and sha256)"),
                *_paging(),
            ],
            "ok": (200, _ref("ArtifactList")),
            "links": _links("$response.body#/items/0/id", "get-artifact", "delete-artifact"),
        },
        "get-artifact": {"summary": "One artifact", "parameters": [object_id],
                         "ok": (200, _ref("Artifact")), "errors": [404]},
        "delete-artifact": {
            "summary": "Delete an artifact (its blob too, unless another artifact shares it)",
            "parameters": [object_id], "ok": (200, _ref("Artifact")), "errors": [404],
        },
        "list-misses": {
            "summary": "URLs asked for and not cached, most recent first",
            "parameters": [_search("misses"), *_paging()],
            "ok": (200, _ref("MissList")),
        },
        "approve-miss": {
            "summary": "Fetch a recorded miss (what an operator does under --curate)",
            "body": _body({"url": URL}), "ok": (200, _ref("Fill")), "errors": [404, 409],
            "links": _links("$response.body#/id", "get-fill", "cancel-fill"),
        },
        "dismiss-miss": {
            "summary": "Forget a recorded miss", "body": _body({"url": URL}),
            "ok": (204, None), "errors": [404, 409],
        },
        "list-fills": {
            "summary": "Fills (downloads): active first, then the most recent",
            "parameters": [
                _query("state", {"type": "string", "enum": list(params.FILL_STATES)},
                       "only fills in this state (active: queued or running)"),
                *_paging(),
            ],
            "ok": (200, _ref("FillList")),
        },
        "add-fill": {
            "summary": "Fetch a URL into the cache before anyone asks for it",
            "description": "With `sha256`, a download with other bytes fails and nothing "
            "is kept. Idempotent: a URL cached already is not fetched again (200, the "
            "artifact) unless `refresh`; a fill under way for it is joined (202).",
            "body": _body({"url": URL, "sha256": _nullable("string", pattern=SHA256_PATTERN),
                           "refresh": _nullable("boolean", description="fetch it again even "
                                                "if it is cached")},
                          optional=["sha256", "refresh"]),
            "ok": (201, _ref("Fill")), "created": True, "errors": [409],
            "also": {200: ("Cached already: nothing was fetched", _ref("Artifact")),
                     202: ("A fill for this URL was under way already: this one",
                           _ref("Fill"))},
            "links": _links("$response.body#/id", "get-fill", "cancel-fill", "retry-fill"),
        },
        "get-fill": {"summary": "One fill, with live progress", "parameters": [object_id],
                     "ok": (200, _ref("Fill")), "errors": [404]},
        "cancel-fill": {"summary": "Cancel a queued or running fill", "parameters": [object_id],
                        "ok": (204, None), "errors": [409]},
        "retry-fill": {"summary": "Queue a failed or cancelled fill again",
                       "parameters": [object_id], "ok": (200, _ref("Fill")),
                       "errors": [404, 409]},
        "clear-finished": {
            "summary": "Forget finished fills (done, failed, cancelled)",
            "ok": (200, _object({"cleared": COUNT})),
        },
        "list-events": {
            "summary": "The audit log, newest first",
            "parameters": [
                _query("kind", {"type": "string", "enum": kinds}, "only events of this kind"),
                _search("events whose URL or detail contains this"), *_paging(),
            ],
            "ok": (200, _ref("EventList")),
        },
        "list-tokens": {"summary": "API tokens (never their values)",
                        "ok": (200, _ref("TokenList"))},
        "create-token": {
            "summary": "Make an API token; the answer is the only place it is ever shown",
            "body": _body({
                "name": {"type": "string", "pattern": f"^{tokens.NAME_PATTERN}$"},
                "scope": _nullable("string", enum=[*(s.value for s in TokenScope), None],
                                   description="read (the default) or admin"),
            }, optional=["scope"]),
            "ok": (201, _ref("NewToken")), "errors": [409],
            "links": _links("$response.body#/name", "revoke-token", parameter="name"),
        },
        "revoke-token": {
            "summary": "Revoke an API token: it stops working at once",
            "parameters": [_path("name", {"type": "string",
                                          "pattern": f"^{tokens.NAME_PATTERN}$"})],
            "ok": (204, None), "errors": [404],
        },
        "start-verify": {
            "summary": "Re-hash every blob in the background; poll GET /verify",
            "description": "With `quarantine`, a corrupt or missing blob's artifacts are "
            "deleted and the file is moved to `quarantine/` in the data dir.",
            "body": _body({"quarantine": _nullable("boolean")}, optional=["quarantine"]),
            "ok": (202, _ref("Verification")), "errors": [409],
        },
        "get-verify": {
            "summary": "Progress and findings of the latest verification",
            "ok": (200, _ref("Verification")), "errors": [404],
        },
    }  # fmt: skip


ERRORS = {
    400: "Bad input; the message says which",
    401: "No API token, or an unknown or revoked one",
    403: "The token is read-only and this needs an admin token",
    404: "No such thing",
    409: "The cache-host can't do this now or under its policy; the message says why",
    415: "The body is not JSON (send Content-Type: application/json)",
    429: "Too many wrong passwords from this address; wait Retry-After seconds",
}


def _error(status: int) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": ERRORS[status],
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    if status == 401:
        answer["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    if status == 429:
        answer["headers"] = {"Retry-After": {"schema": {"type": "string"}, "required": True}}
    return answer


def _operation(route: Route, spec: dict[str, Any]) -> dict[str, Any]:
    status, schema = spec["ok"]
    ok: dict[str, Any] = {"description": "Done"}
    if schema is not None:
        ok["content"] = {"application/json": {"schema": schema}}
    if spec.get("links"):
        ok["links"] = spec["links"]
    if spec.get("created"):
        ok["headers"] = {"Location": {"schema": {"type": "string"}, "required": True}}
    errors = set(spec.get("errors", ()))
    if "{" in route.path:
        errors.add(404)  # the path names something that isn't there, or isn't a number
    if spec.get("parameters") or spec.get("body"):
        errors.add(400)
    if spec.get("body"):
        errors.add(415)
    if route.scope is not None:
        errors.add(401)
    if route.scope is TokenScope.ADMIN:
        errors.add(403)
    if route.password:
        errors.add(429)
    responses = {str(status): ok}
    for other, (description, body) in spec.get("also", {}).items():
        responses[str(other)] = {
            "description": description,
            "content": {"application/json": {"schema": body}},
            "headers": {"Location": {"schema": {"type": "string"}, "required": True}},
        }
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": spec["summary"],
        "responses": {**responses, **{str(e): _error(e) for e in sorted(errors)}},
    }
    if "description" in spec:
        operation["description"] = spec["description"]
    if spec.get("parameters"):
        operation["parameters"] = spec["parameters"]
    if spec.get("body"):
        operation["requestBody"] = spec["body"]
    if route.scope is None:
        operation["security"] = []
    else:
        operation["security"] = [{"token": []}] + ([{"password": []}] if route.password else [])
        operation["x-scope"] = route.scope.value
    return operation


def document(routes: Sequence[Route]) -> dict[str, Any]:
    specs = _operations()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(
            route, specs[route.operation_id]
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "withcache",
            "version": __version__,
            "description": "The cache-host's JSON API. Send `Authorization: Bearer <token>`; "
            "a read token may use every GET, an admin token everything. Errors are "
            '`{"error": "..."}`.',
        },
        "servers": [{"url": "/api/v1"}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "token": {"type": "http", "scheme": "bearer",
                          "description": "an API token (`withcache token create`)"},
                "password": {"type": "http", "scheme": "basic",
                             "description": "any user name and the admin password; only "
                             "for managing tokens"},
            },
        },
    }  # fmt: skip
