"""The field drawings' shared destination on MLflow: a real ``mlflow server`` behind the GitLab-subset guard."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from digitops.feedback import FeedbackStoreError
from digitops.feedback import mlflow as shared
from digitops.feedback.store import LocalFeedbackStore
from digitops.mlflow import rest as rest_mod
from digitops.mlflow.rest import MlflowRefused, MlflowRest
from mlflow_fixtures import DUMMY_TOKEN
from test_feedback import drawing, keep

pytestmark = pytest.mark.network


@pytest.fixture
def guard(mlflow_guard, monkeypatch):
    monkeypatch.setattr(rest_mod, "BACKOFF", 0.01)  # retries stay bounded; their waits need not be long here
    monkeypatch.delenv("DIGITOPS_FEEDBACK_DIR", raising=False)
    return mlflow_guard


def _replica(monkeypatch, tmp_path: Path, name: str) -> LocalFeedbackStore:
    """Switch this process to the replica ``name`` (its own DIGITOPS_HOME) and return its store."""
    monkeypatch.setenv("DIGITOPS_HOME", str(tmp_path / name))
    return LocalFeedbackStore()


def _cli(*args):
    from click.testing import CliRunner

    from digitops.cli import cli

    return CliRunner().invoke(cli, ["feedback", *args], catch_exceptions=False)


def _the_run(rest: MlflowRest) -> dict:
    eid = rest.experiment_id(shared.experiment(), create=False)
    runs = [r for r in rest.search_runs(eid) if shared._tags(r).get(shared.RUN_TAG) == shared.RUN_TAG_VALUE]
    assert len(runs) == 1
    return rest.call("GET", "runs/get", {"run_id": runs[0]["info"]["run_id"]})["run"]


def _drawing_tags(run: dict) -> dict[str, str]:
    return {k[len(shared.DRAWING_TAG):]: v for k, v in shared._tags(run).items() if k.startswith(shared.DRAWING_TAG)}


def test_two_replicas_exchange_their_drawings_through_one_mlflow_run(guard, tmp_path, monkeypatch):
    a = _replica(monkeypatch, tmp_path, "replica-a")
    for seed in (1, 2, 3):
        keep(a, seed, label=seed)
    b = _replica(monkeypatch, tmp_path, "replica-b")
    for seed in (3, 4):
        keep(b, seed, label=seed)

    monkeypatch.setenv("DIGITOPS_HOME", str(tmp_path / "replica-a"))
    first = _cli("sync")
    assert first.exit_code == 0 and "3 drawing(s) sent, 0 received" in first.stdout and "MLflow run" in first.stdout
    monkeypatch.setenv("DIGITOPS_HOME", str(tmp_path / "replica-b"))
    second = _cli("sync")
    assert second.exit_code == 0 and "1 drawing(s) sent, 2 received" in second.stdout
    monkeypatch.setenv("DIGITOPS_HOME", str(tmp_path / "replica-a"))
    third = _cli("sync")
    assert third.exit_code == 0 and "0 drawing(s) sent, 1 received" in third.stdout
    assert {(r.hash, r.label) for r in a.records()} == {(r.hash, r.label) for r in b.records()}
    assert len(a.records()) == 4

    rest = MlflowRest()
    run = _the_run(rest)
    assert run["info"]["run_name"] == shared.RUN_NAME and run["info"]["status"] == "FINISHED"
    assert _drawing_tags(run) == {r.hash: str(r.label) for r in a.records()}
    with pytest.raises(MlflowRefused):  # the experiment whose runs are compared stays untouched
        rest.experiment_id(shared.experiment()[: -len(shared.EXPERIMENT_SUFFIX)], create=False)

    # In step: a rerun sends nothing, writes nothing.
    puts, tags = guard.count("PUT", "/artifacts/"), guard.count("POST", "runs/set-tag")
    again = _cli("sync")
    assert again.exit_code == 0 and "0 drawing(s) sent, 0 received" in again.stdout
    assert (guard.count("PUT", "/artifacts/"), guard.count("POST", "runs/set-tag")) == (puts, tags)
    assert guard.count("POST", "runs/create") == 1
    for res in (first, second, third, again):
        assert DUMMY_TOKEN not in res.stdout + res.stderr


def test_a_tag_is_set_only_after_its_file_is_there(guard, tmp_path, monkeypatch):
    a = _replica(monkeypatch, tmp_path, "a")
    keep(a, 1)
    guard.fail(".json", status=503, times=10**3)  # every upload of a drawing fails (after the bounded retries)
    with pytest.raises(FeedbackStoreError, match="could not be synced with MLflow"):
        shared.sync(a)
    assert _drawing_tags(_the_run(MlflowRest())) == {}  # no tag for a file that is not there
    guard.faults.clear()
    assert shared.sync(a).pushed == 1
    assert set(_drawing_tags(_the_run(MlflowRest()))) == {a.records()[0].hash}


def test_a_tampered_artifact_is_refused(guard, mlflow_server, tmp_path, monkeypatch):
    server, _ = mlflow_server
    a = _replica(monkeypatch, tmp_path, "a")
    h1, h2 = keep(a, 1).record.hash, keep(a, 2).record.hash
    run_id = shared.sync(a).experiment_key
    (f1,) = server.artifacts.rglob(f"{run_id}/artifacts/{h1}.json")
    (f2,) = server.artifacts.rglob(f"{run_id}/artifacts/{h2}.json")
    bad = {"label": 12, "canvas_png": base64.b64encode(drawing(9)).decode(), "model_name": "m", "model_version": "1"}
    f1.write_text(json.dumps(bad))  # not a drawing any store accepts
    lying = {"label": 3, "canvas_png": base64.b64encode(drawing(8)).decode(), "model_name": "m", "model_version": "1"}
    f2.write_text(json.dumps(lying))  # a valid drawing, but not the one its name promises

    b = _replica(monkeypatch, tmp_path, "b")
    h8 = keep(b, 8, label=8).record.hash  # b already holds the drawing the renamed file carries
    result = shared.sync(b)
    assert (result.pushed, result.pulled, result.refused) == (1, 0, 2) and "2 refused" in result.line()
    # Neither kept, and the renamed one did not relabel b's own copy of that drawing.
    assert [(r.hash, r.label) for r in b.records()] == [(h8, 8)]
    again = shared.sync(b)
    assert (again.pushed, again.pulled, again.refused) == (0, 0, 2)


def test_server_down_is_one_line_and_nothing_is_lost(guard, tmp_path, monkeypatch):
    a = _replica(monkeypatch, tmp_path, "a")
    keep(a, 1)
    guard.down()
    with pytest.raises(FeedbackStoreError, match="could not be synced with MLflow") as err:
        shared.sync(a)
    assert DUMMY_TOKEN not in str(err.value) and "\n" not in str(err.value)
    assert len(a.records()) == 1
    res = _cli("sync")
    assert res.exit_code == 1 and "could not be synced with MLflow" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and DUMMY_TOKEN not in res.stdout + res.stderr
    # The export goes on with this machine's drawings, and says why.
    res = _cli("export")
    assert res.exit_code == 0 and "exporting this machine's drawings only" in res.stderr
    assert "1 drawing(s)" in res.stdout and DUMMY_TOKEN not in res.stdout + res.stderr
    guard.up()
    assert shared.sync(a).pushed == 1  # kept, and sent once the server is back


def test_no_backend_is_a_clear_refusal(guard, tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITOPS_BACKEND", "embedded")
    res = _cli("sync")
    assert res.exit_code == 1 and "stay in this machine's store" in res.stderr


def test_two_replicas_creating_the_run_at_once_end_with_one(guard, tmp_path, monkeypatch):
    class Racing(MlflowRest):
        """Another replica creates its run (an older one) right after ours is created."""

        def call(self, method, endpoint, payload=None):
            answer = super().call(method, endpoint, payload)
            if endpoint == "runs/create" and not getattr(self, "raced", False):
                self.raced = True
                other = dict(payload, start_time=1)
                self.other = super().call("POST", "runs/create", other)["run"]["info"]["run_id"]
            return answer

    a = _replica(monkeypatch, tmp_path, "a")
    keep(a, 1)
    racing = Racing()
    result = shared.sync(a, client=racing)
    assert result.pushed == 1 and result.experiment_key == racing.other  # the oldest run is the one
    run = _the_run(MlflowRest())  # exactly one left: ours, still empty, was deleted
    assert run["info"]["run_id"] == racing.other and set(_drawing_tags(run)) == {a.records()[0].hash}
    assert guard.count("POST", "runs/delete") == 1
    b = _replica(monkeypatch, tmp_path, "b")
    assert shared.sync(b).pulled == 1
