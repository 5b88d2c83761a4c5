"""Local images reach every vendor over its own upload, once per image per run, and character
references go in each vendor's reference field (through the emulator, real sockets)."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import httpx
import pytest
from PIL import Image

from providers.errors import InvalidRequestError
from providers.types import ImageInput
from tests.emulator.core import FAKE_KEYS, Emulator
from tests.provider_kit import make_provider, request_for

# vendors' own figures, not the product's: Replicate's API schema takes data URLs up to 256 kB
SMALL = 200 * 1024
LARGE = 700 * 1024


def image_file(folder: Path, name: str, size: int) -> Path:
    """A PNG of about `size` bytes (noise does not compress)."""
    side = max(8, int((size / 3) ** 0.5))
    img = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    path = folder / name
    img.save(path, compress_level=0)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_fal_large_image_goes_through_the_cdn_upload_once(emu_env: Emulator,
                                                                tmp_path: Path) -> None:
    big = image_file(tmp_path, "frame.png", LARGE)
    async with httpx.AsyncClient() as client:
        p = make_provider("fal", emu_env, client)
        for shot in ("a", "b"):  # two shots, one image: one upload
            await p.submit(request_for("fal", model="kling-3-pro", image=big, shot_id=shot))
    jobs = emu_env.jobs("fal")
    urls = {j.request["start_image_url"] for j in jobs}
    assert len(urls) == 1 and next(iter(urls)).startswith(f"{emu_env.base_url('fal')}/cdn/files/")
    assert all(j.data["images"]["start_image_url"] == sha(big) for j in jobs)  # fetched back
    assert emu_env.stats("fal")["uploads"] == 1  # one storage token, one file
    assert FAKE_KEYS["fal"] not in str(jobs[0].request)


async def test_fal_small_image_stays_inline(emu_env: Emulator, tmp_path: Path) -> None:
    small = image_file(tmp_path, "small.png", SMALL)
    async with httpx.AsyncClient() as client:
        p = make_provider("fal", emu_env, client)
        await p.submit(request_for("fal", model="kling-3-pro", image=small))
    (job,) = emu_env.jobs("fal")
    assert job.request["start_image_url"].startswith("data:image/png;base64,")
    assert job.data["images"]["start_image_url"] == sha(small)
    assert emu_env.stats("fal")["uploads"] == 0


async def test_fal_falls_back_to_the_storage_upload(emu_env: Emulator, tmp_path: Path) -> None:
    big = image_file(tmp_path, "frame.png", LARGE)
    emu_env.inject("fal", "upload", "http", status=401, times=1)  # the CDN token is refused
    async with httpx.AsyncClient() as client:
        p = make_provider("fal", emu_env, client)
        await p.submit(request_for("fal", model="kling-3-pro", image=big))
    (job,) = emu_env.jobs("fal")
    assert job.data["images"]["start_image_url"] == sha(big)  # the signed PUT's file


async def test_replicate_large_image_uploaded_once_small_inline(emu: Emulator,
                                                               tmp_path: Path) -> None:
    big, small = image_file(tmp_path, "big.png", LARGE), image_file(tmp_path, "s.png", SMALL)
    async with httpx.AsyncClient() as client:
        p = make_provider("replicate", emu, client)
        await p.submit(request_for("replicate", image=big, shot_id="a"))
        await p.submit(request_for("replicate", image=big, shot_id="b"))
        await p.submit(request_for("replicate", image=small, shot_id="c"))
    a, b, c = emu.jobs("replicate")
    assert a.request["input"]["image"] == b.request["input"]["image"]
    assert a.request["input"]["image"].startswith(f"{emu.base_url('replicate')}/v1/files/")
    assert a.data["images"]["image"] == sha(big)
    assert c.request["input"]["image"].startswith("data:") and c.data["images"]["image"] == sha(small)
    assert emu.stats("replicate")["uploads"] == 1


async def test_replicate_veo_references_go_in_reference_images(emu: Emulator,
                                                              tmp_path: Path) -> None:
    refs = (image_file(tmp_path, "keeper.png", LARGE), image_file(tmp_path, "ball.png", SMALL))
    async with httpx.AsyncClient() as client:
        p = make_provider("replicate", emu, client)
        req = request_for("replicate", model="veo-3.1", duration=8, aspect_ratio="16:9",
                          references=tuple(ImageInput(path=r) for r in refs))
        await p.submit(req)
    (job,) = emu.jobs("replicate")
    assert "image" not in job.request["input"]
    assert [job.data["images"][f"reference_images[{i}]"] for i in range(2)] == [sha(r) for r in refs]


async def test_runway_upload_reused_and_fetched_back(emu: Emulator, tmp_path: Path) -> None:
    big = image_file(tmp_path, "frame.png", LARGE)
    async with httpx.AsyncClient() as client:
        p = make_provider("runway", emu, client)
        for shot in ("a", "b"):
            await p.submit(request_for("runway", image=big, shot_id=shot))
    a, b = emu.jobs("runway")
    assert a.request["promptImage"] == b.request["promptImage"]
    assert a.request["promptImage"].startswith("runway://")
    assert a.data["images"]["promptImage[0]"] == sha(big)
    assert emu.stats("runway")["uploads"] == 1


async def test_gemini_references_are_inline_asset_images(emu: Emulator, tmp_path: Path) -> None:
    refs = [image_file(tmp_path, f"r{i}.png", SMALL) for i in range(2)]
    async with httpx.AsyncClient() as client:
        p = make_provider("gemini", emu, client)
        req = request_for("gemini", model="veo-3.1", duration=8,
                          references=tuple(ImageInput(path=r) for r in refs))
        await p.submit(req)
        with pytest.raises(InvalidRequestError, match="not both"):
            await p.submit(request_for("gemini", model="veo-3.1", image=refs[0],
                                       references=(ImageInput(path=refs[1]),)))
    (job,) = emu.jobs("gemini")
    sent = job.request["instances"][0]["referenceImages"]
    assert [r["referenceType"] for r in sent] == ["ASSET", "ASSET"]
    assert [base64.b64decode(r["image"]["bytesBase64Encoded"]) for r in sent] == \
        [r.read_bytes() for r in refs]
    assert "image" not in job.request["instances"][0]


async def test_a_wrong_upload_url_fails_the_submit(emu: Emulator) -> None:
    """The emulator really reads what a request names: a file that was never uploaded fails."""
    missing = f"{emu.base_url('fal')}/cdn/files/nope/frame.png"
    async with httpx.AsyncClient() as client:
        p = make_provider("fal", emu, client)
        with pytest.raises(InvalidRequestError, match="404"):
            await p.submit(request_for("fal", model="kling-3-pro", image=missing))
    assert emu.jobs("fal") == []
