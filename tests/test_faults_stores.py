"""Runs and stores under faults (issue 11, cases 8-12): each test failed before its fix.

case | fault                                              | test
-----|----------------------------------------------------|------------------------------------------------
8    | SIGTERM to `digitops run train`                    | test_sigterm_marks_the_run_failed
8    | Ctrl-C (SIGINT) to `digitops run train`            | test_ctrl_c_marks_failed_prints_one_line_and_writes_html
8    | SIGKILL: the next command marks it abandoned       | test_sigkill_then_runs_list_marks_abandoned
8    | a run from another host is left alone              | test_running_run_of_another_host_is_left_alone
8    | no command to close a stuck run                    | test_runs_mark_failed
8    | full disk while saving the model                   | test_full_disk_leaves_no_truncated_model
9    | many processes create a fresh store at once        | test_many_processes_create_and_write_fresh_stores
10   | 0-byte tracking.db                                 | test_empty_database_is_refused_naming_doctor
10   | malformed tracking.db                              | test_malformed_database_names_doctor
10   | registry.db lost, models/ kept: register overwrote | test_register_never_overwrites_a_model_file
10   | doctor rebuilds the registry from models/          | test_doctor_rebuilds_registry_from_models
11   | a flipped bit in the .npy cache                    | test_flipped_bit_in_npy_cache_is_detected
12   | hostile --run-id                                   | test_invalid_run_id_is_one_line
12   | read-only / file-instead-of-folder stores          | test_unwritable_store_folder_is_one_line
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from digitops.registry.sqlite import SqliteRegistry
from digitops.tracking.sqlite import SqliteTracker

_SCRIPT = Path(sys.executable).parent / "digitops"
DIGITOPS = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "digitops"]


def _env(workdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COMET_API_KEY", "GITLAB_TOKEN")}
    return env | {
        "DIGITOPS_HOME": str(workdir / ".digitops"),
        "DIGITOPS_RUNS": str(workdir / "runs"),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def _wait_for(condition, what: str, timeout: float = 180.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``condition()`` until true; generous deadline, fails fast if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}:\n{out}\n{err}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ------------------------------------------------------------------ case 9: creation race

_CREATOR = textwrap.dedent(
    """
    import sys, time, zipfile
    from pathlib import Path
    home, who, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    from digitops.registry.sqlite import SqliteRegistry
    from digitops.tracking.sqlite import SqliteTracker
    model = home.parent / f"model-{who}.keras"
    with zipfile.ZipFile(model, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("who", who)
    (home.parent / f"ready-{who}").touch()
    while not go.exists():
        time.sleep(0.005)
    t = SqliteTracker(home / "tracking.db", home / "artifacts")
    t.start_run(f"run-{who}")
    t.log_metrics(f"run-{who}", {"loss": 0.5}, step=0)
    t.end_run(f"run-{who}")
    r = SqliteRegistry(home / "registry.db", home / "models")
    print(r.register("m", model, f"run-{who}").version)
    """
)


def test_many_processes_create_and_write_fresh_stores(tmp_path: Path) -> None:
    procs_per_round, rounds = 8, 10
    for rnd in range(rounds):
        base = tmp_path / f"round-{rnd}"
        home = base / ".digitops"
        base.mkdir()
        go = base / "go"
        procs = [
            subprocess.Popen([sys.executable, "-c", _CREATOR, str(home), str(i), str(go)], env=_env(base),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(procs_per_round)
        ]
        _wait_for(lambda: all((base / f"ready-{i}").exists() for i in range(procs_per_round)), "creators ready")
        go.touch()  # every process opens the missing stores at the same moment
        versions = []
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
            versions.append(out.strip())
        assert sorted(versions, key=lambda v: int(v.split(".")[1])) == [f"0.{i}.0" for i in range(1, 9)]
        t = SqliteTracker(home / "tracking.db", home / "artifacts")
        assert len(t.list_runs()) == procs_per_round and t.integrity_check() == "ok"
        assert len(SqliteRegistry(home / "registry.db", home / "models").list_versions("m")) == procs_per_round


# ------------------------------------------------------------------ case 8: runs always end

_TRAIN = ["run", "train", "-p", "architecture", "mlp", "-p", "limit", "300", "-p", "epochs", "400"]


def _status(workdir: Path, run_id: str) -> str | None:
    db = workdir / ".digitops" / "tracking.db"
    if not db.is_file():
        return None
    import sqlite3

    con = sqlite3.connect(db, timeout=30)
    try:
        row = con.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    except sqlite3.OperationalError:
        return None  # still being created
    finally:
        con.close()
    return row[0] if row else None


def _start_training(workdir: Path, run_id: str) -> subprocess.Popen:
    """`digitops run train` in its own process group, returned once its kernel is training."""
    proc = subprocess.Popen([*DIGITOPS, *_TRAIN, "--run-id", run_id], cwd=workdir, env=_env(workdir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for(lambda: _status(workdir, run_id) == "running", "the run to be recorded running", proc=proc)
    # The kernel opened the run (the notebook's first cells ran): the signal lands mid-notebook.
    metrics = workdir / "runs" / run_id / "metrics.json"
    _wait_for(lambda: metrics.is_file() and "params" in metrics.read_text(), "the kernel to open the run",
              proc=proc)
    return proc


@pytest.mark.slow
def test_sigterm_marks_the_run_failed(workdir: Path) -> None:
    import signal

    proc = _start_training(workdir, "term")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert _status(workdir, "term") == "failed"
    assert "interrupted (SIGTERM): run term marked failed" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_ctrl_c_marks_failed_prints_one_line_and_writes_html(workdir: Path) -> None:
    import signal

    proc = _start_training(workdir, "ctrlc")
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert _status(workdir, "ctrlc") == "failed"
    assert "Traceback" not in err and "zmq" not in err, err
    assert "interrupted (SIGINT): run ctrlc marked failed" in err
    html = workdir / "runs" / "ctrlc" / "train.html"
    assert html.is_file() and "jp-OutputArea-output" in html.read_text()  # with the output of what ran


@pytest.mark.slow
def test_sigkill_then_runs_list_marks_abandoned(workdir: Path) -> None:
    import signal

    proc = _start_training(workdir, "killed")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=120)
    assert _status(workdir, "killed") == "running"  # nothing in the process could react
    listed = subprocess.run([*DIGITOPS, "runs", "list"], cwd=workdir, env=_env(workdir),
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "run killed was still marked running but its process is gone: marked abandoned" in listed.stderr
    assert _status(workdir, "killed") == "abandoned"
    assert "abandoned" in listed.stdout


@contextlib.contextmanager
def _small_disk(folder: Path, size: str = "1m") -> Iterator[Callable[[], None] | None]:
    """A real 1 MB filesystem at ``folder`` (tmpfs, when we may mount), else a 1 MB file-size limit.

    Yields the ``preexec_fn`` a subprocess needs (None with tmpfs): both make the
    kernel's writes fail half-way as a full disk does (ENOSPC, or EFBIG).
    """
    folder.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    ).returncode == 0
    try:
        if mounted:
            yield None
        else:
            import resource

            yield lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.mark.slow
def test_full_disk_leaves_no_truncated_model(workdir: Path) -> None:
    runs = workdir / "runs"
    with _small_disk(runs) as limit:
        proc = subprocess.run([*DIGITOPS, "run", "train", "-p", "architecture", "mlp", "-p", "limit", "300",
                               "-p", "epochs", "1", "--run-id", "full"], cwd=workdir, env=_env(workdir),
                              capture_output=True, text=True, timeout=600, preexec_fn=limit)
        left = sorted(p.name for p in (runs / "full").iterdir())
    assert proc.returncode == 1, proc.stderr
    assert "train notebook failed at" in proc.stderr
    assert _status(workdir, "full") == "failed"
    assert "model.keras" not in left and not [n for n in left if "partial" in n], left


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this pid (until the kernel reuses it, much later)


def test_running_run_of_another_host_is_left_alone(workdir: Path) -> None:
    import sqlite3

    from click.testing import CliRunner

    from digitops.cli import cli

    tracker = SqliteTracker()
    for run_id in ("here", "elsewhere", "alive"):
        tracker.start_run(run_id)
    con = sqlite3.connect(tracker.db_path)
    with con:
        con.execute("UPDATE runs SET pid = ? WHERE run_id IN ('here', 'elsewhere')", (_dead_pid(),))
        con.execute("UPDATE runs SET host = 'another-machine' WHERE run_id = 'elsewhere'")
    con.close()
    result = CliRunner().invoke(cli, ["runs", "list"])
    assert result.exit_code == 0, result.output
    statuses = {r.run_id: r.status for r in tracker.list_runs()}
    # A pid means nothing on another machine; this process (the owner of "alive") still runs.
    assert statuses == {"here": "abandoned", "elsewhere": "running", "alive": "running"}


def test_runs_mark_failed(workdir: Path) -> None:
    from click.testing import CliRunner

    from digitops.cli import cli

    tracker = SqliteTracker()
    tracker.start_run("stuck")
    tracker.start_run("done")
    tracker.end_run("done")
    result = CliRunner().invoke(cli, ["runs", "mark-failed", "stuck"])
    assert result.exit_code == 0, result.output
    assert "run stuck: running -> failed" in result.output
    assert tracker.get_run("stuck").status == "failed"
    refused = CliRunner().invoke(cli, ["runs", "mark-failed", "done"])
    assert refused.exit_code == 2 and "run done is finished" in refused.output
    assert tracker.get_run("done").status == "finished"


# ------------------------------------------------------------------ case 10: damaged stores


def _cli(*args: str) -> Any:
    from click.testing import CliRunner

    from digitops.cli import cli

    return CliRunner().invoke(cli, list(args))


def _one_clean_line(result: Any) -> str:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a clean exit, not a crash
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def _write_run_folder(workdir: Path, run_id: str, accuracy: float) -> None:
    folder = workdir / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(
        '{"run_id": "%s", "project": "digitops", "params": {"epochs": 1}, "metrics": {"test_accuracy": %s},'
        ' "stages": {"train": "finished", "evaluate": "finished"}}' % (run_id, accuracy)
    )


def test_empty_database_is_refused_naming_doctor(workdir: Path) -> None:
    home = workdir / ".digitops"
    home.mkdir()
    (home / "tracking.db").write_bytes(b"")  # what a full disk or a truncating copy leaves
    _write_run_folder(workdir, "r1", 0.97)
    line = _one_clean_line(_cli("runs", "list"))
    assert "is empty (0 bytes)" in line and "digitops doctor --repair" in line
    assert (home / "tracking.db").stat().st_size == 0  # refused, not silently made a new store

    assert _cli("doctor").exit_code == 1
    repaired = _cli("doctor", "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert "1 run(s) re-read" in repaired.output
    assert list(home.glob("tracking.db.corrupt-*"))
    run = SqliteTracker().get_run("r1")
    assert run.metrics == {"test_accuracy": 0.97} and run.status == "finished"


def test_malformed_database_names_doctor(workdir: Path) -> None:
    tracker = SqliteTracker()
    for i in range(40):
        tracker.start_run(f"run-{i}", params={"epochs": i, "note": "x" * 200})
        tracker.end_run(f"run-{i}")
    db = workdir / ".digitops" / "tracking.db"
    raw = bytearray(db.read_bytes())
    page = 4096
    raw[page:2 * page] = b"\xa5" * page  # page 2, a b-tree page, overwritten
    db.write_bytes(bytes(raw))
    line = _one_clean_line(_cli("runs", "list"))
    assert "is damaged" in line and "digitops doctor" in line, line

    checked = _cli("doctor")
    assert checked.exit_code == 1 and "PROBLEM  tracking" in checked.output
    repaired = _cli("doctor", "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert list(db.parent.glob("tracking.db.corrupt-*"))
    assert _cli("runs", "list").exit_code == 0


def _runs_with_models(workdir: Path, *run_ids: str) -> None:
    from store_helpers import add_run, keras_model_file

    tracker = SqliteTracker()
    for run_id in run_ids:
        add_run(tracker, run_id, {"test_accuracy": 0.95})
        keras_model_file(workdir / "runs" / run_id / "model.keras")


def test_register_never_overwrites_a_model_file(workdir: Path) -> None:
    _runs_with_models(workdir, "first", "second")
    # Different bytes for the second model, so an overwrite would show.
    second = workdir / "runs" / "second" / "model.keras"
    import zipfile

    with zipfile.ZipFile(second, "a") as z:
        z.writestr("extra.txt", "second")
    assert _cli("registry", "register", "first", "--status", "production").exit_code == 0
    stored = workdir / ".digitops" / "models" / "mnist-digits" / "0.1.0" / "model.keras"
    before = stored.read_bytes()
    for suffix in ("", "-wal", "-shm"):  # the index is lost, the model files remain
        (workdir / ".digitops" / f"registry.db{suffix}").unlink(missing_ok=True)

    line = _one_clean_line(_cli("registry", "register", "second"))
    assert "digitops doctor --rebuild-registry" in line, line
    assert stored.read_bytes() == before
    assert not (workdir / ".digitops" / "registry.db").exists()
    # With a stale index that lacks 0.1.0, the file is still never replaced.
    SqliteRegistry(adopt_models=True)
    line = _one_clean_line(_cli("registry", "register", "second"))
    assert "already exists" in line and "nothing was overwritten" in line
    assert stored.read_bytes() == before


def test_doctor_rebuilds_registry_from_models(workdir: Path) -> None:
    _runs_with_models(workdir, "a", "b")
    assert _cli("registry", "register", "a", "--status", "production").exit_code == 0
    assert _cli("registry", "register", "b", "--status", "production").exit_code == 0
    db = workdir / ".digitops" / "registry.db"
    db.write_bytes(b"garbage, not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (workdir / ".digitops" / f"registry.db{suffix}").unlink(missing_ok=True)
    line = _one_clean_line(_cli("registry", "list"))
    assert "digitops doctor" in line, line

    repaired = _cli("doctor", "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert "registry rebuilt" in repaired.output and "2 version(s)" in repaired.output
    assert list(db.parent.glob("registry.db.corrupt-*"))
    reg = SqliteRegistry()
    assert [(v.version, v.status, v.run_id) for v in reg.list_versions("mnist-digits")] == [
        ("0.1.0", "archived", "a"), ("0.2.0", "production", "b")]
    assert [h["action"] for h in reg.history("mnist-digits")] == ["promote", "promote"]
    reg.rollback("mnist-digits")  # the promotion history came back too
    assert reg.get_by_status("mnist-digits").version == "0.1.0"
    assert _cli("registry", "register", "a").exit_code == 0
    assert reg.list_versions("mnist-digits")[-1].version == "0.3.0"


# ------------------------------------------------------------------ case 11: the .npy cache


def test_flipped_bit_in_npy_cache_is_detected(tmp_path: Path) -> None:
    import shutil

    import numpy as np

    from digitops import data

    source, cache = data.default_cache_dir(), tmp_path / "cache"
    cache.mkdir()
    for spec in data.FILES.values():
        shutil.copyfile(source / spec.name, cache / spec.name)
    env = _env(tmp_path)
    fetch = [*DIGITOPS, "data", "fetch", "--cache", str(cache), "--no-npm", "--no-keras"]
    first = subprocess.run(fetch, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    npy = cache / "npy" / "train_images.npy"
    raw = bytearray(npy.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit of one pixel
    npy.write_bytes(bytes(raw))

    second = subprocess.run(fetch, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert f"warning: the cached array {npy} does not match the SHA256" in second.stderr
    assert "re-deriving it from the verified IDX files" in second.stderr
    idx = data.parse_idx((cache / data.FILES["train_images"].name).read_bytes(), data.FILES["train_images"].shape)
    assert np.array_equal(data.load(cache).x_train, idx)  # the cache was rewritten from the IDX file


# ------------------------------------------------------------------ case 12: hostile input, unusable folders


def _one_line_error(workdir: Path, *args: str, code: int = 2, **env: str) -> str:
    proc = subprocess.run([*DIGITOPS, *args], cwd=workdir, env=_env(workdir, **env), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_invalid_run_id_is_one_line(workdir: Path) -> None:
    line = _one_line_error(workdir, "run", "train", "--run-id", "../evil", code=2)
    assert "invalid run id '../evil'" in line
    line = _one_line_error(workdir, "run", "evaluate", "../evil", code=2)
    assert "invalid run id '../evil'" in line
    assert not (workdir / "evil").exists() and not (workdir / "runs").exists()


@contextlib.contextmanager
def _read_only_folder(folder: Path) -> Iterator[None]:
    """A read-only folder that binds root too (a read-only tmpfs), else one without write permission."""
    folder.mkdir(parents=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True
    ).returncode == 0
    if not mounted:
        folder.chmod(0o555)
    try:
        yield
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def test_unwritable_store_folder_is_one_line(workdir: Path) -> None:
    (workdir / "afile").write_text("in the way")
    afile = str(workdir / "afile")
    # A file where a folder is expected: the stores' home, the runs folder.
    line = _one_line_error(workdir, "runs", "list", DIGITOPS_HOME=afile)
    assert f"{afile} is a file where a folder is expected; move it aside" in line
    line = _one_line_error(workdir, "registry", "list", DIGITOPS_HOME=afile)
    assert "registry database" in line and "move it aside" in line
    line = _one_line_error(workdir, "run", "train", "-p", "limit", "100", DIGITOPS_RUNS=afile)
    assert f"cannot use {afile}/" in line and "a file is where a folder is expected" in line
    # Read-only folders.
    ro = workdir / "ro"
    with _read_only_folder(ro):
        line = _one_line_error(workdir, "runs", "list", DIGITOPS_HOME=str(ro / "home"))
        assert "cannot create the tracking database" in line
        line = _one_line_error(workdir, "run", "train", "-p", "limit", "100", DIGITOPS_RUNS=str(ro / "runs"))
        assert f"cannot use {ro}/runs" in line and "writable folder" in line
        line = _one_line_error(workdir, "data", "fetch", "--from", str(_mnist_dir()), "--cache", str(ro / "c"),
                               "--no-npm", "--no-keras")
        assert f"cannot use {ro}/c" in line


def _mnist_dir() -> Path:
    from digitops import data

    return data.default_cache_dir()
