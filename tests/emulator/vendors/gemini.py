"""Gemini API (Veo) emulator: long-running predict operations.

  POST /v1beta/models/{model}:predictLongRunning   submit  -> {"name": "models/{m}/operations/{id}"}
  GET  /v1beta/models/{model}/operations/{id}      poll    {name, [done, error | response]}
  GET  /v1beta/files/{token}:download?alt=media    result  the MP4 (needs the API key header)
Auth: `x-goog-api-key`. A missing key answers 403 PERMISSION_DENIED, a wrong one 400
INVALID_ARGUMENT with ErrorInfo reason API_KEY_INVALID (Google's behaviour, not a 401).
Errors are google.rpc.Status {"error": {"code", "message", "status", ["details"]}}; a
Retry-After given to an injected fault becomes a google.rpc.RetryInfo `retryDelay` detail (Google
sends no Retry-After header). Operations omit `done` until it is true. A "policy" job ends done
with no samples and `raiMediaFilteredReasons`; nothing is charged for it (prices.py).
Models come from providers/catalog/gemini.yaml: unknown ids answer 404, retired ones 404
"no longer available". There is no cancel endpoint (UNCONFIRMED for Veo operations).
Base URL override: <emulator url>/gemini (BASE_PATH "", adapter paths start with /v1beta).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.emulator import images as imagelib
from tests.emulator.core import FAKE_KEYS, EmuJob, Emulator, dimensions
from tests.emulator.server import _media_endpoint

VENDOR = "gemini"
KEY_ENV = "GEMINI_API_KEY"
BASE_PATH = ""

_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 402: "FAILED_PRECONDITION",
           403: "PERMISSION_DENIED", 404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 409: "ABORTED",
           422: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
           502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_TOP_KEYS = {"instances", "parameters", "webhookConfig"}
_INSTANCE_KEYS = {"prompt", "image", "lastFrame", "referenceImages", "video"}
_PARAM_KEYS = {"aspectRatio", "durationSeconds", "resolution", "negativePrompt",
               "personGeneration", "sampleCount", "enhancePrompt"}
_VERTEX_ONLY = {"seed", "fps", "generateAudio", "outputGcsUri", "pubsubTopic",
                "compressionQuality", "resizeMode"}
_MIME = {"image/png", "image/jpeg", "image/webp"}
RAI_REASON = ("Veo could not generate videos because the input prompt violates Google's "
              "Responsible AI practices. You will not be charged for this request.")


def without_job_id(body: dict[str, Any]) -> dict[str, Any]:
    """The submit answer minus the operation name."""
    return {k: v for k, v in body.items() if k not in ("name",)}


def error_response(status: int, message: str, headers: dict | None = None,
                   details: list[dict[str, Any]] | None = None) -> Response:
    error: dict[str, Any] = {"code": status, "message": message,
                             "status": _STATUS.get(status, "UNKNOWN")}
    headers = dict(headers or {})
    delay = headers.pop("Retry-After", None)
    if delay is not None:  # Google says when to retry in the body, not in a header
        details = [*(details or []), {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                      "retryDelay": f"{delay}s"}]
    if details:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=status, headers=headers or None)


def _check_key(request: Request, emu: Emulator) -> Response | None:
    key = request.headers.get("x-goog-api-key")
    if key == FAKE_KEYS[VENDOR]:
        return None
    emu.count(VENDOR, "auth_failures")
    if not key:
        return error_response(403, "Method doesn't allow unregistered callers (callers without "
                                   "established identity). Please use API Key or other form of "
                                   "API consumer identity to call this API.")
    return error_response(400, "API key not valid. Please pass a valid API key.", details=[
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
         "domain": "googleapis.com"}])


def _bad(message: str) -> Response:
    return error_response(400, message)


def _unknown(names: set[str], where: str) -> Response:
    listed = ", ".join(f'"{n}"' for n in sorted(names))
    return _bad(f"Invalid JSON payload received. Unknown name {listed} at '{where}': "
                "Cannot find field.")


# python-genai: referenceImages with image/lastFrame/video unsupported; ASSET only on the
# Developer API (STYLE is Vertex-only); Veo 3.1 takes up to three
REFERENCE_MODELS = {"veo-3.1-generate-001", "veo-3.1-fast-generate-001",
                    "veo-3.1-generate-preview", "veo-3.1-fast-generate-preview"}


def _check_references(model: str, inst: dict[str, Any]) -> str | None:
    refs = inst["referenceImages"]
    if model not in REFERENCE_MODELS:
        return f"referenceImages is not supported by {model}."
    if not isinstance(refs, list) or not 1 <= len(refs) <= 3:
        return "referenceImages must hold 1 to 3 images."
    if set(inst) & {"image", "lastFrame", "video"}:
        return "referenceImages cannot be combined with image, lastFrame or video."
    for i, ref in enumerate(refs):
        where = f"instances[0].referenceImages[{i}]"
        if not isinstance(ref, dict) or set(ref) - {"image", "referenceType"}:
            return f"{where} must be {{image, referenceType}}"
        if str(ref.get("referenceType", "")).upper() != "ASSET":
            return f"{where}.referenceType: only ASSET is supported in the Gemini API."
        if why := _check_image(ref.get("image"), f"{where}.image"):
            return why
    return None


def _check_image(image: Any, where: str) -> str | None:
    if not isinstance(image, dict):
        return f"{where} must be an object"
    if "gcsUri" in image:
        return f"{where}.gcsUri is not supported by the Gemini API; send bytesBase64Encoded."
    if image.get("mimeType") not in _MIME:
        return f"{where}.mimeType must be one of {', '.join(sorted(_MIME))}"
    try:
        if not base64.b64decode(image.get("bytesBase64Encoded") or "", validate=True):
            return f"{where}.bytesBase64Encoded is empty"
    except (binascii.Error, ValueError):
        return f"Invalid value at '{where}.bytesBase64Encoded' (TYPE_BYTES), Base64 decoding failed"
    return None


def _validate(model: str, body: Any, emu: Emulator) -> Response | dict[str, Any]:
    """The request's parameters (with defaults), or the error response."""
    info = emu.model_info(VENDOR, model)
    if info is None or model != info.vendor_model:
        return error_response(404, f"models/{model} is not found for API version v1beta, or is "
                                   "not supported for predictLongRunning. Call ListModels to see "
                                   "the list of available models and their supported methods.")
    if info.is_retired():
        return error_response(404, f"models/{model} is no longer available. "
                                   f"Please use {info.replacement or 'a newer model'} instead.")
    if not isinstance(body, dict):
        return _bad("Invalid JSON payload received. Expected an object.")
    if extra := set(body) - _TOP_KEYS:
        return _unknown(extra, "")
    instances = body.get("instances")
    if not isinstance(instances, list) or len(instances) != 1 or not isinstance(instances[0], dict):
        return _bad("instances must hold exactly one instance")
    inst = instances[0]
    if extra := set(inst) - _INSTANCE_KEYS:
        return _unknown(extra, "instances[0]")
    if not isinstance(inst.get("prompt"), str) or not inst["prompt"].strip():
        return _bad("A prompt is required: instances[0].prompt must be a non-empty string.")
    for key in ("image", "lastFrame"):
        if key in inst and (why := _check_image(inst[key], f"instances[0].{key}")):
            return _bad(why)
    if "referenceImages" in inst and (why := _check_references(model, inst)):
        return _bad(why)
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        return _bad("parameters must be an object")
    if vertex := set(params) & _VERTEX_ONLY:
        return _bad(f"{', '.join(sorted(vertex))} parameter is not supported in Gemini API.")
    if extra := set(params) - _PARAM_KEYS:
        return _unknown(extra, "parameters")
    out = {"aspectRatio": "16:9", "durationSeconds": int(info.max_duration()),
           "resolution": info.resolutions[0], "sampleCount": 1, **params}
    seconds = out["durationSeconds"]
    if type(seconds) is not int:
        return _bad(f"Invalid value at 'parameters.durationSeconds' (TYPE_INT32), {seconds!r}")
    if not info.accepts_duration(seconds):
        return _bad(f"The number value for `durationSeconds` is out of bound. Please provide a "
                    f"value allowed by {model}: {info.duration_choices()}.")
    if out["aspectRatio"] not in info.aspect_ratios:
        return _bad(f"aspectRatio {out['aspectRatio']!r} is not supported by {model}.")
    if out["resolution"] not in info.resolutions:
        return _bad(f"resolution {out['resolution']!r} is not supported by {model}.")
    if out["resolution"] in ("1080p", "4k") and seconds != 8:
        return _bad(f"{out['resolution']} output needs durationSeconds 8.")
    if type(out["sampleCount"]) is not int or not 1 <= out["sampleCount"] <= 4:
        return _bad("sampleCount must be an integer from 1 to 4.")
    if out.get("personGeneration") not in (None, "allow_all", "allow_adult", "dont_allow"):
        return _bad("personGeneration must be allow_all, allow_adult or dont_allow.")
    return out


async def _submit(request: Request, emu: Emulator) -> Response:
    if (denied := _check_key(request, emu)) is not None:
        return denied
    model = request.path_params["model"]
    try:
        body = await request.json()
    except ValueError:
        return _bad("Invalid JSON payload received.")
    params = _validate(model, body, emu)
    if isinstance(params, Response):
        return params
    width, height = dimensions(params["aspectRatio"], params["resolution"])
    job = emu.new_job(VENDOR, model=model, duration=float(params["durationSeconds"]),
                      width=width, height=height, resolution=params["resolution"],
                      request=body, job_id=secrets.token_hex(6))
    inst = body["instances"][0]
    found = ([("image", inst["image"])] if "image" in inst else []) + [
        (f"referenceImages[{i}]", r["image"]) for i, r in enumerate(inst.get("referenceImages", []))]
    job.data["images"] = {k: imagelib.digest(base64.b64decode(v["bytesBase64Encoded"]))
                          for k, v in found}
    job.data.update(samples=params["sampleCount"], query=request.url.query,
                    headers=dict(request.headers))
    return JSONResponse({"name": _op_name(job)})


def _op_name(job: EmuJob) -> str:
    return f"models/{job.model}/operations/{job.id}"


async def _poll(request: Request, emu: Emulator) -> Response:
    if (denied := _check_key(request, emu)) is not None:
        return denied
    emu.count(VENDOR, "polls")
    job = emu.get_job(VENDOR, request.path_params["op"])
    if job is None or job.model != request.path_params["model"]:
        return error_response(404, "Operation not found.")
    state = emu.state(job)
    op: dict[str, Any] = {"name": _op_name(job)}  # proto3 JSON omits done=false
    if state in ("queued", "running"):
        return JSONResponse(op)
    op["done"] = True
    if state == "succeeded":
        uri = f"{emu.base_url(VENDOR)}/v1beta/files/{job.token}:download?alt=media"
        samples = [{"video": {"uri": uri}} for _ in range(job.data.get("samples", 1))]
        op["response"] = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta."
                     "PredictLongRunningResponse",
            "generateVideoResponse": {"generatedSamples": samples}}
    elif state == "policy":
        reason = RAI_REASON if "injected fault" in job.error else job.error
        op["response"] = {"generateVideoResponse": {"raiMediaFilteredCount": 1,
                                                    "raiMediaFilteredReasons": [reason]}}
    elif state == "canceled":
        op["error"] = {"code": 1, "message": "Operation was cancelled."}
    else:
        op["error"] = {"code": 13, "message": job.error}
    return JSONResponse(op)


def routes(emu: Emulator) -> list[Route]:
    serve_media = _media_endpoint(emu)

    async def download(request: Request, emu: Emulator) -> Any:
        """The Files API download: checks the key, then the core serves the clip (and its
        download faults) as if /_media/gemini/<token>.mp4 had been asked for."""
        if (denied := _check_key(request, emu)) is not None:
            return denied
        scope = dict(request.scope)
        scope["path_params"] = {"vendor": VENDOR, "token": request.path_params["token"]}
        return await serve_media(Request(scope, request.receive))

    return [
        emu.route(VENDOR, "/v1beta/models/{model}:predictLongRunning", _submit,
                  methods=["POST"], stage="submit"),
        emu.route(VENDOR, "/v1beta/models/{model}/operations/{op}", _poll, stage="poll"),
        emu.route(VENDOR, "/v1beta/files/{token}:download", download, stage="result"),
    ]
