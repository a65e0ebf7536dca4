"""The runner: papermill execution into run folders, HTML, failures, tracking."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from digitops import params, runner
from digitops.tracking import get_tracker

TINY = {"architecture": "mlp", "epochs": 1, "limit": 600, "batch_size": 64}


@pytest.mark.slow
def test_train_then_evaluate_fills_the_run_folder(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "secret-THISMUSTNOTLEAK1234"
    monkeypatch.setenv("GITLAB_TOKEN", secret)
    trained = runner.execute("train", TINY, progress=False)
    folder = trained.folder
    assert trained.ok and folder == workdir / "runs" / trained.run_id
    evaluated = runner.execute("evaluate", {"test_limit": 500}, run_id=trained.run_id, progress=False)
    assert evaluated.run_id == trained.run_id

    for name in ("train.ipynb", "train.html", "evaluate.ipynb", "evaluate.html", "model.keras",
                 "metrics.json", "curves.png", "confusion.png", "mistakes.png"):
        assert (folder / name).is_file(), name
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["params"]["architecture"] == "mlp" and metrics["params"]["limit"] == 600
    assert len(metrics["history"]["loss"]) == 1
    assert 0.1 < metrics["metrics"]["test_accuracy"] <= 1.0
    assert metrics["data_checksum"] and metrics["stages"] == {"train": "finished", "evaluate": "finished"}
    assert set(metrics["per_class"]) == {str(d) for d in range(10)}

    run = get_tracker().get_run(trained.run_id)
    assert run.status == "finished"
    assert run.history["loss"] and "test_accuracy" in run.metrics
    assert {"train.html", "evaluate.html"} <= set(run.artifacts)

    html = (folder / "train.html").read_text()
    assert "<html" in html and "epoch 1/1" in html  # the text progress bar made it into the page
    for path in folder.iterdir():
        if path.suffix in (".ipynb", ".html", ".json"):
            assert secret not in path.read_text(), f"token leaked into {path.name}"


def _train_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *cells: str) -> Path:
    """A folder of notebooks whose train.ipynb has the runner's parameters cell, then ``cells``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = nbformat.v4.new_code_cell('epochs: int = 1\nrun_id: str = ""\noutput_dir: str = ""')
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, *(nbformat.v4.new_code_cell(source) for source in cells)]
    folder = tmp_path / "nbs"
    folder.mkdir()
    nbformat.write(nb, folder / "train.ipynb")
    monkeypatch.setenv("DIGITOPS_NOTEBOOKS", str(folder))
    return folder


@pytest.fixture
def failing_notebooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A train notebook that logs a metric, then raises in its third cell."""
    return _train_notebook(
        tmp_path,
        monkeypatch,
        "from digitops.runs import RunContext\n"
        'run = RunContext.open("train", run_id=run_id, output_dir=output_dir, params={"epochs": epochs})\n'
        'run.log_metrics({"val_accuracy": 0.5})',
        'raise ValueError("the data looks wrong")',
        'print("never reached")',
    )


@pytest.mark.slow
def test_failing_notebook_keeps_html_and_names_the_cell(workdir: Path, failing_notebooks: Path) -> None:
    with pytest.raises(runner.StageFailed) as err:
        runner.execute("train", {"epochs": 2}, progress=False)
    result = err.value.result
    assert not result.ok
    # In [4]: the injected-parameters cell counts too, as in the HTML.
    assert result.error == 'cell In [4] `raise ValueError("the data looks wrong")`: ValueError: the data looks wrong'
    assert result.failed_cell == 4
    assert result.notebook.is_file() and result.html is not None and result.html.is_file()
    page = result.html.read_text()
    assert "the data looks wrong" in page and "An Exception was encountered at" in page
    run = get_tracker().get_run(result.run_id)
    assert run.status == "failed"
    assert run.metrics.get("val_accuracy") == 0.5, "metrics logged before the failure are kept"


def test_bad_parameters_fail_before_any_run_exists(workdir: Path) -> None:
    with pytest.raises(params.ParameterError, match="parameter 'epochs' expects int"):
        runner.execute("train", {"epochs": "nope"})
    with pytest.raises(params.ParameterError, match="set by digitops itself"):
        runner.execute("train", {"output_dir": "/tmp/x"})
    assert not (workdir / "runs").exists()
    assert get_tracker().list_runs() == []


def test_unknown_stage() -> None:
    with pytest.raises(ValueError, match="unknown stage 'deploy'"):
        runner.notebook_for("deploy")


@pytest.fixture
def probing_notebooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A train notebook whose one cell writes the lines its kernel ran at start-up."""
    return _train_notebook(
        tmp_path,
        monkeypatch,
        "import json, pathlib\n"
        "from ipykernel.kernelapp import IPKernelApp\n"
        "lines = list(IPKernelApp.instance().exec_lines)  # the kernel app's start-up lines\n"
        "pathlib.Path(output_dir, 'probe.json').write_text(json.dumps({'exec_lines': lines, 'names': dir()}))",
    )


@pytest.mark.slow
def test_kernel_freezes_its_objects_at_exit_and_html_is_warmed_once(
    workdir: Path, probing_notebooks: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interpreter's last sweep over TensorFlow's objects (1-1.4 s) is skipped at the kernel's exit."""
    from digitops import startup

    warmed: list[bool] = []
    real_warm = startup.warm_html_export
    monkeypatch.setattr(startup, "warm_html_export", lambda: warmed.append(True) or real_warm())
    result = runner.execute("train", {"epochs": 1}, progress=False, timeout=300)
    probe = json.loads((result.folder / "probe.json").read_text())
    # What the line does at exit: tests/test_startup.py. It leaves no names in the user's namespace.
    assert startup.KERNEL_FAST_EXIT_LINE in probe["exec_lines"]
    assert not {"atexit", "gc"} & set(probe["names"])
    assert warmed == [True], "the HTML export was not warmed while the kernel ran"
    assert result.html is not None and "start-up lines" in result.html.read_text()
