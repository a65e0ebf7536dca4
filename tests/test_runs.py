"""Run records: the git commit is that of the notebooks' repository, not of the working directory."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from digitops import runs


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def notebooks_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository holding notebooks/, named by DIGITOPS_NOTEBOOKS; the working directory is elsewhere."""
    repo = tmp_path / "checkout"
    (repo / "notebooks").mkdir(parents=True)
    (repo / "notebooks" / "train.ipynb").write_text("{}")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-qm", "notebooks")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("DIGITOPS_NOTEBOOKS", str(repo / "notebooks"))
    monkeypatch.delenv("CI_COMMIT_SHA", raising=False)
    return repo


def test_git_commit_is_the_notebooks_repository_and_says_dirty(notebooks_repo: Path) -> None:
    head = _git(notebooks_repo, "rev-parse", "HEAD")
    assert runs.git_commit() == head
    (notebooks_repo / "notebooks" / "train.ipynb").write_text('{"changed": true}')
    assert runs.git_commit() == head + "+dirty"


def test_ci_commit_wins(notebooks_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI_COMMIT_SHA", "c" * 40)
    assert runs.git_commit() == "c" * 40
