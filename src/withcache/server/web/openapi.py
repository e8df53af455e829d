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
from withcache.server.digests import ALGORITHMS
from withcache.server.imports import MAX_HEADER_VALUE, MAX_OFFERED
from withcache.server.lists import MAX_LINES
from withcache.server.records import IMPORTED, ITEM_STATES, REPLAYED_HEADERS, FillState, TokenScope
from withcache.server.web import params

if TYPE_CHECKING:
    from withcache.server.web.api import Route


JSON_TYPES = {str: "string", bool: "boolean", int: "integer", list: "array", dict: "object"}
# What the server accepts as an origin URL, narrowed to a shape a generator can
# aim at: the server also takes IPv6 hosts, non-ASCII paths and oras://
# references (docs/oci.md).
URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.-]+(:[1-9][0-9]{0,3})?(/[!-~]*)?$"
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
SCOPE_PATTERN = r"^([0-9a-f]{64})?$"
# A list that names something: a line that is neither blank nor a # comment.
LIST_PATTERN = r"(^|\n)[ \t]*[^#\s]"
HEADER_VALUE = {"type": "string", "maxLength": MAX_HEADER_VALUE, "pattern": "^[ -~]*$"}
DIGEST_PATTERN = "^(" + "|".join(f"{name}:[0-9a-f]{{{n}}}" for name, n in ALGORITHMS.items()) + ")$"


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
ID = "[1-9][0-9]{0,17}"  # a positive id in its digits

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
        "imported": {"type": "boolean", "description": "its bytes were uploaded (`withcache "
                     "import`), not fetched: no origin vouched for them"},
        "pinned": {"type": "boolean", "description": "never evicted, never revalidated but "
                   "when an operator asks"},
        "validated_at": _nullable("number", description="when the origin last said its "
                                  "bytes are current (--revalidate); null: when fetched"),
        "serve_path": {"type": "string", "description": "where the cache-host serves it"},
        "stale": _nullable("string", description="listings and GET only: why this host "
                           "serves it without its origin's word (its revalidation failed)"),
    }, optional=["stale"]),
    "Origin": _object({
        "origin": {"type": "string", "description": "scheme://host[:port]"},
        "error": {"type": "string", "description": "the last failure"},
        "failures": {**COUNT, "description": "fills that failed in a row"},
        "since": TIME,
        "until": {**TIME, "description": "when misses may try it again"},
        "blocked": {"type": "boolean", "description": "misses leave it alone now"},
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
        "requested_by": {"type": "string", "enum": ["miss", "operator", IMPORTED],
                         "description": f"{IMPORTED}: bytes uploaded, not fetched"},
        "expected_sha256": _nullable("string", pattern=SHA256_PATTERN),
        "expected_digest": _nullable("string", pattern=DIGEST_PATTERN,
                                     description="`<algorithm>:<hex>` the bytes must match"),
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
    "List": _object({
        "id": {"type": "integer", "minimum": 1},
        "source": {"type": "string", "description": "a file name, - (stdin), or the checksum "
                   "file's URL"},
        "kind": {"type": "string", "enum": ["urls", "sums"]},
        "created_at": TIME,
        "created_by": _nullable("string"),
        "items": {**COUNT, "description": "lines that named something"},
        "wanted": {**COUNT, "description": "artifacts named (not bad or repeated lines)"},
        "ready": {**COUNT, "description": "of those, cached now (fetched, or already)"},
        "active": {**COUNT, "description": "fills queued or running"},
        "failed": {**COUNT, "description": "fills failed or cancelled"},
        "refused": {**COUNT, "description": "bad lines, and lines the cache-host refused"},
        "counts": {"type": "object", "additionalProperties": COUNT,
                   "description": "items by state"},
        "finished": {"type": "boolean", "description": "no fill of it queued or running"},
        "percent": _nullable("integer", minimum=0, maximum=100),
        "bytes_done": COUNT,
        "bytes_total": {**COUNT, "description": "of the artifacts to fetch whose size is known"},
        "unsized": {**COUNT, "description": "artifacts to fetch whose size is not known yet"},
        "rate": {"type": "number", "minimum": 0, "description": "bytes per second"},
        "eta": _nullable("number", minimum=0, description="seconds left"),
    }),
    "ListItem": _object({
        "line": {"type": "integer", "minimum": 1},
        "url": {"type": "string", "description": "display form; a bad line as given"},
        "state": {"type": "string", "enum": list(ITEM_STATES)},
        "fill_id": _nullable("integer", minimum=1),
        "bytes_done": COUNT,
        "total": _nullable("integer", minimum=0),
        "note": _nullable("string", description="why it was refused or failed, or how it "
                          "was added"),
    }),
    "ImportOutcome": _object({
        "url": {"type": "string"},
        "state": {"type": "string", "enum": ["cached", "stored", "missing", "refused"],
                  "description": "cached already (the same bytes); stored now, over bytes "
                  "the cache-host had; missing: upload it (PUT /imports); refused (note)"},
        "note": _nullable("string"),
        "artifact": {"oneOf": [_ref("Artifact"), {"type": "null"}]},
    }),
    "ArtifactList": _listing("Artifact"),
    "OriginList": _listing("Origin"),
    "Refreshed": _object({
        "outcome": {"type": "string", "enum": ["fresh", "changed", "stale-served", "running"]},
        "error": _nullable("string", description="why the origin could not say"),
        "artifact": _ref("Artifact"),
    }),
    "ListList": _listing("List"),
    "ListItemList": _listing("ListItem"),
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


def _query(
    name: str, schema: dict[str, Any], description: str, required: bool = False
) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema,
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


def _body(
    properties: dict[str, Any], optional: Sequence[str] = (),
    one_of: Sequence[Sequence[str]] = (),
) -> dict[str, Any]:  # fmt: skip
    """A JSON body; `one_of`: groups of fields of which exactly one must be there."""
    schema = _object(properties, optional)
    if one_of:
        schema["oneOf"] = [{"required": list(group)} for group in one_of]
    return {
        "required": not optional or len(optional) < len(properties) or bool(one_of),
        "content": {"application/json": {"schema": schema}},
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
                _query("pinned", {"type": "string", "enum": ["true", "false", "1", "0"]},
                       "only pinned artifacts"),
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
        "pin-artifact": {
            "summary": "Pin an artifact: never evicted, never revalidated but when asked",
            "parameters": [object_id], "ok": (200, _ref("Artifact")), "errors": [404],
        },
        "refresh-artifact": {
            "summary": "Ask the artifact's origin now whether it changed (a conditional "
            "GET), and fetch the new bytes if it did",
            "description": "Waits up to 10 s for the outcome; 202 (`running`) if the new "
            "bytes take longer: the fill goes on.",
            "parameters": [object_id],
            "ok": (200, _ref("Refreshed")),
            "also": {202: ("New bytes are being fetched", _ref("Refreshed"))},
            "errors": [404, 409],
        },
        "unpin-artifact": {
            "summary": "Unpin an artifact", "parameters": [object_id],
            "ok": (200, _ref("Artifact")), "errors": [404],
        },
        "list-origins": {
            "summary": "Origins whose fills kept failing: misses leave each alone until "
            "its `until` (30 s, doubled per failure in a row, up to 30 min)",
            "parameters": [*_paging()], "ok": (200, _ref("OriginList")),
        },
        "unblock-origin": {
            "summary": "Let misses try an unhealthy origin again now",
            "body": _body({"origin": {"type": "string", "maxLength": params.MAX_SEARCH}}),
            "ok": (200, _ref("Origin")), "errors": [404],
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
        "list-lists": {
            "summary": "Lists of artifacts added together, newest first, with their progress",
            "parameters": _paging(), "ok": (200, _ref("ListList")),
            "links": _links("$response.body#/items/0/id", "get-list", "list-items"),
        },
        "add-list": {
            "summary": "Add many artifacts at once: a list of URLs, or a vendor's checksum file",
            "description": "`text`: one URL a line, optionally after its digest as sha256sum "
            "(or sha512sum, md5sum) writes it; blank lines and # comments are skipped. "
            "`sums`: the URL of a checksum file (GNU or BSD style), fetched under the fetch "
            "policy; each file it lists (only those `match` fits, a glob) is added, relative "
            "to it, with its digest as the expected value. A cached URL is skipped unless "
            "`refresh`; a bad line is an item `refused`, and the rest still go. At most "
            f"{MAX_LINES} lines.",
            "body": _body({
                "text": {"type": "string", "pattern": LIST_PATTERN, "description": "the list"},
                "source": {"type": "string", "maxLength": 200,
                           "description": "what to call it (a file name)"},
                "sums": {**URL, "description": "a checksum file's URL"},
                "match": {"type": "string", "description": "a glob on the listed names"},
                "refresh": _nullable("boolean"),
            }, optional=["text", "source", "sums", "match", "refresh"],
               one_of=(["text"], ["sums"])),
            "ok": (201, _ref("List")), "created": True, "errors": [409, 413],
            "links": _links("$response.body#/id", "get-list", "list-items"),
        },
        "get-list": {"summary": "One list's progress: artifacts ready, bytes, rate, ETA",
                     "parameters": [object_id], "ok": (200, _ref("List")), "errors": [404]},
        "list-items": {
            "summary": "A list's lines, in order, with their fills' states",
            "parameters": [
                object_id,
                _query("state", {"type": "string", "enum": list(ITEM_STATES)},
                       "only items in this state"),
                *_paging(),
            ],
            "ok": (200, _ref("ListItemList")), "errors": [404],
        },
        "import-artifact": {
            "summary": "Upload the bytes of an artifact: they become the artifact of `url`, "
            "and its origin is never asked",
            "description": "The body is streamed to the blob store, hashed on the way, checked "
            "against `sha256` if given and committed like a fill; the artifact is marked "
            "imported. The body's length (Content-Length) is checked. A URL cached already "
            "(in that scope) is refused unless `refresh`.",
            "parameters": [
                _query("url", {**URL, "maxLength": params.MAX_TEXT},
                       "the URL the bytes are the artifact of", required=True),
                _query("sha256", SHA256, "what the bytes must hash to: other bytes fail and "
                       "nothing is kept"),
                *[_query(name.lower().replace("-", "_"), HEADER_VALUE,
                         f"the {name} to answer hits with") for name in REPLAYED_HEADERS],
                _query("scope", {"type": "string", "pattern": SCOPE_PATTERN},
                       "a credential scope, from a bundle (needs scope_key)"),
                _query("scope_key", {"type": "string"}, "the scope key of the host the "
                       "scope was made on: it must be this host's"),
                _query("refresh", {"type": "boolean"}, "replace a cached artifact"),
            ],
            "body": {"required": True, "content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}},
            "ok": (201, _ref("Artifact")), "created": True, "errors": [409],
        },
        "offer-imports": {
            "summary": "Say which artifacts an importer has: each is cached here already, "
            "stored now from bytes the cache-host has, or missing (upload those)",
            "body": _body({
                "artifacts": {"type": "array", "maxItems": MAX_OFFERED, "items": _object({
                    "url": URL, "sha256": SHA256, "size": COUNT,
                    "headers": {"type": "object", "additionalProperties": HEADER_VALUE,
                                "propertyNames": {"enum": list(REPLAYED_HEADERS)}},
                    "scope": {"type": "string", "pattern": SCOPE_PATTERN},
                }, optional=["size", "headers", "scope"])},
                "scope_key": _nullable("string"),
                "refresh": _nullable("boolean"),
            }, optional=["scope_key", "refresh"]),
            "ok": (200, _object({"items": {"type": "array", "items": _ref("ImportOutcome")}})),
            "errors": [409, 413],
        },
        "export-bundle": {
            "summary": "A bundle: the chosen artifacts and their manifest, as a plain tar",
            "description": "Streamed from the stores, with its length known up front. Filters "
            "combine; none: every public artifact. Credential-scoped artifacts only with "
            "`include_scoped`, and then with their scope and this host's scope key.",
            "parameters": [
                _query("match", {"type": "string", "maxLength": params.MAX_SEARCH},
                       "a glob on the URL"),
                _query("since", {"type": "number", "minimum": 0, "maximum": 100_000_000_000},
                       "fetched at or after this Unix time"),
                _query("ids", {"type": "string", "pattern": f"^{ID}(,{ID})*$"},
                       "artifact ids, comma-separated"),
                _query("include_scoped", {"type": "boolean"},
                       "credential-scoped artifacts too"),
            ],
            "ok": (200, {"type": "string", "format": "binary"}), "ok_type": "application/x-tar",
            "errors": [404, 409],
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
    413: "The body is larger than this operation takes",
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
        ok["content"] = {spec.get("ok_type", "application/json"): {"schema": schema}}
    if spec.get("links"):
        ok["links"] = spec["links"]
    if spec.get("created"):
        ok["headers"] = {"Location": {"schema": {"type": "string"}, "required": True}}
    errors = set(spec.get("errors", ()))
    if "{" in route.path:
        errors.add(404)  # the path names something that isn't there, or isn't a number
    if spec.get("parameters") or spec.get("body"):
        errors.add(400)
    if spec.get("body") and "application/json" in spec["body"]["content"]:
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
