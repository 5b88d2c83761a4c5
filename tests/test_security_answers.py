"""Hostile vendor answers: ids that look like paths, follow-up URLs and redirects
that lead to other hosts, and video URLs we must not fetch. Every adapter here talks to the
emulator over real HTTP; "another host" is the same emulator reached as `localhost`, and
`emu.offhost_credentials` lists every credential header that arrived there."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
import pytest

from providers import http
from providers.base import segment
from providers.errors import ProviderError, UnconfirmedSubmitError, UnsafeURLError
from providers.hosts import Hosts
from providers.types import Job
from tests.emulator.core import Emulator
from tests.provider_kit import assert_mp4, make_provider, request_for, run_job

PATHLIKE = "../../../../tmp/storyreel-x"


@pytest.mark.parametrize("vendor", ["replicate", "runway", "luma", "perf", "videogenapi",
                                    "huggingface", "nanogpt"])
async def test_a_path_like_job_id_stays_one_url_segment(emu: Emulator, vendor: str,
                                                        tmp_path: Path) -> None:
    """The vendor names its job `../../../../tmp/x`: polls must still reach that job (the id is
    escaped, never a path) and the clip arrives."""
    emu.inject(vendor, "job", "job_id", job_id=PATHLIKE)
    async with httpx.AsyncClient(timeout=10) as client:
        p = make_provider(vendor, emu, client)
        clip = await run_job(p, request_for(vendor), tmp_path / "clip.mp4")
    assert clip.job_id == PATHLIKE
    assert_mp4(clip.path)
    assert emu.stats(vendor)["polls"] >= 1


async def test_a_gemini_operation_name_with_dot_segments_is_refused(emu: Emulator) -> None:
    emu.inject("gemini", "job", "job_id", job_id=PATHLIKE)
    async with httpx.AsyncClient(timeout=10) as client:
        p = make_provider("gemini", emu, client)
        with pytest.raises(UnconfirmedSubmitError, match="operation name"):
            await p.submit(request_for("gemini"))
        # a journal entry written before the check is refused at poll time too
        with pytest.raises(ProviderError, match="cannot poll"):
            await p.poll(Job("gemini", "x", {"operation": f"models/veo/operations/{PATHLIKE}"}))


@pytest.mark.parametrize("vendor", ["fal", "videogenapi"])
async def test_follow_up_urls_on_another_host_never_get_the_key(emu: Emulator, vendor: str,
                                                               tmp_path: Path) -> None:
    """fal's status/response/cancel URLs and VideoGenAPI's status_url name another host: the
    job is still followed (on the vendor's own host) and no key goes there."""
    emu.inject(vendor, "job", "foreign_urls")
    async with httpx.AsyncClient(timeout=10) as client:
        p = make_provider(vendor, emu, client)
        clip = await run_job(p, request_for(vendor), tmp_path / "clip.mp4")
    assert_mp4(clip.path)
    assert emu.offhost_credentials == []


@pytest.mark.parametrize("vendor", ["nanogpt", "gemini", "replicate"])
async def test_a_poll_redirected_to_another_host_carries_no_credential(emu: Emulator,
                                                                      vendor: str) -> None:
    """httpx drops only Authorization on a cross-origin redirect; x-api-key (NanoGPT) and
    x-goog-api-key (Gemini) must not follow either. The run's own client (it follows
    redirects)."""
    async with http.new_client() as client:
        p = make_provider(vendor, emu, client)
        job = await p.submit(request_for(vendor))
        emu.inject(vendor, "poll", "redirect")
        with contextlib.suppress(ProviderError):  # the other host refuses a key-less poll
            await p.poll(job)
    assert emu.stats(vendor)["errors_injected"] >= 1  # the redirect was served
    assert emu.offhost_credentials == []


async def test_a_download_redirected_to_another_host_carries_no_key(emu: Emulator,
                                                                    tmp_path: Path) -> None:
    """Gemini's Files API wants the key and redirects to storage elsewhere: the key stays."""
    async with http.new_client() as client:
        p = make_provider("gemini", emu, client)
        job = await p.submit(request_for("gemini"))
        done = await p.wait(job)
        emu.inject("gemini", "download", "redirect")
        with contextlib.suppress(ProviderError):
            await p.fetch(job, done, tmp_path / "v.mp4")
    assert emu.stats("gemini")["errors_injected"] >= 1
    assert emu.offhost_credentials == []


async def test_a_gzip_encoded_download_is_length_checked_on_the_wire(emu: Emulator,
                                                                     tmp_path: Path) -> None:
    emu.inject("perf", "download", "gzip", times=-1)
    async with httpx.AsyncClient(timeout=10) as client:
        p = make_provider("perf", emu, client)
        clip = await run_job(p, request_for("perf"), tmp_path / "clip.mp4")
    assert_mp4(clip.path)  # decoded on the way in


@pytest.mark.parametrize("url", [
    "file:///etc/passwd",
    "http://10.255.255.1/clip.mp4",  # private (and unroutable: the old code hung on it)
    "http://169.254.169.254/latest/meta-data/",  # link-local: the cloud metadata service
    "ftp://127.0.0.1/clip.mp4",
])
async def test_video_urls_we_must_not_fetch_are_refused_at_once(emu: Emulator, tmp_path: Path,
                                                                url: str) -> None:
    emu.inject("runway", "job", "video_url", url=url)
    async with httpx.AsyncClient(timeout=10) as client:
        p = make_provider("runway", emu, client)
        job = await p.submit(request_for("runway"))
        done = await p.wait(job)
        assert done.video_url == url
        t0 = time.monotonic()
        with pytest.raises(UnsafeURLError):
            await asyncio.wait_for(p.fetch(job, done, tmp_path / "v.mp4"), 10)
    assert time.monotonic() - t0 < 2  # not retried
    assert not (tmp_path / "v.mp4").exists()


async def test_clip_and_run_size_caps(emu: Emulator, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        p = make_provider("perf", emu, client)
        job = await p.submit(request_for("perf"))
        done = await p.wait(job)
        monkeypatch.setenv("STORYREEL_MAX_CLIP_BYTES", "1000")
        with pytest.raises(UnsafeURLError, match="STORYREEL_MAX_CLIP_BYTES"):
            await p.fetch(job, done, tmp_path / "a.mp4")
        monkeypatch.delenv("STORYREEL_MAX_CLIP_BYTES")
        await p.fetch(job, done, tmp_path / "b.mp4")
        size = (tmp_path / "b.mp4").stat().st_size
        monkeypatch.setenv("STORYREEL_MAX_RUN_BYTES", str(int(size * 1.5)))
        with pytest.raises(UnsafeURLError, match="STORYREEL_MAX_RUN_BYTES"):
            await p.fetch(job, done, tmp_path / "c.mp4")  # the client's second clip
    assert not (tmp_path / "a.mp4").exists() and not (tmp_path / "c.mp4").exists()


async def test_the_key_goes_only_to_the_vendors_hosts(emu: Emulator, tmp_path: Path) -> None:
    """Provider.call and .download (the one place requests leave from): an absolute URL on
    another host gets no credential, however the adapter built its headers."""
    other = emu.url.replace("127.0.0.1", "localhost")
    async with httpx.AsyncClient(timeout=10) as client:
        p = make_provider("nanogpt", emu, client)
        with contextlib.suppress(ProviderError):
            await p.call("GET", f"{other}/nanogpt/api/generate-video/status?runId=x",
                         stage="poll")
        job = await p.submit(request_for("nanogpt"))
        done = await p.wait(job)
        media = done.video_url.replace(emu.url, other)
        await p.download(media, tmp_path / "v.mp4", headers=p.auth_headers())
    assert_mp4(tmp_path / "v.mp4")
    assert emu.offhost_credentials == []


def test_job_id_segments() -> None:
    assert segment("../../x") == "..%2F..%2Fx"
    assert segment("..") == "%2E%2E" and segment(".") == "%2E"
    assert segment("a?b#c d") == "a%3Fb%23c%20d"
    assert segment("pred_123-abc") == "pred_123-abc"  # ordinary ids are unchanged


def test_hosts_policy_units() -> None:
    hosts = Hosts.for_vendor(("api.example.com",), "https://api.example.com/v1")
    assert hosts.trusted("https://api.example.com/x")
    assert not hosts.trusted("http://api.example.com/x")  # never the key in clear text
    assert not hosts.trusted("https://api.example.com.evil.net/x")
    assert not hosts.trusted("https://cdn.example.com/x")
    headers = httpx.Headers({"Authorization": "k", "X-Goog-Api-Key": "k", "Accept": "*/*"})
    hosts.strip(headers)
    assert dict(headers) == {"accept": "*/*"}

    async def check(url: str) -> None:
        await hosts.check(httpx.URL(url))

    asyncio.run(check("https://93.184.216.34/clip.mp4"))  # public https: fine
    for bad in ("http://93.184.216.34/clip.mp4",  # plain http to a public host
                "https://127.0.0.1/clip.mp4", "https://[::1]/clip.mp4",
                "https://192.168.1.10/clip.mp4", "https://[::ffff:10.0.0.1]/clip.mp4",
                "https://0.0.0.0/clip.mp4"):
        with pytest.raises(UnsafeURLError):
            asyncio.run(check(bad))


async def test_file_urls_are_refused_by_the_shared_download(tmp_path: Path) -> None:
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"\0" * 100)
    async with httpx.AsyncClient() as client:
        with pytest.raises(UnsafeURLError):
            await http.download(client, secret.as_uri(), tmp_path / "out.mp4", provider="x")
        with pytest.raises(UnsafeURLError):
            await http.download(client, "data:video/mp4;base64,AAAA", tmp_path / "o.mp4",
                                provider="x")


async def test_gemini_still_sends_its_key_to_its_own_files_api(emu: Emulator,
                                                               tmp_path: Path) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        p = make_provider("gemini", emu, client)
        clip = await run_job(p, request_for("gemini"), tmp_path / "v.mp4")
    assert_mp4(clip.path)



async def test_gemini_fetches_a_storyboard_image_url_only_if_public(emu: Emulator) -> None:
    """Gemini takes images inline, so the adapter fetches URL images itself: a storyboard (or
    a ${var}) must not make the worker fetch its cloud metadata service."""
    async with httpx.AsyncClient(timeout=10) as client:
        p = make_provider("gemini", emu, client)
        req = request_for("gemini", image="http://169.254.169.254/latest/meta-data/x.png")
        with pytest.raises(UnsafeURLError, match="link-local"):
            await asyncio.wait_for(p.submit(req), 10)
    assert emu.stats("gemini")["submits"] == 0
