"""Hugging Face Inference Providers router emulator, `fal-ai` route
(huggingface/huggingface_hub `src/huggingface_hub/inference/_providers/fal_ai.py`).

The router proxies fal's queue under /fal-ai with `?_subdomain=queue` on every call:
  POST /fal-ai/{fal model id}?_subdomain=queue                    submit (fal's answer)
  GET  /fal-ai/{owner}/{app}/requests/{id}/status?_subdomain=queue status (202 / 200)
  GET  /fal-ai/{owner}/{app}/requests/{id}?_subdomain=queue        result
  PUT  /fal-ai/{owner}/{app}/requests/{id}/cancel?_subdomain=queue cancel
fal's answer passes through untouched, so its status/response URLs point at
https://queue.fal.run (a client must keep the router prefix, as huggingface_hub's
fal_ai.py does). Auth: "Authorization: Bearer <HF token>". The router's own errors are
{"error": "..."}; fal's errors (422 detail lists, failed results) pass through.
Jobs are priced by tests/emulator/prices.py (fal's price, no markup) under the catalog's name
"fal-ai:<fal model id>". Base URL override: <emulator url>/huggingface
(STORYREEL_HF_BASE_URL, set by `extra_env`).
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.emulator.core import Emulator
from tests.emulator.vendors.fal import Queue, without_job_id

__all__ = ["without_job_id"]  # fal's answer passes through the router: the same id fields

VENDOR = "huggingface"
KEY_ENV = "HF_TOKEN"
BASE_PATH = ""
FAL_PUBLIC_ROOT = "https://queue.fal.run"


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def extra_env(emu: Emulator) -> dict[str, str]:
    return {"STORYREEL_HF_BASE_URL": emu.base_url(VENDOR)}


@dataclass(frozen=True)
class RouterQueue(Queue):
    def denied(self, request: Request, emu: Emulator) -> Response | None:
        if (denied := super().denied(request, emu)) is not None:
            return denied
        if request.query_params.get("_subdomain") != "queue":
            # without it the router would call fal's synchronous host and hold the
            # connection for the whole generation; this emulator serves the queue only
            return error_response(400, "video tasks must use the queue: add ?_subdomain=queue")
        return None


QUEUE = RouterQueue(VENDOR, scheme="Bearer", model_prefix="fal-ai:",
                    public_root=FAL_PUBLIC_ROOT)


def routes(emu: Emulator) -> list[Route]:
    return QUEUE.routes(emu, prefix="/fal-ai")
