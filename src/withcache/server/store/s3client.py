"""The few S3 calls the blob store makes, over the aiohttp we already use.

Path-style addressing (`<endpoint>/<bucket>/<key>`), which SeaweedFS, MinIO,
Ceph RGW, Garage and AWS all take. Uploads sign their payload's SHA-256, so
the store refuses bytes that differ from the ones hashed here; other calls
send UNSIGNED-PAYLOAD. Errors are S3Error (an OSError) with S3's own code.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from urllib.parse import quote, urlsplit

import aiohttp

from withcache.server.store import sigv4

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
READ_CHUNK = 1 << 20
# A single CopyObject takes at most 5 GiB; larger objects are copied in parts.
COPY_OBJECT_LIMIT = 5 << 30
COPY_PART = 1 << 30


class S3Error(OSError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"object store answered {status} {code}: {message}".strip())
        self.status = status
        self.code = code


def _find(node: ET.Element, name: str) -> str:
    found = node.find(_NS + name)
    if found is None:
        found = node.find(name)  # some stores answer without the namespace
    return (found.text or "") if found is not None else ""


def _all(node: ET.Element, name: str) -> list[ET.Element]:
    return node.findall(_NS + name) or node.findall(name)


def _iso_time(text: str) -> float:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


class S3Client:
    def __init__(self, endpoint: str, bucket: str, creds: sigv4.Credentials) -> None:
        parts = urlsplit(endpoint)
        self.endpoint = endpoint.rstrip("/")
        self.host = parts.netloc
        self.bucket = bucket
        self.creds = creds
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120),
                auto_decompress=False,
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _path(self, key: str) -> str:
        return f"/{self.bucket}/{key}" if key else f"/{self.bucket}"

    def url(self, key: str, query: str = "") -> str:
        path = quote(self._path(key), safe="/-_.~")
        return f"{self.endpoint}{path}" + (f"?{query}" if query else "")

    async def request(
        self,
        method: str,
        key: str,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        ok: Sequence[int] = (200,),
    ) -> aiohttp.ClientResponse:
        """Send one signed request; the response (unread) if its status is in `ok`."""
        query = dict(query or {})
        payload = hashlib.sha256(body).hexdigest() if body else sigv4.UNSIGNED
        signed = sigv4.sign_headers(
            self.creds, method, self.host, self._path(key), query, headers or {}, payload
        )
        signed.pop("Host")
        url = self.url(key, sigv4.canonical_query(query))
        try:
            response = await self.session.request(
                method, url, headers=signed, data=body or None, skip_auto_headers=("Content-Type",)
            )
        except (aiohttp.ClientError, TimeoutError) as err:
            raise S3Error(0, "Unreachable", f"{type(err).__name__}: {err}") from None
        if response.status in ok:
            return response
        async with response:
            text = await response.text(errors="replace")
        code, message = "", ""
        try:
            root = ET.fromstring(text)
            code, message = _find(root, "Code"), _find(root, "Message")
        except ET.ParseError:
            message = text[:200]
        raise S3Error(response.status, code or response.reason or "", message)

    async def _xml(self, method: str, key: str, **kw: object) -> ET.Element:
        async with await self.request(method, key, **kw) as response:  # type: ignore[arg-type]
            return ET.fromstring(await response.read())

    # -- objects

    async def put(self, key: str, data: bytes) -> None:
        (await self.request("PUT", key, body=data)).release()

    async def head(self, key: str) -> int | None:
        """The object's size, or None if there is no such object."""
        response = await self.request("HEAD", key, ok=(200, 404))
        response.release()
        return response.content_length if response.status == 200 else None

    async def delete(self, key: str) -> None:
        (await self.request("DELETE", key, ok=(200, 204, 404))).release()

    async def get(self, key: str, start: int, length: int) -> aiohttp.ClientResponse | None:
        """A streaming response for bytes [start, start + length) (416 if the
        object is shorter than `start`), or None if no such object."""
        headers = {"Range": f"bytes={start}-{start + length - 1}"}
        response = await self.request("GET", key, headers=headers, ok=(200, 206, 404, 416))
        if response.status == 404:
            response.release()
            return None
        return response

    async def chunks(self, response: aiohttp.ClientResponse, length: int) -> AsyncIterator[bytes]:
        """The body of a `get`, checked to be exactly `length` bytes."""
        got = 0
        try:
            while chunk := await response.content.read(READ_CHUNK):
                got += len(chunk)
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as err:
            raise S3Error(0, "ReadFailed", f"{type(err).__name__}: {err}") from None
        finally:
            response.release()
        if got != length:
            raise S3Error(response.status, "ShortBody", f"sent {got} of {length} bytes")

    async def copy(self, source: str, target: str, size: int) -> None:
        """Server-side copy: the bytes don't pass through this host."""
        source_header = quote(self._path(source), safe="/-_.~")
        if size <= COPY_OBJECT_LIMIT:
            root = await self._xml("PUT", target, headers={"X-Amz-Copy-Source": source_header})
            if root.tag.endswith("Error"):  # a copy can fail after its 200 has been sent
                raise S3Error(200, _find(root, "Code"), _find(root, "Message"))
            return
        upload = await self.create_upload(target)
        try:
            parts = []
            for number, start in enumerate(range(0, size, COPY_PART), start=1):
                end = min(start + COPY_PART, size) - 1
                root = await self._xml(
                    "PUT", target, query={"partNumber": str(number), "uploadId": upload},
                    headers={"X-Amz-Copy-Source": source_header,
                             "X-Amz-Copy-Source-Range": f"bytes={start}-{end}"},
                )  # fmt: skip
                parts.append((number, _find(root, "ETag")))
            await self.complete_upload(target, upload, parts)
        except BaseException:
            await self.abort_upload(target, upload)
            raise

    # -- multipart uploads

    async def create_upload(self, key: str) -> str:
        root = await self._xml("POST", key, query={"uploads": ""})
        return _find(root, "UploadId")

    async def upload_part(self, key: str, upload: str, number: int, data: bytes) -> str:
        query = {"partNumber": str(number), "uploadId": upload}
        response = await self.request("PUT", key, query=query, body=data)
        response.release()
        return response.headers.get("ETag", "")

    async def complete_upload(
        self, key: str, upload: str, parts: Sequence[tuple[int, str]]
    ) -> None:
        body = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>" for n, etag in parts
        )
        xml = f"<CompleteMultipartUpload>{body}</CompleteMultipartUpload>".encode()
        root = await self._xml("POST", key, query={"uploadId": upload}, body=xml)
        if root.tag.endswith("Error"):
            raise S3Error(200, _find(root, "Code"), _find(root, "Message"))

    async def abort_upload(self, key: str, upload: str) -> None:
        query = {"uploadId": upload}
        (await self.request("DELETE", key, query=query, ok=(200, 204, 404))).release()

    async def list_uploads(self, prefix: str) -> list[tuple[str, str, float]]:
        """Unfinished multipart uploads under `prefix`: (key, upload id, started at)."""
        root = await self._xml("GET", "", query={"uploads": "", "prefix": prefix})
        return [
            (_find(u, "Key"), _find(u, "UploadId"), _iso_time(_find(u, "Initiated")))
            for u in _all(root, "Upload")
        ]

    async def list_objects(self, prefix: str) -> list[tuple[str, int, float]]:
        """Objects under `prefix` (the first 1,000): (key, size, last modified)."""
        root = await self._xml("GET", "", query={"list-type": "2", "prefix": prefix})
        return [
            (_find(o, "Key"), int(_find(o, "Size") or 0), _iso_time(_find(o, "LastModified")))
            for o in _all(root, "Contents")
        ]

    def presigned_get(self, key: str, seconds: int, query: Mapping[str, str]) -> str:
        signed = sigv4.presign_query(self.creds, "GET", self.host, self._path(key), seconds, query)
        return self.url(key, signed)
