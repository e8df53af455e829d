"""A plain HTTP client for the JSON API, as a script would use it, that checks
every answer against the server's own OpenAPI document: each status must be
documented for the operation and each JSON body must match its schema."""

from __future__ import annotations

import base64
import http.client
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import jsonschema

PREFIX = "/api/v1"


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: Any

    @property
    def error(self) -> str:
        return self.body["error"]


class Api:
    def __init__(self, base_url: str, token: str | None = None) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.token = token
        self._document: dict[str, Any] | None = None

    def with_token(self, token: str | None) -> Api:
        other = Api(f"http://{self.host}:{self.port}", token)
        other._document = self._document
        return other

    @property
    def document(self) -> dict[str, Any]:
        if self._document is None:
            answer = self.raw("GET", f"{PREFIX}/openapi.json")
            assert answer.status == 200, answer
            self._document = answer.body
        return self._document

    def raw(
        self, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:  # fmt: skip
        connection = http.client.HTTPConnection(self.host, self.port, timeout=15)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        kind = response.headers.get("Content-Type", "")
        parsed = json.loads(data) if data and kind.startswith("application/json") else data
        return Answer(response.status, response.headers, parsed)

    def call(
        self, method: str, path: str, json_body: Any = None, query: dict[str, Any] | None = None,
        password: str | None = None, headers: dict[str, str] | None = None,
    ) -> Answer:  # fmt: skip
        """Call `PREFIX + path` and check the answer against the OpenAPI document."""
        sent = dict(headers or {})
        if password is not None:
            sent["Authorization"] = "Basic " + base64.b64encode(f"op:{password}".encode()).decode()
        elif self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        body = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
            sent["Content-Type"] = "application/json"
        target = PREFIX + path + (f"?{urlencode(query)}" if query else "")
        answer = self.raw(method, target, body, sent)
        self.check(method, path, answer)
        return answer

    def check(self, method: str, path: str, answer: Answer) -> None:
        operation = self._operation(method, path)
        documented = operation["responses"].get(str(answer.status))
        assert documented, f"{method} {path}: status {answer.status} is not documented"
        content = documented.get("content")
        if content is None:
            assert not answer.body, f"{method} {path}: {answer.status} has a body"
            return
        (kind,) = content
        assert answer.headers["Content-Type"].startswith(kind), (kind, answer.headers)
        if kind != "application/json":  # a bundle (a tar): its own tests read it
            return
        schema = {
            **content["application/json"]["schema"],
            "components": self.document["components"],
        }
        jsonschema.Draft202012Validator(schema).validate(answer.body)
        for name, header in documented.get("headers", {}).items():
            if header.get("required"):
                assert name in answer.headers, f"{method} {path}: no {name} header"

    def _operation(self, method: str, path: str) -> dict[str, Any]:
        paths = self.document["paths"]
        if method.lower() in paths.get(path, {}):
            return paths[path][method.lower()]
        for template, operations in paths.items():
            pattern = re.sub(r"\{[a-z]+\}", "[^/]+", template)
            if re.fullmatch(pattern, path) and method.lower() in operations:
                return operations[method.lower()]
        raise AssertionError(f"{method} {path} is not in the OpenAPI document")

    # -- shortcuts

    def get(self, path: str, **query: Any) -> Answer:
        return self.call("GET", path, query=query or None)

    def post(self, path: str, json_body: Any = None) -> Answer:
        return self.call("POST", path, json_body)

    def delete(self, path: str) -> Answer:
        return self.call("DELETE", path)

    def create_token(self, name: str, scope: str = "admin", password: str | None = None) -> str:
        """Make a token with the admin password, or else with this client's token."""
        answer = self.call("POST", "/tokens", {"name": name, "scope": scope}, password=password)
        assert answer.status == 201, answer
        return answer.body["token"]
