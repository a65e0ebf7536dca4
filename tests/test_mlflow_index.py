"""The per-project index run (digitops.mlflow.index) against the real mlflow server behind the GitLab-subset guard.

    failure mode                                              test
    index summary differs from the full search               test_summary_from_the_index_equals_the_full_search
    index run shows up as a digitops run                      test_index_run_is_no_digitops_run
    concurrent writers lose entries / split the index         test_concurrent_writers_all_land
    entry write fails: run silently missing from history      test_entry_write_failing_leaves_the_run_pending_then_sync_writes_it
    runs mirrored before the index: a smaller history         test_runs_before_the_index_count_until_sync_builds_it_once
    server down: the index path answers from nothing          test_server_down_raises
    a server refusing the index search: runs kept pending     test_server_refusing_the_index_search_reads_every_run
    entry over GitLab's 5,000 characters: a run without metrics test_entry_too_large_for_a_tag_means_the_full_search
    a run deleted in the UI still counted by the index         test_rebuild_index_forgets_runs_deleted_in_the_ui
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from digitops import config
from digitops.mlflow import index
from digitops.mlflow.state import pending_runs
from digitops.mlflow.tracker import MlflowTracker, sync_pending
from digitops.tracking import get_tracker
from digitops.tracking.base import TrackingError
from mlflow_server import Guard

pytestmark = pytest.mark.network

CHECKSUM, OTHER = "c" * 64, "d" * 64


def finished(tracker: Any, run_id: str, accuracy: float, *, checksum: str = CHECKSUM, tags: dict | None = None,
             status: str = "finished") -> None:
    tracker.start_run(run_id, data_checksum=checksum, params={"architecture": "mlp"}, tags=tags or {})
    tracker.log_metrics(run_id, {"val_accuracy": accuracy - 0.02}, step=0)
    tracker.log_metrics(run_id, {"val_accuracy": accuracy - 0.01}, step=1)
    tracker.log_metrics(run_id, {"test_accuracy": accuracy, "test_loss": 1 - accuracy})
    tracker.end_run(run_id, status)


def full_search(tracker: MlflowTracker, monkeypatch: pytest.MonkeyPatch, metric: str, **kw: Any) -> Any:
    """The same summary with the index ignored (the full paged search)."""
    with monkeypatch.context() as m:
        m.setattr(index, "read", lambda *a: None)
        tracker.memo.clear()
        got = tracker.metric_summary(metric, **kw)
    tracker.memo.clear()
    return got


def same(a: Any, b: Any) -> bool:
    """Equal summaries (the mean up to summation order)."""
    return (a.metric, a.count, a.best, a.best_run_id, a.worst) == (b.metric, b.count, b.best, b.best_run_id, b.worst) and (
        a.mean == b.mean or a.mean == pytest.approx(b.mean, rel=1e-12)
    )


def searches_for_index(guard: Guard) -> int:
    return sum(1 for b in guard.sent("runs/search") if "digitops.index" in str(b.get("filter", "")))


def test_summary_from_the_index_equals_the_full_search(mlflow_guard: Guard, monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = get_tracker()
    finished(tracker, "run-a", 0.91)
    finished(tracker, "run-b", 0.95)
    finished(tracker, "run-c", 0.97, checksum=OTHER)
    finished(tracker, "run-b-reused", 0.95, tags={"digitops.eval_reused_from": "run-b"})
    finished(tracker, "run-f", 0.99, status="failed")
    tracker.start_run("run-re")  # ended twice: train, then evaluate adds a better test metric
    tracker.log_metrics("run-re", {"val_accuracy": 0.5}, step=0)
    tracker.end_run("run-re", "finished")
    tracker.start_run("run-re", data_checksum=CHECKSUM)
    tracker.log_metrics("run-re", {"test_accuracy": 0.93})
    tracker.end_run("run-re", "finished")
    cases = [
        ("test_accuracy", {}), ("test_accuracy", {"data_checksum": CHECKSUM}), ("val_accuracy", {"exclude": ["run-a"]}),
        ("test_loss", {"data_checksum": CHECKSUM, "exclude": ["run-b"], "higher_is_better": False}),
    ]
    for metric, kw in cases:
        tracker.memo.clear()
        before = mlflow_guard.count("POST", "runs/search")
        by_index = tracker.metric_summary(metric, **kw)
        assert mlflow_guard.count("POST", "runs/search") - before == 1  # the index run, not every run
        assert same(by_index, full_search(tracker, monkeypatch, metric, **kw)), (metric, kw)
    summary = tracker.metric_summary("test_accuracy", data_checksum=CHECKSUM)
    assert (summary.count, summary.best_run_id) == (3, "run-b")  # a, b, re; reused, failed, other dataset out


def test_index_run_is_no_digitops_run(mlflow_guard: Guard) -> None:
    tracker = get_tracker()
    finished(tracker, "run-x", 0.9, tags={"digitops.fingerprint": "fp1"})
    client = tracker.client
    eid = tracker.experiment_id(tracker.local.get_run("run-x").project)
    (idx,) = index.index_runs(client, eid, tracker.local.get_run("run-x").project)
    assert [r.run_id for r in tracker.list_runs()] == ["run-x"]
    assert [r.run_id for r in tracker.find_by_tag("digitops.fingerprint", "fp1")] == ["run-x"]
    assert tracker.find_by_tag("digitops.index", tracker.local.get_run("run-x").project) == []
    assert tracker.find_reusable("fp1").run_id == "run-x"
    assert tracker.metric_summary("test_accuracy").count == 1
    assert idx["info"]["run_id"] not in {r.url.rsplit("/", 1)[-1] for r in tracker.list_runs() if r.url}


def test_concurrent_writers_all_land(mlflow_guard: Guard, monkeypatch: pytest.MonkeyPatch) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def one(i: int) -> None:
        try:
            tracker = MlflowTracker()
            tracker.start_run(f"run-t{i}", data_checksum=CHECKSUM)
            tracker.log_metrics(f"run-t{i}", {"test_accuracy": 0.9 + i / 100})
            barrier.wait(60)  # every mirror finds no index and creates one at the same moment
            tracker.end_run(f"run-t{i}", "finished")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and pending_runs() == [], (errors, pending_runs())
    # Runs raced the index's creation: it is not complete until sync checks every run has an entry.
    assert sync_pending() == [f"index of {config.project_name()}: built (0 entries written)"]
    tracker = MlflowTracker()
    calls, searches = mlflow_guard.count("POST", "runs/search"), searches_for_index(mlflow_guard)
    summary = tracker.metric_summary("test_accuracy", data_checksum=CHECKSUM)
    assert mlflow_guard.count("POST", "runs/search") - calls == 1 and searches_for_index(mlflow_guard) == searches + 1
    assert summary.count == 6 and summary.best_run_id == "run-t5"  # every writer's entry, whichever index run it chose
    assert same(summary, full_search(tracker, monkeypatch, "test_accuracy", data_checksum=CHECKSUM))


def test_entry_write_failing_leaves_the_run_pending_then_sync_writes_it(
    mlflow_guard: Guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker = get_tracker()
    finished(tracker, "run-1", 0.9)
    mlflow_guard.fail("runs/set-tag", status=503)
    finished(tracker, "run-2", 0.95)
    assert pending_runs() == ["run-2"]  # FINISHED in the server, its entry missing: kept for sync
    lines = sync_pending()
    assert len(lines) == 1 and "run run-2:" in lines[0] and "sent to" in lines[0], lines
    assert pending_runs() == []
    tracker.memo.clear()
    summary = tracker.metric_summary("test_accuracy")
    assert (summary.count, summary.best_run_id) == (2, "run-2")
    assert same(summary, full_search(tracker, monkeypatch, "test_accuracy"))


def test_runs_before_the_index_count_until_sync_builds_it_once(
    mlflow_guard: Guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker = get_tracker()
    with monkeypatch.context() as m:  # mirrored by a digitops without the index
        m.setattr(index, "entry_of", lambda *a: None)
        finished(tracker, "run-old1", 0.96)
        finished(tracker, "run-old2", 0.92)
    finished(tracker, "run-new", 0.9)  # makes the index, which cannot be complete: history predates it
    tracker.memo.clear()
    summary = tracker.metric_summary("test_accuracy")
    assert (summary.count, summary.best_run_id) == (3, "run-old1")  # the full search, not the index's one run

    lines = sync_pending()
    assert len(lines) == 1 and "built (2 entries written)" in lines[0], lines
    before = len(mlflow_guard.requests)
    assert sync_pending() == []  # built once
    assert [p for m, p in mlflow_guard.requests[before:] if m == "POST" and not p.endswith("runs/search")] == []
    tracker.memo.clear()
    searches = searches_for_index(mlflow_guard)
    calls = mlflow_guard.count("POST", "runs/search")
    assert same(tracker.metric_summary("test_accuracy"), summary)
    assert mlflow_guard.count("POST", "runs/search") - calls == 1 and searches_for_index(mlflow_guard) == searches + 1


def test_server_down_raises(mlflow_guard: Guard) -> None:
    tracker = get_tracker()
    finished(tracker, "run-d", 0.9)
    assert tracker.metric_summary("test_accuracy").count == 1
    mlflow_guard.down()
    tracker.memo.clear()  # the experiment id is remembered: the index read itself meets the server down
    with pytest.raises(TrackingError, match="cannot be read"):
        tracker.metric_summary("test_accuracy")
    with pytest.raises(TrackingError, match="cannot be read"):
        MlflowTracker().metric_summary("test_accuracy")


def test_server_refusing_the_index_search_reads_every_run(mlflow_guard: Guard, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that refuses the order by metric (4xx) has no index: runs are not kept pending, compare reads all."""
    from digitops.mlflow.rest import MlflowRefused, MlflowRest

    real = MlflowRest.search_runs

    def refusing(self: MlflowRest, experiment_id: str, filter_string: str = "", order_by: Any = None, **kw: Any) -> Any:
        if order_by and "digitops_index" in order_by[0]:
            raise MlflowRefused("refused", status=400, error_code="INVALID_PARAMETER_VALUE")
        return real(self, experiment_id, filter_string, order_by, **kw)

    monkeypatch.setattr(MlflowRest, "search_runs", refusing)
    tracker = get_tracker()
    finished(tracker, "run-u1", 0.9)
    finished(tracker, "run-u2", 0.94)
    assert pending_runs() == []
    assert not [b for b in mlflow_guard.sent("runs/create") if "digitops.index" in str(b.get("tags"))]
    summary = tracker.metric_summary("test_accuracy")
    assert (summary.count, summary.best_run_id) == (2, "run-u2")
    assert "index of" in sync_pending()[0]  # says it could not build one, and why


def test_entry_too_large_for_a_tag_means_the_full_search(mlflow_guard: Guard, monkeypatch: pytest.MonkeyPatch) -> None:
    """GitLab keeps 5,000 characters a tag: an entry over it holds no metrics, and the index is not trusted."""
    tracker = get_tracker()
    finished(tracker, "run-s", 0.9)
    monkeypatch.setattr(index, "VALUE_MAX", 60)  # as if run-l logged hundreds of metrics
    finished(tracker, "run-l", 0.95)
    assert pending_runs() == []
    tracker.memo.clear()
    summary = tracker.metric_summary("test_accuracy")
    assert (summary.count, summary.best_run_id) == (2, "run-l")


def test_rebuild_index_forgets_runs_deleted_in_the_ui(mlflow_guard: Guard, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from digitops.cli import cli

    tracker = get_tracker()
    for run_id, accuracy in (("r1", 0.91), ("r2", 0.99), ("r3", 0.93)):
        finished(tracker, run_id, accuracy)
    project = config.project_name()
    eid = tracker.experiment_id(project, create=False)
    [old] = index.index_runs(tracker.client, eid, project)
    # Somebody deletes the best run in the server's UI (an experiment that should not count).
    [row] = [r for r in tracker.client.search_runs(eid, "tags.`digitops.run_id` = 'r2'")]
    tracker.client.call("POST", "runs/delete", {"run_id": row["info"]["run_id"]})
    tracker.memo.clear()
    before = tracker.metric_summary("test_accuracy")
    assert before.count == 3 and before.best_run_id == "r2"  # the index still has its entry
    res = CliRunner().invoke(cli, ["sync", "--rebuild-index"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"index of {project}: built (2 entries written); 1 old index run(s) deleted"
    tracker.memo.clear()
    after = tracker.metric_summary("test_accuracy")
    assert (after.count, after.best_run_id) == (2, "r3")
    assert same(after, full_search(tracker, monkeypatch, "test_accuracy"))
    [new] = index.index_runs(tracker.client, eid, project)
    assert new["info"]["run_id"] != old["info"]["run_id"] and index.COMPLETE_TAG in index._tags(new)
    # Later runs land in the new index.
    finished(tracker, "r4", 0.95)
    tracker.memo.clear()
    assert tracker.metric_summary("test_accuracy").count == 3


def test_rebuild_index_is_for_the_mlflow_backend_and_says_a_failure(mlflow_guard: Guard, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from digitops.cli import cli

    finished(get_tracker(), "r1", 0.9)
    mlflow_guard.fail("runs/delete", status=503, times=5)
    res = CliRunner().invoke(cli, ["sync", "--rebuild-index"])
    assert res.exit_code == 2 and "not rebuilt" in res.output and "run it again" in res.output
    # The old index is still there (nothing deleted): comparisons keep answering.
    assert get_tracker().metric_summary("test_accuracy").count == 1
    res = CliRunner().invoke(cli, ["sync", "--rebuild-index", "--run", "r1"])
    assert res.exit_code == 2 and "without --run" in res.output
    monkeypatch.setenv("DIGITOPS_BACKEND", "embedded")
    res = CliRunner().invoke(cli, ["sync", "--rebuild-index"])
    assert res.exit_code == 2 and "for the MLflow backend" in res.output
