"""A strict loopback fake of the parts of GitLab's REST API (v4) that digitops calls.

It stands in for gitlab.com in tests so the real python-gitlab SDK can be
driven end to end without a network. It is strict on purpose: what the real
API refuses, it refuses (no token or a wrong one -> 401, a CI job token on
note writes and uploads -> 401, editing a note someone else wrote -> 403,
unknown route -> 404, known route with the wrong method -> 405, a missing
``body``/``ref`` -> 400, a note over 1,000,000 characters -> 400), and list
endpoints paginate with the same
``Link``/``X-*`` headers GitLab sends, so a client that ignores them misses
notes.

Faults: :meth:`FakeGitLab.fail_next` answers the next (matching) requests with
an error status, either instead of handling them or, with ``saved=True``, after
handling them ("saved then error": a proxy times out while GitLab commits).

Use it as a context manager; it serves from a thread, so a subprocess (the
``digitops`` CLI, gitlab-ci-local jobs) can talk to it while the test waits.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

#: GitLab rejects note bodies longer than this many characters.
MAX_NOTE_LENGTH = 1_000_000
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100

BOT = {"id": 4242, "username": "project_42_bot_digitops", "name": "digitops-report", "bot": True}
HUMAN = {"id": 7, "username": "ada", "name": "Ada Lovelace", "bot": False}


@dataclass
class RecordedRequest:
    """One request as the server saw it (tokens included, so tests can check auth)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int = 0

    def header(self, name: str, default: str | None = None) -> str | None:
        """A request header, looked up case-insensitively as HTTP requires."""
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return default


@dataclass
class Project:
    id: int
    path_with_namespace: str
    default_branch: str = "main"
    trigger_tokens: set[str] = field(default_factory=set)


@dataclass
class _Fault:
    """One injected error answer; ``method``/``path`` None match every request."""

    status: int
    headers: dict[str, str]
    saved: bool = False
    method: str | None = None
    path: str | None = None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or re.search(self.path, path) is not None
        )


class HttpError(Exception):
    """Ends a request with a GitLab-style JSON error."""

    def __init__(self, status: int, message: str, key: str = "message") -> None:
        super().__init__(message)
        self.status, self.payload = status, {key: message}


class FakeGitLab:
    """A GitLab that knows one or more projects, each with merge requests and notes."""

    def __init__(
        self,
        *,
        token: str = "fake-project-token",
        job_token: str = "glcbt-fake-job-token",
        project_id: int = 42,
        project_path: str = "group/digitops",
        mr_iids: tuple[int, ...] = (7,),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.token = token
        self.job_token = job_token
        self.projects: dict[int, Project] = {}
        self.merge_requests: dict[tuple[int, int], dict[str, Any]] = {}
        self.notes: dict[tuple[int, int], list[dict[str, Any]]] = {}
        self.uploads: list[dict[str, Any]] = []
        self.upload_bytes: dict[str, bytes] = {}
        self.pipelines: list[dict[str, Any]] = []
        self.requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._next_id = 1000
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        self.add_project(project_id, project_path, mr_iids=mr_iids)

    # ------------------------------------------------------------------ setup

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (what ``CI_SERVER_URL`` holds)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def project_url(self, project_id: int | None = None) -> str:
        """Web URL of a project (what ``CI_PROJECT_URL`` holds)."""
        project = self.projects[project_id or next(iter(self.projects))]
        return f"{self.url}/{project.path_with_namespace}"

    def add_project(
        self, project_id: int, path: str, *, mr_iids: tuple[int, ...] = (), trigger_tokens: tuple[str, ...] = ()
    ) -> Project:
        """Register a project and its open merge requests."""
        with self._lock:
            project = Project(project_id, path, trigger_tokens=set(trigger_tokens))
            self.projects[project_id] = project
            for iid in mr_iids:
                self.merge_requests[(project_id, iid)] = {
                    "id": 50_000 + iid,
                    "iid": iid,
                    "project_id": project_id,
                    "title": f"Candidate model !{iid}",
                    "state": "opened",
                    "source_branch": f"feature-{iid}",
                    "target_branch": project.default_branch,
                    "web_url": f"{self.url}/{path}/-/merge_requests/{iid}",
                }
                self.notes[(project_id, iid)] = []
            return project

    def add_note(self, body: str, *, project_id: int | None = None, mr_iid: int | None = None,
                 author: dict[str, Any] | None = None, system: bool = False) -> dict[str, Any]:
        """Put a note on an MR directly (someone else's comment, a system note...)."""
        key = self._mr_key(project_id, mr_iid)
        with self._lock:
            return self._new_note(key, body, author or HUMAN, system=system)

    def fail_next(
        self,
        count: int,
        status: int = 502,
        headers: dict[str, str] | None = None,
        *,
        saved: bool = False,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer the next ``count`` requests with ``status`` (a proxy error or a rate limit).

        ``method`` and ``path`` (a regular expression searched in the path)
        limit the fault to matching requests; others pass. With ``saved`` the
        request is first handled as usual (a note is created) and only the
        answer is replaced by the error, as when GitLab commits but the proxy
        in front of it gives up.
        """
        with self._lock:
            self._faults.extend([_Fault(status, dict(headers or {}), saved, method, path)] * count)

    def mr_notes(self, project_id: int | None = None, mr_iid: int | None = None) -> list[dict[str, Any]]:
        """All notes of an MR, oldest first."""
        with self._lock:
            return [dict(n) for n in self.notes[self._mr_key(project_id, mr_iid)]]

    def requests_to(self, method: str, pattern: str) -> list[RecordedRequest]:
        """Recorded requests with this method whose path matches the regular expression."""
        with self._lock:
            return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    def _mr_key(self, project_id: int | None, mr_iid: int | None) -> tuple[int, int]:
        if project_id is None and mr_iid is None:
            return next(iter(self.merge_requests))
        project_id = project_id or next(iter(self.projects))
        if mr_iid is None:
            mr_iid = next(iid for (pid, iid) in self.merge_requests if pid == project_id)
        return (project_id, mr_iid)

    # -------------------------------------------------------------- lifecycle

    def start(self) -> "FakeGitLab":
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-gitlab", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeGitLab":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --------------------------------------------------------------- handlers

    def _now(self) -> str:
        return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _new_note(self, key: tuple[int, int], body: str, author: dict[str, Any], *, system: bool = False) -> dict[str, Any]:
        now = self._now()
        mr = self.merge_requests[key]
        note = {
            "id": self._new_id(),
            "type": None,
            "body": body,
            "attachment": None,
            "author": {k: author[k] for k in ("id", "username", "name")},
            "created_at": now,
            "updated_at": now,
            "system": system,
            "noteable_id": mr["id"],
            "noteable_type": "MergeRequest",
            "noteable_iid": mr["iid"],
            "project_id": key[0],
            "resolvable": False,
            "confidential": False,
            "internal": False,
        }
        self.notes[key].append(note)
        return note

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass  # keep test output clean; every request is recorded instead

            def do_GET(self) -> None:
                fake._dispatch(self, "GET")

            def do_POST(self) -> None:
                fake._dispatch(self, "POST")

            def do_PUT(self) -> None:
                fake._dispatch(self, "PUT")

            def do_DELETE(self) -> None:
                fake._dispatch(self, "DELETE")

            def do_PATCH(self) -> None:
                fake._dispatch(self, "PATCH")

        return Handler

    _ROUTES: list[tuple[str, str, str]] = [
        # (method, path regex with named groups, handler name)
        ("GET", r"/api/v4/user", "_get_user"),
        ("GET", r"/api/v4/projects/(?P<pid>[^/]+)", "_get_project"),
        ("GET", r"/api/v4/projects/(?P<pid>[^/]+)/merge_requests/(?P<iid>\d+)", "_get_mr"),
        ("GET", r"/api/v4/projects/(?P<pid>[^/]+)/merge_requests/(?P<iid>\d+)/notes", "_list_notes"),
        ("POST", r"/api/v4/projects/(?P<pid>[^/]+)/merge_requests/(?P<iid>\d+)/notes", "_create_note"),
        ("GET", r"/api/v4/projects/(?P<pid>[^/]+)/merge_requests/(?P<iid>\d+)/notes/(?P<nid>\d+)", "_get_note"),
        ("PUT", r"/api/v4/projects/(?P<pid>[^/]+)/merge_requests/(?P<iid>\d+)/notes/(?P<nid>\d+)", "_update_note"),
        ("POST", r"/api/v4/projects/(?P<pid>[^/]+)/uploads", "_upload"),
        ("POST", r"/api/v4/projects/(?P<pid>[^/]+)/trigger/pipeline", "_trigger"),
    ]

    def _dispatch(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        split = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        record = RecordedRequest(method, split.path, parse_qs(split.query), dict(handler.headers.items()), body)
        status, payload, headers = 500, {"message": "500 Internal Server Error"}, {}
        try:
            with self._lock:
                self.requests.append(record)
                fault = next((f for f in self._faults if f.matches(method, split.path)), None)
                if fault is not None:
                    self._faults.remove(fault)
            if fault is not None:
                if fault.saved:
                    try:
                        self._route(method, split.path, record)  # done, but the answer is lost
                    except HttpError:
                        pass
                status, headers = fault.status, fault.headers
                raw = f"<html><body><h1>{status}</h1>injected fault</body></html>".encode()
                self._send(handler, record, status, raw, "text/html", headers)
                return
            status, payload, headers = self._route(method, split.path, record)
        except HttpError as exc:
            status, payload = exc.status, exc.payload
        except Exception as exc:  # a bug in the fake must show up as a 500, not a hang
            status, payload = 500, {"message": f"500 fake GitLab error: {exc!r}"}
        raw = json.dumps(payload).encode()
        self._send(handler, record, status, raw, "application/json", headers)

    def _send(self, handler: BaseHTTPRequestHandler, record: RecordedRequest, status: int, raw: bytes,
              content_type: str, headers: dict[str, str]) -> None:
        with self._lock:
            record.status = status
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(raw)))
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(raw)

    def _route(self, method: str, path: str, req: RecordedRequest) -> tuple[int, Any, dict[str, str]]:
        allowed = []
        for route_method, pattern, name in self._ROUTES:
            match = re.fullmatch(pattern, path)
            if match is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            with self._lock:
                return getattr(self, name)(req, **match.groupdict())
        if allowed:
            raise HttpError(405, "405 Method Not Allowed")
        raise HttpError(404, "404 Not Found", key="error")

    # ------------------------------------------------------------------- auth

    def _caller(self, req: RecordedRequest, *, write: bool) -> str:
        """``"user"`` for the project token, ``"job"`` for a CI job token; 401 otherwise.

        Like GitLab, a CI job token only authenticates the few endpoints that
        accept it; on every other endpoint it counts as no authentication.
        """
        private = req.header("PRIVATE-TOKEN")
        job = req.header("JOB-TOKEN")
        if private is not None:
            if private == self.token:
                return "user"
            raise HttpError(401, "401 Unauthorized")
        if job is not None and job == self.job_token and not write:
            return "job"
        raise HttpError(401, "401 Unauthorized")

    def _project(self, raw_id: str) -> Project:
        ident = unquote(raw_id)
        if ident.isdigit() and int(ident) in self.projects:
            return self.projects[int(ident)]
        for project in self.projects.values():
            if project.path_with_namespace == ident:
                return project
        raise HttpError(404, "404 Project Not Found")

    def _mr(self, project: Project, iid: str) -> tuple[int, int]:
        key = (project.id, int(iid))
        if key not in self.merge_requests:
            raise HttpError(404, "404 Not found")
        return key

    # -------------------------------------------------------------- endpoints

    def _get_user(self, req: RecordedRequest) -> tuple[int, Any, dict[str, str]]:
        if self._caller(req, write=False) != "user":
            raise HttpError(401, "401 Unauthorized")
        return 200, {**BOT, "state": "active", "web_url": f"{self.url}/{BOT['username']}"}, {}

    def _get_project(self, req: RecordedRequest, pid: str) -> tuple[int, Any, dict[str, str]]:
        # A job token cannot read the project resource (measured on gitlab.com).
        if self._caller(req, write=False) != "user":
            raise HttpError(404, "404 Project Not Found")
        project = self._project(pid)
        return 200, {
            "id": project.id,
            "path_with_namespace": project.path_with_namespace,
            "default_branch": project.default_branch,
            "web_url": f"{self.url}/{project.path_with_namespace}",
        }, {}

    def _get_mr(self, req: RecordedRequest, pid: str, iid: str) -> tuple[int, Any, dict[str, str]]:
        self._caller(req, write=False)
        return 200, self.merge_requests[self._mr(self._project(pid), iid)], {}

    def _list_notes(self, req: RecordedRequest, pid: str, iid: str) -> tuple[int, Any, dict[str, str]]:
        self._caller(req, write=False)
        key = self._mr(self._project(pid), iid)
        page = self._int_param(req, "page", 1, minimum=1)
        per_page = min(self._int_param(req, "per_page", DEFAULT_PER_PAGE, minimum=1), MAX_PER_PAGE)
        sort = self._choice_param(req, "sort", "desc", ("asc", "desc"))
        order_by = self._choice_param(req, "order_by", "created_at", ("created_at", "updated_at"))
        notes = sorted(self.notes[key], key=lambda n: (n[order_by], n["id"]), reverse=(sort == "desc"))
        total = len(notes)
        pages = max(1, -(-total // per_page))
        items = notes[(page - 1) * per_page : page * per_page]
        return 200, items, self._pagination_headers(req, page, per_page, total, pages)

    def _pagination_headers(self, req: RecordedRequest, page: int, per_page: int, total: int, pages: int) -> dict[str, str]:
        base = f"{self.url}{req.path}"
        query = {k: v[0] for k, v in req.query.items()}

        def link(p: int) -> str:
            return f"{base}?{urlencode({**query, 'page': p, 'per_page': per_page})}"

        rels = [(link(page + 1), "next")] if page < pages else []
        rels += [(link(page - 1), "prev")] if page > 1 else []
        rels += [(link(1), "first"), (link(pages), "last")]
        return {
            "Link": ", ".join(f'<{url}>; rel="{rel}"' for url, rel in rels),
            "X-Page": str(page),
            "X-Per-Page": str(per_page),
            "X-Total": str(total),
            "X-Total-Pages": str(pages),
            "X-Next-Page": str(page + 1) if page < pages else "",
            "X-Prev-Page": str(page - 1) if page > 1 else "",
        }

    def _get_note(self, req: RecordedRequest, pid: str, iid: str, nid: str) -> tuple[int, Any, dict[str, str]]:
        self._caller(req, write=False)
        return 200, self._find_note(self._mr(self._project(pid), iid), nid), {}

    def _create_note(self, req: RecordedRequest, pid: str, iid: str) -> tuple[int, Any, dict[str, str]]:
        self._caller(req, write=True)
        key = self._mr(self._project(pid), iid)
        body = self._note_body(req)
        note = self._new_note(key, body, BOT)
        return 201, note, {}

    def _update_note(self, req: RecordedRequest, pid: str, iid: str, nid: str) -> tuple[int, Any, dict[str, str]]:
        self._caller(req, write=True)
        note = self._find_note(self._mr(self._project(pid), iid), nid)
        body = self._note_body(req)
        if note["author"]["id"] != BOT["id"] or note["system"]:
            raise HttpError(403, "403 Forbidden")
        note.update(body=body, updated_at=self._now())
        return 200, note, {}

    def _upload(self, req: RecordedRequest, pid: str) -> tuple[int, Any, dict[str, str]]:
        self._caller(req, write=True)
        project = self._project(pid)
        filename, data = self._multipart_file(req)
        secret = hashlib.md5(data + str(self._new_id()).encode()).hexdigest()  # noqa: S324 - a name, not security
        url = f"/uploads/{secret}/{filename}"
        alt = filename.rsplit(".", 1)[0]
        is_image = filename.lower().endswith((".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"))
        info = {
            "id": self._new_id(),
            "alt": alt,
            "url": url,
            "full_path": f"/-/project/{project.id}/uploads/{secret}/{filename}",
            "markdown": f"![{alt}]({url})" if is_image else f"[{filename}]({url})",
        }
        self.uploads.append(info)
        self.upload_bytes[url] = data
        return 201, info, {}

    def _trigger(self, req: RecordedRequest, pid: str) -> tuple[int, Any, dict[str, str]]:
        project = self._project(pid)
        data = self._body_fields(req)
        token, ref = data.get("token"), data.get("ref")
        if not token:
            raise HttpError(400, "token is missing", key="error")
        if not ref:
            raise HttpError(400, "ref is missing", key="error")
        if token != self.job_token and token not in project.trigger_tokens:
            raise HttpError(404, "404 Not Found")
        variables = data.get("variables") or {}
        if not isinstance(variables, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in variables.items()
        ):
            raise HttpError(400, "variables is invalid", key="error")
        pipeline_id = self._new_id()
        pipeline = {
            "id": pipeline_id,
            "iid": len(self.pipelines) + 1,
            "project_id": project.id,
            "ref": ref,
            "sha": "0" * 40,
            "status": "created",
            "source": "trigger" if token != self.job_token else "pipeline",
            "web_url": f"{self.url}/{project.path_with_namespace}/-/pipelines/{pipeline_id}",
            "variables": variables,
        }
        self.pipelines.append(pipeline)
        return 201, {k: v for k, v in pipeline.items() if k != "variables"}, {}

    # ---------------------------------------------------------------- parsing

    def _find_note(self, key: tuple[int, int], nid: str) -> dict[str, Any]:
        for note in self.notes[key]:
            if note["id"] == int(nid):
                return note
        raise HttpError(404, "404 Note Not Found")

    @staticmethod
    def _int_param(req: RecordedRequest, name: str, default: int, *, minimum: int) -> int:
        values = req.query.get(name)
        if not values:
            return default
        try:
            value = int(values[-1])
        except ValueError:
            raise HttpError(400, f"{name} is invalid", key="error") from None
        if value < minimum:
            raise HttpError(400, f"{name} does not have a valid value", key="error")
        return value

    @staticmethod
    def _choice_param(req: RecordedRequest, name: str, default: str, choices: tuple[str, ...]) -> str:
        values = req.query.get(name)
        if not values:
            return default
        if values[-1] not in choices:
            raise HttpError(400, f"{name} does not have a valid value", key="error")
        return values[-1]

    @staticmethod
    def _body_fields(req: RecordedRequest) -> dict[str, Any]:
        ctype = (req.header("Content-Type") or "").split(";")[0].strip().lower()
        if not req.body:
            return {}
        if ctype == "application/json":
            try:
                data = json.loads(req.body)
            except ValueError:
                raise HttpError(400, "400 Bad request - invalid JSON body") from None
            if not isinstance(data, dict):
                raise HttpError(400, "400 Bad request - body must be an object")
            return data
        if ctype == "application/x-www-form-urlencoded":
            return {k: v[-1] for k, v in parse_qs(req.body.decode()).items()}
        raise HttpError(415, "415 Unsupported Media Type")

    def _note_body(self, req: RecordedRequest) -> str:
        body = self._body_fields(req).get("body")
        if not isinstance(body, str) or not body.strip():
            raise HttpError(400, "body is missing", key="error")
        if len(body) > MAX_NOTE_LENGTH:
            raise HttpError(400, f"Note is too long (maximum is {MAX_NOTE_LENGTH} characters)")
        return body

    @staticmethod
    def _multipart_file(req: RecordedRequest) -> tuple[str, bytes]:
        ctype = (req.header("Content-Type") or "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise HttpError(400, "file is missing", key="error")
        message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
            f"Content-Type: {ctype}\r\nMIME-Version: 1.0\r\n\r\n".encode() + req.body
        )
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == "file":
                filename = part.get_filename()
                data = part.get_payload(decode=True) or b""
                if not filename or not data:
                    raise HttpError(400, "file is invalid", key="error")
                return Path(filename).name, data
        raise HttpError(400, "file is missing", key="error")
