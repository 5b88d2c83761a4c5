"""While the run's last shots are still being made, start the cut's audio that does not depend
on them: the AAC encoder of the edited span, fed its pre-roll (flows/media/aac_early.py).

The producer's loop runs a board again into the same folder with one shot changed: every
other shot is done at once (cached), the changed one takes the vendor's time. The span starts
at the first shot that is not done with the clip the previous cut had there (the cut's audio
record, flows/media/aac.py); as soon as the shots before it are all done that way, the span's
encoder starts on them, and starts again later if that shot turns out unchanged after all.
The cut takes the encoder only if it fits the cut it makes; otherwise it is killed, and
nothing changes but a few tenths of a second of CPU spent while the run waited on a vendor.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

from flows.media import aac, aac_early
from flows.media.conform import OutputFormat
from flows.storyboard.plan import Plan


class EarlyAudio:
    """Told each shot's clip as it is done (`done`); primes for the first shot not done with
    its previous clip, again whenever that shot changes."""

    def __init__(self, plan: Plan, run_dir: Path) -> None:
        self.plan = plan
        self.dest = run_dir / "final.mp4"
        self.fmt = OutputFormat(plan.width, plan.height, plan.fps, plan.storyboard.output.fit)
        self.position = {s.shot_id: i for i, s in enumerate(plan.shots)}
        self.clips: dict[int, Path | None] = {}
        self.same: dict[int, bool] = {}  # done shots: the clip the previous cut had there
        self.record = aac.recorded(self.dest) if _plain(plan) else None
        self.primed: int | None = None  # the shot the primed span starts at
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def follow(self, work: dict[str, asyncio.Future[Any]]) -> None:
        """Learn each shot's clip as soon as its work (render_shot) returns, before its task
        run's own end (a server round trip that a busy Prefect server can hold up)."""
        for shot_id, future in work.items():
            future.add_done_callback(functools.partial(self._landed, shot_id))

    def _landed(self, shot_id: str, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # retried by its task, which says `done` then
        self.done(shot_id, getattr(future.result(), "conformed", None))

    def done(self, shot_id: str, clip: Path | None) -> None:
        i = self.position.get(shot_id)
        if i is None or self.record is None:
            return
        if i in self.clips and self.clips[i] != clip:
            self.same.pop(i, None)  # another take came back (a retry): looked at again
        self.clips[i] = clip
        if self.task is None:
            self.task = asyncio.ensure_future(self._watch())
        self.wake.set()

    async def _watch(self) -> None:
        assert self.record is not None
        shots = self.plan.shots
        while True:
            await self.wake.wait()
            self.wake.clear()
            new = [i for i in self.clips if i not in self.same]
            if new:
                same = await asyncio.to_thread(self._unchanged, new)
                self.same.update(zip(new, same, strict=True))
            k = 0
            while k < len(shots) and self.same.get(k):
                k += 1
            if k == len(shots) or k == 0 or k == self.primed:
                continue
            if k in self.clips and self.clips[k] is None:  # a slate: nothing left to prime
                continue
            if any(_junction(s) for s in shots[:k]):  # rendered at the end: not primed
                continue
            self.primed = k
            aac_early.prime(self.dest, [p for j in range(k) if (p := self.clips[j])],
                            self.fmt)

    def _unchanged(self, indexes: list[int]) -> list[bool]:
        """Whether shot i's clip is the one the previous cut had at its place (hard cuts
        around it: its piece is the whole clip)."""
        from flows.media.probe import probe

        assert self.record is not None
        out = []
        for i in indexes:
            clip = self.clips[i]
            if clip is None or i >= len(self.record):
                out.append(False)
                continue
            try:
                frames = probe(clip).nb_frames or 0
            except Exception:  # a clip the cut will refuse: not the previous one either
                out.append(False)
                continue
            piece = aac.pieces([clip], [frames], [], [], self.fmt)
            out.append(len(piece) == 1 and (piece[0].ident, piece[0].samples)
                       == self.record[i])
        return out

    def close(self) -> None:
        """Stop watching; kill the primed encoder if the cut did not take it."""
        if self.task is not None:
            self.task.cancel()
        if self.primed is not None:
            aac_early.discard(self.dest)


def _junction(shot: object) -> bool:
    t = shot.transition  # type: ignore[attr-defined]
    return bool(t.kind != "cut" and t.duration > 0)


def _plain(plan: Plan) -> bool:
    """The cut's audio is made by flows/media/assemble.py from the shots' clips alone: no
    title card before them, no music or loudness pass, nothing drawn on the picture."""
    fin = plan.finishing
    return fin is None or (fin.title is None and fin.music is None and fin.loudness is None
                           and fin.logo is None and (fin.burn is None or not any(fin.captions)))
