"""Clip checks: is a vendor clip black, frozen or silent? Measured in the conform's own decode.

The conform's filter graph carries ffmpeg's detectors in-line (they pass every frame through
unchanged), placed after the scale and before the letterbox pad and the end-of-clip hold, so
that bars and held frames are never counted:
- `blackdetect` (https://ffmpeg.org/ffmpeg-filters.html#blackdetect): a frame is black when
  PICTURE_BLACK of its pixels are darker than PIXEL_BLACK of the luma range. A moderation
  blank or a failed upstream decode is pure black (luma 16); a night shot keeps its
  highlights and some pixels above 5%, so it is not;
- `freezedetect` (#freezedetect): frames that differ by less than FREEZE_NOISE from the
  first of a run, for at least FREEZE_MIN_S;
- `silencedetect` (#silencedetect): audio under SILENCE_NOISE for at least SILENCE_MIN_S.

Each detector logs intervals at ffmpeg's info level; `parse_measures` sums them into
seconds of the clip (as far as the cut keeps it), and `Thresholds.failure` compares the
fractions with the storyboard's `checks:`. A fraction reaching its threshold fails the clip.

This module is light on purpose (no ffmpeg, no I/O but a JSON file): planning imports it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# detector settings: fixed, so a cached intermediate's measures stay valid whatever the
# thresholds (the thresholds are compared in Python)
PIXEL_BLACK = 0.05  # luma below 5% of the range (about 27 of 16..235)
PICTURE_BLACK = 0.98  # share of a frame's pixels that must be that dark
# ffmpeg's default is -60dB, but a held frame encoded by x264 changes by more than that for
# its first ~0.2 s while the encoder refines it (measured: an all-still clip read as 90%
# frozen), so a clip frozen from end to end would pass the default "the whole clip"
FREEZE_NOISE = "-55dB"
FREEZE_MIN_S = 0.25
SILENCE_NOISE = "-60dB"
SILENCE_MIN_S = 0.25

# conservative defaults: only a clip black or silent almost from end to end, or frozen from
# its first frame to its last, fails; a night shot, a fade or a locked-off shot passes
DEFAULT_BLACK = 0.98
DEFAULT_FROZEN = 1.0
DEFAULT_SILENT = 1.0


def video_detectors() -> list[tuple[str, dict[str, Any]]]:
    """(filter name, options) in graph order, for the conform's video chain."""
    return [("blackdetect", {"d": 0, "pic_th": PICTURE_BLACK, "pix_th": PIXEL_BLACK}),
            ("freezedetect", {"n": FREEZE_NOISE, "d": FREEZE_MIN_S})]


def audio_detectors() -> list[tuple[str, dict[str, Any]]]:
    return [("silencedetect", {"n": SILENCE_NOISE, "d": SILENCE_MIN_S})]


@dataclass(frozen=True)
class Measures:
    """What the conform's detectors saw, in seconds of the clip's first `span_s` seconds (the
    part the cut keeps, or the whole source when it is shorter)."""

    span_s: float
    black_s: float = 0.0
    frozen_s: float = 0.0
    silent_s: float = 0.0  # the whole span when the clip has no audio
    has_audio: bool = True

    def share(self, seconds: float) -> float:
        return 0.0 if self.span_s <= 0 else min(1.0, max(0.0, seconds / self.span_s))

    @property
    def black(self) -> float:
        return self.share(self.black_s)

    @property
    def frozen(self) -> float:
        return self.share(self.frozen_s)

    @property
    def silent(self) -> float:
        return self.share(self.silent_s)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Measures:
        return cls(float(data["span_s"]), float(data["black_s"]), float(data["frozen_s"]),
                   float(data["silent_s"]), bool(data["has_audio"]))


def read_measures(path: Path) -> Measures | None:
    """Measures saved beside a cached intermediate; None when absent or unreadable."""
    try:
        return Measures.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


# "[Parsed_blackdetect_3 @ 0x55d0c1e0] black_start:0 black_end:2.958 black_duration:2.958"
_NUM = r"(-?\d+(?:\.\d+)?(?:e-?\d+)?|-?inf|nan)"
_BLACK = re.compile(r"\[\w*blackdetect\w* @ [^\]]*\][^\n]*?black_start:\s*" + _NUM
                    + r"\s+black_end:\s*" + _NUM)
# freezedetect logs each metadata key on its own line; a freeze still on at the end of the
# stream has a start and no end
_FREEZE = re.compile(r"\[\w*freezedetect\w* @ [^\]]*\][^\n]*?lavfi\.freezedetect\.freeze_"
                     r"(start|end):\s*" + _NUM)
_SILENCE = re.compile(r"\[\w*silencedetect\w* @ [^\]]*\][^\n]*?silence_(start|end):\s*" + _NUM)


def _pairs(events: list[tuple[str, float]]) -> list[tuple[float, float | None]]:
    """start/end events in log order -> intervals; an end without a start is dropped, a
    start without an end stays open (None: until the end of the stream)."""
    out: list[tuple[float, float | None]] = []
    start: float | None = None
    for kind, t in events:
        if kind == "start":
            if start is not None:  # two starts: the first ran on to the second
                out.append((start, t))
            start = t
        elif start is not None:
            out.append((start, t))
            start = None
    if start is not None:
        out.append((start, None))
    return out


def _covered(intervals: list[tuple[float, float | None]], span: float, slack: float) -> float:
    """Seconds of [0, span] the intervals cover. An interval ending within `slack` of the
    span's end counts to its end: a detector stamps the end of a run that lasts to the end of
    the stream with its last frame's start, one frame short."""
    total = 0.0
    for start, end in intervals:
        end = span if end is None or end >= span - slack else end
        lo, hi = max(0.0, start), min(span, end)
        if hi > lo:
            total += hi - lo
    return total


def parse_measures(log: str, *, span_s: float, fps: float, has_audio: bool) -> Measures:
    """The detectors' intervals in an ffmpeg log (info level), summed over the span."""
    slack = 1.5 / fps if fps > 0 else 0.0
    black = [(float(a), float(b)) for a, b in _BLACK.findall(log)]
    freeze = _pairs([(k, float(t)) for k, t in _FREEZE.findall(log)])
    silence = _pairs([(k, float(t)) for k, t in _SILENCE.findall(log)])
    return Measures(
        span_s=round(span_s, 6),
        black_s=round(_covered(list(black), span_s, slack), 6),
        frozen_s=round(_covered(freeze, span_s, slack), 6),
        silent_s=round(_covered(silence, span_s, slack) if has_audio else span_s, 6),
        has_audio=has_audio,
    )


@dataclass(frozen=True)
class Thresholds:
    """The share of a clip that fails it, per check; None: the check is off."""

    black: float | None = DEFAULT_BLACK
    frozen: float | None = DEFAULT_FROZEN
    silent: float | None = DEFAULT_SILENT

    @property
    def off(self) -> bool:
        return self.black is None and self.frozen is None and self.silent is None

    def failure(self, m: Measures, *, audio_asked: bool) -> str | None:
        """Why the clip fails its checks (the first check that fails), or None. `silent` is
        checked only where the request asked the vendor for audio."""
        eps = 1e-6
        if self.black is not None and m.black >= self.black - eps:
            return (f"black: {m.black:.0%} of the clip is black (the limit is "
                    f"{self.black:.0%}; checks.black)")
        if self.frozen is not None and m.frozen >= self.frozen - eps:
            return (f"frozen: the picture does not move for {m.frozen:.0%} of the clip (the "
                    f"limit is {self.frozen:.0%}; checks.frozen)")
        if self.silent is not None and audio_asked and m.silent >= self.silent - eps:
            what = "has no audio track" if not m.has_audio else f"is {m.silent:.0%} silent"
            return (f"silent: audio was asked for and the clip {what} (the limit is "
                    f"{self.silent:.0%}; checks.silent)")
        return None


NONE = Thresholds(None, None, None)


def describe(t: Thresholds) -> str:
    """`black 98%, frozen 100%, silent 100% of the clip (...)`, or `off`."""
    if t.off:
        return "off"
    parts = [f"{name} {v:.0%}" if v is not None else f"{name} off"
             for name, v in (("black", t.black), ("frozen", t.frozen), ("silent", t.silent))]
    return ", ".join(parts) + " of the clip (silent: where audio is asked)"


def thresholds(defaults: Any, shot: Any) -> Thresholds:
    """The checks of one shot: the storyboard's `defaults.checks` (a spec ClipChecks), with
    the fields the shot's own `checks:` sets over them."""
    base = {name: getattr(defaults, name) for name in ("black", "frozen", "silent")}
    if shot is not None:
        base.update({name: getattr(shot, name) for name in shot.model_fields_set})
    return Thresholds(**base)
