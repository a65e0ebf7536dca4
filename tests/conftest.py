"""Fixtures shared across test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Keep TensorFlow quiet and small in every process the tests start.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory with its own runs/ and .digitops/, and no service credentials."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIGITOPS_HOME", str(tmp_path / ".digitops"))
    monkeypatch.setenv("DIGITOPS_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("DIGITOPS_NOTEBOOKS", str(ROOT / "notebooks"))
    for var in ("COMET_API_KEY", "GITLAB_TOKEN", "CI_JOB_ID", "CI_COMMIT_SHA", "CI_MERGE_REQUEST_IID"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


# The MLflow backend's real server and GitLab-subset guard (tests/mlflow_fixtures.py).
from mlflow_fixtures import mlflow_guard, mlflow_server  # noqa: E402,F401
