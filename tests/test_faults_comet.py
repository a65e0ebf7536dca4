"""Comet faults (issue 11, cases 1-4): each test failed before its fix.

    case                                                   test
    1  Comet up for train, gone for evaluate: archive,     test_comet_gone_for_evaluate_is_archived_listed_and_synced_exactly
       `comet status`, `sync` makes Comet = local store    test_sync_after_saved_then_error_uploads_do_not_duplicate
    2  gate fails open when Comet is unreachable           test_compare_report_exit_2_when_comet_unreachable_with_production_in_comet
                                                           test_pipeline_exits_2_and_registers_nothing_when_comet_is_unreachable
       offline versions shown with local numbers           test_offline_registration_has_no_public_version_until_sync
    3  ~/.comet.config / ./.comet.config ignored           test_sdk_config_files_are_honoured_in_the_sdk_order
    4  empty handshake URL overwrites the stored one       test_handshake_without_url_keeps_the_stored_url
       SDK tracebacks / COMET INFO reach stderr            test_sdk_logging_stays_off_stderr

The real comet_ml SDK talks to the loopback fake (tests/fake_comet.py) with faults injected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from digitops import comet_env, config
from digitops.cli import cli
from fake_comet import FakeComet, refused_url
from test_comet import CHECKSUM, PROJECT, _assert_complete, _state, fake, isolated, record_run  # noqa: F401

pytestmark = pytest.mark.network


def _remote_matches_local(exp: Any, run_id: str) -> None:
    """Every param, metric and asset the local store holds is in the Comet experiment, once."""
    from digitops.tracking.comet import CometTracker, run_files

    rec = CometTracker().get_run(run_id)
    for name, value in rec.params.items():
        assert str(exp.params[name]) == str(value), name
    for name, values in rec.history.items():
        stepped = [p for p in exp.metrics[name] if p.get("step") is not None]
        assert sorted({p["step"] for p in stepped}) == list(range(len(values))), (name, exp.metrics[name])
    for name, value in rec.metrics.items():
        assert float(exp.metrics[name][-1]["metricValue"]) == pytest.approx(value), name
    names = {a.file_name for a in exp.assets}
    for name in run_files(rec):
        assert name in names or Path(name).stem in names, (name, names)
    # Nothing sent twice: one value per step of each history metric, one asset per file.
    for name in rec.history:
        steps = [p["step"] for p in exp.metrics[name] if p.get("step") is not None]
        assert len(steps) == len(set(steps)), (name, steps)
    files = [a.file_name for a in exp.assets if a.type != "confusion-matrix"]
    assert len(files) == len(set(files)), files


# ----------------------------------------------------------------------------- case 1


def test_comet_gone_for_evaluate_is_archived_listed_and_synced_exactly(fake: FakeComet) -> None:
    run_id = "20261130-010000-eeeeee"
    tracker = record_run(run_id, between=fake.go_down)
    assert fake.down
    exps = fake.project_experiments(PROJECT)
    assert len(exps) == 1 and "test_accuracy" not in exps[0].metrics
    state = _state(run_id)
    assert state["pending"], state  # the evaluate stage was kept for sync
    assert tracker.get_run(run_id).url  # the train stage's URL is still there

    status = CliRunner().invoke(cli, ["comet", "status", "--no-probe", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["pending_runs"] == [run_id]

    fake.restart()
    comet_env.mark_reachable()
    result = CliRunner().invoke(cli, ["sync"])
    assert result.exit_code == 0, result.output
    exps = fake.project_experiments(PROJECT)
    assert len(exps) == 1, [e.name for e in exps]
    _assert_complete(exps[0], run_id, (config.runs_dir() / run_id / "model.keras").read_bytes())
    _remote_matches_local(exps[0], run_id)
    assert not _state(run_id)["pending"]
    again = CliRunner().invoke(cli, ["comet", "status", "--no-probe", "--json"])
    assert json.loads(again.output)["pending_runs"] == []


def test_sync_after_saved_then_error_uploads_do_not_duplicate(fake: FakeComet) -> None:
    run_id = "20261130-011000-ffffff"
    record_run(run_id, between=fake.go_down)
    fake.restart()
    comet_env.mark_reachable()
    # Comet stores the metric batch and the first asset, then answers 500 (a proxy timing out).
    fake.fail("batch/logger/experiment/metric", 500, times=1, saved=True)
    fake.fail("asset/upload", 502, times=1, saved=True)
    first = CliRunner().invoke(cli, ["sync"])
    second = CliRunner().invoke(cli, ["sync"])
    assert fake.injected, "no fault was injected"
    assert second.exit_code == 0, first.output + second.output
    exps = fake.project_experiments(PROJECT)
    assert len(exps) == 1
    _remote_matches_local(exps[0], run_id)
    assert not _state(run_id)["pending"]


# ----------------------------------------------------------------------------- case 2


def _production_in_comet(fake: FakeComet) -> None:
    """Comet holds production 0.1.0 (test accuracy 0.99); this machine's local registry is empty."""
    from digitops.registry.comet import CometRegistry

    record_run("run-prod", accuracy=0.99)
    prod = CometRegistry().register(
        "mnist-digits", config.runs_dir() / "run-prod" / "model.keras", "run-prod",
        metrics={"test_accuracy": 0.99}, status="production",
    )
    assert prod.version == "0.1.0" and prod.status == "production"


def test_compare_report_exit_2_when_comet_unreachable_with_production_in_comet(
    fake: FakeComet, monkeypatch: pytest.MonkeyPatch
) -> None:
    _production_in_comet(fake)
    record_run("run-cand", accuracy=0.95)  # worse than production: must never pass on the floor alone
    fake.go_down()
    comet_env.mark_unreachable("the test took Comet down")
    runner = CliRunner()
    compared = runner.invoke(cli, ["compare", "run-cand", "--floor", "0.9"])
    assert compared.exit_code == 2, compared.output
    assert "cannot judge:" in compared.output and "production version" in compared.output
    assert "passes" not in compared.output and "no production model yet" not in compared.output.lower()
    as_json = runner.invoke(cli, ["compare", "run-cand", "--json"])
    assert as_json.exit_code == 2
    out = config.runs_dir() / "run-cand" / "rep"
    reported = runner.invoke(cli, ["report", "run-cand", "--out", str(out)])
    assert reported.exit_code == 2, reported.output
    note = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for text in (note, page):
        assert "Cannot judge" in text and "could not be made" in text
        assert "passes the gate" not in text and "No production model yet" not in text
    assert json.loads((out / "comparison.json").read_text())["verdict"] == "unjudged"

    # The documented override: judged against the local store, and it says so.
    allowed = runner.invoke(cli, ["compare", "run-cand", "--floor", "0.9", "--allow-unjudged"])
    assert allowed.exit_code == 0, allowed.output
    assert "judged against the local store only" in allowed.output
    monkeypatch.setenv("DIGITOPS_ALLOW_UNJUDGED", "1")
    assert runner.invoke(cli, ["compare", "run-cand", "--floor", "0.9"]).exit_code == 0


@pytest.mark.slow
def test_pipeline_exits_2_and_registers_nothing_when_comet_is_unreachable(isolated: Path) -> None:
    from test_comet import TINY, _digitops

    env = {k: v for k, v in os.environ.items() if k not in ("DIGITOPS_COMET_OWNER", "DIGITOPS_ALLOW_UNJUDGED")}
    env.update({"COMET_API_KEY": "fake-comet-api-key-0123456789", "COMET_URL_OVERRIDE": refused_url()})
    done = _digitops("pipeline", *TINY, env=env, cwd=isolated)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert "cannot judge:" in done.stderr and "passes the gate" not in output
    assert "Not registered: the candidate could not be judged." in done.stdout
    (run_dir,) = [p for p in (isolated / "runs").iterdir() if p.is_dir()]
    note = (run_dir / "report" / "report.md").read_text()
    assert "Cannot judge" in note and "could not be made" in note
    assert not (isolated / ".digitops" / "comet" / "pending-registrations.json").exists()


def test_offline_registration_has_no_public_version_until_sync(fake: FakeComet) -> None:
    from digitops.registry.comet import CometRegistry

    _production_in_comet(fake)
    record_run("run-offline", accuracy=0.995)
    fake.go_down()
    comet_env.mark_unreachable("the test took Comet down")
    registry = CometRegistry()
    local = registry.register("mnist-digits", config.runs_dir() / "run-offline" / "model.keras", "run-offline")
    assert local.version == "pending-1"
    shown = [v.version for v in registry.list_versions("mnist-digits")]
    assert shown == ["pending-1"], shown  # never the local registry's 0.1.0 beside Comet's 0.1.0
    status = CliRunner().invoke(cli, ["comet", "status", "--no-probe", "--json"])
    assert json.loads(status.output)["pending_registrations"] == ["mnist-digits pending-1"]

    fake.restart()
    comet_env.mark_reachable()
    # Comet saves the new version but answers 502: it must not be registered a second time.
    fake.fail("write/registry-model/item/create", 502, times=1, saved=True)
    result = CliRunner().invoke(cli, ["sync"])
    assert fake.injected and result.exit_code == 0, result.output
    assert "pending-1 registered in Comet as 0.2.0 (staging)" in result.output
    assert sorted(fake.models["mnist-digits"].items) == ["0.1.0", "0.2.0"]
    fake.go_down()
    comet_env.mark_unreachable("down again")
    assert [v.version for v in registry.list_versions("mnist-digits")] == ["0.2.0"]  # Comet's number now


# ----------------------------------------------------------------------------- case 3


def _write_config(path: Path, **values: str) -> None:
    path.write_text("[comet]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))


def test_sdk_config_files_are_honoured_in_the_sdk_order(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = Path(os.environ["HOME"])
    with FakeComet() as server:
        # 1. The key, server and workspace only in ~/.comet.config: runs go to Comet.
        _write_config(home / ".comet.config", api_key=server.api_key, url_override=server.url_override,
                      workspace=server.workspace)
        assert config.comet_enabled() and comet_env.url_override() == server.url_override
        record_run("from-home-config")
        assert [e.name for e in server.project_experiments(PROJECT)] == ["from-home-config"]

        # 2. ./.comet.config wins over ~/.comet.config (the SDK's order).
        _write_config(home / ".comet.config", api_key="home-key-never-used", url_override=refused_url())
        _write_config(isolated / ".comet.config", api_key=server.api_key, url_override=server.url_override)
        assert comet_env.api_key() == server.api_key and comet_env.url_override() == server.url_override

        # 3. The key in the environment, url_override only in the file: the configured server is probed.
        (isolated / ".comet.config").unlink()
        _write_config(home / ".comet.config", url_override=server.url_override)
        monkeypatch.setenv("COMET_API_KEY", server.api_key)
        before = len(server.requests)
        status = CliRunner().invoke(cli, ["comet", "status", "--json"])
        info = json.loads(status.output)
        assert info["server"] == server.root and info["reachable"] is True, info
        assert len(server.requests) > before
        # The environment still wins over the file.
        monkeypatch.setenv("COMET_URL_OVERRIDE", refused_url())
        assert comet_env.url_override() != server.url_override

    # Deciding whether Comet is on never imports the slow SDK.
    _write_config(home / ".comet.config", api_key="key-in-the-file-only")
    code = "import sys; from digitops import config; assert config.comet_enabled(); assert 'comet_ml' not in sys.modules"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMET_")}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=isolated, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ----------------------------------------------------------------------------- case 4


def test_handshake_without_url_keeps_the_stored_url(fake: FakeComet) -> None:
    run_id = "20261130-014000-aaaaaa"

    def lose_url() -> None:
        fake.no_url = True

    tracker = record_run(run_id, between=lose_url)
    exps = fake.project_experiments(PROJECT)
    assert len(exps) == 1 and "test_accuracy" in exps[0].metrics  # the evaluate stage reached Comet
    good = f"{fake.root}{fake.workspace}/{PROJECT}/{exps[0].key}"
    assert tracker.get_run(run_id).url == good
    assert _state(run_id)["url"] == good
    out = config.runs_dir() / run_id / "rep"
    CliRunner().invoke(cli, ["report", run_id, "--out", str(out), "--allow-unjudged"])
    assert good in (out / "report.md").read_text()


_NOISY_SCENARIO = """
import os, sys
from click.testing import CliRunner
from fake_comet import FakeComet
from test_comet import record_run
from digitops import comet_env
from digitops.cli import cli

with FakeComet() as fake:
    os.environ.update(fake.env())
    os.environ["DIGITOPS_COMET_OFFLINE"] = "1"
    record_run("archived-run")  # a whole run kept offline: sync runs the SDK's own uploader
    del os.environ["DIGITOPS_COMET_OFFLINE"]
    record_run("noisy-run", between=fake.go_down)  # the SDK fails inside the evaluate stage
    fake.restart()
    comet_env.mark_reachable()
    fake.fail("asset/upload", 500, times=2)
    for _ in range(2):
        CliRunner().invoke(cli, ["sync"])
    assert sorted(e.name for e in fake.project_experiments("digits-test")) == ["archived-run", "noisy-run"]
"""


def test_sdk_logging_stays_off_stderr(isolated: Path) -> None:
    # A fresh process: the SDK's console handler binds the stderr it finds at import.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMET_")}
    env = {**env, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _NOISY_SCENARIO], env=env, cwd=isolated, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    err = done.stderr
    lines = [line for line in err.splitlines() if line.strip()]
    assert any("kept offline" in line for line in lines), err[-3000:]  # digitops says what happened
    assert "Traceback" not in err and "COMET INFO" not in err and "COMET WARNING" not in err, err[-3000:]
    assert all(line.startswith("comet: ") for line in lines), err[-3000:]
