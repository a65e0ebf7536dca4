"""Notebook overhead: the same training run as a plain script (a) and through `digitops run train` (b).

Both are timed as whole processes, several times, in ABBA order (script first
in even rounds, notebook first in odd ones) after one untimed warm-up of each,
so drift and a cold page cache do not favour either side. Each side also
reports its own training time (model.fit), so the fixed cost of each path
(wall minus training) is compared directly: on a shared 2-core machine the
training time of one run can move by more than the whole notebook overhead.
The table shows medians, the ratio b/a, the ratio at equal training time and
where the notebook's fixed cost goes (kernel start, nbconvert, tracking writes).
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
        notebook = [sys.executable, "-m", "digitops", "run", "train", "--force", "-p", "architecture", architecture,
                    "-p", "epochs", str(epochs), "-p", "limit", str(limit)]
        # Untimed warm-up of both paths (page cache, compiled bytecode), on a tiny subset.
        _timed([sys.executable, str(ROOT / "bench" / "train_script.py"), "--architecture", architecture,
                "--epochs", "1", "--limit", "1000", "--out", str(work / "warmup")], env, work)
        _timed([sys.executable, "-m", "digitops", "run", "train", "--force", "-p", "architecture", architecture,
                "-p", "epochs", "1", "-p", "limit", "1000"], env, work)
        plain, papermill, notebook_train = [], [], []
        for i in range(repeats):
            pair = [("script", [*script, "--out", str(work / f"script-{i}")]), ("notebook", notebook)]
            for kind, cmd in pair if i % 2 == 0 else reversed(pair):
                before = set((work / "runs").glob("*/metrics.json"))
                seconds = _timed(cmd, env, work)
                if kind == "script":
                    plain.append(seconds)
                else:
                    papermill.append(seconds)
                    (new,) = set((work / "runs").glob("*/metrics.json")) - before
                    notebook_train.append(json.loads(new.read_text())["metrics"]["train_seconds"])
        executed = next((work / "runs").glob("*/train.ipynb"))
        from digitops.runner import to_html

        started = time.perf_counter()
        to_html(executed)
        html = time.perf_counter() - started
        train_seconds = [json.loads((work / f"script-{i}" / "metrics.json").read_text())["train_seconds"]
                         for i in range(repeats)]
        a, b = statistics.median(plain), statistics.median(papermill)
        # Each path's cost besides model.fit, and the ratio both would have at the same training time.
        script_fixed = statistics.median(w - s for w, s in zip(plain, train_seconds))
        notebook_fixed = statistics.median(w - s for w, s in zip(papermill, notebook_train))
        training = statistics.median(train_seconds + notebook_train)
        return {
            "params": {"architecture": architecture, "epochs": epochs, "limit": limit, "repeats": repeats,
                       "order": "ABBA after one untimed warm-up of each"},
            "train_seconds_median": statistics.median(train_seconds),
            "script_train_seconds": train_seconds,
            "notebook_train_seconds": notebook_train,
            "script_seconds": plain,
            "notebook_seconds": papermill,
            "script_median": a,
            "notebook_median": b,
            "ratio": b / a,
            "fixed_cost_seconds": b - a,
            "script_fixed_seconds": script_fixed,
            "notebook_fixed_seconds": notebook_fixed,
            "ratio_at_equal_training": (training + notebook_fixed) / (training + script_fixed),
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
        f"  training inside (a) / (b)   {statistics.median(r['script_train_seconds']):7.1f} s / "
        f"{statistics.median(r['notebook_train_seconds']):.1f} s",
        f"  besides training (a) / (b)  {r['script_fixed_seconds']:7.1f} s / {r['notebook_fixed_seconds']:.1f} s",
        f"  ratio at equal training     {r['ratio_at_equal_training']:7.3f}",
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
