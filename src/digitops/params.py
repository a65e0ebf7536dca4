"""Notebook parameters: what a notebook declares, and checking what a user passes.

The declared names and types come from papermill's own inspection of the cell
tagged ``parameters``; checking happens before any kernel starts, so a typo
costs a second, not a training run.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml


@dataclass(frozen=True)
class Declared:
    """One parameter declared by a notebook."""

    name: str
    type_name: str  # "int", "float", "str", "bool", "list", "dict", "any"
    default: Any
    optional: bool
    help: str


class ParameterError(ValueError):
    """Parameters that do not match what the notebook declares."""


_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (float, int),
    "str": (str,),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
}


def _parse_type(inferred: str, default_src: str) -> tuple[str, bool]:
    inferred = (inferred or "None").strip()
    optional = False
    if inferred.startswith("Optional[") and inferred.endswith("]"):
        inferred, optional = inferred[len("Optional[") : -1], True
    if inferred in _TYPES:
        return inferred, optional
    # No usable annotation: fall back to the type of the literal default.
    try:
        value = ast.literal_eval(default_src)
    except (ValueError, SyntaxError):
        return "any", optional
    if value is None:
        return "any", True
    name = type(value).__name__
    return (name if name in _TYPES else "any"), optional


def declared(notebook: str | os.PathLike) -> dict[str, Declared]:
    """Parameters declared in ``notebook``'s ``parameters`` cell, in order."""
    import papermill

    path = Path(notebook)
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {path}")
    out: dict[str, Declared] = {}
    for name, info in papermill.inspect_notebook(str(path)).items():
        type_name, optional = _parse_type(info.get("inferred_type_name", ""), info.get("default", ""))
        try:
            default = ast.literal_eval(info.get("default", "None"))
        except (ValueError, SyntaxError):
            default = info.get("default")
        out[name] = Declared(name, type_name, default, optional, info.get("help", "") or "")
    if not out:
        raise ParameterError(f"{path} has no cell tagged 'parameters'")
    return out


def parse_cli_value(raw: str) -> Any:
    """Turn a ``-p name value`` string into a Python value the way YAML would (``3`` -> int)."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def load_file(path: str | os.PathLike) -> dict[str, Any]:
    """Parameters from a YAML (or JSON) mapping file."""
    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"parameter file {path} does not exist")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParameterError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(content, dict):
        raise ParameterError(f"{path} must hold a mapping of parameter names to values")
    return content


def _fits(value: Any, decl: Declared) -> bool:
    if value is None:
        return decl.optional or decl.type_name == "any"
    if decl.type_name == "any":
        return True
    if isinstance(value, bool) and decl.type_name in ("int", "float"):
        return False  # True is an int in Python, but never a valid epoch count
    return isinstance(value, _TYPES[decl.type_name])


def validate(
    notebook: str | os.PathLike,
    params: dict[str, Any],
    *,
    reserved: Iterable[str] = (),
) -> dict[str, Any]:
    """Check ``params`` against the notebook; return them with ints widened to floats where declared.

    Raises :class:`ParameterError` naming every unknown parameter (with the
    allowed names) and every value of the wrong type (with the expected type).
    """
    decls = declared(notebook)
    allowed = [n for n in decls if n not in set(reserved)]
    problems = []
    out: dict[str, Any] = {}
    for name, value in params.items():
        decl = decls.get(name)
        if decl is None or name in set(reserved):
            hint = " (set by digitops itself)" if name in set(reserved) else ""
            problems.append(f"unknown parameter {name!r}{hint}; allowed: {', '.join(allowed)}")
            continue
        if not _fits(value, decl):
            expected = decl.type_name + (" or None" if decl.optional else "")
            problems.append(
                f"parameter {name!r} expects {expected} (default {decl.default!r}), "
                f"got {type(value).__name__} {value!r}"
            )
            continue
        out[name] = float(value) if decl.type_name == "float" else value
    if problems:
        raise ParameterError(f"invalid parameters for {Path(notebook).name}:\n  " + "\n  ".join(problems))
    return out


def describe(notebook: str | os.PathLike) -> str:
    """A table of the declared parameters, for ``digitops params``."""
    decls = declared(notebook)
    width = max(len(n) for n in decls)
    tw = max(len(d.type_name + ("?" if d.optional else "")) for d in decls.values())
    lines = []
    for d in decls.values():
        t = d.type_name + ("?" if d.optional else "")
        lines.append(f"{d.name:<{width}}  {t:<{tw}}  {d.default!r:<12}  {d.help}".rstrip())
    return "\n".join(lines)
