"""Planning: defaults < shot, style and seeds resolved, every option checked against the
catalog and priced, before anything is paid."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from flows.media.checks import Thresholds, thresholds
from flows.storyboard.chains import chain_lines
from flows.storyboard.files import reference_image
from flows.storyboard.finishing import FinishPlan, plan_finishing
from flows.storyboard.spec import Storyboard, Transition
from providers.catalog import ModelInfo, Price, load_catalog
from providers.errors import SpecError
from providers.fal_pricing import UnitPrice, units_per_shot
from providers.registry import BUILTIN
from providers.types import ImageInput, ShotRequest
from providers.upload_store import check_storyboard_store, local_image_problem, store_url


@dataclass(frozen=True)
class Option:
    """One way to make a shot: a provider's model and what it should cost."""

    provider: str
    model: str
    info: ModelInfo
    estimate_usd: float
    resolution: str = "720p"  # what is asked of the vendor (conform scales to the output)
    # where estimate_usd comes from: LIVE_SOURCE, "catalog estimate (as of ...)" or the
    # storyboard's own `pricing:` entry
    price_source: str = ""
    # added to the reservation (not the estimate): 0 for a live vendor price, else
    # budget.estimate_margin, so a cap holds while the vendor bills up to that much above it
    margin: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.provider}:{self.model}"

    @property
    def reserve_usd(self) -> float:
        """What an attempt holds against the caps before its submit."""
        return round(self.estimate_usd * (1 + self.margin), 6)


@dataclass(frozen=True)
class ShotPlan:
    index: int
    shot_id: str
    prompt: str  # style applied
    duration: float
    seed: int
    options: list[Option]  # primary first, then the fallback chain
    retries: int
    transition: Transition  # junction into the next shot
    negative_prompt: str | None = None
    image: ImageInput | None = None
    image_sha256: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    takes: int = 1  # independent jobs, each with its own seed (take_seed)
    take: int = 1  # which take this plan makes (for_take)
    # continuity (flows/storyboard/chains.py): the shot whose chosen clip's last frame is this
    # one's first; `image` holds that frame (and parent_sha256 the parent clip's sha256) once
    # the run has the parent's clip (flows/run/chain.py binds it)
    start_from: str | None = None
    on_parent_failed: str = "text"
    parent_sha256: str | None = None
    characters: tuple[str, ...] = ()  # their descriptions are already in `prompt`
    references: tuple[ImageInput, ...] = ()  # the characters' images
    references_sha256: tuple[str, ...] = ()
    checks: Thresholds = Thresholds()  # what a clip must pass before the cut

    @property
    def primary(self) -> Option:
        return self.options[0]

    @property
    def estimate_usd(self) -> float:
        """What the shot's takes cost on the primary option."""
        return round(self.primary.estimate_usd * self.takes, 6)

    @property
    def reserve_usd(self) -> float:
        """What the shot's takes hold against the caps on the primary option (with margin)."""
        return round(self.primary.reserve_usd * self.takes, 6)

    def for_take(self, take: int) -> ShotPlan:
        """This shot's plan for one take: its own seed, so its own cache key and clip."""
        return replace(self, take=take, seed=take_seed(self.seed, take))

    def uses_image(self, option: Option) -> bool:
        """The shot is sent image-to-video on `option` (a start_from shot always is: its
        options were checked to take an image)."""
        if "image" not in option.info.inputs:
            return False
        return self.start_from is not None or self.first_frame(option) is not None

    def first_frame(self, option: Option) -> ImageInput | None:
        """The image sent as the first frame on `option`: the shot's image (or its parent's
        last frame), else a character's image when the model has no reference field."""
        if "image" not in option.info.inputs:
            return None
        if self.image is not None or self.start_from is not None:
            return self.image
        if self.references and "reference" not in option.info.inputs:
            return self.references[0]
        return None

    def key_image(self) -> str | None:
        """What the clip key knows of the shot's images: the image's sha256 alone, as before
        continuity existed; with a parent or characters, a digest of the parent clip's sha256
        and the characters' image hashes as well, so a new parent clip or a changed character
        image is a new clip."""
        parts = [f"parent:{self.parent_sha256 or 'unbound'}"] if self.start_from else \
            ([self.image_sha256] if self.image_sha256 else [])
        parts += [f"character:{h}" for h in self.references_sha256]
        if not parts:
            return None
        if parts == [self.image_sha256]:
            return self.image_sha256
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    def endpoint(self, option: Option) -> str:
        """The vendor's model id this shot is sent to on `option` (its image-to-video one
        when the shot has a reference image and the model has a separate endpoint)."""
        info = option.info
        if self.uses_image(option) and info.vendor_model_image:
            return info.vendor_model_image
        return info.vendor_model

    def request(self, option: Option, plan: Plan) -> ShotRequest:
        info = option.info
        use_image = self.uses_image(option)
        vendor_model = self.endpoint(option)
        return ShotRequest(
            shot_id=self.shot_id, provider=option.provider, model=option.model,
            vendor_model=vendor_model, prompt=self.prompt, duration_s=self.duration,
            aspect_ratio=plan.aspect_ratio, resolution=option.resolution, width=plan.width,
            height=plan.height, fps=plan.fps, negative_prompt=self.negative_prompt, seed=self.seed,
            image=self.first_frame(option) if use_image else None,
            # Veo 3.1 (python-genai) and Runway's seedance2 take a first frame or references,
            # not both: the first frame (the shot's image, its parent's last frame) wins and
            # the characters ride on their descriptions alone
            references=self.references if "reference" in info.inputs and not use_image else (),
            params={**info.params, **self.params},
        )


@dataclass(frozen=True)
class Plan:
    storyboard: Storyboard
    source: Path
    width: int
    height: int
    fps: int
    aspect_ratio: str
    resolution: str
    shots: list[ShotPlan]
    finishing: FinishPlan | None = None  # music, loudness, captions, cards, logo
    # fal's live unit price per endpoint id (flows/storyboard/prices.py), the same the fal
    # adapter settles jobs with; empty when none was found (then price_note says why)
    unit_prices: dict[str, UnitPrice] = field(default_factory=dict)
    price_note: str | None = None

    @property
    def cap_usd(self) -> float | None:
        return self.storyboard.budget.max_usd

    @property
    def total_estimate(self) -> float:
        return round(sum(s.estimate_usd for s in self.shots), 6)

    @property
    def total_reserve(self) -> float:
        return round(sum(s.reserve_usd for s in self.shots), 6)

    @property
    def total_duration(self) -> float:
        return sum(s.duration for s in self.shots)

    def providers_used(self) -> set[str]:
        return {o.provider for s in self.shots for o in s.options}

    def over_budget(self) -> list[str]:
        """Why this plan cannot run under its caps (empty when it can)."""
        reasons = []
        budget = self.storyboard.budget
        if budget.max_usd is not None and self.total_estimate > budget.max_usd + 1e-9:
            reasons.append(f"estimated total ${self.total_estimate:.2f} exceeds budget.max_usd "
                           f"${budget.max_usd:.2f}")
        if budget.max_usd_per_shot is not None:
            for s in self.shots:
                if s.estimate_usd > budget.max_usd_per_shot + 1e-9:
                    takes = f" x {s.takes} takes" if s.takes > 1 else ""
                    reasons.append(f"shots[{s.index}] ({s.shot_id}): ${s.estimate_usd:.2f} "
                                   f"on {s.primary.label}{takes} exceeds budget.max_usd_per_shot "
                                   f"${budget.max_usd_per_shot:.2f}")
                elif s.primary.reserve_usd > budget.max_usd_per_shot + 1e-9:
                    reasons.append(f"shots[{s.index}] ({s.shot_id}): one attempt on "
                                   f"{s.primary.label} reserves ${s.primary.reserve_usd:.2f} "
                                   f"(the estimate + budget.estimate_margin), more than "
                                   f"budget.max_usd_per_shot ${budget.max_usd_per_shot:.2f}")
        return reasons

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.storyboard.title, "source": str(self.source),
            "output": {"width": self.width, "height": self.height, "fps": self.fps,
                       "fit": self.storyboard.output.fit, "aspect_ratio": self.aspect_ratio},
            "budget": self.storyboard.budget.model_dump(),
            "estimated_usd": self.total_estimate,
            "reserve_usd": self.total_reserve,
            "estimate_margin": self.storyboard.budget.estimate_margin,
            "shots": [{
                "id": s.shot_id, "prompt": s.prompt, "duration": s.duration, "seed": s.seed,
                "image": str(s.image.path or s.image.url) if s.image else None,
                "start_from": s.start_from, "on_parent_failed": s.on_parent_failed,
                "characters": list(s.characters),
                "options": [{"provider": o.provider, "model": o.model,
                             "estimate_usd": o.estimate_usd, "reserve_usd": o.reserve_usd,
                             "seed": o.info.seed, "price_source": o.price_source}
                            for o in s.options],
                "retries": s.retries, "transition": s.transition.model_dump(),
                "takes": s.takes, "estimate_usd": s.estimate_usd, "reserve_usd": s.reserve_usd,
            } for s in self.shots],
            "characters": {n: {"image": c.image, "description": c.description}
                           for n, c in self.storyboard.characters.items()},
            "chains": chain_lines((s.shot_id, s.start_from) for s in self.shots),
            "deliverable": self.finishing.to_json() if self.finishing else None,
            "price_note": self.price_note,
        }


def build_plan(board: Storyboard, source: str | Path, today: dt.date | None = None) -> Plan:
    """Resolve every shot; raise one SpecError listing every problem found."""
    source = Path(source)
    issues: list[tuple[str, str]] = []
    width, height = board.dimensions()
    aspect = _aspect_of(board, width, height)
    resolution = board.resolution_label()
    d = board.defaults
    default_tr = _transition(d.transition)
    shots: list[ShotPlan] = []
    # each character's image is read and checked once, whichever shots use it
    characters: dict[str, tuple[ImageInput, str] | None] = {}
    for name, char in board.characters.items():
        found, digest = _image(char.image, source, f"characters.{name}.image", issues)
        characters[name] = (found, digest or "") if found is not None else None
    for i, shot in enumerate(board.shots):
        where = f"shots[{i}]"
        duration = shot.duration if shot.duration is not None else d.duration
        dur_place = f"{where}.duration" if shot.duration is not None else \
            f"{where}.duration (from defaults.duration)"
        provider = shot.provider or d.provider
        model = shot.model or (d.model if provider == d.provider else None)
        image, image_hash = _image(shot.image, source, f"{where}.image", issues)
        primary = _option(board, provider, model, f"{where}.model" if shot.model or not
                          shot.provider else f"{where}.provider", issues, today)
        options = [primary] if primary else []
        chain = shot.fallback if shot.fallback is not None else d.fallback
        for j, ref in enumerate(chain):
            p, _, m = ref.partition(":")
            opt = _option(board, p.strip(), m.strip() or None, f"{where}.fallback[{j}]", issues, today)
            if opt:
                options.append(opt)
        refs = [characters[n] for n in shot.characters if characters.get(n)]
        for opt in options:
            o_place = f"{where}.model" if opt is primary else f"{where}.fallback"
            # the first frame this option would get: the image, the parent's last frame, or a
            # character's image on a model with no reference field
            first = image or (refs[0][0] if refs and "reference" not in opt.info.inputs
                              and not shot.start_from else None)
            _check_option(opt, duration, aspect, resolution, first, dur_place, o_place,
                          f"{where}.image", issues, chained=shot.start_from is not None)
            if shot.start_from is not None and "image" not in opt.info.inputs:
                issues.append((o_place, f"{opt.label} takes no image, but this shot starts "
                               f"from {shot.start_from}'s last frame (start_from), which is "
                               "sent image-to-video; choose a model whose catalog inputs "
                               "list image (storyreel providers)"))
        style = d.style
        told = [shot.prompt.strip(), *(c.description.strip() for n in shot.characters
                                       if (c := board.characters[n]).description)]
        prompt = ", ".join(told) + (f", {style.strip()}" if style else "")
        seed = shot.seed if shot.seed is not None else d.seed
        if seed is None:  # stable per shot, so reruns hit the cache and animatics repeat
            seed = int(hashlib.sha256(shot.id.encode()).hexdigest()[:8], 16) % 2**31
        tr = _transition(shot.transition) if shot.transition is not None else default_tr
        if not options:
            continue
        options = [
            Option(o.provider, o.model, o.info,
                   *_estimate(board, o, duration, vendor_resolution(o.info, resolution),
                              f"pricing.{o.label}", issues, {**d.params, **shot.params}),
                   margin=0.0 if o.info.free else board.budget.estimate_margin)
            for o in options
        ]
        shots.append(ShotPlan(
            index=i, shot_id=shot.id, prompt=prompt, duration=duration, seed=seed,
            options=options, retries=shot.retries if shot.retries is not None else d.retries,
            transition=tr, negative_prompt=shot.negative_prompt or d.negative_prompt,
            image=image, image_sha256=image_hash, params={**d.params, **shot.params},
            takes=shot.takes if shot.takes is not None else d.takes,
            start_from=shot.start_from,
            on_parent_failed=shot.on_parent_failed or d.on_parent_failed,
            characters=tuple(shot.characters),
            references=tuple(r[0] for r in refs), references_sha256=tuple(r[1] for r in refs),
            checks=thresholds(d.checks, shot.checks),
        ))
    _check_uploads(board, shots, issues)
    finishing = plan_finishing(board, source, issues)
    if issues:
        raise SpecError(issues, str(source))
    return Plan(board, source, width, height, board.output.fps, aspect, resolution, shots,
                finishing)


def take_seed(seed: int, take: int) -> int:
    """Take 1 keeps the shot's seed (its cache key is unchanged); take k > 1 gets its own,
    derived from the shot's seed and k, so a rerun asks for the same takes again."""
    if take <= 1:
        return seed
    return int(hashlib.sha256(f"{seed}:take{take}".encode()).hexdigest()[:8], 16) % 2**31


def _lines(label: str) -> int:
    digits = "".join(ch for ch in label if ch.isdigit())
    return 2160 if label.lower() == "4k" else int(digits or 0)


def vendor_resolution(info: ModelInfo, wanted: str) -> str:
    """The model's smallest resolution at least as fine as the output's, else its finest:
    asking a 1080p-only model for a 720p cut is fine, the clip is scaled down."""
    if wanted in info.resolutions:
        return wanted
    offered = sorted(info.resolutions, key=_lines)
    return next((r for r in offered if _lines(r) >= _lines(wanted)), offered[-1])


def _aspect_of(board: Storyboard, w: int, h: int) -> str:
    if "x" not in board.output.size:
        return board.output.aspect_ratio
    g = math.gcd(w, h)
    return f"{w // g}:{h // g}"


def _transition(t: Any) -> Transition:
    return t if isinstance(t, Transition) else Transition(kind=t, duration=0.0 if t == "cut" else 0.5)


def _image(ref: str | None, source: Path, where: str, issues: list[tuple[str, str]]
           ) -> tuple[ImageInput | None, str | None]:
    if not ref:
        return None, None
    # inside the storyboard's tree, a real image under the size cap, read once
    return reference_image(ref, source, where, issues)


def _option(board: Storyboard, provider: str, model: str | None, where: str,
            issues: list[tuple[str, str]], today: dt.date | None) -> Option | None:
    catalog = load_catalog()
    cat = catalog.get(provider)
    if cat is None:
        known = ", ".join(sorted(set(catalog) | set(BUILTIN)))
        issues.append((where, f"'{provider}' is not a provider (known: {known})"))
        return None
    key = model or cat.default_model
    info = cat.models.get(key)
    if info is None:
        by_vendor_id = [k for k, m in cat.models.items() if key in (m.vendor_model, m.vendor_model_image)]
        if by_vendor_id:
            key, info = by_vendor_id[0], cat.models[by_vendor_id[0]]
    if info is None:
        issues.append((where, f"'{key}' is not a model of provider '{provider}' "
                              f"(known: {', '.join(sorted(cat.models))})"))
        return None
    if info.is_retired(today):
        repl = f"; use {info.replacement} instead" if info.replacement else ""
        issues.append((where, f"{cat.vendor} model '{key}' was retired on "
                              f"{info.retired.isoformat() if info.retired else '?'}{repl}"))
        return None
    if provider not in BUILTIN:
        issues.append((where, f"provider '{provider}' has no adapter in this version"))
        return None
    return Option(provider, key, info, 0.0)


def _check_option(opt: Option, duration: float, aspect: str, resolution: str,
                  image: ImageInput | None, dur_place: str, where: str, img_place: str,
                  issues: list[tuple[str, str]], chained: bool = False) -> None:
    info = opt.info
    if not info.accepts_duration(duration):
        issues.append((dur_place, f"{duration:g} s is not accepted by {opt.label} "
                                  f"(allowed: {info.duration_choices()})"))
    if aspect not in info.aspect_ratios and opt.provider != "local":
        issues.append(("output.aspect_ratio", f"{aspect} is not offered by {opt.label} (used at "
                       f"{where}; allowed: {', '.join(info.aspect_ratios)})"))
    if image is not None and "image" not in info.inputs:
        issues.append((img_place, f"{opt.label} takes no reference image (text-to-video only)"))
    if image is None and not chained and "text" not in info.inputs:
        issues.append((where, f"{opt.label} needs a reference image (image-to-video only)"))


def _check_uploads(board: Storyboard, shots: list[ShotPlan],
                   issues: list[tuple[str, str]]) -> None:
    """A storyboard's own store only inside the operator's allowed prefixes; a local image
    for a URL-only vendor only with a store."""
    own = board.uploads.url if board.uploads else None
    if own and (why := check_storyboard_store(own)):
        issues.append(("uploads.url", why))
    store = store_url(own)
    for shot in shots:
        for opt in shot.options:
            first = shot.first_frame(opt) if shot.uses_image(opt) else None
            # a parent's last frame is always a local PNG; so is a local character image
            local = shot.start_from is not None or (first is not None and first.url is None)
            place = "start_from" if shot.start_from else "image" if shot.image else "characters"
            if local and (why := local_image_problem(opt.provider, True, store)):
                issues.append((f"shots[{shot.index}].{place}", f"{opt.label}: {why}"))


def _estimate(board: Storyboard, opt: Option, duration: float, resolution: str, where: str,
              issues: list[tuple[str, str]], params: dict[str, Any] | None = None
              ) -> tuple[float, str, str]:
    """(estimate, resolution, where the price comes from)."""
    override = board.pricing.get(opt.label)
    price = opt.info.price
    source = catalog_source(opt.info)
    if override is not None:
        source = f"storyboard pricing.{opt.label}"
        where = f"pricing.{opt.label}"
        try:
            price = Price.model_validate(override)
        except ValidationError as exc:
            issues.append((where, f"not a price rule: {exc.errors()[0]['msg']} (use per_second, "
                                  "per_video, base/base_seconds/per_extra_second, or "
                                  "per_second_by_resolution)"))
            return 0.0, resolution, source
    # billed units (minimums, steps, frames, audio on or off) as the vendor counts them
    estimate = price.estimate(duration, resolution, {**opt.info.params, **(params or {})})
    if estimate <= 0 and not opt.info.free:
        # a paid model priced at $0 would slip past every cap
        issues.append((where, f"{opt.label} is a paid model but its price comes to "
                              f"${estimate:g} for {duration:g} s at {resolution}; give a "
                              "positive price"))
    return estimate, resolution, source


LIVE_SOURCE = "fal live price (account)"


def catalog_source(info: ModelInfo) -> str:
    """'catalog estimate (as of <date>)': the catalog's price date, else the month its
    price_source says the price was read."""
    as_of = getattr(info, "price_as_of", None)  # a catalog field, where the catalog has it
    if not as_of:
        found = re.search(r"\b(?:read|as of)\s+(\d{4}-\d{2}(?:-\d{2})?)", info.price_source)
        as_of = found.group(1) if found else None
    return f"catalog estimate (as of {as_of})" if as_of else "catalog estimate"


def resolution_factor(price: Price, resolution: str) -> float:
    """How much dearer `resolution` is than the model's cheapest, per the catalog's rule: fal
    prices one unit per endpoint and bills more units at higher resolutions ("proportional
    adjustments for resolution/length", docs.fal.ai/platform-apis/v1/models/pricing)."""
    table = price.per_second_by_resolution or price.per_video_by_resolution
    if not table:
        return 1.0
    cheapest = min(table.values())
    rate = table.get(resolution, max(table.values()))
    return rate / cheapest if cheapest > 0 else 1.0


def live_estimate(shot: ShotPlan, opt: Option, price: UnitPrice) -> float | None:
    """What one take of `shot` costs on `opt` at the account's unit price, or None when the
    unit is not one a clip's length turns into a count (megapixels, GPU seconds ...)."""
    units = units_per_shot(price.unit, shot.duration)
    if units is None:
        return None
    return round(units * resolution_factor(opt.info.price, opt.resolution) * price.unit_price, 6)


def with_unit_prices(plan: Plan, prices: dict[str, UnitPrice], note: str | None = None) -> Plan:
    """The plan with every fal option priced at the account's live unit price where there is
    one (a storyboard's own `pricing:` entry still wins); the others keep the catalog's
    estimate, and `price_note` says why."""
    problems = [note] if note else []
    shots = []
    for shot in plan.shots:
        options = []
        for opt in shot.options:
            live = prices.get(shot.endpoint(opt)) if opt.provider == "fal" else None
            if live is not None and not opt.price_source.startswith("storyboard"):
                estimate = live_estimate(shot, opt, live)
                if estimate is not None and estimate > 0:
                    # a live vendor price needs no margin: it is the vendor's own
                    opt = replace(opt, estimate_usd=estimate, price_source=LIVE_SOURCE,
                                  margin=0.0)
                else:
                    problems.append(f"{live.endpoint_id} bills per {live.unit!r}, which a "
                                    "clip's length does not count; catalog estimate used")
            options.append(opt)
        shots.append(replace(shot, options=options))
    return replace(plan, shots=shots, unit_prices=dict(prices),
                   price_note="; ".join(dict.fromkeys(problems)) or None)


def make_plan(spec: str | Path, variables: Mapping[str, Any] | None = None,
              budget: float | None = None) -> Plan:
    """Load a storyboard file, apply the --budget override, and plan it (raises SpecError with
    every problem's place). Light: no media, money or Prefect imports."""
    from flows.storyboard.loading import load_storyboard

    board = load_storyboard(spec, dict(variables or {}))
    if budget is not None:
        board = board.model_copy(update={"budget": board.budget.model_copy(
            update={"max_usd": budget})})
    return build_plan(board, spec)
