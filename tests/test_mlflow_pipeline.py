"""End to end on the MLflow backend, against the real server behind the GitLab-subset guard.

The issue's "Done when": ``digitops pipeline`` twice with a promotion between them,
the second report compared with the first run and the production version, the
dashboard's loader serving the promoted version; and a pipeline whose server goes
away mid-way, completed by ``digitops sync``. The guard fixture asserts that no
request left GitLab's subset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from mlflow_fixtures import DUMMY_TOKEN  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ["-p", "architecture", "mlp", "-p", "limit", "300", "-p", "epochs", "1", "--floor", "0.1", "--tolerance", "1"]

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITOPS_MLFLOW_OWNER")}
    env["DIGITOPS_NOTEBOOKS"] = str(ROOT / "notebooks")
    return env


def digitops(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "digitops", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=900)
    assert DUMMY_TOKEN not in done.stdout + done.stderr
    return done


def _no_token_in_files(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            assert DUMMY_TOKEN.encode() not in path.read_bytes(), path


def _run_ids(workdir: Path) -> list[str]:
    runs = [p for p in (workdir / "runs").iterdir() if p.is_dir()]
    return [p.name for p in sorted(runs, key=lambda p: p.stat().st_mtime)]


def test_pipeline_twice_promote_and_the_dashboard_serves_it(mlflow_guard, tmp_path: Path) -> None:
    from digitops import config
    from digitops.dashboard import loader
    from digitops.mlflow.registry import MlflowRegistry

    name = config.model_name()
    first = digitops("pipeline", *TINY, cwd=tmp_path)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    assert f"Registered {name} 0.1.0 (staging)" in first.stdout
    # A shared registry is never promoted behind the team's back: promote by hand.
    promoted = digitops("registry", "promote", "0.1.0", cwd=tmp_path)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    second = digitops("pipeline", *TINY, "-p", "seed", "1", cwd=tmp_path)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    assert f"Registered {name} 0.2.0 (staging)" in second.stdout

    run_1, run_2 = _run_ids(tmp_path)
    report_dir = tmp_path / "runs" / run_2 / "report"
    comparison = json.loads((report_dir / "comparison.json").read_text())
    assert comparison["project_count"] == 1 and comparison["project_best_run_id"] == run_1
    assert comparison["production_version"] == "0.1.0" and comparison["production_run_id"] == run_1
    report = (report_dir / "report.md").read_text()
    version_page = f"{mlflow_guard.url}/#/models/{name}/versions/1"
    assert f"[production 0.1.0]({version_page})" in report
    assert "[MLflow run](" in report  # the candidate's page

    versions = MlflowRegistry().list_versions(name)
    assert [(v.version, v.run_id, v.status) for v in versions] == [
        ("0.1.0", run_1, "production"), ("0.2.0", run_2, "staging"),
    ]
    # The dashboard: its loader finds production in MLflow, downloads and verifies it.
    fetched = digitops("dashboard", "--fetch-only", cwd=tmp_path)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert f"cached {name} 0.1.0 (production)" in fetched.stdout
    loaded = loader.load()
    assert loaded.version.version == "0.1.0"
    assert loaded.path.read_bytes() == (tmp_path / "runs" / run_1 / "model.keras").read_bytes()
    assert loader.predict(loaded, __import__("numpy").zeros((28, 28), dtype="float32")).shape == (10,)
    _no_token_in_files(tmp_path)


def test_server_gone_mid_pipeline_loses_nothing_and_sync_completes_it(mlflow_guard, tmp_path: Path) -> None:
    from digitops import config
    from digitops.mlflow.registry import MlflowRegistry
    from digitops.mlflow.tracker import MlflowTracker

    # The server goes away right after the train stage's run reached it (its runs/update).
    stop = threading.Event()

    def server_goes_away() -> None:
        while not stop.is_set():
            if mlflow_guard.count("POST", "runs/update"):
                mlflow_guard.down()  # for every client, kept-alive connections included
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=server_goes_away, daemon=True)
    watcher.start()
    try:
        done = digitops("pipeline", *TINY, cwd=tmp_path)
    finally:
        stop.set()
        watcher.join(5)
    output = done.stdout + done.stderr
    assert not mlflow_guard.is_up, "the server was meant to go away during the pipeline"
    # The gate cannot see the project's history: it refuses to judge, nothing is registered.
    assert done.returncode == 2 and "cannot judge" in output, output[-3000:]
    assert "Not registered" in output
    (run_id,) = _run_ids(tmp_path)
    local = MlflowTracker().local.get_run(run_id)
    assert local.status == "finished" and "test_accuracy" in local.metrics

    mlflow_guard.reset(token=DUMMY_TOKEN)  # back, faults cleared
    synced = digitops("sync", cwd=tmp_path)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert run_id in synced.stdout and "still pending" not in synced.stdout
    again = digitops("sync", cwd=tmp_path)
    assert again.returncode == 0 and "nothing to sync" in again.stdout
    tracker = MlflowTracker()
    remote = tracker.find_mlflow_run(tracker.experiment_id(config.project_name(), create=False), run_id)
    assert remote is not None and remote["info"]["status"] == "FINISHED"
    metrics = {m["key"]: m["value"] for m in remote["data"]["metrics"]}
    assert metrics["test_accuracy"] == pytest.approx(local.metrics["test_accuracy"])
    # The model of the completed run registers in MLflow.
    registered = digitops("registry", "register", run_id, cwd=tmp_path)
    assert registered.returncode == 0, registered.stdout + registered.stderr
    assert [v.run_id for v in MlflowRegistry().list_versions(config.model_name())] == [run_id]
    _no_token_in_files(tmp_path)
