"""Registrations kept while the MLflow server was unreachable (``pending-N``), for ``digitops sync``.

Each is a JSON entry in ``$DIGITOPS_HOME/mlflow/pending-registrations.json`` and a
copy of the model under ``$DIGITOPS_HOME/mlflow/pending/pending-N/model.keras`` (the
run folder may be gone by the time the server is back). ``N`` is never reused
(counted over pending and synced registrations); a file lock serialises writers.
:func:`digitops.mlflow.registry.sync_registrations` registers them.
"""

from __future__ import annotations

import json
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from digitops import atomic, config
from digitops.errors import RegistryError
from digitops.registry.base import STAGING, ModelVersion, Registry

PREFIX = "pending-"
MODEL_FILE = "model.keras"


def now() -> str:
    """UTC time that sorts as text."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def state_dir() -> Path:
    """``$DIGITOPS_HOME/mlflow``: pending registrations and their model copies."""
    return config.home() / "mlflow"


def _pending_file() -> Path:
    return state_dir() / "pending-registrations.json"


def _synced_file() -> Path:
    return state_dir() / "synced-registrations.json"


def _read_list(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise RegistryError(f"corrupt registrations file {path}: {exc}") from exc
    return list(data) if isinstance(data, list) else []


def _write_list(path: Path, items: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, items, indent=1)


def lock() -> Any:
    """A file lock for every change to the registrations files."""
    from filelock import FileLock

    state_dir().mkdir(parents=True, exist_ok=True)
    return FileLock(str(state_dir() / "registrations.lock"), timeout=600)


def registrations() -> list[dict[str, Any]]:
    """Registrations kept locally while the MLflow server was unreachable, oldest first."""
    return _read_list(_pending_file())


def as_version(item: dict[str, Any]) -> ModelVersion:
    """How a pending registration is shown: version ``pending-N``, the file its local copy."""
    return ModelVersion(
        name=item["name"], version=item["pending_id"], run_id=item["run_id"], sha256=item["sha256"],
        status=item.get("status", STAGING), metrics=dict(item.get("metrics") or {}),
        created_by=item.get("created_by", ""), created_at=item.get("at", ""), uri=item["model_path"],
        tags=["pending: `digitops sync` registers it in MLflow"],
    )


def save(items: list[dict[str, Any]]) -> None:
    """Replace the pending registrations with ``items`` (atomically)."""
    _write_list(_pending_file(), items)


def mark_synced(item: dict[str, Any], version: str) -> None:
    """Record that ``item`` is registered in MLflow as ``version`` (its ``pending-N`` is never reused)."""
    _write_list(_synced_file(), [*_read_list(_synced_file()), {**item, "version": version}])


def find(name: str, label: str) -> dict[str, Any]:
    """The pending registration ``label`` of ``name``; :class:`RegistryError` says what became of it otherwise."""
    for item in registrations():
        if item["name"] == name and item["pending_id"] == label:
            return item
    for item in _read_list(_synced_file()):
        if item["name"] == name and item["pending_id"] == label:
            raise RegistryError(f"{name} {label} has been registered in MLflow as {item['version']}")
    raise RegistryError(f"model {name!r} has no pending registration {label!r}")


def keep(item: dict[str, Any], src: Path) -> ModelVersion:
    """Keep the model and its registration locally as ``pending-N`` (N never reused)."""
    with lock():
        items, synced = registrations(), _read_list(_synced_file())
        for existing in items:  # the same model kept twice (a retried job) stays one registration
            if all(existing[k] == item[k] for k in ("name", "run_id", "sha256")):
                return as_version(existing)
        used = [int(str(i.get("pending_id", "")).removeprefix(PREFIX) or 0) for i in items + synced] or [0]
        pending_id = f"{PREFIX}{max(used) + 1}"
        kept = state_dir() / "pending" / pending_id / MODEL_FILE
        kept.parent.mkdir(parents=True, exist_ok=True)
        with atomic.replacing(kept) as tmp:
            shutil.copyfile(src, tmp)
            Registry.verify(as_version({**item, "pending_id": pending_id, "model_path": str(tmp)}), tmp, "kept copy")
        entry = {**item, "pending_id": pending_id, "model_path": str(kept.resolve()), "at": now()}
        _write_list(_pending_file(), [*items, entry])
    return as_version(entry)


def set_status(name: str, label: str, status: str) -> ModelVersion:
    """A pending version's status changes locally; sync applies it in MLflow."""
    with lock():
        items = registrations()
        mine = [i for i in items if i["name"] == name and i["pending_id"] == label]
        if not mine:
            find(name, label)  # raises, saying what became of it
        mine[0]["status"] = status
        _write_list(_pending_file(), items)
    print(f"mlflow: {name} {label} is not in MLflow yet; it becomes {status} when `digitops sync` registers it",
          file=sys.stderr, flush=True)
    return as_version(mine[0])
