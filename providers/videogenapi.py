"""VideoGenAPI (videogenapi.com).

Protocol source: videogenapi.com API documentation (retrieved 2026-11).
* Base https://videogenapi.com/api; `Authorization: Bearer lt_...`.
* POST /v1/generate {model, prompt (max 1000 chars), image_url (switches to
  image-to-video), duration (integer), resolution "480p"|"720p"|"1080p"|"4K"
  (the catalog says "4k"), aspect_ratio "16:9"|"4:3"|"1:1"|"9:21" (text-to-video only), seed, camera_fixed}
  -> {success, generation_id, status:"pending", status_url:"/v1/status/<id>", usage}
* GET /v1/status/{generation_id} -> status pending|in_queue|in_progress|completed|
  failed; `video_url` when completed, public (fetched without the key).
* HTTP errors 400/401/404/429/500; 429 means a rate limit *or* the monthly
  usage limit.

Traps handled here: image input is a URL only (no upload or base64 field is
documented), so a local reference image is refused before submit; aspect_ratio
is not sent with an image; "4K" is upper case; prompts over 1000 characters are
refused before submit; a 429 naming the monthly limit is a quota error, not a
retryable rate limit.

Where the seed is silent (UNCONFIRMED, conservative choices): the error body
shape (read from `error`/`message`), the failed job's error field (read from
`error`/`error_message`/`message`), cost (none reported: cost_usd stays None),
and cancel (none documented: `supports_cancel = False`).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import httpx

from providers.base import Provider, segment
from providers.catalog import find_model
from providers.errors import (
    ContentPolicyError,
    InsufficientCreditError,
    InvalidRequestError,
    JobFailedError,
    ProviderError,
)
from providers.types import Job, Poll, ShotRequest

MAX_PROMPT = 1000
_POLICY = re.compile(r"content policy|prohibited|moderat|safety|nsfw|inappropriate", re.I)
_QUOTA = re.compile(r"monthly|usage limit|quota", re.I)
_STATES = {"pending": "queued", "in_queue": "queued", "in_progress": "running",
           "completed": "succeeded", "failed": "failed"}


class VideoGenAPIProvider(Provider):
    name: ClassVar[str] = "videogenapi"
    key_env: ClassVar[str | None] = "VIDEOGENAPI_API_KEY"
    default_base_url: ClassVar[str] = "https://videogenapi.com/api"
    base_url_env: ClassVar[str | None] = "STORYREEL_VIDEOGENAPI_BASE_URL"
    supports_cancel: ClassVar[bool] = False
    api_hosts: ClassVar[tuple[str, ...]] = ("videogenapi.com",)

    def body(self, req: ShotRequest) -> dict[str, Any]:
        if len(req.prompt) > MAX_PROMPT:
            raise self.error(InvalidRequestError,
                             f"prompt is {len(req.prompt)} characters; VideoGenAPI takes "
                             f"at most {MAX_PROMPT}")
        body: dict[str, Any] = {
            "model": req.vendor_model,
            "prompt": req.prompt,
            "duration": int(round(req.duration_s)),
            "resolution": "4K" if req.resolution.lower() == "4k" else req.resolution,
        }
        if req.image is None:
            body["aspect_ratio"] = req.aspect_ratio
        elif req.image.url:
            body["image_url"] = req.image.url
        else:
            raise self.error(InvalidRequestError,
                             f"VideoGenAPI takes reference images only as public URLs; "
                             f"host {req.image.path} and give its URL")
        if req.seed is not None:
            body["seed"] = req.seed
        info = find_model(self.name, req.model)
        body.update(info.params if info else {})
        body.update(req.params)
        return body

    async def submit(self, req: ShotRequest) -> Job:
        data = await self.call_json("POST", "/v1/generate", stage="submit", json=self.body(req))
        gen_id = data.get("generation_id") if isinstance(data, dict) else None
        if not gen_id:
            raise self.unnamed("a generation_id", data)
        # the answer's status_url is kept for the record only: the documented path is built
        # from the id, so an answer naming another host or path cannot redirect the polls
        return Job(provider=self.name, job_id=str(gen_id),
                   data={"status_url": str(data.get("status_url") or "")})

    async def poll(self, job: Job) -> Poll:
        data = await self.call_json("GET", f"/v1/status/{segment(job.job_id)}", stage="poll")
        if not isinstance(data, dict):
            raise self.error(ProviderError, f"status answered {data!r:.200}", job=job)
        state = _STATES.get(str(data.get("status", "")), "running")
        if state == "succeeded":
            if data.get("video_url"):
                return Poll(state="succeeded", video_url=data["video_url"], raw=data)
            return Poll(state="failed", raw=data, error=self.error(
                JobFailedError, "completed without a video_url", job=job))
        if state == "failed":
            msg = str(data.get("error") or data.get("error_message") or data.get("message")
                      or "video generation failed")
            cls = ContentPolicyError if _POLICY.search(msg) else JobFailedError
            return Poll(state="failed", raw=data, error=self.error(
                cls, f"job failed: {msg}", job=job, vendor_message=msg))
        return Poll(state=state, raw=data)

    def classify(self, resp: httpx.Response, message: str) -> type[ProviderError]:
        if resp.status_code == 429 and _QUOTA.search(message):
            return InsufficientCreditError
        if resp.status_code == 400 and _POLICY.search(message):
            return ContentPolicyError
        return super().classify(resp, message)
