"""Luma Dream Machine API adapter.

Protocol sources: lumalabs/lumaai-python (`types/generations/video_create_params.py`,
`types/generation.py`, `_client.py`), lumalabs/lumaai-api `openapi.yaml`,
docs.lumalabs.ai/docs/video-generation and changelog/callbacks-and-credits-balance.

* Submit `POST /generations/video` (201 + Generation): `model`, `prompt`,
  `aspect_ratio`, `duration` as a string ("5s"/"9s"), `resolution`
  ("540p"/"720p"/"1080p"/"4k"), `generation_type: "video"`; optional `loop`,
  `concepts`, `callback_url` come from spec `params`. No seed or negative prompt
  exists for video, so those are not sent.
* Image to video: `keyframes.frame0 = {"type": "image", "url": ...}`. Luma takes image
  URLs only ("upload and use your own cdn image urls, currently this is the only way
  to pass an image", docs.lumalabs.ai), so a local image goes through the run's
  S3-compatible upload store (providers/upload_store.py) as a presigned GET URL. Without
  a store it is refused with InvalidRequestError before anything is sent (nothing is
  paid); planning refuses it earlier (upload_store.URL_ONLY_PROVIDERS). Luma's video API
  has no reference-image field (only `concepts`), so ShotRequest.references is not sent.
* Poll `GET /generations/{id}`: queued -> queued, dreaming -> running, completed ->
  succeeded (`assets.video`), failed -> failed with `failure_reason`; moderation
  failures ("Advanced moderation failed") become ContentPolicyError.
* Errors are `{"detail": "..."}`. The statuses Luma uses for credit exhaustion and
  moderation are UNCONFIRMED, so the detail text decides: "credit"/"balance" ->
  InsufficientCreditError, "moderation" -> ContentPolicyError.
* Cancel: Luma has none. `DELETE /generations/{id}` deletes the record, and whether
  it stops (or un-bills) a running job is UNCONFIRMED; using it would let the ledger
  release money Luma may still charge and would destroy the record we poll on a
  resume. So `cancel()` returns False and `supports_cancel` is False.
* Cost: not reported per generation (only the account balance at `GET /credits`),
  so `cost_usd` stays None and the catalog estimate is used.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import httpx

from providers import http
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
from providers.upload_store import HOW_TO

_STATES = {"queued": "queued", "dreaming": "running", "completed": "succeeded", "failed": "failed"}
_POLICY = re.compile(r"moderation|content policy|nsfw|unsafe|safety", re.IGNORECASE)
_CREDIT = re.compile(r"credit|balance|billing|payment", re.IGNORECASE)


class LumaProvider(Provider):
    name: ClassVar[str] = "luma"
    key_env: ClassVar[str | None] = "LUMAAI_API_KEY"
    default_base_url: ClassVar[str] = "https://api.lumalabs.ai/dream-machine/v1"
    base_url_env: ClassVar[str | None] = "STORYREEL_LUMA_BASE_URL"
    supports_cancel: ClassVar[bool] = False
    api_hosts: ClassVar[tuple[str, ...]] = ("api.lumalabs.ai",)
    accepts_local_images: ClassVar[bool] = False  # keyframes take URLs only

    async def submit(self, req: ShotRequest) -> Job:
        body = await self.build_body(req)
        gen = await self.call_json("POST", "generations/video", stage="submit", json=body)
        if not isinstance(gen, dict) or not gen.get("id"):
            raise self.unnamed("a generation id", gen)
        return Job(provider=self.name, job_id=str(gen["id"]), data={"model": req.vendor_model})

    async def build_body(self, req: ShotRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "generation_type": "video",
            "model": req.vendor_model,
            "prompt": req.prompt,
            "aspect_ratio": req.aspect_ratio,
            "duration": f"{req.duration_s:g}s",
            "resolution": req.resolution,
        }
        if req.image is not None:
            if not req.image.url and not self.uses_store():
                raise self.error(
                    InvalidRequestError,
                    "Luma accepts images only as URLs (keyframes.frame0.url), not local "
                    f"files like {req.image.path}: {HOW_TO}",
                    shot_id=req.shot_id,
                )
            body["keyframes"] = {"frame0": {"type": "image",
                                            "url": await self.image_ref(req.image)}}
        info = find_model(self.name, req.model)
        if info is not None:
            body.update(info.params)
        body.update(req.params)
        return body

    async def poll(self, job: Job) -> Poll:
        gen = await self.call_json("GET", f"generations/{segment(job.job_id)}", stage="poll")
        if not isinstance(gen, dict):
            raise self.error(ProviderError, f"poll answered {gen!r:.200}", job=job)
        vendor_state = str(gen.get("state", ""))
        state = _STATES.get(vendor_state)
        if state is None:
            raise self.error(ProviderError, f"unknown generation state {vendor_state!r}", job=job)
        raw = {k: gen.get(k) for k in ("state", "failure_reason", "model")}
        if state == "succeeded":
            video = (gen.get("assets") or {}).get("video")
            return Poll(state="succeeded", video_url=video or None, progress=1.0, raw=raw)
        if state == "failed":
            reason = str(gen.get("failure_reason") or "generation failed without a reason")
            cls = ContentPolicyError if _POLICY.search(reason) else JobFailedError
            return Poll(state="failed", raw=raw, error=self.error(
                cls, f"generation failed: {reason}", job=job, vendor_message=reason))
        return Poll(state=state, raw=raw)

    async def cancel(self, job: Job) -> bool:
        return False  # no cancel endpoint; DELETE only removes the record (see docstring)

    def error_message(self, body: Any, resp: httpx.Response) -> str:
        if isinstance(body, dict) and isinstance(body.get("detail"), list):
            # FastAPI-style validation list: [{"loc": [...], "msg": "..."}]
            items = [f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg', '')}"
                     for d in body["detail"] if isinstance(d, dict)]
            return "; ".join(items) or str(body["detail"])[:300]
        return super().error_message(body, resp)

    def classify(self, resp: httpx.Response, message: str) -> type[ProviderError]:
        if resp.status_code in (400, 402, 403, 422) and _CREDIT.search(message):
            return InsufficientCreditError
        if resp.status_code in (400, 422) and _POLICY.search(message):
            return ContentPolicyError
        return http.error_class_for_status(resp.status_code)
