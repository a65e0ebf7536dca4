"""The embedded model registry: versions, races, statuses, rollback, verified downloads."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from digitops.registry import ARCHIVED, NONE, PRODUCTION, STAGING, RegistryError, get_registry
from digitops.registry.sqlite import SqliteRegistry, next_version
from store_helpers import keras_model_file

# The installed console script next to this interpreter (python -m digitops where there is none).
_SCRIPT = Path(sys.executable).parent / "digitops"
DIGITOPS = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "digitops"]


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real Keras model file."""
    return keras_model_file(tmp_path_factory.mktemp("model") / "model.keras")


@pytest.fixture
def reg(workdir: Path) -> SqliteRegistry:
    return SqliteRegistry()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_next_version_rules() -> None:
    assert next_version(None) == (0, 1, 0)
    assert next_version(None, "major") == (1, 0, 0)
    assert next_version(None, "patch") == (0, 0, 1)
    assert next_version((1, 4, 2), "minor") == (1, 5, 0)
    assert next_version((1, 4, 2), "major") == (2, 0, 0)
    assert next_version((1, 4, 2), "patch") == (1, 4, 3)
    with pytest.raises(RegistryError, match="unknown bump 'huge'"):
        next_version(None, "huge")


def test_register_records_everything(reg: SqliteRegistry, keras_file: Path, monkeypatch: pytest.MonkeyPatch,
                                     workdir: Path) -> None:
    monkeypatch.setenv("GITLAB_USER_LOGIN", "ada")
    assert get_registry().db_path == workdir / ".digitops" / "registry.db"
    v = reg.register("digits", keras_file, "run-1", metrics={"test_accuracy": 0.97})
    assert (v.name, v.version, v.run_id, v.status) == ("digits", "0.1.0", "run-1", STAGING)
    assert v.sha256 == _sha(keras_file)
    assert v.metrics == {"test_accuracy": 0.97}
    assert v.created_by == "ada" and v.created_at.startswith("20")
    stored = Path(v.uri)
    assert stored == (workdir / ".digitops" / "models" / "digits" / "0.1.0" / "model.keras").resolve()
    assert _sha(stored) == v.sha256
    assert not list(stored.parent.parent.glob(".incoming-*"))  # no temporary files left

    assert [x.version for x in (reg.register("digits", keras_file, "run-2"),
                                reg.register("digits", keras_file, "run-3", bump="major"),
                                reg.register("digits", keras_file, "run-4", bump="patch"),
                                reg.register("digits", keras_file, "run-5"))] == ["0.2.0", "1.0.0", "1.0.1", "1.1.0"]
    assert [x.version for x in reg.list_versions("digits")] == ["0.1.0", "0.2.0", "1.0.0", "1.0.1", "1.1.0"]
    assert reg.get_version("digits", "1.0.0").run_id == "run-3"
    assert reg.list_versions("other") == []


def test_register_rejects_bad_input(reg: SqliteRegistry, keras_file: Path, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no such file"):
        reg.register("digits", tmp_path / "missing.keras", "r")
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"x")
    with pytest.raises(RegistryError, match=r"\.keras files"):
        reg.register("digits", h5, "r")
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    with pytest.raises(RegistryError, match="not a Keras 3 model file"):
        reg.register("digits", junk, "r")
    with pytest.raises(RegistryError, match="invalid model name"):
        reg.register("../escape", keras_file, "r")
    with pytest.raises(RegistryError, match="unknown status 'gold'"):
        reg.register("digits", keras_file, "r", status="gold")
    with pytest.raises(RegistryError, match="cannot start archived"):
        reg.register("digits", keras_file, "r", status=ARCHIVED)
    assert reg.list_versions("digits") == []
    with pytest.raises(RegistryError, match="has no registered versions"):
        reg.get_version("digits", "0.1.0")
    reg.register("digits", keras_file, "r")
    with pytest.raises(RegistryError, match="no version '9.9.9'; known: 0.1.0"):
        reg.get_version("digits", "9.9.9")


def test_one_production_at_a_time(reg: SqliteRegistry, keras_file: Path) -> None:
    for i in range(3):
        reg.register("digits", keras_file, f"run-{i}")
    assert reg.get_by_status("digits", PRODUCTION) is None
    reg.promote("digits", "0.1.0")
    reg.promote("digits", "0.2.0")
    statuses = {v.version: v.status for v in reg.list_versions("digits")}
    assert statuses == {"0.1.0": ARCHIVED, "0.2.0": PRODUCTION, "0.3.0": STAGING}
    assert reg.get_by_status("digits").version == "0.2.0"
    assert reg.promote("digits", "0.2.0").status == PRODUCTION  # promoting production again is a no-op
    reg.set_status("digits", "0.3.0", NONE)
    assert reg.get_by_status("digits", NONE).version == "0.3.0"
    # The database itself refuses a second production version, whoever writes it.
    con = sqlite3.connect(reg.db_path, isolation_level=None)
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        con.execute("UPDATE versions SET status = 'production' WHERE version = '0.1.0'")
    con.close()
    with pytest.raises(RegistryError, match="no version '7.0.0'"):
        reg.promote("digits", "7.0.0")


def test_register_as_production_archives_the_old_one(reg: SqliteRegistry, keras_file: Path) -> None:
    reg.register("digits", keras_file, "a", status=PRODUCTION)
    reg.register("digits", keras_file, "b", status=PRODUCTION)
    assert [(v.version, v.status) for v in reg.list_versions("digits")] == [("0.1.0", ARCHIVED),
                                                                           ("0.2.0", PRODUCTION)]
    assert reg.rollback("digits").version == "0.1.0"


def test_rollback_walks_back_through_promotions(reg: SqliteRegistry, keras_file: Path) -> None:
    for i in range(4):
        reg.register("digits", keras_file, f"run-{i}")
    with pytest.raises(RegistryError, match="no production version to roll back from"):
        reg.rollback("digits")
    reg.promote("digits", "0.1.0")
    with pytest.raises(RegistryError, match="no earlier production version"):
        reg.rollback("digits")
    reg.promote("digits", "0.2.0")
    reg.promote("digits", "0.3.0")
    assert reg.rollback("digits").version == "0.2.0"
    assert reg.get_version("digits", "0.3.0").status == ARCHIVED
    assert reg.rollback("digits").version == "0.1.0"
    assert reg.get_by_status("digits").version == "0.1.0"
    with pytest.raises(RegistryError, match="no earlier production version"):
        reg.rollback("digits")
    # A new promotion after rollbacks rolls back to the version it replaced.
    reg.promote("digits", "0.4.0")
    assert reg.rollback("digits").version == "0.1.0"
    actions = [(h["action"], h["version"], h["previous"]) for h in reg.history("digits")]
    assert actions[-2:] == [("promote", "0.4.0", "0.1.0"), ("rollback", "0.1.0", "0.4.0")]
    assert sum(v.status == PRODUCTION for v in reg.list_versions("digits")) == 1


def test_download_is_verified(reg: SqliteRegistry, keras_file: Path, tmp_path: Path) -> None:
    reg.register("digits", keras_file, "a", status=PRODUCTION)
    v2 = reg.register("digits", keras_file, "b")

    into_folder = reg.download("digits", tmp_path / "serve")
    assert into_folder == tmp_path / "serve" / "model.keras" and _sha(into_folder) == _sha(keras_file)
    exact = reg.download("digits", tmp_path / "x" / "mine.keras", version="0.2.0")
    assert exact == tmp_path / "x" / "mine.keras" and _sha(exact) == v2.sha256
    assert reg.download("digits", tmp_path / "s", status=STAGING).is_file()
    with pytest.raises(RegistryError, match="no version with status 'none'"):
        reg.download("digits", tmp_path / "n", status=NONE)
    with pytest.raises(RegistryError, match="not both"):
        reg.download("digits", tmp_path / "n", version="0.1.0", status=STAGING)

    from digitops import model as model_mod

    assert model_mod.load(into_folder).name == "mlp"  # a usable model, not just bytes


def test_download_refuses_a_corrupted_store(reg: SqliteRegistry, keras_file: Path, tmp_path: Path) -> None:
    v = reg.register("digits", keras_file, "a", status=PRODUCTION)
    stored = Path(v.uri)
    stored.write_bytes(stored.read_bytes()[:-10] + b"0123456789")
    bad = _sha(stored)
    dest = tmp_path / "serve" / "model.keras"
    with pytest.raises(RegistryError) as err:
        reg.download("digits", dest)
    assert v.sha256 in str(err.value) and bad in str(err.value)
    assert not dest.parent.exists()  # checked before anything was created


def test_download_refuses_a_corrupted_copy(reg: SqliteRegistry, keras_file: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    v = reg.register("digits", keras_file, "a", status=PRODUCTION)
    real_copy = shutil.copyfile

    def flaky_copy(src: str, dst: str) -> str:
        real_copy(src, dst)
        with open(dst, "r+b") as f:  # one flipped byte on the way
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 0xFF]))
        return dst

    monkeypatch.setattr(shutil, "copyfile", flaky_copy)
    dest = tmp_path / "serve"
    with pytest.raises(RegistryError, match=f"downloaded copy has sha256 [0-9a-f]{{64}}, registered sha256 is {v.sha256}"):
        reg.download("digits", dest)
    assert list(dest.iterdir()) == []  # neither the file nor a partial copy


_REGISTERER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from digitops.registry.sqlite import SqliteRegistry
    home, who, go, n, model = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    reg = SqliteRegistry(home / "registry.db", home / "models")
    (go.parent / f"ready-{who}").touch()
    while not go.exists():
        time.sleep(0.001)
    for i in range(n):
        print(reg.register("digits", model, f"{who}-{i}").version, flush=True)
    """
)


def test_racing_processes_get_distinct_versions(tmp_path: Path, keras_file: Path) -> None:
    home, go, n = tmp_path / "home", tmp_path / "go", 8
    SqliteRegistry(home / "registry.db", home / "models")
    procs = [
        subprocess.Popen([sys.executable, "-c", _REGISTERER, str(home), who, str(go), str(n), str(keras_file)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for who in ("a", "b")
    ]
    deadline = time.time() + 60
    while not all((tmp_path / f"ready-{w}").exists() for w in "ab"):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    go.touch()
    got = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        got += out.split()
    expected = [f"0.{i}.0" for i in range(1, 2 * n + 1)]
    assert sorted(got, key=lambda v: int(v.split(".")[1])) == expected  # distinct, no gaps
    reg = SqliteRegistry(home / "registry.db", home / "models")
    versions = reg.list_versions("digits")
    assert [v.version for v in versions] == expected
    assert {v.run_id.split("-")[0] for v in versions} == {"a", "b"}
    for v in versions:
        assert _sha(Path(v.uri)) == v.sha256


# ---------------------------------------------------------------------------- CLI


def _cli_env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COMET_API_KEY", "GITLAB_TOKEN")}
    return env | {"DIGITOPS_HOME": str(workdir / ".digitops"), "DIGITOPS_RUNS": str(workdir / "runs")}


def test_cli_register_processes_started_together_get_distinct_versions(workdir: Path, keras_file: Path) -> None:
    from digitops.tracking.sqlite import SqliteTracker

    tracker = SqliteTracker()
    for run_id in ("ra", "rb"):
        tracker.start_run(run_id)
        tracker.log_metrics(run_id, {"test_accuracy": 0.95})
        tracker.end_run(run_id)
        (workdir / "runs" / run_id).mkdir(parents=True)
        shutil.copyfile(keras_file, workdir / "runs" / run_id / "model.keras")
    procs = [
        subprocess.Popen([*DIGITOPS, "registry", "register", run_id, "--json"], cwd=workdir,
                         env=_cli_env(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for run_id in ("ra", "rb")
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert sorted(r["version"] for r in results) == ["0.1.0", "0.2.0"]
    assert {r["run_id"] for r in results} == {"ra", "rb"}
    assert all(r["metrics"] == {"test_accuracy": 0.95} for r in results)


def test_cli_promote_and_rollback_change_what_download_returns(workdir: Path, keras_file: Path,
                                                              tmp_path: Path) -> None:
    from digitops.cli import cli
    from digitops.tracking.sqlite import SqliteTracker

    tracker = SqliteTracker()
    # Three different model files, so a download tells which version it got.
    files = {}
    for i in range(3):
        run_id = f"run-{i}"
        tracker.start_run(run_id)
        tracker.log_metrics(run_id, {"test_accuracy": 0.9 + i / 100})
        tracker.end_run(run_id)
        folder = workdir / "runs" / run_id
        folder.mkdir(parents=True)
        data = keras_file.read_bytes()
        (folder / "model.keras").write_bytes(data)
        if i:  # a zip comment changes the bytes, not the model
            import zipfile

            with zipfile.ZipFile(folder / "model.keras", "a") as z:
                z.comment = f"variant {i}".encode()
        files[run_id] = _sha(folder / "model.keras")
    runner = CliRunner()

    def run(*args: str) -> str:
        res = runner.invoke(cli, list(args))
        assert res.exit_code == 0, res.output
        return res.output

    for i in range(3):
        assert f"registered mnist-digits 0.{i + 1}.0 (staging) from run run-{i}" in run("registry", "register", f"run-{i}")

    def production_sha() -> str:
        out = run("registry", "download", str(tmp_path / "prod"), "--status", "production")
        path = Path(out.strip().splitlines()[-1])
        assert path == tmp_path / "prod" / "model.keras"
        return _sha(path)

    res = runner.invoke(cli, ["registry", "download", str(tmp_path / "prod")])
    assert res.exit_code == 2 and "no version with status 'production'" in res.output
    run("registry", "promote", "0.1.0")
    assert production_sha() == files["run-0"]
    assert "(was 0.1.0)" in run("registry", "promote", "0.3.0")
    assert production_sha() == files["run-2"]
    assert "rolled back from 0.3.0" in run("registry", "rollback")
    assert production_sha() == files["run-0"]

    listing = run("registry", "list").splitlines()
    assert listing[0].split()[:3] == ["VERSION", "STATUS", "RUN"]
    assert [line.split()[:2] for line in listing[1:]] == [["0.1.0", "production"], ["0.2.0", "staging"],
                                                          ["0.3.0", "archived"]]
    shown = json.loads(run("registry", "show", "--json"))
    assert shown["version"] == "0.1.0" and shown["sha256"] == files["run-0"]
    assert "status:     staging" in run("registry", "show", "0.2.0")
    res = runner.invoke(cli, ["registry", "rollback"])
    assert res.exit_code == 2 and "no earlier production version" in res.output
    res = runner.invoke(cli, ["registry", "register", "missing-run"])
    assert res.exit_code == 2 and "unknown run 'missing-run'" in res.output and "--model" in res.output
