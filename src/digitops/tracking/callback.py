"""A Keras callback that sends each epoch's metrics to the active tracker.

Kept out of ``digitops.tracking`` itself so that the CLI and the stores never
import Keras (seconds of TensorFlow start-up).
"""

from __future__ import annotations

from typing import Any

from digitops.quiet import native_stderr_silenced

with native_stderr_silenced():  # TF's C++ start-up lines (digitops.quiet)
    import keras

from digitops.tracking.base import Tracker


class TrackingCallback(keras.callbacks.Callback):
    """Log every numeric entry of an epoch's ``logs``, one step per epoch.

    Steps count on across ``fit`` calls (Keras restarts ``epoch`` at 0 for
    each), so an ensemble's members follow one another in the tracker.
    """

    def __init__(self, tracker: Tracker, run_id: str) -> None:
        super().__init__()
        self.tracker = tracker
        self.run_id = run_id
        self.step = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        values: dict[str, float] = {}
        for key, value in (logs or {}).items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue  # Keras may put non-scalars in logs; the tracker only takes numbers
            values[key] = number
        if values:
            self.tracker.log_metrics(self.run_id, values, step=self.step)
        self.step += 1
