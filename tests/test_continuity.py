"""Continuity: `start_from` chains and `characters:` against the vendor emulator (fal), in
process (no Prefect: the flow's scheduling is flows/run/chain.start_shots, used here as the
flow uses it; specs/continuity.yaml runs through the flow in test_e2e_local)."""

from __future__ import annotations

import asyncio
import base64
import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.cli.commands import dispatch
from flows.media.ffmpeg_exec import ffmpeg_exe
from flows.money.status import GOOD
from flows.run import lock as runlock
from flows.run.chain import start_shots
from flows.run.context import ShotResult
from flows.run.session import RunOptions, close_window, new_context, open_journal
from flows.run.shot import render_shot
from flows.storyboard.keys import env_key
from flows.storyboard.plan import make_plan
from providers.http import new_client
from tests.storyboards import cost_rows

PARENT_EP = "fal-ai/kling-video/v2.5-turbo/pro/text-to-video"
CHILD_EP = "fal-ai/kling-video/v2.5-turbo/pro/image-to-video"


def _png(path: Path, colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", (64, 36), colour).save(path)
    return path


def _spec(tmp: Path, shots: str, extra: str = "") -> Path:
    spec = tmp / "board.yaml"
    spec.write_text(f"""
title: chain
output: {{size: 360p}}
defaults: {{provider: fal, model: kling-2.5-turbo-pro, duration: 5, retries: 0}}
{extra}
shots:
{shots}
""")
    return spec


async def _render(spec: Path, out: Path) -> dict[str, ShotResult]:
    """The flow's shot work without Prefect: every shot started as the flow starts them."""
    plan = make_plan(spec)
    with runlock.own(out):
        journal = open_journal(out)
        try:
            async with new_client() as client:
                keys = {p: env_key(p) for p in plan.providers_used()}
                ctx = new_context(plan, RunOptions(out=out), out, journal, client, keys,
                                  log=lambda _: None)
                futures = start_shots(ctx, plan.shots, render_shot)
                results = await asyncio.gather(*futures.values())
                await asyncio.to_thread(close_window, ctx.ledger)
            from flows.money.report import rows_from_journal, write_cost_csv

            write_cost_csv(rows_from_journal(journal, {s.shot_id: s.duration
                                                       for s in plan.shots}), out / "cost.csv")
        finally:
            journal.close()
    return {r.shot_id: r for r in results}


def _last_frame(clip: Path) -> np.ndarray:
    """Every frame decoded by ffmpeg (not the product's code), the last one kept."""
    probe = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(clip), "-f", "rawvideo",
                            "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    from flows.media.probe import probe as probe_clip

    info = probe_clip(clip)
    frames = np.frombuffer(probe, np.uint8).reshape(-1, info.height, info.width, 3)
    return frames[-1]


def _image_of(job) -> np.ndarray:
    uri = job.request["image_url"]
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def _raw_clip(out: Path, shot_id: str) -> Path:
    from flows.money.journal import Journal

    with Journal(out / "journal.sqlite") as j:
        rows = [a for a in j.attempts(shot_id) if a.status in GOOD]
    return Path(rows[-1].clip_path)


@pytest.fixture
def fal(emu_env, tmp_path, monkeypatch):
    monkeypatch.setenv("STORYREEL_CACHE_DIR", str(tmp_path / "cache"))
    emu_env.configure(latency=0.3, distinct_clips=True)
    return emu_env


def _jobs(emu, endpoint: str) -> list:
    return [j for j in emu.jobs("fal") if j.data.get("path", "").endswith(endpoint)]


async def test_a_chained_shot_is_sent_after_its_parent_with_its_last_frame(fal, tmp_path):
    spec = _spec(tmp_path, """
  - {id: a, prompt: "a harbour at dawn"}
  - {id: b, prompt: "the boat leaves", start_from: a}
  - {id: c, prompt: "a gull"}
""")
    out = tmp_path / "out"
    results = await _render(spec, out)
    assert all(r.status == "done" for r in results.values()), results
    parents, children = _jobs(fal, PARENT_EP), _jobs(fal, CHILD_EP)
    assert len(parents) == 2 and len(children) == 1  # a and c text-to-video, b image-to-video
    a = next(j for j in parents if j.request["prompt"].startswith("a harbour"))
    c = next(j for j in parents if j.request["prompt"].startswith("a gull"))
    b = children[0]
    assert "image_url" not in a.request and "image_url" not in c.request
    # independent shots start together; b only once a's job had finished at the vendor
    assert abs(c.created - a.created) < 0.25
    assert b.created >= a.created + 0.3
    # what the vendor received is the last frame of a's download, at the download's own size
    sent = _image_of(b)
    last = _last_frame(_raw_clip(out, "a"))
    assert sent.shape == last.shape == (180, 320, 3)  # the emulator's size, not the 640x360 cut
    assert np.array_equal(sent, last)
    # ... and not the first frame of it (the clip moves)
    assert not np.array_equal(sent, _image_of_first(_raw_clip(out, "a")))


def _image_of_first(clip: Path) -> np.ndarray:
    data = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(clip), "-frames:v", "1",
                           "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True,
                          check=True).stdout
    return np.frombuffer(data, np.uint8).reshape(180, 320, 3)


async def test_editing_a_parent_regenerates_its_dependent_and_only_it(fal, tmp_path):
    shots = """
  - {id: a, prompt: "PARENT"}
  - {id: b, prompt: "the boat leaves", start_from: a}
  - {id: c, prompt: "a gull"}
"""
    out = tmp_path / "out"
    await _render(_spec(tmp_path, shots.replace("PARENT", "a harbour at dawn")), out)
    first_b = _image_of(_jobs(fal, CHILD_EP)[0])
    assert len(fal.jobs("fal")) == 3
    # unchanged: nothing is sent again
    await _render(_spec(tmp_path, shots.replace("PARENT", "a harbour at dawn")), out)
    assert len(fal.jobs("fal")) == 3
    # the parent's prompt changes: a and b are made again, c is not
    await _render(_spec(tmp_path, shots.replace("PARENT", "a harbour at night")), out)
    jobs = fal.jobs("fal")[3:]
    assert sorted(j.request["prompt"] for j in jobs) == ["a harbour at night", "the boat leaves"]
    new_b = _image_of(_jobs(fal, CHILD_EP)[-1])
    assert np.array_equal(new_b, _last_frame(_raw_clip(out, "a")))
    assert not np.array_equal(new_b, first_b)


async def test_a_failed_parent_leaves_text_by_default(fal, tmp_path):
    fal.inject("fal", "job", "fail")
    spec = _spec(tmp_path, """
  - {id: a, prompt: "a harbour at dawn"}
  - {id: b, prompt: "the boat leaves", start_from: a}
""")
    out = tmp_path / "out"
    results = await _render(spec, out)
    assert results["a"].status == "failed" and results["b"].status == "done"
    texts = [j for j in _jobs(fal, PARENT_EP) if j.request["prompt"] == "the boat leaves"]
    assert len(texts) == 1 and "image_url" not in texts[0].request and not _jobs(fal, CHILD_EP)
    row = next(r for r in cost_rows(out) if r["shot_id"] == "b")
    assert "a has no clip" in row["failure_reason"] and "on_parent_failed: text" in \
        row["failure_reason"]


async def test_a_failed_parent_with_skip_sends_nothing(fal, tmp_path):
    fal.inject("fal", "job", "fail")
    spec = _spec(tmp_path, """
  - {id: a, prompt: "a harbour at dawn"}
  - {id: b, prompt: "the boat leaves", start_from: a, on_parent_failed: skip}
""")
    out = tmp_path / "out"
    results = await _render(spec, out)
    assert results["b"].status == "skipped" and "on_parent_failed: skip" in results["b"].reason
    assert len(fal.jobs("fal")) == 1
    row = next(r for r in cost_rows(out) if r["shot_id"] == "b")
    assert row["status"] == "skipped" and "parent" in row["failure_reason"]


async def test_a_character_sends_its_image_and_description(fal, tmp_path):
    _png(tmp_path / "keeper.png", (200, 30, 30))
    spec = _spec(tmp_path, """
  - {id: a, prompt: "she climbs the stairs", characters: [keeper]}
""", extra="""characters:
  keeper: {image: keeper.png, description: "a grey-haired woman in a yellow oilskin"}
""")
    await _render(spec, tmp_path / "out")
    (job,) = fal.jobs("fal")
    assert "a grey-haired woman in a yellow oilskin" in job.request["prompt"]
    assert job.data["path"].endswith(CHILD_EP)  # kling takes no reference: the first frame
    sent = _image_of(job)
    assert sent.shape == (36, 64, 3) and (sent == (200, 30, 30)).all()


def test_a_reference_model_gets_the_character_as_a_reference(tmp_path):
    from dataclasses import replace

    _png(tmp_path / "keeper.png", (10, 200, 30))
    plan = make_plan(_spec(tmp_path, """
  - {id: a, prompt: "she climbs", characters: [keeper]}
""", extra="characters:\n  keeper: {image: keeper.png}\n"))
    shot = plan.shots[0]
    opt = shot.primary
    ref_opt = replace(opt, info=opt.info.model_copy(update={"inputs": ["text", "image",
                                                                          "reference"]}))
    req = shot.request(ref_opt, plan)
    assert req.image is None and len(req.references) == 1
    assert req.references[0].read()[0] == (tmp_path / "keeper.png").read_bytes()
    assert shot.request(opt, plan).references == ()
    # the character's image is part of the clip key
    from flows.run.uptodate import plan_clip_key

    before = plan_clip_key(plan, shot, opt)
    _png(tmp_path / "keeper.png", (10, 200, 31))
    again = make_plan(tmp_path / "board.yaml")
    assert plan_clip_key(again, again.shots[0], again.shots[0].primary) != before


@pytest.mark.parametrize(("shots", "place", "says"), [
    ("  - {id: a, prompt: x, start_from: b}\n  - {id: b, prompt: y, start_from: a}\n",
     "shots[0].start_from", "a cycle: a -> b -> a"),
    ("  - {id: a, prompt: x}\n  - {id: b, prompt: y, start_from: nope}\n",
     "shots[1].start_from", "'nope' is not a shot id (accepted: the id of another shot: a, b)"),
    ("  - {id: a, prompt: x, start_from: a}\n", "shots[0].start_from", "this shot itself"),
    ("  - {id: a, prompt: x, characters: [bob]}\n", "shots[0].characters[0]",
     "'bob' is not a character"),
])
def test_spec_errors_name_their_place(tmp_path, capsys, shots, place, says):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"title: t\ndefaults: {{provider: local}}\nshots:\n{shots}")
    assert dispatch(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert place in err and says in err


def test_a_text_only_model_in_a_chain_is_a_plan_error(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("""title: t
defaults: {provider: local}
shots:
  - {id: a, prompt: x}
  - {id: b, prompt: y, start_from: a, provider: huggingface, model: hunyuan-video}
""")
    assert dispatch(["plan", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "shots[1].model" in err and "takes no image" in err


def test_plan_shows_the_chains_and_what_a_new_parent_costs(emu_env, tmp_path, capsys):
    spec = _spec(tmp_path, """
  - {id: a, prompt: x}
  - {id: b, prompt: y, start_from: a}
  - {id: c, prompt: z, start_from: b, on_parent_failed: skip}
""")
    assert dispatch(["plan", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "a -> b -> c" in out
    # the cost of b and c as the plan's own table prints them, summed
    rows = {line.split()[0]: float(line.split("$")[1].split()[0]) for line in out.splitlines()
            if line[:2] in ("b ", "c ")}
    assert rows["b"] > 0 and rows["c"] > 0
    assert (f"a new clip of a (an edit, a re-pick) regenerates b, c: "
            f"${rows['b'] + rows['c']:.4f}") in out
    assert "c: if b has no clip: skipped" in out


async def test_re_picking_a_parent_makes_its_dependent_stale_until_the_next_run(tmp_path,
                                                                              monkeypatch):
    from flows.money.journal import Journal
    from flows.review.picks import load_review, pick
    from flows.run.chain import stale

    monkeypatch.setenv("STORYREEL_CACHE_DIR", str(tmp_path / "cache"))
    spec = tmp_path / "local.yaml"
    spec.write_text("""title: t
output: {size: 360p}
defaults: {provider: local, duration: 1}
shots:
  - {id: a, prompt: "a harbour", takes: 2}
  - {id: b, prompt: "the boat", start_from: a}
  - {id: c, prompt: "a gull"}
""")
    out = tmp_path / "out"
    await _render(spec, out)
    plan = make_plan(spec)
    with Journal(out / "journal.sqlite") as j:
        assert stale(plan, j, load_review(out)) == []
        pick(out, "a", 2, j.attempts())
        found = stale(plan, j, load_review(out))
        b_rows = len(j.attempts("b"))
    assert [(s.shot_id, s.parent) for s in found] == [("b", "a")]
    await _render(spec, out)  # the next run makes b again, from take 2's last frame
    with Journal(out / "journal.sqlite") as j:
        assert stale(plan, j, load_review(out)) == []
        assert len(j.attempts("b")) == b_rows + 1 and len(j.attempts("c")) == 1
    frame = next((out / "frames").glob("b.from-a.*.png"))
    assert frame.is_file()


def test_a_chained_shot_on_a_reference_model_sends_the_frame_not_the_references(tmp_path):
    """Veo 3.1 takes a first frame or reference images, not both (python-genai): in a chain
    the parent's last frame wins and the character rides on its description."""
    _png(tmp_path / "keeper.png", (10, 200, 30))
    plan = make_plan(_spec(tmp_path, """
  - {id: a, prompt: "she climbs"}
  - {id: b, prompt: "she waves", start_from: a, characters: [keeper], provider: gemini,
     model: veo-3.1, duration: 8}
""", extra="characters:\n  keeper: {image: keeper.png, description: the red-haired keeper}\n"))
    shot = plan.shots[1]
    req = shot.request(shot.primary, plan)
    assert req.references == ()
    assert "the red-haired keeper" in req.prompt
    alone = make_plan(_spec(tmp_path, """
  - {id: b, prompt: "she waves", characters: [keeper], provider: gemini, model: veo-3.1,
     duration: 8}
""", extra="characters:\n  keeper: {image: keeper.png}\n"))
    req = alone.shots[0].request(alone.shots[0].primary, alone)
    assert req.image is None and len(req.references) == 1


def test_a_chain_into_a_url_only_vendor_needs_an_upload_store(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("STORYREEL_UPLOAD_URL", raising=False)
    spec = _spec(tmp_path, """
  - {id: a, prompt: "she climbs"}
  - {id: b, prompt: "she waves", start_from: a, provider: luma, model: ray-2}
""")
    assert dispatch(["plan", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "shots[1].start_from" in err and "STORYREEL_UPLOAD_URL" in err
