"""Check the embedded stores and rebuild what can be rebuilt (``digitops doctor``).

The check runs SQLite's ``integrity_check`` on ``tracking.db`` and
``registry.db``, refuses 0-byte files, and checks every registered model file
against its recorded SHA256 (and the other way: files the index does not
know). A repair never deletes: the damaged database is kept aside as
``<name>.corrupt-<UTC time>`` and a new one is built beside it and renamed into
place. The registry index is rebuilt from ``models/`` (each version's
``version.json`` and each model's ``history.json``; a file without them is
matched to its run by checksum and starts with status ``none``); the tracker
keeps every row SQLite can still read and adds, from ``runs/*/metrics.json``,
the runs it could not.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from digitops import config

TRACKING, REGISTRY = "tracking", "registry"


@dataclass
class Finding:
    """One line of the doctor's report."""

    store: str
    ok: bool
    message: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'PROBLEM'}  {self.store}: {self.message}"


def db_state(path: Path) -> tuple[str, str]:
    """``(state, detail)`` of a database file: absent, empty, damaged or ok."""
    if not path.exists():
        return "absent", f"{path} does not exist"
    if path.stat().st_size == 0:
        return "empty", f"{path} is empty (0 bytes)"
    try:
        with closing(sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=30)) as con:
            result = [str(r[0]) for r in con.execute("PRAGMA integrity_check")]
    except sqlite3.DatabaseError as exc:
        return "damaged", f"{path}: {exc}"
    if result != ["ok"]:
        return "damaged", f"{path}: integrity check: {'; '.join(result[:3])}"
    return "ok", f"{path}: integrity check ok"


def check(home: Path | None = None) -> list[Finding]:
    """Both stores' state and, for a healthy registry, its files against the index."""
    from digitops.registry.base import sha256_file

    home = home or config.home()
    findings = []
    for store in (TRACKING, REGISTRY):
        state, detail = db_state(home / f"{store}.db")
        findings.append(Finding(store, state in ("ok", "absent"), detail))
    models = home / "models"
    files = sorted(models.glob("*/*/model.keras"))
    reg_state, _ = db_state(home / "registry.db")
    if reg_state == "absent" and files:
        findings.append(Finding(REGISTRY, False, f"no index but {len(files)} registered model file(s) in {models}"))
    if reg_state != "ok":
        return findings
    try:
        with closing(sqlite3.connect(f"file:{quote(str(home / 'registry.db'))}?mode=ro", uri=True)) as con:
            rows = con.execute("SELECT name, version, sha256, uri FROM versions").fetchall()
    except sqlite3.Error as exc:
        findings.append(Finding(REGISTRY, False, f"cannot read the versions: {exc}"))
        return findings
    indexed = set()
    for name, version, digest, uri in rows:
        path = Path(uri)
        indexed.add(path.resolve())
        if not path.is_file():
            findings.append(Finding(REGISTRY, False, f"{name} {version}: file {path} is missing"))
        elif sha256_file(path) != digest:
            findings.append(Finding(REGISTRY, False, f"{name} {version}: {path} does not match its sha256"))
    unknown = [f for f in files if f.resolve() not in indexed]
    if unknown:
        findings.append(Finding(REGISTRY, False, f"{len(unknown)} model file(s) the index does not know, "
                                                 f"e.g. {unknown[0]}"))
    findings.append(Finding(REGISTRY, True, f"{len(rows)} version(s) indexed"))
    return findings


def _stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _set_aside(path: Path) -> Path | None:
    """Rename a damaged database (and its WAL files) to ``*.corrupt-<ts>``; None when absent."""
    if not path.exists():
        return None
    aside = path.with_name(f"{path.name}.corrupt-{_stamp()}")
    for suffix in ("", "-wal", "-shm"):
        src = path.with_name(path.name + suffix)
        if src.exists():
            os.replace(src, aside.with_name(aside.name + suffix))
    return aside


def _rebuild(path: Path, build: Any) -> tuple[Path | None, Any]:
    """Build a new store at a temporary name with ``build(tmp)``, set the old aside, rename into place."""
    from filelock import FileLock

    with FileLock(str(path) + ".lock", timeout=120):
        tmp = path.with_name(f".{path.name}.rebuild-{os.getpid()}")
        for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            leftover.unlink(missing_ok=True)
        try:
            outcome = build(tmp)
            aside = _set_aside(path)
            os.replace(tmp, path)
        finally:
            for leftover in (tmp, Path(str(tmp) + ".lock")):
                leftover.unlink(missing_ok=True)
    return aside, outcome


def _run_for_checksum(digest: str, runs_root: Path) -> str | None:
    from digitops.registry.base import sha256_file

    for candidate in sorted(runs_root.glob("*/model.keras")):
        try:
            if sha256_file(candidate) == digest:
                return candidate.parent.name
        except OSError:
            continue
    return None


def rebuild_registry(home: Path | None = None, runs_root: Path | None = None) -> str:
    """Rebuild ``registry.db`` from ``models/``; returns a one-paragraph summary."""
    # Long: one pass over models/ that must read every sidecar and history file before writing the new index.
    from digitops.registry.base import PRODUCTION, STATUSES, sha256_file
    from digitops.registry.sqlite import HISTORY_FILE, SIDECAR, SqliteRegistry
    from digitops.registry.versions import VERSION_RE, current_user

    home = home or config.home()
    runs_root = runs_root or config.runs_dir()
    store = home / "models"
    notes: list[str] = []

    def build(tmp: Path) -> int:
        reg = SqliteRegistry(tmp, store, adopt_models=True)
        rows, promotions = [], []
        for f in sorted(store.glob("*/*/model.keras")):
            name, version = f.parent.parent.name, f.parent.name
            if not VERSION_RE.match(version):
                notes.append(f"skipped {f}: {version!r} is not a version")
                continue
            digest = sha256_file(f)
            side: dict[str, Any] = {}
            if (f.parent / SIDECAR).is_file():
                try:
                    side = json.loads((f.parent / SIDECAR).read_text())
                except ValueError:
                    notes.append(f"{name} {version}: unreadable {SIDECAR}")
            if side.get("sha256") and side["sha256"] != digest:
                # Keep the recorded checksum: download then refuses the changed file, as it should.
                notes.append(f"{name} {version}: file changed since registration (download will refuse it)")
            run_id = side.get("run_id") or _run_for_checksum(digest, runs_root) or "unknown"
            status = side.get("status") if side.get("status") in STATUSES else "none"
            major, minor, patch = (int(x) for x in version.split("."))
            rows.append((name, version, major, minor, patch, run_id, side.get("sha256") or digest,
                         f.stat().st_size, status, json.dumps(side.get("metrics") or {}, sort_keys=True),
                         side.get("created_by") or current_user(),
                         side.get("created_at") or dt.datetime.fromtimestamp(
                             f.stat().st_mtime, dt.timezone.utc).isoformat(),
                         str(f.resolve()), side.get("url"), json.dumps(side.get("tags") or [])))
            if not side:
                notes.append(f"{name} {version}: no {SIDECAR}; run {run_id}, status none")
        # At most one production per model: stale records may claim more; the newest keeps it.
        seen: set[str] = set()
        for i in sorted(range(len(rows)), key=lambda i: rows[i][2:5], reverse=True):
            if rows[i][8] == PRODUCTION:
                if rows[i][0] in seen:
                    rows[i] = rows[i][:8] + ("archived",) + rows[i][9:]
                    notes.append(f"{rows[i][0]} {rows[i][1]}: also marked production; archived")
                seen.add(rows[i][0])
        for model_dir in sorted(p for p in store.glob("*") if (p / HISTORY_FILE).is_file()):
            try:
                for h in json.loads((model_dir / HISTORY_FILE).read_text()):
                    promotions.append((model_dir.name, h["version"], h.get("previous"), h["action"],
                                       int(bool(h.get("undone"))), h["at"], h["by"]))
            except (ValueError, KeyError, TypeError):
                notes.append(f"{model_dir.name}: unreadable {HISTORY_FILE}; promotion history not restored")
        with closing(reg._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            con.executemany(
                "INSERT INTO versions (name, version, major, minor, patch, run_id, sha256, size, status, metrics,"
                " created_by, created_at, uri, url, tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            con.executemany(
                "INSERT INTO promotions (name, version, previous, action, undone, at, by)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                promotions,
            )
            con.execute("COMMIT")
        return len(rows)

    aside, count = _rebuild(home / "registry.db", build)
    kept = f"; the old file is kept as {aside}" if aside else ""
    return "\n".join([f"registry rebuilt from {store}: {count} version(s){kept}", *(f"  {n}" for n in notes)])


def _salvage(src: Path, dest: Path) -> tuple[int, list[str]]:
    """Copy every row SQLite can still read from ``src`` into the fresh store ``dest``."""
    copied, notes = 0, []
    try:
        old = sqlite3.connect(f"file:{quote(str(src))}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return 0, [f"nothing readable in {src}: {exc}"]
    with closing(old), closing(sqlite3.connect(dest, isolation_level=None)) as new:
        new.execute("BEGIN IMMEDIATE")
        for table in ("runs", "params", "tags", "metrics", "artifacts"):
            try:
                cols = [r[1] for r in old.execute(f"PRAGMA table_info({table})")]
                keep = [c for c in cols if c in {r[1] for r in new.execute(f"PRAGMA table_info({table})")}]
                cursor = old.execute(f"SELECT {', '.join(keep)} FROM {table}")
                sql = f"INSERT OR IGNORE INTO {table} ({', '.join(keep)}) VALUES ({', '.join('?' * len(keep))})"
                while True:
                    row = cursor.fetchone()
                    if row is None:
                        break
                    new.execute(sql, row)
                    copied += 1
            except sqlite3.Error as exc:
                notes.append(f"{table}: stopped reading at a damaged page ({exc})")
        new.execute("COMMIT")
    return copied, notes


def _records_from_run_folders(runs_root: Path, known: set[str]) -> list[Any]:
    from digitops.tracking.base import RunRecord

    records = []
    for path in sorted(runs_root.glob("*/metrics.json")):
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        run_id = m.get("run_id") or path.parent.name
        if run_id in known:
            continue
        stages = m.get("stages") or {}
        status = ("failed" if "failed" in stages.values() else
                  "abandoned" if set(stages.values()) - {"finished"} else "finished")
        params = dict(m.get("params") or {})
        for section, values in m.items():
            if section.endswith("_params") and isinstance(values, dict):
                params.update({f"{section[:-7]}.{k}": v for k, v in values.items()})
        records.append(RunRecord(
            run_id=run_id, project=m.get("project") or config.project_name(), name=run_id, status=status,
            params=params, metrics={k: v for k, v in (m.get("metrics") or {}).items() if isinstance(v, (int, float))},
            history={k: v for k, v in (m.get("history") or {}).items() if isinstance(v, list)},
            git_commit=m.get("git_commit"), data_checksum=m.get("data_checksum"),
            started_at=dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).isoformat(),
        ))
    return records


def repair(home: Path | None = None, runs_root: Path | None = None, *, rebuild_index: bool = False) -> list[str]:
    """Rebuild each store the check finds damaged (the registry also when ``rebuild_index``)."""
    home = home or config.home()
    done = []
    if db_state(home / "tracking.db")[0] in ("empty", "damaged"):
        done.append(rebuild_tracking(home, runs_root))
    findings = [f for f in check(home) if f.store == REGISTRY and not f.ok]
    if rebuild_index or findings:
        done.append(rebuild_registry(home, runs_root))
    return done


def rebuild_tracking(home: Path | None = None, runs_root: Path | None = None) -> str:
    """Rebuild ``tracking.db``: every readable row, plus runs only ``runs/*/metrics.json`` remembers."""
    from digitops.tracking.sqlite import SqliteTracker

    home = home or config.home()
    runs_root = runs_root or config.runs_dir()
    db = home / "tracking.db"
    notes: list[str] = []

    def build(tmp: Path) -> tuple[int, int]:
        tracker = SqliteTracker(tmp, home / "artifacts")
        copied = 0
        if db.exists() and db.stat().st_size > 0:
            copied, more = _salvage(db, tmp)
            notes.extend(more)
        added = tracker.import_runs(_records_from_run_folders(runs_root, _all_run_ids(tmp)))
        return copied, added

    aside, (copied, added) = _rebuild(db, build)
    kept = f"; the old file is kept as {aside}" if aside else ""
    lines = [f"tracking store rebuilt: {copied} row(s) kept, {added} run(s) re-read from {runs_root}/*/metrics.json{kept}"]
    return "\n".join(lines + [f"  {n}" for n in notes])


def _all_run_ids(db: Path) -> set[str]:
    with closing(sqlite3.connect(db)) as con:
        return {r[0] for r in con.execute("SELECT run_id FROM runs")}
