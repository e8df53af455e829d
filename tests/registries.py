"""OCI registries on loopback for the tests, holding `oras push`-shaped artifacts.

`Distribution` is the real thing: Debian's docker-registry (the CNCF
distribution registry), over TLS, pushed to through its own API. `Registry`
is one of ours, written to the distribution spec, for what the real one can't
be made to do: a token service (Bearer challenges, Basic credentials checked
per repository, tokens that expire), blob GETs answered with a redirect to a
signed URL that works once, and lies (a blob whose bytes aren't its digest).
It is the test Origin underneath, so the redirected blob ("the CDN") can die
mid-transfer, trickle and be counted like any origin resource.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import itertools
import json
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from origin import Origin
from services import free_ports, terminate

TITLE = "org.opencontainers.image.title"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY_CONFIG = b"{}"


def digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def artifact(
    files: list[tuple[str | None, bytes]], media_type: str = OCI_MANIFEST
) -> tuple[bytes, dict[str, bytes]]:
    """An artifact's manifest as `oras push` writes one (empty config, one
    layer per file, titled by its name), and the blobs it names."""
    docker = media_type == DOCKER_MANIFEST
    config_type = (
        "application/vnd.docker.container.image.v1+json" if docker
        else "application/vnd.oci.empty.v1+json"
    )  # fmt: skip
    blobs = {digest(EMPTY_CONFIG): EMPTY_CONFIG}
    layers = []
    for name, data in files:
        blobs[digest(data)] = data
        layer: dict[str, object] = {
            "mediaType": "application/vnd.example.firmware", "digest": digest(data),
            "size": len(data),
        }  # fmt: skip
        if name is not None:
            layer["annotations"] = {TITLE: name}
        layers.append(layer)
    manifest: dict[str, object] = {
        "schemaVersion": 2, "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": digest(EMPTY_CONFIG), "size": 2},
        "layers": layers,
    }  # fmt: skip
    if not docker:
        manifest["artifactType"] = "application/vnd.example.firmware"
    return json.dumps(manifest).encode(), blobs


def index(manifests: list[tuple[bytes, str]]) -> bytes:
    """An image index over (manifest, architecture) pairs."""
    entries = [
        {"mediaType": OCI_MANIFEST, "digest": digest(m), "size": len(m),
         "platform": {"os": "linux", "architecture": arch}}
        for m, arch in manifests
    ]  # fmt: skip
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()


class Distribution:
    """Debian's docker-registry on loopback, anonymous: over TLS with a
    certificate and key, else over plain http."""

    def __init__(self, root: Path, ca_file: Path, cert: Path | None = None,
                 key: Path | None = None) -> None:  # fmt: skip
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_ports(1)[0]
        self.scheme = "https" if cert else "http"
        self._tls = ssl.create_default_context(cafile=str(ca_file))
        tls = f"  tls:\n    certificate: {cert}\n    key: {key}\n" if cert else ""
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n{tls}"
        )
        self._log = open(root / "registry.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=self._log, stderr=self._log
        )

    @property
    def host(self) -> str:
        return f"localhost:{self.port}"

    def start(self, timeout: float = 20.0) -> Distribution:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._call("GET", "/v2/")
                return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(
            "docker-registry did not start: " + (self.root / "registry.log").read_text()
        )

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()

    def _call(self, method: str, path: str, data: bytes | None = None,
              headers: dict[str, str] | None = None) -> http.client.HTTPResponse:  # fmt: skip
        url = path if "://" in path else f"{self.scheme}://{self.host}{path}"
        request = urllib.request.Request(url, data, headers or {}, method=method)
        return urllib.request.urlopen(request, timeout=10, context=self._tls)

    def push(self, repository: str, tag: str, manifest: bytes, blobs: dict[str, bytes],
             media_type: str = OCI_MANIFEST) -> str:  # fmt: skip
        """Upload the blobs (monolithic uploads), then the manifest under
        `tag`; its digest."""
        for name, data in blobs.items():
            with self._call("POST", f"/v2/{repository}/blobs/uploads/", b"") as started:
                location = started.headers["Location"]
            separator = "&" if "?" in location else "?"
            self._call("PUT", f"{location}{separator}digest={name}", data,
                       {"Content-Type": "application/octet-stream"}).close()  # fmt: skip
        self._call("PUT", f"/v2/{repository}/manifests/{tag}", manifest,
                   {"Content-Type": media_type}).close()  # fmt: skip
        return digest(manifest)


@dataclass
class Repository:
    manifests: dict[str, tuple[str, bytes]] = field(
        default_factory=dict
    )  # tag/digest -> (type, body)
    credentials: str | None = None  # "user:password" a token for it needs (None: anonymous)


class Registry(Origin):
    """A registry of our own (see the module's docstring); the repositories'
    manifests and the blobs are set by the test, the CDN is the Origin's."""

    def __init__(self, tls: ssl.SSLContext, token_seconds: float = 300.0) -> None:
        super().__init__(tls)
        self.repositories: dict[str, Repository] = {}
        self.blob_bytes: dict[str, bytes] = {}
        self.redirect_blobs = True
        self.token_seconds = token_seconds
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (repository, expires)
        self._signatures: dict[str, str] = {}  # one-use signed CDN URLs -> digest
        self._numbers = itertools.count(1)
        self.token_requests: list[dict[str, str]] = []  # query and Authorization of each

    @property
    def host(self) -> str:
        return f"localhost:{self.tls_port}"

    def put(self, repository: str, tag: str | None, manifest: bytes, blobs: dict[str, bytes],
            media_type: str = OCI_MANIFEST, credentials: str | None = None) -> str:  # fmt: skip
        repo = self.repositories.setdefault(repository, Repository())
        repo.credentials = credentials
        repo.manifests[digest(manifest)] = (media_type, manifest)
        if tag:
            repo.manifests[tag] = (media_type, manifest)
        for name, data in blobs.items():
            self.blob_bytes[name] = data
            self.add(f"/cdn/{name}", data, etag=f'"{name}"')
        return digest(manifest)

    def cdn(self, name: str) -> str:
        return f"/cdn/{name}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/token":
            return self._token(request)
        if path.startswith("/cdn/"):
            if self._signatures.pop(request.query.get("sig", ""), None) != path[5:]:
                self.hits.append(self._hit(request))
                return web.Response(status=403, text="signature expired or invalid\n")
            return await super()._handle(request)
        if not path.startswith("/v2/"):
            return web.Response(status=404)
        self.hits.append(self._hit(request))
        name, kind, ref = self._split(path[4:])
        repo = self.repositories.get(name)
        if repo is None:
            return _error(404, "NAME_UNKNOWN", "repository name not known to registry")
        denied = self._denied(request, name, repo)
        if denied:
            return denied
        if kind == "manifests":
            found = repo.manifests.get(ref)
            if found is None:
                return _error(404, "MANIFEST_UNKNOWN", "manifest unknown")
            media_type, body = found
            return web.Response(body=body, headers={
                "Content-Type": media_type, "Docker-Content-Digest": digest(body)})  # fmt: skip
        if ref not in self.blob_bytes:
            return _error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        if not self.redirect_blobs:
            return web.Response(body=self.resources[self.cdn(ref)].body)
        signature = f"s{next(self._numbers)}"
        self._signatures[signature] = ref
        # Another host name (the same server): credentials must not follow.
        location = f"https://127.0.0.1:{self.tls_port}{self.cdn(ref)}?sig={signature}"
        return web.Response(status=307, headers={"Location": location})

    def _split(self, rest: str) -> tuple[str, str, str]:
        for kind in ("manifests", "blobs"):
            name, marker, ref = rest.rpartition(f"/{kind}/")
            if marker:
                return name, kind, ref
        return rest, "", ""

    def _denied(self, request: web.Request, name: str, repo: Repository) -> web.Response | None:
        """A 401 with the Bearer challenge unless the request has a live token for `name`."""
        if repo.credentials is None:
            return None
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        granted = self._tokens.get(token)
        if granted and granted[0] == name and granted[1] > time.monotonic():
            return None
        challenge = (
            f'Bearer realm="https://{self.host}/token",service="{self.host}",'
            f'scope="repository:{name}:pull"'
        )
        return _error(401, "UNAUTHORIZED", "authentication required",
                      {"WWW-Authenticate": challenge})  # fmt: skip

    def _token(self, request: web.Request) -> web.Response:
        self.token_requests.append(
            {**request.query, "authorization": request.headers.get("Authorization", "")}
        )
        scope = request.query.get("scope", "")
        name = scope.removeprefix("repository:").rsplit(":", 1)[0]
        repo = self.repositories.get(name)
        sent = request.headers.get("Authorization", "")
        wanted = repo.credentials if repo else None
        if wanted is not None and sent != "Basic " + base64.b64encode(wanted.encode()).decode():
            return web.json_response({"errors": [{"code": "DENIED"}]}, status=401)
        token = f"t{next(self._numbers)}"
        self._tokens[token] = (name, time.monotonic() + self.token_seconds)
        return web.json_response({"token": token, "expires_in": self.token_seconds})

    def _hit(self, request: web.Request):  # -> origin.Hit
        from origin import Hit

        return Hit(request.method, request.path, dict(request.headers), request.query_string)


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"errors": [{"code": code, "message": message}]}
    return web.json_response(body, status=status, headers=headers)
