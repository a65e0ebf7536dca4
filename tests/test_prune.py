"""digitops.prune and `digitops runs prune`: old run folders go, records and everything still needed stay."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from digitops.cli import cli
from digitops.mlflow.state import RunState
from digitops.prune import prune_folders
from digitops.tracking import FAILED, RUNNING
from digitops.tracking.sqlite import SqliteTracker
from store_helpers import add_run


def _run(tracker: SqliteTracker, workdir: Path, run_id: str, status: str = "finished") -> None:
    if status == RUNNING:
        tracker.start_run(run_id, name=run_id, params={"architecture": "mlp"})
    else:
        add_run(tracker, run_id, {"test_accuracy": 0.9}, status=status)
    folder = workdir / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(b"m" * 1000)
    time.sleep(0.002)  # distinct start times, in creation order


def _folders(workdir: Path) -> set[str]:
    return {p.name for p in (workdir / "runs").iterdir()}


def test_keeps_the_newest_finished_folders_and_every_record(workdir: Path) -> None:
    tracker = SqliteTracker()
    for i in range(1, 6):
        _run(tracker, workdir, f"r{i}")
    done = prune_folders(tracker, 2)
    assert sorted(done.removed) == ["r1", "r2", "r3"] and _folders(workdir) == {"r4", "r5"}
    # The records stay: compare and the report read the store, not the folders.
    assert [r.run_id for r in tracker.list_runs()] == ["r5", "r4", "r3", "r2", "r1"]
    assert tracker.get_run("r1").metrics == {"test_accuracy": 0.9}
    # Idempotent: nothing more to do.
    assert prune_folders(tracker, 2).removed == [] and _folders(workdir) == {"r4", "r5"}


def test_what_is_never_removed(workdir: Path) -> None:
    tracker = SqliteTracker()
    _run(tracker, workdir, "r1", RUNNING)        # old, but still running
    _run(tracker, workdir, "r2", FAILED)         # older than the folder kept: goes
    _run(tracker, workdir, "r3")                 # waiting for digitops sync
    RunState("r3", pending="server down").save()
    _run(tracker, workdir, "r4")                 # the newest finished
    _run(tracker, workdir, "r5", FAILED)         # a failure newer than it: kept
    (workdir / "runs" / "not-a-run").mkdir()     # not in the store
    (workdir / "runs" / ".hidden").mkdir()       # not a run id at all
    (workdir / "runs" / "notes.txt").write_text("mine")
    done = prune_folders(tracker, 1)
    assert done.removed == ["r2"]
    assert done.kept == {"r1": RUNNING, "r3": "waiting for digitops sync", "r4": "one of the newest finished runs",
                         "r5": "failed, newer than the folders kept", "not-a-run": "not in the store"}
    assert _folders(workdir) == {"r1", "r3", "r4", "r5", "not-a-run", ".hidden", "notes.txt"}


def test_dry_run_and_the_command(workdir: Path) -> None:
    tracker = SqliteTracker()
    for i in range(1, 4):
        _run(tracker, workdir, f"r{i}")
    runner = CliRunner()
    res = runner.invoke(cli, ["runs", "prune", "--keep", "1", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == ["would remove runs/r2", "would remove runs/r1",
                                       "2 folder(s) to remove, 1 kept (dry run: nothing removed)"]
    assert _folders(workdir) == {"r1", "r2", "r3"}
    res = runner.invoke(cli, ["runs", "prune", "--keep", "1"])
    assert res.exit_code == 0 and res.output.splitlines()[-1] == "removed 2 folder(s), kept 1"
    assert _folders(workdir) == {"r3"}
    assert not list((workdir / "runs").glob(".pruning-*"))
    res = runner.invoke(cli, ["runs", "prune", "--keep", "0"])
    assert res.exit_code == 2 and "--keep" in res.output
    with pytest.raises(ValueError, match="at least 1"):
        prune_folders(tracker, 0)


def test_a_damaged_store_removes_nothing(workdir: Path) -> None:
    tracker = SqliteTracker()
    for i in range(1, 4):
        _run(tracker, workdir, f"r{i}")
    db = Path(tracker.db_path)
    db.write_bytes(b"not a database" * 100)
    res = CliRunner().invoke(cli, ["runs", "prune", "--keep", "1"])
    assert res.exit_code != 0 and "doctor" in res.output
    assert _folders(workdir) == {"r1", "r2", "r3"}
