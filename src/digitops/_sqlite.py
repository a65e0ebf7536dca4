"""Shared SQLite plumbing for the embedded tracker and registry.

Both stores are single files that several processes write at once (the
notebook kernel and the runner; two CI jobs registering together). WAL mode
lets readers proceed while one writer holds the lock, ``busy_timeout`` makes a
second writer wait instead of failing, and every change is one short
``BEGIN IMMEDIATE`` transaction, so the write lock is taken up front and a
process killed half-way leaves nothing behind but a rolled-back journal.

Creation and migration are serialised by a lock file beside the database and
a new store is linked into place complete, so many processes may open a
fresh store at once; a 0-byte or damaged file is refused with a message that
names ``digitops doctor``, never silently used as a new, empty store.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, TypeVar
from urllib.parse import quote

T = TypeVar("T")

#: how long a writer waits for another process's transaction (milliseconds)
BUSY_TIMEOUT_MS = 30_000
#: words of SQLite errors that mean the file is damaged rather than busy
_DAMAGE_MARKERS = ("malformed", "not a database", "disk image", "corrupt")


def utc_now() -> str:
    """Current time as ISO 8601 UTC with microseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode with the pragmas every connection needs."""
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves; the sqlite3
    # module's implicit deferred BEGIN would upgrade to a write lock late and
    # can then fail with SQLITE_BUSY without waiting.
    # mode=rw: a store that disappeared is an error, never silently re-created empty.
    con = sqlite3.connect(
        f"file:{quote(str(path))}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
    )
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


def is_damage(exc: BaseException) -> bool:
    """Whether an SQLite error means the file itself is damaged (not busy, not a bad query)."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.DatabaseError) and any(m in text for m in _DAMAGE_MARKERS)


def problem(what: str, path: Path, exc: BaseException) -> str:
    """One line describing a failed database operation, naming the recovery command when the file is damaged."""
    if is_damage(exc):
        return (
            f"the {what} database {path} is damaged ({exc}); run `digitops doctor` to check both stores "
            f"and `digitops doctor --repair` to rebuild it (the damaged file is kept aside)"
        )
    return f"the {what} database {path} is not usable: {exc}"


@contextmanager
def translated(what: str, path: Path, error: type[Exception]) -> Iterator[None]:
    """Turn a ``sqlite3.Error`` raised in the block into ``error`` carrying :func:`problem`'s one line."""
    try:
        yield
    except sqlite3.Error as exc:
        raise error(problem(what, path, exc)) from exc


def _refuse_empty(path: Path, what: str, error: type[Exception]) -> None:
    # A store is only ever put in place complete (see _create), so a 0-byte file is damage
    # (a full disk, a truncating copy), not a new store: SQLite would happily use it as one.
    try:
        size = path.stat().st_size
    except OSError:
        return
    if size == 0:
        raise error(
            f"the {what} database {path} is empty (0 bytes), so its records are lost or were never "
            f"written; run `digitops doctor --repair` to set it aside and rebuild what can be rebuilt"
        )


def _ready(path: Path, schema_version: int, what: str, error: type[Exception]) -> bool:
    """The fast, lock-free path: an existing, complete, WAL database at ``schema_version``."""
    if not path.is_file():
        return False
    _refuse_empty(path, what, error)
    try:
        con = connect(path)
    except sqlite3.OperationalError:
        return False
    try:
        mode = str(con.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        return mode == "wal" and con.execute("PRAGMA user_version").fetchone()[0] == schema_version
    except sqlite3.DatabaseError as exc:
        if is_damage(exc):
            raise error(problem(what, path, exc)) from exc
        return False  # busy while someone else creates or migrates it: take the slow path
    finally:
        con.close()


def _retry_busy(fn: Callable[[], T]) -> T:
    """``fn()``, retried while SQLite answers busy/locked (the journal-mode switch does not wait by itself)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.01
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _bring_up(con: sqlite3.Connection, path: Path, schema_version: int,
              migrate: Callable[[sqlite3.Connection, int], None], what: str, error: type[Exception]) -> None:
    """WAL mode, then the schema migrated to ``schema_version``, on an open connection."""
    # Migrations may rebuild tables; with foreign keys on, dropping the old table would
    # cascade-delete the child rows. The switch is only allowed outside a transaction.
    con.execute("PRAGMA foreign_keys = OFF")

    def to_wal() -> None:
        if str(con.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise error(f"the {what} database {path} could not switch to WAL mode (got {mode!r})")

    _retry_busy(to_wal)
    if con.execute("PRAGMA user_version").fetchone()[0] == schema_version:
        return

    def upgrade() -> None:
        with transaction(con):
            current = con.execute("PRAGMA user_version").fetchone()[0]
            if current > schema_version:
                raise error(
                    f"the {what} database {path} has schema version {current}, newer than this "
                    f"digitops supports ({schema_version}); upgrade digitops"
                )
            if current < schema_version:
                migrate(con, current)
                bad = con.execute("PRAGMA foreign_key_check").fetchall()
                if bad:
                    raise error(f"the {what} database {path}: migration left {len(bad)} dangling rows")
                con.execute(f"PRAGMA user_version = {int(schema_version)}")

    _retry_busy(upgrade)


def _create(path: Path, schema_version: int, migrate: Callable[[sqlite3.Connection, int], None],
            what: str, error: type[Exception]) -> None:
    """Build the store beside ``path`` and link it into place complete (never half a schema)."""
    for stale in path.parent.glob(f".{path.name}.creating-*"):
        stale.unlink(missing_ok=True)  # left by a creator that died; we hold the creation lock
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    con = sqlite3.connect(str(tmp), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        _bring_up(con, tmp, schema_version, migrate, what, error)
    finally:
        con.close()  # checkpoints and removes tmp's -wal; WAL mode stays recorded in the header
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)  # fails rather than replace a store that appeared meanwhile
    except FileExistsError:
        pass
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            leftover.unlink(missing_ok=True)


def init_db(
    path: Path,
    schema_version: int,
    migrate: Callable[[sqlite3.Connection, int], None],
    what: str,
    error: type[Exception],
    refuse_new: Callable[[], str | None] | None = None,
) -> None:
    """Create or upgrade the database at ``path`` to ``schema_version``; safe from many processes at once.

    ``migrate(con, from_version)`` runs inside the write transaction and must
    bring the schema from ``from_version`` to ``schema_version``. Creation and
    migration happen under a lock file (``<db>.lock``) and a new store is
    built under a temporary name and linked into place complete, so a
    0-byte or half-created file is never a store: it is refused as damaged.
    ``refuse_new()`` may return a reason not to create a missing store.
    """
    from filelock import FileLock, Timeout

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if _ready(path, schema_version, what, error):
            return
        with FileLock(str(path) + ".lock", timeout=max(120, 4 * BUSY_TIMEOUT_MS / 1000)):
            if not path.exists():
                reason = refuse_new() if refuse_new else None
                if reason:
                    raise error(reason)
                _create(path, schema_version, migrate, what, error)
                return
            _refuse_empty(path, what, error)
            con = connect(path)
            try:
                _bring_up(con, path, schema_version, migrate, what, error)
            finally:
                con.close()
    except Timeout as exc:
        raise error(f"the {what} database {path}: timed out waiting for {exc.lock_file}") from exc
    except sqlite3.DatabaseError as exc:
        raise error(problem(what, path, exc)) from exc
    except (FileExistsError, NotADirectoryError) as exc:
        raise error(f"cannot create the {what} database {path}: {exc.filename or path.parent} is a file "
                    f"where a folder is expected; move it aside") from exc
    except OSError as exc:
        raise error(f"cannot create the {what} database {path}: {exc.strerror or exc}; "
                    f"check that {path.parent} is a writable folder") from exc
