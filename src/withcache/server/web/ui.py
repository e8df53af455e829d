"""The operator UI: pages that show the cache and forms that steer it.

Every handler maps a request onto the core (`Cache`: its listings, its
actions) and renders a template; no SQL or file access here. Every action
is a plain HTML form (POST, CSRF token, then a 303 back to the page), so the
UI works without JavaScript; htmx boosts links and forms and polls the
progress table. Input is checked here: bad input gets a 4xx, never a 5xx.
An action the core refuses (ActionError) is answered in one place
(`refusals`): its form shown again with the reason, or the error page.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
from aiohttp import web
from multidict import MultiDictProxy

from withcache.server import events
from withcache.server.cache import ActionError, BadInput, Cache
from withcache.server.records import ACTIVE_STATES, TokenScope
from withcache.server.web import auth, params, render
from withcache.server.web.read import CACHE_KEY

PAGE_SIZE = 50
OVERVIEW_ROWS = 10
MAX_SELECTION = 500  # misses acted on by one bulk form

TEMPLATES_KEY = web.AppKey("templates", jinja2.Environment)
STATIC_KEY = web.AppKey("static", render.StaticFiles)
STARTED = "withcache.started"

LISTS_SHOWN = 5  # the latest lists, above the Downloads page's fills
EVICTION_SHOWN = 5  # the artifacts eviction would take next, below the Cached page
LIST_VIEWS = {
    "": ("All", ()),
    "active": ("Queued and running", ("queued", "running")),
    "ready": ("Cached", ("done", "cached")),
    "problems": ("Failed and refused", ("failed", "cancelled", "refused")),
    "duplicate": ("Repeated", ("duplicate",)),
}
ADD_DEFAULTS = {"url": "", "sha256": "", "error": None, "cached": None, "lines": "", "sums": "",
                "match": "", "list_error": None}  # fmt: skip


# -- input


def _page(request: web.Request) -> int:
    return params.number(request.query.get("page", "1"), "page")


def _next(form: MultiDictProxy[Any], default: str) -> str:
    """Where to go after an action: a path on this host, never another site."""
    return params.local_path(form.get("next"), default)


def _pages(total: int, page: int) -> dict[str, int]:
    last = max(1, -(-total // PAGE_SIZE))
    first_row = (page - 1) * PAGE_SIZE + 1 if total else 0
    return {
        "page": page, "last": last, "total": total, "first_row": min(first_row, total),
        "last_row": min(page * PAGE_SIZE, total),
    }  # fmt: skip


# -- rendering


async def _show(request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
    """A full page: the header strip (disk, mode, version) plus the template."""
    cache = request.app[CACHE_KEY]
    session = request.get(auth.SESSION_KEY)
    context.update(
        health=await cache.health() if session else None,
        csrf=session.csrf if session else "",
        open_ui=request.app[auth.AUTH_KEY].open,
        here=request.path_qs,
        section=context.get("section", ""),
        static=request.app[STATIC_KEY].version,
    )
    text = render.render(request.app[TEMPLATES_KEY], name, context)
    return render.html(text, status, request.get(STARTED))


def _fragment(request: web.Request, name: str, **context: Any) -> web.Response:
    session = request[auth.SESSION_KEY]
    context.update(csrf=session.csrf, here=context.get("here", request.path_qs))
    text = render.render(request.app[TEMPLATES_KEY], name, context)
    return render.html(text, started=request.get(STARTED))


async def _failed(request: web.Request, errors: list[str], back: str, status: int = 409):
    return await _show(request, "error.html", status, errors=errors, back=back)


FormPage = Callable[[web.Request, str], Awaitable[web.Response]]


def refusals(back: str, form: FormPage | None = None) -> Callable[[auth.Handler], auth.Handler]:
    """The UI's one answer to an action the core refused (ActionError): with
    `form`, that form shown again with the reason (a 400: mend it and send it
    again); else the error page, with the way `back` (or the form's `next`)
    and the refusal's status."""

    def wrap(handler: auth.Handler) -> auth.Handler:
        @functools.wraps(handler)
        async def answered(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except ActionError as err:
                if form is not None:
                    return await form(request, str(err))
                way = _next(await params.read_form(request), back)
                return await _failed(request, [str(err)], way, params.refusal_status(err))

        return answered

    return wrap


# -- pages


async def overview(request: web.Request) -> web.Response:
    """What an operator looks for first: the hit ratio and the bytes served
    against the bytes fetched, what waits, then the lists; on an empty
    cache-host, how to point clients at it."""
    cache = request.app[CACHE_KEY]
    misses = await cache.list_misses(limit=OVERVIEW_ROWS)
    fills = await cache.list_fills(ACTIVE_STATES, limit=OVERVIEW_ROWS)
    recent = await cache.list_artifacts(limit=OVERVIEW_ROWS)
    return await _show(
        request, "overview.html", section="overview", misses=misses,
        fills=list(fills.rows), fills_total=fills.total,
        poll=f"/downloads/table?state=active&limit={OVERVIEW_ROWS}",
        artifacts=recent, curate=cache.settings.curate, q="", figures=cache.figures(),
        integrity=cache.integrity(), started=cache.started, uptime=time.time() - cache.started,
        work=await cache.work(),
        empty=not (recent.total or misses.total or fills.total),
        client_url=str(request.url.origin()),
    )  # fmt: skip


async def misses_page(request: web.Request) -> web.Response:
    cache = request.app[CACHE_KEY]
    search, page = params.search(request), _page(request)
    found = await cache.list_misses(search, (page - 1) * PAGE_SIZE, PAGE_SIZE)
    return await _show(
        request, "misses.html", section="misses", misses=found, q=search,
        pages=_pages(found.total, page), curate=cache.settings.curate,
    )  # fmt: skip


async def downloads_page(request: web.Request) -> web.Response:
    view, page = params.fill_states(request)[0], _page(request)
    table = await _fills_table(request, page, PAGE_SIZE)
    return await _show(
        request, "downloads.html", section="downloads", view=view, **table,
        **await _lists_table(request), origins=request.app[CACHE_KEY].origins(), now=time.time(),
    )  # fmt: skip


async def downloads_lists(request: web.Request) -> web.Response:
    """The lists' progress alone, polled by htmx."""
    return _fragment(request, "_lists.html", **await _lists_table(request))


async def _lists_table(request: web.Request) -> dict[str, Any]:
    lists = request.app[CACHE_KEY].lists
    found = await lists.listing(0, LISTS_SHOWN)
    shown = [await lists.progress(record) for record in found.rows]
    return {"lists": shown, "lists_total": found.total, "lists_poll": "/downloads/lists"}


async def list_page(request: web.Request) -> web.Response:
    view = params.choice(request, "state", LIST_VIEWS, "")
    table = await _list_table(request, view)
    views = [(value, label) for value, (label, _) in LIST_VIEWS.items()]
    return await _show(request, "list.html", section="downloads", view=view, views=views, **table)


async def list_table(request: web.Request) -> web.Response:
    """A list's figures and lines alone, polled by htmx."""
    view = params.choice(request, "state", LIST_VIEWS, "")
    return _fragment(request, "_list_items.html", **await _list_table(request, view))


async def _list_table(request: web.Request, view: str) -> dict[str, Any]:
    lists = request.app[CACHE_KEY].lists
    list_id, page = int(request.match_info["id"]), _page(request)
    record = await lists.get(list_id)
    if record is None:
        raise web.HTTPNotFound(text="no such list\n")
    states = LIST_VIEWS[view][1]
    items = await lists.items(list_id, states, (page - 1) * PAGE_SIZE, PAGE_SIZE)
    return {
        "p": await lists.progress(record), "items": items,
        "pages": _pages(items.total, page),
        "poll": f"/lists/{list_id}/table?state={view}&page={page}",
    }  # fmt: skip


async def downloads_table(request: web.Request) -> web.Response:
    """The progress table alone, polled by htmx so bars move without a reload."""
    limit = params.number(request.query.get("limit", str(PAGE_SIZE)), "limit", 1, PAGE_SIZE)
    table = await _fills_table(request, _page(request), limit)
    # The forms in the table return to the page that shows it (overview or Downloads).
    shown = urlsplit(request.headers.get("HX-Current-URL", ""))
    here = params.local_path(shown.path + (f"?{shown.query}" if shown.query else ""), "/downloads")
    return _fragment(request, "_fills.html", here=here, **table)


async def _fills_table(request: web.Request, page: int, limit: int) -> dict[str, Any]:
    view, states = params.fill_states(request)
    found = await request.app[CACHE_KEY].list_fills(states, (page - 1) * limit, limit)
    poll = "/downloads/table?" + urlencode({"state": view, "page": page, "limit": limit})
    return {
        "fills": list(found.rows), "fills_total": found.total, "poll": poll,
        "pages": _pages(found.total, page) if limit == PAGE_SIZE else None,
    }  # fmt: skip


async def cached_page(request: web.Request) -> web.Response:
    cache = request.app[CACHE_KEY]
    search, page = params.search(request), _page(request)
    sort, order = params.artifact_order(request)
    found = await cache.list_artifacts(
        search, sort, order == "desc", (page - 1) * PAGE_SIZE, PAGE_SIZE
    )
    return await _show(
        request, "cached.html", section="cached", artifacts=found, q=search, sort=sort,
        order=order, pages=_pages(found.total, page), ascending_first=params.ASCENDING_FIRST,
        eviction=await _eviction(cache),
        stale={a.id: cache.stale(a) for a in found.rows},
    )  # fmt: skip


async def _eviction(cache: Cache) -> dict[str, Any] | None:
    """What eviction would take next, if it is on."""
    settings = cache.settings
    policies = [f"--evict {settings.evict}"] if settings.evict else []
    if settings.evict_unused is not None:
        policies.append(f"--evict-unused {settings.evict_unused:g}")
    if not policies:
        return None
    return {"policy": ", ".join(policies), "next": await cache.eviction_next(EVICTION_SHOWN)}


async def confirm_delete(request: web.Request) -> web.Response:
    cache = request.app[CACHE_KEY]
    artifact = await cache.artifact(int(request.match_info["id"]))
    if artifact is None:
        return await _failed(request, ["no such artifact (deleted already?)"], "/cached", 404)
    back = _next(request.query, "/cached")
    return await _show(request, "delete.html", section="cached", artifact=artifact, back=back)


async def add_page(request: web.Request) -> web.Response:
    return await _show(request, "add.html", section="add", **ADD_DEFAULTS)


async def events_page(request: web.Request) -> web.Response:
    cache = request.app[CACHE_KEY]
    kinds = events.kinds()
    kind = params.choice(request, "kind", ["", *kinds], "")
    search, page = params.search(request), _page(request)
    found = await cache.list_events(kind, search, (page - 1) * PAGE_SIZE, PAGE_SIZE)
    return await _show(
        request, "events.html", section="events", events=found, kinds=kinds, kind=kind,
        q=search, pages=_pages(found.total, page),
    )  # fmt: skip


# -- actions


async def misses_action(request: web.Request) -> web.StreamResponse:
    """One form serves the whole miss table: a row's own button names its miss;
    the bulk buttons act on the ticked rows."""
    cache = request.app[CACHE_KEY]
    form = await params.read_form(request)
    back = _next(form, "/misses")
    if "download" in form or "dismiss" in form:
        verb = "download" if "download" in form else "dismiss"
        chosen = [params.text(form[verb], "miss")]
    elif form.get("bulk") in ("download", "dismiss"):
        verb = form["bulk"]
        chosen = [params.text(k, "miss") for k in form.getall("key", [])]
    else:
        raise web.HTTPBadRequest(text="say what to do: download or dismiss\n")
    if not chosen:
        return await _failed(request, ["tick at least one miss first"], back, 400)
    if len(chosen) > MAX_SELECTION:
        raise web.HTTPBadRequest(text=f"select at most {MAX_SELECTION} misses at once\n")
    act = cache.approve if verb == "download" else cache.dismiss
    refused: list[tuple[str, ActionError]] = []
    for key in chosen:  # each on its own: one refusal does not stop the rest
        try:
            await act(key, auth.actor(request))
        except ActionError as err:
            refused.append((key, err))
    if refused:
        errors = [f"{cache.display(key)}: {err}" for key, err in refused]
        return await _failed(request, errors, back, params.refusal_status(refused[0][1]))
    raise web.HTTPSeeOther("/downloads" if verb == "download" and back == "/misses" else back)


@refusals("/downloads")
async def fill_action(request: web.Request) -> web.StreamResponse:
    cache = request.app[CACHE_KEY]
    form = await params.read_form(request)
    fill_id = int(request.match_info["id"])
    if request.match_info["verb"] == "cancel":
        await cache.cancel(fill_id, auth.actor(request))
    else:
        await cache.retry(fill_id, auth.actor(request))
    raise web.HTTPSeeOther(_next(form, "/downloads"))


async def clear_finished(request: web.Request) -> web.StreamResponse:
    cache = request.app[CACHE_KEY]
    form = await params.read_form(request)
    await cache.clear_finished(auth.actor(request))
    raise web.HTTPSeeOther(_next(form, "/downloads"))


@refusals("/cached")
async def delete_artifact(request: web.Request) -> web.StreamResponse:
    cache = request.app[CACHE_KEY]
    form = await params.read_form(request)
    await cache.delete(int(request.match_info["id"]), auth.actor(request))
    raise web.HTTPSeeOther(_next(form, "/cached"))


@refusals("/cached")
async def pin_artifact(request: web.Request) -> web.StreamResponse:
    return await _pin(request, True)


@refusals("/cached")
async def unpin_artifact(request: web.Request) -> web.StreamResponse:
    return await _pin(request, False)


async def _pin(request: web.Request, pinned: bool) -> web.StreamResponse:
    cache = request.app[CACHE_KEY]
    form = await params.read_form(request)
    await cache.pin(int(request.match_info["id"]), pinned, auth.actor(request))
    raise web.HTTPSeeOther(_next(form, "/cached"))


@refusals("/cached")
async def refresh_artifact(request: web.Request) -> web.StreamResponse:
    cache = request.app[CACHE_KEY]
    form = await params.read_form(request)
    back = _next(form, "/cached")
    outcome = await cache.refresh(int(request.match_info["id"]), auth.actor(request))
    if outcome.outcome == "stale-served":
        said = f"the origin could not say ({outcome.error}); the cached bytes stay"
        return await _failed(request, [said], back)
    raise web.HTTPSeeOther(back)


@refusals("/downloads")
async def unblock_origin(request: web.Request) -> web.StreamResponse:
    cache = request.app[CACHE_KEY]
    form = await params.read_form(request)
    await cache.unblock(params.text(form.get("origin", ""), "origin"), auth.actor(request))
    raise web.HTTPSeeOther(_next(form, "/downloads"))


async def _add_form(request: web.Request, error: str) -> web.Response:
    form = await params.read_form(request)
    url = params.text(form.get("url", ""), "url")
    sha256 = params.text(form.get("sha256", ""), "sha256")
    return await _show(
        request, "add.html", 400, section="add",
        **{**ADD_DEFAULTS, "url": url, "sha256": sha256, "error": error},
    )  # fmt: skip


@refusals("/add", _add_form)
async def add_action(request: web.Request) -> web.StreamResponse:
    cache = request.app[CACHE_KEY]
    form = await params.read_form(request)
    url = params.text(form.get("url", ""), "url")
    sha256 = params.text(form.get("sha256", ""), "sha256")
    if not url:
        raise BadInput("give the URL to fetch")
    added = await cache.add(url, sha256 or None, auth.actor(request), "refresh" in form)
    if added.artifact is not None:
        return await _show(
            request, "add.html", section="add",
            **{**ADD_DEFAULTS, "url": url, "sha256": sha256, "cached": added.artifact},
        )  # fmt: skip
    raise web.HTTPSeeOther(_next(form, "/downloads"))


async def add_list_action(request: web.Request) -> web.StreamResponse:
    """Add a list (the text area) or a checksum file's files (its URL), then show its progress."""
    cache = request.app[CACHE_KEY]
    form = await params.read_form(request)
    lines = form.get("lines", "")  # as long as a form may be (the server's body limit)
    if not isinstance(lines, str):
        raise web.HTTPBadRequest(text="bad lines: expected text\n")
    params.check_unicode(lines, "lines")
    sums = params.text(form.get("sums", ""), "sums")
    match = params.text(form.get("match", ""), "match")
    lists, refresh, actor = cache.lists, "refresh" in form, auth.actor(request)
    try:
        if lines.strip() and sums:
            raise ActionError("give the list or a checksum file's URL, not both")
        if sums:
            record = await lists.add_sums(sums, match or None, actor, refresh)
        elif lines.strip():
            record = await lists.add_text(lines, "the Add page", actor, refresh)
        else:
            raise ActionError("give the URLs to add, or a checksum file's URL")
    except ActionError as err:
        values = {"lines": lines, "sums": sums, "match": match, "list_error": str(err)}
        return await _show(request, "add.html", 400, section="add", **{**ADD_DEFAULTS, **values})
    raise web.HTTPSeeOther(f"/lists/{record.id}")


# -- API tokens


async def tokens_page(request: web.Request) -> web.Response:
    return await _tokens(request)


async def _tokens(request: web.Request, status: int = 200, **context: Any) -> web.Response:
    defaults = {"made": None, "secret": None, "error": None, "token_name": "", "scope": "read"}
    context = {**defaults, **context}
    found = await request.app[CACHE_KEY].list_tokens()
    return await _show(request, "tokens.html", status, section="tokens", tokens=found, **context)


async def _token_form(request: web.Request, error: str) -> web.Response:
    form = await params.read_form(request)
    name, scope = _token_fields(form)
    return await _tokens(request, 400, error=error, token_name=name, scope=scope)


def _token_fields(form: MultiDictProxy[Any]) -> tuple[str, str]:
    return params.text(form.get("name", ""), "name"), params.text(
        form.get("scope", "read"), "scope"
    )


@refusals("/tokens", _token_form)
async def create_token(request: web.Request) -> web.StreamResponse:
    name, scope = _token_fields(await params.read_form(request))
    if scope not in TokenScope.__members__.values():
        raise web.HTTPBadRequest(text="bad scope: choose read or admin\n")
    made, secret = await request.app[CACHE_KEY].create_token(
        name, TokenScope(scope), auth.actor(request)
    )
    # Shown on this answer only (no redirect: the token must not sit in a URL or history).
    return await _tokens(request, made=made, secret=secret)


@refusals("/tokens")
async def revoke_token(request: web.Request) -> web.StreamResponse:
    await request.app[CACHE_KEY].revoke_token(request.match_info["name"], auth.actor(request))
    raise web.HTTPSeeOther("/tokens")


# -- login


async def login_page(request: web.Request) -> web.StreamResponse:
    back = _next(request.query, "/")
    if request.app[auth.AUTH_KEY].open or await auth.session_of(request):
        raise web.HTTPSeeOther(back)
    return await _show(request, "login.html", back=back, error=None)


async def login(request: web.Request) -> web.StreamResponse:
    cache = request.app[CACHE_KEY]
    gate = request.app[auth.AUTH_KEY]
    form = await params.read_form(request)
    back = _next(form, "/")
    address = request.remote or "unknown"
    wait = gate.login_wait(address)
    if wait > 0:
        # The password is not even looked at: guessing costs time, not just tries.
        response = await _show(
            request, "login.html", 429, back=back,
            error=f"Too many failed logins: try again in {auth.whole_seconds(wait)} s.",
        )  # fmt: skip
        response.headers["Retry-After"] = str(auth.whole_seconds(wait))
        return response
    password = form.get("password")
    if isinstance(password, str) and gate.password_ok(password):
        gate.login_succeeded(address)
        await cache.record(events.LoginSucceeded(actor=auth.actor(request)))
        response = web.HTTPSeeOther(back)
        auth.start_session(request, response)
        raise response
    gate.login_failed(address)
    await cache.record(events.LoginFailed(actor=auth.actor(request)))
    return await _show(request, "login.html", 403, back=back, error="Wrong password.")


async def logout(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther("/login" if not request.app[auth.AUTH_KEY].open else "/")
    await auth.end_session(request, response)
    raise response


# -- routes


def _timed(handler: auth.Handler) -> auth.Handler:
    async def timed(request: web.Request) -> web.StreamResponse:
        request[STARTED] = time.perf_counter()
        return await handler(request)

    return timed


def add_routes(app: web.Application, cache: Cache) -> None:
    app[TEMPLATES_KEY] = render.templates()
    static = app[STATIC_KEY] = render.StaticFiles()
    auth.setup(app, cache.settings.admin_password, cache.session_secret)
    object_id = r"{id:\d{1,18}}"
    pages = [
        ("/", overview),
        ("/misses", misses_page),
        ("/downloads", downloads_page),
        ("/downloads/table", downloads_table),
        ("/downloads/lists", downloads_lists),
        (f"/lists/{object_id}", list_page),
        (f"/lists/{object_id}/table", list_table),
        ("/cached", cached_page),
        (f"/cached/{object_id}/delete", confirm_delete),
        ("/add", add_page),
        ("/events", events_page),
        ("/tokens", tokens_page),
    ]
    actions = [
        ("/misses", misses_action),
        (f"/downloads/{object_id}/{{verb:cancel|retry}}", fill_action),
        ("/downloads/clear", clear_finished),
        (f"/cached/{object_id}/delete", delete_artifact),
        (f"/cached/{object_id}/pin", pin_artifact),
        (f"/cached/{object_id}/unpin", unpin_artifact),
        (f"/cached/{object_id}/refresh", refresh_artifact),
        ("/downloads/origins/unblock", unblock_origin),
        ("/add", add_action),
        ("/add/list", add_list_action),
        ("/tokens", create_token),
        ("/tokens/{name}/revoke", revoke_token),
        ("/logout", logout),
    ]
    for path, handler in pages:
        app.router.add_get(path, _timed(auth.page(handler)))
    for path, handler in actions:
        app.router.add_post(path, _timed(auth.action(handler)))
    app.router.add_get("/login", _timed(login_page))
    app.router.add_post("/login", _timed(login))
    app.router.add_get("/static/{name}", static.serve)
