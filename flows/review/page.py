"""review.html: one self-contained page per run folder for a producer to judge the shots.

The cut and its spend against the cap at the top, then every shot in storyboard order with
its prompt, each take playable inline (poster frame, seed, status, failure reason, estimated
vs actual cost), which take the cut uses, and what is missing. No scripts, fonts or styles
from the network: links are relative to the run folder, so the page works from file:// and
when the folder is copied elsewhere. Every text that came from a storyboard or a vendor is
escaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import html
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.files.atomic import write_text_atomic
from flows.money.journal import Attempt
from flows.money.spend import totals_of
from flows.review.picks import ShotReview, by_take, good_clip, select_take
from flows.review.previews import previews
from flows.storyboard.plan import take_seed

PAGE = "review.html"
_UNBOOKED = ("cached", "skipped")  # rows that never cost anything (as in cost.csv)


def booked(a: Attempt) -> float:
    """What an attempt cost, as cost.csv books it."""
    return 0.0 if a.status in _UNBOOKED else float(a.actual_usd or 0.0)


@dataclass
class TakeView:
    take: int
    seed: int | None
    rows: list[Attempt]
    clip: Path | None
    selected: bool = False
    rejected: bool = False
    video: str | None = None  # relative to the run folder
    poster: str | None = None
    in_cut: tuple[float, float] | None = None  # played from the cut: its start, end (s)
    # clips that came back and were refused by a clip check: journal row id -> link to the
    # download (relative to the run folder)
    refused: dict[int, str] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.rows[-1].status if self.rows else "not started"

    @property
    def spent(self) -> float:
        return sum(booked(a) for a in self.rows)

    @property
    def estimated(self) -> float:
        return sum(a.estimated_usd or 0.0 for a in self.rows if a.status != "cached")


@dataclass
class ShotView:
    index: int
    shot_id: str
    prompt: str
    duration: float
    options: list[dict[str, Any]]
    takes: list[TakeView] = field(default_factory=list)
    review: ShotReview | None = None
    start_from: str | None = None  # the shot whose last frame is this one's first
    characters: list[str] = field(default_factory=list)

    @property
    def selected(self) -> TakeView | None:
        return next((t for t in self.takes if t.selected), None)

    @property
    def spent(self) -> float:
        return sum(t.spent for t in self.takes)


def shot_views(plan: dict[str, Any], attempts: list[Attempt],
               reviews: dict[str, ShotReview]) -> list[ShotView]:
    """The page's model: the plan's shots with their journal rows grouped into takes."""
    rows: dict[str, list[Attempt]] = {}
    for a in attempts:
        rows.setdefault(a.shot_id, []).append(a)
    views = []
    for i, s in enumerate(plan["shots"]):
        review = reviews.get(s["id"])
        takes = by_take(rows.get(s["id"], []))
        chosen = select_take(takes, review)
        view = ShotView(i, s["id"], s["prompt"], s["duration"], s.get("options", []),
                        review=review, start_from=s.get("start_from"),
                        characters=list(s.get("characters") or []))
        for take, trows in takes.items():
            seed = s.get("seed")
            view.takes.append(TakeView(
                take, take_seed(seed, take) if seed is not None else None, trows,
                good_clip(trows), selected=take == chosen,
                rejected=bool(review and take in review.rejected)))
        views.append(view)
    return views


def _take_clips(views: list[ShotView]) -> dict[str, Path]:
    return {f"{v.shot_id}-take{t.take}": t.clip for v in views for t in v.takes if t.clip}


def _in_cut(clips: dict[str, Path], in_cut: Collection[str]) -> frozenset[str]:
    """The takes whose clip plays in the cut: the page plays them from final.mp4 (a media
    fragment, #t=start,end), so they need a poster only: no preview to encode, which on a
    board of a hundred shots was 9 s of CPU at the end of the run (bench/README.md)."""
    return frozenset(k for k, c in clips.items() if str(Path(c).resolve()) in in_cut)


async def take_previews(run_dir: Path, plan: dict[str, Any], attempts: list[Attempt],
                        reviews: dict[str, ShotReview], in_cut: Collection[str] = ()) -> None:
    """Make every take's preview now (the page written later finds them up to date): the
    run starts them beside the cut instead of after it. `in_cut`: the resolved paths of the
    clips the cut is made of (poster only)."""
    clips = _take_clips(shot_views(plan, attempts, reviews))
    await previews(clips, Path(run_dir), playable=_in_cut(clips, set(in_cut)))


async def write_review_page(run_dir: Path, plan: dict[str, Any], attempts: list[Attempt],
                            reviews: dict[str, ShotReview], *, spent_usd: float,
                            cap_usd: float | None, final: Path | None,
                            reserved_usd: float = 0.0, running: bool = False,
                            in_cut: Mapping[str, tuple[float, float]] | None = None) -> Path:
    """Make the previews the page needs, then write review.html atomically. `in_cut`: where
    each clip of `final` plays in it (resolved path -> start, end in seconds)."""
    run_dir = Path(run_dir)
    views = shot_views(plan, attempts, reviews)
    clips = _take_clips(views)
    in_cut = in_cut if final is not None and final.exists() else None
    placed = _in_cut(clips, in_cut or ())
    if final is not None and final.exists():
        clips["final"] = final
    made = await previews(clips, run_dir, playable=placed | {"final"})
    for v in views:
        for t in v.takes:
            name = f"{v.shot_id}-take{t.take}"
            video, poster = made.get(name, (None, None))
            t.video, t.poster = _rel(video, run_dir), _rel(poster, run_dir)
            if in_cut and final is not None and name in placed and t.clip is not None:
                t.in_cut = in_cut[str(t.clip.resolve())]
                t.video = f"{_rel(final, run_dir)}#t={t.in_cut[0]:g},{t.in_cut[1]:g}"
            t.refused = refused_clips(t.rows, run_dir)
    cut_video, cut_poster = made.get("final", (None, None))
    text = render_page(plan, views, spent_usd=spent_usd, cap_usd=cap_usd,
                       final=_rel(cut_video, run_dir), final_poster=_rel(cut_poster, run_dir),
                       reserved_usd=reserved_usd, running=running, money=totals_of(attempts))
    return write_text_atomic(run_dir / PAGE, text)


def refused_clips(rows: list[Attempt], run_dir: Path) -> dict[int, str]:
    """The downloads a take's attempts refused (a failed row that still names its clip: the
    clip came back, was paid, and failed a clip check), linked as they are: no preview is
    made for them."""
    out = {}
    for a in rows:
        if a.status == "failed" and a.clip_path and Path(a.clip_path).is_file():
            link = _rel(Path(a.clip_path), run_dir)
            if link is not None:
                out[a.id] = link
    return out


class PageRefresher:
    """Rewrites review.html while a run goes on: at most once every `every` seconds, never two
    writes at once, and never a failed run because of the page."""

    def __init__(self, write: Callable[[], Awaitable[Any]], every: float = 5.0) -> None:
        self.write, self.every = write, every
        self._task: asyncio.Task[None] | None = None
        self._last = 0.0

    def poke(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        await asyncio.sleep(max(0.0, self._last + self.every - time.monotonic()))
        self._last = time.monotonic()
        with contextlib.suppress(Exception):
            await self.write()

    async def close(self) -> None:
        """Drop a pending refresh (the final page follows) and wait out one in progress."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


def _rel(path: Path | None, run_dir: Path) -> str | None:
    """A link relative to the run folder; a file outside it (none the run makes) by its URI."""
    if path is None:
        return None
    full = Path(path).resolve()
    try:
        return full.relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return full.as_uri()


# -- HTML -------------------------------------------------------------------------------------
def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def usd(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 0.01 or value == 0:
        return f"${value:,.2f}"
    return f"${value:.4f}".rstrip("0")  # sub-cent prices (local renders, cheap models)


def render_page(plan: dict[str, Any], views: list[ShotView], *, spent_usd: float,
                cap_usd: float | None, final: str | None, final_poster: str | None,
                reserved_usd: float = 0.0, running: bool = False,
                now: dt.datetime | None = None, money: Mapping[str, float] | None = None) -> str:
    title = plan.get("title", "storyreel run")
    missing = [v for v in views if v.selected is None]
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d %H:%M UTC")
    state = "running: this page refreshes as shots finish" if running else f"written {stamp}"
    head = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)} - review</title>",
        # the page refreshes itself while the run is going (no script needed)
        '<meta http-equiv="refresh" content="10">' if running else "",
        f"<style>{_CSS}</style></head><body>",
        '<header class="top">',
        f'<div><h1>{e(title)}</h1><p class="sub">{len(views)} shots &middot; '
        f'{sum(v["duration"] for v in plan["shots"]):g} s &middot; {e(state)}</p></div>',
        _spend_meter(spent_usd, reserved_usd, cap_usd, plan.get("estimated_usd"), money),
        "</header>",
        '<section class="cut">',
        _video(final, final_poster, "the cut", big=True) if final else
        '<div class="novideo big">no cut yet</div>',
        '<div class="side">',
        f'<p class="verdict {"bad" if missing else "ok"}">'
        + (f"{len(missing)} shot(s) missing from the cut: "
           + ", ".join(f'<a href="#shot-{e(v.shot_id)}">{e(v.shot_id)}</a>' for v in missing)
           if missing else "every shot is in the cut") + "</p>",
        _cost_chart(views),
        _how_to(),
        "</div></section>",
        '<main class="shots">',
    ]
    body = [_shot(v) for v in views]
    return "\n".join([*head, *body, "</main></body></html>", ""])


def _spend_meter(spent: float, reserved: float, cap: float | None, estimate: float | None,
                 money: Mapping[str, float] | None = None) -> str:
    cap_text = usd(cap) if cap is not None else "no cap"
    parts = [f'<div class="meter"><div class="nums"><b>{usd(spent)}</b> spent of {cap_text}']
    if reserved:
        parts.append(f" &middot; {usd(reserved)} reserved")
    if estimate is not None:
        parts.append(f" &middot; plan estimate {usd(estimate)}")
    parts.append("</div>")
    if money is not None:  # an estimate is never shown as a charge
        parts.append(f'<div class="nums split">{usd(money["confirmed_usd"])} confirmed by vendors'
                     f' &middot; {usd(money["estimated_spend_usd"])} estimated (vendor states no '
                     f'cost) &middot; {usd(money["at_risk_usd"])} at risk</div>')
    if cap:
        pct = min(100.0, 100.0 * spent / cap)
        rpct = min(100.0 - pct, 100.0 * reserved / cap)
        parts.append(f'<svg class="bar" viewBox="0 0 100 4" preserveAspectRatio="none" '
                     f'role="img" aria-label="spent {pct:.0f}% of the cap">'
                     '<rect width="100" height="4" class="track"/>'
                     f'<rect width="{pct:.2f}" height="4" class="spent"/>'
                     f'<rect x="{pct:.2f}" width="{rpct:.2f}" height="4" class="reserved"/></svg>')
    parts.append("</div>")
    return "".join(parts)


def _video(src: str | None, poster: str | None, label: str, big: bool = False) -> str:
    cls = "big" if big else ""
    poster_attr = f' poster="{e(poster)}"' if poster else ""
    return (f'<video class="{cls}" controls preload="metadata" playsinline{poster_attr} '
            f'src="{e(src)}" aria-label="{e(label)}"></video>')


def _cost_chart(views: list[ShotView]) -> str:
    """Spend by provider and by shot as two small horizontal bar charts (inline SVG)."""
    by_provider: dict[str, float] = {}
    for v in views:
        for t in v.takes:
            for a in t.rows:
                by_provider[a.provider] = by_provider.get(a.provider, 0.0) + booked(a)
    by_shot = {v.shot_id: v.spent for v in views}
    return ('<div class="chart"><h2>Spend</h2>' + _bars("by provider", by_provider)
            + _bars("by shot", by_shot) + "</div>")


def _bars(caption: str, values: dict[str, float]) -> str:
    items = sorted(values.items(), key=lambda kv: -kv[1])[:12]
    if not items:
        return ""
    top = max(v for _, v in items) or 1.0
    row, label_w, bar_w = 18, 110, 150
    height = row * len(items) + 4
    out = [f'<figure><figcaption>{e(caption)}</figcaption>'
           f'<svg viewBox="0 0 {label_w + bar_w + 70} {height}" width="{label_w + bar_w + 70}" '
           f'height="{height}" role="img" '
           f'aria-label="spend {e(caption)}">']
    for i, (name, value) in enumerate(items):
        y = i * row + 2
        w = max(1.0 if value > 0 else 0.0, bar_w * value / top)
        short = name if len(name) <= 16 else name[:15] + "\u2026"
        out.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{e(short)}</text>'
                   f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="12" rx="2"/>'
                   f'<text x="{label_w + w + 5:.1f}" y="{y + 12}">{e(usd(value))}</text>')
    out.append("</svg></figure>")
    return "".join(out)


def _how_to() -> str:
    return ('<details class="howto"><summary>Pick, reject, re-cut</summary><pre>'
            "storyreel pick DIR SHOT TAKE       # the cut uses that take\n"
            "storyreel reject DIR SHOT --note \u2026  # the next run makes new takes\n"
            "storyreel cut DIR                  # re-assemble from the picks, no spend\n"
            "storyreel run SPEC --out DIR       # regenerate only rejected shots"
            "</pre></details>")


def _shot(v: ShotView) -> str:
    opt = v.options[0] if v.options else {}
    chain = ", ".join(f'{o["provider"]}:{o["model"]}' for o in v.options[1:])
    sel = v.selected
    if sel is not None:
        badge = f'<span class="badge ok">take {sel.take} in the cut</span>'
    elif v.review and v.review.rejected and v.takes and all(t.rejected for t in v.takes):
        badge = '<span class="badge bad">rejected: missing from the cut</span>'
    else:
        badge = '<span class="badge bad">missing from the cut</span>'
    parts = [f'<article class="shot" id="shot-{e(v.shot_id)}">',
             f'<header><span class="num">{v.index + 1}</span><h2>{e(v.shot_id)}</h2>{badge}'
             f'<span class="meta">{v.duration:g} s &middot; '
             f'{e(opt.get("provider", "?"))}:{e(opt.get("model", "?"))}'
             + (f" &middot; fallback {e(chain)}" if chain else "")
             + f' &middot; est. {usd(opt.get("estimate_usd"))}/take &middot; spent '
             f'{usd(v.spent)}</span></header>',
             f'<blockquote class="prompt">{e(v.prompt)}</blockquote>']
    if v.start_from or v.characters:  # continuity: a chain, and who appears
        bits = [f'starts from the last frame of <a href="#shot-{e(v.start_from)}">'
                f'{e(v.start_from)}</a>'] if v.start_from else []
        bits += [f'characters: {e(", ".join(v.characters))}'] if v.characters else []
        parts.append(f'<p class="continuity">{" &middot; ".join(bits)}</p>')
    if v.review and v.review.note:
        parts.append(f'<p class="note">Review note: {e(v.review.note)}</p>')
    if not v.takes:
        parts.append('<div class="novideo">not attempted yet</div>')
    parts.append('<div class="takes">')
    parts += [_take(v, t) for t in v.takes]
    parts.append("</div></article>")
    return "\n".join(parts)


def _where(t: TakeView) -> str:
    """For a take played from the cut (a media fragment), where in the cut it is."""
    return "" if t.in_cut is None else f"<br>plays from the cut, {t.in_cut[0]:g}-{t.in_cut[1]:g} s"


def _take(v: ShotView, t: TakeView) -> str:
    cls = "take" + (" selected" if t.selected else "") + (" rejected" if t.rejected else "")
    flags = []
    if t.selected:
        flags.append('<span class="badge ok">selected</span>')
    if t.rejected:
        flags.append('<span class="badge bad">rejected</span>')
    last = t.rows[-1] if t.rows else None
    if t.video:
        media = _video(t.video, t.poster, f"{v.shot_id} take {t.take}")
    elif t.refused:  # no clip to cut in, but clips came back: show the last refused, and why
        row = next(a for a in reversed(t.rows) if a.id in t.refused)
        media = (_video(t.refused[row.id], None, f"{v.shot_id} take {t.take}, refused")
                 + f'<p class="reason">refused: {e(row.failure_reason or "")}</p>')
    else:
        media = f'<div class="novideo">{e(t.status)}</div>'
    model = f"{last.provider}:{last.model}" if last else ""
    seed = f"seed {t.seed}" if t.seed is not None else "no seed"
    support = next((o.get("seed") for o in v.options if last is not None
                    and (o["provider"], o["model"]) == (last.provider, last.model)), None)
    if support == "none":  # the catalog says this model takes no seed
        seed += f" (not sent: {model} takes none)"
    elif support == "best_effort":
        seed += " (best effort)"
    out = [f'<figure class="{cls}" id="{e(v.shot_id)}-take{t.take}">', media,
           f'<figcaption><b>Take {t.take}</b> {"".join(flags)}<br>'
           f'<span class="meta">{e(seed)} &middot; {e(model)} &middot; '
           f'<span class="st st-{e(t.status)}">{e(t.status)}</span><br>'
           f'est. {usd(t.estimated)} &middot; actual {usd(t.spent)}{_where(t)}</span>'
           '</figcaption>']
    out.append('<table class="attempts"><tr><th>#</th><th>option</th><th>status</th>'
               '<th>est.</th><th>actual</th><th>reason</th></tr>')
    for a in t.rows:
        reason = e(a.failure_reason or "")
        if a.id in t.refused:
            reason += f' <a class="refused" href="{e(t.refused[a.id])}">watch the refused clip</a>'
        out.append(f'<tr><td>{a.attempt}</td><td>{e(a.provider)}:{e(a.model)}</td>'
                   f'<td class="st st-{e(a.status)}">{e(a.status)}</td>'
                   f'<td>{usd(a.estimated_usd)}</td><td>{usd(booked(a))}</td>'
                   f'<td class="reason">{reason}</td></tr>')
    out.append("</table></figure>")
    return "".join(out)


_CSS = """
:root{--bg:#f6f5f2;--card:#fff;--ink:#1d1d1f;--mute:#6b6b70;--line:#e3e1dc;--ok:#1f7a4d;
--bad:#b3261e;--accent:#2f5fd0;--res:#e0a020}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
.top{display:flex;justify-content:space-between;align-items:flex-end;gap:24px;flex-wrap:wrap;
padding:18px 28px 12px;border-bottom:1px solid var(--line);background:var(--card)}
h1{margin:0;font-size:22px}h2{margin:0;font-size:16px}
.sub{margin:2px 0 0;color:var(--mute)}
.meter{min-width:320px}.meter .nums{font-size:15px;margin-bottom:4px}
.bar{width:100%;height:10px;border-radius:5px;display:block}
.bar .track{fill:var(--line)}.bar .spent{fill:var(--accent)}.bar .reserved{fill:var(--res)}
.cut{display:grid;grid-template-columns:minmax(0,3fr) minmax(260px,2fr);gap:24px;
padding:20px 28px;max-width:1400px}
video{width:100%;background:#000;border-radius:6px;display:block;aspect-ratio:16/9}
video.big{max-height:52vh}
.side .verdict{margin:0 0 12px;padding:8px 12px;border-radius:6px;font-weight:600}
.verdict.ok{background:#e6f4ec;color:var(--ok)}.verdict.bad{background:#fbeaea;color:var(--bad)}
.verdict a{color:inherit}
.chart figure{margin:6px 0 10px}.chart figcaption{color:var(--mute);font-size:12px}
.chart svg{font-size:11px;fill:var(--ink)}.chart rect{fill:var(--accent)}
.howto{margin-top:8px;color:var(--mute)}.howto pre{font-size:12px;white-space:pre-wrap}
.shots{padding:4px 28px 40px;max-width:1400px}
.shot{background:var(--card);border:1px solid var(--line);border-radius:8px;margin:0 0 18px;
padding:14px 16px}
.shot>header{display:flex;align-items:center;gap:10px;flex-wrap:wrap}
.num{display:inline-grid;place-items:center;width:26px;height:26px;border-radius:50%;
background:var(--ink);color:#fff;font-size:12px;font-weight:700}
.meta{color:var(--mute);font-size:12.5px}
.shot>header .meta{margin-left:auto}
.prompt{margin:10px 0;padding:6px 12px;border-left:3px solid var(--line);font-style:italic;
white-space:pre-wrap;overflow-wrap:anywhere}
.note{margin:6px 0;color:var(--bad)}
.badge{font-size:11.5px;font-weight:700;padding:2px 8px;border-radius:10px;white-space:nowrap}
.badge.ok{background:#e6f4ec;color:var(--ok)}.badge.bad{background:#fbeaea;color:var(--bad)}
.takes{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:14px}
.take{margin:0;border:2px solid transparent;border-radius:8px;padding:6px;background:#fafaf8}
.take.selected{border-color:var(--ok)}.take.rejected{opacity:.7;border-color:#f0c4c0}
.take figcaption{margin:6px 2px}
.novideo{display:grid;place-items:center;aspect-ratio:16/9;background:#ececea;color:var(--mute);
border-radius:6px;font-weight:600}
.novideo.big{min-height:240px}
.attempts{width:100%;border-collapse:collapse;font-size:12px;margin-top:4px}
.attempts th,.attempts td{text-align:left;padding:2px 4px;border-top:1px solid var(--line);
vertical-align:top}
.attempts th{color:var(--mute);font-weight:600}
.reason{overflow-wrap:anywhere;color:var(--bad)}
.st-done,.st-cached{color:var(--ok)}.st-failed,.st-canceled,.st-unconfirmed{color:var(--bad)}
@media (max-width:900px){.cut{grid-template-columns:1fr}}
"""
