"""Where things live and which backends are active, from the environment.

Every location has a default that works on a laptop with no account and no
server, and an environment variable that moves it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


_PROJECT_NAME_LINE = re.compile(r"""^\s*name\s*=\s*["']digitops["']\s*(#.*)?$""", re.MULTILINE)


def project_root(start: str | os.PathLike | None = None) -> Path | None:
    """The checkout ``start`` (default: the working directory) is in, or None outside one.

    That is the nearest folder at or above ``start`` holding a ``pyproject.toml``
    that names the project ``digitops``, or a ``.git``: a notebook opened in
    ``notebooks/`` by a JupyterLab started there then shares the CLI's store.
    """
    here = Path(start if start is not None else os.getcwd()).resolve()
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        try:
            if pyproject.is_file() and _PROJECT_NAME_LINE.search(pyproject.read_text(encoding="utf-8")):
                return folder
        except (OSError, UnicodeDecodeError):  # unreadable: not evidence either way, keep looking
            pass
        if (folder / ".git").exists():
            return folder
    return None


def _default_location(name: str) -> Path:
    # Relative to the working directory when that is the root (short paths in
    # output, as before), absolute when a notebook runs deeper in the checkout.
    root = project_root()
    if root is None or root == Path.cwd().resolve():
        return Path(name)
    return root / name


def home() -> Path:
    """State folder for the embedded tracker and registry (``$DIGITOPS_HOME``, default ``<project root>/.digitops``)."""
    return Path(os.environ["DIGITOPS_HOME"]) if os.environ.get("DIGITOPS_HOME") else _default_location(".digitops")


def runs_dir() -> Path:
    """Run folders (``$DIGITOPS_RUNS``, default ``<project root>/runs``)."""
    return Path(os.environ["DIGITOPS_RUNS"]) if os.environ.get("DIGITOPS_RUNS") else _default_location("runs")


def project_name() -> str:
    """Project whose runs are compared (``$COMET_PROJECT_NAME`` / ``$DIGITOPS_PROJECT`` / the SDK's config)."""
    if os.environ.get("COMET_PROJECT_NAME") or os.environ.get("DIGITOPS_PROJECT"):
        return os.environ.get("COMET_PROJECT_NAME") or os.environ["DIGITOPS_PROJECT"]
    from digitops import comet_env

    return comet_env.setting("project_name") or "digitops"


def model_name() -> str:
    """Registry name of the model (``$DIGITOPS_MODEL_NAME``, default ``mnist-digits``)."""
    return os.environ.get("DIGITOPS_MODEL_NAME", "mnist-digits")


def comet_enabled() -> bool:
    """True when a Comet API key is set (environment or the SDK's config files); else everything stays local."""
    from digitops import comet_env

    return bool(comet_env.api_key())


def gitlab_enabled() -> bool:
    """True when a GitLab token is set for publishing reports."""
    return bool(os.environ.get("GITLAB_TOKEN"))
