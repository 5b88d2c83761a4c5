"""While the run's last shots are still being made, start the cut's audio that does not depend
on them: the AAC encoder of the edited span, fed its pre-roll (flows/media/aac_early.py).

The producer's loop runs a board again into the same folder with one shot changed: every
other shot is done at once (cached), the changed one takes the vendor's time. As soon as all
shots before the first unfinished one are done, and the previous cut's audio record says the
cut began with exactly those clips, the span's encoder starts on them. The cut takes it only
if that is still true when the cut is made; otherwise it is killed, and nothing changes but a
few tenths of a second of CPU spent while the run waited on a vendor.
"""

from __future__ import annotations

from pathlib import Path

from flows.media import aac_early
from flows.media.conform import OutputFormat
from flows.storyboard.plan import Plan


class EarlyAudio:
    """Told each shot's clip as it is done (`done`); primes once, for the first shot not done."""

    def __init__(self, plan: Plan, run_dir: Path) -> None:
        self.plan = plan
        self.dest = run_dir / "final.mp4"
        self.position = {s.shot_id: i for i, s in enumerate(plan.shots)}
        self.clips: dict[int, Path] = {}
        self.started = False
        self.enabled = (_plain(plan) and (run_dir / "final.audio.json").is_file()
                        and self.dest.is_file())

    def done(self, shot_id: str, clip: Path | None) -> None:
        i = self.position.get(shot_id)
        if i is None or not self.enabled or self.started:
            return
        if clip is None:  # a slate will stand there: the cut changes from it on
            self.enabled = False
            return
        self.clips[i] = clip
        k = 0
        while k in self.clips:
            k += 1
        if k == 0 or k >= len(self.plan.shots):
            return
        if any(s.transition.kind != "cut" and s.transition.duration > 0
               for s in self.plan.shots[:k]):  # a junction up to shot k: rendered at the end
            self.enabled = False
            return
        self.started = True
        fmt = OutputFormat(self.plan.width, self.plan.height, self.plan.fps,
                           self.plan.storyboard.output.fit)
        aac_early.prime(self.dest, [self.clips[j] for j in range(k)], fmt)

    def close(self) -> None:
        """Kill the primed encoder if the cut did not take it."""
        if self.started:
            aac_early.discard(self.dest)


def _plain(plan: Plan) -> bool:
    """The cut's audio is made by flows/media/assemble.py from the shots' clips alone: no
    title card before them, no music or loudness pass, nothing drawn on the picture."""
    fin = plan.finishing
    return fin is None or (fin.title is None and fin.music is None and fin.loudness is None
                           and fin.logo is None and (fin.burn is None or not any(fin.captions)))
