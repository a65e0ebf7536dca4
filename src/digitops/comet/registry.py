"""Comet's Model Registry behind the :class:`~digitops.registry.base.Registry` interface.

A version is registered from the run's Comet experiment, which already holds
the model (``log_model`` during the run's mirror, see
:mod:`digitops.comet.tracker`): ``APIExperiment.register_model`` is a
synchronous REST call, and the new version is then confirmed with
``Model.find_versions``. Versions are computed here (the next semantic version
after the newest in Comet, ``minor`` by default, as the embedded registry
does), never left to Comet. Statuses go through the ``Model`` API
(``set_status``, ``add_tag``/``delete_tag``); the deprecated stage calls are
not used. Comet statuses are ``Production`` and ``Staging``; digitops'
``archived`` is status ``None`` plus the tag ``archived``, ``none`` is ``None``.

Each version carries tags ``run:<run_id>`` and ``sha256:<hex>`` and a JSON
comment with the run id, checksum and metrics, so :meth:`CometRegistry.download`
verifies what it fetched, and a ``promoted:<UTC time>`` tag per promotion, which
:meth:`CometRegistry.rollback` walks back through.

Offline safety: when Comet cannot be reached, :meth:`CometRegistry.register`
registers in the embedded registry and records a pending registration that
``digitops sync`` replays; reads fall back to the embedded registry with a
warning; status changes fail with a clear :class:`RegistryError`. A version
registered offline has no public number until ``sync`` gets one from Comet:
it is shown as ``pending-N`` (its embedded-registry number would collide with
Comet's real ones), and after sync as Comet's number. The gate's production
reference (:meth:`CometRegistry.production_reference`) never falls back.

Size (over 400 lines): Comet's registry and its offline fallback (registrations kept while Comet is
unreachable, and their sync); the pending registrations could become their own module.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from digitops import atomic, comet_env, config
from digitops.registry.base import (
    ARCHIVED,
    NONE,
    PRODUCTION,
    STAGING,
    ModelVersion,
    Registry,
    RegistryError,
    sha256_file,
)
from digitops.registry.sqlite import MODEL_FILE, SqliteRegistry
from digitops.registry.versions import check_new_version, check_status, current_user, next_version, parse_version

TO_COMET = {NONE: "None", STAGING: "Staging", PRODUCTION: "Production", ARCHIVED: "None"}
ARCHIVED_TAG = "archived"
ROLLED_BACK_TAG = "rolled-back"


def _say(message: str) -> None:
    print(f"comet: {comet_env.redact(message)}", file=sys.stderr, flush=True)


def _pending_file() -> Path:
    return comet_env.state_dir() / "pending-registrations.json"


def pending_registrations() -> list[dict[str, Any]]:
    """Registrations made locally while Comet was unreachable, oldest first."""
    try:
        return list(json.loads(_pending_file().read_text()))
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise RegistryError(f"corrupt pending registrations file {_pending_file()}: {exc}") from exc


PENDING_PREFIX = "pending-"


def _synced_file() -> Path:
    return comet_env.state_dir() / "synced-registrations.json"


def synced_registrations() -> list[dict[str, Any]]:
    """Registrations made offline and since registered in Comet (local version -> Comet version)."""
    try:
        return list(json.loads(_synced_file().read_text()))
    except (FileNotFoundError, ValueError):
        return []


def _next_pending_id(items: list[dict[str, Any]]) -> str:
    """``pending-N``, N never reused (counted over pending and synced registrations)."""
    used = [0]
    for item in items + synced_registrations():
        tail = str(item.get("pending_id", "")).removeprefix(PENDING_PREFIX)
        if tail.isdigit():
            used.append(int(tail))
    return f"{PENDING_PREFIX}{max(used) + 1}"


def pending_label(item: dict[str, Any]) -> str:
    """How a pending registration is shown: its ``pending-N`` placeholder, never the local number."""
    return str(item.get("pending_id") or f"{PENDING_PREFIX}{item['local_version']}")


def _public(version: ModelVersion) -> ModelVersion:
    """A version of the embedded registry as Comet users must see it (pending-N / Comet's number)."""
    import dataclasses

    for item in pending_registrations():
        if item["name"] == version.name and item["local_version"] == version.version:
            return dataclasses.replace(version, version=pending_label(item))
    for item in synced_registrations():
        if item["name"] == version.name and item["local_version"] == version.version:
            return dataclasses.replace(version, version=str(item["comet_version"]))
    return version


def _local_number(name: str, version: str) -> str:
    """The embedded registry's number for a version shown as ``pending-N`` or as its Comet number."""
    for item in pending_registrations():
        if item["name"] == name and pending_label(item) == version:
            return str(item["local_version"])
    for item in synced_registrations():
        if item["name"] == name and str(item["comet_version"]) == version:
            return str(item["local_version"])
    return version


def _save_pending(items: list[dict[str, Any]], path: Path | None = None) -> None:
    path = path or _pending_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, items, indent=1)


class CometUnavailable(RegistryError):
    """Comet could not be reached (or is switched off with ``--offline``)."""


class CometRegistry(Registry):
    """Comet Model Registry, with the embedded registry as offline fallback (see the module docstring)."""

    def __init__(self, workspace: str | None = None) -> None:
        self._workspace = workspace
        self._api_obj: Any = None
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"CometRegistry(workspace={self._workspace or comet_env.workspace()!r})"

    # -- plumbing -----------------------------------------------------------------

    def _online(self) -> None:
        reach = comet_env.check_online()
        if not reach.ok:
            raise CometUnavailable(f"Comet not reached: {reach.reason}")

    @property
    def api(self) -> Any:
        if self._api_obj is None:
            comet_ml = comet_env.import_comet()
            self._api_obj = comet_ml.API(cache=False)
        return self._api_obj

    @property
    def workspace(self) -> str:
        if self._workspace is None:
            self._workspace = comet_env.workspace() or str(self.api.get_default_workspace())
        return self._workspace

    def _model(self, name: str) -> Any:
        from comet_ml import Model

        return Model(self.workspace, name, api_key=comet_env.api_key())

    def _versions(self, name: str, **filters: Any) -> list[str]:
        """Versions of ``name`` newest first ([] when the model does not exist yet)."""
        from comet_ml.exceptions import CometRestApiException

        try:
            return list(self._model(name).find_versions(**filters))
        except CometRestApiException as exc:
            if exc.response is not None and exc.response.status_code in (400, 404):
                return []
            raise

    def _to_version(self, name: str, details: dict[str, Any]) -> ModelVersion:
        tags = [str(t) for t in details.get("tags") or []]
        try:
            meta = json.loads(details.get("comment") or "{}")
        except ValueError:
            meta = {}
        meta = meta if isinstance(meta, dict) else {}
        tag_values = {t.split(":", 1)[0]: t.split(":", 1)[1] for t in tags if ":" in t}
        comet_status = details.get("status") or "None"
        if comet_status == "Production":
            status = PRODUCTION
        elif comet_status == "Staging":
            status = STAGING
        elif ARCHIVED_TAG in tags:
            status = ARCHIVED
        else:
            status = NONE
        created = details.get("createdAt")
        created_at = (
            datetime.fromtimestamp(created / 1000, timezone.utc).isoformat() if isinstance(created, (int, float)) else ""
        )
        version = str(details["version"])
        return ModelVersion(
            name=name,
            version=version,
            run_id=str(meta.get("run_id") or tag_values.get("run", "")),
            sha256=str(meta.get("sha256") or tag_values.get("sha256", "")),
            status=status,
            metrics={str(k): float(v) for k, v in (meta.get("metrics") or {}).items()},
            created_by=str(meta.get("created_by") or details.get("userName") or ""),
            created_at=created_at,
            uri=f"comet://{self.workspace}/{name}:{version}",
            url=f"{comet_env.server_root()}{self.workspace}/model-registry/{name}",
            tags=tags,
        )

    def _details(self, name: str, version: str) -> dict[str, Any]:
        from comet_ml.exceptions import CometRestApiException

        try:
            return dict(self._model(name).get_details(version))
        except CometRestApiException as exc:
            if exc.response is not None and exc.response.status_code in (400, 404):
                known = ", ".join(reversed(self._versions(name))) or "none"
                raise RegistryError(f"model {name!r} has no version {version!r} in Comet; known: {known}") from exc
            raise

    def _fallback(self, what: str, exc: Exception) -> SqliteRegistry:
        if what not in self._warned:
            _say(f"{what}: using the local registry ({exc})")
            self._warned.add(what)
        return SqliteRegistry()

    # -- register -----------------------------------------------------------------

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
        """Register the run's model as the next version in Comet (locally + pending when unreachable)."""
        src = check_new_version(name, model_path, status, bump)
        digest = sha256_file(src)
        try:
            self._online()
            key = self._experiment_for(run_id, digest)
        except CometUnavailable as exc:
            local = SqliteRegistry().register(name, src, run_id, metrics=metrics, status=status, bump=bump)
            items = pending_registrations()
            pending_id = _next_pending_id(items)
            items.append(
                {
                    "name": name,
                    "pending_id": pending_id,
                    "local_version": local.version,
                    "model_path": local.uri,
                    "run_id": run_id,
                    "sha256": digest,
                    "metrics": metrics or {},
                    "status": status,
                    "bump": bump,
                    "at": time.time(),
                }
            )
            _save_pending(items)
            _say(
                f"{exc}; registered {name} {pending_id} in the local registry (no Comet version yet); "
                "`digitops sync` registers it in Comet"
            )
            return _public(local)
        return self._register_online(name, key, run_id, digest, metrics or {}, status, bump)

    def _experiment_for(self, run_id: str, digest: str) -> str:
        """Key of the run's Comet experiment holding this exact model (uploading a kept archive first)."""
        from digitops.comet.tracker import ArchiveNotUploaded, CometTracker  # the tracker's interface

        try:
            key, logged = CometTracker().logged_experiment(run_id)
        except ArchiveNotUploaded as exc:
            raise CometUnavailable(str(exc)) from exc
        if not key:
            raise RegistryError(
                f"run {run_id!r} has no Comet experiment; it must be tracked with COMET_API_KEY set "
                "(its model is logged to Comet when the run ends)"
            )
        if digest not in logged:
            raise RegistryError(
                f"the model to register (sha256 {digest[:12]}...) is not the model logged by run {run_id!r} "
                "in Comet; register the run's own model.keras"
            )
        return key

    def _register_online(
        self,
        name: str,
        key: str,
        run_id: str,
        digest: str,
        metrics: dict[str, float],
        status: str,
        bump: str,
    ) -> ModelVersion:
        from comet_ml.exceptions import CometRestApiException

        api_exp = self.api.get_experiment_by_key(key)
        if api_exp is None:
            raise RegistryError(f"run {run_id!r}: Comet experiment {key} not found")
        comment = json.dumps(
            {"run_id": run_id, "sha256": digest, "metrics": metrics, "created_by": current_user()}, sort_keys=True
        )
        for attempt in range(3):
            existing = self._versions(name)
            latest = max((parse_version(v) for v in existing), default=None)
            version = "%d.%d.%d" % next_version(latest, bump)
            try:
                api_exp.register_model(
                    config.model_name(),
                    version=version,
                    registry_name=name,
                    description=f"digitops model {name}",
                    comment=comment,
                    tags=[f"run:{run_id}", f"sha256:{digest}"],
                    status=TO_COMET[STAGING if status in (PRODUCTION, ARCHIVED) else status],
                )
            except CometRestApiException as exc:
                # Comet saved it but the answer was lost (a 5xx after the write): it is ours, done.
                mine = self._already_registered(name, run_id, digest)
                if mine is not None and mine.version == version:
                    break
                # Another registration took this version first: recompute and retry.
                if attempt < 2 and version in self._versions(name):
                    continue
                raise RegistryError(f"Comet refused to register {name} {version}: {comet_env.redact(exc)}") from exc
            break
        if version not in self._versions(name, version_prefix=version):
            raise RegistryError(f"Comet did not confirm {name} {version} after registering it")
        if status in (PRODUCTION, ARCHIVED):
            return self.set_status(name, version, status)
        return self.get_version(name, version)

    def _already_registered(self, name: str, run_id: str, digest: str) -> ModelVersion | None:
        """A version of this run's exact model that Comet already holds (an earlier sync saved it
        but its answer was lost): replaying the registration would make a second version."""
        for version in self._versions(name, tag=f"sha256:{digest}"):
            mv = self._to_version(name, self._details(name, version))
            if mv.run_id == run_id:
                return mv
        return None

    # -- reads --------------------------------------------------------------------

    def list_versions(self, name: str) -> list[ModelVersion]:
        """All versions of ``name``, oldest first (local registry when Comet is unreachable)."""
        try:
            self._online()
        except CometUnavailable as exc:
            return [_public(v) for v in self._fallback("list versions", exc).list_versions(name)]
        versions = sorted(self._versions(name), key=parse_version)
        return [self._to_version(name, self._details(name, v)) for v in versions]

    def get_version(self, name: str, version: str) -> ModelVersion:
        """One version, or :class:`RegistryError` naming the known ones."""
        try:
            self._online()
        except CometUnavailable as exc:
            return _public(self._fallback("get version", exc).get_version(name, _local_number(name, version)))
        if version.startswith(PENDING_PREFIX):
            raise RegistryError(
                f"{name} {version} was registered while Comet was unreachable and has no Comet version yet; "
                "run `digitops sync`"
            )
        return self._to_version(name, self._details(name, version))

    def get_by_status(self, name: str, status: str = PRODUCTION) -> ModelVersion | None:
        """The newest version with ``status`` (production: the only one), or None."""
        check_status(status)
        try:
            self._online()
        except CometUnavailable as exc:
            found = self._fallback(f"{status} version", exc).get_by_status(name, status)
            return _public(found) if found is not None else None
        if status == ARCHIVED:
            found = self._versions(name, tag=ARCHIVED_TAG)
        else:
            found = self._versions(name, status=TO_COMET[status])
        for version in found:  # newest first
            mv = self._to_version(name, self._details(name, version))
            if mv.status == status:
                return mv
        return None

    def production_reference(self, name: str) -> ModelVersion | None:
        """Comet's production version, never the local registry's (raises :class:`CometUnavailable`)."""
        self._online()
        try:
            return self.get_by_status(name, PRODUCTION)
        except RegistryError:
            raise
        except Exception as exc:  # noqa: BLE001 - SDK and network errors alike: the gate cannot see
            reason = comet_env.redact(f"{type(exc).__name__}: {exc}")
            comet_env.mark_unreachable(reason)
            raise CometUnavailable(f"Comet's model registry could not be read: {reason}") from exc

    # -- statuses -----------------------------------------------------------------

    def _set(self, name: str, version: str, status: str) -> None:
        model = self._model(name)
        details = self._details(name, version)
        tags = set(details.get("tags") or [])
        if (details.get("status") or "None") != TO_COMET[status]:
            model.set_status(version, TO_COMET[status])
        if status == ARCHIVED and ARCHIVED_TAG not in tags:
            model.add_tag(version, ARCHIVED_TAG)
        if status != ARCHIVED and ARCHIVED_TAG in tags:
            model.delete_tag(version, ARCHIVED_TAG)

    def set_status(self, name: str, version: str, status: str) -> ModelVersion:
        """Set a version's status; production archives the previous production version."""
        check_status(status)
        try:
            self._online()
        except CometUnavailable as exc:
            return self._set_pending_status(name, version, status, exc)
        details = self._details(name, version)
        if status == PRODUCTION:
            for other in self._versions(name, status="Production"):
                if other != version:
                    self._set(name, other, ARCHIVED)
            if details.get("status") != "Production":
                model = self._model(name)
                model.add_tag(version, f"promoted:{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S.%fZ')}")
                if ROLLED_BACK_TAG in (details.get("tags") or []):
                    model.delete_tag(version, ROLLED_BACK_TAG)
        self._set(name, version, status)
        return self.get_version(name, version)

    def _set_pending_status(self, name: str, version: str, status: str, exc: CometUnavailable) -> ModelVersion:
        """Offline: a version registered locally (pending) changes status locally, and sync carries it over."""
        items = pending_registrations()
        mine = [i for i in items if i["name"] == name and pending_label(i) == version]
        if not mine:
            raise CometUnavailable(
                f"{exc}; cannot change the status of {name} {version} in Comet now, try again later"
            ) from exc
        local = _public(SqliteRegistry().set_status(name, str(mine[0]["local_version"]), status))
        for item in items:
            if item in mine:
                item["status"] = status
        _save_pending(items)
        _say(f"{exc}; {name} {version} is {status} in the local registry; `digitops sync` applies it in Comet")
        return local

    def rollback(self, name: str) -> ModelVersion:
        """Make the production version before the current one production again (current: archived)."""
        self._online()
        current = self.get_by_status(name, PRODUCTION)
        if current is None:
            raise RegistryError(f"model {name!r} has no production version to roll back from")

        def promoted(tags: list[str]) -> str:
            return max((t.split(":", 1)[1] for t in tags if t.startswith("promoted:")), default="")

        since = promoted(current.tags)
        earlier = []
        for version in self._versions(name):
            if version == current.version:
                continue
            tags = [str(t) for t in self._details(name, version).get("tags") or []]
            when = promoted(tags)
            if when and when < since and ROLLED_BACK_TAG not in tags:
                earlier.append((when, version))
        if not earlier:
            raise RegistryError(
                f"model {name!r}: production version {current.version} has no earlier production version to roll back to"
            )
        target = max(earlier)[1]
        model = self._model(name)
        self._set(name, current.version, ARCHIVED)
        model.add_tag(current.version, ROLLED_BACK_TAG)
        self._set(name, target, PRODUCTION)
        return self.get_version(name, target)

    # -- download -----------------------------------------------------------------

    def download(
        self, name: str, dest: str | os.PathLike, *, version: str | None = None, status: str | None = None
    ) -> Path:
        """Fetch a version's model from Comet to ``dest`` (a ``.keras`` path or a folder), sha256 verified."""
        if version is not None and status is not None:
            raise RegistryError("give a version or a status, not both")
        try:
            self._online()
        except CometUnavailable as exc:
            local = _local_number(name, version) if version is not None else None
            return self._fallback("download", exc).download(name, dest, version=local, status=status)
        if version is not None:
            mv = self.get_version(name, version)
        else:
            found = self.get_by_status(name, status or PRODUCTION)
            if found is None:
                raise RegistryError(f"model {name!r} has no version with status {status or PRODUCTION!r} in Comet")
            mv = found
        if not mv.sha256:
            raise RegistryError(f"{name} {mv.version} carries no sha256; cannot verify a download")
        target = Path(dest)
        if target.suffix != ".keras" or target.is_dir():
            target = target / MODEL_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".comet-download-", dir=target.parent))
        try:
            self._model(name).download(mv.version, output_folder=str(scratch))
            files = [p for p in scratch.rglob("*") if p.is_file() and p.suffix == ".keras"]
            if len(files) != 1:
                raise RegistryError(
                    f"{name} {mv.version}: expected one .keras file from Comet, got {[p.name for p in files]}"
                )
            self.verify(mv, files[0], "downloaded file")
            os.replace(files[0], target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return target


def sync_registrations() -> list[str]:
    """Replay registrations made while Comet was unreachable; returns one line per registration."""
    items = pending_registrations()
    if not items:
        return []
    registry = CometRegistry()
    lines, left = [], []
    synced = synced_registrations()
    for item in items:
        try:
            registry._online()
            key = registry._experiment_for(item["run_id"], item["sha256"])
            done = registry._already_registered(item["name"], item["run_id"], item["sha256"])
            if done is not None and item.get("status", STAGING) != done.status:
                done = registry.set_status(item["name"], done.version, item.get("status", STAGING))
            mv = done or registry._register_online(
                item["name"],
                key,
                item["run_id"],
                item["sha256"],
                item.get("metrics") or {},
                item.get("status", STAGING),
                item.get("bump", "minor"),
            )
            lines.append(f"model {item['name']}: {pending_label(item)} registered in Comet as {mv.version} ({mv.status})")
            synced.append({**item, "comet_version": mv.version})
            _save_pending(synced, _synced_file())
            _save_pending(left + items[items.index(item) + 1 :])  # progress survives an interruption
        except RegistryError as exc:
            left.append(item)
            lines.append(f"model {item['name']} {pending_label(item)} (run {item['run_id']}): still pending ({exc})")
    _save_pending(left)
    return lines
