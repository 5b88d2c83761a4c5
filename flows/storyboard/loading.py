"""Read a storyboard file: YAML (safe), ${var} substitution, validation with path-named errors.

A storyboard may come from anyone on a team or from a deployment parameter, so reading one is
bounded before anything is expanded: the file's size, its nesting, what its aliases expand to
(a few hundred bytes of nested aliases would otherwise expand to gigabytes), the number of
shots, what ${var} substitution may grow a field to, and the number of problems reported.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from flows.storyboard.files import shown
from flows.storyboard.spec import Storyboard
from providers.errors import SpecError

# libyaml's parser when the wheel has it (every PyPI wheel does): ~10x less CPU than pure Python
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_RESOLVER = yaml.resolver.Resolver()
_NUMBER_TAGS = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}

VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\$")
# fields whose text may use ${var}; ids and providers stay literal on purpose
_SUBSTITUTED = {"title", "prompt", "style", "negative_prompt", "image", "caption", "text", "subtitle",
                "description"}

MAX_FILE_BYTES = 1024 * 1024  # a storyboard, not a data set
MAX_DEPTH = 32  # levels of nesting (a storyboard needs about 5)
MAX_VALUES = 50_000  # scalars, lists and mappings in the file (500 shots need about 10,000)
MAX_ALIAS_NODES = 50_000  # values aliases may add once expanded
MAX_EXPANDED_CHARS = 8 * 1024 * 1024  # text of the whole document once aliases are expanded
MAX_FIELD_CHARS = 100_000  # one text field after ${var} substitution
MAX_VAR_CHARS = 10_000  # one variable's value given with --var or a deployment parameter
MAX_NUMBER_CHARS = 400  # one number as written (1e308 needs 5; Python reads ints up to 4300)
MAX_ISSUES = 50  # problems listed; the rest are counted
DEFAULT_MAX_SHOTS = 500


def max_shots() -> int:
    """STORYREEL_MAX_SHOTS (default 500): more shots are refused, before any validation."""
    try:
        return max(1, int(os.environ.get("STORYREEL_MAX_SHOTS", DEFAULT_MAX_SHOTS)))
    except ValueError:
        return DEFAULT_MAX_SHOTS


def place(loc: tuple[Any, ...]) -> str:
    """('shots', 3, 'duration') -> 'shots[3].duration'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:  # a key as the file spells it, which may be anything
            name = shown(str(part), 60)
            out += f".{name}" if out else name
    return out


def _line_index(root: yaml.Node | None) -> dict[tuple[Any, ...], int]:
    """Map each YAML path to its 1-based line, so errors can point into the file.
    `root` has passed _scan, so walking its aliases is bounded."""
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

    if root is not None:
        walk(root, ())
    return index


@dataclass
class _Open:
    """A mapping or sequence whose end event has not come yet."""

    anchor: str | None
    is_map: bool
    items: int = 0
    nodes: int = 1
    chars: int = 0
    keys: dict[str, int] = field(default_factory=dict)


def _scan(text: str) -> None:
    """One pass over the parser's events, before anything is composed or expanded: refuse
    more than MAX_VALUES values, nesting deeper than MAX_DEPTH, aliases that recurse or
    would add more than MAX_ALIAS_NODES values or MAX_EXPANDED_CHARS of text once expanded,
    and mappings that repeat a key. Each stops at the event that crosses the line."""
    sizes: dict[str, tuple[int, int]] = {}  # anchor -> (values, chars) once expanded
    stack: list[_Open] = []
    added_nodes = added_chars = count = 0

    def fail(event: yaml.Event, message: str) -> SpecError:
        return SpecError([(f"line {event.start_mark.line + 1}", message)])

    def add(event: yaml.Event, nodes: int, chars: int, key: str | None) -> None:
        if not stack:
            return
        top = stack[-1]
        if top.is_map and top.items % 2 == 0 and key is not None and key != "<<":
            if key in top.keys:
                raise fail(event, f"duplicate key '{key[:60]}' (also line {top.keys[key]})")
            top.keys[key] = event.start_mark.line + 1
        top.items += 1
        top.nodes += nodes
        top.chars += chars

    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.NodeEvent):
            count += 1
            if count > MAX_VALUES:
                raise fail(event, f"more than {MAX_VALUES} values; a storyboard has far "
                                  "fewer (split it, or shorten long lists)")
        if isinstance(event, yaml.CollectionStartEvent):
            stack.append(_Open(event.anchor, isinstance(event, yaml.MappingStartEvent)))
            if len(stack) > MAX_DEPTH:
                raise fail(event, f"nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            done = stack.pop()
            if done.anchor is not None:
                sizes[done.anchor] = (done.nodes, done.chars)
            add(event, done.nodes, done.chars, None)
        elif isinstance(event, yaml.ScalarEvent):
            if (len(event.value) > MAX_NUMBER_CHARS and event.implicit[0]
                    and _RESOLVER.resolve(yaml.ScalarNode, event.value, event.implicit)
                    in _NUMBER_TAGS):
                # Python refuses to read ints of over 4300 digits (a ValueError, not YAML's)
                raise fail(event, f"a number of {len(event.value)} characters; at most "
                                  f"{MAX_NUMBER_CHARS}")
            if event.anchor is not None:
                sizes[event.anchor] = (1, len(event.value))
            add(event, 1, len(event.value), event.value)
        elif isinstance(event, yaml.AliasEvent):
            if any(o.anchor == event.anchor for o in stack):
                raise fail(event, f"alias *{event.anchor} refers to a value that contains it "
                                  "(recursive anchors are not allowed)")
            nodes, chars = sizes.get(event.anchor or "", (1, 0))
            added_nodes += nodes
            added_chars += chars
            if added_nodes > MAX_ALIAS_NODES or added_chars > MAX_EXPANDED_CHARS:
                raise fail(event, f"aliases expand this storyboard past {MAX_ALIAS_NODES} "
                                  f"extra values or {MAX_EXPANDED_CHARS // 2**20} MiB of "
                                  "text; write the repeated parts out, or put what shots "
                                  "share under defaults:")
            add(event, nodes, chars, None)


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
        grown = [len(data)]

        def repl(m: re.Match[str]) -> str:
            if m[0] == "$$":
                return "$"
            name = m[1]
            if name not in variables:
                known = ", ".join(sorted(variables)) or "none defined"
                issues.append((loc, f"unknown variable ${{{name}}} (known: {known}; "
                                    "define it under vars: or pass --var name=value)"))
                return m[0]
            value = str(variables[name])
            grown[0] += len(value)
            if grown[0] > MAX_FIELD_CHARS:
                raise _TooLong
            return value
        try:
            return VAR.sub(repl, data)
        except _TooLong:
            issues.append((loc, f"longer than {MAX_FIELD_CHARS} characters once its "
                                "${variables} are filled in"))
            return data
    return data


class _TooLong(Exception):
    """Stops a substitution that would grow past MAX_FIELD_CHARS (before building it)."""


def load_storyboard(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Storyboard:
    """Parse and validate a storyboard file; raises SpecError naming every problem's place."""
    path = Path(path)
    source = shown(str(path), 200)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise SpecError([("", "file not found")], source) from None
    except IsADirectoryError:
        raise SpecError([("", "is a folder, not a storyboard file")], source) from None
    except UnicodeDecodeError as exc:
        raise SpecError([("", f"not UTF-8 text (byte {exc.start})")], source) from None
    except OSError as exc:
        raise SpecError([("", f"cannot read: {exc.strerror or exc}")], source) from None
    except ValueError:  # a NUL in the name (os.open's own complaint)
        raise SpecError([("", "cannot read: the file name contains a NUL character")],
                        source) from None
    return parse_storyboard(text, source, overrides)


def check_overrides(overrides: Mapping[str, Any]) -> None:
    """Variables given from outside (--var, a deployment's `vars`): names ${} can use, plain
    values of bounded length."""
    issues = []
    if len(overrides) > 200:
        issues.append(("vars", f"{len(overrides)} variables; at most 200"))
    for name, value in list(overrides.items())[:200]:
        where = f"vars.{str(name)[:40]}"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            issues.append((where, "a variable name is letters, digits and _ (not first)"))
        elif value is not None and not isinstance(value, str | int | float | bool):
            issues.append((where, f"must be text or a number, not {type(value).__name__}"))
        elif len(str(value)) > MAX_VAR_CHARS:
            issues.append((where, f"{len(str(value))} characters; at most {MAX_VAR_CHARS}"))
    if issues:
        raise SpecError(issues)


def parse_storyboard(text: str, source: str = "<storyboard>",
                     overrides: Mapping[str, Any] | None = None) -> Storyboard:
    if len(text) > MAX_FILE_BYTES or len(text.encode("utf-8", "replace")) > MAX_FILE_BYTES:
        raise SpecError([("", f"over {MAX_FILE_BYTES // 1024} KiB; a storyboard is smaller "
                              "(put long texts in variables, images in files)")], source)
    if overrides:
        try:
            check_overrides(overrides)
        except SpecError as exc:
            raise SpecError(exc.issues, source) from None
    data, lines = read_yaml(text, source)
    if not isinstance(data, dict):
        raise SpecError([("", "a storyboard must be a YAML mapping with title: and shots:")], source)
    shots = data.get("shots")
    if isinstance(shots, list) and len(shots) > max_shots():
        raise SpecError([("shots", f"{len(shots)} shots; at most {max_shots()} (set "
                                   "STORYREEL_MAX_SHOTS to allow more)")], source)

    raw_vars = data.get("vars") or {}
    if not isinstance(raw_vars, dict):
        raw_vars = {}
    variables = {**raw_vars, **(overrides or {})}
    issues: list[tuple[tuple[Any, ...], str]] = []
    data = substitute(data, variables, (), issues)
    if overrides:
        data["vars"] = {**raw_vars, **overrides}
    if issues:
        raise SpecError(_bounded([(_where(loc, lines), msg) for loc, msg in issues]), source)
    try:
        return Storyboard.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_bounded(_render(exc, lines)), source) from None


def read_yaml(text: str, source: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """Parse once, bounded (size, nesting, alias expansion: `_scan`), into the data and the
    line of every place in it; malformed YAML is a SpecError naming its line."""
    loader = _LOADER(text)
    try:
        _scan(text)  # bounds everything below
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([(where, f"malformed YAML: {problem}")], source) from None
    except SpecError as exc:
        raise SpecError(exc.issues, source) from None
    except RecursionError:
        raise SpecError([("", f"nested more than {MAX_DEPTH} levels deep")], source) from None
    finally:
        loader.dispose()
    return data, _line_index(root)


def _bounded(issues: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The first MAX_ISSUES problems, and how many more there are."""
    if len(issues) <= MAX_ISSUES:
        return issues
    return issues[:MAX_ISSUES] + [("", f"... and {len(issues) - MAX_ISSUES} more problems")]


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
            msg = f"unknown field '{shown(str(loc[-1]), 60)}'" + _allowed_hint(loc)
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

    model = _model_at(spec.Storyboard, loc[:-1])
    fields = ", ".join(model.model_fields)  # type: ignore[attr-defined]
    return f" (allowed: {fields})"


def _model_at(model: type, path: tuple[Any, ...]) -> type:
    """The pydantic model that holds the field at `path` (shots[3].x -> Shot, output.logo.x -> Logo)."""
    from typing import get_args

    from pydantic import BaseModel

    for part in path:
        if isinstance(part, int):
            continue
        f = model.model_fields.get(part)  # type: ignore[attr-defined]
        if f is None:
            break
        todo, found = [f.annotation], None
        while todo and found is None:
            t = todo.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                found = t
            else:
                todo.extend(get_args(t))
        if found is None:
            break
        model = found
    return model
