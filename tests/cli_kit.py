"""The `storyreel` command in the test's own process, for tests whose subject is what a command
does to a run folder rather than the process it runs in: a subprocess costs a Python start and
the Prefect and media imports (~3 CPU-seconds on this machine class) for the same code path.
Tests of the process itself (kills, concurrent runs, terminal output, the background server)
keep real subprocesses."""

from __future__ import annotations

import io
from collections.abc import Mapping
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Ran:
    """What a command left: the fields of subprocess.CompletedProcess that tests read."""

    returncode: int
    stdout: str
    stderr: str


def storyreel(*args: str, env: Mapping[str, str] | None = None) -> Ran:
    """`storyreel ARGS` through flows.cli's `main`, with `env` set for the call only and its
    output captured (the last-resort handler's one line included)."""
    from flows.cli.commands import main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in (env or {}).items():
            mp.setenv(key, value)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as stop:  # argparse's usage errors end the process with 2
                code = stop.code if isinstance(stop.code, int) else 1
    return Ran(code, out.getvalue(), err.getvalue())
