"""Where things live: DIGITOPS_HOME and DIGITOPS_RUNS default to the project root, wherever a notebook runs."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

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


# -- one registry of settings ----------------------------------------------------------------

_OURS = re.compile(r"^(DIGITOPS|COMET|GITLAB)_[A-Z0-9_]*$")
#: Modules another helper owns; their reads move to config.env when that work is merged (issue 14).
_NOT_YET: tuple[str, ...] = ()


def _string_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "DIGITOPS_..."`` constants, so ``os.environ.get(PIN_ENV)`` is seen too."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value.value
    return found


def _variable(node: ast.AST, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return f"{node.values[0].value}*"  # f"COMET_{key}": a computed name of ours
    return None


def _reads(path: Path) -> list[tuple[int, str]]:
    """(line, variable) for each of our variables this module reads from a mapping or with getenv."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    constants = _string_constants(tree)
    out = []
    for node in ast.walk(tree):
        arg = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            if node.func.attr in ("get", "getenv", "pop"):
                arg = node.args[0]
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            arg = node.slice
        name = _variable(arg, constants) if arg is not None else None
        if name and _OURS.match(name.rstrip("*")):
            out.append((node.lineno, name))
    return out


def test_every_variable_is_read_only_through_config() -> None:
    src = ROOT / "src" / "digitops"
    elsewhere = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        if rel == "config.py" or rel.startswith(_NOT_YET):
            continue
        elsewhere += [f"{rel}:{line}: {name}" for line, name in _reads(path)]
    assert elsewhere == [], "read these through digitops.config.env():\n" + "\n".join(elsewhere)


def test_the_checker_sees_a_read(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('import os\nPIN = "DIGITOPS_X"\na = os.environ.get(PIN)\nb = os.environ["GITLAB_TOKEN"]\n'
                   'c = os.getenv("COMET_API_KEY")\nd = env.get(f"COMET_{k}")\n', encoding="utf-8")
    assert [name for _, name in _reads(bad)] == ["DIGITOPS_X", "GITLAB_TOKEN", "COMET_API_KEY", "COMET_*"]


def test_click_options_read_only_declared_variables() -> None:
    from digitops.cli import cli

    def walk(command: Any) -> Iterator[Any]:
        yield command
        for sub in getattr(command, "commands", {}).values():
            yield from walk(sub)

    envvars = {p.envvar for c in walk(cli) for p in c.params if isinstance(getattr(p, "envvar", None), str)}
    ours = {v for v in envvars if _OURS.match(v)}
    assert ours and ours <= set(config.SETTINGS), ours - set(config.SETTINGS)


def test_readme_configuration_table_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = {name for line in re.findall(r"^\| ([^|]+) \|", table, re.MULTILINE)
            for name in re.findall(r"`([A-Z0-9_]+)`", line)}
    missing = [name for name in config.SETTINGS if name not in rows]
    assert missing == [], f"add to README's configuration table: {missing}"
    test_tools = {"DIGITOPS_NODE_PREFIX", "DIGITOPS_CHROMIUM", "DIGITOPS_TEST_TOOLS_DRY_RUN"}  # read by tests/tools
    assert rows - set(config.SETTINGS) <= test_tools, rows - set(config.SETTINGS) - test_tools


def test_env_reads_a_declared_variable_with_its_default() -> None:
    assert config.env("DIGITOPS_GITLAB_MAX_WAIT", {}) == "120"
    assert config.env("DIGITOPS_GITLAB_MAX_WAIT", {"DIGITOPS_GITLAB_MAX_WAIT": "5"}) == "5"
    assert config.env("DIGITOPS_MNIST_DIR", {"DIGITOPS_MNIST_DIR": ""}) is None
    with pytest.raises(KeyError):
        config.env("DIGITOPS_NOT_DECLARED", {})


_NO_BACKEND_VARS = ("DIGITOPS_BACKEND", "COMET_API_KEY", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN", "GITLAB_TOKEN",
                    "CI_API_V4_URL", "CI_PROJECT_ID", "COMET_INI", "COMET_CONFIG")


@pytest.fixture
def no_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No backend variable set and no Comet config file in reach (HOME and the working directory are empty)."""
    for name in _NO_BACKEND_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_backend_precedence(no_backend: pytest.MonkeyPatch) -> None:
    from digitops.errors import ConfigError

    assert config.backend() == "embedded"
    no_backend.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert config.backend() == "mlflow" and not config.comet_enabled()
    no_backend.setenv("COMET_API_KEY", "k")
    with pytest.raises(ConfigError, match="DIGITOPS_BACKEND"):  # both: refused, not guessed
        config.backend()
    for chosen, expected in (("comet", "comet"), ("MLflow", "mlflow"), ("gitlab", "mlflow"), ("embedded", "embedded")):
        no_backend.setenv("DIGITOPS_BACKEND", chosen)
        assert config.backend() == expected
    no_backend.setenv("DIGITOPS_BACKEND", "wandb")
    with pytest.raises(ConfigError, match="not one of"):
        config.backend()


def test_mlflow_endpoint_from_gitlab_ci_variables() -> None:
    from digitops.errors import ConfigError

    ci = {"DIGITOPS_BACKEND": "gitlab", "CI_API_V4_URL": "https://gitlab.example.com/api/v4/", "CI_PROJECT_ID": "42",
          "GITLAB_TOKEN": "glpat-x"}
    assert config.mlflow_endpoint(ci) == ("https://gitlab.example.com/api/v4/projects/42/ml/mlflow", "glpat-x")
    assert config.mlflow_endpoint({**ci, "MLFLOW_TRACKING_URI": "http://m:5000/", "MLFLOW_TRACKING_TOKEN": "t"}) == (
        "http://m:5000", "t")
    with pytest.raises(ConfigError, match="GITLAB_TOKEN"):
        config.mlflow_endpoint({k: v for k, v in ci.items() if k != "GITLAB_TOKEN"})
    with pytest.raises(ConfigError, match="CI_PROJECT_ID"):
        config.mlflow_endpoint({k: v for k, v in ci.items() if k != "CI_PROJECT_ID"})
    assert config.mlflow_endpoint({"MLFLOW_TRACKING_URI": "http://m:5000"}) == ("http://m:5000", None)
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI"):
        config.mlflow_endpoint({})
