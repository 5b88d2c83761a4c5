"""Provider id -> adapter class. Adapters are imported on first use (keeps the CLI fast)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # httpx & co. only once an adapter is used: planning needs none of them
    from providers.base import Provider

# provider id -> "module:Class"
BUILTIN: dict[str, str] = {
    "local": "providers.local:LocalProvider",
    "fal": "providers.fal:FalProvider",
    "replicate": "providers.replicate:ReplicateProvider",
    "runway": "providers.runway:RunwayProvider",
    "luma": "providers.luma:LumaProvider",
    "huggingface": "providers.huggingface:HuggingFaceProvider",
    "perf": "providers.perf:PerfProvider",
    "nanogpt": "providers.nanogpt:NanoGPTProvider",
    "videogenapi": "providers.videogenapi:VideoGenAPIProvider",
    "runware": "providers.runware:RunwareProvider",
    "gemini": "providers.gemini:GeminiProvider",
}

_extra: dict[str, type[Provider]] = {}


def register(cls: type[Provider]) -> None:
    """Add (or replace) an adapter, e.g. a test fake."""
    _extra[cls.name] = cls


def provider_names() -> list[str]:
    return sorted(set(BUILTIN) | set(_extra))


def get_provider_class(name: str) -> type[Provider]:
    if name in _extra:
        return _extra[name]
    target = BUILTIN.get(name)
    if target is None:
        raise KeyError(f"unknown provider {name!r} (known: {', '.join(provider_names())})")
    module, _, attr = target.partition(":")
    cls: type[Provider] = getattr(importlib.import_module(module), attr)
    return cls
