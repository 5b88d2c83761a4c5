"""What each emulated vendor charges, and when: the emulator's own price list.

Written by hand for the tests from the vendors' public pricing (model pages, pricing docs, API
documentation; each entry names its source, or says "unsourced"), never read from
providers/catalog: the product estimates a job's cost from its catalog and the emulator bills
from this table, so "cost.csv == what the vendor charged" is something a test can find false.
Where no public figure exists the entry says so and the figure is the emulator's own (a
vendor's price is whatever it bills).

`PRICES` is each vendor's list price, billed in the vendor's own units (Wan 2.2's frames at
16 fps, Runway's whole credits, Runware's per-clip Hailuo price, Luma's per-5 s tiers) and at
its audio rate when the request leaves native audio on. `OVERCHARGE` is what the emulated
vendors bill above that list, by default: a few models up to 10% over (a price moved after the
catalog was dated; the product's estimate margin is 0.10) and one far over (Runware's
`minimax:4@1` at 1.5x: Runware reports its `cost`, so a settled row shows the real figure and
an estimate row visibly less). Tests change it with `emu.configure(price_multiplier=...)`.

Billing (`bills`):
* "success": charged when the job succeeds (canceled, failed, filtered jobs are free).
* "terminal": charged when the job succeeds or fails (not when canceled before it ran).
* "submit": charged once the vendor accepts the job, whatever happens next (NanoGPT deducts
  the cost from the balance in its submit answer: docs.nano-gpt.com "Video Generation",
  "remainingBalance: Account balance after deduction"; no refund is documented).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

Rule = Callable[[float, str], float]  # (seconds, resolution) -> USD


def per_second(rate: float) -> Rule:
    return lambda seconds, resolution: rate * seconds


def per_second_by(rates: dict[str, float]) -> Rule:
    def rule(seconds: float, resolution: str) -> float:
        rate = rates.get(resolution.lower())
        if rate is None:  # an unlisted resolution is billed at the dearest listed one
            rate = max(rates.values())
        return rate * seconds
    return rule


def per_video(usd: float) -> Rule:
    return lambda seconds, resolution: usd


def base_plus(base: float, base_seconds: float, per_extra: float) -> Rule:
    return lambda seconds, resolution: base + max(0.0, seconds - base_seconds) * per_extra


def per_frames(rates: dict[str, float], fps: int) -> Rule:
    """Billed per "video second" counted as frames / fps: a job of (n - 1) / fps seconds
    (n frames, the first one at t=0) bills n / fps seconds (fal's Wan 2.2 pages)."""
    by = per_second_by(rates)
    return lambda seconds, resolution: by((round(seconds * fps) + 1) / fps, resolution)


def credits_per_second(credits: int) -> Rule:
    """Runway bills whole credits, 1 credit = $0.01."""
    return lambda seconds, resolution: round(credits * seconds) / 100


@dataclass(frozen=True)
class Entry:
    rule: Rule  # the price with the vendor's defaults (native audio on where it has audio)
    source: str
    bills: str = "success"  # "success" | "terminal" | "submit"
    silent: Rule | None = None  # the price when the request sets `audio_param` to false
    audio_param: str = "generate_audio"

    def usd(self, seconds: float, resolution: str, request: dict | None = None) -> float:
        rule = self.rule
        if self.silent is not None and (request or {}).get(self.audio_param) is False:
            rule = self.silent
        return round(rule(seconds, resolution), 6)


FAL_SUCCESS = "fal bills successful requests only (docs.fal.ai/documentation/model-apis/pricing)"

_FAL: dict[str, Entry] = {
    "fal-ai/kling-video/v2.5-turbo/pro/text-to-video": Entry(
        base_plus(0.35, 5, 0.07), "fal.ai model page (kling 2.5 turbo pro): $0.35 per 5 s + "
        "$0.07/s; text-to-video billed like image-to-video"),
    "fal-ai/kling-video/v2.5-turbo/pro/image-to-video": Entry(
        base_plus(0.35, 5, 0.07), "fal.ai model page (kling 2.5 turbo pro): $0.35 per 5 s + "
        "$0.07/s"),
    "fal-ai/kling-video/v2.5-turbo/standard/image-to-video": Entry(
        base_plus(0.21, 5, 0.042), "fal.ai/models/fal-ai/kling-video/v2.5-turbo/standard/"
        "image-to-video/llms.txt: $0.21 per 5 s + $0.042 per extra second"),
    "fal-ai/kling-video/v3/pro/text-to-video": Entry(
        per_second(0.168), "fal.ai kling v3 pro: $0.112/s with audio off, $0.168/s on",
        silent=per_second(0.112)),
    "fal-ai/kling-video/v3/pro/image-to-video": Entry(
        per_second(0.168), "fal.ai kling v3 pro: $0.112/s with audio off, $0.168/s on",
        silent=per_second(0.112)),
    "fal-ai/veo3.1": Entry(
        per_second_by({"720p": 0.40, "1080p": 0.40, "4k": 0.60}),
        "fal.ai/models/fal-ai/veo3.1/llms.txt: $0.20/s without audio, $0.40/s with "
        "(720p/1080p); 4k $0.40/$0.60", silent=per_second_by({"720p": 0.20, "1080p": 0.20,
                                                              "4k": 0.40})),
    "fal-ai/veo3.1/image-to-video": Entry(
        per_second_by({"720p": 0.40, "1080p": 0.40, "4k": 0.60}), "as fal-ai/veo3.1",
        silent=per_second_by({"720p": 0.20, "1080p": 0.20, "4k": 0.40})),
    "fal-ai/veo3.1/fast": Entry(
        per_second(0.15), "third-party copies of fal's Veo 3.1 Fast: $0.10/s without audio "
        "(reapi.ai), $0.15/s with (runflow.io)", silent=per_second(0.10)),
    "fal-ai/veo3.1/fast/image-to-video": Entry(per_second(0.15), "as fal-ai/veo3.1/fast",
                                               silent=per_second(0.10)),
    "fal-ai/wan/v2.2-a14b/text-to-video": Entry(
        per_frames({"480p": 0.04, "580p": 0.06, "720p": 0.08}, 16),
        "fal.ai wan v2.2-a14b page: $0.04/$0.06/$0.08 per video second, \"video seconds are "
        "calculated at 16 frames per second\""),
    "fal-ai/wan/v2.2-a14b/image-to-video": Entry(
        per_frames({"480p": 0.04, "580p": 0.06, "720p": 0.08}, 16), "as the text-to-video one"),
    "fal-ai/wan/v2.7/text-to-video": Entry(
        per_second_by({"720p": 0.10, "1080p": 0.15}),
        "fal.ai/models/fal-ai/wan/v2.7/image-to-video/llms.txt: $0.10/s 720p, $0.15/s 1080p"),
    "fal-ai/wan/v2.7/image-to-video": Entry(per_second_by({"720p": 0.10, "1080p": 0.15}),
                                            "as the text-to-video one"),
    "fal-ai/hunyuan-video": Entry(
        per_video(0.40), "fal.ai/models/fal-ai/hunyuan-video-image-to-video/llms.txt: $0.40 "
        "per video (the image-to-video sibling's page; this page unchecked)"),
    "fal-ai/ltx-video": Entry(per_video(0.02), "unsourced: $0.02 per video (a third-party "
                              "price survey; no fal page checked)"),
    "fal-ai/ltx-video/image-to-video": Entry(per_video(0.02), "unsourced, as fal-ai/ltx-video"),
}

PRICES: dict[str, dict[str, Entry]] = {
    "fal": _FAL,
    # the HF router passes provider prices through "with no markup"
    # (huggingface.co/docs/inference-providers/pricing)
    "huggingface": {f"fal-ai:{model}": replace(e, source=f"fal's price, no markup: {e.source}")
                    for model, e in _FAL.items()},
    "replicate": {
        # official models are billed per second of output video (replicate.com/pricing); no
        # per-model figure was found on a Replicate page: these figures are the emulator's own,
        # near Google's rates without audio
        "google/veo-3.1-fast": Entry(per_second(0.10), "no Replicate figure; $0.10/s"),
        "google/veo-3.1": Entry(per_second(0.20), "no Replicate figure; $0.20/s"),
        "kwaivgi/kling-v2.5-turbo-pro": Entry(per_second(0.07), "no Replicate figure; fal's "
                                              "$0.07/s per extra second (its Kling 2.5 Turbo Pro page)"),
        "minimax/hailuo-02": Entry(per_second_by({"512p": 0.017, "768p": 0.045, "1080p": 0.08}),
                                   "no Replicate figure; emulator's own"),
        "bytedance/seedance-1-pro": Entry(per_second_by({"480p": 0.03, "720p": 0.06,
                                                         "1080p": 0.15}),
                                          "no Replicate figure; emulator's own"),
        "bytedance/seedance-1-lite": Entry(per_second_by({"480p": 0.018, "720p": 0.036,
                                                          "1080p": 0.072}),
                                           "no Replicate figure; emulator's own"),
    },
    "runway": {
        # 1 credit = $0.01 (help.runwayml.com "How do credits work"); the task reports
        # `cost.credits` (runwayml/sdk-python types/task_retrieve_response.py)
        "gen4.5": Entry(credits_per_second(12), "unsourced: third-party pages say 12-25 "
                        "credits/s; 12 charged"),
        "gen4_turbo": Entry(credits_per_second(5), "help.runwayml.com \"How do credits work\": "
                            "Gen-4 Turbo 5 credits/s"),
        "veo3.1": Entry(credits_per_second(40), "Runway API table (third-party): 40 credits/s "
                        "with audio, 20 without", silent=credits_per_second(20),
                        audio_param="audio"),
        "veo3.1_fast": Entry(credits_per_second(15), "Runway API table (third-party): 15 "
                             "credits/s with audio, 10 without", silent=credits_per_second(10),
                             audio_param="audio"),
        "veo3": Entry(credits_per_second(40), "Runway API table (third-party): 40 credits/s"),
    },
    "luma": {
        # no API price on a Luma-owned page; its API reports none either
        "ray-2": Entry(per_second_by({"540p": 0.10, "720p": 0.20, "1080p": 0.40, "4k": 1.274}),
                       "unsourced (a third-party survey): 540p 5 s $0.50, 720p 5 s $1.00, "
                       "1080p 5 s $2.00; 4k from Comfy-Org/docs PR #514 ($6.37 per 5 s)"),
        "ray-flash-2": Entry(per_second_by({"540p": 0.04, "720p": 0.08, "1080p": 0.16,
                                            "4k": 0.438}),
                             "Comfy-Org/docs PR #514 (a resale table): 4k 5 s $2.19; lower "
                             "resolutions the emulator's own (halving per step down)"),
    },
    "gemini": {
        "veo-3.1-generate-001": Entry(per_second_by({"720p": 0.40, "1080p": 0.40, "4k": 0.60}),
                                      "unsourced, commonly cited: Veo 3.1 $0.40/s, 4k higher"),
        "veo-3.1-fast-generate-001": Entry(per_second_by({"720p": 0.10, "1080p": 0.12,
                                                          "4k": 0.30}),
                                           "ai.google.dev Gemini API pricing after the "
                                           "2026-04-07 cut, as quoted by reapi.ai (May 2026)"),
        "veo-3.1-generate-preview": Entry(per_second(0.40), "unsourced, commonly cited (retired)"),
        "veo-3.1-fast-generate-preview": Entry(per_second(0.15),
                                               "unsourced, commonly cited (retired)"),
        "veo-3.0-generate-001": Entry(per_second(0.40), "unsourced, commonly cited (retired)"),
        "veo-3.0-fast-generate-001": Entry(per_second(0.15), "unsourced, commonly cited (retired)"),
        "veo-2.0-generate-001": Entry(per_second(0.35), "no figure; emulator's own (retired)"),
    },
    "perf": {
        "veo-3": Entry(per_second(0.35), "docs.withperf.pro Video Generation: $0.35/second"),
        "runway-gen3": Entry(per_second(0.10), "docs.withperf.pro: $0.10/second (example: 8 s = "
                             "$0.80)"),
        "luma-dream-machine": Entry(per_second(0.06), "docs.withperf.pro: $0.06/second"),
        "pika": Entry(per_second(0.067), "docs.withperf.pro: $0.067/second"),
    },
    "nanogpt": {
        # docs.nano-gpt.com "Video Generation" gives one figure: veo2-video answered
        # "cost": 2.5 (5 s). The rest have no public price; the vendor reports the charge in
        # its submit answer.
        "veo2-video": Entry(per_second(0.50), "docs.nano-gpt.com example: cost 2.5 for 5 s",
                            "submit"),
        "kling-video-v2": Entry(per_second(0.28), "no public figure; emulator's own", "submit"),
        "kling-v21-standard": Entry(per_second(0.056), "no public figure; emulator's own",
                                    "submit"),
        "kling-v21-pro": Entry(per_second(0.098), "no public figure; emulator's own", "submit"),
        "seedance-video": Entry(per_second_by({"480p": 0.05, "1080p": 0.15}),
                                "no public figure; emulator's own", "submit"),
        "seedance-lite-video": Entry(per_second_by({"480p": 0.02, "720p": 0.036}),
                                     "no public figure; emulator's own", "submit"),
    },
    "runware": {
        # no Runware price found for most of these models; the task reports `cost`
        "klingai:6@1": Entry(base_plus(0.35, 5, 0.07), "fal's rate for Kling 2.5 Turbo Pro "
                             "(fal.ai model page)"),
        "klingai:5@3": Entry(per_second(0.28), "no public figure; emulator's own"),
        "google:3@3": Entry(per_second(0.15), "unsourced, commonly cited: Veo 3.1 Fast $0.15/s"),
        "bytedance:1@1": Entry(per_second(0.02), "no public figure; emulator's own"),
        "minimax:4@1": Entry(base_plus(0.28, 6, 0.07),
                             "runware.ai/docs/models/minimax-hailuo-2-3: 768p $0.28 for 6 s, "
                             "$0.56 for 10 s"),
    },
    "videogenapi": {
        # videogenapi.com API documentation: four free models (a monthly usage limit instead
        # of money), two premium ones without a published price
        "seedance_lite": Entry(per_video(0.0), "videogenapi.com docs: free model"),
        "kling_21": Entry(per_video(0.0), "videogenapi.com docs: free model"),
        "hailuo_2": Entry(per_video(0.0), "videogenapi.com docs: free model"),
        "higgsfield_v1": Entry(per_video(0.0), "videogenapi.com docs: free model"),
        "veo_3": Entry(per_second(0.40), "videogenapi.com docs: premium, no price "
                       "published; Google's commonly cited Veo rate (unsourced)"),
    },
}


# What the emulated vendors bill over their list price by default, "vendor:model" (the model
# as the vendor's API names it) -> factor: price moves the product's dated catalog has not
# caught up with. Within 10% (the product's default estimate margin) but one, far over.
OVERCHARGE: dict[str, float] = {
    "fal:fal-ai/veo3.1": 1.05,  # fal reports no cost: cost.csv holds the estimate
    "fal:fal-ai/veo3.1/image-to-video": 1.05,
    "luma:ray-2": 1.08,  # Luma reports no cost either
    "gemini:veo-3.1-generate-001": 1.05,
    "replicate:google/veo-3.1": 1.10,
    "runway:veo3": 1.07,  # Runway reports the credits it charged
    "nanogpt:kling-v21-pro": 1.05,  # NanoGPT reports the cost it deducted
    "runware:minimax:4@1": 1.5,  # the far one: Runware reports its `cost`
}


def entry(vendor: str, model: str, table: dict[str, dict[str, Entry]] | None = None
          ) -> Entry | None:
    """The price entry of `model` (as the vendor's API names it), or None when unknown."""
    return (PRICES if table is None else table).get(vendor, {}).get(model)
