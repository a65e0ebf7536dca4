"""The embedded SQLite tracker: round trips, queries, concurrency and crashes."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from digitops.tracking import FAILED, FINISHED, RUNNING, RunRecord, TrackingError, get_tracker
from digitops.tracking.sqlite import _SUMMARY_SQL, SCHEMA_VERSION, SqliteTracker


@pytest.fixture
def tracker(workdir: Path) -> SqliteTracker:
    return SqliteTracker()


def _finished(t: SqliteTracker, run_id: str, acc: float | None, *, data: str = "d1", project: str | None = None,
              status: str = FINISHED) -> None:
    t.start_run(run_id, params={"architecture": "mlp"}, data_checksum=data, project=project)
    if acc is not None:
        t.log_metrics(run_id, {"test_accuracy": acc})
    t.end_run(run_id, status)


def test_defaults_live_under_digitops_home(workdir: Path) -> None:
    t = get_tracker()
    assert isinstance(t, SqliteTracker)
    assert t.db_path == workdir / ".digitops" / "tracking.db"
    assert t.artifacts_dir == workdir / ".digitops" / "artifacts"
    assert t.db_path.is_file()
    con = sqlite3.connect(t.db_path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_run_round_trip(tracker: SqliteTracker, tmp_path: Path) -> None:
    rec = tracker.start_run(
        "r1",
        name="first",
        params={"epochs": 2, "learning_rate": 0.001, "augment": False, "architecture": "cnn", "layers": [1, 2]},
        tags={"stage": "train"},
        git_commit="abc123",
        data_checksum="0123456789abcdef",
        project="proj",
    )
    assert rec.status == RUNNING and rec.project == "proj" and rec.started_at
    for epoch, (loss, acc) in enumerate([(0.9, 0.7), (0.5, 0.85), (0.3, 0.9)]):
        tracker.log_metrics("r1", {"loss": loss, "accuracy": acc}, step=epoch)
    tracker.log_metrics("r1", {"test_accuracy": 0.5})
    tracker.log_metrics("r1", {"test_accuracy": 0.91, "test_loss": 0.3})  # last write wins
    image = tmp_path / "curves.png"
    image.write_bytes(b"\x89PNG fake image bytes")
    stored = tracker.log_artifact("r1", image)
    tracker.log_params("r1", {"epochs": 3})
    tracker.set_tags("r1", {"ci": "yes"})
    tracker.end_run("r1")

    run = tracker.get_run("r1")
    assert run.status == FINISHED and run.ended_at and run.ended_at >= run.started_at
    assert run.params == {"epochs": 3, "learning_rate": 0.001, "augment": False, "architecture": "cnn",
                          "layers": [1, 2]}
    assert isinstance(run.params["epochs"], int) and isinstance(run.params["learning_rate"], float)
    assert run.tags == {"stage": "train", "ci": "yes"}
    assert run.history == {"loss": [0.9, 0.5, 0.3], "accuracy": [0.7, 0.85, 0.9]}
    assert run.metrics == {"test_accuracy": 0.91, "test_loss": 0.3}
    assert run.git_commit == "abc123" and run.data_checksum == "0123456789abcdef" and run.name == "first"
    assert run.artifacts == {"curves.png": stored}
    import numpy as np

    tracker.log_params("r1", {"np_lr": np.float32(0.5), "np_n": np.int64(7), "folder": Path("/data")})
    assert {k: tracker.get_run("r1").params[k] for k in ("np_lr", "np_n", "folder")} == {
        "np_lr": 0.5, "np_n": 7, "folder": "/data"}
    assert Path(stored).read_bytes() == image.read_bytes()
    assert Path(stored).parent == (tracker.artifacts_dir / "r1").resolve()


def test_resume_sets_running_and_keeps_what_was_logged(tracker: SqliteTracker) -> None:
    tracker.start_run("r1", params={"epochs": 2}, data_checksum="d1", project="p")
    tracker.log_metrics("r1", {"val_accuracy": 0.9})
    tracker.end_run("r1")
    again = tracker.start_run("r1", params={"evaluate.batch": 64}, tags={"stage": "evaluate"})
    assert again.status == RUNNING and again.ended_at is None
    assert again.params == {"epochs": 2, "evaluate.batch": 64}
    assert again.metrics == {"val_accuracy": 0.9} and again.data_checksum == "d1"
    with pytest.raises(TrackingError, match="belongs to project 'p'"):
        tracker.start_run("r1", project="other")


def test_errors_are_specific(tracker: SqliteTracker, tmp_path: Path) -> None:
    with pytest.raises(TrackingError, match="unknown run 'nope'"):
        tracker.get_run("nope")
    with pytest.raises(TrackingError, match="unknown run 'nope'"):
        tracker.log_metrics("nope", {"a": 1.0})
    tracker.start_run("r1")
    with pytest.raises(TrackingError, match="must be a number"):
        tracker.log_metrics("r1", {"a": "high"})
    with pytest.raises(TrackingError, match="'finished' or 'failed'"):
        tracker.end_run("r1", "done")
    with pytest.raises(TrackingError, match="no such file"):
        tracker.log_artifact("r1", tmp_path / "missing.png")
    with pytest.raises(TrackingError, match="invalid run id"):
        tracker.start_run("a/b")
    assert tracker.get_run("r1").metrics == {}


def test_nan_is_kept_as_nan_and_ignored_by_summaries(tracker: SqliteTracker) -> None:
    tracker.start_run("r1", data_checksum="d1")
    tracker.log_metrics("r1", {"loss": float("nan")}, step=0)
    tracker.log_metrics("r1", {"test_accuracy": float("nan")})
    tracker.end_run("r1")
    _finished(tracker, "r2", 0.8)
    run = tracker.get_run("r1")
    assert math.isnan(run.history["loss"][0]) and math.isnan(run.metrics["test_accuracy"])
    s = tracker.metric_summary("test_accuracy")
    assert (s.count, s.mean, s.best_run_id) == (1, 0.8, "r2")


def test_failed_run_keeps_its_metrics_and_is_not_a_baseline(tracker: SqliteTracker) -> None:
    tracker.start_run("bad", data_checksum="d1")
    tracker.log_metrics("bad", {"loss": 2.3}, step=0)
    tracker.log_metrics("bad", {"test_accuracy": 0.99})
    tracker.end_run("bad", FAILED)
    _finished(tracker, "good", 0.9)
    bad = tracker.get_run("bad")
    assert bad.status == FAILED and bad.history == {"loss": [2.3]} and bad.metrics == {"test_accuracy": 0.99}
    s = tracker.metric_summary("test_accuracy")
    assert (s.count, s.best, s.best_run_id) == (1, 0.9, "good")


def test_metric_summary_filters_and_ties(tracker: SqliteTracker) -> None:
    _finished(tracker, "a", 0.90)
    _finished(tracker, "b", 0.96)
    _finished(tracker, "c", 0.96)  # ties with b: the earlier run is best
    _finished(tracker, "d", 0.93)
    _finished(tracker, "other-data", 0.99, data="d2")
    _finished(tracker, "other-project", 0.999, project="elsewhere")
    _finished(tracker, "no-metric", None)
    tracker.start_run("still-running", data_checksum="d1")
    tracker.log_metrics("still-running", {"test_accuracy": 1.0})

    s = tracker.metric_summary("test_accuracy", data_checksum="d1")
    assert s.count == 4
    assert s.mean == pytest.approx((0.90 + 0.96 + 0.96 + 0.93) / 4)
    assert (s.best, s.best_run_id, s.worst) == (0.96, "b", 0.90)

    s = tracker.metric_summary("test_accuracy", data_checksum="d1", exclude=["b", "c"])
    assert (s.count, s.best, s.best_run_id) == (2, 0.93, "d")
    s = tracker.metric_summary("test_accuracy", data_checksum="d1", higher_is_better=False)
    assert (s.best, s.best_run_id, s.worst) == (0.90, "a", 0.96)
    assert tracker.metric_summary("test_accuracy").count == 5  # every dataset
    assert tracker.metric_summary("test_accuracy", project="elsewhere").best_run_id == "other-project"
    empty = tracker.metric_summary("test_accuracy", data_checksum="unknown")
    assert (empty.count, empty.mean, empty.best, empty.best_run_id) == (0, None, None, None)
    assert tracker.metric_summary("no_such_metric").count == 0


def test_metric_summary_counts_a_reused_evaluation_once(tracker: SqliteTracker) -> None:
    """A run that reused another's evaluation carries that run's metrics: history counts them once."""
    _finished(tracker, "a", 0.90)
    _finished(tracker, "b", 0.96)
    for copy in ("b-again", "b-third"):
        tracker.start_run(copy, data_checksum="d1", tags={"digitops.eval_reused_from": "b"})
        tracker.log_metrics(copy, {"test_accuracy": 0.96})
        tracker.end_run(copy, FINISHED)
    s = tracker.metric_summary("test_accuracy", data_checksum="d1")
    assert (s.count, s.mean, s.best_run_id) == (2, pytest.approx(0.93), "b")


def test_metric_summary_is_one_indexed_query(tracker: SqliteTracker) -> None:
    # The summary must stay fast with thousands of runs: it reads one key's final values by index.
    con = sqlite3.connect(tracker.db_path)
    plan = " ".join(
        str(row[3])
        for row in con.execute(
            "EXPLAIN QUERY PLAN " + _SUMMARY_SQL.format(order="DESC"), ("m", "p", None, None, "[]")
        )
    )
    assert "metrics_summary" in plan, plan


def test_list_runs_newest_first(tracker: SqliteTracker) -> None:
    for i in range(5):
        _finished(tracker, f"r{i}", 0.9 + i / 100, status=FAILED if i == 3 else FINISHED)
    _finished(tracker, "x", 0.5, project="other")
    assert [r.run_id for r in tracker.list_runs()] == ["r4", "r3", "r2", "r1", "r0"]
    assert [r.run_id for r in tracker.list_runs(limit=2)] == ["r4", "r3"]
    assert [r.run_id for r in tracker.list_runs(status=FAILED)] == ["r3"]
    assert [r.run_id for r in tracker.list_runs(project="other")] == ["x"]
    assert tracker.list_runs()[0].metrics == {"test_accuracy": 0.9 + 4 / 100}
    with pytest.raises(TrackingError, match="unknown status"):
        tracker.list_runs(status="done")


def test_import_runs_bulk(tracker: SqliteTracker) -> None:
    records = [
        RunRecord(run_id=f"i{i}", project="digitops", status=FINISHED, params={"seed": i},
                  metrics={"test_accuracy": i / 10}, history={"loss": [1.0, 0.5]}, data_checksum="d1",
                  started_at=f"2026-01-01T00:00:{i:02d}+00:00")
        for i in range(10)
    ]
    assert tracker.import_runs(records) == 10
    assert tracker.get_run("i3").history == {"loss": [1.0, 0.5]}
    assert tracker.metric_summary("test_accuracy").best_run_id == "i9"
    with pytest.raises(TrackingError, match="cannot import"):
        tracker.import_runs(records[:1])


def test_newer_schema_is_refused(tracker: SqliteTracker) -> None:
    con = sqlite3.connect(tracker.db_path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(TrackingError, match="newer than this digitops supports"):
        SqliteTracker()


# ---------------------------------------------------------------------------- processes

_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from digitops.tracking.sqlite import SqliteTracker
    db, who, go, steps = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    t = SqliteTracker(db, Path(db).parent / "artifacts")
    Path(go.parent / f"ready-{who}").touch()
    while not go.exists():
        time.sleep(0.001)
    t.start_run("shared", params={f"{who}.p": 1}, data_checksum="d1")
    t.start_run(f"own-{who}", data_checksum="d1")
    for step in range(steps):
        t.log_metrics("shared", {f"{who}_loss": 1 / (step + 1)}, step=step)
        t.log_metrics(f"own-{who}", {"loss": float(step)}, step=step)
        t.set_tags("shared", {f"{who}": str(step)})
    t.log_metrics(f"own-{who}", {"test_accuracy": 0.9})
    t.end_run(f"own-{who}")
    """
)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def test_two_processes_write_the_same_database(tmp_path: Path) -> None:
    db, go, steps = tmp_path / "tracking.db", tmp_path / "go", 150
    SqliteTracker(db, tmp_path / "artifacts")
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(db), who, str(go), str(steps)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
        for who in ("a", "b")
    ]
    deadline = time.time() + 60
    while not all((tmp_path / f"ready-{w}").exists() for w in "ab"):
        assert time.time() < deadline, "writers did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    go.touch()  # both start writing at the same moment
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()

    t = SqliteTracker(db, tmp_path / "artifacts")
    con = sqlite3.connect(db)
    spans = {
        who: con.execute(
            "SELECT MIN(logged_at), MAX(logged_at) FROM metrics WHERE run_id = 'shared' AND key = ?", (f"{who}_loss",)
        ).fetchone()
        for who in "ab"
    }
    assert spans["a"][0] < spans["b"][1] and spans["b"][0] < spans["a"][1], f"writes did not overlap: {spans}"
    shared = t.get_run("shared")
    for who in "ab":
        assert shared.history[f"{who}_loss"] == [1 / (s + 1) for s in range(steps)]
        assert shared.tags[who] == str(steps - 1)
        assert shared.params[f"{who}.p"] == 1
        own = t.get_run(f"own-{who}")
        assert own.history["loss"] == [float(s) for s in range(steps)] and own.status == FINISHED
    assert t.metric_summary("test_accuracy").count == 2
    assert t.integrity_check() == "ok"


_CRASHER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from digitops import _sqlite
    from digitops.tracking.sqlite import SqliteTracker
    t = SqliteTracker(sys.argv[1], Path(sys.argv[1]).parent / "artifacts")
    t.start_run("crashy", params={"epochs": 3}, data_checksum="d1")
    for step in range(3):
        t.log_metrics("crashy", {"loss": 1.0 / (step + 1)}, step=step)
    # Die half-way through a write: rows inserted, transaction never committed.
    con = _sqlite.connect(t.db_path)
    con.execute("BEGIN IMMEDIATE")
    con.execute("INSERT INTO metrics (run_id, key, step, value, logged_at) VALUES ('crashy', 'test_accuracy', NULL, 0.99, 'x')")
    con.execute("UPDATE runs SET status = 'finished' WHERE run_id = 'crashy'")
    os._exit(17)
    """
)


def test_crash_mid_transaction_leaves_a_consistent_database(tmp_path: Path) -> None:
    db = tmp_path / "tracking.db"
    proc = subprocess.run([sys.executable, "-c", _CRASHER, str(db)], capture_output=True, env=_env(), timeout=60)
    assert proc.returncode == 17, proc.stderr.decode()

    t = SqliteTracker(db, tmp_path / "artifacts")
    assert t.integrity_check() == "ok"
    run = t.get_run("crashy")
    assert [r.run_id for r in t.list_runs()] == ["crashy"]
    assert run.status == RUNNING  # the uncommitted "finished" is gone
    assert run.history == {"loss": [1.0, 0.5, 1 / 3]}
    assert run.metrics == {}
    # The lock died with the process: the runner can still close the run as failed.
    t.end_run("crashy", FAILED)
    assert t.get_run("crashy").status == FAILED


_LOGGER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from digitops.tracking.sqlite import SqliteTracker
    t = SqliteTracker(sys.argv[1], Path(sys.argv[1]).parent / "artifacts")
    t.start_run("killed", data_checksum="d1")
    step = 0
    while True:
        t.log_metrics("killed", {"loss": float(step), "accuracy": float(step)}, step=step)
        step += 1
    """
)


def test_process_killed_while_logging_leaves_whole_steps(tmp_path: Path) -> None:
    db = tmp_path / "tracking.db"
    SqliteTracker(db, tmp_path / "artifacts")
    proc = subprocess.Popen([sys.executable, "-c", _LOGGER, str(db)], env=_env(), stderr=subprocess.PIPE)
    deadline = time.time() + 60
    con = sqlite3.connect(db)
    while (con.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]) < 200:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.time() < deadline
        time.sleep(0.01)
    con.close()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    t = SqliteTracker(db, tmp_path / "artifacts")
    assert t.integrity_check() == "ok"
    run = t.get_run("killed")
    n = len(run.history["loss"])
    assert n >= 100
    # Each step was one transaction: both keys have every step, no gaps, nothing half-written.
    assert run.history["loss"] == [float(s) for s in range(n)] == run.history["accuracy"]


# ---------------------------------------------------------------------------- CLI


def test_runs_cli_list_and_show(tracker: SqliteTracker) -> None:
    from digitops.cli import cli

    _finished(tracker, "r1", 0.9123)
    tracker.start_run("r2", params={"architecture": "cnn"})
    runner = CliRunner()
    res = runner.invoke(cli, ["runs", "list"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split()[:2] == ["RUN", "STATUS"]
    assert lines[1].startswith("r2") and "running" in lines[1]
    assert lines[2].startswith("r1") and "91.23 %" in lines[2]

    res = runner.invoke(cli, ["runs", "list", "--json", "--status", "finished"])
    assert [r["run_id"] for r in json.loads(res.output)] == ["r1"]

    res = runner.invoke(cli, ["runs", "show", "r1"])
    assert res.exit_code == 0 and "test_accuracy = 91.23 %" in res.output and "architecture = mlp" in res.output
    res = runner.invoke(cli, ["runs", "show", "missing"])
    assert res.exit_code == 2 and "unknown run 'missing'" in res.output


@pytest.mark.slow
def test_keras_callback_logs_every_epoch(tracker: SqliteTracker) -> None:
    import numpy as np

    from digitops import model as model_mod
    from digitops.tracking.callback import TrackingCallback

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(64, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=64)
    tracker.start_run("k1")
    net = model_mod.build("mlp", seed=0)
    hist = model_mod.fit(net, (x, y), (x[:16], y[:16]), epochs=2, batch_size=32,
                         callbacks=[TrackingCallback(tracker, "k1")], progress=False)
    run = tracker.get_run("k1")
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert run.history[key] == pytest.approx(hist[key]), key
        assert len(run.history[key]) == 2
    # an ensemble's members share one callback: their epochs follow one another as steps
    tracker.start_run("k2")
    trained = model_mod.train("mlp", (x, y), (x[:16], y[:16]), members=2, epochs=2, batch_size=32,
                              callbacks=[TrackingCallback(tracker, "k2")], progress=False)
    assert tracker.get_run("k2").history["loss"] == pytest.approx(trained.history["loss"])
    assert len(trained.history["loss"]) == 4


def test_runs_show_prints_counts_artifacts_and_a_dirty_commit(tracker: SqliteTracker, workdir: Path) -> None:
    from digitops.cli import cli

    tracker.start_run("r1", params={"limit": 30000}, git_commit="b" * 40 + "+dirty")
    tracker.log_metrics("r1", {"test_images": 10000.0, "train_images": 54000.0, "test_accuracy": 0.98,
                               "test_loss": 0.0625, "train_seconds": 61.0})
    image = workdir / "curves.png"
    image.write_bytes(b"\x89PNG")
    tracker.log_artifact("r1", image)
    tracker.end_run("r1")
    folder = workdir / "runs" / "r1"
    (folder / "report").mkdir(parents=True)
    for name in ("model.keras", "metrics.json", "report/report.md"):
        (folder / name).write_text("x")

    out = CliRunner().invoke(cli, ["runs", "show", "r1"])
    assert out.exit_code == 0, out.output
    assert "test_images = 10,000" in out.output and "train_images = 54,000" in out.output
    assert "test_accuracy = 98.00 %" in out.output and "train_seconds = 61.0 s" in out.output
    assert "test_loss = 0.0625" in out.output
    assert f"commit:   {'b' * 40}  (dirty)" in out.output
    listed = out.output.split("artifacts:")[1]
    for name in ("curves.png", "model.keras", "metrics.json", "report/report.md"):
        assert f"  {name}: " in listed, name


def test_v1_store_is_migrated_keeping_runs_and_their_rows(tmp_path: Path) -> None:
    from digitops import _sqlite
    from digitops.tracking.sqlite import _SCHEMA_V1

    db = tmp_path / "tracking.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    _sqlite.run_script(con, _SCHEMA_V1)
    con.execute("INSERT INTO runs (run_id, project, status, started_at) VALUES ('old', 'digitops', 'finished', 't')")
    con.execute("INSERT INTO params (run_id, key, value) VALUES ('old', 'epochs', '3')")
    con.execute("INSERT INTO metrics (run_id, key, step, value, logged_at) VALUES ('old', 'loss', 0, 0.5, 't')")
    con.execute("PRAGMA user_version = 1")
    con.close()

    t = SqliteTracker(db, tmp_path / "artifacts")
    old = t.get_run("old")
    assert (old.status, old.params, old.history) == (FINISHED, {"epochs": 3}, {"loss": [0.5]})
    assert t.integrity_check() == "ok"
    t.start_run("new")
    assert t.mark_abandoned() == []  # this process owns "new"
