"""Compare a candidate run with the project's other runs and the production model.

The candidate's metric is set against three baselines: the mean and the best
of the project's *other finished* runs on the same dataset (same data
checksum), and the current production version in the registry. Deltas are
``candidate - baseline``, so for accuracy a positive delta is an improvement.

A :class:`Gate` turns that into a verdict. For a higher-is-better metric the
candidate passes when it is ``>= floor`` and ``>= production - tolerance``
(only the floor counts while there is no production model); for a
lower-is-better metric both comparisons flip. Exact ties pass. The project
mean and best are reported but do not gate.

Fail closed: when the production reference or the project's history cannot be
read from the active backend (Comet unreachable, a registry that cannot be
read), the verdict is ``unjudged`` (never a pass) and says why. Whoever
accepts the risk sets ``--allow-unjudged`` / ``$DIGITOPS_ALLOW_UNJUDGED=1``:
the candidate is then judged against the embedded local store and registry
instead, and the report says so.

Size (over 400 lines): the gate, the data of a comparison and :func:`compare`, which gathers the
candidate, the project and production with fail-closed fallbacks; all wording is in :mod:`digitops.wording`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from digitops import config
from digitops.wording import (  # re-exported: the formatting used to live here
    fmt_amount,
    fmt_delta,
    fmt_value,
    higher_is_better_default,
    is_fraction_metric,
    label,
    describe_gate,
    headline as _headline,
    reason_text,
)
from digitops.errors import CompareError  # re-exported
from digitops.registry.base import PRODUCTION, ModelVersion, Registry, RegistryError
from digitops.tracking.base import FAILED, MetricSummary, RunRecord, Tracker, TrackingError

PASS, FAIL, UNJUDGED = "pass", "fail", "unjudged"
DEFAULT_METRIC = "test_accuracy"
#: shown in the report next to the gate metric when the candidate has them
DEFAULT_EXTRA_METRICS: tuple[str, ...] = ("test_loss", "val_accuracy", "train_seconds")
#: float noise allowance so that ``0.99 - 0.002`` still ties with ``0.988``
_EPS = 1e-9

ENV_FLOOR = "DIGITOPS_GATE_FLOOR"
ENV_TOLERANCE = "DIGITOPS_GATE_TOLERANCE"
ENV_METRIC = "DIGITOPS_GATE_METRIC"
#: ``1``: judge against the local store when the active backend cannot be read (see the module docstring)
ENV_ALLOW_UNJUDGED = "DIGITOPS_ALLOW_UNJUDGED"


def allow_unjudged_default(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``$DIGITOPS_ALLOW_UNJUDGED`` accepts judging against the local store."""
    return (config.env(ENV_ALLOW_UNJUDGED, environ) or "").strip().lower() in ("1", "true", "yes", "on", "allow")


# -- gate -----------------------------------------------------------------------------


@dataclass
class Gate:
    """Pass when ``candidate >= floor`` and ``candidate >= production - tolerance``.

    With ``higher_is_better=False`` (losses) the floor is a ceiling and the
    tolerance is added to production instead. ``floor=None`` disables it.
    """

    floor: float | None = 0.9
    tolerance: float = 0.002
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if self.tolerance < 0 or math.isnan(self.tolerance):
            raise CompareError(f"the gate tolerance must be >= 0, got {self.tolerance}")
        if self.floor is not None and math.isnan(self.floor):
            raise CompareError("the gate floor must be a number or unset, got NaN")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Gate":
        """Defaults, then ``$DIGITOPS_GATE_FLOOR`` / ``$DIGITOPS_GATE_TOLERANCE``, then non-None ``overrides``.

        A floor of ``none`` (or ``off``) disables the floor; so does
        ``higher_is_better=False`` without an explicit floor.
        """
        values: dict[str, Any] = {}
        raw_floor = (config.env(ENV_FLOOR, environ) or "").strip()
        if raw_floor:
            values["floor"] = None if raw_floor.lower() in ("none", "off") else _env_float(ENV_FLOOR, raw_floor)
        raw_tol = (config.env(ENV_TOLERANCE, environ) or "").strip()
        if raw_tol:
            values["tolerance"] = _env_float(ENV_TOLERANCE, raw_tol)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values.get("higher_is_better") is False and "floor" not in values:
            values["floor"] = None  # the 0.9 default is an accuracy floor, meaningless as a loss ceiling
        return cls(**values)

    @classmethod
    def from_options(
        cls, metric: str, *, floor: str | None = None, tolerance: float | None = None, lower_is_better: bool = False
    ) -> "Gate":
        """The gate of a command's ``--floor`` / ``--tolerance`` / ``--lower-is-better`` over the environment's.

        ``floor`` is a number or ``none``/``off``; the result is :meth:`checked <check>`
        for ``metric``, so a bad gate is refused before any work starts.
        """
        overrides: dict[str, Any] = {"tolerance": tolerance, "higher_is_better": False if lower_is_better else None}
        if floor is not None:
            if floor.strip().lower() in ("none", "off"):
                overrides["floor"] = None
            else:
                try:
                    overrides["floor"] = float(floor)
                except ValueError:
                    raise CompareError(f"--floor must be a number or 'none', got {floor!r}") from None
        gate = cls.from_env(**{k: v for k, v in overrides.items() if v is not None})
        if "floor" in overrides and overrides["floor"] is None:
            gate = dataclasses.replace(gate, floor=None)
        gate.check(metric)
        return gate

    def check(self, metric: str) -> None:
        """Raise :class:`CompareError` when this gate cannot apply to ``metric`` (a fraction's floor above 1)."""
        if is_fraction_metric(metric) and self.floor is not None and not 0 <= self.floor <= 1:
            raise CompareError(
                f"the floor {self.floor} is not a fraction; {label(metric)} is between 0 and 1 "
                f"(write 0.9 for 90 %)"
            )

    def describe(self, metric: str) -> str:
        """The rule in words (:func:`digitops.wording.describe_gate`)."""
        return describe_gate(self, metric)


def _env_float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise CompareError(f"${name} must be a number, got {raw!r}") from None


# -- result -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reason:
    """One reason for a verdict, as data: ``code`` (floor, production, project, ...), pass/fail, the facts.

    :func:`digitops.wording.reason_text` turns it into a sentence.
    """

    code: str
    ok: bool = True
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetricRow:
    """One metric of the candidate against the three baselines (deltas: candidate - baseline)."""

    metric: str
    higher_is_better: bool
    candidate: float | None
    count: int = 0
    mean: float | None = None
    best: float | None = None
    best_run_id: str | None = None
    production: float | None = None
    delta_mean: float | None = None
    delta_best: float | None = None
    delta_production: float | None = None


@dataclass
class Comparison:
    """The candidate against project mean/best and production, with the gate's verdict."""

    run_id: str
    project: str
    model_name: str
    metric: str
    candidate: float
    gate: Gate
    data_checksum: str | None
    project_count: int
    project_mean: float | None
    project_best: float | None
    project_best_run_id: str | None
    production_version: str | None
    production_run_id: str | None
    production_value: float | None
    #: signed ``candidate - baseline`` for "mean", "best" and "production" (None: no baseline)
    deltas: dict[str, float | None]
    verdict: str
    #: why, most important first (failures before notes); :attr:`reasons` words them
    findings: list[Reason]
    rows: list[MetricRow] = field(default_factory=list)
    production_url: str | None = None
    #: parameters of the production version's run, when the tracker knows that run
    production_params: dict[str, Any] | None = None
    #: why the active backend could not be read (verdict ``unjudged``, or judged locally with the override)
    unjudged_reason: str | None = None

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    @property
    def judged(self) -> bool:
        return self.verdict != UNJUDGED

    @property
    def reasons(self) -> list[str]:
        """The findings as sentences (:func:`digitops.wording.reason_text`)."""
        return [reason_text(r, self.metric) for r in self.findings]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reasons": self.reasons}

    def headline(self) -> str:
        """One line for people (:func:`digitops.wording.headline`)."""
        return _headline(self)


# -- comparison -------------------------------------------------------------------------


def _delta(candidate: float | None, other: float | None) -> float | None:
    if candidate is None or other is None:
        return None
    return candidate - other


def _production_run(tracker: Tracker, prod: ModelVersion | None) -> RunRecord | None:
    if prod is None:
        return None
    try:
        return tracker.get_run(prod.run_id)
    except TrackingError:
        return None  # registered from another tracker (or its runs were pruned)


def compare(
    run_id: str,
    *,
    tracker: Tracker | None = None,
    registry: Registry | None = None,
    metric: str = DEFAULT_METRIC,
    gate: Gate | None = None,
    model_name: str | None = None,
    extra_metrics: Sequence[str] = DEFAULT_EXTRA_METRICS,
    allow_unjudged: bool | None = None,
) -> Comparison:
    """Compare run ``run_id`` on ``metric`` and judge it with ``gate`` (see the module docstring).

    Raises :class:`CompareError` when the run is unknown or failed, or lacks ``metric``.
    When the production version or the project's history cannot be read, returns an
    ``unjudged`` comparison (never a pass), unless ``allow_unjudged`` (default:
    ``$DIGITOPS_ALLOW_UNJUDGED``) accepts judging against the local store instead.
    """
    # Long: gathers the candidate, the project and production with fail-closed fallbacks, then judges
    # (_judge); the steps share the fallback state, so they stay in one function.
    if allow_unjudged is None:
        allow_unjudged = allow_unjudged_default()
    if tracker is None:
        from digitops.tracking import get_tracker

        tracker = get_tracker()
    if registry is None:
        from digitops.registry import get_registry

        registry = get_registry()
    gate = gate or Gate()
    model_name = model_name or config.model_name()
    gate.check(metric)

    try:
        run = tracker.get_run(run_id)
    except TrackingError as exc:
        raise CompareError(str(exc)) from exc
    if run.status == FAILED:
        raise CompareError(f"run {run_id!r} failed; there is no model to compare")
    if metric not in run.metrics:
        have = ", ".join(sorted(run.metrics)) or "none"
        raise CompareError(
            f"run {run_id!r} has no final metric {metric!r} (it has: {have}); was it evaluated?"
        )
    candidate = float(run.metrics[metric])

    problem: str | None = None
    try:
        prod = registry.production_reference(model_name)
    except Exception as exc:  # noqa: BLE001 - RegistryError, SDK or network: the gate cannot see production
        problem = f"the production version of {model_name!r} cannot be read ({exc})"
        prod = None
        if allow_unjudged:
            prod = _local_stand_in_production(registry, model_name)
    prod_run = _production_run(tracker, prod)

    def production_value(name: str) -> float | None:
        if prod is None:
            return None
        if name in prod.metrics:
            return float(prod.metrics[name])
        if prod_run is not None and name in prod_run.metrics:
            return float(prod_run.metrics[name])
        return None

    rows: list[MetricRow] = []
    for name in dict.fromkeys([metric, *extra_metrics]):
        if name not in run.metrics:
            continue
        hib = gate.higher_is_better if name == metric else higher_is_better_default(name)
        query = dict(project=run.project, exclude=[run_id], data_checksum=run.data_checksum, higher_is_better=hib)
        try:
            summary = tracker.metric_summary(name, **query)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - TrackingError, SDK or network: the history cannot be read
            problem = problem or f"the history of project {run.project!r} cannot be read ({exc})"
            summary = _local_stand_in_summary(tracker, name, query) if allow_unjudged else MetricSummary(
                metric=name, count=0, mean=None, best=None, best_run_id=None, worst=None
            )
        value = float(run.metrics[name])
        pv = production_value(name)
        rows.append(
            MetricRow(
                metric=name,
                higher_is_better=hib,
                candidate=value,
                count=summary.count,
                mean=summary.mean,
                best=summary.best,
                best_run_id=summary.best_run_id,
                production=pv,
                delta_mean=_delta(value, summary.mean),
                delta_best=_delta(value, summary.best),
                delta_production=_delta(value, pv),
            )
        )
    main = rows[0]
    if problem is not None and not allow_unjudged:
        verdict = UNJUDGED
        findings = [
            Reason("cannot-judge", False, {"problem": problem}),
            Reason("cannot-judge-advice", False, {"env": ENV_ALLOW_UNJUDGED}),
        ]
    else:
        verdict, findings = _judge(metric, candidate, gate, prod, main.production, main.delta_production)
        from digitops.feedback import gate as field_gate  # the field-set rule (digits corrected in the dashboard)

        verdict, findings = field_gate.judge(run.metrics, verdict, findings)
        findings.append(_project_finding(run, main))
        if problem is not None:
            findings.insert(0, Reason("local-store", True, {"problem": problem}))
    if (
        prod is not None
        and prod_run is not None
        and run.data_checksum
        and prod_run.data_checksum not in (None, run.data_checksum)
    ):
        findings.append(Reason("other-dataset", True, {
            "version": prod.version, "production_checksum": prod_run.data_checksum, "checksum": run.data_checksum,
        }))

    return Comparison(
        run_id=run_id,
        project=run.project,
        model_name=model_name,
        metric=metric,
        candidate=candidate,
        gate=gate,
        data_checksum=run.data_checksum,
        project_count=main.count,
        project_mean=main.mean,
        project_best=main.best,
        project_best_run_id=main.best_run_id,
        production_version=prod.version if prod else None,
        production_run_id=prod.run_id if prod else None,
        production_value=main.production,
        deltas={"mean": main.delta_mean, "best": main.delta_best, "production": main.delta_production},
        verdict=verdict,
        findings=findings,
        rows=rows,
        production_url=(prod.url if prod and prod.url else (prod_run.url if prod_run else None)),
        production_params=dict(prod_run.params) if prod_run is not None else None,
        unjudged_reason=problem,
    )


def _local_stand_in_production(registry: Registry, model_name: str) -> ModelVersion | None:
    """With ``--allow-unjudged``: the embedded registry's production version (None if unreadable too)."""
    from digitops.registry.sqlite import SqliteRegistry

    try:
        return SqliteRegistry().get_by_status(model_name, PRODUCTION)
    except RegistryError:
        return None


def _local_stand_in_summary(tracker: Tracker, name: str, query: dict[str, Any]) -> MetricSummary:
    """With ``--allow-unjudged``: the summary over the embedded store's runs."""
    from digitops.tracking.sqlite import SqliteTracker

    # A Comet tracker keeps its embedded store as ``local``; any other tracker: the default store.
    local = tracker if isinstance(tracker, SqliteTracker) else getattr(tracker, "local", None) or SqliteTracker()
    try:
        return local.metric_summary(name, **query)
    except TrackingError:
        return MetricSummary(metric=name, count=0, mean=None, best=None, best_run_id=None, worst=None)


def _judge(
    metric: str,
    candidate: float,
    gate: Gate,
    prod: ModelVersion | None,
    prod_value: float | None,
    delta: float | None,
) -> tuple[str, list[Reason]]:
    """The verdict and its reasons (gate failures first)."""
    failures: list[Reason] = []
    notes: list[Reason] = []
    if math.isnan(candidate):
        return FAIL, [Reason("nan", False)]

    if gate.floor is not None:
        ok = candidate >= gate.floor - _EPS if gate.higher_is_better else candidate <= gate.floor + _EPS
        floor = Reason("floor", ok, {"value": candidate, "limit": gate.floor, "higher_is_better": gate.higher_is_better,
                                     "ok": ok})
        (notes if ok else failures).append(floor)

    if prod is None:
        notes.insert(0, Reason("no-production", True, {"has_floor": gate.floor is not None}))
    elif prod_value is None or delta is None or math.isnan(prod_value):
        notes.insert(0, Reason("production-lacks-metric", True, {"version": prod.version}))
    else:
        # ``gain`` > 0 means better than production, whichever direction is better.
        gain = delta if gate.higher_is_better else -delta
        if abs(delta) <= _EPS:
            outcome = "tie"
        elif gain > 0:
            outcome = "better"
        elif gain >= -gate.tolerance - _EPS:
            outcome = "within"
        else:
            outcome = "worse"
        finding = Reason("production", outcome != "worse", {
            "version": prod.version, "production": prod_value, "delta": delta, "tolerance": gate.tolerance,
            "outcome": outcome,
        })
        (failures if outcome == "worse" else notes).insert(0, finding)
    return (FAIL if failures else PASS), failures + notes


def _project_finding(run: RunRecord, row: MetricRow) -> Reason:
    return Reason("project", True, {
        "project": run.project, "same_dataset": bool(run.data_checksum), "count": row.count, "mean": row.mean,
        "delta_mean": row.delta_mean, "best": row.best, "delta_best": row.delta_best, "best_run_id": row.best_run_id,
    })
