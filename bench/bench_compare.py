"""How `compare` and `list_runs` scale with the number of stored runs (embedded SQLite store).

For each size N, a fresh temporary DIGITOPS_HOME gets N finished runs (six
parameters, four final metrics, a 5-epoch history of four metrics each)
through ``SqliteTracker.import_runs``, and a production version in the
registry. Then, median of ``repeats``:

- ``compare``: a full comparison of one candidate (gate metric plus three
  extra metrics, each a SQL aggregate over the N runs, and the production
  lookup), as ``digitops compare`` does after start-up;
- ``list_runs(limit=20)``: what ``digitops runs list`` shows;
- ``list_runs()``: every run with params, metrics and history.

Usage: ``python bench/bench_compare.py [--sizes 10,100,1000,10000] [--repeats 7] [--json]``;
or ``run()`` from Python, which returns the numbers as a dict.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

SIZES = (10, 100, 1_000, 10_000)
DATA = "0123456789abcdef"


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _model_file(folder: Path) -> Path:
    # The registry only checks the Keras 3 container (a zip with config.json) and hashes the
    # bytes; the weights play no part in comparing, so a real Keras import is not worth seconds here.
    path = folder / "model.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {"name": "bench"}}))
        z.writestr("metadata.json", json.dumps({"keras_version": "3"}))
    return path


def _populate(home: Path, n: int, seed: int = 0) -> tuple[float, str]:
    """Store ``n`` finished runs plus a candidate and a production version; returns (seconds, candidate)."""
    from digitops.registry.sqlite import SqliteRegistry
    from digitops.tracking.base import FINISHED, RunRecord
    from digitops.tracking.sqlite import SqliteTracker

    rng = random.Random(seed)
    tracker = SqliteTracker(home / "tracking.db", home / "artifacts")
    registry = SqliteRegistry(home / "registry.db", home / "models")
    records = []
    for i in range(n + 1):
        acc = 0.95 + rng.random() * 0.045
        records.append(
            RunRecord(
                run_id=f"run-{i:06d}",
                project="digitops",
                name=f"run-{i:06d}",
                status=FINISHED,
                params={"architecture": rng.choice(["mlp", "cnn", "cnn_bn"]), "epochs": 5, "batch_size": 128,
                        "learning_rate": 1e-3, "limit": 0, "seed": i},
                metrics={"test_accuracy": acc, "test_loss": 1 - acc, "val_accuracy": acc - 0.002,
                         "train_seconds": 30 + rng.random() * 10},
                history={k: [rng.random() for _ in range(5)] for k in ("loss", "accuracy", "val_loss", "val_accuracy")},
                git_commit="a" * 40,
                data_checksum=DATA,
                started_at=f"2026-01-01T00:00:00.{i:06d}+00:00",
                ended_at=f"2026-01-01T01:00:00.{i:06d}+00:00",
            )
        )
    started = time.perf_counter()
    tracker.import_runs(records)
    seconds = time.perf_counter() - started
    prod = records[n // 2]
    registry.register("mnist-digits", _model_file(home), prod.run_id, metrics=prod.metrics, status="production")
    return seconds, records[-1].run_id


def run(sizes: tuple[int, ...] = SIZES, repeats: int = 7) -> dict[str, Any]:
    """Time compare and list_runs for each size; returns ``{"sizes": {N: {...seconds...}}, "repeats": r}``."""
    from digitops.compare import compare
    from digitops.registry.sqlite import SqliteRegistry
    from digitops.tracking.sqlite import SqliteTracker

    results: dict[str, Any] = {"repeats": repeats, "sizes": {}}
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix=f"digitops-bench-{n}-") as tmp:
            home = Path(tmp)
            populate_s, candidate = _populate(home, n)
            tracker = SqliteTracker(home / "tracking.db", home / "artifacts")
            registry = SqliteRegistry(home / "registry.db", home / "models")
            c = compare(candidate, tracker=tracker, registry=registry, model_name="mnist-digits")
            assert c.project_count == n, (c.project_count, n)  # the comparison really saw every run
            results["sizes"][n] = {
                "populate_s": populate_s,
                "compare_s": _median_seconds(
                    lambda: compare(candidate, tracker=tracker, registry=registry, model_name="mnist-digits"),
                    repeats,
                ),
                "list_runs_20_s": _median_seconds(lambda: tracker.list_runs(project="digitops", limit=20), repeats),
                "list_runs_all_s": _median_seconds(
                    lambda: tracker.list_runs(project="digitops"), max(1, min(repeats, 3))
                ),
                "db_mib": (home / "tracking.db").stat().st_size / 2**20
                + sum(p.stat().st_size for p in home.glob("tracking.db-wal")) / 2**20,
            }
    return results


def table(r: dict[str, Any]) -> str:
    """The results as a plain-text table (milliseconds)."""
    lines = [
        f"compare / list_runs on the embedded SQLite store (median of {r['repeats']})",
        f"{'runs':>7}  {'populate':>9}  {'compare':>9}  {'list 20':>9}  {'list all':>9}  {'db MiB':>7}",
    ]
    for n, v in r["sizes"].items():
        lines.append(
            f"{int(n):>7,}  {v['populate_s'] * 1e3:>7.1f}ms  {v['compare_s'] * 1e3:>7.2f}ms  "
            f"{v['list_runs_20_s'] * 1e3:>7.2f}ms  {v['list_runs_all_s'] * 1e3:>7.1f}ms  {v['db_mib']:>7.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated run counts")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    os.environ.setdefault("DIGITOPS_PROJECT", "digitops")
    r = run(tuple(int(s) for s in args.sizes.split(",") if s), args.repeats)
    print(json.dumps(r, indent=2) if args.json else table(r))


if __name__ == "__main__":
    main()
