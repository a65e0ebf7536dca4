"""The Voila digit dashboard: drawing canvas, model loading and the page's widgets."""

from __future__ import annotations

from pathlib import Path

__all__ = ["notebook_path"]


def notebook_path() -> Path:
    """The dashboard notebook: ``$DIGITOPS_DASHBOARD``, ``./dashboards/digits.ipynb``, or the source checkout's."""
    from digitops import config

    env = config.env("DIGITOPS_DASHBOARD")
    candidates = [Path(env)] if env else []
    candidates += [Path.cwd() / "dashboards" / "digits.ipynb", Path(__file__).resolve().parents[3] / "dashboards" / "digits.ipynb"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        "dashboard notebook not found (looked at: " + ", ".join(str(c) for c in candidates) + "); "
        "run from the project root or set DIGITOPS_DASHBOARD"
    )
