"""The shared destination when Comet is on: one dedicated experiment holding every field drawing as an asset.

Deployed dashboards run several replicas, each with its own embedded store.
``digitops feedback sync`` (and ``export``, first) uploads this machine's
drawings that Comet lacks and adds Comet's drawings this machine lacks, so
every replica and CI export the same set. The experiment is named
:data:`EXPERIMENT_NAME` in the project ``<project>-field-drawings`` (never the
project whose runs are compared); each drawing is the asset ``<hash>.json``
holding the canvas PNG and the labels. A downloaded drawing must preprocess to
the image its name promises, else it is refused. Dashboard kernels never
import comet_ml: syncing is a separate command.

Limits: a label corrected on one replica after both have the drawing is not
propagated (each keeps its own); uploads happen at sync time, not per click.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from digitops import comet_env, config
from digitops.feedback import FeedbackError, FeedbackStoreError
from digitops.feedback.exchange import KEPT, REFUSED, SyncResult, payload, receive
from digitops.feedback.store import LocalFeedbackStore

EXPERIMENT_NAME = "digitops-field-drawings"
PROJECT_SUFFIX = "-field-drawings"


def project() -> str:
    """The Comet project holding the dedicated experiment."""
    return config.project_name() + PROJECT_SUFFIX


def sync(store: LocalFeedbackStore) -> SyncResult:
    """Send and receive drawings; a FeedbackStoreError (one line, key redacted) when Comet cannot be used."""
    try:
        return _sync(store)
    except FeedbackError:
        raise
    except Exception as exc:  # noqa: BLE001 - SDK, network, HTTP errors: one line, nothing lost locally
        comet_env.mark_unreachable(str(exc))
        raise FeedbackStoreError(
            f"the field drawings could not be synced with Comet ({type(exc).__name__}: "
            f"{comet_env.redact(exc)}); this machine's drawings are kept and sent next time"
        ) from None


def _sync(store: LocalFeedbackStore) -> SyncResult:
    from digitops.comet.queries import _experiments, comet_api, comet_workspace
    from digitops.comet.state import experiment_options

    comet_ml = comet_env.import_comet()
    api = comet_api()
    workspace = comet_workspace(api)
    dedicated = [e for e in _experiments(api, workspace, project()) if e.get_name() == EXPERIMENT_NAME]
    remote: dict[str, tuple[Any, str]] = {}
    for exp in dedicated:
        for asset in exp.get_asset_list():
            name = str(asset.get("fileName", ""))
            if name.endswith(".json"):
                remote.setdefault(name[:-5], (exp, str(asset["assetId"])))
    local = {r.hash: r for r in store.records()}

    pulled = refused = 0
    for digest, (exp, asset_id) in sorted(remote.items()):
        if digest in local:
            continue
        kept = receive(store, exp.get_asset(asset_id, return_type="binary"), digest)
        refused += kept == REFUSED  # left in Comet, never kept here
        pulled += kept == KEPT

    missing = [r for h, r in local.items() if h not in remote]
    key = dedicated[0].key if dedicated else None
    if missing:
        scratch = tempfile.mkdtemp(prefix="digitops-feedback-comet-")
        exp = None
        try:
            if key:
                exp = comet_ml.ExistingExperiment(experiment_key=key, offline_directory=scratch,
                                                  **experiment_options(comet_ml.ExistingExperiment))
            else:
                exp = comet_ml.Experiment(project_name=project(), workspace=workspace, offline_directory=scratch,
                                          **experiment_options(comet_ml.Experiment))
                exp.set_name(EXPERIMENT_NAME)
            key = exp.get_key()
            for record in missing:
                exp.log_asset_data(payload(store, record), name=f"{record.hash}.json", overwrite=True,
                                   metadata={"label": record.label})
            if not exp.flush() or not exp.alive:
                raise FeedbackStoreError("the field drawings could not all be sent to Comet; they are kept here "
                                         "and sent by the next sync")
        finally:
            if exp is not None:
                exp.end()
            shutil.rmtree(scratch, ignore_errors=True)
    comet_env.mark_reachable()
    return SyncResult(len(missing), pulled, refused, key)
