"""Helpers for adapter tests: build an adapter pointed at the emulator and run one job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import httpx

from providers.base import PollSettings, Provider
from providers.catalog import load_catalog
from providers.http import RetryPolicy
from providers.registry import get_provider_class
from providers.types import Clip, ImageInput, ShotRequest

FAST_POLL = PollSettings(first=0.05, max=0.2, factor=1.5, deadline=20.0)
FAST_RETRY = RetryPolicy(attempts=4, submit_attempts=3, base_delay=0.02, max_delay=0.1)


def make_provider(name: str, emu: Any, client: httpx.AsyncClient, *, key: str | None = None,
                  poll: PollSettings = FAST_POLL) -> Provider:
    """The real adapter class from the registry, aimed at the emulator with its fake key."""
    cls = get_provider_class(name)
    env = emu.env()
    if key is None and cls.key_env:
        key = env[cls.key_env]
    base = env[cls.base_url_env] if cls.base_url_env else None
    return cls(client=client, key=key, base_url=base, poll=poll, retry=FAST_RETRY)


def request_for(provider: str, *, model: str | None = None, duration: float | None = None,
                image: Path | str | None = None, shot_id: str = "s1", **kw: Any) -> ShotRequest:
    """A valid ShotRequest for a catalog model (its default model unless named)."""
    cat = load_catalog()[provider]
    info = cat.models[model or cat.default_model]
    if duration is None:
        d = info.durations
        duration = d[0] if isinstance(d, list) else d.min
    img = None
    if isinstance(image, Path):
        img = ImageInput(path=image)
    elif isinstance(image, str):
        img = ImageInput(url=image)
    vendor_model = info.vendor_model_image if (img and info.vendor_model_image) else info.vendor_model
    fields: dict[str, Any] = dict(
        shot_id=shot_id, provider=provider, model=info.key, vendor_model=vendor_model,
        prompt="a lighthouse at dusk, slow dolly in", duration_s=float(duration),
        aspect_ratio=info.aspect_ratios[0], resolution=info.resolutions[0],
        width=1280, height=720, fps=24, seed=7, image=img,
    )
    fields.update(kw)
    return ShotRequest(**fields)


async def run_job(p: Provider, req: ShotRequest, dest: Path) -> Clip:
    """submit -> wait -> fetch, raising the job's error if it failed."""
    job = await p.submit(req)
    done = await p.wait(job)
    if done.error is not None:
        raise done.error
    return await p.fetch(job, done, dest)


def assert_mp4(path: Path) -> None:
    """A real, decodable H.264 MP4 with a duration (what every vendor download must be)."""
    with av.open(str(path)) as container:
        assert "mp4" in container.format.name
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frame = next(container.decode(stream))
        assert frame.width > 0 and frame.height > 0
        assert container.duration and container.duration > 0
