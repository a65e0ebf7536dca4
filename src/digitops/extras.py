"""Optional parts of digitops (pip extras): a missing one is named in one line, not a traceback.

The CI model jobs install the core package only; the dashboard and JupyterLab come
with ``pip install 'digitops[dashboard]'`` / ``'digitops[lab]'`` (``[dev]`` has both).
"""

from __future__ import annotations

import importlib.util

from digitops.errors import ConfigError

#: The modules each extra provides that digitops imports (kept in step with pyproject.toml
#: by tests/test_packaging.py).
EXTRAS: dict[str, tuple[str, ...]] = {
    "dashboard": ("voila", "ipywidgets", "anywidget"),
    "lab": ("jupyterlab", "ipywidgets"),
}


class MissingExtra(ConfigError):
    """A command needs an extra that is not installed (a configuration error: exit 2)."""


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    absent = []
    for name in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken or half-removed package
            found = False
        if not found:
            absent.append(name)
    return absent


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingExtra` naming the extra to install when ``what`` cannot run."""
    absent = missing(extra)
    if absent:
        raise MissingExtra(
            f"{what} needs the '{extra}' extra ({', '.join(absent)} not installed): "
            f"pip install 'digitops[{extra}]'"
        )
