"""What ``digitops publish`` sends: the MR note built from a report, the dashboard trigger's variables.

The command line parses options and prints; this module decides which links the
note gets, which CI variables are missing, and what the downstream pipeline
receives. Talking to GitLab is :mod:`digitops.gitlab`'s job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from digitops import config
from digitops.errors import DigitopsError, NotFound, UsageError

#: Notebook files whose relative links the MR note turns into artifact URLs.
NOTEBOOK_FILES = ("train.html", "train.ipynb", "evaluate.html", "evaluate.ipynb")


@dataclass
class MrNote:
    """A report made ready for the MR: the note's Markdown and what its links still lack."""

    markdown: str
    image_dir: Path
    #: RUN_ID / TRAIN_JOB_ID / EVALUATE_JOB_ID the report's notebook links need but were not given
    missing_ids: list[str] = field(default_factory=list)
    #: ``missing_ids`` plus CI_PROJECT_URL when links stay relative (shown by --dry-run)
    unresolved: list[str] = field(default_factory=list)
    #: report.html in this job's artifacts, linked when the note must be shortened
    full_report_url: str | None = None


def runs_path() -> str:
    """The runs folder as a path inside the project, the way it appears in job artifacts."""
    runs = config.runs_dir()
    if not runs.is_absolute():
        return runs.as_posix()
    project_dir = os.environ.get("CI_PROJECT_DIR")
    if project_dir and runs.is_relative_to(project_dir):
        return runs.relative_to(project_dir).as_posix()
    return "runs"


def read_report(report_dir: Path | None, run_id: str | None, workdir: Path) -> tuple[str, Path]:
    """``(markdown, folder of its images)``: ``report_dir``'s report.md, else run ``run_id``'s written to ``workdir``."""
    if report_dir is not None:
        path = report_dir / "report.md"
        if not path.is_file():
            raise NotFound(f"{path} does not exist: write it with `digitops report RUN --out {report_dir}`")
        return path.read_text(encoding="utf-8"), report_dir
    if not run_id:
        raise UsageError("give --report-dir DIR (from `digitops report RUN --out DIR`) or --run RUN_ID")
    from digitops.report import write_report

    try:
        paths = write_report(run_id, workdir)
    except DigitopsError as exc:
        exc.args = (f"cannot write the report of run {run_id}: {exc}",)
        raise
    return paths["markdown"].read_text(encoding="utf-8"), workdir


def report_html_url(report_dir: Path | None, project_url: str) -> str | None:
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


def experiment_url(run_id: str | None, warn: Callable[[str], None]) -> str | None:
    """The run's Comet experiment page, when Comet tracks runs (a failure only warns)."""
    if not run_id or not config.comet_enabled():
        return None
    try:
        from digitops.tracking import get_tracker

        return get_tracker().get_run(run_id).url
    except Exception as exc:  # a missing link must not stop the report
        warn(f"no experiment link for run {run_id}: {exc}")
        return None


def prepare_mr_note(
    report_dir: Path | None,
    run_id: str | None,
    workdir: Path,
    *,
    train_job_id: str | None = None,
    evaluate_job_id: str | None = None,
    experiment: str | None = None,
    warn: Callable[[str], None] = lambda message: None,
) -> MrNote:
    """The report as the MR note: notebook links to the jobs' artifacts, the experiment link, what is missing."""
    from digitops import gitlab as gl

    markdown, image_dir = read_report(report_dir, run_id, workdir)
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
            project_url, run_id, train_job_id=train_job_id, evaluate_job_id=evaluate_job_id, runs_path=runs_path()
        )
    note = gl.prepare_note(markdown, links=links, experiment_url=experiment or experiment_url(run_id, warn))
    return MrNote(
        note, image_dir, missing_ids,
        unresolved=missing_ids + (["CI_PROJECT_URL"] if wanted and not project_url else []),
        full_report_url=report_html_url(report_dir, project_url),
    )


def trigger_variables(model_name: str | None, version: str | None, extra: Iterable[str]) -> dict[str, str]:
    """What the downstream pipeline receives: the model name and version, the upstream pipeline, ``KEY=VALUE`` extras."""
    variables = {"DIGITOPS_MODEL_NAME": model_name or config.model_name(), "DIGITOPS_MODEL_VERSION": version or ""}
    if os.environ.get("CI_PIPELINE_URL"):
        variables["DIGITOPS_UPSTREAM_PIPELINE_URL"] = os.environ["CI_PIPELINE_URL"]
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--variable expects KEY=VALUE, got {item!r}")
        variables[key] = value
    return variables


def trigger_settings(project: str | None, version: str | None, *, dry_run: bool = False) -> tuple[str, str]:
    """``(server_url, token)`` for triggering ``project``; :class:`GitLabConfigError` names what is missing."""
    from digitops.gitlab import GitLabConfigError

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
        raise GitLabConfigError(missing, what="trigger the dashboard project")
    return server_url, token
