"""A plain HTTP client for the operator UI, as a browser without JavaScript
would use it: keeps cookies, posts forms, follows no redirects by itself (so
tests see every 303), and reads the CSRF token out of a page's forms."""

from __future__ import annotations

import http.client
import re
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import urlencode, urlsplit

_CSRF_RE = re.compile(r'name="csrf" value="([^"]*)"')


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    text: str
    set_cookies: list[str] = field(default_factory=list)

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")


class PageClient:
    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.cookies: dict[str, str] = {}

    def request(
        self,
        method: str,
        path: str,
        form: dict[str, str] | list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if form is not None:
            body = urlencode(form).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        connection = http.client.HTTPConnection(self.host, self.port, timeout=15)
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            text = response.read().decode(errors="replace")
        finally:
            connection.close()
        set_cookies = response.headers.get_all("Set-Cookie") or []
        for line in set_cookies:
            for name, morsel in SimpleCookie(line).items():
                if morsel.value and morsel["max-age"] != "0":
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)
        return Reply(response.status, response.headers, text, set_cookies)

    def get(self, path: str, **kw: object) -> Reply:
        return self.request("GET", path, **kw)  # type: ignore[arg-type]

    def post(self, path: str, form: dict[str, str] | list[tuple[str, str]], **kw: object) -> Reply:
        return self.request("POST", path, form=form, **kw)  # type: ignore[arg-type]

    def csrf(self, path: str = "/add") -> str:
        """The CSRF token in the forms of a page (the session's token)."""
        reply = self.get(path)
        assert reply.status == 200, (reply.status, reply.text[:300])
        match = _CSRF_RE.search(reply.text)
        assert match, "no CSRF field on the page"
        return match[1]

    def login(self, password: str) -> Reply:
        reply = self.post("/login", {"password": password, "next": "/"})
        assert reply.status == 303, (reply.status, reply.text[:300])
        return reply
