"""Read a storyboard file: YAML (safe), ${var} substitution, validation with path-named errors."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from flows.storyboard.spec import Storyboard
from providers.errors import SpecError

# libyaml's parser when the wheel has it (every PyPI wheel does): ~10x less CPU than pure Python
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\$")
# fields whose text may use ${var}; ids and providers stay literal on purpose
_SUBSTITUTED = {"title", "prompt", "style", "negative_prompt", "image"}


def place(loc: tuple[Any, ...]) -> str:
    """('shots', 3, 'duration') -> 'shots[3].duration'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _line_index(text: str) -> dict[tuple[Any, ...], int]:
    """Map each YAML path to its 1-based line, so errors can point into the file."""
    index: dict[tuple[Any, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[Any, ...]) -> None:
        index.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                k = key.value
                index[path + (k,)] = key.start_mark.line + 1
                walk(value, path + (k,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (i,))

    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError:
        return index
    if root is not None:
        walk(root, ())
    return index


def substitute(data: Any, variables: Mapping[str, Any], loc: tuple[Any, ...] = (),
               issues: list[tuple[tuple[Any, ...], str]] | None = None) -> Any:
    """Replace ${name} in text fields; `$$` is a literal `$`. Unknown names are reported."""
    assert issues is not None
    if isinstance(data, dict):
        return {k: substitute(v, variables, loc + (k,), issues) for k, v in data.items()}
    if isinstance(data, list):
        return [substitute(v, variables, loc + (i,), issues) for i, v in enumerate(data)]
    field = next((p for p in reversed(loc) if isinstance(p, str)), "")
    if isinstance(data, str) and field in _SUBSTITUTED:
        def repl(m: re.Match[str]) -> str:
            if m[0] == "$$":
                return "$"
            name = m[1]
            if name not in variables:
                known = ", ".join(sorted(variables)) or "none defined"
                issues.append((loc, f"unknown variable ${{{name}}} (known: {known}; "
                                    "define it under vars: or pass --var name=value)"))
                return m[0]
            return str(variables[name])
        return VAR.sub(repl, data)
    return data


def load_storyboard(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Storyboard:
    """Parse and validate a storyboard file; raises SpecError naming every problem's place."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([("", "file not found")], source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([("", f"cannot read: {exc}")], source) from None
    return parse_storyboard(text, source, overrides)


def parse_storyboard(text: str, source: str = "<storyboard>",
                     overrides: Mapping[str, Any] | None = None) -> Storyboard:
    try:
        data = yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([(where, f"malformed YAML: {problem}")], source) from None
    if not isinstance(data, dict):
        raise SpecError([("", "a storyboard must be a YAML mapping with title: and shots:")], source)
    lines = _line_index(text)

    raw_vars = data.get("vars") or {}
    if not isinstance(raw_vars, dict):
        raw_vars = {}
    variables = {**raw_vars, **(overrides or {})}
    issues: list[tuple[tuple[Any, ...], str]] = []
    data = substitute(data, variables, (), issues)
    if overrides:
        data["vars"] = {**raw_vars, **overrides}
    if issues:
        raise SpecError([(_where(loc, lines), msg) for loc, msg in issues], source)
    try:
        return Storyboard.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_render(exc, lines), source) from None


def _where(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> str:
    line = None
    for n in range(len(loc), -1, -1):
        line = lines.get(tuple(loc[:n]))
        if line:
            break
    name = place(loc)
    return f"{name} (line {line})" if line and name else name


def _render(exc: ValidationError, lines: dict[tuple[Any, ...], int]) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
        msg = err["msg"].removeprefix("Value error, ")
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = f"unknown field '{loc[-1]}'" + _allowed_hint(loc)
        elif kind == "missing":
            msg = "required field is missing"
        elif kind == "literal_error" and "transition" in loc:
            continue  # reported once by the str/object union branch below
        if loc and loc[-1] == "" or not loc:
            # model-level validator: the message carries its own place
            m = re.match(r"^([\w\[\]\.]+): (.*)$", msg, re.S)
            if m:
                out.append((m[1], m[2]))
                continue
        out.append((_where(loc, lines), msg))
    return out or [("", str(exc))]


_UNION_TAGS = {"Transition", "literal['cut','crossfade','fade_black']"}


def _allowed_hint(loc: tuple[Any, ...]) -> str:
    from flows.storyboard import spec

    parents = {"output": spec.Output, "budget": spec.Budget, "defaults": spec.Defaults}
    model: type = spec.Storyboard
    if len(loc) >= 3 and loc[0] == "shots":
        model = spec.Shot
    elif len(loc) >= 3 and loc[:2] == ("budget", "window"):
        model = spec.Window
    elif len(loc) >= 2 and loc[0] in parents:
        model = parents[loc[0]]
    fields = ", ".join(model.model_fields)  # type: ignore[attr-defined]
    return f" (allowed: {fields})"
