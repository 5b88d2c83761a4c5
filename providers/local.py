"""`local`: the free offline renderer. Each shot becomes a real moving clip (an animatic) made
by ffmpeg on this machine, through the same submit/poll/fetch interface as hosted vendors.

The drawing itself is the pipeline's media work (flows.media.animatic): the pipeline hands it in
as `renderer`, so this vendor layer never imports the pipeline."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from providers.base import Provider
from providers.errors import JobFailedError, MediaError
from providers.types import Clip, Job, Poll, ShotRequest

# renderer(out, prompt=, duration=, width=, height=, fps=, seed=, image=, title=) writes an MP4
Renderer = Callable[..., Awaitable[Any]]


class LocalProvider(Provider):
    name = "local"
    key_env = None

    def __init__(self, *, renderer: Renderer | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.renderer = renderer
        self.workdir = Path(tempfile.mkdtemp(prefix="storyreel-local-"))
        self._errors: dict[str, str] = {}

    async def submit(self, req: ShotRequest) -> Job:
        job_id = f"local-{uuid.uuid4().hex[:12]}"
        out = self.workdir / f"{job_id}.mp4"
        image = req.image.path if req.image and req.image.path else None
        if self.renderer is None:
            raise self.error(JobFailedError, "the local provider has no renderer (the pipeline "
                             "passes flows.media.animatic.render_animatic)")
        try:
            await self.renderer(out, prompt=req.prompt, duration=req.duration_s,
                                  width=req.width, height=req.height, fps=req.fps,
                                  seed=req.seed or 0, image=image, title=req.shot_id)
        except MediaError as exc:
            self._errors[job_id] = str(exc)
        return Job(provider=self.name, job_id=job_id, data={"path": str(out)})

    async def poll(self, job: Job) -> Poll:
        if job.job_id in self._errors:
            return Poll(state="failed", error=self.error(
                JobFailedError, f"animatic render failed: {self._errors[job.job_id]}", job=job))
        path = Path(job.data["path"])
        if not path.exists():
            return Poll(state="failed", error=self.error(
                JobFailedError, "animatic output is gone (was the run's temp folder removed?)",
                job=job))
        return Poll(state="succeeded", video_url=path.as_uri(), cost_usd=0.0)

    async def fetch(self, job: Job, done: Poll, dest: Path) -> Clip:
        dest.parent.mkdir(parents=True, exist_ok=True)
        src = Path(job.data["path"])
        try:
            os.replace(src, dest)
        except OSError:  # different filesystem
            shutil.move(str(src), dest)
        return Clip(path=dest, job_id=job.job_id, cost_usd=0.0)
