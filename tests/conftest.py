"""Shared fixtures: one vendor emulator per test session, reset for each test that uses it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.emulator.core import Emulator

pytest_plugins = ["tests.prefect_fixtures", "tests.review_kit"]


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    """The session's emulator (every vendor module), on a free port of 127.0.0.1."""
    with Emulator() as emu:
        yield emu


@pytest.fixture
def emu(emulator: Emulator) -> Emulator:
    """The session emulator with no jobs, counters or faults, and default latency/prices."""
    emulator.reset()
    return emulator


@pytest.fixture
def emu_env(monkeypatch: pytest.MonkeyPatch, emu: Emulator) -> Emulator:
    """`emu` plus its base URL overrides and fake keys in os.environ, and fast polling."""
    for key, value in emu.env().items():
        monkeypatch.setenv(key, value)
    # the adapters' default first poll is 1 s; the emulator's jobs finish in ~0.3 s
    monkeypatch.setenv("STORYREEL_POLL_FIRST_S", "0.05")
    monkeypatch.setenv("STORYREEL_POLL_MAX_S", "0.25")
    return emu
