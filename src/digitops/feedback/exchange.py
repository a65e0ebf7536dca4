"""What every shared destination of field drawings exchanges: one JSON payload per drawing, checked on the way in.

A drawing travels as ``<hash>.json`` holding the canvas PNG (base64) and the
labels (:func:`payload`). A received one (:func:`receive`) must preprocess to
the hash its name promises and pass the store's own checks, else it is refused
and not kept: the Comet and MLflow destinations share this.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from digitops.feedback import FeedbackError, FeedbackStoreError
from digitops.feedback.store import LocalFeedbackStore, Record, image_hash
from digitops.preprocess import preprocess

#: what :func:`receive` did with one payload
KEPT, REFUSED = "kept", "refused"


@dataclass(frozen=True)
class SyncResult:
    """What one sync did (``where``: the destination, e.g. "Comet experiment" or "MLflow run")."""

    pushed: int
    pulled: int
    refused: int
    experiment_key: str | None
    where: str = "Comet experiment"

    def line(self) -> str:
        """One line for people."""
        where = f"{self.where} {self.experiment_key}" if self.experiment_key else self.where.split()[0]
        text = f"{where}: {self.pushed} drawing(s) sent, {self.pulled} received"
        return text + (f", {self.refused} refused (not the drawing their name promises)" if self.refused else "")


def payload(store: LocalFeedbackStore, record: Record) -> str:
    """The JSON text of one kept drawing (canvas PNG as base64, labels, model, time)."""
    canvas = (store.drawings / f"{record.hash}.png").read_bytes()
    return json.dumps({
        "hash": record.hash, "label": record.label, "predicted": record.predicted,
        "probabilities": record.probabilities, "model_name": record.model_name,
        "model_version": record.model_version, "created_at": record.created_at,
        "canvas_png": base64.b64encode(canvas).decode("ascii"),
    })


def receive(store: LocalFeedbackStore, raw: bytes | str, digest: str) -> str:
    """Keep the drawing in ``raw`` (named ``<digest>.json``): :data:`KEPT`, or :data:`REFUSED` and nothing kept.

    Refused: not a drawing this store accepts, or one whose image is not the
    one its name promises (kept, it could relabel another drawing here). A
    broken local store raises.
    """
    try:
        data = json.loads(raw)
        canvas = base64.b64decode(data["canvas_png"])
        image = preprocess(canvas)
        if image is None or image_hash(image) != digest:
            return REFUSED
        store.add(canvas, data["label"], predicted=data.get("predicted"), probabilities=data.get("probabilities"),
                  model_name=data["model_name"], model_version=data["model_version"])
    except FeedbackStoreError:
        raise
    except (FeedbackError, ValueError, KeyError, TypeError, OSError):
        return REFUSED
    return KEPT
