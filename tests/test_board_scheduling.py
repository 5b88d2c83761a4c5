"""Large boards: Prefect's per-shot bookkeeping stays out of the shots' way.

A shot's task run costs API calls and the server's event ingest (bench/README.md, "Prefect
alone"). Created at the start, 100 of them ran while the vendors' clips were ready to be
fetched, and the first conform started seconds later (bench/README.md, session 7). So a shot's
work (poll, download, conform) runs first and its task run is recorded once the clip is
conformed, with the outcome.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.storyboards import write_board

pytestmark = pytest.mark.e2e


async def test_task_runs_are_recorded_after_their_shots_clips(run, emu_env, prefect_api: str,
                                                            tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    emu_env.configure(latency=1.0)  # the clips are ready a second after the submits
    shots = [{"id": f"s{i}", "prompt": f"board shot {i}", "provider": "fal",
              "model": "kling-2.5-turbo-pro", "duration": 5} for i in range(3)]
    spec = write_board(tmp_path, shots)
    out = tmp_path / "out"
    result, _ = await run(spec, out)
    assert result["ok"], result
    # clips/<index>-<shot>.<format>.mov: when each shot's conformed clip was written
    conformed = {p.name.split(".")[0].split("-", 1)[1]: p.stat().st_mtime
                 for p in (out / "clips").glob("*.mov")}
    assert sorted(conformed) == ["s0", "s1", "s2"], conformed
    async with get_client() as client:
        [flow_run] = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name={"any_": ["board"]}), limit=1,
            sort="START_TIME_DESC")
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": [flow_run.id]}))
    assert sorted(t.name for t in task_runs) == ["s0", "s1", "s2"]
    for t in task_runs:
        clip = conformed[t.name]
        assert t.state is not None and t.state.is_completed(), t.state
        # made (client-side: its expected start) once its shot's clip was conformed, not
        # during the vendor wait; the server's start_time is stamped later by its event ingest
        made = t.expected_start_time
        assert made is not None and made.timestamp() >= clip - 0.05, (t.name, made, clip)
