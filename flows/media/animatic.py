"""The free local renderer: an animatic clip per shot, made by ffmpeg alone.

Without a reference image: a moving, seed-chosen and seed-coloured background (gradients, a
game of life, or a mandelbrot zoom) with the prompt as a centred title card. With an image: a
slow zoom into it, starting from the whole image (so a shot given its parent's last frame by
`start_from` visibly continues it), with the prompt as a lower-third caption. A quiet
seed-dependent tone fills the audio track. The same seed gives the same picture.

User text never enters the filter graph: each line is written to its own file and drawn with
drawtext `textfile=` and `expansion=none`, so quotes, colons, %, backslashes and any script are
inert. Glyphs the font lacks show as boxes; they never fail the render.
"""

from __future__ import annotations

import colorsys
import logging
import os
import random
import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageFont, ImageOps

from flows.media.conform import OutputFormat, temp_name
from flows.media.ffmpeg_exec import filter_path, font_file, run_ffmpeg
from flows.media.probe import probe
from providers.errors import MediaError

log = logging.getLogger(__name__)

TONES = [196.0, 220.0, 246.9, 261.6, 293.7, 329.6, 349.2, 392.0]


def _clean(text: str) -> str:
    """One line of printable text: control and format characters become spaces."""
    out = [" " if unicodedata.category(c)[0] in "CZ" and c != " " else c for c in text]
    return " ".join("".join(out).split())


def _measure(font_path: str | None, size: int):
    try:
        if font_path:
            font = ImageFont.truetype(font_path, size)
            return font.getlength
    except OSError:
        pass
    wide = {"W", "F"}
    return lambda s: sum(size * (1.0 if unicodedata.east_asian_width(c) in wide else 0.6)
                         for c in s)


def wrap(text: str, width_px: float, size: int, max_lines: int, font_path: str | None,
         measure: Callable[[str], float] | None = None) -> list[str]:
    """Greedy word wrap measured with the real font (or `measure`, a text's width in pixels);
    over-long words break by character."""
    length = measure or _measure(font_path, size)
    lines: list[str] = []
    line = ""
    for word in _clean(text).split(" "):
        candidate = f"{line} {word}" if line else word
        if length(candidate) <= width_px:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = ""
        for ch in word:  # words wider than a line (and scripts without spaces)
            if length(line + ch) > width_px and line:
                lines.append(line)
                line = ""
            line += ch
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and length(last + "…") > width_px:
            last = last[:-1]
        lines = [*lines[: max_lines - 1], last + "…"]
    return lines


def _colour(rng: random.Random, light: float = 0.55, sat: float = 0.75) -> str:
    r, g, b = colorsys.hls_to_rgb(rng.random(), light, sat)
    return f"0x{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def _background(rng: random.Random, seed: int, fmt: OutputFormat) -> str:
    """A moving lavfi source at low resolution, scaled up (cheap and soft)."""
    sw, sh = max(16, fmt.width // 4 // 2 * 2), max(16, fmt.height // 4 // 2 * 2)
    size = f"{sw}x{sh}"
    kind = rng.choice(["gradients", "gradients", "life", "mandelbrot"])
    s = seed % 2**31
    if kind == "gradients":
        colours = ":".join(f"c{i}={_colour(rng)}" for i in range(4))
        src = f"gradients=s={size}:r={fmt.fps}:{colours}:nb_colors=4:seed={s}:speed=0.015"
    elif kind == "life":
        src = (f"life=s={size}:r=6:seed={s}:ratio=0.35:mold=10:life_color={_colour(rng, 0.6)}"
               f":death_color={_colour(rng, 0.15)}:mold_color={_colour(rng, 0.35)},fps={fmt.fps}")
    else:
        src = (f"mandelbrot=s={size}:r={fmt.fps}:maxiter=200:start_scale={rng.uniform(2, 3):.3f}"
               f":end_scale=0.4,hue=h={rng.randrange(360)}+t*{rng.randrange(10, 40)}")
    return f"{src},scale={fmt.width}:{fmt.height}:flags=bicubic,setsar=1,format=yuv420p"


def _pan(rng: random.Random, fmt: OutputFormat, seconds: float) -> str:
    """A slow zoom into an image already sized to cover 1.2x the frame, from the whole image:
    the clip's first frame is the image itself."""
    rng.choice(range(6))  # the draw the seed made here before (it chose a motion): same tone
    w, h = fmt.width, fmt.height
    z = f"(1+0.2*min(t/{seconds:.3f}\\,1))"
    return (f"scale=w=2*trunc({w}*{z}/2):h=2*trunc({h}*{z}/2):eval=frame,"
            f"crop={w}:{h}:(iw-{w})/2:(ih-{h})/2")


FADE_S = 0.3  # the captions' fade out before the end


def _text_filters(lines: list[str], size: int, centre_y: float, work: Path, tag: str,
                  font: str, gone: float) -> list[str]:
    """One drawtext per line (centred individually), each reading its own text file. The
    text fades out by `gone` seconds, so the clip's last frame is the picture alone: a shot
    that starts from it (`start_from`) does not inherit its parent's caption."""
    line_h = round(size * 1.3)
    top = round(centre_y - line_h * len(lines) / 2)
    out = []
    if lines:
        pad = max(4, size // 3)
        out.append(f"drawbox=x=0:y={top - pad}:w=iw:h={line_h * len(lines) + 2 * pad}"
                   f":color=black@0.45:t=fill:enable='lt(t,{gone - FADE_S / 2:.3f})'")
    for i, line in enumerate(lines):
        f = work / f"{tag}{i}.txt"
        f.write_text(line, encoding="utf-8", errors="replace")
        out.append(
            f"drawtext=fontfile={filter_path(font)}:textfile={filter_path(f)}:expansion=none"
            f":fontsize={size}:fontcolor=white:x=(w-text_w)/2:y={top + i * line_h}"
            f":alpha=max(0\\,min(1\\,min(t/0.4\\,({gone:.3f}-t)/{FADE_S})))"
        )
    return out


def _prepare_image(image: Path, fmt: OutputFormat, work: Path) -> Path:
    """EXIF-upright RGB PNG covering 1.2x the frame: ffmpeg then only crops and scales down."""
    try:
        with Image.open(image) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            cover = ImageOps.fit(im, (round(fmt.width * 1.2) // 2 * 2,
                                      round(fmt.height * 1.2) // 2 * 2), Image.Resampling.LANCZOS)
    except (OSError, ValueError) as exc:
        raise MediaError(f"reference image {image.name} cannot be read: {exc}") from exc
    out = work / "image.png"
    cover.save(out)
    return out


async def render_animatic(dest: Path, *, prompt: str, duration: float, width: int, height: int,
                          fps: int, seed: int, image: Path | None = None,
                          title: str | None = None) -> Path:
    """Render a preview clip (H.264 + AAC MP4) of exactly round(duration*fps) frames."""
    dest = Path(dest)
    try:
        fmt = OutputFormat(width, height, fps)
    except ValueError as exc:
        raise MediaError(f"animatic: {exc}") from exc
    frames = fmt.frames(duration)
    seconds = frames / fps
    rng = random.Random(seed)
    font = font_file()
    if font is None:
        log.warning("no font found (fc-match 'DejaVu Sans'): the animatic has no text")
    with tempfile.TemporaryDirectory(prefix="storyreel-animatic-") as tmpdir:
        work = Path(tmpdir)
        inputs: list[str] = []
        if image is not None:
            inputs = ["-framerate", str(fps), "-i", str(_prepare_image(image, fmt, work))]
            # loop the decoded frame (-loop 1 would decode the PNG again for every frame)
            video = (f"[0:v]loop=loop=-1:size=1:start=0,{_pan(rng, fmt, seconds)},"
                     "format=yuv420p,setsar=1")
        else:
            video = _background(rng, seed, fmt)
        texts: list[str] = []
        gone = max(0.5, seconds - 2 / fps)  # captions off for the last frames
        if font:
            if image is None:
                size = max(10, height // 10)
                lines = wrap(prompt, width * 0.86, size, 5, font)
                texts += _text_filters(lines, size, height / 2, work, "p", font, gone)
            else:
                size = max(9, height // 16)
                lines = wrap(prompt, width * 0.9, size, 2, font)
                centre = height - size * 1.3 * len(lines) / 2 - height * 0.06
                texts += _text_filters(lines, size, centre, work, "p", font, gone)
            if title:
                tsize = max(8, height // 18)
                tl = wrap(title, width * 0.9, tsize, 1, font)
                texts += _text_filters(tl, tsize, tsize * 1.2, work, "t", font, gone)
        tone = rng.choice(TONES)
        fade_out = max(0.0, seconds - 0.3)
        graph = ";".join([
            ",".join([video, *texts, f"trim=end_frame={frames}"]) + "[v]",
            f"aevalsrc='0.04*sin(2*PI*{tone}*t)+0.02*sin(2*PI*{tone * 1.5:.2f}*t)'"
            f":s=48000:c=stereo,afade=t=in:d=0.2,afade=t=out:st={fade_out:.3f}:d=0.3,"
            f"atrim=end_sample={fmt.samples(frames)}[a]",
        ])
        tmp = temp_name(dest)
        try:
            await run_ffmpeg([
                *inputs, "-filter_complex", graph, "-map", "[v]", "-map", "[a]",
                "-c:v", "libx264", "-preset", "ultrafast", "-crf", "23", "-pix_fmt", "yuv420p",
                "-g", str(2 * fps), "-threads", "1", "-c:a", "aac", "-b:a", "128k",
                "-frames:v", str(frames), "-movflags", "+faststart", "-f", "mp4", str(tmp),
            ])
            info = probe(tmp)
            if info.nb_frames != frames or (info.width, info.height) != (width, height):
                raise MediaError(f"animatic came out {info.width}x{info.height}, "
                                 f"{info.nb_frames} frames; wanted {width}x{height}, {frames}")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return dest
