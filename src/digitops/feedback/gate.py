"""The field-set rule of the gate and the report's field row, from a run's final metrics.

The rule: once the field set's test side has at least ``DIGITOPS_GATE_FIELD_MIN``
drawings, the candidate's accuracy on them must be at least production's
(scored on the same drawings) minus ``DIGITOPS_GATE_FIELD_TOLERANCE``.
Below that size it only informs. When production exists but could not be
scored, or the settings are malformed, the candidate fails (fail closed).
"""

from __future__ import annotations

from typing import Any, Mapping

from digitops.feedback import FeedbackError, gate_settings

_EPS = 1e-9


def _num(metrics: Mapping[str, Any], key: str) -> float | None:
    try:
        return float(metrics[key])  # Comet returns metric values as strings
    except (KeyError, TypeError, ValueError):
        return None


def judge(metrics: Mapping[str, Any], verdict: str, reasons: list[str]) -> tuple[str, list[str]]:
    """``verdict`` ("pass"/"fail") and ``reasons`` with the field rule applied."""
    n = _num(metrics, "field_images")
    if n is None:
        return verdict, reasons
    reasons = list(reasons)
    try:
        s = gate_settings()
    except FeedbackError as exc:
        return "fail", [f"Field drawings: the gate's settings are malformed ({exc}), so it refuses."] + reasons
    cand, prod = _num(metrics, "field_accuracy"), _num(metrics, "field_production_accuracy")
    if n < s.minimum:
        reasons.append(f"Field drawings: {int(n)} in the test set, fewer than {s.minimum} "
                       f"(DIGITOPS_GATE_FIELD_MIN), so they inform but do not gate.")
    elif (_num(metrics, "field_production_missing") or 0) > 0:
        verdict = "fail"
        reasons.insert(0, "Field drawings: production exists but could not be scored on them, so the candidate "
                       "does not pass (see the evaluation notebook).")
    elif prod is None or cand is None:
        reasons.append(f"Field drawings: no production model to compare with on {int(n)} drawings.")
    elif cand + s.tolerance + _EPS < prod:
        verdict = "fail"
        reasons.insert(0, f"Field drawings: candidate {cand:.2%} is worse than production {prod:.2%} on {int(n)} "
                       f"drawings by more than the tolerance {s.tolerance:.2%}.")
    else:
        reasons.append(f"Field drawings: candidate {cand:.2%} vs production {prod:.2%} on {int(n)} drawings "
                       f"(tolerance {s.tolerance:.2%}): not worse.")
    return verdict, reasons


def report_rows(metrics: Mapping[str, Any]) -> list[dict[str, str]]:
    """The report's "field drawings" row (none when the run was not scored on a field set)."""
    from digitops.compare import fmt_delta, fmt_value

    n = _num(metrics, "field_images")
    if n is None:
        return []
    cand, prod = _num(metrics, "field_accuracy"), _num(metrics, "field_production_accuracy")
    delta = None if cand is None or prod is None else cand - prod
    dash = "—"
    return [{
        "metric": f"field drawings: candidate vs production on {int(n)} drawings",
        "gate": "", "candidate": fmt_value("test_accuracy", cand), "mean": dash, "delta_mean": dash,
        "best": dash, "delta_best": dash, "production": fmt_value("test_accuracy", prod),
        "delta_production": fmt_delta("test_accuracy", delta),
    }]
