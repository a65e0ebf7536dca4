"""Comparison arithmetic, gate edge cases and the `digitops compare` exit codes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from digitops.compare import (
    FAIL,
    PASS,
    CompareError,
    Gate,
    compare,
    fmt_delta,
    fmt_value,
)
from digitops.registry.sqlite import SqliteRegistry
from digitops.tracking import FAILED
from digitops.tracking.sqlite import SqliteTracker
from store_helpers import DATA, add_run, keras_model_file


@pytest.fixture
def stores(workdir: Path) -> tuple[SqliteTracker, SqliteRegistry]:
    return SqliteTracker(), SqliteRegistry()


def _production(reg: SqliteRegistry, workdir: Path, run_id: str, metrics: dict[str, float]) -> str:
    path = keras_model_file(workdir / "models-src" / run_id / "model.keras")
    return reg.register("mnist-digits", path, run_id, metrics=metrics, status="production").version


def test_no_baseline_is_judged_by_the_floor_only(stores) -> None:
    tracker, reg = stores
    add_run(tracker, "cand", {"test_accuracy": 0.95})
    c = compare("cand", tracker=tracker, registry=reg)
    assert c.verdict == PASS and c.passed
    assert (c.project_count, c.project_mean, c.project_best, c.production_version) == (0, None, None, None)
    assert c.deltas == {"mean": None, "best": None, "production": None}
    assert c.reasons[0] == "No production model yet: judged by the floor only."
    assert "95.00 % is at or above the floor 90.00 %" in c.reasons[1]
    assert "No other finished runs" in c.reasons[2]
    assert c.headline() == (
        "✅ Candidate passes the gate: test accuracy 95.00 % (no production model yet; floor 90.00 %)"
    )

    add_run(tracker, "weak", {"test_accuracy": 0.85})
    c = compare("weak", tracker=tracker, registry=reg)
    assert c.verdict == FAIL
    assert c.reasons[0] == "Test accuracy 85.00 % is below the floor 90.00 %."
    assert c.headline().startswith("❌ Candidate fails the gate: test accuracy 85.00 %")


def test_project_mean_best_and_signed_deltas(stores) -> None:
    tracker, reg = stores
    add_run(tracker, "a", {"test_accuracy": 0.90, "test_loss": 0.30})
    add_run(tracker, "b", {"test_accuracy": 0.96, "test_loss": 0.10})
    add_run(tracker, "c", {"test_accuracy": 0.93, "test_loss": 0.20})
    add_run(tracker, "failed", {"test_accuracy": 0.999}, status=FAILED)
    add_run(tracker, "other-data", {"test_accuracy": 0.999}, data="ffffffffffffffff")
    add_run(tracker, "other-project", {"test_accuracy": 0.999}, project="elsewhere")
    tracker.start_run("running", data_checksum=DATA)
    tracker.log_metrics("running", {"test_accuracy": 0.999})
    add_run(tracker, "cand", {"test_accuracy": 0.94, "test_loss": 0.15, "train_seconds": 12.0})

    c = compare("cand", tracker=tracker, registry=reg)
    assert c.project_count == 3
    assert c.project_mean == pytest.approx(0.93)
    assert (c.project_best, c.project_best_run_id) == (0.96, "b")
    assert c.deltas["mean"] == pytest.approx(0.01)
    assert c.deltas["best"] == pytest.approx(-0.02)
    assert c.deltas["production"] is None
    loss = next(r for r in c.rows if r.metric == "test_loss")
    assert not loss.higher_is_better
    assert (loss.best, loss.best_run_id) == (0.10, "b")  # lowest loss is best
    assert loss.delta_best == pytest.approx(0.05)
    seconds = next(r for r in c.rows if r.metric == "train_seconds")
    assert seconds.count == 0 and seconds.mean is None and seconds.delta_mean is None
    assert [r.metric for r in c.rows] == ["test_accuracy", "test_loss", "train_seconds"]  # no val_accuracy logged
    assert "Against 3 other finished runs in project 'digitops' on the same dataset: mean 93.00 % (+1.00 pts)" in c.reasons[-1]


@pytest.mark.parametrize(
    ("candidate", "production", "verdict", "reason"),
    [
        (0.9931, 0.9900, PASS, "Test accuracy is 0.31 pts better than production 0.1.0 (99.00 %)."),
        (0.9900, 0.9900, PASS, "Test accuracy ties with production 0.1.0 (99.00 %)."),
        (0.9890, 0.9900, PASS, "Test accuracy is 0.10 pts worse than production 0.1.0 (99.00 %), within the tolerance of 0.20 pts."),
        # exactly production - tolerance: a tie with the limit passes despite float rounding
        (0.9880, 0.9900, PASS, "Test accuracy is 0.20 pts worse than production 0.1.0 (99.00 %), within the tolerance of 0.20 pts."),
        (0.9879, 0.9900, FAIL, "Test accuracy is 0.21 pts worse than production 0.1.0 (99.00 %), more than the tolerance of 0.20 pts."),
    ],
)
def test_gate_against_production(stores, workdir: Path, candidate: float, production: float, verdict: str,
                                 reason: str) -> None:
    tracker, reg = stores
    add_run(tracker, "prod", {"test_accuracy": production})
    assert _production(reg, workdir, "prod", {"test_accuracy": production}) == "0.1.0"
    add_run(tracker, "cand", {"test_accuracy": candidate})
    c = compare("cand", tracker=tracker, registry=reg)
    assert c.verdict == verdict
    assert c.reasons[0] == reason
    assert c.production_version == "0.1.0" and c.production_run_id == "prod"
    assert c.deltas["production"] == pytest.approx(candidate - production)
    assert c.headline() == (
        f"{'✅' if verdict == PASS else '❌'} Candidate {'passes' if verdict == PASS else 'fails'} the gate: "
        f"test accuracy {candidate * 100:.2f} % ({fmt_delta('test_accuracy', candidate - production)} vs production 0.1.0)"
    )


def test_floor_tie_passes_and_floor_fails_even_when_production_is_worse(stores, workdir: Path) -> None:
    tracker, reg = stores
    add_run(tracker, "prod", {"test_accuracy": 0.80})
    _production(reg, workdir, "prod", {"test_accuracy": 0.80})
    add_run(tracker, "at-floor", {"test_accuracy": 0.9})
    assert compare("at-floor", tracker=tracker, registry=reg).verdict == PASS
    add_run(tracker, "under", {"test_accuracy": 0.85})
    c = compare("under", tracker=tracker, registry=reg)
    assert c.verdict == FAIL and c.reasons[0] == "Test accuracy 85.00 % is below the floor 90.00 %."
    assert "5.00 pts better than production" in c.reasons[1]


def test_production_metric_from_its_run_or_missing(stores, workdir: Path) -> None:
    tracker, reg = stores
    add_run(tracker, "prod", {"test_accuracy": 0.97}, params={"architecture": "cnn", "epochs": 3})
    _production(reg, workdir, "prod", {})  # registered without metrics: the tracker's run supplies them
    add_run(tracker, "cand", {"test_accuracy": 0.975})
    c = compare("cand", tracker=tracker, registry=reg)
    assert c.production_value == 0.97 and c.verdict == PASS
    assert c.production_params == {"architecture": "cnn", "epochs": 3}
    assert not any("different dataset" in r for r in c.reasons)

    add_run(tracker, "cand-new-data", {"test_accuracy": 0.975}, data="ffffffffffffffff")
    c = compare("cand-new-data", tracker=tracker, registry=reg)
    assert c.reasons[-1] == (
        f"Production 0.1.0 was evaluated on a different dataset (data checksum {DATA} vs ffffffffffffffff)."
    )
    assert c.project_count == 0  # the other runs used the other dataset


def test_missing_metric_unknown_or_failed_run_are_errors(stores) -> None:
    tracker, reg = stores
    add_run(tracker, "no-test", {"val_accuracy": 0.9})
    with pytest.raises(CompareError, match=r"run 'no-test' has no final metric 'test_accuracy' \(it has: val_accuracy\)"):
        compare("no-test", tracker=tracker, registry=reg)
    with pytest.raises(CompareError, match="unknown run 'ghost'"):
        compare("ghost", tracker=tracker, registry=reg)
    add_run(tracker, "broken", {"test_accuracy": 0.99}, status=FAILED)
    with pytest.raises(CompareError, match="run 'broken' failed"):
        compare("broken", tracker=tracker, registry=reg)
    add_run(tracker, "ok", {"test_accuracy": 0.99})
    with pytest.raises(CompareError, match="not a fraction"):
        compare("ok", tracker=tracker, registry=reg, gate=Gate(floor=90))


def test_nan_candidate_fails(stores) -> None:
    tracker, reg = stores
    add_run(tracker, "nan", {"test_accuracy": math.nan})
    c = compare("nan", tracker=tracker, registry=reg)
    assert c.verdict == FAIL and "NaN" in c.reasons[0]


def test_production_without_the_metric_is_judged_by_floor(stores, workdir: Path) -> None:
    tracker, reg = stores
    _production(reg, workdir, "untracked-run", {"val_accuracy": 0.9})
    add_run(tracker, "cand", {"test_accuracy": 0.95})
    c = compare("cand", tracker=tracker, registry=reg)
    assert c.verdict == PASS and c.production_value is None and c.production_params is None
    assert c.reasons[0] == "Production 0.1.0 has no test accuracy recorded: judged by the floor only."
    assert "production 0.1.0 has no test accuracy; floor 90.00 %" in c.headline()


def test_lower_is_better_gate(stores, workdir: Path) -> None:
    tracker, reg = stores
    add_run(tracker, "prod", {"test_accuracy": 0.97, "test_loss": 0.100})
    _production(reg, workdir, "prod", {"test_accuracy": 0.97, "test_loss": 0.100})
    add_run(tracker, "cand", {"test_accuracy": 0.97, "test_loss": 0.104})
    gate = Gate.from_env({}, higher_is_better=False, tolerance=0.005)
    assert gate.floor is None  # the accuracy floor does not carry over to a loss
    c = compare("cand", tracker=tracker, registry=reg, metric="test_loss", gate=gate)
    assert c.verdict == PASS and "within the tolerance of 0.005" in c.reasons[0]
    c = compare("cand", tracker=tracker, registry=reg, metric="test_loss", gate=Gate(floor=0.1, higher_is_better=False))
    assert c.verdict == FAIL
    assert c.reasons[0].startswith("Test loss is 0.004 worse than production 0.1.0")
    assert "Test loss 0.104 is above the ceiling 0.1." in c.reasons


def test_gate_from_env_and_formatting() -> None:
    assert Gate.from_env({}) == Gate(floor=0.9, tolerance=0.002, higher_is_better=True)
    g = Gate.from_env({"DIGITOPS_GATE_FLOOR": "0.95", "DIGITOPS_GATE_TOLERANCE": "0.01"})
    assert (g.floor, g.tolerance) == (0.95, 0.01)
    assert Gate.from_env({"DIGITOPS_GATE_FLOOR": "none"}).floor is None
    assert Gate.from_env({"DIGITOPS_GATE_FLOOR": "0.95"}, floor=0.5).floor == 0.5  # explicit beats env
    with pytest.raises(CompareError, match=r"\$DIGITOPS_GATE_TOLERANCE must be a number, got 'lots'"):
        Gate.from_env({"DIGITOPS_GATE_TOLERANCE": "lots"})
    with pytest.raises(CompareError, match="tolerance must be >= 0"):
        Gate(tolerance=-0.1)
    assert Gate().describe("test_accuracy") == "test accuracy ≥ production − 0.20 pts and ≥ 90.00 % (floor)"
    assert fmt_value("test_accuracy", 0.99123) == "99.12 %"
    assert fmt_value("test_loss", None) == "—"
    assert fmt_delta("test_accuracy", 0.0031) == "+0.31 pts"
    assert fmt_delta("test_accuracy", -0.0031) == "-0.31 pts"
    assert fmt_delta("test_accuracy", 0.00001) == "±0.00 pts"
    assert fmt_delta("train_seconds", -2.0) == "-2.0 s"


# ---------------------------------------------------------------------------- CLI


def test_cli_exit_codes_and_json(stores, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from digitops.cli import cli

    tracker, reg = stores
    add_run(tracker, "prod", {"test_accuracy": 0.97})
    _production(reg, workdir, "prod", {"test_accuracy": 0.97})
    add_run(tracker, "good", {"test_accuracy": 0.975})
    add_run(tracker, "bad", {"test_accuracy": 0.95})
    add_run(tracker, "untested", {"val_accuracy": 0.95})
    runner = CliRunner()

    res = runner.invoke(cli, ["compare", "good"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("✅ Candidate passes the gate: test accuracy 97.50 % (+0.50 pts vs production 0.1.0)")
    res = runner.invoke(cli, ["compare", "bad"])
    assert res.exit_code == 1 and "more than the tolerance of 0.20 pts" in res.output
    res = runner.invoke(cli, ["compare", "bad", "--tolerance", "0.03"])
    assert res.exit_code == 0, res.output
    monkeypatch.setenv("DIGITOPS_GATE_TOLERANCE", "0.03")
    assert runner.invoke(cli, ["compare", "bad"]).exit_code == 0
    assert runner.invoke(cli, ["compare", "bad", "--tolerance", "0.001"]).exit_code == 1  # option beats env
    monkeypatch.setenv("DIGITOPS_GATE_FLOOR", "0.96")
    assert runner.invoke(cli, ["compare", "bad"]).exit_code == 1
    assert runner.invoke(cli, ["compare", "bad", "--floor", "none"]).exit_code == 0
    monkeypatch.delenv("DIGITOPS_GATE_FLOOR")
    monkeypatch.delenv("DIGITOPS_GATE_TOLERANCE")

    res = runner.invoke(cli, ["compare", "good", "--json"])
    data = json.loads(res.output)
    assert res.exit_code == 0 and data["verdict"] == "pass" and data["production_version"] == "0.1.0"
    assert data["deltas"]["production"] == pytest.approx(0.005)
    assert data["gate"] == {"floor": 0.9, "tolerance": 0.002, "higher_is_better": True}

    for args, message in [
        (["compare", "untested"], "has no final metric 'test_accuracy'"),
        (["compare", "ghost"], "unknown run 'ghost'"),
        (["compare", "good", "--floor", "high"], "--floor must be a number or 'none'"),
        (["compare", "good", "--floor", "95"], "not a fraction"),
    ]:
        res = runner.invoke(cli, args)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output, (args, res.output)

    help_text = runner.invoke(cli, ["compare", "--help"]).output
    assert "0  the candidate passes the gate" in help_text and "2  error" in help_text


class _UnreadableRegistry(SqliteRegistry):
    """A registry whose production version cannot be read (its backend is away)."""

    def production_reference(self, name: str):  # type: ignore[override]
        from digitops.registry import RegistryError

        raise RegistryError("registry backend not reached")


class _UnreadableHistory(SqliteTracker):
    def metric_summary(self, metric: str, **kwargs):  # type: ignore[override]
        from digitops.tracking import TrackingError

        raise TrackingError("project history not reached")


def test_unreadable_production_or_history_is_unjudged_never_a_pass(stores, monkeypatch: pytest.MonkeyPatch) -> None:
    from digitops.compare import UNJUDGED

    tracker, reg = stores
    add_run(tracker, "cand", {"test_accuracy": 0.99})
    monkeypatch.delenv("DIGITOPS_ALLOW_UNJUDGED", raising=False)
    for trk, rg, why in (
        (tracker, _UnreadableRegistry(), "registry backend not reached"),
        (_UnreadableHistory(), reg, "project history not reached"),
    ):
        c = compare("cand", tracker=trk, registry=rg)
        assert c.verdict == UNJUDGED and not c.passed and why in c.unjudged_reason
        assert c.headline().startswith("⛔ Cannot judge the candidate") and "pass" not in c.headline()
        allowed = compare("cand", tracker=trk, registry=rg, allow_unjudged=True)
        assert allowed.verdict == PASS and "local store" in allowed.reasons[0]


def test_compare_returns_structured_reasons_that_wording_renders(stores) -> None:
    """Computation returns data (codes, pass/fail, facts); the sentences are rendering (digitops.wording)."""
    from digitops.compare import Reason
    from digitops.wording import reason_text

    tracker, reg = stores
    add_run(tracker, "weak", {"test_accuracy": 0.85})
    c = compare("weak", tracker=tracker, registry=reg)
    assert [(r.code, r.ok) for r in c.findings] == [("floor", False), ("no-production", True), ("project", True)]
    assert c.findings[0].facts["value"] == 0.85 and c.findings[0].facts["limit"] == 0.9
    assert all(isinstance(r, Reason) for r in c.findings)
    assert c.reasons == [reason_text(r, c.metric) for r in c.findings]
    data = c.to_dict()
    assert data["findings"][0]["code"] == "floor" and data["reasons"][0].startswith("Test accuracy 85.00 %")
