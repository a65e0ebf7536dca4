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
