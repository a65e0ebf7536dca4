"""MR feedback latency: wall time of the CI profile (train + evaluate + compare + report).

Runs `digitops pipeline --no-register` with the CI parameters as CI's jobs
would, from a warm install, in a fresh DIGITOPS_HOME; the baseline beside it
is the training time alone, as recorded by the training notebook.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run(profile: str = "ci", extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Time one pipeline; return wall time, per-stage times and the model's scores."""
    with tempfile.TemporaryDirectory(prefix="digitops-bench-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "DIGITOPS_HOME": str(work / ".digitops"), "DIGITOPS_RUNS": str(work / "runs"),
               "DIGITOPS_NOTEBOOKS": str(ROOT / "notebooks")}
        env.pop("COMET_API_KEY", None)
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "digitops", "pipeline", "--profile", profile, "--no-register", *extra],
            cwd=work, env=env, capture_output=True, text=True,
        )
        wall = time.perf_counter() - started
        if proc.returncode not in (0, 1):  # 1: the gate failed, still a complete MR report
            raise RuntimeError(f"pipeline failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        metrics = json.loads(next((work / "runs").glob("*/metrics.json")).read_text())
        stages = dict(
            (part.split()[0], float(part.split()[1]))
            for part in proc.stdout.rsplit("Stages: ", 1)[1].strip().split(", ")
        )
        return {
            "profile": profile,
            "wall_seconds": wall,
            "stage_seconds": stages,
            "train_seconds": metrics["metrics"]["train_seconds"],
            "test_accuracy": metrics["metrics"]["test_accuracy"],
            "cpu_count": os.cpu_count(),
        }


def table(r: dict[str, Any]) -> str:
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in r["stage_seconds"].items())
    return "\n".join([
        f"MR feedback latency (profile {r['profile']}, {r['cpu_count']} cores)",
        f"  train + evaluate + compare + report  {r['wall_seconds']:7.1f} s  ({stages})",
        f"  of which model.fit (baseline)        {r['train_seconds']:7.1f} s",
        f"  test accuracy                        {r['test_accuracy']:.2%}",
    ])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="ci")
    print(table(run(ap.parse_args().profile)))
