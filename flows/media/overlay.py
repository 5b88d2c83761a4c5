"""A logo (watermark) over the whole cut: one overlay filter in the cut's single encode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flows.media.conform import OutputFormat


@dataclass(frozen=True)
class Logo:
    image: Path
    position: str = "top-right"  # top-left | top-right | bottom-left | bottom-right | center
    opacity: float = 0.8
    scale: float = 0.15  # logo width / frame width


def logo_input(logo: Logo, fmt: OutputFormat) -> list[str]:
    """The image as an ffmpeg input, read at the cut's rate (its one frame is decoded once)."""
    return ["-framerate", str(fmt.fps), "-i", str(logo.image)]


def logo_filter(logo: Logo, fmt: OutputFormat, video: str, image: str, out: str) -> str:
    """Graph text overlaying input label `image` on label `video`, to label `out`. The still is
    looped as a stream with a frame for every frame of the cut: relying on overlay's
    eof_action=repeat after a one-frame input left the logo off a frame at some clip
    boundaries."""
    width = max(2, round(fmt.width * logo.scale / 2) * 2)
    m = round(min(fmt.width, fmt.height) * 0.04)
    x = {"left": f"{m}", "right": f"W-w-{m}", "center": "(W-w)/2"}
    y = {"top": f"{m}", "bottom": f"H-h-{m}", "center": "(H-h)/2"}
    if logo.position == "center":
        px, py = x["center"], y["center"]
    else:
        vert, horiz = logo.position.split("-")
        px, py = x[horiz], y[vert]
    return (f"[{image}]scale={width}:-2,format=rgba,colorchannelmixer=aa={logo.opacity:.3f},"
            f"loop=loop=-1:size=1:start=0,setpts=N/{fmt.fps}/TB[logo];"
            f"[{video}][logo]overlay=x={px}:y={py}:format=auto:shortest=1[{out}]")
