"""Reuse a stage of a finished run whose inputs (its :mod:`~digitops.fingerprint`) are unchanged.

:func:`decide` looks the fingerprint up in the active store
(:meth:`~digitops.tracking.Tracker.find_reusable`) and checks, failing closed,
that the run found can really stand in for a new one: it finished, its folder
is here, every file its stage wrote is there (``metrics.json``'s
``outputs.<stage>``, recorded by the runner and :class:`~digitops.runs.RunContext`),
and its model still matches the SHA256 recorded when it was trained.
:func:`apply` then records a new run, finished, tagged
``digitops.reused_from`` (``digitops.eval_reused_from`` for evaluation), with
copies of those files, metrics and sections: what the report, the comparison and
the registry read is the same as if the notebook had run, without starting a kernel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from digitops import atomic, config, runs
from digitops.fingerprint import Fingerprint
from digitops.tracking.base import FAILED, FINISHED, METRICS_REUSED_FROM, RunRecord, TrackingError

#: tag naming the run whose notebook really ran, on a run that reused it
REUSED_FROM = {"train": "digitops.reused_from", "evaluate": METRICS_REUSED_FROM}
#: tag with the one-line reason a stage was reused or run again
REASON = {"train": "digitops.reuse", "evaluate": "digitops.eval_reuse"}
#: tag with the SHA256 of the run's model.keras, set when training finishes
MODEL_SHA = "digitops.model_sha256"
MODEL = "model.keras"


@dataclass
class Decision:
    """Whether a stage can be reused, from which run, and why (or why not)."""

    fingerprint: Fingerprint
    #: the finished run to copy from; None: run the notebook
    source: RunRecord | None
    reason: str

    @property
    def origin(self) -> str | None:
        """The run whose notebook really ran (a reused run points on to its own source)."""
        if self.source is None:
            return None
        return self.source.tags.get(REUSED_FROM[self.fingerprint.stage]) or self.source.run_id


def decide(tracker: Any, fp: Fingerprint, *, exclude: str | None = None) -> Decision:
    """Find a finished run with fingerprint ``fp`` that can be reused (not ``exclude``).

    Reuse only saves time: a store that cannot be searched (an MLflow server down) means
    the notebook runs, with the reason said, never that the stage fails.
    """
    project = config.project_name()
    try:
        found = tracker.find_reusable(fp.digest, project, tag=fp.tag)
        if found is None or found.run_id == exclude:
            return Decision(fp, None, _changed(tracker, fp, project, exclude))
    except TrackingError as exc:
        return Decision(fp, None, f"earlier runs could not be searched ({exc}); running the notebook")
    problem = unusable(found, fp.stage)
    if problem:
        return Decision(fp, None, f"run {found.run_id} has the same inputs but is not reused: {problem}")
    from digitops.wording import reused

    return Decision(fp, found, reused(found.tags.get(REUSED_FROM[fp.stage]) or found.run_id))


def _changed(tracker: Any, fp: Fingerprint, project: str, exclude: str | None) -> str:
    """Which parts differ from the newest finished run that recorded this stage's fingerprint."""
    for run in tracker.list_runs(project=project, status=FINISHED, limit=50):
        if run.run_id != exclude and fp.tag in run.tags:
            parts = fp.differences(run.tags)
            return f"inputs changed since run {run.run_id}: {', '.join(parts) or 'fingerprint'}"
    return "no earlier finished run with a recorded fingerprint"


def unusable(run: RunRecord, stage: str) -> str | None:
    """Why ``run``'s ``stage`` cannot be reused (None when it can). Fails closed on anything unseen."""
    from digitops.registry.base import sha256_file

    if run.status != FINISHED:
        return f"it is {run.status}, not finished"
    folder = runs.run_dir(run.run_id)
    if not folder.is_dir():
        return f"its folder {folder} is not here (only the store's record travelled)"
    try:
        outputs = (runs.read_metrics(folder).get("outputs") or {}).get(stage) or {}
    except (OSError, ValueError) as exc:
        return f"its {runs.METRICS_FILE} cannot be read ({type(exc).__name__})"
    files = list(outputs.get("files") or ())
    if not files:
        return f"its folder does not list what {stage} wrote"
    odd = [name for name in files if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..")]
    if odd:  # only plain names in the run folder are ever copied: a list pointing elsewhere is refused
        return f"its {runs.METRICS_FILE} lists files outside its folder: {', '.join(map(repr, odd[:3]))}"
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        return f"{', '.join(missing)} missing from {folder}"
    if stage == "train":
        recorded = run.tags.get(MODEL_SHA)
        if MODEL not in files or not recorded:
            return f"no SHA256 was recorded for its {MODEL}"
        if sha256_file(folder / MODEL) != recorded:
            return f"its {MODEL} does not match the SHA256 recorded when it was trained (changed or damaged)"
    return None


def _stage_params(run: RunRecord, stage: str) -> dict[str, Any]:
    # Training's parameters are stored as they are, other stages' as "<stage>.<name>".
    if stage == "train":
        return {k: v for k, v in run.params.items() if "." not in k}
    return {k: v for k, v in run.params.items() if k.startswith(f"{stage}.")}


def apply(decision: Decision, tracker: Any, run_id: str, *, tags: dict[str, str],
          params: dict[str, Any] | None = None) -> Path:
    """Record ``run_id`` as a finished copy of the decision's source stage; returns its folder.

    Files are copied atomically, the model re-verified after the copy. Anything
    failing here ends the run ``failed`` (and raises): never a half-copied finished run.
    """
    src = decision.source
    assert src is not None, "apply() needs a decision with a source run"
    stage, origin = decision.fingerprint.stage, decision.origin or src.run_id
    src_folder, folder = runs.run_dir(src.run_id), runs.run_dir(run_id)
    saved = runs.read_metrics(src_folder)
    outputs = saved["outputs"][stage]
    commit = runs.git_commit()
    tracker.start_run(
        run_id, name=run_id, params={**_stage_params(src, stage), **(params or {})},
        tags={**tags, **decision.fingerprint.tags(), REUSED_FROM[stage]: origin, REASON[stage]: decision.reason},
        git_commit=commit, data_checksum=src.data_checksum, project=config.project_name(),
    )
    status = FAILED
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name in outputs["files"]:
            atomic.copy(src_folder / name, folder / name)
        if stage == "train":
            _verify_copy(folder / MODEL, src.tags[MODEL_SHA])
            tracker.set_tags(run_id, {MODEL_SHA: src.tags[MODEL_SHA]})
            for step in range(max((len(v) for v in src.history.values()), default=0)):
                tracker.log_metrics(run_id, {k: v[step] for k, v in src.history.items() if step < len(v)}, step=step)
        metrics = {k: src.metrics[k] for k in outputs.get("metrics") or () if k in src.metrics}
        if metrics:
            tracker.log_metrics(run_id, metrics)
        for name in outputs["files"]:
            if name in src.artifacts:
                tracker.log_artifact(run_id, folder / name)
        section = "params" if stage == "train" else f"{stage}_params"
        content = {k: saved[k] for k in outputs.get("sections") or () if k in saved}
        content.update(
            run_id=run_id, project=config.project_name(), git_commit=commit, data_checksum=saved.get("data_checksum"),
            metrics=metrics, stages={stage: FINISHED}, reused={stage: origin},
        )
        content[section] = saved.get(section) or {}
        runs.update_metrics(folder, **content)
        runs.record_outputs(folder, stage, **{k: outputs.get(k) or () for k in ("files", "metrics", "sections")})
        status = FINISHED
    finally:
        tracker.end_run(run_id, status)
    return folder


def _verify_copy(path: Path, recorded: str) -> None:
    from digitops.registry.base import sha256_file

    if sha256_file(path) != recorded:
        os.unlink(path)
        raise OSError(f"the copy of {path.name} does not match the recorded SHA256; removed")
