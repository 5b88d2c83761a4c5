"""Cost tags: a storyboard's `tags:` and the run's own (`--tag`, the flow's `cost_tags`) reach
every cost.csv row and run.json; editing them never regenerates or re-cuts anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli.commands import main
from flows.money.journal import Journal
from flows.storyboard.spec import Storyboard
from tests.storyboards import cost_rows, write_board

SHOTS = [{"id": "dawn", "prompt": "a lighthouse at dawn", "provider": "local",
          "model": "animatic", "duration": 1},
         {"id": "dusk", "prompt": "the same lighthouse at dusk", "provider": "local",
          "model": "animatic", "duration": 1}]


def attempts(out: Path) -> list[tuple[str, int, str]]:
    with Journal(out / "journal.sqlite") as j:
        return [(a.shot_id, a.attempt, a.status) for a in j.attempts()]


async def test_tags_reach_every_row_and_editing_them_remakes_nothing(
        prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from flows.orchestration.flow import render_storyboard

    monkeypatch.setenv("STORYREEL_CACHE_DIR", str(tmp_path / "cache"))
    board = write_board(tmp_path, SHOTS, tags={"client": "acme", "campaign": "spring"})
    out = tmp_path / "run"
    # a deployment's cost_tags win over the storyboard's for the same name, key by key
    await render_storyboard(storyboard=str(board), out=str(out), cost_tags={"client": "globex"})
    rows = cost_rows(out)
    assert len(rows) >= 2 and {r["tags"] for r in rows} == {"campaign=spring;client=globex"}
    assert json.loads((out / "run.json").read_text())["tags"] == {"client": "globex",
                                                                  "campaign": "spring"}
    made = attempts(out)
    final = (out / "final.mp4").stat().st_mtime_ns

    # new tags in the storyboard and on the command line: up to date, only the reports change
    board = write_board(tmp_path, SHOTS, tags={"client": "initech"})
    assert main(["run", str(board), "--out", str(out), "--tag", "team=promo"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert {r["tags"] for r in cost_rows(out)} == {"client=initech;team=promo"}
    assert json.loads((out / "run.json").read_text())["tags"] == {"client": "initech",
                                                                  "team": "promo"}
    assert attempts(out) == made and (out / "final.mp4").stat().st_mtime_ns == final

    # a flow run of the folder with other tags (a deployment's): no new attempt, no new cut
    await render_storyboard(storyboard=str(board), out=str(out), cost_tags={"client": "umbrella"})
    assert attempts(out) == made and (out / "final.mp4").stat().st_mtime_ns == final
    assert {r["tags"] for r in cost_rows(out)} == {"client=umbrella"}


@pytest.mark.parametrize("tags", [{"client": "a;b"}, {"client": "x=y"}, {"bad key": "v"},
                                  {"client": ""}, {"client": True}])
def test_a_tag_that_would_break_the_column_is_refused(tags: dict) -> None:
    with pytest.raises(ValueError, match="tag"):
        Storyboard.model_validate({"title": "t", "shots": SHOTS, "tags": tags})


def test_a_bad_tag_on_the_command_line_is_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    board = write_board(tmp_path, SHOTS)
    assert main(["run", str(board), "--tag", "client"]) == 2
    assert "--tag" in capsys.readouterr().err
