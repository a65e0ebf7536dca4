"""Shared SQLite plumbing for the embedded tracker and registry.

Both stores are single files that several processes write at once (the
notebook kernel and the runner; two CI jobs registering together). WAL mode
lets readers proceed while one writer holds the lock, ``busy_timeout`` makes a
second writer wait instead of failing, and every change is one short
``BEGIN IMMEDIATE`` transaction, so the write lock is taken up front and a
process killed half-way leaves nothing behind but a rolled-back journal.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

#: how long a writer waits for another process's transaction (milliseconds)
BUSY_TIMEOUT_MS = 30_000


def utc_now() -> str:
    """Current time as ISO 8601 UTC with microseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode with the pragmas every connection needs."""
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves; the sqlite3
    # module's implicit deferred BEGIN would upgrade to a write lock late and
    # can then fail with SQLITE_BUSY without waiting.
    con = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    con.row_factory = sqlite3.Row
    con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    con.execute("PRAGMA foreign_keys = ON")
    # NORMAL is durable against process crashes in WAL mode (only a power
    # loss can drop the last commits) and avoids an fsync per metric.
    con.execute("PRAGMA synchronous = NORMAL")
    return con


@contextmanager
def transaction(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction holding the database's write lock from the start."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def run_script(con: sqlite3.Connection, script: str) -> None:
    """Execute several statements inside the current transaction.

    ``executescript`` would COMMIT first, so statements are split here with
    SQLite's own tokenizer (``complete_statement``), which ignores ``;`` in
    comments and strings.
    """
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            con.execute(pending)
            pending = ""
    if pending.strip():
        raise sqlite3.ProgrammingError(f"incomplete SQL statement: {pending.strip()[:80]}")


def init_db(
    path: Path,
    schema_version: int,
    migrate: Callable[[sqlite3.Connection, int], None],
    what: str,
    error: type[Exception],
) -> None:
    """Create or upgrade the database at ``path`` to ``schema_version``.

    ``migrate(con, from_version)`` runs inside the write transaction and must
    bring the schema from ``from_version`` to ``schema_version``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = connect(path)
    except sqlite3.Error as exc:
        raise error(f"cannot open the {what} database {path}: {exc}") from exc
    try:
        # journal_mode is persistent and cannot change inside a transaction.
        # Stores are opened often (one per call in notebooks), so the common
        # case, an up-to-date WAL database, costs two reads and no write lock.
        if str(con.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise error(f"the {what} database {path} could not switch to WAL mode (got {mode!r})")
        if con.execute("PRAGMA user_version").fetchone()[0] == schema_version:
            return
        with transaction(con):
            current = con.execute("PRAGMA user_version").fetchone()[0]
            if current > schema_version:
                raise error(
                    f"the {what} database {path} has schema version {current}, newer than this "
                    f"digitops supports ({schema_version}); upgrade digitops"
                )
            if current < schema_version:
                migrate(con, current)
                con.execute(f"PRAGMA user_version = {int(schema_version)}")
    except sqlite3.DatabaseError as exc:
        raise error(f"the {what} database {path} is not usable: {exc}") from exc
    finally:
        con.close()
