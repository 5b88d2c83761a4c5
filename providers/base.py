"""The provider contract: a declarative header and three verbs (submit, poll, fetch).

An adapter subclasses `Provider`, sets its header, and implements `submit`
and `poll` (and `fetch`/`cancel` where the vendor differs from "GET the
video URL"). The base owns HTTP (retry rules in providers/http.py), error
mapping into providers.errors, and the polling loop `wait`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from providers import hosts as hostlib
from providers import http
from providers.errors import (
    JobTimeoutError,
    MalformedAnswerError,
    ProviderError,
    TransientError,
    UnconfirmedSubmitError,
    register_secret,
)
from providers.types import Clip, ImageInput, Job, Poll, ShotRequest
from providers.upload_store import UploadStore


def segment(value: object) -> str:
    """A vendor's id as one URL path segment: escaped, so that an id like `../../x` or
    `a/b?c` cannot move the request elsewhere on the vendor's host."""
    text = quote(str(value), safe="")
    # "." and ".." alone are dot segments that URL normalisation would remove
    return text.replace(".", "%2E") if text in (".", "..") else text


MALFORMED_TRIES = 3  # garbled status answers in a row before a wait gives up
# A local image at most this big goes inline (a data: URI, or base64 where that is the only
# way); a bigger one through the vendor's upload. 256 KiB is Replicate's limit for data URLs
# and keeps a submit's JSON small: a 1280x720 JPEG (about 100-200 KB) stays one request, a
# lossless 720p PNG frame (1-2 MB) is uploaded once and named by URL in every request.
INLINE_MAX = 256 * 1024
UPLOAD_MARGIN_S = 900.0  # an uploaded URL is reused only while it has this long left


@dataclass
class _Uploaded:
    url: str
    until: float | None  # monotonic deadline for handing it out; None = does not expire


@dataclass(frozen=True)
class PollSettings:
    """Polling cadence: starts at `first`, grows by `factor` up to `max`; hard `deadline`."""

    first: float = 1.0
    max: float = 10.0
    factor: float = 1.5
    deadline: float = 1800.0

    @classmethod
    def from_env(cls) -> PollSettings:
        env = os.environ
        return cls(
            first=float(env.get("STORYREEL_POLL_FIRST_S", cls.first)),
            max=float(env.get("STORYREEL_POLL_MAX_S", cls.max)),
            deadline=float(env.get("STORYREEL_JOB_DEADLINE_S", cls.deadline)),
        )


class Provider:
    """Base class for a vendor adapter."""

    name: ClassVar[str]
    key_env: ClassVar[str | None] = None  # the official SDK's variable name
    default_base_url: ClassVar[str] = ""
    base_url_env: ClassVar[str | None] = None  # e.g. STORYREEL_FAL_BASE_URL
    supports_cancel: ClassVar[bool] = False
    # the vendor takes a job id we choose (Runware's taskUUID): a submit whose answer was
    # lost can then be asked about instead of being left unconfirmed
    names_its_jobs: ClassVar[bool] = False
    # the hosts (https) that may receive the key, besides the base URL's own origin; media
    # hosts (CDNs, signed storage URLs) never belong here
    api_hosts: ClassVar[tuple[str, ...]] = ()
    # headers carrying the key that providers.hosts.CREDENTIAL_HEADERS does not already name
    credential_headers: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        key: str | None,
        base_url: str | None = None,
        poll: PollSettings | None = None,
        retry: http.RetryPolicy | None = None,
        uploads: UploadStore | None = None,
    ) -> None:
        self.client = client
        self.key = key
        register_secret(key)
        env_url = os.environ.get(self.base_url_env) if self.base_url_env else None
        self.base_url = (base_url or env_url or self.default_base_url).rstrip("/")
        self.hosts = hostlib.Hosts.for_vendor(self.api_hosts, self.base_url,
                                              self.credential_headers)
        self.poll_settings = poll or PollSettings.from_env()
        self.retry = retry or http.RetryPolicy()
        self.uploads = uploads  # the run's S3-compatible store, where one is configured
        # content hash -> the upload in flight or done: an image is uploaded once per run
        self._uploaded: dict[str, asyncio.Task[_Uploaded]] = {}

    # -- the verbs an adapter implements -------------------------------------------------

    async def submit(self, req: ShotRequest) -> Job:
        """POST the job (paid). Must not be retried by callers unless it surely failed."""
        raise NotImplementedError

    async def poll(self, job: Job) -> Poll:
        """One status observation; failures come back as Poll(state="failed", error=...)."""
        raise NotImplementedError

    async def observe(self, job: Job) -> Poll:
        """`poll`, with the answer's shape contained: a field of the wrong type (an adapter's
        TypeError/KeyError/AttributeError/ValueError while reading it) or a cost that is not a
        finite amount >= 0 is a MalformedAnswerError, never an exception that would leave the
        job's money unaccounted for. Callers keep the job at risk and ask again later."""
        try:
            status = await self.poll(job)
        except ProviderError:
            raise
        except (TypeError, KeyError, AttributeError, ValueError, IndexError) as exc:
            raise self.error(MalformedAnswerError, "status answer could not be read "
                             f"({type(exc).__name__}): {str(exc)[:200]}", job=job) from None
        cost = status.cost_usd
        if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int | float)
                                 or not math.isfinite(cost) or cost < 0):
            raise self.error(MalformedAnswerError, f"status answer names a cost of {cost!r}, "
                             "not an amount", job=job)
        return status

    async def fetch(self, job: Job, done: Poll, dest: Path) -> Clip:
        """Download the finished video to `dest`."""
        with self.about(job):
            if not done.video_url:
                raise self.error(ProviderError, "job succeeded but names no video", job=job)
            await self.download(done.video_url, dest)
        return Clip(path=dest, job_id=job.job_id, cost_usd=done.cost_usd)

    async def cancel(self, job: Job) -> bool:
        """Ask the vendor to stop a job: True when it took the request, False where it has no
        cancel or nothing was left to stop. Taking the request is not stopping the job (fal
        only signals a running app): callers poll until the vendor says the job ended."""
        return False

    # -- images --------------------------------------------------------------------------

    # local images past this many bytes go through `upload_image` instead of inline
    inline_max: ClassVar[int] = INLINE_MAX

    async def upload_image(self, data: bytes, mime: str, name: str) -> tuple[str, float | None]:
        """Put a local image on the vendor's own storage: (URL or URI the vendor's requests
        name it by, seconds it stays valid or None). Adapters with an upload API override;
        the default has none, so callers inline the image."""
        raise NotImplementedError

    def uses_store(self) -> bool:
        return self.uploads is not None and self.uploads.used_by(self.name)

    async def image_ref(self, image: ImageInput) -> str:
        """What a request names an image by: a URL as given; a local file through the run's
        upload store (where one is configured for this vendor), inline as a data: URI when
        small (or when the vendor has no upload), else through the vendor's upload. Uploads
        are keyed by content hash, so the same image is uploaded once per run."""
        if image.url:
            return image.url
        data, mime = image.read()
        store = self.uploads if self.uses_store() else None
        if store is None and (len(data) <= self.inline_max
                              or type(self).upload_image is Provider.upload_image):
            return image.data_uri()
        name = image.path.name if image.path else "image"
        return await self._once(data, mime, name, store)

    async def _once(self, data: bytes, mime: str, name: str, store: UploadStore | None) -> str:
        digest = hashlib.sha256(data).hexdigest()
        task = self._uploaded.get(digest)
        if task is not None and task.done() and (
                task.cancelled() or task.exception() is not None or (
                    (up := task.result()).until is not None
                    and up.until - time.monotonic() < UPLOAD_MARGIN_S)):
            task = None  # failed, or about to expire: upload (or presign) again
        if task is None:
            task = asyncio.ensure_future(self._upload(data, mime, name, store))
            self._uploaded[digest] = task
        try:
            return (await asyncio.shield(task)).url
        except ProviderError as exc:
            if not exc.message.startswith("image upload"):  # one error, many awaiting shots
                exc.message = f"image upload: {exc.message}"
            raise

    async def _upload(self, data: bytes, mime: str, name: str,
                      store: UploadStore | None) -> _Uploaded:
        if store is not None:
            url, until = await store.url_for(data, mime)
            return _Uploaded(url, until)
        url, ttl = await self.upload_image(data, mime, name)
        return _Uploaded(url, None if ttl is None else time.monotonic() + ttl)

    # -- vendor-specific hooks -----------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def error_message(self, body: Any, resp: httpx.Response) -> str:
        """The vendor's own message from an error body; adapters override for their shape."""
        if isinstance(body, dict):
            for k in ("detail", "error", "message", "title", "error_message"):
                v = body.get(k)
                if isinstance(v, str) and v:
                    return v
                if isinstance(v, dict) and isinstance(v.get("message"), str):
                    kind = v.get("type")  # OpenAI-style {"error": {"message", "type"}}
                    return f"{v['message']} ({kind})" if isinstance(kind, str) and kind \
                        else v["message"]
            if body:
                return str(body)[:300]
        return http.body_text(resp, 300) or f"HTTP {resp.status_code}"

    def submit_refused(self, resp: httpx.Response) -> bool:
        """A 5xx submit answer the vendor documents as 'nothing was queued'; by default none
        is (the app may have taken the job before it failed)."""
        return False

    def unnamed(self, what: str, answer: Any) -> UnconfirmedSubmitError:
        """A 2xx submit answer without the job's id: the vendor took something that may run
        and bill, and we cannot ask about it."""
        return UnconfirmedSubmitError(
            f"submit answered 2xx without {what}: {str(answer)[:200]}; the job may exist and "
            "bill, so it is not resent", provider=self.name)

    def classify(self, resp: httpx.Response, message: str) -> type[ProviderError]:
        """Exception class for an HTTP error; adapters refine (fal's 403 'User is locked')."""
        return http.error_class_for_status(resp.status_code)

    # -- shared machinery ----------------------------------------------------------------

    def map_error(self, resp: httpx.Response, stage: http.Stage) -> ProviderError:
        try:
            body: Any = resp.json()
        except ValueError:
            body = None
        message = self.error_message(body, resp)
        cls = self.classify(resp, message)
        return cls(
            f"{stage} answered HTTP {resp.status_code}: {message}",
            provider=self.name,
            status_code=resp.status_code,
            vendor_message=message,
            retry_after=http.parse_retry_after(resp.headers),
        )

    async def call(
        self, method: str, url: str, *, stage: http.Stage, **kwargs: Any
    ) -> httpx.Response:
        """An authenticated request with the stage's retry rule. `url` may be relative."""
        if not url.startswith(("http://", "https://")):
            url = f"{self.base_url}/{url.lstrip('/')}"
        headers = {**self.auth_headers(), **kwargs.pop("headers", {})}
        return await http.send(
            self.client, method, url, stage=stage, provider=self.name,
            map_error=self.map_error, policy=self.retry, headers=headers, hosts=self.hosts,
            submit_refused=self.submit_refused, **kwargs,
        )

    async def call_json(self, method: str, url: str, *, stage: http.Stage, **kwargs: Any) -> Any:
        resp = await self.call(method, url, stage=stage, **kwargs)
        try:
            return resp.json()
        except ValueError as exc:
            # a 2xx that is not JSON: for a submit the job may exist all the same
            cls = UnconfirmedSubmitError if stage == "submit" else ProviderError
            raise self.error(cls, f"{stage} answered non-JSON: "
                             f"{http.body_text(resp, 200)}") from exc

    async def download(self, url: str, dest: Path, headers: dict[str, str] | None = None) -> Path:
        return await http.download(self.client, url, dest, provider=self.name,
                                   headers=headers, policy=self.retry, hosts=self.hosts)

    async def get_once(self, url: str) -> httpx.Response:
        """One plain authenticated GET, no retries (the key still goes only to our hosts);
        its answer is read as far as http.send reads one."""
        resp = await hostlib.open_request(self.client, "GET", url, self.hosts, stream=True,
                                          headers=self.auth_headers())
        try:
            cap = http.answer_cap() if resp.is_success else http.ERROR_BODY_MAX_BYTES
            whole = await http.read_body(resp, cap)
        finally:
            await resp.aclose()
        if resp.is_success and not whole:
            raise self.error(TransientError, f"answered more than {cap} bytes "
                             "(STORYREEL_MAX_ANSWER_BYTES)", status_code=resp.status_code)
        return resp

    @contextlib.contextmanager
    def about(self, job: Job) -> Iterator[None]:
        """Errors raised inside name `job`: fetch and cancel run outside `wait`, which
        does this for polls, and the shared HTTP layer knows no job ids."""
        try:
            yield
        except ProviderError as exc:
            exc.at(job_id=job.job_id)
            raise

    def error(self, cls: type[ProviderError], message: str, *, job: Job | None = None,
              **kw: Any) -> ProviderError:
        return cls(message, provider=self.name, job_id=job.job_id if job else None, **kw)

    async def wait(self, job: Job, *, deadline: float | None = None,
                   on_status: Callable[[Poll], None] | None = None) -> Poll:
        """Poll until the job ends. Backoff grows from `first` to `max`, vendor hints win,
        and a job past its deadline raises JobTimeoutError (callers cancel it)."""
        settings = self.poll_settings
        limit = time.monotonic() + (deadline or settings.deadline)
        interval = settings.first
        malformed = 0
        while True:
            try:
                status = await self.observe(job)
            except MalformedAnswerError as exc:
                # a garbled answer may be a passing fault: ask a few more times, then give
                # up on this wait (the job stays at risk; a later run or reconcile asks again)
                malformed += 1
                if malformed >= MALFORMED_TRIES or time.monotonic() + interval > limit:
                    raise exc.at(job_id=job.job_id) from None
                await asyncio.sleep(interval)
                interval = min(settings.max, interval * settings.factor)
                continue
            except ProviderError as exc:
                raise exc.at(job_id=job.job_id) from None
            if on_status is not None:
                on_status(status)
            if status.done:
                if status.error is not None:
                    status.error.at(job_id=job.job_id)
                return status
            delay = status.poll_after if status.poll_after is not None else interval
            delay *= random.uniform(0.9, 1.1)
            if time.monotonic() + delay > limit:
                raise self.error(JobTimeoutError, "job did not finish before its deadline",
                                 job=job)
            await asyncio.sleep(delay)
            interval = min(settings.max, interval * settings.factor)
