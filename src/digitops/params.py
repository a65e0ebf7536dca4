"""Notebook parameters: what a notebook declares, and checking what a user passes.

The declared names and types come from papermill's own inspection of the cell
tagged ``parameters``; checking happens before any kernel starts, so a typo
costs a second, not a training run.

Allowed values are declared at the start of each parameter's trailing comment,
which papermill hands over as the parameter's help text:

    epochs: int = 2  # [1..500] passes over the training images
    learning_rate: float = 0.001  # (0..1] Adam's step size
    architecture: str = "cnn"  # {mlp, cnn, lenet_bn} model builder

``[lo..hi]`` is a range (``(`` / ``)`` exclude a bound, an empty bound is
open), ``{a, b}`` a set of choices. Floats must also be finite. Parameter
files are small YAML mappings without anchors or aliases (a few hundred bytes
of aliases expand to gigabytes), and error messages never echo more than a
short excerpt of a value.
"""

from __future__ import annotations

import ast
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from digitops.errors import ParameterError  # re-exported


@dataclass(frozen=True)
class Declared:
    """One parameter declared by a notebook."""

    name: str
    type_name: str  # "int", "float", "str", "bool", "list", "dict", "any"
    default: Any
    optional: bool
    help: str
    #: the allowed values declared at the start of ``help``, None when free
    allowed: "Allowed | None" = None


#: ``-f`` files larger than this are refused unread (a parameter file is a few lines).
MAX_FILE_BYTES = 64 * 1024
#: errors show at most this many characters of a value or name, and at most this many problems
_SHOWN_CHARS, _SHOWN_PROBLEMS = 60, 10

_RANGE_RE = re.compile(r"^\s*(?P<open>[\[(])(?P<lo>[-+0-9._eE]*?)\.\.(?P<hi>[-+0-9._eE]*)(?P<close>[\])])\s*")
_CHOICES_RE = re.compile(r"^\s*\{(?P<items>[^}]*)\}\s*")


@dataclass(frozen=True)
class Allowed:
    """A declared range (``[1..500]``, ``(0..1]``) or set of choices (``{cnn, mlp}``)."""

    spec: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None

    def admits(self, value: Any) -> bool:
        """Whether ``value`` (already of the declared type) is allowed."""
        if self.choices is not None:
            return value in self.choices
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return True  # a range only constrains numbers
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True


def _number(text: str) -> float | None:
    text = text.strip().replace("_", "")
    if not text:
        return None
    value = float(text)
    return int(value) if value.is_integer() else value


def parse_allowed(help_text: str) -> tuple[Allowed | None, str]:
    """The allowed values declared at the start of a parameter's comment, and the rest of the comment.

    Text that does not start with a well-formed ``[lo..hi]`` or ``{a, b}`` is
    plain help (None). A malformed bound raises :class:`ParameterError`,
    because a silently dropped check is worse than a loud notebook error.
    """
    match = _RANGE_RE.match(help_text)
    if match:
        try:
            low, high = _number(match["lo"]), _number(match["hi"])
        except ValueError:
            raise ParameterError(f"malformed range {match.group(0).strip()!r} in a parameter comment") from None
        spec = match.group(0).strip()
        allowed = Allowed(spec, low, high, match["open"] == "(", match["close"] == ")")
        return allowed, help_text[match.end():].strip()
    match = _CHOICES_RE.match(help_text)
    if match:
        items = tuple(parse_cli_value(item.strip()) for item in match["items"].split(",") if item.strip())
        if not items:
            raise ParameterError(f"empty choice set {match.group(0).strip()!r} in a parameter comment")
        return Allowed(match.group(0).strip(), choices=items), help_text[match.end():].strip()
    return None, help_text


def _excerpt(value: Any) -> str:
    """``repr(value)`` cut to a short excerpt: errors never echo a huge value."""
    text = repr(value) if not isinstance(value, str) or len(value) <= _SHOWN_CHARS else repr(value[:_SHOWN_CHARS])
    if len(text) > _SHOWN_CHARS + 2:
        text = text[:_SHOWN_CHARS] + "..."
    elif isinstance(value, str) and len(value) > _SHOWN_CHARS:
        text += f"... ({len(value):,} characters)"
    return text


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
    from digitops import startup

    startup.defer_iri_grammar()  # before papermill imports jsonschema
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
        help_text = info.get("help", "") or ""
        try:
            allowed, _ = parse_allowed(help_text)
        except ParameterError as exc:
            raise ParameterError(f"{path.name}, parameter {name!r}: {exc}") from None
        out[name] = Declared(name, type_name, default, optional, help_text, allowed)
    if not out:
        raise ParameterError(f"{path} has no cell tagged 'parameters'")
    return out


class _NoAliasLoader(yaml.SafeLoader):
    """YAML's safe loader without anchors and aliases: nothing can expand into a billion nodes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases (&name, *name) are not allowed in parameters", event.start_mark
            )
        return super().compose_node(parent, index)


def _yaml(text: str) -> Any:
    # Deep nesting ([[[[...) exhausts PyYAML's recursion: an error, not a traceback.
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


_NON_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


def parse_cli_value(raw: str) -> Any:
    """Turn a ``-p name value`` string into a Python value the way YAML would (``3`` -> int).

    ``nan``, ``inf`` and ``-inf`` become floats (YAML only knows ``.nan``/``.inf``),
    so that they are refused as non-finite numbers rather than as strings.
    """
    if raw.strip().lower() in _NON_FINITE:
        return float(raw)
    try:
        return _yaml(raw)
    except yaml.YAMLError:
        return raw


def load_file(path: str | os.PathLike) -> dict[str, Any]:
    """Parameters from a small YAML (or JSON) mapping file (at most :data:`MAX_FILE_BYTES`)."""
    path = Path(path)
    if not path.exists():
        raise ParameterError(f"parameter file {path} does not exist")
    if not path.is_file():
        raise ParameterError(f"parameter file {path} is not a regular file")
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ParameterError(f"cannot read parameter file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ParameterError(f"parameter file {path} is larger than {MAX_FILE_BYTES // 1024} KiB; "
                             "a parameter file holds a few name: value lines")
    try:
        content = _yaml(raw.decode("utf-8")) or {}
    except UnicodeDecodeError:
        raise ParameterError(f"parameter file {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ParameterError(f"{path} is not valid YAML: {_one_line(exc)}") from None
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
    allowed names), every value of the wrong type (with the expected type),
    every NaN or infinity and every value outside the declared range or
    choices, one line each (at most ten, values cut short).
    """
    decls = declared(notebook)
    allowed = [n for n in decls if n not in set(reserved)]
    problems = []
    out: dict[str, Any] = {}
    for name, value in params.items():
        decl = decls.get(name)
        if decl is None or name in set(reserved):
            hint = " (set by digitops itself)" if name in set(reserved) else ""
            problems.append(f"unknown parameter {_excerpt(name)}{hint}; allowed: {', '.join(allowed)}")
            continue
        if not _fits(value, decl):
            expected = decl.type_name + (" or None" if decl.optional else "")
            problems.append(
                f"parameter {name!r} expects {expected} (default {decl.default!r}), "
                f"got {type(value).__name__} {_excerpt(value)}"
            )
            continue
        problem = _out_of_bounds(decl, value)
        if problem:
            problems.append(problem)
            continue
        out[name] = float(value) if decl.type_name == "float" else value
    if problems:
        more = len(problems) - _SHOWN_PROBLEMS
        shown = problems[:_SHOWN_PROBLEMS] + ([f"... and {more} more"] if more > 0 else [])
        # One problem, one line; several, one line each under a heading.
        sep = " " if len(shown) == 1 else "\n  "
        raise ParameterError(f"invalid parameters for {Path(notebook).name}:{sep}" + "\n  ".join(shown))
    return out


def _out_of_bounds(decl: Declared, value: Any) -> str | None:
    """Why ``value`` (of the right type) is not allowed for ``decl``, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"parameter {decl.name!r} must be a finite number, got {value!r}"
    if value is None or decl.allowed is None or decl.allowed.admits(value):
        return None
    what = decl.allowed.spec
    if decl.allowed.choices is not None:
        what = "one of " + ", ".join(str(c) for c in decl.allowed.choices)
    _, text = parse_allowed(decl.help)
    return f"parameter {decl.name!r} must be {'in ' if decl.allowed.choices is None else ''}{what}" + (
        f" ({text})" if text else "") + f", got {_excerpt(value)}"


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
