"""The cut's sound: a music bed (looped or trimmed to the cut, faded, ducked under the clips'
own audio) and two-pass EBU R128 loudness normalisation. Audio only: the video is never
touched here, so a cut with music and loudness still stream-copies its picture.

Known traps (https://ffmpeg.org/ffmpeg-filters.html: split/asplit, amix, loudnorm): a filter
graph label may be consumed once, so the clips' audio is split (`asplit`) into the mix and the
compressor's key; `amix` must not normalise (levels would pump); loudnorm's defaults are
-24/7/-2 (every value is set here), outside linear mode it upsamples to 192 kHz (`aresample=48000`
and `-ar 48000` follow it), and its linear mode needs all four measured values of a first pass
and falls back to dynamic mode when it cannot keep the true peak: the second pass's JSON says
which one ran.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from flows.media.conform import SAMPLE_RATE
from flows.media.ffmpeg_exec import run_ffmpeg
from providers.errors import MediaError

# The key is the clips' audio: digital silence (a clip that had none) leaves the bed alone; a
# quiet animatic tone (~-30 dBFS) lowers it ~9 dB, speech at -20 dBFS ~17 dB.
DUCK = "sidechaincompress=threshold=0.01:ratio=8:attack=20:release=300:makeup=1"
TP_HEADROOM = 0.5  # AAC encoding adds up to ~0.3 dB of true peak: aim below the promise
SILENT_LUFS = -70.0  # below this there is nothing to normalise (loudnorm's gate)


@dataclass(frozen=True)
class Music:
    path: Path
    volume_db: float = -12.0
    fade_in_s: float = 1.0
    fade_out_s: float = 2.0
    duck: bool = True


@dataclass(frozen=True)
class Loudness:
    """Integrated loudness target (LUFS) and the true peak promised (dBTP)."""

    target: float
    true_peak: float = -1.0
    lra: float = 11.0


def audio_duration(path: Path) -> float:
    """Seconds of the first audio stream; MediaError when the file has none or is not media."""
    import av  # here: planning a storyboard without music must not load PyAV (the no-op path)

    try:
        with av.open(str(path)) as container:
            streams = container.streams.audio
            if not streams:
                raise MediaError(f"{path.name} has no audio stream")
            s = streams[0]
            if s.duration is not None and s.time_base is not None:
                return float(s.duration * s.time_base)
            if container.duration is not None:
                return container.duration / 1_000_000
            return 0.0
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise MediaError(f"{path.name} is not a readable audio file ({exc})") from None


def _num(x: float) -> str:
    return f"{x:.6f}".rstrip("0").rstrip(".")


def mix_graph(music: Music | None, samples: int, clips: str = "0:a", bed_input: int = 1) -> str:
    """Filter graph from the clips' audio (label `clips`) and the music input (looped with
    -stream_loop -1) to [mix], exactly `samples` long at 48 kHz stereo."""
    fmt = f"aformat=sample_fmts=fltp:sample_rates={SAMPLE_RATE}:channel_layouts=stereo"
    if music is None:
        return f"[{clips}]{fmt},apad,atrim=end_sample={samples}[mix]"
    seconds = samples / SAMPLE_RATE
    bed = [f"aresample={SAMPLE_RATE}", fmt, f"volume={_num(music.volume_db)}dB",
           "apad", f"atrim=end_sample={samples}", "asetpts=PTS-STARTPTS"]
    fade_in = min(music.fade_in_s, seconds / 2)
    fade_out = min(music.fade_out_s, seconds / 2)
    if fade_in > 0:
        bed.append(f"afade=t=in:st=0:d={_num(fade_in)}")
    if fade_out > 0:
        bed.append(f"afade=t=out:st={_num(seconds - fade_out)}:d={_num(fade_out)}")
    parts = [f"[{clips}]{fmt},apad,atrim=end_sample={samples}" +
             (",asplit=2[dry][key]" if music.duck else "[dry]"),
             f"[{bed_input}:a]" + ",".join(bed) + ("[bed0]" if music.duck else "[bed]")]
    if music.duck:
        parts.append(f"[bed0][key]{DUCK}[bed]")
    parts.append("[dry][bed]amix=inputs=2:duration=first:normalize=0[mix]")
    return ";".join(parts)


def _json_block(stderr: str) -> dict[str, str]:
    """The last JSON block loudnorm printed (its second pass reports the mode it used)."""
    blocks = re.findall(r"\{[^{}]*\}", stderr)
    for block in reversed(blocks):
        try:
            data = json.loads(block)
        except json.JSONDecodeError:
            continue
        if "input_i" in data:
            return data
    raise MediaError("loudnorm printed no measurement", None, stderr[-2000:])


@dataclass(frozen=True)
class Measured:
    """The first pass over the mix (ebur128's summary)."""

    i: float
    tp: float
    lra: float
    thresh: float
    offset: float

    @property
    def silent(self) -> bool:
        return not math.isfinite(self.i) or self.i <= SILENT_LUFS or not math.isfinite(self.tp)


async def measure_mix(inputs: list[str], graph: str) -> Measured:
    """Pass 1: measure the mix with ebur128 (integrated, its gate threshold, LRA, true peak).
    loudnorm's own first pass (dynamic mode) read 0.3-0.7 LU louder than ebur128 and than
    its own linear pass on 5-10 s cuts here, so the gain it led to missed the target."""
    err = await run_ffmpeg([*inputs, "-filter_complex",
                            f"{graph};[mix]ebur128=peak=true:framelog=quiet[out]",
                            "-map", "[out]", "-f", "null", "-"], loglevel="info")
    return _summary(err, "the mix")


def _summary(err: str, what: str) -> Measured:
    summary = err[err.rfind("Summary:"):]
    num = r"(-?[\d.]+|-inf|nan)"
    i = re.search(rf"Integrated loudness:\s+I:\s+{num} LUFS\s+Threshold:\s+{num} LUFS", summary)
    lra = re.search(rf"LRA:\s+{num} LU", summary)
    peak = re.search(rf"Peak:\s+{num} dBFS", summary)
    if not i or not lra or not peak:
        raise MediaError(f"ebur128 printed no summary for {what}", None, err[-2000:])
    return Measured(float(i[1]), float(peak[1]), float(lra[1]), float(i[2]), 0.0)


def normalise_filter(target: Loudness, m: Measured) -> str:
    """Pass 2: linear gain from the measured values, back to 48 kHz. loudnorm keeps linear mode
    only when the target LRA is at least the measured one (raised here when needed) and the
    measured LRA is not 0 (a steady tone measures 0.0: sent as 0.1, which only opens that
    gate)."""
    lra = min(50.0, max(target.lra, math.ceil(m.lra + 1)))
    return (f"loudnorm=I={_num(target.target)}:TP={_num(target.true_peak - TP_HEADROOM)}"
            f":LRA={_num(lra)}:measured_I={_num(m.i)}:measured_TP={_num(m.tp)}"
            f":measured_LRA={_num(max(m.lra, 0.1))}:measured_thresh={_num(m.thresh)}"
            f":offset={_num(m.offset)}:linear=true:print_format=json,aresample={SAMPLE_RATE}")


def normalisation_type(stderr: str) -> str | None:
    """'linear' or 'dynamic', as the second pass reported it."""
    try:
        return _json_block(stderr).get("normalization_type")
    except MediaError:
        return None


async def measure_file(path: Path) -> tuple[float, float]:
    """Integrated loudness (LUFS) and true peak (dBTP) of a file's audio, by ebur128."""
    err = await run_ffmpeg(["-i", str(path), "-map", "0:a:0", "-af", "ebur128=peak=true:framelog=quiet",
                            "-f", "null", "-"], loglevel="info")
    m = _summary(err, path.name)
    return m.i, m.tp
