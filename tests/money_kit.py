"""Helpers for the money tests: render through the Prefect flow or the real CLI against the
emulator, and read back what the run reported next to what the emulator billed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.emulator.core import Emulator
from tests.storyboards import charged, cost_rows, total

# each adapter with a paid model the emulator prices the same as the product's estimate
# (videogenapi's default models are free: veo_3 is its paid one)
PAID = {"fal": ("kling-2.5-turbo-pro", 5), "replicate": ("veo-3.1-fast", 4),
        "runway": ("gen4.5", 5), "luma": ("ray-flash-2", 5),
        "huggingface": ("wan-2.2-a14b", 5), "perf": ("runway-gen3", 5),
        "nanogpt": ("kling-video-v2", 5), "videogenapi": ("veo_3", 5),
        "runware": ("kling-2.5-turbo-pro", 5), "gemini": ("veo-3.1-fast", 4)}
# vendors without a cancel endpoint (Luma's DELETE removes the record, not the job)
NO_CANCEL = ("luma", "gemini", "perf", "runware", "videogenapi")
AT_RISK = ("unconfirmed", "abandoned", "lost", "cancel_requested", "submitted", "running")


def shot(sid: str, vendor: str, **extra: Any) -> dict[str, Any]:
    model, duration = PAID[vendor]
    return {"id": sid, "prompt": f"shot {sid} on {vendor}", "provider": vendor, "model": model,
            "duration": duration, **extra}


def wait_idle(emu: Emulator, vendor: str = "total", timeout: float = 30.0) -> None:
    """Until no emulated job (of `vendor`) is queued or running: whatever bills has."""
    deadline = time.monotonic() + timeout
    while emu.stats()[vendor]["in_flight"]:
        assert time.monotonic() < deadline, "emulated jobs still running"
        time.sleep(0.05)


def cents(value: Any) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.01"))


def cli_env(emu: Emulator, prefect_api: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, **emu.env(), "PREFECT_API_URL": prefect_api,
            "STORYREEL_CACHE_DIR": str(tmp_path / "cache"), "STORYREEL_POLL_FIRST_S": "0.05",
            "STORYREEL_POLL_MAX_S": "0.25", **extra}


def cli(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def run_cli(env: dict[str, str], *args: str, timeout: float = 300) -> tuple[int, str]:
    proc = cli(env, *args)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def run_json(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "run.json").read_text())


# the CLI's money line: confirmed, estimated, at risk
SPENT = re.compile(r"spent:\s*\$([0-9.]+) confirmed by vendors \+ \$([0-9.]+) estimated "
                   r"\(vendor reports no cost\) \+ \$([0-9.]+) at risk")

__all__ = ["AT_RISK", "NO_CANCEL", "PAID", "SPENT", "charged", "cents", "cli", "cli_env",
           "cost_rows", "run_cli", "run_json", "shot", "total", "wait_idle"]
