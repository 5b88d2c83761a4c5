"""P5 checks: what the clip checks' detectors add to one conform (same decode, no extra pass).

    python bench/p5_checks.py [--repeat 7] [--size 1280x720] [--fps 24]

Conforms one 5 s 720p24 H.264 + AAC clip (and a 1080p30 one) to the output format with
conform's own ffmpeg arguments, with and without the detectors (blackdetect, freezedetect,
silencedetect), alternately, one ffmpeg at a time at -threads 1 (as in the pool) and at
-loglevel info (what the measured conform runs at). Prints min and median wall per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import harness as h

SOURCES = {"h264-720p24-aac": ("1280x720", "24"), "h264-1080p30-aac": ("1920x1080", "30")}


def make_source(folder: Path, name: str, size: str, fps: str) -> Path:
    from flows.media.ffmpeg_exec import run_ffmpeg_sync

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.mp4"
    if not path.exists():
        tmp = folder / f".{name}.part.mp4"
        run_ffmpeg_sync(["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration=5",
                         "-f", "lavfi", "-i", "sine=frequency=523:sample_rate=44100:duration=5",
                         "-c:v", "libx264", "-c:a", "aac", "-shortest", str(tmp)], timeout=600)
        os.replace(tmp, path)
    return path


def argv_for(src: Path, dest: Path, fmt: object, detectors: bool) -> list[str]:
    from flows.media import checks, conform
    from flows.media.probe import probe

    saved = checks.video_detectors, checks.audio_detectors
    if not detectors:
        conform.video_detectors = conform.audio_detectors = list  # type: ignore[assignment]
    conform._argv_template.cache_clear()
    try:
        frames = fmt.frames(5.0)  # type: ignore[attr-defined]
        return conform.conform_argv(src, dest, fmt, frames,  # type: ignore[arg-type]
                                    conform.reading_of(probe(src)), threads=1)
    finally:
        conform.video_detectors, conform.audio_detectors = saved  # type: ignore[assignment]
        conform._argv_template.cache_clear()


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one ffmpeg: CPU (user + sys of the child) is what a loaded,
    shared machine disturbs least."""
    from flows.media.ffmpeg_exec import ffmpeg_exe

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-loglevel", "info",
                    "-nostats", *argv], check=True, capture_output=True, timeout=600)
    wall = time.monotonic() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--fps", type=int, default=24)
    args = ap.parse_args()
    from flows.media.conform import OutputFormat

    w, hgt = (int(x) for x in args.size.split("x"))
    fmt = OutputFormat(w, hgt, args.fps)
    media = Path(tempfile.gettempdir()) / "storyreel-bench-media"
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (size, fps) in SOURCES.items():
            src = make_source(media, name, size, fps)
            variants = {v: argv_for(src, Path(tmp) / f"{name}-{v}.mov", fmt, v == "checks")
                        for v in ("plain", "checks")}
            runs: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
            timed(variants["plain"])  # warm the page cache
            for _ in range(args.repeat):
                for v, argv in variants.items():
                    runs[v].append(timed(argv))
            results[name] = runs
            for i, what in ((0, "wall"), (1, "CPU")):
                p, c = (min(r[i] for r in runs[v]) for v in ("plain", "checks"))
                mp, mc = (statistics.median(r[i] for r in runs[v]) for v in ("plain", "checks"))
                print(f"{name} -> {args.size}@{args.fps} {what}: without detectors min {p:.3f} s "
                      f"(median {mp:.3f}), with {c:.3f} s (median {mc:.3f}): "
                      f"{c / p:.3f}x min, {mc / mp:.3f}x median")
    h.RESULTS.mkdir(parents=True, exist_ok=True)
    (h.RESULTS / "p5-checks.json").write_text(json.dumps(
        {"size": args.size, "fps": args.fps, "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
