"""Replicate predictions API, emulated.

  POST /v1/models/{owner}/{name}/predictions  submit  {"input": {...}} (official models)
  POST /v1/predictions                        submit  {"version": "<id>", "input": {...}}
  GET  /v1/predictions/{id}                   poll    Prediction
  POST /v1/predictions/{id}/cancel            cancel  Prediction
  POST /v1/files                              upload  multipart field "content" -> File
                                              (urls.get = /v1/files/{id}; `expires_at`)
Image inputs are read as the model would (tests/emulator/images.py): data URIs decoded,
this emulator's own file URLs looked up, loopback URLs fetched; unreadable -> 422.
google/veo-3.1 takes `reference_images` (1-3 URIs; 16:9 and 8 s only, per its API page).
Auth "Authorization: Bearer <token>". Errors are RFC 7807 problem details
{"type","title","status","detail"} (422 validation adds "invalid_fields").
Statuses starting/processing/succeeded/failed/canceled/aborted; a `Cancel-After`
header on create is honoured (aborted before start, canceled while running).
Content-policy jobs fail with "... flagged as sensitive ... (E005)". Official models
answer `output` as one URI string; pinned versions (VERSIONS) answer a list of URIs.
Replicate reports no cost. Base URL override: <emulator url>/replicate (BASE_PATH "").
"""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy
import hashlib
import re
import secrets
import string
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.emulator import images as imagelib
from tests.emulator.core import EmuJob, Emulator, dimensions

VENDOR = "replicate"
KEY_ENV = "REPLICATE_API_TOKEN"
BASE_PATH = ""

# what each model's input schema calls its first frame (the vendor's truth, kept apart
# from the adapter's own table on purpose)
IMAGE_FIELDS = {
    "google/veo-3.1": "image", "google/veo-3.1-fast": "image", "google/veo-3-fast": "image",
    "kwaivgi/kling-v2.5-turbo-pro": "start_image", "minimax/hailuo-02": "first_frame_image",
    "bytedance/seedance-1-pro": "image", "bytedance/seedance-1-lite": "image",
}
INTEGER_FIELDS = ("duration", "seed")
# models with a reference-image list (replicate.com/google/veo-3.1/api)
REFERENCE_FIELDS = {"google/veo-3.1": "reference_images"}
# pinned versions the emulator knows: version id -> model
VERSIONS = {hashlib.sha256(b"storyreel/" + m.encode()).hexdigest(): m
            for m in ("google/veo-3.1-fast", "bytedance/seedance-1-lite")}
POLICY_TEXT = "The input or output was flagged as sensitive. Please try again with different inputs."
_STATUS = {"queued": "starting", "running": "processing", "succeeded": "succeeded",
           "failed": "failed", "policy": "failed", "canceled": "canceled"}
_FILES: dict[str, dict[str, Any]] = {}
_DATA: dict[str, bytes] = {}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def error_response(status: int, message: str, headers: dict | None = None,
                   **extra: Any) -> Response:
    titles = {401: "Unauthenticated", 402: "Billing required", 404: "Not found",
              422: "Input validation failed", 429: "Too many requests"}
    body = {"type": f"https://replicate.com/docs/reference/http#{status}",
            "title": titles.get(status, "Error"), "status": status, "detail": message, **extra}
    if status == 429:
        # throttles carry the wait in the body too (low-credit throttle: nodetool-ai #5196)
        hint = (headers or {}).get("Retry-After") or _resets_in(message)
        if hint is not None:
            body["retry_after"] = float(hint)
    return JSONResponse(body, status_code=status, headers=headers,
                        media_type="application/problem+json")


def without_job_id(body: dict[str, Any]) -> dict[str, Any]:
    """A Prediction minus its id and the URLs built on it."""
    return {k: v for k, v in body.items() if k not in ("id", "urls")}


def _resets_in(message: str) -> str | None:
    match = re.search(r"resets in ~?(\d+(?:\.\d+)?)s", message)
    return match.group(1) if match else None


def _invalid(field: str, description: str) -> Response:
    return error_response(422, f"- {field}: {description}\n",
                          invalid_fields=[{"type": "invalid", "field": field,
                                           "description": description}])


def _is_uri(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("data:", "http://", "https://"))


def _seconds(header: str | None) -> float | None:
    """Cancel-After as a Go-style duration: "30s", "5m", "1h30m", "1500ms"."""
    if not header:
        return None
    parts = _DURATION.findall(header.strip())
    if not parts or "".join(n + u for n, u in parts) != header.strip():
        return -1.0
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def _validate(model: str, inputs: Any) -> Response | None:
    if not isinstance(inputs, dict):
        return _invalid("input", "Invalid type. Expected: object")
    prompt = inputs.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return _invalid("input.prompt", "prompt is required")
    for key in INTEGER_FIELDS:
        value = inputs.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            kind = type(value).__name__.replace("float", "number").replace("str", "string")
            return _invalid(f"input.{key}", f"Invalid type. Expected: integer, given: {kind}")
    image_field = IMAGE_FIELDS.get(model, "image")
    if image_field in inputs and not _is_uri(inputs[image_field]):
        return _invalid(f"input.{image_field}", "Does not match format 'uri'")
    if "generate_audio" in inputs and not isinstance(inputs["generate_audio"], bool):
        return _invalid("input.generate_audio", "Invalid type. Expected: boolean")
    return None


def _check_enums(emu: Emulator, model: str, inputs: dict) -> Response | None:
    info = emu.model_info(VENDOR, model)
    if info is None:
        return None
    if "duration" in inputs and not info.accepts_duration(inputs["duration"]):
        return _invalid("input.duration", f"must be one of {info.duration_choices()}")
    if "aspect_ratio" in inputs and inputs["aspect_ratio"] not in info.aspect_ratios:
        return _invalid("input.aspect_ratio", f"must be one of {info.aspect_ratios}")
    if "resolution" in inputs and inputs["resolution"] not in info.resolutions:
        return _invalid("input.resolution", f"must be one of {info.resolutions}")
    return None


async def _create(request: Request, emu: Emulator, model: str, version: str | None,
                  body: dict) -> Response:
    inputs = body.get("input")
    problem = _validate(model, inputs) or _check_enums(emu, model, inputs)
    if problem is not None:
        return problem
    seen = await _resolve_images(emu, model, inputs)
    if isinstance(seen, Response):
        return seen
    cancel_after = _seconds(request.headers.get("cancel-after"))
    if cancel_after is not None and cancel_after <= 0:
        return error_response(400, "Cancel-After must be a positive duration such as 30s or 5m")
    info = emu.model_info(VENDOR, model)
    resolution = inputs.get("resolution") or (info.resolutions[0] if info else "720p")
    duration = inputs.get("duration") or (info.durations[0] if info and isinstance(
        info.durations, list) else 5)
    width, height = dimensions(inputs.get("aspect_ratio", "16:9"), resolution)
    pid = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(26))
    job = emu.new_job(VENDOR, model=model, duration=float(duration), width=width, height=height,
                      resolution=resolution, request=body, job_id=pid)
    job.data.update(version=version, cancel_after=cancel_after, path=request.url.path, images=seen,
                    headers={k: v for k, v in request.headers.items()
                             if k in ("cancel-after", "prefer", "content-type")},
                    created_at=dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"))
    return JSONResponse(_prediction(emu, job), status_code=201)


async def _submit_model(request: Request, emu: Emulator) -> Response:
    if (denied := emu.check_key(request, VENDOR)) is not None:
        return denied
    model = f"{request.path_params['owner']}/{request.path_params['name']}"
    body = await _json(request)
    if isinstance(body, Response):
        return body
    if emu.model_info(VENDOR, model) is None:
        return error_response(404, "The requested resource could not be found.")
    return await _create(request, emu, model, None, body)


async def _submit_version(request: Request, emu: Emulator) -> Response:
    if (denied := emu.check_key(request, VENDOR)) is not None:
        return denied
    body = await _json(request)
    if isinstance(body, Response):
        return body
    model = VERSIONS.get(str(body.get("version", "")))
    if model is None:
        return error_response(422, "The specified version does not exist (or perhaps you "
                              "don't have permission to use it?)")
    return await _create(request, emu, model, str(body["version"]), body)


async def _json(request: Request) -> dict | Response:
    try:
        body = await request.json()
    except ValueError:
        return error_response(400, "Request body is not valid JSON")
    return body if isinstance(body, dict) else error_response(400, "Request body must be an object")


def _apply_deadline(emu: Emulator, job: EmuJob) -> None:
    limit = job.data.get("cancel_after")
    if limit is None or emu.now() - job.created < limit:
        return
    state = emu.state(job)
    if state in ("queued", "running") and emu.cancel(job):
        job.data["aborted"] = state == "queued"


def _prediction(emu: Emulator, job: EmuJob) -> dict[str, Any]:
    _apply_deadline(emu, job)
    state = emu.state(job)
    status = "aborted" if job.data.get("aborted") else _STATUS[state]
    url = f"{emu.base_url(VENDOR)}/v1/predictions/{job.id}"
    pct = int(emu.progress(job) * 100)
    body: dict[str, Any] = {
        "id": job.id, "model": job.model, "version": job.data.get("version") or "hidden",
        "input": job.request.get("input"), "logs": "", "output": None, "error": None,
        "data_removed": False, "status": status, "created_at": job.data.get("created_at"),
        "urls": {"get": url, "cancel": f"{url}/cancel", "web": f"https://replicate.com/p/{job.id}"},
        "metrics": {},
    }
    if state in ("running", "succeeded"):
        bar = "#" * (pct // 10)
        body["logs"] = f"Generating video\n{pct:3d}%|{bar:<10}| {pct}/100\n"
    if state == "succeeded":
        video = emu.video_url(job)
        body["output"] = [video] if job.data.get("version") else video
        body["metrics"] = {"predict_time": round(job.ready_after * 0.8, 3)}
    elif state == "failed":
        body["error"] = job.error
    elif state == "policy":
        text = job.error if "E005" in job.error else f"{POLICY_TEXT} (E005)"
        body["error"] = text
    return body


async def _poll(request: Request, emu: Emulator) -> Response:
    if (denied := emu.check_key(request, VENDOR)) is not None:
        return denied
    emu.count(VENDOR, "polls")
    job = emu.get_job(VENDOR, request.path_params["id"])
    if job is None:
        return error_response(404, "The requested resource could not be found.")
    return JSONResponse(_prediction(emu, job))


async def _cancel(request: Request, emu: Emulator) -> Response:
    if (denied := emu.check_key(request, VENDOR)) is not None:
        return denied
    emu.count(VENDOR, "cancels")
    job = emu.get_job(VENDOR, request.path_params["id"])
    if job is None:
        return error_response(404, "The requested resource could not be found.")
    _apply_deadline(emu, job)
    emu.cancel(job)  # a finished prediction is returned unchanged
    return JSONResponse(_prediction(emu, job))


async def _upload(request: Request, emu: Emulator) -> Response:
    if (denied := emu.check_key(request, VENDOR)) is not None:
        return denied
    emu.count(VENDOR, "uploads")
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        return error_response(400, "Expected multipart/form-data with a 'content' file")
    raw = f"Content-Type: {ctype}\r\n\r\n".encode() + await request.body()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    part = next((p for p in msg.iter_parts()
                 if p.get_param("name", header="content-disposition") == "content"), None)
    if part is None:
        return error_response(422, "Missing multipart field 'content'")
    data = part.get_payload(decode=True) or b""
    fid = secrets.token_hex(12)
    url = f"{emu.base_url(VENDOR)}/v1/files/{fid}"
    meta = {"id": fid, "name": part.get_filename() or "file", "size": len(data),
            "content_type": part.get_content_type(), "etag": hashlib.md5(data).hexdigest(),
            "checksums": {"sha256": hashlib.sha256(data).hexdigest()}, "metadata": {},
            "urls": {"get": url}}
    meta["expires_at"] = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=24)).isoformat()
    _FILES[fid] = meta
    _DATA[fid] = data
    return JSONResponse(meta, status_code=201)


async def _read_image(emu: Emulator, ref: Any) -> bytes | None:
    """What the model reads: an upload of this emulator by id, else imagelib's rules."""
    own = f"{emu.base_url(VENDOR)}/v1/files/"
    if isinstance(ref, str) and ref.startswith(own):
        data = _DATA.get(ref.removeprefix(own))
        if data is None:
            raise imagelib.Unresolvable("file not found")
        return data
    return await imagelib.resolve(ref)


async def _resolve_images(emu: Emulator, model: str, inputs: dict) -> dict | Response:
    seen: dict[str, str | None] = {}
    image_field = IMAGE_FIELDS.get(model, "image")
    refs = [(image_field, inputs[image_field])] if image_field in inputs else []
    ref_field = REFERENCE_FIELDS.get(model)
    if ref_field and ref_field in inputs:
        listed = inputs[ref_field]
        if not isinstance(listed, list) or not 1 <= len(listed) <= 3:
            return _invalid(f"input.{ref_field}", "Expected 1 to 3 image URIs")
        if inputs.get("aspect_ratio", "16:9") != "16:9" or inputs.get("duration", 8) != 8:
            return _invalid(f"input.{ref_field}",
                            "Reference images only work with 16:9 aspect ratio and 8-second duration")
        refs += [(f"{ref_field}[{i}]", r) for i, r in enumerate(listed)]
    for name, ref in refs:
        if not _is_uri(ref):
            return _invalid(f"input.{name}", "Does not match format 'uri'")
        try:
            seen[name] = imagelib.digest(await _read_image(emu, ref))
        except imagelib.Unresolvable as exc:
            return _invalid(f"input.{name}", str(exc))
    return seen


def uploaded(file_id: str) -> dict[str, Any] | None:
    """What the emulator stored for an upload (for test assertions)."""
    return _FILES.get(file_id)


def routes(emu: Emulator) -> list[Route]:
    return [
        emu.route(VENDOR, "/v1/models/{owner}/{name}/predictions", _submit_model,
                  methods=["POST"], stage="submit"),
        emu.route(VENDOR, "/v1/predictions", _submit_version, methods=["POST"], stage="submit"),
        emu.route(VENDOR, "/v1/predictions/{id}", _poll, stage="poll"),
        emu.route(VENDOR, "/v1/predictions/{id}/cancel", _cancel, methods=["POST"],
                  stage="cancel"),
        emu.route(VENDOR, "/v1/files", _upload, methods=["POST"], stage="upload"),
    ]
