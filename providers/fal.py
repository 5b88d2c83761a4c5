"""fal.ai queue API.

Protocol source: fal-ai/fal `projects/fal_client/src/fal_client/client.py`
(`_BaseRequestHandle`, `_parse_status`, `cancel`), fal.ai/docs inference-api
queue pages, docs.fal.ai errors / request-errors / pricing; fal-ai/fal issues #1147
and #1162 (403 "User is locked").

* POST {base}/{owner}/{app}[/{path}] with `Authorization: Key <FAL_KEY>`; the
  body is the model's own schema (see `SCHEMAS`). -> {request_id, status_url,
  response_url, cancel_url}. Follow-up URLs come from that answer: they name
  only owner/app, never the endpoint path, so they are not built by hand.
* GET status_url: HTTP 202 while IN_QUEUE / IN_PROGRESS, 200 once COMPLETED.
  There is no FAILED state: a failed request is COMPLETED with `error` /
  `error_type` set, and the real error is what GET response_url answers
  (the model's own status and body, e.g. 422 {"detail": [{loc, msg, type}]}).
* GET response_url -> {"video": {"url", ...}}; fetched as soon as the status is
  COMPLETED because fal keeps results >= 10 KB for only 6 minutes.
* PUT cancel_url (queued requests are dropped, running ones signalled).
* A submit answered 502/503/504 without `x-fal-request-id` is a gateway page that never
  reached fal's app (fal_client's `_is_ingress_error` retries exactly these): refused and
  resent. Any other 5xx may have queued the request: unconfirmed, never resent.
* 403 {"detail": "User is locked. Reason: Exhausted balance ..."} is a credit
  problem, not a bad key. fal bills only successful requests and reports no
  per-request cost, but the result carries `x-fal-billable-units` (a decimal
  count of the endpoint's billing unit): with the account's unit price from the
  Platform API (providers/fal_pricing.py, given as `prices`) a success costs
  units x unit price (`Poll.cost_source` "vendor_units"); without one
  `cost_usd` stays None and the caller books its estimate.

Local images up to 256 KiB go inline as data URIs; bigger ones are uploaded once per run to
fal's storage, as fal_client's `upload` does (fal.ai/docs/documentation/model-apis/fal-cdn:
"Some models also accept data URIs ... URLs are the universal format"):
`POST {rest}/storage/auth/token?storage_type=fal-cdn-v3` (Key auth, body {}) ->
{token, token_type, base_url, expires_at}, then `POST {base_url}/files/upload` with the bytes,
Content-Type, X-Fal-File-Name, X-Fal-Object-Lifecycle and `Authorization: {token_type} {token}`
-> {access_url}. If that fails, the storage fallback: `POST
{rest}/storage/upload/initiate?storage_type=gcs` {file_name, content_type} (Key auth) ->
{upload_url, file_url}, then `PUT upload_url` with the bytes (no key) -> file_url. fal_client
posts single-part uploads to v3.fal.media and uses the token's base_url for multipart; we use
base_url (a fal.media host) for both. Uploads expire after UPLOAD_TTL_S (the lifecycle header).
UNCONFIRMED: the exact `type` string of a content-policy model
error (we match `content_policy*` plus keywords); what a canceled request's
status looks like (we treat `error_type` client_cancelled/request_cancelled
as canceled); the HTTP code of each cancel answer (any 2xx means accepted).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import httpx

from providers import hosts as hostlib
from providers import http
from providers.base import Provider
from providers.catalog import find_model
from providers.errors import (
    AuthError,
    ContentPolicyError,
    InsufficientCreditError,
    InvalidRequestError,
    JobFailedError,
    NotFoundError,
    ProviderError,
    register_secret,
)
from providers.fal_pricing import UnitPrice
from providers.types import Clip, Job, Poll, ShotRequest

log = logging.getLogger(__name__)
UNITS_HEADER = "x-fal-billable-units"
REST_URL = "https://rest.fal.ai"  # fal_client's REST_URL: storage tokens and uploads
UPLOAD_TTL_S = 86400  # X-Fal-Object-Lifecycle: uploaded inputs expire after a day
CDN_HOST = "fal.media"  # the token's base_url must be on it (v3.fal.media, v3b.fal.media)


@dataclass(frozen=True)
class Schema:
    """How one fal model family spells the common fields (fal has no common schema)."""

    duration: Literal["str", "str_s", "int", "frames", "none"] = "str"  # "5" | "8s" | 5 | frames
    image_field: str = "image_url"
    aspect: bool = True  # aspect_ratio on text-to-video
    aspect_image: bool = False  # ... and on image-to-video (else the image decides)
    resolution: bool = False
    seed: bool = True
    negative: bool = True
    fps: int = 16  # native frame rate, for duration="frames" (num_frames)


# first matching prefix wins; from each model's fal.ai/models/<id>/llms.txt input schema
SCHEMAS: tuple[tuple[str, Schema], ...] = (
    ("fal-ai/veo3", Schema(duration="str_s", resolution=True, aspect_image=True)),
    ("fal-ai/kling-video/v3/pro", Schema(image_field="start_image_url", seed=False)),
    ("fal-ai/kling-video", Schema(seed=False)),
    ("fal-ai/wan/v2.2-a14b", Schema(duration="frames", resolution=True, aspect_image=True)),
    ("fal-ai/wan/v2.7", Schema(duration="int", resolution=True, aspect_image=True)),
    ("fal-ai/hunyuan-video", Schema(duration="none", resolution=True, negative=False)),
    ("fal-ai/ltx-video", Schema(duration="none", aspect=False)),
)
_DEFAULT = Schema()

_POLICY = re.compile(r"content[_ ]?polic|nsfw|safety|flagged|moderat", re.I)
_CANCELED_TYPES = {"client_cancelled", "request_cancelled", "cancelled", "canceled"}
_STATES = {"IN_QUEUE": "queued", "IN_PROGRESS": "running"}


def schema_for(model_id: str) -> Schema:
    for prefix, schema in SCHEMAS:
        if model_id.startswith(prefix):
            return schema
    return _DEFAULT


def fal_body(req: ShotRequest, model_id: str, image: str | None = None) -> dict[str, Any]:
    """The JSON input for a fal model: common fields in its spelling, then catalog
    `params`, then the shot's own `params` (last, so a storyboard can override). `image` is
    what the first frame is named by (a URL or a data: URI; default: the image inline)."""
    s = schema_for(model_id)
    body: dict[str, Any] = {"prompt": req.prompt}
    seconds = int(round(req.duration_s))
    if s.duration == "str":
        body["duration"] = str(seconds)
    elif s.duration == "str_s":
        body["duration"] = f"{seconds}s"
    elif s.duration == "int":
        body["duration"] = seconds
    elif s.duration == "frames":  # n frames at fps cover (n - 1) / fps seconds
        body["num_frames"] = int(round(req.duration_s * s.fps)) + 1
    if req.image is not None:
        body[s.image_field] = image or req.image.data_uri()
    if s.aspect and (req.image is None or s.aspect_image):
        body["aspect_ratio"] = req.aspect_ratio
    if s.resolution:
        body["resolution"] = req.resolution
    if s.negative and req.negative_prompt:
        body["negative_prompt"] = req.negative_prompt  # a string (the HF SDK's list is wrong)
    if s.seed and req.seed is not None:
        body["seed"] = int(req.seed)
    info = find_model(req.provider, req.model)
    body.update(info.params if info else {})
    body.update(req.params)
    return body


def billable_units(value: str | None) -> float | None:
    """The result's `x-fal-billable-units` as a count (e.g. "5", "1.5"), or None when absent
    or not a finite number >= 0 (logged: a wrong header must not cost a finished clip)."""
    if value is None:
        return None
    try:
        units = float(value.strip())
    except ValueError:
        units = math.nan
    if not math.isfinite(units) or units < 0:
        log.warning("fal: ignoring %s %r (not a count)", UNITS_HEADER, value[:40])
        return None
    return units


def detail_message(body: Any) -> tuple[str, str | None]:
    """(message, machine type) from fal's two error shapes:
    {"detail": [{loc, msg, type}]} (model) and {"detail": str, "error_type": str} (request)."""
    if not isinstance(body, dict):
        return "", None
    detail = body.get("detail")
    if isinstance(detail, list) and detail:
        msgs, kind = [], None
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(x) for x in item.get("loc", []) if x != "body")
                msg = str(item.get("msg", ""))
                msgs.append(f"{loc}: {msg}" if loc else msg)
                kind = kind or item.get("type")
        return "; ".join(m for m in msgs if m), kind
    if isinstance(detail, str):
        return detail, body.get("error_type")
    for key in ("error", "message"):
        if isinstance(body.get(key), str):
            return body[key], body.get("error_type")
    return "", body.get("error_type")


class FalProvider(Provider):
    name: ClassVar[str] = "fal"
    key_env: ClassVar[str | None] = "FAL_KEY"
    default_base_url: ClassVar[str] = "https://queue.fal.run"
    base_url_env: ClassVar[str | None] = "STORYREEL_FAL_BASE_URL"
    supports_cancel: ClassVar[bool] = True
    api_hosts: ClassVar[tuple[str, ...]] = ("queue.fal.run",)

    def __init__(self, *, prices: Mapping[str, UnitPrice] | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.prices: dict[str, UnitPrice] = dict(prices or {})
        self.rest_url = os.environ.get("STORYREEL_FAL_REST_URL", REST_URL).rstrip("/")
        if self.name == "fal":  # fal's key also goes to its REST host (storage uploads)
            self.hosts = hostlib.Hosts(self.hosts.origins | {hostlib.origin(self.rest_url)},
                                       self.hosts.base_url, self.hosts.credentials)
        self._token: tuple[dict[str, str], float] | None = None  # CDN token, monotonic expiry
        self._token_lock = asyncio.Lock()

    def use_prices(self, prices: Mapping[str, UnitPrice]) -> None:
        """The account's unit price per endpoint id (providers/fal_pricing.py), which turns a
        result's billable units into what the job cost."""
        self.prices = dict(prices)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Key {self.key}"} if self.key else {}

    # -- model id and URLs (the Hugging Face router adapter overrides these) ----------

    def model_id(self, req: ShotRequest) -> str:
        return req.vendor_model

    def submit_url(self, model_id: str) -> str:
        return f"{self.base_url}/{model_id}"

    def followup_urls(self, answer: dict[str, Any], model_id: str) -> dict[str, str]:
        urls = {k: answer[k] for k in ("status_url", "response_url", "cancel_url")
                if isinstance(answer.get(k), str) and self.hosts.trusted(answer[k])}
        if len(urls) < 3:  # fal always sends them (on its own host); else do as
            # fal_client's from_request_id: a URL on another host would not get the key anyway
            owner_app = "/".join(quote(p, safe="") for p in model_id.split("/")[:2])
            request_id = quote(str(answer["request_id"]), safe="")
            root = f"{self.base_url}/{owner_app}/requests/{request_id}"
            urls = {"response_url": root, "status_url": f"{root}/status",
                    "cancel_url": f"{root}/cancel"}
        return urls

    # -- verbs --------------------------------------------------------------------------

    async def submit(self, req: ShotRequest) -> Job:
        model_id = self.model_id(req)
        image = await self.image_ref(req.image) if req.image is not None else None
        answer = await self.call_json("POST", self.submit_url(model_id), stage="submit",
                                      json=fal_body(req, model_id, image))
        request_id = answer.get("request_id") if isinstance(answer, dict) else None
        if not request_id:  # accepted (2xx) but unnamed: it may run and bill, so say so
            raise self.unnamed("a request_id", answer)
        data = {"model": model_id, **self.followup_urls(answer, model_id)}
        return Job(provider=self.name, job_id=str(request_id), data=data)

    # -- uploads ------------------------------------------------------------------------

    async def upload_image(self, data: bytes, mime: str, name: str) -> tuple[str, float | None]:
        lifecycle = json.dumps({"expiration_duration_seconds": UPLOAD_TTL_S})
        try:
            return await self._upload_cdn(data, mime, name, lifecycle), float(UPLOAD_TTL_S)
        except ProviderError as exc:  # fal_client falls back on any failure, so do we
            log.warning("fal: CDN upload failed (%s); trying the storage upload", exc.message)
        return await self._upload_storage(data, mime, name, lifecycle), float(UPLOAD_TTL_S)

    async def _cdn_token(self) -> dict[str, str]:
        async with self._token_lock:
            if self._token is not None and self._token[1] - time.monotonic() > 60:
                return self._token[0]
            answer = await self.call_json(
                "POST", f"{self.rest_url}/storage/auth/token?storage_type=fal-cdn-v3",
                stage="poll", json={})
            if not isinstance(answer, dict) or not all(
                    isinstance(answer.get(k), str) and answer[k]
                    for k in ("token", "token_type", "base_url")):
                raise self.error(ProviderError, "storage token answer lacks token/base_url")
            register_secret(answer["token"])  # a credential too: never in a log or report
            base = answer["base_url"].rstrip("/")
            if not self._cdn_allowed(base):
                raise self.error(ProviderError, f"storage token names an upload host outside "
                                 f"{CDN_HOST}: {base[:80]}")
            ttl = 600.0  # expires_at is an ISO time; unreadable -> assume ten minutes
            with contextlib.suppress(ValueError, TypeError):
                when = dt.datetime.fromisoformat(str(answer.get("expires_at")))
                if when.tzinfo is not None:
                    ttl = (when - dt.datetime.now(dt.UTC)).total_seconds()
            token = {"auth": f"{answer['token_type']} {answer['token']}", "base": base}
            self._token = (token, time.monotonic() + ttl)
            return token

    def _cdn_allowed(self, base: str) -> bool:
        """The upload token goes only to a fal.media host over https (or, for a local
        emulator or proxy, to the origin of our own configured fal URLs)."""
        scheme, host, _ = hostlib.origin(base)
        if scheme == "https" and (host == CDN_HOST or host.endswith("." + CDN_HOST)):
            return True
        return hostlib.origin(base) in {hostlib.origin(self.rest_url),
                                         hostlib.origin(self.base_url)}

    async def _upload_cdn(self, data: bytes, mime: str, name: str, lifecycle: str) -> str:
        token = await self._cdn_token()
        headers = {"Authorization": token["auth"], "Content-Type": mime,
                   "X-Fal-File-Name": name, "X-Fal-Object-Lifecycle": lifecycle}
        url = f"{token['base']}/files/upload"
        resp = await http.send(self.client, "POST", url, stage="poll", provider=self.name,
                               map_error=self.map_error, policy=self.retry,
                               hosts=hostlib.for_url(url), content=data, headers=headers)
        return self._named_url(resp, "access_url")

    async def _upload_storage(self, data: bytes, mime: str, name: str, lifecycle: str) -> str:
        slot = await self.call_json(
            "POST", f"{self.rest_url}/storage/upload/initiate?storage_type=gcs", stage="poll",
            json={"file_name": name, "content_type": mime},
            headers={"X-Fal-Object-Lifecycle-Preference": lifecycle})
        if not isinstance(slot, dict) or not all(
                isinstance(slot.get(k), str) and slot[k] for k in ("upload_url", "file_url")):
            raise self.error(ProviderError, f"upload initiate answered {str(slot)[:200]}")
        # a signed storage URL: sent without the key (providers/hosts.py strips any)
        await http.send(self.client, "PUT", slot["upload_url"], stage="poll",
                        provider=self.name, map_error=self.map_error, policy=self.retry,
                        hosts=self.hosts, content=data, headers={"Content-Type": mime})
        return str(slot["file_url"])

    def _named_url(self, resp: httpx.Response, key: str) -> str:
        try:
            answer = resp.json()
        except ValueError:
            answer = None
        url = answer.get(key) if isinstance(answer, dict) else None
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise self.error(ProviderError, f"upload answered without {key}: {str(answer)[:200]}")
        return url

    async def poll(self, job: Job) -> Poll:
        # 202 (queued/running) and 200 (completed) are both answers; the body decides
        status = await self.call_json("GET", job.data["status_url"], stage="poll")
        state = status.get("status") if isinstance(status, dict) else None
        if state in _STATES:
            return Poll(state=_STATES[state], raw=status)  # type: ignore[arg-type]
        if state != "COMPLETED":
            raise self.error(ProviderError, f"unknown status {state!r}", job=job)
        return await self._completed(job, status)

    async def _completed(self, job: Job, status: dict[str, Any]) -> Poll:
        """COMPLETED is not success: check `error`, then the result's HTTP status and body."""
        error_type = str(status.get("error_type") or "").lower()
        if status.get("error") or error_type:
            if error_type in _CANCELED_TYPES:
                err = self.error(JobFailedError, "request was canceled", job=job)
                return Poll(state="canceled", error=err, raw=status)
            body, code = await self._final_answer(job)
            err = self._failure(job, body, code, status)
            return Poll(state="failed", error=err, raw={"status": status, "result": body})
        try:
            resp = await self.call("GET", job.data["response_url"], stage="poll")
        except (InvalidRequestError, ContentPolicyError, NotFoundError) as exc:
            # the result URL replays the model's own error status and body
            policy = isinstance(exc, ContentPolicyError) or _POLICY.search(str(exc.message))
            cls = ContentPolicyError if policy else (
                NotFoundError if isinstance(exc, NotFoundError) else JobFailedError)
            err = self.error(cls, f"job failed: {exc.vendor_message}", job=job,
                             status_code=exc.status_code, vendor_message=exc.vendor_message)
            return Poll(state="failed", error=err, raw={"status": status})
        try:
            result = resp.json()
        except ValueError:
            result = None
        video = result.get("video") if isinstance(result, dict) else None
        url = video.get("url") if isinstance(video, dict) else None
        if not url:
            err = self.error(JobFailedError, "job completed but its result names no video: "
                             f"{str(result)[:200]}", job=job)
            return Poll(state="failed", error=err, raw={"status": status, "result": result})
        raw: dict[str, Any] = {"status": status, "result": result}
        header = resp.headers.get(UNITS_HEADER)
        if header is not None:
            raw["billable_units"] = header[:40]
        units = billable_units(header)
        price = self.prices.get(str(job.data.get("model")))  # the endpoint actually used
        cost = round(units * price.unit_price, 6) if units is not None and price else None
        return Poll(state="succeeded", video_url=url, progress=1.0, raw=raw,
                    billable_units=units, cost_usd=cost,
                    cost_source="vendor_units" if cost is not None else None)

    async def _final_answer(self, job: Job) -> tuple[Any, int | None]:
        """The result of a job whose status already says it failed: one plain try, since
        the answer is the model's error (even a 5xx) and retrying it changes nothing."""
        try:
            resp = await self.get_once(job.data["response_url"])
        except (httpx.HTTPError, ProviderError):
            return None, None
        try:
            return resp.json(), resp.status_code
        except ValueError:
            return None, resp.status_code

    def _failure(self, job: Job, body: Any, code: int | None,
                 status: dict[str, Any]) -> ProviderError:
        message, kind = detail_message(body)
        message = message or str(status.get("error") or "") or f"result answered HTTP {code}"
        kind = kind or status.get("error_type")
        cls = ContentPolicyError if _POLICY.search(f"{kind or ''} {message}") else JobFailedError
        text = f"{message} ({kind})" if kind else message
        return self.error(cls, f"job failed: {text}", job=job, status_code=code,
                          vendor_message=message)

    async def fetch(self, job: Job, done: Poll, dest: Path) -> Clip:
        try:
            return await super().fetch(job, done, dest)
        except NotFoundError:
            # the media URL expired or vanished: re-read the result (it may name a fresh
            # URL) and try once more; the result itself lives 6 min to 1 h
            with self.about(job):
                fresh = await self._completed(job, {"status": "COMPLETED"})
            if fresh.state != "succeeded":
                raise
            return await super().fetch(job, fresh, dest)

    async def cancel(self, job: Job) -> bool:
        try:
            await self.call("PUT", job.data["cancel_url"], stage="cancel")
        except (InvalidRequestError, NotFoundError):
            return False  # 400 ALREADY_COMPLETED / 404 NOT_FOUND: nothing left to stop
        except ProviderError as exc:  # not known to be stopped: say so, naming the job
            raise exc.at(job_id=job.job_id) from None
        return True

    # -- errors -------------------------------------------------------------------------

    def error_message(self, body: Any, resp: httpx.Response) -> str:
        message, kind = detail_message(body)
        if message:
            return f"{message} ({kind})" if kind else message
        return super().error_message(body, resp)

    def map_error(self, resp: httpx.Response, stage: http.Stage) -> ProviderError:
        err = super().map_error(resp, stage)
        if stage == "submit" and resp.status_code >= 500:
            # fal's request id, for a person to look the request up on fal's dashboard
            err.job_id = resp.headers.get("x-fal-request-id")
        return err

    def submit_refused(self, resp: httpx.Response) -> bool:
        # fal_client's _is_ingress_error: a gateway answer without fal's request id
        return resp.status_code in (502, 503, 504) and "x-fal-request-id" not in resp.headers

    def classify(self, resp: httpx.Response, message: str) -> type[ProviderError]:
        if resp.status_code in (402, 403) and "user is locked" in message.lower():
            low = message.lower()
            credit = any(w in low for w in ("balance", "top_up", "top up", "billing"))
            return InsufficientCreditError if credit else AuthError
        if resp.status_code == 422 and _POLICY.search(message):
            return ContentPolicyError
        return http.error_class_for_status(resp.status_code)
