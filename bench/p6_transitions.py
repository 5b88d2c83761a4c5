"""P6: a crossfade at every junction of 20 and 60 clips: storyreel's assembly vs one xfade chain.

    python bench/p6_transitions.py [--clips 20 60] [--seconds 3] [--size 1280x720]

storyreel: flows.media.assemble.assemble (junctions rendered as their own short segments, bodies
trimmed, everything joined by the concat demuxer), in a child process.
Baseline: one ffmpeg with every clip as an input and a chained xfade + acrossfade graph
(https://ffmpeg.org/ffmpeg-filters.html#xfade), libx264 veryfast, ffmpeg's default threads.
Memory is the peak of the summed RSS of the child's whole process tree (Python + every
ffmpeg), sampled every 50 ms; storyreel's is also split into its Python process (in a real
run: the flow process, whose size does not depend on the assembly) and its ffmpeg children.
Clips are house-format intermediates (conformed from four different test patterns, then
reused round-robin), made once in $TMPDIR/storyreel-bench-media.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import harness as h

PATTERNS = ["testsrc2", "mandelbrot", "smptehdbars", "rgbtestsrc"]
FADE = 0.5


def make_clips(folder: Path, w: int, hgt: int, fps: int, seconds: float) -> list[Path]:
    from flows.media.conform import OutputFormat, conform
    from flows.media.ffmpeg_exec import run_ffmpeg_sync

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for pat in PATTERNS:
        dest = folder / f"{pat}-{w}x{hgt}-{fps}-{seconds:g}.mov"
        if not dest.exists():
            src = folder / f".{pat}.mp4"
            run_ffmpeg_sync(["-f", "lavfi", "-i", f"{pat}=size={w}x{hgt}:rate={fps}",
                             "-f", "lavfi", "-i", "sine=frequency=440", "-t", f"{seconds:g}",
                             "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(src)])
            asyncio.run(conform(src, dest, OutputFormat(w, hgt, fps), seconds))
            src.unlink()
        out.append(dest)
    return out


def chain_argv(clips: list[Path], seconds: float, dest: Path) -> list[str]:
    from flows.media.ffmpeg_exec import BASE_ARGS, ffmpeg_exe

    parts, prev_v, prev_a = [], "0:v", "0:a"
    for i in range(1, len(clips)):
        off = i * (seconds - FADE)
        parts.append(f"[{prev_v}][{i}:v]xfade=transition=fade:duration={FADE}:offset={off:.6f}[v{i}]")
        parts.append(f"[{prev_a}][{i}:a]acrossfade=d={FADE}:c1=tri:c2=tri[a{i}]")
        prev_v, prev_a = f"v{i}", f"a{i}"
    inputs = [x for c in clips for x in ("-i", str(c))]
    return [ffmpeg_exe(), *BASE_ARGS, *inputs, "-filter_complex", ";".join(parts),
            "-map", f"[{prev_v}]", "-map", f"[{prev_a}]", "-c:v", "libx264", "-preset",
            "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "192k",
            "-movflags", "+faststart", str(dest)]


def child(listfile: str, dest: str, size: str, fps: str) -> int:
    """Child process: storyreel's assembly of the listed clips, a crossfade at every join."""
    from flows.media.assemble import Transition, assemble
    from flows.media.conform import OutputFormat

    clips = [Path(p) for p in json.loads(Path(listfile).read_text())]
    w, hgt = (int(x) for x in size.split("x"))
    asyncio.run(assemble(clips, Path(dest), OutputFormat(w, hgt, int(fps)),
                         [Transition("crossfade", FADE)] * (len(clips) - 1)))
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(*sys.argv[2:6])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, nargs="+", default=[20, 60])
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each clip")
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--fps", type=int, default=24)
    ap.add_argument("--skip-chain-above", type=int, default=1000,
                    help="do not run the chain for more clips than this (memory)")
    args = ap.parse_args()
    w, hgt = (int(x) for x in args.size.split("x"))
    base = make_clips(Path(tempfile.gettempdir()) / "storyreel-bench-media" / "p6", w, hgt,
                      args.fps, args.seconds)
    work = h.workdir("p6")
    env = {**os.environ, "PYTHONPATH": str(h.ROOT)}
    res: dict[int, dict[str, Any]] = {}
    for n in args.clips:
        clips = [str(base[i % len(base)]) for i in range(n)]
        listfile = work / f"clips-{n}.json"
        listfile.write_text(json.dumps(clips))
        h.wait_quiet()
        proc, rss = h.run_sampled([sys.executable, __file__, "--child", str(listfile),
                                   str(work / f"hybrid-{n}.mp4"), args.size, str(args.fps)],
                                  env=env)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr_tail)
        res[n] = {"storyreel": {"wall": proc.wall, "cpu_s": proc.tree_cpu_s,
                                "peak_mb": rss["tree_mb"], "python_mb": rss["self_mb"],
                                "ffmpeg_mb": rss["children_mb"]}}
        if n <= args.skip_chain_above:
            h.wait_quiet()
            proc, rss = h.run_sampled(chain_argv([Path(c) for c in clips], args.seconds,
                                                 work / f"chain-{n}.mp4"), env=env)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr_tail)
            res[n]["chain"] = {"wall": proc.wall, "cpu_s": proc.tree_cpu_s,
                               "peak_mb": rss["tree_mb"]}
    out = {"machine": h.machine(), "args": vars(args), "runs": res, "load_at_end": h.busy_note()}
    print(report(out))
    h.save("p6", out)
    return 0


def report(out: dict[str, Any]) -> str:
    rows = []
    for n, r in out["runs"].items():
        s, c = r["storyreel"], r.get("chain")
        rows.append([n, s["wall"], s["cpu_s"], s["peak_mb"], s["python_mb"], s["ffmpeg_mb"],
                     c["wall"] if c else "-", c["cpu_s"] if c else "-", c["peak_mb"] if c else "-",
                     f"{s['wall'] / c['wall']:.2f}" if c else "-",
                     f"{s['peak_mb'] / c['peak_mb']:.2f}" if c else "-"])
    head = ["clips", "storyreel s", "CPU s", "peak MB", "python MB", "ffmpeg MB", "chain s",
            "CPU s", "peak MB",
            "time ratio", "memory ratio"]
    return "\n".join([
        f"P6 crossfade ({FADE} s) at every junction, {out['args']['seconds']:g} s clips at "
        f"{out['args']['size']}@{out['args']['fps']}", h.table(rows, head),
        "target: storyreel faster than the chain, peak memory flat in N (<= 300 MB at 60)",
        f"machine: {out['machine']['cpu']}, {out['machine']['cores']} cores; "
        f"{out['load_at_end']}"])


if __name__ == "__main__":
    sys.exit(main())
