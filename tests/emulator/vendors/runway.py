"""Runway API emulator (https://api.dev.runwayml.com).

  POST   /v1/text_to_video    submit  {model, promptText, ratio, duration, [seed|negativePrompt|audio]}
  POST   /v1/image_to_video   submit  {model, promptImage, [promptText], ratio, duration, [seed]}
  GET    /v1/tasks/{id}       poll    {id, createdAt, status, [progress|output|failure...], cost}
  DELETE /v1/tasks/{id}       cancel  204; cancels a queued/running task, deletes a finished one
  POST   /v1/uploads          upload  {filename, type: "ephemeral"} -> {uploadUrl, fields, runwayUri}
  POST   /_s3/{slot}          the presigned multipart POST: `fields` plus the file (field
                              `file`), no key (sdk-python resources/uploads.py)
A promptImage may be a data URI (<= 5 MB), an https URL on a domain, or a runwayUri of a
completed upload; a runwayUri whose file never arrived is refused (400).
Every call needs `Authorization: Bearer <key>` and `X-Runway-Version: 2024-11-06`.
Errors are {"error": "...", ["issues": [{"code", "path", "message"}]]}.
Base URL override: <emulator url>/runway (BASE_PATH "", adapter paths start with /v1).

Shapes follow runwayml/sdk-python's create-params and task types. UNCONFIRMED details, chosen
to be strict: the wording and 400 status of a missing/unsupported version header, the zod-like
`issues` list, and that unknown body keys are rejected. Tasks submitted while THROTTLE_AT or
more are in flight report THROTTLED (Runway's over-concurrency queue) instead of PENDING.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.emulator import images as imagelib
from tests.emulator.core import EmuJob, Emulator

VENDOR = "runway"
KEY_ENV = "RUNWAYML_API_SECRET"
BASE_PATH = ""
API_VERSION = "2024-11-06"
THROTTLE_AT = 4
DATA_URI_MAX = 5 * 1024 * 1024

_WIDE = {"1280:720", "720:1280", "1104:832", "960:960", "832:1104", "1584:672"}
_VEO = {"1280:720", "720:1280", "1080:1920", "1920:1080"}
_TWO_TO_TEN = set(range(2, 11))
# model -> (ratios, durations, optional keys) per endpoint, from the SDK's create-params types
TEXT_MODELS: dict[str, tuple[set[str], set[int], set[str]]] = {
    "gen4.5": ({"1280:720", "720:1280"}, _TWO_TO_TEN, {"seed", "contentModeration"}),
    "veo3.1": (_VEO, {4, 6, 8}, {"audio", "negativePrompt"}),
    "veo3.1_fast": (_VEO, {4, 6, 8}, {"audio", "negativePrompt"}),
    "veo3": (_VEO, {8}, {"negativePrompt"}),
}
IMAGE_MODELS: dict[str, tuple[set[str], set[int], set[str]]] = {
    "gen4.5": (_WIDE, _TWO_TO_TEN, {"seed", "contentModeration"}),
    "gen4_turbo": (_WIDE, _TWO_TO_TEN, {"seed", "contentModeration"}),
    "veo3.1": (_VEO, {4, 6, 8}, {"audio"}),
    "veo3.1_fast": (_VEO, {4, 6, 8}, {"audio"}),
    "veo3": (_VEO, {8}, set()),
}
_DATA_URI = re.compile(r"^data:(image/(?:png|jpeg|jpg|webp));base64,(.*)$", re.S)


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _invalid(issues: list[dict[str, Any]]) -> Response:
    return JSONResponse({"error": "Validation of body failed", "issues": issues}, status_code=400)


def _issue(path: str, message: str, code: str = "custom") -> dict[str, Any]:
    return {"code": code, "path": [path] if path else [], "message": message}


def _gate(request: Request, emu: Emulator) -> Response | None:
    """Key first, then the version header (an unversioned call is refused outright)."""
    if (denied := emu.check_key(request, VENDOR)) is not None:
        return denied
    version = request.headers.get("x-runway-version")
    if version != API_VERSION:
        shown = f"'{version}'" if version else "missing"
        return error_response(400, f"The X-Runway-Version header is {shown}. Set it to a "
                                   f"supported API version, such as {API_VERSION}.")
    return None


def _check_image(value: Any) -> str | None:
    """Why a promptImage is unusable, or None."""
    if isinstance(value, list):
        if not value or not all(isinstance(v, dict) and "uri" in v for v in value):
            return "Expected a list of {uri, position} objects"
        return next((m for v in value if (m := _check_image(v["uri"]))), None)
    if not isinstance(value, str) or not value:
        return "Expected string, received " + type(value).__name__
    if value.startswith("runway://"):
        slot = value.removeprefix("runway://")
        return None if slot in _UPLOADED else "Upload not found or not completed."
    if value.startswith("data:"):
        if len(value) > DATA_URI_MAX:
            return "Data URI is too large. The maximum size is 5MB."
        match = _DATA_URI.match(value)
        if not match:
            return "Unsupported asset type. Data URIs must include a supported image type."
        try:
            base64.b64decode(match.group(2), validate=True)
        except (binascii.Error, ValueError):
            return "Invalid data URI."
        return None
    parts = urlsplit(value)
    if parts.scheme != "https":
        return "Only HTTPS URLs are allowed."
    try:
        ipaddress.ip_address(parts.hostname or "")
        return "URLs must be hosted on a domain."
    except ValueError:
        return None


def _image_digest(value: str) -> str | None:
    """sha256 of what a promptImage names: an upload's or a data URI's bytes (None for a
    remote https URL, which the emulator cannot fetch)."""
    if value.startswith("runway://"):
        return imagelib.digest(_UPLOADED[value.removeprefix("runway://")].data)
    if value.startswith("data:"):
        return imagelib.digest(base64.b64decode(value.split(",", 1)[1]))
    return None


# -- ephemeral uploads -------------------------------------------------------------------------

_SLOTS: dict[str, dict[str, str]] = {}  # slot -> the form fields the presigned POST must carry
_UPLOADED: dict[str, imagelib.Stored] = {}


async def _create_upload(request: Request, emu: Emulator) -> Response:
    if (denied := _gate(request, emu)) is not None:
        return denied
    emu.count(VENDOR, "uploads")
    try:
        body = await request.json()
    except ValueError:
        return error_response(400, "Request body is not valid JSON")
    if not isinstance(body, dict) or not isinstance(body.get("filename"), str) \
            or body.get("type") != "ephemeral":
        return _invalid([_issue("type", "Expected 'ephemeral' and a filename")])
    slot = secrets.token_hex(10)
    fields = {"key": f"uploads/{slot}/{body['filename']}", "policy": secrets.token_urlsafe(12),
              "x-amz-signature": secrets.token_hex(16)}
    _SLOTS[slot] = fields
    return JSONResponse({"uploadUrl": f"{emu.url}/{VENDOR}/_s3/{slot}", "fields": fields,
                         "runwayUri": f"runway://{slot}"})


async def _presigned_post(request: Request, emu: Emulator) -> Response:
    slot = request.path_params["slot"]
    expected = _SLOTS.get(slot)
    if expected is None or "authorization" in request.headers:
        return Response(b"<Error><Code>AccessDenied</Code></Error>", status_code=403,
                        media_type="application/xml")
    form = imagelib.multipart(request.headers.get("content-type", ""), await request.body())
    if any(form.get(k, (b"",))[0].decode(errors="replace") != v for k, v in expected.items()):
        return Response(b"<Error><Code>InvalidPolicyDocument</Code></Error>", status_code=403,
                        media_type="application/xml")
    upload = form.get("file")
    if upload is None or upload[1] is None or not upload[0]:
        return Response(b"<Error><Code>MissingFile</Code></Error>", status_code=400,
                        media_type="application/xml")
    _UPLOADED[slot] = imagelib.Stored(upload[0], upload[2], upload[1])
    return Response(b"", status_code=204)


def _validate(body: Any, image: bool) -> tuple[list[dict[str, Any]], str]:
    if not isinstance(body, dict):
        return [_issue("", "Expected object", "invalid_type")], ""
    models = IMAGE_MODELS if image else TEXT_MODELS
    model = body.get("model")
    if model not in models:
        return [_issue("model", f"Invalid enum value. Expected {' | '.join(models)}, "
                                f"received '{model}'", "invalid_enum_value")], ""
    ratios, durations, optional = models[model]
    issues = []
    allowed = {"model", "promptText", "ratio", "duration"} | optional
    if image:
        allowed.add("promptImage")
    extra = sorted(set(body) - allowed)
    if extra:
        issues.append(_issue("", f"Unrecognized key(s) in object: "
                                 f"{', '.join(repr(k) for k in extra)}", "unrecognized_keys"))
    text = body.get("promptText")
    if text is None and not (image and model == "gen4_turbo"):
        issues.append(_issue("promptText", "Required", "invalid_type"))
    elif text is not None and (not isinstance(text, str) or not text.strip() or len(text) > 1000):
        issues.append(_issue("promptText", "Must be a non-empty string of at most 1000 "
                                           "characters"))
    if body.get("ratio") not in ratios:
        issues.append(_issue("ratio", f"Invalid enum value. Expected {' | '.join(sorted(ratios))}"
                                      f", received '{body.get('ratio')}'", "invalid_enum_value"))
    duration = body.get("duration")
    if type(duration) is not int:  # "5" and 5.0 are refused like the SDK types refuse them
        issues.append(_issue("duration", f"Expected integer, received "
                                         f"{type(duration).__name__}", "invalid_type"))
    elif duration not in durations:
        issues.append(_issue("duration", f"Duration must be one of {sorted(durations)}"))
    seed = body.get("seed")
    if "seed" in body and (type(seed) is not int or not 0 <= seed <= 4294967295):
        issues.append(_issue("seed", "Expected an integer from 0 to 4294967295"))
    if image:
        if "promptImage" not in body:
            issues.append(_issue("promptImage", "Required", "invalid_type"))
        elif (why := _check_image(body["promptImage"])) is not None:
            issues.append(_issue("promptImage", why))
    return issues, model


def _submitter(image: bool) -> Callable[[Request, Emulator], Awaitable[Response]]:
    async def submit(request: Request, emu: Emulator) -> Response:
        if (denied := _gate(request, emu)) is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return error_response(400, "Request body is not valid JSON")
        issues, model = _validate(body, image)
        if issues:
            return _invalid(issues)
        width, height = (int(x) for x in body["ratio"].split(":"))
        resolution = "1080p" if min(width, height) >= 1080 else "720p"
        throttled = emu.stats(VENDOR)["in_flight"] >= THROTTLE_AT
        job = emu.new_job(VENDOR, model=model, duration=float(body["duration"]), width=width,
                          height=height, resolution=resolution, request=body)
        job.price_usd = _credits(job) / 100  # Runway bills whole credits (1 credit = $0.01)
        prompt = body.get("promptImage")
        refs = prompt if isinstance(prompt, list) else [{"uri": prompt}] if prompt else []
        job.data["images"] = {f"promptImage[{i}]": _image_digest(r["uri"])
                              for i, r in enumerate(refs)}
        job.data.update(throttled=throttled, endpoint=request.url.path,
                        headers=dict(request.headers),
                        created_at=dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"))
        return JSONResponse({"id": job.id, "estimatedCost": {"credits": _credits(job)}})

    submit.__name__ = "image_to_video" if image else "text_to_video"
    return submit


def _credits(job: EmuJob) -> int:
    return int(round(job.price_usd * 100))


def _task(request: Request, emu: Emulator) -> EmuJob | Response:
    job = emu.get_job(VENDOR, request.path_params["id"])
    if job is None or job.data.get("deleted"):
        return error_response(404, "Task not found")
    return job


async def _poll(request: Request, emu: Emulator) -> Response:
    if (denied := _gate(request, emu)) is not None:
        return denied
    emu.count(VENDOR, "polls")
    job = _task(request, emu)
    if isinstance(job, Response):
        return job
    state = emu.state(job)
    body: dict[str, Any] = {"id": job.id, "createdAt": job.data.get("created_at")}
    if state == "queued":
        body["status"] = "THROTTLED" if job.data.get("throttled") else "PENDING"
    elif state == "running":
        body.update(status="RUNNING", progress=emu.progress(job))
    elif state == "succeeded":
        body.update(status="SUCCEEDED", output=[emu.video_url(job)])
    elif state == "canceled":
        body["status"] = "CANCELLED"
    else:
        code = "SAFETY.INPUT.TEXT" if state == "policy" else "INTERNAL.BAD_OUTPUT.CODE01"
        body.update(status="FAILED", failure=job.error, failureCode=code)
    if state in ("queued", "running"):
        body["estimatedCost"] = {"credits": _credits(job)}
    else:
        body["cost"] = {"credits": _credits(job) if emu.charged(job) else 0}
    return JSONResponse(body)


async def _delete(request: Request, emu: Emulator) -> Response:
    if (denied := _gate(request, emu)) is not None:
        return denied
    emu.count(VENDOR, "cancels")
    job = _task(request, emu)
    if isinstance(job, Response):
        return job
    if not emu.cancel(job):
        job.data["deleted"] = True  # DELETE on a finished task removes it
    return Response(status_code=204)


def routes(emu: Emulator) -> list[Route]:
    return [
        emu.route(VENDOR, "/v1/uploads", _create_upload, methods=["POST"], stage="upload"),
        emu.route(VENDOR, "/_s3/{slot}", _presigned_post, methods=["POST"], stage="upload"),
        emu.route(VENDOR, "/v1/text_to_video", _submitter(False), methods=["POST"],
                  stage="submit"),
        emu.route(VENDOR, "/v1/image_to_video", _submitter(True), methods=["POST"],
                  stage="submit"),
        emu.route(VENDOR, "/v1/tasks/{id}", _poll, stage="poll"),
        emu.route(VENDOR, "/v1/tasks/{id}", _delete, methods=["DELETE"], stage="cancel"),
    ]
