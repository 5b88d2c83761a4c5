"""HTTP for adapters: one client per run, retry rules per call kind, streamed downloads.

Retry policy (DESIGN "never retry a paid POST blindly"):
* poll / fetch / cancel (idempotent): retried on 429, 5xx, timeouts and resets,
  with exponential backoff and jitter, honouring Retry-After.
* submit (the paid POST): the one place that decides whether the vendor may have
  taken it. *Refused* (nothing charged; resent where retryable): no connection was
  made, 429, or any other 4xx (the vendor rejected the request before accepting it).
  *Unconfirmed* (UnconfirmedSubmitError, may_have_charged): every 5xx, read timeouts,
  resets and any other transport error once connected, a 2xx answer over the answer cap,
  and (in the adapters, through `Provider.unnamed` and `call_json`) a 2xx without a job id
  or not JSON. An adapter may name 5xx answers its vendor documents as refused
  (`Provider.submit_refused`, e.g. fal's ingress errors).

Reads are bounded: an API answer by answer_cap(), an error body by ERROR_BODY_MAX_BYTES, a
download by its size caps and a wall clock (download_time_limit()).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import os
import random
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from providers.errors import (
    AuthError,
    BadMediaError,
    InsufficientCreditError,
    InvalidRequestError,
    NotFoundError,
    ProviderError,
    RateLimitedError,
    TransientError,
    UnconfirmedSubmitError,
    UnsafeURLError,
)
from providers.hosts import Hosts, for_url, open_request

Stage = Literal["submit", "poll", "fetch", "cancel"]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # tries per idempotent call (1 + retries)
    submit_attempts: int = 4  # tries for a submit the vendor surely refused
    base_delay: float = 0.5
    max_delay: float = 20.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), 120.0)
        # full jitter keeps a burst of shots from retrying in lock-step
        cap = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return random.uniform(cap / 2, cap)


def default_timeout() -> httpx.Timeout:
    return httpx.Timeout(float(os.environ.get("STORYREEL_HTTP_TIMEOUT_S", "60")), connect=15.0)


# Requests in flight per client. httpcore's pool does work proportional to connections x
# (connections + queued requests) on every request: at 200 connections a 1000-shot run spent
# ~37 ms of CPU per job in it and ran into PoolTimeout (bench/README.md P2). So: few
# connections, and gates in front so that its queue stays empty; downloads have their own
# gate so that slow ones never hold up polls and submits.
_GATES: weakref.WeakKeyDictionary[httpx.AsyncClient, tuple[asyncio.Semaphore, asyncio.Semaphore]] \
    = weakref.WeakKeyDictionary()


def in_flight_limits() -> tuple[int, int]:
    """(API calls, downloads) at once per client: STORYREEL_HTTP_CONNECTIONS (default 16)
    and half as many downloads."""
    api = max(1, int(os.environ.get("STORYREEL_HTTP_CONNECTIONS", "16")))
    return api, max(2, api // 2)


def new_client() -> httpx.AsyncClient:
    """The one AsyncClient a run shares across all adapters."""
    api, downloads = in_flight_limits()
    limits = httpx.Limits(max_connections=api + downloads,
                          max_keepalive_connections=api + downloads)
    client = httpx.AsyncClient(timeout=default_timeout(), limits=limits, follow_redirects=True)
    _GATES[client] = (asyncio.Semaphore(api), asyncio.Semaphore(downloads))
    return client


def _gate(client: httpx.AsyncClient, download: bool = False) -> contextlib.AbstractAsyncContextManager[Any]:
    """The client's in-flight limit for API calls or downloads (none for other clients)."""
    gates = _GATES.get(client)
    return gates[download] if gates else contextlib.nullcontext()


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from Retry-After (seconds or HTTP date) or retry-after-ms."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def error_class_for_status(status: int) -> type[ProviderError]:
    if status in (401, 403):
        return AuthError
    if status == 402:
        return InsufficientCreditError
    if status == 429:
        return RateLimitedError
    if status in (404, 410):
        return NotFoundError
    if status >= 500:
        return TransientError
    return InvalidRequestError


# What is read of one answer. A vendor (or whatever answers in its place) can send any amount:
# an API answer is JSON of a few KiB, an error body is only quoted, so neither is read whole.
ANSWER_MAX_BYTES = 4 * 1024 * 1024  # a JSON answer (STORYREEL_MAX_ANSWER_BYTES)
ERROR_BODY_MAX_BYTES = 64 * 1024  # an error answer: this much is read, the rest dropped


def answer_cap() -> int:
    """Bytes one API answer may have: STORYREEL_MAX_ANSWER_BYTES (default 4 MiB)."""
    try:
        return max(1024, int(os.environ.get("STORYREEL_MAX_ANSWER_BYTES", ANSWER_MAX_BYTES)))
    except ValueError:
        return ANSWER_MAX_BYTES


async def read_body(resp: httpx.Response, cap: int) -> bool:
    """Read at most `cap` bytes (decoded: a compressed body is bounded too) of a streamed
    response, so that `.content`, `.text` and `.json()` work on them; True when that was the
    whole body. The rest stays unread: closing the response drops the connection."""
    declared = resp.headers.get("content-length", "")
    if (declared.isdigit() and int(declared) > cap and resp.is_success
            and not resp.headers.get("content-encoding")):
        resp._content = b""  # over the cap by its own account: nothing is read
        return False
    chunks: list[bytes] = []
    size, whole = 0, True
    async for chunk in resp.aiter_bytes():
        if size + len(chunk) > cap:
            chunks.append(chunk[:cap - size])
            whole = False
            break
        chunks.append(chunk)
        size += len(chunk)
    # httpx keeps a read body in `_content`; its .content/.text/.json() read that
    resp._content = b"".join(chunks)
    return whole


def body_text(resp: httpx.Response, limit: int = 500) -> str:
    try:
        text = resp.text
    except Exception:  # undecodable body
        return f"HTTP {resp.status_code}"
    return text[:limit]


ErrorMapper = Callable[[httpx.Response, Stage], ProviderError]
RefusedCheck = Callable[[httpx.Response], bool]
TooLong = Callable[[int], ProviderError]


def _never(resp: httpx.Response) -> bool:
    return False


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    stage: Stage,
    provider: str,
    map_error: ErrorMapper,
    policy: RetryPolicy,
    hosts: Hosts | None = None,
    submit_refused: RefusedCheck = _never,
    max_bytes: int | None = None,
    too_long: TooLong | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """One logical call with the stage's retry rule; returns a 2xx response or raises.
    `hosts`: where credentials may go (providers/hosts.py); None trusts only `url`'s origin.
    `submit_refused(resp)` says a 5xx submit answer surely left no job (vendor-documented).
    A 2xx answer over `max_bytes` (default answer_cap()) is an error: `too_long(cap)` if
    given, else unconfirmed for a submit and transient otherwise (a poll's job stays as it
    was); an error answer is read up to ERROR_BODY_MAX_BYTES only."""
    hosts = hosts or for_url(url)
    cap = answer_cap() if max_bytes is None else max_bytes
    attempt = 0
    while True:
        attempt += 1
        limit = policy.submit_attempts if stage == "submit" else policy.attempts
        try:
            async with _gate(client):
                resp = await open_request(client, method, url, hosts, stream=True, **kwargs)
                try:
                    whole = await read_body(
                        resp, cap if resp.is_success else ERROR_BODY_MAX_BYTES)
                finally:
                    await resp.aclose()
        except UnsafeURLError as exc:  # a refused URL or redirect: sending again changes nothing
            exc.provider = exc.provider or provider
            raise
        except httpx.InvalidURL as exc:  # never sent: nothing to retry, nothing charged
            raise InvalidRequestError(f"cannot send to {url[:120]!r}: {exc}",
                                      provider=provider) from None
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # nothing was sent (no connection, or none free in the pool): safe for every stage
            err: ProviderError = TransientError(f"cannot connect: {type(exc).__name__}: {exc}",
                                                provider=provider)
        except httpx.HTTPError as exc:  # timeouts, resets, a body that does not decode ...
            if stage == "submit":
                raise UnconfirmedSubmitError(
                    f"submit sent but no answer ({type(exc).__name__}); the vendor may have "
                    "accepted and charged it, so it is not resent",
                    provider=provider,
                ) from exc
            err = TransientError(f"{type(exc).__name__}: {exc}", provider=provider)
        else:
            if resp.is_success and whole:
                return resp
            if resp.is_success:  # an answer longer than any this call expects
                if too_long is not None:
                    raise too_long(cap)
                what = f"{stage} answered more than {cap} bytes (STORYREEL_MAX_ANSWER_BYTES)"
                if stage == "submit":
                    raise UnconfirmedSubmitError(
                        f"{what}; the vendor may have accepted (and will bill) it, so it is not "
                        "resent", provider=provider, status_code=resp.status_code)
                err = TransientError(what, provider=provider, status_code=resp.status_code)
            else:
                err = map_error(resp, stage)
            if stage == "submit" and resp.status_code >= 500 and not submit_refused(resp):
                # the app may have queued the job before it failed to answer
                raise UnconfirmedSubmitError(
                    f"{err.message}; the vendor may have accepted (and will bill) it, so it "
                    "is not resent", provider=provider, status_code=resp.status_code,
                    vendor_message=err.vendor_message, job_id=err.job_id)
        if not err.retryable or attempt >= limit:
            raise err
        await asyncio.sleep(policy.delay(attempt, err.retry_after))


def clip_cap() -> int:
    """Bytes one downloaded clip may have: STORYREEL_MAX_CLIP_BYTES (default 1 GiB)."""
    return int(os.environ.get("STORYREEL_MAX_CLIP_BYTES", str(1024**3)))


def run_cap() -> int:
    """Bytes all downloads of one run (one client) may add up to: STORYREEL_MAX_RUN_BYTES
    (default 20 GiB)."""
    return int(os.environ.get("STORYREEL_MAX_RUN_BYTES", str(20 * 1024**3)))


DOWNLOAD_MIN_RATE = 1024 * 1024  # bytes/s a download is allowed at worst, for its wall clock


def download_time_limit(max_bytes: int) -> float:
    """Seconds one download may take in all, retries included: STORYREEL_DOWNLOAD_MAX_S, else
    5 minutes plus the clip cap at 1 MiB/s (about 22 minutes for the 1 GiB default). The read
    timeout alone does not end a body that drips a byte just under it."""
    raw = os.environ.get("STORYREEL_DOWNLOAD_MAX_S")
    if raw:
        try:
            value = float(raw)
            if value > 0:
                return value
        except ValueError:
            pass
    return 300.0 + max_bytes / DOWNLOAD_MIN_RATE


class _OutOfTime(Exception):
    """The download's wall clock ran out: no retry (the time is spent)."""


# bytes received so far per client, i.e. per run (new_client makes one per run)
_RECEIVED: weakref.WeakKeyDictionary[httpx.AsyncClient, list[int]] = weakref.WeakKeyDictionary()


async def download(
    client: httpx.AsyncClient,
    url: str,
    dest: Path,
    *,
    provider: str,
    headers: dict[str, str] | None = None,
    max_bytes: int | None = None,
    policy: RetryPolicy = RetryPolicy(),
    hosts: Hosts | None = None,
) -> Path:
    """Stream `url` to `dest` atomically, checking type and length; retried on transient errors.

    Every hop is checked by providers/hosts.py (scheme, address, no key off the vendor's
    hosts); a refused URL is not retried. `max_bytes` (default clip_cap()) bounds the decoded
    file, run_cap() all downloads of the client; download_time_limit() the time it takes
    (waiting for a free download slot aside)."""
    hosts = hosts or for_url(url)
    max_bytes = clip_cap() if max_bytes is None else max_bytes
    clock = [download_time_limit(max_bytes)]  # seconds left, spent by every attempt
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):  # file:, data:, ftp: ... never fetched, never retried
        raise UnsafeURLError(f"refusing to download a {scheme or 'relative'}: URL "
                             f"({url[:120]}); only https is fetched", provider=provider)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        attempt += 1
        try:
            await _download_once(client, url, tmp, headers or {}, max_bytes, provider, hosts,
                                 clock)
            os.replace(tmp, dest)
            return dest
        except _OutOfTime:
            tmp.unlink(missing_ok=True)
            raise TransientError(f"download did not end within {download_time_limit(max_bytes):g}"
                                 " s (STORYREEL_DOWNLOAD_MAX_S)", provider=provider) from None
        except UnsafeURLError as exc:
            tmp.unlink(missing_ok=True)
            exc.provider = exc.provider or provider
            raise
        except (httpx.TransportError, TransientError, RateLimitedError, BadMediaError) as exc:
            tmp.unlink(missing_ok=True)
            retry_after = getattr(exc, "retry_after", None)
            if attempt >= policy.attempts:
                if isinstance(exc, ProviderError):
                    raise
                raise TransientError(f"download failed: {type(exc).__name__}: {exc}",
                                     provider=provider) from exc
            delay = policy.delay(attempt, retry_after)
            if delay >= clock[0]:
                raise TransientError(f"download failed: {type(exc).__name__}: {exc}; no time "
                                     "left to retry (STORYREEL_DOWNLOAD_MAX_S)",
                                     provider=provider) from exc
            clock[0] -= delay
            await asyncio.sleep(delay)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


async def _download_once(
    client: httpx.AsyncClient, url: str, tmp: Path, headers: dict[str, str],
    max_bytes: int, provider: str, hosts: Hosts, clock: list[float],
) -> None:
    received = _RECEIVED.setdefault(client, [0])
    cap = run_cap()
    async with _gate(client, download=True):
        start = time.monotonic()
        scope = asyncio.timeout(clock[0])
        try:
            async with scope:
                resp = await open_request(client, "GET", url, hosts, stream=True,
                                          headers=headers)
                try:
                    await _save(resp, tmp, max_bytes, provider, received, cap)
                finally:
                    await resp.aclose()
        except TimeoutError:
            if scope.expired():
                raise _OutOfTime from None
            raise
        finally:
            clock[0] -= time.monotonic() - start


async def _save(resp: httpx.Response, tmp: Path, max_bytes: int, provider: str,
                received: list[int], cap: int) -> None:
    if not resp.is_success:
        await read_body(resp, ERROR_BODY_MAX_BYTES)  # only quoted: never read whole
        cls = error_class_for_status(resp.status_code)
        if resp.status_code == 403:  # signed URL expired, not a bad key
            cls = NotFoundError
        raise cls(f"download answered HTTP {resp.status_code}: {body_text(resp, 200)}",
                  provider=provider, status_code=resp.status_code,
                  retry_after=parse_retry_after(resp.headers))
    ctype = resp.headers.get("content-type", "")
    if ctype.startswith(("text/", "application/json")):
        raise BadMediaError(f"download is {ctype}, not a video", provider=provider)
    # Content-Length counts the bytes on the wire: for a gzip/deflate body, the encoded ones
    expected = resp.headers.get("content-length")
    expected_n = int(expected) if expected is not None and expected.isdigit() else None
    if expected_n is not None and expected_n > max_bytes:
        raise UnsafeURLError(f"download is {expected_n} bytes, over the {max_bytes} byte cap "
                             "per clip (STORYREEL_MAX_CLIP_BYTES)", provider=provider)
    written = 0
    counted = resp.num_bytes_downloaded
    with open(tmp, "wb") as fh:
        async for chunk in resp.aiter_bytes(1 << 16):
            written += len(chunk)  # decoded: bounds a compression bomb too
            received[0] += resp.num_bytes_downloaded - counted
            counted = resp.num_bytes_downloaded
            if written > max_bytes:
                raise UnsafeURLError(f"download exceeds the {max_bytes} byte cap per clip "
                                     "(STORYREEL_MAX_CLIP_BYTES)", provider=provider)
            if received[0] > cap:
                raise UnsafeURLError(f"downloads of this run exceed {cap} bytes "
                                     "(STORYREEL_MAX_RUN_BYTES)", provider=provider)
            fh.write(chunk)
    # 0 when the body was in memory already (an in-process transport): then nothing was decoded
    arrived = resp.num_bytes_downloaded or written
    if expected_n is not None and arrived != expected_n:
        raise BadMediaError(f"download truncated: {arrived} of {expected_n} bytes",
                            provider=provider)
    if written == 0:
        raise BadMediaError("download is empty", provider=provider)
