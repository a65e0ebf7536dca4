"""Contract tests of the Comet backend: the real comet_ml SDK against a strict loopback fake.

Covers a full online run, comparison from Comet, the Model Registry (register,
statuses, rollback, verified download), and offline safety: connection refused,
a server that never answers, a server that dies mid-run, ``--offline`` and a
wrong API key, each followed by ``digitops sync``. HOME and the working
directory are temporary: the SDK reads ``~/.comet.config``, ``./.comet.config``
and ``./.env``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from click.testing import CliRunner

from digitops import comet_env, config
from digitops.cli import cli
from fake_comet import FakeComet, SilentServer, refused_url

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "digits-test"
CHECKSUM = "0123456789abcdef"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CONFUSION = [[50, 1, 0], [2, 45, 3], [0, 4, 60]]

pytestmark = pytest.mark.network


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary HOME and cwd, local stores inside, no Comet/CI/GitLab settings inherited."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    monkeypatch.setenv("DIGITOPS_HOME", str(work / ".digitops"))
    monkeypatch.setenv("DIGITOPS_RUNS", str(work / "runs"))
    monkeypatch.setenv("DIGITOPS_NOTEBOOKS", str(ROOT / "notebooks"))
    for var in list(os.environ):
        if var.startswith(("COMET_", "CI_")) or var in ("GITLAB_TOKEN", "DIGITOPS_COMET_OFFLINE", "DIGITOPS_PROJECT"):
            monkeypatch.delenv(var, raising=False)
    # start_run makes this process the run's Comet owner; restore whatever was there after the test.
    monkeypatch.setenv("DIGITOPS_COMET_OWNER", str(os.getpid()))
    monkeypatch.setenv("COMET_PROJECT_NAME", PROJECT)
    # Bound the SDK's file-upload wait so the drop test stays short; everything else is the default.
    monkeypatch.setenv("COMET_TIMEOUT_UPLOAD", "8")
    return work


@pytest.fixture
def fake(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeComet]:
    with FakeComet() as server:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        yield server


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every socket address this process connects to during the test."""
    seen: list[Any] = []
    original = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        seen.append((self.family, address))
        return original(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


def _png(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)
    return path


def record_run(
    run_id: str,
    *,
    accuracy: float = 0.97,
    checksum: str = CHECKSUM,
    model_file: Path | None = None,
    between: Any = None,
) -> Any:
    """Record a run as the runner and the two notebooks do (two stages, two end_run calls).

    ``between`` is called after the train stage ended (e.g. to take the server down).
    """
    from digitops.tracking import get_tracker

    tracker = get_tracker()
    folder = config.runs_dir() / run_id
    folder.mkdir(parents=True, exist_ok=True)
    tracker.start_run(
        run_id,
        name=run_id,
        params={"architecture": "mlp", "epochs": 2, "learning_rate": 0.001},
        tags={"stage": "train", "mr_iid": "7", "pipeline_id": "99"},
        git_commit=COMMIT,
        data_checksum=checksum,
        project=PROJECT,
    )
    for epoch in range(2):
        tracker.log_metrics(run_id, {"loss": 1.0 / (epoch + 1), "accuracy": 0.8 + epoch / 10}, step=epoch)
    model = folder / "model.keras"
    if model_file is not None:
        model.write_bytes(model_file.read_bytes())
    else:
        with zipfile.ZipFile(model, "w") as zf:  # a Keras 3 file's layout; real Keras where it matters
            zf.writestr("config.json", json.dumps({"run_id": run_id}))
            zf.writestr("model.weights.h5", os.urandom(4096))
    tracker.log_metrics(run_id, {"val_accuracy": accuracy - 0.01, "train_seconds": 3.5})
    tracker.log_artifact(run_id, _png(folder / "curves.png"))
    (folder / "train.html").write_text("<html><body>train notebook</body></html>")
    tracker.log_artifact(run_id, folder / "train.html")
    tracker.end_run(run_id, "finished")
    if between is not None:
        between()

    tracker.start_run(run_id, tags={"stage": "evaluate"})
    tracker.log_metrics(run_id, {"test_accuracy": accuracy, "test_loss": 0.1})
    (folder / "metrics.json").write_text(json.dumps({"run_id": run_id, "confusion_matrix": CONFUSION}))
    tracker.log_artifact(run_id, _png(folder / "confusion.png"))
    (folder / "evaluate.html").write_text("<html><body>evaluate notebook</body></html>")
    tracker.log_artifact(run_id, folder / "evaluate.html")
    tracker.end_run(run_id, "finished")
    return tracker


def _state(run_id: str) -> dict[str, Any]:
    return json.loads((comet_env.state_dir() / "runs" / f"{run_id}.json").read_text())


def _assert_complete(exp: Any, run_id: str, model: bytes) -> None:
    """The Comet experiment holds the whole run."""
    assert exp.name == run_id
    assert exp.params["architecture"] == "mlp" and exp.params["learning_rate"] == 0.001
    assert [p["step"] for p in exp.metrics["loss"]] == [0, 1]
    assert exp.metric_values("loss") == [1.0, 0.5]
    assert exp.metric_values("test_accuracy") == [0.97]
    assert exp.others["digitops_run_id"] == run_id and exp.others["digitops_status"] == "finished"
    assert exp.others["data_checksum"] == CHECKSUM and exp.others["git_commit"] == COMMIT
    assert {"git:0123456789ab", "mr_iid:7", "pipeline_id:99"} <= set(exp.tags)
    assert not any(t.startswith("stage:") for t in exp.tags)
    by_name = {a.file_name: a for a in exp.assets}
    assert by_name["model.keras"].type == "model-element" and by_name["model.keras"].data == model
    assert by_name["model.keras"].grouping_name == "mnist-digits"
    assert by_name["curves"].type == "image" and by_name["confusion"].type == "image"
    assert b"train notebook" in by_name["train.html"].data and b"evaluate notebook" in by_name["evaluate.html"].data
    matrices = [a for a in exp.assets if a.type == "confusion-matrix"]
    assert len(matrices) == 1 and json.loads(matrices[0].data)["matrix"] == CONFUSION


# ----------------------------------------------------------------------------- the fake itself


def test_fake_comet_rejects_what_comet_rejects(fake: FakeComet) -> None:
    root, key = fake.root, fake.api_key
    r = requests.get(root + "api/rest/v2/no/such/route", headers={"Authorization": key}, timeout=5)
    assert r.status_code == 404 and r.headers["Content-Type"] == "application/json"
    r = requests.post(root + "api/rest/v2/experiments", headers={"Authorization": key}, json={}, timeout=5)
    assert r.status_code == 405
    r = requests.get(root + "api/rest/v2/experiments", params={"workspaceName": "x", "projectName": "y"}, timeout=5)
    assert r.status_code == 401
    r = requests.get(
        root + "api/rest/v2/experiments", headers={"Authorization": "wrong"}, params={"workspaceName": "x"}, timeout=5
    )
    assert r.status_code == 401
    r = requests.post(root + "clientlib/logger/add/run", json={"apiKey": "wrong"}, timeout=5)
    assert r.status_code == 400 and r.json()["sdk_error_code"] == 90212
    r = requests.post(
        root + "clientlib/tags/add-tags-to-experiment",
        headers={"Authorization": key, "Content-Type": "application/json"},
        data=b"{not json",
        timeout=5,
    )
    assert r.status_code == 400
    r = requests.post(
        root + "clientlib/tags/add-tags-to-experiment",
        headers={"Authorization": key},
        json={"experimentKey": "a" * 32, "addedTags": "not-a-list"},
        timeout=5,
    )
    assert r.status_code == 400
    r = requests.get(root + "clientlib/isAlive/ver", timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert [x.status for x in fake.requests] == [404, 405, 401, 401, 400, 400, 400, 200]


def test_sdk_defaults_bound_everything_and_user_values_win(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMET_TIMEOUT_HTTP", "42")
    for key in comet_env.SDK_DEFAULTS:
        if key != "COMET_TIMEOUT_HTTP":
            monkeypatch.delenv(key, raising=False)
    comet_env.prepare()
    assert os.environ["COMET_TIMEOUT_HTTP"] == "42"
    assert os.environ["COMET_AUTO_LOG_ENV_DETAILS"] == "false"  # no cloud-metadata probing
    assert os.environ["COMET_ERROR_TRACKING_ENABLE"] == "false"
    assert os.environ["COMET_DISABLE_AUTO_LOGGING"] == "1"
    assert int(os.environ["COMET_HTTP_SESSION_RETRY_TOTAL"]) <= 1
    assert int(os.environ["COMET_GET_OR_ADD_EXPERIMENT_RETRY_READ"]) == 0
    comet_ml = comet_env.import_comet()
    cfg = comet_ml.get_config()
    assert cfg.get_int(None, "comet.timeout.http") == 42
    assert cfg.get_int(None, "comet.timeout.api") <= 5
    assert cfg.get_bool(None, "comet.auto_log.env_details") is False


# ----------------------------------------------------------------------------- online


def test_online_run_sends_params_metrics_images_html_matrix_and_model(
    fake: FakeComet, connects: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = "20261128-100000-aaaaaa"
    tracker = record_run(run_id)
    model = (config.runs_dir() / run_id / "model.keras").read_bytes()

    exps = fake.project_experiments(PROJECT)
    assert len(exps) == 1, [e.name for e in exps]
    exp = exps[0]
    _assert_complete(exp, run_id, model)
    run = tracker.get_run(run_id)
    assert run.url == f"{fake.root}{fake.workspace}/{PROJECT}/{exp.key}"
    assert run.tags["comet_experiment_key"] == exp.key
    assert run.status == "finished" and run.metrics["test_accuracy"] == 0.97  # the local store is complete too
    # The second stage continued the same experiment instead of creating another.
    assert fake.count("logger/add/run") == 1 and fake.count("logger/get/run") == 1
    assert all(r.status == 200 and r.authorized for r in fake.requests), [
        (r.path, r.status) for r in fake.requests if r.status != 200
    ]
    # Nothing but the fake was contacted: no cloud metadata, no error reporting, no version check.
    inet = [addr for family, addr in connects if family in (socket.AF_INET, socket.AF_INET6)]
    assert inet and {(a[0], a[1]) for a in inet} == {("127.0.0.1", fake.port)}
    out = capsys.readouterr()
    assert fake.api_key not in out.out + out.err
    assert f"sent to {run.url}" in out.err


def test_comparison_reads_the_comet_project_and_keeps_the_exit_codes(fake: FakeComet) -> None:
    from digitops.compare import compare
    from digitops.registry.comet import CometRegistry
    from digitops.tracking.comet import CometTracker

    # Other people's runs, seen only in Comet.
    fake.add_experiment(PROJECT, "older-1", {"test_accuracy": 0.90}, {"digitops_status": "finished", "data_checksum": CHECKSUM})
    fake.add_experiment(PROJECT, "older-2", {"test_accuracy": 0.96}, {"digitops_status": "finished", "data_checksum": CHECKSUM})
    fake.add_experiment(PROJECT, "other-data", {"test_accuracy": 0.99}, {"digitops_status": "finished", "data_checksum": "f" * 16})
    fake.add_experiment(PROJECT, "crashed", {"test_accuracy": 0.10}, {"digitops_status": "failed", "data_checksum": CHECKSUM})
    fake.add_experiment("another-project", "elsewhere", {"test_accuracy": 0.5}, {"digitops_status": "finished"})

    record_run("run-prod", accuracy=0.95)
    registry = CometRegistry()
    prod = registry.register("mnist-digits", config.runs_dir() / "run-prod" / "model.keras", "run-prod",
                             metrics={"test_accuracy": 0.95}, status="production")
    assert prod.status == "production" and prod.version == "0.1.0"
    record_run("run-cand", accuracy=0.97)

    summary = CometTracker().metric_summary(
        "test_accuracy", project=PROJECT, exclude=["run-cand"], data_checksum=CHECKSUM
    )
    assert summary.count == 3  # older-1, older-2, run-prod; not other data, not failed, not the candidate
    assert summary.mean == pytest.approx((0.90 + 0.96 + 0.95) / 3)
    assert summary.best == 0.96 and summary.best_run_id == "older-2" and summary.worst == 0.90
    assert isinstance(summary.mean, float)
    # Read in bulk: one multi-metric request for every matching experiment, no per-experiment summary.
    assert fake.count("experiments/multi-metric-chart") == 1 and fake.count("experiment/metrics/summary") == 0

    result = compare("run-cand", tracker=CometTracker(), registry=registry)
    assert result.verdict == "pass" and result.production_version == "0.1.0"
    assert result.production_value == 0.95 and result.project_count == 3
    assert result.deltas["production"] == pytest.approx(0.02)

    runner = CliRunner()
    passed = runner.invoke(cli, ["compare", "run-cand", "--floor", "0.9"])
    assert passed.exit_code == 0, passed.output
    failed = runner.invoke(cli, ["compare", "run-cand", "--floor", "0.99"])
    assert failed.exit_code == 1, failed.output
    unknown = runner.invoke(cli, ["compare", "no-such-run"])
    assert unknown.exit_code == 2


def _seed(fake: FakeComet, first: int, last: int) -> None:
    """Finished experiments run-<first>..run-<last - 1> on CHECKSUM, as other machines' runs would be."""
    for i in range(first, last):
        fake.add_experiment(
            PROJECT,
            f"run-{i:03d}",
            {"test_accuracy": 0.90 + i / 1000, "test_loss": 0.3 - i / 1000},
            {"digitops_run_id": f"run-{i:03d}", "digitops_status": "finished", "data_checksum": CHECKSUM},
        )


def _candidate() -> None:
    """The candidate: in the local store (as after `digitops run`) and, under its run id, in Comet."""
    from digitops.tracking.base import RunRecord
    from digitops.tracking.comet import CometTracker

    metrics = {"test_accuracy": 0.995, "test_loss": 0.02}
    CometTracker().import_runs(
        [RunRecord(run_id="cand", project=PROJECT, name="cand", status="finished", params={}, metrics=metrics,
                   history={}, data_checksum=CHECKSUM, started_at="2026-01-01T00:00:00+00:00")]
    )


def _compare_requests(fake: FakeComet) -> tuple[Any, int]:
    from digitops.compare import compare
    from digitops.registry.comet import CometRegistry
    from digitops.tracking.comet import CometTracker

    before = len(fake.requests)
    result = compare("cand", tracker=CometTracker(), registry=CometRegistry(), extra_metrics=("test_loss",))
    return result, len(fake.requests) - before


def test_comparison_cost_grows_with_pages_not_experiments(fake: FakeComet, monkeypatch: pytest.MonkeyPatch) -> None:
    from digitops.comet import queries as comet_queries

    _candidate()
    fake.add_experiment(PROJECT, "cand", {"test_accuracy": 0.995}, {"digitops_run_id": "cand",
                        "digitops_status": "finished", "data_checksum": CHECKSUM})
    _seed(fake, 0, 5)
    prod = next(e for e in fake.experiments.values() if e.name == "run-002")
    fake.add_model_version("mnist-digits", "1.0.0", prod, comment=json.dumps({"run_id": "run-002",
                           "metrics": {"test_accuracy": 0.902}}))
    _compare_requests(fake)  # the first call also probes the server
    five, at_5 = _compare_requests(fake)
    _seed(fake, 5, 50)
    fifty, at_50 = _compare_requests(fake)
    assert (five.project_count, fifty.project_count) == (5, 50)  # the candidate itself never counts
    assert fifty.verdict == "pass" and fifty.production_version == "1.0.0" and fifty.production_value == 0.902
    assert fifty.project_mean == pytest.approx(sum(0.90 + i / 1000 for i in range(50)) / 50)
    assert fifty.project_best == pytest.approx(0.949) and fifty.project_best_run_id == "run-049"
    assert fifty.rows[1].metric == "test_loss" and fifty.rows[1].best_run_id == "run-049"  # lower is better
    # Per experiment this was 2 requests per experiment and metric (+180 here); now it is per page.
    assert at_50 == at_5, (at_5, at_50)

    # Paging: 10 experiments a request, two metrics: 50 experiments cost 2 x (5 - 1) more requests than 5.
    monkeypatch.setattr(comet_queries, "METRICS_PAGE", 10)
    paged, at_50_paged = _compare_requests(fake)
    assert at_50_paged == at_50 + 2 * 4
    assert paged.project_count == 50 and paged.project_mean == pytest.approx(fifty.project_mean)
    assert all(r.status == 200 for r in fake.requests), [(r.path, r.status) for r in fake.requests if r.status != 200]


def test_comparison_takes_each_experiments_last_logged_value(fake: FakeComet) -> None:
    from digitops.tracking.comet import CometTracker

    exp = fake.add_experiment(PROJECT, "run-a", {}, {"digitops_status": "finished", "data_checksum": CHECKSUM})
    # A history: Comet's current value is the last one logged, neither the best nor the first.
    exp.metrics["val_accuracy"] = [
        {"metricName": "val_accuracy", "metricValue": 0.91, "step": 0, "timestamp": 1000},
        {"metricName": "val_accuracy", "metricValue": 0.97, "step": 1, "timestamp": 2000},
        {"metricName": "val_accuracy", "metricValue": 0.95, "step": 2, "timestamp": 3000},
    ]
    fake.add_experiment(PROJECT, "run-b", {"val_accuracy": 0.93}, {"digitops_status": "running",
                        "data_checksum": CHECKSUM})
    fake.add_experiment(PROJECT, "run-c", {"val_accuracy": 0.99}, {"digitops_status": "finished",
                        "data_checksum": "f" * 16})
    # Renamed in Comet's UI: still recognised as the excluded run by its digitops_run_id.
    fake.add_experiment(PROJECT, "renamed", {"val_accuracy": 0.999}, {"digitops_status": "finished",
                        "data_checksum": CHECKSUM, "digitops_run_id": "cand"})
    # A run that reused run-a's evaluation: run-a's metrics again, counted once (as run-a).
    fake.add_experiment(PROJECT, "run-a-reused", {"val_accuracy": 0.95}, {"digitops_status": "finished",
                        "data_checksum": CHECKSUM, "digitops_metrics_reused": "1"})
    summary = CometTracker().metric_summary("val_accuracy", project=PROJECT, data_checksum=CHECKSUM, exclude=["cand"])
    assert (summary.count, summary.best, summary.best_run_id) == (1, 0.95, "run-a")
    assert CometTracker().metric_summary("val_accuracy", project=PROJECT).count == 3  # any dataset, no exclusion
    assert CometTracker().metric_summary("no_such_metric", project=PROJECT).count == 0


@pytest.mark.parametrize(
    "route,status",
    [
        ("api/rest/v2/experiments/multi-metric-chart", 500),
        ("api/rest/v2/experiments/multi-metric-chart", 429),
        ("api/rest/v2/project/query", 503),
        ("project/column-names", 500),
    ],
)
def test_comparison_refuses_to_judge_when_a_bulk_read_fails(fake: FakeComet, route: str, status: int) -> None:
    from digitops.tracking import TrackingError
    from digitops.tracking.comet import CometTracker

    _candidate()
    _seed(fake, 0, 3)
    fake.fail(route, status, times=10)  # more than the SDK's retries
    with pytest.raises(TrackingError, match="Comet project cannot be read"):
        CometTracker().metric_summary("test_accuracy", project=PROJECT, data_checksum=CHECKSUM)
    assert fake.injected and all(path.endswith(route) for path, _, _ in fake.injected)
    comet_env.mark_reachable()
    result, _ = _compare_requests(fake)
    assert result.verdict == "unjudged" and "history of project" in (result.unjudged_reason or "")


def test_comparison_refuses_to_judge_when_the_server_drops_between_the_query_and_the_metrics(
    fake: FakeComet,
) -> None:
    from digitops.tracking import TrackingError
    from digitops.tracking.comet import CometTracker

    _seed(fake, 0, 250)  # three pages of metrics
    CometTracker().metric_summary("test_accuracy", project=PROJECT)  # probe, SDK import
    start = len(fake.requests)
    CometTracker().metric_summary("test_accuracy", project=PROJECT)
    calls = fake.paths()[start:]
    assert [p.rsplit("/", 2)[-2:] for p in calls][-3:] == [["experiments", "multi-metric-chart"]] * 3
    fake.drop_after = len(fake.requests) + len(calls) - 2  # every request up to the first page; the second is dropped
    with pytest.raises(TrackingError, match="Comet project cannot be read") as raised:
        CometTracker().metric_summary("test_accuracy", project=PROJECT)
    assert fake.paths()[-len(calls) + 2 :] == calls[:-2]
    assert "Connection" in str(raised.value), raised.value


def test_fake_comet_bulk_reads_are_strict(fake: FakeComet) -> None:
    root, headers = fake.root + "api/rest/v2/", {"Authorization": fake.api_key}
    _seed(fake, 0, 2)
    keys = list(fake.experiments)
    chart = {"targetedExperiments": keys, "metrics": ["test_accuracy"], "params": None,
             "independentMetrics": True, "fetchFull": True}

    def post(path: str, body: Any) -> requests.Response:
        return requests.post(root + path, headers=headers, json=body, timeout=5)

    ok = post("experiments/multi-metric-chart", chart)
    assert ok.status_code == 200 and ok.json()["experiments"][keys[0]]["metrics"][0]["values"] == ["0.9"]
    assert post("experiments/multi-metric-chart", {**chart, "targetedExperiments": keys * 51}).status_code == 400
    assert post("experiments/multi-metric-chart", {**chart, "targetedExperiments": []}).status_code == 400
    assert post("experiments/multi-metric-chart", {**chart, "targetedExperiments": ["0" * 32]}).status_code == 400
    assert post("experiments/multi-metric-chart", {k: v for k, v in chart.items() if k != "fetchFull"}).status_code == 400
    rule = {"id": "digitops_status", "field": "digitops_status", "type": "string", "operator": "equal",
            "value": "finished"}
    query = {"workspaceName": fake.workspace, "projectName": PROJECT, "archived": False,
             "predicates": [{"source": "log_other", "query": {"condition": "AND", "rules": [rule], "valid": True}}]}
    assert sorted(post("project/query", query).json()["experimentKeys"]) == sorted(keys)
    bad_op = {**query, "predicates": [{"source": "log_other", "query": {"condition": "AND", "valid": True,
                                                                         "rules": [{**rule, "operator": "is"}]}}]}
    assert post("project/query", bad_op).status_code == 400
    assert post("project/query", {**query, "predicates": []}).status_code == 400
    assert post("project/query", {**query, "projectName": "no-such-project"}).status_code == 404
    assert requests.get(root + "project/column-names", headers=headers, params={"workspaceName": fake.workspace},
                        timeout=5).status_code == 400
    columns = requests.get(root + "project/column-names", headers=headers,
                           params={"workspaceName": fake.workspace, "projectName": PROJECT}, timeout=5).json()
    assert {"name": "test_accuracy", "source": "metrics", "type": "double"} in columns["columns"]
    assert {"name": "digitops_status", "source": "log_other", "type": "string"} in columns["columns"]


@pytest.mark.slow
def test_registry_register_statuses_rollback_and_verified_download(fake: FakeComet, tmp_path: Path) -> None:
    import numpy as np

    from digitops import model as model_mod
    from digitops.registry import RegistryError
    from digitops.registry.comet import CometRegistry

    net = model_mod.build("mlp", seed=0)
    saved = tmp_path / "trained.keras"
    model_mod.save(net, saved)
    record_run("run-a", model_file=saved)
    record_run("run-b", accuracy=0.98)

    registry = CometRegistry()
    a = registry.register("mnist-digits", config.runs_dir() / "run-a" / "model.keras", "run-a",
                          metrics={"test_accuracy": 0.97})
    b = registry.register("mnist-digits", config.runs_dir() / "run-b" / "model.keras", "run-b", bump="major")
    assert (a.version, a.status, a.run_id) == ("0.1.0", "staging", "run-a")
    assert (b.version, b.status) == ("1.0.0", "staging")
    assert a.metrics == {"test_accuracy": 0.97} and len(a.sha256) == 64
    items = fake.models["mnist-digits"].items
    assert items["0.1.0"].status == "Staging" and f"sha256:{a.sha256}" in items["0.1.0"].tags
    creates = [r for r in fake.requests if r.path.endswith("write/registry-model/item/create")]
    assert [c.body["version"] for c in creates] == ["0.1.0", "1.0.0"]  # versions computed by digitops
    assert all("stages" not in c.body for c in creates)

    with pytest.raises(RegistryError, match="not the model logged"):
        registry.register("mnist-digits", saved, "run-b")

    registry.set_status("mnist-digits", "1.0.0", "production")
    registry.set_status("mnist-digits", "0.1.0", "production")
    assert items["0.1.0"].status == "Production"
    assert items["1.0.0"].status == "None" and "archived" in items["1.0.0"].tags
    assert registry.get_version("mnist-digits", "1.0.0").status == "archived"
    assert registry.get_by_status("mnist-digits").version == "0.1.0"
    assert [v.version for v in registry.list_versions("mnist-digits")] == ["0.1.0", "1.0.0"]

    back = registry.rollback("mnist-digits")
    assert back.version == "1.0.0" and back.status == "production"
    assert registry.get_version("mnist-digits", "0.1.0").status == "archived"
    registry.set_status("mnist-digits", "0.1.0", "production")

    dest = registry.download("mnist-digits", tmp_path / "served")
    assert dest == tmp_path / "served" / "model.keras"
    loaded = model_mod.load(dest)
    x = np.random.default_rng(0).integers(0, 255, size=(4, 28, 28)).astype("uint8")
    np.testing.assert_allclose(model_mod.predict_proba(loaded, x), model_mod.predict_proba(net, x), rtol=1e-6)

    # A file that does not match its registered checksum is refused and never lands at dest.
    for asset in fake.experiments[fake.models["mnist-digits"].items["0.1.0"].experiment_key].assets:
        if asset.type == "model-element":
            asset.data = asset.data[:-1] + b"!"
    with pytest.raises(RegistryError, match="sha256"):
        registry.download("mnist-digits", tmp_path / "bad.keras", version="0.1.0")
    assert not (tmp_path / "bad.keras").exists()


# ----------------------------------------------------------------------------- offline safety


def _sync(fake: FakeComet, monkeypatch: pytest.MonkeyPatch) -> Any:
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    return CliRunner().invoke(cli, ["sync"])


def test_connection_refused_costs_seconds_keeps_an_archive_and_sync_uploads_it(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COMET_API_KEY", "fake-comet-api-key-0123456789")
    monkeypatch.setenv("COMET_WORKSPACE", "digits-team")
    monkeypatch.setenv("COMET_URL_OVERRIDE", refused_url())
    run_id = "20261128-110000-bbbbbb"
    start = time.monotonic()
    tracker = record_run(run_id)
    elapsed = time.monotonic() - start
    assert elapsed < 15, f"two end_run calls took {elapsed:.1f} s with Comet refusing connections"

    run = tracker.get_run(run_id)
    assert run.status == "finished" and run.metrics["test_accuracy"] == 0.97 and run.url is None
    state = _state(run_id)
    archive = Path(state["pending"]["archive"])
    assert archive.parent == comet_env.offline_dir() and archive.is_file()
    assert sorted(p.name for p in comet_env.offline_dir().glob("*.zip")) == [archive.name]  # superseded one removed
    with zipfile.ZipFile(archive) as zf:
        messages = zf.read("messages.json").decode()
        # Archives are files people copy around: the API key must not be in them.
        assert not any(os.environ["COMET_API_KEY"].encode() in zf.read(n) for n in zf.namelist())
    assert "test_accuracy" in messages and "architecture" in messages
    assert "digitops sync" in capsys.readouterr().err

    # Registering and promoting while Comet is away happen locally and wait for sync.
    from digitops.registry.comet import CometRegistry, pending_registrations
    from digitops.registry.sqlite import SqliteRegistry

    registry = CometRegistry()
    local = registry.register("mnist-digits", config.runs_dir() / run_id / "model.keras", run_id,
                              metrics={"test_accuracy": 0.97})
    registry.promote("mnist-digits", local.version)
    assert local.version == "pending-1" and SqliteRegistry().get_by_status("mnist-digits").version == "0.1.0"
    assert [(p["pending_id"], p["status"]) for p in pending_registrations()] == [("pending-1", "production")]

    with FakeComet(api_key=os.environ["COMET_API_KEY"]) as server:
        result = _sync(server, monkeypatch)
        assert result.exit_code == 0, result.output
        assert f"run {run_id}: archive {archive.name} uploaded" in result.output
        assert "pending-1 registered in Comet as 0.1.0 (production)" in result.output
        item = server.models["mnist-digits"].items["0.1.0"]
        assert item.status == "Production" and f"run:{run_id}" in item.tags
        assert pending_registrations() == []
        exps = server.project_experiments(PROJECT)
        assert len(exps) == 1
        _assert_complete(exps[0], run_id, (config.runs_dir() / run_id / "model.keras").read_bytes())
        assert tracker.get_run(run_id).url == f"{server.root}{server.workspace}/{PROJECT}/{exps[0].key}"
        assert not archive.exists()
        again = CliRunner().invoke(cli, ["sync"])
        assert again.exit_code == 0 and "nothing to sync" in again.output


def test_server_that_never_answers_is_bounded_and_remembered(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from digitops.tracking.comet import CometTracker

    monkeypatch.setenv("COMET_API_KEY", "fake-comet-api-key-0123456789")
    with SilentServer() as silent:
        monkeypatch.setenv("COMET_URL_OVERRIDE", silent.url_override)
        start = time.monotonic()
        tracker = record_run("20261128-120000-cccccc")
        elapsed = time.monotonic() - start
        assert silent.accepted >= 1
        assert elapsed < 15, f"two end_run calls took {elapsed:.1f} s against a silent server"
        assert _state("20261128-120000-cccccc")["pending"]["mode"] == "new"
        # The failure is remembered: reading the project's history fails at once (fail closed,
        # never the local store standing in for Comet's project).
        from digitops.tracking import TrackingError

        start = time.monotonic()
        with pytest.raises(TrackingError, match="Comet project cannot be read"):
            CometTracker().metric_summary("test_accuracy", project=PROJECT)
        assert time.monotonic() - start < 1.0
        assert tracker.get_run("20261128-120000-cccccc").status == "finished"


def test_server_dropping_mid_run_loses_nothing_and_sync_leaves_one_complete_experiment(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = "20261128-130000-dddddd"
    # Probe, version check, handshake and a few messages get through; then the server dies.
    with FakeComet(drop_after=7) as server:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        start = time.monotonic()
        tracker = record_run(run_id)
        elapsed = time.monotonic() - start
        assert server.down
        state = _state(run_id)
        assert state["pending"] and state["orphans"], state
        partial = state["orphans"][0]
        assert partial in server.experiments  # it was created before the drop, incomplete
        assert "test_accuracy" not in server.experiments[partial].metrics
        assert elapsed < 60
        assert tracker.get_run(run_id).metrics["test_accuracy"] == 0.97

        server.restart()
        result = CliRunner().invoke(cli, ["sync"])
        assert result.exit_code == 0, result.output
        assert "removed 1 incomplete experiment" in result.output
        assert partial in server.deleted
        exps = server.project_experiments(PROJECT)
        assert len(exps) == 1 and exps[0].key != partial
        _assert_complete(exps[0], run_id, (config.runs_dir() / run_id / "model.keras").read_bytes())


def test_offline_flag_contacts_nothing_and_a_wrong_key_is_never_printed(
    fake: FakeComet, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DIGITOPS_COMET_OFFLINE", "1")
    record_run("offline-run")
    assert fake.requests == []
    assert _state("offline-run")["pending"]["reason"].startswith("offline mode requested")

    monkeypatch.delenv("DIGITOPS_COMET_OFFLINE")
    wrong = "wrong-key-that-must-not-be-printed-42"
    monkeypatch.setenv("COMET_API_KEY", wrong)
    record_run("wrong-key-run")
    # Refused once; the second stage does not retry within the remembered window.
    assert [r.status for r in fake.requests if r.path.endswith("logger/add/run")] == [400]
    assert fake.project_experiments(PROJECT) == []
    assert _state("wrong-key-run")["pending"]
    out = capsys.readouterr()
    assert wrong not in out.out + out.err

    result = _sync(fake, monkeypatch)
    assert result.exit_code == 0, result.output
    assert sorted(e.name for e in fake.project_experiments(PROJECT)) == ["offline-run", "wrong-key-run"]


# ----------------------------------------------------------------------------- pipeline


def _digitops(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "digitops", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


TINY = ["-p", "architecture", "mlp", "-p", "limit", "1000", "-p", "epochs", "1", "--floor", "0.5"]


def _comet_seconds(output: str) -> float:
    """Seconds the pipeline spent on Comet: mirrors (printed per end_run) plus compare/report/register stages."""
    mirrors = sum(float(s) for s in re.findall(r"^comet: run .*\((\d+(?:\.\d+)?) s\)$", output, re.M))
    stages = re.search(r"compare (\d+) s, report (\d+) s, register (\d+) s", output)
    assert stages, output[-2000:]
    return mirrors + sum(float(s) for s in stages.groups())


@pytest.mark.slow
def test_pipeline_unreachable_then_synced_then_online_compares_in_comet(isolated: Path) -> None:
    env = dict(os.environ)
    env.pop("DIGITOPS_COMET_OWNER", None)
    with FakeComet() as server, SilentServer() as silent:
        env.update(server.env())
        env["COMET_URL_OVERRIDE"] = silent.url_override
        env["DIGITOPS_ALLOW_UNJUDGED"] = "1"  # judged against the local store: accepted for this test
        start = time.monotonic()
        first = _digitops("pipeline", *TINY, env=env, cwd=isolated)
        del env["DIGITOPS_ALLOW_UNJUDGED"]
        wall = time.monotonic() - start
        output = first.stdout + first.stderr
        assert first.returncode == 0, output[-3000:]
        spent = _comet_seconds(output)
        assert spent <= 15, f"Comet unreachable cost {spent:.1f} s of {wall:.0f} s"
        assert "kept offline" in output and "registered mnist-digits pending-1 in the local registry" in output
        assert "judged against the local store only" in output
        assert silent.accepted >= 1 and server.requests == []

        env["COMET_URL_OVERRIDE"] = server.url_override
        synced = _digitops("sync", env=env, cwd=isolated)
        assert synced.returncode == 0, synced.stdout + synced.stderr
        assert "pending-1 registered in Comet as 0.1.0 (staging)" in synced.stdout
        first_run = server.project_experiments(PROJECT)[0]

        second = _digitops("pipeline", *TINY, "-p", "seed", "1", env=env, cwd=isolated)
        assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
        exps = {e.name: e for e in server.project_experiments(PROJECT)}
        assert len(exps) == 2 and first_run.name in exps
        new_id = next(name for name in exps if name != first_run.name)
        comparison = json.loads((isolated / "runs" / new_id / "report" / "comparison.json").read_text())
        assert comparison["project_count"] == 1 and comparison["project_best_run_id"] == first_run.name
        report = (isolated / "runs" / new_id / "report" / "report.md").read_text()
        assert f"{server.root}{server.workspace}/{PROJECT}/{exps[new_id].key}" in report
        items = server.models["mnist-digits"].items
        assert sorted(items) == ["0.1.0", "0.2.0"] and items["0.2.0"].experiment_key == exps[new_id].key
        assert items["0.2.0"].status == "Staging"


def test_a_reused_evaluation_is_marked_for_comets_history_queries() -> None:
    from digitops.comet.state import REUSED_OTHER, snapshot
    from digitops.tracking import RunRecord

    copy = RunRecord(run_id="r2", project=PROJECT, status="finished", tags={"digitops.eval_reused_from": "r1"})
    assert snapshot(copy).others[REUSED_OTHER] == "1"
    assert REUSED_OTHER not in snapshot(RunRecord(run_id="r1", project=PROJECT, status="finished")).others
