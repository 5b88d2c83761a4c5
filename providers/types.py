"""Plain data passed between the pipeline and the vendor adapters."""

from __future__ import annotations

import base64
import mimetypes
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from providers.errors import ProviderError

JobState = Literal["queued", "running", "succeeded", "failed", "canceled"]


@dataclass(frozen=True)
class ImageInput:
    """A shot's reference image: a local file (sent inline as the vendor accepts) or a URL.

    Planning reads a local file once, checks it and keeps the bytes in `data` (with the type
    Pillow found in `mime`): what is sent is exactly what was checked and hashed, even if the
    file changes meanwhile. Without `data` the file is read when needed."""

    path: Path | None = None
    url: str | None = None
    data: bytes | None = field(default=None, repr=False, compare=False)
    mime: str | None = None

    def read(self) -> tuple[bytes, str]:
        """Bytes and MIME type of a local image."""
        if self.data is not None:
            return self.data, self.mime or "application/octet-stream"
        if self.path is None:
            raise ValueError("image is a URL, not a local file")
        mime = mimetypes.guess_type(self.path.name)[0] or "application/octet-stream"
        return self.path.read_bytes(), mime

    def data_uri(self) -> str:
        """`data:` URI for local files, the URL itself otherwise (vendors fetch URLs)."""
        if self.url:
            return self.url
        data, mime = self.read()
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

    def base64(self) -> tuple[str, str]:
        data, mime = self.read()
        return base64.b64encode(data).decode("ascii"), mime


@dataclass(frozen=True)
class ShotRequest:
    """Everything an adapter needs to generate one clip; built by planning."""

    shot_id: str
    provider: str
    model: str  # catalog key, e.g. "kling-2.1-standard"
    vendor_model: str  # the vendor's own id, e.g. "fal-ai/kling-video/v2.1/standard/text-to-video"
    prompt: str
    duration_s: float
    aspect_ratio: str = "16:9"
    resolution: str = "720p"
    width: int = 1280
    height: int = 720
    fps: int = 24
    negative_prompt: str | None = None
    seed: int | None = None
    image: ImageInput | None = None  # the first frame (image-to-video)
    # Reference images (a storyboard's characters) for models whose catalog inputs list
    # "reference"; sent in the vendor's dedicated reference field, never as the first frame.
    references: tuple[ImageInput, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)  # vendor extras from the spec, passed through


@dataclass
class Job:
    """A submitted job. `data` is vendor-specific and JSON-serialisable (it goes into the journal)."""

    provider: str
    job_id: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Poll:
    """One observation of a job."""

    state: JobState
    video_url: str | None = None
    cost_usd: float | None = None  # what the vendor says it charged, where it says
    error: ProviderError | None = None  # set when state is failed/canceled
    poll_after: float | None = None  # vendor's hint for the next poll, seconds
    progress: float | None = None  # 0..1 where the vendor reports it
    raw: dict[str, Any] = field(default_factory=dict)
    # units the vendor says it bills for the job (fal's `x-fal-billable-units`), where it says
    billable_units: float | None = None
    # where cost_usd comes from when it is not the vendor's own figure: "vendor_units" = the
    # billed units x the account's unit price (fal); None = the vendor reported cost_usd
    cost_source: str | None = None

    @property
    def done(self) -> bool:
        return self.state in ("succeeded", "failed", "canceled")


@dataclass
class Clip:
    """A downloaded clip and what it cost."""

    path: Path
    job_id: str
    cost_usd: float | None  # vendor-reported; None means use the estimate
