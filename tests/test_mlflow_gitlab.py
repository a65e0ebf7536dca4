"""DIGITOPS_BACKEND=gitlab from CI's own variables, through the project's ``/ml/mlflow`` path.

GitLab serves its MLflow API under ``$CI_API_V4_URL/projects/<id>/ml/mlflow`` and takes the
project access token as a bearer token. Here the guard in front of the real ``mlflow server``
serves only that path (anything else is refused, and the fixture fails on a refusal), so the
tracker, the comparison, the registry and the CLI are exercised exactly as a GitLab job runs
them: nothing set but ``DIGITOPS_BACKEND=gitlab`` and ``GITLAB_TOKEN``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from digitops import config
from mlflow_fixtures import DUMMY_TOKEN
from mlflow_server import Guard

pytestmark = pytest.mark.network

PREFIX = "/api/v4/projects/42/ml/mlflow"


@pytest.fixture
def gitlab(mlflow_guard: Guard, monkeypatch: pytest.MonkeyPatch) -> Guard:
    """The guard as GitLab's project API: only under PREFIX; the job's variables and nothing else."""
    mlflow_guard.prefix = PREFIX
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DIGITOPS_BACKEND", "gitlab")
    monkeypatch.setenv("CI_API_V4_URL", f"{mlflow_guard.url}/api/v4")
    monkeypatch.setenv("CI_PROJECT_ID", "42")
    monkeypatch.setenv("GITLAB_TOKEN", DUMMY_TOKEN)
    return mlflow_guard


def test_runs_compare_and_registry_through_the_project_path(gitlab: Guard, tmp_path: Path) -> None:
    from digitops.cli import cli
    from digitops.mlflow.registry import MlflowRegistry
    from digitops.registry.base import sha256_file
    from store_helpers import keras_model_file
    from test_mlflow_tracker import record_run

    assert config.mlflow_endpoint() == (f"{gitlab.url}{PREFIX}", DUMMY_TOKEN)
    tracker = record_run("run-1", accuracy=0.95)
    record_run("run-2", accuracy=0.97)
    # Both runs are on the server (read back through the project path), artifacts included.
    assert [r.run_id for r in tracker.list_runs()] == ["run-2", "run-1"]
    summary = tracker.metric_summary("test_accuracy", exclude=["run-2"])
    assert summary.count == 1 and summary.best_run_id == "run-1"
    assert any(path.startswith("/api/2.0/mlflow-artifacts/") for _, path in gitlab.requests)

    reg, name = MlflowRegistry(), config.model_name()
    model = keras_model_file(tmp_path / "m" / "model.keras")
    version = reg.register(name, model, "run-1", metrics={"test_accuracy": 0.95})
    assert version.version == "0.1.0"
    runner = CliRunner()
    promoted = runner.invoke(cli, ["registry", "promote", "0.1.0"])
    assert promoted.exit_code == 0, promoted.output
    assert reg.production_reference(name).version == "0.1.0"
    fetched = reg.download(name, tmp_path / "fetched", version="0.1.0")
    assert sha256_file(fetched) == sha256_file(model)

    compared = runner.invoke(cli, ["compare", "run-2"])
    assert compared.exit_code == 0, compared.output
    assert "production 0.1.0" in compared.output
    assert DUMMY_TOKEN not in promoted.output + compared.output
    assert len(gitlab.requests) > 20  # all of them under PREFIX: the fixture fails on any refusal


def test_the_guard_refuses_what_is_not_under_the_project_path(gitlab: Guard) -> None:
    """The check above could fail: the plain MLflow path is not served when GitLab's is."""
    answer = requests.post(f"{gitlab.url}/api/2.0/mlflow/runs/search", json={"experiment_ids": ["0"]},
                           headers={"Authorization": f"Bearer {DUMMY_TOKEN}"}, timeout=10)
    assert answer.status_code == 404 and gitlab.refused
    gitlab.refused.clear()


def test_a_missing_token_or_project_is_one_clear_error(gitlab: Guard, monkeypatch: pytest.MonkeyPatch) -> None:
    from digitops.cli import cli

    monkeypatch.delenv("GITLAB_TOKEN")
    res = CliRunner().invoke(cli, ["runs", "list"])
    assert res.exit_code == 2 and "DIGITOPS_BACKEND=gitlab needs GITLAB_TOKEN" in res.output
    monkeypatch.setenv("GITLAB_TOKEN", DUMMY_TOKEN)
    monkeypatch.delenv("CI_PROJECT_ID")
    res = CliRunner().invoke(cli, ["runs", "list"])
    assert res.exit_code == 2 and "CI_API_V4_URL and CI_PROJECT_ID" in res.output
