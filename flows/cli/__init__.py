"""The `storyreel` command: its commands (commands.py) and the terminal's live progress."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """The console script's entry (pyproject: flows.cli:main); imports stay lazy."""
    from flows.cli.commands import main as run

    return run(argv)
