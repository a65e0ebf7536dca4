"""Where things live: DIGITOPS_HOME and DIGITOPS_RUNS default to the project root, wherever a notebook runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from digitops import config

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = '[project]\nname = "digitops"\nversion = "0.0.0"\n'


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A checkout-like tree: pyproject.toml naming digitops, and a notebooks/ folder."""
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text(PYPROJECT)
    return root


@pytest.fixture
def no_locations(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DIGITOPS_HOME", "DIGITOPS_RUNS", "COMET_API_KEY", "GITLAB_TOKEN", "CI_COMMIT_SHA"):
        monkeypatch.delenv(var, raising=False)


def test_project_root_is_the_nearest_digitops_pyproject_or_git(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "notebooks" / "deep").mkdir(parents=True)
    (project / "pyproject.toml").write_text(PYPROJECT)
    assert config.project_root(project / "notebooks" / "deep") == project.resolve()
    assert config.project_root(project) == project.resolve()

    # Another project's pyproject.toml is not ours; a .git above still is a checkout.
    other = tmp_path / "repo" / "sub"
    other.mkdir(parents=True)
    (other / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    (tmp_path / "repo" / ".git").mkdir()
    assert config.project_root(other) == (tmp_path / "repo").resolve()

    lone = tmp_path / "lone"
    lone.mkdir()
    if config.project_root(tmp_path) is None:  # the temporary folder is not inside some checkout
        assert config.project_root(lone) is None


def test_defaults_follow_the_root_and_the_environment_still_wins(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_locations: None
) -> None:
    monkeypatch.chdir(project / "notebooks")
    assert config.home() == project.resolve() / ".digitops"
    assert config.runs_dir() == project.resolve() / "runs"
    monkeypatch.chdir(project)  # at the root: the short relative paths, as before
    assert config.home() == Path(".digitops") and config.runs_dir() == Path("runs")
    monkeypatch.setenv("DIGITOPS_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("DIGITOPS_RUNS", "my-runs")
    assert config.home() == tmp_path / "elsewhere" and config.runs_dir() == Path("my-runs")


@pytest.mark.slow
def test_notebook_run_from_the_notebooks_folder_lands_in_the_store_the_cli_reads_at_the_root(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_locations: None
) -> None:
    """JupyterLab started in notebooks/: the kernel's working directory is notebooks/, nothing set."""
    import papermill

    shutil.copy(ROOT / "notebooks" / "train.ipynb", project / "notebooks" / "train.ipynb")
    # The "python3" kernel must be this interpreter (the one with digitops installed).
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("DIGITOPS_PROGRESS", "text")
    papermill.execute_notebook(
        str(project / "notebooks" / "train.ipynb"), str(tmp_path / "executed.ipynb"),
        parameters={"architecture": "mlp", "epochs": 1, "limit": 300},
        kernel_name="python3", progress_bar=False, cwd=str(project / "notebooks"),
    )
    assert not (project / "notebooks" / "runs").exists() and not (project / "notebooks" / ".digitops").exists()

    listed = subprocess.run(
        [sys.executable, "-m", "digitops", "runs", "list", "--json"],
        cwd=project, capture_output=True, text=True, timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    assert len(runs) == 1 and runs[0]["status"] == "finished", listed.stdout
    assert (project / "runs" / runs[0]["run_id"] / "model.keras").is_file()
