"""The JSON API under /api/v1/ (everything the operator UI can do) and /metrics.

Handlers map requests onto the core (`Cache`) exactly as the UI does, and say
what they send in openapi.py; `ROUTES` is the one list of operations both the
router and the OpenAPI document are built from. Every answer is JSON; errors
are `{"error": "<one line>"}` with a 4xx, never a 5xx for bad input (the
middleware `json_errors` makes them so, an action the core refused included). Callers
authenticate with a bearer token (web.auth.api_gate); the actor recorded in
the audit log is `api:<token name>`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from withcache import keys
from withcache.server import events, log, metrics
from withcache.server.cache import ActionError, Cache, FillRow, Unhealthy
from withcache.server.digests import BLOB_ALGORITHM, SHA256_RE, BadDigest, Digest
from withcache.server.export import Selection
from withcache.server.imports import MAX_OFFERED, Offered, Outcome, bad_headers, bad_scope, uploaded
from withcache.server.lists import ListProgress
from withcache.server.records import (
    ITEM_STATES,
    PUBLIC,
    REPLAYED_HEADERS,
    Artifact,
    EventRecord,
    ListItem,
    Miss,
    TokenRecord,
    TokenScope,
)
from withcache.server.verify import Verification
from withcache.server.web import auth, openapi, params
from withcache.server.web.read import CACHE_KEY

PREFIX = "/api/v1"
MAX_LIST_BODY = 8 << 20  # a list of 10,000 long URLs
MAX_OFFER_BODY = 16 << 20  # MAX_OFFERED artifacts with long URLs
MAX_SOURCE = 200  # characters of a list's name
MAX_SINCE = 1e11  # seconds since the epoch: the year 5138
# Headers an error keeps when it becomes JSON (the rest described the text body).
KEPT_ERROR_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- what the API shows (openapi.SCHEMAS describes each shape)


def artifact_json(a: Artifact) -> dict[str, Any]:
    return {
        "id": a.id, "url": a.key, "sha256": a.sha256, "size": a.size,
        "fetched_at": a.fetched_at, "hits": a.hits, "misses": a.misses, "last_hit": a.last_hit,
        "scoped": a.scoped, "imported": a.imported, "pinned": a.pinned,
        "validated_at": a.validated_at, "serve_path": keys.serve_path(a.key),
    }  # fmt: skip


def origin_json(u: Unhealthy) -> dict[str, Any]:
    return {
        "origin": u.origin, "error": u.error, "failures": u.failures, "since": u.since,
        "until": u.until, "blocked": u.blocking(time.time()),
    }  # fmt: skip


def miss_json(m: Miss) -> dict[str, Any]:
    return {
        "url": m.key, "count": m.count, "first_seen": m.first_seen, "last_seen": m.last_seen,
        "reason": m.reason,
    }  # fmt: skip


def fill_json(row: FillRow) -> dict[str, Any]:
    r = row.record
    sha256 = r.expected.hex if r.expected and r.expected.algorithm == BLOB_ALGORITHM else None
    return {
        "id": r.id, "url": row.url, "state": r.state.value, "requested_by": r.requested_by,
        "expected_sha256": sha256, "expected_digest": r.expected and str(r.expected),
        "credentialed": r.credentialed,
        "bytes_done": row.bytes_done, "total": row.total, "percent": row.percent,
        "rate": round(row.rate, 1), "eta": row.eta, "clients": row.clients, "error": r.error,
        "created_at": r.created_at, "started_at": r.started_at, "finished_at": r.finished_at,
    }  # fmt: skip


def list_json(p: ListProgress) -> dict[str, Any]:
    r = p.record
    return {
        "id": r.id, "source": r.source, "kind": r.kind, "created_at": r.created_at,
        "created_by": r.created_by, "items": p.items, "wanted": p.wanted, "ready": p.ready,
        "active": p.active, "failed": p.failed, "refused": p.refused,
        "counts": dict(p.tally.counts), "finished": p.finished, "percent": p.percent,
        "bytes_done": p.bytes_done, "bytes_total": p.bytes_total, "unsized": p.unsized,
        "rate": round(p.rate, 1), "eta": p.eta,
    }  # fmt: skip


def item_json(i: ListItem) -> dict[str, Any]:
    return {
        "line": i.line, "url": i.url, "state": i.state, "fill_id": i.fill_id,
        "bytes_done": i.bytes_done, "total": i.total, "note": i.note,
    }  # fmt: skip


def outcome_json(o: Outcome) -> dict[str, Any]:
    return {
        "url": o.url, "state": o.state, "note": o.note,
        "artifact": artifact_json(o.artifact) if o.artifact else None,
    }  # fmt: skip


def event_json(e: EventRecord) -> dict[str, Any]:
    return {
        "id": e.id, "at": e.at, "kind": e.kind, "url": e.url, "actor": e.actor,
        "detail": dict(e.detail),
    }  # fmt: skip


def token_json(t: TokenRecord) -> dict[str, Any]:
    return {
        "id": t.id, "name": t.name, "scope": t.scope.value, "created_at": t.created_at,
        "last_used": t.last_used, "created_by": t.created_by,
    }  # fmt: skip


def verification_json(v: Verification) -> dict[str, Any]:
    state = "running" if not v.finished else "failed" if v.error else "done"
    return {
        "state": state, "quarantine": v.quarantine, "started_at": v.started_at,
        "finished_at": v.finished_at, "blobs": v.blobs, "checked": v.checked,
        "bytes_total": v.bytes_total, "bytes_checked": v.bytes_checked, "error": v.error,
        "corrupt": [
            {
                "sha256": c.sha256, "problem": c.problem, "quarantined": c.quarantined,
                "artifacts": [{"id": a.id, "url": a.key} for a in c.artifacts],
            }
            for c in v.corrupt
        ],
    }  # fmt: skip


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers)


def _listing(rows: list[dict[str, Any]], total: int, offset: int, limit: int) -> web.Response:
    return _json({"items": rows, "total": total, "offset": offset, "limit": limit})


# -- input


def _cache(request: web.Request) -> Cache:
    return request.config_dict[CACHE_KEY]


def _actor(request: web.Request) -> str:
    return request[auth.ACTOR_KEY]


def _paging(request: web.Request) -> tuple[int, int]:
    offset = params.number(request.query.get("offset", "0"), "offset", 0, params.MAX_OFFSET)
    limit = params.number(
        request.query.get("limit", str(params.DEFAULT_LIMIT)), "limit", 1, params.MAX_LIMIT
    )
    return offset, limit


def _id(request: web.Request) -> int:
    return params.number(request.match_info["id"], "id", 1, params.MAX_ID)


def _key(cache: Cache, url: str) -> str:
    try:
        return cache.key(url)
    except keys.BadURL as err:
        raise web.HTTPBadRequest(text=f"bad url: {err}") from None


async def _body(
    request: web.Request, fields: Mapping[str, type], required: set[str], limit: int = 0
) -> dict:
    """The request's JSON object, with only known fields of the right types
    (at most `limit` bytes of it, if given, else the server's own limit)."""
    if not request.body_exists:
        data: Any = {}
    elif request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(
            text="send a JSON object (Content-Type: application/json)"
        )
    else:
        try:
            data = json.loads(await params.read_body(request, limit))
        except ValueError:
            raise web.HTTPBadRequest(text="the body is not valid JSON") from None
        except RecursionError:
            raise web.HTTPBadRequest(text="the body is nested too deeply") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    for name in data:
        if name not in fields:
            raise web.HTTPBadRequest(text=f"unknown field {name!r}")
    missing = sorted(required - set(data))
    if missing:
        raise web.HTTPBadRequest(text=f"missing field {missing[0]!r}")
    for name, value in data.items():
        kind = fields[name]
        # bool is an int in Python but not in JSON; check the exact type.
        if type(value) is not kind and not (value is None and name not in required):
            raise web.HTTPBadRequest(text=f"bad {name}: expected {openapi.JSON_TYPES[kind]}")
        if isinstance(value, str):
            params.check_unicode(value, name)
    return data


def _flag(request: web.Request, name: str) -> bool:
    return params.choice(request, name, ("true", "false", "1", "0"), "false") in ("true", "1")


# -- handlers


async def get_openapi(request: web.Request) -> web.Response:
    return _json(openapi.document(ROUTES))


async def get_status(request: web.Request) -> web.Response:
    return _json(await _cache(request).health())


async def list_artifacts(request: web.Request) -> web.Response:
    cache = _cache(request)
    offset, limit = _paging(request)
    search = params.search(request)
    sort, order = params.artifact_order(request)
    pinned = _flag(request, "pinned")
    if "url" in request.query:
        # One key has a handful of artifacts at most (one per credential scope).
        found = await cache.artifacts_of(params.search(request, "url"))
        found = [a for a in found if a.pinned or not pinned]
        rows = [_looked_at(cache, a) for a in found[offset : offset + limit]]
        return _listing(rows, len(found), offset, limit)
    page = await cache.list_artifacts(search, sort, order == "desc", offset, limit, pinned)
    return _listing([_looked_at(cache, a) for a in page.rows], page.total, offset, limit)


def _looked_at(cache: Cache, artifact: Artifact) -> dict[str, Any]:
    """An artifact as listings show it: with why it is served stale, if it is."""
    return {**artifact_json(artifact), "stale": cache.stale(artifact)}


async def get_artifact(request: web.Request) -> web.Response:
    cache = _cache(request)
    artifact = await cache.artifact(_id(request))
    if artifact is None:
        raise web.HTTPNotFound(text="no such artifact")
    return _json(_looked_at(cache, artifact))


async def delete_artifact(request: web.Request) -> web.Response:
    artifact = await _cache(request).delete(_id(request), _actor(request))
    return _json(artifact_json(artifact))


async def pin_artifact(request: web.Request) -> web.Response:
    return await _pin(request, True)


async def unpin_artifact(request: web.Request) -> web.Response:
    return await _pin(request, False)


async def _pin(request: web.Request, pinned: bool) -> web.Response:
    artifact = await _cache(request).pin(_id(request), pinned, _actor(request))
    return _json(artifact_json(artifact))


async def refresh_artifact(request: web.Request) -> web.Response:
    cache = _cache(request)
    outcome = await cache.refresh(_id(request), _actor(request))
    body = {"outcome": outcome.outcome, "error": outcome.error,
            "artifact": artifact_json(outcome.artifact)}  # fmt: skip
    if outcome.outcome == "running":  # where to look for the new bytes
        return _json(body, 202, {"Location": f"{PREFIX}/artifacts/{outcome.artifact.id}"})
    return _json(body)


async def list_origins(request: web.Request) -> web.Response:
    found = _cache(request).origins()
    offset, limit = _paging(request)
    rows = [origin_json(u) for u in found[offset : offset + limit]]
    return _listing(rows, len(found), offset, limit)


async def unblock_origin(request: web.Request) -> web.Response:
    body = await _body(request, {"origin": str}, {"origin"})
    found = await _cache(request).unblock(body["origin"], _actor(request))
    return _json(origin_json(found))


async def list_misses(request: web.Request) -> web.Response:
    offset, limit = _paging(request)
    page = await _cache(request).list_misses(params.search(request), offset, limit)
    return _listing([miss_json(m) for m in page.rows], page.total, offset, limit)


async def approve_miss(request: web.Request) -> web.Response:
    cache = _cache(request)
    body = await _body(request, {"url": str}, {"url"})
    record = await cache.approve(_key(cache, body["url"]), _actor(request))
    return _json(fill_json(cache.fill_row(record)))


async def dismiss_miss(request: web.Request) -> web.Response:
    cache = _cache(request)
    body = await _body(request, {"url": str}, {"url"})
    await cache.dismiss(_key(cache, body["url"]), _actor(request))
    return web.Response(status=204)


async def list_fills(request: web.Request) -> web.Response:
    offset, limit = _paging(request)
    page = await _cache(request).list_fills(params.fill_states(request)[1], offset, limit)
    return _listing([fill_json(r) for r in page.rows], page.total, offset, limit)


async def add_fill(request: web.Request) -> web.Response:
    cache = _cache(request)
    body = await _body(request, {"url": str, "sha256": str, "refresh": bool}, {"url"})
    added = await cache.add(
        body["url"], body.get("sha256"), _actor(request), bool(body.get("refresh"))
    )
    if added.artifact is not None:  # cached already: nothing fetched
        location = f"{PREFIX}/artifacts/{added.artifact.id}"
        return _json(artifact_json(added.artifact), 200, {"Location": location})
    assert added.fill is not None
    # 201: a new fill; 202: the one already under way for this URL.
    status = 201 if added.created else 202
    location = f"{PREFIX}/fills/{added.fill.id}"
    return _json(fill_json(cache.fill_row(added.fill)), status, {"Location": location})


async def get_fill(request: web.Request) -> web.Response:
    row = await _cache(request).fill(_id(request))
    if row is None:
        raise web.HTTPNotFound(text="no such fill")
    return _json(fill_json(row))


async def cancel_fill(request: web.Request) -> web.Response:
    await _cache(request).cancel(_id(request), _actor(request))
    return web.Response(status=204)


async def retry_fill(request: web.Request) -> web.Response:
    cache = _cache(request)
    record = await cache.retry(_id(request), _actor(request))
    return _json(fill_json(cache.fill_row(record)))


async def clear_finished(request: web.Request) -> web.Response:
    return _json({"cleared": await _cache(request).clear_finished(_actor(request))})


async def add_list(request: web.Request) -> web.Response:
    cache = _cache(request)
    fields = {"text": str, "source": str, "sums": str, "match": str, "refresh": bool}
    body = await _body(request, fields, set(), MAX_LIST_BODY)
    text, sums = body.get("text"), body.get("sums")
    if (text is None) == (sums is None):
        raise web.HTTPBadRequest(text="give either text (the list) or sums (a checksum file's URL)")
    lists = cache.lists
    refresh = bool(body.get("refresh"))
    if sums is not None:
        match = body.get("match") or None
        record = await lists.add_sums(sums, match, _actor(request), refresh)
    else:
        source = body.get("source") or "-"
        if len(source) > MAX_SOURCE:
            raise web.HTTPBadRequest(text=f"bad source: at most {MAX_SOURCE} characters")
        record = await lists.add_text(text or "", source, _actor(request), refresh)
    location = {"Location": f"{PREFIX}/lists/{record.id}"}
    return _json(list_json(await lists.progress(record)), 201, location)


async def list_lists(request: web.Request) -> web.Response:
    cache = _cache(request)
    offset, limit = _paging(request)
    page = await cache.lists.listing(offset, limit)
    rows = [list_json(await cache.lists.progress(r)) for r in page.rows]
    return _listing(rows, page.total, offset, limit)


async def _list(request: web.Request) -> tuple[Cache, Any]:
    cache = _cache(request)
    record = await cache.lists.get(_id(request))
    if record is None:
        raise web.HTTPNotFound(text="no such list")
    return cache, record


async def get_list(request: web.Request) -> web.Response:
    cache, record = await _list(request)
    return _json(list_json(await cache.lists.progress(record)))


async def list_items(request: web.Request) -> web.Response:
    cache, record = await _list(request)
    offset, limit = _paging(request)
    state = params.choice(request, "state", ITEM_STATES, "")
    page = await cache.lists.items(record.id, (state,) if state else (), offset, limit)
    return _listing([item_json(i) for i in page.rows], page.total, offset, limit)


async def import_artifact(request: web.Request) -> web.Response:
    """The body's bytes become the artifact of `url`, streamed to the blob store."""
    cache = _cache(request)
    query = request.query
    url = params.text(query.get("url", ""), "url")
    if not url:
        raise web.HTTPBadRequest(text="bad url: give the URL the bytes are the artifact of")
    expected = None
    if "sha256" in query:
        try:
            expected = Digest.sha256(query["sha256"])
        except BadDigest as err:
            raise web.HTTPBadRequest(text=f"bad sha256: {err}") from None
    headers = {}
    for name in REPLAYED_HEADERS:
        value = params.text(query.get(_header_param(name), ""), _header_param(name))
        if value:
            headers[name] = value
    chunks = uploaded(request.content, cache.settings.origin_timeout)
    artifact = await cache.imports.upload(
        url, chunks, request.content_length, expected, headers, _actor(request),
        query.get("scope", PUBLIC), query.get("scope_key"), _flag(request, "refresh"),
    )  # fmt: skip
    location = {"Location": f"{PREFIX}/artifacts/{artifact.id}"}
    return _json(artifact_json(artifact), 201, location)


def _header_param(name: str) -> str:
    """The query parameter of a replayed header: Content-Type -> content_type."""
    return name.lower().replace("-", "_")


async def offer_imports(request: web.Request) -> web.Response:
    """Which of the artifacts an importer has are cached here, or stored now
    from bytes the store holds, and which it must send."""
    cache = _cache(request)
    fields = {"artifacts": list, "scope_key": str, "refresh": bool}
    body = await _body(request, fields, {"artifacts"}, MAX_OFFER_BODY)
    if len(body["artifacts"]) > MAX_OFFERED:
        raise web.HTTPBadRequest(text=f"bad artifacts: offer at most {MAX_OFFERED} at once")
    offered = [_offered(n, entry) for n, entry in enumerate(body["artifacts"])]
    outcomes = await cache.imports.offer(
        offered, _actor(request), body.get("scope_key"), bool(body.get("refresh"))
    )
    return _json({"items": [outcome_json(o) for o in outcomes]})


def _offered(n: int, entry: Any) -> Offered:
    kinds = {"url": str, "sha256": str, "size": int, "headers": dict, "scope": str}
    where = f"bad artifacts[{n}]"
    if not isinstance(entry, dict) or not {"url", "sha256"} <= set(entry):
        raise web.HTTPBadRequest(text=f"{where}: give an object with url and sha256")
    for name, value in entry.items():
        if name not in kinds:
            raise web.HTTPBadRequest(text=f"{where}: unknown field {name!r}")
        if kinds[name] is int and type(value) is float and value.is_integer():
            entry[name] = int(value)  # JSON has one kind of number: 5.0 is an integer
        elif type(value) is not kinds[name]:
            kind = openapi.JSON_TYPES[kinds[name]]
            raise web.HTTPBadRequest(text=f"{where}: {name} must be {kind}")
    offered = Offered(
        url=entry["url"], sha256=entry["sha256"], size=entry.get("size"),
        headers=entry.get("headers", {}), scope=entry.get("scope", PUBLIC),
    )  # fmt: skip
    try:
        keys.check_url(offered.url)
    except keys.BadURL as err:
        raise web.HTTPBadRequest(text=f"{where}: bad url: {err}") from None
    problem = (
        ("size must not be negative" if (offered.size or 0) < 0 else None)
        or (None if SHA256_RE.fullmatch(offered.sha256) else "sha256 must be 64 hex digits")
        or bad_headers(offered.headers) or bad_scope(offered.scope)
    )  # fmt: skip
    if problem:
        raise web.HTTPBadRequest(text=f"{where}: {problem}")
    return offered


async def export_bundle(request: web.Request) -> web.StreamResponse:
    """A bundle (a tar file) of the artifacts chosen, streamed from the stores."""
    cache = _cache(request)
    selection = Selection(
        match=params.search(request, "match") or None, since=_since(request),
        ids=_ids(request), include_scoped=_flag(request, "include_scoped"),
    )  # fmt: skip
    bundle = await cache.export(selection)
    response = web.StreamResponse(headers={
        "Content-Type": "application/x-tar",
        "Content-Disposition": 'attachment; filename="withcache-bundle.tar"',
        "Withcache-Artifacts": str(len(bundle.items)),
    })  # fmt: skip
    response.content_length = bundle.size
    await response.prepare(request)
    await bundle.record(_actor(request))
    try:
        async for chunk in bundle.chunks():
            await response.write(chunk)
    except OSError as err:
        log.error("export.broke_off", error=str(err) or type(err).__name__)
        if request.transport is not None:
            request.transport.close()  # short of Content-Length: the client knows it failed
        return response
    await response.write_eof()
    return response


def _since(request: web.Request) -> float | None:
    text = request.query.get("since")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_SINCE:
        raise web.HTTPBadRequest(text="bad since: give a Unix time in seconds")
    return value


def _ids(request: web.Request) -> tuple[int, ...]:
    text = request.query.get("ids")
    if text is None:
        return ()
    return tuple(params.number(part, "ids", 1, params.MAX_ID) for part in text.split(","))


async def list_events(request: web.Request) -> web.Response:
    offset, limit = _paging(request)
    kind = params.choice(request, "kind", events.kinds(), "")
    page = await _cache(request).list_events(kind, params.search(request), offset, limit)
    return _listing([event_json(e) for e in page.rows], page.total, offset, limit)


async def list_tokens(request: web.Request) -> web.Response:
    found = await _cache(request).list_tokens()
    return _json({"items": [token_json(t) for t in found], "total": len(found)})


async def create_token(request: web.Request) -> web.Response:
    body = await _body(request, {"name": str, "scope": str}, {"name"})
    scope = body.get("scope")
    if scope is None:
        scope = TokenScope.READ.value
    if scope not in TokenScope.__members__.values():
        raise web.HTTPBadRequest(text="bad scope: choose 'read' or 'admin'")
    record, secret = await _cache(request).create_token(
        body["name"], TokenScope(scope), _actor(request)
    )
    # The only time the token is ever shown: it is not stored, only its digest.
    return _json({**token_json(record), "token": secret}, 201)


async def revoke_token(request: web.Request) -> web.Response:
    await _cache(request).revoke_token(request.match_info["name"], _actor(request))
    return web.Response(status=204)


async def start_verify(request: web.Request) -> web.Response:
    body = await _body(request, {"quarantine": bool}, set())
    run = await _cache(request).verify(bool(body.get("quarantine")), _actor(request))
    return _json(verification_json(run), 202)


async def get_verify(request: web.Request) -> web.Response:
    run = _cache(request).verification
    if run is None:
        raise web.HTTPNotFound(text="no verification has run since the cache-host started")
    return _json(verification_json(run))


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # below PREFIX, in OpenAPI's template syntax
    handler: Handler
    scope: TokenScope | None  # None: open to anyone
    password: bool = False  # the admin password (HTTP Basic) will do too

    @property
    def operation_id(self) -> str:
        return self.handler.__name__.replace("_", "-")


READ, ADMIN = TokenScope.READ, TokenScope.ADMIN
ROUTES = [
    Route("GET", "/openapi.json", get_openapi, None),
    Route("GET", "/status", get_status, READ),
    Route("GET", "/artifacts", list_artifacts, READ),
    Route("GET", "/artifacts/{id}", get_artifact, READ),
    Route("DELETE", "/artifacts/{id}", delete_artifact, ADMIN),
    Route("POST", "/artifacts/{id}/pin", pin_artifact, ADMIN),
    Route("DELETE", "/artifacts/{id}/pin", unpin_artifact, ADMIN),
    Route("POST", "/artifacts/{id}/refresh", refresh_artifact, ADMIN),
    Route("GET", "/origins", list_origins, READ),
    Route("POST", "/origins/unblock", unblock_origin, ADMIN),
    Route("GET", "/misses", list_misses, READ),
    Route("POST", "/misses/approve", approve_miss, ADMIN),
    Route("POST", "/misses/dismiss", dismiss_miss, ADMIN),
    Route("GET", "/fills", list_fills, READ),
    Route("POST", "/fills", add_fill, ADMIN),
    Route("GET", "/fills/{id}", get_fill, READ),
    Route("POST", "/fills/{id}/cancel", cancel_fill, ADMIN),
    Route("POST", "/fills/{id}/retry", retry_fill, ADMIN),
    Route("POST", "/fills/clear-finished", clear_finished, ADMIN),
    Route("GET", "/lists", list_lists, READ),
    Route("POST", "/lists", add_list, ADMIN),
    Route("GET", "/lists/{id}", get_list, READ),
    Route("GET", "/lists/{id}/items", list_items, READ),
    Route("PUT", "/imports", import_artifact, ADMIN),
    Route("POST", "/imports/offer", offer_imports, ADMIN),
    Route("GET", "/export", export_bundle, ADMIN),
    Route("GET", "/events", list_events, READ),
    Route("GET", "/tokens", list_tokens, ADMIN, password=True),
    Route("POST", "/tokens", create_token, ADMIN, password=True),
    Route("DELETE", "/tokens/{name}", revoke_token, ADMIN, password=True),
    Route("POST", "/verify", start_verify, ADMIN),
    Route("GET", "/verify", get_verify, READ),
]


# -- errors as JSON


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ActionError as err:  # an operator mistake the core refused
        return _json({"error": str(err)}, params.refusal_status(err))
    except web.HTTPException as err:
        if err.status < 400:
            raise
        message = (err.text or "").strip()
        if not message or message == f"{err.status}: {err.reason}":
            message = err.reason
        headers = {h: err.headers[h] for h in KEPT_ERROR_HEADERS if h in err.headers}
        return _json({"error": message}, err.status, headers)
    except Exception:
        log.error("api.crashed", exc_info=True, path=request.path)
        return _json({"error": "internal error; the cache-host's log has the details"}, 500)


# -- /metrics


def metrics_handler(cache: Cache) -> Handler:
    async def serve_metrics(request: web.Request) -> web.Response:
        body = await cache.metrics_text()
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

    if cache.settings.private_metrics:
        return auth.api_gate(TokenScope.READ)(serve_metrics)
    return serve_metrics


def add_routes(app: web.Application, cache: Cache) -> None:
    api = web.Application(middlewares=[json_errors])
    for route in ROUTES:
        handler = route.handler
        if route.scope is not None:
            handler = auth.api_gate(route.scope, route.password)(handler)
        # Digits only, so that /fills/clear-finished is not also GET /fills/{id}.
        api.router.add_route(route.method, route.path.replace("{id}", "{id:[0-9]+}"), handler)
    app.add_subapp(PREFIX, api)
    app.router.add_get("/metrics", metrics_handler(cache))
