"""Comet's model registry, re-exported from :mod:`digitops.comet.registry`."""

from __future__ import annotations

from digitops.comet.registry import (
    CometRegistry,
    CometUnavailable,
    pending_label,
    pending_registrations,
    sync_registrations,
    synced_registrations,
)

__all__ = [
    "CometRegistry", "CometUnavailable", "pending_label", "pending_registrations", "sync_registrations",
    "synced_registrations",
]
