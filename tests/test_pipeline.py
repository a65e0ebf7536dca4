"""End to end: the pipeline twice on a small subset; the second run is compared with the first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from digitops.registry import get_registry
from digitops.tracking import get_tracker

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["-p", "architecture", "cnn", "-p", "limit", "3000", "-p", "epochs", "1"]


def digitops(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "digitops", *args], cwd=cwd, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow
def test_pipeline_twice_compares_with_the_first_and_registers_two_versions(workdir: Path) -> None:
    first = digitops("pipeline", *SMALL, "--floor", "0.5", cwd=workdir)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    second = digitops("pipeline", *SMALL, "-p", "seed", "1", "--floor", "0.5", "--promote", cwd=workdir)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]

    runs = get_tracker().list_runs()
    assert len(runs) == 2 and all(r.status == "finished" for r in runs)
    newest, oldest = runs[0], runs[1]
    for run in runs:
        folder = workdir / "runs" / run.run_id
        for name in ("train.ipynb", "train.html", "evaluate.ipynb", "evaluate.html", "model.keras", "metrics.json"):
            assert (folder / name).is_file(), f"{run.run_id}/{name}"
    # CNN on 3,000 images for one epoch: well above chance (10 %).
    assert newest.metrics["test_accuracy"] > 0.5 and oldest.metrics["test_accuracy"] > 0.5

    versions = get_registry().list_versions("mnist-digits")
    assert [v.run_id for v in versions] == [oldest.run_id, newest.run_id]
    assert len({v.version for v in versions}) == 2
    # The first found no production version and was promoted; --promote then replaced it.
    assert "no production model yet: 0.1.0 promoted" in first.stdout
    assert versions[-1].status == "production" and versions[0].status == "archived"

    report = (workdir / "runs" / newest.run_id / "report" / "report.md").read_text()
    assert report.startswith("<!-- digitops-report:")
    comparison = json.loads((workdir / "runs" / newest.run_id / "report" / "comparison.json").read_text())
    assert comparison["project_count"] == 1
    assert comparison["project_best_run_id"] == oldest.run_id
    assert oldest.run_id in report or f"{oldest.metrics['test_accuracy']:.2%}".replace("%", " %") in report
    for name in ("train.html", "evaluate.html", "curves.png", "confusion.png"):
        assert name in report
    assert "Registered mnist-digits" in second.stdout and "(production)" in second.stdout


@pytest.mark.slow
def test_pipeline_reports_a_failing_gate_with_exit_1_and_registers_nothing(workdir: Path) -> None:
    proc = digitops("pipeline", "-p", "architecture", "mlp", "-p", "limit", "500", "-p", "epochs", "1",
                    "--floor", "0.999", cwd=workdir)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "fails the gate" in proc.stdout and "Not registered" in proc.stdout
    assert get_registry().list_versions("mnist-digits") == []


TINY = ["-p", "architecture", "mlp", "-p", "limit", "300", "-p", "epochs", "1", "--floor", "0.1"]


@pytest.mark.slow
def test_pipeline_promotes_only_when_there_is_no_production_version(workdir: Path) -> None:
    from digitops.registry import ARCHIVED

    first = digitops("pipeline", *TINY, cwd=workdir)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert "no production model yet: 0.1.0 promoted" in first.stdout
    assert "Registered mnist-digits 0.1.0 (production)" in first.stdout
    registry = get_registry()
    assert registry.get_by_status("mnist-digits").version == "0.1.0"

    # With a production version present nothing changes: the next one is staging.
    second = digitops("pipeline", *TINY, cwd=workdir)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "no production model yet:" not in second.stdout
    assert {v.version: v.status for v in registry.list_versions("mnist-digits")} == {
        "0.1.0": "production", "0.2.0": "staging"
    }

    # Opting out keeps an empty production slot empty.
    registry.set_status("mnist-digits", "0.1.0", ARCHIVED)
    third = digitops("pipeline", *TINY, "--no-auto-promote", cwd=workdir)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "no production model yet:" not in third.stdout
    assert registry.get_version("mnist-digits", "0.3.0").status == "staging"
    assert registry.get_by_status("mnist-digits") is None


def test_ci_register_job_keeps_registering_as_staging(workdir: Path) -> None:
    """The GitLab `register` job calls `registry register`, which never promotes, even into an empty registry."""
    import shlex

    import yaml

    from digitops.tracking import get_tracker
    from store_helpers import keras_model_file

    job = yaml.safe_load((ROOT / "ci" / "deploy.yml").read_text())["register"]
    command = next(line for line in job["script"] if line.startswith("digitops "))
    assert "registry register" in command and "production" not in command and "pipeline" not in command

    tracker = get_tracker()
    tracker.start_run("ci-run")
    tracker.log_metrics("ci-run", {"test_accuracy": 0.97})
    tracker.end_run("ci-run")
    keras_model_file(workdir / "runs" / "ci-run" / "model.keras")
    argv = [a.replace("$RUN_ID", "ci-run") for a in shlex.split(command.split(">")[0])[1:]]
    proc = digitops(*argv, cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert get_registry().get_version("mnist-digits", "0.1.0").status == "staging"
    assert get_registry().get_by_status("mnist-digits") is None


def _synthesise_field_drawings(n_per_digit: int = 4) -> int:
    """Field drawings made from MNIST test digits, enlarged to canvas size and kept through the store's API.

    Stand-ins for drawings people made in the dashboard (the browser path is covered in test_dashboard.py);
    labels are the MNIST labels, "predicted" unknown.
    """
    import io

    import numpy as np
    from PIL import Image

    from digitops import data
    from digitops.feedback.store import LocalFeedbackStore

    mnist = data.load()
    store, kept = LocalFeedbackStore(), 0
    for digit in range(10):
        for index in np.flatnonzero(mnist.y_test == digit)[:n_per_digit]:
            buf = io.BytesIO()
            Image.fromarray(mnist.x_test[index]).resize((280, 280), Image.Resampling.BILINEAR).save(buf, "PNG")
            kept += store.add(buf.getvalue(), digit, model_name="mnist-digits", model_version="synthetic").status == "kept"
    return kept


@pytest.mark.slow
def test_pipeline_reports_the_field_set_for_candidate_and_production(workdir: Path, monkeypatch) -> None:
    assert _synthesise_field_drawings() == 40
    exported = digitops("feedback", "export", cwd=workdir)
    assert exported.returncode == 0 and "40 drawing(s)" in exported.stdout, exported.stderr
    monkeypatch.setenv("DIGITOPS_GATE_FIELD_MIN", "5")  # ~20 test drawings: gate on them
    monkeypatch.setenv("DIGITOPS_GATE_FIELD_TOLERANCE", "1")  # tiny models: the rule must run, not bite
    monkeypatch.setenv("DIGITOPS_GATE_TOLERANCE", "1")
    first = digitops("pipeline", *TINY, cwd=workdir)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    second = digitops("pipeline", *TINY, "-p", "field_train_share", "1", cwd=workdir)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]

    newest = get_tracker().list_runs()[0]
    folder = workdir / "runs" / newest.run_id
    report = (folder / "report" / "report.md").read_text()
    row = next(line for line in report.splitlines() if "field drawings: candidate vs production on" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1].endswith("%") and cells[6].endswith("%"), row  # candidate and production both scored
    assert "Field drawings: candidate" in report and "not worse" in report
    metrics = json.loads((folder / "metrics.json").read_text())
    training, test = metrics["field_training"], metrics["field_test"]
    assert training["export"] == test["export"] and training["train_images"] > 0
    assert test["images"] == len(test["hashes"]) > 5 and not set(training["train_hashes"]) & set(test["hashes"])
    assert newest.params["field_train_share"] in (1, 1.0, "1", "1.0")
    evaluate_html = (folder / "evaluate.html").read_text()
    assert "Field drawings" in evaluate_html and "on the same drawings" in evaluate_html
    assert evaluate_html.count("data:image/png;base64") >= 3  # confusion, mistakes and the field set's mistakes
