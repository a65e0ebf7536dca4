"""Notebook overhead: the same training run as a plain script (a) and through `digitops run train` (b).

Both are timed as whole processes, interleaved, several times; the table
shows medians, the ratio b/a and where the fixed cost goes (kernel start,
nbconvert, tracking writes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def _kernel_start_seconds() -> float:
    """Start a python3 kernel and import digitops' training modules in it."""
    from jupyter_client.manager import start_new_kernel

    started = time.perf_counter()
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        kc.execute_interactive("import digitops.model, digitops.data, digitops.plots", timeout=120)
        return time.perf_counter() - started
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _import_seconds() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import digitops.model, digitops.data, digitops.plots"], check=True)
    return time.perf_counter() - started


def _tracking_seconds(home: Path, epochs: int = 20) -> float:
    """What the tracker costs a run: start, per-epoch metrics, final metrics, two artifacts, end."""
    os.environ["DIGITOPS_HOME"] = str(home)
    from digitops.tracking.sqlite import SqliteTracker

    tracker = SqliteTracker()
    artifact = home / "artifact.bin"
    artifact.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_bytes(os.urandom(1 << 20))
    started = time.perf_counter()
    tracker.start_run("bench-run", params={"epochs": epochs})
    for epoch in range(epochs):
        tracker.log_metrics("bench-run", {"loss": 0.1, "accuracy": 0.9, "val_loss": 0.1, "val_accuracy": 0.9}, step=epoch)
    tracker.log_metrics("bench-run", {"test_accuracy": 0.99})
    tracker.log_artifact("bench-run", artifact)
    tracker.log_artifact("bench-run", artifact, name="copy.bin")
    tracker.end_run("bench-run")
    return time.perf_counter() - started


def run(repeats: int = 3, epochs: int = 2, limit: int = 0, architecture: str = "cnn") -> dict[str, Any]:
    """Measure and return the figures (seconds)."""
    with tempfile.TemporaryDirectory(prefix="digitops-bench-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "DIGITOPS_HOME": str(work / ".digitops"), "DIGITOPS_RUNS": str(work / "runs"),
               "DIGITOPS_NOTEBOOKS": str(ROOT / "notebooks"),
               "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
        env.pop("COMET_API_KEY", None)
        script = [sys.executable, str(ROOT / "bench" / "train_script.py"), "--architecture", architecture,
                  "--epochs", str(epochs), "--limit", str(limit)]
        notebook = [sys.executable, "-m", "digitops", "run", "train", "-p", "architecture", architecture,
                    "-p", "epochs", str(epochs), "-p", "limit", str(limit)]
        plain, papermill = [], []
        for i in range(repeats):
            plain.append(_timed([*script, "--out", str(work / f"script-{i}")], env, work))
            papermill.append(_timed(notebook, env, work))
        executed = next((work / "runs").glob("*/train.ipynb"))
        from digitops.runner import to_html

        started = time.perf_counter()
        to_html(executed)
        html = time.perf_counter() - started
        train_seconds = [json.loads(p.read_text())["train_seconds"] for p in work.glob("script-*/metrics.json")]
        a, b = statistics.median(plain), statistics.median(papermill)
        return {
            "params": {"architecture": architecture, "epochs": epochs, "limit": limit, "repeats": repeats},
            "train_seconds_median": statistics.median(train_seconds),
            "script_seconds": plain,
            "notebook_seconds": papermill,
            "script_median": a,
            "notebook_median": b,
            "ratio": b / a,
            "fixed_cost_seconds": b - a,
            "breakdown": {
                "kernel_start_and_imports": _kernel_start_seconds(),
                "same_imports_in_plain_python": _import_seconds(),
                "nbconvert_html": html,
                "tracking_writes_20_epochs": _tracking_seconds(work / "tracking-bench"),
            },
        }


def table(r: dict[str, Any]) -> str:
    """Human-readable summary."""
    bd = r["breakdown"]
    return "\n".join([
        f"notebook overhead ({r['params']['architecture']}, {r['params']['epochs']} epochs, "
        f"training {r['train_seconds_median']:.1f} s, median of {r['params']['repeats']})",
        f"  (a) plain script            {r['script_median']:7.1f} s",
        f"  (b) digitops run train      {r['notebook_median']:7.1f} s",
        f"  ratio b/a                   {r['ratio']:7.3f}",
        f"  fixed cost b-a              {r['fixed_cost_seconds']:7.1f} s",
        f"    kernel start + imports    {bd['kernel_start_and_imports']:7.2f} s "
        f"(same imports in plain python {bd['same_imports_in_plain_python']:.2f} s)",
        f"    nbconvert HTML            {bd['nbconvert_html']:7.2f} s",
        f"    tracking writes           {bd['tracking_writes_20_epochs']:7.3f} s",
    ])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--architecture", default="cnn")
    ns = ap.parse_args()
    print(table(run(ns.repeats, ns.epochs, ns.limit, ns.architecture)))
