"""Replicate predictions API adapter.

Protocol sources: replicate/replicate-python (`client.py`, `prediction.py`,
`model.py`, `file.py`, `exceptions.py`), replicate.com/docs/topics/predictions
(lifecycle, input-files, rate-limits), changelog 2025-10-16 (prediction deadlines),
replicate.com/docs/reference/error-codes (E005).

* Submit: official models `POST /v1/models/{owner}/{name}/predictions {"input": {...}}`;
  a pinned version (`owner/name:<version id>`) goes to `POST /v1/predictions` with
  `{"version": "<version id>", "input": {...}}` (what the SDK sends). Every create
  carries `Cancel-After: <our job deadline>` so Replicate stops a job we stopped
  waiting for, even if this process died (aborted runs are not charged).
* Input fields are per model: `SHAPES` says which of our fields each supported model
  takes and what it calls its first-frame image (`image`, `start_image`,
  `first_frame_image`) and, where it has one, its reference-image list (veo-3.1's
  `reference_images`). Durations are integers. Local images go inline as `data:` URIs up
  to 256 KiB (Replicate's API schema: data URLs only for small files; the input-files
  guide says below 1 MB) and through the files API (`POST /v1/files`, multipart field
  `content`, then `urls.get`, as replicate-python's encode_json does) above it, once per
  image per run.
* Poll `GET /v1/predictions/{id}`: starting -> queued, processing -> running,
  succeeded, failed (`(E005)` / "flagged as sensitive" -> ContentPolicyError),
  canceled, aborted (deadline passed before it started; not charged) -> canceled.
  Output is a URI string or a list of them; http URLs are accepted (no https check).
  Progress comes from the tqdm percentage in `logs`, as the SDK parses it.
* Errors are RFC 7807 problem details `{type,title,status,detail}`; 402 is billing;
  429 may carry `retry_after` in the body (low-credit throttle) instead of a header.
* Cost: Replicate reports none in the prediction (only `metrics.predict_time`), so
  `cost_usd` stays None and the catalog estimate is used.
UNCONFIRMED: the exact Cancel-After grammar beyond "1m" (we send seconds, e.g. "1800s");
whether canceled official-model runs are charged (the changelog says public models
are charged for `canceled`, never for `aborted`).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx

from providers import http
from providers.base import Provider, segment
from providers.catalog import find_model
from providers.errors import ContentPolicyError, JobFailedError, NotFoundError, ProviderError
from providers.types import Clip, Job, Poll, ShotRequest

_STATES = {"starting": "queued", "processing": "running", "succeeded": "succeeded",
           "failed": "failed", "canceled": "canceled", "aborted": "canceled"}
_POLICY = re.compile(r"\(E005\)|\bE005\b|flagged as sensitive", re.IGNORECASE)
_PROGRESS = re.compile(r"(\d{1,3})%\|")
_RESETS_IN = re.compile(r"resets in ~?(\d+(?:\.\d+)?)\s*s")


@dataclass(frozen=True)
class InputShape:
    """What a model's input schema calls the first frame, and which optional fields it has."""

    image: str = "image"
    fields: tuple[str, ...] = ("duration", "aspect_ratio", "resolution", "negative_prompt", "seed")
    references: str | None = None  # a list of reference image URIs, where the model has one


_VEO = InputShape()
_SEEDANCE = InputShape(fields=("duration", "aspect_ratio", "resolution", "seed"))
SHAPES: dict[str, InputShape] = {
    # replicate.com/google/veo-3.1/api: reference_images, 1 to 3 URIs (16:9, 8 s only)
    "google/veo-3.1": InputShape(references="reference_images"),
    "google/veo-3.1-fast": _VEO,
    "google/veo-3-fast": _VEO,
    "kwaivgi/kling-v2.5-turbo-pro": InputShape(
        "start_image", ("duration", "aspect_ratio", "negative_prompt")),
    "minimax/hailuo-02": InputShape("first_frame_image", ("duration", "resolution")),
    "bytedance/seedance-1-pro": _SEEDANCE,
    "bytedance/seedance-1-lite": _SEEDANCE,
}
# unknown models get the common fields; spec `params` can add or override any input
DEFAULT_SHAPE = InputShape(fields=("duration", "aspect_ratio", "negative_prompt", "seed"))


class ReplicateProvider(Provider):
    name: ClassVar[str] = "replicate"
    key_env: ClassVar[str | None] = "REPLICATE_API_TOKEN"
    default_base_url: ClassVar[str] = "https://api.replicate.com"
    base_url_env: ClassVar[str | None] = "STORYREEL_REPLICATE_BASE_URL"
    supports_cancel: ClassVar[bool] = True
    api_hosts: ClassVar[tuple[str, ...]] = ("api.replicate.com",)

    # -- submit --------------------------------------------------------------------------

    async def submit(self, req: ShotRequest) -> Job:
        model, _, version = req.vendor_model.partition(":")
        shape = SHAPES.get(model, DEFAULT_SHAPE)
        inputs = await self.build_input(req, shape)
        headers = {"Cancel-After": f"{max(1, round(self.poll_settings.deadline))}s"}
        if version:
            url, body = "v1/predictions", {"version": version, "input": inputs}
        else:
            url, body = f"v1/models/{model}/predictions", {"input": inputs}
        pred = await self.call_json("POST", url, stage="submit", json=body, headers=headers)
        if not isinstance(pred, dict) or not pred.get("id"):
            raise self.unnamed("a prediction id", pred)
        return Job(provider=self.name, job_id=str(pred["id"]),
                   data={"model": model, "version": version or None})

    async def build_input(self, req: ShotRequest, shape: InputShape) -> dict[str, Any]:
        ours: dict[str, Any] = {
            "duration": int(round(req.duration_s)),
            "aspect_ratio": req.aspect_ratio,
            "resolution": req.resolution,
            "negative_prompt": req.negative_prompt,
            "seed": req.seed,
        }
        inputs: dict[str, Any] = {"prompt": req.prompt}
        inputs.update({k: ours[k] for k in shape.fields if ours.get(k) is not None})
        if req.image is not None:
            inputs[shape.image] = await self.image_ref(req.image)
        if req.references and shape.references:
            inputs[shape.references] = [await self.image_ref(r) for r in req.references]
        info = find_model(self.name, req.model)
        if info is not None:
            inputs.update(info.params)
        inputs.update(req.params)
        return inputs

    async def upload_image(self, data: bytes, mime: str, name: str) -> tuple[str, float | None]:
        """`POST /v1/files` (multipart field `content`) -> File; requests name it by
        `urls.get` (what the SDK's encode_json passes). Files expire: `expires_at` says when."""
        # free and harmless to repeat (a stray upload just expires): idempotent retry rule
        meta = await self.call_json("POST", "v1/files", stage="poll",
                                    files={"content": (name, data, mime)})
        url = (meta.get("urls") or {}).get("get") if isinstance(meta, dict) else None
        if not isinstance(url, str) or not url:
            raise self.error(ProviderError, f"file upload answered without urls.get: {meta!r:.200}")
        return url, _seconds_left(meta.get("expires_at"))

    # -- poll / fetch / cancel -----------------------------------------------------------

    async def poll(self, job: Job) -> Poll:
        pred = await self.call_json("GET", f"v1/predictions/{segment(job.job_id)}",
                                    stage="poll")
        if not isinstance(pred, dict):
            raise self.error(ProviderError, f"poll answered {pred!r:.200}", job=job)
        status = str(pred.get("status", ""))
        state = _STATES.get(status)
        if state is None:
            raise self.error(ProviderError, f"unknown prediction status {status!r}", job=job)
        raw = {k: pred.get(k) for k in ("status", "error", "metrics", "data_removed")}
        if state == "succeeded":
            return Poll(state="succeeded", video_url=_first_uri(pred.get("output")),
                        progress=1.0, raw=raw)
        if state == "failed":
            text = str(pred.get("error") or "prediction failed without an error message")
            cls = ContentPolicyError if _POLICY.search(text) else JobFailedError
            return Poll(state="failed", raw=raw, error=self.error(
                cls, f"prediction failed: {text}", job=job, vendor_message=text))
        if state == "canceled":
            why = ("aborted: its deadline passed before it started (not charged)"
                   if status == "aborted" else "canceled")
            return Poll(state="canceled", raw=raw,
                        error=self.error(JobFailedError, f"prediction {why}", job=job))
        return Poll(state=state, progress=_progress(pred.get("logs")), raw=raw)

    async def fetch(self, job: Job, done: Poll, dest: Path) -> Clip:
        if not done.video_url:
            if done.raw.get("data_removed"):
                raise self.error(NotFoundError, "output was removed (Replicate keeps API "
                                 "outputs for one hour)", job=job)
            raise self.error(ProviderError, "prediction succeeded but has no output URL", job=job)
        # the key goes only to Replicate's own API host (files API URLs), never to a CDN
        same_host = httpx.URL(done.video_url).host == httpx.URL(self.base_url).host
        headers = self.auth_headers() if same_host and "/v1/files/" in done.video_url else None
        with self.about(job):
            await self.download(done.video_url, dest, headers=headers)
        return Clip(path=dest, job_id=job.job_id, cost_usd=done.cost_usd)

    async def cancel(self, job: Job) -> bool:
        with self.about(job):
            pred = await self.call_json("POST", f"v1/predictions/{segment(job.job_id)}/cancel",
                                        stage="cancel")
        return isinstance(pred, dict) and pred.get("status") in ("canceled", "aborted")

    # -- errors --------------------------------------------------------------------------

    def error_message(self, body: Any, resp: httpx.Response) -> str:
        if isinstance(body, dict) and (body.get("title") or body.get("detail")):
            title, detail = str(body.get("title") or ""), str(body.get("detail") or "")
            if title and detail and title.lower() not in detail.lower():
                return f"{title}: {detail}"
            return detail or title
        return super().error_message(body, resp)

    def map_error(self, resp: httpx.Response, stage: http.Stage) -> ProviderError:
        err = super().map_error(resp, stage)
        if err.retry_after is None and resp.status_code == 429:
            err.retry_after = _body_retry_after(resp)
        return err


def _seconds_left(expires_at: Any) -> float | None:
    """Seconds until an ISO 8601 `expires_at`; an hour when absent or unreadable (Replicate
    removes API inputs and outputs after an hour)."""
    if isinstance(expires_at, str) and expires_at:
        try:
            when = dt.datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
            if when.tzinfo is not None:
                return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())
        except ValueError:
            pass
    return 3600.0


def _first_uri(output: Any) -> str | None:
    """Output is a URI string, a list of them, or (some models) a dict holding one."""
    if isinstance(output, str):
        return output or None
    if isinstance(output, list):
        return next((u for u in (_first_uri(o) for o in output) if u), None)
    if isinstance(output, dict):
        for key in ("video", "url", "output"):
            if key in output:
                return _first_uri(output[key])
    return None


def _progress(logs: Any) -> float | None:
    found = _PROGRESS.findall(logs) if isinstance(logs, str) else []
    return min(100, int(found[-1])) / 100 if found else None


def _body_retry_after(resp: httpx.Response) -> float | None:
    """Low-credit throttles carry `retry_after` in the body; plain ones say "resets in ~30s"."""
    try:
        body = resp.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    value = body.get("retry_after")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _RESETS_IN.search(str(body.get("detail") or ""))
    return float(match.group(1)) if match else None
