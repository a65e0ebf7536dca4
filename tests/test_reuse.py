"""Reusing a finished run when its inputs are unchanged (digitops.reuse through the runner and the CLI).

One tiny run is trained and evaluated per module; each test starts from a copy of
its store and run folders. Whether a kernel started is told without timing:
papermill's execute_notebook is replaced by one that raises, so a stage that
executes fails with that error, and a reused one never reaches it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import nbformat
import pytest
from click.testing import CliRunner

from digitops import fingerprint, runner
from digitops.cli import cli
from digitops.tracking import FAILED, get_tracker

ROOT = Path(__file__).resolve().parents[1]
TINY = {"architecture": "mlp", "epochs": 1, "limit": 300, "batch_size": 64}
EVAL = {"test_limit": 300}
pytestmark = pytest.mark.slow


def _env(mp: pytest.MonkeyPatch, folder: Path) -> None:
    mp.chdir(folder)
    mp.setenv("DIGITOPS_HOME", str(folder / ".digitops"))
    mp.setenv("DIGITOPS_RUNS", str(folder / "runs"))
    mp.setenv("DIGITOPS_NOTEBOOKS", str(ROOT / "notebooks"))
    for var in ("COMET_API_KEY", "GITLAB_TOKEN", "CI_JOB_ID", "CI_COMMIT_SHA", "CI_MERGE_REQUEST_IID",
                "MLFLOW_TRACKING_URI", "DIGITOPS_BACKEND"):
        mp.delenv(var, raising=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A folder holding one finished, evaluated tiny run: (folder, run id)."""
    folder = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        _env(mp, folder)
        run_id = runner.execute("train", TINY, progress=False).run_id
        runner.execute("evaluate", EVAL, run_id=run_id, progress=False)
    yield folder, run_id


@pytest.fixture
def earlier(trained: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """This test's copy of the trained run's store and folders; returns the run id."""
    folder, run_id = trained
    for name in (".digitops", "runs"):
        shutil.copytree(folder / name, tmp_path / name)
    _env(monkeypatch, tmp_path)
    return run_id


class KernelStarted(RuntimeError):
    pass


@pytest.fixture
def no_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any notebook execution raises KernelStarted (the runner records it as the stage's error)."""
    import papermill

    def refuse(*args: object, **kwargs: object) -> None:
        raise KernelStarted("a kernel was started")

    monkeypatch.setattr(papermill, "execute_notebook", refuse)


def _executed(stage: str, params: dict, **kwargs: object) -> runner.StageResult:
    """Run ``stage`` expecting it to try a kernel (refused by ``no_kernel``); returns its result."""
    with pytest.raises(runner.StageFailed) as err:
        runner.execute(stage, params, progress=False, reuse=True, **kwargs)
    assert "KernelStarted: a kernel was started" in (err.value.result.error or "")
    return err.value.result


def test_same_inputs_reuse_train_and_evaluate_without_a_kernel(earlier: str, no_kernel: None) -> None:
    train = runner.execute("train", TINY, progress=False, reuse=True)
    assert train.ok and train.run_id != earlier and train.reused_from == earlier
    assert train.reuse_reason == f"inputs unchanged since run {earlier}; reused"
    new, old = train.folder, train.folder.parent / earlier
    for name in ("model.keras", "train.html", "train.ipynb", "curves.png"):
        assert (new / name).read_bytes() == (old / name).read_bytes(), name
    assert not (new / "evaluate.html").exists()  # training's files only

    evaluate = runner.execute("evaluate", EVAL, run_id=train.run_id, progress=False, reuse=True)
    assert evaluate.ok and evaluate.reused_from == earlier
    assert (new / "evaluate.html").read_bytes() == (old / "evaluate.html").read_bytes()

    tracker = get_tracker()
    run, source = tracker.get_run(train.run_id), tracker.get_run(earlier)
    assert run.status == "finished"
    assert run.tags["digitops.reused_from"] == run.tags["digitops.eval_reused_from"] == earlier
    assert run.metrics == source.metrics and run.history == source.history
    assert run.tags["digitops.model_sha256"] == source.tags["digitops.model_sha256"]
    assert {"train.html", "evaluate.html", "confusion.png"} <= set(run.artifacts)

    # A third run reuses the second and still names the run that really trained.
    third = runner.execute("train", TINY, progress=False, reuse=True)
    assert third.reused_from == earlier


def test_notebook_resaved_with_outputs_is_still_reused(earlier: str, no_kernel: None, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from test_fingerprint import _resaved

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for stage in ("train", "evaluate"):
        _resaved(ROOT / "notebooks" / f"{stage}.ipynb", notebooks / f"{stage}.ipynb")
    monkeypatch.setenv("DIGITOPS_NOTEBOOKS", str(notebooks))
    assert runner.execute("train", TINY, progress=False, reuse=True).reused_from == earlier


def _edit_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebooks = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", notebooks)
    nb = nbformat.read(notebooks / "train.ipynb", as_version=4)
    [c for c in nb.cells if c.cell_type == "code"][-1].source += "\nprint('changed')"
    nbformat.write(nb, notebooks / "train.ipynb")
    monkeypatch.setenv("DIGITOPS_NOTEBOOKS", str(notebooks))


@pytest.mark.parametrize("part", ["notebook", "params", "package", "data", "versions"])
def test_any_changed_part_trains_again_and_says_which(earlier: str, no_kernel: None, part: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    params = dict(TINY)
    if part == "notebook":
        _edit_notebook(tmp_path, monkeypatch)
    elif part == "params":
        params["seed"] = 1
    elif part == "package":
        monkeypatch.setattr(fingerprint, "package_source", lambda: "0" * 64)
    elif part == "data":
        from digitops import data

        monkeypatch.setattr(data, "DATASET_CHECKSUM", "0123456789abcdef")
    else:
        monkeypatch.setattr(fingerprint, "library_versions", lambda: "keras=9;numpy=9;tensorflow=9")
    result = _executed("train", params)
    assert result.reuse_reason == f"inputs changed since run {earlier}: {part}"
    assert get_tracker().get_run(result.run_id).tags["digitops.reuse"] == result.reuse_reason


def test_changed_evaluation_parameters_evaluate_again(earlier: str, no_kernel: None) -> None:
    train = runner.execute("train", TINY, progress=False, reuse=True)
    assert train.reused_from == earlier
    result = _executed("evaluate", {"test_limit": 200}, run_id=train.run_id)
    assert result.reuse_reason == f"inputs changed since run {earlier}: params"


def test_force_trains_again(earlier: str, no_kernel: None) -> None:
    out = CliRunner().invoke(cli, ["run", "train", "--force", *[a for k, v in TINY.items() for a in ("-p", k, str(v))]])
    assert out.exit_code == 1, out.output
    assert "a kernel was started" in out.output and "reused" not in out.output
    same = CliRunner().invoke(cli, ["run", "train", *[a for k, v in TINY.items() for a in ("-p", k, str(v))]])
    assert same.exit_code == 0, same.output
    assert f"train: inputs unchanged since run {earlier}; reused" in same.output


def test_damaged_model_is_never_reused(earlier: str, no_kernel: None) -> None:
    model = Path("runs") / earlier / "model.keras"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    result = _executed("train", TINY)
    assert result.reuse_reason == (f"run {earlier} has the same inputs but is not reused: its model.keras does not "
                                   "match the SHA256 recorded when it was trained (changed or damaged)")


def test_missing_run_folder_is_never_reused(earlier: str, no_kernel: None) -> None:
    shutil.rmtree(Path("runs") / earlier)  # only the store came along (a CI job without the folder)
    result = _executed("train", TINY)
    assert f"run {earlier} has the same inputs but is not reused: its folder" in (result.reuse_reason or "")
    assert "is not here" in (result.reuse_reason or "")


def test_missing_notebook_html_is_never_reused(earlier: str, no_kernel: None) -> None:
    (Path("runs") / earlier / "train.html").unlink()
    result = _executed("train", TINY)
    assert result.reuse_reason == f"run {earlier} has the same inputs but is not reused: train.html missing from " \
                                  f"{Path('runs').resolve() / earlier}"


@pytest.mark.parametrize("status", ["failed", "abandoned", "running"])
def test_unfinished_runs_are_never_reused(earlier: str, no_kernel: None, status: str) -> None:
    tracker = get_tracker()
    tracker.start_run(earlier)  # running again
    if status == FAILED:
        tracker.end_run(earlier, FAILED)
    elif status == "abandoned":
        import sqlite3

        with sqlite3.connect(tracker.db_path) as con:
            con.execute("UPDATE runs SET status = 'abandoned' WHERE run_id = ?", (earlier,))
    result = _executed("train", TINY)
    assert result.reuse_reason == "no earlier finished run with a recorded fingerprint"


def test_report_and_note_say_reused(earlier: str, no_kernel: None, tmp_path: Path) -> None:
    train = runner.execute("train", TINY, progress=False, reuse=True)
    runner.execute("evaluate", EVAL, run_id=train.run_id, progress=False, reuse=True)
    out = CliRunner().invoke(cli, ["report", train.run_id, "--out", str(tmp_path / "report")])
    assert out.exit_code in (0, 1), out.output
    said = f"Inputs unchanged since run {earlier}; reused (not trained or evaluated again)."
    assert f"_{said}_" in (tmp_path / "report" / "report.md").read_text()
    assert said in (tmp_path / "report" / "report.html").read_text()
    shown = CliRunner().invoke(cli, ["runs", "show", train.run_id])
    assert f"reuse:    train: inputs unchanged since run {earlier}; reused" in shown.output


def test_outputs_list_pointing_outside_the_run_folder_is_refused(earlier: str, no_kernel: None,
                                                                 tmp_path: Path) -> None:
    import json

    metrics = Path("runs") / earlier / "metrics.json"
    content = json.loads(metrics.read_text())
    content["outputs"]["train"]["files"].append("../../outside.txt")
    metrics.write_text(json.dumps(content))
    (tmp_path / "outside.txt").write_text("not a run's file")
    result = _executed("train", TINY)
    assert result.reuse_reason == (f"run {earlier} has the same inputs but is not reused: its metrics.json lists "
                                   "files outside its folder: '../../outside.txt'")


def test_pipeline_reuses_only_when_asked(earlier: str, no_kernel: None) -> None:
    args = ["pipeline", "--no-register", *[a for k, v in TINY.items() for a in ("-p", k, str(v))]]
    trained = CliRunner().invoke(cli, args)
    assert trained.exit_code == 1 and "a kernel was started" in trained.output, trained.output
    assert "digitops.reused_from" not in get_tracker().list_runs(limit=1)[0].tags
    # With --reuse training is reused; the pipeline evaluates all 10,000 test images, which the
    # earlier run did not, so the evaluation runs (and the refused kernel fails it).
    reused = CliRunner().invoke(cli, [*args, "--reuse"])
    assert reused.exit_code == 1 and f"train: inputs unchanged since run {earlier}; reused" in reused.output
    assert get_tracker().list_runs(limit=1)[0].tags["digitops.reused_from"] == earlier
