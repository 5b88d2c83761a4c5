"""Profile the flow process of `storyreel run` on N emulated shots with py-spy (not a
dependency: `pip install py-spy`). Prints the functions with the most on-CPU samples
(inclusive, and own) and keeps the collapsed stacks for flame graphs.

    python bench/profile_run.py [--shots 200] [--plain] [--match flows.,providers.]
    python bench/profile_run.py --shots 100 --p1   # P1's board: 5 s fal clips, 720p in, 320x180 out
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import harness as h


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", type=int, default=200)
    ap.add_argument("--latency", type=float, default=3.0)
    ap.add_argument("--jitter", type=float, default=1.0)
    ap.add_argument("--duration", type=int, default=2)
    ap.add_argument("--size", default="160x90")
    ap.add_argument("--media", default="160x90", help="size the emulator serves")
    ap.add_argument("--p1", action="store_true",
                    help="P1's board: kling 5 s clips served at 1280x720, conformed to 320x180")
    ap.add_argument("--plain", action="store_true", help="profile bench/_plain.py (no Prefect)")
    ap.add_argument("--rate", type=int, default=200, help="samples per second")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--all-threads", action="store_true",
                    help="sample every thread, not only the one holding the GIL (py-spy --gil)")
    args = ap.parse_args()
    model = "wan-2.7"
    if args.p1:
        model, args.duration, args.size, args.media = "kling-2.5-turbo-pro", 5, "320x180", "1280x720"
    spy = shutil.which("py-spy")
    if not spy:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    work = h.workdir("profile")
    media = tuple(int(x) for x in args.media.split("x"))
    emu = h.start_emulator(args.latency, args.jitter, media)  # type: ignore[arg-type]
    h.warm_media(emu, args.duration, resolution="720p")
    tag = uuid.uuid4().hex[:8]
    spec = h.storyboard(work / "spec.yaml", args.shots, model=model, duration=args.duration,
                        size=args.size, tag=tag)
    stacks = work / "stacks.txt"
    try:
        with h.prefect_server(work) as (api, _pid):
            env = h.base_env(emu, work, prefect_home=work / "ph",
                             api_url=None if args.plain else api)
            target = ([sys.executable, str(h.BENCH / "_measure.py"), str(work / "r.json"),
                       "plain", str(spec), str(work / "out")] if args.plain else
                      h.cli_argv(work / "r.json", "run", str(spec), "--out", str(work / "out")))
            cmd = [spy, "record", "--format", "raw", "--rate", str(args.rate), "--nonblocking",
                   *([] if args.all_threads else ["--gil"]), "-o", str(stacks), "--", *target]
            proc = subprocess.run(cmd, env=env, cwd=h.ROOT, capture_output=True, text=True,
                                  timeout=1800)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
    finally:
        emu.stop()
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        names = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f
                 else f for f in frames.split(";")]
        for name in set(names):
            inclusive[name] += n
        own[names[-1]] += n
    print(f"{total} samples at {args.rate}/s (idle excluded) in {stacks}")
    print("-- inclusive --")
    for name, n in inclusive.most_common(args.top):
        print(f"{100 * n / total:5.1f}%  {name}")
    print("-- own --")
    for name, n in own.most_common(args.top // 2):
        print(f"{100 * n / total:5.1f}%  {name}")
    print("-- own, by package (the file of the innermost frame) --")
    for name, n in by_package(stacks).most_common(20):
        print(f"{100 * n / total:5.1f}%  {name}")
    return 0


def by_package(stacks: Path) -> collections.Counter[str]:
    """Samples by the package of the innermost Python frame (C code counts for its caller)."""
    out: collections.Counter[str] = collections.Counter()
    for line in stacks.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        leaf = frames.split(";")[-1]
        path = leaf.split(" (", 1)[1].split(":")[0] if " (" in leaf else leaf
        parts = path.replace("\\", "/").split("/")
        if "site-packages" in parts:
            pkg = parts[parts.index("site-packages") + 1]
        elif parts[0] in ("flows", "providers", "bench", "tests"):
            pkg = "/".join(parts[:2])
        else:
            pkg = parts[0].removesuffix(".py")  # stdlib, or a package (py-spy shortens paths)
        out[pkg] += int(count)
    return out


if __name__ == "__main__":
    sys.exit(main())
