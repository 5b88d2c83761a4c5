"""Image inputs as a vendor sees them: what a request names is resolved to bytes.

A real vendor decodes a data: URI, fetches an https URL (its own CDN's, a presigned S3 URL)
or looks up its own upload (a Runway upload URI), and fails the request when it cannot. The
emulator does the same, so a wrong, expired or unfetchable URL fails a test:
* `data:<mime>;base64,...` is decoded;
* an http(s) URL on a loopback address (the emulator's own CDN routes, a moto S3 server) is
  fetched with a real GET, without credentials, as a vendor's fetcher would;
* any other URL cannot be reached from a test machine: it is accepted unfetched (recorded
  with no digest), as the emulator has no internet.
Vendor modules record what they resolved in `job.data["images"]` (field -> sha256 of the
bytes, or None for an unfetched remote URL) for tests to compare with what was sent.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import hashlib
import ipaddress
import re
import secrets
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

_DATA = re.compile(r"data:([\w.+-]+/[\w.+-]+)?(;[^,]*)?,(.*)", re.S)
FETCH_TIMEOUT_S = 10.0


class Unresolvable(ValueError):
    """The vendor could not read the image a request names (its message says why)."""


@dataclass(frozen=True)
class Stored:
    data: bytes
    mime: str
    name: str


class FileStore:
    """Uploaded files of one emulated vendor, by an opaque id (cleared by `clear`)."""

    def __init__(self) -> None:
        self._files: dict[str, Stored] = {}
        self._lock = threading.Lock()

    def put(self, data: bytes, mime: str, name: str) -> str:
        fid = secrets.token_hex(12)
        with self._lock:
            self._files[fid] = Stored(data, mime, name)
        return fid

    def get(self, fid: str) -> Stored | None:
        with self._lock:
            return self._files.get(fid)

    def clear(self) -> None:
        with self._lock:
            self._files.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def resolve(ref: object) -> bytes | None:
    """The bytes an image reference names; None for a remote URL the emulator cannot reach.
    Raises Unresolvable when a vendor would fail to read it."""
    if not isinstance(ref, str) or not ref:
        raise Unresolvable("image must be a non-empty string")
    if ref.startswith("data:"):
        m = _DATA.fullmatch(ref)
        if m is None or m.group(2) is None or "base64" not in m.group(2):
            raise Unresolvable("data URI must be data:<mime>;base64,<data>")
        try:
            data = base64.b64decode(m.group(3), validate=True)
        except (binascii.Error, ValueError):
            raise Unresolvable("data URI is not valid base64") from None
        if not data:
            raise Unresolvable("data URI is empty")
        return data
    parts = urlsplit(ref)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Unresolvable(f"image must be a URL or a data URI, not {ref[:40]!r}")
    if not _loopback(parts.hostname):
        return None
    try:
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False) as http:
            resp = await http.get(ref)
    except httpx.HTTPError as exc:
        raise Unresolvable(f"could not download the image: {type(exc).__name__}") from None
    if resp.status_code != 200:
        raise Unresolvable(f"could not download the image: HTTP {resp.status_code}")
    if not resp.content:
        raise Unresolvable("the image URL answered an empty body")
    return resp.content


def multipart(content_type: str, body: bytes) -> dict[str, tuple[bytes, str | None, str]]:
    """A multipart/form-data body's parts: name -> (bytes, filename, content type)."""
    raw = f"Content-Type: {content_type}\r\n\r\n".encode() + body
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    parts: dict[str, tuple[bytes, str | None, str]] = {}
    if not msg.is_multipart():
        return parts
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            parts[name] = (part.get_payload(decode=True) or b"", part.get_filename(),
                           part.get_content_type())
    return parts


def digest(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None
