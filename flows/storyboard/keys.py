"""API keys: from the official SDKs' environment variables, or a Prefect Secret block named in
the storyboard's `keys:` (resolved by the orchestration layer, which may import prefect)."""

from __future__ import annotations

import os

from providers.errors import MissingKeyError, register_secret
from providers.registry import get_provider_class


def key_env(provider: str) -> str | None:
    return get_provider_class(provider).key_env


def env_key(provider: str) -> str | None:
    """The provider's key from its environment variable (None when it needs none or is unset)."""
    name = key_env(provider)
    value = os.environ.get(name) if name else None
    register_secret(value)
    return value or None


def missing_keys(providers: set[str], secret_blocks: dict[str, str]) -> list[str]:
    """One message per provider that needs a key and has neither env var nor Secret block."""
    out = []
    for p in sorted(providers):
        name = key_env(p)
        if name and not os.environ.get(name) and p not in secret_blocks:
            out.append(f"no API key for provider '{p}': set {name} or name a Prefect Secret "
                       f"block under keys: {{{p}: <block-name>}}")
    return out


def require_keys(providers: set[str], secret_blocks: dict[str, str]) -> None:
    problems = missing_keys(providers, secret_blocks)
    if problems:
        raise MissingKeyError("\n".join(problems))
