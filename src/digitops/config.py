"""Where things live and which backends are active, from the environment.

Every location has a default that works on a laptop with no account and no
server, and an environment variable that moves it.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """State folder for the embedded tracker and registry (``$DIGITOPS_HOME``, default ``.digitops``)."""
    return Path(os.environ.get("DIGITOPS_HOME", ".digitops"))


def runs_dir() -> Path:
    """Run folders (``$DIGITOPS_RUNS``, default ``runs``)."""
    return Path(os.environ.get("DIGITOPS_RUNS", "runs"))


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
