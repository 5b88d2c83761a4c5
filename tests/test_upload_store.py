"""The S3-compatible upload store against a real S3 server (moto's standalone server on
loopback): a Luma shot's local image reaches the emulated Luma as a presigned URL that Luma
fetches, and planning refuses a URL-only vendor with a local image when no store is set."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest
from PIL import Image

from flows.storyboard.loading import load_storyboard
from flows.storyboard.plan import build_plan
from providers.errors import InvalidRequestError, SpecError
from providers.types import ImageInput
from providers.upload_store import UploadStore
from tests.emulator.core import Emulator
from tests.provider_kit import make_provider, request_for
from tests.s3_kit import BUCKET
from tests.storyboards import write_board


def frame(folder: Path) -> Path:
    path = folder / "frame.png"
    Image.frombytes("RGB", (64, 36), os.urandom(64 * 36 * 3)).save(path)
    return path


async def test_luma_local_image_reaches_luma_as_a_presigned_url(emu: Emulator, s3: object,
                                                               tmp_path: Path) -> None:
    image = frame(tmp_path)
    store = UploadStore(f"s3://{BUCKET}/refs")
    async with httpx.AsyncClient() as client:
        p = make_provider("luma", emu, client)
        p.uploads = store
        for shot in ("a", "b"):
            await p.submit(request_for("luma", image=image, shot_id=shot))
    a, b = emu.jobs("luma")
    url = a.request["keyframes"]["frame0"]["url"]
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=3600" in url
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    assert a.data["images"]["frame0"] == digest == b.data["images"]["frame0"]  # Luma fetched it
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="refs/")["Contents"]]
    assert keys == [f"refs/{digest}.png"]  # put once, under its content hash
    assert "testing" not in url.split("?")[0]


async def test_a_deleted_object_fails_at_the_vendor(emu: Emulator, s3: object,
                                                    tmp_path: Path) -> None:
    image = frame(tmp_path)
    store = UploadStore(f"s3://{BUCKET}/gone")
    url = store.put(*ImageInput(path=image).read())
    s3.delete_object(Bucket=BUCKET, Key=url.split(f"/{BUCKET}/", 1)[1].split("?")[0])
    async with httpx.AsyncClient() as client:
        p = make_provider("luma", emu, client)
        with pytest.raises(InvalidRequestError, match="404"):
            await p.submit(request_for("luma", image=url))


def luma_board(folder: Path, **extra: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    frame(folder)
    shots = [{"id": "s1", "prompt": "a keeper", "provider": "luma", "image": "frame.png",
              "duration": 5}]
    return write_board(folder, shots, **extra)


def test_plan_refuses_a_local_image_for_luma_without_a_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STORYREEL_UPLOAD_URL", raising=False)
    path = luma_board(tmp_path)
    with pytest.raises(SpecError, match="STORYREEL_UPLOAD_URL"):
        build_plan(load_storyboard(path), path)
    monkeypatch.setenv("STORYREEL_UPLOAD_URL", f"s3://{BUCKET}/refs")
    assert build_plan(load_storyboard(path), path).shots[0].image is not None


def test_storyboard_store_only_inside_allowed_prefixes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STORYREEL_UPLOAD_URL", raising=False)
    monkeypatch.setenv("STORYREEL_ALLOWED_STORES", f"s3://{BUCKET}/teams/a")
    ok = luma_board(tmp_path / "ok", uploads={"url": f"s3://{BUCKET}/teams/a/x"})
    assert build_plan(load_storyboard(ok), ok).shots
    bad = luma_board(tmp_path / "bad", uploads={"url": f"s3://{BUCKET}/teams/ab"})
    with pytest.raises(SpecError, match="uploads.url"):
        build_plan(load_storyboard(bad), bad)
