"""Fault queues: per (vendor, stage) FIFO lists of faults, each good for `times` requests."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

REQUEST_KINDS = {"http", "slow", "reset", "drop_response"}
# the vendor takes the job (it runs and bills), then answers badly: an HTTP error, a 2xx
# without the job's id, a 2xx that is not JSON
ACCEPT_KINDS = {"accept_then_http", "accept_then_no_id", "accept_then_garbage"}
STAGE_KINDS: dict[str, set[str]] = {
    "submit": REQUEST_KINDS | ACCEPT_KINDS,
    "poll": REQUEST_KINDS,
    "result": REQUEST_KINDS,
    "cancel": REQUEST_KINDS,
    "upload": REQUEST_KINDS,
    "download": {"http", "slow", "reset", "truncate", "html", "expired"},
    "job": {"fail", "policy", "never"},
    # a vendor's price list (fal's Platform API /models/pricing): refused, slow, not JSON
    "pricing": REQUEST_KINDS | {"accept_then_garbage"},
}
# hostile answers (tests/emulator/hostile.py), for the security tests
STAGE_KINDS["job"] = STAGE_KINDS["job"] | {"job_id", "video_url", "foreign_urls"}
STAGE_KINDS["poll"] = STAGE_KINDS["poll"] | {"redirect", "patch"}
STAGE_KINDS["result"] = STAGE_KINDS["result"] | {"patch"}
# a job that takes a cancel request and runs on (and bills) all the same
STAGE_KINDS["job"] = STAGE_KINDS["job"] | {"ignore_cancel"}
STAGE_KINDS["download"] = STAGE_KINDS["download"] | {"redirect", "gzip"}
# a job that succeeds (and bills) with a bad picture: all black (a moderation blank, a
# failed decode upstream) or one frame held for the whole clip
PICTURE_KINDS = {"black", "frozen"}
STAGE_KINDS["job"] = STAGE_KINDS["job"] | PICTURE_KINDS
HTTP_STATUSES = {400, 401, 402, 403, 404, 408, 409, 422, 429, 500, 502, 503, 504}
DEFAULT_MESSAGES = {
    400: "Bad request",
    401: "Invalid API key",
    402: "Insufficient credits",
    403: "Forbidden",
    404: "Not found",
    408: "Request timeout",
    409: "Conflict",
    422: "Unprocessable entity",
    429: "Rate limit exceeded, please retry later",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service temporarily unavailable",
    504: "Gateway timeout",
}


@dataclass
class Fault:
    kind: str
    times: int  # requests left; -1 = forever
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "times": self.times, **self.params}


def validate(stage: str, kind: str, times: int, params: dict[str, Any]) -> None:
    """Reject faults a test could not have meant (typos would otherwise silently never fire)."""
    kinds = STAGE_KINDS.get(stage)
    if kinds is None:
        raise ValueError(f"unknown fault stage {stage!r} (known: {', '.join(STAGE_KINDS)})")
    if kind not in kinds:
        raise ValueError(f"fault kind {kind!r} is not valid at stage {stage!r} "
                         f"(valid: {', '.join(sorted(kinds))})")
    if not isinstance(times, int) or (times < 1 and times != -1):
        raise ValueError(f"times must be a positive integer or -1 (forever), got {times!r}")
    if kind in ("http", "accept_then_http"):
        status = params.get("status")
        if status not in HTTP_STATUSES:
            raise ValueError(f"http fault needs status in {sorted(HTTP_STATUSES)}, got {status!r}")
    if kind == "slow" and not isinstance(params.get("delay"), int | float):
        raise ValueError("slow fault needs delay=<seconds>")
    if stage == "job" and kind == "job_id" and not isinstance(params.get("job_id"), str):
        raise ValueError("job_id fault needs job_id=<the id the vendor answers>")
    if stage == "job" and kind == "video_url" and not isinstance(params.get("url"), str):
        raise ValueError("video_url fault needs url=<the video URL the vendor answers>")


class FaultBook:
    """Thread-safe: the test thread injects while the server thread consumes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[tuple[str, str], deque[Fault]] = {}

    def add(self, vendor: str, stage: str, kind: str, times: int, params: dict[str, Any]) -> None:
        validate(stage, kind, times, params)
        with self._lock:
            self._queues.setdefault((vendor, stage), deque()).append(Fault(kind, times, params))

    def take(self, vendor: str, stage: str) -> Fault | None:
        """Consume one use of the oldest pending fault for (vendor, stage)."""
        with self._lock:
            queue = self._queues.get((vendor, stage))
            if not queue:
                return None
            fault = queue[0]
            if fault.times != -1:
                fault.times -= 1
                if fault.times == 0:
                    queue.popleft()
            return Fault(fault.kind, 1, dict(fault.params))

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"vendor": v, "stage": s, **f.describe()}
                for (v, s), q in self._queues.items() for f in q
            ]

    def clear(self) -> None:
        with self._lock:
            self._queues.clear()


# -- delivering transport-level faults ---------------------------------------------------
# uvicorn gives an ASGI app no handle on the socket, so the server's outermost
# middleware stores uvicorn's per-request cycle (which owns the transport) in the
# scope under CYCLE_KEY. Closing that transport is what a client sees as a reset.

CYCLE_KEY = "storyreel.emulator.cycle"


async def _close(scope: dict[str, Any]) -> bool:
    """Close the connection under this request; False when not running under uvicorn."""
    cycle = scope.get(CYCLE_KEY)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        return False
    transport.close()  # FIN after flushing what was written; nothing more is sent
    # let uvicorn's connection_lost run so it does not log "returned without a response"
    for _ in range(200):
        if getattr(cycle, "disconnected", True):
            break
        await asyncio.sleep(0.005)
    return True


class DropConnection:
    """An ASGI 'response' that closes the connection without answering."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not await _close(scope):
            # elsewhere the nearest thing: headers promising a body that never comes
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"1")]})


class TruncatedBody:
    """Headers announce the whole file, half of it is sent, then the connection closes."""

    def __init__(self, data: bytes, media_type: str = "video/mp4") -> None:
        self.data = data
        self.media_type = media_type

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"content-type", self.media_type.encode()),
                   (b"content-length", str(len(self.data)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.data[: len(self.data) // 2],
                    "more_body": True})
        await _close(scope)


def patched(response: Any, fields: dict[str, Any]) -> Any:
    """A 2xx JSON answer with some fields replaced, `fields` by dotted path ("cost.credits",
    "data.0.cost"): a vendor answer whose shape is off (a wrong type, a negative or NaN
    cost). A path whose parent is missing is created."""
    import json

    from starlette.responses import Response

    if not 200 <= response.status_code < 300:
        return response
    body = json.loads(bytes(response.body))
    for path, value in fields.items():
        *parents, last = path.split(".")
        node = body
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    # allow_nan: a NaN cost is one of the shapes tried
    return Response(json.dumps(body, allow_nan=True), status_code=response.status_code,
                    headers=headers, media_type="application/json")
