"""The deliverable cut: the joined clips plus what makes them publishable (music bed, loudness,
captions as sidecars and burned in, a logo). Everything the cut depends on is one value, `Cut`,
so that one object says everything the cut is made of.

Speed: with no caption to burn and no logo, the picture is stream-copied exactly as in
`assemble` and only the audio goes through one filter graph, encoded once to AAC. Burned
captions or a logo cost ONE encode of the whole cut (bench/deliverable.py). Loudness adds an
audio-only first pass (loudnorm's measurement) and an audio-only measurement of the result.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.files.folder import stored
from flows.media import aac
from flows.media.assemble import (
    Transition,
    assemble,
    layout,
    segments_dir,
    segments_list,
    verify_cut,
)
from flows.media.audio import (
    Loudness,
    Music,
    measure_file,
    measure_mix,
    mix_graph,
    normalisation_type,
    normalise_filter,
)
from flows.media.captions import Caption, CaptionLook, Cue, burn_filters, cues, spans, srt, vtt
from flows.media.conform import OutputFormat, as_argv, temp_name, video_codec_args
from flows.media.ffmpeg_exec import run_ffmpeg
from flows.media.overlay import Logo, logo_filter, logo_input
from flows.media.probe import VideoInfo, probe


@dataclass(frozen=True)
class Cut:
    """Every input of the final cut. clips include title/end cards; captions[i] belongs to
    clips[i] (None: no caption); captions are burned when `burn` is set."""

    clips: tuple[Path, ...]
    transitions: tuple[Transition, ...]
    fmt: OutputFormat
    captions: tuple[Caption | None, ...] = ()
    burn: CaptionLook | None = None
    logo: Logo | None = None
    music: Music | None = None
    loudness: Loudness | None = None

    @property
    def draws(self) -> bool:
        """True when the picture must be encoded (something is drawn on it)."""
        return self.logo is not None or (self.burn is not None and any(
            c is not None and c.fonts for c in self.captions))

    @property
    def plain(self) -> bool:
        return not self.draws and self.music is None and self.loudness is None

    def files(self) -> list[Path]:
        """Every file whose bytes the cut depends on (clips, music, logo, fonts)."""
        out = list(self.clips)
        out += sorted({f for c in self.captions if c is not None for f in c.fonts})
        if self.logo:
            out.append(self.logo.image)
        if self.music:
            out.append(self.music.path)
        return out


@dataclass
class CutReport:
    info: VideoInfo
    cues: list[Cue] = field(default_factory=list)
    srt: Path | None = None
    vtt: Path | None = None
    loudness: dict[str, Any] | None = None  # target, measured integrated/true peak, mode
    spans: list[tuple[str, float, float]] = field(default_factory=list)  # clip, start, end (s)
    base: Path | None = None  # the cut's folder: to_json names its files relative to it

    def to_json(self) -> dict[str, Any]:
        """For run.json and cut.json: files in the cut's folder by their path relative to
        it (flows/files/folder.py), so that the folder can be moved."""
        def name(p: Path | str | None) -> str | None:
            if p is None:
                return None
            return stored(p, self.base) if self.base is not None else str(p)
        return {"duration_s": round(self.info.duration, 3), "captions": len(self.cues),
                "srt": name(self.srt), "vtt": name(self.vtt), "loudness": self.loudness,
                "spans": [[name(c), a, b] for c, a, b in self.spans]}


def _spans(clips: list[Path], frames: list[int], joins: list[int], fps: int
           ) -> list[tuple[str, float, float]]:
    """Where each clip plays in the cut, in seconds (half of each junction is its own)."""
    return [(str(c.resolve()), round(a / fps, 3), round(b / fps, 3))
            for c, (a, b) in zip(clips, spans(frames, joins), strict=True)]


async def make_cut(cut: Cut, dest: Path) -> CutReport:
    """Assemble `cut` into `dest` (.mp4), with final.srt/.vtt beside it when it has captions."""
    dest = Path(dest)
    clips = [Path(c) for c in cut.clips]
    fmt = cut.fmt
    captions = list(cut.captions) + [None] * (len(clips) - len(cut.captions))
    frames, joins, transitions = laid_out = layout(clips, fmt, list(cut.transitions))
    placed = _spans(clips, frames, joins, fmt.fps)
    if cut.plain and not any(captions):
        _sidecars([], fmt.fps, dest)
        return CutReport(await assemble(clips, dest, fmt, laid_out=laid_out), spans=placed,
                         base=dest.parent)
    total = sum(frames) - sum(joins)
    cue_list = cues(frames, joins, captions)
    sidecars = _sidecars(cue_list, fmt.fps, dest)
    if cut.plain:
        return CutReport(await assemble(clips, dest, fmt, laid_out=laid_out), cue_list,
                         *sidecars, spans=placed, base=dest.parent)

    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".assemble-") as tmpdir:
        work = Path(tmpdir)
        listfile = await segments_list(clips, frames, joins, transitions, fmt, work,
                                       segments_dir(dest))
        inputs = ["-f", "concat", "-safe", "0", "-i", str(listfile)]
        if cut.music is not None:
            inputs += ["-stream_loop", "-1", "-i", str(cut.music.path)]
        audio = mix_graph(cut.music, fmt.samples(total))
        measured = None
        if cut.loudness is not None:
            measured = await measure_mix(inputs, audio)
            if not measured.silent:
                audio += f";[mix]{normalise_filter(cut.loudness, measured)}[aout]"
        if not audio.endswith("[aout]"):
            audio += ";[mix]anull[aout]"
        graph, video_args = audio, ["-map", "0:v:0", "-c:v", "copy"]
        if cut.draws:
            graph, video_args, more = _picture(cut, cue_list, work, inputs.count("-i"), audio)
            inputs = [*inputs, *more]
        tmp = temp_name(dest)
        try:
            err = await run_ffmpeg([
                *inputs, "-filter_complex", graph, *video_args, "-map", "[aout]",
                "-c:a", "aac", "-b:a", "192k", "-ar", "48000",
                "-movflags", "+faststart", "-f", "mp4", str(tmp),
            ], loglevel="info" if measured is not None else "error")
            verify_cut(tmp, fmt, total)
            os.replace(tmp, dest)
            aac.forget(dest)  # this track is not the one the record describes
        finally:
            tmp.unlink(missing_ok=True)
    report = CutReport(probe(dest), cue_list, *sidecars, spans=placed, base=dest.parent)
    if cut.loudness is not None and measured is not None:
        report.loudness = await _loudness_report(dest, cut.loudness, measured.silent, err)
    return report


def _picture(cut: Cut, cue_list: list[Cue], work: Path, next_input: int,
             audio: str) -> tuple[str, list[str], list[str]]:
    """The filter graph that draws captions and the logo, the video output arguments, and the
    inputs to add (the logo, as input number `next_input`)."""
    fmt = cut.fmt
    chain = burn_filters(cue_list, fmt, cut.burn, work) if cut.burn is not None else []
    parts = [audio, "[0:v]" + ",".join(chain or ["null"]) + ("[drawn]" if cut.logo else "[vout]")]
    more: list[str] = []
    if cut.logo is not None:
        more = logo_input(cut.logo, fmt)
        parts.append(logo_filter(cut.logo, fmt, "drawn", f"{next_input}:v", "vout"))
    # the one encode of the whole cut: the house settings, all cores (threads 0 = auto)
    codec = {**video_codec_args(fmt), "threads": 0}
    return ";".join(parts), ["-map", "[vout]", *as_argv(codec)], more


def _sidecars(cue_list: list[Cue], fps: int, dest: Path) -> tuple[Path | None, Path | None]:
    """final.srt / final.vtt beside the cut; none (and no stale ones) without captions."""
    from flows.files.atomic import write_text_atomic

    base = dest.with_suffix("")
    paths = base.with_name(base.name + ".srt"), base.with_name(base.name + ".vtt")
    if not cue_list:
        for p in paths:
            p.unlink(missing_ok=True)
        return None, None
    write_text_atomic(paths[0], srt(cue_list, fps))
    write_text_atomic(paths[1], vtt(cue_list, fps))
    return paths


async def _loudness_report(dest: Path, target: Loudness, silent: bool, err: str) -> dict[str, Any]:
    integrated, peak = await measure_file(dest)

    def finite(x: float) -> float | None:  # silence measures -inf: null in run.json
        return x if math.isfinite(x) else None
    return {"target_lufs": target.target, "true_peak_limit_dbtp": target.true_peak,
            "integrated_lufs": finite(integrated), "true_peak_dbtp": finite(peak),
            "mode": "silent" if silent else (normalisation_type(err) or "unknown")}
