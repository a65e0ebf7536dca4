"""Field-set exports: a versioned, checksummed NPZ of the store, its verified loader, and the split by hash.

An export is ``exports/field-<digest>.npz`` plus ``field-<digest>.json``
(count, SHA-256 of the NPZ, time). ``<digest>`` is computed from the drawings
and their labels, so exporting an unchanged store gives the same version
again. The split is a pure function of each drawing's hash: the same drawing
is on the same side in every export, so a model trained on an export's
training share is never scored on those drawings by a later export either.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitops import _sqlite, atomic
from digitops.feedback import FeedbackError, settings
from digitops.feedback.store import FeedbackStore, open_store

#: Share of field drawings kept for testing only (fixed: changing it would move drawings between sides).
TEST_SHARE = 0.5
FORMAT = 1


def is_test(digest: str) -> bool:
    """Whether the drawing with this hash belongs to the test side (deterministic, about ``TEST_SHARE``)."""
    return int(digest[:8], 16) / 2**32 < TEST_SHARE


def _train_rank(digest: str) -> float:
    # A second, independent hash orders the training side, so a share of it is a stable prefix.
    return int(hashlib.sha256(("train:" + digest).encode()).hexdigest()[:8], 16) / 2**32


@dataclass(frozen=True)
class FieldSet:
    """A loaded, verified export."""

    version: str
    path: Path
    x: np.ndarray  #: (n, 28, 28) uint8, MNIST-like
    y: np.ndarray  #: (n,) true labels
    predicted: np.ndarray  #: (n,) what the serving model said (-1 when not recorded)
    model_version: np.ndarray  #: (n,) the serving model's version
    hashes: np.ndarray  #: (n,) drawing hashes

    def __len__(self) -> int:
        return len(self.y)

    def test_mask(self) -> np.ndarray:
        """True for drawings kept for testing only."""
        return np.array([is_test(h) for h in self.hashes], dtype=bool)

    def test(self) -> tuple[np.ndarray, np.ndarray]:
        """The test side (x, y)."""
        mask = self.test_mask()
        return self.x[mask], self.y[mask]

    def train(self, share: float) -> tuple[np.ndarray, np.ndarray]:
        """``share`` (0..1) of the training side (x, y); never a test drawing."""
        if not 0.0 <= float(share) <= 1.0:
            raise FeedbackError(f"field_train_share must be between 0 and 1, got {share}")
        mask = ~self.test_mask() & (np.array([_train_rank(h) for h in self.hashes]) < float(share))
        return self.x[mask], self.y[mask]

    def lineage(self, share: float | None = None) -> dict[str, object]:
        """What a run records about the export it used."""
        out: dict[str, object] = {"field_export": self.version, "field_test_images": int(self.test_mask().sum())}
        if share is not None:
            out["field_train_images"] = len(self.train(share)[1])
        return out


def exports_dir() -> Path:
    """Where exports are written."""
    return Path(settings().folder) / "exports"


def export(store: FeedbackStore | None = None, folder: Path | None = None) -> tuple[Path, dict[str, object]]:
    """Write the store's drawings as an export (idempotent) and return its path and manifest."""
    store = store or open_store()
    folder = folder or exports_dir()
    records = sorted(store.records(), key=lambda r: r.hash)
    if not records:
        raise FeedbackError("there are no field drawings to export yet: collect some in the dashboard first")
    x = np.stack([store.image(r.hash) for r in records]).astype(np.uint8)
    y = np.array([r.label for r in records], dtype=np.int64)
    content = hashlib.sha256()
    for r in records:
        content.update(f"{r.hash}:{r.label}\n".encode())
    version = f"field-{content.hexdigest()[:12]}"
    arrays = dict(
        x=x, y=y, hashes=np.array([r.hash for r in records]),
        predicted=np.array([-1 if r.predicted is None else r.predicted for r in records], dtype=np.int64),
        model_version=np.array([r.model_version for r in records]),
        format=np.array(FORMAT), version=np.array(version),
    )
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    data = buf.getvalue()
    path = folder / f"{version}.npz"
    manifest_path = path.with_suffix(".json")
    if manifest_path.is_file() and path.is_file():
        return path, json.loads(manifest_path.read_text())  # unchanged store: same version, nothing rewritten
    manifest = {
        "version": version, "format": FORMAT, "count": len(records), "test_count": int(sum(is_test(r.hash) for r in records)),
        "sha256": hashlib.sha256(data).hexdigest(), "created_at": _sqlite.utc_now(), "file": path.name,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for target, payload in ((path, data), (manifest_path, json.dumps(manifest, indent=1).encode())):
        try:  # the manifest goes last: an export without one is not an export
            with atomic.replacing(target, tmp=target.with_name(f".{target.name}.{os.getpid()}.tmp")) as tmp:
                tmp.write_bytes(payload)
        except OSError as exc:
            raise FeedbackError(f"cannot write the field export {target}: {exc.strerror or exc}") from None
    return path, manifest


def latest(folder: Path | None = None) -> Path | None:
    """The newest export's NPZ, or None when there is none."""
    folder = folder or exports_dir()
    manifests = []
    for m in folder.glob("field-*.json"):
        try:
            manifests.append((json.loads(m.read_text())["created_at"], m))
        except (OSError, ValueError, KeyError):
            continue  # a damaged manifest is reported when that export is loaded by name
    return max(manifests)[1].with_suffix(".npz") if manifests else None


def load(path: str | Path | None = None) -> FieldSet | None:
    """The export at ``path`` (default: the newest), verified against its manifest; None when there is none."""
    npz = Path(path) if path is not None else latest()
    if npz is None:
        return None
    manifest_path = npz.with_suffix(".json")
    try:
        manifest = json.loads(manifest_path.read_text())
        data = npz.read_bytes()
    except (OSError, ValueError) as exc:
        raise FeedbackError(f"the field export {npz} cannot be read: {exc}") from None
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        raise FeedbackError(f"the field export {npz} does not match the checksum in {manifest_path.name}: "
                            f"it was changed or damaged; run `digitops feedback export` again")
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        if int(z["format"]) != FORMAT:
            raise FeedbackError(f"the field export {npz} has format {int(z['format'])}; this digitops reads {FORMAT}")
        return FieldSet(str(z["version"]), npz, z["x"], z["y"], z["predicted"], z["model_version"], z["hashes"])


def mix_into_training(
    x: np.ndarray, y: np.ndarray, share: float, field: FieldSet | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """``x, y`` plus ``share`` of the newest export's training side, and the lineage to record.

    ``share`` 0 changes nothing and records nothing. A share above 0 with no
    export is an error: a run asked for field drawings must not silently train without them.
    """
    if not 0.0 <= float(share) <= 1.0:
        raise FeedbackError(f"field_train_share must be between 0 and 1, got {share}")
    if float(share) == 0.0:
        return x, y, {}
    field = field or load()
    if field is None:
        raise FeedbackError(f"field_train_share is {share} but there is no field export yet: "
                            f"run `digitops feedback export` first, or set field_train_share to 0")
    fx, fy = field.train(share)
    mask = ~field.test_mask() & (np.array([_train_rank(h) for h in field.hashes]) < float(share))
    lineage = {"export": field.version, "share": float(share), "train_images": int(len(fy)),
               "train_hashes": [str(h) for h in field.hashes[mask]]}
    return np.concatenate([x, fx.astype(x.dtype)]), np.concatenate([y, fy.astype(y.dtype)]), lineage
