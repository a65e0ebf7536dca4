"""The GitLab publisher driven through the real python-gitlab against a strict loopback fake."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from fake_gitlab import BOT, HUMAN, FakeGitLab  # noqa: E402

from digitops import gitlab as gl  # noqa: E402

pytestmark = pytest.mark.network

MARKER = "<!-- digitops-report:mnist-digits -->"
REPORT = f"""{MARKER}
## ✅ Candidate passes the gate: test accuracy 97.10 %

| metric | candidate | production | delta |
|---|---|---|---|
| test_accuracy | 0.9710 | 0.9650 | +0.0060 |

![Training curves](curves.png)

![Confusion matrix](confusion.png)

Executed notebooks: [train.html](train.html) · [evaluate.html](runs/20261128-153000-ab12cd/evaluate.html) · [run folder](../runs/20261128-153000-ab12cd)
<details><summary>Parameters</summary>

<a href="train.ipynb">source notebook</a>
</details>
"""
RUN_ID = "20261128-153000-ab12cd"


@pytest.fixture()
def fake() -> FakeGitLab:
    with FakeGitLab() as server:
        yield server


@pytest.fixture()
def report_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "report.md").write_text(REPORT, encoding="utf-8")
    for name, colour in (("curves.png", (200, 30, 30)), ("confusion.png", (30, 30, 200))):
        Image.new("RGB", (16, 12), colour).save(folder / name)
    return folder


def settings_for(fake: FakeGitLab, token: str | None = None) -> gl.GitLabSettings:
    return gl.GitLabSettings(
        server_url=fake.url,
        token=token or fake.token,
        project_id="42",
        mr_iid=7,
        project_url=fake.project_url(),
        timeout=10,
    )


def ci_env(fake: FakeGitLab, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CI_", "GITLAB_", "COMET_"))}
    env.update(
        GITLAB_TOKEN=fake.token,
        CI_SERVER_URL=fake.url,
        CI_PROJECT_URL=fake.project_url(),
        CI_MERGE_REQUEST_PROJECT_ID="42",
        CI_MERGE_REQUEST_IID="7",
        RUN_ID=RUN_ID,
        TRAIN_JOB_ID="501",
        EVALUATE_JOB_ID="502",
    )
    env.update(extra)
    return env


def digitops(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("digitops")
    return subprocess.run([str(exe), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


# ----------------------------------------------------------------- settings


def test_settings_name_every_missing_variable() -> None:
    with pytest.raises(gl.GitLabConfigError) as info:
        gl.settings_from_env({})
    assert info.value.missing == list(gl.SETTINGS_VARIABLES)
    message = str(info.value)
    for name in gl.SETTINGS_VARIABLES:
        assert name in message
    assert "--dry-run" in message


def test_settings_explain_that_a_job_token_is_not_enough() -> None:
    env = {
        "CI": "true",
        "CI_JOB_TOKEN": "glcbt-secret-job-token",
        "CI_SERVER_URL": "https://gitlab.example.com",
        "CI_PROJECT_URL": "https://gitlab.example.com/g/p",
        "CI_MERGE_REQUEST_PROJECT_ID": "3",
        "CI_MERGE_REQUEST_IID": "9",
    }
    with pytest.raises(gl.GitLabConfigError) as info:
        gl.settings_from_env(env)
    assert info.value.missing == ["GITLAB_TOKEN"]
    assert "cannot write notes" in str(info.value) and "api" in str(info.value)
    assert "glcbt-secret-job-token" not in str(info.value)


def test_settings_keep_the_token_out_of_repr() -> None:
    env = {
        "GITLAB_TOKEN": "fake-token-very-secret",
        "CI_SERVER_URL": "https://gitlab.example.com/",
        "CI_PROJECT_URL": "https://gitlab.example.com/g/p",
        "CI_MERGE_REQUEST_PROJECT_ID": "3",
        "CI_MERGE_REQUEST_IID": "9",
    }
    settings = gl.settings_from_env(env)
    assert (settings.server_url, settings.project_id, settings.mr_iid) == ("https://gitlab.example.com", "3", 9)
    assert "fake-token-very-secret" not in repr(settings)
    with pytest.raises(gl.GitLabConfigError, match="must be a number"):
        gl.settings_from_env({**env, "CI_MERGE_REQUEST_IID": "!9"})


# ----------------------------------------------------------------- Markdown


def test_notebook_links_point_into_each_jobs_artifacts() -> None:
    links = gl.notebook_links("https://gl.example/g/p/", RUN_ID, train_job_id=11, evaluate_job_id="12")
    assert links["train.html"] == f"https://gl.example/g/p/-/jobs/11/artifacts/file/runs/{RUN_ID}/train.html"
    assert links["evaluate.ipynb"] == f"https://gl.example/g/p/-/jobs/12/artifacts/file/runs/{RUN_ID}/evaluate.ipynb"
    assert links[RUN_ID] == f"https://gl.example/g/p/-/jobs/12/artifacts/browse/runs/{RUN_ID}"
    assert "evaluate.html" not in gl.notebook_links("u", RUN_ID, train_job_id=1, evaluate_job_id=None)


def test_rewrite_links_touches_only_relative_links() -> None:
    text = (
        "[t](train.html) [e](runs/x/evaluate.html \"title\") [abs](https://x/train.html) "
        "![img](train.html) <a href='evaluate.html'>e</a> [other](notes.md) [anchor](#train.html)"
    )
    out = gl.rewrite_links(text, {"train.html": "https://T", "evaluate.html": "https://E"})
    assert "[t](https://T)" in out
    assert '[e](https://E "title")' in out
    assert "[abs](https://x/train.html)" in out  # already absolute
    assert "![img](train.html)" in out  # images are uploads, not links
    assert "<a href='https://E'>e</a>" in out
    assert "[other](notes.md)" in out and "[anchor](#train.html)" in out
    assert gl.relative_links(text) == ["train.html", "evaluate.html", "notes.md"]


def test_images_are_found_once_and_replaced() -> None:
    text = "![a](curves.png) ![b](https://x/y.png) ![c](curves.png) ![d](sub/confusion.png)"
    assert gl.local_images(text) == ["curves.png", "sub/confusion.png"]
    out = gl.replace_images(text, {"curves.png": "![curves](/uploads/1/curves.png)"})
    assert out.count("![curves](/uploads/1/curves.png)") == 2
    assert "![d](sub/confusion.png)" in out


def test_prepare_note_keeps_one_marker_and_links_the_experiment() -> None:
    note = gl.prepare_note(REPORT, experiment_url="https://www.comet.com/ws/digitops/abc")
    assert note.splitlines()[0] == MARKER
    assert note.count("digitops-report:") == 1
    assert note.rstrip().endswith("[Comet experiment](https://www.comet.com/ws/digitops/abc)")
    again = gl.prepare_note(note, experiment_url="https://www.comet.com/ws/digitops/abc")
    assert again == note  # idempotent: no second marker, no second link
    unmarked = gl.prepare_note("just text", marker="<!-- digitops-report:other -->")
    assert unmarked == "<!-- digitops-report:other -->\njust text\n"


# ----------------------------------------------------------- publishing


def test_first_publish_creates_second_edits_the_same_note(fake: FakeGitLab, report_dir: Path) -> None:
    # The MR already has 30 other notes (20 a page by default): review comments, system notes
    # and a human quoting our marker, which must be neither edited nor counted as ours.
    for i in range(25):
        fake.add_note(f"review comment {i}")
    fake.add_note(f"{MARKER}\ncopied by a human", author=HUMAN)
    for i in range(4):
        fake.add_note(f"added {i} commits", system=True)
    links = gl.notebook_links(fake.project_url(), RUN_ID, train_job_id=501, evaluate_job_id=502)
    note = gl.prepare_note(REPORT, links=links)

    first = gl.publish_mr_note(note, settings=settings_for(fake), image_dir=report_dir)
    assert first.created and first.url.endswith(f"/group/digitops/-/merge_requests/7#note_{first.note_id}")
    for i in range(12):
        fake.add_note(f"later comment {i}")

    second = gl.publish_mr_note(note.replace("97.10", "97.30"), settings=settings_for(fake), image_dir=report_dir)
    assert second.action == "updated" and second.note_id == first.note_id

    notes = fake.mr_notes()
    ours = [n for n in notes if n["author"]["id"] == BOT["id"]]
    assert len(ours) == 1 and len(notes) == 43
    assert "97.30" in ours[0]["body"] and "97.10" not in ours[0]["body"]
    assert notes[25]["body"] == f"{MARKER}\ncopied by a human"  # never touched
    listed = fake.requests_to("GET", r"/merge_requests/7/notes$")
    assert sum(r.query.get("page") == ["2"] for r in listed) == 2, "our note is on page 2 both times"
    assert [r.status for r in fake.requests_to("PUT", r"/notes/\d+$")] == [200]


def test_images_are_uploaded_and_referenced(fake: FakeGitLab, report_dir: Path) -> None:
    links = gl.notebook_links(fake.project_url(), RUN_ID, train_job_id=501, evaluate_job_id=502)
    gl.publish_mr_note(gl.prepare_note(REPORT, links=links), settings=settings_for(fake), image_dir=report_dir)

    body = fake.mr_notes()[0]["body"]
    assert [u["url"].rsplit("/", 1)[1] for u in fake.uploads] == ["curves.png", "confusion.png"]
    for upload in fake.uploads:
        name = upload["url"].rsplit("/", 1)[1]
        assert upload["markdown"] in body
        assert hashlib.sha256(fake.upload_bytes[upload["url"]]).digest() == hashlib.sha256(
            (report_dir / name).read_bytes()
        ).digest()
    assert "](curves.png)" not in body and "](confusion.png)" not in body
    assert f"{fake.project_url()}/-/jobs/501/artifacts/file/runs/{RUN_ID}/train.html" in body
    assert f"{fake.project_url()}/-/jobs/502/artifacts/file/runs/{RUN_ID}/evaluate.html" in body
    assert f'href="{fake.project_url()}/-/jobs/501/artifacts/file/runs/{RUN_ID}/train.ipynb"' in body
    assert f"[run folder]({fake.project_url()}/-/jobs/502/artifacts/browse/runs/{RUN_ID})" in body
    assert "| test_accuracy | 0.9710 |" in body


def test_transient_errors_are_retried(fake: FakeGitLab, report_dir: Path) -> None:
    fake.fail_next(2, 502)
    fake.fail_next(1, 429, {"Retry-After": "0"})
    result = gl.publish_mr_note(REPORT, settings=settings_for(fake), image_dir=report_dir)
    assert result.created
    assert [r.status for r in fake.requests[:4]] == [502, 502, 429, 200]
    assert fake.requests[0].path == fake.requests[3].path == "/api/v4/user"
    assert len(fake.mr_notes()) == 1


def test_wrong_token_gives_a_clear_auth_error(fake: FakeGitLab, report_dir: Path) -> None:
    with pytest.raises(gl.GitLabAuthError) as info:
        gl.publish_mr_note(REPORT, settings=settings_for(fake, token="fake-token-revoked"), image_dir=report_dir)
    message = str(info.value)
    assert "401" in message and "CI_JOB_TOKEN" in message and "GITLAB_TOKEN" in message and "api" in message
    assert "fake-token-revoked" not in message
    assert fake.mr_notes() == [] and fake.uploads == []


def test_job_token_can_read_but_not_write_notes(fake: FakeGitLab) -> None:
    import gitlab

    client = gitlab.Gitlab(fake.url, job_token=fake.job_token)
    mr = client.projects.get(42, lazy=True).mergerequests.get(7)
    assert mr.notes.list(get_all=True) == []
    with pytest.raises(gitlab.exceptions.GitlabAuthenticationError):
        mr.notes.create({"body": "hello"})
    with pytest.raises(gitlab.exceptions.GitlabAuthenticationError):
        client.projects.get(42, lazy=True).upload("a.png", filedata=b"\x89PNG")
    # Someone who stores $CI_JOB_TOKEN in GITLAB_TOKEN gets the explanation.
    with pytest.raises(gl.GitLabAuthError, match="project access token"):
        gl.publish_mr_note(REPORT, settings=settings_for(fake, token=fake.job_token))


def test_the_fake_refuses_what_gitlab_refuses(fake: FakeGitLab) -> None:
    import gitlab
    import requests

    client = gitlab.Gitlab(fake.url, private_token=fake.token)
    mr = client.projects.get(42, lazy=True).mergerequests.get(7)
    human = fake.add_note("a human's comment")
    note = mr.notes.get(human["id"])
    note.body = "rewritten"
    with pytest.raises(gitlab.exceptions.GitlabUpdateError) as info:
        note.save()
    assert info.value.response_code == 403 and fake.mr_notes()[0]["body"] == "a human's comment"
    with pytest.raises(gitlab.exceptions.GitlabCreateError) as info:
        mr.notes.create({"body": "  "})
    assert info.value.response_code == 400
    headers = {"PRIVATE-TOKEN": fake.token}
    assert requests.get(f"{fake.url}/api/v4/projects/42/pipelines", headers=headers, timeout=5).status_code == 404
    assert requests.delete(f"{fake.url}/api/v4/projects/42/uploads", headers=headers, timeout=5).status_code == 405
    assert requests.get(f"{fake.url}/api/v4/projects/42/merge_requests/7", timeout=5).status_code == 401
    assert requests.get(f"{fake.url}/api/v4/projects/42/merge_requests/7/notes", params={"per_page": "x"},
                        headers=headers, timeout=5).status_code == 400
    upload = requests.post(f"{fake.url}/api/v4/projects/42/uploads", headers=headers, data={"file": "x"}, timeout=5)
    assert upload.status_code == 400


def test_unknown_merge_request_is_a_clear_error(fake: FakeGitLab) -> None:
    settings = gl.GitLabSettings(fake.url, fake.token, "42", 99, fake.project_url(), timeout=10)
    with pytest.raises(gl.GitLabError, match=r"HTTP 404.*CI_MERGE_REQUEST_IID"):
        gl.publish_mr_note(REPORT, settings=settings)


def test_retries_are_bounded(fake: FakeGitLab) -> None:
    fake.fail_next(10, 503)
    settings = gl.GitLabSettings(fake.url, fake.token, "42", 7, fake.project_url(), timeout=10, max_retries=2)
    with pytest.raises(gl.GitLabError, match=r"HTTP 503"):
        gl.publish_mr_note(REPORT, settings=settings)
    assert len(fake.requests) == 3


def test_unreachable_server_is_a_clear_error() -> None:
    with FakeGitLab() as server:
        url = server.url
    settings = gl.GitLabSettings(url, "glpat-x", "42", 7, f"{url}/g/p", timeout=2, max_retries=1)
    with pytest.raises(gl.GitLabError, match="cannot reach GitLab"):
        gl.publish_mr_note(REPORT, settings=settings)


# ------------------------------------------------------------------- CLI


def test_cli_publishes_then_updates(fake: FakeGitLab, report_dir: Path, tmp_path: Path) -> None:
    env = ci_env(fake)
    first = digitops(["publish", "mr", "--report-dir", str(report_dir)], env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert re.fullmatch(r"created note \d+: http://127\.0\.0\.1:\d+/group/digitops/-/merge_requests/7#note_\d+\n", first.stdout)
    second = digitops(["publish", "mr", "--report-dir", str(report_dir)], env, tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("updated note ")
    assert len(fake.mr_notes()) == 1
    body = fake.mr_notes()[0]["body"]
    assert f"/-/jobs/501/artifacts/file/runs/{RUN_ID}/train.html" in body
    for out in (first, second):
        assert fake.token not in out.stdout + out.stderr


def test_cli_dry_run_prints_the_note_without_network(report_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CI_", "GITLAB_", "RUN_ID", "TRAIN_", "EVAL"))}
    env["CI_SERVER_URL"] = "http://127.0.0.1:9"  # would refuse connections, and must not be used
    result = digitops(["publish", "mr", "--report-dir", str(report_dir), "--dry-run"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == MARKER
    assert "| test_accuracy | 0.9710 |" in result.stdout and "](train.html)" in result.stdout
    assert "links stay relative (missing RUN_ID, TRAIN_JOB_ID, EVALUATE_JOB_ID, CI_PROJECT_URL)" in result.stderr


def test_cli_names_missing_variables(report_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CI_", "GITLAB_"))}
    env.update(CI="true", CI_JOB_TOKEN="glcbt-secret", CI_SERVER_URL="https://gitlab.example.com")
    result = digitops(["publish", "mr", "--report-dir", str(report_dir)], env, tmp_path)
    assert result.returncode == 2
    for name in ("GITLAB_TOKEN", "CI_MERGE_REQUEST_PROJECT_ID", "CI_MERGE_REQUEST_IID", "CI_PROJECT_URL",
                 "RUN_ID", "TRAIN_JOB_ID", "EVALUATE_JOB_ID"):
        assert name in result.stderr.splitlines()[0]
    assert "cannot write notes" in result.stderr  # CI_JOB_TOKEN is set: say why it is not enough
    assert "CI_SERVER_URL," not in result.stderr.splitlines()[0]  # it was set
    assert "glcbt-secret" not in result.stderr + result.stdout


def test_cli_requires_the_job_ids_for_notebook_links(fake: FakeGitLab, report_dir: Path, tmp_path: Path) -> None:
    env = ci_env(fake)
    del env["EVALUATE_JOB_ID"]
    result = digitops(["publish", "mr", "--report-dir", str(report_dir)], env, tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == "Error: cannot link the executed notebooks in the note: missing EVALUATE_JOB_ID"
    assert "dotenv report" in result.stderr
    assert fake.mr_notes() == [] and fake.requests == []


def test_cli_reports_auth_errors(fake: FakeGitLab, report_dir: Path, tmp_path: Path) -> None:
    result = digitops(["publish", "mr", "--report-dir", str(report_dir)], ci_env(fake, GITLAB_TOKEN="glpat-wrong"), tmp_path)
    assert result.returncode == 2
    assert "401" in result.stderr and "project access token" in result.stderr
    assert "Traceback" not in result.stderr and "glpat-wrong" not in result.stderr


# --------------------------------------------------------------- trigger


def test_trigger_passes_the_version_downstream(fake: FakeGitLab, tmp_path: Path) -> None:
    fake.add_project(43, "group/digitops-dashboard")
    env = ci_env(fake, CI_JOB_TOKEN=fake.job_token, DASHBOARD_PROJECT="group/digitops-dashboard",
                 MODEL_VERSION="0.3.0", CI_PIPELINE_URL=f"{fake.project_url()}/-/pipelines/9")
    result = digitops(["publish", "trigger", "-v", "EXTRA=1"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.match(r"triggered pipeline \d+ of group/digitops-dashboard on main: http://", result.stdout)
    (pipeline,) = fake.pipelines
    assert pipeline["project_id"] == 43 and pipeline["ref"] == "main"
    assert pipeline["variables"] == {
        "DIGITOPS_MODEL_NAME": "mnist-digits",
        "DIGITOPS_MODEL_VERSION": "0.3.0",
        "DIGITOPS_UPSTREAM_PIPELINE_URL": f"{fake.project_url()}/-/pipelines/9",
        "EXTRA": "1",
    }
    assert fake.job_token not in result.stdout + result.stderr


def test_trigger_errors_are_clear(fake: FakeGitLab, tmp_path: Path) -> None:
    fake.add_project(43, "group/digitops-dashboard")
    env = ci_env(fake, CI_JOB_TOKEN="glcbt-not-allowed", DASHBOARD_PROJECT="group/digitops-dashboard")
    missing = digitops(["publish", "trigger"], env, tmp_path)
    assert missing.returncode == 2 and "MODEL_VERSION" in missing.stderr
    refused = digitops(["publish", "trigger", "--version", "0.1.0"], env, tmp_path)
    assert refused.returncode == 2
    assert "allowlist" in refused.stderr and "glcbt-not-allowed" not in refused.stderr
    assert fake.pipelines == []


def test_cli_renders_the_report_for_a_run(fake: FakeGitLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--run`` without ``--report-dir`` renders the report itself (digitops.report) and publishes it."""
    home, runs = tmp_path / ".digitops", tmp_path / "runs"
    monkeypatch.setenv("DIGITOPS_HOME", str(home))
    monkeypatch.setenv("DIGITOPS_RUNS", str(runs))
    from digitops.tracking import get_tracker

    tracker = get_tracker()
    tracker.start_run("r1", params={"architecture": "mlp"}, data_checksum="c65580678af93f1e")
    tracker.log_metrics("r1", {"test_accuracy": 0.97, "test_loss": 0.1})
    tracker.end_run("r1")
    (runs / "r1").mkdir(parents=True)
    Image.new("RGB", (8, 8), (0, 200, 0)).save(runs / "r1" / "curves.png")
    env = ci_env(fake, DIGITOPS_HOME=str(home), DIGITOPS_RUNS=str(runs), RUN_ID="r1")

    dry = digitops(["publish", "mr", "--dry-run"], env, tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith(MARKER + "\n") and "97.00 %" in dry.stdout
    assert fake.requests == []

    unknown = digitops(["publish", "mr", "--run", "no-such-run", "--dry-run"], env, tmp_path)
    assert unknown.returncode == 2 and "cannot write the report of run no-such-run" in unknown.stderr

    published = digitops(["publish", "mr"], env, tmp_path)
    assert published.returncode == 0, published.stderr
    (note,) = fake.mr_notes()
    (upload,) = fake.uploads
    assert upload["url"].endswith("/curves.png") and upload["markdown"] in note["body"]
    assert fake.upload_bytes[upload["url"]] == (runs / "r1" / "curves.png").read_bytes()
