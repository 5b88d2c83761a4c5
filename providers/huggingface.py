"""Hugging Face Inference Providers router, `fal-ai` route.

Protocol source: huggingface/huggingface_hub
`src/huggingface_hub/inference/_providers/fal_ai.py` (`FalAIQueueTask`,
`FalAITextToVideoTask`, `FalAIImageToVideoTask`), `inference/_client.py`
(`text_to_video`, `image_to_video`), `constants.py` (`INFERENCE_PROXY_TEMPLATE`).

* The router proxies a provider's own protocol: for fal that is the fal queue
  (providers/fal.py) under `{base}/fal-ai`, with `Authorization: Bearer hf_...`
  and `?_subdomain=queue` on every call:
  POST {base}/fal-ai/{fal_model}?_subdomain=queue with fal's own JSON input
  (image-to-video: `image_url`, a URL or data URI) -> fal's submit answer.
* Follow-ups keep the router prefix: the path of fal's `response_url`
  (`/{owner}/{app}/requests/{id}`) is put under `{base}/fal-ai`, so
  GET {base}/fal-ai/{owner}/{app}/requests/{id}/status?_subdomain=queue,
  GET .../requests/{id}?_subdomain=queue for the result and
  PUT .../requests/{id}/cancel?_subdomain=queue. A base with a path of its own
  (a proxy) keeps it, unlike the SDK, which adds `/fal-ai` only for the real host.
* Done better than the SDK: the status `error` of COMPLETED and the HTTP status
  of the result are both checked (the SDK checks neither and fails later on a
  missing `video` key); polling has a deadline (the SDK's loop has none) and
  5xx polls are retried; `negative_prompt` is a string (the SDK types it as a
  list, fal wants a string).

Choosing the routed provider: the catalog's `vendor_model` is
"<router provider>:<provider model id>", e.g.
"fal-ai:fal-ai/wan/v2.2-a14b/text-to-video". The provider model id is what
HF's model mapping (huggingface.co/api/models/<hub id>?expand[]=inferenceProviderMapping)
gives for a Hub model, resolved ahead of time so no lookup is needed per shot.
Only the `fal-ai` route is implemented; other providers are refused before
anything is sent.

Money: routed requests are billed by HF at the provider's price with no markup
(huggingface.co/docs/inference-providers/pricing); no per-request cost is
reported. If the router passes fal's `x-fal-billable-units` on (UNCONFIRMED) it
lands in `Poll.billable_units`, but no cost is derived from it: fal's Platform
API prices a fal account, not HF's billing, so routed jobs are booked at the
estimate. Error bodies of the router itself are {"error": "..."} (401 bad
token, 402 out of included credits); the provider's own errors pass through.
UNCONFIRMED: that the router forwards PUT cancel (the SDK never cancels; a
refused cancel just returns False), and that it accepts provider ids the Hub
mapping does not list (the catalog only names mapped ones).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

from providers.base import Provider
from providers.errors import InvalidRequestError
from providers.fal import FalProvider
from providers.types import ShotRequest

ROUTES = ("fal-ai",)  # router providers this adapter speaks
_QUEUE = "?_subdomain=queue"
_SEGMENT = r"(?!\.\.?(?:/|$))[A-Za-z0-9._~-]+"
_REQUEST_PATH = re.compile(rf"/{_SEGMENT}/{_SEGMENT}/requests/{_SEGMENT}")


def split_route(vendor_model: str) -> tuple[str, str]:
    """"fal-ai:fal-ai/wan/..." -> ("fal-ai", "fal-ai/wan/...")."""
    provider, sep, model = vendor_model.partition(":")
    if not sep or not provider or not model:
        raise ValueError(f"Hugging Face model {vendor_model!r} must be "
                         "'<router provider>:<provider model id>', e.g. 'fal-ai:fal-ai/ltx-video'")
    return provider, model


class HuggingFaceProvider(FalProvider):
    name: ClassVar[str] = "huggingface"
    key_env: ClassVar[str | None] = "HF_TOKEN"
    default_base_url: ClassVar[str] = "https://router.huggingface.co"
    base_url_env: ClassVar[str | None] = "STORYREEL_HF_BASE_URL"
    supports_cancel: ClassVar[bool] = True
    api_hosts: ClassVar[tuple[str, ...]] = ("router.huggingface.co",)
    # fal's storage takes a fal key, not an HF token: local images go inline
    upload_image = Provider.upload_image

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def model_id(self, req: ShotRequest) -> str:
        try:
            provider, model = split_route(req.vendor_model)
        except ValueError as exc:
            raise self.error(InvalidRequestError, str(exc)) from None
        if provider not in ROUTES:
            raise self.error(InvalidRequestError, f"router provider {provider!r} is not "
                             f"supported (supported: {', '.join(ROUTES)})")
        return model

    def submit_url(self, model_id: str) -> str:
        return f"{self.base_url}/fal-ai/{model_id}{_QUEUE}"

    def followup_urls(self, answer: dict[str, Any], model_id: str) -> dict[str, str]:
        fal_url = answer.get("response_url")
        path = urlsplit(fal_url).path.rstrip("/") if isinstance(fal_url, str) else ""
        if not _REQUEST_PATH.fullmatch(path):
            # as fal_client's from_request_id: owner/app, never the endpoint path; a path of
            # another shape (dot segments, escapes) is not put under our base URL
            owner_app = "/".join(quote(p, safe="") for p in model_id.split("/")[:2])
            path = f"/{owner_app}/requests/{quote(str(answer['request_id']), safe='')}"
        root = f"{self.base_url}/fal-ai{path}"
        return {
            "response_url": f"{root}{_QUEUE}",
            "status_url": f"{root}/status{_QUEUE}",
            "cancel_url": f"{root}/cancel{_QUEUE}",
            "route": "fal-ai",
        }
