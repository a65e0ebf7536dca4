"""Comet tracking: the embedded SQLite store, mirrored into one Comet experiment per run.

Design (why a mirror). A run is written by two processes: the runner creates
and ends it, the notebook kernel logs params, per-epoch metrics and images.
Both use :class:`CometTracker`, and every call first goes to the local SQLite
store (its :attr:`~CometTracker.local` :class:`~digitops.tracking.sqlite.SqliteTracker`), so the
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

import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

from digitops import comet_env, config
from digitops.comet.offline import delete_orphans, upload_pending, remote_snapshot
from digitops.comet.queries import comet_metric_summary
from digitops.comet.send import DryRun, log_delta
from digitops.comet.state import (
    KEY_TAG,
    OWNER_ENV,
    RunState,
    Snapshot,
    SyncOutcome,
    run_lock,
    experiment_options,
    say,
    run_files,
    snapshot,
)
from digitops.tracking.base import MetricSummary, RunRecord, TrackingError
from digitops.tracking.mirror import LocalFirst


# ------------------------------------------------------------------------------- tracker


class ArchiveNotUploaded(TrackingError):
    """A run's kept offline archive could not be uploaded (Comet unreachable or refusing)."""


class CometTracker(LocalFirst):
    """The embedded store plus a Comet mirror of every ended run (see the module docstring).

    Composition, not inheritance: every record goes to :attr:`local` (a
    :class:`SqliteTracker`); this class adds the mirror on ``start_run`` /
    ``end_run`` and reads comparisons from Comet.
    """

    OWNER_ENV = OWNER_ENV
    SERVICE = "Comet"

    def __repr__(self) -> str:
        return f"CometTracker(db_path={str(self.db_path)!r}, workspace={comet_env.workspace()!r})"

    def list_runs(self, project: str | None = None, status: str | None = None, limit: int | None = None) -> list[RunRecord]:
        return self.local.list_runs(project=project, status=status, limit=limit)

    def find_reusable(
        self, fingerprint: str, project: str | None = None, *, tag: str = "digitops.fingerprint"
    ) -> RunRecord | None:
        """From the embedded store, not Comet: reuse needs the run's folder (model, notebooks),
        and only runs recorded here (this machine, or CI's cached store) can have it."""
        return self.local.find_reusable(fingerprint, project, tag=tag)

    # -- writes -------------------------------------------------------------------

    def say(self, message: str) -> None:
        say(message)

    def ended_line(self, outcome: SyncOutcome) -> str:
        return f"{outcome.describe()} ({outcome.seconds:.1f} s)"

    # -- mirror -------------------------------------------------------------------

    def sync_run(self, run_id: str, *, use_memo: bool = True) -> SyncOutcome:
        """Bring Comet up to date with the local run: online if possible, else an offline archive."""
        start = time.monotonic()
        with run_lock(run_id):
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
            uploaded = upload_pending(self, state)
            if uploaded.mode != "uploaded":
                return uploaded
            uploaded_now, deleted = True, uploaded.deleted_orphans
            key = state.experiment_key
            remote = remote_snapshot(key, target, state, run_files(rec)) if key else None
        if remote is None:
            state.experiment_key = None  # never reached Comet (or deleted there): a new experiment
            outcome = self._push_online(rec, state, None, target)
        elif log_delta(DryRun(), rec, remote, target) == 0 and remote.others.get("Name", rec.run_id) == rec.run_id:
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
        deleted += delete_orphans(state)
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
                    experiment_key=existing, offline_directory=scratch, **experiment_options(comet_ml.ExistingExperiment)
                )
            else:
                exp = comet_ml.Experiment(
                    project_name=rec.project,
                    workspace=comet_env.workspace(),
                    offline_directory=scratch,
                    **experiment_options(comet_ml.Experiment),
                )
            # The SDK calls this when it had to fall back to an offline archive mid-way.
            exp.set_offline_zip_uploader(fell_back.append)
            key = exp.get_key()
            if not exp.alive:
                error = "the experiment could not be created or continued"
            else:
                items = log_delta(exp, rec, base if existing else None, target)
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
                **experiment_options(comet_ml.ExistingOfflineExperiment),
            )
        else:
            exp = comet_ml.OfflineExperiment(
                project_name=rec.project,
                workspace=comet_env.workspace(),
                offline_directory=str(out_dir),
                **experiment_options(comet_ml.OfflineExperiment),
            )
        exp.set_offline_zip_uploader(written.append)
        items = log_delta(exp, rec, base, target)
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

    def logged_experiment(self, run_id: str) -> tuple[str | None, set[str]]:
        """For the registry: ``(experiment key, SHA256 of each file Comet holds)`` of the run's mirror.

        A kept archive is uploaded first (:class:`ArchiveNotUploaded` when that fails);
        ``(None, set())`` when the run has no Comet experiment.
        """
        state = RunState.load(run_id)
        if state.pending:
            outcome = self.sync_run(run_id)
            if outcome.mode not in ("online", "up-to-date"):
                raise ArchiveNotUploaded(outcome.reason or "the run's archive could not be uploaded")
            state = RunState.load(run_id)
        if not state.experiment_key or not state.sent:
            return None, set()
        return state.experiment_key, set((state.sent.get("artifacts") or {}).values())

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
