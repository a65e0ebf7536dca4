"""The field-set rule of the gate and the report's field row, from a run's final metrics.

The rule: once the field set's test side has at least ``DIGITOPS_GATE_FIELD_MIN``
drawings, the candidate's accuracy on them must be at least production's
(scored on the same drawings) minus ``DIGITOPS_GATE_FIELD_TOLERANCE``.
Below that size it only informs. When production exists but could not be
scored, or the settings are malformed, the candidate fails (fail closed).
"""

from __future__ import annotations

from typing import Any, Mapping

from digitops.compare import Reason
from digitops.feedback import FeedbackError, gate_settings

_EPS = 1e-9


def _num(metrics: Mapping[str, Any], key: str) -> float | None:
    try:
        return float(metrics[key])  # Comet returns metric values as strings
    except (KeyError, TypeError, ValueError):
        return None


def judge(metrics: Mapping[str, Any], verdict: str, findings: list[Reason]) -> tuple[str, list[Reason]]:
    """``verdict`` ("pass"/"fail") and ``findings`` with the field rule applied (failures first)."""
    n = _num(metrics, "field_images")
    if n is None:
        return verdict, findings
    findings = list(findings)
    try:
        s = gate_settings()
    except FeedbackError as exc:
        return "fail", [Reason("field-malformed", False, {"problem": str(exc)})] + findings
    cand, prod = _num(metrics, "field_accuracy"), _num(metrics, "field_production_accuracy")
    facts = {"count": int(n), "candidate": cand, "production": prod, "tolerance": s.tolerance, "minimum": s.minimum}
    if n < s.minimum:
        findings.append(Reason("field-too-few", True, facts))
    elif (_num(metrics, "field_production_missing") or 0) > 0:
        verdict = "fail"
        findings.insert(0, Reason("field-production-unscored", False, facts))
    elif prod is None or cand is None:
        findings.append(Reason("field-no-production", True, facts))
    elif cand + s.tolerance + _EPS < prod:
        verdict = "fail"
        findings.insert(0, Reason("field-worse", False, facts))
    else:
        findings.append(Reason("field-not-worse", True, facts))
    return verdict, findings


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
