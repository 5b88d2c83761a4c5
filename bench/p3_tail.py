"""P3: the tail, from the last clip downloaded to final.mp4 written (20 x 5 s at 720p).

    python bench/p3_tail.py [--shots 20] [--latency 5] [--jitter 30] [--repeat 2]

The emulator serves real 1280x720 clips; `storyreel run` (the real CLI, running Prefect
server) conforms each as it arrives and assembles the cut. Baseline, measured in this process
after the run on the same files: one conform of the last clip (flows.media.conform.conform, the
pipeline's own) + ffmpeg's concat-demuxer copy of the 20 conformed clips (video copied,
audio to AAC, as the cut is made). The tail is split into "last clip conformed" (its
conform, plus any conforms still queued ahead of it) and "cut written" (assembly).

The jitter is wide on purpose: with real vendors clips arrive spread over minutes; a narrow
jitter lands every clip in the same poll round, and the tail then measures 20 conforms
queued on 2 cores, not the pipeline's tail.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import harness as h


def baseline(out: Path, fmt: Any, last_raw: Path, duration: float) -> dict[str, float]:
    from flows.media.assemble import concat_list
    from flows.media.conform import conform
    from flows.media.ffmpeg_exec import run_ffmpeg_sync

    clips = sorted((out / "clips").glob("*.mov"))
    t = time.monotonic()
    asyncio.run(conform(last_raw, out / "bench-conform.mov", fmt, duration))
    one_conform = time.monotonic() - t
    listfile = out / "bench-list.txt"
    concat_list(clips, listfile)
    t = time.monotonic()
    run_ffmpeg_sync(["-f", "concat", "-safe", "0", "-i", str(listfile), "-map", "0:v:0", "-map",
                     "0:a:0", "-c:v", "copy", "-c:a", "aac", "-b:a", "192k", "-ar", "48000",
                     "-movflags", "+faststart", "-f", "mp4", str(out / "bench-concat.mp4")])
    concat = time.monotonic() - t
    return {"conform": one_conform, "concat": concat, "sum": one_conform + concat}


def once(emu: Any, work: Path, api: str, args: argparse.Namespace) -> dict[str, Any]:
    from flows.media.conform import OutputFormat

    emu.reset()
    tag = uuid.uuid4().hex[:8]
    spec = h.storyboard(work / f"spec-{tag}.yaml", args.shots, duration=5, size="1280x720",
                        tag=tag)
    out = work / f"run-{tag}"
    report = work / f"report-{tag}.json"
    env = h.base_env(emu, work, prefect_home=work / "ph", api_url=api)
    proc = h.run_child(h.cli_argv(report, "run", str(spec), "--out", str(out)), env=env,
                       report=report, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"storyreel failed: {proc.stderr_tail}")
    gt = h.gen_times(emu)
    final = h.mono_of_mtime(out / "final.mp4")
    clips = {c: h.mono_of_mtime(c) for c in (out / "clips").glob("*.mov")}
    last_clip = max(clips.values())
    raws = sorted((out / "raw").glob("*.mp4"), key=lambda p: p.stat().st_mtime)
    downloads = sorted(emu.download_times)
    queued = sum(1 for c in clips.values() if c > gt.last_download) - 1
    h.wait_quiet()
    base = baseline(out, OutputFormat(1280, 720, 24), raws[-1], 5)
    return {"tail": final - gt.last_download, "last_conformed": last_clip - gt.last_download,
            "assembly": final - last_clip, "queued_conforms": max(0, queued),
            "arrival_gap_last": downloads[-1] - downloads[-2] if len(downloads) > 1 else None,
            "baseline": base, "wall": proc.wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", type=int, default=20)
    ap.add_argument("--latency", type=float, default=5.0)
    ap.add_argument("--jitter", type=float, default=30.0)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    work = h.workdir("p3")
    emu = h.start_emulator(args.latency, args.jitter, (1280, 720))
    h.warm_media(emu, 5)
    runs = []
    try:
        with h.prefect_server(work) as (api, _pid):
            for _ in range(args.repeat):
                h.wait_quiet()
                runs.append(once(emu, work, api, args))
    finally:
        emu.stop()
    out = {"machine": h.machine(), "args": vars(args), "runs": runs, "load_at_end": h.busy_note()}
    print(report(out))
    h.save("p3", out)
    return 0


def report(out: dict[str, Any]) -> str:
    rows = []
    for i, r in enumerate(out["runs"]):
        b = r["baseline"]
        rows.append([i + 1, r["arrival_gap_last"], r["queued_conforms"], r["last_conformed"],
                     r["assembly"], r["tail"], b["conform"], b["concat"], b["sum"],
                     r["tail"] / b["sum"], r["tail"] - b["conform"]])
    head = ["run", "gap before last clip", "conforms queued", "last conformed", "cut written",
            "tail", "1 conform", "concat copy", "baseline", "tail/baseline", "tail - 1 conform"]
    med = statistics.median(r["tail"] - r["baseline"]["conform"] for r in out["runs"])
    return "\n".join([
        f"P3 tail: {out['args']['shots']} x 5 s clips at 1280x720, latency "
        f"{out['args']['latency']} s + U(0,{out['args']['jitter']}) s (seconds after the last "
        "clip was downloaded)", h.table(rows, head),
        f"target: tail <= 1 conform + 0.5 s; median tail - 1 conform = {med:.2f} s",
        f"machine: {out['machine']['cpu']}, {out['machine']['cores']} cores; "
        f"{out['load_at_end']}"])


if __name__ == "__main__":
    sys.exit(main())
