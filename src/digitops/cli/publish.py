"""``digitops publish``: the merge request report note and the downstream dashboard trigger."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from digitops import publish as publish_mod

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
    status: 0 published, 2 GitLab refused or failed, or settings are missing.
    """
    from digitops import gitlab as gl

    with tempfile.TemporaryDirectory(prefix="digitops-report-") as tmp:
        note = publish_mod.prepare_mr_note(
            report_dir, run_id, Path(tmp), train_job_id=train_job_id, evaluate_job_id=evaluate_job_id,
            experiment=experiment_url, warn=lambda message: click.echo(f"warning: {message}", err=True),
        )
        missing_ids = note.missing_ids
        if dry_run:
            if note.unresolved:
                click.echo(f"note: notebook links stay relative (missing {', '.join(note.unresolved)})", err=True)
            from digitops.report import shorten_markdown

            shown, _ = shorten_markdown(note.markdown, gl.MAX_NOTE_CHARS, full_report=note.full_report_url)
            click.echo(shown, nl=False)
            return

        try:
            settings = gl.settings_from_env()
        except gl.GitLabConfigError as exc:
            raise gl.GitLabConfigError(exc.missing + missing_ids, hint=exc.hint) from None
        if missing_ids:
            raise gl.GitLabConfigError(missing_ids, what="link the executed notebooks in the note")
        result = gl.publish_mr_note(
            note.markdown, settings=settings, image_dir=note.image_dir, full_report_url=note.full_report_url
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

    variables = publish_mod.trigger_variables(model_name, version, extra)
    server_url, token = publish_mod.trigger_settings(project, version, dry_run=dry_run)
    assert project is not None  # for the type checker: a missing project raised above
    if dry_run:
        click.echo(f"would trigger {project} on {ref} at {server_url or '$CI_SERVER_URL'} with:")
        for key, value in variables.items():
            click.echo(f"  {key}={value}")
        return
    result = gl.trigger_downstream(project, server_url=server_url, token=token, ref=ref, variables=variables)
    click.echo(f"triggered pipeline {result.pipeline_id} of {result.project} on {result.ref}: {result.url}")


COMMANDS = [publish]
