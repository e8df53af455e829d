"""oras:// references to OCI artifacts, and which layer of a manifest one names.

Stdlib only: keys.py reads references with it (the cache key, the /b/ token's
file name), the cache-host's registry client (server/registry.py) reads
manifests with it. A reference is

    oras://<registry>/<repository>:<tag>[#<selector>]
    oras://<registry>/<repository>@sha256:<hex>[#<selector>]

where the selector names one layer: a file name (the layer's
`org.opencontainers.image.title` annotation, as `oras push` writes it;
percent-encoded where it isn't URL text) or `sha256:<hex>`, the layer's
digest. An artifact of one layer needs none; with several, a reference without
one names no layer, and the cache-host says which there are instead of guessing.

    >>> parse("oras://GHCR.io:443/org/fw:1.2#fw.bin").key
    'oras://ghcr.io/org/fw:1.2#fw.bin'
    >>> parse("oras://ghcr.io/org/fw:1.2").name
    'fw'
"""

from __future__ import annotations

from withcache import keys
from withcache.record import Record

PREFIX = "oras://"
TITLE = "org.opencontainers.image.title"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_ARTIFACT = "application/vnd.oci.artifact.manifest.v1+json"  # OCI 1.1 drafts; `blobs`
INDEXES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST, OCI_ARTIFACT)
ACCEPT = ", ".join((*MANIFESTS, *INDEXES))  # asked for; an index is refused by name
_HEX = frozenset("0123456789abcdef")
MAX_TAG = 128


class BadReference(keys.BadURL):
    """Not an oras:// reference; the message says why."""


class Unresolvable(ValueError):
    """The manifest names no one blob for the reference; `status` is the
    HTTP status that tells the client (the message lists what there is)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Layer(Record):
    """One blob of an artifact, as its manifest describes it."""

    digest: str  # sha256:<hex>
    size: int
    media_type: str
    title: str | None

    def __str__(self) -> str:
        return f"{self.title or '(no name)'} {self.digest} ({self.size} bytes)"


class Reference(Record):
    registry: str  # host[:port], lowercased, no default port
    repository: str
    tag: str | None
    digest: str | None  # sha256:<hex> of the manifest
    selector: str | None  # a file name or sha256:<hex> of a layer

    @property
    def key(self) -> str:
        """The canonical form: the artifact's cache key."""
        from urllib.parse import quote

        ref = f"@{self.digest}" if self.digest else f":{self.tag}"
        sel = f"#{quote(self.selector, safe=':@!$&()*+,;=-._~')}" if self.selector else ""
        return f"{PREFIX}{self.registry}/{self.repository}{ref}{sel}"

    @property
    def manifest_ref(self) -> str:
        """What the manifest is asked for by: the digest, else the tag."""
        return self.digest or self.tag or ""

    @property
    def name(self) -> str:
        """A file name for the artifact: the selected file, else the repository's last part."""
        if self.selector and not self.selector.startswith("sha256:"):
            return self.selector
        return self.repository.rsplit("/", 1)[-1]

    def url(self, path: str, scheme: str = "https") -> str:
        """A URL on the registry: `/v2/<repository>/<path>`."""
        return f"{scheme}://{self.registry}/v2/{self.repository}/{path}"


def parse(text: str) -> Reference:
    """The reference `text` spells; BadReference saying what is wrong."""
    keys.check_text(text)
    if not keys.is_reference(text):
        raise BadReference("not an oras:// reference")
    rest, hash_sign, selector = text[len(PREFIX) :].partition("#")
    registry, slash, path = rest.partition("/")
    registry = _registry(registry)
    if not slash or not path:
        raise BadReference("give oras://<registry>/<repository>:<tag> (or @sha256:<digest>)")
    repository, at, digest = path.partition("@")
    tag = None
    if at:
        digest = _digest(digest, "the manifest digest")
    else:
        digest = None
        last = repository.rsplit("/", 1)[-1]
        if ":" not in last:
            raise BadReference("the reference names no tag or digest (add :<tag> or @sha256:...)")
        repository, _, tag = repository.rpartition(":")
        _check_tag(tag)
    _check_repository(repository)
    chosen = _selector(selector) if hash_sign else None
    return Reference(registry, repository, tag, digest, chosen)


def _registry(text: str) -> str:
    host, colon, port = text.lower().partition(":")
    if not host or host.startswith(("-", ".")) or not set(host) <= keys.HOST_NAME_CHARS:
        raise BadReference(
            f"{text!r} is not a registry host[:port]" if text else "the reference names no registry"
        )
    if colon:
        if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise BadReference(f"the registry's port {port!r} is not a port number")
        if int(port) != 443:
            return f"{host}:{int(port)}"
    return host


def _check_repository(name: str) -> None:
    """The distribution spec's name grammar: lowercase components joined by `/`,
    each alphanumerics separated by one `.`, `_`, `__` or a run of `-`."""
    import re  # (not at the top: the shims import keys, which imports this lazily)

    if not name:
        raise BadReference("the reference names no repository")
    if len(name) > 255:
        raise BadReference("the repository name is longer than 255 characters")
    part = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
    if not re.fullmatch(rf"{part}(?:/{part})*", name):
        raise BadReference(
            f"{name!r} is not a repository name (lowercase letters and digits, single "
            "separators . _ __ or -s between them, parts joined by /)"
        )


def _check_tag(tag: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag):
        raise BadReference(
            f"{tag!r} is not a tag (up to {MAX_TAG} letters, digits, _ . -, not starting with . -)"
        )


def _digest(text: str, what: str) -> str:
    algorithm, colon, value = text.partition(":")
    if not colon:
        raise BadReference(f"{what} must be sha256:<64 hex digits>")
    if algorithm.lower() != "sha256":
        raise BadReference(f"{what} is {algorithm}: only sha256 digests are supported")
    if len(value) != 64 or not set(value.lower()) <= _HEX:
        raise BadReference(f"{what} must be sha256:<64 hex digits>")
    return f"sha256:{value.lower()}"


def _selector(text: str) -> str:
    from urllib.parse import unquote

    if not text:
        raise BadReference("nothing after '#': name a file or sha256:<digest> of a layer")
    if text.lower().startswith("sha256:"):
        return _digest(text, "the layer digest")
    name = unquote(text)
    if "/" in name or name in (".", "..") or "\x00" in name:
        raise BadReference("the file name after '#' may not be a path")
    return name


# -- manifests


def layers(manifest: dict[str, object], media_type: str) -> list[Layer]:
    """The layers of an image or artifact manifest; Unresolvable for an index
    or a manifest that isn't one."""
    kind = str(manifest.get("mediaType") or media_type)
    if kind in INDEXES or "manifests" in manifest:
        entries = manifest.get("manifests")
        shown = "; ".join(_platform(m) for m in entries[:20]) if isinstance(entries, list) else ""
        raise Unresolvable(
            "the reference is an image index (one manifest per platform): name one of "
            f"its manifests by digest, oras://<registry>/<repository>@sha256:<hex>: {shown}"
        )
    if kind not in MANIFESTS:
        raise Unresolvable(f"the registry answered a {kind or 'manifest of no type'}, "
                           "not an OCI image or Docker v2 manifest", 502)  # fmt: skip
    found = manifest.get("layers", manifest.get("blobs"))
    if not isinstance(found, list):
        raise Unresolvable("the manifest lists no layers", 502)
    out = []
    for entry in found:
        if not isinstance(entry, dict):
            raise Unresolvable("the manifest's layer list is not a list of descriptors", 502)
        digest, size = entry.get("digest"), entry.get("size")
        if not isinstance(digest, str) or not isinstance(size, int) or size < 0:
            raise Unresolvable("a layer of the manifest has no digest or size", 502)
        try:
            digest = _digest(digest, "a layer's digest")
        except BadReference as err:
            raise Unresolvable(str(err), 502) from None
        notes = entry.get("annotations")
        title = notes.get(TITLE) if isinstance(notes, dict) else None
        media = entry.get("mediaType")
        out.append(Layer(digest, size, str(media or ""), title if isinstance(title, str) else None))
    return out


def choose(reference: Reference, found: list[Layer]) -> Layer:
    """The layer the reference names; Unresolvable listing the layers when it
    names none of them, or names none and there are several."""
    selector = reference.selector
    if selector is None and len(found) == 1:
        return found[0]
    if selector is not None:
        by_digest = selector.startswith("sha256:")
        matches = [x for x in found if (x.digest if by_digest else x.title) == selector]
        if len(matches) == 1 or (matches and by_digest):
            return matches[0]
        if matches:
            raise Unresolvable(
                f"{len(matches)} layers are named {selector!r}: name one by its digest "
                f"(#sha256:<hex>): {_listing(matches)}"
            )
        if not found:
            raise Unresolvable("the artifact has no layers", 404)
        raise Unresolvable(f"no layer is {selector!r}; the layers: {_listing(found)}", 404)
    if not found:
        raise Unresolvable("the artifact has no layers", 404)
    raise Unresolvable(
        f"the artifact has {len(found)} layers: name one after '#' (a file name or "
        f"sha256:<digest>): {_listing(found)}"
    )


def _listing(found: list[Layer]) -> str:
    shown = "; ".join(map(str, found[:20]))
    return shown + (f"; and {len(found) - 20} more" if len(found) > 20 else "")


def _platform(entry: object) -> str:
    if not isinstance(entry, dict):
        return "?"
    platform = entry.get("platform")
    where = "/".join(
        str(platform[k]) for k in ("os", "architecture", "variant") if platform.get(k)
    ) if isinstance(platform, dict) else ""  # fmt: skip
    return f"{where or 'no platform'} {entry.get('digest')}"


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """A `WWW-Authenticate` challenge: its scheme (lowercased) and parameters.

    >>> parse_challenge('Bearer realm="https://a/token",service="a",scope="repository:x:pull"')
    ('bearer', {'realm': 'https://a/token', 'service': 'a', 'scope': 'repository:x:pull'})
    """
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    while rest:
        rest = rest.lstrip(" ,")
        name, eq, rest = rest.partition("=")
        if not eq:
            break
        if rest.startswith('"'):  # a quoted-string, backslash escapes and all
            value, i = "", 1
            while i < len(rest) and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < len(rest):
                    i += 1
                value += rest[i]
                i += 1
            rest = rest[i + 1 :]
        else:
            value, _, rest = rest.partition(",")
            value = value.strip()
        params[name.strip().lower()] = value
    return scheme.lower(), params


def token_query(params: dict[str, str], reference: Reference) -> dict[str, str]:
    """The query of a token request answering a Bearer challenge: its service,
    and its scope (or pull on the reference's repository)."""
    query = {"scope": params.get("scope") or f"repository:{reference.repository}:pull"}
    if params.get("service"):
        query["service"] = params["service"]
    return query
