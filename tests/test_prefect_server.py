"""Production shape, for real: a throw-away PostgreSQL cluster, `prefect server start` on it,
`prefect deploy` from prefect.yaml, and a process worker running two deployment runs at once
against the vendor emulator, sharing one per-vendor limit through the server.

The server is the session's (tests/prefect_server_kit.py), shared with tests/test_many_workers.py.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from flows.media.probe import probe
from tests.pg import missing_postgres, start, stop, tail
from tests.prefect_server_kit import ROOT, Server, client, prefect_cli, wait_for
from tests.storyboards import write_board

pytestmark = pytest.mark.server

POOL = "storyreel-pool"
SHOTS = 3  # per run; two runs, `limits: {fal: 2}`: 4 jobs could be in flight without the GCL


# -- deploy ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
async def deployed(server: Server) -> dict[str, Any]:
    """`prefect --no-prompt deploy --all` from the repository root, as the README says."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    async with client(server) as c:
        await c.create_work_pool(WorkPoolCreate(
            name=POOL, type="process",
            base_job_template=ProcessWorker.get_default_base_job_template()))
    t0 = time.monotonic()
    proc = await asyncio.to_thread(prefect_cli, server, "--no-prompt", "deploy", "--all")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"prefect deploy --all: {time.monotonic() - t0:.1f} s")
    async with client(server) as c:
        found = {d: await c.read_deployment_by_name(f"render-storyboard/{d}")
                 for d in ("daily-recap", "on-demand")}
        found["weekly-cost-report"] = await c.read_deployment_by_name(
            "cost-report/weekly-cost-report")
        return found


async def test_deployments_from_prefect_yaml(server: Server, deployed: dict[str, Any]) -> None:
    daily, demand = deployed["daily-recap"], deployed["on-demand"]
    for d in (daily, demand):
        assert d.entrypoint == "flows.orchestration.flow.render_storyboard"
        assert d.work_pool_name == POOL
        # the pull step was resolved at deploy time to this checkout
        assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                                 {"directory": str(ROOT)}}]
        assert set(d.parameters) <= {"storyboard", "vars", "budget", "out"}
    assert daily.parameters["storyboard"] == "specs/demo.yaml"
    [schedule] = daily.schedules
    assert schedule.schedule.cron == "0 6 * * *" and schedule.active
    assert schedule.parameters == {"date_var": "day", "vars": {}}
    assert not demand.schedules
    weekly = deployed["weekly-cost-report"]
    assert weekly.entrypoint == "flows.orchestration.report_flow.cost_report"
    assert weekly.work_pool_name == POOL
    assert [s.schedule.cron for s in weekly.schedules] == ["0 7 * * 1"]

    # the server's scheduler turns the cron into upcoming runs carrying the schedule's
    # parameters (SQLAlchemy 2.1 broke exactly this: see pyproject.toml)
    from prefect.client.schemas.filters import DeploymentFilter, FlowRunFilter
    from prefect.client.schemas.objects import StateType

    async with client(server) as c:
        async def upcoming() -> list[Any]:
            return await c.read_flow_runs(
                deployment_filter=DeploymentFilter(id={"any_": [daily.id]}),
                flow_run_filter=FlowRunFilter(state={"type": {"any_": [StateType.SCHEDULED]}}))

        runs = await wait_for(upcoming, 60, "the scheduler to create the daily runs")
        for run in runs:
            assert run.parameters["date_var"] == "day"
            assert run.expected_start_time.hour == 6 and run.expected_start_time.minute == 0
        # the worker below must not pick one up (at 05:59:5x UTC it would): pause and clear
        await c.update_deployment_schedule(daily.id, schedule.id, active=False)
        for run in await upcoming():
            await c.delete_flow_run(run.id)


# -- two runs at once through a process worker -----------------------------------------------

def reel(folder: Path, name: str, shots: int) -> Path:
    return write_board(
        folder, [{"id": f"{name[-1]}{i}", "prompt": f"{name} shot {i}"} for i in range(shots)],
        name=f"{name}.yaml", title=f"{name} ${{day}}", vars={"day": "someday"},
        defaults={"provider": "fal", "model": "kling-3-pro", "duration": 3},
        limits={"fal": 2}, budget={"max_usd": 5})


async def test_worker_runs_two_deployment_runs_sharing_a_vendor_limit(
        server: Server, deployed: dict[str, Any], emu: Any, tmp_path: Path) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter
    from prefect.client.schemas.objects import StateType

    emu.configure(latency=1.5)
    boards = {n: reel(tmp_path / "boards", n, SHOTS) for n in ("reel-a", "reel-b")}
    outs = {n: tmp_path / "out" / n for n in boards}
    demand = deployed["on-demand"]
    async with client(server) as c:
        runs = {n: await c.create_flow_run_from_deployment(
                    demand.id, parameters={"storyboard": str(boards[n]), "out": str(outs[n]),
                                           "date_var": "day"})
                for n in boards}

    # the worker starts in an unrelated folder: the deployment's pull step finds the code
    env = {**server.env, **emu.env(), "STORYREEL_POLL_FIRST_S": "0.2",
           "STORYREEL_POLL_MAX_S": "0.5", "STORYREEL_CACHE_DIR": str(tmp_path / "cache"),
           # the boards are in a temporary folder, outside the project a deployment may read
           "STORYREEL_ALLOW_OUTSIDE_PROJECT": "1"}
    log = tmp_path / "worker.log"
    t0 = time.monotonic()
    worker = start([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL,
                    "--run-once"], log, env=env, cwd=tmp_path)
    try:
        await asyncio.to_thread(worker.wait, 240)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker did not finish:\n{tail(log)}")
    finally:
        stop(worker)
    print(f"worker --run-once, two flow runs: {time.monotonic() - t0:.1f} s")

    fal = emu.stats("fal")
    assert fal["submits"] == 2 * SHOTS, tail(log)
    # the point: both runs at once never had more than the storyboard's 2 fal jobs in flight
    assert fal["max_in_flight"] <= 2, fal
    spans = {n: _job_span(emu, n) for n in boards}
    assert spans["reel-a"][0] < spans["reel-b"][1] and spans["reel-b"][0] < spans["reel-a"][1], (
        f"the two runs did not overlap, so the limit was not tested: {spans}")

    async with client(server) as c:
        for name, ref in runs.items():
            run = await c.read_flow_run(ref.id)
            assert run.state.type == StateType.COMPLETED, (run.state, tail(log))
            assert run.name == name  # named after the storyboard file
            day = run.expected_start_time.astimezone(dt.UTC).date().isoformat()
            title = f"{name} {day}"  # date_var filled ${day} with the scheduled date
            key = title.replace(" ", "-")

            async def tasks(run_id: Any = ref.id) -> list[Any]:
                found = await c.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run_id]}))
                done = [t for t in found if t.state and t.state.type == StateType.COMPLETED]
                return found if len(done) == SHOTS else []

            task_runs = await wait_for(tasks, 30, f"{name}'s task runs to be recorded")
            assert sorted(t.name for t in task_runs) == [f"{name[-1]}{i}" for i in range(SHOTS)]
            assert all("provider:fal" in t.tags for t in task_runs)

            artifacts = {a.key: a for a in await c.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id={"any_": [ref.id]}))}
            assert set(artifacts) == {f"progress-{key}", f"cost-report-{key}", f"summary-{key}"}
            assert float(artifacts[f"progress-{key}"].data) == 100.0
            assert artifacts[f"progress-{key}"].type == "progress"
            table = artifacts[f"cost-report-{key}"]
            assert table.type == "table" and "kling-3-pro" in str(table.data)
            summary = artifacts[f"summary-{key}"]
            assert summary.type == "markdown" and f"# {title}" in summary.data
            assert str(outs[name] / "final.mp4") in summary.data

        limit = await c.read_global_concurrency_limit_by_name("vendor:fal")
        assert limit.limit == 2 and limit.active_slots == 0  # every slot was given back

    for name, out in outs.items():
        info = probe(out / "final.mp4")
        assert (info.width, info.height) == (320, 180) and info.video_codec == "h264"
        assert abs(info.duration - 3.0 * SHOTS) < 0.2, info
        with open(out / "cost.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert sorted(r["shot_id"] for r in rows) == [f"{name[-1]}{i}" for i in range(SHOTS)]
        assert all(r["status"] == "done" and r["provider"] == "fal" for r in rows)


def _job_span(emu: Any, name: str) -> tuple[float, float]:
    """When a run's jobs were at the vendor: (first submit, last finish), monotonic seconds."""
    jobs = [j for j in emu.jobs("fal") if name in str(j.request)]
    assert len(jobs) == SHOTS
    return min(j.created for j in jobs), max(j.created + j.ready_after for j in jobs)


async def test_server_stores_in_postgresql(server: Server, deployed: dict[str, Any]) -> None:
    if not server.database_url:  # skips on a machine without PostgreSQL, fails in CI
        missing_postgres("PostgreSQL binaries (initdb, postgres) not installed: the server used SQLite")
    import asyncpg

    conn = await asyncpg.connect(server.database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        count = await conn.fetchval("select count(*) from deployment")
    finally:
        await conn.close()
    assert count == len(deployed) == 3  # the two render deployments and the weekly report
