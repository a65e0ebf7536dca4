"""The committed notebooks: clean, parameterised, and executed by nbmake on tiny parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "dashboards").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.parametrize("name", ["train", "evaluate"])
def test_has_a_typed_parameters_cell(name: str) -> None:
    declared = papermill.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"))
    assert {"run_id", "output_dir"} <= set(declared)
    untyped = [n for n, d in declared.items() if d["inferred_type_name"] in ("None", "")]
    assert not untyped, f"parameters without a type annotation: {untyped}"


@pytest.mark.slow
def test_nbmake_runs_both_notebooks_on_tiny_parameters(tmp_path: Path) -> None:
    """nbmake executes papermill-parameterised copies: train, then evaluate on its model."""
    run_folder = tmp_path / "runs" / "nbmake-run"
    copies = tmp_path / "nb"
    copies.mkdir()
    for order, (name, values) in enumerate(
        [
            ("train", {"architecture": "mlp", "epochs": 1, "limit": 500, "run_id": "nbmake-run",
                       "output_dir": str(run_folder)}),
            ("evaluate", {"run_id": "nbmake-run", "output_dir": str(run_folder), "test_limit": 300}),
        ]
    ):
        nb = parameterize_notebook(load_notebook_node(str(ROOT / "notebooks" / f"{name}.ipynb")), values)
        nbformat.write(nb, copies / f"{order}_{name}.ipynb")
    env = {**os.environ, "DIGITOPS_HOME": str(tmp_path / "home"), "DIGITOPS_RUNS": str(tmp_path / "runs"),
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    env.pop("COMET_API_KEY", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbmake", "-p", "no:cacheprovider", "-q", str(copies)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout
    metrics = json.loads((run_folder / "metrics.json").read_text())
    assert metrics["stages"] == {"train": "finished", "evaluate": "finished"}
    assert metrics["metrics"]["test_images"] == 300
