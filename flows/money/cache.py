"""Content-addressed clip cache, shared by every run on a machine (or a shared volume).

The key is the sha256 of a canonical JSON of everything that decides what a
vendor renders: provider, model, the vendor's model id, prompt, negative
prompt, duration, aspect, resolution, size, fps, seed, pass-through params and
the hash of the reference image. An edited storyboard therefore reuses every
unchanged shot; a changed word in one prompt re-renders that shot only.

Layout: ROOT/clips/<key[:2]>/<key>.<sha256[:16]><ext> holds a copy of the RAW vendor
download (before conforming, so a house-format change does not need a new
render), and <key>.json beside it is the entry's metadata and its commit
marker: it is written last, atomically, and names the clip file. Clip files
are named by their own content, so two processes racing on one key each
publish a complete file and the last metadata written wins; the loser's clip
is an unreferenced orphan, never a torn file.

Shared by many machines: STORYREEL_CACHE_URL=s3://bucket/prefix mirrors the same layout on an
S3-compatible store (providers/upload_store.py's client). A local miss asks the store (the
metadata object, then the clip, whose sha256 is checked before it is kept), and a new clip is
put there (clip first, metadata last: the same commit rule), so workers reuse each other's paid
clips. The store is a help, never a condition: when it fails, the run goes on with its local
cache and says so once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.files.atomic import write_text_atomic
from flows.files.digest import file_sha256
from flows.money.usd import as_float

KEY_VERSION = 1  # bump when the key's material changes meaning
CACHE_URL_ENV = "STORYREEL_CACHE_URL"
log = logging.getLogger(__name__)


def cache_key(
    *,
    provider: str,
    model: str,
    vendor_model: str,
    prompt: str,
    negative_prompt: str | None,
    duration_s: float,
    aspect_ratio: str,
    resolution: str,
    width: int,
    height: int,
    fps: int,
    seed: int | None,
    params: dict[str, Any],
    image_sha256: str | None,
) -> str:
    """sha256 hex of the canonical JSON of what decides the rendered clip."""
    material = {
        "v": KEY_VERSION,
        "provider": provider,
        "model": model,
        "vendor_model": vendor_model,
        "prompt": prompt,
        "negative_prompt": negative_prompt or None,  # "" and None ask for the same thing
        "duration_s": duration_s,
        "aspect_ratio": aspect_ratio,
        "resolution": resolution,
        "width": width,
        "height": height,
        "fps": fps,
        "seed": seed,
        "params": params,
        "image_sha256": image_sha256.lower() if image_sha256 else None,
    }
    canonical = _canonical(material)
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical(value: Any) -> Any:
    """JSON-ready value where equal meanings serialise equally (5 == 5.0, tuple == list)."""
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cache key material must be finite, got {value!r}")
        return int(value) if value.is_integer() else round(value, 9)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cache key material cannot hold {type(value).__name__}: {value!r}")


def default_cache_dir() -> Path:
    """STORYREEL_CACHE_DIR, else $XDG_CACHE_HOME/storyreel, else ~/.cache/storyreel."""
    if explicit := os.environ.get("STORYREEL_CACHE_DIR"):
        return Path(explicit).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "storyreel"
    return Path.home() / ".cache" / "storyreel"


@dataclass(frozen=True)
class CachedClip:
    path: Path
    provider: str
    model: str
    job_id: str | None
    cost_usd: float | None  # what the original render cost; a reuse costs 0
    created_at: str
    sha256: str = ""
    size_bytes: int = 0


class ClipCache:
    """`link=True` hardlinks instead of copying (same filesystem only). Off by default: a
    hardlinked file shares its inode, so anything that later rewrites the run's copy in place
    (ffmpeg -y, open(..., "wb")) would silently change the cached clip too."""

    def __init__(self, root: Path, *, link: bool = False, url: str | None = None) -> None:
        self.root = Path(root)
        self.link = link
        url = url if url is not None else os.environ.get(CACHE_URL_ENV) or None
        self.remote = RemoteClips(url) if url else None

    def _dir(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key (64 lowercase hex digits): {key!r}")
        return self.root / "clips" / key[:2]

    def get(self, key: str, *, verify: bool = False) -> CachedClip | None:
        """The entry for `key`, or None when absent or not intact (missing or resized clip;
        with `verify`, also a clip whose sha256 no longer matches). A local miss asks the
        store (STORYREEL_CACHE_URL), which blocks: async callers use `aget`."""
        hit = self._get_local(key, verify=verify)
        if hit is None and self.remote is not None and self.remote.fetch(key, self._dir(key)):
            hit = self._get_local(key, verify=verify)
        return hit

    async def aget(self, key: str) -> CachedClip | None:
        """`get` for the event loop: the store is asked in a thread."""
        hit = self._get_local(key)
        if hit is None and self.remote is not None:
            import asyncio

            hit = await asyncio.to_thread(self.get, key)
        return hit

    def _get_local(self, key: str, *, verify: bool = False) -> CachedClip | None:
        meta_path = self._dir(key) / f"{key}.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            clip = meta_path.parent / meta["file"]
            if clip.stat().st_size != meta["size_bytes"] or meta["size_bytes"] <= 0:
                return None
            if verify and file_sha256(clip) != meta["sha256"]:
                return None
            return CachedClip(
                path=clip,
                provider=meta["provider"],
                model=meta["model"],
                job_id=meta.get("job_id"),
                cost_usd=meta.get("cost_usd"),
                created_at=meta["created_at"],
                sha256=meta["sha256"],
                size_bytes=meta["size_bytes"],
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(
        self,
        key: str,
        src: Path,
        *,
        provider: str,
        model: str,
        job_id: str | None,
        cost_usd: float | None,
    ) -> CachedClip:
        """Publish `src` (the raw vendor download) under `key`; atomic, last writer wins."""
        src = Path(src)
        folder = self._dir(key)
        folder.mkdir(parents=True, exist_ok=True)
        digest = file_sha256(src)
        size = src.stat().st_size
        if size <= 0:
            raise ValueError(f"refusing to cache an empty file: {src}")
        clip = folder / f"{key}.{digest[:16]}{src.suffix or '.mp4'}"
        if not (clip.exists() and clip.stat().st_size == size):
            _publish(src, clip, link=self.link, read_only=True)
        entry = CachedClip(
            path=clip,
            provider=provider,
            model=model,
            job_id=job_id,
            cost_usd=None if cost_usd is None else as_float(cost_usd),
            created_at=datetime.now(UTC).isoformat(),
            sha256=digest,
            size_bytes=size,
        )
        meta = {**asdict(entry), "file": clip.name, "key": key}
        del meta["path"]
        write_text_atomic(folder / f"{key}.json", json.dumps(meta, indent=1, sort_keys=True))
        if self.remote is not None:
            self.remote.share(key, clip, folder / f"{key}.json")
        return entry


    def forget(self, key: str, sha256: str) -> None:
        """Drop the entry for `key` if it still names the clip with this digest (a clip found
        unusable after it was cached); the clip file stays until the cache is pruned."""
        meta_path = self._dir(key) / f"{key}.json"
        try:
            if json.loads(meta_path.read_text(encoding="utf-8")).get("sha256") == sha256:
                meta_path.unlink()
        except (OSError, ValueError, AttributeError):
            pass
        if self.remote is not None:  # else the next local miss would fetch it back
            self.remote.forget(key, sha256)


def _temp_name(folder: Path, name: str) -> Path:
    """A fresh unused name in `folder` (same filesystem, so os.replace is atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    os.unlink(tmp)  # os.link needs the name free; mkstemp only reserved a unique one
    return Path(tmp)


def _publish(src: Path, dest: Path, *, link: bool, read_only: bool) -> None:
    """Make `dest` a complete copy (or hardlink) of `src` in one atomic rename."""
    tmp = _temp_name(dest.parent, dest.name)
    try:
        linked = False
        if link:
            try:
                os.link(src, tmp)
                linked = True
            except OSError:  # another filesystem, or links not allowed: copy instead
                pass
        if not linked:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            if read_only:  # a guard against in-place rewrites (root ignores it, hence copies)
                os.chmod(tmp, 0o444)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


class RemoteClips:
    """The clip cache's layout under `s3://bucket/prefix` (clips/<ab>/<key>.json + the clip)."""

    def __init__(self, url: str) -> None:
        from providers.upload_store import parse_s3_url

        self.url = url
        self.bucket, self.prefix = parse_s3_url(url)
        self._client: Any = None
        self._warned = False

    def _key(self, name: str) -> str:
        rel = f"clips/{name[:2]}/{name}"
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def client(self) -> Any:
        if self._client is None:
            from providers.upload_store import shared_s3_client

            self._client = shared_s3_client()
        return self._client

    def _failed(self, what: str, exc: BaseException) -> None:
        from providers.upload_store import error_code

        code = error_code(exc) if hasattr(exc, "response") else type(exc).__name__
        if not self._warned:  # once per run: the local cache carries on
            self._warned = True
            log.warning("clip cache %s: %s failed (%s); using the local cache only",
                        self.url, what, code or "error")

    def fetch(self, key: str, folder: Path) -> bool:
        """Copy the store's entry for `key` into the local cache folder; False when the store
        has none (or fails, or its clip does not match its metadata)."""
        try:
            s3 = self.client()
            try:
                body = s3.get_object(Bucket=self.bucket, Key=self._key(f"{key}.json"))["Body"]
            except Exception as exc:
                if _missing(exc):
                    return False
                raise
            meta = json.loads(body.read(1 << 20))
            name = str(meta["file"])
            if meta.get("key") != key or not name.startswith(f"{key}.") or "/" in name:
                return False
            folder.mkdir(parents=True, exist_ok=True)
            tmp = _temp_name(folder, name)
            try:
                s3.download_file(self.bucket, self._key(name), str(tmp))
                if tmp.stat().st_size != meta["size_bytes"] or file_sha256(tmp) != meta["sha256"]:
                    return False  # a torn or foreign object: never cached as this key
                os.chmod(tmp, 0o444)
                os.replace(tmp, folder / name)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            write_text_atomic(folder / f"{key}.json", json.dumps(meta, indent=1, sort_keys=True))
            return True
        except Exception as exc:  # noqa: BLE001 - a store problem is never the run's
            self._failed("reading", exc)
            return False

    def share(self, key: str, clip: Path, meta_path: Path) -> None:
        """Put a new entry on the store: the clip (unless there), then its metadata."""
        try:
            s3 = self.client()
            clip_key = self._key(clip.name)
            try:
                s3.head_object(Bucket=self.bucket, Key=clip_key)
            except Exception as exc:
                if not _missing(exc):
                    raise
                s3.upload_file(str(clip), self.bucket, clip_key)
            s3.put_object(Bucket=self.bucket, Key=self._key(f"{key}.json"),
                          Body=meta_path.read_bytes(), ContentType="application/json")
        except Exception as exc:  # noqa: BLE001 - the clip is paid and cached here; go on
            self._failed("sharing a clip", exc)

    def forget(self, key: str, sha256: str) -> None:
        try:
            s3 = self.client()
            name = self._key(f"{key}.json")
            meta = json.loads(s3.get_object(Bucket=self.bucket, Key=name)["Body"].read(1 << 20))
            if meta.get("sha256") == sha256:
                s3.delete_object(Bucket=self.bucket, Key=name)
        except Exception as exc:  # noqa: BLE001 - gone already, or the store is down
            if not _missing(exc):
                self._failed("forgetting a clip", exc)


def _missing(exc: BaseException) -> bool:
    from providers.upload_store import error_code

    return hasattr(exc, "response") and error_code(exc) in ("404", "NoSuchKey", "NotFound")
