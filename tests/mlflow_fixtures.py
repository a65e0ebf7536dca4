"""Fixtures for the MLflow backend: one real ``mlflow server`` per session behind the GitLab-subset guard."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlflow_server import Guard, MlflowServer

#: the token every MLflow test sends; tests assert it never lands in a file or in output
DUMMY_TOKEN = "dummy-mlflow-secret-8c1f0e7a"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MlflowServer, Guard]]:
    """The real server (SQLite store, served artifacts) and its guard, for the whole session."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    guard = Guard(server.port, DUMMY_TOKEN).up()
    try:
        yield server, guard
    finally:
        guard.down()
        server.stop()


@pytest.fixture
def mlflow_guard(
    mlflow_server: tuple[MlflowServer, Guard], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Guard]:
    """The guard, faults cleared, with this test's own project and local stores; nothing refused at the end."""
    _, guard = mlflow_server
    guard.reset(token=DUMMY_TOKEN)
    unique = uuid.uuid4().hex[:8]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIGITOPS_PROJECT", f"proj-{unique}")
    monkeypatch.setenv("DIGITOPS_MODEL_NAME", f"model-{unique}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", guard.url)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", DUMMY_TOKEN)
    monkeypatch.setenv("DIGITOPS_BACKEND", "mlflow")
    monkeypatch.setenv("DIGITOPS_HOME", str(tmp_path / ".digitops"))
    monkeypatch.setenv("DIGITOPS_RUNS", str(tmp_path / "runs"))
    for var in ("COMET_API_KEY", "COMET_PROJECT_NAME", "GITLAB_TOKEN", "CI_JOB_ID", "CI_COMMIT_SHA",
                "CI_MERGE_REQUEST_IID", "GITLAB_CI", "CI_PIPELINE_ID"):
        monkeypatch.delenv(var, raising=False)
    yield guard
    guard.up()  # a test that took it down must not leave the next one refused
    assert guard.refused == [], f"the guard refused requests outside GitLab's subset: {guard.refused}"
    # GitLab's tags are create-only: a test that expects a refused set-tag clears the list itself.
    assert guard.tag_conflicts == [], f"set-tag of a key the run already has (GitLab refuses it): {guard.tag_conflicts}"
    assert guard.lost_overwrites() == [], f"tag changes GitLab would silently drop: {guard.lost_overwrites()}"
