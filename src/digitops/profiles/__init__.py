"""Named training parameter sets (``quick``, ``ci``, ``full``) shipped with the package."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

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


def collect(profile: str | None, files: Iterable[Path], pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Merge a profile, then parameter files in order, then ``NAME VALUE`` pairs read as YAML (later wins)."""
    merged: dict[str, Any] = {}
    if profile:
        merged.update(load(profile))
    for file in files:
        merged.update(params.load_file(file))
    for name, raw in pairs:
        merged[name] = params.parse_cli_value(raw)
    return merged
