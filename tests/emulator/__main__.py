"""Run the vendor emulator standalone: `python -m tests.emulator --port 8700 --latency 3`.

Prints `export ...` lines (base URL overrides and fake keys) to paste into a
shell, then serves until Ctrl-C. Drive it over HTTP: /_emulator/stats,
/_emulator/faults, /_emulator/reset, /_emulator/config, /_emulator/jobs.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from tests.emulator.core import Emulator
from tests.emulator.server import serve_forever


def _size(text: str) -> tuple[int, int] | None:
    if text.lower() in ("full", "none", "request"):
        return None
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.emulator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8700, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=3.0,
                        help="seconds from submit to the job's terminal state")
    parser.add_argument("--jitter", type=float, default=0.0,
                        help="extra random seconds per job, 0..jitter")
    parser.add_argument("--media-size", type=_size, default=(320, 180),
                        help="size of served clips, e.g. 320x180 (aspect follows the request), "
                             "or 'full' to serve the requested size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    emu = Emulator(latency=args.latency, jitter=args.jitter, media_size=args.media_size,
                   seed=args.seed)

    def announce() -> None:
        print(f"export STORYREEL_EMULATOR_URL={emu.url}")
        for key, value in sorted(emu.env().items()):
            print(f"export {key}={shlex.quote(value)}")
        print(f"# vendor emulator on {emu.url} (vendors: {', '.join(sorted(emu.vendors))}); "
              "Ctrl-C to stop", file=sys.stderr)
        sys.stdout.flush()

    serve_forever(emu, args.port, announce)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
