"""Runware REST task API (videoInference + getResponse), per runware-python's REST transport.

  POST /v1   body: a JSON array of tasks; the first task's taskType picks the stage:
    videoInference (submit)  {taskUUID (uuid4, ours), positivePrompt, model (AIR), duration,
                              width, height, deliveryMethod "async", includeCost, numberResults,
                              frameImages [{inputImage, frame}], seed, negativePrompt}
                             -> {"data": [{"taskType": "videoInference", "taskUUID"}]}
    getResponse (poll)       {taskUUID} -> {"data": [{taskType, taskUUID, status "processing"|
                              "success", videoUUID, videoURL, cost (with includeCost), seed}]}
                              or, for a failed task, 200 {"data": [], "errors": [{code,
                              message, status:"error", taskUUID, taskType}]}
Errors: {"errors": [{code, message, parameter, taskType, taskUUID}]} with 400/401/402/...
A taskUUID already used is refused (duplicateTaskUUID): a resent submit is never a new job.
UNCONFIRMED: the exact codes for unknown tasks and failures (taskFailedOrNotFound,
inferenceError, contentPolicyViolation follow runware-python's errors.py); only
deliveryMethod "async" is emulated. No cancel.
Base URL override: <emulator url>/runware/v1 (BASE_PATH "/v1"; the adapter POSTs to it).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.emulator.core import Emulator

VENDOR = "runware"
KEY_ENV = "RUNWARE_API_KEY"
BASE_PATH = "/v1"

_CODES = {400: "invalidRequest", 401: "invalidApiKey", 402: "insufficientCredits",
          403: "forbidden", 404: "taskFailedOrNotFound", 408: "timeout", 409: "conflict",
          422: "invalidRequest", 429: "rateLimitExceeded"}


def _err(code: str, message: str, status: int, *, task: dict | None = None,
         parameter: str | None = None, headers: dict | None = None) -> Response:
    item: dict[str, Any] = {"code": code, "message": message}
    if parameter:
        item["parameter"] = parameter
    if task:
        item["taskType"] = task.get("taskType")
        item["taskUUID"] = task.get("taskUUID")
    return JSONResponse({"errors": [item]}, status_code=status, headers=headers)


def without_job_id(body: dict[str, Any]) -> dict[str, Any]:
    """The submit answer with each task's taskUUID removed."""
    data = [{k: v for k, v in item.items() if k != "taskUUID"} for item in body.get("data", [])]
    return {**body, "data": data}


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    code = _CODES.get(status, "internalServerError" if status < 502 else "serviceUnavailable")
    if status == 401:
        return JSONResponse({"errors": [{"code": code, "message": message,
                                         "parameter": "apiKey", "taskType": "authentication"}]},
                            status_code=401, headers=headers)
    return _err(code, message, status, headers=headers)


def _uuid_ok(value: Any) -> bool:
    try:
        return isinstance(value, str) and uuid.UUID(value).version == 4
    except ValueError:
        return False


def _check_video(task: dict[str, Any], emu: Emulator) -> Response | None:
    if not _uuid_ok(task.get("taskUUID")):
        return _err("invalidTaskUUID", "taskUUID must be a UUID v4", 400, task=task,
                    parameter="taskUUID")
    if emu.get_job(VENDOR, task["taskUUID"]) is not None:
        return _err("duplicateTaskUUID", "A task with this taskUUID already exists", 400,
                    task=task, parameter="taskUUID")
    prompt = task.get("positivePrompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return _err("missingPositivePrompt", "positivePrompt is required", 400, task=task,
                    parameter="positivePrompt")
    model = task.get("model")
    info = emu.model_info(VENDOR, model) if isinstance(model, str) else None
    if info is None:
        return _err("invalidModel", "Invalid model parameter", 400, task=task, parameter="model")
    duration = task.get("duration")
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        return _err("invalidDuration", "duration must be a number", 400, task=task,
                    parameter="duration")
    if not info.accepts_duration(float(duration)):
        return _err("invalidDuration", f"Duration must be one of {info.duration_choices()} "
                    "for this model", 400, task=task, parameter="duration")
    for side in ("width", "height"):
        v = task.get(side)
        if isinstance(v, bool) or not isinstance(v, int) or not 64 <= v <= 4096:
            return _err(f"invalid{side.title()}", f"{side} must be an integer in 64..4096", 400,
                        task=task, parameter=side)
    if task.get("deliveryMethod") != "async":
        return _err("invalidDeliveryMethod", "video tasks are emulated with "
                    "deliveryMethod 'async' only", 400, task=task, parameter="deliveryMethod")
    frames = task.get("frameImages")
    if frames is not None:
        ok = isinstance(frames, list) and frames and all(
            isinstance(f, dict) and isinstance(f.get("inputImage"), str)
            and (re.match(r"(https?://|data:image/)", f["inputImage"]) or _uuid_ok(
                f["inputImage"])) and f.get("frame", "first") in ("first", "last")
            for f in frames)
        if not ok:
            return _err("invalidFrameImages", "frameImages must be [{inputImage: URL, data "
                        "URI or image UUID, frame: 'first'|'last'}]", 400, task=task,
                        parameter="frameImages")
    return None


async def _submit(request: Request, emu: Emulator) -> Response:
    if (denied := emu.check_key(request, VENDOR)) is not None:
        return denied
    task = (await request.json())[0]
    if (problem := _check_video(task, emu)) is not None:
        return problem
    width, height = task["width"], task["height"]
    job = emu.new_job(VENDOR, model=task["model"], duration=float(task["duration"]),
                      width=width, height=height, resolution=f"{min(width, height)}p",
                      request=task, job_id=task["taskUUID"])
    job.data["video_uuid"] = str(uuid.uuid4())
    return JSONResponse({"data": [{"taskType": "videoInference", "taskUUID": job.id}]})


async def _get_response(request: Request, emu: Emulator) -> Response:
    if (denied := emu.check_key(request, VENDOR)) is not None:
        return denied
    emu.count(VENDOR, "polls")
    task = (await request.json())[0]
    job = emu.get_job(VENDOR, str(task.get("taskUUID")))
    if job is None:
        return _err("taskFailedOrNotFound", "No task found with this taskUUID", 404, task=task)
    state = emu.state(job)
    item: dict[str, Any] = {"taskType": "videoInference", "taskUUID": job.id}
    if state in ("queued", "running"):
        item["status"] = "processing"
    elif state == "succeeded":
        item.update(status="success", videoUUID=job.data["video_uuid"],
                    videoURL=emu.video_url(job), seed=job.request.get("seed", 1234))
        if job.request.get("includeCost"):
            item["cost"] = job.price_usd
    else:  # failed / policy (no cancel exists)
        code = "contentPolicyViolation" if state == "policy" else "inferenceError"
        return JSONResponse({"data": [], "errors": [{
            "code": code, "status": "error", "message": job.error,
            "taskType": "videoInference", "taskUUID": job.id}]})
    return JSONResponse({"data": [item]})


def routes(emu: Emulator) -> list[Route]:
    # one URL for every task type: pick the stage (and so the fault queue) from the body
    submit = emu.route(VENDOR, "/v1#submit", _submit, methods=["POST"], stage="submit")
    poll = emu.route(VENDOR, "/v1#poll", _get_response, methods=["POST"], stage="poll")

    async def dispatch(request: Request) -> Any:
        try:
            body: Any = await request.json()
        except ValueError:
            return _err("invalidPayload", "The request body must be a JSON array of tasks", 400)
        if not isinstance(body, list) or not body or not isinstance(body[0], dict):
            return _err("invalidPayload", "The request body must be a JSON array of tasks", 400)
        kind = body[0].get("taskType")
        if kind == "videoInference":
            return await submit.endpoint(request)
        if kind == "getResponse":
            return await poll.endpoint(request)
        return _err("invalidTaskType", f"taskType {kind!r} is not emulated", 400,
                    task=body[0], parameter="taskType")

    dispatch.__name__ = "runware_dispatch"
    return [Route("/v1", dispatch, methods=["POST"])]
