"""`make bench`: every benchmark, one table each, all numbers in bench/results.json.

Sections (each module has run() -> dict and table(dict) -> str):
  notebook   plain script vs `digitops run train` on the same training (ratio, fixed cost)
  training   images/s per architecture; time to 99.0/99.3/99.5 % validation accuracy (full profile)
  pipeline   MR feedback latency: the CI profile's train + evaluate + compare + report
  ci         push -> MR note through gitlab-ci-local, installs included (preinstalled / slim / full)
  dashboard  server-side inference latency, page-to-canvas, Predict round trip; 50 visitors for 2 min, abuse
  compare    compare/list with 10 .. 10,000 stored runs; compare against 1,000 Comet experiments
  mlflow     compare/list against 10,000 runs in a real mlflow server (the MLflow backend)

    python bench/run.py [--only notebook,compare] [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTIONS = ("compare", "mlflow", "dashboard", "notebook", "pipeline", "ci", "training")
# The key a section's figures are kept under in results.json, where it is not the section's name.
KEYS = {"ci": "ci_push_to_note"}


def _run_section(name: str, quick: bool) -> tuple[dict, str]:
    sys.path.insert(0, str(HERE))
    if name == "training":
        mod = importlib.import_module("bench_training")
        tp = mod.throughput(images=4000 if quick else 12_000)
        # The full profile trains long enough to pass every target; the CI
        # profile's time and accuracy are in the pipeline section.
        tta = mod.time_to_accuracy("ci", max_epochs=1) if quick else mod.time_to_accuracy("full")
        return {"throughput": tp, "time_to_accuracy": tta}, mod.table(tp, tta)
    mod = importlib.import_module(f"bench_{name}")
    kwargs: dict = {}
    if quick and name == "notebook":
        kwargs = {"repeats": 1, "epochs": 1, "limit": 6000}
    if quick and name == "pipeline":
        kwargs = {"profile": "quick"}
    if quick and name == "dashboard":
        kwargs = {"inference_n": 50, "clicks": 5, "loads": 1, "visitors": 5, "seconds": 15}
    if quick and name == "compare":
        kwargs = {"sizes": (10, 100, 1000), "repeats": 3, "comet_experiments": 100}
    if quick and name == "mlflow":
        kwargs = {"runs": 1000, "repeats": 3}
    if name == "ci":
        kwargs = {"quick": quick}
    result = mod.run(**kwargs)
    return result, mod.table(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    ap.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test of the harness")
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    ns = ap.parse_args()
    # Sections not run this time keep their last figures (`--only ci` must not drop the others).
    results = json.loads(ns.out.read_text()) if ns.out.exists() else {}
    results.update({
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "quick": ns.quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    for name in ns.only.split(","):
        started = time.perf_counter()
        print(f"\n== {name}", flush=True)
        result, text = _run_section(name.strip(), ns.quick)
        results[KEYS.get(name.strip(), name.strip())] = {**result, "quick_run": ns.quick}
        print(text, flush=True)
        print(f"({time.perf_counter() - started:.0f} s)", flush=True)
        ns.out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {ns.out}")


if __name__ == "__main__":
    main()
