"""Offline archives and ``digitops sync``: upload what was kept while Comet was unreachable, remove half-made experiments."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Iterable

from digitops import comet_env
from digitops.comet.queries import comet_api
from digitops.comet.state import KEY_TAG, RunState, Snapshot, SyncOutcome, run_lock, say
from digitops.tracking.base import TrackingError
from digitops.tracking.sqlite import SqliteTracker


# ------------------------------------------------------------------------------- sync


def upload_pending(tracker: SqliteTracker, state: RunState) -> SyncOutcome:
    """Upload ``state.pending`` with the SDK's uploader; on success Comet holds its snapshot."""
    pending = dict(state.pending or {})
    archive = str(pending.get("archive", ""))
    key = str(pending.get("experiment_key", ""))
    start = time.monotonic()
    if not Path(archive).is_file():
        return SyncOutcome(state.run_id, "failed", key, archive=archive, reason=f"archive {archive} is missing")
    comet_env.import_comet()
    from comet_ml.offline import upload_single_offline_experiment

    api = comet_api()
    already = pending.get("mode") == "new" and api.get_experiment_by_key(key) is not None
    ok = already or upload_single_offline_experiment(
        offline_archive_path=archive,
        api_key=comet_env.api_key() or "",
        force_upload=False,
        display_level="warning",
    )
    if not ok:
        reason = f"uploading {Path(archive).name} failed; the archive is kept"
        return SyncOutcome(state.run_id, "failed", key, archive=archive, reason=reason)
    uploaded = api.get_experiment_by_key(key)
    url = (uploaded.url if uploaded is not None else None) or state.url
    state.experiment_key = key
    deleted = delete_orphans(state, api)
    state.experiment_key = key
    state.url = url
    state.sent = pending.get("snapshot")
    state.pending = None
    state.save()
    Path(archive).unlink(missing_ok=True)
    try:
        tracker.set_tags(state.run_id, {KEY_TAG: key})
        if url:
            tracker.set_url(state.run_id, url)
    except TrackingError:
        pass  # the run's local record lives in another store; Comet is up to date regardless
    return SyncOutcome(
        state.run_id, "uploaded", key, url, archive, seconds=time.monotonic() - start, deleted_orphans=deleted
    )


def delete_orphans(state: RunState, api: Any = None) -> list[str]:
    """Delete the run's half-created online experiments (never the one holding the run); saves ``state``."""
    if not state.orphans:
        return []
    api = api or comet_api()
    deleted = []
    for orphan in list(state.orphans):
        if orphan == state.experiment_key:
            state.orphans.remove(orphan)
            continue
        try:
            if api.get_experiment_by_key(orphan) is not None:
                api.delete_experiment(orphan)
                deleted.append(orphan)
            state.orphans.remove(orphan)
        except Exception as exc:  # noqa: BLE001 - retried at the next sync
            say(f"run {state.run_id}: could not remove incomplete experiment {orphan}: {exc}")
    state.save()
    return deleted


def _same(local: Any, remote: Any) -> bool:
    """Whether a value Comet sends back (a string) is the value logged."""
    if remote is None:
        return False
    if str(local) == str(remote):
        return True
    try:
        return math.isclose(float(local), float(remote), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return str(local).lower() == str(remote).lower()


def remote_snapshot(
    key: str, target: Snapshot, state: RunState | None = None, files: dict[str, str] | None = None
) -> Snapshot | None:
    """What the Comet experiment ``key`` holds of ``target``, as a :class:`Snapshot` (None: no such experiment).

    Read back through the REST API, so the result does not depend on what an earlier,
    possibly half-applied attempt believed it sent. A value counts as held when Comet has
    it (numbers compared as numbers); a file when an asset of its name and size is there
    and it did not change locally since it was last confirmed sent.
    """
    api = comet_api()
    exp = api.get_experiment_by_key(key)
    if exp is None:
        return None
    params_remote = {p["name"]: p.get("valueCurrent") for p in exp.get_parameters_summary() or []}
    others_remote = {o["name"]: o.get("valueCurrent") for o in exp.get_others_summary() or []}
    tags_remote = set(exp.get_tags() or [])
    have_metrics = {m["name"] for m in exp.get_metrics_summary() or []}
    assets = exp.get_asset_list() or []
    base = Snapshot()
    base.params = {k: v if _same(v, params_remote.get(k)) else params_remote.get(k) for k, v in target.params.items()}
    base.params = {k: v for k, v in base.params.items() if v is not None}
    base.others = {k: v for k, v in target.others.items() if _same(v, others_remote.get(k))}
    base.others["Name"] = str(exp.name or others_remote.get("Name") or "")
    base.tags = [t for t in target.tags if t in tags_remote]
    points: dict[str, list[dict[str, Any]]] = {}
    for name in (set(target.history) | set(target.metrics)) & have_metrics:
        points[name] = list(exp.get_metrics(name) or [])
    for name, values in target.history.items():
        steps = {p.get("step") for p in points.get(name, [])}
        held = 0
        while held < len(values) and (values[held] is None or held in steps):
            held += 1
        base.history[name] = values[:held]
    for name, value in target.metrics.items():
        got = points.get(name)
        if got and _same(value, got[-1].get("metricValue")):
            base.metrics[name] = value
    sent = (Snapshot.from_json(state.sent) if state is not None else None) or Snapshot()
    sizes: dict[str, set[int]] = {}
    for asset in assets:
        sizes.setdefault(str(asset.get("fileName")), set()).add(int(asset.get("fileSize") or -1))
    files = files or {}
    for name, digest in target.artifacts.items():
        found = sizes.get(name, set()) | sizes.get(Path(name).stem, set())
        try:
            size = Path(files[name]).stat().st_size
        except (KeyError, OSError):
            size = None
        if found and (size is None or size in found or -1 in found) and sent.artifacts.get(name, digest) == digest:
            base.artifacts[name] = digest
    return base


def pending_runs() -> list[RunState]:
    """Runs with an offline archive waiting for upload."""
    folder = comet_env.state_dir() / "runs"
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        state = RunState.load(path.stem)
        if state.pending or state.orphans:
            out.append(state)
    return out


def sync_pending(run_ids: Iterable[str] | None = None) -> list[SyncOutcome]:
    """Upload kept archives (all, or those of ``run_ids``) and bring those runs up to date."""
    from digitops.comet.tracker import CometTracker  # the tracker imports this module; import on call

    wanted = set(run_ids) if run_ids else None
    tracker = CometTracker()
    outcomes = []
    reach = comet_env.check_online(use_memo=False)
    for state in pending_runs():
        if wanted is not None and state.run_id not in wanted:
            continue
        if not reach.ok:
            outcomes.append(SyncOutcome(state.run_id, "failed", reason=f"Comet not reached: {reach.reason}"))
            continue
        try:
            local = True
            try:
                tracker.get_run(state.run_id)
            except TrackingError:
                local = False  # recorded in another store: the archive is all there is
            if local:
                outcome = tracker.sync_run(state.run_id, use_memo=False)
                if outcome.mode == "offline":
                    outcome = SyncOutcome(state.run_id, "failed", reason=outcome.reason, archive=outcome.archive)
                else:
                    with run_lock(state.run_id):
                        outcome.deleted_orphans += delete_orphans(RunState.load(state.run_id))
            else:
                with run_lock(state.run_id):
                    state = RunState.load(state.run_id)
                    if state.pending and state.pending.get("archive"):
                        outcome = upload_pending(tracker, state)
                    elif state.pending:
                        outcome = SyncOutcome(state.run_id, "failed", reason="no archive and no local record to send")
                    else:
                        deleted = delete_orphans(state)
                        outcome = SyncOutcome(
                            state.run_id, "up-to-date", state.experiment_key, state.url, deleted_orphans=deleted
                        )
        except Exception as exc:  # noqa: BLE001 - report it, keep the archive, go on with the others
            reason = comet_env.redact(f"{type(exc).__name__}: {exc}")
            outcomes.append(SyncOutcome(state.run_id, "failed", reason=reason))
            continue
        outcomes.append(outcome)
    return outcomes


def stray_archives() -> list[Path]:
    """Archives in the offline folder that no run's state refers to (e.g. copied from another machine)."""
    folder = comet_env.offline_dir()
    if not folder.is_dir():
        return []
    known = {Path(s.pending["archive"]).resolve() for s in pending_runs() if s.pending and s.pending.get("archive")}
    return [p for p in sorted(folder.glob("*.zip")) if p.resolve() not in known]


def upload_archive(path: Path) -> bool:
    """Upload one offline archive with the SDK's uploader (``comet upload``); True on success."""
    comet_env.import_comet()
    from comet_ml.offline import upload_single_offline_experiment

    ok = bool(
        upload_single_offline_experiment(
            offline_archive_path=str(path),
            api_key=comet_env.api_key() or "",
            force_upload=False,
            display_level="warning",
        )
    )
    if ok:
        path.unlink(missing_ok=True)
    return ok
