"""The feedback store, its exports and the split by drawing hash (no TensorFlow, no browser)."""

from __future__ import annotations

import io
import multiprocessing
import sqlite3

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digitops.feedback import FeedbackError, settings
from digitops.feedback import dataset
from digitops.feedback.store import LocalFeedbackStore


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DIGITOPS_FEEDBACK_DIR", raising=False)
    return LocalFeedbackStore()


def drawing(seed: int, size: int = 280) -> bytes:
    """A canvas-like PNG (white strokes on black) that differs with ``seed``."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGBA", (size, size), (0, 0, 0, 255))
    d = ImageDraw.Draw(im)
    pts = [tuple(float(v) for v in rng.uniform(0.2, 0.8, 2) * size) for _ in range(4)]
    d.line(pts, fill=(255, 255, 255, 255), width=24)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def keep(store, seed, label=4, **kw):
    kw.setdefault("predicted", 9)
    kw.setdefault("probabilities", [0.1] * 10)
    kw.setdefault("model_name", "mnist-digits")
    kw.setdefault("model_version", "1.0.0")
    return store.add(drawing(seed), label, **kw)


def test_a_drawing_is_kept_with_its_labels_and_images(store):
    out = keep(store, 1)
    assert out.status == "kept"
    [rec] = store.records()
    assert (rec.label, rec.predicted, rec.model_version) == (4, 9, "1.0.0") and len(rec.probabilities) == 10
    assert (store.drawings / f"{rec.hash}.png").read_bytes() == drawing(1)
    img = store.image(rec.hash)
    assert img.shape == (28, 28) and img.dtype == np.uint8 and img.max() == 255


def test_the_same_drawing_twice_is_kept_once_and_a_correction_relabels_it(store):
    assert keep(store, 1).status == "kept"
    assert keep(store, 1).status == "unchanged"
    assert keep(store, 1, label=7).status == "relabelled"
    assert [r.label for r in store.records()] == [7]


@pytest.mark.parametrize("label", [10, -1, True, "4", 4.0, None])
def test_a_label_outside_0_9_is_refused(store, label):
    with pytest.raises(FeedbackError, match="must be a digit 0-9"):
        keep(store, 1, label=label)
    assert store.records() == []


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "png, message",
    [
        (lambda: _png(Image.new("RGBA", (280, 280))), "canvas is empty"),
        (lambda: _png(Image.new("L", (2000, 50))), "at most 1024x1024"),
        (lambda: b"\x89PNG\r\n\x1a\n" + b"\0" * (3 * 2**20), "at most 2 MB"),
        (lambda: b"not an image", "could not decode"),
    ],
)
def test_empty_oversized_or_broken_drawings_are_refused_and_nothing_is_written(store, png, message):
    with pytest.raises(FeedbackError, match=message):
        store.add(png(), 3, model_name="m", model_version="1")
    assert store.records() == [] and not any(store.drawings.glob("*")) if store.drawings.exists() else True
    assert keep(store, 2).status == "kept"  # the store stays usable


@pytest.mark.parametrize("kw, message", [
    ({"probabilities": [0.5] * 9}, "10 numbers"),
    ({"probabilities": [float("nan")] * 10}, "10 numbers"),
    ({"predicted": 11}, "predicted label"),
    ({"model_version": "x\n<script>"}, "model version"),
])
def test_bad_metadata_is_refused(store, kw, message):
    with pytest.raises(FeedbackError, match=message):
        keep(store, 1, **kw)


def _writer(folder: str, seeds: list[int]) -> int:
    s = LocalFeedbackStore(folder)
    return sum(keep(s, seed).status == "kept" for seed in seeds)


def test_many_processes_writing_at_once_keep_each_drawing_once(tmp_path):
    folder = tmp_path / "fb"  # not created yet: the processes race to create the store too
    # Every process writes the 12 drawings, in a different order.
    jobs = [(str(folder), list(np.random.default_rng(i).permutation(12))) for i in range(4)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        kept = pool.starmap(_writer, [(f, [int(s) for s in seeds]) for f, seeds in jobs])
    assert sum(kept) == 12
    store = LocalFeedbackStore(folder)
    assert len(store.records()) == 12
    assert len(list(store.drawings.glob("*.png"))) == 24 and not list(store.drawings.glob(".*"))


def test_a_damaged_database_is_refused_with_the_doctor_hint(tmp_path):
    folder = tmp_path / "fb"
    LocalFeedbackStore(folder)
    (folder / "feedback.db").write_bytes(b"garbage" * 1000)
    with pytest.raises(FeedbackError, match="damaged|not usable"):
        LocalFeedbackStore(folder).records()


def test_settings_switch_and_bad_numbers(monkeypatch, tmp_path):
    monkeypatch.setenv("DIGITOPS_HOME", str(tmp_path))
    assert settings().enabled and settings().folder == str(tmp_path / "feedback")
    monkeypatch.setenv("DIGITOPS_FEEDBACK", "off")
    assert not settings().enabled
    monkeypatch.setenv("DIGITOPS_GATE_FIELD_MIN", "lots")
    from digitops.feedback import gate_settings

    with pytest.raises(FeedbackError, match="DIGITOPS_GATE_FIELD_MIN"):
        gate_settings()
    monkeypatch.setenv("DIGITOPS_GATE_FIELD_MIN", "3")
    monkeypatch.setenv("DIGITOPS_GATE_FIELD_TOLERANCE", "nan")
    with pytest.raises(FeedbackError, match="DIGITOPS_GATE_FIELD_TOLERANCE"):
        gate_settings()
    # The dashboard's switch and the store's folder never depend on the gate's numbers.
    assert settings().enabled is False and LocalFeedbackStore().records() == []


# ----------------------------------------------------------------------------- exports and the split


def test_export_is_versioned_checksummed_and_idempotent(store):
    for seed in range(6):
        keep(store, seed, label=seed % 10)
    path, manifest = dataset.export(store)
    again, manifest2 = dataset.export(store)
    assert again == path and manifest2 == manifest and manifest["count"] == 6
    loaded = dataset.load()
    assert loaded.version == manifest["version"] and len(loaded) == 6 and loaded.x.shape == (6, 28, 28)
    assert sorted(loaded.y.tolist()) == [0, 1, 2, 3, 4, 5]
    keep(store, 99, label=1)
    path3, manifest3 = dataset.export(store)
    assert manifest3["version"] != manifest["version"] and dataset.latest() == path3


def test_a_changed_export_is_refused(store):
    keep(store, 1)
    path, _ = dataset.export(store)
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FeedbackError, match="does not match the checksum"):
        dataset.load(path)


def test_no_export_and_an_empty_store(store):
    assert dataset.load() is None
    with pytest.raises(FeedbackError, match="no field drawings"):
        dataset.export(store)


def test_the_split_never_puts_a_drawing_on_both_sides(store):
    for seed in range(40):
        keep(store, seed, label=seed % 10)
    field = dataset.load(dataset.export(store)[0])
    test_mask = field.test_mask()
    assert 8 <= test_mask.sum() <= 32  # about half, by hash
    x_test, _ = field.test()
    for share in (0.0, 0.5, 1.0):
        x_train, _ = field.train(share)
        test_keys = {x.tobytes() for x in x_test}
        assert not any(x.tobytes() in test_keys for x in x_train)
    assert len(field.train(1.0)[1]) + len(field.test()[1]) == 40
    assert len(field.train(0.0)[1]) == 0
    # Deterministic: a larger store keeps every old drawing on its side, and a share grows as a superset.
    keep(store, 1000, label=3)
    bigger = dataset.load(dataset.export(store)[0])
    old = dict(zip(field.hashes.tolist(), test_mask.tolist()))
    assert all(old[h] == t for h, t in zip(bigger.hashes.tolist(), bigger.test_mask().tolist()) if h in old)
    half = {x.tobytes() for x in field.train(0.5)[0]}
    assert half <= {x.tobytes() for x in field.train(0.8)[0]}
    with pytest.raises(FeedbackError, match="between 0 and 1"):
        field.train(1.5)


def test_the_feedback_modules_do_not_import_tensorflow():
    """Dashboard kernels write feedback and must stay small."""
    import subprocess
    import sys

    code = ("import sys, digitops.feedback.store, digitops.feedback.dataset; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------- digitops feedback


def _cli(*args):
    from click.testing import CliRunner

    from digitops.cli import cli

    return CliRunner().invoke(cli, ["feedback", *args], catch_exceptions=False)


def test_cli_list_stats_export(store):
    res = _cli("list")
    assert res.exit_code == 0 and "no field drawings" in res.output
    assert _cli("export").exit_code == 1
    res = _cli("export", "--if-any")
    assert res.exit_code == 0 and "nothing exported" in res.output and dataset.latest() is None
    keep(store, 1, label=4, predicted=9)
    keep(store, 2, label=4, predicted=4, model_version="1.1.0")
    keep(store, 3, label=7, predicted=1)
    res = _cli("list")
    assert res.exit_code == 0 and "3 drawing(s)" in res.output and "mnist-digits 1.1.0" in res.output
    res = _cli("stats", "--json")
    import json

    stats = json.loads(res.output)
    assert stats["per_label"]["4"] == 2 and stats["per_label"]["7"] == 1
    assert stats["per_model_version"]["mnist-digits 1.0.0"] == {"drawings": 2, "right": 0}
    assert stats["confusion"][4][9] == 1 and stats["confusion"][4][4] == 1 and stats["confusion"][7][1] == 1
    assert "confusion" in _cli("stats").output
    res = _cli("export")
    assert res.exit_code == 0 and "3 drawing(s)" in res.output and dataset.load().version in res.output


def test_cli_damaged_store_is_one_line(store):
    keep(store, 1)
    (store.folder / "feedback.db").write_bytes(b"garbage" * 1000)
    for verb in ("list", "stats", "export"):
        res = _cli(verb)
        assert res.exit_code == 1 and "Traceback" not in res.output and "feedback database" in res.output


# ----------------------------------------------------------------------------- the gate and the report row


FIELD = {"field_images": 40.0, "field_accuracy": 0.80, "field_production_accuracy": 0.90,
         "field_production_missing": 0.0}


@pytest.mark.parametrize("env, metrics, verdict, words", [
    ({}, {}, "pass", None),  # no field set scored: the rule says nothing
    ({"DIGITOPS_GATE_FIELD_MIN": "50"}, FIELD, "pass", "fewer than 50"),  # too few drawings: informs only
    ({}, FIELD, "fail", "worse than production 90.00% on 40 drawings"),
    ({"DIGITOPS_GATE_FIELD_TOLERANCE": "0.1"}, FIELD, "pass", "not worse"),
    ({}, {**FIELD, "field_production_accuracy": "0.8"}, "pass", "not worse"),  # Comet's strings
    ({}, {**FIELD, "field_production_missing": 1.0}, "fail", "could not be scored"),
    ({"DIGITOPS_GATE_FIELD_TOLERANCE": "much"}, FIELD, "fail", "malformed"),
    ({}, {"field_images": 40.0, "field_accuracy": 0.5, "field_production_missing": 0.0}, "pass", "no production"),
])
def test_field_gate(monkeypatch, env, metrics, verdict, words):
    from digitops.feedback import gate

    for k in ("DIGITOPS_GATE_FIELD_MIN", "DIGITOPS_GATE_FIELD_TOLERANCE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from digitops.compare import Reason
    from digitops.wording import reason_text

    earlier = Reason("nan", False, {})
    got, findings = gate.judge(metrics, "pass", [earlier])
    assert got == verdict
    if words is None:
        assert findings == [earlier]
    else:
        reasons = [reason_text(r, "test_accuracy") for r in findings]
        assert any(words in r for r in reasons), reasons
        if verdict == "fail":
            assert words in reasons[0]  # gate failures come first
    assert gate.judge(metrics, "fail", [])[0] == "fail"  # never turns a failure into a pass


def test_compare_and_report_carry_the_field_row(workdir):
    from digitops.compare import compare
    from digitops.registry.sqlite import SqliteRegistry
    from digitops.report import write_report
    from digitops.tracking.sqlite import SqliteTracker
    from store_helpers import add_run

    tracker, reg = SqliteTracker(), SqliteRegistry()
    add_run(tracker, "cand", {"test_accuracy": 0.95, **FIELD})
    c = compare("cand", tracker=tracker, registry=reg)
    assert not c.passed and "Field drawings: candidate 80.00% is worse" in c.reasons[0]
    md = write_report("cand", workdir / "out", tracker=tracker, registry=reg)["markdown"].read_text()
    row = next(line for line in md.splitlines() if "field drawings" in line)
    assert "candidate vs production on 40 drawings" in row and "80.00 %" in row and "90.00 %" in row
    assert "-10.00 pts" in row
    html = (workdir / "out" / "report.html").read_text()
    assert "field drawings: candidate vs production on 40 drawings" in html


# ----------------------------------------------------------------------------- never train on the test


def test_a_model_is_never_scored_on_field_drawings_it_trained_on(store, tmp_path):
    import json

    from digitops import model
    from digitops.feedback import scoring

    for seed in range(40):
        keep(store, seed, label=seed % 10)
    field = dataset.load(dataset.export(store)[0])
    x0, y0 = np.zeros((5, 28, 28), np.uint8), np.zeros(5, np.int64)
    x, y, lineage = dataset.mix_into_training(x0, y0, 1.0, field)
    assert lineage["export"] == field.version and len(y) == 5 + lineage["train_images"] > 5
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    (run_folder / "metrics.json").write_text(json.dumps({"field_training": lineage}))
    net = model.build("mlp", seed=0)
    result = scoring.score(net, run_folder=run_folder, field=field, production=lambda: (None, None))
    assert result is not None and len(result.y) == int(field.test_mask().sum()) > 0
    assert not set(result.hashes) & set(lineage["train_hashes"])
    assert {x.tobytes() for x in result.x}.isdisjoint({x.tobytes() for x in x[5:]})
    assert result.metrics()["field_images"] == len(result.y) and "field_production_accuracy" not in result.metrics()
    # A run whose lineage says it trained on a test drawing is refused, not scored.
    lineage["train_hashes"].append(result.hashes[0])
    (run_folder / "metrics.json").write_text(json.dumps({"field_training": lineage}))
    with pytest.raises(FeedbackError, match="trained on 1 of the field set's test drawings"):
        scoring.score(net, run_folder=run_folder, field=field, production=lambda: (None, None))


def test_production_that_cannot_be_scored_is_recorded_for_the_gate(store):
    from digitops import model
    from digitops.feedback import scoring

    for seed in range(12):
        keep(store, seed, label=seed % 10)
    field = dataset.load(dataset.export(store)[0])
    net = model.build("mlp", seed=0)

    def broken():
        def load():
            raise OSError("model file unreadable")
        return "1.0.0", load

    result = scoring.score(net, field=field, production=broken)
    assert result.production_problem and "unreadable" in result.production_problem
    assert result.metrics()["field_production_missing"] == 1.0
    same = scoring.score(net, field=field, production=lambda: ("1.0.0", lambda: net))
    assert same.production_accuracy == same.accuracy and same.metrics()["field_production_missing"] == 0.0


def test_a_share_of_field_drawings_needs_an_export(store):
    x, y = np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.int64)
    assert dataset.mix_into_training(x, y, 0.0)[2] == {}
    with pytest.raises(FeedbackError, match="no field export yet"):
        dataset.mix_into_training(x, y, 0.5)


def test_a_full_disk_while_keeping_a_drawing_keeps_nothing_half_written(store, monkeypatch):
    import errno
    from pathlib import Path

    from digitops.feedback import FeedbackStoreError

    real = Path.write_bytes

    def half_then_full(self, data):
        real(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(FeedbackStoreError, match="No space left"):
        keep(store, 1)
    monkeypatch.setattr(Path, "write_bytes", real)
    assert store.records() == [] and list(store.drawings.iterdir()) == []
    assert keep(store, 1).status == "kept"  # space again: the same drawing goes in whole


def test_a_changed_drawing_file_is_refused_at_export(store):
    keep(store, 1)
    [rec] = store.records()
    from PIL import Image

    Image.fromarray(np.zeros((28, 28), np.uint8)).save(store.drawings / f"{rec.hash}-28.png")
    with pytest.raises(FeedbackError, match="does not match its hash"):
        dataset.export(store)


def test_a_full_disk_during_export_leaves_no_export(store, monkeypatch):
    import errno
    from pathlib import Path

    keep(store, 1)
    real = Path.write_bytes

    def full(self, data):
        if self.name.endswith(".json.%d.tmp" % __import__("os").getpid()):
            real(self, data[:5])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(FeedbackError, match="No space left"):
        dataset.export(store)
    monkeypatch.setattr(Path, "write_bytes", real)
    assert dataset.load() is None and not list(dataset.exports_dir().glob(".*"))
    assert dataset.load(dataset.export(store)[0]) is not None


# ----------------------------------------------------------------------------- the shared destination (Comet)


@pytest.fixture
def comet(tmp_path, monkeypatch):
    import os

    from fake_comet import FakeComet

    monkeypatch.setenv("HOME", str(tmp_path / "userhome"))
    (tmp_path / "userhome").mkdir()
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.startswith("COMET_") or var in ("DIGITOPS_COMET_OFFLINE", "DIGITOPS_PROJECT"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DIGITOPS_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("COMET_PROJECT_NAME", "digits")
    monkeypatch.setenv("COMET_TIMEOUT_UPLOAD", "8")
    with FakeComet() as server:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        yield server


def test_replicas_share_their_drawings_through_one_comet_experiment(comet, tmp_path, monkeypatch):
    from digitops.feedback import comet as shared

    a, b = LocalFeedbackStore(tmp_path / "replica-a"), LocalFeedbackStore(tmp_path / "replica-b")
    for seed in (1, 2, 3):
        keep(a, seed, label=seed)
    for seed in (3, 4):
        keep(b, seed, label=seed)
    first = shared.sync(a)
    assert (first.pushed, first.pulled, first.refused) == (3, 0, 0) and first.experiment_key
    second = shared.sync(b)
    assert (second.pushed, second.pulled) == (1, 2) and second.experiment_key == first.experiment_key
    third = shared.sync(a)
    assert (third.pushed, third.pulled) == (0, 1)
    assert {r.hash for r in a.records()} == {r.hash for r in b.records()} and len(a.records()) == 4
    assert {(r.hash, r.label) for r in a.records()} == {(r.hash, r.label) for r in b.records()}
    [exp] = comet.project_experiments("digits-field-drawings")
    assert exp.name == shared.EXPERIMENT_NAME and len(exp.assets) == 4
    assert not comet.project_experiments("digits")  # the compared project stays clean
    # Already in step: nothing is sent again.
    assert (shared.sync(b).pushed, shared.sync(b).pulled) == (0, 0)
    monkeypatch.setenv("DIGITOPS_FEEDBACK_DIR", str(tmp_path / "replica-b"))
    res = _cli("sync")
    assert res.exit_code == 0 and "0 drawing(s) sent, 0 received" in res.output
    monkeypatch.delenv("COMET_API_KEY")
    res = _cli("sync")
    assert res.exit_code == 1 and "Comet is not set up" in res.output


def test_a_forged_comet_asset_is_refused(comet, tmp_path):
    import base64
    import json

    from digitops.feedback import comet as shared

    a = LocalFeedbackStore(tmp_path / "a")
    keep(a, 1)
    shared.sync(a)
    [exp] = comet.project_experiments("digits-field-drawings")
    from fake_comet import Asset

    forged = {"label": 12, "canvas_png": base64.b64encode(drawing(9)).decode(), "model_name": "m", "model_version": "1"}
    exp.assets.append(Asset("forged1", "0" * 64 + ".json", json.dumps(forged).encode()))
    lying = {"label": 3, "canvas_png": base64.b64encode(drawing(8)).decode(), "model_name": "m", "model_version": "1"}
    exp.assets.append(Asset("forged2", "f" * 64 + ".json", json.dumps(lying).encode()))
    b = LocalFeedbackStore(tmp_path / "b")
    result = shared.sync(b)
    assert result.refused == 2 and len(b.records()) == 1  # neither the label-12 drawing nor the renamed one is kept
    assert "f" * 64 not in {r.hash for r in b.records()}


def test_comet_down_is_one_line_and_nothing_is_lost(comet, tmp_path, monkeypatch):
    from digitops.feedback import FeedbackStoreError
    from digitops.feedback import comet as shared

    a = LocalFeedbackStore(tmp_path / "a")
    keep(a, 1)
    comet.go_down()
    with pytest.raises(FeedbackStoreError, match="could not be synced with Comet") as err:
        shared.sync(a)
    assert comet.api_key not in str(err.value) and "\n" not in str(err.value)
    assert len(a.records()) == 1
    # The export still works, from this machine's drawings, and says why.
    monkeypatch.setenv("DIGITOPS_FEEDBACK_DIR", str(tmp_path / "a"))
    res = _cli("export")
    assert res.exit_code == 0 and "exporting this machine's drawings only" in res.output
