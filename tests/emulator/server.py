"""The emulator's HTTP side: the Starlette app, the media route, the control API, uvicorn.

In tests the server runs in a daemon thread on its own event loop; standalone
(`python -m tests.emulator`) it runs in the main thread until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from tests.emulator import faults as faultlib
from tests.emulator import hostile, media

if TYPE_CHECKING:
    from tests.emulator.core import Emulator

_EXPIRED_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    "<Message>Request has expired</Message><X-Amz-Expires>3600</X-Amz-Expires>"
    "</Error>"
)
_HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>"
    "<h1>Something went wrong</h1><p>The file could not be served.</p></body></html>"
)


class _CaptureCycle:
    """Outermost ASGI layer: keeps uvicorn's request cycle (it owns the socket) in the scope."""

    def __init__(self, app: Any, emu: Emulator | None = None) -> None:
        self.app = app
        self.emu = emu

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope[faultlib.CYCLE_KEY] = getattr(receive, "__self__", None)
            hostile.observe(self.emu, scope)
            hostile.keep_escaped_slashes(scope)
        await self.app(scope, receive, send)


def build_app(emu: Emulator) -> Any:
    routes: list[Any] = [
        Route("/_emulator/health", lambda r: JSONResponse({"ok": True})),
        Route("/_emulator/stats", _stats_endpoint(emu)),
        Route("/_emulator/reset", _reset_endpoint(emu), methods=["POST"]),
        Route("/_emulator/faults", _faults_endpoint(emu), methods=["GET", "POST"]),
        Route("/_emulator/config", _config_endpoint(emu), methods=["GET", "POST"]),
        Route("/_emulator/jobs", _jobs_endpoint(emu)),
        Route("/_media/{vendor}/{token}.mp4", _media_endpoint(emu)),
    ]
    for vendor, module in emu.vendors.items():
        routes.append(Mount(f"/{vendor}", routes=module.routes(emu)))
    return _CaptureCycle(Starlette(routes=routes), emu)


def _media_endpoint(emu: Emulator) -> Any:
    async def serve(request: Request) -> Any:
        vendor = request.path_params["vendor"]
        if vendor not in emu.vendors:
            return Response("Not Found", status_code=404, media_type="text/plain")
        fault = emu.take_fault(vendor, "download")
        kind = fault.kind if fault else None
        if kind == "slow":
            await asyncio.sleep(float(fault.params["delay"]))  # type: ignore[union-attr]
        elif kind == "http":
            return emu.http_fault(None, fault)  # type: ignore[arg-type]
        elif kind == "reset":
            return faultlib.DropConnection()
        elif kind == "html":
            return Response(_HTML_PAGE, media_type="text/html")
        elif kind == "expired":
            return Response(_EXPIRED_XML, status_code=403, media_type="application/xml")
        elif kind == "redirect":
            return hostile.redirect_elsewhere(emu, request, status=302)
        job = emu.job_by_token(request.path_params["token"])
        if job is None or job.vendor != vendor or emu.state(job) != "succeeded":
            return Response("Not Found", status_code=404, media_type="text/plain")
        width, height = emu.media_dims(job)
        # ffmpeg runs in a worker thread so other requests keep being answered meanwhile
        look = media.look_of(job.serial) if emu.distinct_clips else 0
        data = await asyncio.to_thread(media.clip_bytes, job.duration, width, height, 24, look,
                                       job.data.get("picture", ""))
        if kind == "truncate":
            return faultlib.TruncatedBody(data)
        if kind == "gzip":
            emu.count(vendor, "downloads")
            return hostile.gzip_response(data)
        emu.count(vendor, "downloads")
        return Response(data, media_type="video/mp4")

    return serve


# public name: a vendor whose downloads go through its own API (gemini's Files API) serves
# the clip, with the core's download faults and counters, by calling this endpoint
media_endpoint = _media_endpoint


def _stats_endpoint(emu: Emulator) -> Any:
    async def stats(request: Request) -> Response:
        vendor = request.query_params.get("vendor")
        try:
            return JSONResponse(emu.stats(vendor))
        except KeyError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)

    return stats


def _reset_endpoint(emu: Emulator) -> Any:
    async def reset(request: Request) -> Response:
        emu.reset()
        return JSONResponse({"ok": True})

    return reset


def _faults_endpoint(emu: Emulator) -> Any:
    async def faults(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(emu.faults.pending())
        try:
            body = await request.json()
            params = {k: v for k, v in body.items()
                      if k not in ("vendor", "stage", "kind", "times")}
            emu.inject(body["vendor"], body["stage"], body["kind"],
                       times=body.get("times", 1), **params)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return JSONResponse({"error": f"bad fault: {exc}"}, status_code=400)
        return JSONResponse({"ok": True, "pending": emu.faults.pending()})

    return faults


def _config_endpoint(emu: Emulator) -> Any:
    async def config(request: Request) -> Response:
        if request.method == "POST":
            try:
                body = await request.json()
                emu.configure(latency=body.get("latency"), jitter=body.get("jitter"),
                              price_multiplier=body.get("price_multiplier"),
                              distinct_clips=body.get("distinct_clips"),
                              unit_prices=body.get("unit_prices"))
            except (ValueError, TypeError, AttributeError) as exc:
                return JSONResponse({"error": f"bad config: {exc}"}, status_code=400)
        return JSONResponse({"latency": emu.latency, "jitter": emu.jitter,
                             "price_multiplier": emu.price_multiplier,
                             "unit_prices": emu.unit_prices,
                             "media_size": emu.media_size, "vendors": sorted(emu.vendors)})

    return config


def _jobs_endpoint(emu: Emulator) -> Any:
    async def jobs(request: Request) -> Response:
        vendor = request.query_params.get("vendor")
        return JSONResponse([
            {"id": j.id, "vendor": j.vendor, "model": j.model, "duration": j.duration,
             "state": emu.state(j), "price_usd": j.price_usd, "charged": emu.charged(j)}
            for j in emu.jobs(vendor)
        ])

    return jobs


def bind(port: int = 0, host: str = "127.0.0.1") -> socket.socket:
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it every keep-alive answer (headers, then body) waits ~40 ms for a delayed ACK
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def make_server(emu: Emulator) -> uvicorn.Server:
    config = uvicorn.Config(
        build_app(emu), lifespan="off", log_config=None, log_level="warning",
        access_log=False, timeout_graceful_shutdown=2, timeout_keep_alive=30,
    )
    return uvicorn.Server(config)


class ServerThread:
    """uvicorn on a port of 127.0.0.1 in a daemon thread; sets emu.url once it answers."""

    def __init__(self, emu: Emulator, port: int = 0) -> None:
        self.emu = emu
        self.sock = bind(port)
        self.port = self.sock.getsockname()[1]
        self.server = make_server(emu)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name=f"emulator:{self.port}", daemon=True)

    def start(self, timeout: float = 15.0) -> None:
        self.emu.url = f"http://127.0.0.1:{self.port}"
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the emulator's HTTP server did not start")
            time.sleep(0.01)
        # urllib, not httpx: a throwaway httpx client builds an SSL context (~50 ms)
        with urllib.request.urlopen(f"{self.emu.url}/_emulator/health", timeout=5) as resp:
            if resp.status != 200:
                raise RuntimeError(f"the emulator answered its health check with {resp.status}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout=5)
        self.sock.close()


def serve_forever(emu: Emulator, port: int, announce: Callable[[], None] | None = None) -> None:
    """Blocking, in the main thread (uvicorn handles Ctrl-C); `announce` runs once bound."""
    sock = bind(port)
    emu.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    if announce is not None:
        announce()
    make_server(emu).run(sockets=[sock])
