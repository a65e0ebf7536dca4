"""Where things live and which backends are active, from the environment.

Every location has a default that works on a laptop with no account and no
server, and an environment variable that moves it. Every ``DIGITOPS_*``,
``COMET_*`` and ``GITLAB_*`` variable the package reads is declared once in
:data:`SETTINGS` (name, default, meaning) and read through :func:`env`; the
README's configuration table is tested against it (tests/test_config.py).
Writes for child processes (kernels, the Comet SDK) stay where they happen.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, its default (None: unset) and what it means."""

    name: str
    default: str | None
    meaning: str


_DECLARED = (
    Setting("DIGITOPS_HOME", None, "embedded tracking and registry (SQLite) and their files; default <project root>/.digitops"),
    Setting("DIGITOPS_RUNS", None, "run folders; default <project root>/runs"),
    Setting("DIGITOPS_CACHE", None, "MNIST cache; default ~/.cache/digitops"),
    Setting("DIGITOPS_MNIST_DIR", None, "a folder holding the four IDX files"),
    Setting("DIGITOPS_NOTEBOOKS", None, "the folder of train.ipynb and evaluate.ipynb; default <project root>/notebooks"),
    Setting("DIGITOPS_PROJECT", "digitops", "project whose runs are compared (COMET_PROJECT_NAME wins)"),
    Setting("DIGITOPS_MODEL_NAME", "mnist-digits", "registry name of the model"),
    Setting("DIGITOPS_GATE_FLOOR", None, "the gate's absolute floor (0.9), `none` disables it"),
    Setting("DIGITOPS_GATE_TOLERANCE", None, "how far below production a candidate may be (0.002)"),
    Setting("DIGITOPS_GATE_METRIC", None, "the metric the gate judges (test_accuracy)"),
    Setting("DIGITOPS_ALLOW_UNJUDGED", None, "`1`: judge against the local store when Comet cannot be read"),
    Setting("DIGITOPS_REPORT_BASE_URL", None, "URL of the run folder; report links become absolute under it"),
    Setting("DIGITOPS_EXPERIMENT_URL", None, "the run's experiment page, linked from the MR note"),
    Setting("DIGITOPS_COMET_OFFLINE", None, "`1`: keep Comet data in offline archives (as `digitops --offline`)"),
    Setting("DIGITOPS_COMET_OWNER", None, "internal: the pid of the command whose kernels share its Comet run"),
    Setting("DIGITOPS_MLFLOW_OWNER", None, "internal: the pid of the command whose kernels share its MLflow run"),
    Setting("DIGITOPS_GITLAB_MAX_WAIT", "120", "seconds one `digitops publish` may wait in all on Retry-After"),
    Setting("DIGITOPS_LOG_LEVEL", None, "`debug`: show TensorFlow's and Jupyter's own logging"),
    Setting("DIGITOPS_PROGRESS", "auto", "`text`: plain-text progress bars (set by the runner for kernels)"),
    Setting("DIGITOPS_MODEL_VERSION", None, "the model version the dashboard serves (default: production)"),
    Setting("DIGITOPS_MODEL_CACHE", None, "cache of the dashboard's model files; default <home>/model-cache"),
    Setting("DIGITOPS_DASHBOARD", None, "the dashboard notebook; default ./dashboards/digits.ipynb"),
    Setting("DIGITOPS_DASHBOARD_FILES", None, "internal: the files the dashboard server may serve"),
    Setting("DIGITOPS_MODEL_SOCKET", None, "internal: the dashboard's model process socket, set for its kernels"),
    Setting("DIGITOPS_FEEDBACK", "on", "`off`: no \"Right / Wrong\" buttons in the dashboard, nothing kept"),
    Setting("DIGITOPS_FEEDBACK_DIR", None, "field drawings and their exports; default <home>/feedback"),
    Setting("DIGITOPS_GATE_FIELD_MIN", "30", "field-set gate: test drawings needed before the field set gates"),
    Setting("DIGITOPS_GATE_FIELD_TOLERANCE", "0.02", "field-set gate: allowed drop below production's field accuracy"),
    Setting("COMET_API_KEY", None, "track and register in Comet instead of SQLite (or api_key in ~/.comet.config)"),
    Setting("COMET_WORKSPACE", None, "the Comet workspace (or workspace in ~/.comet.config)"),
    Setting("COMET_PROJECT_NAME", None, "the Comet project (or project_name in ~/.comet.config)"),
    Setting("COMET_URL_OVERRIDE", None, "a self-hosted Comet server's API URL (or url_override)"),
    Setting("COMET_INI", None, "the Comet SDK's config file or folder (COMET_CONFIG is its older name)"),
    Setting("COMET_CONFIG", None, "older name of COMET_INI"),
    Setting("GITLAB_TOKEN", None, "project access token (api scope): publish the MR report with python-gitlab"),
    Setting("GITLAB_USER_LOGIN", None, "set by GitLab CI: recorded as who registered a model version"),
    Setting("GITLAB_CI", None, "set by GitLab CI: MLflow runs get the `gitlab.CI_JOB_ID` tag that links them to the job"),
    Setting("DIGITOPS_BACKEND", None, "`embedded`, `comet`, `mlflow` or `gitlab`: where runs and versions go"),
    Setting("MLFLOW_TRACKING_URI", None, "an MLflow server (or GitLab's /ml/mlflow): track and register there"),
    Setting("MLFLOW_TRACKING_TOKEN", None, "bearer token for MLFLOW_TRACKING_URI (GitLab: Developer role, api scope)"),
)
#: Every variable the package reads, by name.
SETTINGS: dict[str, Setting] = {s.name: s for s in _DECLARED}


def env(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of the declared variable ``name`` (empty counts as unset), else its default.

    ``environ`` defaults to the process environment; a ``KeyError`` for an
    undeclared name keeps every variable in :data:`SETTINGS`.
    """
    setting = SETTINGS[name]
    value = (os.environ if environ is None else environ).get(name)
    return value if value else setting.default


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


def default_location(name: str) -> Path:
    """Where ``name`` (``.digitops``, ``runs``) lives when its variable is unset: the project root, else here."""
    # Relative to the working directory when that is the root (short paths in
    # output, as before), absolute when a notebook runs deeper in the checkout.
    root = project_root()
    if root is None or root == Path.cwd().resolve():
        return Path(name)
    return root / name


def home() -> Path:
    """State folder for the embedded tracker and registry (``$DIGITOPS_HOME``, default ``<project root>/.digitops``)."""
    value = env("DIGITOPS_HOME")
    return Path(value) if value else default_location(".digitops")


def runs_dir() -> Path:
    """Run folders (``$DIGITOPS_RUNS``, default ``<project root>/runs``)."""
    value = env("DIGITOPS_RUNS")
    return Path(value) if value else default_location("runs")


def project_name() -> str:
    """Project whose runs are compared (``$COMET_PROJECT_NAME`` / ``$DIGITOPS_PROJECT`` / the SDK's config)."""
    chosen = env("COMET_PROJECT_NAME") or os.environ.get("DIGITOPS_PROJECT")  # default only after the SDK's
    if chosen:
        return chosen
    from digitops import comet_env

    return comet_env.setting("project_name") or "digitops"


def model_name() -> str:
    """Registry name of the model (``$DIGITOPS_MODEL_NAME``, default ``mnist-digits``)."""
    return env("DIGITOPS_MODEL_NAME") or "mnist-digits"


#: where runs and model versions go; ``gitlab`` is ``mlflow`` at the project's GitLab endpoint
BACKENDS = ("embedded", "comet", "mlflow", "gitlab")


def backend() -> str:
    """The active backend: ``embedded``, ``comet`` or ``mlflow`` (``DIGITOPS_BACKEND=gitlab`` is mlflow).

    ``DIGITOPS_BACKEND`` decides when set. Otherwise a Comet API key means Comet and
    ``MLFLOW_TRACKING_URI`` means MLflow; both at once is refused rather than guessed.
    """
    from digitops import comet_env
    from digitops.errors import ConfigError

    chosen = (env("DIGITOPS_BACKEND") or "").strip().lower()
    if chosen:
        if chosen not in BACKENDS:
            raise ConfigError(f"DIGITOPS_BACKEND={chosen!r} is not one of {', '.join(BACKENDS)}")
        return "mlflow" if chosen == "gitlab" else chosen
    comet, mlflow = bool(comet_env.api_key()), bool(env("MLFLOW_TRACKING_URI"))
    if comet and mlflow:
        raise ConfigError(
            "both a Comet API key and MLFLOW_TRACKING_URI are set; choose one with DIGITOPS_BACKEND=comet or =mlflow"
        )
    return "comet" if comet else "mlflow" if mlflow else "embedded"


def comet_enabled() -> bool:
    """True when Comet is the backend (an API key in the environment or the SDK's config files)."""
    return backend() == "comet"


def mlflow_endpoint(environ: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """The MLflow tracking URI and token: ``MLFLOW_TRACKING_*``, else GitLab's from CI's variables.

    With ``DIGITOPS_BACKEND=gitlab`` and no ``MLFLOW_TRACKING_URI``, the URI is the
    project's ``$CI_API_V4_URL/projects/$CI_PROJECT_ID/ml/mlflow`` and the token
    ``GITLAB_TOKEN`` (a project access token with the Developer role and api scope).
    """
    from digitops.errors import ConfigError

    environ = os.environ if environ is None else environ
    uri, token = env("MLFLOW_TRACKING_URI", environ), env("MLFLOW_TRACKING_TOKEN", environ)
    if (env("DIGITOPS_BACKEND", environ) or "").strip().lower() == "gitlab":
        if not uri:
            api, project = environ.get("CI_API_V4_URL", "").rstrip("/"), environ.get("CI_PROJECT_ID", "")
            if not (api and project):
                raise ConfigError(
                    "DIGITOPS_BACKEND=gitlab needs MLFLOW_TRACKING_URI, or CI_API_V4_URL and CI_PROJECT_ID (set in GitLab CI)"
                )
            uri = f"{api}/projects/{project}/ml/mlflow"
        token = token or env("GITLAB_TOKEN", environ)
        if not token:
            raise ConfigError("DIGITOPS_BACKEND=gitlab needs GITLAB_TOKEN (or MLFLOW_TRACKING_TOKEN): Developer role, api scope")
    if not uri:
        raise ConfigError("the MLflow backend needs MLFLOW_TRACKING_URI")
    return uri.rstrip("/"), token

