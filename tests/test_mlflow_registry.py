"""digitops.mlflow.registry against a real ``mlflow server`` behind the GitLab-subset guard.

Every test runs through the ``mlflow_guard`` fixture, which fails the test if any
request left GitLab's documented subset (``guard.refused`` must stay empty).
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from mlflow_fixtures import DUMMY_TOKEN  # noqa: E402
from store_helpers import keras_model_file  # noqa: E402

from digitops.errors import ChecksumError, RegistryError  # noqa: E402
from digitops.mlflow.registry import MlflowRegistry, pending_registrations, sync_registrations  # noqa: E402
from digitops.mlflow.rest import MlflowRefused, MlflowRest  # noqa: E402
from digitops.registry.base import sha256_file  # noqa: E402


def _model(folder: Path, variant: int) -> Path:
    """A real Keras file; ``variant`` changes its bytes (a zip comment), not the model."""
    path = keras_model_file(folder / f"m{variant}" / "model.keras")
    if variant:
        with zipfile.ZipFile(path, "a") as z:
            z.comment = f"variant {variant}".encode()
    return path


def _name() -> str:
    from digitops import config

    return config.model_name()


def _mv(rest: MlflowRest, version: str) -> dict:
    return rest.call("GET", "model-versions/get", {"name": _name(), "version": version})["model_version"]


def _no_token_anywhere(root: Path, *outputs: str) -> None:
    for text in outputs:
        assert DUMMY_TOKEN not in text
    for path in root.rglob("*"):
        if path.is_file():
            assert DUMMY_TOKEN.encode() not in path.read_bytes(), path


def test_register_twice_gives_semantic_versions_linked_to_runs_with_checksums(mlflow_guard, tmp_path: Path) -> None:
    reg, name = MlflowRegistry(), _name()
    a, b = _model(tmp_path, 1), _model(tmp_path, 2)
    first = reg.register(name, a, "run-a", metrics={"test_accuracy": 0.91})
    second = reg.register(name, b, "run-b", metrics={"test_accuracy": 0.93})
    assert (first.version, second.version) == ("0.1.0", "0.2.0")
    listed = reg.list_versions(name)
    assert [(v.version, v.run_id, v.sha256, v.status) for v in listed] == [
        ("0.1.0", "run-a", sha256_file(a), "staging"),
        ("0.2.0", "run-b", sha256_file(b), "staging"),
    ]
    assert listed[1].metrics == {"test_accuracy": 0.93}
    assert listed[0].url == f"{mlflow_guard.url}/#/models/{name}/versions/1"
    # The server's own model versions carry GitLab's version tag and the link to the run.
    rest = MlflowRest()
    mv = _mv(rest, "2")
    tags = {t["key"]: t["value"] for t in mv["tags"]}
    assert tags["gitlab.version"] == "0.2.0" and tags["digitops.run_id"] == "run-b"
    assert "run-b" in mv["description"] and sha256_file(b) in mv["description"]
    # Registering the same model of the same run again is the same version, not a third one.
    assert reg.register(name, b, "run-b").version == "0.2.0"
    with pytest.raises(MlflowRefused) as missing:
        _mv(rest, "3")
    assert missing.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_promote_archives_the_previous_and_rollback_walks_back(mlflow_guard, tmp_path: Path) -> None:
    from digitops.cli import cli

    reg, name = MlflowRegistry(), _name()
    for i in (1, 2, 3):
        reg.register(name, _model(tmp_path, i), f"run-{i}")
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    assert "production: " in run("registry", "promote", "0.1.0")
    run("registry", "promote", "0.2.0")
    out = run("registry", "promote", "0.3.0")
    assert "(was 0.2.0)" in out
    statuses = {v.version: v.status for v in reg.list_versions(name)}
    assert statuses == {"0.1.0": "archived", "0.2.0": "archived", "0.3.0": "production"}
    assert "rolled back from 0.3.0" in run("registry", "rollback")
    assert reg.get_by_status(name).version == "0.2.0"
    run("registry", "rollback")
    assert reg.get_by_status(name).version == "0.1.0"
    result = runner.invoke(cli, ["registry", "rollback"])
    assert result.exit_code == 2 and "no earlier production version" in result.output
    statuses = {v.version: v.status for v in reg.list_versions(name)}
    assert statuses == {"0.1.0": "production", "0.2.0": "archived", "0.3.0": "archived"}
    listed = run("registry", "list")
    assert "0.1.0" in listed and "production" in listed
    # GitLab's pages show the status in the version's description.
    assert "(production)" in _mv(MlflowRest(), "1")["description"]
    _no_token_anywhere(tmp_path, out, listed)


def test_an_interrupted_promotion_leaves_the_latest_promoted_in_production(mlflow_guard, tmp_path: Path, capsys) -> None:
    reg, name = MlflowRegistry(), _name()
    reg.register(name, _model(tmp_path, 1), "run-1")
    reg.register(name, _model(tmp_path, 2), "run-2")
    reg.promote(name, "0.2.0")
    # A promotion back to 0.1.0 that stopped after its first write (0.2.0 not archived yet).
    run_of = {v.version: next(t.split(":", 1)[1] for t in v.tags if t.startswith("mlflow-run:"))
              for v in reg.list_versions(name)}
    # (Status changes are appended as digitops.status.<n>: GitLab's tags cannot be overwritten.)
    MlflowRest().call("POST", "runs/set-tag", {"run_id": run_of["0.1.0"], "key": "digitops.status.1", "value": json.dumps(
        {"status": "production", "promoted_at": "2999-01-01T00:00:00.000000Z", "rolled_back": "0"})})
    assert reg.production_reference(name).version == "0.1.0"
    assert "2 versions of" in capsys.readouterr().err
    reg.promote(name, "0.1.0")  # settles it
    assert [v.version for v in reg.list_versions(name) if v.status == "production"] == ["0.1.0"]


def test_download_is_byte_identical_and_a_tampered_artifact_is_refused(mlflow_guard, mlflow_server, tmp_path: Path) -> None:
    server, _ = mlflow_server
    reg, name = MlflowRegistry(), _name()
    src = _model(tmp_path, 1)
    mv = reg.register(name, src, "run-1", status="production")
    assert mv.status == "production"
    got = reg.download(name, tmp_path / "out")
    assert got == tmp_path / "out" / "model.keras" and got.read_bytes() == src.read_bytes()
    # Someone swaps the file in the artifact store: refused, nothing left at the destination.
    run_id = next(t.split(":", 1)[1] for t in mv.tags if t.startswith("mlflow-run:"))
    (stored,) = server.artifacts.rglob(f"{run_id}/artifacts/model.keras")
    stored.write_bytes(_model(tmp_path, 9).read_bytes())
    with pytest.raises(RegistryError, match="refusing a corrupted model"):
        reg.download(name, tmp_path / "again", version="0.1.0")
    assert not (tmp_path / "again" / "model.keras").exists()
    assert [p.name for p in (tmp_path / "again").iterdir()] == []


def test_server_down_at_register_keeps_it_pending_and_sync_registers_it_once(mlflow_guard, tmp_path: Path) -> None:
    from digitops.cli import cli

    reg, name = MlflowRegistry(), _name()
    src = _model(tmp_path, 1)
    mlflow_guard.down()
    kept = reg.register(name, src, "run-1", metrics={"test_accuracy": 0.9})
    assert kept.version == "pending-1" and kept.sha256 == sha256_file(src)
    # The same model kept again (a retried job) stays one registration; the gate cannot see production.
    assert reg.register(name, src, "run-1").version == "pending-1"
    with pytest.raises(RegistryError, match="could not be reached"):
        reg.production_reference(name)
    reg.promote(name, "pending-1")  # remembered, applied by sync
    src.unlink()  # the run folder may be gone by the time the server is back
    result = CliRunner().invoke(cli, ["sync"])
    assert result.exit_code == 2 and "still pending" in result.output
    mlflow_guard.up()
    dry = CliRunner().invoke(cli, ["sync", "--dry-run"])
    assert dry.exit_code == 0 and "pending-1" in dry.output
    assert pending_registrations() != []
    result = CliRunner().invoke(cli, ["sync"])
    assert result.exit_code == 0, result.output
    assert "pending-1 registered in MLflow as 0.1.0 (production)" in result.output
    assert sync_registrations() == [] and pending_registrations() == []
    again = CliRunner().invoke(cli, ["sync"])
    assert again.exit_code == 0 and "registered" not in again.output
    listed = reg.list_versions(name)
    assert [(v.version, v.run_id, v.status, v.metrics) for v in listed] == [
        ("0.1.0", "run-1", "production", {"test_accuracy": 0.9})
    ]
    assert reg.download(name, tmp_path / "dl").read_bytes()[:2] == b"PK"
    with pytest.raises(MlflowRefused):
        _mv(MlflowRest(), "2")
    _no_token_anywhere(tmp_path, result.output, dry.output)


def test_a_create_saved_then_answered_503_is_not_numbered_twice(mlflow_guard, tmp_path: Path) -> None:
    reg, name = MlflowRegistry(), _name()
    mlflow_guard.fail("model-versions/create", status=503, saved=True)
    first = reg.register(name, _model(tmp_path, 1), "run-1")
    assert first.version == "0.1.0" and first.status == "staging"
    assert mlflow_guard.count("POST", "model-versions/create") == 1
    second = reg.register(name, _model(tmp_path, 2), "run-2")
    assert second.version == "0.2.0"
    rest = MlflowRest()
    assert {t["key"]: t["value"] for t in _mv(rest, "2")["tags"]}["gitlab.version"] == "0.2.0"
    with pytest.raises(MlflowRefused):
        _mv(rest, "3")


def test_sync_after_a_lost_answer_finishes_the_same_version(mlflow_guard, tmp_path: Path) -> None:
    reg, name = MlflowRegistry(), _name()
    # Saved (its answer lost), then the server failed before the file was uploaded: kept pending.
    mlflow_guard.fail("model-versions/create", status=503, saved=True)
    mlflow_guard.fail("runs/get", status=503, times=20)
    assert reg.register(name, _model(tmp_path, 1), "run-1").version == "pending-1"
    mlflow_guard.reset(token=DUMMY_TOKEN)
    assert sync_registrations() == ["model %s: pending-1 registered in MLflow as 0.1.0 (staging)" % name]
    assert [v.version for v in reg.list_versions(name)] == ["0.1.0"]
    with pytest.raises(MlflowRefused):
        _mv(MlflowRest(), "2")


def test_gate_cannot_judge_when_the_registry_is_down(mlflow_guard, tmp_path: Path) -> None:
    from digitops.cli import cli
    from digitops.compare import compare
    from digitops.tracking.sqlite import SqliteTracker
    from store_helpers import add_run

    reg, name = MlflowRegistry(), _name()
    reg.register(name, _model(tmp_path, 1), "run-1", status="production")
    tracker = SqliteTracker()
    add_run(tracker, "cand", {"test_accuracy": 0.99})
    assert compare("cand", tracker=tracker, registry=reg).judged
    mlflow_guard.down()  # its kept-alive connection is cut too
    with pytest.raises(RegistryError, match="could not be reached"):
        reg.production_reference(name)
    c = compare("cand", tracker=tracker, registry=reg)
    assert not c.judged and not c.passed and "cannot be read" in (c.unjudged_reason or "")
    result = CliRunner().invoke(cli, ["compare", "cand"])
    assert result.exit_code == 2 and "cannot judge" in result.output
    _no_token_anywhere(tmp_path, result.output, json.dumps(c.unjudged_reason))


def test_the_dashboard_loader_serves_the_production_version_from_mlflow(mlflow_guard, tmp_path: Path) -> None:
    from digitops.dashboard import loader

    reg, name = MlflowRegistry(), _name()
    reg.register(name, _model(tmp_path, 1), "run-1")
    src = _model(tmp_path, 2)
    reg.register(name, src, "run-2")
    reg.promote(name, "0.2.0")
    loaded = loader.load()  # the registry from the environment, as the dashboard does
    assert loaded.version.version == "0.2.0" and loaded.path.read_bytes() == src.read_bytes()
    assert loaded.path.is_relative_to(tmp_path / ".digitops" / "model-cache")
    # A corrupted cache is refused, never served.
    loaded.path.write_bytes(_model(tmp_path, 3).read_bytes())
    with pytest.raises(ChecksumError, match="SHA256"):
        loader.fetch(loaded.version)
    _no_token_anywhere(tmp_path)


class GitLabShapedRest(MlflowRest):
    """The real server's registry answers reshaped as GitLab's MLflow API gives them.

    From GitLab's API entities: ``model-versions/create`` ignores ``run_id`` and
    ``source`` and makes a candidate of its own (``run_id``); ``version`` is the
    version's database id, ``aliases`` holds the SemVer, ``source`` is the version's
    page; get and update take the SemVer; a taken ``gitlab.version`` is refused (400).
    """

    def __init__(self, *, steal_first: bool = False) -> None:
        super().__init__()
        self.ids: dict[str, str] = {}  # SemVer -> the real server's version
        self.steal_first = steal_first
        self.refuse_runs = False  # refuse runs created by clients in the model's experiment

    def _shape(self, mv: dict) -> dict:
        semver = {t["key"]: t["value"] for t in mv.get("tags") or []}.get("gitlab.version", "")
        self.ids[semver] = mv["version"]
        page = 1000 + int(mv["version"])
        return {**mv, "version": str(page), "aliases": [semver],
                "source": f"https://gitlab.example.com/g/p/-/ml/models/7/versions/{page}"}

    def call(self, method: str, endpoint: str, payload: dict | None = None) -> dict:
        payload = dict(payload or {})
        if endpoint == "runs/create" and self.refuse_runs:
            raise MlflowRefused("candidates of a model are created with its versions", status=400,
                                error_code="INVALID_PARAMETER_VALUE")
        if endpoint == "model-versions/create":
            semver = {t["key"]: t["value"] for t in payload.get("tags") or []}["gitlab.version"]
            if self.steal_first:  # another pipeline takes this number just before us
                self.steal_first = False
                self.call("POST", endpoint, {"name": payload["name"], "tags": [{"key": "gitlab.version", "value": semver}]})
            if semver in self.ids:
                raise MlflowRefused("Version has already been taken", status=400, error_code="INVALID_PARAMETER_VALUE")
            exp = self.experiment_id("[model]" + payload["name"])
            candidate = super().call("POST", "runs/create", {"experiment_id": exp})["run"]["info"]
            payload.update(run_id=candidate["run_id"], source=candidate["artifact_uri"])
            return {"model_version": self._shape(super().call(method, endpoint, payload)["model_version"])}
        if endpoint in ("model-versions/get", "model-versions/update"):
            payload["version"] = self.ids[payload["version"]]
            return {"model_version": self._shape(super().call(method, endpoint, payload)["model_version"])}
        if endpoint == "registered-models/get-latest-versions":
            answer = super().call(method, endpoint, payload)
            return {"model_versions": [self._shape(mv) for mv in answer.get("model_versions") or []]}
        return super().call(method, endpoint, payload)


def test_gitlab_shaped_answers_use_gitlabs_own_run_and_version_page(mlflow_guard, tmp_path: Path) -> None:
    name = _name()
    rest = GitLabShapedRest(steal_first=True)
    reg = MlflowRegistry(rest)
    src = _model(tmp_path, 1)
    mv = reg.register(name, src, "run-1")
    # 0.1.0 was taken by another pipeline between reading and creating: the next number, not a clash.
    assert mv.version == "0.2.0"
    assert mv.url == f"https://gitlab.example.com/g/p/-/ml/models/7/versions/{1000 + int(rest.ids['0.2.0'])}"
    # The version's run is the candidate GitLab made; the one digitops created first is gone.
    runs = list(rest.search_runs(rest.experiment_id("[model]" + name)))
    tagged = [r for r in runs if any(t["key"] == "digitops.run_id" for t in r["data"].get("tags", []))]
    assert len(tagged) == 1 and f"mlflow-run:{tagged[0]['info']['run_id']}" in mv.tags
    reg.promote(name, "0.2.0")
    assert "(production)" in rest.call("GET", "model-versions/get", {"name": name, "version": "0.2.0"})["model_version"]["description"]
    assert reg.download(name, tmp_path / "dl").read_bytes() == src.read_bytes()
    assert reg.register(name, _model(tmp_path, 2), "run-2").version == "0.3.0"
    rest.refuse_runs = True  # a GitLab that keeps the model's experiment to itself
    third = reg.register(name, _model(tmp_path, 3), "run-3")
    assert third.version == "0.4.0" and reg.download(name, tmp_path / "v4", version="0.4.0").is_file()


def test_two_registrations_numbered_at_once_on_an_mlflow_server_end_distinct(mlflow_guard, tmp_path: Path, monkeypatch) -> None:
    """An MLflow server accepts two versions tagged with the same SemVer (GitLab refuses the second)."""
    mlflow_guard.create_only = False  # renumbering overwrites digitops.version: an MLflow server's own path
    reg, name = MlflowRegistry(), _name()
    rest = MlflowRest()
    original = MlflowRegistry._create_version

    def racing(self, item, own, known):  # another registration numbered the same version, earlier
        mv = original(self, item, own, known)
        exp = rest.experiment_id("[model]" + name)
        tags = {"digitops.model": name, "digitops.version": "0.1.0", "digitops.status": "staging",
                "digitops.run_id": "rival", "digitops.sha256": "0" * 64}
        rest.call("POST", "runs/create", {"experiment_id": exp, "start_time": 1,
                                          "tags": [{"key": k, "value": v} for k, v in tags.items()]})
        return mv

    monkeypatch.setattr(MlflowRegistry, "_create_version", racing)
    mine = reg.register(name, _model(tmp_path, 1), "run-1")
    assert mine.version == "0.2.0" and mine.run_id == "run-1"
    assert [(v.version, v.run_id) for v in reg.list_versions(name)] == [("0.1.0", "rival"), ("0.2.0", "run-1")]


def test_status_changes_are_appended_and_never_overwrite_a_tag(mlflow_guard, tmp_path: Path) -> None:
    # GitLab's run tags are create-only (the guard emulates it): promote, archive and rollback work there.
    reg, name = MlflowRegistry(), _name()
    for i in (1, 2):
        reg.register(name, _model(tmp_path, i), f"run-{i}")
    reg.promote(name, "0.1.0")
    reg.promote(name, "0.2.0")
    assert reg.rollback(name).version == "0.1.0"
    statuses = {v.version: (v.status, "rolled-back" in v.tags) for v in reg.list_versions(name)}
    assert statuses == {"0.1.0": ("production", False), "0.2.0": ("archived", True)}
    assert mlflow_guard.tag_conflicts == [] and mlflow_guard.lost_overwrites() == []
    assert not any(b.get("key") in ("digitops.status", "digitops.promoted_at") for b in mlflow_guard.sent("runs/set-tag"))


def test_two_promotions_racing_end_with_one_production(mlflow_guard, tmp_path: Path) -> None:
    import threading

    reg, name = MlflowRegistry(), _name()
    for i in (1, 2, 3):
        reg.register(name, _model(tmp_path, i), f"run-{i}")
    reg.promote(name, "0.1.0")
    start, errors = threading.Barrier(2), []

    def promote(version: str) -> None:
        try:
            start.wait()
            MlflowRegistry().promote(name, version)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in ("0.2.0", "0.3.0")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    versions = reg.list_versions(name)
    assert [v.status for v in versions].count("production") == 1
    assert {v.version for v in versions if v.status == "production"} <= {"0.2.0", "0.3.0"}
    # Every change landed under its own n on its run (compare-and-swap on GitLab's create-only keys).
    writes = [(b["run_id"], b["key"], b["value"]) for b in mlflow_guard.sent("runs/set-tag")]
    landed = [w for w in writes if w not in mlflow_guard.tag_conflicts]
    assert landed and len({(r, k) for r, k, _ in landed}) == len(landed)
    mlflow_guard.tag_conflicts.clear()  # a lost compare-and-swap is expected here


def test_a_status_change_whose_answer_was_lost_is_written_once(mlflow_guard, tmp_path: Path) -> None:
    reg, name = MlflowRegistry(), _name()
    reg.register(name, _model(tmp_path, 1), "run-1")
    mlflow_guard.fail("runs/set-tag", status=503, saved=True)  # saved, then the client sees an error
    assert reg.promote(name, "0.1.0").status == "production"
    run_id = next(t.split(":", 1)[1] for t in reg.get_version(name, "0.1.0").tags if t.startswith("mlflow-run:"))
    tags = {t["key"] for t in MlflowRest().call("GET", "runs/get", {"run_id": run_id})["run"]["data"]["tags"]}
    assert sorted(k for k in tags if k.startswith("digitops.status.")) == ["digitops.status.1"]
    mlflow_guard.tag_conflicts.clear()  # the resend of the saved write is refused, as on GitLab


def test_a_damaged_status_entry_fails_closed(mlflow_guard, tmp_path: Path) -> None:
    reg, name = MlflowRegistry(), _name()
    reg.register(name, _model(tmp_path, 1), "run-1", status="production")
    run_id = next(t.split(":", 1)[1] for t in reg.get_version(name, "0.1.0").tags if t.startswith("mlflow-run:"))
    MlflowRest().call("POST", "runs/set-tag", {"run_id": run_id, "key": "digitops.status.2", "value": "{not json"})
    with pytest.raises(RegistryError, match="digitops.status.2 is unreadable"):
        reg.production_reference(name)
