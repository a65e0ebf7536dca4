"""Model registry: one interface, an embedded SQLite default and a Comet backend."""

from __future__ import annotations

from digitops.registry.base import (
    ARCHIVED,
    NONE,
    PRODUCTION,
    STAGING,
    ModelVersion,
    Registry,
    RegistryError,
)

__all__ = [
    "ARCHIVED",
    "NONE",
    "PRODUCTION",
    "STAGING",
    "ModelVersion",
    "Registry",
    "RegistryError",
    "get_registry",
]


def get_registry() -> Registry:
    """The active registry: Comet's when ``COMET_API_KEY`` is set, else the embedded SQLite one."""
    from digitops import config

    if config.comet_enabled():
        from digitops.registry.comet import CometRegistry

        return CometRegistry()
    from digitops.registry.sqlite import SqliteRegistry

    return SqliteRegistry()
