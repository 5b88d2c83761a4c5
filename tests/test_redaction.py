"""No API key in any log line, artifact, state message, parameter or output file, even when
vendors echo keys back in their errors and an adapter has a bug that puts one in an exception."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

# imported here, not in the test: the first `from prefect import flow` (flows.orchestration.flow) runs
# Prefect's logging setup, which would drop pytest's capture handlers (caplog) mid-test
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter, LogFilter
from prefect.logging.handlers import APILogHandler

from flows.orchestration.flow import render_storyboard
from flows.run import redaction
from providers.errors import register_secret
from tests.emulator.core import FAKE_KEYS
from tests.storyboards import cost_rows, write_board

SECRET = "sk-redaction-unit-0123456789"


def record(msg: str, *args: Any, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    return logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, msg, args, exc_info)


def formatted(rec: logging.LogRecord) -> str:
    return logging.Formatter("%(message)s").format(rec)


def test_filter_masks_message_args_traceback_and_stack() -> None:
    register_secret(SECRET)
    try:
        raise RuntimeError(f"vendor said: bad key {SECRET}")
    except RuntimeError as exc:
        rec = record("request failed for %s: %r", f"Bearer {SECRET}", {"key": SECRET}, exc=exc)
    rec.stack_info = f"stack mentioning {SECRET}"
    assert redaction.FILTER.filter(rec) is True  # masks, never drops
    text = formatted(rec)
    assert SECRET not in text and "Bearer ***" in text and "bad key ***" in text
    assert SECRET not in (rec.stack_info or "")
    clean = record("nothing secret here: %d shots", 3)
    redaction.FILTER.filter(clean)
    assert clean.getMessage() == "nothing secret here: 3 shots" and clean.args == (3,)


def test_install_covers_root_and_child_logger_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNWAYML_API_SECRET", "rw-env-key-for-install-test")
    lines: list[str] = []

    class Sink(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            lines.append(self.format(rec))

    child = logging.getLogger("storyreel.test.child")
    sink = Sink()
    child.addHandler(sink)
    try:
        redaction.install()  # registers the env key, filters the sink (a handler in the tree)
        child.warning("sending %s", "rw-env-key-for-install-test")
        logging.getLogger("storyreel.test.child.grandchild").warning(
            "propagated rw-env-key-for-install-test")
    finally:
        child.removeHandler(sink)
    assert lines == ["sending ***", "propagated ***"]
    assert redaction.FILTER in logging.getLogger("prefect.flow_runs").filters


def test_scrub_replaces_only_exceptions_that_carry_a_key() -> None:
    register_secret(SECRET)
    plain = ValueError("no key")
    assert redaction.scrub(plain) is plain
    leaky = redaction.scrub(KeyError(f"header {SECRET}"))
    assert SECRET not in str(leaky) and "KeyError" in str(leaky)


# -- end to end: the flow, the emulator, a Secret block, failures that echo keys ----------------

def _leaky_runway_submit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adapter bugs, for one shot: debug lines with the key (to the task's Prefect logger, which
    ships to the server, and to a plain module logger) and an exception whose text carries it."""
    from prefect import get_run_logger

    from providers.runway import RunwayProvider

    original = RunwayProvider.submit

    async def submit(self: Any, req: Any) -> Any:
        if "leak" in req.prompt:
            get_run_logger().warning("debug: headers %s", {"Authorization": f"Bearer {self.key}"})
            logging.getLogger("providers.runway").error("debug: key=%s", self.key)
            raise RuntimeError(f"adapter bug while sending Authorization: Bearer {self.key}")
        return await original(self, req)

    monkeypatch.setattr(RunwayProvider, "submit", submit)


@pytest.mark.e2e
async def test_no_key_anywhere_after_a_run_with_echoing_failures(
        emu_env: Any, prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    emu = emu_env
    keys = sorted(FAKE_KEYS[v] for v in emu.vendors)  # every vendor's key is configured
    # fal's key comes from a Secret block, not the environment
    monkeypatch.delenv("FAL_KEY")
    await Secret(value=FAKE_KEYS["fal"]).save("storyreel-test-fal-key", overwrite=True)
    monkeypatch.setenv("STORYREEL_CACHE_DIR", str(tmp_path / "cache"))
    _leaky_runway_submit(monkeypatch)
    # vendors echoing the key: a 401 body, a failed job's message, a 500 while polling
    emu.inject("nanogpt", "submit", "http", status=401,
               message=f"Invalid API key {FAKE_KEYS['nanogpt']} (Authorization: Bearer ...)")
    emu.inject("fal", "job", "fail", message=f"request {{'key': '{FAKE_KEYS['fal']}'}} failed")
    emu.inject("runway", "poll", "http", status=500,
               message=f"upstream error for token {FAKE_KEYS['runway']}")

    local = ["local:animatic"]
    spec = write_board(tmp_path, [
        {"id": "fal-one", "prompt": "a kite", "provider": "fal", "model": "kling-3-pro",
         "duration": 3, "fallback": local},
        {"id": "fal-two", "prompt": "a boat", "provider": "fal", "model": "kling-3-pro",
         "duration": 3, "fallback": local},
        {"id": "runway-ok", "prompt": "a lighthouse", "provider": "runway", "model": "gen4.5",
         "duration": 3},
        {"id": "runway-bug", "prompt": "a leak", "provider": "runway", "model": "gen4.5",
         "duration": 3},
        {"id": "nanogpt-denied", "prompt": "a fox", "provider": "nanogpt",
         "model": "kling-video-v2", "duration": 5},
    ], keys={"fal": "storyreel-test-fal-key"}, budget={"max_usd": 10})
    out = tmp_path / "run"

    state = await render_storyboard(storyboard=str(spec), out=str(out), return_state=True)
    assert state.is_completed(), state
    result = await state.aresult()
    flow_run_id = state.state_details.flow_run_id

    # the run really used the keys: fal's from the block, the others from the environment
    assert emu.stats("fal")["submits"] >= 2 and emu.stats("fal")["auth_failures"] == 0
    assert emu.stats("fal")["downloads"] == 2
    statuses = {r["shot_id"]: r["status"] for r in cost_rows(out)}
    assert statuses["nanogpt-denied"] == "failed"
    assert set(result["failed"]) == {"nanogpt-denied", "runway-bug"}, result

    await APILogHandler.aflush()
    texts: dict[str, str] = {"result": json.dumps(result)}
    texts["caplog"] = "\n".join(
        [caplog.text] + [formatted(r) for r in caplog.records]
        + [str(r.args) for r in caplog.records])
    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
        texts["parameters"] = json.dumps(run.parameters)
        states = await client.read_flow_run_states(flow_run_id)
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
        assert {t.name for t in task_runs} >= {"runway-bug", "nanogpt-denied"}
        for t in task_runs:
            states += await client.read_task_run_states(t.id)
        texts["states"] = "\n".join(f"{s.name}: {s.message}" for s in states)
        logs = await client.read_logs(LogFilter(flow_run_id={"any_": [flow_run_id]}))
        texts["prefect logs"] = "\n".join(log.message for log in logs)
        # the adapter bugs did reach Prefect: logged lines and a failed, retried attempt (masked)
        assert "debug: headers {'Authorization': 'Bearer ***'}" in texts["prefect logs"]
        assert ("Task run failed with exception: StoryreelError('RuntimeError: adapter bug "
                "while sending Authorization: Bearer ***')") in texts["prefect logs"]
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id={"any_": [flow_run_id]}))
        assert len(artifacts) == 3
        texts["artifacts"] = "\n".join(f"{a.description} {json.dumps(a.data)}" for a in artifacts)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"final.mp4", "cost.csv", "run.json", "journal.sqlite"} <= {p.name for p in files}

    for key in keys:
        for where, text in texts.items():
            assert key not in text, f"{key} leaked into {where}"
        for path in files:
            assert key.encode() not in path.read_bytes(), f"{key} leaked into {path}"
    # and the vendors' messages did arrive, masked, where a reviewer looks for them
    assert "Invalid API key ***" in texts["prefect logs"] + texts["artifacts"]
    assert "debug: key=***" in texts["caplog"]
