"""Perf (withperf.pro) video generations API.

Protocol source: docs.withperf.pro "Video Generation" (retrieved 2026-11).
* POST {base}/v1/video/generations  {prompt, model, duration_seconds (number),
  resolution "720p"|"1080p", aspect_ratio}  -> 202 {id, status:"pending",
  estimated_cost_usd, perf:{...}}
* GET  {base}/v1/video/generations/{id} -> status pending|processing|complete|failed;
  `video_url` top level when complete, `perf.cost_usd` is the charge, `error_message`
  when failed, `progress_percent` / `estimated_remaining_seconds` while processing.
* Auth: `Authorization: Bearer pk_...`. Errors: {"error": {"type", "message"}}.

Where the seed is silent (UNCONFIRMED, conservative choices):
* No image-to-video field is documented: text-to-video only.
* No cancel endpoint: `supports_cancel = False`.
* Auth/credit/rate-limit error bodies are not shown: mapped by HTTP status
  (401/403 auth, 402 credit, 429 rate limit); content policy is recognised from
  the failed job's `error_message` ("Content policy violation: ...").
* Failed jobs carry no `perf.cost_usd`, so they are treated as not charged.
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

_POLICY = re.compile(r"content policy|prohibited|moderat|safety|nsfw", re.I)
_CREDIT = re.compile(r"insufficient|balance|credit|quota", re.I)

_STATES = {"pending": "queued", "processing": "running", "complete": "succeeded",
           "failed": "failed"}


class PerfProvider(Provider):
    name: ClassVar[str] = "perf"
    key_env: ClassVar[str | None] = "PERF_API_KEY"
    default_base_url: ClassVar[str] = "https://api.withperf.pro"
    base_url_env: ClassVar[str | None] = "STORYREEL_PERF_BASE_URL"
    supports_cancel: ClassVar[bool] = False
    api_hosts: ClassVar[tuple[str, ...]] = ("api.withperf.pro",)

    def body(self, req: ShotRequest) -> dict[str, Any]:
        if req.image is not None:
            raise self.error(InvalidRequestError, "Perf documents no image-to-video input")
        info = find_model(self.name, req.model)
        body: dict[str, Any] = {
            "prompt": req.prompt,
            "model": req.vendor_model,
            # a JSON number; whole seconds are what every example shows
            "duration_seconds": int(req.duration_s)
            if float(req.duration_s).is_integer() else req.duration_s,
            "resolution": req.resolution,
            "aspect_ratio": req.aspect_ratio,
        }
        body.update(info.params if info else {})
        body.update(req.params)
        return body

    async def submit(self, req: ShotRequest) -> Job:
        data = await self.call_json("POST", "/v1/video/generations", stage="submit",
                                    json=self.body(req))
        job_id = data.get("id") if isinstance(data, dict) else None
        if not job_id:
            raise self.unnamed("a job id", data)
        return Job(provider=self.name, job_id=str(job_id), data={
            "model": data.get("model", req.vendor_model),
            "estimated_cost_usd": data.get("estimated_cost_usd"),
        })

    async def poll(self, job: Job) -> Poll:
        data = await self.call_json("GET", f"/v1/video/generations/{segment(job.job_id)}",
                                    stage="poll")
        if not isinstance(data, dict):
            raise self.error(ProviderError, f"status answered {data!r:.200}", job=job)
        status = str(data.get("status", ""))
        state = _STATES.get(status)
        perf = data.get("perf") if isinstance(data.get("perf"), dict) else {}
        cost = perf.get("cost_usd")
        cost_usd = float(cost) if isinstance(cost, (int, float)) else None
        if state is None:  # unknown status: keep polling rather than guess an outcome
            return Poll(state="running", raw=data)
        if state == "failed":
            msg = str(data.get("error_message") or "video generation failed")
            cls = ContentPolicyError if _POLICY.search(msg) else JobFailedError
            return Poll(state="failed", cost_usd=cost_usd, raw=data,
                        error=self.error(cls, f"job failed: {msg}", job=job,
                                         vendor_message=msg))
        progress = data.get("progress_percent")
        remaining = data.get("estimated_remaining_seconds")
        hint = None
        if state == "running" and isinstance(remaining, (int, float)) and remaining > 0:
            # the vendor's estimate, capped so a long guess never stalls polling
            hint = min(float(remaining), self.poll_settings.max)
        return Poll(
            state=state, raw=data, cost_usd=cost_usd if state == "succeeded" else None,
            video_url=data.get("video_url") if state == "succeeded" else None,
            progress=float(progress) / 100 if isinstance(progress, (int, float)) else None,
            poll_after=hint,
        )

    def classify(self, resp: httpx.Response, message: str) -> type[ProviderError]:
        if resp.status_code == 400 and _POLICY.search(message):
            return ContentPolicyError
        if resp.status_code in (400, 403) and _CREDIT.search(message):
            return InsufficientCreditError
        return super().classify(resp, message)
