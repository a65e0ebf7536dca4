"""Progress bars for training: tqdm widgets in JupyterLab, plain text under papermill."""

from __future__ import annotations

import sys
from typing import Any

from digitops import config
from digitops.quiet import native_stderr_silenced

with native_stderr_silenced():  # TF's C++ start-up lines (digitops.quiet)
    import keras


def _tqdm() -> Any:
    # Widgets render only in a live frontend; executed notebooks converted to
    # HTML need text bars, so the runner asks for them via the environment.
    if config.env("DIGITOPS_PROGRESS") == "text":
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm


class KerasProgress(keras.callbacks.Callback):
    """One bar per epoch over its batches, with loss/accuracy in the postfix."""

    def __init__(self, epochs: int, steps: int, label: str = "") -> None:
        super().__init__()
        self.epochs, self.steps, self.label = epochs, steps, label
        self._bar: Any = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._bar = _tqdm()(
            total=self.steps,
            desc=f"{self.label}epoch {epoch + 1}/{self.epochs}",
            unit="batch",
            file=sys.stdout,
            mininterval=1.0,
            leave=True,
        )

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self._bar is None:
            return
        logs = logs or {}
        self._bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if isinstance(v, (int, float))})
        self._bar.close()
        self._bar = None
