"""Without COMET_API_KEY nothing touches the network: not one connection attempt, not one DNS lookup.

The embedded flow (tracker, registry, comparison, report, and the CLI commands
around them) runs in a child interpreter whose ``sitecustomize`` replaces
``socket.connect``/``connect_ex``/``getaddrinfo``: anything but a Unix socket
is logged and refused. A positive control proves the guard sees attempts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

GUARD = '''
import json, os, socket

_LOG = os.environ["NETGUARD_LOG"]


def _record(kind, detail):
    with open(_LOG, "a") as f:
        f.write(json.dumps([kind, repr(detail)]) + "\\n")


_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def connect(self, address):
    if self.family == socket.AF_UNIX:
        return _connect(self, address)
    _record("connect", address)
    raise OSError("network use blocked by test_no_network")


def connect_ex(self, address):
    if self.family == socket.AF_UNIX:
        return _connect_ex(self, address)
    _record("connect_ex", address)
    return 111


_getaddrinfo = socket.getaddrinfo


def getaddrinfo(host, *args, **kwargs):
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in str(host) else socket.AF_INET, str(host))
    except (OSError, TypeError):
        _record("getaddrinfo", host)  # a name: resolving it could reach a DNS server
        raise socket.gaierror("name resolution blocked by test_no_network")
    return _getaddrinfo(host, *args, **kwargs)  # a literal address: no lookup happens


socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
socket.getaddrinfo = getaddrinfo
'''

FLOW = '''
import json, sys, zipfile
from pathlib import Path

from PIL import Image

from digitops import config
from digitops.cli import cli
from digitops.compare import compare
from digitops.registry import get_registry
from digitops.tracking import get_tracker

tracker, registry = get_tracker(), get_registry()
assert type(tracker).__name__ == "SqliteTracker", tracker
assert type(registry).__name__ == "SqliteRegistry", registry

for i, acc in enumerate((0.95, 0.97)):
    run_id = f"run-{i}"
    folder = config.runs_dir() / run_id
    folder.mkdir(parents=True)
    tracker.start_run(run_id, params={"architecture": "mlp"}, data_checksum="ab" * 8, git_commit="c" * 40)
    tracker.log_metrics(run_id, {"loss": 0.5, "accuracy": 0.9}, step=0)
    tracker.log_metrics(run_id, {"test_accuracy": acc, "test_loss": 0.1})
    Image.new("RGB", (8, 8)).save(folder / "curves.png")
    tracker.log_artifact(run_id, folder / "curves.png")
    with zipfile.ZipFile(folder / "model.keras", "w") as zf:  # the layout of a Keras 3 file, no TF needed
        zf.writestr("config.json", json.dumps({"run": i}))
        zf.writestr("model.weights.h5", bytes([i]) * 1024)
    (folder / "metrics.json").write_text(json.dumps({"confusion_matrix": [[1, 0], [0, 1]]}))
    tracker.end_run(run_id, "finished")
    version = registry.register("mnist-digits", folder / "model.keras", run_id, metrics={"test_accuracy": acc})
    registry.set_status("mnist-digits", version.version, "production")

registry.rollback("mnist-digits")
registry.download("mnist-digits", Path("served"))
result = compare("run-1", tracker=tracker, registry=registry)
assert result.verdict == "pass" and result.project_count == 1, result
assert tracker.metric_summary("test_accuracy").count == 2

codes = {}
for args in (
    ["runs", "list"],
    ["compare", "run-1", "--floor", "0.5"],
    ["report", "run-1", "--floor", "0.5"],
    ["registry", "list"],
    ["comet", "status"],
    ["sync"],
):
    try:
        codes[args[0]] = cli.main(args, prog_name="digitops", standalone_mode=False) or 0
    except SystemExit as exc:
        codes[args[0]] = exc.code
    except Exception as exc:
        codes[args[0]] = type(exc).__name__ + ": " + str(exc)
print("CODES", json.dumps(codes))
print("COMET_IMPORTED", "comet_ml" in sys.modules)
'''


def _guarded(tmp_path: Path, code: str, *args: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    guard_dir = tmp_path / "guard"
    guard_dir.mkdir(exist_ok=True)
    (guard_dir / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "net.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMET_", "CI_", "GITLAB_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(guard_dir), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        NETGUARD_LOG=str(log),
        HOME=str(tmp_path / "home"),
        DIGITOPS_HOME=str(tmp_path / "work" / ".digitops"),
        DIGITOPS_RUNS=str(tmp_path / "work" / "runs"),
    )
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (tmp_path / "home").mkdir(exist_ok=True)
    cmd = [sys.executable, "-c", code] if code else [sys.executable, *args]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    attempts = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, attempts


def test_the_guard_sees_connection_attempts(tmp_path: Path) -> None:
    proc, attempts = _guarded(
        tmp_path,
        textwrap.dedent(
            """
            import socket
            for target in (("127.0.0.1", 9), ("example.com", 80)):
                try:
                    socket.create_connection(target, timeout=1)
                except OSError:
                    pass
            """
        ),
    )
    assert proc.returncode == 0, proc.stderr
    kinds = [kind for kind, _ in attempts]
    assert kinds == ["connect", "getaddrinfo"], attempts


def test_embedded_flow_and_cli_make_zero_connection_attempts(tmp_path: Path) -> None:
    proc, attempts = _guarded(tmp_path, FLOW)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert attempts == [], attempts
    codes = json.loads(proc.stdout.split("CODES ", 1)[1].splitlines()[0])
    assert codes["runs"] == 0 and codes["compare"] == 0 and codes["report"] == 0 and codes["registry"] == 0
    assert codes["comet"] == 0
    # `sync` without a key refuses clearly instead of trying anything.
    assert codes["sync"] == 2 and "Error: COMET_API_KEY is not set" in proc.stderr
    assert "COMET_IMPORTED False" in proc.stdout
    served = (tmp_path / "work" / "served" / "model.keras").read_bytes()
    assert served == (tmp_path / "work" / "runs" / "run-0" / "model.keras").read_bytes()  # rolled back to run-0


@pytest.mark.parametrize("command", [["runs", "list"], ["registry", "list"], ["comet", "status", "--json"]])
def test_cli_processes_make_zero_connection_attempts(tmp_path: Path, command: list[str]) -> None:
    proc, attempts = _guarded(tmp_path, "", "-m", "digitops", *command)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert attempts == [], attempts
