"""Live progress of `storyreel run` in the terminal: one line per shot (a compact table on big
boards) with its state, the vendor's progress where it reports one, elapsed time, and the
money spent and reserved against the cap.

On a terminal the table is redrawn in place (rich, which comes with Prefect); otherwise each
change of a shot's state is one plain line, so logs and CI output stay readable. Shots report
through RunContext.events (flows/run/shot.py emits ShotEvents); the CLI installs the display
with `use()`, and the flow binds it to its ledger with `sink()`. Runs started by a deployment
or a worker have no display: events go nowhere.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from flows.run.context import ShotEvent

FINAL = {"done", "cached", "failed", "skipped", "unconfirmed"}  # a shot's ending (take 0)
_STYLE = {"queued": "dim", "submitted": "cyan", "running": "blue", "downloading": "magenta",
          "conformed": "green", "cached": "green", "done": "bold green", "failed": "red",
          "skipped": "yellow", "unconfirmed": "bold red"}


@dataclass
class _Take:
    state: str = "queued"
    detail: str = ""
    progress: float | None = None


@dataclass
class _Shot:
    shot_id: str
    takes: dict[int, _Take] = field(default_factory=dict)
    final: str | None = None
    detail: str = ""
    started: float | None = None
    ended: float | None = None

    def state(self) -> str:
        if self.final:
            return self.final
        states = [t.state for t in self.takes.values()] or ["queued"]
        for s in ("running", "downloading", "submitted", "conformed", "cached", "failed",
                  "skipped"):
            if s in states:
                return s
        return states[0]

    def elapsed(self, now: float) -> float | None:
        if self.started is None:
            return None
        return (self.ended or now) - self.started


def _money(x: float) -> str:
    return f"${x:,.2f}" if x >= 0.01 or x == 0 else f"${x:.4f}"


class Progress:
    """Per-shot state of one run, shown live (TTY) or as plain lines."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.shots: dict[str, _Shot] = {}
        self.order: list[str] = []
        self.multi: dict[str, bool] = {}  # shots with several takes name the take per line
        self.ledger: Any = None
        self.cap: float | None = None
        self.title = ""
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self._live: Any = None

    # -- wiring ---------------------------------------------------------------------------
    def start(self, plan: Any) -> None:
        self.title = plan.storyboard.title
        self.cap = plan.cap_usd
        for s in plan.shots:
            self.multi[s.shot_id] = s.takes > 1
            if s.shot_id not in self.shots:
                self.order.append(s.shot_id)
                self.shots[s.shot_id] = _Shot(s.shot_id)
        if self.live and self._live is None:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream)
            # anything else printed meanwhile (a warning, a note) goes above the table
            self._live = Live(self, console=console, refresh_per_second=4, transient=False,
                              redirect_stdout=True, redirect_stderr=True)
            self._live.start()

    def bind(self, ledger: Any) -> Callable[[ShotEvent], None]:
        self.ledger = ledger
        return self.event

    def stop(self) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None

    # -- events ---------------------------------------------------------------------------
    def event(self, ev: ShotEvent) -> None:
        now = time.monotonic()
        with self._lock:
            shot = self.shots.get(ev.shot_id)
            if shot is None:
                self.order.append(ev.shot_id)
                shot = self.shots[ev.shot_id] = _Shot(ev.shot_id)
            if shot.started is None:
                shot.started = now
            if ev.take == 0:
                changed = shot.final != ev.state
                shot.final, shot.detail, shot.ended = ev.state, ev.detail, now
            else:
                take = shot.takes.setdefault(ev.take, _Take())
                changed = take.state != ev.state
                take.state, take.detail = ev.state, ev.detail
                take.progress = ev.progress if ev.progress is not None else (
                    take.progress if ev.state == "running" else None)
        if changed and not self.live:
            self._line(shot, ev, now)

    def _money_text(self) -> str:
        spent = self.ledger.spent_usd if self.ledger is not None else 0.0
        reserved = self.ledger.reserved_usd if self.ledger is not None else 0.0
        cap = f" of {_money(self.cap)}" if self.cap is not None else " (no cap)"
        return f"spent {_money(spent)} + reserved {_money(reserved)}{cap}"

    def _line(self, shot: _Shot, ev: ShotEvent, now: float) -> None:
        several = ev.take > 1 or self.multi.get(shot.shot_id, False)
        who = f"{shot.shot_id} take {ev.take}" if ev.take and several else shot.shot_id
        detail = f" ({ev.detail})" if ev.detail else ""
        print(f"[{now - self.t0:6.1f}s] {who}: {ev.state}{detail} | {self._money_text()}",
              file=self.stream, flush=True)

    # -- the live table -------------------------------------------------------------------
    def _state_text(self, shot: _Shot) -> Any:
        from rich.text import Text

        if shot.final:
            return Text(shot.final, style=_STYLE.get(shot.final, ""))
        text = Text()
        for i, (n, t) in enumerate(sorted(shot.takes.items())):
            if i:
                text.append("  ")
            if len(shot.takes) > 1:
                text.append(f"#{n} ", style="dim")
            label = t.state
            if t.state == "running" and t.progress is not None:
                label += f" {t.progress * 100:.0f}%"
            text.append(label, style=_STYLE.get(t.state, ""))
        return text if shot.takes else Text("queued", style="dim")

    def _detail(self, shot: _Shot) -> str:
        if shot.final:
            return shot.detail
        for t in shot.takes.values():
            if t.detail:
                return t.detail
        return ""

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        now = time.monotonic()
        with self._lock:
            shots = [self.shots[k] for k in self.order]
            finished = sum(1 for s in shots if s.final)
            head = Text.assemble((self.title, "bold"), f"  {finished}/{len(shots)} shots  ",
                                 self._money_text(), f"  {now - self.t0:.0f}s")
            table = Table(box=None, pad_edge=False, show_header=True, header_style="dim")
            table.add_column("shot", no_wrap=True, max_width=24)
            table.add_column("state", no_wrap=True)
            table.add_column("elapsed", justify="right", no_wrap=True)
            table.add_column("spent", justify="right", no_wrap=True)
            table.add_column("", overflow="ellipsis", no_wrap=True, max_width=60)
            rows = shots
            height = self._live.console.size.height if self._live is not None else 40
            hidden = 0
            if len(shots) > max(8, height - 6):  # a big board: busy and failed shots only
                rows = [s for s in shots if s.state() not in ("queued", "done", "cached")]
                rows.sort(key=lambda s: s.state() not in ("failed", "unconfirmed", "skipped"))
                hidden = len(shots) - len(rows)
                rows = rows[: max(4, height - 8)]
            for s in rows:
                el = s.elapsed(now)
                spent = self.ledger.shot_spent_usd(s.shot_id) if self.ledger is not None else 0.0
                table.add_row(s.shot_id, self._state_text(s), f"{el:.1f}s" if el else "",
                              _money(spent) if spent else "", Text(self._detail(s), style="dim"))
            parts: list[Any] = [head, table]
            if hidden:
                counts: dict[str, int] = {}
                for s in shots:
                    counts[s.state()] = counts.get(s.state(), 0) + 1
                parts.append(Text("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
                                  style="dim"))
            return Group(*parts)


_current: Progress | None = None


def use(progress: Progress | None) -> None:
    """Install (or remove, with None) the display that runs in this process report to."""
    global _current
    _current = progress


def sink(plan: Any, ledger: Any) -> Callable[[ShotEvent], None] | None:
    """The events callback for a run's context: None when no display is installed."""
    if _current is None:
        return None
    _current.start(plan)
    return _current.bind(ledger)


def note(line: str) -> None:
    """A line the user can act on now (final.mp4 is written), printed at once by the CLI's
    display (above its table on a terminal); runs without a display print nothing here."""
    if _current is not None:
        print(line, flush=True)
