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

Then the same comparison against ``COMET_EXPERIMENTS`` experiments of a Comet
project held by the loopback fake (tests/fake_comet.py; the real comet_ml SDK
talks HTTP to it), production in its Model Registry, through
``CometTracker``/``CometRegistry``: the multi-experiment path (project listing,
one ``project/query`` for the filters, ``experiments/multi-metric-chart`` a page
of experiments at a time) beside the per-experiment path it replaced (two
requests per experiment and metric, kept here as ``_per_experiment_summary``
so both are measured in one run). It prints seconds and HTTP requests of each.

Usage: ``python bench/bench_compare.py [--sizes 10,100,1000,10000] [--repeats 7]
[--comet 1000] [--json]``; or ``run()`` from Python, which returns the numbers as a dict.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

SIZES = (10, 100, 1_000, 10_000)
DATA = "0123456789abcdef"
#: experiments in the Comet project of the Comet section
COMET_EXPERIMENTS = 1_000
ROOT = Path(__file__).resolve().parents[1]


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


@contextlib.contextmanager
def _comet_env(home: Path, fake: Any) -> Iterator[None]:
    """Point digitops and the SDK at ``fake`` with a private HOME, cwd and store; restore everything after."""
    saved, cwd = dict(os.environ), os.getcwd()
    for var in list(os.environ):
        if var.startswith(("COMET_", "CI_", "DIGITOPS_")):
            del os.environ[var]
    os.environ.update(fake.env())
    os.environ.update(
        {"HOME": str(home), "DIGITOPS_HOME": str(home / ".digitops"), "DIGITOPS_RUNS": str(home / "runs"),
         "COMET_PROJECT_NAME": "digitops"}
    )
    os.chdir(home)  # the SDK also reads ./.comet.config and ./.env
    try:
        yield
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)


def _per_experiment_summary(
    metric: str,
    *,
    project: str,
    exclude: Iterable[str] = (),
    data_checksum: str | None = None,
    higher_is_better: bool = True,
) -> Any:
    """The comparison digitops made before the multi-experiment queries (its baseline, kept only here):
    the project listing, then the "others" and the metric summary of every experiment, one request each."""
    from digitops.tracking.base import FINISHED
    from digitops.tracking.comet import _api, _experiments, comet_workspace, summarise

    api = _api()
    workspace = comet_workspace(api)
    found = []
    for exp in _experiments(api, workspace, project):
        others = {o["name"]: o.get("valueCurrent") for o in exp.get_others_summary() or []}
        run_id = others.get("digitops_run_id") or exp.name or exp.key
        if run_id in set(exclude) or others.get("digitops_status", FINISHED) != FINISHED:
            continue
        if data_checksum is not None and others.get("data_checksum") != data_checksum:
            continue
        summary = exp.get_metrics_summary(metric)
        if summary and not math.isnan(float(summary["valueCurrent"])):
            found.append((float(summary["valueCurrent"]), str(run_id), int(exp.start_server_timestamp or 0)))
    return summarise(metric, found, higher_is_better)


def comet(n: int = COMET_EXPERIMENTS, repeats: int = 3) -> dict[str, Any]:
    """Compare one candidate against ``n`` Comet experiments (loopback fake), both paths; seconds and requests."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_comet import FakeComet

    from digitops.compare import compare
    from digitops.registry.comet import CometRegistry
    from digitops.tracking.base import FINISHED, RunRecord
    from digitops.tracking.comet import CometTracker

    class PerExperimentTracker(CometTracker):
        def metric_summary(self, metric: str, **kw: Any) -> Any:  # type: ignore[override]
            return _per_experiment_summary(metric, **kw)

    rng = random.Random(1)
    out: dict[str, Any] = {"experiments": n}
    with tempfile.TemporaryDirectory(prefix="digitops-bench-comet-") as tmp, FakeComet() as fake:
        home = Path(tmp)
        with _comet_env(home, fake):
            metrics: dict[str, float] = {}
            for i in range(n):
                acc = 0.95 + rng.random() * 0.045
                metrics = {"test_accuracy": acc, "test_loss": 1 - acc, "val_accuracy": acc - 0.002,
                           "train_seconds": 30 + rng.random() * 10}
                exp = fake.add_experiment(
                    "digitops", f"run-{i:06d}", metrics,
                    {"digitops_run_id": f"run-{i:06d}", "digitops_status": FINISHED, "data_checksum": DATA},
                )
                if i == n // 2:
                    comment = json.dumps({"run_id": f"run-{i:06d}", "metrics": metrics})
                    fake.add_model_version("mnist-digits", "1.0.0", exp, comment=comment)
            candidate = RunRecord(
                run_id="candidate", project="digitops", name="candidate", status=FINISHED, params={},
                metrics=metrics, history={}, git_commit="a" * 40, data_checksum=DATA,
                started_at="2026-01-01T00:00:00+00:00", ended_at="2026-01-01T01:00:00+00:00",
            )
            CometTracker().import_runs([candidate])
            # Import the SDK and probe the server once, outside the timings (seconds, the same for both paths).
            assert CometRegistry().production_reference("mnist-digits") is not None
            for label_, tracker_cls, times in (("per_experiment", PerExperimentTracker, 1),
                                              ("multi_experiment", CometTracker, repeats)):
                seconds, requests = [], 0
                for _ in range(times):
                    before = len(fake.requests)
                    started = time.perf_counter()
                    c = compare("candidate", tracker=tracker_cls(), registry=CometRegistry(), model_name="mnist-digits")
                    seconds.append(time.perf_counter() - started)
                    requests = len(fake.requests) - before
                    assert c.project_count == n and c.production_version == "1.0.0", (c.project_count, c.reasons)
                out[label_] = {"compare_s": statistics.median(seconds), "requests": requests, "repeats": times}
    return out


def run(sizes: tuple[int, ...] = SIZES, repeats: int = 7, comet_experiments: int = COMET_EXPERIMENTS) -> dict[str, Any]:
    """Time compare and list_runs for each size, then compare against Comet; returns the numbers as a dict."""
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
    if comet_experiments:
        results["comet"] = comet(comet_experiments, repeats=max(1, min(repeats, 3)))
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
    c = r.get("comet")
    if c:
        lines.append(f"compare against {c['experiments']:,} Comet experiments (loopback fake, real SDK)")
        for key, what in (("per_experiment", "before: per experiment  "), ("multi_experiment", "after: multi-experiment")):
            v = c[key]
            lines.append(f"  {what}  {v['compare_s']:>8.2f} s  {v['requests']:>6,} requests")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated run counts")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--comet", type=int, default=COMET_EXPERIMENTS, help="Comet experiments (0: skip)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    os.environ.setdefault("DIGITOPS_PROJECT", "digitops")
    r = run(tuple(int(s) for s in args.sizes.split(",") if s), args.repeats, args.comet)
    print(json.dumps(r, indent=2) if args.json else table(r))


if __name__ == "__main__":
    main()
