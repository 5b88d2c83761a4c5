"""Luma Dream Machine API, emulated.

  POST   /dream-machine/v1/generations/video  submit  Generation (201)
  GET    /dream-machine/v1/generations/{id}   poll    Generation
  DELETE /dream-machine/v1/generations/{id}   cancel  204; removes the record only: the job
                                                       keeps running and is still charged
                                                       (whether real Luma stops it is UNCONFIRMED)
  GET    /dream-machine/v1/credits            poll    {"credit_balance": <USD cents>}
Auth "Authorization: Bearer <key>". Errors are {"detail": "..."}.
States queued/dreaming/completed/failed; the video is at assets.video; failures carry
failure_reason ("Advanced moderation failed" for content policy). Luma reports no cost.
Body checks: model enum, prompt, duration a string "5s"/"9s", resolution and aspect enums,
keyframes frame0/frame1 as {type:"image", url:<http(s) URL>} or {type:"generation", id}.
Keyframe image URLs are read at submit as Luma would (tests/emulator/images.py: loopback URLs,
e.g. a presigned URL of a moto S3 server, are really fetched; data: URIs are not images URLs
Luma takes and are refused); unreadable -> 400.
Base URL override: <emulator url>/luma/dream-machine/v1 (BASE_PATH "/dream-machine/v1").
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.emulator import images as imagelib
from tests.emulator.core import EmuJob, Emulator, dimensions

VENDOR = "luma"
KEY_ENV = "LUMAAI_API_KEY"
BASE_PATH = "/dream-machine/v1"

MODELS = ("ray-2", "ray-flash-2", "ray-1-6")
DURATIONS = ("5s", "9s")
RESOLUTIONS = ("540p", "720p", "1080p", "4k")
ASPECTS = ("1:1", "16:9", "9:16", "4:3", "3:4", "21:9", "9:21")
MODERATION = "400: Advanced moderation failed"
STARTING_BALANCE_CENTS = 100_000
_STATE = {"queued": "queued", "running": "dreaming", "succeeded": "completed",
          "failed": "failed", "policy": "failed"}


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def _check_frame(name: str, frame: Any) -> str | None:
    if not isinstance(frame, dict):
        return f"keyframes.{name} must be an object"
    kind = frame.get("type")
    if kind == "image":
        url = frame.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return f"keyframes.{name}.url must be an http(s) image URL"
        return None
    if kind == "generation":
        return None if isinstance(frame.get("id"), str) else f"keyframes.{name}.id is required"
    return f"keyframes.{name}.type must be 'image' or 'generation'"


def _validate(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    if body.get("model") not in MODELS:
        return f"Invalid model {body.get('model')!r}: must be one of {', '.join(MODELS)}"
    if not isinstance(body.get("prompt"), str) or not body["prompt"].strip():
        return "prompt is required"
    if body.get("generation_type", "video") != "video":
        return "generation_type must be 'video'"
    checks = (("duration", DURATIONS), ("resolution", RESOLUTIONS), ("aspect_ratio", ASPECTS))
    for field, allowed in checks:
        if field in body and body[field] not in allowed:
            return (f"Invalid {field} {body[field]!r}: must be one of "
                    f"{', '.join(map(repr, allowed))}")
    keyframes = body.get("keyframes")
    if keyframes is not None:
        if not isinstance(keyframes, dict) or not set(keyframes) <= {"frame0", "frame1"}:
            return "keyframes must be an object with frame0 and/or frame1"
        for name, frame in keyframes.items():
            if (problem := _check_frame(name, frame)) is not None:
                return problem
    if "loop" in body and not isinstance(body["loop"], bool):
        return "loop must be a boolean"
    return None


async def _submit(request: Request, emu: Emulator) -> Response:
    if (denied := emu.check_key(request, VENDOR)) is not None:
        return denied
    try:
        body: Any = await request.json()
    except ValueError:
        return error_response(400, "Request body is not valid JSON")
    if (problem := _validate(body)) is not None:
        return error_response(400, problem)
    seen: dict[str, str | None] = {}
    for name, frame in (body.get("keyframes") or {}).items():
        if frame.get("type") == "image":  # Luma downloads keyframe images at submit
            try:
                seen[name] = imagelib.digest(await imagelib.resolve(frame["url"]))
            except imagelib.Unresolvable as exc:
                return error_response(400, f"keyframes.{name}.url: {exc}")
    resolution = body.get("resolution", "720p")
    width, height = dimensions(body.get("aspect_ratio", "16:9"), resolution)
    duration = float(body.get("duration", "5s")[:-1])
    job = emu.new_job(VENDOR, model=body["model"], duration=duration, width=width, height=height,
                      resolution=resolution, request=body)
    job.data.update(path=request.url.path, content_type=request.headers.get("content-type"),
                    images=seen,
                    created_at=dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"))
    return JSONResponse(_generation(emu, job), status_code=201)


def _generation(emu: Emulator, job: EmuJob) -> dict[str, Any]:
    state = emu.state(job)
    if state == "canceled":  # cannot happen through Luma's API; shown as a failure
        state = "failed"
    body: dict[str, Any] = {
        "id": job.id, "generation_type": "video", "state": _STATE[state],
        "failure_reason": None, "created_at": job.data.get("created_at"),
        "assets": None, "model": job.model, "request": job.request,
    }
    if state == "succeeded":
        video = emu.video_url(job)
        body["assets"] = {"video": video, "image": None, "progress_video": None}
    elif state == "failed":
        body["failure_reason"] = job.error or "Job failed"
    elif state == "policy":
        body["failure_reason"] = job.error if "moderation" in job.error.lower() else MODERATION
    return body


def _live_job(request: Request, emu: Emulator) -> EmuJob | Response:
    job = emu.get_job(VENDOR, request.path_params["id"])
    if job is None or job.data.get("deleted"):
        return error_response(404, "Generation not found")
    return job


async def _poll(request: Request, emu: Emulator) -> Response:
    if (denied := emu.check_key(request, VENDOR)) is not None:
        return denied
    emu.count(VENDOR, "polls")
    job = _live_job(request, emu)
    return job if isinstance(job, Response) else JSONResponse(_generation(emu, job))


async def _delete(request: Request, emu: Emulator) -> Response:
    if (denied := emu.check_key(request, VENDOR)) is not None:
        return denied
    emu.count(VENDOR, "cancels")
    job = _live_job(request, emu)
    if isinstance(job, Response):
        return job
    job.data["deleted"] = True  # the record goes; the work (and its charge) does not
    return Response(status_code=204)


async def _credits(request: Request, emu: Emulator) -> Response:
    if (denied := emu.check_key(request, VENDOR)) is not None:
        return denied
    spent = emu.stats(VENDOR)["charged_usd"]
    return JSONResponse({"credit_balance": round(STARTING_BALANCE_CENTS - spent * 100, 2)})


def routes(emu: Emulator) -> list[Route]:
    base = BASE_PATH
    return [
        emu.route(VENDOR, f"{base}/generations/video", _submit, methods=["POST"], stage="submit"),
        emu.route(VENDOR, f"{base}/generations/{{id}}", _poll, stage="poll"),
        emu.route(VENDOR, f"{base}/generations/{{id}}", _delete, methods=["DELETE"],
                  stage="cancel"),
        emu.route(VENDOR, f"{base}/credits", _credits, stage="poll"),
    ]
