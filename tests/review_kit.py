"""Shared by the review tests: render through the real flow, and look at frames of a cut."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest


@pytest.fixture
def review_run(emu_env, prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Render a storyboard through the Prefect flow against the emulator; returns its result."""
    from flows.orchestration.flow import render_storyboard

    monkeypatch.setenv("STORYREEL_CACHE_DIR", str(tmp_path / "cache"))
    emu_env.configure(latency=0.2)

    async def go(spec: Path, out: Path, **kw: Any) -> dict[str, Any]:
        return await render_storyboard(storyboard=str(spec), out=str(out), **kw)

    return go


def frame_at(video: Path, seconds: float) -> np.ndarray:
    """The decoded RGB frame shown at `seconds` (the first frame at or after it)."""
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if frame.time is not None and frame.time >= seconds - 1e-6:
                return frame.to_ndarray(format="rgb24").astype(np.int16)
    raise AssertionError(f"{video} has no frame at {seconds} s")


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two frames of the same size, 0..255."""
    return float(np.abs(a - b).mean())
