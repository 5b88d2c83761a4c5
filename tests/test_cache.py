from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flows.files.digest import file_sha256
from flows.money.cache import ClipCache, cache_key, default_cache_dir

BASE = dict(
    provider="fal",
    model="kling-2.1-standard",
    vendor_model="fal-ai/kling-video/v2.1/standard/text-to-video",
    prompt="a red fox runs through snow",
    negative_prompt=None,
    duration_s=5.0,
    aspect_ratio="16:9",
    resolution="720p",
    width=1280,
    height=720,
    fps=24,
    seed=42,
    params={"cfg_scale": 0.5, "camera": {"pan": "left", "speed": 1}},
    image_sha256=None,
)


def key(**over) -> str:
    return cache_key(**{**BASE, **over})


def test_cache_key_is_stable_and_canonical() -> None:
    k = key()
    assert len(k) == 64 and k == key()
    # equal meanings, equal keys
    assert key(duration_s=5) == k
    assert key(params={"camera": {"speed": 1.0, "pan": "left"}, "cfg_scale": 0.5}) == k
    assert key(negative_prompt="") == k
    assert key(image_sha256="AB" * 32) == key(image_sha256="ab" * 32)
    assert key(params={"xs": (1, 2)}) == key(params={"xs": [1, 2]})


@pytest.mark.parametrize(
    "change",
    [
        {"provider": "replicate"},
        {"model": "kling-2.1-pro"},
        {"vendor_model": "fal-ai/kling-video/v2.1/pro/text-to-video"},
        {"prompt": "a red fox runs through snow."},
        {"negative_prompt": "blur"},
        {"duration_s": 5.5},
        {"aspect_ratio": "9:16"},
        {"resolution": "1080p"},
        {"width": 1920},
        {"height": 1080},
        {"fps": 30},
        {"seed": 43},
        {"seed": None},
        {"params": {"cfg_scale": 0.6, "camera": {"pan": "left", "speed": 1}}},
        {"params": {}},
        {"image_sha256": "ab" * 32},
    ],
)
def test_every_input_changes_the_key(change: dict) -> None:
    assert key(**change) != key()


def test_cache_key_refuses_what_it_cannot_hash_canonically() -> None:
    with pytest.raises(TypeError):
        key(params={"when": object()})
    with pytest.raises(ValueError):
        key(duration_s=float("nan"))


def test_file_sha256(tmp_path: Path) -> None:
    p = tmp_path / "f.bin"
    data = os.urandom(3 << 20)  # spans several read chunks
    p.write_bytes(data)
    assert file_sha256(p) == hashlib.sha256(data).hexdigest()


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STORYREEL_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("STORYREEL_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "storyreel"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "storyreel"


def _clip(tmp_path: Path, data: bytes = b"\x00\x00\x00\x18ftypmp42" + b"x" * 1000) -> Path:
    p = tmp_path / "downloads" / "raw.mp4"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_put_then_get(tmp_path: Path) -> None:
    cache = ClipCache(tmp_path / "cache")
    k = key()
    assert cache.get(k) is None
    src = _clip(tmp_path)
    put = cache.put(k, src, provider="fal", model="kling", job_id="req-1", cost_usd=0.1 + 0.2)
    got = cache.get(k)
    assert got == put
    assert got.path.read_bytes() == src.read_bytes() and got.path.suffix == ".mp4"
    assert got.cost_usd == 0.3 and got.job_id == "req-1" and got.provider == "fal"
    assert got.sha256 == file_sha256(src) and got.size_bytes == src.stat().st_size
    assert got.path.stat().st_ino != src.stat().st_ino  # a copy: the run may rewrite its own
    assert not os.access(got.path, os.W_OK) or os.geteuid() == 0  # read-only guard
    src.write_bytes(b"rewritten in place")  # e.g. ffmpeg -y onto the run's raw file
    assert cache.get(k, verify=True) == put
    src.unlink()  # the run folder goes away; the cache keeps its clip
    assert cache.get(k) is not None and cache.get(k).path.exists()
    leftovers = [p.name for p in got.path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    meta = json.loads((got.path.parent / f"{k}.json").read_text())
    assert meta["file"] == got.path.name and meta["key"] == k


def test_hardlinks_when_asked(tmp_path: Path) -> None:
    cache = ClipCache(tmp_path / "cache", link=True)
    src = _clip(tmp_path)
    entry = cache.put(key(), src, provider="fal", model="m", job_id=None, cost_usd=None)
    assert entry.path.stat().st_ino == src.stat().st_ino


def test_copy_when_hardlink_is_impossible(tmp_path: Path, monkeypatch) -> None:
    def no_links(*_a, **_k):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    cache = ClipCache(tmp_path / "cache", link=True)
    src = _clip(tmp_path)
    entry = cache.put(key(), src, provider="fal", model="m", job_id=None, cost_usd=None)
    assert entry.path.stat().st_ino != src.stat().st_ino
    assert entry.path.read_bytes() == src.read_bytes() and entry.cost_usd is None


def test_damaged_entries_read_as_misses(tmp_path: Path) -> None:
    cache = ClipCache(tmp_path / "cache")
    k = key()
    entry = cache.put(k, _clip(tmp_path), provider="fal", model="m", job_id="j", cost_usd=1)
    meta = entry.path.parent / f"{k}.json"
    os.chmod(entry.path, 0o644)
    with open(entry.path, "r+b") as f:  # truncated clip
        f.truncate(10)
    assert cache.get(k) is None
    entry = cache.put(k, _clip(tmp_path, b"y" * 500), provider="fal", model="m", job_id="j",
                      cost_usd=1)
    assert cache.get(k) == entry
    os.chmod(entry.path, 0o644)
    with open(entry.path, "r+b") as f:  # same size, different bytes: only verify notices
        f.write(b"z")
    assert cache.get(k) == entry and cache.get(k, verify=True) is None
    entry.path.unlink()  # clip gone
    assert cache.get(k) is None
    meta.write_text("{not json")
    assert cache.get(k) is None
    with pytest.raises(ValueError):
        cache.get("../../etc/passwd")
    with pytest.raises(ValueError):
        cache.put(key(), _clip(tmp_path, b""), provider="p", model="m", job_id=None, cost_usd=0)


def test_last_writer_wins(tmp_path: Path) -> None:
    cache = ClipCache(tmp_path / "cache")
    k = key()
    cache.put(k, _clip(tmp_path, b"first" * 100), provider="fal", model="m", job_id="1",
              cost_usd=1)
    again = cache.put(k, _clip(tmp_path, b"first" * 100), provider="fal", model="m", job_id="1",
                      cost_usd=1)
    second = cache.put(k, _clip(tmp_path, b"second" * 100), provider="fal", model="m",
                       job_id="2", cost_usd=2)
    got = cache.get(k)
    assert got == second and got.path.read_bytes() == b"second" * 100
    assert again.path.read_bytes() == b"first" * 100  # an earlier reader's file stays intact


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from flows.money.cache import ClipCache
    root, key, src, n = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    cache = ClipCache(root)
    for i in range(n):
        cache.put(key, src, provider="fal", model="m", job_id=src.name, cost_usd=0.5)
        got = cache.get(key)
        assert got is not None, "a reader saw a torn entry"
        data = got.path.read_bytes()
        assert len(data) == got.size_bytes and data[:1] in (b"a", b"b", b"c"), data[:10]
    """
)


def test_processes_racing_on_one_key(tmp_path: Path) -> None:
    k = key()
    srcs = []
    for i, letter in enumerate("abc"):
        p = tmp_path / f"src{i}" / f"job{letter}.mp4"
        p.parent.mkdir()
        p.write_bytes(letter.encode() * (50_000 + i * 1000))
        srcs.append(p)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path / "cache"), k, str(s), "40"],
            cwd=Path(__file__).resolve().parents[1],
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in srcs
    ]
    for p in procs:
        _, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
    got = ClipCache(tmp_path / "cache").get(k)
    assert got is not None and got.job_id in {s.name for s in srcs}
    # the entry is self-consistent: its metadata names the writer whose bytes it holds
    assert got.path.read_bytes() == {s.name: s for s in srcs}[got.job_id].read_bytes()
    assert file_sha256(got.path) == got.sha256
