"""The embedded tracker: one SQLite file plus an artifacts folder.

Layout (defaults, both under ``$DIGITOPS_HOME``, default ``.digitops``)::

    tracking.db                 runs, params, tags, metrics, artifacts
    artifacts/<run_id>/<name>   copies of logged files

Every call opens its own connection and changes the database in one short
``BEGIN IMMEDIATE`` transaction, so the notebook kernel and the runner (or two
CI jobs) can write the same file at once, and a process killed mid-call leaves
the database as it was before that call.

Final metrics are stored with ``step`` NULL, per-epoch history with its step;
NaN values are stored as NULL (SQLite has no NaN) and read back as NaN.

Size (over 400 lines): schema, migration, writes, reads, reaping and import of one SQLite store;
most of it is SQL that belongs to this store only.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any, Iterable

from digitops import _sqlite, atomic, config
from digitops.tracking.base import (
    ABANDONED,
    FAILED,
    FINISHED,
    METRICS_REUSED_FROM,
    RUNNING,
    STATUSES,
    MetricSummary,
    RunRecord,
    Tracker,
    TrackingError,
    artifact_dir_for,
)

SCHEMA_VERSION = 3

_SCHEMA_V1 = """
CREATE TABLE runs (
    seq INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL UNIQUE,
    project TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    git_commit TEXT,
    data_checksum TEXT,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    url TEXT
);
CREATE INDEX runs_by_project ON runs (project, started_at);
CREATE TABLE params (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,  -- JSON, so 0.001 comes back a float and 2 an int
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
CREATE TABLE tags (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
CREATE TABLE metrics (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    step INTEGER,          -- NULL: final metric, else epoch
    value REAL,            -- NULL: NaN
    logged_at TEXT NOT NULL
);
-- One final value per (run, key) and one point per (run, key, step); both serve per-run reads.
CREATE UNIQUE INDEX metrics_final ON metrics (run_id, key) WHERE step IS NULL;
CREATE UNIQUE INDEX metrics_history ON metrics (run_id, key, step) WHERE step IS NOT NULL;
-- metric_summary reads one key's final values across runs: a covering index of exactly that.
CREATE INDEX metrics_summary ON metrics (key, run_id, value) WHERE step IS NULL;
CREATE TABLE artifacts (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    logged_at TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
) WITHOUT ROWID;
"""


# v2: the process that owns a running run (pid on host), so a later command can tell a run whose
# process is gone (marked 'abandoned'). SQLite cannot change a CHECK in place: the table is rebuilt
# (init_db turns foreign keys off for migrations, so dropping the old table cascades nothing).
_SCHEMA_V2 = """
CREATE TABLE runs_v2 (
    seq INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL UNIQUE,
    project TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed', 'abandoned')),
    git_commit TEXT,
    data_checksum TEXT,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    url TEXT,
    pid INTEGER,
    host TEXT
);
INSERT INTO runs_v2 (seq, run_id, project, name, status, git_commit, data_checksum, started_at, ended_at, url)
    SELECT seq, run_id, project, name, status, git_commit, data_checksum, started_at, ended_at, url FROM runs;
DROP TABLE runs;
ALTER TABLE runs_v2 RENAME TO runs;
CREATE INDEX runs_by_project ON runs (project, started_at);
"""


# v3: runs found by a tag's value (find_reusable looks a fingerprint up without reading every run).
_SCHEMA_V3 = """
CREATE INDEX tags_by_value ON tags (key, value);
"""

#: One statement over one key's final values (index ``metrics_summary``); ``{order}``: DESC or ASC.
_SUMMARY_SQL = f"""
    WITH c AS (
        SELECT m.run_id, m.value, r.started_at, r.seq
        FROM metrics m JOIN runs r ON r.run_id = m.run_id
        WHERE m.key = ? AND m.step IS NULL AND m.value IS NOT NULL
          AND r.project = ? AND r.status = '{FINISHED}'
          AND (? IS NULL OR r.data_checksum = ?)
          AND m.run_id NOT IN (SELECT value FROM json_each(?))
          AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.run_id = r.run_id AND t.key = '{METRICS_REUSED_FROM}')
    )
    SELECT COUNT(*) AS n, AVG(value) AS mean, MAX(value) AS hi, MIN(value) AS lo,
           (SELECT run_id FROM c ORDER BY value {{order}}, started_at, seq LIMIT 1) AS best_run
    FROM c
"""


def _migrate(con: sqlite3.Connection, from_version: int) -> None:
    if from_version == 0:
        _sqlite.run_script(con, _SCHEMA_V1)
    if from_version <= 1:
        _sqlite.run_script(con, _SCHEMA_V2)
    if from_version <= 2:
        _sqlite.run_script(con, _SCHEMA_V3)


def host_name() -> str:
    """This machine's name, recorded with the pid of the process that owns a run."""
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this machine (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _to_db(value: float) -> float | None:
    v = float(value)
    return None if math.isnan(v) else v


def _from_db(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _json_default(value: Any) -> Any:
    # numpy scalars keep their number; paths and anything else a readable string, not a failed run.
    item = getattr(value, "item", None)
    return item() if callable(item) and getattr(value, "ndim", None) == 0 else str(value)


def _json_param(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=True, default=_json_default)


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError) as exc:
            raise TrackingError(f"metric {key!r} must be a number, got {value!r}") from exc
    return out


class SqliteTracker(Tracker):
    """Tracker backed by one SQLite file (see the module docstring)."""

    def __init__(
        self, db_path: str | os.PathLike | None = None, artifacts_dir: str | os.PathLike | None = None
    ) -> None:
        self.db_path = Path(db_path) if db_path is not None else config.home() / "tracking.db"
        self.artifacts_dir = (
            Path(artifacts_dir) if artifacts_dir is not None else config.home() / "artifacts"
        )
        _sqlite.init_db(self.db_path, SCHEMA_VERSION, _migrate, "tracking", TrackingError)

    def __repr__(self) -> str:
        return f"SqliteTracker(db_path={str(self.db_path)!r})"

    # -- plumbing -----------------------------------------------------------------

    def _errors(self) -> Any:
        """A ``sqlite3.Error`` in the block becomes a :class:`TrackingError` naming this store."""
        return _sqlite.translated("tracking", self.db_path, TrackingError)

    def _connect(self) -> sqlite3.Connection:
        with self._errors():
            return _sqlite.connect(self.db_path)

    def _write(self, run_id: str, fn: Any) -> Any:
        """Run ``fn(con)`` in a write transaction after checking ``run_id`` exists."""
        with closing(self._connect()) as con:
            with self._errors():
                with _sqlite.transaction(con):
                    if con.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                        raise TrackingError(f"unknown run {run_id!r} in {self.db_path}")
                    return fn(con)

    # -- writes -------------------------------------------------------------------

    def start_run(
        self,
        run_id: str,
        *,
        name: str = "",
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        git_commit: str | None = None,
        data_checksum: str | None = None,
        project: str | None = None,
    ) -> RunRecord:
        """Create the run, or resume it (status back to running, ``ended_at`` cleared)."""
        if not run_id or "/" in run_id or run_id in (".", ".."):
            raise TrackingError(f"invalid run id {run_id!r}: it names a folder, so no '/' and not empty")
        with closing(self._connect()) as con:
            with self._errors():
                with _sqlite.transaction(con):
                    row = con.execute("SELECT project FROM runs WHERE run_id = ?", (run_id,)).fetchone()
                    if row is None:
                        con.execute(
                            "INSERT INTO runs (run_id, project, name, status, git_commit, data_checksum,"
                            " started_at, pid, host) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (
                                run_id,
                                project or config.project_name(),
                                name,
                                RUNNING,
                                git_commit,
                                data_checksum,
                                _sqlite.utc_now(),
                                os.getpid(),
                                host_name(),
                            ),
                        )
                    else:
                        if project is not None and project != row["project"]:
                            raise TrackingError(
                                f"run {run_id!r} belongs to project {row['project']!r}, not {project!r}"
                            )
                        # Resuming (evaluate after train): keep what is known, fill what is new.
                        # A run already running keeps its owner (the runner, not the kernel it started).
                        con.execute(
                            "UPDATE runs SET status = ?, ended_at = NULL,"
                            " name = CASE WHEN ? != '' THEN ? ELSE name END,"
                            " git_commit = COALESCE(?, git_commit),"
                            " data_checksum = COALESCE(?, data_checksum),"
                            " pid = CASE WHEN status = ? THEN pid ELSE ? END,"
                            " host = CASE WHEN status = ? THEN host ELSE ? END WHERE run_id = ?",
                            (RUNNING, name, name, git_commit, data_checksum,
                             RUNNING, os.getpid(), RUNNING, host_name(), run_id),
                        )
                    self._put_params(con, run_id, params or {})
                    self._put_tags(con, run_id, tags or {})
        return self.get_run(run_id)

    @staticmethod
    def _put_params(con: sqlite3.Connection, run_id: str, params: dict[str, Any]) -> None:
        con.executemany(
            "INSERT INTO params (run_id, key, value) VALUES (?, ?, ?)"
            " ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value",
            [(run_id, str(k), _json_param(v)) for k, v in params.items()],
        )

    @staticmethod
    def _put_tags(con: sqlite3.Connection, run_id: str, tags: dict[str, str]) -> None:
        con.executemany(
            "INSERT INTO tags (run_id, key, value) VALUES (?, ?, ?)"
            " ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value",
            [(run_id, str(k), str(v)) for k, v in tags.items()],
        )

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Merge ``params`` into the run's parameters."""
        self._write(run_id, lambda con: self._put_params(con, run_id, params))

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Merge ``tags`` into the run's tags."""
        self._write(run_id, lambda con: self._put_tags(con, run_id, tags))

    def set_url(self, run_id: str, url: str | None) -> None:
        """Record where a person can look at the run (e.g. a mirrored Comet experiment)."""
        self._write(run_id, lambda con: con.execute("UPDATE runs SET url = ? WHERE run_id = ?", (url, run_id)))

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        """With ``step``: one point of per-epoch history each. Without: final metrics (last write wins)."""
        values = _numeric(metrics)
        if step is not None:
            step = int(step)
            if step < 0:
                raise TrackingError(f"step must be >= 0, got {step}")
        now = _sqlite.utc_now()
        rows = [(run_id, k, step, _to_db(v), now) for k, v in values.items()]
        if step is None:
            sql = (
                "INSERT INTO metrics (run_id, key, step, value, logged_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (run_id, key) WHERE step IS NULL"
                " DO UPDATE SET value = excluded.value, logged_at = excluded.logged_at"
            )
        else:
            sql = (
                "INSERT INTO metrics (run_id, key, step, value, logged_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (run_id, key, step) WHERE step IS NOT NULL"
                " DO UPDATE SET value = excluded.value, logged_at = excluded.logged_at"
            )
        self._write(run_id, lambda con: con.executemany(sql, rows))

    def log_artifact(self, run_id: str, path: str | os.PathLike, name: str | None = None) -> str:
        """Copy ``path`` to ``artifacts/<run_id>/<name>`` and record it; returns the stored path."""
        src = Path(path)
        if not src.is_file():
            raise TrackingError(f"cannot log artifact {src}: no such file")
        name = name or src.name
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise TrackingError(f"invalid artifact name {name!r}: a plain file name is expected")
        self._write(run_id, lambda con: None)  # unknown run -> error before copying anything
        folder = artifact_dir_for(self.artifacts_dir, run_id)
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / name
        # Copy beside the destination then rename, so a reader never sees half a file.
        atomic.copy(src, dest)
        stored = str(dest.resolve())
        size = dest.stat().st_size
        self._write(
            run_id,
            lambda con: con.execute(
                "INSERT INTO artifacts (run_id, name, path, size, logged_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (run_id, name) DO UPDATE SET path = excluded.path, size = excluded.size,"
                " logged_at = excluded.logged_at",
                (run_id, name, stored, size, _sqlite.utc_now()),
            ),
        )
        return stored

    def mark_abandoned(self) -> list[str]:
        """Mark ``abandoned`` the running runs whose owning process is gone; returns their ids.

        Only runs started on this host are judged (a pid means nothing elsewhere);
        runs without a recorded pid (older stores) are left for ``runs mark-failed``.
        """
        host = host_name()
        with closing(self._connect()) as con:
            with self._errors():
                rows = con.execute(
                    "SELECT run_id, pid FROM runs WHERE status = ? AND host = ? AND pid IS NOT NULL",
                    (RUNNING, host),
                ).fetchall()
                gone = [(r["run_id"], r["pid"]) for r in rows if not pid_alive(int(r["pid"]))]
                if not gone:
                    return []
                with _sqlite.transaction(con):
                    # Re-checked in the write: the run may have ended (or been resumed) meanwhile.
                    con.executemany(
                        "UPDATE runs SET status = ?, ended_at = ? WHERE run_id = ? AND status = ? AND pid = ?",
                        [(ABANDONED, _sqlite.utc_now(), run_id, RUNNING, pid) for run_id, pid in gone],
                    )
        return [run_id for run_id, _ in gone]

    def end_run(self, run_id: str, status: str = FINISHED) -> None:
        """Close the run as ``finished`` or ``failed``."""
        if status not in (FINISHED, FAILED):
            raise TrackingError(f"a run ends as {FINISHED!r} or {FAILED!r}, not {status!r}")
        self._write(
            run_id,
            lambda con: con.execute(
                "UPDATE runs SET status = ?, ended_at = ? WHERE run_id = ?",
                (status, _sqlite.utc_now(), run_id),
            ),
        )

    def import_runs(self, records: Iterable[RunRecord]) -> int:
        """Insert many complete runs in one transaction (benchmarks, imports); returns how many.

        Existing run ids are an error; artifacts are recorded as given, not copied.
        """
        records = list(records)
        now = _sqlite.utc_now()
        with closing(self._connect()) as con, self._errors():
            try:
                with _sqlite.transaction(con):
                    con.executemany(
                        "INSERT INTO runs (run_id, project, name, status, git_commit, data_checksum,"
                        " started_at, ended_at, url) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (
                                r.run_id,
                                r.project or config.project_name(),
                                r.name,
                                r.status,
                                r.git_commit,
                                r.data_checksum,
                                r.started_at or now,
                                r.ended_at,
                                r.url,
                            )
                            for r in records
                        ],
                    )
                    con.executemany(
                        "INSERT INTO params (run_id, key, value) VALUES (?, ?, ?)",
                        [(r.run_id, k, _json_param(v)) for r in records for k, v in r.params.items()],
                    )
                    con.executemany(
                        "INSERT INTO tags (run_id, key, value) VALUES (?, ?, ?)",
                        [(r.run_id, k, str(v)) for r in records for k, v in r.tags.items()],
                    )
                    con.executemany(
                        "INSERT INTO metrics (run_id, key, step, value, logged_at) VALUES (?, ?, ?, ?, ?)",
                        [
                            (r.run_id, k, None, _to_db(v), now)
                            for r in records
                            for k, v in _numeric(r.metrics).items()
                        ]
                        + [
                            (r.run_id, k, i, _to_db(v), now)
                            for r in records
                            for k, vals in r.history.items()
                            for i, v in enumerate(vals)
                        ],
                    )
                    con.executemany(
                        "INSERT INTO artifacts (run_id, name, path, size, logged_at) VALUES (?, ?, ?, 0, ?)",
                        [(r.run_id, k, p, now) for r in records for k, p in r.artifacts.items()],
                    )
            except sqlite3.IntegrityError as exc:
                raise TrackingError(f"cannot import runs into {self.db_path}: {exc}") from exc
        return len(records)

    # -- reads --------------------------------------------------------------------

    def _records(self, con: sqlite3.Connection, rows: list[sqlite3.Row]) -> list[RunRecord]:
        if not rows:
            return []
        records = {
            r["run_id"]: RunRecord(
                run_id=r["run_id"],
                project=r["project"],
                name=r["name"],
                status=r["status"],
                git_commit=r["git_commit"],
                data_checksum=r["data_checksum"],
                started_at=r["started_at"],
                ended_at=r["ended_at"],
                url=r["url"],
            )
            for r in rows
        }
        ids = json.dumps(list(records))
        # One query per table for the whole page of runs, not one per run.
        in_ids = "run_id IN (SELECT value FROM json_each(?))"
        for r in con.execute(f"SELECT run_id, key, value FROM params WHERE {in_ids}", (ids,)):
            records[r["run_id"]].params[r["key"]] = json.loads(r["value"])
        for r in con.execute(f"SELECT run_id, key, value FROM tags WHERE {in_ids}", (ids,)):
            records[r["run_id"]].tags[r["key"]] = r["value"]
        # Separate final/history queries so each can use its partial index.
        for r in con.execute(
            f"SELECT run_id, key, value FROM metrics WHERE {in_ids} AND step IS NULL", (ids,)
        ):
            records[r["run_id"]].metrics[r["key"]] = _from_db(r["value"])
        for r in con.execute(
            f"SELECT run_id, key, value FROM metrics WHERE {in_ids} AND step IS NOT NULL"
            " ORDER BY run_id, key, step",
            (ids,),
        ):
            records[r["run_id"]].history.setdefault(r["key"], []).append(_from_db(r["value"]))
        for r in con.execute(f"SELECT run_id, name, path FROM artifacts WHERE {in_ids}", (ids,)):
            records[r["run_id"]].artifacts[r["name"]] = r["path"]
        return [records[r["run_id"]] for r in rows]

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[RunRecord]:
        with closing(self._connect()) as con:
            with self._errors():
                # A read transaction: the runs and their metrics come from one snapshot.
                con.execute("BEGIN")
                try:
                    return self._records(con, con.execute(sql, args).fetchall())
                finally:
                    con.execute("COMMIT")

    def get_run(self, run_id: str) -> RunRecord:
        """The run, or :class:`TrackingError` when unknown."""
        found = self._read("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        if not found:
            raise TrackingError(f"unknown run {run_id!r} in {self.db_path}")
        return found[0]

    def list_runs(
        self, project: str | None = None, status: str | None = None, limit: int | None = None
    ) -> list[RunRecord]:
        """Runs of ``project`` (default: the configured one), newest first."""
        if status is not None and status not in STATUSES:
            raise TrackingError(f"unknown status {status!r}; choose one of: {', '.join(STATUSES)}")
        sql = "SELECT * FROM runs WHERE project = ?"
        args: list[Any] = [project or config.project_name()]
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        sql += " ORDER BY started_at DESC, seq DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return self._read(sql, tuple(args))

    def find_reusable(
        self, fingerprint: str, project: str | None = None, *, tag: str = "digitops.fingerprint"
    ) -> RunRecord | None:
        """The newest finished run whose ``tag`` is ``fingerprint``: one indexed lookup, not a scan of runs."""
        found = self._read(
            "SELECT r.* FROM runs r JOIN tags t ON t.run_id = r.run_id"
            " WHERE t.key = ? AND t.value = ? AND r.project = ? AND r.status = ?"
            " ORDER BY r.started_at DESC, r.seq DESC LIMIT 1",
            (tag, fingerprint, project or config.project_name(), FINISHED),
        )
        return found[0] if found else None

    def metric_summary(
        self,
        metric: str,
        *,
        project: str | None = None,
        exclude: Iterable[str] = (),
        data_checksum: str | None = None,
        higher_is_better: bool = True,
    ) -> MetricSummary:
        """Mean and best of a final metric over the project's finished runs, less ``exclude``.

        Only finished runs with a numeric value count; with ``data_checksum``,
        only runs on that dataset. Ties for best go to the earliest run.
        """
        sql = _SUMMARY_SQL.format(order="DESC" if higher_is_better else "ASC")
        args = (
            metric,
            project or config.project_name(),
            data_checksum,
            data_checksum,
            json.dumps([str(e) for e in exclude]),
        )
        with closing(self._connect()) as con:
            with self._errors():
                row = con.execute(sql, args).fetchone()
        n = int(row["n"])
        return MetricSummary.assemble(
            metric, count=n, mean=float(row["mean"]) if n else None, hi=float(row["hi"]) if n else None,
            lo=float(row["lo"]) if n else None, best_run_id=row["best_run"], higher_is_better=higher_is_better,
        )

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result (``"ok"`` when healthy)."""
        with closing(self._connect()) as con:
            return "\n".join(str(r[0]) for r in con.execute("PRAGMA integrity_check"))
