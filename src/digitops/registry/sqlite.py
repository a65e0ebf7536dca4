"""The embedded model registry: one SQLite file plus a folder of model files.

Layout (defaults, under ``$DIGITOPS_HOME``, default ``.digitops``)::

    registry.db                              versions, promotions history
    models/<name>/<version>/model.keras      the registered files

Versions are semantic versions assigned here: the next version bumps the
newest one (``minor`` by default), starting from 0.0.0, so the first
registration is ``0.1.0``, then ``0.2.0``, ...; ``--bump major`` gives
``1.0.0``, ``--bump patch`` ``0.2.1``. The newest version is read and the
new row inserted in one ``BEGIN IMMEDIATE`` transaction and ``(name,
version)`` is UNIQUE, so two processes registering at the same moment get
distinct versions.

A registered file is never overwritten: a version whose folder already holds a
model (a lost or damaged ``registry.db``) is refused, and a missing
``registry.db`` beside a non-empty ``models/`` is not re-created empty.
Each version folder also holds ``version.json`` (the version's record,
rewritten on status changes) and each model folder ``history.json``, so
``digitops doctor --rebuild-registry`` can rebuild the index from the files.

At most one version per model is ``production`` (a partial unique index
enforces it). Each promotion is recorded with the version it replaced;
:meth:`SqliteRegistry.rollback` undoes the latest promotion that is still in
effect, so repeated rollbacks walk back through earlier production versions.

Size (over 400 lines): schema, registration with its race-free numbering, promotions and rollback
history, the sidecar files that rebuild a lost index, and verified downloads of one store.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Any

from digitops import _sqlite, atomic, config
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
from digitops.registry.versions import check_new_version, check_status, current_user, next_version

SCHEMA_VERSION = 1
MODEL_FILE = "model.keras"
#: beside each registered file: the version's record, for rebuilding a lost index
SIDECAR = "version.json"
#: in each model folder: promotions and rollbacks, for rebuilding a lost index
HISTORY_FILE = "history.json"

_SCHEMA_V1 = """
CREATE TABLE versions (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    major INTEGER NOT NULL,
    minor INTEGER NOT NULL,
    patch INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('none', 'staging', 'production', 'archived')),
    metrics TEXT NOT NULL DEFAULT '{}',
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    uri TEXT NOT NULL,
    url TEXT,
    tags TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (name, version),
    UNIQUE (name, major, minor, patch)
);
CREATE UNIQUE INDEX one_production ON versions (name) WHERE status = 'production';
CREATE TABLE promotions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version TEXT NOT NULL,       -- became production
    previous TEXT,               -- was production before (NULL: none)
    action TEXT NOT NULL CHECK (action IN ('promote', 'rollback')),
    undone INTEGER NOT NULL DEFAULT 0,  -- 1 once a rollback reverted this promotion
    at TEXT NOT NULL,
    by TEXT NOT NULL
);
CREATE INDEX promotions_by_name ON promotions (name, version);
"""



def _migrate(con: sqlite3.Connection, from_version: int) -> None:
    if from_version == 0:
        _sqlite.run_script(con, _SCHEMA_V1)


def _write_json(path: Path, content: Any) -> None:
    atomic.write_json(path, content, indent=2, sort_keys=True)


def _row_to_version(row: sqlite3.Row) -> ModelVersion:
    return ModelVersion(
        name=row["name"],
        version=row["version"],
        run_id=row["run_id"],
        sha256=row["sha256"],
        status=row["status"],
        metrics=json.loads(row["metrics"]),
        created_by=row["created_by"],
        created_at=row["created_at"],
        uri=row["uri"],
        url=row["url"],
        tags=json.loads(row["tags"]),
    )


class SqliteRegistry(Registry):
    """Registry backed by one SQLite file and a model folder (see the module docstring)."""

    def __init__(
        self,
        db_path: str | os.PathLike | None = None,
        store_dir: str | os.PathLike | None = None,
        *,
        adopt_models: bool = False,
    ) -> None:
        """Open (or create) the registry; ``adopt_models``: create it even beside registered files (doctor)."""
        self.db_path = Path(db_path) if db_path is not None else config.home() / "registry.db"
        self.store_dir = Path(store_dir) if store_dir is not None else config.home() / "models"
        _sqlite.init_db(
            self.db_path, SCHEMA_VERSION, _migrate, "registry", RegistryError,
            refuse_new=None if adopt_models else self._refuse_new,
        )

    def registered_files(self) -> list[Path]:
        """Every ``models/<name>/<version>/model.keras`` on disk, indexed or not."""
        return sorted(self.store_dir.glob(f"*/*/{MODEL_FILE}"))

    def _refuse_new(self) -> str | None:
        # An empty index beside registered files would judge "no production model" and hand out
        # their version numbers again: fail closed and point at the rebuild instead.
        files = self.registered_files()
        if not files:
            return None
        return (
            f"the registry database {self.db_path} is missing but {self.store_dir} holds {len(files)} "
            f"registered model file(s); run `digitops doctor --rebuild-registry` to rebuild the index from them"
        )

    def write_sidecars(self, name: str) -> None:
        """Rewrite ``version.json`` of every version of ``name`` and its ``history.json`` (atomically).

        Best effort: the index is the record; these only make it rebuildable.
        """
        try:
            for mv in self.list_versions(name):
                folder = Path(mv.uri).parent
                if folder.is_dir():
                    _write_json(folder / SIDECAR, mv.to_dict())
            model_dir = self.store_dir / name
            if model_dir.is_dir():
                _write_json(model_dir / HISTORY_FILE, self.history(name))
        except OSError:
            pass

    def __repr__(self) -> str:
        return f"SqliteRegistry(db_path={str(self.db_path)!r})"

    def _errors(self) -> Any:
        """A ``sqlite3.Error`` in the block becomes a :class:`RegistryError` naming this store."""
        return _sqlite.translated("registry", self.db_path, RegistryError)

    def _connect(self) -> sqlite3.Connection:
        with self._errors():
            return _sqlite.connect(self.db_path)

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        with closing(self._connect()) as con:
            with self._errors():
                return con.execute(sql, args).fetchall()

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
        """Store ``model_path`` as the next version of ``name`` (``bump``: major/minor/patch).

        ``status`` may be ``production`` to register and promote in one step.
        """
        # Long: copy, verify, number and insert must happen in this order under one lock to stay race-free.
        src = check_new_version(name, model_path, status, bump)
        metrics_json = json.dumps({str(k): float(v) for k, v in (metrics or {}).items()}, sort_keys=True)

        # Copy (slow, outside the lock) into the model's folder, then verify the copy.
        model_dir = self.store_dir / name
        model_dir.mkdir(parents=True, exist_ok=True)
        digest = sha256_file(src)
        fd, tmp_name = tempfile.mkstemp(dir=model_dir, prefix=".incoming-", suffix=".keras")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            shutil.copyfile(src, tmp)
            copied = sha256_file(tmp)
            if copied != digest:
                raise RegistryError(
                    f"copy of {src} changed while registering: source sha256 {digest}, copy {copied}"
                )
            size = tmp.stat().st_size
            user, now = current_user(), _sqlite.utc_now()
            with closing(self._connect()) as con:
                with self._errors():
                    with _sqlite.transaction(con):
                        row = con.execute(
                            "SELECT major, minor, patch FROM versions WHERE name = ?"
                            " ORDER BY major DESC, minor DESC, patch DESC LIMIT 1",
                            (name,),
                        ).fetchone()
                        latest = (row["major"], row["minor"], row["patch"]) if row else None
                        major, minor, patch = next_version(latest, bump)
                        version = f"{major}.{minor}.{patch}"
                        dest = model_dir / version / MODEL_FILE
                        con.execute(
                            "INSERT INTO versions (name, version, major, minor, patch, run_id, sha256, size,"
                            " status, metrics, created_by, created_at, uri) VALUES"
                            " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (
                                name,
                                version,
                                major,
                                minor,
                                patch,
                                run_id,
                                digest,
                                size,
                                NONE if status == PRODUCTION else status,
                                metrics_json,
                                user,
                                now,
                                str(dest.resolve()),
                            ),
                        )
                        if status == PRODUCTION:
                            self._promote(con, name, version, user)
                        # Placed while holding the lock, and never over an existing file: one there
                        # belongs to a version this index lost (link fails instead of replacing).
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        try:
                            os.link(tmp, dest)
                        except FileExistsError:
                            raise RegistryError(
                                f"refusing to register {name} {version}: {dest} already exists, so the "
                                f"registry index {self.db_path} has lost versions; run "
                                "`digitops doctor --rebuild-registry` (nothing was overwritten)"
                            ) from None
        finally:
            tmp.unlink(missing_ok=True)
        self.write_sidecars(name)
        return self.get_version(name, version)

    # -- reads --------------------------------------------------------------------

    def list_versions(self, name: str) -> list[ModelVersion]:
        """All versions of ``name``, oldest first (by semantic version)."""
        rows = self._query(
            "SELECT * FROM versions WHERE name = ? ORDER BY major, minor, patch", (name,)
        )
        return [_row_to_version(r) for r in rows]

    def get_version(self, name: str, version: str) -> ModelVersion:
        """One version, or :class:`RegistryError` naming the known ones."""
        rows = self._query("SELECT * FROM versions WHERE name = ? AND version = ?", (name, version))
        if rows:
            return _row_to_version(rows[0])
        known = [v.version for v in self.list_versions(name)]
        if not known:
            raise RegistryError(f"model {name!r} has no registered versions in {self.db_path}")
        raise RegistryError(f"model {name!r} has no version {version!r}; known: {', '.join(known)}")

    def get_by_status(self, name: str, status: str = PRODUCTION) -> ModelVersion | None:
        """The newest version with ``status`` (the only one, for production), or None."""
        check_status(status)
        rows = self._query(
            "SELECT * FROM versions WHERE name = ? AND status = ?"
            " ORDER BY major DESC, minor DESC, patch DESC LIMIT 1",
            (name, status),
        )
        return _row_to_version(rows[0]) if rows else None

    def history(self, name: str) -> list[dict[str, Any]]:
        """Promotions and rollbacks of ``name``, oldest first."""
        rows = self._query(
            "SELECT version, previous, action, undone, at, by FROM promotions WHERE name = ? ORDER BY id",
            (name,),
        )
        return [dict(r) | {"undone": bool(r["undone"])} for r in rows]

    # -- statuses -----------------------------------------------------------------

    def _promote(self, con: sqlite3.Connection, name: str, version: str, user: str) -> None:
        """Inside a transaction: archive the current production and promote ``version``."""
        cur = con.execute(
            "SELECT version FROM versions WHERE name = ? AND status = ?", (name, PRODUCTION)
        ).fetchone()
        previous = cur["version"] if cur else None
        if previous == version:
            return
        if previous is not None:
            con.execute(
                "UPDATE versions SET status = ? WHERE name = ? AND version = ?", (ARCHIVED, name, previous)
            )
        con.execute(
            "UPDATE versions SET status = ? WHERE name = ? AND version = ?", (PRODUCTION, name, version)
        )
        con.execute(
            "INSERT INTO promotions (name, version, previous, action, at, by) VALUES (?, ?, ?, 'promote', ?, ?)",
            (name, version, previous, _sqlite.utc_now(), user),
        )

    def set_status(self, name: str, version: str, status: str) -> ModelVersion:
        """Set a version's status; setting production archives the previous production."""
        check_status(status)
        with closing(self._connect()) as con, self._errors():
            try:
                with _sqlite.transaction(con):
                    if (
                        con.execute(
                            "SELECT 1 FROM versions WHERE name = ? AND version = ?", (name, version)
                        ).fetchone()
                        is None
                    ):
                        raise LookupError
                    if status == PRODUCTION:
                        self._promote(con, name, version, current_user())
                    else:
                        con.execute(
                            "UPDATE versions SET status = ? WHERE name = ? AND version = ?",
                            (status, name, version),
                        )
            except LookupError:
                return self.get_version(name, version)  # raises, naming the known versions
        self.write_sidecars(name)
        return self.get_version(name, version)

    def rollback(self, name: str) -> ModelVersion:
        """Make the production version before the current one production again.

        The current one becomes ``archived``. Repeating walks further back.
        """
        with closing(self._connect()) as con:
            with self._errors():
                with _sqlite.transaction(con):
                    cur = con.execute(
                        "SELECT version FROM versions WHERE name = ? AND status = ?", (name, PRODUCTION)
                    ).fetchone()
                    if cur is None:
                        raise RegistryError(
                            f"model {name!r} has no production version to roll back from; "
                            "promote one with `digitops registry promote VERSION`"
                        )
                    current = cur["version"]
                    promo = con.execute(
                        "SELECT id, previous FROM promotions WHERE name = ? AND version = ?"
                        " AND action = 'promote' AND undone = 0 ORDER BY id DESC LIMIT 1",
                        (name, current),
                    ).fetchone()
                    if promo is None or promo["previous"] is None:
                        raise RegistryError(
                            f"model {name!r}: production version {current} has no earlier production "
                            "version to roll back to"
                        )
                    target = promo["previous"]
                    con.execute(
                        "UPDATE versions SET status = ? WHERE name = ? AND version = ?",
                        (ARCHIVED, name, current),
                    )
                    con.execute(
                        "UPDATE versions SET status = ? WHERE name = ? AND version = ?",
                        (PRODUCTION, name, target),
                    )
                    con.execute("UPDATE promotions SET undone = 1 WHERE id = ?", (promo["id"],))
                    con.execute(
                        "INSERT INTO promotions (name, version, previous, action, at, by)"
                        " VALUES (?, ?, ?, 'rollback', ?, ?)",
                        (name, target, current, _sqlite.utc_now(), current_user()),
                    )
        self.write_sidecars(name)
        return self.get_version(name, target)

    # -- download -----------------------------------------------------------------

    def download(
        self, name: str, dest: str | os.PathLike, *, version: str | None = None, status: str | None = None
    ) -> Path:
        """Copy a version's file to ``dest``, verifying its SHA256 before and after copying.

        ``dest`` is a ``.keras`` path, or a folder (created if needed) that
        receives ``model.keras``. Without ``version`` or ``status`` the
        production version is used. On a checksum mismatch nothing is left at
        ``dest`` and :class:`RegistryError` names both digests.
        """
        if version is not None and status is not None:
            raise RegistryError("give a version or a status, not both")
        if version is not None:
            mv = self.get_version(name, version)
        else:
            status = status or PRODUCTION
            found = self.get_by_status(name, status)
            if found is None:
                raise RegistryError(f"model {name!r} has no version with status {status!r}")
            mv = found
        stored = Path(mv.uri)
        if not stored.is_file():
            raise RegistryError(f"{name} {mv.version}: the registered file {stored} is missing")
        self.verify(mv, stored, f"stored file {stored}")
        target = Path(dest)
        if target.is_file() and target.suffix != ".keras":
            raise RegistryError(f"cannot download to {target}: it is a file, not a folder or a .keras path")
        if target.suffix != ".keras" or target.is_dir():
            target = target / MODEL_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic.replacing(target) as tmp:
            shutil.copyfile(stored, tmp)
            self.verify(mv, tmp, "downloaded copy")
        return target
