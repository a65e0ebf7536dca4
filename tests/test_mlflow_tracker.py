"""MlflowTracker against the real ``mlflow server`` behind the GitLab-subset guard, faults injected.

    failure mode                                          test
    second end_run resends what the server has            test_second_end_run_sends_only_what_is_new
    server down at end_run loses the mirror / fails       test_server_down_at_end_run_is_pending_then_synced_once
    server failing mid-way (saved, then 5xx)              test_saved_then_5xx_log_batch_is_reconciled_without_duplicates
    saved-then-5xx runs/create makes two MLflow runs      test_saved_then_5xx_create_makes_one_mlflow_run
    gate reads the local store when the server is down    test_server_down_metric_summary_raises_and_compare_cannot_judge
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import requests

from digitops import config
from digitops.mlflow import index, queries
from digitops.mlflow.rest import MlflowRest
from digitops.mlflow.state import RunState, pending_runs
from digitops.mlflow.tracker import MlflowTracker, sync_pending
from digitops.tracking import get_tracker
from digitops.tracking.base import TrackingError
from mlflow_fixtures import DUMMY_TOKEN
from mlflow_server import Guard, MlflowServer

pytestmark = pytest.mark.network

CHECKSUM = "c" * 64
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _png(path: Path) -> Path:
    import struct
    import zlib

    raw = b"".join(b"\x00" + bytes([i * 20 % 256, 90, 160]) * 4 for i in range(4))
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def train_stage(tracker: Any, run_id: str, *, accuracy: float = 0.97, checksum: str = CHECKSUM, epochs: int = 3) -> None:
    """What the runner and train.ipynb record (params, history, finals, images, HTML, model)."""
    folder = config.runs_dir() / run_id
    folder.mkdir(parents=True, exist_ok=True)
    tracker.start_run(
        run_id, name=run_id, params={"architecture": "mlp", "epochs": epochs, "learning_rate": 0.001},
        tags={"stage": "train", "mr_iid": "7", "pipeline_id": "99"}, git_commit=COMMIT, data_checksum=checksum,
    )
    for epoch in range(epochs):
        tracker.log_metrics(run_id, {"loss": 1.0 / (epoch + 1), "val_accuracy": accuracy - 0.05 + epoch / 100}, step=epoch)
    with zipfile.ZipFile(folder / "model.keras", "w") as zf:
        zf.writestr("config.json", json.dumps({"run_id": run_id}))
        zf.writestr("model.weights.h5", os.urandom(4096))
    tracker.log_metrics(run_id, {"val_accuracy": accuracy - 0.01, "train_seconds": 3.5})
    tracker.log_artifact(run_id, _png(folder / "curves.png"))
    (folder / "train.html").write_text("<html><body>train notebook</body></html>")
    tracker.log_artifact(run_id, folder / "train.html")
    tracker.end_run(run_id, "finished")


def evaluate_stage(tracker: Any, run_id: str, *, accuracy: float = 0.97) -> None:
    """What evaluate.ipynb adds: a param, test metrics, metrics.json, the confusion image and HTML."""
    folder = config.runs_dir() / run_id
    tracker.start_run(run_id, tags={"stage": "evaluate"})
    tracker.log_params(run_id, {"batch_size_eval": 256})
    tracker.log_metrics(run_id, {"test_accuracy": accuracy, "test_loss": 0.1})
    (folder / "metrics.json").write_text(json.dumps({"test_accuracy": accuracy, "confusion_matrix": [[5, 1], [0, 6]]}))
    tracker.log_artifact(run_id, _png(folder / "confusion.png"))
    (folder / "evaluate.html").write_text("<html><body>evaluate notebook</body></html>")
    tracker.log_artifact(run_id, folder / "evaluate.html")
    tracker.end_run(run_id, "finished")


def record_run(run_id: str, *, accuracy: float = 0.97, checksum: str = CHECKSUM, between: Any = None) -> MlflowTracker:
    tracker = get_tracker()
    assert isinstance(tracker, MlflowTracker)
    train_stage(tracker, run_id, accuracy=accuracy, checksum=checksum)
    if between is not None:
        between()
    evaluate_stage(tracker, run_id, accuracy=accuracy)
    return tracker


def _client() -> MlflowRest:
    return MlflowRest(timeout=10.0, retries=1)


def mlflow_runs(run_id: str | None = None) -> list[dict]:
    """The experiment's MLflow runs (with ``run_id``'s tag), read through the guard."""
    client = _client()
    eid = client.experiment_id(config.project_name(), create=False)
    wanted = f"tags.`digitops.run_id` = '{run_id}'" if run_id else ""
    # The index run (digitops.mlflow.index) is no digitops run.
    return [r for r in client.search_runs(eid, wanted) if "digitops.index" not in {t["key"] for t in r["data"].get("tags", [])}]


def run_creates(guard: Guard) -> int:
    """runs/create requests for digitops runs (not the index run)."""
    return sum(1 for b in guard.sent("runs/create") if "digitops.index" not in {t["key"] for t in b.get("tags") or []})


def history(server: MlflowServer, mlflow_run_id: str, key: str) -> list[tuple[int, float]]:
    """Every logged point of ``key``, straight from the server (not through the guard: GitLab has no such call)."""
    got = requests.get(
        f"{server.url}/api/2.0/mlflow/metrics/get-history", params={"run_id": mlflow_run_id, "metric_key": key}, timeout=10
    ).json()
    ordered = sorted(got.get("metrics", []), key=lambda m: (int(m.get("step", 0)), int(m["timestamp"])))
    return [(int(m.get("step", 0)), float(m["value"])) for m in ordered]


def assert_complete(server: MlflowServer, run_id: str, tmp_path: Path) -> dict:
    """The one MLflow run of ``run_id`` holds exactly what the local store holds."""
    local = MlflowTracker().get_run(run_id)
    (run,) = mlflow_runs(run_id)
    info, data = run["info"], run["data"]
    params = {p["key"]: p["value"] for p in data.get("params", [])}
    tags = {t["key"]: t["value"] for t in data.get("tags", [])}
    metrics = {m["key"]: m["value"] for m in data.get("metrics", [])}
    assert params == {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in local.params.items()}
    assert tags["digitops.run_id"] == run_id and tags["digitops.status"] == local.status
    assert tags["digitops.data_checksum"] == local.data_checksum and tags["mlflow.source.git.commit"] == local.git_commit
    assert {k: tags.get(k) for k in ("mr_iid", "pipeline_id")} == {k: local.tags.get(k) for k in ("mr_iid", "pipeline_id")}
    assert "stage" not in tags
    assert info["status"] == "FINISHED" and info["end_time"] and info["run_name"] == run_id
    for key, values in local.history.items():
        points = history(server, info["run_id"], key)
        steps = [s for s, _ in points]
        if key in local.metrics and local.metrics[key] != values[-1]:  # the final, once more at the last step
            assert points[-1] == (len(values) - 1, pytest.approx(local.metrics[key]))
            points = points[:-1]
            steps = [s for s, _ in points]
        assert steps == list(range(len(values))), (key, points)
        assert [v for _, v in points] == pytest.approx(values), key
    for key, value in local.metrics.items():
        assert metrics[key] == pytest.approx(value), key
        if key not in local.history:
            assert len(history(server, info["run_id"], key)) == 1, key  # sent once
    from digitops.comet.state import run_files

    client = _client()
    for name, path in run_files(local).items():
        got = client.download_artifact(run, name, tmp_path / "download" / name)
        assert got.read_bytes() == Path(path).read_bytes(), name
    assert local.url == f"{client.uri}/#/experiments/{info['experiment_id']}/runs/{info['run_id']}"
    assert local.tags["mlflow_run_id"] == info["run_id"]
    return run


def assert_no_token(*roots: Path, text: str = "") -> None:
    assert DUMMY_TOKEN not in text
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file():
                assert DUMMY_TOKEN.encode() not in path.read_bytes(), path


@pytest.fixture
def server(mlflow_server: tuple[MlflowServer, Guard]) -> MlflowServer:
    return mlflow_server[0]


# ----------------------------------------------------------------------------- mirror


def test_get_tracker_is_mlflow_for_the_mlflow_backend(mlflow_guard: Guard) -> None:
    assert isinstance(get_tracker(), MlflowTracker)


def test_mirror_is_complete(mlflow_guard: Guard, server: MlflowServer, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    record_run("run-complete")
    run = assert_complete(server, "run-complete", tmp_path)
    assert len(mlflow_runs()) == 1
    assert run["data"]["tags"]  # the experiment is named after the project
    exp = _client().call("GET", "experiments/get", {"experiment_id": run["info"]["experiment_id"]})
    assert exp["experiment"]["name"] == config.project_name()
    err = capfd.readouterr().err
    assert err.count("mlflow: run run-complete:") == 2 and "item(s) sent to" in err
    assert_no_token(tmp_path, text=err)


def test_gitlab_ci_job_tag(mlflow_guard: Guard, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITLAB_CI", "true")
    monkeypatch.setenv("CI_JOB_ID", "4242")
    train_stage(get_tracker(), "run-ci")
    (run,) = mlflow_runs("run-ci")
    assert {"key": "gitlab.CI_JOB_ID", "value": "4242"} in run["data"]["tags"]


def test_second_end_run_sends_only_what_is_new(mlflow_guard: Guard, server: MlflowServer, tmp_path: Path) -> None:
    tracker = get_tracker()
    train_stage(tracker, "run-two")
    first_batches = len(mlflow_guard.sent("runs/log-batch"))
    puts = mlflow_guard.count("PUT", "/artifacts/")
    assert puts == 3  # curves.png, train.html, model.keras
    evaluate_stage(tracker, "run-two")
    new = mlflow_guard.sent("runs/log-batch")[first_batches:]
    params = [p["key"] for b in new for p in b.get("params", [])]
    metrics = [m["key"] for b in new for m in b.get("metrics", [])]
    assert params == ["batch_size_eval"]
    assert sorted(metrics) == ["test_accuracy", "test_loss"]
    assert mlflow_guard.count("PUT", "/artifacts/") - puts == 3  # metrics.json, confusion.png, evaluate.html
    assert run_creates(mlflow_guard) == 1
    assert_complete(server, "run-two", tmp_path)
    # A third end_run with nothing new sends nothing at all.
    before = len(mlflow_guard.requests)
    tracker.start_run("run-two")
    tracker.end_run("run-two", "finished")
    writes = [r for r in mlflow_guard.requests[before:] if r[0] != "GET" and "runs/search" not in r[1]]
    assert writes == [("POST", "/api/2.0/mlflow/runs/update")]  # only the new end time


def test_state_lost_still_one_mlflow_run(mlflow_guard: Guard, server: MlflowServer, tmp_path: Path) -> None:
    tracker = get_tracker()
    train_stage(tracker, "run-lost")
    RunState.path("run-lost").unlink()  # e.g. another CI job: no state file, the tag finds the run
    evaluate_stage(tracker, "run-lost")
    assert run_creates(mlflow_guard) == 1
    assert_complete(server, "run-lost", tmp_path)


# ----------------------------------------------------------------------------- faults


def test_server_down_at_end_run_is_pending_then_synced_once(
    mlflow_guard: Guard, server: MlflowServer, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    record_run("run-down", between=mlflow_guard.down)
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if "run-down" in line and "not mirrored" in line]
    assert len(warnings) == 1 and "`digitops sync`" in warnings[0], err
    assert pending_runs() == ["run-down"]
    assert MlflowTracker().get_run("run-down").metrics["test_accuracy"] == pytest.approx(0.97)  # nothing lost
    (run,) = mlflow_runs("run-down") if mlflow_guard.up() else []
    assert "test_accuracy" not in {m["key"] for m in run["data"].get("metrics", [])}

    lines = sync_pending()
    assert len(lines) == 1 and "run run-down:" in lines[0] and "sent to" in lines[0], lines
    assert pending_runs() == []
    assert_complete(server, "run-down", tmp_path)
    before = len(mlflow_guard.requests)
    assert sync_pending() == []  # nothing pending: a rerun writes nothing (it only checks the index is complete)
    assert {p for m, p in mlflow_guard.requests[before:] if m != "GET"} <= {"/api/2.0/mlflow/runs/search"}
    assert MlflowTracker().sync_pending(["run-down"]) == [f"run run-down: already complete in MLflow ({MlflowTracker().get_run('run-down').url})"]
    assert_no_token(tmp_path, text=err)


def test_server_down_for_both_stages_then_synced(mlflow_guard: Guard, server: MlflowServer, tmp_path: Path) -> None:
    mlflow_guard.down()
    record_run("run-offline")
    assert pending_runs() == ["run-offline"]
    mlflow_guard.up()
    assert "sent to" in sync_pending()[0]
    assert_complete(server, "run-offline", tmp_path)
    assert run_creates(mlflow_guard) == 1


def test_sync_with_server_still_down_says_pending(mlflow_guard: Guard) -> None:
    mlflow_guard.down()
    train_stage(get_tracker(), "run-still")
    (line,) = sync_pending()
    assert line.startswith("run run-still: still pending:") and "unavailable" in line
    assert pending_runs() == ["run-still"]


def test_saved_then_5xx_log_batch_is_reconciled_without_duplicates(
    mlflow_guard: Guard, server: MlflowServer, tmp_path: Path
) -> None:
    tracker = get_tracker()
    mlflow_guard.fail("runs/log-batch", status=503, saved=True)
    train_stage(tracker, "run-midway")
    assert pending_runs() == ["run-midway"]
    evaluate_stage(tracker, "run-midway")  # the server is fine again: read back, send the rest
    assert pending_runs() == []
    run = assert_complete(server, "run-midway", tmp_path)
    # The saved batch's final metrics were not sent a second time.
    assert history(server, run["info"]["run_id"], "train_seconds") == [(0, 3.5)]
    assert len(history(server, run["info"]["run_id"], "val_accuracy")) == 4  # 3 epochs + the final, once
    assert run_creates(mlflow_guard) == 1


def test_failure_at_artifact_upload_is_completed_by_sync(mlflow_guard: Guard, server: MlflowServer, tmp_path: Path) -> None:
    tracker = get_tracker()
    mlflow_guard.fail("/train.html", status=500, times=4)  # every attempt of the first upload of train.html
    train_stage(tracker, "run-upload")
    assert pending_runs() == ["run-upload"]
    puts = mlflow_guard.count("PUT", "/artifacts/")
    assert "sent to" in sync_pending()[0]
    assert mlflow_guard.count("PUT", "/artifacts/") - puts == 1  # only what never arrived is uploaded again
    evaluate_stage(tracker, "run-upload")
    assert_complete(server, "run-upload", tmp_path)


def test_saved_then_5xx_create_makes_one_mlflow_run(mlflow_guard: Guard, server: MlflowServer, tmp_path: Path) -> None:
    mlflow_guard.fail("runs/create", status=503, saved=True)
    record_run("run-create")
    assert run_creates(mlflow_guard) == 1
    assert pending_runs() == []  # found by its tag right away: completed in the same end_run
    assert len(mlflow_runs()) == 1
    assert_complete(server, "run-create", tmp_path)


def test_saved_then_5xx_create_with_server_gone_is_found_by_sync(mlflow_guard: Guard, server: MlflowServer, tmp_path: Path) -> None:
    mlflow_guard.fail("runs/create", status=503, saved=True)
    mlflow_guard.fail("runs/search", status=503, times=100)  # the look-up after the failed create fails too
    train_stage(get_tracker(), "run-create2")
    assert pending_runs() == ["run-create2"]
    mlflow_guard.faults.clear()
    sync_pending()
    assert run_creates(mlflow_guard) == 1 and len(mlflow_runs()) == 1


# ----------------------------------------------------------------------------- reads


def test_compare_reads_history_through_the_server(mlflow_guard: Guard, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from digitops.compare import PASS, compare

    record_run("run-a", accuracy=0.95)
    record_run("run-b", accuracy=0.97)
    record_run("run-other-data", accuracy=0.99, checksum="d" * 64)
    # The candidate is recorded on another machine: its local store has never seen run-a or run-b.
    monkeypatch.setenv("DIGITOPS_HOME", str(tmp_path / "other-home"))
    monkeypatch.setenv("DIGITOPS_RUNS", str(tmp_path / "other-runs"))
    record_run("run-cand", accuracy=0.96)
    tracker = get_tracker()
    summary = tracker.metric_summary("test_accuracy", exclude=["run-cand"], data_checksum=CHECKSUM)
    assert (summary.count, summary.best, summary.best_run_id) == (2, pytest.approx(0.97), "run-b")
    assert summary.mean == pytest.approx(0.96)
    loss = tracker.metric_summary("test_loss", exclude=["run-cand"], data_checksum=CHECKSUM, higher_is_better=False)
    assert loss.count == 2
    result = compare("run-cand", tracker=tracker, gate=None)
    row = result.rows[0]
    assert (row.count, row.best_run_id) == (2, "run-b") and result.verdict == PASS
    assert tracker.metric_summary("test_accuracy", project="no-such-project").count == 0
    # One filtered read serves every metric of a comparison (four here), not one read per metric.
    before = mlflow_guard.count("POST", "runs/search")
    again = compare("run-cand", tracker=get_tracker(), gate=None)
    assert len(again.rows) == 4 and mlflow_guard.count("POST", "runs/search") - before == 1


def test_metric_summary_pages_and_filters_server_side(mlflow_guard: Guard, monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = get_tracker()
    for i in range(5):
        evaluate_stage_only(tracker, f"run-p{i}", 0.9 + i / 100)
    failed = "run-failed"
    tracker.start_run(failed, data_checksum=CHECKSUM)
    tracker.log_metrics(failed, {"test_accuracy": 0.999})
    tracker.end_run(failed, "failed")
    monkeypatch.setattr(queries, "PAGE", 2)
    monkeypatch.setattr(index, "read", lambda *a: None)  # no trusted index: the full search (tests/test_mlflow_index.py)
    before = mlflow_guard.count("POST", "runs/search")
    summary = tracker.metric_summary("test_accuracy", exclude=["run-p0"], data_checksum=CHECKSUM)
    assert summary.count == 4 and summary.best_run_id == "run-p4"
    assert mlflow_guard.count("POST", "runs/search") - before == 2  # 4 runs in pages of 2, not one call per run
    (search,) = [b for b in mlflow_guard.sent("runs/search")[-2:] if "page_token" not in b]
    assert "attributes.status = 'FINISHED'" in search["filter"] and CHECKSUM in search["filter"]
    assert "run-p0" in search["filter"]


def test_metric_summary_counts_a_reused_evaluation_once(mlflow_guard: Guard) -> None:
    tracker = get_tracker()
    evaluate_stage_only(tracker, "run-o", 0.95)
    tracker.start_run("run-o-reused", data_checksum=CHECKSUM, tags={"digitops.eval_reused_from": "run-o"})
    tracker.log_metrics("run-o-reused", {"test_accuracy": 0.95})
    tracker.end_run("run-o-reused", "finished")
    evaluate_stage_only(tracker, "run-q", 0.91)
    summary = tracker.metric_summary("test_accuracy", data_checksum=CHECKSUM)
    assert (summary.count, summary.mean, summary.best_run_id) == (2, pytest.approx(0.93), "run-o")
    assert "run-o-reused" in [r.run_id for r in tracker.list_runs()]  # still listed, only not counted twice


def evaluate_stage_only(tracker: Any, run_id: str, accuracy: float) -> None:
    tracker.start_run(run_id, data_checksum=CHECKSUM, params={"architecture": "mlp"})
    tracker.log_metrics(run_id, {"test_accuracy": accuracy})
    tracker.end_run(run_id, "finished")


def test_a_run_that_fails_after_it_finished_reads_failed_without_overwriting_a_tag(mlflow_guard: Guard) -> None:
    # GitLab's tags are create-only (the guard emulates it): digitops.status keeps its first value there,
    # so the status is read from the run's own status (runs/update), and the mirror never resends a tag.
    tracker = get_tracker()
    train_stage(tracker, "run-ff")
    tracker.start_run("run-ff", tags={"stage": "evaluate"})
    tracker.end_run("run-ff", "failed")
    assert [(r.run_id, r.status) for r in tracker.list_runs()] == [("run-ff", "failed")]
    assert [r.run_id for r in tracker.list_runs(status="failed")] == ["run-ff"]
    assert tracker.list_runs(status="finished") == []
    assert mlflow_guard.skipped_tags == []


def test_list_runs_reads_the_server_newest_first(mlflow_guard: Guard) -> None:
    tracker = get_tracker()
    for i in range(3):
        evaluate_stage_only(tracker, f"run-l{i}", 0.9)
    tracker.start_run("run-lf", data_checksum=CHECKSUM)
    tracker.end_run("run-lf", "failed")
    listed = tracker.list_runs()
    assert [r.run_id for r in listed] == ["run-lf", "run-l2", "run-l1", "run-l0"]
    assert listed[1].metrics == {"test_accuracy": 0.9} and listed[1].params == {"architecture": "mlp"}
    assert listed[1].data_checksum == CHECKSUM and listed[1].url and listed[1].status == "finished"
    assert [r.run_id for r in tracker.list_runs(status="failed")] == ["run-lf"]
    assert [r.run_id for r in tracker.list_runs(limit=2)] == ["run-lf", "run-l2"]


def test_server_down_metric_summary_raises_and_compare_cannot_judge(mlflow_guard: Guard, monkeypatch: pytest.MonkeyPatch) -> None:
    from digitops.compare import UNJUDGED, compare

    record_run("run-h", accuracy=0.95)
    record_run("run-c", accuracy=0.99)
    mlflow_guard.down()
    tracker = get_tracker()
    with pytest.raises(TrackingError, match="cannot be read"):
        tracker.metric_summary("test_accuracy", exclude=["run-c"])
    with pytest.raises(TrackingError):
        tracker.list_runs()
    monkeypatch.delenv("DIGITOPS_ALLOW_UNJUDGED", raising=False)
    result = compare("run-c", tracker=tracker)
    assert result.verdict == UNJUDGED  # never judged against the local store alone


def test_cli_compare_exits_2_when_the_server_is_down(mlflow_guard: Guard) -> None:
    from click.testing import CliRunner

    from digitops.cli import cli

    record_run("run-x", accuracy=0.99)
    mlflow_guard.down()
    result = CliRunner().invoke(cli, ["compare", "run-x", "--floor", "0.5"])
    assert result.exit_code == 2, result.output
    assert DUMMY_TOKEN not in result.output


# ----------------------------------------------------------------------------- a real run


@pytest.mark.slow
def test_real_pipeline_is_mirrored_and_server_killed_midway_is_synced(
    mlflow_guard: Guard, server: MlflowServer, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITOPS_MLFLOW_OWNER")}
    env["DIGITOPS_NOTEBOOKS"] = str(Path(__file__).resolve().parents[1] / "notebooks")
    tiny = ["-p", "architecture", "mlp", "-p", "limit", "300", "-p", "epochs", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "digitops", "run", "train", *tiny], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    run_id = run_dir.name
    mlflow_guard.down()  # the server goes away between the stages
    done = subprocess.run(
        [sys.executable, "-m", "digitops", "run", "evaluate", run_id], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=900,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert output.count("not mirrored to MLflow") == 1, output[-3000:]
    mlflow_guard.up()
    lines = sync_pending()
    assert "sent to" in lines[0], lines
    run = assert_complete(server, run_id, tmp_path)
    assert history(server, run["info"]["run_id"], "loss")  # the epoch's point, step 0
    names = set(MlflowTracker().get_run(run_id).artifacts) | {"model.keras", "metrics.json"}
    assert {n for n in names if n.endswith(".html")} and "model.keras" in names
    assert run["info"]["status"] == "FINISHED"
    assert_no_token(tmp_path, text=output)


def test_find_reusable_filters_on_the_fingerprint_server_side(mlflow_guard: Guard, monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = get_tracker()
    for run_id, fp, status in [("run-f1", "fp1", "finished"), ("run-f2", "fp1", "finished"),
                               ("run-f3", "fp1", "failed"), ("run-g", "fp2", "finished")]:
        tracker.start_run(run_id, tags={"digitops.fingerprint": fp, "digitops.eval_fingerprint": "e-" + fp},
                          data_checksum=CHECKSUM)
        tracker.end_run(run_id, status)
    before = mlflow_guard.count("POST", "runs/search")
    found = tracker.find_reusable("fp1")
    assert found is not None and found.run_id == "run-f2"
    assert mlflow_guard.count("POST", "runs/search") - before == 1
    assert "digitops.fingerprint" in mlflow_guard.sent("runs/search")[-1]["filter"]
    assert tracker.find_reusable("fp-none") is None
    evaluated = tracker.find_reusable("e-fp1", tag="digitops.eval_fingerprint")
    assert evaluated is not None and evaluated.run_id == "run-f2"
    # Recorded on another machine: the server's record comes back.
    monkeypatch.setenv("DIGITOPS_HOME", str(Path.cwd() / "elsewhere"))
    other = get_tracker().find_reusable("fp2")
    assert other is not None and other.run_id == "run-g" and other.url
    assert [r.run_id for r in tracker.find_by_tag("digitops.fingerprint", "fp1", finished_only=False)] == ["run-f3", "run-f2", "run-f1"]


def test_run_url_for_an_mlflow_server_and_for_gitlab(monkeypatch: pytest.MonkeyPatch) -> None:
    from digitops.mlflow.tracker import run_url

    assert run_url("http://mlflow:5000", "3", "abc") == "http://mlflow:5000/#/experiments/3/runs/abc"
    gitlab = "https://gitlab.example/api/v4/projects/42/ml/mlflow"
    monkeypatch.delenv("CI_PROJECT_URL", raising=False)
    assert run_url(gitlab, "3", "abc") == "https://gitlab.example/projects/42"
    monkeypatch.setenv("CI_PROJECT_URL", "https://gitlab.example/group/digits")
    assert run_url(gitlab, "3", "abc") == "https://gitlab.example/group/digits/-/ml/experiments"
