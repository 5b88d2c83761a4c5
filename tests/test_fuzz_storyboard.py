"""Mutated storyboards never end in a traceback.

The example storyboards in specs/ are mutated field by field, with a fixed seed: long and odd
strings (5,000 characters, NUL, control and right-to-left characters, `../`, URLs), numbers as
strings, huge numbers, NaN, lists and mappings where scalars belong, missing and extra keys
(known fields too), raw-text damage. Each case is validated and planned in process through
`flows.cli.dispatch`, the function `storyreel` runs under its last-resort handler: it must
return 0, 1 or 2, never raise. A handful of the worst cases then go through the real
command, whose stderr must hold no traceback.

STORYREEL_FUZZ_CASES sets the number of cases (default 3000), STORYREEL_FUZZ_SEED the seed.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.cli import commands as cli
from flows.storyboard import spec as spec_models
from flows.storyboard.loading import _model_at

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "specs").glob("*.yaml"))
CASES = int(os.environ.get("STORYREEL_FUZZ_CASES", "3000"))
SEED = int(os.environ.get("STORYREEL_FUZZ_SEED", "20210421"))

LONG = "a" * 5000
STRINGS: list[Any] = [
    LONG, "é" * 5000, "🎬" * 3000, "a\0b", "\0", "\x01\x7f\x1b[31m", "\u202eevil\u202c",
    "\ufeff", "../" * 40 + "etc/passwd", "../../../../etc/passwd", "/etc/passwd", "/", ".",
    "..", "~", "~root/x", "assets", "assets/", "assets/lighthouse.png/", "assets/music.ogg",
    "assets/make_music.py", "assets/logo.png", "./assets//lighthouse.png", "nul/x", "x" * 256,
    "/".join(["d" * 200] * 30), "C:\\Windows\\x.png", "\\\\server\\share\\x.png",
    "https://example.com/" + LONG, "https://example.com/a b.png", "http://[::1", "https://",
    "http://127.0.0.1:1/x.png", "file:///etc/passwd", "data:image/png;base64,AAAA",
    "ftp://x/y", "javascript:alert(1)", "HTTPS://EXAMPLE.COM/X.PNG", "https://ex\0ample.com/",
    "3", "-1", "0", "1e309", "-1e309", "NaN", "nan", "inf", ".inf", "0x10", "1_000", "٣",
    "", " ", "\n\n", "\t", "true", "null", "~", "16:9", "0:0", "9:0", "1:99999999999999999999",
    "99999999x99999999", "0x0", "1x1", "-1x-1", "720p", "8k", "%s%n%x", "{{x}}", "${day}",
    "9" * 5000, "-" + "1" * 400, "1e" + "9" * 400, "${", "${nope}", "$$",
    "${" + "a" * 300 + "}", "local:animatic", "local:", ":", "fal:",
    "a" * 300 + ":" + "b" * 300, "Europe/Nowhere", "../UTC", "UTC\0",
]
NUMBERS: list[Any] = [
    0, -1, 1, 2, 7, 10**30, 2**63, -(2**63) - 1, 10**400, 1e308, -1e308, 1e-300, -0.0,
    float("nan"), float("inf"), float("-inf"), 0.5, 3.999999999999, True, False, None,
]
CONTAINERS: list[Any] = [
    [], {}, [[[[]]]], {"a": {"b": {"c": 1}}}, ["x"] * 50, [None], [LONG], {LONG: LONG},
    {"kind": "crossfade", "duration": float("nan")}, {1: 2}, {None: None}, [{}],
    {"kind": LONG}, {"image": LONG},
]
VALUES = STRINGS + NUMBERS + CONTAINERS
VAR_VALUES = ["", LONG, "x" * 20_000, "${day}", "$$", "a\0b", "\u202e", "🎬" * 100]
VAR_NAMES = ["day", "DAY", "1x", "a-b", "", "a" * 5000, "day\0"]


DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _paths(node: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a storyboard: mapping keys and list items, the root included."""
    out = [here]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, here + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, here + (i,))
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        node = node[part]
    return node


def _value(rng: random.Random, like: Any = None) -> Any:
    """A hostile value; mostly of `like`'s kind, so that many cases pass the schema and reach
    the planning code behind it (files, URLs, prices, fonts)."""
    if rng.random() < 0.7 and isinstance(like, str):
        pool = STRINGS
    elif rng.random() < 0.7 and isinstance(like, int | float) and not isinstance(like, bool):
        pool = NUMBERS + STRINGS[STRINGS.index("3"):STRINGS.index("٣") + 1]
    else:
        pool = VALUES
    v = rng.choice(pool)
    return copy.deepcopy(v) if isinstance(v, list | dict) else v


def _known_fields(path: tuple[Any, ...]) -> list[str]:
    """The storyboard model's field names at a mapping's place (shots[2] -> Shot's)."""
    model = _model_at(spec_models.Storyboard, path)
    return list(getattr(model, "model_fields", {}))


def mutate(board: dict[str, Any], rng: random.Random) -> tuple[Any, list[str]]:
    """One to three mutations of `board` (in place where it stays a mapping); returns the
    result and what was done, for a failure's report."""
    done: list[str] = []
    data: Any = board
    for _ in range(rng.choice((1, 1, 2, 3))):
        if not isinstance(data, dict):
            break
        paths = _paths(data)
        leaves = [p for p in paths if not isinstance(_get(data, p), dict | list)]
        path = rng.choice(leaves if leaves and rng.random() < 0.75 else paths)
        parent = _get(data, path[:-1]) if path else None
        target = _get(data, path)
        roll = rng.random()
        if not path:  # the whole document
            if roll < 0.5:
                data = _value(rng)
                done.append(f"root = {data!r:.80}")
            elif roll < 0.8:
                data["shots"] = []
                done.append("root.shots = []")
            else:  # past STORYREEL_MAX_SHOTS, as aliases of the same shots
                data["shots"] = data.get("shots", []) * 101
                done.append("root.shots * 101")
            continue
        if roll < 0.55:
            v = _value(rng, target)
            parent[path[-1]] = v
            done.append(f"{path} = {v!r:.80}")
        elif roll < 0.65 and isinstance(parent, dict):
            del parent[path[-1]]
            done.append(f"del {path}")
        elif roll < 0.85 and isinstance(target, dict):
            names = _known_fields(path) or ["zzz"]
            key = rng.choice(names + ["zzz", LONG, "a\0b", 3, ""])
            target[key] = _value(rng, "")
            done.append(f"{path}[{key!r:.40}] = {target[key]!r:.80}")
        elif roll < 0.92 and isinstance(parent, list):
            parent.append(copy.deepcopy(target))  # duplicate a shot, a fallback, ...
            done.append(f"dup {path}")
        else:
            parent[path[-1]] = [target] if rng.random() < 0.5 else {"x": target}
            done.append(f"wrap {path}")
    return data, done


def damage(text: str, rng: random.Random) -> tuple[bytes, str]:
    """Raw-text damage: truncation, bad UTF-8, tabs, stray YAML syntax."""
    raw = text.encode()
    at = rng.randrange(len(raw) + 1)
    kind = rng.choice(["cut", "bytes", "insert", "insert"])
    if kind == "cut":
        return raw[:at], f"cut at {at}"
    if kind == "bytes":
        return raw[:at] + bytes(rng.randrange(256) for _ in range(8)) + raw[at:], f"bytes at {at}"
    junk = rng.choice(["9" * 5000, "0x" + "f" * 5000, "\t", ": :", "- - -", "&a", "*a",
                       "!!python/object:os.system", "{[", "? ", "%YAML 9.9\n",
                       "<<: *x", "\"\\x", "'''", "---\n---\n"])
    return raw[:at] + junk.encode() + raw[at:], f"insert {junk!r} at {at}"


def _cases(n: int, seed: int) -> list[tuple[str, bytes, list[str], list[str]]]:
    """(name, file bytes, extra CLI args, what was done): deterministic for a seed."""
    rng = random.Random(seed)
    # pickled: a copy per case from pickle.loads is ~10x faster than copy.deepcopy
    bases = [(p.stem, pickle.dumps(yaml.safe_load(p.read_text()))) for p in EXAMPLES]
    out = []
    for i in range(n):
        stem, base = rng.choice(bases)
        args: list[str] = []
        if rng.random() < 0.1:
            text = (ROOT / "specs" / f"{stem}.yaml").read_text()
            raw, what = damage(text, rng)
            done = [what]
        else:
            data, done = mutate(pickle.loads(base), rng)
            try:
                raw = yaml.dump(data, Dumper=DUMPER, allow_unicode=True,
                                sort_keys=False).encode()
            except (yaml.YAMLError, UnicodeEncodeError):
                continue
        if rng.random() < 0.05:
            name, value = rng.choice(VAR_NAMES), rng.choice(VAR_VALUES)
            args = [f"--var={name}={value}"]
            done.append(f"--var {name[:20]!r}={value[:20]!r}")
        out.append((f"{i:04d}-{stem}", raw, args, done))
    return out


@pytest.fixture
def board_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder like specs/ (the examples' assets beside them), and a private ledger home."""
    shutil.copytree(ROOT / "specs" / "assets", tmp_path / "assets")
    monkeypatch.setenv("STORYREEL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("STORYREEL_BUDGETS", raising=False)
    monkeypatch.delenv("STORYREEL_DEBUG", raising=False)
    monkeypatch.delenv("STORYREEL_IMAGE_DIRS", raising=False)
    return tmp_path


def _in_process(argv: list[str]) -> tuple[int | None, str]:
    """`dispatch(argv)` with its output captured: (exit code, '') or (None, the exception)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.dispatch(argv)
    except Exception as exc:  # exactly what the test looks for
        return None, f"{type(exc).__name__}: {str(exc)[:300]}"
    return code, ""


def test_mutated_storyboards_never_raise(board_dir: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # one argparse parser for all cases: building it is most of a small case's CPU time
    monkeypatch.setattr(cli, "parser", functools.cache(cli.parser))
    failures: list[str] = []
    cases = _cases(CASES, SEED)
    assert len(cases) > CASES * 0.95
    codes: dict[int, int] = {}
    for name, raw, args, done in cases:
        path = board_dir / f"{name}.yaml"
        path.write_bytes(raw)
        # validate every case, plan every fourth (plan = validate + prices, windows, keys)
        for command in ["validate"] + (["plan"] if int(name[:4]) % 4 == 0 else []):
            code, crash = _in_process([command, str(path), *args])
            if crash or code not in (0, 1, 2):
                failures.append(f"{name} {command} {args[:1]}: {crash or code}; {done}")
            else:
                codes[code] = codes.get(code, 0) + 1
        path.unlink()
    assert not failures, f"{len(failures)} of {len(cases)} cases raised:\n" + "\n".join(
        failures[:25])
    # the mutations reach both outcomes: a fuzzer whose cases all fail early finds little
    assert codes.get(2, 0) > len(cases) * 0.3 and codes.get(0, 0) > len(cases) * 0.05, codes


def _set(*path: Any) -> Any:
    """A mutation of the demo storyboard: the value at `path` (made if missing) = last arg."""
    *where, key, value = path

    def apply(board: dict[str, Any]) -> None:
        node = board
        for part in where:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
        node[key] = value
    return apply


# case: (mutation, the place the error must name)
WORST: dict[str, tuple[Any, str]] = {
    "image_5000": (_set("shots", 0, "image", "a" * 5000), "shots[0].image: path too long"),
    "image_nul": (_set("shots", 0, "image", "x\0y.png"), "shots[0].image: path contains a NUL"),
    "image_deep": (_set("shots", 0, "image", "/".join(["d" * 200] * 30)), "shots[0].image"),
    "image_url_9000": (_set("shots", 0, "image", "https://x.test/" + "a" * 9000),
                       "shots[0].image: URL too long"),
    "music_5000": (_set("audio", "music", "m" * 5000), "audio.music: path too long"),
    "logo_nul": (_set("output", "logo", {"image": "\0"}), "output.logo.image"),
    "font_folder": (_set("defaults", "caption_style", {"font": "assets"}),
                    "defaults.caption_style.font"),
    "key_5000": (_set("shots", 0, "a" * 5000, 1), "shots[0]"),
    "seed_401_digits": (_set("shots", 0, "seed", 10**400), "a number of 401 characters"),
    "seed_over_64_bits": (_set("shots", 0, "seed", 2**70), "shots[0].seed"),
    "duration_nan": (_set("shots", 0, "duration", float("nan")), "shots[0].duration"),
    "aspect_zero": (_set("output", "aspect_ratio", "9:0"), "output.aspect_ratio"),
}


@pytest.mark.parametrize("case", sorted(WORST))
def test_the_worst_cases_through_the_real_command(board_dir: Path, case: str) -> None:
    """The real `storyreel` process: exit 2 with one-line errors naming the place; no
    traceback on stderr."""
    board = yaml.safe_load((ROOT / "specs" / "demo.yaml").read_text())
    mutation, place = WORST[case]
    mutation(board)
    path = board_dir / "board.yaml"
    path.write_text(yaml.safe_dump(board, allow_unicode=True))
    env = {k: v for k, v in os.environ.items() if k != "STORYREEL_DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "validate", str(path)],
                          capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), proc.stderr[-2000:]
    assert all(len(line) < 1000 for line in lines), "a message quotes the input whole"
    assert place in proc.stderr, proc.stderr[-2000:]


def test_the_last_resort_names_the_error_and_masks_keys(board_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    """An error nobody planned for: one line with its type, a registered key masked, exit 1;
    STORYREEL_DEBUG=1 lets it through with its traceback."""
    from flows.cli import commands as cli
    from providers.errors import register_secret

    secret = "sk-fuzz-0123456789abcdef"
    register_secret(secret)

    def boom(args: Any) -> int:
        raise KeyError(f"vendor said {secret} " + "x" * 5000)

    monkeypatch.setattr(cli, "cmd_schema", boom)
    assert cli.main(["schema"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "KeyError" in err and secret not in err
    assert "***" in err and len(err) < 600 and err.count("\n") == 1
    monkeypatch.setenv("STORYREEL_DEBUG", "1")
    with pytest.raises(KeyError):
        cli.main(["schema"])


ODD_PATHS = {"long": "o" * 5000, "long_name": "d/" + "n" * 300, "nul": "run\0x"}


@pytest.mark.parametrize("odd", sorted(ODD_PATHS))
@pytest.mark.parametrize("command", ["run --out", "cut", "pick", "reconcile", "report", "spec"])
def test_odd_paths_on_the_command_line_are_input_errors(board_dir: Path, command: str,
                                                        odd: str) -> None:
    """A run folder, `--out` or storyboard path no file system takes: exit 2 naming the
    argument, in process through `dispatch` (a NUL cannot be passed to a real process)."""
    demo = str(ROOT / "specs" / "demo.yaml")
    bad = ODD_PATHS[odd]
    argv = {"run --out": ["run", demo, "--out", bad], "cut": ["cut", bad],
            "pick": ["pick", bad, "s", "1"], "reconcile": ["reconcile", bad],
            "report": ["report", str(board_dir), bad], "spec": ["plan", bad]}[command]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert cli.dispatch(argv) == 2
    assert "path" in err.getvalue() and len(err.getvalue()) < 400, err.getvalue()


@pytest.mark.parametrize("odd", sorted(ODD_PATHS))
def test_odd_run_parameters_are_spec_errors(odd: str) -> None:
    """A deployment's `storyboard` and `out` parameters (flows/storyboard/files.py)."""
    from flows.storyboard.files import check_run_params
    from providers.errors import SpecError

    with pytest.raises(SpecError, match="^storyboard: path"):
        check_run_params(ODD_PATHS[odd], None, deployed=True)
    with pytest.raises(SpecError, match="^out: path"):
        check_run_params("specs/demo.yaml", ODD_PATHS[odd], deployed=False)
