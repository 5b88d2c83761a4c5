"""A tiny made-up vendor, used only by tests/test_emulator_core.py (discovery skips "_" names).

It shows the shape of a vendor module:
  POST /v1/videos                 submit  {"model","prompt","duration","aspect_ratio","resolution"}
  GET  /v1/videos/{id}            poll    {"id","status","progress",["error"],["cost_usd"]}
  GET  /v1/videos/{id}/content    result  {"url"}
  POST /v1/videos/{id}/cancel     cancel  {"id","canceled"}
  POST /v1/uploads                upload  {"url"}
Errors are {"error": {"code", "message"}}. Auth: "Authorization: Bearer <key>".
Base URL override: <emulator url>/example/v1 (BASE_PATH "/v1", adapter paths are /videos...).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.emulator.core import Emulator, dimensions

VENDOR = "example"
KEY_ENV = "EXAMPLE_API_KEY"
BASE_PATH = "/v1"


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    return JSONResponse({"error": {"code": status, "message": message}}, status_code=status,
                        headers=headers)


async def _submit(request: Request, emu: Emulator) -> Response:
    if (denied := emu.check_key(request, VENDOR)) is not None:
        return denied
    try:
        body: Any = await request.json()
    except ValueError:
        return error_response(400, "body is not JSON")
    if not isinstance(body, dict) or not body.get("model") or not body.get("prompt"):
        return error_response(422, "model and prompt are required")
    aspect = body.get("aspect_ratio", "16:9")
    resolution = body.get("resolution", "720p")
    width, height = dimensions(aspect, resolution)
    job = emu.new_job(VENDOR, model=body["model"], duration=float(body.get("duration", 5)),
                      width=width, height=height, resolution=resolution, request=body)
    return JSONResponse({"id": job.id, "status": "queued"}, status_code=201)


def _job_or_404(request: Request, emu: Emulator) -> Any:
    job = emu.get_job(VENDOR, request.path_params["id"])
    return job if job is not None else error_response(404, "no such video")


async def _poll(request: Request, emu: Emulator) -> Response:
    if (denied := emu.check_key(request, VENDOR)) is not None:
        return denied
    emu.count(VENDOR, "polls")
    job = _job_or_404(request, emu)
    if isinstance(job, Response):
        return job
    state = emu.state(job)
    body: dict[str, Any] = {"id": job.id, "status": state, "progress": emu.progress(job)}
    if state in ("failed", "policy"):
        body["error"] = job.error
    if emu.charged(job):
        body["cost_usd"] = job.price_usd
    return JSONResponse(body)


async def _result(request: Request, emu: Emulator) -> Response:
    if (denied := emu.check_key(request, VENDOR)) is not None:
        return denied
    emu.count(VENDOR, "results")
    job = _job_or_404(request, emu)
    if isinstance(job, Response):
        return job
    if emu.state(job) != "succeeded":
        return error_response(409, f"video is {emu.state(job)}")
    return JSONResponse({"url": emu.video_url(job)})


async def _cancel(request: Request, emu: Emulator) -> Response:
    if (denied := emu.check_key(request, VENDOR)) is not None:
        return denied
    emu.count(VENDOR, "cancels")
    job = _job_or_404(request, emu)
    if isinstance(job, Response):
        return job
    return JSONResponse({"id": job.id, "canceled": emu.cancel(job)})


async def _upload(request: Request, emu: Emulator) -> Response:
    if (denied := emu.check_key(request, VENDOR)) is not None:
        return denied
    emu.count(VENDOR, "uploads")
    size = len(await request.body())
    return JSONResponse({"url": f"{emu.url}/example/files/{size}"})


def routes(emu: Emulator) -> list[Route]:
    return [
        emu.route(VENDOR, "/v1/videos", _submit, methods=["POST"], stage="submit"),
        emu.route(VENDOR, "/v1/videos/{id}", _poll, stage="poll"),
        emu.route(VENDOR, "/v1/videos/{id}/content", _result, stage="result"),
        emu.route(VENDOR, "/v1/videos/{id}/cancel", _cancel, methods=["POST"], stage="cancel"),
        emu.route(VENDOR, "/v1/uploads", _upload, methods=["POST"], stage="upload"),
    ]
