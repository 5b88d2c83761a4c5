"""Storyboard loading, variables and planning: every bad input names its place."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli.commands import main
from flows.storyboard.loading import parse_storyboard
from flows.storyboard.plan import build_plan, make_plan
from providers.errors import SpecError

BASE = """\
version: 1
title: t
defaults: {provider: local, duration: 3}
shots:
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "board.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def errors_of(tmp_path: Path, text: str, **kw) -> str:
    with pytest.raises(SpecError) as info:
        make_plan(write(tmp_path, text), **kw)
    return str(info.value)


def test_valid_board_plans(tmp_path: Path) -> None:
    plan = make_plan(write(tmp_path, BASE + "  - {id: a, prompt: hello}\n  - {id: b, prompt: x, duration: 2}\n"))  # noqa: E501
    assert [s.shot_id for s in plan.shots] == ["a", "b"]
    assert [s.duration for s in plan.shots] == [3, 2]
    assert (plan.width, plan.height, plan.fps) == (1280, 720, 24)
    assert plan.total_estimate == 0.0


@pytest.mark.parametrize("text, expected", [
    (BASE + "  - {id: a, prompt: x, durration: 3}\n", "shots[0].durration (line 5): unknown field 'durration'"),  # noqa: E501
    (BASE + "  - {id: a, prompt: x, duration: fast}\n", "shots[0].duration (line 5): Input should be a valid number"),  # noqa: E501
    (BASE + "  - {id: a}\n", "shots[0].prompt (line 5): required field is missing"),
    (BASE + "  - {id: a, prompt: '   '}\n", "shots[0].prompt (line 5): prompt is empty"),
    (BASE + "  - {id: a, prompt: x, duration: 0}\n", "shots[0].duration (line 5): Input should be greater than 0"),  # noqa: E501
    (BASE + "  - {id: a, prompt: x, duration: 900}\n", "shots[0].duration (line 5): Input should be less than or equal to 600"),  # noqa: E501
    (BASE + "  - {id: a, prompt: x}\n  - {id: a, prompt: y}\n", "shots[1].id: duplicate id 'a' (also shots[0])"),  # noqa: E501
    (BASE + "  - {id: ../evil, prompt: x}\n", "shots[0].id (line 5): '../evil' is not a safe file name"),
    (BASE + "  - {id: a, prompt: x, image: missing.png}\n", "shots[0].image: file not found:"),
    (BASE + "  - {id: a, prompt: x, provider: nope}\n", "shots[0].provider: 'nope' is not a provider (known:"),  # noqa: E501
    (BASE + "  - {id: a, prompt: x, model: kling-9}\n", "shots[0].model: 'kling-9' is not a model of provider 'local' (known: animatic)"),  # noqa: E501
    (BASE + "  - {id: a, prompt: 'hi ${who}'}\n", "shots[0].prompt (line 5): unknown variable ${who}"),
    (BASE + "  - {id: a, prompt: x, provider: openai, model: sora-2}\n",
     "shots[0].model: OpenAI's Sora API model 'sora-2' was retired on 2026-09-24"),
    ("version: 1\ntitle: t\nshots:\n  - {id: a, prompt: x\n", "line 5, column 1: malformed YAML"),
    ("version: 1\ntitle: t\nshots: []\n", "shots (line 3): List should have at least 1 item"),
    ("title: t\noutput: {size: 1281x720}\nshots: [{id: a, prompt: x}]\n", "output.size (line 2): '1281x720': width and height must be even"),  # noqa: E501
])
def test_bad_input_names_its_place(tmp_path: Path, text: str, expected: str) -> None:
    message = errors_of(tmp_path, text)
    assert expected in message, message
    assert message.startswith(str(tmp_path / "board.yaml"))


def test_variables_substitute_and_override(tmp_path: Path) -> None:
    text = BASE.replace("title: t", "title: 'Recap ${date}'") + \
        "vars: {date: monday}\n" + "  - {id: a, prompt: 'news of ${date}, $$5'}\n"
    text = text.replace("vars: {date: monday}\n  - ", "  - ") + "vars: {date: monday}\n"
    plan = make_plan(write(tmp_path, text))
    assert plan.storyboard.title == "Recap monday"
    assert plan.shots[0].prompt == "news of monday, $5"
    plan = make_plan(write(tmp_path, text), {"date": "2026-11-22"})
    assert plan.shots[0].prompt == "news of 2026-11-22, $5"


def test_style_seed_and_defaults() -> None:
    board = parse_storyboard(BASE.replace("duration: 3}", "duration: 3, style: noir, seed: 5}")
                             + "  - {id: a, prompt: 'a cat'}\n  - {id: b, prompt: dog, seed: 9}\n")
    plan = build_plan(board, "x.yaml")
    assert plan.shots[0].prompt == "a cat, noir"
    assert [s.seed for s in plan.shots] == [5, 9]


def test_default_seed_is_stable_per_shot() -> None:
    board = parse_storyboard(BASE + "  - {id: a, prompt: x}\n  - {id: b, prompt: x}\n")
    one, two = build_plan(board, "x.yaml"), build_plan(board, "x.yaml")
    assert [s.seed for s in one.shots] == [s.seed for s in two.shots]
    assert one.shots[0].seed != one.shots[1].seed


def test_output_presets() -> None:
    board = parse_storyboard("title: t\noutput: {size: 1080p, aspect_ratio: '9:16', fps: 30}\n"
                             "shots: [{id: a, prompt: x}]\n")
    assert board.dimensions() == (1080, 1920)
    plan = build_plan(board, "x.yaml")
    assert (plan.aspect_ratio, plan.resolution) == ("9:16", "1080p")


def test_cli_exit_code_2_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, BASE + "  - {id: a, prompt: x, duration: -1}\n")
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "shots[0].duration (line 5): Input should be greater than 0" in err
    assert "Traceback" not in err


def test_cli_plan_over_budget_exits_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write(tmp_path, BASE.replace("title: t", "title: t\npricing: {'local:animatic': {per_second: 1}}")
                 + "  - {id: a, prompt: x}\n")
    assert main(["plan", str(spec), "--budget", "2"]) == 1
    captured = capsys.readouterr()
    assert "$3.00" in captured.err and "exceeds budget.max_usd $2.00" in captured.err
    assert main(["plan", str(spec), "--budget", "3"]) == 0


def test_every_example_spec_validates() -> None:
    for spec in sorted(Path(__file__).parent.parent.joinpath("specs").glob("*.yaml")):
        make_plan(spec)


KEY_VARS = ["FAL_KEY", "REPLICATE_API_TOKEN", "RUNWAYML_API_SECRET", "LUMAAI_API_KEY", "HF_TOKEN",
            "PERF_API_KEY", "NANOGPT_API_KEY", "VIDEOGENAPI_API_KEY", "RUNWARE_API_KEY",
            "GEMINI_API_KEY"]


def test_missing_key_is_refused_before_anything_runs(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)
    spec = Path(__file__).parent.parent / "specs" / "vendors-demo.yaml"
    assert main(["plan", str(spec)]) == 2
    err = capsys.readouterr().err
    for var in KEY_VARS:
        assert f"set {var}" in err
    # run refuses the same way, before Prefect or any vendor is touched
    assert main(["run", str(spec), "--out", "/nonexistent/never-created"]) == 2
    assert "no API key for provider 'fal': set FAL_KEY" in capsys.readouterr().err
    assert not Path("/nonexistent/never-created").exists()


def test_providers_lists_the_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["providers", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"fal", "replicate", "runway", "luma", "huggingface", "perf", "nanogpt",
            "videogenapi", "runware", "gemini", "local", "openai"} <= set(data)
    assert data["openai"]["models"]["sora-2"]["retired"] == "2026-09-24"
    assert main(["providers"]) == 0
    out = capsys.readouterr().out
    assert "FAL_KEY" in out and "RETIRED 2026-09-24" in out


def test_schema_is_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["additionalProperties"] is False and "shots" in schema["required"]
