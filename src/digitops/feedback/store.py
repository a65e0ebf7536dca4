"""Where field drawings are kept: a small interface and the embedded store (SQLite + a folder of PNGs).

One record per drawing, identified by the SHA-256 of the 28x28 image the
model saw: the same drawing submitted twice (a double click, a reload) is kept
once, and a later correction of the same drawing replaces its label. Only the
drawing, the labels, the probabilities, the model's name and version and the
time are kept; nothing about the person.
"""

from __future__ import annotations

import hashlib
import math
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from digitops import _sqlite, atomic
from digitops.feedback import FeedbackError, FeedbackStoreError, settings
from digitops.preprocess import EMPTY_MESSAGE, SIZE, preprocess, to_png

SCHEMA_VERSION = 1
_SCHEMA_V1 = """
CREATE TABLE drawings (
    hash TEXT PRIMARY KEY,
    label INTEGER NOT NULL CHECK (label BETWEEN 0 AND 9),
    predicted INTEGER CHECK (predicted BETWEEN 0 AND 9),
    probabilities TEXT,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"""
_MAX_TEXT = 200


@dataclass(frozen=True)
class Record:
    """One kept drawing."""

    hash: str
    label: int
    predicted: int | None
    probabilities: tuple[float, ...] | None
    model_name: str
    model_version: str
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class Outcome:
    """What :meth:`FeedbackStore.add` did: ``kept`` (new), ``relabelled`` or ``unchanged`` (already kept)."""

    record: Record
    status: str


class FeedbackStore(Protocol):
    """The feedback interface the dashboard and the CLI use."""

    def add(self, canvas_png: bytes, label: int, *, predicted: int | None, probabilities: Sequence[float] | None,
            model_name: str, model_version: str) -> Outcome:
        """Keep one drawing with its true label; refuses bad input with a FeedbackError."""

    def records(self) -> list[Record]:
        """All kept drawings, oldest first."""

    def image(self, digest: str) -> np.ndarray:
        """The 28x28 uint8 image the model saw for the drawing ``digest``."""


def image_hash(image: np.ndarray) -> str:
    """The drawing's identity: SHA-256 of its 28x28 uint8 pixels."""
    arr = np.ascontiguousarray(image, dtype=np.uint8)
    return hashlib.sha256(arr.tobytes()).hexdigest()


def _check_label(value: object, what: str, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) <= 9:
        raise FeedbackError(f"the {what} must be a digit 0-9, got {value!r}")
    return int(value)


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_TEXT or not value.isprintable():
        raise FeedbackError(f"the {what} must be a short printable name, got {str(value)[:40]!r}")
    return value


def _check_probabilities(values: Sequence[float] | None) -> tuple[float, ...] | None:
    if values is None:
        return None
    try:
        probs = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise FeedbackError("the probabilities must be 10 numbers") from None
    if len(probs) != 10 or not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in probs):
        raise FeedbackError("the probabilities must be 10 numbers between 0 and 1")
    return probs


def _write_atomic(path: Path, data: bytes) -> None:
    # Content-addressed: an existing file already holds these bytes.
    if path.is_file() and path.stat().st_size == len(data):
        return
    with atomic.replacing(path, tmp=path.with_name(f".{path.name}.{os.getpid()}.tmp")) as tmp:
        tmp.write_bytes(data)  # a full disk leaves no half-written file behind


class LocalFeedbackStore:
    """The embedded store: ``feedback.db`` (SQLite, WAL) and ``drawings/<hash>.png`` / ``<hash>-28.png``.

    Many dashboard kernels may write at once: the PNGs are written under a
    temporary name and renamed (same content for the same name), then the row
    goes in with one ``BEGIN IMMEDIATE`` transaction.
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else Path(settings().folder)
        self.db_path = self.folder / "feedback.db"
        self.drawings = self.folder / "drawings"
        _sqlite.init_db(self.db_path, SCHEMA_VERSION, _migrate, "feedback", FeedbackStoreError)

    def add(self, canvas_png: bytes, label: int, *, predicted: int | None = None,
            probabilities: Sequence[float] | None = None, model_name: str = "unknown",
            model_version: str = "unknown") -> Outcome:
        """Keep one drawing (see :class:`FeedbackStore`)."""
        label_ = _check_label(label, "label")
        predicted_ = _check_label(predicted, "predicted label", optional=True)
        probs = _check_probabilities(probabilities)
        name, version = _check_text(model_name, "model name"), _check_text(model_version, "model version")
        if not isinstance(canvas_png, (bytes, bytearray, memoryview)):
            raise FeedbackError("the drawing must be PNG bytes")
        try:
            image = preprocess(bytes(canvas_png))  # the size and format checks the dashboard applies
        except ValueError as exc:
            raise FeedbackError(f"the drawing was refused: {exc}") from None
        if image is None:
            raise FeedbackError(EMPTY_MESSAGE.replace(", then press Predict", ""))
        digest = image_hash(image)
        try:
            self.drawings.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.drawings / f"{digest}.png", bytes(canvas_png))
            _write_atomic(self.drawings / f"{digest}-28.png", to_png(image))
        except OSError as exc:
            raise FeedbackStoreError(f"cannot keep the drawing in {self.drawings}: {exc.strerror or exc}") from None
        now = _sqlite.utc_now()
        prob_text = None if probs is None else ",".join(f"{p:.6f}" for p in probs)
        con = self._connect()
        try:
            with _sqlite.transaction(con):
                old = con.execute("SELECT label FROM drawings WHERE hash = ?", (digest,)).fetchone()
                if old is None:
                    con.execute(
                        "INSERT INTO drawings VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (digest, label_, predicted_, prob_text, name, version, now, now),
                    )
                    status = "kept"
                elif old["label"] != label_:
                    con.execute("UPDATE drawings SET label = ?, updated_at = ? WHERE hash = ?", (label_, now, digest))
                    status = "relabelled"
                else:
                    status = "unchanged"
                row = con.execute("SELECT * FROM drawings WHERE hash = ?", (digest,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise FeedbackStoreError(_sqlite.problem("feedback", self.db_path, exc)) from None
        finally:
            con.close()
        return Outcome(_record(row), status)

    def records(self) -> list[Record]:
        """All kept drawings, oldest first."""
        con = self._connect()
        try:
            rows = con.execute("SELECT * FROM drawings ORDER BY created_at, hash").fetchall()
        except sqlite3.DatabaseError as exc:
            raise FeedbackStoreError(_sqlite.problem("feedback", self.db_path, exc)) from None
        finally:
            con.close()
        return [_record(r) for r in rows]

    def image(self, digest: str) -> np.ndarray:
        """The 28x28 image for ``digest``, checked against its hash (a damaged PNG is an error, not data)."""
        from PIL import Image

        path = self.drawings / f"{digest}-28.png"
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("L"), dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise FeedbackError(f"the drawing {path} is missing or unreadable: {exc}") from None
        if arr.shape != (SIZE, SIZE) or image_hash(arr) != digest:
            raise FeedbackError(f"the drawing {path} does not match its hash: the file was changed or damaged")
        return arr

    def _connect(self) -> sqlite3.Connection:
        try:
            return _sqlite.connect(self.db_path)
        except sqlite3.DatabaseError as exc:
            raise FeedbackStoreError(_sqlite.problem("feedback", self.db_path, exc)) from None


def _migrate(con: sqlite3.Connection, from_version: int) -> None:
    if from_version == 0:
        _sqlite.run_script(con, _SCHEMA_V1)


def _record(row: sqlite3.Row) -> Record:
    probs = None if row["probabilities"] is None else tuple(float(p) for p in row["probabilities"].split(","))
    return Record(row["hash"], row["label"], row["predicted"], probs, row["model_name"], row["model_version"],
                  row["created_at"], row["updated_at"])


def open_store() -> FeedbackStore:
    """The configured feedback store (the embedded one; shared destinations are not built yet)."""
    return LocalFeedbackStore()
