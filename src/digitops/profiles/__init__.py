"""Named training parameter sets (``quick``, ``ci``, ``full``) shipped with the package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from digitops import params

_HERE = Path(__file__).parent


def names() -> list[str]:
    """The available profile names."""
    return sorted(p.stem for p in _HERE.glob("*.yaml"))


def path(name: str) -> Path:
    """The YAML file of profile ``name``."""
    file = _HERE / f"{name}.yaml"
    if not file.is_file():
        raise params.ParameterError(f"unknown profile {name!r}; choose one of: {', '.join(names())}")
    return file


def load(name: str) -> dict[str, Any]:
    """The parameters of profile ``name``."""
    return params.load_file(path(name))
