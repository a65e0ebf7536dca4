"""Quiet by default: TensorFlow's C++ logging and Jupyter's TCP warning stay out of output and HTML."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from digitops import quiet

TINY = ["-p", "architecture", "mlp", "-p", "epochs", "1", "-p", "limit", "300"]
#: One fragment per kind of line that used to interleave with the progress bars.
NOISE = (
    "absl::InitializeLog",            # absl's "log messages before InitializeLog" banner
    "oneDNN custom operations",       # TensorFlow's port.cc start-up line
    "without encryption",             # ipykernel: "Kernel is running over TCP without encryption"
)


def _train(workdir: Path, *root_args: str, env_extra: dict[str, str] | None = None) -> tuple[str, Path]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", quiet.ENV_LOG_LEVEL)}
    env.update(env_extra or {})
    proc = subprocess.run(
        # --force: repeated with the same inputs, the run would be reused and no kernel would start.
        [sys.executable, "-m", "digitops", *root_args, "run", "train", "--force", *TINY],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    folders = sorted((workdir / "runs").iterdir())
    return proc.stdout + proc.stderr, folders[-1]


def _noise_in(text: str) -> list[str]:
    return [fragment for fragment in NOISE if fragment in text]


@pytest.mark.slow
def test_run_train_output_and_html_hold_no_library_noise_and_verbose_brings_it_back(workdir: Path) -> None:
    output, folder = _train(workdir)
    assert "Executing" in output or "Run " in output  # our own progress/results still show
    assert _noise_in(output) == [], output[-3000:]
    for name in ("train.html", "train.ipynb"):
        assert _noise_in((folder / name).read_text()) == [], name

    # The same lines come back on request: this machine does print them, so the check above is real.
    loud, loud_folder = _train(workdir, "--verbose")
    assert set(_noise_in(loud)) == set(NOISE), loud[-3000:]
    env_loud, _ = _train(workdir, env_extra={quiet.ENV_LOG_LEVEL: "debug"})
    assert "oneDNN custom operations" in env_loud and "without encryption" in env_loud


def test_native_stderr_silenced_restores_descriptor_2_even_when_the_import_fails(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(
        "import os, sys\n"
        "sys.modules.pop('tensorflow', None)\n"
        "from digitops.quiet import native_stderr_silenced\n"
        "try:\n"
        "    with native_stderr_silenced():\n"
        "        os.write(2, b'hidden\\n')\n"
        "        raise ImportError('boom')\n"
        "except ImportError:\n"
        "    pass\n"
        "os.write(2, b'shown\\n')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != quiet.ENV_LOG_LEVEL}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "shown\n"
    env[quiet.ENV_LOG_LEVEL] = "DEBUG"
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.stderr == "hidden\nshown\n"
