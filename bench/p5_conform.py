"""P5: conform throughput over 20 heterogeneous clips (sizes, fps, codecs, with/without audio).

    python bench/p5_conform.py [--repeat 2] [--size 1280x720] [--fps 24]

storyreel: flows.media.conform.conform on all 20 clips at once (asyncio.gather; the pipeline's
ffmpeg limit, one process per core), probes and checks included, no conform cache.
Baselines, on the same files in the same process run:
  ffmpeg     ffmpeg alone: a plain normalize command (`plain_argv`: SAR-square scale, fps,
             fit + pad, yuv420p, PCM audio or a silent bed, exact frame count), 2 workers at
             -threads 1, libx264 veryfast
  same-argv  conform's own ffmpeg arguments run the same way, with no Python around them
             (so storyreel - same-argv is the Python side: probe, check, scheduling)
The sources are made once with ffmpeg's test patterns and kept in $TMPDIR/storyreel-bench-media.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import harness as h

# name: (container, video codec args, size, fps, seconds, audio codec args or None, extra vf)
SOURCES: dict[str, tuple[str, list[str], str, str, float, list[str] | None, str]] = {
    "h264-720p24-aac": ("mp4", ["-c:v", "libx264"], "1280x720", "24", 5, ["-c:a", "aac"], ""),
    "h264-1080p30-silent": ("mp4", ["-c:v", "libx264"], "1920x1080", "30", 5, None, ""),
    "hevc-portrait25": ("mp4", ["-c:v", "libx265", "-tag:v", "hvc1"], "720x1280", "25", 5,
                        None, ""),
    "vp9-576p16-opus-mono": ("webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime",
                                      "-cpu-used", "8"], "1024x576", "16", 4,
                             ["-c:a", "libopus", "-ac", "1"], ""),
    "h264-480p-anamorphic": ("mp4", ["-c:v", "libx264"], "720x480", "30000/1001", 5,
                             ["-c:a", "aac", "-ac", "1"], "setsar=32/27"),
    "h264-444-768p20": ("mp4", ["-c:v", "libx264", "-pix_fmt", "yuv444p"], "1360x768", "20", 6,
                        ["-c:a", "aac"], ""),
    "prores-720p60-pcm": ("mov", ["-c:v", "prores_ks", "-profile:v", "0"], "1280x720", "60", 3,
                          ["-c:a", "pcm_s16le"], ""),
    "h264-1080p24-aac": ("mp4", ["-c:v", "libx264"], "1920x1080", "24", 5, ["-c:a", "aac"], ""),
    "mpeg4-360p25-mp3": ("avi", ["-c:v", "mpeg4"], "640x360", "25", 5,
                         ["-c:a", "libmp3lame"], ""),
    "h264-square30": ("mp4", ["-c:v", "libx264"], "1080x1080", "30", 5, ["-c:a", "aac"], ""),
    "hevc-1080p24-aac": ("mp4", ["-c:v", "libx265", "-tag:v", "hvc1"], "1920x1080", "24", 5,
                         ["-c:a", "aac"], ""),
    "vp9-360p30-silent": ("webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime",
                                   "-cpu-used", "8"], "640x360", "30", 5, None, ""),
    "h264-480p60-aac": ("mp4", ["-c:v", "libx264"], "854x480", "60", 5, ["-c:a", "aac"], ""),
    "h264-720p23976": ("mp4", ["-c:v", "libx264"], "1280x720", "24000/1001", 5,
                       ["-c:a", "aac", "-ar", "48000"], ""),
    "h264-portrait30": ("mp4", ["-c:v", "libx264"], "480x854", "30", 5, ["-c:a", "aac"], ""),
    "hevc-720p30-aac": ("mp4", ["-c:v", "libx265", "-tag:v", "hvc1"], "1280x720", "30", 5,
                        ["-c:a", "aac"], ""),
    "prores-1080p24-silent": ("mov", ["-c:v", "prores_ks", "-profile:v", "0"], "1920x1080",
                              "24", 2, None, ""),
    "h264-1440p24-silent": ("mp4", ["-c:v", "libx264"], "2560x1440", "24", 3, None, ""),
    "vp9-720p24-opus": ("webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"],
                        "1280x720", "24", 5, ["-c:a", "libopus"], ""),
    "h264-720p50-aac32k": ("mp4", ["-c:v", "libx264"], "1280x720", "50", 5,
                           ["-c:a", "aac", "-ar", "32000"], ""),
}


def make_sources(folder: Path) -> dict[str, tuple[Path, float]]:
    from flows.media.ffmpeg_exec import run_ffmpeg_sync

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (ext, vargs, size, fps, secs, aargs, vf) in SOURCES.items():
        path = folder / f"{name}.{ext}"
        if not path.exists():
            tmp = folder / f".{name}.part.{ext}"
            inputs = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={secs}"]
            if aargs:
                inputs += ["-f", "lavfi", "-i", f"sine=frequency=523:sample_rate=44100:"
                                                f"duration={secs}"]
            enc = ["-preset", "ultrafast"] if "libx26" in vargs[1] else []
            run_ffmpeg_sync([*inputs, *(["-vf", vf] if vf else []), *vargs, *enc,
                             *(aargs or ["-an"]), "-shortest", str(tmp)], timeout=600)
            os.replace(tmp, path)
        out[name] = (path, float(secs))
    return out


def plain_argv(src: Path, dest: Path, w: int, hgt: int, fps: int, frames: int,
               has_audio: bool) -> list[str]:
    """The research recipe, written by hand: what a careful script would run."""
    vf = (f"scale=w='trunc(iw*sar/2)*2':h='trunc(ih/2)*2',setsar=1,fps={fps},"
          f"scale={w}:{hgt}:force_original_aspect_ratio=decrease:force_divisible_by=2,"
          f"pad={w}:{hgt}:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1,format=yuv420p")
    samples = round(frames * 48000 / fps)
    audio = (["-af", f"aresample=48000,apad,atrim=end_sample={samples}"] if has_audio else
             ["-f", "lavfi", "-i", "anullsrc=r=48000:cl=stereo", "-map", "0:v:0", "-map", "1:a",
              "-af", f"atrim=end_sample={samples}"])
    return ["-i", str(src), *audio, "-vf", vf, "-frames:v", str(frames), "-c:v", "libx264",
            "-preset", "veryfast", "-crf", "20", "-threads", "1", "-pix_fmt", "yuv420p",
            "-c:a", "pcm_s16le", "-ac", "2", "-f", "mov", str(dest)]


def run_pool(argvs: list[list[str]], workers: int = 2) -> float:
    from flows.media.ffmpeg_exec import BASE_ARGS, ffmpeg_exe

    def one(argv: list[str]) -> None:
        subprocess.run([ffmpeg_exe(), *BASE_ARGS, *argv], check=True, capture_output=True,
                       timeout=600)

    t = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, argvs))
    return time.monotonic() - t


def run_storyreel(sources: dict[str, tuple[Path, float]], out: Path, fmt: Any) -> float:
    from flows.media.conform import conform

    async def all_of() -> None:
        await asyncio.gather(*(conform(p, out / f"{n}.mov", fmt, d)
                               for n, (p, d) in sources.items()))

    t = time.monotonic()
    asyncio.run(all_of())
    return time.monotonic() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--fps", type=int, default=24)
    args = ap.parse_args()
    from flows.media.conform import OutputFormat, conform_argv, reading_of
    from flows.media.probe import probe

    w, hgt = (int(x) for x in args.size.split("x"))
    fmt = OutputFormat(w, hgt, args.fps)
    media = Path(tempfile.gettempdir()) / "storyreel-bench-media" / "p5"
    sources = make_sources(media)
    infos = {n: probe(p) for n, (p, _) in sources.items()}
    audio = {n: i.has_audio for n, i in infos.items()}
    work = h.workdir("p5")
    res: dict[str, list[float]] = {"ffmpeg": [], "same-argv": [], "storyreel": []}
    for i in range(args.repeat):
        d = work / str(i)
        for k in res:
            (d / k).mkdir(parents=True)
        h.wait_quiet()
        res["ffmpeg"].append(run_pool([plain_argv(p, d / "ffmpeg" / f"{n}.mov", w, hgt,
                                                  args.fps, fmt.frames(s), audio[n])
                                       for n, (p, s) in sources.items()]))
        h.wait_quiet()
        res["same-argv"].append(run_pool([conform_argv(p, d / "same-argv" / f"{n}.mov", fmt,
                                                       fmt.frames(s), reading_of(infos[n]))
                                          for n, (p, s) in sources.items()]))
        h.wait_quiet()
        res["storyreel"].append(run_storyreel(sources, d / "storyreel", fmt))
    out = {"machine": h.machine(), "args": vars(args), "seconds": res,
           "media_seconds": sum(s for _, s in sources.values()), "load_at_end": h.busy_note()}
    print(report(out))
    h.save("p5", out)
    return 0


def report(out: dict[str, Any]) -> str:
    res = out["seconds"]
    base = statistics.median(res["ffmpeg"])
    rows = [[k, len(v), min(v), statistics.median(v), statistics.median(v) / base]
            for k, v in res.items()]
    return "\n".join([
        f"P5 conform of 20 heterogeneous clips ({out['media_seconds']:g} s of media) to "
        f"{out['args']['size']}@{out['args']['fps']} (wall seconds)",
        h.table(rows, ["variant", "runs", "min", "median", "vs ffmpeg"]),
        "target: storyreel <= 1.1x ffmpeg alone",
        f"machine: {out['machine']['cpu']}, {out['machine']['cores']} cores; "
        f"{out['load_at_end']}"])


if __name__ == "__main__":
    sys.exit(main())
