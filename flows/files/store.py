"""Run folders on object storage: `--out s3://bucket/prefix` (and a deployment's `out`).

A run works in a local scratch folder, as every run does (ffmpeg, SQLite and the run lock want
a local file system), and the folder is mirrored to the store:
* before the run, `pull` brings the run's state from the store (the journal, cut.json,
  review.yaml, the conformed clips, the deliverables), so a run on another machine resumes
  rather than pays again: the folder is relocatable (its records name their files relative to
  it), and each object carries its file's mtime, restored on download, so the up-to-date check
  (flows/run/uptodate.py, which compares sizes and mtimes) holds on the new machine too;
* after the finish, `publish` puts what changed: every file of the folder except the
  intermediates (raw vendor downloads in raw/, dot files such as the run lock, SQLite's
  -wal/-shm). The journal is put as a consistent SQLite snapshot (the backup API), since the run
  still has it open.

The scratch folder is $STORYREEL_SCRATCH_DIR (default $STORYREEL_HOME/scratch, i.e.
~/.storyreel/scratch) / a name derived from the URL, so a rerun on the same machine reuses it;
`.store.json` in it names its URL (so `storyreel cut` on the scratch folder publishes too), and
`.store-sync.json` is what was last synced: per file, the object's ETag, the content's sha256 and
the local size and mtime. With it a rerun that has nothing to do costs one LIST request and a
`stat` per file; nothing is hashed or put.

Who wins when both sides changed: the store. A file whose object changed since this scratch last
synced was written by a run elsewhere that resumed from what was published; a local change the
store has not seen is this machine's own unfinished run, kept only while the store is unchanged.
(A run that crashed before it published leaves the store as it was: resuming it elsewhere starts
from the last published journal. The journal in PostgreSQL, STORYREEL_DB_URL, closes that gap.)

Allowed URLs: only inside a prefix listed in STORYREEL_ALLOWED_STORES (comma-separated), as
local `out` folders are confined (flows/storyboard/files.py). Credentials, region and
AWS_ENDPOINT_URL come from the usual AWS variables, read by boto3 (providers/upload_store.py's
client, shared by every store); nothing here sees or logs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import mimetypes
import os
import re
import sqlite3
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from flows.files.atomic import write_text_atomic
from flows.files.digest import file_sha256
from providers.errors import SpecError, StoreError

MARKER = ".store.json"
SYNC = ".store-sync.json"
JOURNAL = "journal.sqlite"
SKIP_DIRS = frozenset({"raw"})  # raw vendor downloads: intermediates (the clip cache has them)
SKIP_SUFFIXES = (".part", ".tmp", "-wal", "-shm", "-journal")
SINGLE_PUT_BYTES = 256 * 1024 * 1024  # above this, a multipart upload
WORKERS = 8  # requests in flight (each one thread: boto3 is blocking)
META_SHA = "sha256"
META_MTIME = "mtime-ns"


_LOCKS: dict[Path, threading.Lock] = {}  # one sync at a time per folder (its record is
_LOCKS_GUARD = threading.Lock()  # read, changed and written back: the journal's checkpoints
# run beside the finish's publish)


def _sync_lock(folder: Path) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(Path(folder).resolve(), threading.Lock())


def is_store_url(out: object) -> bool:
    return isinstance(out, str) and out.strip().lower().startswith("s3://")


def normalized(url: str) -> tuple[str, str, str]:
    """(url, bucket, prefix) with no trailing slash; SpecError for a URL we would not use."""
    from providers.upload_store import parse_s3_url

    try:
        bucket, prefix = parse_s3_url(url)
    except ValueError as exc:
        raise SpecError([("out", str(exc))]) from None
    if not prefix:
        raise SpecError([("out", f"{url} names a whole bucket; give a prefix for the run, "
                                 "s3://bucket/runs/name")])
    return f"s3://{bucket}/{prefix}", bucket, prefix


def check_out_url(url: str) -> None:
    """`out` on a store must lie inside a prefix the operator allows (STORYREEL_ALLOWED_STORES)."""
    from flows.storyboard.files import shown
    from providers.upload_store import ALLOWED_ENV, _inside, allowed_stores

    norm, _, _ = normalized(url)
    allowed = allowed_stores()
    try:
        if any(_inside(norm, a) for a in allowed):
            return
    except ValueError as exc:
        raise SpecError([("out", f"{ALLOWED_ENV}: {exc}")]) from None
    listed = ", ".join(allowed) if allowed else "none"
    raise SpecError([("out", f"{shown(norm)} is not inside a store the operator allows "
                             f"({ALLOWED_ENV}: {listed}); list its bucket/prefix there, or "
                             "give a local folder")])


def scratch_root() -> Path:
    if explicit := os.environ.get("STORYREEL_SCRATCH_DIR"):
        return Path(explicit).expanduser()
    return Path(os.environ.get("STORYREEL_HOME") or "~/.storyreel").expanduser() / "scratch"


def scratch_for(url: str) -> Path:
    """The local folder a run on `url` works in (made, with its marker, if new)."""
    norm, bucket, prefix = normalized(url)
    tail = re.sub(r"[^A-Za-z0-9._-]+", "-", prefix.rsplit("/", 1)[-1])[:40].strip("-.")
    name = f"{tail or bucket}-{hashlib.sha256(norm.encode()).hexdigest()[:16]}"
    folder = scratch_root() / name
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    if remote_of(folder) != norm:
        write_text_atomic(marker, json.dumps({"url": norm}))
    return folder


def remote_of(folder: Path) -> str | None:
    """The store URL a scratch folder mirrors (None for an ordinary run folder)."""
    try:
        url = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8")).get("url")
    except (OSError, ValueError, AttributeError):
        return None
    return url if is_store_url(url) else None


# -- the mirror ------------------------------------------------------------------------------

@dataclass
class Synced:
    """What one sync did (for the run's output line and the tests)."""

    put: list[str] = field(default_factory=list)
    got: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0

    def line(self, verb: str, url: str) -> str:
        moved = self.put if verb == "published" else self.got
        return (f"{verb}: {url} ({len(moved)} file(s) {'put' if verb == 'published' else 'got'}"
                f", {self.unchanged} unchanged"
                + (f", {len(self.deleted)} removed" if self.deleted else "") + ")")


def _publishable(folder: Path) -> Iterator[tuple[str, Path]]:
    """(relative POSIX name, path) of every file the store gets."""
    for root, dirs, files in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not (rel_root == Path(".") and d in SKIP_DIRS))
        for name in sorted(files):
            if name.startswith(".") or name.endswith(SKIP_SUFFIXES):
                continue
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                yield (rel_root / name).as_posix(), path


def _safe_rel(rel: str) -> bool:
    """An object name that stays inside the scratch folder and is no file we keep local."""
    p = PurePosixPath(rel)
    return bool(rel) and not p.is_absolute() and all(
        part not in ("", ".", "..") and not part.startswith(".") for part in p.parts) \
        and "\\" not in rel and "\0" not in rel and p.parts[0] not in SKIP_DIRS


class RunStore:
    """One run's prefix on the store, mirrored with a scratch folder."""

    def __init__(self, url: str, client: Any = None) -> None:
        self.url, self.bucket, self.prefix = normalized(url)
        self._client = client

    # -- plumbing --

    def client(self) -> Any:
        if self._client is None:
            from providers.upload_store import shared_s3_client

            try:
                self._client = shared_s3_client()
            except ImportError:
                raise StoreError(f"--out {self.url} needs boto3: pip install "
                                 "'storyreel[cloud]'") from None
        return self._client

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}"

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        from providers.upload_store import error_code

        try:
            yield
        except ClientError as exc:  # the code only: a message may echo a signed request
            raise StoreError(f"{what} s3://{self.bucket}/{self.prefix}: "
                             f"{error_code(exc) or 'error'}") from None
        except BotoCoreError as exc:
            raise StoreError(f"{what} s3://{self.bucket}/{self.prefix}: "
                             f"{type(exc).__name__}") from None

    def listing(self) -> dict[str, dict[str, Any]]:
        """rel -> {etag, size} of every object under the prefix."""
        out: dict[str, dict[str, Any]] = {}
        with self._errors("listing"):
            pages = self.client().get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + "/")
            for page in pages:
                for obj in page.get("Contents") or []:
                    rel = obj["Key"][len(self.prefix) + 1:]
                    out[rel] = {"etag": obj.get("ETag"), "size": obj.get("Size")}
        return out

    # -- publish --

    def publish(self, folder: Path, only: str | None = None) -> Synced:
        """Put every file of `folder` whose content (or mtime) the store lacks; delete the
        objects this folder put whose file is gone. One LIST when nothing changed. `only`: that
        one file (the journal's checkpoints during a run), with a HEAD instead of a LIST."""
        with _sync_lock(folder):
            return self._publish(Path(folder), only)

    def _publish(self, folder: Path, only: str | None) -> Synced:
        sync = _read_sync(folder)
        remote = self.listing() if only is None else self._head_one(only)
        done = Synced()
        todo: list[tuple[str, Path]] = []
        local: set[str] = set()
        files = _publishable(folder) if only is None else \
            [(only, folder / only)] if (folder / only).is_file() else []
        for rel, path in files:
            local.add(rel)
            st = path.stat()
            rec, obj = sync.get(rel), remote.get(rel)
            # (not the journal: in WAL mode its main file's stat misses what is in the WAL)
            if rec and obj and rec.get("etag") == obj["etag"] and rel != JOURNAL and \
                    (rec.get("size"), rec.get("mtime_ns")) == (st.st_size, st.st_mtime_ns):
                done.unchanged += 1  # the fast path: nothing hashed, nothing asked
                continue
            todo.append((rel, path))
        gone = [] if only is not None else [
            rel for rel in sync if rel not in local and rel in remote
            and sync[rel].get("etag") == remote[rel]["etag"]]
        with ThreadPoolExecutor(WORKERS) as pool:
            for rel, rec, put in pool.map(lambda t: self._put_if_changed(*t, remote, sync), todo):
                sync[rel] = rec
                if put:
                    done.put.append(rel)
                else:
                    done.unchanged += 1
            for rel in pool.map(self._delete, gone):
                sync.pop(rel, None)
                done.deleted.append(rel)
        for rel in [r for r in sync if r not in local and r not in remote and only is None]:
            sync.pop(rel)  # gone on both sides
        _write_sync(folder, sync)
        return done

    def _head_one(self, rel: str) -> dict[str, dict[str, Any]]:
        from botocore.exceptions import ClientError

        from providers.upload_store import error_code

        with self._errors("reading"):
            try:
                head = self.client().head_object(Bucket=self.bucket, Key=self.key(rel))
            except ClientError as exc:
                if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                    return {}
                raise
        return {rel: {"etag": head["ETag"], "size": head.get("ContentLength")}}

    def _put_if_changed(self, rel: str, path: Path, remote: dict[str, dict[str, Any]],
                        sync: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any], bool]:
        journal = rel == JOURNAL
        with _upload_source(path, journal) as (src, st_mtime):
            st = path.stat()
            # a journal's bytes change when SQLite merely reopens it: it is compared by its rows
            digest = _rows_sha256(src) if journal else file_sha256(src)
            size = src.stat().st_size
            mtime = None if journal else st_mtime  # a journal's mtime says nothing
            rec = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
            obj, old = remote.get(rel), sync.get(rel) or {}
            if journal and obj is not None and old.get("etag") == obj["etag"] \
                    and old.get("sha256") == digest:
                return rel, {**rec, "etag": obj["etag"]}, False
            if obj is not None and (journal or obj["size"] == size):
                with self._errors("reading"):
                    meta = self.client().head_object(Bucket=self.bucket,
                                                     Key=self.key(rel)).get("Metadata") or {}
                if meta.get(META_SHA) == digest and (
                        mtime is None or meta.get(META_MTIME) == str(mtime)):
                    return rel, {**rec, "etag": obj["etag"]}, False
            meta = {META_SHA: digest}
            if mtime is not None:
                meta[META_MTIME] = str(mtime)
            kind = mimetypes.guess_type(rel)[0] or "application/octet-stream"
            s3 = self.client()
            with self._errors("publishing to"):
                if size <= SINGLE_PUT_BYTES:
                    with src.open("rb") as fh:
                        etag = s3.put_object(Bucket=self.bucket, Key=self.key(rel), Body=fh,
                                             ContentType=kind, Metadata=meta)["ETag"]
                else:
                    from boto3.s3.transfer import TransferConfig

                    s3.upload_file(str(src), self.bucket, self.key(rel),
                                   ExtraArgs={"ContentType": kind, "Metadata": meta},
                                   Config=TransferConfig(multipart_threshold=SINGLE_PUT_BYTES))
                    etag = s3.head_object(Bucket=self.bucket, Key=self.key(rel))["ETag"]
            return rel, {**rec, "etag": etag}, True

    def _delete(self, rel: str) -> str:
        with self._errors("removing from"):
            self.client().delete_object(Bucket=self.bucket, Key=self.key(rel))
        return rel

    # -- pull --

    def pull(self, folder: Path) -> Synced:
        """Bring `folder` up to the store: every object that changed since this folder last
        synced (or that it never had) is downloaded, with its mtime; a local file the store
        has not changed is kept (this machine's own newer work)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with _sync_lock(folder):
            return self._pull(folder)

    def _pull(self, folder: Path) -> Synced:
        sync = _read_sync(folder)
        remote = {rel: obj for rel, obj in self.listing().items() if _safe_rel(rel)}
        done = Synced()
        todo = []
        for rel, obj in remote.items():
            rec = sync.get(rel)
            if rec and rec.get("etag") == obj["etag"] and (folder / rel).is_file():
                done.unchanged += 1
                continue
            todo.append(rel)
        # objects removed from the store since the last sync, unchanged here: removed here too
        # (a cut.json the other machine dropped must not vouch for an old final.mp4)
        for rel in [r for r in sync if r not in remote]:
            path = folder / rel
            with contextlib.suppress(OSError):
                st = path.stat()
                if (st.st_size, st.st_mtime_ns) == (sync[rel].get("size"),
                                                    sync[rel].get("mtime_ns")):
                    path.unlink()
                    done.deleted.append(rel)
            sync.pop(rel)
        with ThreadPoolExecutor(WORKERS) as pool:
            for rel, rec, got in pool.map(lambda r: self._get(folder, r), todo):
                sync[rel] = rec
                if got:
                    done.got.append(rel)
                else:
                    done.unchanged += 1
        _write_sync(folder, sync)
        return done

    def _get(self, folder: Path, rel: str) -> tuple[str, dict[str, Any], bool]:
        dest = folder / rel
        s3 = self.client()
        with self._errors("reading"):
            head = s3.head_object(Bucket=self.bucket, Key=self.key(rel))
        meta = head.get("Metadata") or {}
        mtime = _int(meta.get(META_MTIME))
        if dest.is_file() and rel != JOURNAL and meta.get(META_SHA) \
                and dest.stat().st_size == head.get("ContentLength") \
                and file_sha256(dest) == meta[META_SHA]:
            got = False  # the same bytes already here (another sync record, a copied folder)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
            try:
                with os.fdopen(fd, "wb") as fh, self._errors("reading"):
                    body = s3.get_object(Bucket=self.bucket, Key=self.key(rel),
                                         IfMatch=head["ETag"])["Body"]
                    for chunk in iter(lambda: body.read(1 << 20), b""):
                        fh.write(chunk)
                if rel == JOURNAL:  # a stale WAL must never be replayed onto another journal
                    for side in ("-wal", "-shm"):
                        with contextlib.suppress(FileNotFoundError):
                            (folder / f"{JOURNAL}{side}").unlink()
                os.replace(tmp, dest)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            got = True
        if mtime is not None:
            os.utime(dest, ns=(mtime, mtime))
        st = dest.stat()
        return rel, {"etag": head["ETag"], "sha256": meta.get(META_SHA), "size": st.st_size,
                     "mtime_ns": st.st_mtime_ns}, got


@contextlib.contextmanager
def _upload_source(path: Path, journal: bool) -> Iterator[tuple[Path, int]]:
    """The file to upload and its mtime: a SQLite journal as a consistent snapshot (the run
    may still have it open in WAL mode, whose main file alone can lack committed rows)."""
    mtime = path.stat().st_mtime_ns
    if not journal:
        yield path, mtime
        return
    fd, tmp = tempfile.mkstemp(prefix=".journal-snapshot.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            dst.close()
            src.close()
        yield Path(tmp), mtime
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _rows_sha256(db: Path) -> str:
    """sha256 of a SQLite file's schema and rows (its SQL dump), not of its pages."""
    h = hashlib.sha256()
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for line in con.iterdump():
            h.update(line.encode("utf-8", "surrogatepass") + b"\n")
    finally:
        con.close()
    return h.hexdigest()


def _int(text: object) -> int | None:
    try:
        return int(str(text))
    except ValueError:
        return None


def _read_sync(folder: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((folder / SYNC).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def _write_sync(folder: Path, sync: dict[str, dict[str, Any]]) -> None:
    write_text_atomic(folder / SYNC, json.dumps(sync, indent=1, sort_keys=True))


# -- the calls the run makes ---------------------------------------------------------------

def checkout(url: str) -> tuple[Path, Synced]:
    """Check `url`, make its scratch folder, and pull the run's state into it. The caller holds
    the scratch folder's run lock (flows/run/lock.py) when a run may be working it."""
    check_out_url(url)
    folder = scratch_for(url)
    return folder, RunStore(url).pull(folder)


def local_out(out: str | None) -> Path | None:
    """A run's `out` as the folder it works in: a store URL's scratch folder (checked, not yet
    pulled: `pull_if_remote` does that under the run lock), else the path itself."""
    if not out:
        return None
    if is_store_url(out):
        check_out_url(out)
        return scratch_for(out)
    return Path(out)


async def pull_if_remote(folder: Path) -> Synced | None:
    url = remote_of(folder)
    return None if url is None else await asyncio.to_thread(RunStore(url).pull, folder)


def checkpoint_every_s() -> float:
    try:
        return max(1.0, float(os.environ.get("STORYREEL_STORE_CHECKPOINT_S", "10")))
    except ValueError:
        return 10.0


@contextlib.asynccontextmanager
async def checkpoints(folder: Path) -> AsyncIterator[None]:
    """While a run on a store works: its journal goes to the store at once and then every
    STORYREEL_STORE_CHECKPOINT_S (default 10 s) when its rows changed, so a run that dies
    before its finish is resumed elsewhere from the jobs it had at vendors (polled, not
    submitted again), not from the last finished run. A failed checkpoint is retried at the
    next one; the finish's publish is the one that must succeed."""
    url = remote_of(folder)
    if url is None:
        yield
        return
    store = RunStore(url)

    async def loop() -> None:
        while True:
            with contextlib.suppress(StoreError, OSError, sqlite3.Error):
                await asyncio.to_thread(store.publish, folder, JOURNAL)
            await asyncio.sleep(checkpoint_every_s())

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def publish_if_remote(folder: Path, log: Any = None) -> Synced | None:
    """After the finish: put the run folder's deliverables and state on its store (a no-op for
    an ordinary run folder)."""
    url = remote_of(folder)
    if url is None:
        return None
    try:
        done = await asyncio.to_thread(RunStore(url).publish, folder)
    except StoreError as exc:
        raise StoreError(f"{exc}; the run is complete in {folder}: run it again with the same "
                         "out to publish it (nothing is paid again)") from None
    if log is not None:
        log(done.line("published", url))
    return done
