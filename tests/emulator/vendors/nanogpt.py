"""NanoGPT generate-video, per docs.nano-gpt.com "Video Generation".

  POST /api/generate-video                 submit -> 202 {runId, status:"pending", model,
                                                    cost, paymentSource, remainingBalance}
  GET  /api/generate-video/status          poll   ?runId=..&modelSlug=.. ->
                                                    {"data": {status, request_id, output|error}}
Statuses IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED, CANCELLED (no cancel endpoint).
Auth: "x-api-key: <key>" or "Authorization: Bearer <key>".
Errors: {"error": "<message>", "status": N}; content policy is
{"error": {"message", "type": "CONTENT_POLICY_VIOLATION"}, "status": 400}.
Checked traps: `duration` is a string ("5s" for Veo, "5"/"10" for Kling/Seedance);
Kling 2.1 needs an image; inline images (imageDataUrl) at most 4 MB; the poll must name
the run's model slug (UNCONFIRMED how the real API answers a wrong slug: 400 here).
The cost is deducted at submit and never refunded (prices.py bills="submit").
Base URL override: <emulator url>/nanogpt (BASE_PATH "").
"""

from __future__ import annotations

import base64
import re
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.emulator.core import Emulator, dimensions

VENDOR = "nanogpt"
KEY_ENV = "NANOGPT_API_KEY"
BASE_PATH = ""

MAX_INLINE = 4 * 1024 * 1024
STARTING_BALANCE = 50.0
_POLICY = re.compile(r"content policy|safety|flagged|inappropriate", re.I)
_NEEDS_IMAGE = {"kling-v21-standard": "Kling 2.1 Standard", "kling-v21-pro": "Kling 2.1 Pro"}


def without_job_id(body: dict[str, Any]) -> dict[str, Any]:
    """The submit answer minus the run id."""
    return {k: v for k, v in body.items() if k not in ("runId",)}


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    if status == 400 and _POLICY.search(message):
        body: dict[str, Any] = {"error": {"message": message, "type": "CONTENT_POLICY_VIOLATION"},
                                "status": 400}
    else:
        body = {"error": message, "status": status}
    return JSONResponse(body, status_code=status, headers=headers)


def _auth(request: Request, emu: Emulator) -> Response | None:
    if request.headers.get("x-api-key") is not None:
        return emu.check_key(request, VENDOR, header="x-api-key", scheme=None)
    return emu.check_key(request, VENDOR)  # Bearer


def _duration_error(model: str, duration: Any, allowed: list[float]) -> str | None:
    if not isinstance(duration, str):
        example = '"5s"' if model.startswith("veo") else '"5"'
        return f"duration must be a string such as {example}"
    pattern = r"(\d+)s" if model.startswith("veo") else r"(\d+)"
    match = re.fullmatch(pattern, duration)
    if match is None or float(match.group(1)) not in allowed:
        return f"Invalid duration {duration!r} for {model}"
    return None


def _image_error(body: dict[str, Any]) -> str | None:
    data_url = body.get("imageDataUrl")
    if data_url is not None:
        m = re.fullmatch(r"data:image/[\w.+-]+;base64,(.+)", str(data_url), re.S)
        if m is None:
            return "imageDataUrl must be a base64 data:image/... URL"
        try:
            size = len(base64.b64decode(m.group(1), validate=True))
        except ValueError:
            return "imageDataUrl is not valid base64"
        if size > MAX_INLINE:
            return "Image uploads must be 4 MB or smaller. Provide an imageUrl instead."
    url = body.get("imageUrl")
    if url is not None and not re.match(r"https?://", str(url)):
        return "imageUrl must be a public http(s) URL"
    return None


async def _submit(request: Request, emu: Emulator) -> Response:
    if (denied := _auth(request, emu)) is not None:
        return denied
    try:
        body: Any = await request.json()
    except ValueError:
        return error_response(400, "Invalid JSON body")
    if not isinstance(body, dict):
        return error_response(400, "Invalid JSON body")
    model = body.get("model")
    info = emu.model_info(VENDOR, model) if isinstance(model, str) else None
    if info is None:
        return error_response(400, f"Invalid model: {model!r}")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return error_response(400, "Prompt is required")
    allowed = info.durations if isinstance(info.durations, list) else [
        float(s) for s in range(int(info.durations.min), int(info.durations.max) + 1)]
    problem = _duration_error(model, body.get("duration"), [float(a) for a in allowed])
    problem = problem or _image_error(body)
    if problem is None and model in _NEEDS_IMAGE and not (
            body.get("imageDataUrl") or body.get("imageUrl")):
        problem = (f"{_NEEDS_IMAGE[model]} requires an input image. Please select an image "
                   "to generate a video.")
    if problem:
        return error_response(400, problem)
    seconds = float(re.sub(r"s$", "", body["duration"]))
    resolution = body.get("resolution") or info.resolutions[0]
    width, height = dimensions(body.get("aspect_ratio", "16:9"), resolution)
    job = emu.new_job(VENDOR, model=model, duration=seconds, width=width, height=height,
                      resolution=resolution, request=body,
                      job_id=f"fal-request-{secrets.token_hex(8)}")
    job.data["auth_header"] = "x-api-key" if "x-api-key" in request.headers else "authorization"
    spent = sum(j.price_usd for j in emu.jobs(VENDOR))
    return JSONResponse({
        "runId": job.id, "status": "pending", "model": model, "cost": job.price_usd,
        "paymentSource": "USD", "remainingBalance": round(STARTING_BALANCE - spent, 6),
    }, status_code=202)


async def _status(request: Request, emu: Emulator) -> Response:
    if (denied := _auth(request, emu)) is not None:
        return denied
    emu.count(VENDOR, "polls")
    run_id = request.query_params.get("runId")
    slug = request.query_params.get("modelSlug")
    if not run_id:
        return error_response(400, "runId is required")
    job = emu.get_job(VENDOR, run_id)
    if job is None:
        return error_response(404, "Run not found")
    if slug != job.model:
        return error_response(400, f"modelSlug {slug!r} does not match this run")
    state = emu.state(job)
    data: dict[str, Any] = {"request_id": job.id}
    if state == "queued":
        data.update(status="IN_QUEUE", details="Request is queued")
    elif state == "running":
        data.update(status="IN_PROGRESS", details="Video is being generated")
    elif state == "succeeded":
        data.update(status="COMPLETED", output={"video": {"url": emu.video_url(job)}})
    elif state == "canceled":
        data.update(status="CANCELLED")
    elif state == "policy":
        data.update(status="FAILED", error="Content policy violation", isNSFWError=True,
                    userFriendlyError="Content flagged as inappropriate. Please modify "
                                      "your prompt and try again.")
    else:
        data.update(status="FAILED", error=job.error, isNSFWError=False,
                    userFriendlyError=job.error)
    return JSONResponse({"data": data})


def routes(emu: Emulator) -> list[Route]:
    return [
        emu.route(VENDOR, "/api/generate-video", _submit, methods=["POST"], stage="submit"),
        emu.route(VENDOR, "/api/generate-video/status", _status, stage="poll"),
    ]
