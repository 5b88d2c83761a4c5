"""The emulator core over real HTTP, through the made-up `_example` vendor."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import pytest

from tests.emulator import media
from tests.emulator.core import FAKE_KEYS, Emulator, discover_vendors
from tests.emulator.prices import Entry, per_second, per_second_by
from tests.emulator.vendors import _example

CATALOG = """\
provider: example
vendor: Example
default_model: cheap
models:
  cheap:
    vendor_model: example/cheap-v1
    durations: [2, 5, 10]
    price: {per_second: 0.1}
    price_as_of: 2026-12-01
  pricey:
    vendor_model: example/pricey-v1
    vendor_model_image: example/pricey-i2v
    durations: [2, 5, 10]
    resolutions: ["720p", "1080p"]
    price: {per_second_by_resolution: {720p: 0.2, 1080p: 0.4}}
    price_as_of: 2026-12-01
    charges_failures: true
"""
# the example vendor's own bill, apart from its catalog (which says what models accept)
_CHEAP = Entry(per_second(0.1), "test figure")
_PRICEY = Entry(per_second_by({"720p": 0.2, "1080p": 0.4}), "test figure", bills="terminal")
PRICES = {"example": {"cheap": _CHEAP, "example/cheap-v1": _CHEAP, "pricey": _PRICEY,
                      "example/pricey-v1": _PRICEY, "example/pricey-i2v": _PRICEY}}
AUTH = {"Authorization": f"Bearer {FAKE_KEYS['example']}"}
TRANSPORT_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    cat = tmp_path_factory.mktemp("catalog")
    (cat / "example.yaml").write_text(CATALOG)
    with Emulator(vendors=[_example], catalog_dir=cat, latency=0.3, prices=PRICES) as emu:
        yield emu


@pytest.fixture
def ex(server: Emulator) -> Emulator:
    server.reset()
    return server


@pytest.fixture
def client(ex: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ex.base_url("example"), headers=AUTH, timeout=10) as c:
        yield c


@pytest.fixture
def raw(ex: Emulator) -> Iterator[httpx.Client]:
    """No auth, no base URL; one client (a new httpx.Client per call costs an SSL context)."""
    with httpx.Client(timeout=10) as c:
        yield c


def submit(client: httpx.Client, model: str = "cheap", **body: object) -> str:
    resp = client.post("/videos", json={"model": model, "prompt": "a cat", "duration": 5, **body})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def wait_state(client: httpx.Client, job_id: str, timeout: float = 3.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/videos/{job_id}").json()
        if body["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def finish_all(ex: Emulator) -> None:
    """Move every job's start into the past: deterministic, unlike sleeping."""
    for job in ex.jobs():
        job.created -= 100.0


def test_env_and_urls(ex: Emulator) -> None:
    env = ex.env()
    assert env["STORYREEL_EXAMPLE_BASE_URL"] == f"{ex.url}/example/v1"
    assert env["EXAMPLE_API_KEY"] == "test-example-key"
    assert ex.url.startswith("http://127.0.0.1:")


def test_auth_is_checked(ex: Emulator, raw: httpx.Client, client: httpx.Client) -> None:
    body = {"model": "cheap", "prompt": "x"}
    url = f"{ex.base_url('example')}/videos"
    missing = raw.post(url, json=body)
    wrong = raw.post(url, json=body, headers={"Authorization": "Bearer sk-wrong"})
    scheme = raw.post(url, json=body, headers={"Authorization": "Key test-example-key"})
    for resp in (missing, wrong, scheme):
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == 401
    assert client.post("/videos", json=body).status_code == 201
    stats = ex.stats("example")
    assert stats["auth_failures"] == 3 and stats["jobs"] == 1


def test_state_follows_the_clock(ex: Emulator, client: httpx.Client) -> None:
    ex.latency = 10.0
    job = ex.get_job("example", submit(client))
    assert job is not None
    seen = []
    for elapsed in (0.0, 1.0, 5.0, 9.9, 10.1):  # shift the job's start instead of sleeping
        job.created = time.monotonic() - elapsed
        body = client.get(f"/videos/{job.id}").json()
        seen.append((body["status"], body["progress"]))
    assert [s for s, _ in seen] == ["queued", "queued", "running", "running", "succeeded"]
    progress = [p for _, p in seen]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert ex.stats("example")["polls"] == 5


def test_advance_moves_the_clock_for_every_job(ex: Emulator, client: httpx.Client) -> None:
    """A test finishes long jobs by advancing the emulator's clock, not by sleeping."""
    ex.configure(latency=60.0)
    ids = [submit(client) for _ in range(2)]
    assert {client.get(f"/videos/{i}").json()["status"] for i in ids} == {"queued"}
    assert ex.stats("example")["in_flight"] == 2 and ex.stats("example")["charged_usd"] == 0
    ex.advance(30.0)
    assert {client.get(f"/videos/{i}").json()["status"] for i in ids} == {"running"}
    ex.advance(30.5)
    assert {client.get(f"/videos/{i}").json()["status"] for i in ids} == {"succeeded"}
    assert ex.stats("example")["in_flight"] == 0 and ex.stats("example")["charged_usd"] > 0
    late = ex.get_job("example", submit(client))  # a job submitted now starts at the new time
    assert late is not None and ex.state(late) == "queued"
    with pytest.raises(ValueError):
        ex.advance(-1.0)
    ex.reset()
    assert abs(ex.now() - time.monotonic()) < 1.0  # reset rewinds the clock


def test_job_finishes_in_real_time_and_is_charged(ex: Emulator, client: httpx.Client) -> None:
    ex.latency = 0.6
    job_id = submit(client)
    assert client.get(f"/videos/{job_id}").json()["status"] in ("queued", "running")
    assert ex.stats("example")["charged_usd"] == 0
    body = wait_state(client, job_id)
    assert body["status"] == "succeeded" and body["cost_usd"] == pytest.approx(0.5)
    assert ex.stats("example")["charged_usd"] == pytest.approx(0.5)
    assert ex.stats()["total"]["charged_usd"] == pytest.approx(0.5)


def test_http_faults_are_fifo_and_vendor_shaped(ex: Emulator, client: httpx.Client) -> None:
    job_id = submit(client)
    ex.inject("example", "poll", "http", status=429, retry_after=7)
    ex.inject("example", "poll", "http", status=500, times=2)
    ex.inject("example", "poll", "http", status=503, message="down for maintenance")
    answers = [client.get(f"/videos/{job_id}") for _ in range(5)]
    assert [r.status_code for r in answers] == [429, 500, 500, 503, 200]
    assert answers[0].headers["retry-after"] == "7"
    assert "retry-after" not in answers[1].headers
    assert answers[0].json()["error"]["code"] == 429
    assert answers[3].json()["error"]["message"] == "down for maintenance"
    stats = ex.stats("example")
    assert stats["errors_injected"] == 4 and stats["polls"] == 1  # handler ran once


def test_slow_fault(ex: Emulator, client: httpx.Client) -> None:
    job_id = submit(client)
    ex.inject("example", "poll", "slow", delay=0.3, times=2)
    start = time.monotonic()
    assert client.get(f"/videos/{job_id}").status_code == 200
    assert time.monotonic() - start >= 0.3
    with pytest.raises(httpx.ReadTimeout):
        client.get(f"/videos/{job_id}", timeout=0.1)


def test_reset_is_a_transport_error(ex: Emulator, client: httpx.Client) -> None:
    ex.inject("example", "submit", "reset")
    with pytest.raises(TRANSPORT_ERRORS):
        submit(client)
    assert ex.stats("example")["jobs"] == 0  # a reset submit never reached the vendor
    job_id = submit(client)  # the client recovers on a new connection
    ex.inject("example", "poll", "reset")
    with pytest.raises(TRANSPORT_ERRORS):
        client.get(f"/videos/{job_id}")
    assert client.get(f"/videos/{job_id}").status_code == 200
    ex.inject("example", "upload", "reset")  # a big body is read first: no RST mid-upload
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/uploads", content=b"x" * 4_000_000)
    assert client.post("/uploads", content=b"x" * 10).json()["url"].endswith("/10")


def test_drop_response_creates_and_charges_the_job(ex: Emulator, client: httpx.Client) -> None:
    ex.inject("example", "submit", "drop_response")
    with pytest.raises(TRANSPORT_ERRORS):
        submit(client, duration=2)
    [job] = ex.jobs("example")
    assert job.request["duration"] == 2 and ex.state(job) in ("queued", "running")
    finish_all(ex)
    assert ex.state(job) == "succeeded"
    assert ex.stats("example")["charged_usd"] == pytest.approx(0.2)


def test_forever_fault_until_reset(ex: Emulator, client: httpx.Client) -> None:
    ex.inject("example", "submit", "http", status=503, times=-1)
    body = {"model": "cheap", "prompt": "x"}
    assert [client.post("/videos", json=body).status_code for _ in range(3)] == [503] * 3
    assert ex.faults.pending()[0]["times"] == -1
    ex.reset()
    assert client.post("/videos", json=body).status_code == 201


@pytest.mark.parametrize("stage,kind,params", [
    ("nope", "http", {"status": 500}),
    ("poll", "truncate", {}),
    ("download", "drop_response", {}),
    ("job", "http", {"status": 500}),
    ("poll", "http", {"status": 299}),
    ("poll", "slow", {}),
])
def test_invalid_faults_are_refused(ex: Emulator, stage: str, kind: str, params: dict) -> None:
    with pytest.raises(ValueError):
        ex.inject("example", stage, kind, **params)


def test_unknown_vendor_fault_is_refused(ex: Emulator) -> None:
    with pytest.raises(ValueError, match="unknown vendor"):
        ex.inject("exmaple", "poll", "http", status=500)


def test_job_outcome_faults(ex: Emulator, client: httpx.Client) -> None:
    ex.latency = 5.0
    ex.inject("example", "job", "fail")
    ex.inject("example", "job", "policy", message="nudity")
    ex.inject("example", "job", "never")
    failed, policy, never, ok = (submit(client) for _ in range(4))
    assert ex.stats("example")["in_flight"] == 4
    finish_all(ex)
    assert wait_state(client, failed)["status"] == "failed"
    body = wait_state(client, policy)
    assert body["status"] == "policy" and body["error"] == "nudity"
    assert wait_state(client, ok)["status"] == "succeeded"
    assert client.get(f"/videos/{never}").json()["status"] == "running"
    stats = ex.stats("example")
    assert stats["in_flight"] == 1 and stats["charged_usd"] == pytest.approx(0.5)
    assert client.post(f"/videos/{never}/cancel").json()["canceled"] is True
    assert ex.stats("example")["in_flight"] == 0


def test_charging_rules_and_prices(ex: Emulator, client: httpx.Client) -> None:
    ex.latency = 5.0
    ex.inject("example", "job", "fail", times=2)
    submit(client, "cheap")  # fails, not charged: cheap does not charge failures
    submit(client, "example/pricey-v1", resolution="1080p")  # fails, charged 5 s x 0.4
    canceled = submit(client, "pricey")
    assert client.post(f"/videos/{canceled}/cancel").json()["canceled"] is True
    ex.price_multiplier["example"] = 1.5
    submit(client, "example/pricey-i2v")  # succeeds: 5 s x 0.2 x 1.5
    # a model without a price is refused loudly, never run for free
    unknown = client.post("/videos", json={"model": "mystery-model", "prompt": "a cat"})
    assert unknown.status_code == 404 and "mystery-model" in unknown.json()["error"]["message"]
    assert ex.stats("example")["jobs"] == 4 and ex.faults.pending() == []
    assert ex.stats("example")["charged_usd"] == 0  # nothing has finished yet
    finish_all(ex)
    stats = ex.stats()
    assert stats["example"]["charged_usd"] == pytest.approx(2.0 + 1.5)
    assert stats["unknown_models"] == ["example:mystery-model"]
    assert stats["example"]["unknown_models"] == ["mystery-model"]
    assert client.post(f"/videos/{canceled}/cancel").json()["canceled"] is False
    assert ex.charges_failures("example", "pricey") and not ex.charges_failures("example",
                                                                                 "cheap")


def test_max_in_flight(ex: Emulator, client: httpx.Client) -> None:
    ex.latency = 5.0
    ids = [submit(client) for _ in range(3)]
    assert ex.stats("example")["in_flight"] == 3
    for job_id in ids[:2]:
        client.post(f"/videos/{job_id}/cancel")
    submit(client)
    stats = ex.stats()
    assert stats["example"]["in_flight"] == 2 and stats["example"]["max_in_flight"] == 3
    assert stats["total"]["max_in_flight"] == 3 and stats["example"]["cancels"] == 2


def test_control_api(ex: Emulator, raw: httpx.Client, client: httpx.Client) -> None:
    api = f"{ex.url}/_emulator"
    fault = {"vendor": "example", "stage": "poll", "kind": "http", "status": 429, "retry_after": 2}
    assert raw.post(f"{api}/faults", json=fault).status_code == 200
    assert raw.get(f"{api}/faults").json()[0]["status"] == 429
    bad = raw.post(f"{api}/faults", json={**fault, "kind": "explode"})
    assert bad.status_code == 400 and "explode" in bad.json()["error"]
    job_id = submit(client)
    resp = client.get(f"/videos/{job_id}")
    assert resp.status_code == 429 and resp.headers["retry-after"] == "2"

    cfg = raw.post(f"{api}/config", json={"latency": 4, "price_multiplier": {"example": 2}})
    assert cfg.json()["latency"] == 4 and ex.latency == 4
    submit(client)
    stats = raw.get(f"{api}/stats", params={"vendor": "example"}).json()
    assert stats["jobs"] == 2 and stats["errors_injected"] == 1 and stats["in_flight"] >= 1
    assert raw.get(f"{api}/stats").json()["total"]["jobs"] == 2
    jobs = raw.get(f"{api}/jobs", params={"vendor": "example"}).json()
    assert sorted(j["price_usd"] for j in jobs) == [0.5, 1.0]

    assert raw.post(f"{api}/reset").status_code == 200
    assert ex.stats("example")["jobs"] == 0 and ex.latency == 0.3
    assert ex.price_multiplier == {} and raw.get(f"{api}/faults").json() == []


def _video_url(ex: Emulator, client: httpx.Client, **body: object) -> str:
    job_id = submit(client, **body)
    assert wait_state(client, job_id)["status"] == "succeeded"
    return client.get(f"/videos/{job_id}/content").json()["url"]


def test_served_clip_is_a_real_mp4(ex: Emulator, raw: httpx.Client, client: httpx.Client) -> None:
    url = _video_url(ex, client, duration=2, aspect_ratio="9:16")
    resp = raw.get(url)
    assert resp.status_code == 200 and resp.headers["content-type"] == "video/mp4"
    assert int(resp.headers["content-length"]) == len(resp.content)
    with av.open(io.BytesIO(resp.content)) as container:
        video = container.streams.video[0]
        assert (video.codec_context.width, video.codec_context.height) == (180, 320)
        assert video.codec_context.name == "h264"
        assert container.streams.audio, "the clip has an audio track"
        assert container.duration / av.time_base == pytest.approx(2.0, abs=0.1)
    assert ex.stats("example")["downloads"] == 1


def test_media_size_follows_the_aspect(ex: Emulator) -> None:
    assert media.fit_size((320, 180), 1280, 720) == (320, 180)
    assert media.fit_size((320, 180), 720, 1280) == (180, 320)
    assert media.fit_size((320, 180), 1080, 1080) == (240, 240)
    job = ex.new_job("example", model="cheap", duration=2, width=1080, height=1920, request={})
    assert ex.media_dims(job) == (180, 320)
    ex.media_size = None
    assert ex.media_dims(job) == (1080, 1920)


def test_download_faults(ex: Emulator, raw: httpx.Client, client: httpx.Client) -> None:
    url = _video_url(ex, client, duration=2)
    ex.inject("example", "download", "truncate")
    received = 0
    with pytest.raises(httpx.RemoteProtocolError), raw.stream("GET", url) as resp:
        expected = int(resp.headers["content-length"])
        for chunk in resp.iter_bytes():
            received += len(chunk)
    assert 0 < received < expected

    ex.inject("example", "download", "html")
    resp = raw.get(url)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")

    ex.inject("example", "download", "expired")
    resp = raw.get(url)
    assert resp.status_code == 403 and "Request has expired" in resp.text

    ex.inject("example", "download", "http", status=503, retry_after=1)
    resp = raw.get(url)
    assert resp.status_code == 503 and resp.headers["retry-after"] == "1"

    ex.inject("example", "download", "reset")
    with pytest.raises(TRANSPORT_ERRORS):
        raw.get(url)
    ex.inject("example", "download", "slow", delay=0.2)
    start = time.monotonic()
    assert raw.get(url).status_code == 200 and time.monotonic() - start >= 0.2
    stats = ex.stats("example")
    assert stats["downloads"] == 1 and stats["errors_injected"] == 6
    assert raw.get(f"{ex.url}/_media/example/not-a-token.mp4").status_code == 404


async def test_concurrent_downloads_make_one_clip(
    ex: Emulator, client: httpx.Client, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STORYREEL_EMULATOR_CACHE", str(tmp_path))
    job = ex.new_job("example", model="cheap", duration=1.5, width=640, height=480, request={})
    job.created -= 1.0
    async with httpx.AsyncClient(timeout=30) as http:
        url = ex.video_url(job)
        answers = await asyncio.gather(*(http.get(url) for _ in range(4)),
                                       http.get(f"{ex.url}/_emulator/health"))
    bodies = {r.content for r in answers[:4]}
    assert len(bodies) == 1 and answers[4].status_code == 200
    assert [p.name for p in tmp_path.iterdir()] == ["clip-1.5s-278x208-24fps.mp4"]


def test_clip_bytes_even_dimensions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORYREEL_EMULATOR_CACHE", str(tmp_path))
    data = media.clip_bytes(0.5, 101, 57)
    with av.open(io.BytesIO(data)) as container:
        ctx = container.streams.video[0].codec_context
        assert ctx.width % 2 == 0 and ctx.height % 2 == 0
    assert media.clip_bytes(0.5, 101, 57) is data  # memory cache


def test_discovery_skips_private_modules() -> None:
    names = {m.VENDOR for m in discover_vendors()}
    assert "example" not in names


def test_stop_closes_the_port() -> None:
    emu = Emulator(vendors=[_example]).start()
    url = emu.url
    assert httpx.get(f"{url}/_emulator/health").json() == {"ok": True}
    emu.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/_emulator/health")


def test_shared_fixtures(emu_env: Emulator) -> None:
    for vendor in emu_env.vendors:
        assert os.environ[f"STORYREEL_{vendor.upper()}_BASE_URL"] == emu_env.base_url(vendor)
    assert httpx.get(f"{emu_env.url}/_emulator/health").status_code == 200


def test_cli_prints_exports_and_serves() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.emulator", "--port", "0", "--latency", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert first.startswith("export STORYREEL_EMULATOR_URL=http://127.0.0.1:"), (
            first or (proc.stderr.read() if proc.stderr else ""))
        url = first.split("=", 1)[1]
        deadline = time.monotonic() + 10
        while True:
            try:
                assert httpx.get(f"{url}/_emulator/health").status_code == 200
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)


@pytest.mark.parametrize("kind, params", [("accept_then_http", {"status": 500}),
                                          ("accept_then_no_id", {}),
                                          ("accept_then_garbage", {})])
def test_accepted_then_bad_answer_still_makes_a_job_that_bills(ex: Emulator, client: httpx.Client,
                                                               kind: str, params: dict) -> None:
    ex.inject("example", "submit", kind, **params)
    resp = client.post("/videos", json={"model": "cheap", "prompt": "a cat", "duration": 5})
    if kind == "accept_then_http":
        assert resp.status_code == 500 and resp.json()["error"]["code"] == 500
    elif kind == "accept_then_no_id":
        assert resp.status_code == 201 and resp.json() == {"status": "queued"}
    else:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    [job] = ex.jobs("example")
    finish_all(ex)
    assert ex.stats("example")["charged_usd"] == pytest.approx(0.5)
    assert ex.stats("example")["errors_injected"] == 1
    # a refused submit (here: no prompt) makes no job and keeps its own answer
    ex.inject("example", "submit", kind, **params)
    refused = client.post("/videos", json={"model": "cheap"})
    assert refused.status_code == 422 and len(ex.jobs("example")) == 1 and job.id


def test_accept_faults_are_submit_only(ex: Emulator) -> None:
    with pytest.raises(ValueError, match="not valid at stage 'poll'"):
        ex.inject("example", "poll", "accept_then_garbage")
    with pytest.raises(ValueError, match="status"):
        ex.inject("example", "submit", "accept_then_http")
