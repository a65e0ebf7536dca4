"""compare and list_runs against 10,000 runs in a real ``mlflow server`` (the MLflow backend).

Seeding. 10,000 runs through REST would take minutes on 2 cores, so the
server's SQLite database is written before the server starts: the ``mlflow``
package's own ``SqlAlchemyStore`` creates the schema, the experiment and one
template run exactly as the server would store it (the tags, params, per-epoch
history and final metrics digitops' mirror sends), and that run's rows in every
table keyed by ``run_uuid`` are then copied N-1 times with new ids, start times
and ``test_accuracy`` values (plain ``executemany``; a few seconds). Then
``mlflow server`` starts on that database (tests/mlflow_server.py) and, median
of ``repeats``, through :class:`digitops.mlflow.tracker.MlflowTracker` over HTTP:

- ``metric_summary``: the gate metric over the finished runs on the candidate's
  dataset, less the candidate (what ``compare`` asks per metric);
- ``compare``: a full ``digitops.compare.compare`` of the candidate (the gate
  metric and three extra metrics; the embedded registry holds no production);
- ``list_runs(limit=20)`` (``digitops runs list``) and ``list_runs()`` (every run).

- the index: the seeding also writes the project's complete INDEX RUN
  (:mod:`digitops.mlflow.index`: tag ``digitops.index``, metric ``digitops_index``, one entry tag per
  run, as the mirror writes them), so ``metric_summary`` and ``compare`` read ONE
  ``runs/search`` answer; ``full_search_s`` is the same summary with the index
  ignored (the fallback: every run, paged), and the two summaries must be equal.
  ``runs/get`` of the index run is timed too.

The target is at most 2 s for the comparison (issue 15). Each timed call uses a
fresh tracker (nothing read before is reused, as in a CI job); requests per call
are counted by wrapping ``MlflowRest.call``.

Usage: ``python bench/bench_mlflow.py [--runs 10000] [--repeats 5] [--quick] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench_compare import _median_seconds as _median  # bench/ is on sys.path (script dir or bench/run.py)

ROOT = Path(__file__).resolve().parents[1]
RUNS = 10_000
QUICK_RUNS = 1_000
TARGET_S = 2.0
CHECKSUM = "0123456789abcdef" * 4
EXPERIMENT = "bench-mlflow"


def seed(db: Path, artifacts: Path, n: int, seed_: int = 0, index: bool = True) -> float:
    """Write ``n`` finished digitops-like runs (and, with ``index``, the index run) into a new store; seconds."""
    from mlflow.entities import Metric, Param, RunStatus, RunTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    started = time.perf_counter()
    store = SqlAlchemyStore(f"sqlite:///{db}", str(artifacts))
    eid = store.create_experiment(EXPERIMENT)
    t0 = int(time.time() * 1000) - n * 1000
    run = store.create_run(eid, user_id="", start_time=t0, tags=[], run_name="template")
    rid = run.info.run_id
    tags = {
        "digitops.run_id": "template", "digitops.status": "finished", "digitops.project": EXPERIMENT,
        "digitops.data_checksum": CHECKSUM, "mlflow.source.git.commit": "f" * 40, "mr_iid": "7",
        "pipeline_id": "99", "mlflow.runName": "template",
    }
    params = {"architecture": "cnn", "epochs": "5", "batch_size": "128", "learning_rate": "0.001", "seed": "0",
              "limit": "60000"}
    metrics = [Metric(k, 0.9 + step / 100, t0 + step, step) for step in range(5)
               for k in ("loss", "accuracy", "val_loss", "val_accuracy")]
    metrics += [Metric(k, v, t0 + 10, 4) for k, v in (("test_accuracy", 0.97), ("test_loss", 0.1), ("train_seconds", 30.0))]
    store.log_batch(rid, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                    tags=[RunTag(k, v) for k, v in tags.items()])
    store.update_run_info(rid, RunStatus.FINISHED, t0 + 20, None)
    from digitops.mlflow.index import COMPLETE_TAG, ENTRY_PREFIX, INDEX_METRIC, INDEX_NAME, INDEX_TAG, _entry

    index_id = None
    if index:
        # Created by the store like any run; its entry tags are row copies below (a few seconds, not minutes).
        idx = store.create_run(eid, user_id="", start_time=t0, run_name=INDEX_NAME,
                               tags=[RunTag(INDEX_TAG, EXPERIMENT), RunTag(COMPLETE_TAG, str(t0))])
        index_id = idx.info.run_id
        store.log_batch(index_id, metrics=[Metric(INDEX_METRIC, 1.0, 0, 0)], params=[], tags=[])
    store.engine.dispose()
    latest = {m.key: m.value for m in metrics if m.step == 4 and m.timestamp == t0 + 10}
    latest.update({m.key: m.value for m in metrics if m.timestamp == t0 + 4})

    rng = random.Random(seed_)
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    keyed = [t for t in tables if "run_uuid" in {c[1] for c in con.execute(f"PRAGMA table_info({t})")}]
    templates = {t: [dict(r) for r in con.execute(f"SELECT * FROM {t} WHERE run_uuid = ?", (rid,))] for t in keyed}
    copies = [(uuid.uuid4().hex, f"run-{i:05d}", round(0.95 + rng.random() * 0.04, 6)) for i in range(1, n)]
    with con:
        for t, rows in templates.items():
            if not rows:
                continue
            cols = list(rows[0])
            out = []
            for i, (new, name, acc) in enumerate(copies, start=1):
                for row in rows:
                    row = dict(row)
                    row["run_uuid"] = new
                    for col in ("artifact_uri", "name"):
                        if isinstance(row.get(col), str) and t == "runs":
                            row[col] = row[col].replace(rid, new).replace("template", name)
                    if t == "runs":
                        row["start_time"] = t0 + i * 1000
                        row["end_time"] = t0 + i * 1000 + 20
                    if t == "tags" and row.get("value") == "template":
                        row["value"] = name
                    if t in ("metrics", "latest_metrics") and row.get("key") == "test_accuracy":
                        row["value"] = acc
                    out.append(tuple(row[c] for c in cols))
            con.executemany(f"INSERT INTO {t} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", out)
        if index_id is not None:
            runs = [(rid, "template", 0.97, t0)] + [(new, name, acc, t0 + i * 1000) for i, (new, name, acc) in enumerate(copies, 1)]
            entries = [(name, _entry("finished", CHECKSUM, start, {**latest, "test_accuracy": acc}, False, new))
                       for new, name, acc, start in runs]
            con.executemany(
                "INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
                [(f"{ENTRY_PREFIX}{name}.{digest}", value, index_id) for name, (digest, value) in entries],
            )
    con.close()
    return time.perf_counter() - started


def run(runs: int = RUNS, repeats: int = 5) -> dict[str, Any]:
    """Seed, start the server, time the reads; returns the numbers."""
    sys.path.insert(0, str(ROOT / "tests"))
    from mlflow_server import MlflowServer

    with tempfile.TemporaryDirectory(prefix="digitops-bench-mlflow-") as tmp:
        root = Path(tmp)
        server = MlflowServer(root / "server")
        server.root.mkdir(parents=True)
        seed_s = seed(server.db, server.artifacts, runs)
        started = time.perf_counter()
        server.start()
        start_s = time.perf_counter() - started
        saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN", "DIGITOPS_BACKEND",
                                                 "DIGITOPS_HOME", "DIGITOPS_RUNS", "DIGITOPS_PROJECT")}
        os.environ.update({
            "MLFLOW_TRACKING_URI": server.url, "DIGITOPS_BACKEND": "mlflow", "DIGITOPS_HOME": str(root / "home"),
            "DIGITOPS_RUNS": str(root / "runs"), "DIGITOPS_PROJECT": EXPERIMENT,
        })
        os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
        try:
            return _measure(runs, repeats, seed_s, start_s)
        finally:
            server.stop()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _measure(runs: int, repeats: int, seed_s: float, start_s: float) -> dict[str, Any]:
    from digitops.compare import compare
    from digitops.mlflow import index
    from digitops.mlflow.rest import MlflowRest
    from digitops.mlflow.tracker import MlflowTracker
    from digitops.registry.sqlite import SqliteRegistry

    calls = {"n": 0}
    real_call = MlflowRest.call

    def counted(self: MlflowRest, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return real_call(self, *args, **kwargs)

    MlflowRest.call = counted  # type: ignore[method-assign]
    local = MlflowTracker().local
    # The candidate: a local run on the same dataset (not in the server: compare reads it locally).
    local.start_run("candidate", data_checksum=CHECKSUM, project=EXPERIMENT)
    local.log_metrics("candidate", {"test_accuracy": 0.975, "test_loss": 0.09, "val_accuracy": 0.97, "train_seconds": 29.0})
    local.end_run("candidate", "finished")
    registry = SqliteRegistry()

    # A fresh tracker each time: nothing read before is reused (a CI job compares once).
    def summary() -> Any:
        return MlflowTracker().metric_summary(
            "test_accuracy", project=EXPERIMENT, exclude=["candidate"], data_checksum=CHECKSUM
        )

    def full_search() -> Any:
        # The fallback when no trusted index exists: every finished run, paged.
        real_read, index.read = index.read, (lambda *a: None)
        try:
            return summary()
        finally:
            index.read = real_read

    def full() -> Any:
        return compare("candidate", tracker=MlflowTracker(), registry=registry)

    try:
        first = summary()
        assert first.count == runs, (first.count, runs)  # the summary really saw every run
        calls["n"] = 0
        summary()
        summary_requests = calls["n"]
        result = full()
        assert result.project_count == runs, result.project_count
        calls["n"] = 0
        full()
        compare_requests = calls["n"]
        assert len(MlflowTracker().list_runs(project=EXPERIMENT, limit=20)) == 20
        client = MlflowRest()
        by_search = full_search()
        # The index must say exactly what the full search says, or it is not worth its speed.
        assert (by_search.count, by_search.best_run_id, by_search.best) == (first.count, first.best_run_id, first.best)
        assert abs(by_search.mean - first.mean) < 1e-12, (by_search, first)
        calls["n"] = 0
        full_search()
        search_requests = calls["n"]
        (index_run,) = index.index_runs(client, client.experiment_id(EXPERIMENT, create=False), EXPERIMENT)
        index_id = index_run["info"]["run_id"]
        full_s = _median(full_search, repeats)
        index_s = _median(summary, repeats)
        return {
            "runs": runs,
            "repeats": repeats,
            "seed_s": seed_s,
            "server_start_s": start_s,
            "metric_summary_s": index_s,
            "metric_summary_requests": summary_requests,
            "full_search_s": full_s,
            "full_search_requests": search_requests,
            "index_speedup": full_s / index_s if index_s else None,
            "index_runs_get_s": _median(lambda: MlflowRest().call("GET", "runs/get", {"run_id": index_id}), repeats),
            "compare_s": _median(full, repeats),
            "compare_requests": compare_requests,
            "list_runs_20_s": _median(lambda: MlflowTracker().list_runs(project=EXPERIMENT, limit=20), repeats),
            "list_runs_all_s": _median(lambda: MlflowTracker().list_runs(project=EXPERIMENT), max(1, min(repeats, 3))),
            "target_s": TARGET_S,
            "seeding": "SqlAlchemyStore (schema, experiment, one template run) + executemany copies of its rows",
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    finally:
        MlflowRest.call = real_call  # type: ignore[method-assign]


def table(r: dict[str, Any]) -> str:
    """The results as plain text, with the comparison against the 2 s target."""
    verdict = "meets" if r["compare_s"] <= r["target_s"] else "MISSES"
    return "\n".join([
        f"MLflow backend against {r['runs']:,} runs in a real mlflow server (median of {r['repeats']})",
        f"  seed {r['seed_s']:.1f} s (SqlAlchemyStore template + row copies), server start {r['server_start_s']:.1f} s",
        f"  metric_summary   {r['metric_summary_s']:>7.3f} s  {r['metric_summary_requests']} requests (experiment, index run)",
        f"  full search      {r['full_search_s']:>7.3f} s  {r['full_search_requests']} requests (no index: every run, "
        f"paged); the index is {r['index_speedup']:.0f}x faster (runs/get of it {r['index_runs_get_s']:.3f} s)",
        f"  compare          {r['compare_s']:>7.3f} s  {r['compare_requests']} requests  "
        f"({verdict} the {r['target_s']:.0f} s target)",
        f"  list_runs(20)    {r['list_runs_20_s']:>7.3f} s",
        f"  list_runs(all)   {r['list_runs_all_s']:>7.3f} s",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS:,} runs, 3 repeats")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    r = run(QUICK_RUNS if args.quick else args.runs, 3 if args.quick else args.repeats)
    print(json.dumps(r, indent=2) if args.json else table(r))


if __name__ == "__main__":
    main()
