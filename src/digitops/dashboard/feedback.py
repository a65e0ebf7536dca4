"""The dashboard's feedback row: "Right" / "Wrong: it is [0]..[9]" after a prediction, kept as a field drawing.

Shown only after a prediction and only while ``DIGITOPS_FEEDBACK`` is not
"off". A click keeps the drawing that was predicted (not whatever is on the
canvas now); clicking again keeps nothing new. The store opens on the first
click, so a page that nobody corrects costs nothing.
"""

from __future__ import annotations

import html
import logging
from typing import Any, Callable

import ipywidgets as w
import numpy as np

from digitops.feedback import FeedbackError, FeedbackStoreError, settings

log = logging.getLogger("digitops.dashboard")

NOTICE = (
    "Your drawing, the model's answer and your correction are kept (nothing else about you) "
    "and used to test future models."
)
_FAILED = "Sorry, your answer could not be kept this time."
_SAID = {
    "kept": "Thank you: kept as a {label}.",
    "unchanged": "Already kept as a {label}.",
    "relabelled": "Thank you: corrected to a {label}.",
}


class FeedbackPanel:
    """The buttons, the notice and a status line; ``widget`` goes into the page."""

    def __init__(self, version: Any, open_store: Callable[[], Any] | None = None) -> None:
        self.version = version
        self.enabled = settings().enabled
        self._open_store = open_store
        self._store: Any = None
        self._pending: tuple[bytes, int, list[float]] | None = None
        self.seq = 0
        self.right = w.Button(description="Right", button_style="success", layout=w.Layout(width="70px"))
        self.right.add_class("dg-fb-right")
        self.right.on_click(lambda _b: self.submit(None))
        self.wrong: list[w.Button] = []
        for digit in range(10):
            button = w.Button(description=str(digit), tooltip=f"Wrong: it is {digit}", layout=w.Layout(width="34px"))
            button.add_class(f"dg-fb-wrong-{digit}")
            button.on_click(lambda _b, d=digit: self.submit(d))
            self.wrong.append(button)
        self.status = w.HTML(self._status_html("idle", ""))
        self.status.add_class("dg-fb-status-box")
        row = w.HBox([self.right, w.HTML("&nbsp;<b>Wrong: it is</b>&nbsp;"), *self.wrong])
        self.widget = w.VBox([row, self.status, w.HTML(f'<div class="dg-fb-note">{html.escape(NOTICE)}</div>')])
        self.widget.add_class("dg-feedback")
        self.widget.layout.display = "none"

    def _status_html(self, state: str, text: str) -> str:
        return f'<div class="dg-fb-status" data-state="{state}" data-seq="{self.seq}">{html.escape(text)}</div>'

    def offer(self, png: bytes | None, predicted: int, probabilities: np.ndarray) -> None:
        """Show the buttons for the drawing just predicted."""
        if not self.enabled or png is None:
            return
        self._pending = (png, int(predicted), [float(p) for p in probabilities])
        self.status.value = self._status_html("offered", "")
        self.widget.layout.display = "flex"

    def forget(self) -> None:
        """Hide the buttons (a new prediction or a cleared canvas)."""
        self._pending = None
        self.widget.layout.display = "none"

    def submit(self, label: int | None) -> str:
        """Keep the predicted drawing with ``label`` (None: the prediction was right); returns the status."""
        self.seq += 1
        if self._pending is None:
            self.status.value = self._status_html("none", "Predict a drawing first.")
            return "none"
        png, predicted, probabilities = self._pending
        label = predicted if label is None else label
        try:
            if self._store is None:
                from digitops.feedback.store import open_store

                self._store = (self._open_store or open_store)()
            outcome = self._store.add(png, label, predicted=predicted, probabilities=probabilities,
                                      model_name=self.version.name, model_version=self.version.version)
        except FeedbackStoreError:
            # The details name server paths: they go to the server log only.
            log.exception("the feedback store is not usable")
            self.status.value = self._status_html("error", _FAILED)
            return "error"
        except FeedbackError as exc:
            log.warning("feedback refused: %s", exc)
            self.status.value = self._status_html("refused", str(exc))
            return "refused"
        except Exception:
            log.exception("keeping feedback failed")
            self.status.value = self._status_html("error", _FAILED)
            return "error"
        self.status.value = self._status_html(outcome.status, _SAID[outcome.status].format(label=label))
        return outcome.status
