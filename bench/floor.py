"""The baselines that generation is compared with, speaking fal's queue protocol directly.

* floor (default): bare asyncio + httpx. Every shot: submit, poll the status URL until
  COMPLETED, GET the result, stream the video to a file. Nothing else: no journal, no ledger,
  no probe, no conform, no Prefect. Polling uses the adapters' default schedule (first poll
  right after submit, then 1 s growing x1.5 to 10 s, +-10 % jitter) and the same HTTP limits
  as providers/http.py (16 API calls and 8 downloads in flight), so the comparison measures
  orchestration, not a different polling or connection policy.
* --seeds: the recipe of the seed documents: one shot at a time, synchronous, 5 s sleep
  between polls.

    python bench/floor.py --base http://127.0.0.1:PORT/fal --key test-fal-key --shots 100 \
        --out /tmp/x --report /tmp/x/floor.json [--seeds]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import time
from pathlib import Path

import httpx

# what storyreel's fal adapter sends for these two models (providers/fal.py fal_body)
PRESETS = {
    "kling": ("fal-ai/kling-video/v2.5-turbo/pro/text-to-video",
              lambda d: {"duration": str(d), "aspect_ratio": "16:9"}),
    "wan": ("fal-ai/wan/v2.7/text-to-video",
            lambda d: {"duration": d, "aspect_ratio": "16:9", "resolution": "720p"}),
}


def _body(i: int, tag: str, args: argparse.Namespace | None = None) -> dict:
    extra = PRESETS[args.preset][1](args.duration) if args else PRESETS["kling"][1](5)
    return {"prompt": f"floor shot {i:04d} {tag}", **extra}


async def one(client: httpx.AsyncClient, args: argparse.Namespace, i: int, out: Path,
              gate: asyncio.Semaphore, dl_gate: asyncio.Semaphore) -> float:
    first, factor, most = args.first, args.factor, args.max
    model = PRESETS[args.preset][0]
    async with gate:
        resp = await client.post(f"{args.base}/{model}", json=_body(i, args.tag, args))
    resp.raise_for_status()
    job = resp.json()
    interval = first
    while True:
        async with gate:
            status = await client.get(job["status_url"])
        if status.json()["status"] == "COMPLETED":
            break
        await asyncio.sleep(interval * random.uniform(0.9, 1.1))
        interval = min(most, interval * factor)
    async with gate:
        result = (await client.get(job["response_url"])).json()
    async with dl_gate, client.stream("GET", result["video"]["url"]) as video:
        video.raise_for_status()
        with open(out / f"{i:04d}.mp4", "wb") as fh:
            async for chunk in video.aiter_bytes(1 << 16):
                fh.write(chunk)
    return time.monotonic()


async def floor(args: argparse.Namespace, out: Path) -> list[float]:
    api, dl = args.gate, max(2, args.gate // 2)
    conns = args.max_connections or (api + dl if api else 100)  # 100: httpx default
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    headers = {"Authorization": f"Key {args.key}"}
    gate, dl_gate = asyncio.Semaphore(api or 1_000_000), asyncio.Semaphore(dl if api else 1_000_000)
    async with httpx.AsyncClient(limits=limits, headers=headers, timeout=60) as client:
        return list(await asyncio.gather(*(one(client, args, i, out, gate, dl_gate)
                                             for i in range(args.shots))))


def seeds(args: argparse.Namespace, out: Path) -> list[float]:
    done = []
    with httpx.Client(headers={"Authorization": f"Key {args.key}"}, timeout=60) as client:
        for i in range(args.shots):
            model = PRESETS[args.preset][0]
            job = client.post(f"{args.base}/{model}", json=_body(i, args.tag, args)).json()
            while client.get(job["status_url"]).json()["status"] != "COMPLETED":
                time.sleep(5)
            url = client.get(job["response_url"]).json()["video"]["url"]
            (out / f"{i:04d}.mp4").write_bytes(client.get(url).content)
            done.append(time.monotonic())
    return done


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="fal base URL (the emulator's /fal)")
    ap.add_argument("--key", required=True)
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--report", type=Path)
    ap.add_argument("--seeds", action="store_true", help="the seeds' sequential recipe")
    ap.add_argument("--tag", default="")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="kling", help="fal model")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--gate", type=int, default=16,
                    help="API requests in flight at most, downloads half as many, as "
                         "providers/http.py does (0: no gate)")
    ap.add_argument("--max-connections", type=int, default=0,
                    help="pool size (default: the two gates' sum)")
    ap.add_argument("--first", type=float, default=1.0)
    ap.add_argument("--factor", type=float, default=1.5)
    ap.add_argument("--max", type=float, default=10.0)
    args = ap.parse_args()
    start = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    done = seeds(args, args.out) if args.seeds else asyncio.run(floor(args, args.out))
    u = resource.getrusage(resource.RUSAGE_SELF)
    report = {"stamps": {"start": start, "end": time.monotonic()}, "done": done,
              "self": {"utime": u.ru_utime, "stime": u.ru_stime, "maxrss_mb": u.ru_maxrss / 1024}}
    if args.report:
        args.report.write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
