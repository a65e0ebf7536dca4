"""Notebook overhead: the same training as a plain script (a) and through `digitops run train` (b).

The script (bench/train_script.py) does the notebook's work with the same
parameters, data path, progress bars and outputs (figures, model, metrics), so
what (b) costs on top is the notebook path itself: the runner's start, the
kernel, papermill between cells, the kernel's exit, the tracker's writes and the
HTML page. Both run as whole processes, several times, in ABBA order after one
untimed warm-up of each. Each reports when its phases ended (the script prints
them; papermill stamps every cell of the executed notebook), so the table sets
the phases side by side. Training time is compared too: on a shared 2-core
machine model.fit moves with the neighbours' load, by more than the whole
overhead, so the ratio is also given at equal training time and in CPU seconds
(all processes of each path, which the neighbours' load barely moves).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: Rows of the side-by-side table: (key, label); a path without the phase shows "-".
PHASES = (
    ("runner_start", "start: python, CLI, papermill, run"),
    ("kernel_start", "kernel start"),
    ("imports", "imports (TensorFlow, digitops)"),
    ("prepare", "data, sample strip, summary"),
    ("training", "training (model.train)"),
    ("finish", "curves, model, metrics, tracking"),
    ("between_cells", "papermill between cells"),
    ("exit", "exit (interpreter / kernel)"),
    ("html_and_close", "HTML, artifacts, CLI exit"),
)


def _timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, float, float, str]:
    """Run ``cmd``; (start, end) as time.time(), wall and CPU seconds of it and its children, stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0, started = time.time(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall, t1 = time.perf_counter() - started, time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return t0, t1, wall, cpu, proc.stdout


def _stamp(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def script_phases(t0: float, t1: float, marks: dict[str, float], train_seconds: float) -> dict[str, float]:
    """The script's phases from the times it printed."""
    return {
        "imports": marks["imported"] - t0,
        "prepare": marks["prepared"] - marks["imported"],
        "training": train_seconds,
        "finish": marks["saved"] - marks["prepared"] - train_seconds,
        "exit": t1 - marks["saved"],
    }


def notebook_phases(t0: float, t1: float, executed: dict[str, Any], train_seconds: float) -> dict[str, float]:
    """The notebook path's phases from papermill's stamps in the executed notebook."""
    meta = executed["metadata"]["papermill"]
    cells = [c for c in executed["cells"] if c["cell_type"] == "code" and c["metadata"].get("papermill", {}).get("start_time")]
    spans = [(_stamp(c["metadata"]["papermill"]["start_time"]), _stamp(c["metadata"]["papermill"]["end_time"]),
              "".join(c["source"])) for c in cells]
    params = [i for i, c in enumerate(cells) if {"parameters", "injected-parameters"} & set(c["metadata"].get("tags", []))]
    train = next(i for i, (_, _, src) in enumerate(spans) if "model.train(" in src)
    first_work = max(params) + 1
    between = sum(spans[i + 1][0] - spans[i][1] for i in range(first_work, len(spans) - 1))
    return {
        "runner_start": _stamp(meta["start_time"]) - t0,
        # Launch, connect, and the two parameter cells: what papermill needs before the first line of work.
        "kernel_start": spans[first_work][0] - _stamp(meta["start_time"]),
        "imports": spans[first_work][1] - spans[first_work][0],
        "prepare": sum(e - s for s, e, _ in spans[first_work + 1:train]),
        "training": train_seconds,
        "finish": sum(e - s for s, e, _ in spans[train:]) - train_seconds,
        "between_cells": between,
        "exit": _stamp(meta["end_time"]) - spans[-1][1],
        "html_and_close": t1 - _stamp(meta["end_time"]),
    }


def _html_seconds_cold(executed: Path) -> float:
    """to_html in a fresh interpreter, timed inside it: the export the runner warms up while the kernel runs."""
    code = ("import sys, time; from pathlib import Path; from digitops.runner import to_html; "
            "t = time.perf_counter(); to_html(Path(sys.argv[1])); print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code, str(executed)], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


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
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="digitops-bench-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "DIGITOPS_HOME": str(work / ".digitops"), "DIGITOPS_RUNS": str(work / "runs"),
               "DIGITOPS_NOTEBOOKS": str(ROOT / "notebooks"),
               "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
        env.pop("COMET_API_KEY", None)

        def script(i: int | str, ep: int, lim: int) -> list[str]:
            return [sys.executable, str(ROOT / "bench" / "train_script.py"), "--architecture", architecture,
                    "--epochs", str(ep), "--limit", str(lim), "--out", str(work / f"script-{i}")]

        def notebook(ep: int, lim: int) -> list[str]:
            return [sys.executable, "-m", "digitops", "run", "train", "--force", "-p", "architecture", architecture,
                    "-p", "epochs", str(ep), "-p", "limit", str(lim)]

        # Untimed warm-up of both paths (page cache, compiled bytecode), on a small subset.
        _timed(script("warmup", 1, 1000), env, work)
        _timed(notebook(1, 1000), env, work)
        rounds: dict[str, list[dict[str, Any]]] = {"script": [], "notebook": []}
        for i in range(repeats):
            for kind in ("script", "notebook") if i % 2 == 0 else ("notebook", "script"):
                before = set((work / "runs").glob("*/metrics.json"))
                cmd = script(i, epochs, limit) if kind == "script" else notebook(epochs, limit)
                t0, t1, wall, cpu, out = _timed(cmd, env, work)
                if kind == "script":
                    metrics = json.loads((work / f"script-{i}" / "metrics.json").read_text())
                    train = metrics["metrics"]["train_seconds"]
                    marks = json.loads(next(ln for ln in out.splitlines() if ln.startswith("MARKS "))[6:])
                    phases = script_phases(t0, t1, marks, train)
                else:
                    (new,) = set((work / "runs").glob("*/metrics.json")) - before
                    train = json.loads(new.read_text())["metrics"]["train_seconds"]
                    phases = notebook_phases(t0, t1, json.loads((new.parent / "train.ipynb").read_text()), train)
                rounds[kind].append({"wall": wall, "cpu": cpu, "train": train, "phases": phases,
                                     "load": os.getloadavg()[0]})
        executed = next((work / "runs").glob("*/train.ipynb"))
        html_cold = _html_seconds_cold(executed)
        tracking = _tracking_seconds(work / "tracking-bench")
    med = {k: {"wall": statistics.median(r["wall"] for r in v), "cpu": statistics.median(r["cpu"] for r in v),
               "train": statistics.median(r["train"] for r in v),
               "besides_training": statistics.median(r["wall"] - r["train"] for r in v),
               "phases": {p: statistics.median(r["phases"][p] for r in v) for p, _ in PHASES if p in v[0]["phases"]}}
           for k, v in rounds.items()}
    a, b = med["script"], med["notebook"]
    training = statistics.median([r["train"] for v in rounds.values() for r in v])
    return {
        "params": {"architecture": architecture, "epochs": epochs, "limit": limit, "repeats": repeats,
                   "order": "ABBA after one untimed warm-up of each"},
        "load_average": {"before": load_before[0], "after": os.getloadavg()[0],
                         "per_run": {k: [round(r["load"], 2) for r in v] for k, v in rounds.items()}},
        "rounds": rounds,
        "script": a,
        "notebook": b,
        "ratio": b["wall"] / a["wall"],
        "ratio_at_equal_training": (training + b["besides_training"]) / (training + a["besides_training"]),
        "training_median": training,
        "cpu_ratio": b["cpu"] / a["cpu"],
        "overhead_seconds": b["besides_training"] - a["besides_training"],
        "separately": {"html_export_cold": html_cold, "tracking_writes_20_epochs": tracking},
    }


def _per_round(r: dict[str, Any], kind: str, key: str) -> str:
    return ", ".join(f"{q[key]:.1f}" for q in r["rounds"][kind])


def table(r: dict[str, Any]) -> str:
    """Human-readable summary: the two paths' phases side by side (medians), then the ratios."""
    a, b, p = r["script"], r["notebook"], r["params"]
    lines = [
        f"notebook overhead ({p['architecture']}, {p['epochs']} epochs, limit {p['limit'] or 'all'}, "
        f"median of {p['repeats']} ABBA rounds; load average {r['load_average']['before']:.1f} -> "
        f"{r['load_average']['after']:.1f})",
        f"  {'phase':36s} {'(a) script':>10s} {'(b) notebook':>13s}",
    ]
    for key, label in PHASES:
        cells = [f"{x['phases'][key]:10.2f}" if key in x["phases"] else f"{'-':>10s}" for x in (a, b)]
        lines.append(f"  {label:36s} {cells[0]} {cells[1]:>13s}")
    lines += [
        f"  {'wall':36s} {a['wall']:10.2f} {b['wall']:13.2f}",
        f"  {'besides training':36s} {a['besides_training']:10.2f} {b['besides_training']:13.2f}",
        f"  {'CPU seconds, all processes':36s} {a['cpu']:10.2f} {b['cpu']:13.2f}",
        f"  ratio b/a: wall {r['ratio']:.3f}, at equal training ({r['training_median']:.1f} s) "
        f"{r['ratio_at_equal_training']:.3f}, CPU {r['cpu_ratio']:.3f}; overhead {r['overhead_seconds']:.1f} s",
        # The fits' wall time follows the neighbours' load; the CPU seconds (the work) barely move.
        *(f"  {k} rounds: training {_per_round(r, k, 'train')} s, CPU {_per_round(r, k, 'cpu')} s"
          for k in ("script", "notebook")),
        f"  separately: HTML export in a fresh process {r['separately']['html_export_cold']:.2f} s "
        f"(warmed while the kernel runs), tracking writes for 20 epochs "
        f"{r['separately']['tracking_writes_20_epochs']:.3f} s",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--architecture", default="cnn")
    ns = ap.parse_args()
    print(table(run(ns.repeats, ns.epochs, ns.limit, ns.architecture)))
