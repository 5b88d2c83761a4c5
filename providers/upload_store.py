"""An S3-compatible upload store: local images handed to a vendor as presigned GET URLs.

Luma fetches keyframe images by URL only (no upload endpoint, no data URIs), and an operator may
want any vendor to receive URLs from their own bucket instead of the vendor's upload. The
operator names a store with `STORYREEL_UPLOAD_URL=s3://bucket/prefix`; a storyboard may name its
own (`uploads: {url: ...}`) only inside one of the prefixes listed in
`STORYREEL_ALLOWED_STORES` (comma-separated), as storyboard paths are confined to their tree.
Credentials, region and endpoint come from the usual AWS variables and files
(`AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, `AWS_ENDPOINT_URL` for R2 / MinIO / GCS interop ...),
read by boto3 itself: nothing here sees or logs them.

Each image is put once under `<prefix>/<sha256>.<ext>` (a HEAD first: a rerun puts nothing)
and handed out as a presigned GET URL that expires after STORYREEL_UPLOAD_URL_EXPIRY_S
(default 3600 s): long enough for a vendor to fetch it at submit time, short enough that a
leaked URL stops working. boto3 is an optional dependency (`pip install 'storyreel[cloud]'`),
imported only when a store is used.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from providers.errors import AuthError, InvalidRequestError, ProviderError, TransientError

UPLOAD_URL_ENV = "STORYREEL_UPLOAD_URL"
ALLOWED_ENV = "STORYREEL_ALLOWED_STORES"
PROVIDERS_ENV = "STORYREEL_UPLOAD_PROVIDERS"
EXPIRY_ENV = "STORYREEL_UPLOAD_URL_EXPIRY_S"
DEFAULT_EXPIRY_S = 3600
# vendors that take images by URL only: a local image needs a store (Luma: keyframes
# are {type: image, url}; base64 is refused, lumalabs/lumaai-python#36)
URL_ONLY_PROVIDERS = frozenset({"luma"})
HOW_TO = (f"set {UPLOAD_URL_ENV}=s3://bucket/prefix (an S3-compatible bucket; credentials and "
          "AWS_ENDPOINT_URL from the usual AWS variables; pip install 'storyreel[cloud]'), or "
          "give the image as an https URL")


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket/prefix`; ValueError otherwise."""
    parts = urlsplit(url.strip())
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
    prefix = parts.path.strip("/")
    if any(seg in (".", "..") for seg in prefix.split("/")):
        raise ValueError(f"{url!r} has a . or .. path segment")
    return parts.netloc, prefix


def _inside(url: str, allowed: str) -> bool:
    bucket, prefix = parse_s3_url(url)
    a_bucket, a_prefix = parse_s3_url(allowed)
    if bucket != a_bucket:
        return False
    return not a_prefix or prefix == a_prefix or prefix.startswith(a_prefix + "/")


def allowed_stores() -> list[str]:
    return [s.strip() for s in os.environ.get(ALLOWED_ENV, "").split(",") if s.strip()]


def check_storyboard_store(url: str) -> str | None:
    """Why a storyboard's `uploads.url` may not be used (None when it may)."""
    try:
        parse_s3_url(url)
    except ValueError as exc:
        return str(exc)
    allowed = allowed_stores()
    try:
        if any(_inside(url, a) for a in allowed):
            return None
    except ValueError as exc:
        return f"{ALLOWED_ENV}: {exc}"
    listed = ", ".join(allowed) if allowed else "none"
    return (f"{url} is not inside a store the operator allows ({ALLOWED_ENV}: {listed}); "
            f"ask the operator to list it there, or leave uploads out to use {UPLOAD_URL_ENV}")


def store_url(storyboard_url: str | None = None) -> str | None:
    """The store a run uses: the storyboard's own (checked by planning), else the operator's."""
    return storyboard_url or os.environ.get(UPLOAD_URL_ENV) or None


def upload_providers(extra: Iterable[str] = ()) -> frozenset[str]:
    """Vendors whose local images go through the store: the URL-only ones, those listed in
    STORYREEL_UPLOAD_PROVIDERS, and a storyboard's `uploads.providers`."""
    listed = {p.strip() for p in os.environ.get(PROVIDERS_ENV, "").split(",") if p.strip()}
    return URL_ONLY_PROVIDERS | listed | set(extra)


def local_image_problem(provider: str, has_local_image: bool, store: str | None) -> str | None:
    """A plan error for a local image sent to a URL-only vendor without a store."""
    if has_local_image and provider in URL_ONLY_PROVIDERS and not store:
        return (f"{provider} takes images by URL only and no upload store is configured: "
                f"{HOW_TO}")
    return None


def _expiry() -> int:
    try:
        return max(60, min(7 * 86400, int(os.environ.get(EXPIRY_ENV, DEFAULT_EXPIRY_S))))
    except ValueError:
        return DEFAULT_EXPIRY_S


@dataclass
class UploadStore:
    """One bucket/prefix; `put` is blocking (boto3), `url_for` runs it in a thread."""

    url: str
    providers: frozenset[str] = URL_ONLY_PROVIDERS
    expires_s: int = field(default_factory=_expiry)
    _client: Any = field(default=None, repr=False)
    _put: set[str] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.bucket, self.prefix = parse_s3_url(self.url)

    def used_by(self, provider: str) -> bool:
        return provider in self.providers

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    self._client = s3_client()
                except ImportError:
                    raise InvalidRequestError(
                        f"{UPLOAD_URL_ENV} needs boto3: pip install 'storyreel[cloud]'"
                    ) from None
            return self._client

    def key_for(self, data: bytes, mime: str) -> str:
        ext = mimetypes.guess_extension(mime) or ".bin"
        name = f"{hashlib.sha256(data).hexdigest()}{'.jpg' if ext == '.jpe' else ext}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, data: bytes, mime: str) -> str:
        """Put the image once (by content hash) and return a presigned GET URL for it."""
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.key_for(data, mime)
        s3 = self.client()
        try:
            if key not in self._put:
                try:
                    s3.head_object(Bucket=self.bucket, Key=key)
                except ClientError as exc:
                    if _code(exc) not in ("404", "NoSuchKey", "NotFound"):
                        raise
                    s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=mime)
                self._put.add(key)
            return str(s3.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=self.expires_s))
        except ClientError as exc:
            code = _code(exc)
            cls: type[ProviderError] = AuthError if code in (
                "403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") else (
                InvalidRequestError if code in ("NoSuchBucket", "404") else TransientError)
            # the error code and bucket only: a message may echo a signed request
            raise cls(f"upload store s3://{self.bucket}: {code or 'error'}",
                      provider="uploads") from None
        except BotoCoreError as exc:
            raise TransientError(f"upload store s3://{self.bucket}: {type(exc).__name__}",
                                 provider="uploads") from None

    async def url_for(self, data: bytes, mime: str) -> tuple[str, float]:
        """(presigned URL, monotonic time until which it is safe to hand out)."""
        url = await asyncio.to_thread(self.put, data, mime)
        return url, time.monotonic() + self.expires_s


def s3_client() -> Any:
    """A boto3 S3 client: the one every store of storyreel uses (uploads, run outputs, the
    shared clip cache). ImportError without the `cloud` extra. Thread-safe (boto3 clients are)."""
    import boto3
    from botocore.config import Config

    # boto3 reads AWS_ENDPOINT_URL(_S3), credentials and region from the environment;
    # signature v4 is what presigned URLs of R2/MinIO/GCS accept
    return boto3.client("s3", config=Config(
        signature_version="s3v4", retries={"max_attempts": 4, "mode": "standard"},
        s3={"addressing_style": os.environ.get("STORYREEL_S3_ADDRESSING", "auto")}))


_SHARED: dict[tuple[str, ...], Any] = {}
_SHARED_LOCK = threading.Lock()
_CLIENT_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_ACCESS_KEY_ID",
               "AWS_DEFAULT_REGION", "AWS_REGION", "STORYREEL_S3_ADDRESSING")


def shared_s3_client() -> Any:
    """`s3_client()` made once per process (and per AWS environment): building one costs
    0.2-0.4 s of CPU, which a run that publishes nothing should not pay twice."""
    key = tuple(os.environ.get(k, "") for k in _CLIENT_ENV)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = s3_client()
        return _SHARED[key]


def error_code(exc: Any) -> str:
    """The S3 error code (or HTTP status) of a botocore ClientError; never its message."""
    return _code(exc)


def _code(exc: Any) -> str:
    err = getattr(exc, "response", {}).get("Error", {})
    return str(err.get("Code") or getattr(exc, "response", {}).get(
        "ResponseMetadata", {}).get("HTTPStatusCode") or "")


def from_settings(storyboard_url: str | None = None,
                  providers: Iterable[str] = ()) -> UploadStore | None:
    """The run's store, or None when neither the storyboard nor the operator names one."""
    url = store_url(storyboard_url)
    return UploadStore(url, providers=upload_providers(providers)) if url else None
