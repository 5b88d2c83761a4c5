"""One scrubber: a key is masked in its plain, URL-encoded, JSON-escaped and base64
forms, longest key first, in everything that leaves the process; and a path-like vendor job id
never writes outside the run folder."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from flows.run import redaction
from flows.run.context import ShotResult
from flows.run.session import placeholder, write_run_json
from flows.storyboard.plan import make_plan
from providers.errors import ProviderError, StoryreelError, redact, register_secret
from tests.storyboards import write_board

KEY = "sk-live/4Kq+z9\"Wx=ab12"
LONGER = KEY + "-with-suffix"


def forms(key: str) -> list[str]:
    raw = key.encode()
    return [key, quote(key, safe=""), quote_plus(key), json.dumps(key)[1:-1],
            base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(),
            base64.b64encode(b"user:" + raw).decode(), base64.b64encode(b"x:" + raw).decode()]


def leaks(text: str, key: str = KEY) -> list[str]:
    """Which forms of `key` (or their key-only base64 core) are readable in `text`."""
    found = [f for f in forms(key)[:4] if f in text]
    for prefix in (b"", b"x:", b"user:"):
        enc = base64.b64encode(prefix + key.encode()).decode()
        core = enc[len(prefix) * 4 // 3 + 4:-4]  # the part only the key decides
        if core and core in text:
            found.append(core)
    return found


def test_every_encoded_form_is_masked() -> None:
    register_secret(KEY)
    for form in forms(KEY):
        text = f"GET /x?token={form}&other=1 Authorization: Basic {form}"
        assert leaks(redact(text)) == [], (form, redact(text))
    assert redact("nothing to hide") == "nothing to hide"


def test_longest_key_first() -> None:
    register_secret(KEY)
    register_secret(LONGER)
    assert redact(f"a {LONGER} b") == "a *** b"  # not "a ***-with-suffix b"
    assert redact(quote(LONGER, safe="")) == "***"


def test_provider_errors_mask_encoded_keys() -> None:
    register_secret(KEY)
    err = ProviderError(f"vendor echoed url https://x/?k={quote(KEY, safe='')}",
                        provider="fal", vendor_message=json.dumps({"key": KEY}))
    assert leaks(str(err)) == [] and leaks(err.vendor_message or "") == []


async def test_flow_level_exceptions_are_scrubbed() -> None:
    register_secret(KEY)

    @redaction.scrubbed
    async def flow_body() -> None:
        raise RuntimeError(f"adapter bug: header x-api-key={quote(KEY, safe='')}")

    with pytest.raises(StoryreelError) as info:
        await flow_body()
    assert leaks(str(info.value)) == [] and "***" in str(info.value)


def test_run_json_and_table_rows_are_scrubbed(tmp_path: Path) -> None:
    """A key registered after an error text was built (a Secret block loaded later) is still
    masked in run.json and in the rows that become cost.csv and the table artifact."""
    late = "sk-late-registered-0123456789"
    spec = write_board(tmp_path, [{"id": "a", "prompt": "p", "provider": "local",
                                   "duration": 1}])
    plan = make_plan(spec)
    reason = f"failed: https://cdn/x?sig={quote(late, safe='')} {late}"
    register_secret(late)
    path = write_run_json(plan, tmp_path, "run-1", [ShotResult("a", "failed", reason=reason)],
                          {"charged_usd": 0.0, "at_risk_usd": 0.0, "total_usd": 0.0})
    text = path.read_text()
    assert leaks(text, late) == [] and "***" in text
    json.loads(text)  # still valid JSON
    rows = redaction.redact_data([{"failure_reason": reason, "job_id": late, "n": 1}])
    assert leaks(json.dumps(rows), late) == [] and rows[0]["n"] == 1


async def test_the_missing_shot_slate_never_shows_a_key(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    register_secret(KEY)
    drawn: list[str] = []

    async def fake_animatic(out: Path, *, prompt: str, **kw: object) -> None:
        drawn.append(prompt)
        raise _Drawn

    import flows.media.animatic as animatic

    monkeypatch.setattr(animatic, "render_animatic", fake_animatic)
    spec = write_board(tmp_path, [{"id": "a", "prompt": "p", "provider": "local",
                                   "duration": 1}])
    with pytest.raises(_Drawn):
        await placeholder(make_plan(spec), 0, f"auth: bad key {quote(KEY, safe='')}", tmp_path)
    assert drawn and leaks(drawn[0]) == [] and "***" in drawn[0]


class _Drawn(Exception):
    pass


# -- a path-like job id end to end -------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("vendor, model, seconds", [("nanogpt", "kling-video-v2", 5),
                                                    ("replicate", None, 4)])
async def test_a_path_like_job_id_writes_nothing_outside_the_run(
        emu_env, prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        vendor: str, model: str | None, seconds: int) -> None:
    from flows.orchestration.flow import render_storyboard

    emu = emu_env
    monkeypatch.setenv("STORYREEL_CACHE_DIR", str(tmp_path / "cache"))
    emu.inject(vendor, "job", "job_id", job_id="../../../../tmp/storyreel-x")
    shot = {"id": "s1", "prompt": "a lighthouse", "provider": vendor, "duration": seconds}
    if model:
        shot["model"] = model
    spec = write_board(tmp_path / "boards", [shot], budget={"max_usd": 5})
    run_dir = tmp_path / "deep" / "run"
    result = await render_storyboard(storyboard=str(spec), out=str(run_dir))
    assert result["ok"], result
    written = [p for p in tmp_path.rglob("*") if p.is_file()
               and not p.is_relative_to(run_dir) and not p.is_relative_to(tmp_path / "cache")
               and not p.is_relative_to(tmp_path / "boards")]
    assert written == []
    assert all(p.resolve().is_relative_to(run_dir.resolve()) for p in run_dir.rglob("*"))
