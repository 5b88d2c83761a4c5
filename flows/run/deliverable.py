"""From a plan and its shots' clips to the `Cut` to assemble: title and end cards rendered (or
taken from the card cache) and placed around the shots, captions and transitions lined up
with the clips, the deliverable's audio and logo settings from the plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows.files.folder import resolved
from flows.media.assemble import Transition
from flows.media.cards import render_card
from flows.media.conform import OutputFormat
from flows.media.finishing import Cut
from flows.money.cache import default_cache_dir
from flows.storyboard.plan import Plan


async def cut_for(plan: Plan, clips: list[Path], run_dir: Path, fmt: OutputFormat,
                  cache_dir: Path | None = None) -> Cut:
    """`clips`: one conformed clip per planned shot. Cards are cached in `cache_dir`
    (default: the clip cache's cards/ folder) by their content."""
    fin = plan.finishing
    transitions = [Transition(s.transition.kind, s.transition.duration) for s in plan.shots[:-1]]
    if fin is None:
        return Cut(tuple(clips), tuple(transitions), fmt)
    captions = [fin.captions[s.index] for s in plan.shots]
    cards = cache_dir or default_cache_dir() / "cards"
    if fin.title is not None:
        dest = run_dir / "clips" / "000-title-card.mov"
        clips = [await render_card(fin.title.card, fmt, dest, cards), *clips]
        captions = [None, *captions]
        t = fin.title.transition
        transitions = [Transition(t.kind, t.duration), *transitions]
    if fin.end is not None:
        dest = run_dir / "clips" / "999-end-card.mov"
        clips = [*clips, await render_card(fin.end.card, fmt, dest, cards)]
        captions = [*captions, None]
        t = fin.end.transition  # the junction from the last shot into the end card
        transitions = [*transitions, Transition(t.kind, t.duration)]
    return Cut(tuple(clips), tuple(transitions), fmt, tuple(captions), fin.burn, fin.logo,
               fin.music, fin.loudness)


def summary_lines(cut: dict[str, Any], run_dir: Path | None = None) -> list[str]:
    """What the run summary says about the cut beyond its cost (`CutReport.to_json()`, whose
    paths are relative to `run_dir`)."""
    out = []
    if cut.get("captions"):
        srt, vtt = (str(resolved(cut[k], run_dir)) if run_dir is not None and cut.get(k)
                    else cut.get(k) for k in ("srt", "vtt"))
        out.append(f"captions: {cut['captions']} cues in {srt} and {vtt}")
    ld: dict[str, Any] | None = cut.get("loudness")
    if ld:
        if ld["mode"] == "silent" or None in (ld["integrated_lufs"], ld["true_peak_dbtp"]):
            out.append("loudness: the cut is silent, nothing to normalise")
        else:
            out.append(f"loudness: {ld['integrated_lufs']:.1f} LUFS integrated, "
                       f"{ld['true_peak_dbtp']:.1f} dBTP true peak (target {ld['target_lufs']:g} "
                       f"LUFS, {ld['mode']} normalisation)")
    return out
