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
  the CLI or a parameter, must be a folder we may write (or one we may create), or an
  s3:// URL inside a prefix STORYREEL_ALLOWED_STORES lists (flows/files/store.py).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

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
    try:
        return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]
    # RuntimeError: ~user with no such user, or 3.11's symlink loop
    except (OSError, ValueError, RuntimeError) as exc:
        raise SpecError([("STORYREEL_IMAGE_DIRS", f"cannot use {shown(raw)}: "
                                                  f"{_why(exc)}")]) from None


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


MAX_PATH_CHARS = 1024  # a file a storyboard names (Linux allows 4096 bytes, 255 per name)
MAX_NAME_BYTES = 255
PATH_MAX = 4096  # Linux's, for paths given on the command line or as run parameters
MAX_URL_CHARS = 8192  # a reference image's URL (signed storage URLs run to a few thousand)

Issues = list[tuple[str, str]]


def shown(text: str, limit: int = 120) -> str:
    """`text` for a one-line message: control characters escaped, long text cut short."""
    out = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text[:limit + 1])
    return out if len(text) <= limit and len(out) <= limit else out[:limit - 3] + "..."


def path_problem(ref: str, max_chars: int = MAX_PATH_CHARS) -> str | None:
    """Why no file system would take `ref` as a path, or None: said before asking one, whose
    own answers (ENAMETOOLONG, ValueError for a NUL) are no message for a person."""
    if "\0" in ref:
        return "path contains a NUL character"
    if len(ref) > max_chars:
        return f"path too long ({len(ref)} characters; at most {max_chars})"
    for name in re.split(r"[\\/]", ref):
        size = len(name.encode("utf-8", "surrogatepass"))
        if size > MAX_NAME_BYTES:
            return f"path too long (a name of {size} bytes; at most {MAX_NAME_BYTES})"
    return None


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return f"{type(exc).__name__}: {shown(str(exc), 80)}"


def resolve_ref(ref: str, source: Path, where: str, issues: Issues) -> tuple[Path, Path] | None:
    """(the storyboard's folder, `ref` resolved against it: symlinks followed), or None with
    the problem in `issues`: a path no file system takes, or one that does not resolve (a
    symlink loop, a folder we may not enter)."""
    problem = path_problem(ref)
    if problem:
        issues.append((where, f"{problem}: '{shown(ref, 60)}'"))
        return None
    try:
        base = source.parent.resolve()
        return base, (base / ref).resolve()
    # RuntimeError: Python 3.11's resolve() on a symlink loop
    except (OSError, ValueError, RuntimeError) as exc:
        issues.append((where, f"cannot use '{shown(ref, 60)}': {_why(exc)}"))
        return None


def existing_file(path: Path, where: str, issues: Issues) -> bool:
    """`path` is a file we can stat; otherwise the reason goes to `issues`."""
    try:
        if path.is_file():
            return True
        folder = path.is_dir()
    except (OSError, ValueError) as exc:  # is_file() swallows only ENOENT and its kin
        issues.append((where, f"cannot use {shown(str(path))}: {_why(exc)}"))
        return False
    issues.append((where, f"{shown(str(path))} is a folder, not a file" if folder else
                   f"file not found: {shown(str(path))} (paths are relative to the storyboard)"))
    return False


def url_problem(ref: str) -> str | None:
    """Why `ref` (http/https) is no URL a vendor could fetch, or None."""
    if len(ref) > MAX_URL_CHARS:
        return f"URL too long ({len(ref)} characters; at most {MAX_URL_CHARS})"
    if any(not ch.isprintable() or ch.isspace() for ch in ref):
        return "URL contains spaces or control characters (escape them: %20 ...)"
    try:
        host = urlsplit(ref).hostname
    except ValueError as exc:  # e.g. an unclosed [IPv6 address
        return f"not a valid URL ({exc})"
    return None if host else "URL names no host"


def reference_image(ref: str, source: Path, where: str, issues: Issues
                    ) -> tuple[ImageInput | None, str | None]:
    """A shot's `image:` as sent to vendors, with its hash; problems go to `issues`."""
    if ref.startswith(("http://", "https://")):
        problem = url_problem(ref)
        if problem:
            issues.append((where, f"{problem}: '{shown(ref, 60)}'"))
            return None, None
        return ImageInput(url=ref), hashlib.sha256(ref.encode()).hexdigest()
    if _SCHEME.match(ref) and not re.match(r"^[A-Za-z]:[\\/]", ref):
        issues.append((where, f"'{shown(ref, 40)}' is neither an http(s) URL nor a file path"))
        return None, None
    resolved = resolve_ref(ref, source, where, issues)
    if resolved is None:
        return None, None
    base, path = resolved
    roots = [base, *image_roots()]
    if not any(within(path, r) for r in roots):
        issues.append((where, f"{shown(str(path))} is outside the storyboard's folder {base}; "
                              "images must be in it or below it (STORYREEL_IMAGE_DIRS lists "
                              "other folders to allow)"))
        return None, None
    if not existing_file(path, where, issues):
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
    problem = path_problem(str(storyboard), PATH_MAX)
    if problem:
        raise SpecError([("storyboard", f"{problem}: '{shown(str(storyboard), 60)}'")])
    if _allow_outside():
        return
    root = (project or Path.cwd()).resolve()
    path = Path(storyboard)
    try:
        resolved = (root / path).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: 3.11's symlink loop
        raise SpecError([("storyboard", f"cannot use {shown(str(storyboard))}: "
                                        f"{_why(exc)}")]) from None
    if not within(resolved, root):
        raise SpecError([("storyboard", f"{storyboard} is outside the project folder {root}; "
                                        "a deployment renders storyboards of its project only "
                                        "(STORYREEL_ALLOW_OUTSIDE_PROJECT=1 on the worker "
                                        "allows others)")])


def check_out_dir(out: str | Path | None) -> None:
    """`out` is a folder we may write, or one we may create."""
    if out is None:
        return
    from flows.files.store import check_out_url, is_store_url

    if is_store_url(out):  # a run folder on object storage: only where the operator allows
        check_out_url(str(out))
        return
    problem = path_problem(str(out), PATH_MAX)
    if problem:
        raise SpecError([("out", f"{problem}: '{shown(str(out), 60)}'")])
    try:
        _check_out_dir(Path(out))
    except OSError as exc:  # e.g. a folder on the way we may not enter
        raise SpecError([("out", f"cannot use {shown(str(out))}: {_why(exc)}")]) from None


def _check_out_dir(path: Path) -> None:
    out = shown(str(path))
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
