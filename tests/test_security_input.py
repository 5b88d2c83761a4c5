"""Hostile storyboards and parameters: YAML bombs and other nasty files end
`storyreel validate` quickly with exit 0/1/2 and no traceback; reference images stay inside the
storyboard's tree, are real images under the cap, and are read once; run parameters get the
same checks from a deployment as from the CLI."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from flows.cli.commands import main
from flows.storyboard.files import check_out_dir, check_run_params, check_storyboard_path
from flows.storyboard.loading import MAX_FILE_BYTES, parse_storyboard
from flows.storyboard.plan import make_plan
from providers.errors import SpecError
from tests.storyboards import write_board

ROOT = Path(__file__).resolve().parents[1]
HEAD = "version: 1\ntitle: t\ndefaults: {provider: local, duration: 1}\n"


def _bomb(levels: int = 9, fan: int = 9) -> str:
    """The issue's measured case: nested aliases, a few hundred bytes, billions of values."""
    text = HEAD + "a0: &a0 [" + ",".join(["x"] * fan) + "]\n"
    for i in range(1, levels + 1):
        text += f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * fan) + "]\n"
    return text + f"shots:\n  - {{id: s, prompt: p, params: {{x: *a{levels}}}}}\n"


def _shots(n: int, extra: str = "") -> str:
    return HEAD + "shots:\n" + "".join(f"  - {{id: s{i}, prompt: p{extra}}}\n" for i in range(n))


NASTY: dict[str, tuple[bytes | str, str | None]] = {
    # name: (file content, a message the output must contain; None: any clean answer)
    "alias bomb": (_bomb(), "aliases expand"),
    "recursive anchor": (HEAD + "x: &a [*a]\nshots: []\n", "recursive"),
    "recursive mapping": ("title: &t {x: *t}\nshots: []\n", "recursive"),
    "deep flow nesting": (HEAD + "shots: " + "[" * 900 + "]" * 900 + "\n", "nested more than"),
    "deep block nesting": (HEAD + "x:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(300)),
                           "nested more than"),
    "flat list of 200k": (HEAD + "shots: [" + ",".join(["1"] * 200_000) + "]\n", "values"),
    "too many shots": (_shots(501), "STORYREEL_MAX_SHOTS"),
    "500 shots": (_shots(500), "ok (500 shots"),
    "500 bad shots": (_shots(500, ", bogus: 1"), "more problems"),
    "huge scalar": (HEAD + "shots: [{id: a, prompt: '" + "x" * 1_000_000 + "'}]\n", None),
    "over 1 MiB": (HEAD + "shots: [{id: a, prompt: '" + "x" * MAX_FILE_BYTES + "'}]\n",
                   "KiB"),
    "variable bomb": (HEAD + "vars: {a: '" + "y" * 90_000 + "'}\nshots:\n" + "".join(
        f"  - {{id: s{i}, prompt: '" + "${a}" * 20 + "'}\n" for i in range(300)),
        "once its ${variables}"),
    "tabs": (HEAD + "\tshots: []\n", "line 4, column 1: malformed YAML"),
    "duplicate keys": (HEAD + "title: u\nshots: []\n", "duplicate key 'title'"),
    "binary junk": (bytes(range(256)) * 40, "not UTF-8"),
    "nul byte": (HEAD + "shots: [{id: a, prompt: \"a\0b\"}]\n", "malformed YAML"),
    "unhashable key": (HEAD + "? [a, b]\n: c\nshots: []\n", "unhashable"),
    "python tag": (HEAD + "x: !!python/object/apply:os.system ['true']\nshots: []\n", None),
    "many documents": (HEAD + "shots: []\n---\n" + HEAD + "shots: []\n", None),
    "empty": ("", None),
    "a list": ("- a\n- b\n", "mapping"),
}


def _limit_memory() -> None:
    # an unbounded expansion (the old code) ends in MemoryError here, not in the machine's swap
    resource.setrlimit(resource.RLIMIT_AS, (3 * 1024**3, 3 * 1024**3))


def validate(path: Path) -> tuple[int, str, float]:
    """`storyreel validate` in a subprocess: exit code, output, CPU seconds it used (CPU, not
    wall time: the test machine's cores are shared)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "validate", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)},
                          preexec_fn=_limit_memory)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc.returncode, proc.stdout + proc.stderr, cpu


@pytest.mark.parametrize("name", list(NASTY))
def test_validate_of_nasty_yaml_ends_fast_and_clean(tmp_path: Path, name: str) -> None:
    content, expected = NASTY[name]
    path = tmp_path / "board.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    code, output, cpu = validate(path)
    assert code in (0, 1, 2), output
    assert "Traceback" not in output and "MemoryError" not in output, output[-2000:]
    assert cpu < 2.0, f"{cpu:.2f} s of CPU"
    assert len(output.splitlines()) <= 60, output[:2000]
    if expected is not None:
        assert expected in output, output[:2000]
    if code == 2:
        assert output.startswith("error: "), output[:500]


TOKENS = st.sampled_from([
    "title: t\n", "shots:\n", "  - ", "{id: a, prompt: b}", "&a ", "&b ", "*a", "*b", "[", "]",
    "{", "}", ", ", ": ", "\t", "- ", "\n", "  ", "'", '"', "!!python/name:os.system", "<<: *a",
    "${x}", "$$", "\0", "# c", "? ", "|\n", ">-\n", "&a [*a]", "%YAML 1.1\n", "---\n", "...\n",
    "duration: 1e999", "seed: 0x10", "image: ../../etc/passwd", "vars: {x: *a}", "\ufeff",
])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TOKENS, max_size=80).map("".join))
def test_any_token_soup_is_a_storyboard_or_a_spec_error(text: str) -> None:
    try:
        parse_storyboard(text)
    except SpecError as exc:
        assert exc.issues and len(exc.issues) <= 51


def test_shot_cap_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORYREEL_MAX_SHOTS", "3")
    with pytest.raises(SpecError, match="4 shots; at most 3"):
        parse_storyboard(_shots(4))
    monkeypatch.setenv("STORYREEL_MAX_SHOTS", "600")
    assert len(parse_storyboard(_shots(501)).shots) == 501


def test_anchors_that_expand_a_little_still_work() -> None:
    """Anchors and merge keys are YAML a team may use: only expansion past the limit is refused."""
    board = parse_storyboard(HEAD + "shots:\n"
                             "  - {id: a, prompt: x, params: &p {camera: dolly}}\n"
                             "  - {id: b, prompt: y, params: {<<: *p, lens: 35mm}}\n")
    assert board.shots[1].params == {"camera": "dolly", "lens": "35mm"}
    board = parse_storyboard(HEAD + "shots:\n"
                             "  - {id: a, prompt: &p 'a lighthouse'}\n"
                             "  - {id: b, prompt: *p}\n")
    assert [s.prompt for s in board.shots] == ["a lighthouse", "a lighthouse"]


# -- reference images --------------------------------------------------------------------------

def _png(path: Path, color: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 36), color).save(path)
    return path


def _image_board(folder: Path, image: str) -> Path:
    return write_board(folder, [{"id": "a", "prompt": "p", "provider": "local",
                                 "duration": 1, "image": image}])


def test_an_image_outside_the_storyboard_tree_is_refused(tmp_path: Path) -> None:
    _png(tmp_path / "private" / "secret.png")
    spec = _image_board(tmp_path / "boards", "../private/secret.png")
    with pytest.raises(SpecError, match=r"shots\[0\]\.image: .*outside the storyboard's folder"):
        make_plan(spec)


def test_a_variable_cannot_point_an_image_outside_the_tree(tmp_path: Path) -> None:
    _png(tmp_path / "secret.png")
    spec = _image_board(tmp_path / "boards", "${img}")
    with pytest.raises(SpecError, match="outside the storyboard's folder"):
        make_plan(spec, {"img": str(tmp_path / "secret.png")})


def test_a_symlink_inside_the_tree_to_a_file_outside_is_refused(tmp_path: Path) -> None:
    secret = _png(tmp_path / "secret.png")
    (tmp_path / "boards").mkdir()
    (tmp_path / "boards" / "innocent.png").symlink_to(secret)
    with pytest.raises(SpecError, match="outside the storyboard's folder"):
        make_plan(_image_board(tmp_path / "boards", "innocent.png"))


def test_image_dirs_setting_allows_another_folder(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _png(tmp_path / "shared" / "logo.png")
    monkeypatch.setenv("STORYREEL_IMAGE_DIRS", str(tmp_path / "shared"))
    plan = make_plan(_image_board(tmp_path / "boards", "../shared/logo.png"))
    assert plan.shots[0].image is not None and plan.shots[0].image.mime == "image/png"


def test_a_file_that_is_not_an_image_is_refused(tmp_path: Path) -> None:
    (tmp_path / "boards").mkdir()
    (tmp_path / "boards" / "notes.png").write_text("API_KEY=sk-live-123\n")
    with pytest.raises(SpecError, match="not an image"):
        make_plan(_image_board(tmp_path / "boards", "notes.png"))


def test_an_image_over_the_size_cap_is_refused(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _png(tmp_path / "boards" / "big.png")
    monkeypatch.setenv("STORYREEL_MAX_IMAGE_BYTES", "50")
    with pytest.raises(SpecError, match="STORYREEL_MAX_IMAGE_BYTES"):
        make_plan(_image_board(tmp_path / "boards", "big.png"))


def test_the_image_sent_is_the_one_checked_and_hashed(tmp_path: Path) -> None:
    """Read once, at planning: changing (or swapping) the file afterwards changes nothing."""
    path = _png(tmp_path / "boards" / "ref.png", "red")
    plan = make_plan(_image_board(tmp_path / "boards", "ref.png"))
    image = plan.shots[0].image
    assert image is not None
    checked = image.data_uri()
    path.write_text("not an image any more")
    assert image.data_uri() == checked and image.read()[1] == "image/png"


# -- run parameters ----------------------------------------------------------------------------

def test_deployment_storyboard_must_be_inside_the_project(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    check_storyboard_path("specs/demo.yaml")
    for outside in ("/etc/passwd", "../outside.yaml", str(tmp_path / "b.yaml")):
        with pytest.raises(SpecError, match="outside the project folder"):
            check_run_params(outside, None, deployed=True)
    check_run_params(str(tmp_path / "b.yaml"), None, deployed=False)  # the CLI's own user
    monkeypatch.setenv("STORYREEL_ALLOW_OUTSIDE_PROJECT", "1")
    check_run_params("/etc/passwd", None, deployed=True)


def test_out_must_be_a_folder_we_may_write(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpecError, match="not a folder"):
        check_out_dir(tmp_path / "file")
    with pytest.raises(SpecError, match="cannot be created"):
        check_out_dir(tmp_path / "file" / "run")
    check_out_dir(tmp_path / "new" / "run")
    check_out_dir(tmp_path)
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(SpecError, match="may not write"):
            check_out_dir(locked)


def test_cli_refuses_an_out_that_is_a_file_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_board(tmp_path, [{"id": "a", "prompt": "p", "provider": "local",
                                   "duration": 1}])
    (tmp_path / "taken").write_text("x")
    assert main(["run", str(spec), "--out", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert "out: " in err and "not a folder" in err and "Traceback" not in err


@pytest.mark.parametrize("variables, message", [
    ({"x": {"nested": "dict"}}, "must be text or a number"),
    ({"x": "y" * 20_000}, "at most 10000"),
    ({"not a name": "v"}, "variable name"),
])
def test_variables_from_outside_are_checked(tmp_path: Path, variables: dict,
                                            message: str) -> None:
    spec = write_board(tmp_path, [{"id": "a", "prompt": "p ${x}", "provider": "local",
                                   "duration": 1}], vars={"x": "1"})
    with pytest.raises(SpecError, match=message):
        make_plan(spec, variables)


@pytest.mark.e2e
async def test_a_deployment_run_checks_its_parameters(prefect_api: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The flow itself (what a deployment runs): a storyboard outside the project and an `out`
    that is a file are refused with the CLI's messages, before anything is planned."""
    import flows.orchestration.flow as pipeline

    spec = write_board(tmp_path, [{"id": "a", "prompt": "p", "provider": "local",
                                   "duration": 1}])
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(pipeline, "deployment", SimpleNamespace(id="a-deployment"))
    with pytest.raises(SpecError, match="outside the project folder"):
        await pipeline.render_storyboard(storyboard=str(spec), out=str(tmp_path / "run"))
    monkeypatch.setattr(pipeline, "deployment", SimpleNamespace(id=None))
    (tmp_path / "taken").write_text("x")
    with pytest.raises(SpecError, match="not a folder"):
        await pipeline.render_storyboard(storyboard=str(spec), out=str(tmp_path / "taken"))
