"""Field drawings: digits people corrected in the dashboard, kept as a test set (and optionally training data).

``store`` keeps each drawing once (by the hash of the 28x28 image the model
saw) behind :class:`FeedbackStore`; ``dataset`` exports the store to a
versioned, checksummed NPZ, loads it back verified, and splits it by hash so a
drawing is either for testing or for training, never both. Nothing here
imports TensorFlow: the dashboard's kernels write feedback.
"""

from __future__ import annotations

from dataclasses import dataclass

from digitops import config


class FeedbackError(ValueError):
    """Refused feedback or an unusable feedback store / export; the message is one line for a person."""


class FeedbackStoreError(FeedbackError):
    """The store itself is unusable (damaged, unwritable): the message names server paths, not for visitors."""


@dataclass(frozen=True)
class Settings:
    """Feedback settings, read from the environment here and nowhere else."""

    enabled: bool  #: DIGITOPS_FEEDBACK (on unless "off", "0", "false", "no")
    folder: str  #: DIGITOPS_FEEDBACK_DIR, default <DIGITOPS_HOME>/feedback


@dataclass(frozen=True)
class GateSettings:
    """The field-set rule of the gate."""

    minimum: int  #: DIGITOPS_GATE_FIELD_MIN: field-set drawings needed before the gate checks them
    tolerance: float  #: DIGITOPS_GATE_FIELD_TOLERANCE: how much lower the candidate may score


DEFAULT_GATE_MIN = 30
DEFAULT_GATE_TOLERANCE = 0.02


def settings() -> Settings:
    """Whether feedback is on and where it is kept (never fails: the dashboard reads it)."""
    flag = (config.env("DIGITOPS_FEEDBACK") or "on").strip().lower()
    folder = config.env("DIGITOPS_FEEDBACK_DIR") or str(config.home() / "feedback")
    return Settings(enabled=flag not in ("off", "0", "false", "no"), folder=folder)


def gate_settings() -> GateSettings:
    """The gate's field-set settings; a malformed number is a FeedbackError naming the variable."""

    def number(name: str, default: float, kind: type) -> float:
        raw = (config.env(name) or "").strip()
        if not raw:
            return default
        try:
            value = kind(raw)
        except ValueError:
            raise FeedbackError(f"{name}={raw!r} is not a {kind.__name__}") from None
        if value < 0 or value != value:
            raise FeedbackError(f"{name}={raw!r} must be a number >= 0")
        return value

    return GateSettings(
        minimum=int(number("DIGITOPS_GATE_FIELD_MIN", DEFAULT_GATE_MIN, int)),
        tolerance=float(number("DIGITOPS_GATE_FIELD_TOLERANCE", DEFAULT_GATE_TOLERANCE, float)),
    )
