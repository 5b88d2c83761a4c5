"""fal.ai queue API emulator (fal-ai/fal `projects/fal_client/src/fal_client/client.py`;
fal.ai/docs/api-reference/inference-api and its queue pages).

  POST /{owner}/{app}[/{path}]                 submit -> {request_id, status_url, response_url,
                                                          cancel_url, status: IN_QUEUE}
  GET  /{owner}/{app}/requests/{id}/status     202 IN_QUEUE / IN_PROGRESS, 200 COMPLETED
                                               (a failed job is COMPLETED with error/error_type)
  GET  /{owner}/{app}/requests/{id}            result: the model's answer, errors included
  PUT  /{owner}/{app}/requests/{id}/cancel     202 CANCELLATION_REQUESTED / 400 ALREADY_COMPLETED
  GET  /v1/models/pricing?endpoint_id=a,b      the Platform API's price list (api.fal.ai/v1):
                                               {prices: [{endpoint_id, unit_price, unit,
                                               currency}], next_cursor, has_more}; 1-50 ids,
                                               PRICING_PAGE prices a page (`cursor=`)
  POST /rest/storage/auth/token?storage_type=fal-cdn-v3   upload -> {token, token_type,
                                               base_url, expires_at} (Key auth)
  POST /cdn/files/upload                       upload  the bytes, `Authorization: {token_type}
                                               {token}`, X-Fal-File-Name -> {access_url}
  GET  /cdn/files/{id}/{name}                  the uploaded bytes (what a model fetches)
  POST /rest/storage/upload/initiate?storage_type=gcs  upload  {file_name, content_type}
                                               -> {upload_url, file_url} (Key auth)
  PUT  /gcs/{id}?sig=...                       the fallback's signed PUT (no key)
(fal_client `CDNTokenManager`, `_async_upload_v3`, `_async_upload_via_storage`; the REST host
is <emulator url>/fal/rest, STORYREEL_FAL_REST_URL from `extra_env`.) Image fields are read as a
model would (tests/emulator/images.py): data URIs decoded, loopback URLs fetched; a URL that
cannot be read is a 422.
Follow-up URLs name owner/app only: one built with the endpoint path answers 404.
Auth: "Authorization: Key <FAL_KEY>". Errors: {"detail": "..."} (request errors add
"error_type" and an X-Fal-Error-Type header), 422 {"detail": [{loc, msg, type}]} for
model errors. Inputs are checked per model (`MODELS`): duration "5" vs "8s" vs int vs
num_frames. Base URL override: <emulator url>/fal (BASE_PATH ""); the Platform API's
<emulator url>/fal/v1 (STORYREEL_FAL_PLATFORM_URL, from `extra_env`).

Billing in units, as fal does (docs.fal.ai/documentation/model-apis/pricing): each endpoint
has a unit ("second" of video, or "video") and a unit price, the cheapest rate of its
prices.py entry; a job bills `x-fal-billable-units` (its seconds, scaled up for a dearer
resolution, or 1 video) and costs units x the account's unit price: the listed one unless
`emu.configure(unit_prices={"fal": {endpoint: usd}})` sets the account's own, which the
pricing answer then states too. Behind the HF router a job is billed as before (HF's rate).

The module is shared with the Hugging Face router emulator through `Queue`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.emulator import hostile
from tests.emulator import images as imagelib
from tests.emulator.core import EmuJob, Emulator, dimensions

VENDOR = "fal"
KEY_ENV = "FAL_KEY"
BASE_PATH = ""
PLATFORM_PATH = "/v1"
PRICING_PAGE = 8  # prices a page: a plan with more fal endpoints follows next_cursor
MAX_PRICE_IDS = 50  # endpoint ids a pricing request may name (fal's limit)


@dataclass(frozen=True)
class Rules:
    """One model's input schema, as far as the emulator checks it."""

    duration_field: str | None = "duration"
    durations: tuple[Any, ...] = ("5", "10")  # allowed values, with their exact JSON types
    image_field: str | None = None  # required on image-to-video endpoints
    aspects: tuple[str, ...] = ("16:9", "9:16", "1:1")
    resolutions: tuple[str, ...] = ()
    fps: int = 24  # for num_frames
    default_seconds: float = 5.0


_K3 = tuple(str(n) for n in range(3, 16))
_VEO = dict(durations=("4s", "6s", "8s"), aspects=("16:9", "9:16"),
            resolutions=("720p", "1080p", "4k"))
_WAN22 = dict(duration_field="num_frames", durations=tuple(range(17, 162)), fps=16,
              resolutions=("480p", "580p", "720p"))
_WAN27 = dict(durations=tuple(range(2, 16)), resolutions=("720p", "1080p"),
              aspects=("16:9", "9:16", "1:1", "4:3", "3:4"))
_I2V_AUTO = ("auto", "16:9", "9:16", "1:1")

# from each model's fal.ai/models/<id>/llms.txt input schema
MODELS: dict[str, Rules] = {
    "fal-ai/kling-video/v2.5-turbo/pro/text-to-video": Rules(),
    "fal-ai/kling-video/v2.5-turbo/pro/image-to-video": Rules(image_field="image_url"),
    "fal-ai/kling-video/v2.5-turbo/standard/image-to-video": Rules(image_field="image_url"),
    "fal-ai/kling-video/v3/pro/text-to-video": Rules(durations=_K3),
    "fal-ai/kling-video/v3/pro/image-to-video": Rules(durations=_K3,
                                                      image_field="start_image_url"),
    "fal-ai/veo3.1": Rules(**_VEO),
    "fal-ai/veo3.1/image-to-video": Rules(**{**_VEO, "aspects": _I2V_AUTO[:3]},
                                          image_field="image_url"),
    "fal-ai/veo3.1/fast": Rules(**_VEO),
    "fal-ai/veo3.1/fast/image-to-video": Rules(**{**_VEO, "aspects": _I2V_AUTO[:3]},
                                               image_field="image_url"),
    "fal-ai/wan/v2.2-a14b/text-to-video": Rules(**_WAN22),
    "fal-ai/wan/v2.2-a14b/image-to-video": Rules(**_WAN22, aspects=_I2V_AUTO,
                                                 image_field="image_url"),
    "fal-ai/wan/v2.7/text-to-video": Rules(**_WAN27),
    "fal-ai/wan/v2.7/image-to-video": Rules(**_WAN27, image_field="image_url"),
    "fal-ai/hunyuan-video": Rules(duration_field="num_frames", durations=("129", "85"),
                                  aspects=("16:9", "9:16"), resolutions=("480p", "580p", "720p")),
    "fal-ai/ltx-video": Rules(duration_field=None, aspects=()),
    "fal-ai/ltx-video/image-to-video": Rules(duration_field=None, aspects=(),
                                             image_field="image_url"),
}


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    if status == 422:  # model errors are typed lists
        body: Any = {"detail": [{"loc": ["body"], "msg": message, "type": "value_error"}]}
    else:
        body = {"detail": message}
    return JSONResponse(body, status_code=status, headers=headers)


def without_job_id(body: dict[str, Any]) -> dict[str, Any]:
    """The submit answer minus what names the request (the id and the URLs built on it)."""
    named = ("request_id", "gateway_request_id", "status_url", "response_url", "cancel_url")
    return {k: v for k, v in body.items() if k not in named}


def _invalid(field_name: str, msg: str, kind: str, value: Any = None) -> Response:
    item = {"loc": ["body", field_name], "msg": msg, "type": kind, "input": value}
    return JSONResponse({"detail": [item]}, status_code=422)


def validate(model: str, body: Any) -> Response | None:
    """The model's 422 for a body it would refuse, else None."""
    rules = MODELS[model]
    if not isinstance(body, dict):
        return _invalid("body", "Input should be a valid dictionary", "dict_type", body)
    prompt = body.get("prompt")
    if prompt is None:
        return _invalid("prompt", "Field required", "missing")
    if not isinstance(prompt, str) or not prompt.strip():
        return _invalid("prompt", "Input should be a non-empty string", "string_type", prompt)
    if rules.duration_field and rules.duration_field in body:
        value = body[rules.duration_field]
        # exact JSON type matters: "5" is not 5, and True is not 1
        ok = any(type(value) is type(v) and value == v for v in rules.durations)
        if not ok:
            shown = ", ".join(repr(v) for v in rules.durations[:6])
            return _invalid(rules.duration_field, f"Input should be one of {shown}...", "enum",
                            value)
    if rules.image_field:
        image = body.get(rules.image_field)
        if image is None:
            return _invalid(rules.image_field, "Field required", "missing")
        if not isinstance(image, str) or not image.startswith(("http://", "https://", "data:")):
            return _invalid(rules.image_field, "Input should be a URL or a data URI",
                            "url_parsing", str(image)[:50])
    aspect = body.get("aspect_ratio")
    if aspect is not None and aspect not in rules.aspects:
        return _invalid("aspect_ratio", f"Input should be one of {rules.aspects}", "enum", aspect)
    res = body.get("resolution")
    if res is not None and res not in rules.resolutions:
        return _invalid("resolution", f"Input should be one of {rules.resolutions}", "enum", res)
    seed = body.get("seed")
    if seed is not None and type(seed) is not int:
        return _invalid("seed", "Input should be a valid integer", "int_type", seed)
    neg = body.get("negative_prompt")
    if neg is not None and not isinstance(neg, str):
        return _invalid("negative_prompt", "Input should be a valid string", "string_type", neg)
    return None


def seconds_of(model: str, body: dict) -> float:
    rules = MODELS[model]
    value = body.get(rules.duration_field) if rules.duration_field else None
    if value is None or model == "fal-ai/hunyuan-video":
        return rules.default_seconds
    if rules.duration_field == "num_frames":
        return round((int(value) - 1) / rules.fps, 3)
    return float(str(value).rstrip("s"))


def extra_env(emu: Emulator) -> dict[str, str]:
    return {"STORYREEL_FAL_PLATFORM_URL": f"{emu.base_url(VENDOR)}{PLATFORM_PATH}",
            "STORYREEL_FAL_REST_URL": f"{emu.base_url(VENDOR)}/rest"}


def listed_price(emu: Emulator, vendor: str, name: str, model: str) -> tuple[str, float] | None:
    """(unit, USD per unit) of a model: per second at its cheapest resolution, or per video
    when its price does not grow with length; None when the emulator has no price for it."""
    entry = emu.price_entry(vendor, name)
    if entry is None:
        return None
    resolutions = MODELS[model].resolutions or ("720p",)
    # the unit is the cheapest way to run it (lowest resolution, audio off); a dearer request
    # bills more units of it
    quiet = {entry.audio_param: False} if entry.silent is not None else None
    cheapest = min(resolutions, key=lambda r: entry.usd(100.0, r, quiet))
    step = round(entry.usd(101.0, cheapest, quiet) - entry.usd(100.0, cheapest, quiet), 6)
    if step > 0:
        return "second", step
    return "video", entry.usd(100.0, cheapest, quiet)


def account_price(emu: Emulator, model: str) -> tuple[str, float] | None:
    """What this account pays per unit of a fal endpoint (its own price where one is set)."""
    listed = listed_price(emu, VENDOR, model, model)
    if listed is None:
        return None
    own = emu.unit_prices.get(VENDOR, {}).get(model)
    return listed[0], (own if own is not None else listed[1])


def units_text(units: float) -> str:
    """A count as fal's header writes it: a plain decimal ("5", "7.5")."""
    return f"{units:.6f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Queue:
    """The fal queue protocol, served directly (fal) or behind the HF router."""

    vendor: str
    scheme: str = "Key"
    model_prefix: str = ""  # how the vendor's catalog names the model ("fal-ai:" on HF)
    public_root: str | None = None  # base of the URLs in answers; None = the emulator's own

    def root(self, emu: Emulator) -> str:
        return self.public_root or emu.base_url(self.vendor)

    def urls(self, emu: Emulator, job: EmuJob) -> dict[str, str]:
        root = hostile.answer_root(emu, job, self.root(emu))
        base = f"{root}/{job.data['owner_app']}/requests/{job.id}"
        return {"response_url": base, "status_url": f"{base}/status",
                "cancel_url": f"{base}/cancel"}

    def denied(self, request: Request, emu: Emulator) -> Response | None:
        return emu.check_key(request, self.vendor, scheme=self.scheme)

    async def submit(self, request: Request, emu: Emulator, model: str) -> Response:
        if (denied := self.denied(request, emu)) is not None:
            return denied
        if model not in MODELS:
            return error_response(404, f"Application '{model}' not found")
        try:
            body: Any = await request.json()
        except ValueError:
            return error_response(400, "Request body is not valid JSON")
        if (refused := validate(model, body)) is not None:
            return refused
        seen: dict[str, str | None] = {}
        for key in [k for k in body if k.endswith(("image_url", "image_urls"))]:
            for i, ref in enumerate(body[key] if isinstance(body[key], list) else [body[key]]):
                try:
                    seen[f"{key}[{i}]" if key.endswith("s") else key] = imagelib.digest(
                        await imagelib.resolve(ref))
                except imagelib.Unresolvable as exc:
                    return _invalid(key, str(exc), "file_download_error", str(ref)[:50])
        aspect = body.get("aspect_ratio") or "16:9"
        resolution = body.get("resolution") or "720p"
        width, height = dimensions(aspect if ":" in aspect else "16:9", resolution)
        seconds = seconds_of(model, body)
        name = self.model_prefix + model
        listed = listed_price(emu, self.vendor, name, model)
        units, price = None, None
        if listed is not None:  # else new_job answers the vendor's 404 for an unknown model
            entry = emu.price_entry(self.vendor, name)
            assert entry is not None
            # the request's own switches (audio on or off) count, as the vendor counts them
            units = round(entry.usd(seconds, resolution, body) / listed[1], 6)
            if self.vendor == VENDOR:  # fal bills the account's unit price
                own = account_price(emu, model)
                assert own is not None
                price = round(units * own[1] * emu.factor(VENDOR, model), 6)
        job = emu.new_job(self.vendor, model=name, duration=seconds, width=width,
                          height=height, resolution=resolution, request=body, price_usd=price)
        job.data["billable_units"] = units
        job.data["images"] = seen
        job.data.update(owner_app="/".join(model.split("/")[:2]), path=request.url.path,
                        query=request.url.query, headers=dict(request.headers))
        answer = {"request_id": job.id, "status": "IN_QUEUE", "queue_position": 0,
                  **self.urls(emu, job)}
        return JSONResponse(answer, headers={"x-fal-request-id": job.id})

    def find(self, request: Request, emu: Emulator) -> EmuJob | Response:
        job = emu.get_job(self.vendor, request.path_params["rid"])
        # fal's follow-up URLs are owner/app only; the endpoint path there is not found
        if job is None or request.path_params["app"] != job.data.get("owner_app"):
            return JSONResponse({"detail": "Request not found", "status": "NOT_FOUND"},
                                status_code=404)
        return job

    async def status(self, request: Request, emu: Emulator) -> Response:
        if (denied := self.denied(request, emu)) is not None:
            return denied
        emu.count(self.vendor, "polls")
        job = self.find(request, emu)
        if isinstance(job, Response):
            return job
        state = emu.state(job)
        logs = [] if request.query_params.get("logs") in ("1", "true", "True") else None
        urls = self.urls(emu, job)
        if state == "queued":
            body = {"status": "IN_QUEUE", "queue_position": 0, **urls}
            return JSONResponse(body, status_code=202)
        if state == "running":
            return JSONResponse({"status": "IN_PROGRESS", "logs": logs, **urls}, status_code=202)
        error, error_type = {
            "succeeded": (None, None),
            "failed": (job.error, "runner_server_error"),
            "policy": (job.error, None),  # a model error: no request error type
            "canceled": ("Request was cancelled by the client", "client_cancelled"),
        }[state]
        body = {"status": "COMPLETED", "logs": logs, "metrics": {"inference_time": job.ready_after},
                "error": error, "error_type": error_type, **urls}
        return JSONResponse(body, status_code=200)

    async def result(self, request: Request, emu: Emulator) -> Response:
        if (denied := self.denied(request, emu)) is not None:
            return denied
        emu.count(self.vendor, "results")
        job = self.find(request, emu)
        if isinstance(job, Response):
            return job
        state = emu.state(job)
        rid = {"x-fal-request-id": job.id}
        if state in ("queued", "running"):
            return JSONResponse({"detail": "Request is still in progress"}, status_code=400,
                                headers=rid)
        if state == "failed":
            return JSONResponse({"detail": job.error, "error_type": "runner_server_error"},
                                status_code=500,
                                headers={**rid, "X-Fal-Error-Type": "runner_server_error"})
        if state == "policy":
            item = {"loc": ["body", "prompt"], "msg": job.error,
                    "type": "content_policy_violation",
                    "url": "https://docs.fal.ai/errors#content_policy_violation"}
            return JSONResponse({"detail": [item]}, status_code=422,
                                headers={**rid, "X-Fal-Retryable": "false"})
        if state == "canceled":
            return JSONResponse({"detail": "Request was cancelled", "error_type":
                                 "client_cancelled"}, status_code=499, headers=rid)
        video = {"url": emu.video_url(job), "content_type": "video/mp4",
                 "file_name": "output.mp4"}
        units = job.data.get("billable_units")
        headers = {**rid, "x-fal-billable-units": units_text(units if units is not None
                                                             else job.duration)}
        return JSONResponse({"video": video, "seed": job.request.get("seed", 42)},
                            headers=headers)

    async def cancel(self, request: Request, emu: Emulator) -> Response:
        if (denied := self.denied(request, emu)) is not None:
            return denied
        emu.count(self.vendor, "cancels")
        job = self.find(request, emu)
        if isinstance(job, Response):
            return job
        if emu.cancel(job):
            return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)
        return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)

    def routes(self, emu: Emulator, prefix: str = "") -> list[Route]:
        async def submit(request: Request, emu: Emulator) -> Response:
            return await self.submit(request, emu, request.path_params["model"])

        p, v = prefix, self.vendor
        return [  # follow-ups first: the submit route's path would swallow them
            emu.route(v, p + "/{app:path}/requests/{rid}/status", self.status, stage="poll"),
            emu.route(v, p + "/{app:path}/requests/{rid}/cancel", self.cancel, methods=["PUT"],
                      stage="cancel"),
            emu.route(v, p + "/{app:path}/requests/{rid}", self.result, stage="result"),
            emu.route(v, p + "/{model:path}", submit, methods=["POST"], stage="submit"),
        ]


QUEUE = Queue(VENDOR)


def _cursor(page: int) -> str:
    return base64.b64encode(str(page).encode()).decode()


async def pricing(request: Request, emu: Emulator) -> Response:
    """GET /v1/models/pricing (docs.fal.ai/platform-apis/v1/models/pricing)."""
    if (denied := emu.check_key(request, VENDOR, scheme="Key")) is not None:
        return denied
    emu.count(VENDOR, "price_lookups")
    ids = list(dict.fromkeys(
        part.strip() for value in request.query_params.getlist("endpoint_id")
        for part in value.split(",") if part.strip()))
    if not 1 <= len(ids) <= MAX_PRICE_IDS:
        return error_response(400, f"endpoint_id: give 1-{MAX_PRICE_IDS} endpoint ids "
                              f"(got {len(ids)})")
    page = 0
    if (cursor := request.query_params.get("cursor")) is not None:
        try:
            page = int(base64.b64decode(cursor, validate=True).decode())
        except (binascii.Error, ValueError):
            return error_response(400, "cursor: not a cursor this API gave")
    items = []
    for eid in ids:
        found = account_price(emu, eid) if eid in MODELS else None
        if found is not None:
            items.append({"endpoint_id": eid, "unit_price": found[1], "unit": found[0],
                          "currency": "USD"})
    start = page * PRICING_PAGE
    more = start + PRICING_PAGE < len(items)
    return JSONResponse({"prices": items[start:start + PRICING_PAGE],
                         "next_cursor": _cursor(page + 1) if more else None, "has_more": more})


# -- storage (uploads) ------------------------------------------------------------------------

FILES = imagelib.FileStore()
_TOKENS: set[str] = set()
_SIGNED: dict[str, tuple[str, str, str]] = {}  # signed PUT id -> (sig, mime, name)


def _key_denied(request: Request, emu: Emulator) -> Response | None:
    return emu.check_key(request, VENDOR, scheme="Key")


async def storage_token(request: Request, emu: Emulator) -> Response:
    if (denied := _key_denied(request, emu)) is not None:
        return denied
    if request.query_params.get("storage_type") != "fal-cdn-v3":
        return error_response(400, "Unsupported storage_type")
    emu.count(VENDOR, "uploads")
    token = secrets.token_urlsafe(24)
    _TOKENS.add(token)
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    return JSONResponse({"token": token, "token_type": "Bearer",
                         "base_url": f"{emu.base_url(VENDOR)}/cdn",
                         "expires_at": expires.isoformat()})


def _file_url(emu: Emulator, fid: str, name: str) -> str:
    return f"{emu.base_url(VENDOR)}/cdn/files/{fid}/{quote(name, safe='')}"


async def cdn_upload(request: Request, emu: Emulator) -> Response:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or token not in _TOKENS:
        emu.count(VENDOR, "auth_failures")
        return error_response(401, "Invalid upload token")
    data = await request.body()
    if not data:
        return error_response(400, "Empty upload")
    name = request.headers.get("x-fal-file-name") or "upload.bin"
    mime = request.headers.get("content-type") or "application/octet-stream"
    fid = FILES.put(data, mime, name)
    return JSONResponse({"access_url": _file_url(emu, fid, name),
                         "lifecycle": request.headers.get("x-fal-object-lifecycle")})


async def cdn_file(request: Request, emu: Emulator) -> Response:
    stored = FILES.get(request.path_params["fid"])
    if stored is None:
        return Response(b"Not Found", status_code=404, media_type="text/plain")
    return Response(stored.data, media_type=stored.mime)


async def storage_initiate(request: Request, emu: Emulator) -> Response:
    if (denied := _key_denied(request, emu)) is not None:
        return denied
    if request.query_params.get("storage_type") != "gcs":
        return error_response(400, "Unsupported storage_type")
    emu.count(VENDOR, "uploads")
    try:
        body = await request.json()
    except ValueError:
        return error_response(400, "Request body is not valid JSON")
    if not isinstance(body, dict) or not body.get("file_name") or not body.get("content_type"):
        return error_response(422, "file_name and content_type are required")
    slot, sig = secrets.token_hex(8), secrets.token_urlsafe(16)
    _SIGNED[slot] = (sig, str(body["content_type"]), str(body["file_name"]))
    return JSONResponse({"upload_url": f"{emu.url}/{VENDOR}/gcs/{slot}?sig={sig}",
                         "file_url": _file_url(emu, slot, str(body["file_name"]))})


async def signed_put(request: Request, emu: Emulator) -> Response:
    slot = request.path_params["slot"]
    entry = _SIGNED.get(slot)
    if entry is None or request.query_params.get("sig") != entry[0]:
        return Response(b"<Error><Code>SignatureDoesNotMatch</Code></Error>", status_code=403,
                        media_type="application/xml")
    if "authorization" in request.headers:  # a signed URL carries its own credentials
        return Response(b"<Error><Code>InvalidArgument</Code></Error>", status_code=400,
                        media_type="application/xml")
    data = await request.body()
    with FILES._lock:
        FILES._files[slot] = imagelib.Stored(data, request.headers.get("content-type") or
                                             entry[1], entry[2])
    return Response(b"", status_code=200)


def routes(emu: Emulator) -> list[Route]:
    platform = [emu.route(VENDOR, PLATFORM_PATH + "/models/pricing", pricing, stage="pricing")]
    storage = [
        emu.route(VENDOR, "/rest/storage/auth/token", storage_token, methods=["POST"],
                  stage="upload"),
        emu.route(VENDOR, "/rest/storage/upload/initiate", storage_initiate, methods=["POST"],
                  stage="upload"),
        emu.route(VENDOR, "/cdn/files/upload", cdn_upload, methods=["POST"], stage="upload"),
        emu.route(VENDOR, "/cdn/files/{fid}/{name}", cdn_file, stage="upload"),
        emu.route(VENDOR, "/gcs/{slot}", signed_put, methods=["PUT"], stage="upload"),
    ]
    return platform + storage + QUEUE.routes(emu)
