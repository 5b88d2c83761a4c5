"""NanoGPT generate-video API.

Protocol source: docs.nano-gpt.com "Video Generation" (retrieved 2026-11).
* POST {base}/api/generate-video with `x-api-key` (Bearer is also accepted; the
  cURL examples use x-api-key). Body: model, prompt, duration, aspect_ratio and
  model-specific fields; image-to-video via `imageDataUrl` (data URI, at most
  4 MB) or `imageUrl` (public HTTPS).
  -> 202 {runId, status:"pending", model, cost, paymentSource:"USD"|"XNO",
  remainingBalance}: the cost is deducted at submit.
* GET {base}/api/generate-video/status?runId=..&modelSlug=.. ->
  {"data": {status IN_QUEUE|IN_PROGRESS|COMPLETED|FAILED|CANCELLED,
  output.video.url, error, isNSFWError, userFriendlyError}}.
* Errors: {"error": "Insufficient balance", "status": 402},
  {"error": {"message", "type": "CONTENT_POLICY_VIOLATION"}, "status": 400}.

Traps handled here: `duration` is a string, "5s" for Veo models but "5" for
Kling/Seedance; the poll needs the model slug as well as the run id; inline
images over 4 MB are refused before anything is paid; `resolution` is sent only
to the models that take it, and `aspect_ratio` is not sent to Seedance with an
image (text-to-video only).

Where the seed is silent (UNCONFIRMED, conservative choices): there is a
CANCELLED status but no cancel endpoint (`supports_cancel = False`); whether a
failed job's upfront cost is refunded is not said, so a failed job still reports
the deducted cost (and the catalog says charges_failures); an XNO-paid cost is
not converted (cost_usd stays None).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import httpx

from providers.base import Provider
from providers.catalog import find_model
from providers.errors import (
    ContentPolicyError,
    InvalidRequestError,
    JobFailedError,
    ProviderError,
)
from providers.types import Job, Poll, ShotRequest

MAX_INLINE_IMAGE = 4 * 1024 * 1024
_SECONDS_SUFFIX = ("veo",)  # slugs whose duration is "5s" rather than "5"
_TAKES_RESOLUTION = ("seedance", "hunyuan", "wan")
_T2V_ONLY_ASPECT = ("seedance",)
_POLICY = re.compile(r"CONTENT_POLICY|content policy|nsfw|safety|inappropriate", re.I)

_STATES = {"pending": "queued", "IN_QUEUE": "queued", "IN_PROGRESS": "running",
           "COMPLETED": "succeeded", "FAILED": "failed", "CANCELLED": "canceled"}


class NanoGPTProvider(Provider):
    name: ClassVar[str] = "nanogpt"
    key_env: ClassVar[str | None] = "NANOGPT_API_KEY"
    default_base_url: ClassVar[str] = "https://nano-gpt.com"
    base_url_env: ClassVar[str | None] = "STORYREEL_NANOGPT_BASE_URL"
    supports_cancel: ClassVar[bool] = False
    api_hosts: ClassVar[tuple[str, ...]] = ("nano-gpt.com",)

    def auth_headers(self) -> dict[str, str]:
        return {"x-api-key": self.key} if self.key else {}

    def body(self, req: ShotRequest) -> dict[str, Any]:
        slug = req.vendor_model
        seconds = int(round(req.duration_s))
        body: dict[str, Any] = {
            "model": slug,
            "prompt": req.prompt,
            "duration": f"{seconds}s" if slug.startswith(_SECONDS_SUFFIX) else str(seconds),
        }
        if not (req.image and slug.startswith(_T2V_ONLY_ASPECT)):
            body["aspect_ratio"] = req.aspect_ratio
        if slug.startswith(_TAKES_RESOLUTION):
            body["resolution"] = req.resolution
        if req.negative_prompt:
            body["negative_prompt"] = req.negative_prompt
        if req.seed is not None:
            body["seed"] = req.seed
        if req.image is not None:
            if req.image.url:
                body["imageUrl"] = req.image.url
            else:
                data, _ = req.image.read()
                if len(data) > MAX_INLINE_IMAGE:
                    raise self.error(InvalidRequestError, (
                        f"{req.image.path} is {len(data)} bytes; NanoGPT takes inline images "
                        "up to 4 MB: host it and give its URL instead"))
                body["imageDataUrl"] = req.image.data_uri()
        info = find_model(self.name, req.model)
        body.update(info.params if info else {})
        body.update(req.params)
        return body

    async def submit(self, req: ShotRequest) -> Job:
        body = self.body(req)
        data = await self.call_json("POST", "/api/generate-video", stage="submit", json=body)
        run_id = data.get("runId") if isinstance(data, dict) else None
        if not run_id:
            raise self.unnamed("a runId", data)
        return Job(provider=self.name, job_id=str(run_id), data={
            "model": data.get("model") or body["model"],  # the poll needs the slug
            "cost": data.get("cost"),
            "payment_source": data.get("paymentSource"),
        })

    def _cost_usd(self, job: Job) -> float | None:
        cost = job.data.get("cost")
        if job.data.get("payment_source") == "USD" and isinstance(cost, (int, float)):
            return float(cost)
        return None

    async def poll(self, job: Job) -> Poll:
        resp = await self.call_json(
            "GET", "/api/generate-video/status", stage="poll",
            params={"runId": job.job_id, "modelSlug": job.data.get("model", "")},
        )
        data = resp.get("data") if isinstance(resp, dict) else None
        if not isinstance(data, dict):
            raise self.error(ProviderError, f"status answered {resp!r:.200}", job=job)
        state = _STATES.get(str(data.get("status", "")), "running")
        cost = self._cost_usd(job)
        if state == "succeeded":
            video = (data.get("output") or {}).get("video") or {}
            if video.get("url"):
                return Poll(state="succeeded", video_url=video["url"], cost_usd=cost, raw=data)
            return Poll(state="failed", cost_usd=cost, raw=data, error=self.error(
                JobFailedError, "COMPLETED without output.video.url", job=job))
        if state in ("failed", "canceled"):
            msg = str(data.get("userFriendlyError") or data.get("error")
                      or ("cancelled by the vendor" if state == "canceled" else "failed"))
            policy = data.get("isNSFWError") is True or _POLICY.search(str(data.get("error")))
            cls = ContentPolicyError if policy else JobFailedError
            return Poll(state=state, cost_usd=cost, raw=data,
                        error=self.error(cls, f"job {data.get('status')}: {msg}", job=job,
                                         vendor_message=msg))
        return Poll(state=state, raw=data)

    def classify(self, resp: httpx.Response, message: str) -> type[ProviderError]:
        if resp.status_code == 400 and _POLICY.search(message):
            return ContentPolicyError
        return super().classify(resp, message)
