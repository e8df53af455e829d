"""How to reach the bucket `--blobs` names: an obstore store for `s3://`,
`gs://` or `az://`, its credentials, and presigned URLs.

obstore (Rust's object_store) makes every call; on S3, botocore supplies
the two things object_store lacks, both without a request of its own to the
store: the whole standard credential chain (environment, the shared config
and credentials files with profiles, SSO and credential_process, web
identity, container and instance metadata) and presigned GETs that carry
response headers (`response-content-type`, ...). Google Cloud Storage and
Azure take the library's own credential chain from their usual variables.
Errors leave here as BucketError, an OSError with a one-line message.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import obstore
from obstore.store import AzureStore, GCSStore, S3Store

if TYPE_CHECKING:
    from withcache.server.settings import Settings

SCHEMES = ("s3", "gs", "az")
# Response headers a presigned S3 GET can be told to answer with.
PRESIGNED_HEADERS = {
    "Content-Type": "ResponseContentType",
    "Content-Disposition": "ResponseContentDisposition",
    "Content-Encoding": "ResponseContentEncoding",
}
# A hit may stream for hours to a slow client: no limit on a whole request,
# but a store that sends nothing for two minutes ends it.
CLIENT_OPTIONS: dict[str, Any] = {
    "connect_timeout": datetime.timedelta(seconds=10),
    "read_timeout": datetime.timedelta(seconds=120),
    "timeout": datetime.timedelta(days=365),
}
CREDENTIALS_TTL = datetime.timedelta(minutes=5)


class BucketError(OSError):
    """The object store refused or failed a call; the message is one line."""


def bucket_error(err: Exception) -> BucketError:
    """The library's (multi-line, debug-laden) error as one line."""
    text = str(err).strip().splitlines()
    return BucketError(text[0] if text else type(err).__name__)


@dataclass(frozen=True)
class BucketURL:
    scheme: str  # s3, gs or az
    bucket: str  # the S3 or GCS bucket, the Azure container
    prefix: str  # "" or ending in "/"

    @classmethod
    def parse(cls, url: str) -> BucketURL:
        parts = urlsplit(url)
        prefix = parts.path.strip("/")
        return cls(parts.scheme, parts.netloc, f"{prefix}/" if prefix else "")


class _BotocoreCredentials:
    """obstore's credential callback, answered by botocore's chain (which
    refreshes temporary credentials itself)."""

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials

    def __call__(self) -> dict[str, Any]:
        frozen = self._credentials.get_frozen_credentials()
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": datetime.datetime.now(datetime.UTC) + CREDENTIALS_TTL,
        }


class Bucket:
    """One bucket (or container): the obstore store for its keys, which are
    relative to the URL's prefix, and the presigner."""

    def __init__(self, url: BucketURL, store: Any, s3_client: Any = None) -> None:
        self.url = url
        self.store = store
        self._s3 = s3_client  # botocore's S3 client: signs URLs, lists stale uploads

    def presign(self, key: str, seconds: int, headers: Mapping[str, str]) -> str:
        if self._s3 is None:
            # The library signs method, path and expiry only: the store answers
            # with its own headers.
            return obstore.sign(self.store, "GET", key, datetime.timedelta(seconds=seconds))
        params = {p: headers[h] for h, p in PRESIGNED_HEADERS.items() if h in headers}
        params |= {"Bucket": self.url.bucket, "Key": self.url.prefix + key}
        return self._s3.generate_presigned_url("get_object", Params=params, ExpiresIn=seconds)

    def stale_uploads(self, started_before: float, under: Sequence[str]) -> list[tuple[str, str]]:
        """Unfinished multipart uploads to keys under the folders `under`,
        started before the time: (key, upload id). Blocking (botocore); S3
        only, [] elsewhere."""
        if self._s3 is None:
            return []
        found = []
        for folder in under:
            try:
                answer = self._s3.list_multipart_uploads(
                    Bucket=self.url.bucket, Prefix=self.url.prefix + folder
                )
            except self._s3_errors as err:
                raise BucketError(f"cannot list uploads: {err}") from None
            found += [
                (u["Key"], u["UploadId"])
                for u in answer.get("Uploads", [])
                if u["Initiated"].timestamp() < started_before
            ]
        return found

    def abort_upload(self, key: str, upload: str) -> None:
        try:
            self._s3.abort_multipart_upload(Bucket=self.url.bucket, Key=key, UploadId=upload)
        except self._s3_errors as err:
            raise BucketError(f"cannot abort an upload: {err}") from None

    @property
    def _s3_errors(self) -> tuple[type[Exception], ...]:
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def open_bucket(settings: Settings) -> Bucket:
    """The bucket `settings.blobs_url` names, ready to use (nothing sent yet)."""
    assert settings.blobs_url
    url = BucketURL.parse(settings.blobs_url)
    prefix = url.prefix.rstrip("/") or None
    options = dict(CLIENT_OPTIONS)
    # Options given here replace the library's from the environment, where an
    # emulator's http:// endpoint would be allowed: allow it here, as with S3
    # (the stores' own endpoints are https).
    options["allow_http"] = True
    if url.scheme == "gs":
        return Bucket(url, GCSStore(url.bucket, prefix=prefix, client_options=options))
    if url.scheme == "az":
        return Bucket(url, AzureStore(url.bucket, prefix=prefix, client_options=options))
    return _open_s3(settings, url, prefix, options)


def _open_s3(settings: Settings, url: BucketURL, prefix: str | None, options: dict) -> Bucket:
    from botocore.exceptions import BotoCoreError

    try:
        return _open_s3_with_botocore(settings, url, prefix, options)
    except BotoCoreError as err:  # a profile that isn't there, a broken config file, ...
        raise BucketError(str(err)) from None


def _open_s3_with_botocore(
    settings: Settings, url: BucketURL, prefix: str | None, options: dict
) -> Bucket:
    import botocore.config
    import botocore.session

    endpoint = settings.s3_endpoint
    virtual = settings.s3_addressing == "virtual" or (
        settings.s3_addressing == "auto" and endpoint is None
    )
    session = botocore.session.Session()
    if settings.s3_access_key_id and settings.s3_secret_access_key:
        session.set_credentials(
            settings.s3_access_key_id, settings.s3_secret_access_key, settings.s3_session_token
        )
    credentials = session.get_credentials()
    if credentials is None:
        raise BucketError(
            "no AWS credentials found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "a profile in ~/.aws, web identity, or container or instance metadata)"
        )
    config: dict[str, Any] = {"region": settings.s3_region, "virtual_hosted_style_request": virtual}
    if endpoint is not None:
        host = urlsplit(endpoint)
        if virtual and _is_address(host.hostname or ""):
            raise BucketError("virtual-hosted requests need a host name, not an IP address")
        # object_store wants the bucket in a virtual-hosted endpoint; botocore adds it itself.
        config["endpoint"] = f"{host.scheme}://{url.bucket}.{host.netloc}" if virtual else endpoint
    store = S3Store(
        url.bucket, prefix=prefix, config=config, client_options=options,
        credential_provider=_BotocoreCredentials(credentials),  # type: ignore[arg-type]
    )  # fmt: skip
    client = session.create_client(
        "s3", region_name=settings.s3_region, endpoint_url=endpoint,
        config=botocore.config.Config(
            signature_version="s3v4",
            s3={"addressing_style": "virtual" if virtual else "path"},
            retries={"mode": "standard"},
        ),
    )  # fmt: skip
    return Bucket(url, store, client)
