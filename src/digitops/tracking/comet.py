"""Comet tracking: the embedded SQLite store, mirrored into one Comet experiment per run.

Design (why a mirror). A run is written by two processes: the runner creates
and ends it, the notebook kernel logs params, per-epoch metrics and images.
Both use :class:`CometTracker`, and every call first goes to the local SQLite
store (it *is* a :class:`~digitops.tracking.sqlite.SqliteTracker`), so the
kernel never imports comet_ml, never opens a connection, and nothing depends
on Comet being up while a model trains. When the runner ends the run,
:meth:`CometTracker.end_run` replays what the store holds into Comet in one
process: parameters, per-epoch history with its steps, final metrics, tags
(git commit, MR iid and pipeline id in CI), "others" (run id, status, data
checksum), images, the executed notebooks' HTML as assets, the confusion
matrix (``log_confusion_matrix``) and the model (``log_model``). The
experiment key is kept as the run's ``comet_experiment_key`` tag and its URL
as the run's ``url``.

A second ``end_run`` of the same run (``run evaluate`` after ``run train``)
sends only what changed, to the same experiment (``ExistingExperiment``); a
small JSON file per run under ``$DIGITOPS_HOME/comet/runs`` remembers what
Comet already has.

Offline safety. If Comet is unreachable (bounded probe, see
:mod:`digitops.comet_env`), forced off (``--offline``), or the connection
drops while sending (the SDK falls back to an archive, or the experiment is
not alive), the same content goes into an offline archive
(``OfflineExperiment`` / ``ExistingOfflineExperiment``) under
``$DIGITOPS_HOME/comet-offline``; :func:`sync_pending` (``digitops sync``)
uploads it later with the SDK's own uploader (what ``comet upload`` runs) and
removes a half-created online experiment so the project holds one complete
experiment per run. The local store is complete either way: nothing is lost.

Comparisons (:meth:`CometTracker.metric_summary`) read the Comet project's
experiments through ``comet_ml.API`` with multi-experiment queries, so their
cost grows with pages, not with experiments (see :func:`comet_metric_summary`);
when Comet cannot be read they raise :class:`TrackingError` (fail closed: the
gate then refuses to judge, see :mod:`digitops.compare`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from digitops import atomic, comet_env, config
from digitops.tracking.base import FINISHED, MetricSummary, RunRecord, TrackingError
from digitops.tracking.sqlite import SqliteTracker

#: Switches passed to every experiment: digitops logs explicitly, the SDK must not collect on its own.
EXPERIMENT_OPTIONS: dict[str, Any] = {
    "log_code": False,
    "log_graph": False,
    "auto_param_logging": False,
    "auto_metric_logging": False,
    "parse_args": False,
    "auto_output_logging": None,
    "log_env_details": False,
    "log_git_metadata": False,
    "log_git_patch": False,
    "log_env_gpu": False,
    "log_env_host": False,
    "log_env_cpu": False,
    "log_env_network": False,
    "log_env_disk": False,
    "display_summary_level": 0,
}


def _options(cls: Any) -> dict[str, Any]:
    """:data:`EXPERIMENT_OPTIONS` that ``cls`` accepts: ``ExistingOfflineExperiment`` lacks some
    (``log_env_network``), and an unknown keyword there used to lose the whole stage."""
    import inspect

    try:
        accepted = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return dict(EXPERIMENT_OPTIONS)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return dict(EXPERIMENT_OPTIONS)
    return {k: v for k, v in EXPERIMENT_OPTIONS.items() if k in accepted}


KEY_TAG = "comet_experiment_key"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".svg"}
#: Local tags not copied to Comet: they change from stage to stage of one run.
LOCAL_ONLY_TAGS = {"stage", "job_id"}
#: Files of the run folder mirrored even when not logged as artifacts (the model, metrics.json
#: with the confusion matrix).
RUN_FOLDER_FILES = ("model.keras", "metrics.json")
#: Set by the process that starts a run (the runner) to its pid: notebook kernels it launches
#: inherit it and leave the Comet mirror to it, so they never import comet_ml.
OWNER_ENV = "DIGITOPS_COMET_OWNER"


def _say(message: str) -> None:
    """One line on stderr: the runner's and notebooks' stdout stay clean."""
    print(f"comet: {comet_env.redact(message)}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- snapshots


@dataclass
class Snapshot:
    """What a Comet experiment should hold for a run (computed from the local store)."""

    params: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[float | None]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    others: dict[str, str] = field(default_factory=dict)
    #: artifact name -> sha256 of the file
    artifacts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "Snapshot | None":
        return None if data is None else cls(**data)


@dataclass
class RunState:
    """Per-run bookkeeping of the mirror (``$DIGITOPS_HOME/comet/runs/<run_id>.json``)."""

    run_id: str
    #: key of the Comet experiment that holds ``sent`` (None: nothing in Comet yet)
    experiment_key: str | None = None
    url: str | None = None
    sent: dict[str, Any] | None = None
    #: an archive waiting for ``digitops sync``: archive, experiment_key, mode, snapshot, reason, created_at
    pending: dict[str, Any] | None = None
    #: half-created online experiments, deleted once a complete one is uploaded
    orphans: list[str] = field(default_factory=list)

    @staticmethod
    def path(run_id: str) -> Path:
        return comet_env.state_dir() / "runs" / f"{run_id}.json"

    @classmethod
    def load(cls, run_id: str) -> "RunState":
        try:
            return cls(**json.loads(cls.path(run_id).read_text()))
        except FileNotFoundError:
            return cls(run_id)
        except (ValueError, TypeError) as exc:
            raise TrackingError(f"corrupt Comet sync state {cls.path(run_id)}: {exc}") from exc

    def save(self) -> None:
        path = self.path(self.run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(path, asdict(self), indent=1, sort_keys=True, default=str)


def _sha256(path: str) -> str | None:
    from digitops.registry.base import sha256_file

    try:
        return sha256_file(path)
    except OSError:
        return None


def run_files(rec: RunRecord) -> dict[str, str]:
    """Files mirrored for a run: its artifacts plus :data:`RUN_FOLDER_FILES` from its run folder."""
    files = dict(rec.artifacts)
    try:
        folder = config.runs_dir() / rec.run_id
    except ValueError:
        return files
    for name in RUN_FOLDER_FILES:
        path = folder / name
        if name not in files and path.is_file():
            files[name] = str(path.resolve())
    return files


def snapshot(rec: RunRecord) -> Snapshot:
    """The Comet view of a local run record."""
    tags = []
    if rec.git_commit:
        tags.append(f"git:{rec.git_commit[:12]}")
    for key, value in sorted(rec.tags.items()):
        if not key.startswith("comet_") and key not in LOCAL_ONLY_TAGS and value:
            tags.append(f"{key}:{value}"[:100])
    others = {"digitops_run_id": rec.run_id, "digitops_status": rec.status, "digitops_project": rec.project}
    if rec.data_checksum:
        others["data_checksum"] = rec.data_checksum
    if rec.git_commit:
        others["git_commit"] = rec.git_commit
    artifacts = {}
    for name, path in sorted(run_files(rec).items()):
        digest = _sha256(path)
        if digest is not None:
            artifacts[name] = digest
    return Snapshot(
        params=dict(rec.params),
        # NaN is not JSON and never equal to itself: Comet gets the finite values only.
        history={k: [x if math.isfinite(x) else None for x in v] for k, v in rec.history.items()},
        metrics={k: v for k, v in rec.metrics.items() if math.isfinite(v)},
        tags=tags,
        others=others,
        artifacts=artifacts,
    )


def _confusion(path: str) -> tuple[list[list[int]], list[str] | None] | None:
    """A confusion matrix in a JSON artifact: a list of rows, or {"confusion_matrix"|"matrix": rows, "labels": ..}."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    labels = None
    if isinstance(data, dict):
        labels = data.get("labels") or data.get("class_names")
        data = data.get("confusion_matrix", data.get("matrix"))
    if (
        isinstance(data, list)
        and data
        and all(isinstance(row, list) and len(row) == len(data) for row in data)
        and all(isinstance(x, (int, float)) for row in data for x in row)
    ):
        return [[int(x) for x in row] for row in data], [str(x) for x in labels] if labels else None
    return None


def _log_delta(exp: Any, rec: RunRecord, base: Snapshot | None, target: Snapshot) -> int:
    """Send to ``exp`` what ``target`` has beyond ``base`` (everything when ``base`` is None)."""
    sent = 0
    if base is None:
        exp.set_name(rec.run_id)  # the name is how comparisons recognise (and exclude) the candidate
    params = {k: v for k, v in target.params.items() if base is None or base.params.get(k) != v}
    if params:
        exp.log_parameters(params)
        sent += len(params)
    by_step: dict[int, dict[str, float]] = {}
    for name, values in target.history.items():
        start = len(base.history.get(name, [])) if base is not None else 0
        for step in range(start, len(values)):
            if values[step] is not None:
                by_step.setdefault(step, {})[name] = values[step]
    for step in sorted(by_step):
        exp.log_metrics(by_step[step], step=step, epoch=step)
        sent += len(by_step[step])
    metrics = {k: v for k, v in target.metrics.items() if base is None or base.metrics.get(k) != v}
    if metrics:
        exp.log_metrics(metrics)
        sent += len(metrics)
    others = {k: v for k, v in target.others.items() if base is None or base.others.get(k) != v}
    if others:
        exp.log_others(others)
        sent += len(others)
    tags = [t for t in target.tags if base is None or t not in base.tags]
    if tags:
        exp.add_tags(tags)
        sent += len(tags)
    files = run_files(rec)
    for name, digest in target.artifacts.items():
        if base is not None and base.artifacts.get(name) == digest:
            continue
        _log_file(exp, name, files[name])
        sent += 1
    return sent


class _DryRun:
    """Stands in for an experiment to count what :func:`_log_delta` would send."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _log_file(exp: Any, name: str, path: str) -> None:
    suffix = Path(name).suffix.lower()
    if suffix == ".keras":
        exp.log_model(config.model_name(), path, file_name="model.keras", overwrite=True)
    elif suffix in IMAGE_SUFFIXES:
        exp.log_image(path, name=Path(name).stem, overwrite=True)
    else:
        if suffix == ".json":
            found = _confusion(path)
            if found is not None:
                matrix, labels = found
                exp.log_confusion_matrix(
                    matrix=matrix,
                    labels=labels or [str(i) for i in range(len(matrix))],
                    title="Confusion matrix (test set)",
                    file_name=f"{Path(name).stem}-confusion-matrix.json",
                )
        exp.log_asset(path, file_name=name, overwrite=True)


# ------------------------------------------------------------------------------- outcome


@dataclass
class SyncOutcome:
    """What happened to one run's Comet mirror."""

    run_id: str
    #: "online" (sent now), "up-to-date", "offline" (archive kept), "uploaded" (archive sent by sync), "failed"
    mode: str
    experiment_key: str | None = None
    url: str | None = None
    archive: str | None = None
    reason: str = ""
    items: int = 0
    seconds: float = 0.0
    deleted_orphans: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One human line."""
        if self.mode == "online":
            extra = f"; removed {len(self.deleted_orphans)} incomplete experiment(s)" if self.deleted_orphans else ""
            return f"run {self.run_id}: {self.items} item(s) sent to {self.url}{extra}"
        if self.mode == "up-to-date":
            return f"run {self.run_id}: already up to date in Comet ({self.url})"
        if self.mode == "uploaded":
            extra = f"; removed {len(self.deleted_orphans)} incomplete experiment(s)" if self.deleted_orphans else ""
            return f"run {self.run_id}: archive {Path(self.archive or '').name} uploaded -> {self.url}{extra}"
        if self.mode == "offline":
            return (
                f"run {self.run_id}: Comet not reached ({self.reason}); kept offline in {self.archive}; "
                "`digitops sync` uploads it"
            )
        return f"run {self.run_id}: {self.reason}"


def _lock(run_id: str) -> Any:
    from filelock import FileLock

    path = comet_env.state_dir() / "runs" / f"{run_id}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=300)


# ------------------------------------------------------------------------------- tracker


class CometTracker(SqliteTracker):
    """The embedded store plus a Comet mirror of every ended run (see the module docstring)."""

    def __repr__(self) -> str:
        return f"CometTracker(db_path={str(self.db_path)!r}, workspace={comet_env.workspace()!r})"

    # -- writes -------------------------------------------------------------------

    def start_run(self, run_id: str, **kwargs: Any) -> RunRecord:
        """Create or resume the run locally.

        Outside a notebook kernel the calling process becomes the run's Comet owner
        (:data:`OWNER_ENV`): the kernels it launches inherit that and leave the
        mirror to it; a notebook run by hand in Jupyter mirrors on its own.
        """
        rec = super().start_run(run_id, **kwargs)
        if "ipykernel" not in sys.modules:
            os.environ[OWNER_ENV] = str(os.getpid())
        return rec

    def end_run(self, run_id: str, status: str = FINISHED) -> None:
        """End the run locally, then mirror it to Comet (or keep it offline). Never fails on Comet."""
        super().end_run(run_id, status)
        owner = config.env(OWNER_ENV)
        if owner and owner != str(os.getpid()):
            return  # a kernel launched by the runner: the runner mirrors when it ends the run
        try:
            outcome = self.sync_run(run_id)
        except Exception as exc:  # noqa: BLE001 - the run is recorded locally; Comet must not fail it
            _say(f"run {run_id}: not mirrored to Comet ({type(exc).__name__}: {exc}); the local record is complete")
            return
        _say(f"{outcome.describe()} ({outcome.seconds:.1f} s)")

    # -- mirror -------------------------------------------------------------------

    def sync_run(self, run_id: str, *, use_memo: bool = True) -> SyncOutcome:
        """Bring Comet up to date with the local run: online if possible, else an offline archive."""
        start = time.monotonic()
        with _lock(run_id):
            rec = self.get_run(run_id)
            state = RunState.load(run_id)
            target = snapshot(rec)
            reach = comet_env.check_online(use_memo=use_memo)
            reason = reach.reason
            if reach.ok:
                try:
                    if state.pending:
                        # Recovering: compare with what the Comet experiment really holds, send the rest.
                        outcome = self._reconcile(rec, state, target)
                    else:
                        base = Snapshot.from_json(state.sent)
                        if state.experiment_key and base == target:
                            outcome = SyncOutcome(run_id, "up-to-date", state.experiment_key, state.url)
                        else:
                            outcome = self._push_online(rec, state, base, target)
                except Exception as exc:  # noqa: BLE001 - any SDK/network failure: keep it for sync
                    outcome = SyncOutcome(run_id, "failed", reason=comet_env.redact(f"{type(exc).__name__}: {exc}"))
                    comet_env.mark_unreachable(outcome.reason)
                    state = RunState.load(run_id)
                if outcome.mode in ("online", "up-to-date", "uploaded"):
                    outcome.seconds = time.monotonic() - start
                    return outcome
                reason = outcome.reason
            try:
                outcome = self._keep_offline(rec, state, target, reason)
            except Exception as exc:  # noqa: BLE001 - no archive: still listed for `digitops sync`
                outcome = self._mark_pending(state, target, f"{reason}; no offline archive ({type(exc).__name__}: {exc})")
            outcome.seconds = time.monotonic() - start
            return outcome

    def _mark_pending(self, state: RunState, target: Snapshot, reason: str) -> SyncOutcome:
        """Remember that Comet lacks part of the run even without an archive (sync compares and sends)."""
        state = RunState.load(state.run_id)
        old = dict(state.pending or {})
        state.pending = {
            "archive": old.get("archive"),
            "experiment_key": old.get("experiment_key") or state.experiment_key,
            "mode": old.get("mode") or ("existing" if state.experiment_key else "new"),
            "snapshot": asdict(target),
            "reason": reason,
            "created_at": time.time(),
        }
        state.save()
        return SyncOutcome(state.run_id, "offline", state.experiment_key, state.url, old.get("archive"), reason)

    def _reconcile(self, rec: RunRecord, state: RunState, target: Snapshot) -> SyncOutcome:
        """Make the Comet experiment hold exactly ``target``: idempotent, whatever reached Comet before.

        A kept archive of a run Comet never saw is uploaded whole (it keeps the original
        timestamps); otherwise, and after that upload, what Comet holds is read back and
        only what it lacks is sent, so a half-applied earlier attempt is never replayed.
        """
        pending = dict(state.pending or {})
        archive = pending.get("archive")
        key = state.experiment_key
        if key is None and pending.get("mode") == "new":
            key = pending.get("experiment_key")
        remote = remote_snapshot(key, target, state, run_files(rec)) if key else None
        deleted: list[str] = []
        uploaded_now = False
        if remote is None and pending.get("mode") == "new" and archive and Path(archive).is_file():
            uploaded = _upload_pending(self, state)
            if uploaded.mode != "uploaded":
                return uploaded
            uploaded_now, deleted = True, uploaded.deleted_orphans
            key = state.experiment_key
            remote = remote_snapshot(key, target, state, run_files(rec)) if key else None
        if remote is None:
            state.experiment_key = None  # never reached Comet (or deleted there): a new experiment
            outcome = self._push_online(rec, state, None, target)
        elif _log_delta(_DryRun(), rec, remote, target) == 0 and remote.others.get("Name", rec.run_id) == rec.run_id:
            state.experiment_key = key  # Comet already holds all of it: nothing is sent twice
            state.sent = asdict(target)
            state.save()
            outcome = SyncOutcome(rec.run_id, "uploaded" if uploaded_now else "up-to-date", key, state.url, archive)
            self.set_tags(rec.run_id, {KEY_TAG: str(key)})
        else:
            state.experiment_key = key
            outcome = self._push_online(rec, state, remote, target)
        if outcome.mode not in ("online", "up-to-date", "uploaded"):
            return outcome
        state = RunState.load(rec.run_id)
        if archive:
            Path(archive).unlink(missing_ok=True)
        state.pending = None
        state.save()
        deleted += _delete_orphans(state)
        outcome.deleted_orphans = deleted
        return outcome

    def _push_online(
        self, rec: RunRecord, state: RunState, base: Snapshot | None, target: Snapshot
    ) -> SyncOutcome:
        comet_ml = comet_env.import_comet()
        existing = state.experiment_key
        fell_back: list[str] = []
        scratch = tempfile.mkdtemp(prefix="digitops-comet-")
        key, url, items, error, exp = None, None, 0, "", None
        try:
            if existing:
                exp = comet_ml.ExistingExperiment(
                    experiment_key=existing, offline_directory=scratch, **_options(comet_ml.ExistingExperiment)
                )
            else:
                exp = comet_ml.Experiment(
                    project_name=rec.project,
                    workspace=comet_env.workspace(),
                    offline_directory=scratch,
                    **_options(comet_ml.Experiment),
                )
            # The SDK calls this when it had to fall back to an offline archive mid-way.
            exp.set_offline_zip_uploader(fell_back.append)
            key = exp.get_key()
            if not exp.alive:
                error = "the experiment could not be created or continued"
            else:
                items = _log_delta(exp, rec, base if existing else None, target)
                if existing and base is not None and base.others.get("Name", rec.run_id) != rec.run_id:
                    exp.set_name(rec.run_id)
                if not exp.flush() or not exp.alive:
                    error = "not all data could be flushed to Comet"
                url = exp.url
        except Exception as exc:  # noqa: BLE001 - any SDK failure means: keep it offline
            error = f"{type(exc).__name__}: {exc}"
        finally:
            if exp is not None:
                try:
                    exp.end()
                except Exception as exc:  # noqa: BLE001 - ExperimentCleaningException and the like
                    error = error or f"{type(exc).__name__}: {exc}"
            shutil.rmtree(scratch, ignore_errors=True)
        if fell_back and not error:
            error = "the connection dropped while sending"
        if error:
            if not existing and key and key not in state.orphans:
                state.orphans.append(key)
            state.save()
            comet_env.mark_unreachable(error)
            return SyncOutcome(rec.run_id, "failed", key, reason=error)
        # A handshake without a URL must not erase the good one stored for the run.
        url = url or state.url
        state.experiment_key = key
        state.url = url
        state.sent = asdict(target)
        state.save()
        comet_env.mark_reachable()
        self.set_tags(rec.run_id, {KEY_TAG: str(key)})
        if url:
            self.set_url(rec.run_id, url)
        return SyncOutcome(rec.run_id, "online", key, url, items=items)

    def _keep_offline(self, rec: RunRecord, state: RunState, target: Snapshot, reason: str) -> SyncOutcome:
        comet_ml = comet_env.import_comet()
        out_dir = comet_env.offline_dir()
        out_dir.mkdir(parents=True, exist_ok=True)
        written: list[str] = []
        base = Snapshot.from_json(state.sent) if state.experiment_key else None
        if state.experiment_key:
            # Continue the experiment Comet already has; the archive carries only what it lacks.
            exp = comet_ml.ExistingOfflineExperiment(
                experiment_key=state.experiment_key,
                offline_directory=str(out_dir),
                **_options(comet_ml.ExistingOfflineExperiment),
            )
        else:
            exp = comet_ml.OfflineExperiment(
                project_name=rec.project,
                workspace=comet_env.workspace(),
                offline_directory=str(out_dir),
                **_options(comet_ml.OfflineExperiment),
            )
        exp.set_offline_zip_uploader(written.append)
        items = _log_delta(exp, rec, base, target)
        key = exp.get_key()
        exp.end()
        archive = written[0] if written else str(out_dir / f"{key}.zip")
        if not Path(archive).is_file():
            raise TrackingError(f"the offline archive for run {rec.run_id} was not written ({archive})")
        old = (state.pending or {}).get("archive")
        if old and Path(old) != Path(archive):
            Path(old).unlink(missing_ok=True)  # superseded: the new archive holds all of it
        state.pending = {
            "archive": archive,
            "experiment_key": key,
            "mode": "existing" if state.experiment_key else "new",
            "snapshot": asdict(target),
            "reason": reason,
            "created_at": time.time(),
        }
        state.save()
        return SyncOutcome(rec.run_id, "offline", key, state.url, archive, reason, items)

    # -- reads --------------------------------------------------------------------

    def metric_summary(
        self,
        metric: str,
        *,
        project: str | None = None,
        exclude: Iterable[str] = (),
        data_checksum: str | None = None,
        higher_is_better: bool = True,
    ) -> MetricSummary:
        """Mean and best of ``metric`` over the Comet project's finished experiments, less ``exclude``.

        Raises :class:`TrackingError` when Comet cannot be read: the local store holds only
        this machine's runs, and a gate judged against it would pass what it never saw
        (:func:`digitops.compare.compare` decides what to do, see ``--allow-unjudged``).
        """
        reach = comet_env.check_online()
        if not reach.ok:
            raise TrackingError(f"the Comet project cannot be read: {reach.reason}")
        try:
            return comet_metric_summary(
                metric,
                project=project or config.project_name(),
                exclude=exclude,
                data_checksum=data_checksum,
                higher_is_better=higher_is_better,
            )
        except Exception as exc:  # noqa: BLE001 - any SDK/network error: the history is not readable
            reason = comet_env.redact(f"{type(exc).__name__}: {exc}")
            comet_env.mark_unreachable(reason)
            raise TrackingError(f"the Comet project cannot be read: {reason}") from exc


def _api() -> Any:
    comet_ml = comet_env.import_comet()
    return comet_ml.API(cache=False)


def comet_workspace(api: Any) -> str:
    """``$COMET_WORKSPACE``, else the API key's default workspace."""
    return comet_env.workspace() or str(api.get_default_workspace())


def _experiments(api: Any, workspace: str, project: str) -> Iterator[Any]:
    from comet_ml.exceptions import NotFound

    try:
        yield from api.get_experiments(workspace, project_name=project)
    except NotFound:
        return  # no such project yet: no experiments


#: Experiments per ``experiments/multi-metric-chart`` request (the SDK's own page size for searches).
METRICS_PAGE = 100


def _query_keys(client: Any, workspace: str, project: str, columns: dict[str, Any], query: Any) -> set[str]:
    """Keys of the project's experiments matching ``query``: one ``project/query`` request.

    ``API.query`` would then fetch every match's metadata, one request each; its REST client's
    ``query_project`` answers with the keys alone. A filter on a column no experiment has
    (``QueryException``) matches nothing; any other failure raises.
    """
    from comet_ml.exceptions import QueryException

    try:
        predicates = query.get_predicates(columns)
    except QueryException:
        return set()
    keys = client.query_project(workspace, project, predicates, False).json().get("experimentKeys")
    if not isinstance(keys, list):
        raise TrackingError(f"Comet answered the query on {workspace}/{project} without experiment keys")
    return {str(k) for k in keys}


def _matching_keys(api: Any, workspace: str, project: str, exclude: set[str], data_checksum: str | None) -> set[str]:
    """Keys of the project's finished experiments on ``data_checksum`` whose run id is not in ``exclude``."""
    from comet_ml.query import Other

    client = api._client  # noqa: SLF001 - the REST client: see _query_keys
    columns = client.get_project_columns(workspace, project)
    if not isinstance(columns, dict) or not isinstance(columns.get("columns"), list):
        raise TrackingError(f"Comet answered the column names of {workspace}/{project} with {columns!r:.200}")
    wanted = Other("digitops_status") == FINISHED
    if data_checksum is not None:
        wanted = wanted & (Other("data_checksum") == data_checksum)
    keys = _query_keys(client, workspace, project, columns, wanted)
    # Excluded by positive queries, one per run id (compare excludes one): what "!=" does with an
    # experiment lacking the value is not documented, and this endpoint does not take "|".
    for run_id in sorted(exclude) if keys else []:
        keys -= _query_keys(client, workspace, project, columns, Other("digitops_run_id") == run_id)
    return keys


def _current_values(api: Any, keys: list[str], metric: str) -> dict[str, float]:
    """The current (last logged) value of ``metric`` per experiment: one request per :data:`METRICS_PAGE` keys."""
    out: dict[str, float] = {}
    for i in range(0, len(keys), METRICS_PAGE):
        page = keys[i : i + METRICS_PAGE]
        # The REST client, not API.get_metrics_for_chart, which answers [] for a reply it cannot use.
        reply = api._client.get_experiment_multi_metrics(page, [metric], None, True, True).json()  # noqa: SLF001
        experiments = reply.get("experiments") if isinstance(reply, dict) else None
        if not isinstance(experiments, dict):
            raise TrackingError(f"Comet answered the metrics of {len(page)} experiments with {reply!r:.200}")
        for key, data in experiments.items():
            if key not in page:
                continue  # never an experiment that was not asked for
            for series in (data or {}).get("metrics") or []:
                values = series.get("values") or []
                if series.get("metricName") != metric or not values:
                    continue
                stamps = list(series.get("timestamps") or []) + [0] * len(values)
                # Comet's current value is the last one logged: the latest timestamp, the last on a tie.
                last = max(range(len(values)), key=lambda j: (stamps[j] or 0, j))
                try:
                    value = float(values[last])  # sent as strings, like the summaries
                except (TypeError, ValueError):
                    continue
                if not math.isnan(value):
                    out[str(key)] = value
    return out


def comet_metric_summary(
    metric: str,
    *,
    project: str,
    exclude: Iterable[str] = (),
    data_checksum: str | None = None,
    higher_is_better: bool = True,
) -> MetricSummary:
    """:meth:`Tracker.metric_summary` computed from Comet's project experiments (no local fallback).

    Multi-experiment reads, so the cost grows with pages, not experiments: the project listing
    (names, keys, start times), the column names and one ``project/query`` for the filters
    (``digitops_status`` is finished, same ``data_checksum``), one more per excluded run id, and
    one ``experiments/multi-metric-chart`` per :data:`METRICS_PAGE` matching experiments.
    Experiments without a ``digitops_status`` (not logged by digitops) do not count. Any failure
    raises: a partial history is no history.
    """
    api = _api()
    workspace = comet_workspace(api)
    excluded = {str(e) for e in exclude}
    listed = {exp.key: exp for exp in _experiments(api, workspace, project)}
    listed = {k: e for k, e in listed.items() if k not in excluded and e.name not in excluded}
    keys = sorted(_matching_keys(api, workspace, project, excluded, data_checksum) & set(listed)) if listed else []
    values = _current_values(api, keys, metric) if keys else {}
    found = [
        (value, str(listed[key].name or key), int(listed[key].start_server_timestamp or 0))
        for key, value in values.items()
        if key in listed
    ]
    return summarise(metric, found, higher_is_better)


def summarise(metric: str, found: list[tuple[float, str, int]], higher_is_better: bool = True) -> MetricSummary:
    """A :class:`MetricSummary` of ``(value, run id, start time)`` triples; ties for best go to the earliest."""
    if not found:
        return MetricSummary(metric=metric, count=0, mean=None, best=None, best_run_id=None, worst=None)
    values = [v for v, _, _ in found]
    # Ties for best go to the earliest run, as in the embedded store.
    ranked = sorted(found, key=lambda t: (-t[0] if higher_is_better else t[0], t[2]))
    hi, lo = max(values), min(values)
    return MetricSummary(
        metric=metric,
        count=len(found),
        mean=sum(values) / len(values),
        best=hi if higher_is_better else lo,
        best_run_id=ranked[0][1],
        worst=lo if higher_is_better else hi,
    )


# ------------------------------------------------------------------------------- sync


def _upload_pending(tracker: SqliteTracker, state: RunState) -> SyncOutcome:
    """Upload ``state.pending`` with the SDK's uploader; on success Comet holds its snapshot."""
    pending = dict(state.pending or {})
    archive = str(pending.get("archive", ""))
    key = str(pending.get("experiment_key", ""))
    start = time.monotonic()
    if not Path(archive).is_file():
        return SyncOutcome(state.run_id, "failed", key, archive=archive, reason=f"archive {archive} is missing")
    comet_env.import_comet()
    from comet_ml.offline import upload_single_offline_experiment

    api = _api()
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
    deleted = _delete_orphans(state, api)
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


def _delete_orphans(state: RunState, api: Any = None) -> list[str]:
    """Delete the run's half-created online experiments (never the one holding the run); saves ``state``."""
    if not state.orphans:
        return []
    api = api or _api()
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
            _say(f"run {state.run_id}: could not remove incomplete experiment {orphan}: {exc}")
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
    api = _api()
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
                    with _lock(state.run_id):
                        outcome.deleted_orphans += _delete_orphans(RunState.load(state.run_id))
            else:
                with _lock(state.run_id):
                    state = RunState.load(state.run_id)
                    if state.pending and state.pending.get("archive"):
                        outcome = _upload_pending(tracker, state)
                    elif state.pending:
                        outcome = SyncOutcome(state.run_id, "failed", reason="no archive and no local record to send")
                    else:
                        deleted = _delete_orphans(state)
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
