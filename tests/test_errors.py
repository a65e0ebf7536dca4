"""One error policy: every command maps every DigitopsError to its documented exit code, in one line."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from digitops import errors
from digitops.cli import cli
from digitops.gitlab import GitLabAuthError, GitLabConfigError, GitLabError
from digitops.runs import BadRunId

ROOT = Path(__file__).resolve().parents[1]

#: (command line, the library function it calls that is made to raise)
COMMANDS: list[tuple[list[str], str]] = [
    (["data", "fetch", "--no-npm", "--no-keras"], "digitops.data.fetch"),
    (["params", str(ROOT / "notebooks" / "train.ipynb")], "digitops.params.describe"),
    (["run", "train", "-p", "epochs", "1"], "digitops.runner.execute"),
    (["run", "evaluate", str(ROOT / "pyproject.toml")], "digitops.runner.execute"),
    (["pipeline"], "digitops.pipeline.run_pipeline"),
    (["runs", "list"], "digitops.tracking.get_tracker"),
    (["runs", "show", "r1"], "digitops.tracking.get_tracker"),
    (["runs", "mark-failed", "r1"], "digitops.runs.mark_failed"),
    (["compare", "r1"], "digitops.compare.compare"),
    (["report", "r1"], "digitops.compare.compare"),
    (["registry", "list"], "digitops.registry.get_registry"),
    (["registry", "register", "r1"], "digitops.tracking.get_tracker"),
    (["publish", "mr", "--run", "r1"], "digitops.report.write_report"),
    (["publish", "trigger", "--project", "g/p", "--version", "0.1.0"], "digitops.gitlab.trigger_downstream"),
    (["sync"], "digitops.config.comet_enabled"),
    (["comet", "status", "--no-probe"], "digitops.config.comet_enabled"),
    (["doctor"], "digitops.doctor.check"),
    (["dashboard", "--fetch-only"], "digitops.dashboard.loader.resolve"),
]

#: every area's error, with the exit code the README documents for it
ERRORS: list[tuple[Exception, int]] = [
    (errors.UsageError("bad option"), 2),
    (errors.ParameterError("unknown parameter 'x'"), 2),
    (BadRunId("invalid run id '../x'"), 2),
    (errors.NotFound("no model file at m.keras"), 2),
    (errors.ConfigError("DIGITOPS_X must be a number"), 2),
    (errors.DataError("MNIST not found"), 2),
    (errors.ChecksumError("SHA256 does not match"), 2),
    (errors.StoreError("tracking.db is damaged"), 2),
    (errors.TrackingError("unknown run 'r1'"), 2),
    (errors.RegistryError("no version 9.9.9"), 2),
    (errors.CompareError("run has no test_accuracy"), 2),
    (errors.CannotJudge("cannot judge: Comet unreachable"), 2),
    (errors.PublishError("note too large"), 2),
    (GitLabError("GitLab unreachable"), 2),
    (GitLabAuthError("GitLab answered 401"), 2),
    (GitLabConfigError([], what="publish to GitLab"), 2),
    (errors.SyncError("1 item(s) could not be sent"), 2),
    (errors.NotebookFailed("train notebook failed"), 1),
]


@pytest.fixture
def env(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CI_SERVER_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("CI_JOB_TOKEN", "job-token")
    return workdir


@pytest.mark.parametrize("args,target", COMMANDS, ids=[" ".join(a[:2]) for a, _ in COMMANDS])
@pytest.mark.parametrize("error,code", ERRORS, ids=[type(e).__name__ for e, _ in ERRORS])
def test_every_command_maps_every_error_to_its_exit_code(
    env: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], target: str, error: Exception, code: int
) -> None:
    def boom(*_: Any, **__: Any) -> Any:
        raise error

    monkeypatch.setattr(target, boom)
    result = CliRunner().invoke(cli, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # handled, not a crash
    assert "Traceback" not in result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert str(error).splitlines()[0] in lines[0]


def _stage_failed(interrupted: str | None) -> Exception:
    from digitops.runner import StageFailed, StageResult

    folder = Path("runs/r1")
    return StageFailed(StageResult("train", "r1", folder, folder / "train.ipynb", folder / "train.html", False, 1.0,
                                   error="cell In [3] `fit()`: ValueError: boom", interrupted=interrupted))


@pytest.mark.parametrize("args,target", [c for c in COMMANDS if c[1] in ("digitops.runner.execute",
                                                                         "digitops.pipeline.run_pipeline")])
@pytest.mark.parametrize("interrupted,code", [(None, 1), ("SIGTERM", 128 + signal.SIGTERM), ("SIGINT", 130)])
def test_a_failed_notebook_exits_the_same_from_run_and_pipeline(
    env: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], target: str, interrupted: str | None, code: int
) -> None:
    def boom(*_: Any, **__: Any) -> Any:
        raise _stage_failed(interrupted)

    monkeypatch.setattr(target, boom)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    first = result.output.strip().splitlines()[0]
    if interrupted:
        assert first == f"Error: train interrupted ({interrupted}): run r1 marked failed; HTML of what ran: runs/r1/train.html"
    else:
        assert first == "Error: train notebook failed at cell In [3] `fit()`: ValueError: boom"
        assert "HTML (shows the failing cell): runs/r1/train.html" in result.output


def test_pipeline_refuses_a_percentage_floor_before_training(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--floor 90` for a fraction metric is a usage error: exit 2 before any notebook runs."""
    from digitops import runner

    def no_training(*_: Any, **__: Any) -> Any:
        raise AssertionError("training started")

    monkeypatch.setattr(runner, "execute", no_training)
    result = CliRunner().invoke(cli, ["pipeline", "--floor", "90", "-p", "limit", "300"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        "Error: the floor 90.0 is not a fraction; test accuracy is between 0 and 1 (write 0.9 for 90 %)"
    )


def test_pipeline_refuses_bad_parameters_before_training(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from digitops import runner

    def no_training(*_: Any, **__: Any) -> Any:
        raise AssertionError("training started")

    monkeypatch.setattr(runner, "execute", no_training)
    result = CliRunner().invoke(cli, ["pipeline", "-p", "nosuch", "3"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith("Error: invalid parameters for train.ipynb: unknown parameter 'nosuch'")


def test_a_file_system_error_is_one_line_exit_2(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def full(*_: Any, **__: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device", str(env / "runs"))

    monkeypatch.setattr("digitops.tracking.get_tracker", full)
    result = CliRunner().invoke(cli, ["runs", "list"])
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: cannot use {env / 'runs'}: No space left on device; " \
                                    "free some disk space and run the command again"


def test_every_error_has_a_documented_exit_code() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for code in ("| 0 ", "| 1 ", "| 2 ", "| 128+N "):
        assert code in readme, code
    for cls in (errors.UsageError, errors.ConfigError, errors.StoreError, errors.CompareError, errors.DataError,
                errors.PublishError, errors.SyncError):
        assert issubclass(cls, errors.DigitopsError) and cls.exit_code == errors.EXIT_ERROR
    assert errors.NotebookFailed.exit_code == errors.EXIT_FAILED
