"""The GitLab CI pipeline itself, run locally with gitlab-ci-local against the fake GitLab.

gitlab-ci-local (npm, needs Node 22, git and rsync) executes .gitlab-ci.yml in a
plain shell (``--force-shell-executor``), each job in its own copy of the
repository (``--shell-isolation``), passing artifacts, caches and dotenv
reports between jobs the way GitLab does. The jobs use this checkout's .venv
(``DIGITOPS_SKIP_INSTALL=true``) and the cached MNIST files, with tiny training
parameters; the report job publishes to a loopback fake of GitLab's API.

Node 22 and gitlab-ci-local live in ``$DIGITOPS_NODE_PREFIX`` (default
``~/.cache/digitops/node``); ``ci/test-tools.sh`` (``make test-tools``) installs them,
and runs on first use when a bare ``pytest`` finds them missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_gitlab import BOT, FakeGitLab  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NODE_PREFIX = Path(os.environ.get("DIGITOPS_NODE_PREFIX") or Path.home() / ".cache" / "digitops" / "node")
TINY = "-p limit 1000 -p epochs 1 -p architecture mlp -p augment false -p lr_schedule constant"
# Needs Node, git and rsync besides Python, and minutes of CPU: not part of the quick suite.
pytestmark = pytest.mark.slow

MR_VARS = ("CI_PIPELINE_SOURCE", "CI_SERVER_URL", "CI_MERGE_REQUEST_IID", "CI_MERGE_REQUEST_PROJECT_ID", "CI_JOB_TOKEN")


def node_bin() -> Path:
    """Folder holding ``node`` (22) and ``gitlab-ci-local``; ``ci/test-tools.sh`` installs them when missing.

    One installer for ``make test`` and a bare ``pytest`` alike, so the tools and versions are
    named in one place (the script takes the same install lock, for tests run in parallel).
    """
    bin_dir = NODE_PREFIX / "node_modules" / ".bin"
    if not (bin_dir / "gitlab-ci-local").exists() or not (bin_dir / "node").exists() or not shutil.which("rsync"):
        done = subprocess.run(["bash", str(ROOT / "ci" / "test-tools.sh")], capture_output=True, text=True,
                              timeout=900, env={**os.environ, "DIGITOPS_NODE_PREFIX": str(NODE_PREFIX)})
        if done.returncode != 0:
            pytest.fail(f"ci/test-tools.sh could not install what gitlab-ci-local needs:\n{done.stdout}{done.stderr}")
    version = subprocess.run([str(bin_dir / "node"), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("v22."), version.stdout
    return bin_dir


def copy_checkout(dest: Path, remote: str) -> Path:
    """The working tree (tracked and untracked files, minus ignored ones) as a fresh git repository."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file() and not rel.startswith(".gitlab-ci-local/"):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git"]
    for args in (
        ["init", "-q", "-b", "main"],
        ["config", "user.name", "digitops-test"],
        ["config", "user.email", "test@digitops.invalid"],
        ["add", "-A"],
        ["commit", "-q", "-m", "digitops under test"],
        ["remote", "add", "origin", remote],
        # gitlab-ci-local reads the default branch from origin/HEAD.
        ["update-ref", "refs/remotes/origin/main", "HEAD"],
        ["symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/main"],
    ):
        subprocess.run([*git, *args], cwd=dest, check=True, capture_output=True)
    return dest


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGitLab]:
    with FakeGitLab(project_id=42, project_path="group/digitops", mr_iids=(7,)) as server:
        server.add_project(43, "group/digitops-dashboard")
        yield server


@pytest.fixture(scope="module")
def repo(fake: FakeGitLab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_checkout(tmp_path_factory.mktemp("checkout"), f"{fake.url}/group/digitops.git")


@pytest.fixture(scope="module")
def gcl(repo: Path, fake: FakeGitLab, tmp_path_factory: pytest.TempPathFactory):
    """Run gitlab-ci-local in the copy; returns (returncode, log, job statuses)."""
    from digitops import data

    bin_dir = node_bin()
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIGITOPS_", "CI_", "GITLAB_", "COMET_"))}
    env.update(
        PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")]),
        HOME=str(home),
        NO_COLOR="1",
    )
    base = [
        "--force-shell-executor", "--shell-isolation", "--no-color", "--home", str(home),
        "--ignore-predefined-vars", ",".join(MR_VARS),
        "--variable", f"CI_SERVER_URL={fake.url}",
        "--variable", "DIGITOPS_SKIP_INSTALL=true",
        "--variable", "DIGITOPS_BUILD_IMAGES=false",
        "--variable", f"DIGITOPS_CACHE={data.default_cache_dir().parent}",
        "--variable", f"DIGITOPS_PARAMS={TINY}",
        "--variable", "DIGITOPS_EVAL_PARAMS=-p test_limit 1000",
    ]

    def run(*args: str, timeout: int = 420) -> tuple[int, str, dict[str, str]]:
        result = subprocess.run(
            [str(bin_dir / "gitlab-ci-local"), *base, *args],
            cwd=repo, env=env, capture_output=True, text=True, timeout=timeout,
        )
        log = result.stdout + result.stderr
        statuses = dict((job, status) for status, job in re.findall(r"^\s*(PASS|FAIL|WARN)\s+(\S+)", log, re.M))
        return result.returncode, log, statuses

    return run


def mr_args(**variables: str) -> list[str]:
    args = [
        "--variable", "CI_PIPELINE_SOURCE=merge_request_event", "--unset-variable", "CI_COMMIT_BRANCH",
        "--variable", "CI_MERGE_REQUEST_IID=7", "--variable", "CI_MERGE_REQUEST_PROJECT_ID=42",
        "--variable", "GITLAB_TOKEN=fake-project-token",
    ]
    for key, value in variables.items():
        args += ["--variable", f"{key}={value}"]
    return args


def dotenv(repo: Path, job: str) -> dict[str, str]:
    folder = repo / ".gitlab-ci-local" / "artifacts" / job / ".gitlab-ci-reports" / "dotenv"
    pairs = [line.split("=", 1) for f in folder.iterdir() for line in f.read_text().splitlines() if "=" in line]
    return dict(pairs)


def tail(log: str) -> str:
    """The end of a gitlab-ci-local log, without papermill's progress bars."""
    return "\n".join(line for line in log.splitlines() if "Executing:" not in line)[-6000:]


def test_pipelines_contain_the_right_jobs(gcl, repo: Path) -> None:
    def jobs(*args: str) -> dict[str, str]:
        rc, log, _ = gcl("--list-json", *args, timeout=120)
        assert rc == 0, tail(log)
        listed = json.loads(log[log.index("[") : log.rindex("]") + 1])
        return {j["name"]: j["when"] for j in listed if j["when"] != "never"}

    # build-ci-image is absent: nothing changed pyproject.toml or ci/Dockerfile in this checkout.
    assert jobs(*mr_args()) == {"ci-image": "on_success", "tests": "on_success", "train": "on_success",
                                "evaluate": "on_success", "report": "on_success"}
    assert "tests" not in jobs(*mr_args(DIGITOPS_RUN_TESTS="false"))
    main = {"ci-image": "on_success", "tests": "on_success", "train": "on_success", "evaluate": "on_success",
            "register": "on_success", "deploy-dashboard": "manual"}
    assert jobs() == main  # the fixture turns image builds off (no Buildah here)
    registry = ("--variable", "DIGITOPS_BUILD_IMAGES=true")  # gitlab-ci-local predefines CI_REGISTRY_IMAGE
    assert jobs(*registry) == {**main, "dashboard-image": "on_success"}
    assert "dashboard-image" not in jobs(*registry, *mr_args())
    for args in (mr_args(), []):
        rc, log, _ = gcl("--validate-dependency-chain", *args, timeout=120)
        assert rc == 0 and "All job dependencies are valid" in log, tail(log)


def test_merge_request_then_main_pipeline(gcl, repo: Path, fake: FakeGitLab) -> None:
    def pipeline(*args: str) -> tuple[int, str, dict[str, str]]:
        # The test job would run pytest inside pytest; it has its own CI run.
        return gcl("--variable", "DIGITOPS_RUN_TESTS=false", *args)

    # 1. A merge request pipeline: train -> evaluate -> report, the gate enforced and passed.
    rc, log, status = pipeline(*mr_args(DIGITOPS_GATE_FLOOR="0.5"))
    assert rc == 0, tail(log)
    assert status == {"ci-image": "PASS", "train": "PASS", "evaluate": "PASS", "report": "PASS"}, tail(log)
    # No registry answers here: the model jobs fall back to the plain image (and installing).
    assert dotenv(repo, "ci-image") == {"DIGITOPS_CI_IMAGE": "python:3.11-slim"}
    assert "model jobs' image: python:3.11-slim (cannot tell whether" in log
    ids = dotenv(repo, "evaluate")
    run_id, train_job, eval_job = ids["RUN_ID"], ids["TRAIN_JOB_ID"], ids["EVALUATE_JOB_ID"]
    assert train_job != eval_job
    notes = fake.mr_notes()
    assert len(notes) == 1 and notes[0]["author"]["id"] == BOT["id"]
    body, note_id = notes[0]["body"], notes[0]["id"]
    project = fake.project_url()
    assert body.startswith("<!-- digitops-report:mnist-digits -->\n")
    assert "Candidate passes the gate" in body
    assert re.search(r"^\| \*\*test accuracy\*\* \| \d+\.\d+ % \|", body, re.M), body  # the comparison table
    uploads = {u["url"].rsplit("/", 1)[1]: u for u in fake.uploads}
    assert {"curves.png", "confusion.png"} <= set(uploads)
    for upload in uploads.values():
        assert upload["markdown"] in body
        assert fake.upload_bytes[upload["url"]].startswith(b"\x89PNG")
    assert f"{project}/-/jobs/{train_job}/artifacts/file/runs/{run_id}/train.html" in body
    assert f"{project}/-/jobs/{eval_job}/artifacts/file/runs/{run_id}/evaluate.html" in body
    # The linked files are really in those jobs' artifacts.
    artifacts = repo / ".gitlab-ci-local" / "artifacts"
    assert (artifacts / "train" / "runs" / run_id / "train.html").stat().st_size > 1000
    assert (artifacts / "evaluate" / "runs" / run_id / "evaluate.html").stat().st_size > 1000
    assert (artifacts / "train" / "notebooks-out" / "train.ipynb").is_file()
    assert fake.token not in log

    # 2. A second push that changes only the README: a new pipeline edits the same note (gate failing,
    # warn-only mode). Training's and evaluation's inputs are unchanged, so both reuse pipeline 1's run,
    # found in the store and run folders GitLab's cache (keyed on the branch) carried over.
    cached = repo / ".gitlab-ci-local" / "cache" / "runs-main"
    assert (cached / "runs" / run_id / "model.keras").is_file() and (cached / ".digitops" / "tracking.db").is_file()
    readme = repo / "README.md"
    readme.write_text(readme.read_text() + "\nA docs-only change.\n")
    subprocess.run(["git", "commit", "-qam", "docs only"], cwd=repo, check=True, capture_output=True)
    rc, log, status = pipeline(*mr_args(DIGITOPS_GATE="warn"))
    assert rc == 0, tail(log)
    assert status == {"ci-image": "PASS", "train": "PASS", "evaluate": "PASS", "report": "WARN"}, tail(log)
    for stage in ("train", "evaluate"):
        assert f"{stage}: inputs unchanged since run {run_id}; reused" in log, tail(log)
    assert "Executing:" not in log  # no notebook ran: papermill's progress bar never appeared
    ids2 = dotenv(repo, "evaluate")
    notes = fake.mr_notes()
    assert len(notes) == 1 and notes[0]["id"] == note_id
    assert "Candidate fails the gate" in notes[0]["body"]
    assert f"Inputs unchanged since run {run_id}; reused (not trained or evaluated again)." in notes[0]["body"]
    assert f"/-/jobs/{ids2['TRAIN_JOB_ID']}/artifacts/file/runs/{ids2['RUN_ID']}/train.html" in notes[0]["body"]
    assert ids2["RUN_ID"] != run_id

    # 3. The same verdict with the gate enforced fails the job (after updating the note).
    # (gitlab-ci-local 4.x exits 0 here because the job has allow_failure:exit_codes; the status tells.)
    rc, log, status = gcl("report", *mr_args())
    assert status == {"report": "FAIL"}, tail(log)
    assert "fails the gate" in log and len(fake.mr_notes()) == 1
    assert fake.requests_to("PUT", rf"/notes/{note_id}$")[-1].status == 200

    # 4. The default branch: train -> evaluate -> register; the manual deploy waits.
    rc, log, status = pipeline()
    assert rc == 0, tail(log)
    assert status == {"ci-image": "PASS", "train": "PASS", "evaluate": "PASS", "register": "PASS"}, tail(log)
    assert "deploy-dashboard" not in status and fake.pipelines == []
    version = dotenv(repo, "register")["MODEL_VERSION"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    registered = json.loads((artifacts / "register" / "registered.json").read_text())
    assert registered["version"] == version and registered["run_id"] == dotenv(repo, "evaluate")["RUN_ID"]

    # 5. Run by hand, deploy-dashboard promotes the version and triggers the dashboard project.
    rc, log, status = gcl(
        "deploy-dashboard",
        "--variable", "DASHBOARD_PROJECT=group/digitops-dashboard",
        "--variable", f"CI_JOB_TOKEN={fake.job_token}",
    )
    assert rc == 0 and status == {"deploy-dashboard": "PASS"}, tail(log)
    assert re.search(rf"production.*mnist-digits {re.escape(version)}", log), tail(log)
    (pipeline,) = fake.pipelines
    assert pipeline["project_id"] == 43
    assert pipeline["variables"]["DIGITOPS_MODEL_VERSION"] == version
    assert fake.job_token not in log and fake.token not in log
