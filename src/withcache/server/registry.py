"""The OCI distribution API, as a fill of an oras:// reference speaks it.

A fill resolves its reference once: the manifest (by tag or by digest), then
the one layer the reference names (withcache.oras reads both). The layer is
pinned for the rest of the fill: its digest is the SHA-256 the bytes must
have, so a registry can never hand over other bytes unnoticed, and a tag
that moves during the fill can't mix two layers. Every GET of the layer
(each retry, each resume) asks the registry again, so the short-lived signed
URL a registry redirects blob GETs to is never reused once it may have
expired; the Authorization never follows that redirect (fill/transfer.py
keeps credentials with their host).

Access is anonymous, or with the Authorization the client sent (which scopes
the artifact, as for any URL). A 401's `WWW-Authenticate` challenge says how:
Bearer, a token from the realm it names (asked with the client's credential,
if any, for pull on the repository), or Basic, the client's credential as is.
A client's own Bearer credential is sent to the registry as is. A token that
expires during the fill is asked for again at the next 401.

The manifest digest the reference resolved to is kept with the artifact
(the replayed header MANIFEST_HEADER): a tag's revalidation (`TagCheck`,
under --revalidate) asks for the manifest again and compares; a digest
reference never changes, so it is always current.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Collection
from urllib.parse import urlencode

import aiohttp

from withcache import keys, oras
from withcache.server.digests import BLOB_ALGORITHM, Digest
from withcache.server.fill.fill import FillError
from withcache.server.fill.transfer import TRANSIENT_STATUSES, read_body
from withcache.server.records import Artifact
from withcache.server.revalidation import Check, Verdict

MANIFEST_HEADER = "Withcache-Manifest-Digest"
MAX_MANIFEST = 4 << 20  # the distribution spec's recommended limit
MAX_TOKEN = 1 << 20
IDENTITY = {"Accept-Encoding": "identity"}  # the client session doesn't decompress
Get = Callable[[str, "str | None", dict[str, str]], Awaitable[aiohttp.ClientResponse]]


class Unresolved(FillError):
    """The registry answered, but the reference names no one blob there, or
    may not be read with the credentials sent: the client's error, told to
    it with `client_status` (FillError's `status` is an origin's answer)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.client_status = status


class Registry:
    """A reference's registry as one fill talks to it; `get` GETs a URL
    under the fetch policy (fill.transfer.Transfers.get)."""

    def __init__(
        self, get: Get, reference: oras.Reference, credential: str | None, plain_http: bool = False
    ) -> None:
        self._get = get
        self.reference = reference
        self._scheme = "http" if plain_http else "https"
        self._credential = credential
        bearer = credential is not None and credential[:7].lower() == "bearer "
        self._authorization = credential if bearer else None

    async def get(self, url: str, extra: dict[str, str]) -> aiohttp.ClientResponse:
        """GET `url` on the registry, authorizing (again) once on a 401."""
        response = await self._get(url, self._authorization, extra)
        if response.status != 401:
            return response
        challenge = response.headers.get("WWW-Authenticate", "")
        response.release()
        self._authorization = await self._authorize(challenge)
        return await self._get(url, self._authorization, extra)

    async def manifest(self) -> tuple[dict[str, object], str, str]:
        """The reference's manifest now: the document, its media type and its
        digest (checked against the reference's digest, if it has one)."""
        ref = self.reference
        wanted = {"Accept": oras.ACCEPT, **IDENTITY}
        response = await self.get(self.url(f"manifests/{ref.manifest_ref}"), wanted)
        async with response:
            status = response.status
            if status == 404:
                raise Unresolved(
                    f"{ref.registry} has no manifest {ref.manifest_ref} in {ref.repository}", 404
                )
            if status in (401, 403):
                raise Unresolved(self._refusal(), 403)
            if status != 200:
                raise FillError(
                    f"the registry answered {status} for the manifest",
                    transient=status in TRANSIENT_STATUSES,
                )
            body = await read_body(response, MAX_MANIFEST, "the manifest")
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
            said = response.headers.get("Docker-Content-Digest", "")
        digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
        if ref.digest and digest != ref.digest:
            raise FillError(f"the registry's manifest {ref.digest} hashes to {digest}")
        if said.startswith("sha256:") and said.lower() != digest:
            raise FillError(f"the registry says the manifest is {said}, but it hashes to {digest}")
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise FillError("the registry's manifest is not a JSON object")
        return document, media_type, digest

    def url(self, path: str) -> str:
        return self.reference.url(path, self._scheme)

    async def _authorize(self, challenge: str) -> str:
        """The Authorization that answers the registry's challenge."""
        scheme, params = oras.parse_challenge(challenge)
        if scheme == "basic":
            if self._credential is None:
                raise Unresolved(self._refusal(), 403)
            return self._credential
        realm = params.get("realm", "")
        if scheme != "bearer" or not realm:
            raise FillError(f"the registry asks for {scheme or 'no'} authentication, "
                            "which withcache can't answer")  # fmt: skip
        try:
            keys.check_origin(realm)
        except keys.BadURL as err:
            raise FillError(f"the registry's token realm is no URL: {err}") from None
        query = urlencode(oras.token_query(params, self.reference))
        url = f"{realm}{'&' if '?' in realm else '?'}{query}"
        response = await self._get(
            url, self._credential, {"Accept": "application/json", **IDENTITY}
        )
        async with response:
            if response.status in (401, 403):
                raise Unresolved(self._refusal(), 403)
            if response.status != 200:
                raise FillError(
                    f"the registry's token service answered {response.status}",
                    transient=response.status in TRANSIENT_STATUSES,
                )
            body = await read_body(response, MAX_TOKEN, "the token")
        try:
            answer = json.loads(body)
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token or not token.isprintable():
            raise FillError("the registry's token service sent no token")
        return f"Bearer {token}"

    def _refusal(self) -> str:
        ref = self.reference
        if self._credential is None:
            return (f"{ref.registry} refuses anonymous access to {ref.repository}: send an "
                    "Authorization header that may pull it")  # fmt: skip
        return f"{ref.registry} refuses the credentials sent for {ref.repository}"


class Blob:
    """The layer a reference resolved to: pinned by its digest, asked for
    afresh on every GET."""

    def __init__(self, registry: Registry, layer: oras.Layer, manifest_digest: str) -> None:
        self._registry = registry
        self.layer = layer
        self.manifest_digest = manifest_digest
        self.expected = Digest.of(BLOB_ALGORITHM, layer.digest.partition(":")[2])

    @property
    def headers(self) -> dict[str, str]:
        """Kept with the artifact and replayed on hits: the manifest it came
        from and, if the layer has a plain file name, that name."""
        kept = {MANIFEST_HEADER: self.manifest_digest}
        title = self.layer.title
        if title and title.isascii() and title.isprintable() and not set(title) & set('"\\'):
            kept["Content-Disposition"] = f'attachment; filename="{title}"'
        return kept

    async def open(self, extra: dict[str, str]) -> aiohttp.ClientResponse:
        return await self._registry.get(self._registry.url(f"blobs/{self.layer.digest}"), extra)


async def resolve(
    get: Get, url: str, credential: str | None, expected: Digest | None,
    plain_http: Collection[str] = (),
) -> Blob:  # fmt: skip
    """The blob the reference `url` names now (one manifest request, and
    the token dance if the registry asks for it); `plain_http`: the
    registries reached over http."""
    try:
        reference = oras.parse(url)
    except oras.BadReference as err:
        raise Unresolved(str(err), 400) from None
    registry = Registry(get, reference, credential, reference.registry in plain_http)
    document, media_type, digest = await registry.manifest()
    try:
        layer = oras.choose(reference, oras.layers(document, media_type))
    except oras.Unresolvable as err:
        if err.status >= 500:  # the registry's manifest is broken, not the reference
            raise FillError(str(err)) from None
        raise Unresolved(f"{reference.key}: {err}", err.status) from None
    blob = Blob(registry, layer, digest)
    if expected is not None and expected.algorithm == BLOB_ALGORITHM and expected != blob.expected:
        raise Unresolved(
            f"{reference.key} is the layer {layer.digest}, not the expected SHA-256 {expected.hex}",
            409,
        )
    return blob


class TagCheck:
    """How --revalidate asks a registry whether an oras:// artifact is
    current (a revalidation.OriginCheck): a digest reference always is; a
    tag is while it names the manifest the artifact was filled from. One
    manifest request, never the layer: a moved tag is fetched by a fill."""

    def __init__(self, get: Get, plain_http: Collection[str]) -> None:
        self._get = get
        self._plain_http = plain_http

    async def __call__(self, artifact: Artifact) -> Check:
        reference = oras.parse(artifact.key)
        if reference.digest is not None:
            return Check(Verdict.FRESH)
        registry = Registry(self._get, reference, None, reference.registry in self._plain_http)
        try:
            _, _, digest = await registry.manifest()
        except FillError as err:
            return Check(Verdict.FAILED, str(err), err.origin_fault)
        current = digest == artifact.headers.get(MANIFEST_HEADER)
        return Check(Verdict.FRESH if current else Verdict.CHANGED)
