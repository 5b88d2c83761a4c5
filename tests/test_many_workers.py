"""Many workers, one budget, no double payment, with real parts: a Prefect server on the
session's PostgreSQL cluster, two `prefect worker start` processes on one process pool, RUNS
flow runs of a two-shot fal storyboard triggered at once, one shared daily spend window
(STORYREEL_LEDGER_URL) and the journals and run leases (STORYREEL_DB_URL) in one database,
outputs to an S3-compatible store (moto's server on loopback, `out=s3://...`), each worker with
its own local scratch (STORYREEL_HOME), as two machines would have.

Half the runs go to one worker (its own work queue of the pool), half to the other. While
every shot is at the (emulated) vendor, the first worker dies with SIGKILL, its flow-run
processes with it, as when a machine or container is lost. Its runs are triggered again with
the same `out` (on the other worker's queue), take over once their leases lapse
(STORYREEL_LEASE_S=3 here) and poll the jobs their journals say are at the vendor. Then: every
run has its cut and report in the store, the emulator saw each shot submitted once, and the window's spent
equals what the emulator charged.

RUNS is 4, not the issue's 20: each flow run is a Python process that imports Prefect and the
media stack (several seconds of CPU), and on 2 shared cores 8 runs already took ~160 s end to
end (~86 s until all 16 shots were at the vendor), 6 runs 92 s of a 9.5-minute suite; 20 would
take the suite past its budget. Four still give each worker two runs in flight at once, and
the survivor takes over two (timings are printed). STORYREEL_TEST_RUNS sets another count.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flows.media.probe import probe
from flows.money.journal_pg import open_db
from tests.pg import fresh_pg_database, start, stop, tail
from tests.prefect_server_kit import Server, client, wait_for
from tests.s3_kit import BUCKET
from tests.storyboards import charged, cost_rows, total, write_board

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parent.parent
POOL = "many-workers"
RUNS = int(os.environ.get("STORYREEL_TEST_RUNS", "4"))  # even: half per worker
SHOTS = 2
LATENCY = 600.0  # jobs run until the test advances the emulator's clock


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (the worker's flow runs may start their own sessions, so a
    process-group kill would miss them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _flow_run_of(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"PREFECT__FLOW_RUN_ID="):
            return item.split(b"=", 1)[1].decode()
    return None


def _sql(url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, args).fetchall()


async def test_a_killed_worker_s_runs_are_finished_by_another_paying_once(
        server: Server, emu: Any, tmp_path: Path, pg_server: str, s3: Any) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.objects import StateType
    from prefect.workers.process import ProcessWorker

    db = fresh_pg_database(pg_server, "storyreel")  # the spend window, journals and leases
    open_db(db).close()  # its tables, for the queries below before the first run makes them
    emu.configure(latency=LATENCY)
    boards, outs = {}, {}
    for i in range(RUNS):
        name = f"reel{i:02d}"
        boards[name] = write_board(
            tmp_path / "boards", [{"id": f"s{j}", "prompt": f"{name} shot {j}"}
                                  for j in range(SHOTS)],
            name=f"{name}.yaml", title=name,
            defaults={"provider": "fal", "model": "kling-3-pro", "duration": 3, "retries": 0},
            budget={"max_usd": 5, "window": {"scope": "many", "daily_usd": 100}})
        outs[name] = f"s3://{BUCKET}/many/{name}"

    async with client(server) as c:
        await c.create_work_pool(WorkPoolCreate(
            name=POOL, type="process",
            base_job_template=ProcessWorker.get_default_base_job_template()))
        await c.create_work_queue(name="doomed", work_pool_name=POOL)
        flow_id = await c.create_flow_from_name("render-storyboard")
        deployment = await c.create_deployment(
            flow_id, "many", work_pool_name=POOL, path=str(ROOT),
            entrypoint="flows/orchestration/flow.py:render_storyboard",
            pull_steps=[{"prefect.deployments.steps.set_working_directory":
                         {"directory": str(ROOT)}}],
            enforce_parameter_schema=False)

    env = {**server.env, **emu.env(), "STORYREEL_POLL_FIRST_S": "0.2",
           "STORYREEL_POLL_MAX_S": "0.5", "STORYREEL_CACHE_DIR": str(tmp_path / "cache"),
           "STORYREEL_ALLOW_OUTSIDE_PROJECT": "1", "STORYREEL_LEDGER_URL": db,
           "STORYREEL_DB_URL": db, "STORYREEL_LEASE_S": "3", "STORYREEL_WINDOW_LEASE_S": "6",
           "PREFECT_WORKER_QUERY_SECONDS": "1", "STORYREEL_ALLOWED_STORES": f"s3://{BUCKET}/many",
           **{k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                         "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}}
    logs: list[Path] = []
    workers: list[Any] = []

    def worker(name: str, queue: str) -> Any:
        log = tmp_path / f"{name}.log"
        logs.append(log)
        home = {"STORYREEL_HOME": str(tmp_path / f"{name}-home")}  # its own disk
        proc = start([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL,
                      "--name", name, "--work-queue", queue], log, env={**env, **home},
                     cwd=tmp_path)
        workers.append(proc)
        return proc

    t0 = time.monotonic()
    try:
        doomed = worker("doomed", "doomed")
        worker("survivor", "default")
        async with client(server) as c:
            first = {n: await c.create_flow_run_from_deployment(
                         deployment, parameters={"storyboard": str(boards[n]),
                                                 "out": str(outs[n])},
                         work_queue_name="doomed" if i < RUNS // 2 else "default")
                     for i, n in enumerate(boards)}

            async def all_at_vendor() -> bool:  # every shot submitted, its job id journaled
                [(n,)] = await asyncio.to_thread(
                    _sql, db, "SELECT count(*) FROM storyreel_journal WHERE job_id IS NOT NULL "
                    "AND status IN ('submitted', 'running')")
                return n == RUNS * SHOTS and emu.stats("fal")["submits"] == RUNS * SHOTS

            await wait_for(all_at_vendor, 120, "every shot to be at the vendor", logs, every=0.3)
            t_submitted = time.monotonic() - t0

            # the machine dies: the worker and every flow run it started, at once
            victims = [doomed.pid, *_descendants(doomed.pid)]
            killed = {fr for p in victims if (fr := _flow_run_of(p))}
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            doomed.wait(10)
            lost = {n for n, ref in first.items() if str(ref.id) in killed}
            assert lost == set(list(boards)[:RUNS // 2]), (killed, lost)

            # triggered again with the same `out`: refused while the dead owners' leases live
            # (the flow run fails naming the owner), so trigger once they have lapsed
            keys = [str(outs[n]) for n in lost]

            async def lapsed() -> bool:
                rows = await asyncio.to_thread(
                    _sql, db, "SELECT count(*) FROM storyreel_runs WHERE run_key = ANY(%s) "
                    "AND lease_until <= now()", keys)
                return rows[0][0] == len(keys)

            await wait_for(lapsed, 30, "the dead runs' leases to lapse", logs, every=0.3)
            again = {n: await c.create_flow_run_from_deployment(
                         deployment, parameters={"storyboard": str(boards[n]),
                                                 "out": str(outs[n])}, work_queue_name="default")
                     for n in lost}

            async def taken_over() -> bool:
                rows = await asyncio.to_thread(
                    _sql, db, "SELECT owner FROM storyreel_runs WHERE run_key = ANY(%s) "
                    "AND lease_until > now()", keys)
                return sorted(o.rsplit("flow run ", 1)[-1].rstrip(")") for (o,) in rows) \
                    == sorted(str(r.id) for r in again.values())

            await wait_for(taken_over, 120, "the new owners to take the dead runs over", logs, every=0.3)
            t_takeover = time.monotonic() - t0
            assert emu.stats("fal")["submits"] == RUNS * SHOTS  # taking over paid nothing
            emu.advance(LATENCY)  # now every job at the vendor finishes

            finals = {**{n: r for n, r in first.items() if n not in lost}, **again}

            async def all_done() -> bool:
                states = [(await c.read_flow_run(r.id)).state for r in finals.values()]
                bad = [s for s in states if s.is_final() and s.type != StateType.COMPLETED]
                assert not bad, (bad, [tail(p) for p in logs])
                return all(s.type == StateType.COMPLETED for s in states)

            await wait_for(all_done, 180, "every run to complete", logs, every=0.3)
        print(f"\n{RUNS} runs on 2 workers: all at the vendor after {t_submitted:.1f} s, "
              f"{len(lost)} taken over after {t_takeover:.1f} s, all done after "
              f"{time.monotonic() - t0:.1f} s")
    finally:
        for proc in workers:
            stop(proc)

    # every run ends with its outputs, in the store
    got = {}
    for name in outs:
        got[name] = out = tmp_path / "got" / name
        out.mkdir(parents=True)
        for f in ("final.mp4", "cost.csv", "run.json", "review.html"):
            s3.download_file(BUCKET, f"many/{name}/{f}", str(out / f))
    for name, out in got.items():
        assert abs(probe(out / "final.mp4").duration - 3.0 * SHOTS) < 0.2, name
        rows = cost_rows(out)
        assert sorted(r["shot_id"] for r in rows) == [f"s{j}" for j in range(SHOTS)], rows
        assert all(r["status"] == "done" for r in rows), rows
    # no shot submitted twice, and every cent the vendor charged is in the shared window
    per_shot = Counter(j.request.get("prompt") for j in emu.jobs("fal"))
    assert len(per_shot) == RUNS * SHOTS and set(per_shot.values()) == {1}, per_shot
    bill = charged(emu, "fal")
    assert sum(total(cost_rows(o)) for o in got.values()) == bill
    [(spent, reserved)] = _sql(db, "SELECT spent_micros, reserved_micros FROM spend_windows "
                                   "WHERE scope = 'many' AND period = 'day'")
    assert (spent, reserved) == (int(bill * 1_000_000), 0)
