"""The model registry on MLflow: GitLab's built-in model registry, or any MLflow server.

Only GitLab's documented subset is used (see :mod:`digitops.mlflow.rest`), so the
facts of that subset shape the design:

- GitLab ignores ``model-versions/create``'s ``run_id`` and ``source``: every model
  version *is* a run (a "candidate" GitLab creates, ``model_version.run_id``); its
  version is the SemVer given as tag ``gitlab.version``. There is no
  set-model-version-tag, no model-versions/search, no stages, no aliases.
- On an MLflow server the version's run is the one digitops creates and passes as
  ``run_id``; versions are integers there, so the SemVer lives in tags.

So each version has a **version run** in the experiment ``[model]<name>`` (GitLab
creates that experiment with the model; on an MLflow server digitops does) that
carries everything digitops needs as run tags: ``digitops.version`` (SemVer),
``digitops.run_id`` (the run that made the model), ``digitops.sha256``,
``digitops.status`` (the status it was registered with), ``digitops.metrics``; its
artifact root holds ``model.keras``. ``digitops.status`` is written last: a run
without it is a registration that did not finish, which the next attempt completes.

Status changes are an append-only log, because GitLab's run tags are create-only
(``runs/set-tag`` of a key the run has is refused, ``runs/log-batch`` keeps the old
value): each change writes a new tag ``digitops.status.<n>`` = compact JSON
``{status, at, promoted_at, rolled_back}`` with ``n`` one above the highest present;
the highest ``n`` is the version's state (versions without one fall back to the
plain ``digitops.status`` / ``digitops.promoted_at`` / ``digitops.rolled_back``).
On GitLab the create-only key makes each change a compare-and-swap: a refused
``digitops.status.<n>`` means another writer took ``n``; the run is read again and
the change decided again on what it now says. Versions are
listed with ``runs/search`` on that one experiment (paged). The model version's
description repeats status, run and checksum for people reading GitLab's pages.

Numbering: the next SemVer after the highest the server holds (version runs and
``get-latest-versions``); GitLab refuses a taken version and the numbers are read
again. A create whose answer was lost (saved, then 5xx) is recognised by its tags
``digitops.run_id`` + ``digitops.sha256`` on the latest version, never numbered twice.

Production: the version whose run says ``production``; if an interrupted promotion
left two, the newest ``promoted_at`` wins and a warning says so. Rollback walks back
through ``promoted_at``. Everything that decides production fails closed: a server
that cannot be read raises :class:`~digitops.errors.RegistryError`.

Offline: when the server is unreachable at ``register``, the model is kept under
``$DIGITOPS_HOME/mlflow/`` as a pending registration shown as ``pending-N``
(:mod:`digitops.mlflow.pending`); :func:`sync_registrations` (``digitops sync``)
registers it later, idempotently.

Size (over 400 lines): registration that resumes after a crash or a lost answer at every
step, numbering that stays unique on GitLab and on an MLflow server, statuses with their
promotion history, and verified downloads, all expressed in one run's tags.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from digitops import atomic
from digitops.errors import RegistryError
from digitops.mlflow import pending
from digitops.mlflow.rest import MlflowError, MlflowRefused, MlflowRest, MlflowUnavailable
from digitops.registry.base import ARCHIVED, PRODUCTION, STAGING, ModelVersion, Registry, sha256_file
from digitops.registry.versions import (
    VERSION_RE,
    check_new_version,
    check_status,
    current_user,
    next_version,
    parse_version,
)

MODEL_FILE = "model.keras"
EXPERIMENT_PREFIX = "[model]"
GITLAB_VERSION = "gitlab.version"
T_MODEL, T_VERSION, T_RUN, T_SHA = "digitops.model", "digitops.version", "digitops.run_id", "digitops.sha256"
T_STATUS, T_PROMOTED, T_ROLLED_BACK = "digitops.status", "digitops.promoted_at", "digitops.rolled_back"
T_METRICS, T_BY, T_KEY, T_URL = "digitops.metrics", "digitops.created_by", "digitops.model_version", "digitops.url"
#: a status change, appended: digitops.status.<n>
STATUS_LOG = re.compile(r"^digitops\.status\.(\d+)$")
#: compare-and-swap attempts of one status change before giving up (writers at once)
CHANGE_TRIES = 12


class MlflowRegistryUnavailable(RegistryError):
    """The MLflow server could not be read or written now (unreachable, 5xx, timeouts)."""


def _say(message: str) -> None:
    print(f"mlflow: {message}", file=sys.stderr, flush=True)


def _tags(obj: dict[str, Any]) -> dict[str, str]:
    """A run's (``data.tags``) or a model version's (``tags``) tags as a dict."""
    raw = (obj.get("data") or {}).get("tags") if "info" in obj else obj.get("tags")
    return {str(t.get("key")): str(t.get("value", "")) for t in raw or [] if isinstance(t, dict)}


def _semver_of(mv: dict[str, Any]) -> str | None:
    """The SemVer of a model version: GitLab's alias, else the tags, else the version itself."""
    tags = _tags(mv)
    for candidate in [*(mv.get("aliases") or []), tags.get(GITLAB_VERSION), tags.get(T_VERSION), mv.get("version")]:
        if candidate and VERSION_RE.match(str(candidate)):
            return str(candidate)
    return None


def _run_id(run: dict[str, Any]) -> str:
    return str(run["info"]["run_id"])


def _top(tags: dict[str, str]) -> int:
    """The highest ``n`` of the run's ``digitops.status.<n>`` log (0: no change since registration)."""
    return max((int(m.group(1)) for m in map(STATUS_LOG.match, tags) if m), default=0)


def _state(tags: dict[str, str]) -> dict[str, str]:
    """A version run's current status, promoted_at and rolled_back: its newest log entry, else the plain tags.

    A damaged newest entry raises :class:`RegistryError` (fail closed: an older one may be stale).
    """
    n = _top(tags)
    if not n:
        return {"status": tags.get(T_STATUS, ""), "promoted_at": tags.get(T_PROMOTED, ""),
                "rolled_back": tags.get(T_ROLLED_BACK, "")}
    key = f"{T_STATUS}.{n}"
    try:
        entry = json.loads(tags[key])
        state = {k: str(entry.get(k) or "") for k in ("status", "promoted_at", "rolled_back")}
        check_status(state["status"])
    except (ValueError, TypeError, AttributeError, RegistryError) as exc:
        raise RegistryError(f"version run tag {key} is unreadable ({tags[key][:80]!r}): {exc}") from exc
    return state


class MlflowRegistry(Registry):
    """Model versions as runs of ``[model]<name>`` plus MLflow model versions (see the module docstring)."""

    def __init__(self, rest: MlflowRest | None = None) -> None:
        self._rest = rest
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"MlflowRegistry({self.rest!r})"

    @property
    def rest(self) -> MlflowRest:
        if self._rest is None:
            self._rest = MlflowRest()
        return self._rest

    def _fail(self, what: str, exc: MlflowError) -> RegistryError:
        """The error a failed server call becomes: unavailable (try later) or refused (a real no)."""
        text = self.rest.redact(str(exc))
        if isinstance(exc, MlflowUnavailable):
            return MlflowRegistryUnavailable(f"MLflow's model registry could not be reached for {what}: {text}")
        return RegistryError(f"MLflow's model registry refused {what}: {text}")

    # -- reading the server --------------------------------------------------------------

    def _experiment(self, name: str, create: bool) -> str | None:
        try:
            return self.rest.experiment_id(EXPERIMENT_PREFIX + name, create=create)
        except MlflowRefused as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def _runs(self, name: str, create: bool = False) -> list[dict[str, Any]]:
        """Every run of the model's experiment (filtered here: GitLab's search filters are limited)."""
        exp = self._experiment(name, create)
        return [] if exp is None else list(self.rest.search_runs(exp, page_size=500))

    def _latest(self, name: str) -> list[dict[str, Any]]:
        try:
            answer = self.rest.call("POST", "registered-models/get-latest-versions", {"name": name})
        except MlflowRefused as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return []
            raise
        return list(answer.get("model_versions") or [])

    def _records(self, name: str) -> list[tuple[ModelVersion, dict[str, Any]]]:
        """Finished versions with their runs, oldest first (one per SemVer: the earliest run keeps it)."""
        seen: dict[str, tuple[ModelVersion, dict[str, Any]]] = {}
        runs = sorted(self._runs(name), key=lambda r: int(r["info"].get("start_time") or 0))
        for run in runs:
            mv = self._to_version(name, run)
            if mv is not None and mv.version not in seen:
                seen[mv.version] = (mv, run)
        return sorted(seen.values(), key=lambda rec: parse_version(rec[0].version))

    def _read(self, name: str, what: str) -> list[tuple[ModelVersion, dict[str, Any]]]:
        try:
            return self._records(name)
        except MlflowError as exc:
            raise self._fail(what, exc) from exc

    def _to_version(self, name: str, run: dict[str, Any]) -> ModelVersion | None:
        tags = _tags(run)
        version = tags.get(T_VERSION, "")
        if tags.get(T_MODEL) != name or not VERSION_RE.match(version) or not tags.get(T_STATUS):
            return None  # not a version run, or a registration that has not finished
        state = _state(tags)
        status = state["status"]
        try:
            metrics = {str(k): float(v) for k, v in json.loads(tags.get(T_METRICS) or "{}").items()}
        except (ValueError, TypeError, AttributeError):
            metrics = {}
        started = int(run["info"].get("start_time") or 0)
        extra = [f"mlflow-run:{_run_id(run)}"]
        if tags.get(T_KEY):
            extra.append(f"model-version:{tags[T_KEY]}")
        if state["promoted_at"]:
            extra.append(f"promoted:{state['promoted_at']}")
        if state["rolled_back"] == "1":
            extra.append("rolled-back")
        return ModelVersion(
            name=name, version=version, run_id=tags.get(T_RUN, ""), sha256=tags.get(T_SHA, ""), status=status,
            metrics=metrics, created_by=tags.get(T_BY, ""),
            created_at=datetime.fromtimestamp(started / 1000, timezone.utc).isoformat() if started else "",
            uri=f"{str(run['info'].get('artifact_uri', '')).rstrip('/')}/{MODEL_FILE}",
            url=tags.get(T_URL) or None, tags=extra,
        )

    def _production(
        self, records: list[tuple[ModelVersion, dict[str, Any]]]
    ) -> tuple[ModelVersion, dict[str, Any]] | None:
        found = [rec for rec in records if rec[0].status == PRODUCTION]
        if not found:
            return None
        found.sort(key=lambda rec: (_state(_tags(rec[1]))["promoted_at"], parse_version(rec[0].version)))
        if len(found) > 1 and "two" not in self._warned:
            self._warned.add("two")
            _say(
                f"{len(found)} versions of {found[-1][0].name} say production (a promotion was interrupted): "
                f"using {found[-1][0].version}, the latest promoted; promote it again to settle it"
            )
        return found[-1]

    # -- the Registry interface: reads ---------------------------------------------------

    def list_versions(self, name: str) -> list[ModelVersion]:
        """All versions of ``name`` in the server, oldest first, then any still pending locally."""
        versions = [mv for mv, _ in self._read(name, "listing versions")]
        return versions + [pending.as_version(i) for i in pending.registrations() if i["name"] == name]

    def get_version(self, name: str, version: str) -> ModelVersion:
        """One version (a ``pending-N`` one from the local copy), or :class:`RegistryError` naming the known ones."""
        if version.startswith(pending.PREFIX):
            return pending.as_version(pending.find(name, version))
        records = self._read(name, f"reading {name} {version}")
        for mv, _ in records:
            if mv.version == version:
                return mv
        known = ", ".join(mv.version for mv, _ in records) or "none"
        raise RegistryError(f"model {name!r} has no version {version!r} in MLflow; known: {known}")

    def get_by_status(self, name: str, status: str = PRODUCTION) -> ModelVersion | None:
        """The newest version with ``status`` (production: the latest promoted), or None."""
        check_status(status)
        records = self._read(name, f"finding the {status} version")
        if status == PRODUCTION:
            found = self._production(records)
            return found[0] if found else None
        matching = [mv for mv, _ in records if mv.status == status]
        return matching[-1] if matching else None

    def production_reference(self, name: str) -> ModelVersion | None:
        """The server's production version for the gate; :class:`RegistryError` when it cannot be read."""
        return self.get_by_status(name, PRODUCTION)

    # -- register ------------------------------------------------------------------------

    def register(
        self,
        name: str,
        model_path: str | os.PathLike,
        run_id: str,
        *,
        metrics: dict[str, float] | None = None,
        status: str = STAGING,
        bump: str = "minor",
    ) -> ModelVersion:
        """Register the model as the next version in MLflow (kept as ``pending-N`` while it is unreachable)."""
        src = check_new_version(name, model_path, status, bump)
        digest = sha256_file(src)
        item = {
            "name": name, "run_id": run_id, "sha256": digest, "metrics": dict(metrics or {}), "status": status,
            "bump": bump, "created_by": current_user(),
        }
        try:
            return self._register_online(item, src)
        except MlflowRegistryUnavailable as exc:
            kept = pending.keep(item, src)
            _say(f"{exc}; kept {name} {kept.version} locally (no version number yet); `digitops sync` registers it")
            return kept

    def _register_online(self, item: dict[str, Any], src: Path) -> ModelVersion:
        """Register (or finish registering) ``item``; idempotent by the run id and checksum."""
        name, run_id, digest = item["name"], item["run_id"], item["sha256"]
        try:
            return self._register_steps(item, src)
        except MlflowError as exc:
            raise self._fail(f"registering {name} (run {run_id}, sha256 {digest[:12]}...)", exc) from exc

    def _register_steps(self, item: dict[str, Any], src: Path) -> ModelVersion:
        # Long: find-or-create in an order that a crash or a lost answer at any step can resume.
        name, run_id, digest = item["name"], item["run_id"], item["sha256"]
        self._ensure_model(name)
        exp = self._experiment(name, create=True)
        assert exp is not None
        runs = self._runs(name)
        mine = [r for r in runs if _tags(r).get(T_RUN) == run_id and _tags(r).get(T_SHA) == digest]
        done = [r for r in mine if _tags(r).get(T_STATUS)]
        if done:  # registered before (a retry, or a sync after the answer was lost)
            mv = self._to_version(name, done[0])
            if mv is not None:
                return self._apply_status(mv, item.get("status", STAGING))
        model_version = self._latest_mine(name, run_id, digest)
        own: dict[str, Any] | None = mine[0] if mine else None
        if model_version is None:
            if own is None:
                try:
                    own = self.rest.call("POST", "runs/create", {
                        "experiment_id": exp, "start_time": int(time.time() * 1000), "run_name": f"{name}-{run_id}",
                        "tags": [{"key": k, "value": v} for k, v in {T_MODEL: name, T_RUN: run_id, T_SHA: digest}.items()],
                    })["run"]
                except MlflowRefused as exc:
                    if exc.status >= 500 or exc.status in (401, 403):
                        raise
                    # A server that keeps the model's experiment to itself (GitLab may) makes the run anyway.
                    own = None
            known = {v for v in (_tags(r).get(T_VERSION) for r in runs) if v and VERSION_RE.match(v)}
            model_version = self._create_version(item, own, known)
        version_run_id = str(model_version.get("run_id") or (_run_id(own) if own else ""))
        if not version_run_id:
            raise RegistryError(f"MLflow created {name} {model_version.get('version')} without a run to hold its file")
        strays = {_run_id(r) for r in (mine if own is None else [*mine, own])} - {version_run_id}
        for stray in sorted(strays):  # GitLab made its own run for the version: ours is not needed
            self._quietly("POST", "runs/delete", {"run_id": stray})
        return self._finish(item, src, model_version, version_run_id)

    def _ensure_model(self, name: str) -> None:
        try:
            self.rest.call("GET", "registered-models/get", {"name": name})
            return
        except MlflowRefused as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        try:
            self.rest.call("POST", "registered-models/create", {"name": name})
        except MlflowRefused as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def _latest_mine(self, name: str, run_id: str, digest: str) -> dict[str, Any] | None:
        """The latest model version, if it is this run's model (saved earlier, its answer lost)."""
        for mv in self._latest(name):
            tags = _tags(mv)
            if tags.get(T_RUN) == run_id and tags.get(T_SHA) == digest:
                return mv
        return None

    def _create_version(self, item: dict[str, Any], own: dict[str, Any] | None, known: set[str]) -> dict[str, Any]:
        name, run_id, digest = item["name"], item["run_id"], item["sha256"]
        for attempt in range(3):
            known |= {v for v in (_semver_of(mv) for mv in self._latest(name)) if v}
            latest = max((parse_version(v) for v in known), default=None)
            semver = "%d.%d.%d" % next_version(latest, item.get("bump", "minor"))
            payload = {
                # GitLab ignores both; an MLflow server links the version to our run.
                "name": name, "source": own["info"]["artifact_uri"] if own else f"digitops:{run_id}",
                "description": f"digitops {semver}: model of run {run_id}, sha256 {digest} (registering)",
                "tags": [{"key": k, "value": v} for k, v in
                         {GITLAB_VERSION: semver, T_VERSION: semver, T_RUN: run_id, T_SHA: digest}.items()],
            }
            if own:
                payload["run_id"] = _run_id(own)
            try:
                return dict(self.rest.call("POST", "model-versions/create", payload)["model_version"])
            except MlflowUnavailable:
                # The server may have saved it before failing: recognise ours rather than number twice.
                saved = self._latest_mine(name, run_id, digest)
                if saved is not None:
                    return saved
                raise
            except MlflowRefused as exc:
                # GitLab refuses a version that exists (another registration took it): read again, next one.
                if exc.status >= 500 or exc.status in (401, 403, 404) or attempt == 2:
                    raise
                known.add(semver)
        raise RegistryError(f"could not number a new version of {name}")  # pragma: no cover

    def _finish(self, item: dict[str, Any], src: Path, mv: dict[str, Any], version_run_id: str) -> ModelVersion:
        """Upload the file and tag the version's run; ``digitops.status`` last marks it complete."""
        name, run_id, digest = item["name"], item["run_id"], item["sha256"]
        semver = _semver_of(mv)
        if semver is None:
            raise RegistryError(f"MLflow answered {name} version {mv.get('version')!r} with no semantic version")
        key = semver if semver in (mv.get("aliases") or []) or mv.get("version") == semver else str(mv["version"])
        source = str(mv.get("source") or "")
        # GitLab's source is the version's page; an MLflow server has its UI's page.
        url = source if source.startswith(("http://", "https://")) else (
            f"{self.rest.uri}/#/models/{quote(name)}/versions/{quote(str(mv['version']))}"
        )
        run = self.rest.call("GET", "runs/get", {"run_id": version_run_id})["run"]
        self.rest.upload_artifact(run, src, MODEL_FILE)
        metrics = {str(k): float(v) for k, v in (item.get("metrics") or {}).items()}
        tags = {
            T_MODEL: name, T_VERSION: semver, T_RUN: run_id, T_SHA: digest, T_KEY: key, T_URL: url,
            T_BY: item.get("created_by") or current_user(), T_METRICS: json.dumps(metrics, sort_keys=True),
        }
        stamp = int(time.time() * 1000)
        self._log(version_run_id, tags, metrics=metrics, stamp=stamp)
        self._settle_number(name, version_run_id, semver, item.get("bump", "minor"))
        status = item.get("status", STAGING)
        self._log(version_run_id, {T_STATUS: STAGING if status in (PRODUCTION, ARCHIVED) else status})
        self._quietly("POST", "runs/update", {"run_id": version_run_id, "status": "FINISHED", "end_time": stamp})
        registered = self._to_version(name, self.rest.call("GET", "runs/get", {"run_id": version_run_id})["run"])
        if registered is None:
            raise RegistryError(f"MLflow did not keep the tags of {name} {semver}")
        self._describe(registered)
        return self._apply_status(registered, status)

    def _settle_number(self, name: str, version_run_id: str, semver: str, bump: str) -> str:
        """Renumber this version if another registration claimed its SemVer at the same time.

        An MLflow server numbers its own versions and accepts two with the same
        ``gitlab.version`` (GitLab refuses the second). Each registration writes its
        number, then looks: of two runs claiming one number the earlier run keeps it
        (the rule :meth:`_records` reads with), the other takes the next free one.
        """
        def order(run: dict[str, Any]) -> tuple[int, str]:
            return int(run["info"].get("start_time") or 0), _run_id(run)

        for _ in range(5):
            runs = [r for r in self._runs(name) if _tags(r).get(T_MODEL) == name]
            mine = next((r for r in runs if _run_id(r) == version_run_id), None)
            rivals = [r for r in runs if _run_id(r) != version_run_id and _tags(r).get(T_VERSION) == semver]
            if mine is None or not any(order(r) < order(mine) for r in rivals):
                return semver
            taken = [parse_version(v) for v in (_tags(r).get(T_VERSION, "") for r in runs) if VERSION_RE.match(v)]
            semver = "%d.%d.%d" % next_version(max(taken), bump)
            _say(f"{name}: another registration took the same version meanwhile; this one becomes {semver}")
            self._log(version_run_id, {T_VERSION: semver})
        raise RegistryError(f"could not settle a version number for {name}: too many registrations at once")

    def _apply_status(self, mv: ModelVersion, status: str) -> ModelVersion:
        """Registered as ``status`` asked: only a promotion is applied; a retry never undoes one made since."""
        if status != PRODUCTION or mv.status == PRODUCTION:
            return mv
        return self.set_status(mv.name, mv.version, PRODUCTION)

    # -- writing tags --------------------------------------------------------------------

    def _log(
        self, run_id: str, tags: dict[str, str], metrics: dict[str, float] | None = None, stamp: int = 0
    ) -> None:
        payload: dict[str, Any] = {"run_id": run_id, "tags": [{"key": k, "value": v} for k, v in tags.items()]}
        if metrics:
            payload["metrics"] = [{"key": k, "value": v, "timestamp": stamp, "step": 0} for k, v in metrics.items()]
        self.rest.call("POST", "runs/log-batch", payload)

    def _change(self, run_id: str, decide: Any) -> None:
        """Append a status change to a version run's log: ``decide(state)`` gives the new state, or None for none.

        A compare-and-swap on GitLab's create-only tags: when ``digitops.status.<n>`` is
        refused (another writer took ``n``) the run is read again and ``decide`` asked again.
        A write whose answer was lost is recognised by its value (``at`` makes it unique).
        """
        value, lost = "", 0
        for _ in range(CHANGE_TRIES):
            tags = _tags(self.rest.call("GET", "runs/get", {"run_id": run_id})["run"])
            n = _top(tags)
            if value and tags.get(f"{T_STATUS}.{n}") == value:
                return  # ours, saved though its answer was lost
            new = decide(_state(tags))
            if new is None:
                return
            value = json.dumps({**new, "at": pending.now()}, sort_keys=True, separators=(",", ":"))
            try:
                self.rest.call("POST", "runs/set-tag", {"run_id": run_id, "key": f"{T_STATUS}.{n + 1}", "value": value})
                return
            except MlflowUnavailable:
                lost += 1
                if lost > 1:
                    raise
                # It may have been saved before the error: the next read recognises ours.
            except MlflowRefused as exc:
                if exc.status >= 500 or exc.status in (401, 403, 404):
                    raise
                # GitLab refuses a key the run has: another writer took n + 1; read again.
        raise RegistryError(f"could not change the status of run {run_id}: too many changes at once")

    def _quietly(self, method: str, endpoint: str, payload: dict[str, Any]) -> None:
        """A call whose failure loses nothing (a stray run, a run's end time): warn and go on."""
        try:
            self.rest.call(method, endpoint, payload)
        except MlflowError as exc:
            _say(f"{endpoint} failed, nothing depends on it: {self.rest.redact(str(exc))}")

    def _describe(self, mv: ModelVersion) -> None:
        """The model version's description, for people reading GitLab's or MLflow's pages."""
        key = next((t.split(":", 1)[1] for t in mv.tags if t.startswith("model-version:")), "")
        if not key:
            return
        text = f"digitops {mv.version} ({mv.status}): model of run {mv.run_id}, sha256 {mv.sha256}"
        self._quietly("PATCH", "model-versions/update", {"name": mv.name, "version": key, "description": text})

    # -- statuses ------------------------------------------------------------------------

    def _record(self, name: str, version: str, what: str) -> tuple[list[Any], tuple[ModelVersion, dict[str, Any]]]:
        records = self._read(name, what)
        for rec in records:
            if rec[0].version == version:
                return records, rec
        known = ", ".join(mv.version for mv, _ in records) or "none"
        raise RegistryError(f"model {name!r} has no version {version!r} in MLflow; known: {known}")

    def set_status(self, name: str, version: str, status: str) -> ModelVersion:
        """Set a version's status; production archives the previous production. Refuses when it cannot read."""
        check_status(status)
        if version.startswith(pending.PREFIX):
            return pending.set_status(name, version, status)
        records, (mv, run) = self._record(name, version, f"changing the status of {name} {version}")
        try:
            if status == PRODUCTION:
                self._promote(name, version, records, run)
            elif mv.status != status:
                self._change(_run_id(run), lambda st: None if st["status"] == status else {**st, "status": status})
        except MlflowError as exc:
            raise self._fail(f"setting {name} {version} to {status}", exc) from exc
        changed = self.get_version(name, version)
        self._describe(changed)
        return changed

    def _promote(self, name: str, version: str, records: list[Any], run: dict[str, Any]) -> None:
        """Promote first, then archive the older productions: a crash in between leaves two, the newest wins."""
        winner = self._production(records)
        if winner is None or winner[0].version != version:
            at = pending.now()
            self._change(_run_id(run), lambda st: {"status": PRODUCTION, "promoted_at": at, "rolled_back": "0"})
        # Read again and archive every production but the newest promotion. Of two racing promotions
        # the one that writes last sees both, whichever it is, so exactly one is left.
        records = self._read(name, f"promoting {name} {version}")
        found = [rec for rec in records if rec[0].status == PRODUCTION]
        if not found:
            return
        newest = max(found, key=lambda rec: (_state(_tags(rec[1]))["promoted_at"], parse_version(rec[0].version)))
        if newest[0].version != version:
            _say(f"{name}: {newest[0].version} was promoted after {version} meanwhile; it is production")
        for other, other_run in found:
            if other.version == newest[0].version:
                continue
            seen = _state(_tags(other_run))["promoted_at"]

            def archive(st: dict[str, str], seen: str = seen) -> dict[str, str] | None:
                # Decided on what the run says now: a promotion made since is left alone.
                if st["status"] != PRODUCTION or st["promoted_at"] != seen:
                    return None
                return {**st, "status": ARCHIVED}

            self._change(_run_id(other_run), archive)
            self._describe(dataclasses.replace(other, status=ARCHIVED))

    def rollback(self, name: str) -> ModelVersion:
        """Make the production version before the current one production again (current: archived)."""
        records = self._read(name, f"rolling back {name}")
        current = self._production(records)
        if current is None:
            raise RegistryError(
                f"model {name!r} has no production version to roll back from; "
                "promote one with `digitops registry promote VERSION`"
            )
        since = _state(_tags(current[1]))["promoted_at"]
        states = {mv.version: _state(_tags(run)) for mv, run in records}
        earlier = [
            (states[mv.version]["promoted_at"], mv.version, run) for mv, run in records
            if mv.version != current[0].version and "" < states[mv.version]["promoted_at"] < since
            and states[mv.version]["rolled_back"] != "1"
        ]
        if not earlier:
            raise RegistryError(
                f"model {name!r}: production version {current[0].version} has no earlier production version to roll back to"
            )
        _, target, target_run = max(earlier, key=lambda e: e[0])
        try:
            # The earlier one first (it keeps its older promotion time, so until the next call the
            # current one still wins), then the current one archived and marked rolled back.
            self._change(_run_id(target_run), lambda st: {**st, "status": PRODUCTION})
            self._change(_run_id(current[1]), lambda st: {**st, "status": ARCHIVED, "rolled_back": "1"})
        except MlflowError as exc:
            raise self._fail(f"rolling back {name}", exc) from exc
        self._describe(dataclasses.replace(current[0], status=ARCHIVED))
        restored = self.get_version(name, target)
        self._describe(restored)
        return restored

    # -- download ------------------------------------------------------------------------

    def download(
        self, name: str, dest: str | os.PathLike, *, version: str | None = None, status: str | None = None
    ) -> Path:
        """Fetch a version's ``model.keras`` from its run to ``dest`` (a ``.keras`` path or a folder), SHA256 verified."""
        if version is not None and status is not None:
            raise RegistryError("give a version or a status, not both")
        target = Path(dest)
        if target.suffix != ".keras" or target.is_dir():
            target = target / MODEL_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        if version is not None and version.startswith(pending.PREFIX):
            mv = self.get_version(name, version)
            with atomic.replacing(target) as tmp:
                shutil.copyfile(mv.uri, tmp)
                self.verify(mv, tmp, "kept file")
            return target
        records = self._read(name, f"downloading {name}")
        if version is not None:
            chosen = next((rec for rec in records if rec[0].version == version), None)
            if chosen is None:
                known = ", ".join(mv.version for mv, _ in records) or "none"
                raise RegistryError(f"model {name!r} has no version {version!r} in MLflow; known: {known}")
        elif (status or PRODUCTION) == PRODUCTION:
            chosen = self._production(records)
        else:
            chosen = next((rec for rec in reversed(records) if rec[0].status == status), None)
        if chosen is None:
            raise RegistryError(f"model {name!r} has no version with status {status or PRODUCTION!r} in MLflow")
        mv, run = chosen
        if not mv.sha256:
            raise RegistryError(f"{name} {mv.version} carries no sha256; cannot verify a download")
        with atomic.replacing(target) as tmp:
            try:
                self.rest.download_artifact(run, MODEL_FILE, tmp)
            except MlflowError as exc:
                raise self._fail(f"downloading {name} {mv.version}", exc) from exc
            self.verify(mv, tmp, "downloaded file")
        return target

def pending_registrations() -> list[dict[str, Any]]:
    """Registrations kept locally while the MLflow server was unreachable, oldest first."""
    return pending.registrations()


def sync_registrations() -> list[str]:
    """Register what was kept while the server was unreachable; one line per registration (idempotent)."""
    with pending.lock():
        items = pending.registrations()
        if not items:
            return []
        registry, lines, left = MlflowRegistry(), [], list(items)
        for item in items:
            try:
                mv = registry._register_online(item, Path(item["model_path"]))
            except RegistryError as exc:
                lines.append(f"model {item['name']} {item['pending_id']} (run {item['run_id']}): still pending ({exc})")
                continue
            lines.append(f"model {item['name']}: {item['pending_id']} registered in MLflow as {mv.version} ({mv.status})")
            # Progress is saved after each one, so an interruption never registers one twice.
            pending.mark_synced(item, mv.version)
            left.remove(item)
            pending.save(left)
            shutil.rmtree(Path(item["model_path"]).parent, ignore_errors=True)
        return lines
