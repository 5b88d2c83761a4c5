"""Runway API adapter: POST /v1/text_to_video | /v1/image_to_video, poll GET /v1/tasks/{id}.

Protocol source: runwayml/sdk-python (`_client.py` default headers,
`types/text_to_video_create_params.py`, `types/image_to_video_create_params.py`,
`types/task_retrieve_response.py`, `resources/tasks.py`) and docs.dev.runwayml.com
(errors, assets/inputs, api-details/task-failures); runwayml/sdk-node#28 (the credits message).

* Auth: `Authorization: Bearer <key>` plus `X-Runway-Version: 2024-11-06` on every call.
* Bodies are camelCase: `promptText`, `promptImage`, `ratio` as "W:H" pixels, `duration` int.
  `seed` only where the SDK types list it (gen4.5, gen4_turbo); `negativePrompt` only on Veo
  text-to-video. Local images go inline as `data:` URIs up to 256 KiB (Runway takes them up
  to 5 MB, docs.dev.runwayml.com/assets/inputs) and above that through an ephemeral upload
  (sdk-python `resources/uploads.py`): `POST /v1/uploads {filename, type: "ephemeral"}` ->
  {uploadUrl, fields, runwayUri}, then a presigned multipart POST of `fields` plus the file
  (field `file`, no key) to uploadUrl; requests name the image by `runwayUri`.
* References (character images): seedance2* take `references: [{uri}]` (up to 9) on
  text_to_video (`types/text_to_video_create_params.py`); on image_to_video a reference is a
  promptImage without `position`, which the SDK says cannot be mixed with a first frame.
* Tasks: PENDING / THROTTLED (over the org's concurrency, queued) / RUNNING (`progress`) /
  SUCCEEDED (`output[]`) / FAILED (`failure`, `failureCode`) / CANCELLED. `SAFETY.*` failure
  codes are moderation ("should not retry"). Finished tasks carry `cost.credits`
  (1 credit = $0.01): the actual cost for the report.
* Output URLs expire (24-48 h); re-GETting the task gives fresh ones, so `fetch` re-polls once
  when the download answers 403/404.
* DELETE /v1/tasks/{id} cancels a queued/running task but *deletes* a finished one.
UNCONFIRMED: the HTTP status of "You do not have enough credits" (matched on its text); whether
FAILED tasks are charged (the catalog says not).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from providers import http
from providers.base import Provider, segment
from providers.catalog import find_model
from providers.errors import (
    ContentPolicyError,
    InsufficientCreditError,
    InvalidRequestError,
    JobFailedError,
    NotFoundError,
    ProviderError,
)
from providers.types import Clip, Job, JobState, Poll, ShotRequest

API_VERSION = "2024-11-06"
UPLOAD_MAX = 200 * 1024 * 1024  # ephemeral uploads (docs.dev.runwayml.com/assets/inputs)
UPLOAD_TTL_S = 3600.0  # ephemeral uploads expire "after a period of time": assume an hour
# models with a `references` list on text_to_video (the SDK's Seedance2* params)
REFERENCE_MODELS = {"seedance2", "seedance2_fast", "seedance2_mini"}

# (aspect, resolution) -> Runway's "W:H" pixel ratio
RATIOS: dict[tuple[str, str], str] = {
    ("16:9", "720p"): "1280:720",
    ("9:16", "720p"): "720:1280",
    ("16:9", "1080p"): "1920:1080",
    ("9:16", "1080p"): "1080:1920",
    ("4:3", "720p"): "1104:832",
    ("3:4", "720p"): "832:1104",
    ("1:1", "720p"): "960:960",
    ("21:9", "720p"): "1584:672",
}
SEED_MODELS = {"gen4.5", "gen4_turbo"}
NEGATIVE_PROMPT_MODELS = {"veo3.1", "veo3.1_fast", "veo3"}  # text_to_video only

_STATES: dict[str, JobState] = {
    "PENDING": "queued",
    "THROTTLED": "queued",
    "RUNNING": "running",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "CANCELLED": "canceled",
}


def runway_ratio(aspect: str, resolution: str) -> str:
    ratio = RATIOS.get((aspect, resolution)) or RATIOS.get((aspect, "720p"))
    if ratio is None:
        raise InvalidRequestError(f"aspect ratio {aspect} has no Runway ratio", provider="runway")
    return ratio


class RunwayProvider(Provider):
    name = "runway"
    key_env = "RUNWAYML_API_SECRET"
    default_base_url = "https://api.dev.runwayml.com"
    base_url_env = "STORYREEL_RUNWAY_BASE_URL"
    supports_cancel = True
    api_hosts = ("api.dev.runwayml.com",)

    def auth_headers(self) -> dict[str, str]:
        headers = {"X-Runway-Version": API_VERSION}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        return headers

    # -- submit -------------------------------------------------------------------------

    async def build_body(self, req: ShotRequest) -> tuple[str, dict[str, Any]]:
        """(endpoint path, JSON body) for a shot."""
        model = req.vendor_model
        body: dict[str, Any] = {
            "model": model,
            "promptText": req.prompt,
            "ratio": runway_ratio(req.aspect_ratio, req.resolution),
            "duration": int(round(req.duration_s)),
        }
        if req.seed is not None and model in SEED_MODELS:
            body["seed"] = int(req.seed)
        if req.image is not None:
            path = "/v1/image_to_video"
            body["promptImage"] = await self._prompt_image(req)
            if not req.prompt:  # promptText is optional for image-to-video, never empty
                body.pop("promptText")
        else:
            path = "/v1/text_to_video"
            if req.negative_prompt and model in NEGATIVE_PROMPT_MODELS:
                body["negativePrompt"] = req.negative_prompt
        if req.references and model in REFERENCE_MODELS:
            if req.image is not None:
                raise self.error(InvalidRequestError, f"{model} takes reference images or a "
                                 "first frame, not both", shot_id=req.shot_id)
            body["references"] = [{"uri": await self.image_ref(r)} for r in req.references]
        info = find_model(self.name, req.model)
        if info is not None:
            body.update(info.params)
        body.update(req.params)
        return path, body

    async def _prompt_image(self, req: ShotRequest) -> str:
        assert req.image is not None
        return await self.image_ref(req.image)

    async def upload_image(self, data: bytes, mime: str, name: str) -> tuple[str, float | None]:
        if len(data) > UPLOAD_MAX:
            raise self.error(InvalidRequestError, f"image {name} is {len(data)} bytes; Runway "
                             f"uploads take at most {UPLOAD_MAX}")
        # creating the upload slot is free and harmless to repeat: idempotent retry rule
        slot = await self.call_json("POST", "/v1/uploads", stage="poll",
                                    json={"filename": name, "type": "ephemeral"})
        if not isinstance(slot, dict) or not all(
                isinstance(slot.get(k), str) and slot[k] for k in ("uploadUrl", "runwayUri")):
            raise self.error(ProviderError, f"upload answered {str(slot)[:200]}")
        fields = slot.get("fields") if isinstance(slot.get("fields"), dict) else {}
        # a presigned POST to the storage host: no key (providers/hosts.py strips any)
        await http.send(self.client, "POST", slot["uploadUrl"], stage="poll",
                        provider=self.name, map_error=self.map_error, policy=self.retry,
                        hosts=self.hosts, data={str(k): str(v) for k, v in fields.items()},
                        files={"file": (name, data, mime)})
        return str(slot["runwayUri"]), UPLOAD_TTL_S

    async def submit(self, req: ShotRequest) -> Job:
        path, body = await self.build_body(req)
        data = await self.call_json("POST", path, stage="submit", json=body)
        task_id = data.get("id") if isinstance(data, dict) else None
        if not task_id:
            raise self.unnamed("a task id", data)
        est = (data.get("estimatedCost") or {}).get("credits")
        return Job(provider=self.name, job_id=str(task_id),
                   data={"task": _task_path(str(task_id)), "estimated_credits": est})

    # -- poll ---------------------------------------------------------------------------

    async def poll(self, job: Job) -> Poll:
        task = await self.call_json("GET", _task_path(job.job_id),
                                    stage="poll")
        status = str(task.get("status", ""))
        # an unknown status is treated as still running; the job deadline bounds it
        state = _STATES.get(status, "running")
        credits = (task.get("cost") or {}).get("credits")
        poll = Poll(state=state, raw=task, progress=task.get("progress"),
                    cost_usd=round(credits / 100, 4) if isinstance(credits, int | float) else None)
        if state == "succeeded":
            output = task.get("output") or []
            poll.video_url = output[0] if output else None
        elif state == "failed":
            poll.error = self._failure(job, task)
        elif state == "canceled":
            poll.error = self.error(JobFailedError, "task was cancelled", job=job)
        return poll

    def _failure(self, job: Job, task: dict[str, Any]) -> ProviderError:
        code = str(task.get("failureCode") or "")
        text = str(task.get("failure") or "task failed")
        message = f"{text} ({code})" if code else text
        cls = ContentPolicyError if code.startswith("SAFETY") else JobFailedError
        return self.error(cls, message, job=job, vendor_message=message)

    # -- fetch / cancel -----------------------------------------------------------------

    async def fetch(self, job: Job, done: Poll, dest: Path) -> Clip:
        if not done.video_url:
            raise self.error(ProviderError, "task succeeded but lists no output", job=job)
        with self.about(job):
            try:
                await self.download(done.video_url, dest)
            except NotFoundError:
                # signed output URL expired: the task hands out fresh URLs when fetched again
                fresh = await self.observe(job)
                if fresh.state != "succeeded" or not fresh.video_url:
                    raise
                await self.download(fresh.video_url, dest)
                done = fresh if fresh.cost_usd is not None else done
        return Clip(path=dest, job_id=job.job_id, cost_usd=done.cost_usd)

    async def cancel(self, job: Job) -> bool:
        """DELETE cancels a queued/running task; on a finished one it would *delete* it (and
        a paid output with it), so the task is looked at first."""
        with self.about(job):
            if (await self.observe(job)).done:
                return False
            try:
                await self.call("DELETE", _task_path(job.job_id),
                                stage="cancel")
            except NotFoundError:
                return False
        return True

    # -- errors -------------------------------------------------------------------------

    def error_message(self, body: Any, resp: httpx.Response) -> str:
        """Runway answers {"error": "...", "issues": [{"path": [...], "message": ...}]}."""
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            text = body["error"]
            issues = body.get("issues")
            if isinstance(issues, list) and issues:
                parts = []
                for issue in issues[:3]:
                    if isinstance(issue, dict):
                        where = ".".join(str(p) for p in issue.get("path") or [])
                        msg = issue.get("message", "")
                        parts.append(f"{where}: {msg}" if where else str(msg))
                text = f"{text} ({'; '.join(parts)})"
            return text
        return super().error_message(body, resp)

    def classify(self, resp: httpx.Response, message: str) -> type[ProviderError]:
        if "enough credits" in message.lower():
            return InsufficientCreditError
        return http.error_class_for_status(resp.status_code)


def _task_path(task_id: str) -> str:
    """Built from the id every time (never from the journal's copy): escaped, one segment."""
    return f"/v1/tasks/{segment(task_id)}"
