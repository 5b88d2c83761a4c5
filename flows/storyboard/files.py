"""The files a storyboard names and the folders a run uses: where they may be, what they are.

A storyboard (and its ${vars}, which a deployment parameter can fill) comes from whoever may
start a run, so nothing it names is read or written just because it is readable or writable:
* a reference image is resolved against the storyboard's folder and must stay inside that
  folder's tree (symlinks resolved), or inside a folder listed in STORYREEL_IMAGE_DIRS; it must
  be a PNG, JPEG, WebP or GIF image (Pillow decides, not the file name) of at most
  STORYREEL_MAX_IMAGE_BYTES (default 20 MiB) and 50 megapixels. It is read once, here; the
  bytes checked are the bytes hashed and sent.
* a deployment's `storyboard` parameter must name a file inside the project (the flow run's
  working folder) unless STORYREEL_ALLOW_OUTSIDE_PROJECT=1 is set on the worker; `out`, from
  the CLI or a parameter, must be a folder we may write (or one we may create).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

from providers.errors import SpecError
from providers.types import ImageInput

IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp",
                 "GIF": "image/gif"}
MAX_IMAGE_PIXELS = 50_000_000
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def max_image_bytes() -> int:
    return int(os.environ.get("STORYREEL_MAX_IMAGE_BYTES", str(20 * 1024 * 1024)))


def image_roots() -> list[Path]:
    """Folders besides the storyboard's own tree that images may come from."""
    raw = os.environ.get("STORYREEL_IMAGE_DIRS", "")
    return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]


def within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def image_mime(data: bytes) -> str:
    """The MIME type of an image Pillow can open and verify; ValueError otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format, im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ValueError(f"{w}x{h} pixels; at most {MAX_IMAGE_PIXELS // 10**6} "
                                 "megapixels")
            im.verify()
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not an image Pillow can read ({type(exc).__name__})") from None
    except (OSError, SyntaxError, EOFError) as exc:
        raise ValueError(f"a damaged image ({exc})") from None
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"a {fmt} image; PNG, JPEG, WebP or GIF are accepted")
    return IMAGE_FORMATS[fmt]


def reference_image(ref: str, source: Path, where: str, issues: list[tuple[str, str]]
                    ) -> tuple[ImageInput | None, str | None]:
    """A shot's `image:` as sent to vendors, with its hash; problems go to `issues`."""
    if ref.startswith(("http://", "https://")):
        return ImageInput(url=ref), hashlib.sha256(ref.encode()).hexdigest()
    if _SCHEME.match(ref) and not re.match(r"^[A-Za-z]:[\\/]", ref):
        issues.append((where, f"'{ref[:40]}' is neither an http(s) URL nor a file path"))
        return None, None
    base = source.parent.resolve()
    path = (base / ref).resolve()
    roots = [base, *image_roots()]
    if not any(within(path, r) for r in roots):
        issues.append((where, f"{path} is outside the storyboard's folder {base}; images "
                              "must be in it or below it (STORYREEL_IMAGE_DIRS lists other "
                              "folders to allow)"))
        return None, None
    if not path.is_file():
        issues.append((where, f"file not found: {path} (paths are relative to the storyboard)"))
        return None, None
    limit = max_image_bytes()
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        issues.append((where, f"cannot read {path}: {exc.strerror or exc}"))
        return None, None
    if len(data) > limit:
        issues.append((where, f"{path} is over {limit} bytes (STORYREEL_MAX_IMAGE_BYTES)"))
        return None, None
    try:
        mime = image_mime(data)
    except ValueError as exc:
        issues.append((where, f"{path} is {exc}"))
        return None, None
    return ImageInput(path=path, data=data, mime=mime), hashlib.sha256(data).hexdigest()


# -- run parameters --------------------------------------------------------------------------

def _allow_outside() -> bool:
    return os.environ.get("STORYREEL_ALLOW_OUTSIDE_PROJECT", "").lower() in ("1", "true", "yes")


def check_storyboard_path(storyboard: str | Path, project: Path | None = None) -> None:
    """A storyboard named by a deployment parameter must be inside the project folder."""
    if _allow_outside():
        return
    root = (project or Path.cwd()).resolve()
    path = Path(storyboard)
    resolved = (root / path).resolve()
    if not within(resolved, root):
        raise SpecError([("storyboard", f"{storyboard} is outside the project folder {root}; "
                                        "a deployment renders storyboards of its project only "
                                        "(STORYREEL_ALLOW_OUTSIDE_PROJECT=1 on the worker "
                                        "allows others)")])


def check_out_dir(out: str | Path | None) -> None:
    """`out` is a folder we may write, or one we may create."""
    if out is None:
        return
    path = Path(out)
    if path.exists():
        if not path.is_dir():
            raise SpecError([("out", f"{out} exists and is not a folder")])
        if not os.access(path, os.W_OK | os.X_OK):
            raise SpecError([("out", f"{out} is a folder we may not write")])
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise SpecError([("out", f"{out} cannot be created: {parent} is not a folder we may "
                                 "write")])


def check_run_params(storyboard: str | Path, out: str | Path | None, *, deployed: bool) -> None:
    """The flow's parameters: a deployment (whoever may trigger it chooses them) may name only
    the project's storyboards; any caller's `out` must be a folder we may write. `vars` are
    checked where they are applied (flows.storyboard.loading.check_overrides)."""
    if deployed:
        check_storyboard_path(storyboard)
    check_out_dir(out)
