"""The registry's rules, shared by every backend: version numbers, names, statuses, who registers.

A backend imports these instead of writing its own (see :meth:`Registry.check_registration`).
"""

from __future__ import annotations

import getpass
import re
from pathlib import Path

from digitops import config
from digitops.errors import RegistryError

NONE, STAGING, PRODUCTION, ARCHIVED = "none", "staging", "production", "archived"
STATUSES = (NONE, STAGING, PRODUCTION, ARCHIVED)
BUMPS = ("major", "minor", "patch")
#: ``MAJOR.MINOR.PATCH`` without leading zeros, as the registry assigns them
VERSION_RE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def parse_version(version: str) -> tuple[int, int, int]:
    """``"1.2.0"`` -> ``(1, 2, 0)``; :class:`RegistryError` for anything else."""
    m = VERSION_RE.match(version)
    if not m:
        raise RegistryError(f"not a semantic version: {version!r}")
    return int(m[1]), int(m[2]), int(m[3])


def next_version(latest: tuple[int, int, int] | None, bump: str = "minor") -> tuple[int, int, int]:
    """The version after ``latest`` (``None``: nothing registered yet, counts as 0.0.0)."""
    check_bump(bump)
    major, minor, patch = latest or (0, 0, 0)
    if bump == "major":
        return (major + 1, 0, 0)
    if bump == "minor":
        return (major, minor + 1, 0)
    return (major, minor, patch + 1)


def check_bump(bump: str) -> None:
    """:class:`RegistryError` unless ``bump`` is major, minor or patch."""
    if bump not in BUMPS:
        raise RegistryError(f"unknown bump {bump!r}; choose one of: {', '.join(BUMPS)}")


def check_name(name: str) -> None:
    """:class:`RegistryError` for a model name that could not name a folder."""
    if not _NAME_RE.match(name or ""):
        raise RegistryError(f"invalid model name {name!r}: use letters, digits, '.', '_' or '-' (it names a folder)")


def check_status(status: str) -> None:
    """:class:`RegistryError` unless ``status`` is one of :data:`STATUSES`."""
    if status not in STATUSES:
        raise RegistryError(f"unknown status {status!r}; choose one of: {', '.join(STATUSES)}")


def check_new_version(name: str, model_path: str | Path, status: str, bump: str) -> Path:
    """The checks before registering ``model_path`` as a new version; returns it as a Path."""
    from digitops.registry.base import looks_like_keras

    check_name(name)
    check_status(status)
    if status == ARCHIVED:
        raise RegistryError("a new version cannot start archived; register it, then archive it")
    check_bump(bump)
    src = Path(model_path)
    if not src.is_file():
        raise RegistryError(f"cannot register {src}: no such file")
    if src.suffix != ".keras":
        raise RegistryError(f"cannot register {src}: models are registered as .keras files")
    if not looks_like_keras(src):
        raise RegistryError(
            f"cannot register {src}: not a Keras 3 model file (a zip with config.json); save it with digitops.model.save"
        )
    return src


def current_user() -> str:
    """Who registers: ``$GITLAB_USER_LOGIN`` in CI, else the OS user."""
    login = config.env("GITLAB_USER_LOGIN")
    if login:
        return login
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"
