"""``digitops runs list`` / ``runs show`` with the MLflow backend, the server up and down (real server, guard)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from digitops.cli import cli
from digitops.mlflow import rest as rest_mod
from mlflow_fixtures import DUMMY_TOKEN
from test_mlflow_tracker import record_run

pytestmark = pytest.mark.network


def _runs(*args: str):
    return CliRunner().invoke(cli, ["runs", *args])


def test_runs_list_with_the_server_down_lists_this_machine_and_says_what_is_pending(mlflow_guard, monkeypatch):
    monkeypatch.setattr(rest_mod, "BACKOFF", 0.01)
    record_run("run-sent")
    record_run("run-kept", between=mlflow_guard.down)  # its evaluate stage could not be mirrored
    res = _runs("list")
    assert res.exit_code == 0, res.output
    assert "run-sent" in res.stdout and "run-kept" in res.stdout
    (warning,) = res.stderr.strip().splitlines()
    assert "MLflow server could not be read" in warning and "still pending sync: run-kept" in warning
    assert "run-sent" not in warning and DUMMY_TOKEN not in res.output
    as_json = _runs("list", "--json")
    assert as_json.exit_code == 0 and {r["run_id"] for r in json.loads(as_json.stdout)} == {"run-sent", "run-kept"}
    show = _runs("show", "run-kept")
    assert show.exit_code == 0 and "run:      run-kept" in show.stdout and "test_accuracy" in show.stdout
    # Back up: the server's list again, no warning.
    mlflow_guard.up()
    res = _runs("list")
    assert res.exit_code == 0 and "run-sent" in res.stdout and res.stderr == ""


def test_the_gate_stays_closed_with_the_server_down(mlflow_guard, monkeypatch):
    monkeypatch.setattr(rest_mod, "BACKOFF", 0.01)
    record_run("run-a")
    mlflow_guard.down()
    res = CliRunner().invoke(cli, ["compare", "run-a"])
    assert res.exit_code == 2 and "cannot judge" in res.output  # listing falls back; judging never does
