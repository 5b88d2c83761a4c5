"""The deliverable cut with real ffmpeg: music bed and ducking, two-pass loudness, captions
(sidecars and burned in), title card, logo. Expected times are worked out here by hand from the
storyboard; levels and loudness are measured here (numpy over decoded audio, ffmpeg's ebur128),
not through the product's own measuring code."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from flows.media.assemble import Transition
from flows.media.audio import Music
from flows.media.conform import OutputFormat, conform
from flows.media.ffmpeg_exec import ffmpeg_exe
from flows.media.finishing import Cut, make_cut
from flows.storyboard.plan import make_plan
from providers.errors import SpecError

FPS = 24
W, H = 320, 180
MUSIC_HZ = 2500.0  # far above the animatic's tones (196-588 Hz): measurable on its own


def ff(*args: str) -> str:
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def make_music(path: Path, seconds: float = 3.0, amplitude: float = 0.5) -> Path:
    ff("-f", "lavfi", "-i", f"aevalsrc={amplitude}*sin(2*PI*{MUSIC_HZ}*t):s=44100:d={seconds}",
       "-ac", "2", str(path))
    return path


def make_logo(path: Path) -> Path:
    Image.new("RGBA", (80, 40), (255, 0, 255, 255)).save(path)
    return path


def ebur128(path: Path) -> tuple[float, float]:
    err = ff("-nostats", "-i", str(path), "-map", "0:a", "-af", "ebur128=peak=true", "-f", "null", "-")
    summary = err[err.rfind("Summary:"):]
    i = re.search(r"I:\s+(-?[\d.]+) LUFS", summary)
    tp = re.search(r"Peak:\s+(-?[\d.]+) dBFS", summary)
    assert i and tp, summary
    return float(i[1]), float(tp[1])


def audio(path: Path) -> tuple[np.ndarray, int]:
    """The first audio track, mixed to mono float."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        chunks = []
        for f in c.decode(stream):
            a = f.to_ndarray().astype(np.float64)
            if f.format.name.startswith("s16"):
                a /= 32768.0
            if not f.format.is_planar:  # interleaved: one row of L R L R ...
                a = a.reshape(-1, len(f.layout.channels)).T
            chunks.append(a)
        rate = stream.rate
    data = np.concatenate(chunks, axis=1)
    return data.mean(axis=0), rate


def band_db(samples: np.ndarray, rate: int, t0: float, t1: float, hz: float,
            width: float = 60.0) -> float:
    """RMS level (dBFS) of what lies within hz +- width over [t0, t1)."""
    x = samples[int(t0 * rate):int(t1 * rate)]
    w = np.hanning(len(x))
    spec = np.fft.rfft(x * w)
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    band = (np.abs(spec[(freqs > hz - width) & (freqs < hz + width)]) ** 2).sum()
    rms2 = 2 * band / (len(x) * (w ** 2).sum())  # Parseval: a sine of amplitude A gives A^2/2
    return float(10 * np.log10(rms2 + 1e-20))


def frame(path: Path, t: float) -> np.ndarray:
    proc = subprocess.run([ffmpeg_exe(), "-v", "error", "-ss", f"{t:.3f}", "-i", str(path),
                           "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                          capture_output=True, timeout=60)
    assert proc.returncode == 0
    return np.frombuffer(proc.stdout, np.uint8).reshape(H, W, 3)


def white_pixels(img: np.ndarray, y0: int, y1: int, level: int = 235) -> int:
    band = img[y0:y1]
    return int(((band >= level).all(axis=2)).sum())


def cues(text: str, sep: str) -> list[tuple[float, float, str]]:
    out = []
    pat = rf"(\d\d):(\d\d):(\d\d){sep}(\d\d\d) --> (\d\d):(\d\d):(\d\d){sep}(\d\d\d)\n(.+)"
    for m in re.finditer(pat, text):
        g = [int(x) for x in m.groups()[:8]]
        out.append((g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000,
                    g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000, m[9]))
    return out


BOARD = """\
version: 1
title: deliverable test
output: {{size: {w}x{h}, fps: {fps}, burn_captions: true,
         logo: {{image: logo.png, position: top-right, opacity: 1, scale: 0.2}}}}
budget: {{max_usd: 0}}
defaults: {{provider: local, duration: 2, caption_style: {{size: 0.09, box_opacity: 0.6}}}}
audio: {{music: music.wav, volume_db: -6, fade_in_s: 0.5, fade_out_s: 0.5, duck: true,
        loudness: -14}}
title_card: {{text: Opening, duration: 1.5, background: "#2060e0"}}
shots:
  - {{id: s1, prompt: boats, seed: 1, caption: "First caption"}}
  - {{id: s2, prompt: gulls, seed: 2, caption: "Second caption",
      transition: {{kind: crossfade, duration: 0.5}}}}
  - {{id: s3, prompt: market, seed: 3, caption: "港の朝 café 🎬"}}
  - {{id: s4, prompt: dusk, seed: 4, duration: 1.5}}
"""

# by hand: title 0-1.5 (cut); s1 1.5-3.5 (cut); s2 from 3.5, 2 s, dissolving into s3 over its
# last 0.5 s, so s3 starts at 5.0 and the cut is 1.5 + 2 + 2 + 2 + 1.5 - 0.5 = 8.5 s.
# Captions change halfway through the dissolve: s2 until 5.25, s3 from 5.25 to 7.0.
EXPECTED = [(1.5, 3.5, "First caption"), (3.5, 5.25, "Second caption"), (5.25, 7.0, "港の朝 café 🎬")]
LENGTH = 8.5


@pytest.mark.e2e
async def test_deliverable_storyboard(tmp_path: Path, prefect_api: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.orchestration.flow import render_storyboard

    monkeypatch.setenv("STORYREEL_CACHE_DIR", str(tmp_path / "cache"))
    make_music(tmp_path / "music.wav")
    make_logo(tmp_path / "logo.png")
    spec = tmp_path / "board.yaml"
    spec.write_text(BOARD.format(w=W, h=H, fps=FPS), encoding="utf-8")
    out = tmp_path / "run"
    result = await render_storyboard(storyboard=str(spec), out=str(out))
    assert result["ok"], result
    final = out / "final.mp4"

    with av.open(str(final)) as c:
        v = c.streams.video[0]
        assert (v.width, v.height) == (W, H)
        assert abs(float(v.frames / v.average_rate) - LENGTH) <= 1 / FPS + 1e-6

    # loudness, measured by ffmpeg's ebur128 here
    integrated, peak = ebur128(final)
    assert abs(integrated - (-14)) <= 1.0, integrated
    assert peak < -1.0, peak
    run = json.loads((out / "run.json").read_text())
    assert abs(run["cut"]["loudness"]["integrated_lufs"] - integrated) <= 0.2
    assert "LUFS integrated" in result["summary"]

    # sidecars: one cue per captioned shot, within one frame
    for name, sep in (("final.srt", ","), ("final.vtt", r"\.")):
        got = cues((out / name).read_text(encoding="utf-8"), sep)
        assert [c[2] for c in got] == [e[2] for e in EXPECTED], got
        for (s, e, _), (gs, ge, _) in zip(EXPECTED, got, strict=True):
            assert abs(gs - s) <= 1 / FPS and abs(ge - e) <= 1 / FPS, (name, got)
    assert (out / "final.vtt").read_text(encoding="utf-8").startswith("WEBVTT")

    # burned captions: white text pixels in the bottom band only while a cue is on
    band = (int(H * 0.6), H)
    for t in (2.5, 4.4, 6.3):
        assert white_pixels(frame(final, t), *band) > 40, t
    for t in (0.75, 8.0):
        assert white_pixels(frame(final, t), *band) < 3, t

    # the title card opens the cut: its blue background, its white title in the middle
    first = frame(final, 0.5).astype(int)
    assert np.abs(first[H - 10:, :40] - [0x20, 0x60, 0xE0]).max() < 40
    assert white_pixels(first.astype(np.uint8), H // 3, 2 * H // 3, level=200) > 40

    # the logo (opaque magenta, 20% of the width) sits in the top-right corner throughout
    for t in (0.5, 4.0, 8.2):
        img = frame(final, t).astype(int)
        corner = img[10:20, W - 50:W - 20]
        assert np.abs(corner - [255, 0, 255]).max() < 60, (t, corner.mean(axis=(0, 1)))

    # the bed: full level over the silent title card, ducked under the shots' own sound
    samples, rate = audio(final)
    title = band_db(samples, rate, 0.6, 1.4, MUSIC_HZ)
    under_shot = band_db(samples, rate, 2.0, 3.2, MUSIC_HZ)
    assert under_shot < title - 4, (title, under_shot)


async def test_bed_level_ducking_and_stream_copy(tmp_path: Path) -> None:
    """Without loudness (so levels stay absolute): over a clip with no audio the music plays at
    its level + volume_db; over a clip with sound it is ducked; the picture is stream-copied."""
    fmt = OutputFormat(W, H, FPS)
    clips = []
    for name, tone in (("silent", None), ("voiced", -12.0), ("silent2", None)):
        raw = tmp_path / f"{name}.mp4"
        args = ["-f", "lavfi", "-i", f"testsrc2=s={W}x{H}:r={FPS}:d=2"]
        if tone is not None:
            args += ["-f", "lavfi", "-i", f"aevalsrc={10 ** (tone / 20)}*sin(2*PI*440*t):s=48000:d=2"]
        ff(*args, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-shortest", str(raw))
        dest = tmp_path / f"{name}.mov"
        await conform(raw, dest, fmt, 2)
        clips.append(dest)
    music = make_music(tmp_path / "music.wav", seconds=1.3, amplitude=0.5)  # loops 5 times
    cut = Cut(tuple(clips), (Transition(), Transition()), fmt,
              music=Music(music, volume_db=-6, fade_in_s=0.2, fade_out_s=0.2, duck=True))
    await make_cut(cut, tmp_path / "final.mp4")

    samples, rate = audio(tmp_path / "final.mp4")
    assert abs(len(samples) / rate - 6.0) < 0.05
    # reference: the same music file through -6 dB, measured the same way
    ref, ref_rate = audio(music)
    expected = band_db(ref * 10 ** (-6 / 20), ref_rate, 0.3, 1.1, MUSIC_HZ)
    free = band_db(samples, rate, 0.5, 1.3, MUSIC_HZ)  # over the clip without audio
    ducked = band_db(samples, rate, 2.6, 3.4, MUSIC_HZ)  # under the tone
    after = band_db(samples, rate, 4.7, 5.5, MUSIC_HZ)  # silent again: the bed comes back
    assert abs(free - expected) < 1.0, (free, expected)
    assert ducked < expected - 6, (ducked, expected)
    assert abs(after - expected) < 1.0, (after, expected)

    # nothing drawn: the video packets are the clips' own, byte for byte (apart from the
    # parameter sets the muxer repeats in-band at each clip's first keyframe)
    joined = [b for c in clips for b in slices(c)]
    assert slices(tmp_path / "final.mp4") == joined


def slices(path: Path) -> list[bytes]:
    """Each video packet's NAL units (4-byte length prefixed) without SPS/PPS (types 7, 8)."""
    out = []
    with av.open(str(path)) as c:
        for pk in c.demux(c.streams.video[0]):
            data, i, keep = bytes(pk), 0, b""
            while i + 4 <= len(data):
                n = int.from_bytes(data[i:i + 4], "big")
                nal = data[i + 4:i + 4 + n]
                if nal and nal[0] & 0x1F not in (7, 8):
                    keep += nal
                i += 4 + n
            if data:
                out.append(keep)
    return out


async def test_silent_cut_with_a_loudness_target(tmp_path: Path) -> None:
    """Nothing to normalise: the cut is made, and its report says so instead of -inf; no
    captions: no sidecar files."""
    from flows.media.audio import Loudness
    from flows.run.deliverable import summary_lines

    fmt = OutputFormat(W, H, FPS)
    raw = tmp_path / "raw.mp4"
    ff("-f", "lavfi", "-i", f"testsrc2=s={W}x{H}:r={FPS}:d=1", "-c:v", "libx264",
       "-pix_fmt", "yuv420p", str(raw))
    await conform(raw, tmp_path / "c.mov", fmt, 1)
    (tmp_path / "final.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nstale\n")
    report = await make_cut(Cut((tmp_path / "c.mov",), (), fmt, loudness=Loudness(-14)),
                            tmp_path / "final.mp4")
    assert report.loudness is not None and report.loudness["mode"] == "silent"
    assert report.loudness["true_peak_dbtp"] is None
    json.dumps(report.to_json(), allow_nan=False)
    assert summary_lines(report.to_json()) == ["loudness: the cut is silent, nothing to normalise"]
    assert not (tmp_path / "final.srt").exists()  # an earlier run's captions are not left behind


async def test_cards_are_drawn_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A card is a house intermediate, cached by content: the same card is not drawn again,
    a changed one is."""
    import flows.media.cards as cards
    from flows.media.fonts import BUNDLED
    from flows.media.probe import probe

    fmt = OutputFormat(W, H, FPS)
    card = cards.Card("Hello", 1.0, (BUNDLED[0],), "sub")
    await cards.render_card(card, fmt, tmp_path / "a.mov", tmp_path / "cache")
    info = probe(tmp_path / "a.mov")
    assert info.nb_frames == FPS and info.audio_codec == "pcm_s16le"

    async def no_ffmpeg(*args: object, **kw: object) -> str:
        raise AssertionError("the card was drawn again")
    monkeypatch.setattr(cards, "run_ffmpeg", no_ffmpeg)
    await cards.render_card(card, fmt, tmp_path / "b.mov", tmp_path / "cache")
    assert (tmp_path / "b.mov").read_bytes() == (tmp_path / "a.mov").read_bytes()
    with pytest.raises(AssertionError, match="drawn again"):
        await cards.render_card(cards.Card("Hello!", 1.0, (BUNDLED[0],)), fmt,
                                tmp_path / "c.mov", tmp_path / "cache")


HEAD = """\
version: 1
title: t
defaults: {provider: local, duration: 2}
"""


@pytest.mark.parametrize("extra, shots, expected", [
    ("audio: {loudness: loud}\n", "", "audio.loudness (line 4): 'loud' is not a loudness"),
    ("audio: {loudness: -2}\n", "", "audio.loudness (line 4): -2 LUFS is out of range"),
    ("audio: {volume_db: 40}\n", "", "audio.volume_db (line 4): Input should be less than or equal to 12"),
    ("audio: {music: nope.mp3}\n", "", "audio.music: file not found"),
    ("audio: {music: logo.png}\n", "", "audio.music: logo.png"),
    ("audio: {fade_in: 2}\n", "",
     "audio.fade_in (line 4): unknown field 'fade_in' (allowed: music, volume_db"),
    ("output: {logo: {image: missing.png}}\n", "", "output.logo.image: file not found"),
    ("output: {logo: {image: music.wav}}\n", "", "output.logo.image: music.wav is not a readable image"),
    ("output: {logo: {image: logo.png, opacity: 2}}\n", "",
     "output.logo.opacity (line 4): Input should be less than or equal to 1"),
    ("output: {logo: {image: logo.png, position: middle}}\n", "", "output.logo.position (line 4)"),
    ("title_card: {text: '  '}\n", "", "title_card.text (line 4): text is empty"),
    ("end_card: {text: bye, duration: 0}\n", "",
     "end_card.duration (line 4): Input should be greater than 0"),
    ("title_card: {text: hi, background: mauve}\n", "",
     "title_card.background (line 4): 'mauve' is not a colour"),
    ("defaults: {provider: local, duration: 2, caption_style: {position: left}}\n", "",
     "defaults.caption_style.position (line 3)"),
    ("defaults: {provider: local, duration: 2, caption_style: {font: nofont.ttf}}\n", "",
     "defaults.caption_style.font: file not found"),
    ("defaults: {provider: local, duration: 2, caption_style: {font: logo.png}}\n", "",
     "defaults.caption_style.font: logo.png is not a readable TrueType/OpenType font"),
    ("output: {burn_captions: true}\n", "    caption: 'Hieroglyph \U00013000 here'\n",
     "shots[0].caption: no font has '\U00013000' (U+13000)"),
    ("title_card: {text: 'Hieroglyph \U00013000'}\n", "",
     "title_card.text: no font has '\U00013000' (U+13000)"),
])
def test_bad_deliverable_values_name_their_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 extra: str, shots: str, expected: str) -> None:
    import flows.media.fonts as fonts

    monkeypatch.setattr(fonts, "_system_font", lambda chars: None)  # only the bundled fonts
    make_logo(tmp_path / "logo.png")
    make_music(tmp_path / "music.wav", seconds=0.5)
    spec = tmp_path / "board.yaml"
    head = HEAD if not extra.startswith("defaults:") else HEAD.replace(
        "defaults: {provider: local, duration: 2}\n", "")  # duplicate keys are refused
    spec.write_text(head + extra + "shots:\n  - id: a\n    prompt: x\n" + shots, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        make_plan(spec)
    assert expected in str(info.value), str(info.value)


def test_japanese_and_emoji_get_bundled_fonts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every character is drawn from a font that has it: Latin from DejaVu Sans, Japanese from
    VL PGothic, an emoji neither has from Symbola, within one caption."""
    import flows.media.fonts as fonts

    monkeypatch.setattr(fonts, "_system_font", lambda chars: None)
    spec = tmp_path / "board.yaml"
    spec.write_text(HEAD + "output: {burn_captions: true}\ntitle_card: {text: '🎬 Action'}\nshots:\n"
                    "  - {id: a, prompt: x, caption: '東京の夜、カタカナ'}\n"
                    "  - {id: b, prompt: x, caption: 'Café 😀'}\n"
                    "  - {id: c, prompt: x, caption: '港の朝 café 🎬'}\n", encoding="utf-8")
    plan = make_plan(spec)
    fin = plan.finishing
    assert fin is not None and fin.title is not None

    def names(cap: object) -> list[str]:
        return [f.name for f in cap.fonts]  # type: ignore[attr-defined]
    assert names(fin.captions[0]) == ["VL-PGothic-Regular.ttf"]
    assert names(fin.captions[1]) == ["DejaVuSans.ttf"]
    assert names(fin.captions[2]) == ["DejaVuSans.ttf", "VL-PGothic-Regular.ttf", "Symbola.ttf"]
    assert names(fin.title.card) == ["DejaVuSans.ttf", "Symbola.ttf"]
    pieces = fonts.runs("港の朝 café 🎬", fin.captions[2].fonts)  # type: ignore[union-attr]
    assert [(p, f.name) for p, f in pieces] == [
        ("港の朝 ", "VL-PGothic-Regular.ttf"), ("café ", "DejaVuSans.ttf"), ("🎬", "Symbola.ttf")]
