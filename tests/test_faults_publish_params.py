"""Faults of issue 11 in publishing to GitLab and in parameters: one test (or more) per case.

=====  ===============================================================  ==============================================
case   fault                                                            test
=====  ===============================================================  ==============================================
5      note POST saved by GitLab but answered 502 (then retried)        test_5_note_saved_then_502_is_posted_once
                                                                        test_5_a_note_that_was_not_saved_is_posted_again
6      report over GitLab's 1,000,000-character note limit              test_6_oversized_report_is_shortened_...
                                                                        test_6_shortening_drops_least_important_first
7      429 with Retry-After: 60, again and again                        test_7_retry_after_is_capped_per_command
                                                                        test_7_the_cap_counts_every_wait_of_a_command
                                                                        test_7_a_retry_after_date_is_understood
13     epochs 0 / -3, learning_rate nan / inf, limit 100000000,         test_13_out_of_range_values_are_refused
       unknown architecture: accepted until the kernel failed           test_13_cli_refuses_before_any_kernel
                                                                        test_13_evaluate_values_are_checked_too
                                                                        test_13_every_number_declares_its_range
                                                                        test_13_shipped_parameter_sets_still_fit
14     YAML alias bomb with -f; a 44 MB parameter file                  test_14_aliases_are_refused
                                                                        test_14_alias_bomb_is_refused_at_once
                                                                        test_14_big_files_and_values_give_short_errors
=====  ===============================================================  ==============================================

GitLab faults are injected into the loopback fake (tests/fake_gitlab.py) and
driven through the real python-gitlab SDK; parameter cases go through the real
papermill inspection of the shipped notebooks and the real ``digitops`` CLI.
"""

from __future__ import annotations

import base64
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_gitlab import BOT, MAX_NOTE_LENGTH, FakeGitLab  # noqa: E402

from digitops import gitlab as gl  # noqa: E402
from digitops import params  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRAIN, EVALUATE = ROOT / "notebooks" / "train.ipynb", ROOT / "notebooks" / "evaluate.ipynb"
MARKER = "<!-- digitops-report:mnist-digits -->"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def _cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("digitops")
    return subprocess.run([str(exe), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


# ============================================================== GitLab (5, 6, 7)


@pytest.fixture()
def fake() -> FakeGitLab:
    with FakeGitLab() as server:
        yield server


def _settings(fake: FakeGitLab, **extra: object) -> gl.GitLabSettings:
    return gl.GitLabSettings(server_url=fake.url, token=fake.token, project_id="42", mr_iid=7,
                             project_url=fake.project_url(), timeout=10, **extra)  # type: ignore[arg-type]


def _ci_env(fake: FakeGitLab, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CI_", "GITLAB_", "COMET_", "DIGITOPS_"))}
    env.update(GITLAB_TOKEN=fake.token, CI_SERVER_URL=fake.url, CI_PROJECT_URL=fake.project_url(),
               CI_MERGE_REQUEST_PROJECT_ID="42", CI_MERGE_REQUEST_IID="7", CI_PROJECT_DIR=str(tmp_path),
               DIGITOPS_HOME=str(tmp_path / ".digitops"), DIGITOPS_RUNS=str(tmp_path / "runs"))
    env.update(extra)
    return env


def _bot_notes(fake: FakeGitLab) -> list[dict]:
    return [n for n in fake.mr_notes() if n["author"]["id"] == BOT["id"] and n["body"].startswith(MARKER)]


@pytest.mark.network
def test_5_note_saved_then_502_is_posted_once(fake: FakeGitLab) -> None:
    """GitLab commits the note but the proxy answers 502: the retry finds it instead of posting a second one."""
    fake.fail_next(1, 502, saved=True, method="POST", path=r"/notes$")
    first = gl.publish_mr_note(f"{MARKER}\n### push 1\n", settings=_settings(fake))
    assert len(fake.requests_to("POST", r"/notes$")) == 1, "the lost answer is followed by a search, not a POST"
    (note,) = _bot_notes(fake)
    assert first.created and first.note_id == note["id"] and "push 1" in note["body"]

    second = gl.publish_mr_note(f"{MARKER}\n### push 2\n", settings=_settings(fake))
    (note,) = _bot_notes(fake)
    assert second.action == "updated" and second.note_id == first.note_id and "push 2" in note["body"]


@pytest.mark.network
def test_5_a_note_that_was_not_saved_is_posted_again(fake: FakeGitLab) -> None:
    """A 502 before GitLab saved anything: the search finds nothing and the note is posted once more."""
    fake.fail_next(1, 502, method="POST", path=r"/notes$")
    result = gl.publish_mr_note(f"{MARKER}\n### push 1\n", settings=_settings(fake))
    assert result.created and len(_bot_notes(fake)) == 1
    assert len(fake.requests_to("POST", r"/notes$")) == 2


def _oversized_report(workdir: Path) -> Path:
    """A real report (digitops.report.write_report) whose parameter tables hold a 1,100,000-character value."""
    from store_helpers import add_run

    from digitops.report import write_report
    from digitops.tracking.sqlite import SqliteTracker

    tracker = SqliteTracker()
    add_run(tracker, "old", {"test_accuracy": 0.95, "test_loss": 0.2})
    add_run(tracker, "cand", {"test_accuracy": 0.9712, "test_loss": 0.09},
            params={"architecture": "cnn", "epochs": 2, "note": "x" * 1_100_000})
    folder = workdir / "runs" / "cand"
    folder.mkdir(parents=True)
    for name in ("curves.png", "confusion.png", "mistakes.png"):
        (folder / name).write_bytes(PNG)
    paths = write_report("cand", workdir / "report", tracker=tracker)
    assert len(paths["markdown"].read_text(encoding="utf-8")) > MAX_NOTE_LENGTH
    return paths["markdown"].parent


@pytest.mark.network
def test_6_oversized_report_is_shortened_before_upload_and_replaces_the_stale_note(
    fake: FakeGitLab, workdir: Path
) -> None:
    report_dir = _oversized_report(workdir)
    gl.publish_mr_note(f"{MARKER}\n### the previous push's report\n", settings=_settings(fake))
    env = _ci_env(fake, workdir, CI_JOB_ID="900")

    proc = _cli(["publish", "mr", "--report-dir", str(report_dir)], env, workdir)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("updated note")
    (note,) = _bot_notes(fake)
    body = note["body"]
    assert len(body) <= MAX_NOTE_LENGTH and "previous push" not in body
    assert "**shortened:**" in body and "All parameters" in body.split("**shortened:**")[1].split("\n")[0]
    assert f"{fake.project_url()}/-/jobs/900/artifacts/file/report/report.html" in body
    assert "xxxxxxxxxx" not in body and "| Metric |" in body and "Test accuracy" in body
    assert all(upload["markdown"] in body for upload in fake.uploads), "nothing uploaded that the note drops"
    assert all(r.status != 400 for r in fake.requests)


def test_6_shortening_drops_least_important_first() -> None:
    """Detail sections go first (from the end up), then image sections; the verdict and the table stay."""
    from digitops.report import shorten_markdown

    details = "<details>\n<summary>{}</summary>\n\n{}\n\n</details>"
    report = "\n\n".join([
        "### ✅ Candidate passes",
        "run `r` · model `m`",
        "| Metric | Candidate |\n| :-- | --: |\n| Test accuracy | 97.10 % |",
        "**Gate:** test accuracy at least 90 %",
        "- passes the floor",
        "#### Training curves\n\n![training curves](curves.png)",
        details.format("All parameters (2)", "y" * 5000),
        details.format("Worst mistakes", "![worst mistakes](mistakes.png)"),
        "<sub>digitops</sub>",
    ])
    markdown = f"{MARKER}\n{report}\n"
    assert shorten_markdown(markdown, len(markdown)) == (markdown, [])

    short, dropped = shorten_markdown(markdown, 4000, full_report="https://x/report.html")
    assert dropped == ["All parameters (2)", "Worst mistakes"] and len(short) <= 4000
    assert short.startswith(MARKER + "\n### ✅ Candidate passes\n\n> **shortened:**")
    assert "(https://x/report.html)" in short and "curves.png" in short and "<sub>digitops</sub>" in short

    small, dropped = shorten_markdown(markdown.replace("passes the floor", "z" * 3000), 1200)
    assert dropped == ["gate reasons", "Training curves", "All parameters (2)", "Worst mistakes", "footer"]
    assert len(small) <= 1200 and "**Gate:**" in small and "Test accuracy" in small and "z" * 50 not in small

    tiny, dropped = shorten_markdown(markdown.replace("97.10 %", "9" * 3000), 1200)
    assert len(tiny) <= 1200 and tiny.startswith(MARKER + "\n### ✅ Candidate passes\n")
    assert "| Test accuracy |" in tiny and "everything but the verdict and the metrics" in tiny


@pytest.mark.network
def test_7_retry_after_is_capped_per_command(fake: FakeGitLab, tmp_path: Path) -> None:
    """429 with Retry-After: 60 forever, a 1 s cap: the command fails at once with one line, not in minutes."""
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.md").write_text(f"{MARKER}\n### verdict\n", encoding="utf-8")
    fake.fail_next(50, 429, {"Retry-After": "60"})
    env = _ci_env(fake, tmp_path, DIGITOPS_GITLAB_MAX_WAIT="1")

    proc = _cli(["publish", "mr", "--report-dir", str(tmp_path / "report")], env, tmp_path, timeout=45)

    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "asked to wait 60 s" in lines[0]
    assert "DIGITOPS_GITLAB_MAX_WAIT" in lines[0] and "Traceback" not in proc.stderr
    assert len(fake.requests) == 1 and not fake.mr_notes()

    bad = _cli(["publish", "mr", "--report-dir", str(tmp_path / "report")],
               {**env, "DIGITOPS_GITLAB_MAX_WAIT": "soon"}, tmp_path)
    assert bad.returncode == 2 and "DIGITOPS_GITLAB_MAX_WAIT must be a number" in bad.stderr


@pytest.mark.network
def test_7_the_cap_counts_every_wait_of_a_command(fake: FakeGitLab) -> None:
    """Two waits of 1 s do not fit a 1.5 s cap: the second request that asks to wait ends the command."""
    fake.fail_next(5, 429, {"Retry-After": "1"})
    with pytest.raises(gl.GitLabWaitError, match=r"asked to wait 1 s more after 1 s of waiting"):
        gl.publish_mr_note(f"{MARKER}\n### verdict\n", settings=_settings(fake, max_wait=1.5))
    assert len(fake.requests) == 2 and not fake.mr_notes()


@pytest.mark.network
def test_7_a_retry_after_date_is_understood(fake: FakeGitLab) -> None:
    """Retry-After may be an HTTP date (RFC 9110); python-gitlab's int() would end in a ValueError traceback."""
    fake.fail_next(1, 429, {"Retry-After": "Thu, 01 Jan 1970 00:00:00 GMT"})
    result = gl.publish_mr_note(f"{MARKER}\n### verdict\n", settings=_settings(fake, max_wait=1))
    assert result.created and len(fake.requests_to("GET", r"/user$")) == 2


# ============================================================== parameters (13, 14)


@pytest.mark.parametrize(
    "given, fragment",
    [
        ({"epochs": 0}, "parameter 'epochs' must be in [1..500]"),
        ({"epochs": -3}, "parameter 'epochs' must be in [1..500]"),
        ({"learning_rate": math.nan}, "parameter 'learning_rate' must be a finite number, got nan"),
        ({"learning_rate": math.inf}, "parameter 'learning_rate' must be a finite number, got inf"),
        ({"learning_rate": 0.0}, "parameter 'learning_rate' must be in (0..1]"),
        ({"limit": 100_000_000}, "parameter 'limit' must be in [0..60000]"),
        ({"architecture": "resnet"}, "parameter 'architecture' must be one of mlp, cnn, lenet_bn, cnn_bn, cnn_deep"),
        ({"lr_schedule": "step"}, "parameter 'lr_schedule' must be one of constant, cosine"),
        ({"validation_split": 1.0}, "parameter 'validation_split' must be in [0..0.9]"),
    ],
)
def test_13_out_of_range_values_are_refused(given: dict, fragment: str) -> None:
    with pytest.raises(params.ParameterError) as err:
        params.validate(TRAIN, given)
    message = str(err.value)
    assert fragment in message and len(message.splitlines()) == 1


def test_13_evaluate_values_are_checked_too() -> None:
    with pytest.raises(params.ParameterError, match=r"parameter 'test_limit' must be in \[0\.\.10000\]"):
        params.validate(EVALUATE, {"test_limit": 20_000})
    assert params.validate(EVALUATE, {"test_limit": 10_000, "worst_k": 0}) == {"test_limit": 10_000, "worst_k": 0}


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["-p", "epochs", "0"], "parameter 'epochs' must be in [1..500]"),
        (["-p", "learning_rate", "nan"], "parameter 'learning_rate' must be a finite number, got nan"),
        (["-p", "limit", "100000000"], "parameter 'limit' must be in [0..60000]"),
    ],
)
def test_13_cli_refuses_before_any_kernel(tmp_path: Path, args: list[str], fragment: str) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DIGITOPS_HOME": str(tmp_path / "home"),
           "DIGITOPS_RUNS": str(tmp_path / "runs")}
    proc = _cli(["run", "train", *args], env, ROOT)
    assert proc.returncode == 2, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and fragment in error[0]
    assert not (tmp_path / "runs").exists(), "no run folder, no kernel, no model.keras"


def test_13_every_number_declares_its_range() -> None:
    """Every int/float parameter a user sets has a declared range; choices match what the code knows."""
    from digitops import model

    for notebook in (TRAIN, EVALUATE):
        for decl in params.declared(notebook).values():
            if decl.type_name in ("int", "float"):
                assert decl.allowed is not None and decl.allowed.choices is None, decl
            assert decl.allowed is None or decl.allowed.admits(decl.default), f"default of {decl.name} not allowed"
    decls = params.declared(TRAIN)
    assert set(decls["architecture"].allowed.choices) == set(model.ARCHITECTURES)
    assert set(decls["lr_schedule"].allowed.choices) == {"constant", "cosine"}
    assert decls["limit"].allowed.high == 60_000

    shown = subprocess.run([sys.executable, "-m", "digitops", "params", str(TRAIN)],
                           capture_output=True, text=True, timeout=60)
    assert "[1..500]" in shown.stdout and "{mlp, cnn, lenet_bn, cnn_bn, cnn_deep}" in shown.stdout


def test_13_shipped_parameter_sets_still_fit() -> None:
    """Each profile, and the CI overrides on top of the ci profile, pass the new checks."""
    from digitops import profiles

    for name in profiles.names():
        params.validate(TRAIN, profiles.load(name))
    params.validate(TRAIN, {**profiles.load("ci"), **params.load_file(ROOT / "ci" / "params.yaml")})


def test_14_aliases_are_refused(tmp_path: Path) -> None:
    file = tmp_path / "p.yaml"
    file.write_text("base: &e 3\nepochs: *e\n")
    with pytest.raises(params.ParameterError, match="anchors and aliases"):
        params.load_file(file)
    assert params.parse_cli_value("[&a 1, *a]") == "[&a 1, *a]", "-p values with aliases stay plain text"


def test_14_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    """The 'billion laughs': nine levels of nine aliases (about 387 million nodes) in under 500 bytes."""
    lines = ['a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 500
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DIGITOPS_RUNS": str(tmp_path / "runs")}
    proc = _cli(["run", "train", "-f", str(bomb)], env, ROOT)
    assert proc.returncode == 2 and "anchors and aliases" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr) < 1000


def test_14_big_files_and_values_give_short_errors(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("epochs: " + "9" * (2 * params.MAX_FILE_BYTES) + "x\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DIGITOPS_RUNS": str(tmp_path / "runs")}
    proc = _cli(["run", "train", "-f", str(big)], env, ROOT)
    assert proc.returncode == 2 and "larger than 64 KiB" in proc.stderr and len(proc.stderr) < 1000

    proc = _cli(["run", "train", "-p", "architecture", "y" * 100_000, "-p", "z" * 100_000, "1"], env, ROOT)
    assert proc.returncode == 2 and "parameter 'architecture'" in proc.stderr and "100,000 characters" in proc.stderr
    assert len(proc.stderr) < 2000 and not (tmp_path / "runs").exists()
