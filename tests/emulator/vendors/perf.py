"""Perf (withperf.pro) video generations, per docs.withperf.pro "Video Generation".

  POST /v1/video/generations        submit  {prompt, model, duration_seconds, resolution,
                                             aspect_ratio} -> 202 {id, status:"pending",
                                             estimated_cost_usd, perf{...}}
  GET  /v1/video/generations/{id}   poll    status pending|processing|complete|failed;
                                             video_url + perf.cost_usd when complete,
                                             error_message when failed
Errors: {"error": {"type", "message"}} (400 invalid_request, 404 not_found shown in the
seed; the other types are UNCONFIRMED). Auth: "Authorization: Bearer <key>". No cancel.
Base URL override: <emulator url>/perf (BASE_PATH ""; the adapter's paths carry /v1).
"""

from __future__ import annotations

import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.emulator.core import Emulator, dimensions

VENDOR = "perf"
KEY_ENV = "PERF_API_KEY"
BASE_PATH = ""

RESOLUTIONS = ("720p", "1080p")
ASPECTS = ("16:9", "9:16", "1:1", "4:3")
_TYPES = {400: "invalid_request", 401: "authentication_error", 402: "insufficient_credits",
          403: "permission_denied", 404: "not_found", 409: "conflict", 422: "invalid_request",
          429: "rate_limit_exceeded"}


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request")
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status,
                        headers=headers)


def _invalid(message: str) -> Response:
    return error_response(400, message)


async def _submit(request: Request, emu: Emulator) -> Response:
    if (denied := emu.check_key(request, VENDOR)) is not None:
        return denied
    try:
        body: Any = await request.json()
    except ValueError:
        return _invalid("request body must be JSON")
    if not isinstance(body, dict):
        return _invalid("request body must be a JSON object")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return _invalid("prompt is required")
    model = body.get("model", "runway-gen3")
    info = emu.model_info(VENDOR, model) if isinstance(model, str) else None
    if info is None:
        return _invalid(f"model {model!r} is not supported")
    duration = body.get("duration_seconds", 4)
    if isinstance(duration, bool) or not isinstance(duration, int | float) or duration <= 0:
        return _invalid("duration_seconds must be a positive number")
    if duration > info.max_duration():
        return _invalid(f"duration_seconds exceeds maximum of {info.max_duration():g} "
                        f"for {model} model")
    resolution = body.get("resolution", "1080p")
    if resolution not in RESOLUTIONS:
        return _invalid("resolution must be one of 720p, 1080p")
    aspect = body.get("aspect_ratio", "16:9")
    if aspect not in ASPECTS:
        return _invalid(f"aspect_ratio must be one of {', '.join(ASPECTS)}")
    width, height = dimensions(aspect, resolution)
    job = emu.new_job(VENDOR, model=model, duration=float(duration), width=width,
                      height=height, resolution=resolution, request=body,
                      job_id=f"job_vid_{secrets.token_hex(6)}")
    job.data["request_id"] = f"req_vid_{secrets.token_hex(6)}"
    return JSONResponse({
        "id": job.id, "status": "pending", "model": model, "prompt": prompt,
        "duration_seconds": duration, "resolution": resolution, "aspect_ratio": aspect,
        "estimated_cost_usd": job.price_usd,
        "perf": {"request_id": job.data["request_id"], "model_used": model, "latency_ms": 12},
    }, status_code=202)


async def _poll(request: Request, emu: Emulator) -> Response:
    if (denied := emu.check_key(request, VENDOR)) is not None:
        return denied
    emu.count(VENDOR, "polls")
    job = emu.get_job(VENDOR, request.path_params["id"])
    if job is None:
        return error_response(404, "Video generation job not found")
    state = emu.state(job)
    req = job.request
    out: dict[str, Any] = {"id": job.id, "model": job.model, "prompt": req.get("prompt")}
    perf: dict[str, Any] = {"request_id": job.data["request_id"], "model_used": job.model}
    if state == "queued":
        out["status"] = "pending"
    elif state == "running":
        remaining = max(0.0, job.ready_after * (1 - emu.progress(job)))
        out.update(status="processing", progress_percent=int(emu.progress(job) * 100),
                   estimated_remaining_seconds=round(remaining, 3))
    elif state == "succeeded":
        out.update(status="complete", video_url=emu.video_url(job),
                   duration_seconds=req.get("duration_seconds", 4),
                   resolution=job.resolution, aspect_ratio=req.get("aspect_ratio", "16:9"))
        perf.update(generation_time_ms=int(job.ready_after * 1000), cost_usd=job.price_usd)
    else:  # failed / policy
        # the seed's failed example: "Content policy violation: prompt contains ..."
        message = f"Content policy violation: {job.error}" if state == "policy" else job.error
        out.update(status="failed", error_message=message)
        if emu.charged(job):
            perf["cost_usd"] = job.price_usd
    out["perf"] = perf
    return JSONResponse(out)


def routes(emu: Emulator) -> list[Route]:
    return [
        emu.route(VENDOR, "/v1/video/generations", _submit, methods=["POST"], stage="submit"),
        emu.route(VENDOR, "/v1/video/generations/{id}", _poll, stage="poll"),
    ]
