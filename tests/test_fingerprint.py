"""Run fingerprints: what changes them, what does not, and finding a run by one."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import nbformat
import pytest

from digitops import data, fingerprint
from digitops.tracking import ABANDONED, FAILED, FINISHED, RUNNING, Tracker
from digitops.tracking.sqlite import SCHEMA_VERSION, SqliteTracker

ROOT = Path(__file__).resolve().parents[1]
TRAIN_NB = ROOT / "notebooks" / "train.ipynb"


def _resaved(src: Path, dest: Path) -> Path:
    """``src`` as JupyterLab leaves it after running: outputs, execution counts, other metadata."""
    nb = nbformat.read(src, as_version=4)
    for i, cell in enumerate(nb.cells):
        cell.metadata["collapsed"] = bool(i % 2)
        if cell.cell_type == "code":
            cell.execution_count = i + 1
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"output {i}\n")]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.9"}
    nbformat.write(nb, dest)
    return dest


def test_notebook_part_ignores_outputs_metadata_and_markdown(tmp_path: Path) -> None:
    before = fingerprint.notebook_source(TRAIN_NB)
    assert fingerprint.notebook_source(_resaved(TRAIN_NB, tmp_path / "resaved.ipynb")) == before

    nb = nbformat.read(TRAIN_NB, as_version=4)
    next(c for c in nb.cells if c.cell_type == "markdown").source += "\n\nMore prose."
    nbformat.write(nb, tmp_path / "prose.ipynb")
    assert fingerprint.notebook_source(tmp_path / "prose.ipynb") == before

    code = [c for c in nb.cells if c.cell_type == "code"]
    code[-1].source += "\nprint('one more line')"
    nbformat.write(nb, tmp_path / "code.ipynb")
    assert fingerprint.notebook_source(tmp_path / "code.ipynb") != before


def test_params_part_is_resolved_against_the_defaults() -> None:
    none = fingerprint.for_train(TRAIN_NB, {})
    default_given = fingerprint.for_train(TRAIN_NB, {"epochs": 2, "learning_rate": 0.001})
    # What the runner hashes: values after validation (an int for a float parameter becomes a float).
    from digitops import params

    assert fingerprint.for_train(TRAIN_NB, params.validate(TRAIN_NB, {"field_train_share": 0})).digest == none.digest
    assert default_given.digest == none.digest
    other = fingerprint.for_train(TRAIN_NB, {"epochs": 3})
    assert other.digest != none.digest and other.differences(none.tags()) == ["params"]
    # Paths the runner sets are not inputs.
    assert fingerprint.for_train(TRAIN_NB, {"run_id": "x", "output_dir": "/tmp/x"}).digest == none.digest


def test_every_part_is_a_tag_and_differences_name_the_part(monkeypatch: pytest.MonkeyPatch) -> None:
    fp = fingerprint.for_train(TRAIN_NB, {})
    tags = fp.tags()
    assert tags["digitops.fingerprint"] == fp.digest and len(fp.digest) == 64
    assert set(tags) == {"digitops.fingerprint"} | {f"digitops.fingerprint.{p}" for p in
                                                     ("notebook", "params", "package", "data", "versions")}
    assert tags["digitops.fingerprint.data"] == f"mnist={data.DATASET_CHECKSUM}"
    assert all(f"{lib}=" in tags["digitops.fingerprint.versions"] for lib in ("keras", "numpy", "tensorflow"))
    monkeypatch.setattr(data, "DATASET_CHECKSUM", "another-dataset")
    changed = fingerprint.for_train(TRAIN_NB, {})
    assert changed.digest != fp.digest and changed.differences(tags) == ["data"]
    assert fp.differences(tags) == []


def test_package_part_covers_every_module(tmp_path: Path) -> None:
    pkg = tmp_path / "digitops"
    shutil.copytree(Path(fingerprint.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    before = fingerprint._package_source(str(pkg))
    assert before == fingerprint.package_source()
    (pkg / "dashboard" / "app.py").write_text((pkg / "dashboard" / "app.py").read_text() + "\n# edited\n")
    fingerprint._package_source.cache_clear()
    assert fingerprint._package_source(str(pkg)) != before


def test_field_export_counts_only_for_stages_that_read_it(workdir: Path) -> None:
    from digitops.feedback import dataset

    assert fingerprint.data_part(False) == f"mnist={data.DATASET_CHECKSUM}"
    assert fingerprint.data_part(True).endswith(";field=none")
    folder = dataset.exports_dir()
    folder.mkdir(parents=True)
    (folder / "field-abc.npz").write_bytes(b"x")
    (folder / "field-abc.json").write_text('{"sha256": "feedface", "created_at": "2026-01-01"}')
    assert fingerprint.data_part(True).endswith(";field=feedface")
    share = fingerprint.for_train(TRAIN_NB, {"field_train_share": 0.5})
    assert share.parts["data"].endswith(";field=feedface")
    assert "field" not in fingerprint.for_train(TRAIN_NB, {}).parts["data"]


def _run(t: SqliteTracker, run_id: str, fp: str, status: str, project: str | None = None) -> None:
    t.start_run(run_id, tags={"digitops.fingerprint": fp}, project=project)
    if status in (FINISHED, FAILED):
        t.end_run(run_id, status)
    elif status == ABANDONED:
        with sqlite3.connect(t.db_path) as con:
            con.execute("UPDATE runs SET status = 'abandoned' WHERE run_id = ?", (run_id,))


@pytest.mark.parametrize("lookup", ["sqlite", "default", "comet"])
def test_find_reusable_returns_the_newest_finished_match_only(workdir: Path, lookup: str) -> None:
    from digitops.comet.tracker import CometTracker

    t = SqliteTracker()
    find = {
        "sqlite": t.find_reusable,
        "default": lambda *a, **k: Tracker.find_reusable(t, *a, **k),  # what a store without its own does
        "comet": CometTracker(local=t).find_reusable,  # its embedded store: where the run folders are known
    }[lookup]
    assert find("f1") is None
    _run(t, "old", "f1", FINISHED)
    _run(t, "new", "f1", FINISHED)
    for status in (FAILED, RUNNING, ABANDONED):
        _run(t, f"newer-{status}", "f1", status)
    _run(t, "other-fp", "f2", FINISHED)
    _run(t, "other-project", "f1", FINISHED, project="elsewhere")
    found = find("f1")
    assert found is not None and found.run_id == "new" and found.status == FINISHED
    assert find("f1", "elsewhere").run_id == "other-project"
    assert find("f3") is None
    # The evaluation's fingerprint lives under its own tag.
    assert find("f1", tag="digitops.eval_fingerprint") is None


def test_store_upgrade_indexes_tags(tmp_path: Path) -> None:
    from digitops import _sqlite
    from digitops.tracking.sqlite import _SCHEMA_V1, _SCHEMA_V2

    db = tmp_path / "tracking.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    _sqlite.run_script(con, _SCHEMA_V1)
    _sqlite.run_script(con, _SCHEMA_V2)
    con.execute("PRAGMA user_version = 2")
    con.close()
    t = SqliteTracker(db, tmp_path / "artifacts")
    _run(t, "r", "f1", FINISHED)
    assert t.find_reusable("f1", "digitops").run_id == "r"
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        plan = " ".join(str(r) for r in con.execute(
            "EXPLAIN QUERY PLAN SELECT run_id FROM tags WHERE key = 'digitops.fingerprint' AND value = 'f1'"))
    assert "tags_by_value" in plan


def test_comet_gets_the_fingerprint_digest_not_its_parts() -> None:
    from digitops.comet.state import snapshot
    from digitops.tracking import RunRecord

    fp = fingerprint.for_train(TRAIN_NB, {})
    rec = RunRecord("r", "digitops", status=FINISHED,
                    tags={**fp.tags(), "digitops.reused_from": "r0", "stage": "train"})
    assert snapshot(rec).tags == ["digitops.fingerprint:" + fp.digest, "digitops.reused_from:r0"]
