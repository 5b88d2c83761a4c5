"""VideoGenAPI, per videogenapi.com's API documentation.

  POST /api/v1/generate                    submit {model, prompt, image_url, duration, resolution,
                                                   aspect_ratio, seed, camera_fixed}
                                           -> {success, generation_id, status:"pending",
                                               status_url:"/v1/status/<id>", usage, ...}
  GET  /api/v1/status/{generation_id}      poll   status pending|in_queue|in_progress|
                                                  completed|failed; video_url (public)
Auth: "Authorization: Bearer <key>". Checked: prompt required and at most 1000
characters; known model; integer duration inside the model's range; resolution spelled
as documented ("4K" upper case) and offered by the model; aspect_ratio one of
16:9/4:3/1:1/9:21 and only without image_url; image_url an http(s) URL.
UNCONFIRMED (the seed shows none): the error body ({"success": false, "error"}), the
failed job's `error` field, the monthly-limit 429's text. No cost is reported, no cancel.
Base URL override: <emulator url>/videogenapi/api (BASE_PATH "/api"; paths carry /v1).
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.emulator import hostile
from tests.emulator.core import Emulator, dimensions

VENDOR = "videogenapi"
KEY_ENV = "VIDEOGENAPI_API_KEY"
BASE_PATH = "/api"

MAX_PROMPT = 1000
ASPECTS = ("16:9", "4:3", "1:1", "9:21")
MONTHLY_LIMIT = 100
_NAMES = {"seedance_lite": ("Seedance", "ByteDance"), "kling_21": ("Kling 2.1", "Kuaishou"),
          "hailuo_2": ("Hailuo 2", "MiniMax"), "higgsfield_v1": ("Higgsfield", "Higgsfield"),
          "veo_3": ("Veo 3", "Google")}


def without_job_id(body: dict[str, Any]) -> dict[str, Any]:
    """The submit answer minus the generation id and the status URL built on it."""
    return {k: v for k, v in body.items() if k not in ("generation_id", "status_url")}


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    return JSONResponse({"success": False, "error": message}, status_code=status,
                        headers=headers)


def _check(body: dict[str, Any], emu: Emulator) -> str | None:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "The prompt parameter is required"
    if len(prompt) > MAX_PROMPT:
        return f"The prompt may not be greater than {MAX_PROMPT} characters"
    model = body.get("model", "seedance_lite")
    info = emu.model_info(VENDOR, model) if isinstance(model, str) else None
    if info is None:
        return f"Invalid model {model!r}. Available: {', '.join(_NAMES)}"
    duration = body.get("duration", 5)
    if isinstance(duration, bool) or not isinstance(duration, int):
        return "The duration must be an integer"
    if not info.accepts_duration(duration):
        return f"Duration {duration}s is not supported by {model} ({info.duration_choices()})"
    resolution = body.get("resolution", "720p")
    supported = ["4K" if r.lower() == "4k" else r for r in info.resolutions]  # vendor spelling
    if resolution not in supported:
        return (f"Resolution {resolution!r} is not supported by {model} "
                f"(supported: {', '.join(supported)})")
    image = body.get("image_url")
    if image is not None:
        if not isinstance(image, str) or not re.match(r"https?://", image):
            return "The image_url must be a valid URL"
        if "aspect_ratio" in body:
            return "aspect_ratio is only supported in text-to-video mode"
    elif body.get("aspect_ratio", "16:9") not in ASPECTS:
        return f"The aspect_ratio must be one of {', '.join(ASPECTS)}"
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        return "The seed must be an integer"
    return None


async def _generate(request: Request, emu: Emulator) -> Response:
    if (denied := emu.check_key(request, VENDOR)) is not None:
        return denied
    try:
        body: Any = await request.json()
    except ValueError:
        return error_response(400, "Invalid JSON body")
    if not isinstance(body, dict):
        return error_response(400, "Invalid JSON body")
    if (problem := _check(body, emu)) is not None:
        return error_response(400, problem)
    used = len(emu.jobs(VENDOR))
    if used >= MONTHLY_LIMIT:
        return error_response(429, "Monthly usage limit exceeded")
    model = body.get("model", "seedance_lite")
    resolution = body.get("resolution", "720p")
    aspect = body.get("aspect_ratio", "16:9")
    width, height = dimensions(aspect, resolution)
    gen_id = f"gen_{secrets.token_hex(6)}_{int(time.time() * 1000) % 1000000:06d}"
    job = emu.new_job(VENDOR, model=model, duration=float(body.get("duration", 5)),
                      width=width, height=height, resolution=resolution, request=body,
                      job_id=gen_id)
    name, provider = _NAMES.get(model, (model, "unknown"))
    job.data["model"] = {"key": model, "name": name, "provider": provider}
    status_url = f"/v1/status/{job.id}"
    if job.data.get("foreign_urls"):  # hostile.py: an absolute URL on another host
        status_url = hostile.answer_root(emu, job, emu.base_url(VENDOR)) + status_url
    return JSONResponse({
        "success": True, "generation_id": job.id, "request_id": secrets.token_hex(16),
        "status": "pending", "type": "image-to-video" if "image_url" in body else "text-to-video",
        "model": job.data["model"], "prompt": body["prompt"], "duration": int(job.duration),
        "resolution": resolution, "fps": 30, "aspect_ratio": aspect, "seed": body.get("seed"),
        "status_url": status_url,
        "message": "Video generation request submitted successfully.",
        "usage": {"current_month_usage": used + 1, "monthly_limit": MONTHLY_LIMIT},
    })


async def _status(request: Request, emu: Emulator) -> Response:
    if (denied := emu.check_key(request, VENDOR)) is not None:
        return denied
    emu.count(VENDOR, "polls")
    job = emu.get_job(VENDOR, request.path_params["generation_id"])
    if job is None:
        return error_response(404, "Generation not found")
    state = emu.state(job)
    out: dict[str, Any] = {
        "success": True, "generation_id": job.id,
        "type": "image-to-video" if "image_url" in job.request else "text-to-video",
        "model": job.data["model"], "prompt": job.request.get("prompt"),
        "duration": int(job.duration), "resolution": job.resolution, "fps": 30,
    }
    if state == "queued":
        out["status"] = "in_queue"
    elif state == "running":
        out["status"] = "in_progress"
    elif state == "succeeded":
        out.update(status="completed", video_url=emu.video_url(job),
                   processing_time=int(job.ready_after), seed=job.request.get("seed", 622177285))
    else:  # failed / policy (no cancel endpoint exists)
        message = job.error if state != "policy" else f"Content policy violation: {job.error}"
        out.update(status="failed", error=message)
    return JSONResponse(out)


def routes(emu: Emulator) -> list[Route]:
    return [
        emu.route(VENDOR, "/api/v1/generate", _generate, methods=["POST"], stage="submit"),
        emu.route(VENDOR, "/api/v1/status/{generation_id}", _status, stage="poll"),
    ]
