"""Publish the merge-request report to GitLab and trigger the downstream dashboard project.

python-gitlab does the HTTP work: authentication, pagination and retries on
429 and 5xx answers and dropped connections with exponential backoff
(``retry_transient_errors``, bounded here by ``max_retries``). This module adds what the
API itself does not offer:

* one report note per merge request, however many pushes: the note carrying
  the report's hidden marker (``<!-- digitops-report:<model> -->``) and
  written by the same identity is edited in place, otherwise a note is created;
* the report's local images uploaded with ``project.upload()`` and replaced
  by the Markdown GitLab returns;
* relative links to the executed notebooks replaced by absolute URLs into the
  artifacts of the CI job that produced them;
* errors that say what to do, above all for the CI job token, which can read
  merge requests but cannot write notes or upload files.

The token is never printed, logged or put into a note or an error message.
"""

from __future__ import annotations

import os
import posixpath
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import gitlab
import gitlab.exceptions
import requests

from digitops import __version__, config

#: What each variable that publishing reads is.
VARIABLE_HELP: dict[str, str] = {
    "GITLAB_TOKEN": "project access token with the api scope (masked CI/CD variable)",
    "CI_SERVER_URL": "GitLab instance URL, set by GitLab CI",
    "CI_MERGE_REQUEST_PROJECT_ID": "project of the merge request, set in merge request pipelines",
    "CI_MERGE_REQUEST_IID": "merge request number, set in merge request pipelines",
    "CI_PROJECT_URL": "web URL of the project running the pipeline, set by GitLab CI",
    "RUN_ID": "run whose notebooks the note links, from the evaluate job's dotenv report",
    "TRAIN_JOB_ID": "job whose artifacts hold train.html, from the evaluate job's dotenv report",
    "EVALUATE_JOB_ID": "job whose artifacts hold evaluate.html, from its dotenv report",
}
#: The variables ``settings_from_env`` reads.
SETTINGS_VARIABLES = ("GITLAB_TOKEN", "CI_SERVER_URL", "CI_MERGE_REQUEST_PROJECT_ID", "CI_MERGE_REQUEST_IID",
                      "CI_PROJECT_URL")

TOKEN_HELP = (
    "A CI job token (CI_JOB_TOKEN) can read merge requests but cannot write notes or upload files. "
    "Create a project access token with the 'api' scope and the Developer role "
    "(Settings > Access tokens) and store it in a masked CI/CD variable named GITLAB_TOKEN; "
    "leave it unprotected, because merge request pipelines run on unprotected branches."
)

#: The hidden first line of a digitops report.
MARKER_RE = re.compile(r"<!--\s*digitops-report:[^>]*?-->")

# Markdown links and images: [text](target "title") / ![alt](target).
_LINK_RE = re.compile(r"(?P<bang>!?)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?P<title>\s+\"[^\"]*\")?\)")
_HREF_RE = re.compile(r"(?P<attr>\b(?:href|src)=)(?P<quote>[\"'])(?P<target>[^\"']+)(?P=quote)")
_ABSOLUTE_RE = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|/|#)")


class GitLabError(Exception):
    """GitLab could not be reached or refused a request."""


class GitLabConfigError(GitLabError):
    """Required settings (environment variables) are missing; ``missing`` names them."""

    def __init__(self, missing: list[str], what: str = "publish to GitLab", hint: str = "") -> None:
        self.missing, self.what, self.hint = list(missing), what, hint
        lines = [f"cannot {what}: missing {', '.join(self.missing)}" if self.missing else f"cannot {what}"]
        lines += [f"  {name}: {VARIABLE_HELP[name]}" for name in self.missing if name in VARIABLE_HELP]
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


class GitLabAuthError(GitLabError):
    """GitLab answered 401 or 403: a wrong, expired or under-privileged token."""


@dataclass(frozen=True)
class GitLabSettings:
    """Where and as whom to publish: usually read from GitLab CI's variables."""

    server_url: str
    token: str = field(repr=False)
    project_id: str
    mr_iid: int
    project_url: str
    timeout: float = 30.0
    #: retries of one request after 429/5xx or a connection error; backoff 0.1 s doubling
    #: (8 retries wait about 25 s in all) unless GitLab sends Retry-After
    max_retries: int = 8


@dataclass(frozen=True)
class NoteResult:
    """The published note: its id, ``"created"`` or ``"updated"``, and its web URL."""

    note_id: int
    action: str
    url: str

    @property
    def created(self) -> bool:
        return self.action == "created"


@dataclass(frozen=True)
class TriggerResult:
    """The downstream pipeline that a trigger created."""

    pipeline_id: int
    url: str
    project: str
    ref: str


def settings_from_env(env: Mapping[str, str] | None = None) -> GitLabSettings:
    """Settings from GitLab CI's variables; :class:`GitLabConfigError` names every missing one."""
    env = os.environ if env is None else env
    missing = [name for name in SETTINGS_VARIABLES if not env.get(name, "").strip()]
    hint = ""
    if "GITLAB_TOKEN" in missing and env.get("CI_JOB_TOKEN"):
        hint = TOKEN_HELP
    elif {"CI_MERGE_REQUEST_PROJECT_ID", "CI_MERGE_REQUEST_IID"} & set(missing) and env.get("CI"):
        hint = "This job does not run in a merge request pipeline (rules: $CI_PIPELINE_SOURCE == 'merge_request_event')."
    elif len(missing) == len(SETTINGS_VARIABLES):
        hint = "Outside CI, use --dry-run to print the note instead."
    if missing:
        raise GitLabConfigError(missing, hint=hint)
    iid = env["CI_MERGE_REQUEST_IID"].strip()
    if not iid.isdigit():
        raise GitLabConfigError([], hint=f"CI_MERGE_REQUEST_IID must be a number, got {iid!r}")
    return GitLabSettings(
        server_url=env["CI_SERVER_URL"].strip().rstrip("/"),
        token=env["GITLAB_TOKEN"].strip(),
        project_id=env["CI_MERGE_REQUEST_PROJECT_ID"].strip(),
        mr_iid=int(iid),
        project_url=env["CI_PROJECT_URL"].strip().rstrip("/"),
    )


# --------------------------------------------------------------------- Markdown


def default_marker(model_name: str | None = None) -> str:
    """The hidden marker of a model's report: ``<!-- digitops-report:<model_name> -->``."""
    return f"<!-- digitops-report:{model_name or config.model_name()} -->"


def find_marker(markdown: str) -> str | None:
    """The marker on the first line of ``markdown``, if it has one."""
    first = markdown.lstrip("\ufeff").split("\n", 1)[0].strip()
    match = MARKER_RE.fullmatch(first)
    return match.group(0) if match else None


def artifact_url(project_url: str, job_id: str | int, path: str) -> str:
    """Web URL of one file in a job's artifacts (``{project}/-/jobs/{id}/artifacts/file/{path}``)."""
    return f"{project_url.rstrip('/')}/-/jobs/{job_id}/artifacts/file/{path.lstrip('/')}"


def notebook_links(
    project_url: str,
    run_id: str,
    *,
    train_job_id: str | int | None,
    evaluate_job_id: str | int | None,
    runs_path: str = "runs",
) -> dict[str, str]:
    """Absolute artifact URLs of a run's executed notebooks, keyed by file name (``train.html``...).

    The run folder itself (key ``run_id``) links to the artifact browser of the
    last job that wrote to it.
    """
    links: dict[str, str] = {}
    folder = posixpath.join(runs_path.strip("/") or ".", run_id)
    for stage, job_id in (("train", train_job_id), ("evaluate", evaluate_job_id)):
        if job_id:
            for ext in ("html", "ipynb"):
                links[f"{stage}.{ext}"] = artifact_url(project_url, job_id, f"{folder}/{stage}.{ext}")
            links[run_id] = f"{project_url.rstrip('/')}/-/jobs/{job_id}/artifacts/browse/{folder}"
    return links


def _is_relative(target: str) -> bool:
    return not _ABSOLUTE_RE.match(target)


def rewrite_links(markdown: str, links: Mapping[str, str]) -> str:
    """Point relative links whose file name is a key of ``links`` at ``links[name]``.

    Works on Markdown links and on ``href``/``src`` attributes of inline HTML,
    so any report's ``[train.html](train.html)`` or ``runs/<id>/train.html``
    becomes an absolute URL. Images are left to :func:`replace_images`.
    """
    if not links:
        return markdown

    def target_for(target: str) -> str | None:
        return links.get(posixpath.basename(target)) if _is_relative(target) else None

    def md(match: re.Match[str]) -> str:
        new = None if match["bang"] else target_for(match["target"])
        if new is None:
            return match.group(0)
        return f"[{match['text']}]({new}{match['title'] or ''})"

    def html(match: re.Match[str]) -> str:
        new = target_for(match["target"]) if match["attr"].startswith("href") else None
        return match.group(0) if new is None else f"{match['attr']}{match['quote']}{new}{match['quote']}"

    return _HREF_RE.sub(html, _LINK_RE.sub(md, markdown))


def relative_links(markdown: str) -> list[str]:
    """File names of the relative (non-image) links in ``markdown``, Markdown or ``href``, in order."""
    seen: dict[str, None] = {}
    targets = [m["target"] for m in _LINK_RE.finditer(markdown) if not m["bang"]]
    targets += [m["target"] for m in _HREF_RE.finditer(markdown) if m["attr"].startswith("href")]
    for target in targets:
        if _is_relative(target):
            seen.setdefault(posixpath.basename(target), None)
    return list(seen)


def local_images(markdown: str) -> list[str]:
    """Relative targets of the Markdown images in ``markdown``, in order, without repeats."""
    seen: dict[str, None] = {}
    for match in _LINK_RE.finditer(markdown):
        if match["bang"] and _is_relative(match["target"]):
            seen.setdefault(match["target"], None)
    return list(seen)


def replace_images(markdown: str, uploaded: Mapping[str, str]) -> str:
    """Replace each Markdown image whose target is a key of ``uploaded`` with ``uploaded[target]``."""

    def swap(match: re.Match[str]) -> str:
        if match["bang"] and match["target"] in uploaded:
            return uploaded[match["target"]]
        return match.group(0)

    return _LINK_RE.sub(swap, markdown)


def prepare_note(
    markdown: str,
    *,
    links: Mapping[str, str] | None = None,
    experiment_url: str | None = None,
    marker: str | None = None,
) -> str:
    """The note body: marker on the first line, notebook links made absolute, experiment linked."""
    marker = marker or find_marker(markdown) or default_marker()
    body = markdown.lstrip("\ufeff")
    if find_marker(body) == marker:
        body = body.split("\n", 1)[1] if "\n" in body else ""
    body = rewrite_links(body.strip("\n"), links or {})
    if experiment_url and experiment_url not in body:
        body += f"\n\n[Comet experiment]({experiment_url})"
    return f"{marker}\n{body}\n"


# -------------------------------------------------------------------------- API


class _Client(gitlab.Gitlab):
    """python-gitlab's client with a per-client bound on retries (its own default is 10 per request)."""

    def __init__(self, url: str, *, max_retries: int, **kwargs: Any) -> None:
        super().__init__(
            url,
            retry_transient_errors=True,
            user_agent=f"digitops/{__version__} python-gitlab/{gitlab.__version__}",
            **kwargs,
        )
        self._digitops_max_retries = max_retries

    def http_request(self, *args: Any, max_retries: int | None = None, **kwargs: Any) -> requests.Response:
        if max_retries is None:
            max_retries = self._digitops_max_retries
        return super().http_request(*args, max_retries=max_retries, **kwargs)


def _client(settings: GitLabSettings) -> gitlab.Gitlab:
    return _Client(
        settings.server_url,
        private_token=settings.token,
        timeout=settings.timeout,
        max_retries=settings.max_retries,
    )


def _message(exc: gitlab.exceptions.GitlabError) -> str:
    text = exc.error_message
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = " ".join(str(text).split())
    return text[:200] + ("..." if len(text) > 200 else "")


_MR_NOT_FOUND = (
    "check CI_MERGE_REQUEST_PROJECT_ID and CI_MERGE_REQUEST_IID, and that the token belongs to the "
    "merge request's project"
)
_TRIGGER_NOT_FOUND = (
    "the project does not exist, the trigger token is wrong, or this project is not in the downstream "
    "project's job token allowlist (its Settings > CI/CD > Job token permissions)"
)


@contextmanager
def _api(action: str, server_url: str, *, not_found: str = _MR_NOT_FOUND) -> Iterator[None]:
    """Turn python-gitlab and requests errors into messages that say what to do."""
    try:
        yield
    except gitlab.exceptions.GitlabAuthenticationError as exc:
        raise GitLabAuthError(
            f"GitLab refused to {action} (HTTP 401 Unauthorized): the token is invalid, expired or "
            f"revoked, or it is a CI job token. {TOKEN_HELP}"
        ) from exc
    except gitlab.exceptions.GitlabError as exc:
        if exc.response_code == 403:
            raise GitLabAuthError(
                f"GitLab refused to {action} (HTTP 403 Forbidden: {_message(exc)}): the token lacks the "
                f"'api' scope or its role is below Developer, or the note belongs to another user. {TOKEN_HELP}"
            ) from exc
        if exc.response_code == 404:
            raise GitLabError(f"GitLab could not {action} (HTTP 404: {_message(exc)}): {not_found}") from exc
        code = f"HTTP {exc.response_code}" if exc.response_code else "no HTTP status"
        raise GitLabError(f"GitLab could not {action} ({code}: {_message(exc)})") from exc
    except requests.RequestException as exc:
        raise GitLabError(f"cannot reach GitLab at {server_url} to {action}: {type(exc).__name__}") from exc


def publish_mr_note(
    markdown: str,
    *,
    settings: GitLabSettings,
    image_dir: str | os.PathLike[str] | None = None,
    marker: str | None = None,
) -> NoteResult:
    """Upload the report's images and create or edit the merge request's single report note.

    The note to edit is the oldest one written by the token's user whose first
    line is ``marker`` (the report's own marker when None); all pages of the
    merge request's notes are searched. Local images (relative Markdown image
    targets found in ``image_dir``) are uploaded first and replaced by the
    Markdown GitLab returns.
    """
    marker = marker or find_marker(markdown) or default_marker()
    body = prepare_note(markdown, marker=marker)
    gl = _client(settings)
    url = settings.server_url

    with _api("check the token (GET /user)", url):
        gl.auth()
    me = gl.user
    if me is None:
        raise GitLabError("GitLab did not say who the token belongs to (GET /user)")
    project = gl.projects.get(settings.project_id, lazy=True)
    with _api(f"read merge request !{settings.mr_iid} of project {settings.project_id}", url):
        mr = project.mergerequests.get(settings.mr_iid)

    if image_dir is not None:
        uploaded: dict[str, str] = {}
        for target in local_images(body):
            path = Path(image_dir) / target
            if not path.is_file():
                continue  # the report says when an image is missing; nothing to upload
            with _api(f"upload {path.name}", url):
                info = project.upload(path.name, filepath=str(path))
            uploaded[target] = str(info["markdown"])
        body = replace_images(body, uploaded)

    with _api(f"list the notes of merge request !{settings.mr_iid}", url):
        existing = None
        for note in mr.notes.list(iterator=True, sort="asc", order_by="created_at"):
            if (
                not note.system
                and note.author.get("id") == me.id
                and find_marker(note.body or "") == marker
            ):
                existing = note
                break

    if existing is not None:
        with _api(f"edit note {existing.id} on merge request !{settings.mr_iid}", url):
            existing.body = body
            existing.save()
        note_id, action = int(existing.id), "updated"
    else:
        with _api(f"create a note on merge request !{settings.mr_iid}", url):
            created = mr.notes.create({"body": body})
        note_id, action = int(created.id), "created"
    return NoteResult(note_id=note_id, action=action, url=f"{mr.web_url}#note_{note_id}")


def trigger_downstream(
    project: str,
    *,
    server_url: str,
    token: str,
    ref: str = "main",
    variables: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    max_retries: int = 8,
) -> TriggerResult:
    """Start a pipeline of ``project`` (id or ``group/name``) on ``ref`` with ``variables``.

    ``token`` is a pipeline trigger token of that project or the job's
    ``CI_JOB_TOKEN`` (allowed when the downstream project lists this project
    in its job token allowlist); it travels in the request body, as the
    trigger API expects, so no other credential is needed.
    """
    gl = _Client(server_url, timeout=timeout, max_retries=max_retries)
    downstream = gl.projects.get(project, lazy=True)
    values = {str(k): str(v) for k, v in (variables or {}).items()}
    with _api(f"trigger a pipeline of {project} on {ref}", server_url, not_found=_TRIGGER_NOT_FOUND):
        pipeline = downstream.trigger_pipeline(ref, token, variables=values)
    return TriggerResult(pipeline_id=int(pipeline.id), url=str(pipeline.web_url), project=project, ref=ref)
