"""Paths a run folder records about its own files, so that the folder can be moved or copied.

The journal (clip_path, conformed_path), cut.json's report and run.json name files of the run
folder relative to it (`clips/000-opening.mov`), and files elsewhere (the clip cache under
STORYREEL_CACHE_DIR, a storyboard's music) by their absolute path. Readers resolve a relative
path against the folder where they find it.

Records written before this rule hold absolute paths into the folder where the run was made.
`migrate` moves such a path to the folder it is read from: a path inside the folder becomes
relative; a path elsewhere whose last two parts are one of the folder's own file places
(`<anything>/clips/<file>`, `<anything>/raw/<file>`, the layout every run folder has) becomes
that relative path; anything else (the clip cache's `<root>/clips/<ab>/<file>` among them)
stays absolute.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

OWN_PLACES = ("clips", "raw")  # where a run writes the files its records name


def absolute(path: str | os.PathLike[str]) -> Path:
    """`path` made absolute against the working directory, without resolving symlinks."""
    return Path(os.path.abspath(path))


def inside(path: str | os.PathLike[str], folder: Path) -> str | None:
    """`path` relative to `folder` (POSIX separators) when it lies inside it, else None. A
    symlinked folder counts as itself."""
    p, base = absolute(path), absolute(folder)
    for a, b in ((p, base), (p.resolve(), base.resolve())):
        try:
            rel = a.relative_to(b)
        except ValueError:
            continue
        return rel.as_posix() if rel.parts else None
    return None


def stored(path: str | os.PathLike[str], folder: Path) -> str:
    """How a record in `folder` names `path` (relative inside the folder, else absolute); a
    relative `path` is taken relative to the working directory, as callers mean it."""
    rel = inside(path, folder)
    return rel if rel is not None else str(absolute(path))


def resolved(text: str, folder: Path) -> Path:
    """The file a record in `folder` names: a relative path is the folder's own."""
    p = Path(text)
    return p if p.is_absolute() else absolute(folder) / p


def migrate(text: str, folder: Path) -> str:
    """A path an older record holds, as this version stores it (the rule in the module
    docstring). Older records held absolute paths, or paths relative to the working
    directory of the run that wrote them; both are read here as that run's paths."""
    rel = inside(text, folder) if Path(text).is_absolute() else None
    if rel is not None:
        return rel
    p = PurePath(text)
    if len(p.parts) >= 2 and p.parent.name in OWN_PLACES:
        return f"{p.parent.name}/{p.name}"
    return str(absolute(text))
