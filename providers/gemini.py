"""Google Veo on the Gemini Developer API: predictLongRunning, then poll the operation.

Protocol source: googleapis/python-genai `google/genai/models.py` (`generate_videos`,
`_GenerateVideosParameters_to_mldev`, `_GenerateVideosConfig_to_mldev`,
`_GenerateVideosOperation_from_mldev`), `operations.py` (`_get_videos_operation`), `files.py`
(`download`); ai.google.dev/gemini-api/docs/video; DaWe35/image-router#41 (an RAI block).

* Auth: `x-goog-api-key: <key>` (never `?key=` in the URL). A bad key answers 400
  INVALID_ARGUMENT with reason API_KEY_INVALID, not 401; a missing one 403 PERMISSION_DENIED.
* Submit: POST /v1beta/models/{model}:predictLongRunning with
  {"instances": [{"prompt", "image": {"bytesBase64Encoded", "mimeType"}}],
   "parameters": {"aspectRatio", "durationSeconds" (int), "resolution", "negativePrompt",
                  "sampleCount", ...}} -> {"name": "models/{model}/operations/{id}"}.
  The Developer API takes images inline only (`gcs_uri` is Vertex-only), so URL images are
  fetched (without the key) and inlined; a request carries at most 20 MB inline (the API's
  limit for inline data), checked before sending. It rejects `seed` (Vertex-only), so
  ShotRequest.seed is not sent. 1080p/4k need 8 s.
* References (characters): Veo 3.1 takes `instances[0].referenceImages`: up to 3 of
  {"image": {bytesBase64Encoded, mimeType}, "referenceType": "ASSET"} (python-genai
  `_VideoGenerationReferenceImage_to_mldev`; STYLE is Vertex-only). The SDK's docs: with
  reference images the prompt is required and `image`/`lastFrame` are not supported, so a
  request with both a first frame and references is refused before sending.
* Poll: GET /v1beta/{name}; `done` is absent until true. Then exactly one of `error`
  (google.rpc.Status) or `response.generateVideoResponse` {generatedSamples[].video.uri,
  raiMediaFilteredCount, raiMediaFilteredReasons}. THE trap: done with no samples and RAI
  reasons is a safety block (not charged), never a success.
* The video URI is a Files API URL that needs the same API key header.
* Errors: {"error": {"code", "message", "status", "details"}}; 429 RESOURCE_EXHAUSTED may carry
  a google.rpc.RetryInfo `retryDelay` ("33s") that is used as Retry-After.
UNCONFIRMED: cancel for Veo operations (not offered: supports_cancel is False); the wording of
prepaid-credit exhaustion; which GA Veo ids the Developer API serves (see the catalog).
"""

from __future__ import annotations

import base64
import mimetypes
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from providers import http
from providers.base import Provider
from providers.catalog import find_model
from providers.errors import (
    AuthError,
    ContentPolicyError,
    InsufficientCreditError,
    InvalidRequestError,
    JobFailedError,
    ProviderError,
    RateLimitedError,
    UnconfirmedSubmitError,
)
from providers.types import Clip, ImageInput, Job, Poll, ShotRequest

GOOGLE_HOST = "generativelanguage.googleapis.com"
IMAGE_MAX = 20 * 1024 * 1024  # inline request payload limit
MAX_REFERENCES = 3  # Veo 3.1: up to three asset images
INSTANCE_KEYS = {"lastFrame", "referenceImages", "video"}  # params that belong in the instance
VERTEX_ONLY = {"seed", "fps", "generateAudio", "outputGcsUri", "pubsubTopic", "compressionQuality"}

# google.rpc.Code -> our class, for an operation that ended with `error`
_RPC_CLASSES: dict[int, type[ProviderError]] = {
    3: InvalidRequestError,  # INVALID_ARGUMENT
    7: AuthError,  # PERMISSION_DENIED
    8: RateLimitedError,  # RESOURCE_EXHAUSTED
    9: InvalidRequestError,  # FAILED_PRECONDITION
    16: AuthError,  # UNAUTHENTICATED
}
# python-genai's operation names: models/{model}/operations/{id} (a bare operations/{id} too);
# checked rather than escaped, since its slashes are part of the path
_NAME_SEGMENT = r"(?!\.\.?(?:/|$))[A-Za-z0-9._-]+"
OPERATION = re.compile(rf"(?:models/{_NAME_SEGMENT}/)?operations/{_NAME_SEGMENT}")
_SAFETY_WORDS = ("safety", "usage guidelines", "responsible ai", "sensitive")


class GeminiProvider(Provider):
    name = "gemini"
    key_env = "GEMINI_API_KEY"
    default_base_url = f"https://{GOOGLE_HOST}"
    base_url_env = "STORYREEL_GEMINI_BASE_URL"
    supports_cancel = False
    api_hosts = (GOOGLE_HOST,)

    def auth_headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.key} if self.key else {}

    # -- submit -------------------------------------------------------------------------

    async def build_body(self, req: ShotRequest) -> dict[str, Any]:
        duration = int(round(req.duration_s))
        model = req.vendor_model
        instance: dict[str, Any] = {"prompt": req.prompt}
        if req.image is not None and req.references:
            raise self.error(InvalidRequestError, f"{req.model}: Veo takes reference images "
                             "or a first frame, not both", shot_id=req.shot_id)
        if req.image is not None:
            instance["image"] = await self._inline_image(req.image)
        if req.references:
            if len(req.references) > MAX_REFERENCES:
                raise self.error(InvalidRequestError, f"{req.model}: at most {MAX_REFERENCES} "
                                 f"reference images, not {len(req.references)}",
                                 shot_id=req.shot_id)
            instance["referenceImages"] = [
                {"image": await self._inline_image(r), "referenceType": "ASSET"}
                for r in req.references]
        inline = sum(len(i["bytesBase64Encoded"]) for i in _images(instance))
        if inline > IMAGE_MAX:
            raise self.error(InvalidRequestError, f"{req.model}: {inline} bytes of inline "
                             f"images, over the {IMAGE_MAX} byte request limit",
                             shot_id=req.shot_id)
        params: dict[str, Any] = {
            "aspectRatio": req.aspect_ratio,
            "durationSeconds": duration,
            "sampleCount": 1,
        }
        if not model.startswith("veo-2"):  # Veo 2 is 720p only and takes no resolution
            params["resolution"] = req.resolution
            if req.resolution in ("1080p", "4k") and duration != 8:
                raise self.error(InvalidRequestError,
                                 f"{req.model}: {req.resolution} needs an 8 s duration, "
                                 f"not {duration} s")
        if req.negative_prompt:
            params["negativePrompt"] = req.negative_prompt
        info = find_model(self.name, req.model)
        extras = {**(info.params if info else {}), **req.params}
        for key, value in extras.items():
            if key in VERTEX_ONLY:  # the Developer API answers 400 to these
                continue
            (instance if key in INSTANCE_KEYS else params)[key] = value
        return {"instances": [instance], "parameters": params}

    async def _inline_image(self, image: ImageInput) -> dict[str, str]:
        if image.url is None:
            data, mime = image.base64()
            return {"bytesBase64Encoded": data, "mimeType": mime}
        # a third-party URL: fetched without our key, then inlined; its size is checked
        # while it arrives (20 MB + 1 byte at most is read), not after
        resp = await http.send(
            self.client, "GET", image.url, stage="fetch", provider=self.name,
            map_error=lambda r, s: http.error_class_for_status(r.status_code)(
                f"reference image {image.url} answered HTTP {r.status_code}",
                provider=self.name, status_code=r.status_code),
            policy=self.retry, hosts=self.hosts,  # a storyboard's URL: public https only
            max_bytes=IMAGE_MAX,
            too_long=lambda cap: self.error(
                InvalidRequestError, f"reference image {image.url} is over 20 MB"),
        )
        mime = resp.headers.get("content-type", "").split(";")[0].strip()
        if not mime.startswith("image/"):
            mime = mimetypes.guess_type(urlsplit(image.url).path)[0] or "image/png"
        return {"bytesBase64Encoded": base64.b64encode(resp.content).decode("ascii"),
                "mimeType": mime}

    async def submit(self, req: ShotRequest) -> Job:
        body = await self.build_body(req)
        path = f"/v1beta/models/{req.vendor_model}:predictLongRunning"
        op = await self.call_json("POST", path, stage="submit", json=body)
        name = op.get("name") if isinstance(op, dict) else None
        if not name:
            raise self.unnamed("an operation name", op)
        if not isinstance(name, str) or not OPERATION.fullmatch(name):
            # accepted (2xx), so it may run and bill, but we cannot poll a name of this shape
            raise self.error(UnconfirmedSubmitError, "submit answered an operation name that "
                             f"is not models/<model>/operations/<id>: {str(name)[:120]!r}")
        return Job(provider=self.name, job_id=name.rsplit("/", 1)[-1],
                   data={"operation": name})

    # -- poll ---------------------------------------------------------------------------

    async def poll(self, job: Job) -> Poll:
        name = str(job.data.get("operation") or job.job_id)
        if not OPERATION.fullmatch(name):
            raise self.error(ProviderError, f"cannot poll operation {name[:120]!r}: not "
                             "models/<model>/operations/<id>", job=job)
        op = await self.call_json("GET", f"/v1beta/{name}", stage="poll")
        if not op.get("done"):
            pct = (op.get("metadata") or {}).get("progressPercent")
            return Poll(state="running", raw=op,
                        progress=pct / 100 if isinstance(pct, int | float) else None)
        if op.get("error"):
            return Poll(state="failed", raw=op, error=self._op_error(job, op["error"]))
        response = op.get("response") or {}
        result = response.get("generateVideoResponse", response)
        samples = result.get("generatedSamples") or result.get("generatedVideos") or []
        videos = [s.get("video") or {} for s in samples if isinstance(s, dict)]
        video = next((v for v in videos if v.get("uri")), None)
        if video is not None:
            return Poll(state="succeeded", raw=op, video_url=video.get("uri"))
        reasons = [str(r) for r in result.get("raiMediaFilteredReasons") or []]
        if reasons or result.get("raiMediaFilteredCount"):
            text = "; ".join(reasons) or "video withheld by the safety filter"
            return Poll(state="failed", raw=op, error=self.error(
                ContentPolicyError, f"blocked by Responsible AI filter: {text}", job=job,
                vendor_message=text))
        return Poll(state="failed", raw=op, error=self.error(
            JobFailedError, "operation finished without a video or a reason", job=job))

    def _op_error(self, job: Job, status: dict[str, Any]) -> ProviderError:
        message = str(status.get("message") or "operation failed")
        code = status.get("code")
        cls = _RPC_CLASSES.get(code, JobFailedError) if isinstance(code, int) else JobFailedError
        if any(w in message.lower() for w in _SAFETY_WORDS):
            cls = ContentPolicyError
        return self.error(cls, f"operation failed (code {code}): {message}", job=job,
                          vendor_message=message)

    # -- fetch --------------------------------------------------------------------------

    async def fetch(self, job: Job, done: Poll, dest: Path) -> Clip:
        if not done.video_url:
            raise self.error(ProviderError, "operation succeeded but names no video", job=job)
        # the Files API wants the key; providers/hosts.py keeps it off any other host,
        # including the storage host the Files API redirects to
        with self.about(job):
            await self.download(done.video_url, dest, headers=self.auth_headers())
        return Clip(path=dest, job_id=job.job_id, cost_usd=done.cost_usd)

    # -- errors -------------------------------------------------------------------------

    def error_message(self, body: Any, resp: httpx.Response) -> str:
        """google.rpc.Status: {"error": {"code", "message", "status", "details"}} (or a list)."""
        if isinstance(body, list) and body:
            body = body[0]
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict) and err.get("message"):
            text = f"{err.get('status') or err.get('code')}: {err['message']}"
            reasons = [d.get("reason") for d in err.get("details") or []
                       if isinstance(d, dict) and d.get("reason")]
            return f"{text} [{', '.join(reasons)}]" if reasons else text
        return super().error_message(body, resp)

    def classify(self, resp: httpx.Response, message: str) -> type[ProviderError]:
        low = message.lower()
        if "api_key_invalid" in low or "api key not valid" in low or "api key expired" in low:
            return AuthError
        if resp.status_code == 429 and any(
                w in low for w in ("prepayment", "credits are depleted", "free quota tier")):
            return InsufficientCreditError
        if "failed_precondition" in low and "billing" in low:
            return InsufficientCreditError
        if resp.status_code == 404 and ("is not found for api version" in low
                                        or "no longer available" in low):
            return InvalidRequestError  # unknown or shut-down model, not a lost job
        return http.error_class_for_status(resp.status_code)

    def map_error(self, resp: httpx.Response, stage: http.Stage) -> ProviderError:
        err = super().map_error(resp, stage)
        if err.retry_after is None:
            err.retry_after = _retry_delay(resp)
        return err


def _images(instance: dict[str, Any]) -> list[dict[str, str]]:
    """The inline images of an instance: first frame and references."""
    found = [instance["image"]] if "image" in instance else []
    return found + [r["image"] for r in instance.get("referenceImages", [])]


def _retry_delay(resp: httpx.Response) -> float | None:
    """Seconds from a google.rpc.RetryInfo detail ({"retryDelay": "33s"})."""
    try:
        body = resp.json()
    except ValueError:
        return None
    if isinstance(body, list) and body:
        body = body[0]
    err = body.get("error") if isinstance(body, dict) else None
    for detail in (err or {}).get("details") or []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            delay = str(detail.get("retryDelay", "")).rstrip("s")
            try:
                return float(delay)
            except ValueError:
                return None
    return None
