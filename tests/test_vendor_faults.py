"""One fault matrix over every vendor adapter: the real adapter, the emulator, real sockets.

Each test injects one fault (tests/emulator/INTERFACE.md) and checks the promise a user
relies on, whatever the vendor: transient trouble on polls and downloads is retried and
ends in a playable MP4; a paid submit is resent only when the vendor surely refused it;
account errors are never retried; a job's own failure, a policy block and a job that
never ends each surface as their class; and no error text ever carries the key.
Where a vendor's protocol differs, `VENDOR_QUIRKS` says so, with the reason.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import av
import httpx
import pytest

from providers.base import PollSettings
from providers.errors import (
    AuthError,
    BadMediaError,
    ContentPolicyError,
    InsufficientCreditError,
    JobFailedError,
    JobTimeoutError,
    NotFoundError,
    ProviderError,
    RateLimitedError,
    TransientError,
    UnconfirmedSubmitError,
)
from providers.registry import BUILTIN, get_provider_class
from tests.emulator import media
from tests.emulator.core import FAKE_KEYS, Emulator
from tests.provider_kit import FAST_RETRY, make_provider, request_for

VENDORS = sorted(n for n in BUILTIN if n != "local")
# seconds from submit to done, and polls to match: 350 cases in well under a minute (the
# faults are what is tested here; queue/progress states have their own per-vendor tests)
LATENCY = 0.02
POLL = PollSettings(first=0.01, max=0.03, factor=1.5, deadline=20.0)
# one TLS context for every client: building one per client costs ~50 ms (loopback is http)
_TLS = ssl.create_default_context()


@dataclass(frozen=True)
class Quirks:
    # how the vendor says "out of money" (status, message), as the emulator shapes the body
    credit: tuple[int, str] = (402, "Insufficient credits")
    # fetch re-reads the job for a fresh URL when the signed one has expired
    refreshes_urls: bool = False
    # the adapter chooses the job id itself, so even a lost submit answer names the job
    own_job_id: bool = False


VENDOR_QUIRKS: dict[str, Quirks] = {
    # fal answers an exhausted balance as 403 "User is locked" (fal-ai/fal issues
    # #1147, #1162, #1163); result URLs are re-read from response_url (providers/fal.py fetch)
    "fal": Quirks(credit=(403, "User is locked. Reason: Exhausted balance. Top up your "
                               "balance at fal.ai/dashboard/billing."), refreshes_urls=True),
    # the HF router speaks fal's queue (providers/huggingface.py subclasses FalProvider), so it
    # refreshes like fal; its own credit error is a 402 (router body {"error": ...})
    "huggingface": Quirks(credit=(402, "You have exceeded your monthly included credits for "
                                       "Inference Providers."), refreshes_urls=True),
    # Replicate's billing errors are 402 problem details (replicate-javascript #342)
    "replicate": Quirks(credit=(402, "You need to set up billing to run this model.")),
    # Runway: "You do not have enough credits" with a 400 (sdk-node #28, status UNCONFIRMED);
    # output URLs expire and a fresh task GET hands out new ones (providers/runway.py)
    "runway": Quirks(credit=(400, "You do not have enough credits to run this task."),
                     refreshes_urls=True),
    # Luma's credit status is UNCONFIRMED: the adapter reads the detail text on a 400
    "luma": Quirks(credit=(400, "Insufficient credits: please add credits to your account.")),
    "perf": Quirks(credit=(402, "Insufficient credits")),
    # docs.nano-gpt.com "Video Generation": {"error": "Insufficient balance", "status": 402}
    "nanogpt": Quirks(credit=(402, "Insufficient balance")),
    # videogenapi.com API docs: 429 means a rate limit *or* the monthly usage limit (the
    # latter is not something a retry fixes)
    "videogenapi": Quirks(credit=(429, "Monthly usage limit exceeded")),
    # Runware codes classify errors (runware-python errors.py); we pick the taskUUID
    "runware": Quirks(credit=(402, "Insufficient credits to run this task"), own_job_id=True),
    # Google answers exhausted prepaid credits as 429 RESOURCE_EXHAUSTED, not 402
    "gemini": Quirks(credit=(429, "Your prepayment credits are depleted. Please go to AI "
                                  "Studio to manage your project and billing.")),
}


def test_every_vendor_has_quirks():
    assert sorted(VENDOR_QUIRKS) == VENDORS


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
def fast(emu: Emulator) -> Emulator:
    emu.configure(latency=LATENCY)
    return emu


def client(timeout: float = 5.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout), verify=_TLS)


def assert_complete(emu: Emulator, vendor: str, path: Path) -> None:
    """Byte for byte the MP4 the emulator served for the job, and it decodes."""
    (job,) = emu.jobs(vendor)
    assert path.read_bytes() == media.clip_bytes(job.duration, *emu.media_dims(job))
    with av.open(str(path)) as container:
        frame = next(container.decode(container.streams.video[0]))
        assert frame.width > 0 and frame.height > 0


def assert_clean(exc: ProviderError, vendor: str, job_id: str | None = None) -> None:
    """Names the provider (and the job, once there is one); never shows the key."""
    text, rep = str(exc), repr(exc)
    assert exc.provider == vendor and vendor in text, text
    if job_id is not None:
        assert exc.job_id == job_id and job_id in text, text
    key = FAKE_KEYS[vendor]
    for shown in (text, rep, exc.message, exc.vendor_message or ""):
        assert key not in shown


def requests(emu: Emulator, vendor: str) -> int:
    return emu.stats(vendor)["requests"]


async def finish(emu: Emulator, p, job, dest: Path):
    done = await p.wait(job)
    assert done.state == "succeeded", done.error
    clip = await p.fetch(job, done, dest)
    assert clip.path == dest and clip.job_id == job.job_id
    assert_complete(emu, p.name, clip.path)
    return clip


async def submitted(emu: Emulator, vendor: str, http: httpx.AsyncClient, **kw):
    kw.setdefault("poll", POLL)
    p = make_provider(vendor, emu, http, **kw)
    job = await p.submit(request_for(vendor))
    return p, job


# -- poll stage -----------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", VENDORS)
async def test_poll_429_honours_retry_after(fast, vendor, tmp_path):
    async with client() as http:
        p, job = await submitted(fast, vendor, http)
        fast.inject(vendor, "poll", "http", status=429, retry_after=0.2)
        before, polls = requests(fast, vendor), fast.stats(vendor)["polls"]
        t0 = time.monotonic()
        await p.poll(job)
        elapsed = time.monotonic() - t0
        # FAST_RETRY's own backoff is 10-20 ms: only the header explains 0.2 s
        assert elapsed >= 0.19, f"Retry-After ignored: retried after {elapsed:.3f} s"
        stats = fast.stats(vendor)
        assert stats["errors_injected"] == 1
        assert stats["polls"] == polls + 1 and requests(fast, vendor) >= before + 2
        await finish(fast, p, job, tmp_path / "out.mp4")


POLL_FAULTS = {
    "429": dict(kind="http", status=429, times=2),  # no Retry-After: our own backoff
    "500": dict(kind="http", status=500, times=2),
    "502": dict(kind="http", status=502, times=2),
    "503": dict(kind="http", status=503, times=2),
    "slow": dict(kind="slow", delay=0.3),  # well under the client's 5 s timeout
    "reset": dict(kind="reset", times=2),
    "drop_response": dict(kind="drop_response"),  # answered, then lost: a poll is free
}


@pytest.mark.parametrize("fault", POLL_FAULTS)
@pytest.mark.parametrize("vendor", VENDORS)
async def test_poll_transient_faults_are_retried(fast, vendor, fault, tmp_path):
    spec = dict(POLL_FAULTS[fault])
    fast.inject(vendor, "poll", spec.pop("kind"), **spec)
    async with client() as http:
        p, job = await submitted(fast, vendor, http)
        await finish(fast, p, job, tmp_path / "out.mp4")
    stats = fast.stats(vendor)
    assert stats["errors_injected"] == spec.get("times", 1)
    assert stats["jobs"] == 1 and stats["downloads"] == 1


@pytest.mark.parametrize("vendor", VENDORS)
async def test_poll_longer_than_the_client_timeout_is_retried(fast, vendor, tmp_path):
    async with client() as http:
        _, job = await submitted(fast, vendor, http)
    (emu_job,) = fast.jobs(vendor)  # make the clip now: ffmpeg must not race the timeout
    media.clip_bytes(emu_job.duration, *fast.media_dims(emu_job))
    fast.inject(vendor, "poll", "slow", delay=0.35)
    async with client(timeout=0.2) as http:  # the same job, polled by an impatient client
        p = make_provider(vendor, fast, http, poll=POLL)
        await finish(fast, p, job, tmp_path / "out.mp4")
    assert fast.stats(vendor)["errors_injected"] == 1


@pytest.mark.parametrize("vendor", VENDORS)
async def test_poll_that_never_recovers_names_the_job(fast, vendor):
    async with client() as http:
        p, job = await submitted(fast, vendor, http)
        fast.inject(vendor, "poll", "http", status=503, times=-1)
        before = requests(fast, vendor)
        with pytest.raises(TransientError) as info:
            await p.wait(job)
    assert requests(fast, vendor) - before == FAST_RETRY.attempts  # bounded, then gives up
    assert_clean(info.value, vendor, job.job_id)


@pytest.mark.parametrize("vendor", VENDORS)
async def test_poll_401_is_auth_and_not_retried(fast, vendor):
    async with client() as http:
        p, job = await submitted(fast, vendor, http)
        fast.inject(vendor, "poll", "http", status=401)
        before = requests(fast, vendor)
        with pytest.raises(AuthError) as info:
            await p.wait(job)
    assert requests(fast, vendor) - before == 1
    assert_clean(info.value, vendor, job.job_id)


# fal's queue (and the HF router's copy of it) reads the result at a URL of its own;
# Gemini's video comes from the Files API, whose route is the emulator's "result" stage
RESULT_STAGE = ["fal", "huggingface", "gemini"]


@pytest.mark.parametrize("fault", ["503", "reset"])
@pytest.mark.parametrize("vendor", RESULT_STAGE)
async def test_result_stage_faults_are_retried(fast, vendor, fault, tmp_path):
    if fault == "503":
        fast.inject(vendor, "result", "http", status=503, times=2)
    else:
        fast.inject(vendor, "result", "reset")
    async with client() as http:
        p, job = await submitted(fast, vendor, http)
        await finish(fast, p, job, tmp_path / "out.mp4")
    assert fast.stats(vendor)["jobs"] == 1


# -- submit stage ---------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", VENDORS)
async def test_submit_429_is_resent_once(fast, vendor, tmp_path):
    """429 means the vendor did not take the job: resent, one job."""
    fast.inject(vendor, "submit", "http", status=429, retry_after=0.05)
    async with client() as http:
        p, job = await submitted(fast, vendor, http)
        await finish(fast, p, job, tmp_path / "out.mp4")
    stats = fast.stats(vendor)
    assert stats["jobs"] == 1 and stats["submits"] == 1 and stats["errors_injected"] == 1
    assert fast.jobs(vendor)[0].id == job.job_id


@pytest.mark.parametrize("vendor", VENDORS)
async def test_submit_429_that_persists_gives_up(fast, vendor):
    fast.inject(vendor, "submit", "http", status=429, retry_after=0.01, times=-1)
    async with client() as http:
        p = make_provider(vendor, fast, http)
        with pytest.raises(RateLimitedError) as info:
            await p.submit(request_for(vendor))
    assert requests(fast, vendor) == FAST_RETRY.submit_attempts
    assert fast.stats(vendor)["jobs"] == 0
    assert_clean(info.value, vendor)


@pytest.mark.parametrize("vendor", ["fal", "huggingface"])
async def test_fal_gateway_503_is_resent_once(fast, vendor, tmp_path):
    """fal_client retries a 502/503/504 without `x-fal-request-id` (an ingress page that never
    reached fal's app): the one documented exception to "a 5xx submit may have been taken"."""
    fast.inject(vendor, "submit", "http", status=503, retry_after=0.05)
    async with client() as http:
        p, job = await submitted(fast, vendor, http)
        await finish(fast, p, job, tmp_path / "out.mp4")
    stats = fast.stats(vendor)
    assert stats["jobs"] == 1 and stats["submits"] == 1 and stats["errors_injected"] == 1


@pytest.mark.parametrize("status", [500, 502, 503])
@pytest.mark.parametrize("vendor", VENDORS)
async def test_submit_5xx_is_unconfirmed_and_not_resent(fast, vendor, status):
    """A 5xx from the vendor may come after it took the job: never resent, and the error says
    the money may be gone (the injected answer precedes the handler: zero jobs here; the
    emulator's accept-then-error faults show the job-was-made case end to end)."""
    fal_app = {"x-fal-request-id": "req-1"} if vendor in ("fal", "huggingface") else {}
    fast.inject(vendor, "submit", "http", status=status, headers=fal_app)
    async with client() as http:
        p = make_provider(vendor, fast, http)
        with pytest.raises(UnconfirmedSubmitError) as info:
            await p.submit(request_for(vendor))
    assert requests(fast, vendor) == 1 and fast.stats(vendor)["jobs"] == 0
    assert info.value.may_have_charged and info.value.status_code == status
    if VENDOR_QUIRKS[vendor].own_job_id:  # the task may exist under the id we sent: ask it
        assert uuid.UUID(info.value.job_id).version == 4
    assert_clean(info.value, vendor, info.value.job_id)
    if VENDOR_QUIRKS[vendor].own_job_id:  # the task may exist under the id we sent
        assert uuid.UUID(info.value.job_id).version == 4
    assert_clean(info.value, vendor, info.value.job_id)


@pytest.mark.parametrize("vendor", ["fal", "huggingface"])
async def test_fal_503_from_fals_own_servers_is_not_resent(fast, vendor):
    """fal_client retries a 502/503/504 only without `x-fal-request-id` (an ingress page):
    with it, fal's servers answered and may hold the request, so a paid submit is not resent
    (fal_client/client.py `_is_ingress_error`, `_should_retry_response`). The HF router
    passes fal's answer through."""
    rid = "0193-from-fal"
    fast.inject(vendor, "submit", "http", status=503, headers={"x-fal-request-id": rid})
    async with client() as http:
        p = make_provider(vendor, fast, http)
        with pytest.raises(UnconfirmedSubmitError) as info:
            await p.submit(request_for(vendor))
    assert requests(fast, vendor) == 1 and info.value.may_have_charged
    assert_clean(info.value, vendor, rid)  # the id fal gave it, for a person to look up


@pytest.mark.parametrize("kind", ["reset", "drop_response", "timeout"])
@pytest.mark.parametrize("vendor", VENDORS)
async def test_submit_without_an_answer_is_unconfirmed(fast, vendor, kind):
    if kind == "timeout":  # the vendor is still working on it when the client gives up
        fast.inject(vendor, "submit", "slow", delay=0.25)
    else:
        fast.inject(vendor, "submit", kind)
    async with client(timeout=0.1 if kind == "timeout" else 5.0) as http:
        p = make_provider(vendor, fast, http)
        with pytest.raises(UnconfirmedSubmitError) as info:
            await p.submit(request_for(vendor))
    assert requests(fast, vendor) == 1  # never a second (paid) submit
    # drop_response runs the handler first, and a slow handler finishes after the client
    # left: the job exists and will be charged. A reset comes before the handler.
    expected = 0 if kind == "reset" else 1
    for _ in range(200):  # the slow handler is still running when the client gives up
        if len(fast.jobs(vendor)) == expected:
            break
        await asyncio.sleep(0.01)
    jobs = fast.jobs(vendor)
    assert len(jobs) == expected
    exc = info.value
    if VENDOR_QUIRKS[vendor].own_job_id:
        # the id was ours before sending: a person (or a resume) can poll it
        assert exc.job_id
        if jobs:
            assert exc.job_id == jobs[0].id
    assert_clean(exc, vendor, exc.job_id)


@pytest.mark.parametrize("vendor", VENDORS)
async def test_submit_401_is_auth_and_not_resent(fast, vendor):
    fast.inject(vendor, "submit", "http", status=401)
    async with client() as http:
        p = make_provider(vendor, fast, http)
        with pytest.raises(AuthError) as info:
            await p.submit(request_for(vendor))
    assert requests(fast, vendor) == 1 and fast.stats(vendor)["jobs"] == 0
    assert_clean(info.value, vendor)


@pytest.mark.parametrize("vendor", VENDORS)
async def test_wrong_key_is_auth_and_never_shown(fast, vendor):
    """The emulator's own key check (Gemini answers 400 API_KEY_INVALID, not 401)."""
    wrong = f"sk-wrong-{vendor}-0123456789"
    async with client() as http:
        p = make_provider(vendor, fast, http, key=wrong)
        with pytest.raises(AuthError) as info:
            await p.submit(request_for(vendor))
    stats = fast.stats(vendor)
    assert stats["requests"] == 1 and stats["auth_failures"] == 1 and stats["jobs"] == 0
    exc = info.value
    assert_clean(exc, vendor)
    for shown in (str(exc), repr(exc), exc.vendor_message or ""):
        assert wrong not in shown


@pytest.mark.parametrize("vendor", VENDORS)
async def test_key_echoed_by_the_vendor_is_masked(fast, vendor):
    """Vendors quote what they were sent; whatever the adapter builds from it hides the key."""
    key = FAKE_KEYS[vendor]
    fast.inject(vendor, "submit", "http", status=401, message=f"Invalid API key '{key}'")
    fast.inject(vendor, "job", "fail", message=f"worker crashed (auth {key})")
    async with client() as http:
        p = make_provider(vendor, fast, http, poll=POLL)
        with pytest.raises(AuthError) as info:
            await p.submit(request_for(vendor))
        assert_clean(info.value, vendor)
        job = await p.submit(request_for(vendor))
        done = await p.wait(job)
    assert isinstance(done.error, JobFailedError)
    assert_clean(done.error, vendor, job.job_id)


@pytest.mark.parametrize("vendor", VENDORS)
async def test_submit_402_is_credit_and_not_resent(fast, vendor):
    fast.inject(vendor, "submit", "http", status=402)
    async with client() as http:
        p = make_provider(vendor, fast, http)
        with pytest.raises(InsufficientCreditError) as info:
            await p.submit(request_for(vendor))
    assert requests(fast, vendor) == 1 and fast.stats(vendor)["jobs"] == 0
    assert_clean(info.value, vendor)


@pytest.mark.parametrize("vendor", VENDORS)
async def test_vendor_credit_error_is_credit_and_not_resent(fast, vendor):
    status, message = VENDOR_QUIRKS[vendor].credit
    fast.inject(vendor, "submit", "http", status=status, message=message)
    async with client() as http:
        p = make_provider(vendor, fast, http)
        with pytest.raises(InsufficientCreditError) as info:
            await p.submit(request_for(vendor))
    # a 429 that means "out of money" is not a rate limit: waiting does not fix it
    assert requests(fast, vendor) == 1 and fast.stats(vendor)["jobs"] == 0
    assert info.value.status_code == status
    assert_clean(info.value, vendor)


# -- job outcome ----------------------------------------------------------------------------


@pytest.mark.parametrize(("outcome", "cls"), [("fail", JobFailedError),
                                              ("policy", ContentPolicyError)])
@pytest.mark.parametrize("vendor", VENDORS)
async def test_failed_jobs_end_with_their_class(fast, vendor, outcome, cls):
    fast.inject(vendor, "job", outcome)
    async with client() as http:
        p, job = await submitted(fast, vendor, http)
        done = await p.wait(job)
    assert done.state == "failed" and type(done.error) is cls, done.error
    assert_clean(done.error, vendor, job.job_id)


@pytest.mark.parametrize("vendor", VENDORS)
async def test_job_that_never_ends_times_out_and_is_canceled(fast, vendor):
    fast.inject(vendor, "job", "never")
    poll = PollSettings(first=0.01, max=0.05, deadline=0.3)
    async with client() as http:
        p, job = await submitted(fast, vendor, http, poll=poll)
        with pytest.raises(JobTimeoutError) as info:
            await p.wait(job)
        assert_clean(info.value, vendor, job.job_id)
        canceled = await p.cancel(job)
    (emu_job,) = fast.jobs(vendor)
    cls = get_provider_class(vendor)
    if cls.supports_cancel:
        assert canceled and fast.state(emu_job) == "canceled"
        assert not fast.charged(emu_job) and fast.stats(vendor)["charged_usd"] == 0
    else:  # nothing to call: the job runs on (and the ledger keeps its reservation)
        assert not canceled and fast.stats(vendor)["cancels"] == 0
        assert fast.state(emu_job) == "running"


CANCELLERS = [v for v in VENDORS if get_provider_class(v).supports_cancel]


@pytest.mark.parametrize("times", [1, -1])
@pytest.mark.parametrize("vendor", CANCELLERS)
async def test_cancel_is_retried_and_a_failed_cancel_says_so(fast, vendor, times):
    """A 503 on cancel is retried; one that persists raises (naming the job) rather than
    reporting "nothing left to stop" while the job runs on and bills."""
    fast.inject(vendor, "job", "never")
    async with client() as http:
        p, job = await submitted(fast, vendor, http)
        fast.inject(vendor, "cancel", "http", status=503, times=times)
        (emu_job,) = fast.jobs(vendor)
        if times == 1:
            assert await p.cancel(job) is True
            assert fast.state(emu_job) == "canceled"
            return
        with pytest.raises(TransientError) as info:
            await p.cancel(job)
    assert_clean(info.value, vendor, job.job_id)
    assert fast.state(emu_job) == "running"


# -- download stage -------------------------------------------------------------------------

DOWNLOAD_FAULTS = {
    "truncate": dict(kind="truncate"),
    "html": dict(kind="html"),
    "reset": dict(kind="reset"),
    "503": dict(kind="http", status=503),
}


@pytest.mark.parametrize("fault", DOWNLOAD_FAULTS)
@pytest.mark.parametrize("vendor", VENDORS)
async def test_bad_download_once_is_fetched_again(fast, vendor, fault, tmp_path):
    spec = dict(DOWNLOAD_FAULTS[fault])
    fast.inject(vendor, "download", spec.pop("kind"), **spec)
    async with client() as http:
        p, job = await submitted(fast, vendor, http)
        clip = await finish(fast, p, job, tmp_path / "out.mp4")
    stats = fast.stats(vendor)
    assert stats["errors_injected"] == 1 and stats["downloads"] == 1
    assert list(tmp_path.iterdir()) == [clip.path]  # no .part left behind


@pytest.mark.parametrize("kind", ["truncate", "html"])
@pytest.mark.parametrize("vendor", VENDORS)
async def test_persistently_bad_download_never_succeeds(fast, vendor, kind, tmp_path):
    fast.inject(vendor, "download", kind, times=-1)
    dest = tmp_path / "out.mp4"
    async with client() as http:
        p, job = await submitted(fast, vendor, http)
        done = await p.wait(job)
        with pytest.raises((BadMediaError, TransientError)) as info:
            await p.fetch(job, done, dest)
    assert_clean(info.value, vendor, job.job_id)
    assert list(tmp_path.iterdir()) == []  # neither the broken file nor a .part
    assert fast.stats(vendor)["downloads"] == 0


@pytest.mark.parametrize("vendor", VENDORS)
async def test_expired_url_is_refreshed_or_not_found(fast, vendor, tmp_path):
    fast.inject(vendor, "download", "expired")
    async with client() as http:
        p, job = await submitted(fast, vendor, http)
        done = await p.wait(job)
        if VENDOR_QUIRKS[vendor].refreshes_urls:
            clip = await p.fetch(job, done, tmp_path / "out.mp4")
            assert_complete(fast, vendor, clip.path)
            return
        with pytest.raises(NotFoundError) as info:
            await p.fetch(job, done, tmp_path / "out.mp4")
    assert_clean(info.value, vendor, job.job_id)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("vendor", [v for v in VENDORS if VENDOR_QUIRKS[v].refreshes_urls])
async def test_url_that_stays_expired_is_not_found(fast, vendor, tmp_path):
    """One refresh, not a loop: a URL that keeps expiring ends as NotFoundError."""
    fast.inject(vendor, "download", "expired", times=-1)
    async with client() as http:
        p, job = await submitted(fast, vendor, http)
        done = await p.wait(job)
        with pytest.raises(NotFoundError) as info:
            await p.fetch(job, done, tmp_path / "out.mp4")
    assert_clean(info.value, vendor, job.job_id)
    assert fast.stats(vendor)["errors_injected"] == 2
