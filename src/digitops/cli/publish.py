"""``digitops publish``: the merge request report note and the downstream dashboard trigger."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from digitops import config
from digitops.errors import NotFound, UsageError

#: Notebook files whose relative links the MR note turns into artifact URLs.
NOTEBOOK_FILES = ("train.html", "train.ipynb", "evaluate.html", "evaluate.ipynb")


def _runs_path() -> str:
    """The runs folder as a path inside the project, the way it appears in job artifacts."""
    runs = config.runs_dir()
    if not runs.is_absolute():
        return runs.as_posix()
    project_dir = os.environ.get("CI_PROJECT_DIR")
    if project_dir and runs.is_relative_to(project_dir):
        return runs.relative_to(project_dir).as_posix()
    return "runs"


def _read_report(report_dir: Path | None, run_id: str | None, workdir: Path) -> tuple[str, Path]:
    if report_dir is not None:
        path = report_dir / "report.md"
        if not path.is_file():
            raise NotFound(f"{path} does not exist: write it with `digitops report RUN --out {report_dir}`")
        return path.read_text(encoding="utf-8"), report_dir
    if not run_id:
        raise UsageError("give --report-dir DIR (from `digitops report RUN --out DIR`) or --run RUN_ID")
    from digitops.errors import DigitopsError
    from digitops.report import write_report

    try:
        paths = write_report(run_id, workdir)
    except DigitopsError as exc:
        exc.args = (f"cannot write the report of run {run_id}: {exc}",)
        raise
    return paths["markdown"].read_text(encoding="utf-8"), workdir


def _report_html_url(report_dir: Path | None, project_url: str) -> str | None:
    """Where this CI job's artifacts will hold report.html (linked when the note must be shortened)."""
    job_id = os.environ.get("CI_JOB_ID", "").strip()
    if report_dir is None or not job_id or not project_url or not (report_dir / "report.html").is_file():
        return None
    from digitops.gitlab import artifact_url

    html = report_dir.resolve() / "report.html"
    project_dir = os.environ.get("CI_PROJECT_DIR") or os.getcwd()
    if not html.is_relative_to(Path(project_dir).resolve()):
        return None
    return artifact_url(project_url, job_id, html.relative_to(Path(project_dir).resolve()).as_posix())


def _experiment_url(run_id: str | None) -> str | None:
    """The run's Comet experiment page, when Comet tracks runs."""
    if not run_id or not config.comet_enabled():
        return None
    try:
        from digitops.tracking import get_tracker

        return get_tracker().get_run(run_id).url
    except Exception as exc:  # a missing link must not stop the report
        click.echo(f"warning: no experiment link for run {run_id}: {exc}", err=True)
        return None


@click.group("publish")
def publish() -> None:
    """Publish the report to a GitLab merge request; trigger the dashboard project.

    \b
    Needs, in GitLab CI (set by GitLab, except GITLAB_TOKEN):
      GITLAB_TOKEN                  project access token, api scope, Developer role
      CI_SERVER_URL, CI_PROJECT_URL, CI_MERGE_REQUEST_PROJECT_ID, CI_MERGE_REQUEST_IID
      RUN_ID, TRAIN_JOB_ID, EVALUATE_JOB_ID   from the train/evaluate jobs' dotenv reports
    """


@publish.command("mr")
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder with report.md and its images (`digitops report RUN --out DIR`).",
)
@click.option(
    "--run",
    "run_id",
    envvar="RUN_ID",
    help="Run id ($RUN_ID): locates the notebooks in the artifacts; without --report-dir the report is rendered for it.",
)
@click.option("--train-job-id", envvar="TRAIN_JOB_ID", help="Job whose artifacts hold train.html ($TRAIN_JOB_ID).")
@click.option(
    "--evaluate-job-id", envvar="EVALUATE_JOB_ID", help="Job whose artifacts hold evaluate.html ($EVALUATE_JOB_ID)."
)
@click.option(
    "--experiment-url",
    envvar="DIGITOPS_EXPERIMENT_URL",
    help="Experiment page to link (default: the run's Comet experiment, when Comet is on).",
)
@click.option("--dry-run", is_flag=True, help="Print the note instead of publishing it; needs no token or network.")
def publish_mr(
    report_dir: Path | None,
    run_id: str | None,
    train_job_id: str | None,
    evaluate_job_id: str | None,
    experiment_url: str | None,
    dry_run: bool,
) -> None:
    """Create or update the merge request's single report note.

    The note carrying the report's hidden marker is edited in place on every
    push; images are uploaded to the project; links to the executed notebooks
    point at the artifacts of the jobs that made them. A report over GitLab's
    1,000,000-character limit is shortened (the note says so and links
    report.html in this job's artifacts). Waiting on GitLab's Retry-After is
    capped at $DIGITOPS_GITLAB_MAX_WAIT seconds in all (default 120). Exit
    status: 0 published, 1 GitLab refused or failed, 2 missing settings.
    """
    from digitops import gitlab as gl

    with tempfile.TemporaryDirectory(prefix="digitops-report-") as tmp:
        markdown, image_dir = _read_report(report_dir, run_id, Path(tmp))

        # Which ids the notebook links need: only those the report actually links.
        wanted = {name.split(".")[0] for name in gl.relative_links(markdown) if name in NOTEBOOK_FILES}
        project_url = os.environ.get("CI_PROJECT_URL", "").rstrip("/")
        missing_ids = [
            name
            for name, value, stages in (
                ("RUN_ID", run_id, {"train", "evaluate"}),
                ("TRAIN_JOB_ID", train_job_id, {"train"}),
                ("EVALUATE_JOB_ID", evaluate_job_id, {"evaluate"}),
            )
            if not value and stages & wanted
        ]
        links: dict[str, str] = {}
        if run_id and project_url and (train_job_id or evaluate_job_id):
            links = gl.notebook_links(
                project_url, run_id, train_job_id=train_job_id, evaluate_job_id=evaluate_job_id, runs_path=_runs_path()
            )
        note_markdown = gl.prepare_note(markdown, links=links, experiment_url=experiment_url or _experiment_url(run_id))

        if dry_run:
            unresolved = missing_ids + (["CI_PROJECT_URL"] if wanted and not project_url else [])
            if unresolved:
                click.echo(f"note: notebook links stay relative (missing {', '.join(unresolved)})", err=True)
            from digitops.report import shorten_markdown

            shown, _ = shorten_markdown(note_markdown, gl.MAX_NOTE_CHARS,
                                        full_report=_report_html_url(report_dir, project_url))
            click.echo(shown, nl=False)
            return

        try:
            settings = gl.settings_from_env()
        except gl.GitLabConfigError as exc:
            raise gl.GitLabConfigError(exc.missing + missing_ids, hint=exc.hint) from None
        if missing_ids:
            raise gl.GitLabConfigError(missing_ids, what="link the executed notebooks in the note")
        result = gl.publish_mr_note(
            note_markdown, settings=settings, image_dir=image_dir,
            full_report_url=_report_html_url(report_dir, project_url),
        )
    click.echo(f"{result.action} note {result.note_id}: {result.url}")


@publish.command("trigger")
@click.option(
    "--project", envvar="DASHBOARD_PROJECT", help="Downstream project, id or group/name ($DASHBOARD_PROJECT)."
)
@click.option("--ref", envvar="DASHBOARD_REF", default="main", show_default=True, help="Branch or tag to run ($DASHBOARD_REF).")
@click.option("--version", "version", envvar="MODEL_VERSION", help="Registered model version to deploy ($MODEL_VERSION).")
@click.option("--model-name", default=None, help="Registered model name (default $DIGITOPS_MODEL_NAME or mnist-digits).")
@click.option(
    "-v", "--variable", "extra", multiple=True, metavar="KEY=VALUE", help="Another variable for the downstream pipeline."
)
@click.option("--dry-run", is_flag=True, help="Print what would be sent (without the token) and stop.")
def publish_trigger(
    project: str | None,
    ref: str,
    version: str | None,
    model_name: str | None,
    extra: tuple[str, ...],
    dry_run: bool,
) -> None:
    """Start the downstream dashboard project's pipeline for a registered model version.

    The downstream pipeline receives DIGITOPS_MODEL_NAME and
    DIGITOPS_MODEL_VERSION (the dashboard pins that version). Authenticates
    with $DASHBOARD_TRIGGER_TOKEN (a pipeline trigger token of the downstream
    project) or else the job's $CI_JOB_TOKEN (the downstream project must
    allow this project in its job token allowlist).
    """
    from digitops import gitlab as gl

    variables = {"DIGITOPS_MODEL_NAME": model_name or config.model_name(), "DIGITOPS_MODEL_VERSION": version or ""}
    if os.environ.get("CI_PIPELINE_URL"):
        variables["DIGITOPS_UPSTREAM_PIPELINE_URL"] = os.environ["CI_PIPELINE_URL"]
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--variable expects KEY=VALUE, got {item!r}")
        variables[key] = value

    server_url = os.environ.get("CI_SERVER_URL", "").rstrip("/")
    token = os.environ.get("DASHBOARD_TRIGGER_TOKEN") or os.environ.get("CI_JOB_TOKEN") or ""
    missing = [
        name
        for name, value in (
            ("DASHBOARD_PROJECT (--project)", project),
            ("MODEL_VERSION (--version)", version),
            ("CI_SERVER_URL", server_url or dry_run),
            ("DASHBOARD_TRIGGER_TOKEN or CI_JOB_TOKEN", token or dry_run),
        )
        if not value
    ]
    if missing:
        raise gl.GitLabConfigError(missing, what="trigger the dashboard project")
    assert project is not None  # for the type checker: a missing project raised above
    if dry_run:
        click.echo(f"would trigger {project} on {ref} at {server_url or '$CI_SERVER_URL'} with:")
        for key, value in variables.items():
            click.echo(f"  {key}={value}")
        return
    result = gl.trigger_downstream(project, server_url=server_url, token=token, ref=ref, variables=variables)
    click.echo(f"triggered pipeline {result.pipeline_id} of {result.project} on {result.ref}: {result.url}")


COMMANDS = [publish]
