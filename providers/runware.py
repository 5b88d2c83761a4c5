"""Runware video inference over REST.

Protocol sources: Runware/runware-python `runware/transport/rest.py`,
`runware/client.py` (`_poll_rest`, `_is_terminal`, `_AsyncCollector`),
`runware/errors.py` (`derive_code`); runware.ai/docs/platform/{task-polling,errors}.
* One endpoint, `POST https://api.runware.ai/v1`, `Authorization: Bearer <key>`,
  body = a JSON array of task objects.
* Submit: `{"taskType":"videoInference","taskUUID":<our uuid4>,"positivePrompt",
  "model":<AIR>,"duration","width","height","deliveryMethod":"async",
  "includeCost":true,"numberResults":1,...}` (+ `frameImages:[{inputImage,
  frame:"first"}]` for image-to-video, `seed`, `negativePrompt`) -> an ack
  `{"data":[{"taskType":"videoInference","taskUUID"}]}`.
* Poll: `[{"taskType":"getResponse","taskUUID"}]` -> `{"data":[{status
  "processing"|"success"|"error", videoUUID, videoURL, cost, seed}]}`; failures come
  as `{"errors":[{code, message, taskUUID, ...}]}` or a data item with
  `status:"error"` and an `error` object.
* Errors: `{"errors":[{code, message, parameter, taskType, taskUUID}]}` with HTTP
  400/401/402/403/429/5xx. Codes are classified as the SDK does (`derive_code`):
  safety codes -> content policy, "...Credits/Balance/Quota" -> credit, "...ApiKey"
  -> auth.

We choose the taskUUID, so it is the job id even when the submit's answer is
lost: UnconfirmedSubmitError carries it, and a person (or the journal) can poll
it instead of paying again. `cost` (USD) is the actual charge.

UNCONFIRMED: no cancel task for videoInference is documented (`supports_cancel =
False`); the HTTP status of a getResponse that reports a failed task (200 is
assumed; a 4xx is mapped like any error); whether failed generations are billed
(treated as not billed: no cost on error items).
"""

from __future__ import annotations

import re
import uuid
from typing import Any, ClassVar

import httpx

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
    RateLimitedError,
    TransientError,
    UnconfirmedSubmitError,
)
from providers.types import Job, Poll, ShotRequest

_SAFETY = {"contentPolicyViolation", "providerContentPolicyViolation",
           "sensitiveContentDetected", "unsafeContentDetected", "nsfwContentDetected",
           "promptBlocked", "imageBlocked", "moderationFailed"}
_CREDIT = re.compile(r"Credits|Balance|Quota|paymentRequired|quotaExceeded")
_STATES = {"pending": "queued", "processing": "running", "success": "succeeded",
           "error": "failed"}


def class_for_code(code: str) -> type[ProviderError] | None:
    """The exception class a Runware error code names, or None if it names none."""
    if code in _SAFETY or re.search(r"ContentPolicy|nsfw|NSFW|Moderation", code):
        return ContentPolicyError
    if _CREDIT.search(code):
        return InsufficientCreditError
    if "RateLimit" in code or code == "rateLimitExceeded":
        return RateLimitedError
    if "ApiKey" in code or code in ("unauthorized", "forbidden", "authenticationFailed"):
        return AuthError
    if code.endswith("NotFound"):
        return NotFoundError
    return None


def _first_error(body: Any) -> dict[str, Any]:
    errs = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errs, list) and errs and isinstance(errs[0], dict):
        return errs[0]
    err = body.get("error") if isinstance(body, dict) else None
    return err if isinstance(err, dict) else {}


class RunwareProvider(Provider):
    name: ClassVar[str] = "runware"
    key_env: ClassVar[str | None] = "RUNWARE_API_KEY"
    default_base_url: ClassVar[str] = "https://api.runware.ai/v1"
    base_url_env: ClassVar[str | None] = "STORYREEL_RUNWARE_BASE_URL"
    supports_cancel: ClassVar[bool] = False
    names_its_jobs: ClassVar[bool] = True  # taskUUID is ours
    api_hosts: ClassVar[tuple[str, ...]] = ("api.runware.ai",)

    def task(self, req: ShotRequest, task_uuid: str) -> dict[str, Any]:
        duration: float | int = req.duration_s
        if float(duration).is_integer():
            duration = int(duration)
        task: dict[str, Any] = {
            "taskType": "videoInference",
            "taskUUID": task_uuid,
            "positivePrompt": req.prompt,
            "model": req.vendor_model,
            "duration": duration,
            "width": req.width,
            "height": req.height,
            "deliveryMethod": "async",
            "includeCost": True,
            "numberResults": 1,
        }
        if req.negative_prompt:
            task["negativePrompt"] = req.negative_prompt
        if req.seed is not None:
            task["seed"] = req.seed
        if req.image is not None:
            # inputImage takes a URL, a data URI, base64 or an uploaded image UUID
            task["frameImages"] = [{"inputImage": req.image.data_uri(), "frame": "first"}]
        info = find_model(self.name, req.model)
        task.update(info.params if info else {})
        task.update(req.params)
        return task

    async def submit(self, req: ShotRequest) -> Job:
        task_uuid = str(uuid.uuid4())
        try:
            body = await self.call_json("POST", self.base_url, stage="submit",
                                        json=[self.task(req, task_uuid)])
        except (UnconfirmedSubmitError, TransientError) as exc:
            # no answer, or a 5xx from the app after it may have taken the task: the job
            # may exist under our id, so name it (poll it, never resend it)
            exc.at(job_id=task_uuid)
            raise
        err = _first_error(body)
        if err:  # a 200 that still refuses the task: nothing was accepted
            code, msg = str(err.get("code", "")), str(err.get("message", "task refused"))
            cls = class_for_code(code) or InvalidRequestError
            raise self.error(cls, f"submit refused: {msg} ({code})", vendor_message=msg)
        return Job(provider=self.name, job_id=task_uuid, data={"model": req.vendor_model})

    async def poll(self, job: Job) -> Poll:
        body = await self.call_json("POST", self.base_url, stage="poll",
                                    json=[{"taskType": "getResponse", "taskUUID": job.job_id}])
        err = _first_error(body)
        if err and err.get("taskUUID") in (None, job.job_id):
            return self._failed(job, err, body)
        items = body.get("data") if isinstance(body, dict) else None
        mine = [i for i in items or [] if isinstance(i, dict)
                and i.get("taskUUID", job.job_id) == job.job_id]
        if not mine:
            return Poll(state="queued", raw=body if isinstance(body, dict) else {})
        item = mine[-1]
        status = str(item.get("status", ""))
        if status == "error":
            inner = item.get("error") if isinstance(item.get("error"), dict) else item
            return self._failed(job, inner, item)
        if status == "success" or item.get("videoURL"):
            cost = item.get("cost")
            cost_usd = float(cost) if isinstance(cost, (int, float)) else None
            if not item.get("videoURL"):
                return Poll(state="failed", cost_usd=cost_usd, raw=item, error=self.error(
                    JobFailedError, "success without a videoURL", job=job))
            return Poll(state="succeeded", video_url=item["videoURL"], cost_usd=cost_usd,
                        raw=item)
        progress = item.get("progress")
        return Poll(state=_STATES.get(status, "running"), raw=item,
                    progress=float(progress) / 100 if isinstance(progress, (int, float))
                    else None)

    def _failed(self, job: Job, err: dict[str, Any], raw: Any) -> Poll:
        code, msg = str(err.get("code", "")), str(err.get("message", "generation failed"))
        cls = class_for_code(code)
        if cls in (AuthError, InsufficientCreditError, RateLimitedError):
            # an account problem reported in a 200, not the job's own outcome
            raise self.error(cls, f"poll refused: {msg} ({code})", job=job, vendor_message=msg)
        cls = cls or JobFailedError
        return Poll(state="failed", raw=raw if isinstance(raw, dict) else {},
                    error=self.error(cls, f"job failed: {msg} ({code})", job=job,
                                     vendor_message=msg))

    def error_message(self, body: Any, resp: httpx.Response) -> str:
        err = _first_error(body)
        if err.get("message"):
            code = err.get("code")
            return f"{err['message']} ({code})" if code else str(err["message"])
        return super().error_message(body, resp)

    def classify(self, resp: httpx.Response, message: str) -> type[ProviderError]:
        try:
            code = str(_first_error(resp.json()).get("code", ""))
        except ValueError:
            code = ""
        return class_for_code(code) or super().classify(resp, message)
