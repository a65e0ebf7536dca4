"""Wording: how comparisons read to people (CLI, Markdown, HTML). Computation lives in :mod:`digitops.compare`.

:func:`reason_text` turns a :class:`~digitops.compare.Reason` (a code, pass/fail
and its facts) into the sentence the CLI and both report formats show.
"""

from __future__ import annotations

import math
from typing import Any

def is_fraction_metric(metric: str) -> bool:
    """Accuracy-like metrics are fractions shown as percentages and deltas in points."""
    return "accuracy" in metric or metric.endswith(("precision", "recall", "f1"))


def higher_is_better_default(metric: str) -> bool:
    """Losses, errors and durations improve downwards; everything else upwards."""
    return not metric.endswith(("loss", "error", "seconds", "_time"))


def label(metric: str) -> str:
    """``test_accuracy`` -> ``test accuracy``."""
    return metric.replace("_", " ")


def fmt_value(metric: str, value: float | None) -> str:
    """A metric value for people: ``99.12 %``, ``0.0312``, ``12.3 s``, ``—`` when missing."""
    if value is None:
        return "—"
    if math.isnan(value):
        return "NaN"
    if is_fraction_metric(metric):
        return f"{value * 100:.2f} %"
    if metric.endswith("seconds"):
        return f"{value:.1f} s"
    return f"{value:.4g}"


def fmt_delta(metric: str, delta: float | None) -> str:
    """A signed difference: ``+0.31 pts``, ``-0.0040``, ``±0.00 pts``, ``—`` when missing."""
    if delta is None:
        return "—"
    if math.isnan(delta):
        return "NaN"
    if is_fraction_metric(metric):
        pts = delta * 100
        return "±0.00 pts" if round(pts, 2) == 0 else f"{pts:+.2f} pts"
    if metric.endswith("seconds"):
        return "±0.0 s" if round(delta, 1) == 0 else f"{delta:+.1f} s"
    return "±0" if delta == 0 else f"{delta:+.4g}"


def fmt_amount(metric: str, amount: float) -> str:
    """An unsigned size of a difference (tolerances): ``0.20 pts``."""
    if is_fraction_metric(metric):
        return f"{amount * 100:.2f} pts"
    return f"{amount:.4g}"


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def reason_text(reason: Any, metric: str) -> str:
    """The sentence for one reason of a verdict (``reason.code``, ``reason.facts``)."""
    f, name = reason.facts, label(metric)
    render = _SENTENCES[reason.code]
    return render(f, metric, name)


def _floor(f: dict[str, Any], metric: str, name: str) -> str:
    shown, limit = fmt_value(metric, f["value"]), fmt_value(metric, f["limit"])
    if f["higher_is_better"]:
        return _cap(f"{name} {shown} is {'at or above' if f['ok'] else 'below'} the floor {limit}.")
    return _cap(f"{name} {shown} is {'at or below' if f['ok'] else 'above'} the ceiling {limit}.")


def _production(f: dict[str, Any], metric: str, name: str) -> str:
    ref = f"production {f['version']} ({fmt_value(metric, f['production'])})"
    size, tol = fmt_amount(metric, abs(f["delta"])), fmt_amount(metric, f["tolerance"])
    return {
        "tie": f"{name.capitalize()} ties with {ref}.",
        "better": f"{name.capitalize()} is {size} better than {ref}.",
        "within": f"{name.capitalize()} is {size} worse than {ref}, within the tolerance of {tol}.",
        "worse": f"{name.capitalize()} is {size} worse than {ref}, more than the tolerance of {tol}.",
    }[f["outcome"]]


def _project(f: dict[str, Any], metric: str, name: str) -> str:
    where = f"project {f['project']!r}" + (" on the same dataset" if f["same_dataset"] else "")
    if f["count"] == 0:
        return f"No other finished runs in {where} yet."
    return (
        f"Against {f['count']} other finished run{'s' if f['count'] != 1 else ''} in {where}: "
        f"mean {fmt_value(metric, f['mean'])} ({fmt_delta(metric, f['delta_mean'])}), "
        f"best {fmt_value(metric, f['best'])} ({fmt_delta(metric, f['delta_best'])}, run {f['best_run_id']})."
    )


_SENTENCES = {
    "nan": lambda f, m, n: f"The candidate's {n} is not a number (NaN): training diverged or evaluation failed.",
    "floor": _floor,
    "no-production": lambda f, m, n: "No production model yet: judged by the floor only."
    if f["has_floor"] else "No production model yet and no floor set: nothing to judge against.",
    "production-lacks-metric": lambda f, m, n: f"Production {f['version']} has no {n} recorded: judged by the floor only.",
    "production": _production,
    "project": _project,
    "cannot-judge": lambda f, m, n: f"Cannot judge: {f['problem']}.",
    "cannot-judge-advice": lambda f, m, n: (
        "The comparison with production and the project's runs could not be made, so the candidate "
        "does not pass. Run it again once the backend answers, or accept the risk with "
        f"--allow-unjudged (${f['env']}=1) to judge against the local store."
    ),
    "local-store": lambda f, m, n: f"Judged against the local store and registry only (--allow-unjudged): {f['problem']}.",
    "field-malformed": lambda f, m, n: f"Field drawings: the gate's settings are malformed ({f['problem']}), so it refuses.",
    "field-too-few": lambda f, m, n: (
        f"Field drawings: {f['count']} in the test set, fewer than {f['minimum']} "
        "(DIGITOPS_GATE_FIELD_MIN), so they inform but do not gate."
    ),
    "field-production-unscored": lambda f, m, n: (
        "Field drawings: production exists but could not be scored on them, so the candidate "
        "does not pass (see the evaluation notebook)."
    ),
    "field-no-production": lambda f, m, n: f"Field drawings: no production model to compare with on {f['count']} drawings.",
    "field-worse": lambda f, m, n: (
        f"Field drawings: candidate {f['candidate']:.2%} is worse than production {f['production']:.2%} on "
        f"{f['count']} drawings by more than the tolerance {f['tolerance']:.2%}."
    ),
    "field-not-worse": lambda f, m, n: (
        f"Field drawings: candidate {f['candidate']:.2%} vs production {f['production']:.2%} on {f['count']} "
        f"drawings (tolerance {f['tolerance']:.2%}): not worse."
    ),
    "other-dataset": lambda f, m, n: (
        f"Production {f['version']} was evaluated on a different dataset "
        f"(data checksum {f['production_checksum']} vs {f['checksum']})."
    ),
}


def describe_gate(gate: Any, metric: str) -> str:
    """The rule in words, e.g. ``test accuracy ≥ production − 0.20 pts and ≥ 90.00 % (floor)``."""
    ge = "≥" if gate.higher_is_better else "≤"
    sign = "−" if gate.higher_is_better else "+"
    parts = [f"{label(metric)} {ge} production {sign} {fmt_amount(metric, gate.tolerance)}"]
    if gate.floor is not None:
        parts.append(f"{ge} {fmt_value(metric, gate.floor)} ({'floor' if gate.higher_is_better else 'ceiling'})")
    return " and ".join(parts)


def headline(c: Any) -> str:
    """One line, e.g. ``✅ Candidate passes the gate: test accuracy 99.12 % (+0.31 pts vs production 1.2.0)``."""
    value = f"{label(c.metric)} {fmt_value(c.metric, c.candidate)}"
    if not c.judged:
        return f"⛔ Cannot judge the candidate ({value}): {c.unjudged_reason}"
    mark, word = ("✅", "passes") if c.passed else ("❌", "fails")
    if c.production_version is not None and c.production_value is not None:
        ctx = f"{fmt_delta(c.metric, c.deltas['production'])} vs production {c.production_version}"
    elif c.production_version is not None:
        ctx = f"production {c.production_version} has no {label(c.metric)}"
    else:
        ctx = "no production model yet"
    if c.gate.floor is not None and c.production_value is None:
        which = "floor" if c.gate.higher_is_better else "ceiling"
        ctx += f"; {which} {fmt_value(c.metric, c.gate.floor)}"
    if c.unjudged_reason:
        ctx += "; ⚠️ judged against the local store only (--allow-unjudged)"
    return f"{mark} Candidate {word} the gate: {value} ({ctx})"


def reused(origin: str) -> str:
    """What the CLI, the report and the MR note say about a stage that was reused."""
    return f"inputs unchanged since run {origin}; reused"


def reuse_note(train_from: str | None, evaluate_from: str | None) -> str | None:
    """The report's line for a run that reused training and/or evaluation; None when it reused nothing."""
    if train_from and evaluate_from in (None, train_from):
        done = "not trained or evaluated again" if evaluate_from else "not trained again; evaluated anew"
        return f"I{reused(train_from)[1:]} ({done})."
    if train_from:
        return f"I{reused(train_from)[1:]} (not trained again; evaluation reused from run {evaluate_from})."
    if evaluate_from:
        return f"Evaluation {reused(evaluate_from)} (not evaluated again)."
    return None
