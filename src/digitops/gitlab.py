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
  merge requests but cannot write notes or upload files;
* a note creation that is never sent twice blindly: when its answer is lost
  (a 5xx or a dropped connection after GitLab may have saved it), the notes
  are searched for the marker again before another try;
* a report over GitLab's note limit shortened before anything is uploaded
  (:func:`digitops.report.shorten_markdown`), never refused;
* a cap on the total time one command waits on ``Retry-After``
  (``DIGITOPS_GITLAB_MAX_WAIT``, default 120 s): python-gitlab obeys any
  ``Retry-After`` for each of its retries, so a server repeating
  ``Retry-After: 60`` would hold a job for minutes per request.

The token is never printed, logged or put into a note or an error message.

Size (over 400 lines): everything that talks to GitLab through one python-gitlab client (settings,
link rewriting, Retry-After caps, notes, uploads, triggers); the Markdown link rewriting could move out.
"""

from __future__ import annotations

import email.utils
import os
import posixpath
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import gitlab
import gitlab.exceptions
import requests

from digitops import __version__, config
from digitops.errors import ConfigError, PublishError
from digitops.report import REPORT_MARKER_PREFIX, experiment_title, report_marker

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
    "DIGITOPS_GITLAB_MAX_WAIT": "seconds one command may wait in all on GitLab's Retry-After (default 120)",
}
#: GitLab refuses note bodies longer than this many characters (HTTP 400).
MAX_NOTE_CHARS = 1_000_000
#: what one uploaded image's Markdown may add to the note over its relative link
_UPLOAD_GROWTH = 200
DEFAULT_MAX_WAIT = 120.0
#: answers after which a request may have been carried out although no answer arrived
_LOST_ANSWER_CODES = (500, 502, 503, 504)
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
MARKER_RE = re.compile(r"<!--\s*" + re.escape(REPORT_MARKER_PREFIX.removeprefix("<!--").strip()) + r"[^>]*?-->")

# Markdown links and images: [text](target "title") / ![alt](target).
_LINK_RE = re.compile(r"(?P<bang>!?)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?P<title>\s+\"[^\"]*\")?\)")
_HREF_RE = re.compile(r"(?P<attr>\b(?:href|src)=)(?P<quote>[\"'])(?P<target>[^\"']+)(?P=quote)")
_ABSOLUTE_RE = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|/|#)")


class GitLabError(PublishError):
    """GitLab could not be reached or refused a request."""


class GitLabConfigError(GitLabError, ConfigError):
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


class GitLabWaitError(GitLabError):
    """GitLab asked to wait (``Retry-After``) beyond what this command may still wait."""


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
    #: seconds this command may wait in all on Retry-After / RateLimit-Reset before failing
    max_wait: float = DEFAULT_MAX_WAIT


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
        max_wait=max_wait_from_env(env),
        server_url=env["CI_SERVER_URL"].strip().rstrip("/"),
        token=(config.env("GITLAB_TOKEN", env) or "").strip(),
        project_id=env["CI_MERGE_REQUEST_PROJECT_ID"].strip(),
        mr_iid=int(iid),
        project_url=env["CI_PROJECT_URL"].strip().rstrip("/"),
    )


def max_wait_from_env(env: Mapping[str, str] | None = None) -> float:
    """``DIGITOPS_GITLAB_MAX_WAIT`` in seconds (default 120); :class:`GitLabConfigError` if not a number >= 0."""
    raw = (config.env("DIGITOPS_GITLAB_MAX_WAIT", env) or "").strip()
    if not raw:
        return DEFAULT_MAX_WAIT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise GitLabConfigError([], hint=f"DIGITOPS_GITLAB_MAX_WAIT must be a number of seconds >= 0, got {raw[:40]!r}")
    return value


# --------------------------------------------------------------------- Markdown


def default_marker(model_name: str | None = None) -> str:
    """The hidden marker of a model's report: ``<!-- digitops-report:<model_name> -->`` (:func:`report.report_marker`)."""
    return report_marker(model_name)


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
        body += f"\n\n[{experiment_title()}]({experiment_url})"
    return f"{marker}\n{body}\n"


# -------------------------------------------------------------------------- API


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds GitLab asks to wait (``Retry-After`` seconds or date, else ``RateLimit-Reset``), or None."""
    raw = headers.get("Retry-After")
    if raw is not None:
        raw = raw.strip()
        if raw.isdigit():
            return float(raw)
        try:
            return max(0.0, email.utils.parsedate_to_datetime(raw).timestamp() - time.time())
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    reset = headers.get("RateLimit-Reset")
    if reset is not None and reset.strip().isdigit():
        return max(0.0, int(reset) - time.time())
    return None


class _Client(gitlab.Gitlab):
    """python-gitlab's client with a per-client bound on retries (its own default is 10 per request)
    and on the total time spent obeying ``Retry-After``.

    python-gitlab sleeps whatever ``Retry-After`` says before each retry
    (``utils.Retry``, no cap of its own). Each answer passes through
    :meth:`_checked` first: one that would make this client's total wait pass
    ``max_wait`` raises :class:`GitLabWaitError` instead of being slept on.
    """

    def __init__(self, url: str, *, max_retries: int, max_wait: float = DEFAULT_MAX_WAIT, **kwargs: Any) -> None:
        super().__init__(
            url,
            retry_transient_errors=True,
            user_agent=f"digitops/{__version__} python-gitlab/{gitlab.__version__}",
            **kwargs,
        )
        self._digitops_max_retries = max_retries
        self.max_wait, self.waited = max_wait, 0.0
        self._send = self._backend.http_request
        self._backend.http_request = self._checked  # type: ignore[method-assign]

    def _checked(self, *args: Any, **kwargs: Any) -> Any:
        result = self._send(*args, **kwargs)
        if result.status_code == 429 or result.status_code in _LOST_ANSWER_CODES:
            wait = _retry_after(result.headers)
            if wait is None and "Retry-After" in result.headers:
                del result.headers["Retry-After"]  # unreadable: python-gitlab's own short backoff, not a crash
            elif wait is not None:
                if self.waited + wait > self.max_wait:
                    raise GitLabWaitError(
                        f"GitLab answered HTTP {result.status_code} and asked to wait {wait:.0f} s more "
                        f"after {self.waited:.0f} s of waiting; this command waits at most {self.max_wait:g} s "
                        "(DIGITOPS_GITLAB_MAX_WAIT): try again later"
                    )
                self.waited += wait
                result.headers["Retry-After"] = str(int(wait + 0.999))
        return result

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
        max_wait=settings.max_wait,
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
    except GitLabWaitError as exc:
        raise GitLabWaitError(f"GitLab could not {action}: {exc}") from None
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


def _find_note(mr: Any, author_id: int, marker: str, url: str) -> Any | None:
    """The oldest note on ``mr`` written by ``author_id`` whose first line is ``marker`` (all pages)."""
    with _api(f"list the notes of merge request !{mr.iid}", url):
        for note in mr.notes.list(iterator=True, sort="asc", order_by="created_at"):
            if not note.system and note.author.get("id") == author_id and find_marker(note.body or "") == marker:
                return note
    return None


def _edit_note(note: Any, body: str, mr_iid: int, url: str) -> None:
    # A PUT of the same body is idempotent, so python-gitlab's own retries are safe here.
    with _api(f"edit note {note.id} on merge request !{mr_iid}", url):
        note.body = body
        note.save()


def _create_note(mr: Any, body: str, *, author_id: int, marker: str, settings: GitLabSettings) -> Any:
    """Create the report note at most once, even when GitLab saves it but the answer is lost.

    The POST itself is never retried by python-gitlab (a 502 from a proxy may
    come after GitLab committed the note); after a lost answer the notes are
    searched for the marker again, and only when it is not there is the note
    posted again, after a short backoff. Rate limits (429) are answered before
    anything is saved, so python-gitlab still retries those itself.
    """
    url, action = settings.server_url, f"create a note on merge request !{settings.mr_iid}"
    for attempt in range(settings.max_retries + 1):
        with _api(action, url):
            try:
                return mr.notes.create({"body": body}, retry_transient_errors=False)
            except (gitlab.exceptions.GitlabError, requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                code = getattr(exc, "response_code", None)
                lost = code in _LOST_ANSWER_CODES or isinstance(exc, requests.RequestException)
                if not lost or attempt == settings.max_retries:
                    raise
        found = _find_note(mr, author_id, marker, url)
        if found is not None:  # saved although the answer was lost: do not post it twice
            if (found.body or "") != body:
                _edit_note(found, body, settings.mr_iid, url)
            return found
        time.sleep(min(0.1 * 2**attempt, 5.0))
    raise AssertionError("unreachable")  # the loop returns or raises


def publish_mr_note(
    markdown: str,
    *,
    settings: GitLabSettings,
    image_dir: str | os.PathLike[str] | None = None,
    marker: str | None = None,
    full_report_url: str | None = None,
) -> NoteResult:
    """Upload the report's images and create or edit the merge request's single report note.

    The note to edit is the oldest one written by the token's user whose first
    line is ``marker`` (the report's own marker when None); all pages of the
    merge request's notes are searched. A body over GitLab's note limit is
    shortened first (sections dropped, ``full_report_url`` linked, the note
    says so), before anything is uploaded. Local images (relative Markdown
    image targets found in ``image_dir``) are uploaded and replaced by the
    Markdown GitLab returns.
    """
    from digitops.report import shorten_markdown

    marker = marker or find_marker(markdown) or default_marker()
    body = prepare_note(markdown, marker=marker)
    if image_dir is not None:
        reserve = _UPLOAD_GROWTH * len(local_images(body))
        body, _ = shorten_markdown(body, MAX_NOTE_CHARS - reserve, full_report=full_report_url)
    else:
        body, _ = shorten_markdown(body, MAX_NOTE_CHARS, full_report=full_report_url)
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
    if len(body) > MAX_NOTE_CHARS:  # only if GitLab's upload Markdown were far longer than ever seen
        raise GitLabError(f"the note is {len(body):,} characters, over GitLab's limit of {MAX_NOTE_CHARS:,}")

    existing = _find_note(mr, me.id, marker, url)
    if existing is not None:
        _edit_note(existing, body, settings.mr_iid, url)
        note_id, action = int(existing.id), "updated"
    else:
        created = _create_note(mr, body, author_id=me.id, marker=marker, settings=settings)
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
    max_wait: float | None = None,
) -> TriggerResult:
    """Start a pipeline of ``project`` (id or ``group/name``) on ``ref`` with ``variables``.

    ``token`` is a pipeline trigger token of that project or the job's
    ``CI_JOB_TOKEN`` (allowed when the downstream project lists this project
    in its job token allowlist); it travels in the request body, as the
    trigger API expects, so no other credential is needed.
    """
    wait = max_wait_from_env() if max_wait is None else max_wait
    gl = _Client(server_url, timeout=timeout, max_retries=max_retries, max_wait=wait)
    downstream = gl.projects.get(project, lazy=True)
    values = {str(k): str(v) for k, v in (variables or {}).items()}
    with _api(f"trigger a pipeline of {project} on {ref}", server_url, not_found=_TRIGGER_NOT_FOUND):
        pipeline = downstream.trigger_pipeline(ref, token, variables=values)
    return TriggerResult(pipeline_id=int(pipeline.id), url=str(pipeline.web_url), project=project, ref=ref)
