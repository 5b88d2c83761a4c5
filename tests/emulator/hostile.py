"""Hostile vendor answers, for the security tests (INTERFACE.md "Hostile answers").

"Another host" is the same server reached by another name: `localhost` instead of
`127.0.0.1`. A client that sends a credential header to it is recorded in
`emu.offhost_credentials` (host, path, header name), never the value.

Faults (validated by faults.py like every other):
* stage "job" (consumed by new_job, any vendor; the job itself succeeds):
  - `job_id`, param `job_id="../../../../tmp/x"`: the vendor names the job with this id.
  - `video_url`, param `url="file:///etc/passwd"` (or a private address): the finished job's
    video URL is this.
  - `foreign_urls`: the absolute follow-up URLs in the vendor's answers (fal's status_url /
    response_url / cancel_url, VideoGenAPI's status_url) point at the other host.
* stage "poll": `redirect`: a 307 to the same path and query on the other host.
* stage "download": `redirect` (a 302 to the same media path on the other host) and `gzip`
  (the clip gzip-compressed, `Content-Encoding: gzip`, Content-Length of the encoded bytes).
"""

from __future__ import annotations

import gzip
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

if TYPE_CHECKING:
    from tests.emulator.core import EmuJob, Emulator

JOB_KINDS = {"job_id", "video_url", "foreign_urls"}
POLL_KINDS = {"redirect"}
DOWNLOAD_KINDS = {"redirect", "gzip"}
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "x-key", "api-key",
                      "cookie", "proxy-authorization")
HOME = "127.0.0.1"
OTHER = "localhost"


def other_url(emu: Emulator) -> str:
    """The emulator's own URL under its other name."""
    return emu.url.replace(f"//{HOME}:", f"//{OTHER}:", 1)


def apply_job_fault(job: EmuJob, kind: str, params: dict[str, Any]) -> None:
    """What a hostile job fault leaves on the job (the id is applied by new_job itself)."""
    if kind == "video_url":
        job.data["video_url"] = str(params["url"])
    elif kind == "foreign_urls":
        job.data["foreign_urls"] = True


def answer_root(emu: Emulator, job: EmuJob, root: str) -> str:
    """`root` (an absolute URL on the emulator) moved to the other host for a job with the
    foreign_urls fault."""
    if job.data.get("foreign_urls"):
        return root.replace(emu.url, other_url(emu), 1)
    return root


def redirect_elsewhere(emu: Emulator, request: Request, status: int = 307) -> Response:
    query = f"?{request.url.query}" if request.url.query else ""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    return RedirectResponse(f"{other_url(emu)}{raw.decode('latin-1')}{query}",
                            status_code=status)


def gzip_response(data: bytes) -> Response:
    body = gzip.compress(data, compresslevel=1)
    return Response(body, media_type="video/mp4", headers={"content-encoding": "gzip"})


def observe(emu: Any, scope: dict[str, Any]) -> None:
    """Record credential headers that reached the emulator under a host name other than its own."""
    headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
    host = headers.get("host", b"").decode("latin-1").rsplit(":", 1)[0]
    if host and host != HOME:
        path = scope.get("path", "")
        leaks = getattr(emu, "offhost_credentials", None)
        if leaks is not None:
            leaks.extend((host, path, name) for name in CREDENTIAL_HEADERS if name in headers)


def keep_escaped_slashes(scope: dict[str, Any]) -> None:
    """uvicorn decodes `%2F` into `/` in scope["path"], so an escaped job id would no longer
    be one path segment; keep it escaped there (Emulator.get_job unescapes ids)."""
    raw = scope.get("raw_path")
    if raw and b"%2f" in raw.lower():
        text = raw.decode("latin-1").replace("%2F", "%252F").replace("%2f", "%252f")
        scope["path"] = unquote(text)
