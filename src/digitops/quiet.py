"""Quiet by default: our progress and results, not TensorFlow's C++ logging or Jupyter's chatter.

TensorFlow's native libraries write start-up lines ("WARNING: All log
messages before absl::InitializeLog() ...", "oneDNN custom operations are
on ...") straight to file descriptor 2 while they load, whatever
``TF_CPP_MIN_LOG_LEVEL`` says (measured with TF 2.21: levels 2 and 3,
``ABSL_MIN_LOG_LEVEL`` and ``GLOG_minloglevel`` leave them; only
``TF_ENABLE_ONEDNN_OPTS=0`` drops the oneDNN line, and it changes the
numerics). So the import itself runs with descriptor 2 pointed at
``/dev/null``. ``digitops --verbose`` or ``DIGITOPS_LOG_LEVEL=debug`` (which
kernels inherit) brings all of it back.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from digitops import config

ENV_LOG_LEVEL = "DIGITOPS_LOG_LEVEL"
#: Started kernels log only errors: hides ipykernel's "Kernel is running over TCP without encryption".
KERNEL_QUIET_ARGUMENTS = ("--IPKernelApp.log_level=ERROR",)


def verbose() -> bool:
    """True when ``$DIGITOPS_LOG_LEVEL`` is ``debug``: show every library's own logging."""
    return (config.env(ENV_LOG_LEVEL) or "").strip().lower() == "debug"


def set_verbose() -> None:
    """Turn verbose mode on for this process and every kernel it starts."""
    os.environ[ENV_LOG_LEVEL] = "debug"


def kernel_arguments() -> list[str]:
    """Extra command-line arguments for the kernels we start (none when verbose)."""
    return [] if verbose() else list(KERNEL_QUIET_ARGUMENTS)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the block, unless verbose or TensorFlow is loaded.

    Meant around ``import keras`` / ``import tensorflow`` only: Python-level
    errors of the import still raise normally, and the descriptor is restored
    even when the import fails.
    """
    if verbose() or "tensorflow" in sys.modules:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 to save (a detached process): nothing to hide
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
